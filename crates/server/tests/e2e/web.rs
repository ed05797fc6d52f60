//! The demo page's assets and the dev-only endpoints (`/dev/token`, `/dev/gift`).

use roomcast_proto::Wire;
use serde_json::{Value, json};

use crate::common::*;

#[tokio::test]
async fn the_demo_page_and_client_library_are_served() {
    let s = TestServer::start().await;
    for (path, ctype, needle) in [
        ("/", "text/html", "<title>roomcast"),
        ("/demo.js", "text/javascript", "RoomcastClient"),
        ("/demo.css", "text/css", ".danmaku"),
        (
            "/roomcast.js",
            "text/javascript",
            "export class RoomcastClient",
        ),
        ("/roomcast.d.ts", "text/plain", "export interface RoomMsg"),
    ] {
        let (status, ct, body) = http(s.addr, "GET", path, &[], "").await;
        assert_eq!(status, 200, "{path}");
        assert!(ct.starts_with(ctype), "{path}: {ct}");
        assert!(body.contains(needle), "{path}");
    }
}

#[tokio::test]
async fn dev_tokens_log_in_and_bad_requests_name_the_field() {
    let s = TestServer::start().await;
    let (status, _, body) =
        http(s.addr, "POST", "/dev/token", &[JSON], r#"{"name":" Zoë "}"#).await;
    assert_eq!(status, 200, "{body}");
    let t: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(t["name"], "Zoë");
    let user = t["user_id"].as_str().unwrap();
    assert!(user.starts_with("guest-"));

    let mut c = Client::connect(&s.url(), Wire::JsonText).await;
    let ok = c.login(t["token"].as_str().unwrap()).await;
    assert_eq!(ok.op, "login_ok");
    assert_eq!(ok.body["user_id"], user);
    assert_eq!(ok.body["name"], "Zoë");

    for (body, field) in [
        (r#"{"name":""}"#, "name"),
        (&format!(r#"{{"name":"{}"}}"#, "x".repeat(33)), "name"),
        (
            r#"{"name":"evil\u202Egnp"}"#,
            "direction-override character U+202E",
        ),
        (r#"{"name":"ad\u200Bmin"}"#, "zero-width character U+200B"),
        (r#"{"nick":"a"}"#, "nick"),
        ("not json", "JSON"),
    ] {
        let (status, _, reply) = http(s.addr, "POST", "/dev/token", &[JSON], body).await;
        assert_eq!(status, 400, "{body}");
        let e: Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(e["error"]["code"], "bad_request");
        assert!(
            e["error"]["message"].as_str().unwrap().contains(field),
            "{reply}"
        );
    }
}

#[tokio::test]
async fn a_dev_gift_reaches_the_room_as_a_gift() {
    let s = TestServer::start().await;
    let mut viewer = s.client("viewer").await;
    viewer.join("show").await;

    let token = s.token("fan");
    let auth = format!("Bearer {token}");
    let gift = json!({"room_id": "show", "gift": "rocket"}).to_string();
    // POST /dev/gift with an optional Authorization header; (status, body).
    let send = |auth: Option<String>, body: String| async move {
        let mut headers = vec![JSON];
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        let (status, _, reply) = http(s.addr, "POST", "/dev/gift", &headers, &body).await;
        (status, reply)
    };
    let (status, body) = send(Some(auth.clone()), gift.clone()).await;
    assert_eq!(status, 200, "{body}");
    let m = viewer.expect("room_msg").await;
    assert_eq!(m.body["kind"], "gift");
    assert_eq!(m.body["user_id"], "fan");
    assert!(m.body["text"].as_str().unwrap().contains("rocket"));

    assert_eq!(send(None, gift.clone()).await.0, 401, "no token");
    assert_eq!(
        send(Some("Bearer nope".into()), gift.clone()).await.0,
        401,
        "bad token"
    );
    let (status, body) = send(
        Some(auth.clone()),
        r#"{"room_id":"show","gift":"yacht"}"#.into(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("gift: one of"), "{body}");

    // Gifts share the sender's chat rate limit (2/s, burst 5 by default).
    let mut limited = None;
    for _ in 0..10 {
        let (status, body) = send(Some(auth.clone()), gift.clone()).await;
        if status == 429 {
            limited = Some(body);
            break;
        }
    }
    let body: Value = serde_json::from_str(&limited.expect("rate limited")).unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    assert!(body["error"]["retry_after_ms"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn dev_endpoints_can_be_turned_off() {
    let s = TestServer::start_with(|c| c.dev.endpoints = Some(false)).await;
    let (status, _, _) = http(s.addr, "POST", "/dev/token", &[JSON], r#"{"name":"a"}"#).await;
    assert_eq!(status, 404);
    let (status, _, _) = http(s.addr, "POST", "/dev/gift", &[JSON], "{}").await;
    assert_eq!(status, 404);
    let (status, _, _) = http(s.addr, "GET", "/", &[], "").await;
    assert_eq!(status, 200, "the page itself stays");
}
