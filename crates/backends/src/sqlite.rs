//! The SQLite message store (`sqlite://PATH`): `room_chat_message` plus each room's stream
//! position, in one file, in WAL mode.
//!
//! Writes go through the shared writer (`writer.rs`): one task, a bounded queue, everything
//! queued in one transaction (thousands of rows per commit under load), in order, a failed
//! transaction retried with backoff and never dropped while the process lives (the store
//! reports its error meanwhile, `/readyz` fails). Here a transaction runs on the blocking pool
//! on the writer's own connection; it also marks outbox rows sent in the transaction that stores
//! their messages (see `roomcast_core::outbox`), and between transactions old messages are
//! pruned in bounded chunks. Reads use their own connection on the blocking pool. A `meta` row
//! records whether the last run closed cleanly, so that a crash — which can lose the last queued
//! batches — makes rooms start new epochs instead of handing out the same `seq` twice.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use roomcast_core::BoxFut;
use roomcast_core::clock::now_ms;
use roomcast_core::ids::{NodeId, RoomId};
use roomcast_core::metrics::Metrics;
use roomcast_core::model::{RoomBatch, RoomMsg};
use roomcast_core::ports::{MessageStore, Partition, StoreError, StoredRoom};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::writer::{RetryOptions, Transactions, Writer};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS room_chat_message (
    id         INTEGER PRIMARY KEY,
    room_id    TEXT    NOT NULL,
    msg_id     INTEGER NOT NULL,
    uid        TEXT    NOT NULL,
    content    TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    epoch      INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    name       TEXT,
    kind       TEXT    NOT NULL,
    payload    TEXT
);
CREATE INDEX IF NOT EXISTS room_chat_message_room ON room_chat_message (room_id, id);
CREATE INDEX IF NOT EXISTS room_chat_message_created ON room_chat_message (created_at);
CREATE TABLE IF NOT EXISTS room_state (
    room_id  TEXT PRIMARY KEY,
    epoch    INTEGER NOT NULL,
    last_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS partition_owner (
    partition_id INTEGER PRIMARY KEY,
    owner        TEXT    NOT NULL,
    clean        INTEGER NOT NULL
);
";

#[derive(Clone)]
pub struct SqliteOptions {
    /// Messages older than this are deleted (at start, then at most once an hour). `None`: keep
    /// all.
    pub retention: Option<Duration>,
    /// Batches that may wait for the writer before `append` waits.
    pub queue: usize,
    /// Rows deleted per statement when pruning, so that a large backlog never holds the writer
    /// (and the messages queued behind it) for long.
    pub prune_chunk: usize,
    /// Pause after the first failed write; doubled after each further failure up to
    /// `retry_max`. A failed write is retried until it succeeds (or the store is closing).
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Where write failures are counted.
    pub metrics: Arc<Metrics>,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            retention: Some(Duration::from_secs(30 * 24 * 3600)),
            queue: 4096,
            prune_chunk: 5000,
            retry_base: Duration::from_millis(50),
            retry_max: Duration::from_secs(5),
            metrics: Arc::new(Metrics::default()),
        }
    }
}

pub struct SqliteStore {
    path: PathBuf,
    writer: Writer,
    reader: Arc<Mutex<Connection>>,
    previous_clean: bool,
}

pub(crate) fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// How soon a commit on a connection is on disk.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Durability {
    /// WAL + `synchronous=NORMAL`: a commit survives a process crash, the last ones may be lost
    /// on power loss. For the message store, whose writer batches thousands of rows per commit.
    Normal,
    /// WAL + `synchronous=FULL`: a commit is on disk when it returns. For the outbox and the ack
    /// store, whose promise is "durable when answered".
    Full,
}

