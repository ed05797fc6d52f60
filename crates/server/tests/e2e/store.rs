//! Durability of the store: writes that fail are retried and make `/readyz` fail; an outbox
//! event caught by `kill -9` between the relay and the store's commit is delivered exactly once
//! after the restart. Writes are made to fail with a trigger installed from the test's own
//! connection to the database file — the store sees a real SQLite error, no test-only knob.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use roomcast_proto::Wire;
use serde_json::{Value, json};

use crate::common::*;

const KEY: &str = "store-test-api-key-0123456789";

fn db(dir: &std::path::Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(dir.join("roomcast.db")).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c
}

/// Makes every insert of a message of `room` fail.
fn refuse_writes(dir: &std::path::Path, room: &str) {
    db(dir)
        .execute_batch(&format!(
            "CREATE TRIGGER refuse BEFORE INSERT ON room_chat_message WHEN NEW.room_id = '{room}'
             BEGIN SELECT RAISE(ABORT, 'test: the disk refuses'); END;"
        ))
        .unwrap();
}

fn allow_writes(dir: &std::path::Path) {
    db(dir).execute_batch("DROP TRIGGER refuse").unwrap();
}

/// Stored copies of a message.
fn stored(dir: &std::path::Path, msg_id: u64) -> i64 {
    db(dir)
        .query_row(
            "SELECT COUNT(*) FROM room_chat_message WHERE msg_id = ?1",
            [msg_id as i64],
            |r| r.get(0),
        )
        .unwrap()
}

