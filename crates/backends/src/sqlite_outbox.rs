//! `room_chat_outbox` in SQLite (standalone's outbox; the backend writes rows in its own
//! transactions on the same table shape in its MySQL-protocol database in production), plus the
//! relay lease (`room_chat_outbox_lease`). Rows are marked sent by the message store's writer
//! (`sqlite.rs`), in the transaction that stores their messages — never here.

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
    use crate::sqlite::{SqliteOptions, SqliteStore};
    use roomcast_core::config::IngestConfig;
    use roomcast_core::ingest::IngestService;
    use roomcast_core::ingest::filter::WordFilter;
    use roomcast_core::memory::{MemoryBus, MemoryModeration, MemoryRateLimiter};
    use roomcast_core::metrics::Metrics;
    use roomcast_core::model::InboundMessage;
    use roomcast_core::model::RoomBatch;
    use roomcast_core::outbox::{Cycle, OutboxRelay, RelayConfig};
    use roomcast_core::ports::{BusConsumer, BusEvent, MessageStore};
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
        let mut events = Vec::new();
        while out.len() < n {
            consumer.next(&mut events).await.unwrap();
            out.extend(events.drain(..).filter_map(BusEvent::into_message));
        }
        out
    }

    #[tokio::test]
    async fn rows_are_pending_in_order_until_stored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        let s = SqliteOutbox::open(&path).unwrap();
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
        let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
        store_copies(&store, &s.pending(1).await.unwrap()).await;
        assert_eq!(
            s.pending_count().await.unwrap(),
            2,
            "marked sent by the store"
        );
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

    /// Stores messages as a room worker would: one batch, outbox ids named.
    async fn store_msgs(store: &SqliteStore, msgs: &[InboundMessage]) {
        let room = RoomId::parse("paid-room").unwrap();
        let (epoch, last) = match store.load_room(&room, 0).await.unwrap() {
            Some(r) => (r.epoch, r.last_seq),
            None => (1, 0),
        };
        let batch = RoomBatch {
            room,
            epoch,
            msgs: msgs
                .iter()
                .zip(last + 1..)
                .map(|(m, seq)| Arc::new(m.sequenced(epoch, seq)))
                .collect(),
            outbox_ids: msgs
                .iter()
                .filter(|m| m.from_outbox)
                .map(|m| m.msg_id.0)
                .collect(),
        };
        store.append(Arc::new(batch)).await.unwrap();
        store.flush().await.unwrap();
    }

    /// Stores the messages of rows as published with their fixed msg_ids.
    async fn store_copies(store: &SqliteStore, rows: &[OutboxRow]) {
        let msgs: Vec<InboundMessage> = rows
            .iter()
            .map(|r| InboundMessage {
                room: r.event.room.clone(),
                msg_id: roomcast_core::ids::MsgId(r.msg_id.unwrap_or(r.id as u64)),
                user: r.event.user.clone(),
                name: None,
                text: r.event.text.clone(),
                kind: r.event.kind,
                ts: now_ms(),
                payload: r.event.payload.clone(),
                from_outbox: true,
            })
            .collect();
        store_msgs(store, &msgs).await;
    }

    fn stored_count(path: &std::path::Path, msg_id: u64) -> i64 {
        rusqlite::Connection::open(path)
            .unwrap()
            .query_row(
                "SELECT COUNT(*) FROM room_chat_message WHERE msg_id = ?1",
                [msg_id as i64],
                |r| r.get(0),
            )
            .unwrap()
    }

    /// A published row stays pending until the store has its message (the relay never marks
    /// it): a crash before that publishes it again with the same msg_id, the store keeps one
    /// copy, nothing is lost, and a second relay publishes nothing while the first holds the
    /// lease. Before the fix, the relay marked rows sent on ingest acceptance: "two" and
    /// "three" were lost with the crash.
    #[tokio::test]
    async fn a_row_is_pending_until_its_message_is_stored_then_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        let writer = SqliteOutbox::open(&path).unwrap();
        let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
        futures_ids(&writer, &["one", "two", "three"]).await;
        let mut b = bench();

        let first = relay(&b, Arc::new(SqliteOutbox::open(&path).unwrap()), "relay-1");
        assert_eq!(first.cycle().await.unwrap(), Cycle::Published(3));
        let before = drain(&mut b.consumer, 3).await;
        assert!(before.iter().all(|m| m.from_outbox));
        assert_eq!(
            first.cycle().await.unwrap(),
            Cycle::Published(0),
            "in flight: not published again each cycle"
        );
        assert_eq!(first.in_flight(), 3);
        assert_eq!(
            writer.pending_count().await.unwrap(),
            3,
            "published is not sent"
        );

        // Only "one" reaches the store; then the process dies ("two" and "three" were still
        // in the bus / the worker / the writer queue).
        store_msgs(&store, &before[..1]).await;
        assert_eq!(writer.pending_count().await.unwrap(), 2);
        assert_eq!(first.cycle().await.unwrap(), Cycle::Published(0));
        assert_eq!(first.in_flight(), 2, "the stored row is forgotten");
        drop(first); // never released its lease: the restarted relay has the same name

        let restarted = relay(&b, Arc::new(SqliteOutbox::open(&path).unwrap()), "relay-1");
        let rival = relay(&b, Arc::new(SqliteOutbox::open(&path).unwrap()), "relay-2");
        assert_eq!(restarted.cycle().await.unwrap(), Cycle::Published(2));
        assert_eq!(rival.cycle().await.unwrap(), Cycle::NotLeader);
        let after = drain(&mut b.consumer, 2).await;
        assert_eq!(
            after.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
            ["two", "three"],
            "in order"
        );
        assert_eq!(
            (before[1].msg_id, before[2].msg_id),
            (after[0].msg_id, after[1].msg_id),
            "re-published with the same msg_id"
        );
        assert!(before.iter().chain(&after).all(
            |m| m.kind == MsgKind::Gift && m.payload.as_deref() == Some(r#"{"gift":"yacht"}"#)
        ));

        // Had the old copy of "two" survived after all, both copies reach the store: one kept.
        store_msgs(&store, &[before[1].clone(), after[0].clone()]).await;
        store_msgs(&store, &after).await;
        assert_eq!(writer.pending_count().await.unwrap(), 0);
        for m in before.iter().chain(&after) {
            assert_eq!(stored_count(&path, m.msg_id.0), 1, "{}", m.text);
        }
        assert_eq!(restarted.cycle().await.unwrap(), Cycle::Published(0));
        assert_eq!(restarted.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_row_still_pending_after_resend_after_is_published_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        let s = Arc::new(SqliteOutbox::open(&path).unwrap());
        futures_ids(&s, &["lost"]).await;
        let mut b = bench();
        let ids = b.ingest.clone();
        let r = OutboxRelay::new(
            RelayConfig {
                resend_after: Duration::ZERO,
                ..RelayConfig::default()
            },
            s.clone(),
            b.ingest.clone(),
            move || ids.next_id(),
        );
        assert_eq!(r.cycle().await.unwrap(), Cycle::Published(1));
        assert_eq!(r.cycle().await.unwrap(), Cycle::Published(1));
        let copies = drain(&mut b.consumer, 2).await;
        assert_eq!(copies[0].msg_id, copies[1].msg_id);
    }
}
