//! The README's first command, as a process: starts, prints where it listens, serves, and
//! stops cleanly on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use roomcast_proto::Wire;
use roomcast_proto::ws::close;

use crate::common::*;

#[tokio::test]
async fn the_binary_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .args(["standalone", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("ROOMCAST_JWT_SECRET", SECRET)
        .env("ROOMCAST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let addr = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        while let Some(line) = lines.next() {
            let line = line.unwrap();
            if let Some(rest) = line.trim().strip_prefix("listening on http://") {
                let addr = rest.split_whitespace().next().unwrap().to_owned();
                // Keep reading so the banner's remaining lines never meet a closed pipe.
                std::thread::spawn(move || lines.for_each(drop));
                return addr;
            }
        }
        panic!("the server never said where it listens");
    })
    .await
    .unwrap();

    let mut c = Client::connect(&format!("ws://{addr}/ws"), Wire::JsonText).await;
    assert_eq!(c.login(&token_for("eve", None, 60)).await.op, "login_ok");
    c.join("lobby").await;
    assert_eq!(c.chat("lobby", "hi").await.op, "chat_ok");
    c.expect("room_msg").await;

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        c.ended().await,
        Ended::Close(close::GOING_AWAY, "server shutting down".into())
    );
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(exit.success(), "clean exit: {exit:?}");
    assert!(dir.path().join("roomcast.db").exists());
}