fn outbox_pending(dir: &std::path::Path) -> i64 {
    db(dir)
        .query_row(
            "SELECT COUNT(*) FROM room_chat_outbox WHERE sent_at IS NULL",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

async fn until(what: &str, cond: impl AsyncFn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_store_that_cannot_write_fails_readyz_and_loses_nothing() {
    let s = TestServer::start().await;
    let mut a = s.client("a").await;
    a.join("r").await;
    refuse_writes(s.dir.path(), "r");
    assert_eq!(a.chat("r", "kept").await.op, "chat_ok");
    let live = a.expect("room_msg").await.body;
    assert_eq!(live["text"], "kept", "delivery does not wait for the store");

    let addr = s.addr;
    until("readyz to fail", async || {
        http(addr, "GET", "/readyz", &[], "").await.0 == 503
    })
    .await;
    let (_, _, body) = http(addr, "GET", "/readyz", &[], "").await;
    assert!(body.contains("message store cannot write"), "{body}");
    assert!(body.contains("the disk refuses"), "{body}");
    assert!(s.running().metrics.store_write_failures.get() >= 1);
    let (_, _, metrics) = http(addr, "GET", "/metrics", &[], "").await;
    assert!(
        metrics.contains("roomcast_store_write_failing 1"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("roomcast_store_write_failures_total 0"),
        "{metrics}"
    );

    allow_writes(s.dir.path());
    until("readyz to recover", async || {
        http(addr, "GET", "/readyz", &[], "").await.0 == 200
    })
    .await;
    let msg_id: u64 = live["msg_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(stored(s.dir.path(), msg_id), 1, "retried, not dropped");
    let s = s.restart().await;
    let mut b = s.client("b").await;
    let ok = b.join("r").await;
    let texts: Vec<&str> = ok.body["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["kept"]);
}

/// A server process, killed if the test ends early.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The `roomcast` binary on `dir`; returns it and its address.
fn spawn(dir: &std::path::Path) -> (Proc, String) {
    let mut child = Proc(
        Command::new(env!("CARGO_BIN_EXE_roomcast"))
            .args(["standalone", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .env("ROOMCAST_JWT_SECRET", SECRET)
            .env("ROOMCAST_API__KEYS", format!("[\"{KEY}\"]"))
            .env("ROOMCAST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    while let Some(line) = lines.next() {
        let line = line.unwrap();
        if let Some(rest) = line.trim().strip_prefix("listening on http://") {
            let addr = rest.split_whitespace().next().unwrap().to_owned();
            std::thread::spawn(move || lines.for_each(drop));
            return (child, addr);
        }
    }
    panic!("the server never said where it listens");
}

async fn client(addr: &str, user: &str) -> Client {
    let mut c = Client::connect(&format!("ws://{addr}/ws"), Wire::JsonText).await;
    assert_eq!(c.login(&token_for(user, None, 600)).await.op, "login_ok");
    c
}

/// Issue item 3: the relay used to mark a row sent as soon as ingest accepted it, while the
/// message still sat in the bus, the room worker and the store's queue; `kill -9` there lost a
/// committed event. Now the row stays pending until the store commits the message with it.
#[tokio::test]
async fn an_outbox_event_caught_by_kill_9_is_delivered_once_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, addr) = tokio::task::spawn_blocking({
        let dir = dir.path().to_owned();
        move || spawn(&dir)
    })
    .await
    .unwrap();
    let mut viewer = client(&addr, "viewer").await;
    viewer.join("paid").await;

    // The crash window, held open: the store cannot commit this room's messages.
    refuse_writes(dir.path(), "paid");
    let auth = format!("Bearer {KEY}");
    let body = json!({"room_id": "paid", "kind": "gift", "text": "a yacht!", "user_id": "whale",
                      "payload": {"gift": "yacht"}})
    .to_string();
    let sock: std::net::SocketAddr = addr.parse().unwrap();
    let (status, _, reply) = http(
        sock,
        "POST",
        "/api/v1/outbox",
        &[("authorization", &auth), JSON],
        &body,
    )
    .await;
    assert_eq!(status, 202, "{reply}");
    let live = viewer.expect("room_msg").await.body;
    assert_eq!(live["text"], "a yacht!");
    let msg_id: u64 = live["msg_id"].as_str().unwrap().parse().unwrap();
    // Published, delivered live, not stored: the row must still be pending.
    until("the store to fail its write", async || {
        http(sock, "GET", "/readyz", &[], "").await.0 == 503
    })
    .await;
    assert_eq!(outbox_pending(dir.path()), 1, "not stored, so not sent");
    assert_eq!(stored(dir.path(), msg_id), 0);

    server.0.kill().unwrap(); // SIGKILL
    server.0.wait().unwrap();
    drop(viewer);
    allow_writes(dir.path());

    let (mut server, addr) = tokio::task::spawn_blocking({
        let dir = dir.path().to_owned();
        move || spawn(&dir)
    })
    .await
    .unwrap();
    let mut viewer = client(&addr, "viewer").await;
    let ok = viewer.join("paid").await;
    // Republished at start: in the join's history, or live right after it.
    let in_history: Vec<Value> = ok.body["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["text"] == "a yacht!")
        .cloned()
        .collect();
    let seen = match in_history.as_slice() {
        [one] => one.clone(),
        [] => viewer.expect("room_msg").await.body,
        more => panic!("stored {} times: {more:?}", more.len()),
    };
    assert_eq!(seen["text"], "a yacht!");
    assert_eq!(seen["msg_id"], live["msg_id"], "the same msg_id");
    assert_eq!(seen["payload"], json!({"gift": "yacht"}));
    let d = dir.path().to_owned();
    until("the event to be stored", async || stored(&d, msg_id) == 1).await;
    assert_eq!(outbox_pending(dir.path()), 0);

    // Exactly once: a later join finds one copy, and nothing else was re-published.
    let mut late = client(&addr, "late").await;
    let ok = late.join("paid").await;
    let copies = ok.body["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["msg_id"] == live["msg_id"])
        .count();
    assert_eq!(copies, 1);
    assert_eq!(stored(dir.path(), msg_id), 1);

    let status = Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || server.0.wait().unwrap())
        .await
        .unwrap();
    assert!(exit.success(), "clean exit: {exit:?}");
}
