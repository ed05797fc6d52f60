//! The MySQL-protocol store (feature `mysql`, `mysql://user:password@host:port/db`): TiDB in
//! production, MariaDB or MySQL locally (R22: `room_chat_message(room_id, msg_id, uid, content,
//! created_at, …)` plus each room's stream position in `room_state`), and the transactional
//! outbox beside it ([`MysqlOutbox`], `room_chat_outbox`).
//!
//! Same contract as the SQLite store (`roomcast_core::ports::MessageStore`) and the same writer
//! (`writer.rs`): one task takes batches from a bounded queue and writes what is queued in one
//! transaction, in order — here multi-row `INSERT`s of up to 500 rows — with the rooms'
//! positions; a failed transaction is retried with backoff, never dropped while the process
//! lives (the store reports its error meanwhile, so `/readyz` fails). Rows are unique on `(room_id, epoch, seq)` and on
//! `(room_id, msg_id)` and inserted with `INSERT IGNORE`, so neither a transaction retried after
//! an ambiguous failure (a commit whose answer was lost) nor a message the bus redelivered under
//! a new position is stored twice. The same transaction marks the batch's outbox rows sent and
//! leaves out a message whose row is marked already (a re-published copy).
//!
//! The schema is a list of numbered migrations applied at open (`schema.rs`). SQL kept to what
//! TiDB, MySQL 8 and MariaDB 10.11 all run: `CREATE TABLE IF NOT EXISTS`, `ALTER TABLE … ADD
//! UNIQUE KEY`, `INSERT IGNORE`, `INSERT … ON DUPLICATE KEY UPDATE`, `SELECT … FOR UPDATE`,
//! multi-row `DELETE` by key, `GET_LOCK`, `UNIX_TIMESTAMP(NOW(3))`; no triggers, procedures,
//! foreign keys or window functions. History is read in insertion order (`id`,
//! `AUTO_INCREMENT`); on TiDB create the table with `AUTO_ID_CACHE 1` (docs/operations.md) so ids
//! grow in commit order across TiDB servers.
//!
//! `previous_shutdown_clean` is kept per node (`meta` row `clean:{node}`): a node that crashed
//! may have lost queued batches, so its rooms start new epochs.

mod outbox;
pub(crate) mod schema;

pub use outbox::MysqlOutbox;

use std::sync::Arc;
use std::time::Duration;

use roomcast_core::BoxFut;
use roomcast_core::clock::now_ms;
use roomcast_core::ids::{NodeId, RoomId};
use roomcast_core::metrics::Metrics;
use roomcast_core::model::{RoomBatch, RoomMsg};
use roomcast_core::ports::{MessageStore, Partition, StoreError, StoredRoom};
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::{Row, query};

use crate::writer::{RetryOptions, Transactions, Writer};

/// Rows per `INSERT` statement.
const ROWS_PER_INSERT: usize = 500;

#[derive(Clone)]
pub struct MysqlOptions {
    /// This node's name in the clean-shutdown record.
    pub node: String,
    /// Batches that may wait for the writer before `append` waits.
    pub queue: usize,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub metrics: Arc<Metrics>,
}

impl Default for MysqlOptions {
    fn default() -> Self {
        MysqlOptions {
            node: "standalone".into(),
            queue: 4096,
            retry_base: Duration::from_millis(50),
            retry_max: Duration::from_secs(5),
            metrics: Arc::new(Metrics::default()),
        }
    }
}

pub struct MysqlStore {
    pool: MySqlPool,
    writer: Writer,
    previous_clean: bool,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Connects a pool of up to `connections` to `url` and brings the schema up to date.
async fn connect(url: &str, connections: u32) -> Result<MySqlPool, StoreError> {
    let connect: MySqlConnectOptions = url
        .parse()
        .map_err(|e| unavailable(format!("invalid mysql url: {e}")))?;
    schema::migrate(&connect).await?;
    MySqlPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(connect)
        .await
        .map_err(|e| unavailable(format!("cannot connect to mysql: {e}")))
}

impl MysqlStore {
    /// Connects, migrates the schema, and starts the writer task.
    pub async fn open(url: &str, opts: MysqlOptions) -> Result<Self, StoreError> {
        let pool = connect(url, 4).await?;
        let key = format!("clean:{}", opts.node);
        let clean: Option<String> = query("SELECT v FROM roomcast_meta WHERE k = ?")
            .bind(&key)
            .fetch_optional(&pool)
            .await
            .map_err(unavailable)?
            .map(|r| r.get(0));
        let has_rooms = query("SELECT 1 FROM room_state LIMIT 1")
            .fetch_optional(&pool)
            .await
            .map_err(unavailable)?
            .is_some();
        let previous_clean = clean.as_deref() == Some("1") || (clean.is_none() && !has_rooms);
        query("INSERT INTO roomcast_meta (k, v) VALUES (?, '0') ON DUPLICATE KEY UPDATE v = '0'")
            .bind(&key)
            .execute(&pool)
            .await
            .map_err(unavailable)?;
        let writer = Writer::start(
            MysqlTransactions {
                pool: pool.clone(),
                clean_key: key,
            },
            RetryOptions {
                queue: opts.queue,
                base: opts.retry_base,
                max: opts.retry_max,
                metrics: opts.metrics,
            },
        );
        Ok(MysqlStore {
            pool,
            writer,
            previous_clean,
        })
    }
}

/// The MySQL side of the shared writer.
struct MysqlTransactions {
    pool: MySqlPool,
    /// This node's row in `roomcast_meta`.
    clean_key: String,
}

impl Transactions for MysqlTransactions {
    fn name(&self) -> &'static str {
        "MySQL"
    }

