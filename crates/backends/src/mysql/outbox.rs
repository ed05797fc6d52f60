//! `room_chat_outbox` in the MySQL-protocol database (R22), beside the messages: a backend
//! writes rows in its own transactions (or through the server API), the relay publishes them,
//! and the message store (`super::MysqlStore`) marks a row sent in the transaction that stores
//! its message — never here. Same contract as the SQLite outbox
//! (`roomcast_core::outbox::OutboxStore`).
//!
//! The relay lease (`room_chat_outbox_lease`, one row `relay` created by the migration) is judged
//! by the database server's clock, not the relays': relays on several hosts share it, and their
//! clocks may disagree by more than a lease is long. Taking or renewing it is one conditional
//! `UPDATE`, atomic on the server.

use std::time::Duration;

use roomcast_core::BoxFut;
use roomcast_core::clock::now_ms;
use roomcast_core::outbox::{NewOutboxRow, OutboxRow, OutboxStore};
use roomcast_core::ports::StoreError;
use sqlx::mysql::{MySqlPool, MySqlRow};
use sqlx::{Row, query};

use super::{connect, unavailable};

/// Milliseconds since the Unix epoch on the database server (MySQL, MariaDB and TiDB).
const DB_NOW_MS: &str = "CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)";

pub struct MysqlOutbox {
    pool: MySqlPool,
}

impl MysqlOutbox {
    /// Connects (a small pool: the outbox is low-volume) and migrates the schema.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Ok(MysqlOutbox {
            pool: connect(url, 2).await?,
        })
    }
}

impl OutboxStore for MysqlOutbox {
    fn insert(&self, row: NewOutboxRow) -> BoxFut<'_, Result<i64, StoreError>> {
        Box::pin(async move {
            let done = query(
                "INSERT INTO room_chat_outbox (room_id, kind, uid, name, content, payload, created_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(row.room.as_str())
            .bind(row.kind.as_str())
            .bind(row.user.as_str())
            .bind(row.name)
            .bind(row.text)
            .bind(row.payload)
            .bind(now_ms() as i64)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
            Ok(done.last_insert_id() as i64)
        })
    }

    fn acquire_lease<'a>(
        &'a self,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFut<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let take = format!(
                "UPDATE room_chat_outbox_lease SET holder = ?, expires_ms = {DB_NOW_MS} + ?
                 WHERE name = 'relay' AND (holder = ? OR expires_ms <= {DB_NOW_MS})"
            );
            // The row count is of rows matched, not changed (sqlx connects with FOUND_ROWS), so
            // a renewal within the same millisecond still counts.
            let taken = query(sqlx::AssertSqlSafe(take))
                .bind(holder)
                .bind(ttl.as_millis() as i64)
                .bind(holder)
                .execute(&self.pool)
                .await
                .map_err(unavailable)?
                .rows_affected();
            Ok(taken > 0)
        })
    }

    fn release_lease<'a>(&'a self, holder: &'a str) -> BoxFut<'a, Result<(), StoreError>> {
        Box::pin(async move {
            query("UPDATE room_chat_outbox_lease SET expires_ms = 0 WHERE name = 'relay' AND holder = ?")
                .bind(holder)
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
            Ok(())
        })
    }

    fn pending(&self, limit: usize) -> BoxFut<'_, Result<Vec<OutboxRow>, StoreError>> {
        Box::pin(async move {
            let rows = query(
                "SELECT id, room_id, kind, uid, name, content, payload, created_at, msg_id
                 FROM room_chat_outbox WHERE sent_at IS NULL ORDER BY id LIMIT ?",
            )
            .bind(limit as u64)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                let id: i64 = r.try_get(0).map_err(unavailable)?;
                match row_of(id, r) {
                    Ok(row) => out.push(row),
                    Err(why) => {
                        // A row a backend wrote with a bad value can never be published: set
                        // aside (kept, reported) rather than blocking the rows behind it.
                        tracing::error!(row = id, reason = %why, "outbox row has a bad value; marked failed");
                        query("UPDATE room_chat_outbox SET sent_at = -1 WHERE id = ?")
                            .bind(id)
                            .execute(&self.pool)
                            .await
                            .map_err(unavailable)?;
                    }
                }
            }
            Ok(out)
        })
    }

    fn assign_msg_id(&self, id: i64, msg_id: u64) -> BoxFut<'_, Result<(), StoreError>> {
        Box::pin(async move {
            query("UPDATE room_chat_outbox SET msg_id = ? WHERE id = ? AND msg_id IS NULL")
                .bind(msg_id)
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
            Ok(())
        })
    }

    fn mark_failed(&self, id: i64) -> BoxFut<'_, Result<(), StoreError>> {
        Box::pin(async move {
            query("UPDATE room_chat_outbox SET sent_at = -1 WHERE id = ?")
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
            Ok(())
        })
    }

    fn pending_count(&self) -> BoxFut<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let n: i64 = query("SELECT COUNT(*) FROM room_chat_outbox WHERE sent_at IS NULL")
                .fetch_one(&self.pool)
                .await
                .and_then(|r| r.try_get(0))
                .map_err(unavailable)?;
            Ok(n as u64)
        })
    }
}

/// One row, or why it can never be published.
fn row_of(id: i64, r: &MySqlRow) -> Result<OutboxRow, String> {
    let typed = |e: sqlx::Error| e.to_string();
    let event = NewOutboxRow::from_columns(
        &r.try_get::<String, _>(1).map_err(typed)?,
        &r.try_get::<String, _>(2).map_err(typed)?,
        &r.try_get::<String, _>(3).map_err(typed)?,
        r.try_get(4).map_err(typed)?,
        r.try_get(5).map_err(typed)?,
        r.try_get(6).map_err(typed)?,
    )?;
    let created: i64 = r.try_get(7).map_err(typed)?;
    let msg_id: Option<u64> = r.try_get(8).map_err(typed)?;
    Ok(OutboxRow {
        id,
        event,
        created_ms: created as u64,
        msg_id,
    })
}