pub(crate) fn open_connection(path: &Path, durability: Durability) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let level = match durability {
        Durability::Normal => "NORMAL",
        Durability::Full => "FULL",
    };
    conn.pragma_update(None, "synchronous", level)?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) the database and starts the writer (needs a tokio runtime).
    pub fn open(path: &Path, opts: SqliteOptions) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| unavailable(format!("{}: {e}", dir.display())))?;
        }
        let writer = open_connection(path, Durability::Normal)
            .map_err(|e| unavailable(format!("{}: {e}", path.display())))?;
        writer.execute_batch(SCHEMA).map_err(unavailable)?;
        unique_msg_ids(&writer).map_err(unavailable)?;
        // The writer marks outbox rows sent in the transaction that stores their messages.
        writer
            .execute_batch(crate::sqlite_outbox::SCHEMA)
            .map_err(unavailable)?;
        let clean: Option<String> = writer
            .query_row("SELECT value FROM meta WHERE key = 'clean'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(unavailable)?;
        let has_rooms: bool = writer
            .query_row("SELECT EXISTS (SELECT 1 FROM room_state)", [], |r| r.get(0))
            .map_err(unavailable)?;
        // A new database is clean; an existing one is clean only if the last run said so.
        let previous_clean = clean.as_deref() == Some("1") || (clean.is_none() && !has_rooms);
        writer
            .execute("INSERT INTO meta (key, value) VALUES ('clean', '0') ON CONFLICT (key) DO UPDATE SET value = '0'", [])
            .map_err(unavailable)?;
        let reader = open_connection(path, Durability::Normal).map_err(unavailable)?;
        let retry = RetryOptions {
            queue: opts.queue,
            base: opts.retry_base,
            max: opts.retry_max,
            metrics: opts.metrics.clone(),
        };
        let writer = Writer::start(
            SqliteTransactions {
                conn: Arc::new(Mutex::new(writer)),
                retention: opts.retention,
                prune_chunk: opts.prune_chunk.max(1),
                prune_due: opts.retention.is_some(),
                last_prune: Instant::now(),
            },
            retry,
        );
        Ok(SqliteStore {
            path: path.to_owned(),
            writer,
            reader: Arc::new(Mutex::new(reader)),
            previous_clean,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The SQLite side of the shared writer: its transactions run on the blocking pool, one at a
/// time, on the writer's own connection; its chore prunes old messages in bounded chunks, so
/// that a large backlog never holds the batches queued behind it for long.
struct SqliteTransactions {
    conn: Arc<Mutex<Connection>>,
    retention: Option<Duration>,
    prune_chunk: usize,
    /// Pruning starts at once (a backlog from a long stop), then at most once an hour.
    prune_due: bool,
    last_prune: Instant,
}

impl SqliteTransactions {
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, String> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || f(&mut conn.lock()))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }
}

impl Transactions for SqliteTransactions {
    fn name(&self) -> &'static str {
        "SQLite"
    }

    fn write(&mut self, batches: Vec<Arc<RoomBatch>>) -> BoxFut<'_, Result<(), String>> {
        Box::pin(self.blocking(move |c| write_batches(c, &batches)))
    }

    fn record_clean(&mut self) -> BoxFut<'_, ()> {
        Box::pin(async move {
            let done = self
                .blocking(|c| {
                    c.execute("UPDATE meta SET value = '1' WHERE key = 'clean'", [])?;
                    // Folds the WAL back into the database file, so a stopped store is one file.
                    c.pragma_update(None, "wal_checkpoint", "TRUNCATE")
                })
                .await;
            if let Err(e) = done {
                tracing::error!(error = %e, "cannot record clean shutdown");
            }
        })
    }

    fn chore(&mut self) -> BoxFut<'_, bool> {
        Box::pin(async move {
            let Some(keep) = self.retention else {
                return false;
            };
            if !self.prune_due && self.last_prune.elapsed() > Duration::from_secs(3600) {
                self.prune_due = true;
            }
            if !self.prune_due {
                return false;
            }
            let cutoff = now_ms().saturating_sub(keep.as_millis() as u64) as i64;
            let chunk = self.prune_chunk;
            match self.blocking(move |c| prune_chunk(c, cutoff, chunk)).await {
                Ok(n) => {
                    if n > 0 {
                        tracing::debug!(deleted = n, "pruned old messages");
                    }
                    self.prune_due = n >= chunk;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot prune old messages");
                    self.prune_due = false;
                }
            }
            if !self.prune_due {
                self.last_prune = Instant::now();
            }
            self.prune_due
        })
    }
}

