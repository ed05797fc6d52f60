//! The MySQL-protocol store against a real server (`scripts/services.sh up mysql`: MariaDB, the
//! local stand-in for TiDB; or any server at `RC_TEST_MYSQL_URL`, default
//! `mysql://roomcast:roomcast@127.0.0.1:13306/roomcast`). A missing server fails these tests; it
//! never skips them. Each test gets a database of its own, dropped at the end.
#![cfg(feature = "mysql")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use roomcast_backends::mysql::{MysqlOptions, MysqlOutbox, MysqlStore};
use roomcast_core::ids::RoomId;
use roomcast_core::model::{MsgKind, RoomBatch};
use roomcast_core::outbox::{NewOutboxRow, OutboxStore};
use roomcast_core::ports::MessageStore;
use roomcast_core::testkit;
use sqlx::{Connection, Row};

fn url() -> String {
    std::env::var("RC_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://roomcast:roomcast@127.0.0.1:13306/roomcast".into())
}

/// A fresh database on the test server; returns its URL and a guard that drops it.
async fn fresh_db() -> (String, String) {
    let base = url();
    let mut admin = sqlx::MySqlConnection::connect(&base).await.unwrap_or_else(|e| {
        panic!(
            "cannot connect to {base}: {e} — start it with `scripts/services.sh up mysql` or set RC_TEST_MYSQL_URL"
        )
    });
    let name = format!("rc_test_{:016x}", fastrand::u64(..));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap();
    let (prefix, _) = base.rsplit_once('/').unwrap();
    (format!("{prefix}/{name}"), name)
}

async fn drop_db(name: &str) {
    let mut admin = sqlx::MySqlConnection::connect(&url()).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap();
}

#[tokio::test]
async fn passes_the_message_store_suite() {
    let (db, name) = fresh_db().await;
    let store = MysqlStore::open(&db, MysqlOptions::default())
        .await
        .unwrap();
    testkit::message_store_suite(&store).await;
    store.close().await.unwrap();
    drop_db(&name).await;
}

/// A clean close is remembered per node; a node that did not close cleanly is told so.
#[tokio::test]
async fn tracks_clean_shutdown_per_node_and_keeps_positions() {
    let (db, name) = fresh_db().await;
    let opts = |node: &str| MysqlOptions {
        node: node.into(),
        ..MysqlOptions::default()
    };
    let a = MysqlStore::open(&db, opts("a")).await.unwrap();
    assert!(a.previous_shutdown_clean(), "a new database is clean");
    a.append(Arc::new(testkit::batch("r", 7, 1..=3)))
        .await
        .unwrap();
    a.flush().await.unwrap();
    // Node b starts while a runs: a's state says nothing about b.
    let b = MysqlStore::open(&db, opts("b")).await.unwrap();
    assert!(!b.previous_shutdown_clean(), "b never closed cleanly here");
    b.close().await.unwrap();
    a.close().await.unwrap();
    let a = MysqlStore::open(&db, opts("a")).await.unwrap();
    assert!(a.previous_shutdown_clean());
    let room = a
        .load_room(&roomcast_core::ids::RoomId::parse("r").unwrap(), 10)
        .await
        .unwrap()
        .expect("stored");
    assert_eq!((room.epoch, room.last_seq, room.recent.len()), (7, 3, 3));
    // The same batch again (a retry after an ambiguous failure) stores nothing twice.
    a.append(Arc::new(testkit::batch("r", 7, 1..=3)))
        .await
        .unwrap();
    a.flush().await.unwrap();
    let again = a
        .load_room(&roomcast_core::ids::RoomId::parse("r").unwrap(), 10)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.recent.len(), 3);
    drop(a);
    drop_db(&name).await;
}

#[tokio::test]
async fn an_unreachable_server_is_a_clear_error() {
    let err = MysqlStore::open("mysql://x:y@127.0.0.1:1/db", MysqlOptions::default())
        .await
        .err()
        .expect("nothing on port 1");
    assert!(err.to_string().contains("cannot connect to mysql"), "{err}");
}

async fn sql(db: &str) -> sqlx::MySqlConnection {
    sqlx::MySqlConnection::connect(db).await.unwrap()
}

async fn exec(c: &mut sqlx::MySqlConnection, stmt: &str) {
    sqlx::query(sqlx::AssertSqlSafe(stmt.to_owned()))
        .execute(&mut *c)
        .await
        .unwrap_or_else(|e| panic!("{stmt}: {e}"));
}

