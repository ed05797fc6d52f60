//! `room_chat_outbox` in SQLite (standalone's outbox; the backend writes rows in its own
//! transactions on the same table shape in its MySQL-protocol database in production), plus the
//! relay lease (`room_chat_outbox_lease`).

use std::path::Path;
use std::time::Duration;

use crate::sqlite_shared::SharedConn;
use roomcast_core::BoxFut;
use roomcast_core::clock::now_ms;
use roomcast_core::ids::{RoomId, UserId};
use roomcast_core::model::MsgKind;
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
                        Some(row) => out.push(row),
                        None => bad.push(id),
                    }
                }
            }
            // Updated after the scan, not while the SELECT walks the same index.
            for id in bad {
                tracing::error!(row = id, "outbox row has a bad value; marked failed");
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

    fn mark_sent(&self, id: i64) -> BoxFut<'_, Result<(), StoreError>> {
        self.conn.run(move |c| {
            c.execute(
                "UPDATE room_chat_outbox SET sent_at = ?2 WHERE id = ?1",
                params![id, now_ms() as i64],
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

/// One row, or `None` when any value is unusable.
fn row_of(id: i64, r: &rusqlite::Row<'_>) -> Option<OutboxRow> {
    let room = RoomId::parse(&r.get::<_, String>(1).ok()?).ok()?;
    let kind = MsgKind::parse(&r.get::<_, String>(2).ok()?)?;
    let user = UserId::parse(&r.get::<_, String>(3).ok()?).ok()?;
    let name: Option<String> = r.get(4).ok()?;
    let text: String = r.get(5).ok()?;
    let payload: Option<String> = r.get(6).ok()?;
    if let Some(p) = &payload {
        serde_json::from_str::<&serde_json::value::RawValue>(p).ok()?;
    }
    let created: i64 = r.get(7).ok()?;
    let msg_id: Option<i64> = r.get(8).ok()?;
    Some(OutboxRow {
        id,
        event: NewOutboxRow {
            room,
            kind,
            user,
            name,
            text,
            payload,
        },
        created_ms: created as u64,
        msg_id: msg_id.map(|m| m as u64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomcast_core::config::IngestConfig;
    use roomcast_core::ingest::IngestService;
    use roomcast_core::ingest::filter::WordFilter;
    use roomcast_core::memory::{MemoryBus, MemoryModeration, MemoryRateLimiter};
    use roomcast_core::metrics::Metrics;
    use roomcast_core::model::InboundMessage;
    use roomcast_core::outbox::{Cycle, OutboxRelay, RelayConfig};
    use roomcast_core::ports::BusConsumer;
    use std::sync::Arc;

    fn row(text: &str) -> NewOutboxRow {
        NewOutboxRow {
            room: RoomId::parse("paid-room").unwrap(),
            kind: MsgKind::Gift,
            user: UserId::parse("buyer").unwrap(),
            name: Some("Buyer".into()),
            text: text.into(),
            payload: Some(r#"{"gift":"yacht"}"#.into()),
        }
    }

    struct Bench {
        ingest: Arc<IngestService>,
        consumer: Box<dyn BusConsumer>,
    }

    fn bench() -> Bench {
        let (bus, mut consumers) = MemoryBus::new(1, 1024);
        let ingest = Arc::new(IngestService::new(
            IngestConfig::default(),
            Arc::new(bus),
            Arc::new(MemoryRateLimiter::default()),
            Arc::new(MemoryModeration::default()),
            WordFilter::empty(),
            Arc::new(Metrics::default()),
        ));
        Bench {
            ingest,
            consumer: Box::new(consumers.pop().unwrap()),
        }
    }

    fn relay(b: &Bench, store: Arc<dyn OutboxStore>, holder: &str) -> OutboxRelay {
        let ids = b.ingest.clone();
        OutboxRelay::new(
            RelayConfig {
                holder: holder.into(),
                ..RelayConfig::default()
            },
            store,
            b.ingest.clone(),
            move || ids.next_id(),
        )
    }

    async fn drain(consumer: &mut Box<dyn BusConsumer>, n: usize) -> Vec<InboundMessage> {
        let mut out = Vec::new();
        while out.len() < n {
            consumer.next(&mut out).await.unwrap();
        }
        out
    }

    #[tokio::test]
    async fn rows_are_pending_in_order_until_marked() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteOutbox::open(&dir.path().join("o.db")).unwrap();
        let ids: Vec<i64> = futures_ids(&s, &["a", "b", "c"]).await;
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        let p = s.pending(10).await.unwrap();
        assert_eq!(
            p.iter().map(|r| r.event.text.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(p[0].event.payload.as_deref(), Some(r#"{"gift":"yacht"}"#));
        assert_eq!(p[0].msg_id, None);
        s.assign_msg_id(ids[0], 77).await.unwrap();
        s.assign_msg_id(ids[0], 88).await.unwrap();
        assert_eq!(
            s.pending(1).await.unwrap()[0].msg_id,
            Some(77),
            "fixed once"
        );
        s.mark_sent(ids[0]).await.unwrap();
        assert_eq!(s.pending_count().await.unwrap(), 2);
        assert_eq!(s.pending(10).await.unwrap()[0].event.text, "b");
    }

    async fn futures_ids(s: &SqliteOutbox, texts: &[&str]) -> Vec<i64> {
        let mut ids = Vec::new();
        for t in texts {
            ids.push(s.insert(row(t)).await.unwrap());
        }
        ids
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

    #[tokio::test]
    async fn one_lease_holder_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        let a = SqliteOutbox::open(&path).unwrap();
        let b = SqliteOutbox::open(&path).unwrap();
        let ttl = Duration::from_secs(60);
        assert!(a.acquire_lease("a", ttl).await.unwrap());
        assert!(!b.acquire_lease("b", ttl).await.unwrap(), "a holds it");
        assert!(a.acquire_lease("a", ttl).await.unwrap(), "renewed");
        a.release_lease("a").await.unwrap();
        assert!(b.acquire_lease("b", Duration::ZERO).await.unwrap());
        // b's lease (ttl 0) has expired at once: a may take over.
        assert!(a.acquire_lease("a", ttl).await.unwrap());
        assert!(!b.acquire_lease("b", ttl).await.unwrap());
    }

    /// Publishes every row, in order; a restart between publishing and marking publishes that
    /// row once more with the same msg_id; nothing is lost; a second relay publishes nothing
    /// while the first holds the lease.
    #[tokio::test]
    async fn the_relay_survives_a_restart_between_publish_and_mark() {
        struct FailMarkOnce {
            inner: SqliteOutbox,
            fail_on: i64,
            failed: std::sync::atomic::AtomicBool,
        }
        impl OutboxStore for FailMarkOnce {
            fn insert(&self, row: NewOutboxRow) -> BoxFut<'_, Result<i64, StoreError>> {
                self.inner.insert(row)
            }
            fn acquire_lease<'a>(
                &'a self,
                h: &'a str,
                ttl: Duration,
            ) -> BoxFut<'a, Result<bool, StoreError>> {
                self.inner.acquire_lease(h, ttl)
            }
            fn release_lease<'a>(&'a self, h: &'a str) -> BoxFut<'a, Result<(), StoreError>> {
                self.inner.release_lease(h)
            }
            fn pending(&self, limit: usize) -> BoxFut<'_, Result<Vec<OutboxRow>, StoreError>> {
                self.inner.pending(limit)
            }
            fn assign_msg_id(&self, id: i64, m: u64) -> BoxFut<'_, Result<(), StoreError>> {
                self.inner.assign_msg_id(id, m)
            }
            fn mark_sent(&self, id: i64) -> BoxFut<'_, Result<(), StoreError>> {
                if id == self.fail_on
                    && !self.failed.swap(true, std::sync::atomic::Ordering::SeqCst)
                {
                    // The process "dies" right after publishing this row.
                    return Box::pin(std::future::ready(Err(StoreError::Closed)));
                }
                self.inner.mark_sent(id)
            }
            fn mark_failed(&self, id: i64) -> BoxFut<'_, Result<(), StoreError>> {
                self.inner.mark_failed(id)
            }
            fn pending_count(&self) -> BoxFut<'_, Result<u64, StoreError>> {
                self.inner.pending_count()
            }
        }

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        let writer = SqliteOutbox::open(&path).unwrap();
        let ids = futures_ids(&writer, &["one", "two", "three"]).await;
        let mut b = bench();

        let first = relay(
            &b,
            Arc::new(FailMarkOnce {
                inner: SqliteOutbox::open(&path).unwrap(),
                fail_on: ids[1],
                failed: false.into(),
            }),
            "relay-1",
        );
        assert!(
            first.cycle().await.is_err(),
            "dies between publish and mark"
        );
        let before = drain(&mut b.consumer, 2).await;
        drop(first); // never released its lease: the restarted relay has the same name

        let restarted = relay(&b, Arc::new(SqliteOutbox::open(&path).unwrap()), "relay-1");
        let rival = relay(&b, Arc::new(SqliteOutbox::open(&path).unwrap()), "relay-2");
        assert_eq!(restarted.cycle().await.unwrap(), Cycle::Published(2));
        assert_eq!(rival.cycle().await.unwrap(), Cycle::NotLeader);
        let after = drain(&mut b.consumer, 2).await;

        let texts: Vec<&str> = before
            .iter()
            .chain(&after)
            .map(|m| m.text.as_str())
            .collect();
        assert_eq!(
            texts,
            ["one", "two", "two", "three"],
            "in order, at least once"
        );
        assert_eq!(
            before[1].msg_id, after[0].msg_id,
            "the duplicate has the same msg_id"
        );
        assert!(before.iter().chain(&after).all(
            |m| m.kind == MsgKind::Gift && m.payload.as_deref() == Some(r#"{"gift":"yacht"}"#)
        ));
        assert_eq!(writer.pending_count().await.unwrap(), 0);
        assert_eq!(restarted.cycle().await.unwrap(), Cycle::Published(0));
    }
}
