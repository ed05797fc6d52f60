use roomcast_proto::{Op, Wire};
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn login_valid_expired_bad_signature_and_missing() {
    let s = TestServer::start().await;

    let mut c = Client::connect(&s.url(), Wire::JsonText).await;
    // Nothing but login works before logging in.
    let p = c.call(Op::Join, json!({ "room_id": "r" })).await;
    assert_eq!(
        (p.op.as_str(), p.body["code"].as_str()),
        ("error", Some("unauthenticated"))
    );
    assert_eq!(p.body["op"], "join");

    let expired = token_for("alice", None, -3600);
    let p = c.login(&expired).await;
    assert_eq!(p.body["code"], "unauthenticated");
    assert!(
        p.body["message"].as_str().unwrap().contains("expired"),
        "{p:?}"
    );

    let forged = roomcast_core::auth::JwtAuth::new(b"another secret").issue(
        &roomcast_core::ids::UserId::parse("alice").unwrap(),
        None,
        roomcast_core::clock::now_s() + 3600,
    );
    let p = c.login(&forged).await;
    assert_eq!(p.body["code"], "unauthenticated");
    assert!(
        p.body["message"].as_str().unwrap().contains("signature"),
        "{p:?}"
    );

    let p = c.login("not-a-token").await;
    assert_eq!(p.body["code"], "unauthenticated");

    let p = c.call(Op::Login, json!({})).await;
    assert_eq!(p.body["code"], "bad_request", "missing token field: {p:?}");
    assert!(
        p.body["message"].as_str().unwrap().contains("token"),
        "{p:?}"
    );

    let p = c.login(&s.token("alice")).await;
    assert_eq!(p.op, "login_ok");
    assert_eq!(p.body["user_id"], "alice");
    assert_eq!(p.body["name"], "alice's name");
    assert_eq!(p.body["heartbeat_s"], 30);

    // Same user again: fine (token refresh). Another user: refused.
    assert_eq!(c.login(&s.token("alice")).await.op, "login_ok");
    let p = c.login(&s.token("bob")).await;
    assert_eq!(p.body["code"], "bad_request");
    c.join("r").await;
}

#[tokio::test]
async fn token_in_the_upgrade_url() {
    let s = TestServer::start().await;
    let url = format!("{}?token={}", s.url(), s.token("carol"));
    let mut c = Client::connect(&url, Wire::JsonText).await;
    let p = c.next().await;
    assert_eq!((p.op.as_str(), p.seq), ("login_ok", 0));
    assert_eq!(p.body["user_id"], "carol");
    c.join("r").await;

    // A bad token in the URL is refused before the upgrade, with a readable reason.
    let bad = format!("{}?token=garbage", s.url());
    let err = tokio_tungstenite::connect_async(bad).await.unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            assert_eq!(resp.status(), 401);
            let body: serde_json::Value =
                serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"]["code"], "unauthenticated");
        }
        other => panic!("expected HTTP 401, got {other:?}"),
    }
}

#[tokio::test]
async fn cli_token_works_with_the_generated_secret() {
    // No secret configured: the server generates one in the data dir, `roomcast token` reads it.
    let s = TestServer::start_with(|c| c.auth.jwt_secret = None).await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .args([
            "token",
            "--user",
            "dave",
            "--name",
            "Dave",
            "--ttl",
            "10m",
            "--data-dir",
        ])
        .arg(s.dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let mut c = Client::connect(&s.url(), Wire::JsonText).await;
    let p = c.login(token.trim()).await;
    assert_eq!(p.op, "login_ok", "{p:?}");
    assert_eq!(p.body["name"], "Dave");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .args(["token", "--user", "bad\u{7}user", "--data-dir"])
        .arg(s.dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--user"));
}