/// The migrations recorded in `roomcast_schema`.
async fn versions(db: &str) -> Vec<u32> {
    sqlx::query("SELECT version FROM roomcast_schema ORDER BY version")
        .fetch_all(&mut sql(db).await)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn outbox_passes_the_port_suite() {
    let (db, name) = fresh_db().await;
    let store = MysqlStore::open(&db, MysqlOptions::default())
        .await
        .unwrap();
    let outbox = Arc::new(MysqlOutbox::open(&db).await.unwrap());
    testkit::outbox_store_suite(outbox, &store).await;
    store.close().await.unwrap();
    drop_db(&name).await;
}

/// Rows a backend wrote itself with a value that can never be published are set aside (kept,
/// marked failed), not left to block the rows behind them.
#[tokio::test]
async fn outbox_rows_a_backend_got_wrong_are_set_aside_not_blocking() {
    let (db, name) = fresh_db().await;
    let outbox = MysqlOutbox::open(&db).await.unwrap();
    let mut c = sql(&db).await;
    for (room, kind, payload) in [
        ("r", "gift", "'{not json'"),
        ("r", "rocket", "NULL"),
        ("bad room!", "gift", "NULL"),
        ("r", "gift", r#"'{"ok":true}'"#),
    ] {
        exec(
            &mut c,
            &format!(
                "INSERT INTO room_chat_outbox (room_id, kind, uid, content, payload, created_at)
                 VALUES ('{room}', '{kind}', 'u', 'text', {payload}, 1)"
            ),
        )
        .await;
    }
    let p = outbox.pending(10).await.unwrap();
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].event.payload.as_deref(), Some(r#"{"ok":true}"#));
    assert_eq!(outbox.pending_count().await.unwrap(), 1);
    let failed: i64 = sqlx::query("SELECT COUNT(*) FROM room_chat_outbox WHERE sent_at = -1")
        .fetch_one(&mut c)
        .await
        .unwrap()
        .get(0);
    assert_eq!(failed, 3, "kept in the table, out of the queue");
    drop_db(&name).await;
}

/// A new database gets every migration, each recorded once; opening again applies nothing.
#[tokio::test]
async fn migrations_are_applied_once_in_order() {
    let (db, name) = fresh_db().await;
    MysqlStore::open(&db, MysqlOptions::default())
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    assert_eq!(versions(&db).await, [1, 2, 3]);
    let applied_ms = async || -> Vec<i64> {
        sqlx::query("SELECT applied_ms FROM roomcast_schema ORDER BY version")
            .fetch_all(&mut sql(&db).await)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    let applied = applied_ms().await;
    MysqlOutbox::open(&db).await.unwrap();
    assert_eq!(applied_ms().await, applied, "nothing applied a second time");
    drop_db(&name).await;
}

/// Nodes starting at once on a new database: one migrates, the others wait for it and find
/// nothing left to do; all of them start.
#[tokio::test]
async fn nodes_starting_at_once_all_start() {
    let (db, name) = fresh_db().await;
    let opens: Vec<_> = (0..4)
        .map(|i| {
            let db = db.clone();
            tokio::spawn(async move {
                if i % 2 == 0 {
                    MysqlStore::open(&db, MysqlOptions::default())
                        .await
                        .map(drop)
                } else {
                    MysqlOutbox::open(&db).await.map(drop)
                }
            })
        })
        .collect();
    for open in opens {
        open.await.unwrap().expect("every node starts");
    }
    assert_eq!(versions(&db).await, [1, 2, 3]);
    drop_db(&name).await;
}

/// A database from before versioning (the first store's tables, without the partition owners)
/// that holds a message twice — a redelivery stored under the next owner's epoch: the first open
/// records it at version 1 after creating what was missing, keeps the newest copy and adds the
/// unique key, then the outbox; from then on a copy is never stored again.
#[tokio::test]
async fn a_database_from_before_versioning_is_migrated_and_deduplicated() {
    let (db, name) = fresh_db().await;
    let mut c = sql(&db).await;
    exec(
        &mut c,
        "CREATE TABLE room_chat_message (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, room_id VARCHAR(64) NOT NULL,
            msg_id BIGINT UNSIGNED NOT NULL, uid VARCHAR(128) NOT NULL, content TEXT NOT NULL,
            created_at BIGINT NOT NULL, epoch INT UNSIGNED NOT NULL, seq BIGINT UNSIGNED NOT NULL,
            name VARCHAR(255) NULL, kind VARCHAR(16) NOT NULL, payload TEXT NULL,
            UNIQUE KEY room_chat_message_pos (room_id, epoch, seq),
            KEY room_chat_message_room (room_id, id), KEY room_chat_message_created (created_at)
        ) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin",
    )
    .await;
    exec(
        &mut c,
        "CREATE TABLE room_state (room_id VARCHAR(64) NOT NULL PRIMARY KEY,
            epoch INT UNSIGNED NOT NULL, last_seq BIGINT UNSIGNED NOT NULL)",
    )
    .await;
    exec(
        &mut c,
        "CREATE TABLE roomcast_meta (k VARCHAR(191) NOT NULL PRIMARY KEY, v VARCHAR(255) NOT NULL)",
    )
    .await;
    exec(
        &mut c,
        "INSERT INTO room_chat_message (room_id, msg_id, uid, content, created_at, epoch, seq, kind)
         VALUES ('r', 1001, 'u', 'hi', 1, 1, 1, 'chat'), ('r', 1002, 'u', 'hi', 1, 1, 2, 'chat'),
                ('r', 1001, 'u', 'hi', 1, 2, 1, 'chat'), ('s', 1001, 'u', 'hi', 1, 1, 1, 'chat')",
    )
    .await;
    exec(
        &mut c,
        "INSERT INTO room_state VALUES ('r', 2, 1), ('s', 1, 1)",
    )
    .await;
    exec(
        &mut c,
        "INSERT INTO roomcast_meta VALUES ('clean:standalone', '1')",
    )
    .await;

    let store = MysqlStore::open(&db, MysqlOptions::default())
        .await
        .unwrap();
    assert_eq!(versions(&db).await, [1, 2, 3]);
    assert!(store.previous_shutdown_clean(), "the data is kept");
    let r = RoomId::parse("r").unwrap();
    let got = store.load_room(&r, 10).await.unwrap().unwrap();
    assert_eq!(
        got.recent
            .iter()
            .map(|m| (m.msg_id, m.epoch, m.seq))
            .collect::<Vec<_>>(),
        [(1002, 1, 2), (1001, 2, 1)],
        "the newest copy kept"
    );
    let s = RoomId::parse("s").unwrap();
    assert_eq!(
        store.load_room(&s, 10).await.unwrap().unwrap().recent.len(),
        1,
        "the same msg_id in another room is another message"
    );
    // The partition owners' table was created by migration 1.
    let p = roomcast_core::ids::NodeId::new("w");
    assert_eq!(
        store.claim_partitions(&p, &[3]).await.unwrap(),
        Vec::<u32>::new()
    );
    // And the unique key holds from now on.
    let mut again = testkit::batch("r", 2, 2..=2);
    Arc::make_mut(&mut again.msgs[0]).msg_id = 1002;
    store.append(Arc::new(again)).await.unwrap();
    store.flush().await.unwrap();
    let got = store.load_room(&r, 10).await.unwrap().unwrap();
    assert_eq!(got.recent.len(), 2, "not stored a third time");
    assert_eq!((got.epoch, got.last_seq), (2, 2));
    store.close().await.unwrap();
    drop_db(&name).await;
}

/// A database a newer binary migrated further (a rolling upgrade) still opens.
#[tokio::test]
async fn a_newer_schema_still_opens() {
    let (db, name) = fresh_db().await;
    MysqlOutbox::open(&db).await.unwrap();
    exec(
        &mut sql(&db).await,
        "INSERT INTO roomcast_schema VALUES (99, 'from the future', 1)",
    )
    .await;
    let store = MysqlStore::open(&db, MysqlOptions::default())
        .await
        .unwrap();
    store.close().await.unwrap();
    assert_eq!(versions(&db).await, [1, 2, 3, 99]);
    drop_db(&name).await;
}

#[tokio::test]
async fn a_url_without_a_database_is_a_clear_error() {
    let (prefix, _) = url()
        .rsplit_once('/')
        .map(|(p, d)| (p.to_owned(), d.to_owned()))
        .unwrap();
    let err = MysqlStore::open(&format!("{prefix}/"), MysqlOptions::default())
        .await
        .err()
        .expect("no database named");
    assert!(err.to_string().contains("names no database"), "{err}");
}

/// Stored copies of each message of a room, by msg_id.
async fn copies(db: &str, room: &str) -> Vec<(u64, i64)> {
    sqlx::query(
        "SELECT msg_id, COUNT(*) FROM room_chat_message WHERE room_id = ? GROUP BY msg_id ORDER BY msg_id",
    )
    .bind(room)
    .fetch_all(&mut sql(db).await)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

fn gift(text: &str) -> NewOutboxRow {
    NewOutboxRow {
        room: RoomId::parse("restart").unwrap(),
        kind: MsgKind::Gift,
        user: roomcast_core::ids::UserId::parse("fan").unwrap(),
        name: None,
        text: text.into(),
        payload: None,
    }
}

/// The room worker's batch for the message of an outbox row, after the room's seq `after`.
fn outbox_batch(epoch: u32, seq: u64, msg_id: u64) -> RoomBatch {
    let mut b = testkit::batch("restart", epoch, seq..=seq);
    Arc::make_mut(&mut b.msgs[0]).msg_id = msg_id;
    b.outbox_ids = vec![msg_id];
    b
}

async fn within<T>(what: &str, secs: u64, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("timed out after {secs} s waiting for {what}"))
}

/// MariaDB restarted mid-run (a private instance: the shared one is never stopped). The store
/// keeps the appends made while it is down, reports `write_error` meanwhile and writes them once
/// it is back; the outbox refuses new rows while it is down (the caller gets an error to retry)
/// and carries on after it. Lost: nothing — every message is stored exactly once, every outbox
/// row is there once and marked sent once.
#[tokio::test]
async fn the_store_and_the_outbox_survive_mariadb_restarting() {
    let server = support::Private::start("mysql").await;
    let db = server.url();
    let store = Arc::new(
        MysqlStore::open(
            &db,
            MysqlOptions {
                retry_base: Duration::from_millis(20),
                retry_max: Duration::from_millis(200),
                ..MysqlOptions::default()
            },
        )
        .await
        .unwrap(),
    );
    let outbox = MysqlOutbox::open(&db).await.unwrap();

    // Before: three messages and two outbox rows (published, msg_ids fixed), the first stored.
    store
        .append(Arc::new(testkit::batch("restart", 1, 1..=3)))
        .await
        .unwrap();
    let rows = [
        outbox.insert(gift("first")).await.unwrap(),
        outbox.insert(gift("second")).await.unwrap(),
    ];
    outbox.assign_msg_id(rows[0], 9001).await.unwrap();
    outbox.assign_msg_id(rows[1], 9002).await.unwrap();
    store
        .append(Arc::new(outbox_batch(1, 4, 9001)))
        .await
        .unwrap();
    store.flush().await.unwrap();
    assert_eq!(outbox.pending_count().await.unwrap(), 1);

    server.down().await;
    // While it is down: appends are queued and retried; the store says it cannot write.
    store
        .append(Arc::new(testkit::batch("restart", 1, 5..=7)))
        .await
        .unwrap();
    store
        .append(Arc::new(outbox_batch(1, 8, 9002)))
        .await
        .unwrap();
    // A re-published copy of the first row's message, queued too: must not be stored again.
    store
        .append(Arc::new(outbox_batch(1, 9, 9001)))
        .await
        .unwrap();
    let flushed = tokio::spawn({
        let store = store.clone();
        async move { store.flush().await }
    });
    within("the store to report its write error", 30, async {
        while store.write_error().is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        !flushed.is_finished(),
        "nothing is durable while it is down"
    );
    let refused = within(
        "the outbox to answer",
        30,
        outbox.insert(gift("while down")),
    )
    .await;
    assert!(
        refused.is_err(),
        "an outbox row cannot be written while it is down"
    );

    server.up().await;
    within("the queued appends to be written", 60, flushed)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.write_error(), None, "writes work again");
    let third = within("the outbox to reconnect", 30, outbox.insert(gift("third")))
        .await
        .unwrap();
    assert!(third > rows[1]);

    // Seqs 4, 8 and 9 carried the outbox messages.
    let want: Vec<(u64, i64)> = (1001..=1003)
        .chain(1005..=1007)
        .chain([9001, 9002])
        .map(|m| (m, 1))
        .collect();
    assert_eq!(
        copies(&db, "restart").await,
        want,
        "every message stored exactly once"
    );
    let room = store
        .load_room(&RoomId::parse("restart").unwrap(), 100)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((room.epoch, room.last_seq), (1, 9));
    let outbox_rows: Vec<(String, Option<u64>, bool)> = sqlx::query(
        "SELECT content, msg_id, sent_at IS NOT NULL FROM room_chat_outbox ORDER BY id",
    )
    .fetch_all(&mut sql(&db).await)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get::<i64, _>(2) != 0))
    .collect();
    assert_eq!(
        outbox_rows,
        [
            ("first".to_owned(), Some(9001), true),
            ("second".to_owned(), Some(9002), true),
            ("third".to_owned(), None, false),
        ],
        "each row once; the one refused while down was never written"
    );
    store.close().await.unwrap();
}

/// Every worker of a node claims its partitions at the same moment when the node starts; on a
/// new database none of the rows exist yet. All claims must succeed: a failed claim makes every
/// room of those partitions start a new epoch.
#[tokio::test]
async fn workers_claiming_at_once_all_succeed() {
    let (db, name) = fresh_db().await;
    let store = Arc::new(
        MysqlStore::open(&db, MysqlOptions::default())
            .await
            .unwrap(),
    );
    for round in 0..3u32 {
        let claims: Vec<_> = (0..8u32)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    let node = roomcast_core::ids::NodeId::new(&format!("w{w}"));
                    let ps = [round * 100 + w * 2, round * 100 + w * 2 + 1];
                    store.claim_partitions(&node, &ps).await
                })
            })
            .collect();
        for c in claims {
            let unclean = c.await.unwrap().map_err(|e| e.to_string());
            assert_eq!(unclean, Ok(vec![]), "round {round}");
        }
    }
    store.close().await.unwrap();
    drop_db(&name).await;
}
