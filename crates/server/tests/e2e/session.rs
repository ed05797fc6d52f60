//! Session ops and endpoint switches beyond the basics: `logout`, the `/dev/echo` conformance
//! endpoint, the `Origin` allow-list, the dev endpoints' budget, and config checks at start.

use futures_util::{SinkExt, StreamExt};
use roomcast_core::ids::{RoomId, UserId};
use roomcast_proto::{Op, Wire};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::common::*;

#[tokio::test]
async fn logout_leaves_every_room_at_once_answers_and_closes() {
    for wire in [Wire::JsonText, Wire::Proto] {
        let s = TestServer::start_with(|c| c.gateway.online_push_interval_ms = 20).await;
        let mut leaving = s.client_with("leaving", wire).await;
        leaving.join("a").await;
        leaving.join("b").await;
        let mut stays = s.client("stays").await;
        stays.join("a").await;
        let (a, b) = (RoomId::parse("a").unwrap(), RoomId::parse("b").unwrap());
        assert_eq!(s.running().gateway.room_members(&a), 2);
        let user = UserId::parse("leaving").unwrap();
        assert_eq!(s.running().gateway.user_connections(&user).len(), 1);

        // logout, then a chat in the same frame's wake: the chat is ignored.
        let seq = leaving.send(Op::Logout, json!({})).await;
        leaving
            .send(Op::Chat, json!({"room_id": "a", "text": "after logout"}))
            .await;
        let ok = leaving.reply(seq).await;
        assert_eq!(ok.op, "logout_ok", "{wire:?}");
        match leaving.ended().await {
            Ended::Close(1000, _) => {}
            other => panic!("closed with 1000 after logout: {other:?}"),
        }
        assert!(
            leaving
                .inbox()
                .iter()
                .all(|p| p.op != "chat_ok" && p.op != "error"),
            "nothing answered after logout: {:?}",
            leaving.inbox()
        );
        // Rooms and user table updated at once, not at the heartbeat timeout.
        assert_eq!(s.running().gateway.room_members(&a), 1);
        assert_eq!(s.running().gateway.room_members(&b), 0);
        assert!(s.running().gateway.user_connections(&user).is_empty());
        // The one who stays sees the online count drop to 1, and no "after logout" message.
        loop {
            let p = stays.next().await;
            assert_ne!(p.body["text"], "after logout");
            if p.op == "online" && p.body["count"] == 1 {
                break;
            }
        }
        assert_eq!(stays.chat("a", "alone").await.op, "chat_ok");
        assert_eq!(stays.expect("room_msg").await.body["text"], "alone");
        s.eventually("the socket is released", |r| {
            r.metrics.sockets_open.get() == 1
        })
        .await;
    }
}

#[tokio::test]
async fn logout_before_login_is_refused() {
    let s = TestServer::start().await;
    let mut c = Client::connect(&s.url(), Wire::JsonText).await;
    let p = c.call(Op::Logout, json!({})).await;
    assert_eq!(p.op, "error");
    assert_eq!(p.body["code"], "unauthenticated");
}

#[tokio::test]
async fn the_echo_endpoint_is_off_by_default_and_echoes_when_on() {
    let s = TestServer::start().await;
    let (status, _, _) = http(s.addr, "GET", "/dev/echo", &[], "").await;
    assert_eq!(status, 404);

    let s = TestServer::start_with(|c| {
        c.dev.echo = true;
        c.gateway.max_frame_bytes = 1 << 20;
    })
    .await;
    let url = format!("ws://{}/dev/echo", s.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let big = "é".repeat(200_000);
    for m in [
        Message::text("hello"),
        Message::binary(vec![0u8, 1, 2, 255]),
        Message::text(big.clone()),
    ] {
        ws.send(m.clone()).await.unwrap();
        let back = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(back, m);
    }
    ws.send(Message::Ping(b"p".to_vec().into())).await.unwrap();
    let pong = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(pong, Message::Pong(b"p".to_vec().into()));
    ws.close(None).await.unwrap();
    let end = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
    assert!(matches!(end, Some(Ok(Message::Close(_))) | None), "{end:?}");
    // Echo connections never log in and are not chat sessions.
    assert_eq!(s.running().gateway.room_count(), 0);
}

#[tokio::test]
async fn browser_origins_outside_the_allow_list_are_refused() {
    let s = TestServer::start_with(|c| {
        c.http.allowed_origins = vec!["https://live.example".into()];
    })
    .await;
    let try_origin = |origin: Option<&'static str>| {
        let url = s.url();
        async move {
            let mut req = url.into_client_request().unwrap();
            if let Some(o) = origin {
                req.headers_mut().insert("Origin", o.parse().unwrap());
            }
            match tokio_tungstenite::connect_async(req).await {
                Ok(_) => 101,
                Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
                Err(e) => panic!("{e}"),
            }
        }
    };
    assert_eq!(try_origin(Some("https://live.example")).await, 101);
    assert_eq!(try_origin(Some("HTTPS://LIVE.EXAMPLE")).await, 101);
    assert_eq!(try_origin(Some("https://evil.example")).await, 403);
    assert_eq!(
        try_origin(None).await,
        101,
        "non-browser clients send no Origin"
    );
}

#[tokio::test]
async fn dev_endpoints_have_a_budget() {
    let s = TestServer::start_with(|c| {
        c.dev.rate_limit.rate = 0.5;
        c.dev.rate_limit.burst = 3.0;
    })
    .await;
    for _ in 0..3 {
        let (status, _, body) =
            http(s.addr, "POST", "/dev/token", &[JSON], r#"{"name":"a"}"#).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, _, body) = http(s.addr, "POST", "/dev/token", &[JSON], r#"{"name":"a"}"#).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("rate_limited"), "{body}");
}

#[tokio::test]
async fn values_that_would_panic_are_refused_at_start_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.ingest.user_limit.rate = 1e-300;
    let err = roomcast_server::app::start(config)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("ingest.user_limit"), "{err}");

    let mut config = test_config(dir.path());
    config.gateway.join_limit.burst = f64::INFINITY;
    let err = roomcast_server::app::start(config)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("gateway.join_limit"), "{err}");
}

/// Presence says where a user is: the node holding their connections, until the last of them
/// ends (a second connection keeps it).
#[tokio::test]
async fn presence_names_the_node_until_the_users_last_connection_ends() {
    let s = TestServer::start().await;
    let presence = s.running().gateway.deps().presence.clone();
    let node = s.running().gateway.node().clone();
    let user = UserId::parse("roamer").unwrap();
    assert!(presence.nodes(&user).await.unwrap().is_empty());

    let first = s.client("roamer").await;
    let mut second = s.client("roamer").await;
    assert_eq!(
        presence.nodes(&user).await.unwrap(),
        std::slice::from_ref(&node)
    );
    first.close().await;
    s.eventually("the first connection is gone", |r| {
        r.gateway.user_connections(&user).len() == 1
    })
    .await;
    assert_eq!(
        presence.nodes(&user).await.unwrap(),
        [node],
        "the second connection keeps it"
    );
    let p = second.call(Op::Logout, json!({})).await;
    assert_eq!(p.op, "logout_ok");
    assert!(!presence.is_online(&user).await.unwrap());
}
