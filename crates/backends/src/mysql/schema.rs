//! The MySQL-protocol schema as numbered migrations, embedded in the binary and applied when a
//! store or an outbox opens the database. `roomcast_schema` records each migration that ran
//! (version, name, when); a start applies the missing ones in order, each once.
//!
//! Two nodes may start at once: the runner takes the user-level lock `GET_LOCK` on a connection
//! of its own, so the second waits for the first and then finds nothing left to do; the lock dies
//! with that connection, so a node that crashes mid-migration holds no one up. MySQL commits
//! each DDL statement on its own, so a run that died between a step and its version row leaves
//! the step done but unrecorded: every step can run again (`IF NOT EXISTS`, `INSERT IGNORE`, and
//! an index that already exists counts as created).
//!
//! History: migration 1 is the schema as it stood before versioning — every `CREATE TABLE IF
//! NOT EXISTS` of the first MySQL store, with `room_partition_owner` (partition claims), which
//! came last: a database from before versioning gets its missing tables and is then recorded at
//! version 1. Migration 2 makes messages idempotent on `msg_id`, migration 3 adds the outbox.
//! Statements stay within what TiDB, MySQL 8 and MariaDB 10.11 all run (see the module above).
//! Never edit a migration that has shipped: add one.

use roomcast_core::clock::now_ms;
use roomcast_core::ports::StoreError;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlDatabaseError};
use sqlx::{Connection, Row, query};

use super::unavailable;

/// One numbered change of the schema.
pub(crate) struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub steps: &'static [Step],
}

pub(crate) enum Step {
    /// One statement. "Already exists" errors (table 1050, column 1060, index 1061) count as
    /// done: see the module docs.
    Sql(&'static str),
    /// Deletes all but the newest copy of every `(room_id, msg_id)` in `room_chat_message`, so
    /// that the unique key can be added to a table that holds duplicates. The newest copy is the
    /// one of the room's latest epoch, the one a client recovering in that epoch asks for.
    DropDuplicateMsgIds,
}

use Step::{DropDuplicateMsgIds, Sql};

pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "messages, room positions, meta, partition owners",
        steps: &[
            Sql("CREATE TABLE IF NOT EXISTS room_chat_message (
                id         BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
                room_id    VARCHAR(64)  NOT NULL,
                msg_id     BIGINT UNSIGNED NOT NULL,
                uid        VARCHAR(128) NOT NULL,
                content    TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                epoch      INT UNSIGNED NOT NULL,
                seq        BIGINT UNSIGNED NOT NULL,
                name       VARCHAR(255) NULL,
                kind       VARCHAR(16) NOT NULL,
                payload    TEXT NULL,
                UNIQUE KEY room_chat_message_pos (room_id, epoch, seq),
                KEY room_chat_message_room (room_id, id),
                KEY room_chat_message_created (created_at)
            ) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin"),
            Sql("CREATE TABLE IF NOT EXISTS room_state (
                room_id  VARCHAR(64) NOT NULL PRIMARY KEY,
                epoch    INT UNSIGNED NOT NULL,
                last_seq BIGINT UNSIGNED NOT NULL
            ) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin"),
            Sql("CREATE TABLE IF NOT EXISTS roomcast_meta (
                k VARCHAR(191) NOT NULL PRIMARY KEY,
                v VARCHAR(255) NOT NULL
            ) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin"),
            Sql("CREATE TABLE IF NOT EXISTS room_partition_owner (
                partition_id INT UNSIGNED NOT NULL PRIMARY KEY,
                owner        VARCHAR(128) NOT NULL,
                clean        TINYINT NOT NULL
            ) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin"),
        ],
    },
    Migration {
        version: 2,
        name: "one copy of a message per (room_id, msg_id)",
        steps: &[
            DropDuplicateMsgIds,
            Sql("ALTER TABLE room_chat_message
                 ADD UNIQUE KEY room_chat_message_msg (room_id, msg_id)"),
        ],
    },
    Migration {
        version: 3,
        name: "the transactional outbox and its relay lease",
        steps: &[
            Sql("CREATE TABLE IF NOT EXISTS room_chat_outbox (
                id         BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
                room_id    VARCHAR(64)  NOT NULL,
                kind       VARCHAR(16)  NOT NULL DEFAULT 'system',
                uid        VARCHAR(128) NOT NULL DEFAULT 'system',
                name       VARCHAR(255) NULL,
                content    TEXT NOT NULL,
                payload    TEXT NULL,
                created_at BIGINT NOT NULL,
                msg_id     BIGINT UNSIGNED NULL,
                sent_at    BIGINT NULL,
                KEY room_chat_outbox_pending (sent_at, id),
                KEY room_chat_outbox_msg (msg_id)
            ) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin"),
            // One row, always there: taking the lease is then one conditional UPDATE.
            Sql("CREATE TABLE IF NOT EXISTS room_chat_outbox_lease (
                name       VARCHAR(64)  NOT NULL PRIMARY KEY,
                holder     VARCHAR(191) NOT NULL,
                expires_ms BIGINT NOT NULL
            ) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin"),
            Sql(
                "INSERT IGNORE INTO room_chat_outbox_lease (name, holder, expires_ms)
                 VALUES ('relay', '', 0)",
            ),
        ],
    },
];

