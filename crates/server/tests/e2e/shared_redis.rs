//! Standalone servers with `[redis] url`: bans, mutes, rate limits and pending acks live in Redis
//! — shared by every server pointing there and kept across restarts. Needs the test Redis
//! (`scripts/services.sh up redis`, or `RC_TEST_REDIS_URL`); a missing one fails the test.

use serde_json::json;

use crate::common::*;

const KEY: &str = "test-api-key-0123456789";

fn redis_url() -> String {
    std::env::var("RC_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:16379/".into())
}

/// A server on the test Redis with a key prefix of its own test.
async fn server(prefix: &str) -> TestServer {
    let prefix = prefix.to_owned();
    TestServer::start_with(move |c| {
        c.api.keys = vec![KEY.into()];
        c.redis.url = Some(redis_url());
        c.redis.key_prefix = prefix;
        c.ingest.user_limit.rate = 0.01;
        c.ingest.user_limit.burst = 4.0;
    })
    .await
}

async fn ban(s: &TestServer, user: &str) -> u16 {
    let auth = format!("Bearer {KEY}");
    let body = json!({"reason": "shared"}).to_string();
    let (status, _, _) = http(
        s.addr,
        "PUT",
        &format!("/api/v1/users/{user}/ban"),
        &[("authorization", &auth), JSON],
        &body,
    )
    .await;
    status
}

#[tokio::test]
async fn a_ban_reaches_every_server_on_the_redis_and_survives_a_restart() {
    let prefix = format!("e2e:{:016x}:", fastrand::u64(..));
    let a = server(&prefix).await;
    let b = server(&prefix).await;
    assert_eq!(ban(&a, "mallory").await, 200);
    // Banned on the other server too: its login is refused (4003 after `banned`).
    let mut c = Client::connect(&b.url(), roomcast_proto::Wire::JsonText).await;
    let p = c.login(&b.token("mallory")).await;
    assert_eq!(p.body["code"], "banned", "{p:?}");
    // And after a restart of the server that banned.
    let a = a.restart().await;
    let mut c = Client::connect(&a.url(), roomcast_proto::Wire::JsonText).await;
    let p = c.login(&a.token("mallory")).await;
    assert_eq!(p.body["code"], "banned", "{p:?}");
    // Others are fine.
    let mut ok = a.client("alice").await;
    assert_eq!(ok.join("r").await.op, "join_ok");
}

#[tokio::test]
async fn a_users_chat_limit_holds_across_servers() {
    let prefix = format!("e2e:{:016x}:", fastrand::u64(..));
    let a = server(&prefix).await;
    let b = server(&prefix).await;
    let (mut on_a, mut on_b) = (a.client("talker").await, b.client("talker").await);
    on_a.join("r").await;
    on_b.join("r").await;
    let mut accepted = 0;
    let mut limited = 0;
    for i in 0..10 {
        let c = if i % 2 == 0 { &mut on_a } else { &mut on_b };
        let p = c.chat("r", &format!("line {i}")).await;
        match p.op.as_str() {
            "chat_ok" => accepted += 1,
            _ => {
                assert_eq!(p.body["code"], "rate_limited", "{p:?}");
                limited += 1;
            }
        }
    }
    assert_eq!(
        (accepted, limited),
        (4, 6),
        "one burst of 4 for both servers together"
    );
}
