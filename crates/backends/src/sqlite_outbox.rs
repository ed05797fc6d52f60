//! `room_chat_outbox` in SQLite (standalone's outbox; the backend writes rows in its own
//! transactions on the same table shape in its MySQL-protocol database in production), plus the
//! relay lease (`room_chat_outbox_lease`). Rows are marked sent by the message store's writer
//! (`sqlite.rs`), in the transaction that stores their messages — never here.

use std::path::Path;
use std::time::Duration;

use crate::sqlite_shared::SharedConn;
use roomcast_core::BoxFut;
use roomcast_core::clock::now_ms;
use roomcast_core::outbox::{NewOutboxRow, OutboxRow, OutboxStore};
use roomcast_core::ports::StoreError;
use rusqlite::{OptionalExtension, params};

/// The table a backend writes to, in its own transaction.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS room_chat_outbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    room_id    TEXT    NOT NULL,
    kind       TEXT    NOT NULL DEFAULT 'system',
    uid        TEXT    NOT NULL DEFAULT 'system',
    name       TEXT,
    content    TEXT    NOT NULL,
    payload    TEXT,
    created_at INTEGER NOT NULL,
    msg_id     INTEGER,
    sent_at    INTEGER          -- NULL: pending; -1: failed (unusable, kept for inspection)
);
CREATE INDEX IF NOT EXISTS room_chat_outbox_pending ON room_chat_outbox (sent_at, id);
CREATE INDEX IF NOT EXISTS room_chat_outbox_msg ON room_chat_outbox (msg_id);
CREATE TABLE IF NOT EXISTS room_chat_outbox_lease (
    name       TEXT PRIMARY KEY,
    holder     TEXT    NOT NULL,
    expires_ms INTEGER NOT NULL
);
";

pub struct SqliteOutbox {
    conn: SharedConn,
}

impl SqliteOutbox {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(SqliteOutbox {
            conn: SharedConn::open(path, SCHEMA)?,
        })
    }
}

impl OutboxStore for SqliteOutbox {
    fn insert(&self, row: NewOutboxRow) -> BoxFut<'_, Result<i64, StoreError>> {
        self.conn.run(move |c| {
            c.execute(
                "INSERT INTO room_chat_outbox (room_id, kind, uid, name, content, payload, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    row.room.as_str(),
                    row.kind.as_str(),
                    row.user.as_str(),
                    row.name,
                    row.text,
                    row.payload,
                    now_ms() as i64
                ],
            )?;
            Ok(c.last_insert_rowid())
        })
    }

    fn acquire_lease<'a>(
        &'a self,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFut<'a, Result<bool, StoreError>> {
        let holder = holder.to_owned();
        self.conn.run(move |c| {
            let now = now_ms() as i64;
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let current: Option<(String, i64)> = tx
                .query_row(
                    "SELECT holder, expires_ms FROM room_chat_outbox_lease WHERE name = 'relay'",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let mine = match current {
                Some((h, exp)) if h != holder && exp > now => false,
                _ => {
                    tx.execute(
                        "INSERT INTO room_chat_outbox_lease (name, holder, expires_ms)
                         VALUES ('relay', ?1, ?2)
                         ON CONFLICT (name) DO UPDATE SET holder = ?1, expires_ms = ?2",
                        params![holder, now + ttl.as_millis() as i64],
                    )?;
                    true
                }
            };
            tx.commit()?;
            Ok(mine)
        })
    }

    fn release_lease<'a>(&'a self, holder: &'a str) -> BoxFut<'a, Result<(), StoreError>> {
        let holder = holder.to_owned();
        self.conn.run(move |c| {
            c.execute(
                "DELETE FROM room_chat_outbox_lease WHERE name = 'relay' AND holder = ?1",
                params![holder],
            )
            .map(|_| ())
        })
    }

    fn pending(&self, limit: usize) -> BoxFut<'_, Result<Vec<OutboxRow>, StoreError>> {
        self.conn.run(move |c| {
            let mut out = Vec::new();
            let mut bad = Vec::new();
            {
                let mut st = c.prepare_cached(
                    "SELECT id, room_id, kind, uid, name, content, payload, created_at, msg_id
                     FROM room_chat_outbox WHERE sent_at IS NULL ORDER BY id LIMIT ?1",
                )?;
                let mut rows = st.query(params![limit as i64])?;
                while let Some(r) = rows.next()? {
                    let id: i64 = r.get(0)?;
                    // A row a backend wrote with a bad value (room, kind, user, a payload that
                    // is not JSON, a wrongly typed column) can never be published: it is set
                    // aside (reported) rather than blocking the rows behind it.
                    match row_of(id, r) {
                        Ok(row) => out.push(row),
                        Err(why) => bad.push((id, why)),
                    }
                }
            }
            // Updated after the scan, not while the SELECT walks the same index.
            for (id, why) in bad {
                tracing::error!(row = id, reason = %why, "outbox row has a bad value; marked failed");
                c.execute(
                    "UPDATE room_chat_outbox SET sent_at = -1 WHERE id = ?1",
                    params![id],
                )?;
            }
            Ok(out)
        })
    }

    fn assign_msg_id(&self, id: i64, msg_id: u64) -> BoxFut<'_, Result<(), StoreError>> {
        self.conn.run(move |c| {
            c.execute(
                "UPDATE room_chat_outbox SET msg_id = ?2 WHERE id = ?1 AND msg_id IS NULL",
                params![id, msg_id as i64],
            )
            .map(|_| ())
        })
    }

    fn mark_failed(&self, id: i64) -> BoxFut<'_, Result<(), StoreError>> {
        self.conn.run(move |c| {
            c.execute(
                "UPDATE room_chat_outbox SET sent_at = -1 WHERE id = ?1",
                params![id],
            )
            .map(|_| ())
        })
    }

    fn pending_count(&self) -> BoxFut<'_, Result<u64, StoreError>> {
        self.conn.run(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM room_chat_outbox WHERE sent_at IS NULL",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
        })
    }
}