/// How long a start waits for another node's migrations before it gives up.
const LOCK_WAIT_S: u32 = 120;

/// Applies the migrations the database has not seen, on a connection of its own (closed at the
/// end, which releases the lock whatever happened); returns the schema version.
pub(crate) async fn migrate(opts: &MySqlConnectOptions) -> Result<u32, StoreError> {
    let mut conn = MySqlConnection::connect_with(opts)
        .await
        .map_err(|e| unavailable(format!("cannot connect to mysql: {e}")))?;
    let result = migrate_on(&mut conn, MIGRATIONS).await;
    let _ = conn.close().await;
    result
}

/// The migration runner, on any list (tests run partial lists to stand for older binaries).
pub(crate) async fn migrate_on(
    conn: &mut MySqlConnection,
    migrations: &[Migration],
) -> Result<u32, StoreError> {
    let failed = |what: &str, e: sqlx::Error| unavailable(format!("schema: {what}: {e}"));
    let db: Option<String> = query("SELECT DATABASE()")
        .fetch_one(&mut *conn)
        .await
        .and_then(|r| r.try_get(0))
        .map_err(|e| failed("cannot read the database name", e))?;
    if db.is_none() {
        return Err(unavailable(
            "the mysql url names no database (mysql://…/DB)",
        ));
    }
    // Lock names are server-wide and at most 64 characters: the database's name keeps two
    // databases on one server apart (a longer name shares a lock with its prefix, which only
    // serialises their migrations).
    let got: Option<i64> = query(
        "SELECT CAST(GET_LOCK(LEFT(CONCAT('roomcast_schema:', DATABASE()), 64), ?) AS SIGNED)",
    )
    .bind(LOCK_WAIT_S)
    .fetch_one(&mut *conn)
    .await
    .and_then(|r| r.try_get(0))
    .map_err(|e| failed("cannot take the migration lock", e))?;
    if got != Some(1) {
        return Err(unavailable(format!(
            "schema: another node has been migrating this database for over {LOCK_WAIT_S} s"
        )));
    }
    query(
        "CREATE TABLE IF NOT EXISTS roomcast_schema (
            version    INT UNSIGNED NOT NULL PRIMARY KEY,
            name       VARCHAR(255) NOT NULL,
            applied_ms BIGINT NOT NULL
        ) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin",
    )
    .execute(&mut *conn)
    .await
    .map_err(|e| failed("cannot create roomcast_schema", e))?;
    let applied: Vec<u32> = query("SELECT version FROM roomcast_schema")
        .fetch_all(&mut *conn)
        .await
        .and_then(|rows| rows.iter().map(|r| r.try_get(0)).collect())
        .map_err(|e| failed("cannot read roomcast_schema", e))?;
    for m in migrations.iter().filter(|m| !applied.contains(&m.version)) {
        let what = format!("migration {} ({})", m.version, m.name);
        for step in m.steps {
            run(conn, step).await.map_err(|e| failed(&what, e))?;
        }
        query("INSERT IGNORE INTO roomcast_schema (version, name, applied_ms) VALUES (?, ?, ?)")
            .bind(m.version)
            .bind(m.name)
            .bind(now_ms() as i64)
            .execute(&mut *conn)
            .await
            .map_err(|e| failed(&what, e))?;
        tracing::info!(version = m.version, name = m.name, "mysql schema migrated");
    }
    let known = migrations.iter().map(|m| m.version).max().unwrap_or(0);
    let version = applied.iter().copied().chain([known]).max().unwrap_or(0);
    if version > known {
        // An older node during a rolling upgrade: migrations only add, so it can run.
        tracing::warn!(
            database = version,
            binary = known,
            "the mysql schema is newer than this binary"
        );
    }
    Ok(version)
}

async fn run(conn: &mut MySqlConnection, step: &Step) -> Result<(), sqlx::Error> {
    match step {
        Sql(sql) => match query(*sql).execute(&mut *conn).await {
            Ok(_) => Ok(()),
            Err(e) if already_exists(&e) => {
                tracing::debug!(error = %e, "schema step already done");
                Ok(())
            }
            Err(e) => Err(e),
        },
        DropDuplicateMsgIds => {
            let dups = query(
                "SELECT room_id, msg_id, MAX(id) FROM room_chat_message
                 GROUP BY room_id, msg_id HAVING COUNT(*) > 1",
            )
            .fetch_all(&mut *conn)
            .await?;
            let mut deleted = 0;
            for d in &dups {
                let (room, msg_id, newest): (String, u64, i64) =
                    (d.try_get(0)?, d.try_get(1)?, d.try_get(2)?);
                deleted += query(
                    "DELETE FROM room_chat_message WHERE room_id = ? AND msg_id = ? AND id < ?",
                )
                .bind(room)
                .bind(msg_id)
                .bind(newest)
                .execute(&mut *conn)
                .await?
                .rows_affected();
            }
            if deleted > 0 {
                tracing::warn!(
                    deleted,
                    messages = dups.len(),
                    "deleted older copies of messages stored more than once"
                );
            }
            Ok(())
        }
    }
}

/// A table, column or index that exists already (MySQL, MariaDB and TiDB share the numbers).
fn already_exists(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.try_downcast_ref::<MySqlDatabaseError>())
        .is_some_and(|d| matches!(d.number(), 1050 | 1060 | 1061))
}