/// One copy of a message per `(room_id, msg_id)`: a message the bus redelivers after a worker
/// crash gets a new `(epoch, seq)` from the partition's next owner, so only its id can tell it is
/// stored already. The unique index is created at the first open of a database from before it,
/// after deleting all but the newest copy of any message stored twice (the newest is the one of
/// the room's latest epoch, the one a client recovering in that epoch asks for).
fn unique_msg_ids(conn: &Connection) -> rusqlite::Result<()> {
    let exists: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'room_chat_message_msg')",
        [],
        |r| r.get(0),
    )?;
    if exists {
        return Ok(());
    }
    let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    let deleted = tx.execute(
        "DELETE FROM room_chat_message WHERE id NOT IN
         (SELECT MAX(id) FROM room_chat_message GROUP BY room_id, msg_id)",
        [],
    )?;
    if deleted > 0 {
        tracing::warn!(
            deleted,
            "deleted older copies of messages stored more than once"
        );
    }
    tx.execute(
        "CREATE UNIQUE INDEX IF NOT EXISTS room_chat_message_msg ON room_chat_message (room_id, msg_id)",
        [],
    )?;
    tx.commit()
}

/// Deletes up to `chunk` messages older than `cutoff_ms`; returns how many.
fn prune_chunk(conn: &Connection, cutoff_ms: i64, chunk: usize) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM room_chat_message WHERE id IN
         (SELECT id FROM room_chat_message WHERE created_at < ?1 ORDER BY created_at LIMIT ?2)",
        params![cutoff_ms, chunk as i64],
    )
}

fn write_batches(conn: &mut Connection, batches: &[Arc<RoomBatch>]) -> rusqlite::Result<()> {
    // IMMEDIATE: an outbox message's first statement reads; a deferred transaction would then
    // fail its first write whenever another connection committed in between.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO room_chat_message (room_id, msg_id, uid, content, created_at, epoch, seq, name, kind, payload)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (room_id, msg_id) DO NOTHING",
        )?;
        let mut state = tx.prepare_cached(
            "INSERT INTO room_state (room_id, epoch, last_seq) VALUES (?1, ?2, ?3)
             ON CONFLICT (room_id) DO UPDATE SET epoch = excluded.epoch, last_seq = excluded.last_seq",
        )?;
        let mut outbox_state = tx.prepare_cached(
            "SELECT sent_at FROM room_chat_outbox WHERE msg_id = ?1 AND sent_at IS NOT NULL",
        )?;
        let mut outbox_sent = tx.prepare_cached(
            "UPDATE room_chat_outbox SET sent_at = ?2 WHERE msg_id = ?1 AND sent_at IS NULL",
        )?;
        let now = now_ms() as i64;
        for b in batches {
            for m in &b.msgs {
                if b.outbox_ids.contains(&m.msg_id) {
                    // A copy the relay re-published after the first was stored: keep one.
                    if outbox_state.exists(params![m.msg_id as i64])? {
                        continue;
                    }
                    outbox_sent.execute(params![m.msg_id as i64, now])?;
                }
                insert.execute(params![
                    m.room_id,
                    m.msg_id as i64,
                    m.user_id,
                    m.text,
                    m.ts as i64,
                    m.epoch,
                    m.seq as i64,
                    m.name,
                    m.kind,
                    m.payload,
                ])?;
            }
            state.execute(params![b.room.as_str(), b.epoch, b.last_seq() as i64])?;
        }
    }
    tx.commit()
}

