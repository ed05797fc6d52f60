//! The SQLite message store (`sqlite://PATH`): `room_chat_message` plus each room's stream
//! position, in one file, in WAL mode.
//!
//! One writer thread takes batches from a bounded queue and writes everything queued in one
//! transaction (thousands of rows per commit under load); reads use their own connection on the
//! blocking pool. A `meta` row records whether the last run closed cleanly, so that a crash —
//! which can lose the last queued batches — makes rooms start new epochs instead of handing out
//! the same `seq` twice.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use roomcast_core::BoxFut;
use roomcast_core::clock::now_ms;
use roomcast_core::ids::RoomId;
use roomcast_core::model::{RoomBatch, RoomMsg};
use roomcast_core::ports::{MessageStore, StoreError, StoredRoom};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

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
";

#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Messages older than this are deleted (checked at most once an hour). `None`: keep all.
    pub retention: Option<Duration>,
    /// Batches that may wait for the writer before `append` waits.
    pub queue: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            retention: Some(Duration::from_secs(30 * 24 * 3600)),
            queue: 4096,
        }
    }
}

enum Cmd {
    Append(Arc<RoomBatch>),
    Flush(oneshot::Sender<()>),
    Close(oneshot::Sender<()>),
}

pub struct SqliteStore {
    path: PathBuf,
    tx: mpsc::Sender<Cmd>,
    reader: Arc<Mutex<Connection>>,
    previous_clean: bool,
    closed: AtomicBool,
}

pub(crate) fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

pub(crate) fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) the database and starts the writer thread.
    pub fn open(path: &Path, opts: SqliteOptions) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| unavailable(format!("{}: {e}", dir.display())))?;
        }
        let writer =
            open_connection(path).map_err(|e| unavailable(format!("{}: {e}", path.display())))?;
        writer.execute_batch(SCHEMA).map_err(unavailable)?;
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
        let reader = open_connection(path).map_err(unavailable)?;
        let (tx, rx) = mpsc::channel(opts.queue.max(1));
        let retention = opts.retention;
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(writer, rx, retention))
            .map_err(unavailable)?;
        Ok(SqliteStore {
            path: path.to_owned(),
            tx,
            reader: Arc::new(Mutex::new(reader)),
            previous_clean,
            closed: AtomicBool::new(false),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn command(
        &self,
        make: impl FnOnce(oneshot::Sender<()>) -> Cmd,
    ) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(make(done))
            .await
            .map_err(|_| StoreError::Closed)?;
        wait.await.map_err(|_| StoreError::Closed)
    }
}

fn writer_loop(mut conn: Connection, mut rx: mpsc::Receiver<Cmd>, retention: Option<Duration>) {
    let mut last_prune = Instant::now();
    let mut cmds = Vec::with_capacity(1024);
    // Once a batch could not be written, this run must not be recorded as clean: the next start
    // gives rooms new epochs instead of handing out the lost batch's seq numbers again.
    let mut lost_writes = false;
    loop {
        let Some(first) = rx.blocking_recv() else {
            return;
        };
        cmds.push(first);
        while cmds.len() < 1024 {
            match rx.try_recv() {
                Ok(c) => cmds.push(c),
                Err(_) => break,
            }
        }
        let batches: Vec<&Arc<RoomBatch>> = cmds
            .iter()
            .filter_map(|c| match c {
                Cmd::Append(b) => Some(b),
                _ => None,
            })
            .collect();
        if !batches.is_empty()
            && let Err(e) = write_batches(&mut conn, &batches)
        {
            tracing::error!(error = %e, batches = batches.len(), "cannot write messages to SQLite");
            lost_writes = true;
        }
        if let Some(keep) = retention
            && last_prune.elapsed() > Duration::from_secs(3600)
        {
            last_prune = Instant::now();
            let cutoff = now_ms().saturating_sub(keep.as_millis() as u64) as i64;
            match conn.execute(
                "DELETE FROM room_chat_message WHERE created_at < ?1",
                [cutoff],
            ) {
                Ok(n) if n > 0 => tracing::info!(deleted = n, "pruned old messages"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot prune old messages"),
            }
        }
        let mut stop = false;
        for c in cmds.drain(..) {
            match c {
                Cmd::Append(_) => {}
                Cmd::Flush(done) => {
                    let _ = done.send(());
                }
                Cmd::Close(done) => {
                    if lost_writes {
                        tracing::warn!(
                            "messages were lost this run; not recording a clean shutdown"
                        );
                    } else if let Err(e) =
                        conn.execute("UPDATE meta SET value = '1' WHERE key = 'clean'", [])
                    {
                        tracing::error!(error = %e, "cannot record clean shutdown");
                    }
                    let _ = conn.pragma_update(None, "wal_checkpoint", "TRUNCATE");
                    let _ = done.send(());
                    stop = true;
                }
            }
        }
        if stop {
            return;
        }
    }
}

fn write_batches(conn: &mut Connection, batches: &[&Arc<RoomBatch>]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO room_chat_message (room_id, msg_id, uid, content, created_at, epoch, seq, name, kind, payload)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        let mut state = tx.prepare_cached(
            "INSERT INTO room_state (room_id, epoch, last_seq) VALUES (?1, ?2, ?3)
             ON CONFLICT (room_id) DO UPDATE SET epoch = excluded.epoch, last_seq = excluded.last_seq",
        )?;
        for b in batches {
            for m in &b.msgs {
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

impl MessageStore for SqliteStore {
    fn append(&self, batch: Arc<RoomBatch>) -> BoxFut<'_, Result<(), StoreError>> {
        Box::pin(async move {
            if self.closed.load(Ordering::Relaxed) {
                return Err(StoreError::Closed);
            }
            self.tx
                .send(Cmd::Append(batch))
                .await
                .map_err(|_| StoreError::Closed)
        })
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

    fn flush(&self) -> BoxFut<'_, Result<(), StoreError>> {
        Box::pin(self.command(Cmd::Flush))
    }

    fn previous_shutdown_clean(&self) -> bool {
        self.previous_clean
    }

    fn close(&self) -> BoxFut<'_, Result<(), StoreError>> {
        Box::pin(async move {
            if self.closed.swap(true, Ordering::Relaxed) {
                return Ok(());
            }
            self.command(Cmd::Close).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &tempfile::TempDir) -> SqliteStore {
        SqliteStore::open(&dir.path().join("db/roomcast.db"), SqliteOptions::default()).unwrap()
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
}
