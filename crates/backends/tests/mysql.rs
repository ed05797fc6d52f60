//! The MySQL-protocol store against a real server (`scripts/services.sh up mysql`: MariaDB, the
//! local stand-in for TiDB; or any server at `RC_TEST_MYSQL_URL`, default
//! `mysql://roomcast:roomcast@127.0.0.1:13306/roomcast`). A missing server fails these tests; it
//! never skips them. Each test gets a database of its own, dropped at the end.
#![cfg(feature = "mysql")]

use std::sync::Arc;

use roomcast_backends::mysql::{MysqlOptions, MysqlStore};
use roomcast_core::ports::MessageStore;
use roomcast_core::testkit;
use sqlx::Connection;

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