fn load(conn: &Connection, room: &str, limit: usize) -> rusqlite::Result<Option<StoredRoom>> {
    let state: Option<(u32, i64)> = conn
        .query_row(
            "SELECT epoch, last_seq FROM room_state WHERE room_id = ?1",
            [room],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((epoch, last_seq)) = state else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(
        "SELECT msg_id, uid, content, created_at, epoch, seq, name, kind, payload
         FROM room_chat_message WHERE room_id = ?1 ORDER BY id DESC LIMIT ?2",
    )?;
    let mut recent: Vec<RoomMsg> = stmt
        .query_map(params![room, limit as i64], |r| {
            Ok(RoomMsg {
                room_id: room.to_owned(),
                msg_id: r.get::<_, i64>(0)? as u64,
                user_id: r.get(1)?,
                text: r.get(2)?,
                ts: r.get::<_, i64>(3)? as u64,
                epoch: r.get(4)?,
                seq: r.get::<_, i64>(5)? as u64,
                name: r.get(6)?,
                kind: r.get(7)?,
                payload: r.get(8)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    recent.reverse();
    Ok(Some(StoredRoom {
        epoch,
        last_seq: last_seq as u64,
        recent,
    }))
}

fn read_after(
    conn: &Connection,
    room: &str,
    epoch: u32,
    after_seq: u64,
    limit: usize,
) -> rusqlite::Result<Vec<RoomMsg>> {
    let mut stmt = conn.prepare_cached(
        "SELECT msg_id, uid, content, created_at, epoch, seq, name, kind, payload
         FROM room_chat_message WHERE room_id = ?1 AND epoch = ?2 AND seq > ?3
         ORDER BY seq LIMIT ?4",
    )?;
    stmt.query_map(params![room, epoch, after_seq as i64, limit as i64], |r| {
        Ok(RoomMsg {
            room_id: room.to_owned(),
            msg_id: r.get::<_, i64>(0)? as u64,
            user_id: r.get(1)?,
            text: r.get(2)?,
            ts: r.get::<_, i64>(3)? as u64,
            epoch: r.get(4)?,
            seq: r.get::<_, i64>(5)? as u64,
            name: r.get(6)?,
            kind: r.get(7)?,
            payload: r.get(8)?,
        })
    })?
    .collect()
}

impl MessageStore for SqliteStore {
    fn append(&self, batch: Arc<RoomBatch>) -> BoxFut<'_, Result<(), StoreError>> {
        Box::pin(self.writer.append(batch))
    }

    fn load_room(
        &self,
        room: &RoomId,
        limit: usize,
    ) -> BoxFut<'_, Result<Option<StoredRoom>, StoreError>> {
        let reader = self.reader.clone();
        let room = room.as_str().to_owned();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || load(&reader.lock(), &room, limit))
                .await
                .map_err(unavailable)?
                .map_err(unavailable)
        })
    }

    fn read_after(
        &self,
        room: &RoomId,
        epoch: u32,
        after_seq: u64,
        limit: usize,
    ) -> BoxFut<'_, Result<Vec<RoomMsg>, StoreError>> {
        let reader = self.reader.clone();
        let room = room.as_str().to_owned();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                read_after(&reader.lock(), &room, epoch, after_seq, limit)
            })
            .await
            .map_err(unavailable)?
            .map_err(unavailable)
        })
    }

    fn flush(&self) -> BoxFut<'_, Result<(), StoreError>> {
        Box::pin(self.writer.flush())
    }

    fn previous_shutdown_clean(&self) -> bool {
        self.previous_clean
    }

    fn write_error(&self) -> Option<String> {
        self.writer.error()
    }

    fn close(&self) -> BoxFut<'_, Result<(), StoreError>> {
        Box::pin(self.writer.close())
    }

    fn claim_partitions<'a>(
        &'a self,
        owner: &'a NodeId,
        partitions: &'a [Partition],
    ) -> BoxFut<'a, Result<Vec<Partition>, StoreError>> {
        // On the reader's connection (the writer's belongs to its thread); WAL lets both write.
        let conn = self.reader.clone();
        let (owner, partitions, absent_clean) = (
            owner.as_str().to_owned(),
            partitions.to_vec(),
            self.previous_clean,
        );
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut conn = conn.lock();
                // IMMEDIATE: the write lock first, waited for under the busy timeout. A deferred
                // transaction would read, then fail at once on its first write if another
                // connection (the outbox relay's lease, the ack store) committed in between.
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let mut unclean = Vec::new();
                for p in partitions {
                    let clean: Option<bool> = tx
                        .query_row(
                            "SELECT clean FROM partition_owner WHERE partition_id = ?1",
                            [p],
                            |r| r.get(0),
                        )
                        .optional()?;
                    if !clean.unwrap_or(absent_clean) {
                        unclean.push(p);
                    }
                    tx.execute(
                        "INSERT INTO partition_owner (partition_id, owner, clean) VALUES (?1, ?2, 0) \
                         ON CONFLICT (partition_id) DO UPDATE SET owner = ?2, clean = 0",
                        params![p, owner],
                    )?;
                }
                tx.commit()?;
                Ok::<_, rusqlite::Error>(unclean)
            })
            .await
            .map_err(unavailable)?
            .map_err(unavailable)
        })
    }

    fn release_partitions<'a>(
        &'a self,
        owner: &'a NodeId,
        partitions: &'a [Partition],
    ) -> BoxFut<'a, Result<(), StoreError>> {
        let conn = self.reader.clone();
        let (owner, partitions) = (owner.as_str().to_owned(), partitions.to_vec());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut conn = conn.lock();
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                for p in partitions {
                    tx.execute(
                        "UPDATE partition_owner SET clean = 1 WHERE partition_id = ?1 AND owner = ?2",
                        params![p, owner],
                    )?;
                }
                tx.commit()
            })
            .await
            .map_err(unavailable)?
            .map_err(unavailable)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// testkit messages are from 2023: no retention, or pruning at start would remove them.
    fn open(dir: &tempfile::TempDir) -> SqliteStore {
        let opts = SqliteOptions {
            retention: None,
            ..SqliteOptions::default()
        };
        SqliteStore::open(&dir.path().join("db/roomcast.db"), opts).unwrap()
    }

    #[tokio::test]
    async fn passes_the_message_store_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        roomcast_core::testkit::message_store_suite(&store).await;
    }

    #[tokio::test]
    async fn survives_reopen_and_tracks_clean_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        assert!(
            store.previous_shutdown_clean(),
            "a new database counts as clean"
        );
        let batch = roomcast_core::testkit::batch("r", 9, 1..=3);
        store.append(Arc::new(batch)).await.unwrap();
        store.close().await.unwrap();
        assert!(matches!(
            store
                .append(Arc::new(roomcast_core::testkit::batch("r", 9, 4..=4)))
                .await,
            Err(StoreError::Closed)
        ));
        drop(store);

        let store = open(&dir);
        assert!(store.previous_shutdown_clean());
        let room = store
            .load_room(&RoomId::parse("r").unwrap(), 10)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((room.epoch, room.last_seq, room.recent.len()), (9, 3, 3));
        // No close this time: the next open must see an unclean shutdown.
        store.flush().await.unwrap();
        drop(store);
        let store = open(&dir);
        assert!(!store.previous_shutdown_clean());
    }

    #[tokio::test]
    async fn a_bad_path_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let err = SqliteStore::open(&file.join("db"), SqliteOptions::default())
            .err()
            .unwrap();
        assert!(err.to_string().contains("file"), "{err}");
    }

    fn raw(dir: &tempfile::TempDir) -> Connection {
        Connection::open(dir.path().join("db/roomcast.db")).unwrap()
    }

    fn stored(dir: &tempfile::TempDir) -> i64 {
        raw(dir)
            .query_row("SELECT COUNT(*) FROM room_chat_message", [], |r| r.get(0))
            .unwrap()
    }

    /// Writes fail (a trigger refuses them): the batch is retried, failures are counted, the
    /// store reports its error; once writes work again, the batch is stored — nothing dropped.
    #[tokio::test]
    async fn a_failed_write_is_retried_until_it_works_and_reported_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::default());
        let store = Arc::new(
            SqliteStore::open(
                &dir.path().join("db/roomcast.db"),
                SqliteOptions {
                    retry_base: Duration::from_millis(1),
                    retry_max: Duration::from_millis(20),
                    metrics: metrics.clone(),
                    ..SqliteOptions::default()
                },
            )
            .unwrap(),
        );
        let db = raw(&dir);
        db.execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON room_chat_message
             BEGIN SELECT RAISE(ABORT, 'disk says no'); END;",
        )
        .unwrap();
        store
            .append(Arc::new(roomcast_core::testkit::batch("r", 9, 1..=3)))
            .await
            .unwrap();
        // A flush waits for the write, which cannot happen yet.
        let flushed = tokio::spawn({
            let store = store.clone();
            async move { store.flush().await }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while metrics.store_write_failures.get() < 3 {
            assert!(!flushed.is_finished(), "not durable yet");
            assert!(Instant::now() < deadline, "no retries");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let why = store.write_error().expect("the store says it cannot write");
        assert!(why.contains("disk says no"), "{why}");
        assert_eq!(metrics.store_write_failing.get(), 1);
        assert_eq!(stored(&dir), 0);

        db.execute_batch("DROP TRIGGER refuse").unwrap();
        flushed.await.unwrap().unwrap();
        assert_eq!(stored(&dir), 3, "the batch was kept and written");
        assert_eq!(store.write_error(), None);
        assert_eq!(metrics.store_write_failing.get(), 0);
        store.close().await.unwrap();
        drop(store);
        assert!(open(&dir).previous_shutdown_clean(), "nothing was lost");
    }

    #[tokio::test]
    async fn a_store_closing_while_writes_fail_gives_up_and_is_not_clean() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(
            &dir.path().join("db/roomcast.db"),
            SqliteOptions {
                retention: None,
                retry_base: Duration::from_millis(1),
                retry_max: Duration::from_millis(5),
                ..SqliteOptions::default()
            },
        )
        .unwrap();
        raw(&dir)
            .execute_batch(
                "CREATE TRIGGER refuse BEFORE INSERT ON room_chat_message
                 BEGIN SELECT RAISE(ABORT, 'disk says no'); END;",
            )
            .unwrap();
        store
            .append(Arc::new(roomcast_core::testkit::batch("r", 9, 1..=3)))
            .await
            .unwrap();
        store.close().await.unwrap();
        drop(store);
        assert!(!open(&dir).previous_shutdown_clean());
    }

    /// The epoch a room gets after a crash is stored at once, so a clean restart after it
    /// cannot bring back the older epoch.
    #[tokio::test]
    async fn a_fresh_epoch_after_a_crash_is_kept_by_a_clean_restart() {
        use roomcast_core::config::HistoryConfig;
        use roomcast_core::history::History;
        let dir = tempfile::tempdir().unwrap();
        let room = RoomId::parse("r").unwrap();
        let store = open(&dir);
        store
            .append(Arc::new(roomcast_core::testkit::batch("r", 9, 1..=3)))
            .await
            .unwrap();
        store.flush().await.unwrap();
        drop(store); // a crash: never closed

        let store: Arc<dyn MessageStore> = Arc::new(open(&dir));
        assert!(!store.previous_shutdown_clean());
        let fresh = {
            let h = History::new(HistoryConfig::default(), store.clone());
            let (epoch, last) = h.cursor(&room).await.unwrap();
            assert_ne!(epoch, 9);
            assert_eq!(last, 0);
            epoch
        };
        store.close().await.unwrap(); // clean, with no message of the fresh epoch
        drop(store);

        let store: Arc<dyn MessageStore> = Arc::new(open(&dir));
        assert!(store.previous_shutdown_clean());
        let h = History::new(HistoryConfig::default(), store);
        assert_eq!(h.cursor(&room).await.unwrap(), (fresh, 0));
    }

    /// A database from before the unique `(room_id, msg_id)` index that holds a message twice (a
    /// redelivery stored under the next owner's epoch): the first open keeps the newest copy and
    /// adds the index; from then on a copy is never stored again.
    #[tokio::test]
    async fn an_older_database_holding_duplicates_keeps_the_newest_copy() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("db")).unwrap();
        let db = raw(&dir);
        db.execute_batch(SCHEMA).unwrap();
        for (msg_id, epoch, seq) in [(1001, 1, 1), (1002, 1, 2), (1001, 2, 1)] {
            db.execute(
                "INSERT INTO room_chat_message (room_id, msg_id, uid, content, created_at, epoch, seq, kind)
                 VALUES ('r', ?1, 'u', 'hi', 1, ?2, ?3, 'chat')",
                params![msg_id, epoch, seq],
            )
            .unwrap();
        }
        db.execute("INSERT INTO room_state VALUES ('r', 2, 1)", [])
            .unwrap();
        drop(db);

        let store = open(&dir);
        let room = RoomId::parse("r").unwrap();
        let got = store.load_room(&room, 10).await.unwrap().unwrap();
        assert_eq!(
            got.recent
                .iter()
                .map(|m| (m.msg_id, m.epoch, m.seq))
                .collect::<Vec<_>>(),
            [(1002, 1, 2), (1001, 2, 1)]
        );
        let mut again = roomcast_core::testkit::batch("r", 2, 2..=2);
        Arc::make_mut(&mut again.msgs[0]).msg_id = 1002;
        store.append(Arc::new(again)).await.unwrap();
        store.flush().await.unwrap();
        assert_eq!(stored(&dir), 2, "not stored a third time");
        store.close().await.unwrap();
    }

    /// Partition claims and releases share the file with other writers (the outbox relay renews
    /// its lease every 100 ms, the ack store writes through): they must wait for the write lock,
    /// never fail. A deferred transaction that reads first and writes second fails at once
    /// (`SQLITE_BUSY`, which the busy timeout does not cover) when another connection committed
    /// in between; a failed claim makes every room of the partition start a new epoch.
    #[tokio::test]
    async fn partition_claims_wait_for_other_writers_instead_of_failing() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db/roomcast.db");
        let store = open(&dir);
        let stop = Arc::new(AtomicBool::new(false));
        let writer = std::thread::spawn({
            let (path, stop) = (path.clone(), stop.clone());
            move || {
                let c = open_connection(&path, Durability::Normal).unwrap();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    c.execute(
                        "INSERT INTO meta (key, value) VALUES ('busy', ?1)
                         ON CONFLICT (key) DO UPDATE SET value = ?1",
                        [n.to_string()],
                    )
                    .unwrap();
                    n += 1;
                }
                n
            }
        });
        let owner = NodeId::new("w");
        for _ in 0..300 {
            let unclean = store.claim_partitions(&owner, &[1, 2, 3]).await;
            assert_eq!(unclean.map_err(|e| e.to_string()), Ok(vec![]), "claimed");
            store
                .release_partitions(&owner, &[1, 2, 3])
                .await
                .expect("released");
        }
        stop.store(true, Ordering::Relaxed);
        assert!(
            writer.join().unwrap() > 0,
            "the other writer wrote meanwhile"
        );
    }

    /// Old messages are pruned at start, in chunks, while new ones are written.
    #[tokio::test]
    async fn old_messages_are_pruned_at_start_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        // testkit batches are from 2023: far older than any retention below.
        store
            .append(Arc::new(roomcast_core::testkit::batch("old", 1, 1..=25)))
            .await
            .unwrap();
        store.close().await.unwrap();
        drop(store);
        assert_eq!(stored(&dir), 25);

        let store = SqliteStore::open(
            &dir.path().join("db/roomcast.db"),
            SqliteOptions {
                retention: Some(Duration::from_secs(86_400)),
                prune_chunk: 4,
                ..SqliteOptions::default()
            },
        )
        .unwrap();
        let mut fresh = roomcast_core::testkit::batch("new", 1, 1..=2);
        for m in &mut fresh.msgs {
            Arc::make_mut(m).ts = now_ms();
        }
        store.append(Arc::new(fresh)).await.unwrap();
        // Pruning runs without any further command; wait for it to finish.
        let deadline = Instant::now() + Duration::from_secs(10);
        while stored(&dir) != 2 {
            assert!(Instant::now() < deadline, "not pruned: {}", stored(&dir));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let kept = store
            .load_room(&RoomId::parse("new").unwrap(), 10)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(kept.recent.len(), 2, "recent messages are kept");
        store.close().await.unwrap();
    }
}