    fn write(&mut self, batches: Vec<Arc<RoomBatch>>) -> BoxFut<'_, Result<(), String>> {
        Box::pin(async move {
            write_batches(&self.pool, &batches)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn record_clean(&mut self) -> BoxFut<'_, ()> {
        Box::pin(async move {
            if let Err(e) = query("UPDATE roomcast_meta SET v = '1' WHERE k = ?")
                .bind(&self.clean_key)
                .execute(&self.pool)
                .await
            {
                tracing::error!(error = %e, "cannot record clean shutdown");
            }
        })
    }
}

async fn write_batches(pool: &MySqlPool, batches: &[Arc<RoomBatch>]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let now = now_ms() as i64;
    let mut rows: Vec<&RoomMsg> = Vec::with_capacity(batches.iter().map(|b| b.msgs.len()).sum());
    for b in batches {
        for m in &b.msgs {
            if b.outbox_ids.contains(&m.msg_id)
                && !mark_outbox_row_sent(&mut tx, m.msg_id, now).await?
            {
                // A copy the relay re-published after the first was stored: keep one.
                continue;
            }
            rows.push(m);
        }
    }
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let mut sql = String::from(
            "INSERT IGNORE INTO room_chat_message (room_id, msg_id, uid, content, created_at, epoch, seq, name, kind, payload) VALUES ",
        );
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push(',');
            }
            sql.push_str("(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
        }
        // Only placeholders are spliced in (the row count); every value is bound.
        let mut q = query(sqlx::AssertSqlSafe(sql));
        for m in chunk {
            q = q
                .bind(&m.room_id)
                .bind(m.msg_id)
                .bind(&m.user_id)
                .bind(&m.text)
                .bind(m.ts as i64)
                .bind(m.epoch)
                .bind(m.seq)
                .bind(&m.name)
                .bind(&m.kind)
                .bind(&m.payload);
        }
        q.execute(&mut *tx).await?;
    }
    for b in batches {
        query(
            "INSERT INTO room_state (room_id, epoch, last_seq) VALUES (?, ?, ?)
             ON DUPLICATE KEY UPDATE epoch = VALUES(epoch), last_seq = VALUES(last_seq)",
        )
        .bind(b.room.as_str())
        .bind(b.epoch)
        .bind(b.last_seq())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// Marks the outbox row of an outbox message sent, in the transaction that stores the message;
/// false when the row was marked already (sent, or failed), so this copy must not be stored.
/// A message whose row is gone (deleted by its backend) is stored.
async fn mark_outbox_row_sent(
    tx: &mut sqlx::MySqlConnection,
    msg_id: u64,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let marked =
        query("UPDATE room_chat_outbox SET sent_at = ? WHERE msg_id = ? AND sent_at IS NULL")
            .bind(now)
            .bind(msg_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    if marked > 0 {
        return Ok(true);
    }
    let gone = query("SELECT 1 FROM room_chat_outbox WHERE msg_id = ? LIMIT 1")
        .bind(msg_id)
        .fetch_optional(&mut *tx)
        .await?
        .is_none();
    Ok(gone)
}

/// A `room_chat_message` row selected as `msg_id, uid, content, created_at, epoch, seq, name,
/// kind, payload`.
fn row_msg(room: &str, r: &sqlx::mysql::MySqlRow) -> Result<RoomMsg, sqlx::Error> {
    Ok(RoomMsg {
        room_id: room.to_owned(),
        msg_id: r.try_get(0)?,
        user_id: r.try_get(1)?,
        text: r.try_get(2)?,
        ts: r.try_get::<i64, _>(3)? as u64,
        epoch: r.try_get(4)?,
        seq: r.try_get(5)?,
        name: r.try_get(6)?,
        kind: r.try_get(7)?,
        payload: r.try_get(8)?,
    })
}

async fn load(
    pool: &MySqlPool,
    room: &str,
    limit: usize,
) -> Result<Option<StoredRoom>, StoreError> {
    let state = query("SELECT epoch, last_seq FROM room_state WHERE room_id = ?")
        .bind(room)
        .fetch_optional(pool)
        .await
        .map_err(unavailable)?;
    let Some(state) = state else { return Ok(None) };
    let epoch: u32 = state.try_get(0).map_err(unavailable)?;
    let last_seq: u64 = state.try_get(1).map_err(unavailable)?;
    let rows = query(
        "SELECT msg_id, uid, content, created_at, epoch, seq, name, kind, payload
         FROM room_chat_message WHERE room_id = ? ORDER BY id DESC LIMIT ?",
    )
    .bind(room)
    .bind(limit as u64)
    .fetch_all(pool)
    .await
    .map_err(unavailable)?;
    let mut recent = rows
        .iter()
        .map(|r| row_msg(room, r))
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map_err(unavailable)?;
    recent.reverse();
    Ok(Some(StoredRoom {
        epoch,
        last_seq,
        recent,
    }))
}

/// How often a partition claim is tried when it loses a lock conflict.
const CLAIM_ATTEMPTS: u32 = 10;

/// One claim, in one transaction (see `MessageStore::claim_partitions`).
async fn claim(
    pool: &MySqlPool,
    owner: &NodeId,
    partitions: &[Partition],
    absent_clean: bool,
) -> Result<Vec<Partition>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut unclean = Vec::new();
    for &p in partitions {
        // Locks the row, so two claimants of one partition are serialised.
        let clean: Option<i8> =
            query("SELECT clean FROM room_partition_owner WHERE partition_id = ? FOR UPDATE")
                .bind(p)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.try_get(0))
                .transpose()?;
        if !clean.map_or(absent_clean, |c| c != 0) {
            unclean.push(p);
        }
        query(
            "INSERT INTO room_partition_owner (partition_id, owner, clean) VALUES (?, ?, 0) \
             ON DUPLICATE KEY UPDATE owner = VALUES(owner), clean = 0",
        )
        .bind(p)
        .bind(owner.as_str())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(unclean)
}

/// A deadlock (1213) or a lock wait timeout (1205): the claim's transaction is rolled back
/// (dropped) and may run again.
fn lock_conflict(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>())
        .is_some_and(|d| matches!(d.number(), 1205 | 1213))
}