/// One row, or why it can never be published (a bad value, or a column of the wrong type).
fn row_of(id: i64, r: &rusqlite::Row<'_>) -> Result<OutboxRow, String> {
    let typed = |e: rusqlite::Error| e.to_string();
    let event = NewOutboxRow::from_columns(
        &r.get::<_, String>(1).map_err(typed)?,
        &r.get::<_, String>(2).map_err(typed)?,
        &r.get::<_, String>(3).map_err(typed)?,
        r.get(4).map_err(typed)?,
        r.get(5).map_err(typed)?,
        r.get(6).map_err(typed)?,
    )?;
    let created: i64 = r.get(7).map_err(typed)?;
    let msg_id: Option<i64> = r.get(8).map_err(typed)?;
    Ok(OutboxRow {
        id,
        event,
        created_ms: created as u64,
        msg_id: msg_id.map(|m| m as u64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqlite::{SqliteOptions, SqliteStore};
    use roomcast_core::ports::MessageStore;
    use std::sync::Arc;

    #[tokio::test]
    async fn passes_the_outbox_suite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        let outbox = Arc::new(SqliteOutbox::open(&path).unwrap());
        let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
        roomcast_core::testkit::outbox_store_suite(outbox, &store).await;
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn rows_a_backend_got_wrong_are_set_aside_not_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        let s = SqliteOutbox::open(&path).unwrap();
        let raw = rusqlite::Connection::open(&path).unwrap();
        for (room, kind, payload, created) in [
            ("r", "gift", Some("{not json"), "1"),
            ("r", "rocket", None, "1"),
            ("bad room!", "gift", None, "1"),
            ("r", "gift", None, "yesterday"),
            ("r", "gift", Some(r#"{"ok":true}"#), "1"),
        ] {
            raw.execute(
                "INSERT INTO room_chat_outbox (room_id, kind, uid, content, payload, created_at)
                 VALUES (?1, ?2, 'u', 'text', ?3, ?4)",
                params![room, kind, payload, created],
            )
            .unwrap();
        }
        let p = s.pending(10).await.unwrap();
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].event.payload.as_deref(), Some(r#"{"ok":true}"#));
        assert_eq!(s.pending_count().await.unwrap(), 1);
        let failed: i64 = raw
            .query_row(
                "SELECT COUNT(*) FROM room_chat_outbox WHERE sent_at = -1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(failed, 4, "kept in the table, out of the queue");
    }

    /// Two connections to one file (two processes on one host): one holder at a time.
    #[tokio::test]
    async fn one_lease_holder_at_a_time_across_connections() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        let a = SqliteOutbox::open(&path).unwrap();
        let b = SqliteOutbox::open(&path).unwrap();
        let ttl = Duration::from_secs(60);
        assert!(a.acquire_lease("a", ttl).await.unwrap());
        assert!(!b.acquire_lease("b", ttl).await.unwrap(), "a holds it");
        a.release_lease("a").await.unwrap();
        assert!(b.acquire_lease("b", ttl).await.unwrap());
        assert!(!a.acquire_lease("a", ttl).await.unwrap(), "b holds it");
    }
}
