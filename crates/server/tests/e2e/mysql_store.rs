//! A standalone server on a MySQL-protocol database (`store.url = mysql://…`: the test MariaDB,
//! a fresh database per test, created through the `roomcast` user) and the test Redis
//! (`redis.url`, a fresh key prefix): messages, room positions and the outbox live in MariaDB,
//! so history, `since` recovery and outbox rows survive a restart of the server. A missing
//! MariaDB or Redis fails these tests (`scripts/services.sh up mysql redis`, or
//! `RC_TEST_MYSQL_URL` / `RC_TEST_REDIS_URL`).

use serde_json::{Value, json};
use sqlx::{Connection, Row};

use crate::common::*;
use roomcast_proto::Op;

const KEY: &str = "mysql-test-api-key-0123456789";

fn mysql_url() -> String {
    std::env::var("RC_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://roomcast:roomcast@127.0.0.1:13306/roomcast".into())
}

pub fn redis_url() -> String {
    std::env::var("RC_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:16379/".into())
}

/// A database of this test's own on the test server, dropped when the guard goes.
pub struct Db {
    pub url: String,
    name: String,
}

impl Db {
    pub async fn fresh() -> Db {
        let base = mysql_url();
        let mut admin = sqlx::MySqlConnection::connect(&base)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot connect to {base}: {e} — start it with `scripts/services.sh up mysql` or set RC_TEST_MYSQL_URL"
                )
            });
        let name = format!("rc_test_{:016x}", fastrand::u64(..));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap();
        let (prefix, _) = base.rsplit_once('/').expect("a database in the url");
        Db {
            url: format!("{prefix}/{name}"),
            name,
        }
    }

    async fn conn(&self) -> sqlx::MySqlConnection {
        sqlx::MySqlConnection::connect(&self.url).await.unwrap()
    }

    /// Stored copies of a message.
    pub async fn stored(&self, msg_id: u64) -> i64 {
        sqlx::query("SELECT COUNT(*) FROM room_chat_message WHERE msg_id = ?")
            .bind(msg_id)
            .fetch_one(&mut self.conn().await)
            .await
            .unwrap()
            .get(0)
    }

    pub async fn outbox_pending(&self) -> i64 {
        sqlx::query("SELECT COUNT(*) FROM room_chat_outbox WHERE sent_at IS NULL")
            .fetch_one(&mut self.conn().await)
            .await
            .unwrap()
            .get(0)
    }

    pub async fn drop_it(self) {
        let mut admin = sqlx::MySqlConnection::connect(&mysql_url()).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {}", self.name)))
            .execute(&mut admin)
            .await
            .unwrap();
    }
}

fn texts(history: &Value) -> Vec<String> {
    history
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect()
}

fn msg_id(m: &Value) -> u64 {
    m["msg_id"].as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn history_recovery_and_the_outbox_live_in_mariadb_across_a_restart() {
    let db = Db::fresh().await;
    let prefix = format!("e2e:{:016x}:", fastrand::u64(..));
    let (url, redis) = (db.url.clone(), redis_url());
    let s = TestServer::start_with(move |c| {
        c.store.url = Some(url);
        c.redis.url = Some(redis);
        c.redis.key_prefix = prefix;
        c.api.keys = vec![KEY.into()];
        c.ingest.user_limit.rate = 0.0;
    })
    .await;

    // A chat round trip.
    let mut alice = s.client("alice").await;
    let mut bob = s.client("bob").await;
    alice.join("stage").await;
    let joined = bob.join("stage").await;
    let epoch = joined.body["epoch"].as_u64().unwrap();
    for text in ["one", "two", "three"] {
        assert_eq!(alice.chat("stage", text).await.op, "chat_ok");
    }
    let seen = bob.room_msgs(3).await;
    assert_eq!(
        seen.iter()
            .map(|m| m["text"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["one", "two", "three"]
    );
    assert_eq!(alice.room_msgs(3).await.len(), 3);
    let after_one = seen[0]["seq"].as_u64().unwrap();

    // A restart: the new process has nothing in memory; what follows comes from MariaDB.
    drop((alice, bob));
    let s = s.restart().await;
    for m in &seen {
        assert_eq!(db.stored(msg_id(m)).await, 1, "{m}");
    }
    let mut carol = s.client("carol").await;
    let joined = carol.join("stage").await;
    assert_eq!(texts(&joined.body["history"]), ["one", "two", "three"]);
    assert_eq!(
        joined.body["epoch"].as_u64(),
        Some(epoch),
        "a clean restart keeps the epoch"
    );
    let mut back = s.client("bob").await;
    let p = back
        .call(
            Op::Join,
            json!({ "room_id": "stage", "since": { "epoch": epoch, "seq": after_one } }),
        )
        .await;
    assert_eq!(p.body["recovered"], true, "{p:?}");
    assert_eq!(texts(&p.body["history"]), ["two", "three"]);

    // An outbox row posted through the API: delivered once, stored once, marked sent.
    let auth = format!("Bearer {KEY}");
    let body = json!({"room_id": "stage", "kind": "gift", "text": "a yacht!", "user_id": "whale",
                      "payload": {"gift": "yacht"}})
    .to_string();
    let (status, _, reply) = http(
        s.addr,
        "POST",
        "/api/v1/outbox",
        &[("authorization", &auth), JSON],
        &body,
    )
    .await;
    assert_eq!(status, 202, "{reply}");
    let live = carol.expect("room_msg").await.body;
    assert_eq!(live["text"], "a yacht!");
    assert_eq!(live["payload"], json!({"gift": "yacht"}));
    let gift = msg_id(&live);
    let deadline = tokio::time::Instant::now() + WAIT;
    while db.outbox_pending().await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the row was never marked sent"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(db.stored(gift).await, 1, "stored once");
    // Delivered once: the room's next message after the gift is the one sent after it (a room's
    // messages arrive in order, so a second copy would come first), and the row is sent, so the
    // relay has nothing left to publish.
    assert_eq!(carol.chat("stage", "after the gift").await.op, "chat_ok");
    let next = carol.expect("room_msg").await.body;
    assert_eq!(next["text"], "after the gift", "no second copy");
    let mut late = s.client("late").await;
    let joined = late.join("stage").await;
    assert_eq!(
        texts(&joined.body["history"]),
        ["one", "two", "three", "a yacht!", "after the gift"],
        "once in the history"
    );

    drop((carol, back, late));
    s.stop().await;
    db.drop_it().await;
}
