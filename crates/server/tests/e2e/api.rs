//! The server API (`/api/v1`), moderation taking effect at once, critical messages with ack and
//! retry, and `/metrics`.

use std::time::{Duration, Instant};

use roomcast_proto::Wire;
use roomcast_proto::ws::close;
use serde_json::{Value, json};

use crate::common::*;

const KEY: &str = "test-api-key-0123456789";

async fn api_server(tweak: impl FnOnce(&mut roomcast_server::config::Config)) -> TestServer {
    TestServer::start_with(|c| {
        c.api.keys = vec![KEY.into()];
        tweak(c);
    })
    .await
}

/// An API call with the key; returns (status, JSON body).
async fn api(s: &TestServer, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let auth = format!("Bearer {KEY}");
    let text = body.map(|b| b.to_string()).unwrap_or_default();
    let mut headers = vec![("authorization", auth.as_str())];
    if !text.is_empty() {
        headers.push(JSON);
    }
    let (status, _, reply) = http(s.addr, method, &format!("/api/v1{path}"), &headers, &text).await;
    let v = serde_json::from_str(&reply).unwrap_or(Value::String(reply));
    (status, v)
}

fn message(v: &Value) -> &str {
    v["error"]["message"].as_str().unwrap_or("")
}

#[tokio::test]
async fn the_api_needs_the_key_and_names_bad_fields() {
    let s = api_server(|_| {}).await;
    let (status, _, body) = http(s.addr, "GET", "/api/v1/rooms", &[], "").await;
    assert_eq!(status, 401, "{body}");
    let (status, _, _) = http(
        s.addr,
        "GET",
        "/api/v1/rooms",
        &[("authorization", "Bearer wrong")],
        "",
    )
    .await;
    assert_eq!(status, 401);
    // The document is public and is OpenAPI.
    let (status, ctype, body) = http(s.addr, "GET", "/api/v1/openapi.json", &[], "").await;
    assert_eq!(status, 200);
    assert!(ctype.starts_with("application/json"));
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert!(doc["paths"]["/rooms/{room}/messages"]["post"].is_object());
    // Every documented operation is served (401 without a key, not 404/405).
    for (path, ops) in doc["paths"].as_object().unwrap() {
        if path == "/openapi.json" {
            continue;
        }
        let concrete = path.replace("{room}", "r1").replace("{user}", "u1");
        for method in ops.as_object().unwrap().keys() {
            let (status, _, _) = http(
                s.addr,
                &method.to_uppercase(),
                &format!("/api/v1{concrete}"),
                &[],
                "",
            )
            .await;
            assert_eq!(status, 401, "{method} {path}");
        }
    }
    let (status, body) = api(&s, "GET", "/nope", None).await;
    assert_eq!(status, 404, "{body}");

    for (path, body, field) in [
        (
            "/rooms/r1/messages",
            json!({"kind": "rocket", "text": "x"}),
            "kind",
        ),
        ("/rooms/r1/messages", json!({"kind": "gift"}), "text"),
        (
            "/rooms/r1/messages",
            json!({"text": "x", "colour": 1}),
            "colour",
        ),
        (
            "/rooms/r1/messages",
            json!({"text": "x", "user_id": ""}),
            "user_id",
        ),
        ("/rooms/bad room!/messages", json!({"text": "x"}), "room"),
        (
            "/critical",
            json!({"user_ids": [], "text": "x"}),
            "user_ids",
        ),
        ("/critical", json!({"user_ids": ["a"]}), "text or payload"),
        ("/critical", json!({"text": "x"}), "user_ids"),
        ("/broadcast", json!({"text": 5}), "text"),
    ] {
        let (status, reply) = api(&s, "POST", &path.replace(' ', "%20"), Some(body)).await;
        assert_eq!(status, 400, "{path}: {reply}");
        assert_eq!(reply["error"]["code"], "bad_request");
        assert!(message(&reply).contains(field), "{path}: {reply}");
    }
    let (status, _, reply) = http(
        s.addr,
        "POST",
        "/api/v1/broadcast",
        &[("authorization", &format!("Bearer {KEY}")), JSON],
        "{not json",
    )
    .await;
    assert_eq!(status, 400, "{reply}");
}

