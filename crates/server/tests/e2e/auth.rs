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

    let forged = roomcast_core::auth::JwtAuth::hs256(b"another secret, another secret!!")
        .unwrap()
        .issue(
            &roomcast_core::ids::UserId::parse("alice").unwrap(),
            None,
            roomcast_core::clock::now_s() + 3600,
        )
        .unwrap();
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

const TESTDATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../core/testdata");

/// A token for `user` signed by the fixture private key `file` with `alg` (and `kid`).
fn signed_by(file: &str, alg: jsonwebtoken::Algorithm, kid: Option<&str>, user: &str) -> String {
    let pem = std::fs::read(format!("{TESTDATA}/{file}")).unwrap();
    let key = match alg {
        jsonwebtoken::Algorithm::RS256 => jsonwebtoken::EncodingKey::from_rsa_pem(&pem),
        _ => jsonwebtoken::EncodingKey::from_ec_pem(&pem),
    }
    .unwrap();
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = kid.map(str::to_owned);
    let claims = json!({
        "sub": user,
        "exp": roomcast_core::clock::now_s() + 600,
        "name": "Pat",
        "aud": "roomcast",
    });
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

#[tokio::test]
async fn es256_public_key_accepts_its_tokens_and_refuses_hs256() {
    let s = TestServer::start_with(|c| {
        c.auth.jwt_secret = None;
        c.auth.algorithm = Some(roomcast_core::auth::TokenAlg::ES256);
        c.auth.public_key_file = Some(format!("{TESTDATA}/ec1_public.pem").into());
        c.auth.audience = Some("roomcast".into());
    })
    .await;

    let mut c = Client::connect(&s.url(), Wire::JsonText).await;
    // An HS256 token, even one signed with a secret the server once used, is refused by name.
    let p = c.login(&token_for("pat", None, 600)).await;
    assert_eq!(p.body["code"], "unauthenticated", "{p:?}");
    assert!(
        p.body["message"].as_str().unwrap().contains("\"HS256\""),
        "{p:?}"
    );
    // ES256 by another key pair: the signature does not match.
    let other = signed_by(
        "ec2_private.pem",
        jsonwebtoken::Algorithm::ES256,
        None,
        "pat",
    );
    let p = c.login(&other).await;
    assert!(
        p.body["message"].as_str().unwrap().contains("signature"),
        "{p:?}"
    );
    let good = signed_by(
        "ec1_private.pem",
        jsonwebtoken::Algorithm::ES256,
        None,
        "pat",
    );
    let p = c.login(&good).await;
    assert_eq!(p.op, "login_ok", "{p:?}");
    assert_eq!(
        (p.body["user_id"].as_str(), p.body["name"].as_str()),
        (Some("pat"), Some("Pat"))
    );
    c.join("r").await;

    // The same token in the upgrade URL works too.
    let mut u = Client::connect(&format!("{}?token={good}", s.url()), Wire::JsonText).await;
    assert_eq!(u.next().await.op, "login_ok");

    // The server holds no signing key: /dev/token says so instead of handing out a token.
    let (status, _, body) = http(s.addr, "POST", "/dev/token", &[JSON], r#"{"name":"Pat"}"#).await;
    assert_eq!(status, 501, "{body}");
    let e: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["error"]["code"], "cannot_sign", "{body}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ES256 public key"),
        "{body}"
    );

    // `roomcast token` with the same config explains that it cannot sign.
    let conf = s.dir.path().join("es256.toml");
    std::fs::write(
        &conf,
        format!("[auth]\nalgorithm = \"ES256\"\npublic_key_file = \"{TESTDATA}/ec1_public.pem\"\n"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .args(["token", "--user", "pat", "--config"])
        .arg(&conf)
        .env_remove("ROOMCAST_JWT_SECRET")
        .env_remove("ROOMCAST_CONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("signs HS256 tokens only") && err.contains("no key to sign with"),
        "{err}"
    );
}

#[tokio::test]
async fn jwks_picks_the_rs256_key_by_kid() {
    let s = TestServer::start_with(|c| {
        c.auth.jwt_secret = None;
        c.auth.jwks_file = Some(format!("{TESTDATA}/jwks.json").into());
    })
    .await;
    let mut c = Client::connect(&s.url(), Wire::JsonText).await;
    let no_kid = signed_by(
        "rsa1_private.pem",
        jsonwebtoken::Algorithm::RS256,
        None,
        "kim",
    );
    let p = c.login(&no_kid).await;
    assert!(p.body["message"].as_str().unwrap().contains("kid"), "{p:?}");
    let hs = token_for("kim", None, 600);
    assert_eq!(c.login(&hs).await.body["code"], "unauthenticated");
    let rs = signed_by(
        "rsa1_private.pem",
        jsonwebtoken::Algorithm::RS256,
        Some("rsa-1"),
        "kim",
    );
    assert_eq!(c.login(&rs).await.op, "login_ok");
}

#[tokio::test]
async fn a_short_secret_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.auth.jwt_secret = Some("x".repeat(31));
    let e = roomcast_server::app::start(config)
        .await
        .err()
        .expect("refused");
    assert!(format!("{e:#}").contains("at least 32 bytes"), "{e:#}");
}