impl MessageStore for MysqlStore {
    fn append(&self, batch: Arc<RoomBatch>) -> BoxFut<'_, Result<(), StoreError>> {
        Box::pin(self.writer.append(batch))
    }

    fn load_room(
        &self,
        room: &RoomId,
        limit: usize,
    ) -> BoxFut<'_, Result<Option<StoredRoom>, StoreError>> {
        let room = room.as_str().to_owned();
        Box::pin(async move { load(&self.pool, &room, limit).await })
    }

    fn read_after(
        &self,
        room: &RoomId,
        epoch: u32,
        after_seq: u64,
        limit: usize,
    ) -> BoxFut<'_, Result<Vec<RoomMsg>, StoreError>> {
        let room = room.as_str().to_owned();
        Box::pin(async move {
            let rows = query(
                "SELECT msg_id, uid, content, created_at, epoch, seq, name, kind, payload
                 FROM room_chat_message WHERE room_id = ? AND epoch = ? AND seq > ?
                 ORDER BY seq LIMIT ?",
            )
            .bind(&room)
            .bind(epoch)
            .bind(after_seq)
            .bind(limit as u64)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
            rows.iter()
                .map(|r| row_msg(&room, r))
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(unavailable)
        })
    }

    fn flush(&self) -> BoxFut<'_, Result<(), StoreError>> {
        Box::pin(self.writer.flush())
    }

    fn previous_shutdown_clean(&self) -> bool {
        self.previous_clean
    }

    fn close(&self) -> BoxFut<'_, Result<(), StoreError>> {
        Box::pin(self.writer.close())
    }

    fn write_error(&self) -> Option<String> {
        self.writer.error()
    }

    fn claim_partitions<'a>(
        &'a self,
        owner: &'a NodeId,
        partitions: &'a [Partition],
    ) -> BoxFut<'a, Result<Vec<Partition>, StoreError>> {
        Box::pin(async move {
            // Every worker of a node claims at once when it starts. On rows that do not exist
            // yet, `FOR UPDATE` takes gap locks, and two claimants inserting into one gap
            // deadlock: InnoDB aborts one, which runs its claim again (as InnoDB advises).
            let mut attempt = 1;
            loop {
                match claim(&self.pool, owner, partitions, self.previous_clean).await {
                    Err(e) if attempt < CLAIM_ATTEMPTS && lock_conflict(&e) => {
                        tracing::debug!(error = %e, attempt, "partition claim lost a lock conflict; again");
                        tokio::time::sleep(Duration::from_millis(5 * attempt as u64)).await;
                        attempt += 1;
                    }
                    r => return r.map_err(unavailable),
                }
            }
        })
    }

    fn release_partitions<'a>(
        &'a self,
        owner: &'a NodeId,
        partitions: &'a [Partition],
    ) -> BoxFut<'a, Result<(), StoreError>> {
        Box::pin(async move {
            for &p in partitions {
                query(
                    "UPDATE room_partition_owner SET clean = 1 WHERE partition_id = ? AND owner = ?",
                )
                .bind(p)
                .bind(owner.as_str())
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
            }
            Ok(())
        })
    }
}
