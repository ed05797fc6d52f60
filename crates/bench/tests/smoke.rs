//! The load generator against a real server (in this process, on port 0): the fan-out
//! accounting adds up (nothing lost or duplicated, every expected delivery seen), subscriber
//! processes with their own source addresses work, and idle connections stay alive on
//! heartbeats. Small numbers: this checks the tool, not the server's speed.

use std::path::Path;
use std::time::Duration;

use roomcast_server::app::start;
use roomcast_server::config::Config;
use serde_json::Value;

const SECRET: &str = "bench-smoke-secret-bench-smoke-secret";

fn config(dir: &Path) -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_owned(),
        ..Config::default()
    };
    c.auth.jwt_secret = Some(SECRET.into());
    // Publishers send far above a viewer's chat limits (as bench/server.toml allows).
    c.ingest.user_limit.rate = 0.0;
    c.ingest.room_limit.rate = 0.0;
    // The server closes connections silent for 2 × heartbeat_s: 4 s, shorter than a run.
    c.gateway.heartbeat_s = 2;
    c
}

/// Runs `roomcast-bench ARGS --json FILE` to completion (killed after two minutes) and returns
/// the JSON report.
async fn bench(url: &str, args: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_roomcast-bench"));
    cmd.args(args)
        .args(["--url", url, "--secret", SECRET, "--quiet"])
        .arg("--server-pid")
        .arg(std::process::id().to_string())
        .arg("--json")
        .arg(&json)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("roomcast-bench {args:?} did not finish in 2 minutes"))
        .unwrap();
    assert!(
        out.status.success(),
        "roomcast-bench {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap()
}

fn check_fanout(r: &Value, connections: u64) {
    let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k} in {r}"));
    assert_eq!(n("connections"), connections, "{r}");
    assert!(n("sent") > 0, "{r}");
    assert_eq!(n("rejected"), 0, "{r}");
    assert!(n("expected_deliveries") > 0, "{r}");
    assert_eq!(n("delivered"), n("expected_deliveries"), "{r}");
    assert_eq!(n("lost"), 0, "{r}");
    assert_eq!(n("duplicates"), 0, "{r}");
    assert_eq!(n("disconnected"), 0, "{r}");
    assert!(r["latency_ms"]["p99"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["server"]["cpu_s"].as_f64().unwrap() > 0.0, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_counts_every_delivery_in_one_process_and_in_several() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(config(dir.path())).await.expect("server starts");
    let url = format!("ws://{}/ws", running.addr);
    let common = [
        "--rooms",
        "3",
        "--subscribers",
        "60",
        "--publishers",
        "2",
        "--rate",
        "200",
        // Longer than the server's silence limit: subscribers must send heartbeats.
        "--duration",
        "5",
    ];
    let r = bench(&url, &[&["fanout"][..], &common].concat()).await;
    check_fanout(&r, 62);
    // Two subscriber processes on 127.0.0.2 and 127.0.0.3, JSON bodies, no read pacing.
    let r = bench(
        &url,
        &[
            &["fanout"][..],
            &common,
            &["--procs", "2", "--wire", "json", "--read-pace-us", "0"],
        ]
        .concat(),
    )
    .await;
    check_fanout(&r, 62);
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_kept_alive_by_heartbeats() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(config(dir.path())).await.expect("server starts");
    let url = format!("ws://{}/ws", running.addr);
    let r = bench(
        &url,
        &[
            "idle",
            "--connections",
            "40",
            "--heartbeat-s",
            "1",
            "--hold",
            "5",
        ],
    )
    .await;
    assert_eq!(r["connections"], 40, "{r}");
    // A heartbeat right away and then one a second: at least five replies per connection.
    assert!(r["frames"].as_u64().unwrap() >= 40 * 5, "{r}");
    assert_eq!(r["disconnected"], 0, "{r}");
    assert!(r["server"]["rss_bytes"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(
        running.metrics.connections_opened.get(),
        40,
        "no reconnects"
    );
    running.shutdown().await.unwrap();
}
