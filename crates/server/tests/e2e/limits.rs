use std::time::Duration;

use roomcast_core::config::{FilterMode, LimitConfig};
use roomcast_proto::Op;
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn rate_limit_hit_then_recovered() {
    let s = TestServer::start_with(|c| {
        c.ingest.user_limit = LimitConfig {
            rate: 5.0,
            burst: 2.0,
        }
    })
    .await;
    let mut c = s.client("fast").await;
    c.join("r").await;
    assert_eq!(c.chat("r", "1").await.op, "chat_ok");
    assert_eq!(c.chat("r", "2").await.op, "chat_ok");
    let p = c.chat("r", "3").await;
    assert_eq!(p.body["code"], "rate_limited", "{p:?}");
    assert_eq!(p.body["op"], "chat");
    let retry = p.body["retry_after_ms"].as_u64().unwrap();
    assert!(retry > 0 && retry <= 200, "one token per 200 ms: {retry}");
    // Someone else is not affected by this user's limit.
    let mut other = s.client("other").await;
    other.join("r").await;
    assert_eq!(other.chat("r", "me too").await.op, "chat_ok");
    // Waiting as long as the server said is enough.
    tokio::time::sleep(Duration::from_millis(retry)).await;
    assert_eq!(c.chat("r", "4").await.op, "chat_ok");
}

#[tokio::test]
async fn room_limit_applies_across_users() {
    let s = TestServer::start_with(|c| {
        c.ingest.user_limit.rate = 0.0;
        c.ingest.room_limit = LimitConfig {
            rate: 1.0,
            burst: 2.0,
        };
    })
    .await;
    let mut a = s.client("a").await;
    let mut b = s.client("b").await;
    a.join("busy").await;
    b.join("busy").await;
    assert_eq!(a.chat("busy", "1").await.op, "chat_ok");
    assert_eq!(b.chat("busy", "2").await.op, "chat_ok");
    let p = a.chat("busy", "3").await;
    assert_eq!(p.body["code"], "rate_limited");
    assert!(
        p.body["message"].as_str().unwrap().contains("room"),
        "{p:?}"
    );
    // Another room has its own budget.
    a.join("quiet").await;
    assert_eq!(a.chat("quiet", "fine").await.op, "chat_ok");
}

fn words(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("words.txt");
    std::fs::write(&p, "# test list\nbadword\nvery bad phrase\n").unwrap();
    p
}

#[tokio::test]
async fn sensitive_word_rejected() {
    let list = tempfile::tempdir().unwrap();
    let path = words(list.path());
    let s = TestServer::start_with(|c| c.ingest.words_file = Some(path)).await;
    let mut c = s.client("u").await;
    c.join("r").await;
    let p = c.chat("r", "this has a BADWORD in it").await;
    assert_eq!(p.body["code"], "content_rejected", "{p:?}");
    assert_eq!(c.chat("r", "this is fine").await.op, "chat_ok");
    let m = c.expect("room_msg").await.body;
    assert_eq!(
        m["text"], "this is fine",
        "the rejected one was never delivered"
    );
}

#[tokio::test]
async fn sensitive_word_masked() {
    let list = tempfile::tempdir().unwrap();
    let path = words(list.path());
    let s = TestServer::start_with(|c| {
        c.ingest.words_file = Some(path);
        c.ingest.filter_mode = FilterMode::Mask;
    })
    .await;
    let mut c = s.client("u").await;
    c.join("r").await;
    assert_eq!(
        c.chat("r", "a badword and a very bad phrase").await.op,
        "chat_ok"
    );
    let m = c.expect("room_msg").await.body;
    assert_eq!(m["text"], "a ******* and a ***************");
}

#[tokio::test]
async fn text_checks() {
    let s = TestServer::start_with(|c| c.ingest.max_text_chars = 10).await;
    let mut c = s.client("u").await;
    c.join("r").await;
    for (text, needle) in [
        ("", "empty"),
        ("   ", "empty"),
        ("line\nbreak", "U+000A"),
        ("bell\u{7}", "U+0007"),
        ("evil\u{202E}txt", "U+202E"),
        ("eleven chars", "characters"),
    ] {
        let p = c.chat("r", text).await;
        assert_eq!(p.body["code"], "bad_request", "{text:?}");
        assert!(
            p.body["message"].as_str().unwrap().contains(needle),
            "{text:?}: {p:?}"
        );
    }
    assert_eq!(c.chat("r", "ten chars!").await.op, "chat_ok");
    assert_eq!(
        c.chat("r", "表情👍🏽ok").await.op,
        "chat_ok",
        "characters, not bytes"
    );
    let p = c.call(Op::Chat, json!({ "room_id": "r" })).await;
    assert!(
        p.body["message"].as_str().unwrap().contains("text"),
        "names the missing field: {p:?}"
    );
}
