//! A private instance of a service, for tests that restart it mid-suite: Redis, MariaDB, etcd or
//! the Kafka broker
//! started with the project's own script (`scripts/services.sh`) on free ports, with a data
//! directory of its own, so stopping it never touches the shared instances other tests use.
//! Dropping it stops the service (also when the test fails).

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;

pub struct Private {
    service: &'static str,
    dir: tempfile::TempDir,
    ports: Vec<(&'static str, u16)>,
}

/// A port nothing listens on right now (the OS's pick; free again once the probe closes).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/services.sh")
}

impl Private {
    /// Starts `service` (`redis`, `mysql`, `etcd` or `kafka`) and waits until it answers.
    pub async fn start(service: &'static str) -> Private {
        let ports = match service {
            "redis" => vec![("RC_REDIS_PORT", free_port())],
            "mysql" => vec![("RC_MYSQL_PORT", free_port())],
            "etcd" => vec![
                ("RC_ETCD_PORT", free_port()),
                ("RC_ETCD_PEER_PORT", free_port()),
            ],
            "kafka" => vec![("RC_KAFKA_PORT", free_port())],
            other => panic!("no private instance of {other}"),
        };
        let p = Private {
            service,
            dir: tempfile::tempdir().expect("a temporary directory"),
            ports,
        };
        p.up().await;
        p
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.ports[0].1
    }

    /// The URL the adapters take.
    pub fn url(&self) -> String {
        let port = self.port();
        match self.service {
            "redis" => format!("redis://127.0.0.1:{port}/"),
            "mysql" => format!("mysql://roomcast:roomcast@127.0.0.1:{port}/roomcast"),
            "kafka" => format!("kafka://127.0.0.1:{port}"),
            _ => format!("etcd://127.0.0.1:{port}"),
        }
    }

    /// Starts the service again on the same port and data; returns once it answers.
    pub async fn up(&self) {
        self.run("up").await;
    }

    /// Stops the service gracefully; returns once its process has exited.
    pub async fn down(&self) {
        self.run("down").await;
    }

    async fn run(&self, cmd: &'static str) {
        let command = self.command(cmd);
        let service = self.service;
        let out = tokio::task::spawn_blocking(move || {
            let mut command = command;
            command.output()
        })
        .await
        .expect("the script ran")
        .unwrap_or_else(|e| panic!("cannot run scripts/services.sh: {e}"));
        assert!(
            out.status.success(),
            "scripts/services.sh {cmd} {service} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn command(&self, cmd: &str) -> Command {
        let mut c = Command::new("bash");
        c.arg(script())
            .arg(cmd)
            .arg(self.service)
            .env("RC_SERVICES_DIR", self.dir.path());
        for (var, port) in &self.ports {
            c.env(var, port.to_string());
        }
        c
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        // Blocking, but short, and the test is over.
        let _ = self.command("down").output();
    }
}
