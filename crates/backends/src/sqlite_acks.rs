//! Pending critical messages in SQLite (`ack_pending`), in the same file as the message store.
//! Low volume, so each call is one statement on the blocking pool (write-through: an entry is
//! durable before the message is sent, so a restart loses nothing).

use std::path::Path;

use crate::sqlite_shared::SharedConn;
use roomcast_core::BoxFut;
use roomcast_core::ids::{RoomId, UserId};
use roomcast_core::ports::{AckStore, PendingCritical, StoreError};
use rusqlite::params;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS ack_pending (
    user_id       TEXT    NOT NULL,
    msg_id        INTEGER NOT NULL,
    kind          TEXT    NOT NULL,
    room_id       TEXT,
    text          TEXT,
    payload       TEXT,
    ts            INTEGER NOT NULL,
    attempts      INTEGER NOT NULL,
    next_retry_ms INTEGER NOT NULL,
    PRIMARY KEY (user_id, msg_id)
);
";

pub struct SqliteAckStore {
    conn: SharedConn,
}

impl SqliteAckStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(SqliteAckStore {
            conn: SharedConn::open(path, SCHEMA)?,
        })
    }
}

impl AckStore for SqliteAckStore {
    fn put(&self, p: PendingCritical) -> BoxFut<'_, Result<(), StoreError>> {
        self.conn.run(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO ack_pending
                 (user_id, msg_id, kind, room_id, text, payload, ts, attempts, next_retry_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    p.user.as_str(),
                    p.msg_id as i64,
                    p.kind,
                    p.room.as_ref().map(|r| r.as_str().to_owned()),
                    p.text,
                    p.payload,
                    p.ts as i64,
                    p.attempts,
                    p.next_retry_ms as i64
                ],
            )
            .map(|_| ())
        })
    }

    fn remove<'a>(&'a self, user: &'a UserId, msg_id: u64) -> BoxFut<'a, Result<bool, StoreError>> {
        let user = user.as_str().to_owned();
        self.conn.run(move |c| {
            c.execute(
                "DELETE FROM ack_pending WHERE user_id = ?1 AND msg_id = ?2",
                params![user, msg_id as i64],
            )
            .map(|n| n > 0)
        })
    }

    fn pending<'a>(
        &'a self,
        user: &'a UserId,
    ) -> BoxFut<'a, Result<Vec<PendingCritical>, StoreError>> {
        let user = user.clone();
        self.conn.run(move |c| {
            let mut st = c.prepare_cached(
                "SELECT msg_id, kind, room_id, text, payload, ts, attempts, next_retry_ms
                 FROM ack_pending WHERE user_id = ?1 ORDER BY msg_id",
            )?;
            let rows = st.query_map(params![user.as_str()], |r| {
                let room: Option<String> = r.get(2)?;
                Ok(PendingCritical {
                    user: user.clone(),
                    msg_id: r.get::<_, i64>(0)? as u64,
                    kind: r.get(1)?,
                    room: room.and_then(|r| RoomId::parse(&r).ok()),
                    text: r.get(3)?,
                    payload: r.get(4)?,
                    ts: r.get::<_, i64>(5)? as u64,
                    attempts: r.get(6)?,
                    next_retry_ms: r.get::<_, i64>(7)? as u64,
                })
            })?;
            rows.collect()
        })
    }

    fn update(&self, p: &PendingCritical) -> BoxFut<'_, Result<bool, StoreError>> {
        let (user, msg_id, attempts, next) = (
            p.user.as_str().to_owned(),
            p.msg_id as i64,
            p.attempts,
            p.next_retry_ms as i64,
        );
        self.conn.run(move |c| {
            c.execute(
                "UPDATE ack_pending SET attempts = ?3, next_retry_ms = ?4
                 WHERE user_id = ?1 AND msg_id = ?2",
                params![user, msg_id, attempts, next],
            )
            .map(|n| n > 0)
        })
    }

    fn count(&self) -> BoxFut<'_, Result<u64, StoreError>> {
        self.conn.run(|c| {
            c.query_row("SELECT COUNT(*) FROM ack_pending", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n as u64)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passes_the_ack_store_suite_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("roomcast.db");
        let store = SqliteAckStore::open(&path).unwrap();
        roomcast_core::testkit::ack_store_suite(&store).await;
        drop(store);
        let again = SqliteAckStore::open(&path).unwrap();
        assert_eq!(again.count().await.unwrap(), 3, "kept across a reopen");
    }
}