#[tokio::test]
async fn the_platform_publishes_gifts_into_a_room_and_reads_room_state() {
    let s = api_server(|_| {}).await;
    let mut viewer = s.client("viewer").await;
    viewer.join("show").await;
    let mut other = s.client("other").await;
    other.join("show").await;

    let (status, reply) = api(
        &s,
        "POST",
        "/rooms/show/messages",
        Some(json!({
            "kind": "gift", "text": "sent a rose", "user_id": "fan-9", "name": "Fan",
            "payload": {"gift": "rose", "count": 3}
        })),
    )
    .await;
    assert_eq!(status, 202, "{reply}");
    let m = viewer.expect("room_msg").await.body;
    assert_eq!(m["kind"], "gift");
    assert_eq!(m["user_id"], "fan-9");
    assert_eq!(m["name"], "Fan");
    assert_eq!(m["payload"], json!({"gift": "rose", "count": 3}));
    assert_eq!(m["msg_id"], reply["msg_id"]);

    let (status, info) = api(&s, "GET", "/rooms/show", None).await;
    assert_eq!(status, 200);
    assert_eq!(info["online"], 2);
    assert_eq!(info["nodes"], json!(["standalone"]));
    assert_eq!(info["hot_level"], 0);

    let mut lone = s.client("lone").await;
    lone.join("quiet").await;
    let (_, top) = api(&s, "GET", "/rooms?top=1", None).await;
    assert_eq!(
        top["rooms"],
        json!([{"room_id": "show", "online": 2, "hot_level": 0}])
    );
    let (status, _) = api(&s, "GET", "/rooms?top=0", None).await;
    assert_eq!(status, 400);

    let (_, history) = api(&s, "GET", "/rooms/show/history?limit=5", None).await;
    let msgs = history["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["text"], "sent a rose");
}

#[tokio::test]
async fn ban_kick_and_mute_take_effect_at_once() {
    let s = api_server(|_| {}).await;
    let mut mallory = s.client("mallory").await;
    mallory.join("r").await;
    let mut bystander = s.client("bystander").await;
    bystander.join("r").await;

    // Mute: chat refused in that room only, at once; lifted again.
    let (status, _) = api(
        &s,
        "PUT",
        "/rooms/r/mutes/mallory",
        Some(json!({"duration_s": 600, "reason": "spam"})),
    )
    .await;
    assert_eq!(status, 200);
    let e = mallory.chat("r", "still here").await;
    assert_eq!(e.body["code"], "muted", "{e:?}");
    mallory.join("elsewhere").await;
    assert_eq!(mallory.chat("elsewhere", "fine here").await.op, "chat_ok");
    let (_, lifted) = api(&s, "DELETE", "/rooms/r/mutes/mallory", None).await;
    assert_eq!(lifted["removed"], true);
    assert_eq!(mallory.chat("r", "back").await.op, "chat_ok");

    // Kick: the client sees why; it may come back.
    let (_, kicked) = api(
        &s,
        "POST",
        "/users/mallory/kick",
        Some(json!({"reason": "cool down"})),
    )
    .await;
    assert_eq!(kicked["closed_connections"], 1);
    assert_eq!(
        mallory.ended().await,
        Ended::Close(close::KICKED, "cool down".into())
    );
    let notice = mallory.expect("kicked").await;
    assert_eq!(
        notice.body,
        json!({"code": "kicked", "reason": "cool down"})
    );

    // Ban: live connection closed at once, logins refused (op and URL token), until unbanned.
    let mut again = s.client("mallory").await;
    let (_, banned) = api(
        &s,
        "PUT",
        "/users/mallory/ban",
        Some(json!({"reason": "abuse"})),
    )
    .await;
    assert_eq!(banned["closed_connections"], 1);
    assert_eq!(
        again.ended().await,
        Ended::Close(close::BANNED, "banned: abuse".into())
    );
    let mut refused = Client::connect(&s.url(), Wire::JsonText).await;
    let e = refused.login(&s.token("mallory")).await;
    assert_eq!(e.body["code"], "banned");
    assert!(matches!(
        refused.ended().await,
        Ended::Close(close::BANNED, _)
    ));
    let mut by_url = Client::connect(
        &format!("{}?token={}", s.url(), s.token("mallory")),
        Wire::JsonText,
    )
    .await;
    assert_eq!(by_url.expect("error").await.body["code"], "banned");
    assert!(matches!(
        by_url.ended().await,
        Ended::Close(close::BANNED, _)
    ));

    // Nobody else noticed.
    assert_eq!(bystander.chat("r", "all good").await.op, "chat_ok");

    let (_, unbanned) = api(&s, "DELETE", "/users/mallory/ban", None).await;
    assert_eq!(unbanned["removed"], true);
    let mut back = Client::connect(&s.url(), Wire::JsonText).await;
    assert_eq!(back.login(&s.token("mallory")).await.op, "login_ok");
}

/// Short retry settings for the critical-message tests.
fn fast_retries(c: &mut roomcast_server::config::Config) {
    c.gateway.critical_retry_base_ms = 300;
    c.gateway.critical_retry_max_ms = 600;
    c.gateway.critical_max_attempts = 3;
}

#[tokio::test]
async fn unacked_critical_messages_are_retried_with_backoff_then_fail() {
    let s = api_server(fast_retries).await;
    let mut silent = s.client("silent").await;
    let mut polite = s.client("polite").await;

    let (status, reply) = api(
        &s,
        "POST",
        "/critical",
        Some(
            json!({"user_ids": ["silent", "polite"], "kind": "system", "text": "maintenance at 3",
                    "payload": {"level": "high"}}),
        ),
    )
    .await;
    assert_eq!(status, 202, "{reply}");
    assert_eq!(reply["recipients"], 2);
    assert_eq!(reply["online"], 2);
    let id = reply["msg_id"].clone();

    // The polite client acks at once.
    let c = polite.expect("critical").await;
    assert_eq!(c.body["msg_id"], id);
    assert_eq!(c.body["text"], "maintenance at 3");
    assert_eq!(c.body["payload"], json!({"level": "high"}));
    polite
        .send(roomcast_proto::Op::Ack, json!({"msg_id": id}))
        .await;

    // The silent one gets it three times: at once, after ~300 ms, after ~600 ms.
    let mut at = Vec::new();
    for _ in 0..3 {
        let c = silent.expect("critical").await;
        assert_eq!(c.body["msg_id"], id, "same id every time");
        at.push(Instant::now());
    }
    let gap1 = at[1] - at[0];
    let gap2 = at[2] - at[1];
    assert!(
        gap1 >= Duration::from_millis(230) && gap1 < Duration::from_millis(1500),
        "{gap1:?}"
    );
    assert!(gap2 >= Duration::from_millis(470), "{gap2:?}: backs off");

    // Then it is recorded as failed, and the polite one's ack left nothing pending.
    s.eventually("the failure", |r| r.metrics.ack_failures.get() == 1)
        .await;
    s.eventually("nothing pending", |r| r.metrics.acks_pending.get() == 0)
        .await;
    assert_eq!(s.running().metrics.ack_retries.get(), 2);
    assert!(s.running().metrics.acks_received.get() >= 1);
    let acks = s.running().acks.clone();
    assert_eq!(acks.count().await.unwrap(), 0);
    assert!(
        polite.inbox().iter().all(|p| p.op != "critical"),
        "an acked message is not resent"
    );
}

#[tokio::test]
async fn an_offline_user_gets_pending_critical_messages_at_login_also_after_a_restart() {
    let s = api_server(fast_retries).await;
    let (_, reply) = api(
        &s,
        "POST",
        "/critical",
        Some(json!({"user_ids": ["away"], "kind": "gift", "text": "you got a gift", "room_id": "show"})),
    )
    .await;
    assert_eq!(reply["online"], 0);
    let id = reply["msg_id"].clone();

    let s = s.restart().await;
    let mut away = s.client("away").await;
    let c = away.expect("critical").await;
    assert_eq!(c.body["msg_id"], id);
    assert_eq!(c.body["kind"], "gift");
    assert_eq!(c.body["room_id"], "show");
    away.send(roomcast_proto::Op::Ack, json!({"msg_id": id}))
        .await;
    let acks = s.running().acks.clone();
    let deadline = Instant::now() + WAIT;
    while acks.count().await.unwrap() != 0 {
        assert!(Instant::now() < deadline, "ack never recorded");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Acked: the next login brings nothing.
    let s = s.restart().await;
    let mut later = s.client("away").await;
    later.join("show").await;
    assert!(later.inbox().iter().all(|p| p.op != "critical"));
}

#[tokio::test]
async fn broadcasts_and_critical_room_messages_reach_everyone_online() {
    let s = api_server(|_| {}).await;
    let mut a = s.client("a").await;
    let mut b = s.client("b").await;
    a.join("room").await;
    let (_, reply) = api(
        &s,
        "POST",
        "/broadcast",
        Some(json!({"text": "server restarts in 5 minutes"})),
    )
    .await;
    assert_eq!(reply["recipients"], 2);
    for c in [&mut a, &mut b] {
        let m = c.expect("critical").await;
        assert_eq!(m.body["kind"], "system");
        assert_eq!(m.body["text"], "server restarts in 5 minutes");
    }
    let (_, reply) = api(
        &s,
        "POST",
        "/rooms/room/messages",
        Some(json!({"kind": "admin", "text": "room rules", "critical": true})),
    )
    .await;
    assert_eq!(reply["recipients"], 1, "only the room's member");
    let m = a.expect("critical").await;
    assert_eq!(m.body["room_id"], "room");
    assert_eq!(m.body["text"], "room rules");
}

#[tokio::test]
async fn metrics_are_served_in_prometheus_format() {
    let s = api_server(|_| {}).await;
    let mut c = s.client("m").await;
    c.join("r").await;
    assert_eq!(c.chat("r", "count me").await.op, "chat_ok");
    c.expect("room_msg").await;
    let (status, ctype, body) = http(s.addr, "GET", "/metrics", &[], "").await;
    assert_eq!(status, 200);
    assert!(ctype.starts_with("text/plain"));
    for name in [
        "roomcast_connections 1",
        "roomcast_rooms 1",
        "roomcast_messages_in_total 1",
        "roomcast_deliveries_total 1",
        "roomcast_acks_pending 0",
        "roomcast_ack_retries_total",
        "roomcast_ack_failures_total",
        "roomcast_drops_total{reason=",
        "roomcast_batch_size_messages_bucket",
        "roomcast_delivery_latency_seconds_bucket",
    ] {
        assert!(body.contains(name), "missing {name} in\n{body}");
    }
}

#[tokio::test]
async fn outbox_rows_reach_the_room_whether_written_by_the_api_or_by_the_backend() {
    use roomcast_core::outbox::{NewOutboxRow, OutboxStore};
    let s = api_server(|_| {}).await;
    let mut viewer = s.client("viewer").await;
    viewer.join("paid").await;

    let (status, reply) = api(
        &s,
        "POST",
        "/outbox",
        Some(
            json!({"room_id": "paid", "kind": "gift", "text": "a yacht!", "user_id": "whale",
                    "payload": {"gift": "yacht"}}),
        ),
    )
    .await;
    assert_eq!(status, 202, "{reply}");
    let m = viewer.expect("room_msg").await.body;
    assert_eq!(
        (m["kind"].as_str(), m["text"].as_str()),
        (Some("gift"), Some("a yacht!"))
    );
    assert_eq!(m["payload"], json!({"gift": "yacht"}));

    // A backend writing the row in its own transaction (here: its own connection to the file).
    let backend =
        roomcast_backends::sqlite_outbox::SqliteOutbox::open(&s.dir.path().join("roomcast.db"))
            .unwrap();
    backend
        .insert(NewOutboxRow {
            room: roomcast_core::ids::RoomId::parse("paid").unwrap(),
            kind: roomcast_core::model::MsgKind::Follow,
            user: roomcast_core::ids::UserId::parse("fan").unwrap(),
            name: None,
            text: "fan followed".into(),
            payload: None,
        })
        .await
        .unwrap();
    let m = viewer.expect("room_msg").await.body;
    assert_eq!(m["text"], "fan followed");
    // Marked sent by the store's writer, in the transaction that stores the message.
    let deadline = tokio::time::Instant::now() + WAIT;
    while backend.pending_count().await.unwrap() != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "rows never marked sent"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }

    let (status, reply) = api(&s, "POST", "/outbox", Some(json!({"room_id": "paid"}))).await;
    assert_eq!(status, 400);
    assert!(message(&reply).contains("text"), "{reply}");
}

#[tokio::test]
async fn a_moderation_body_that_is_not_json_is_refused_not_ignored() {
    let s = api_server(|_| {}).await;
    let auth = format!("Bearer {KEY}");
    let (status, _, body) = http(
        s.addr,
        "PUT",
        "/api/v1/users/someone/ban",
        &[
            ("authorization", &auth),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        "duration_s=60",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("body"), "{body}");
    // An empty body is fine (no duration, no reason) — and so is a JSON one.
    let (status, _) = api(&s, "PUT", "/users/someone/ban", None).await;
    assert_eq!(status, 200);
    let (status, reply) = api(
        &s,
        "PUT",
        "/rooms/r/mutes/someone",
        Some(json!({"reason": "x".repeat(101)})),
    )
    .await;
    assert_eq!(status, 400);
    assert!(message(&reply).contains("reason"), "{reply}");
}
