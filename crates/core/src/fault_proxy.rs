//! A TCP proxy for fault tests: it sits between one role and one service (a worker and the
//! broker, a gateway and Redis, a worker and MariaDB) and can pause, black-hole, cut and restore
//! what flows through it. Real sockets on loopback, so the role sees exactly what a network
//! fault looks like to it: stalled reads, resets, refused connections. Test code only
//! (`testkit` feature); it must never be reachable from a production path.
//!
//! Modes (each applies to open connections and to new ones):
//! - [`pass`](FaultProxy::pass): bytes flow both ways (the start).
//! - [`pause`](FaultProxy::pause): bytes are held, connections stay open; `pass` releases them in
//!   order, as TCP does after a partition heals (a stop-the-world pause of the service, or a
//!   partition shorter than the peers' timeouts).
//! - [`black_hole`](FaultProxy::black_hole): bytes are swallowed, nothing answers (a dead host
//!   behind a firewall that drops packets): the peer learns only from its own deadlines.
//!   Connections that lost bytes are reset when the proxy passes again, new ones connect.
//! - [`cut`](FaultProxy::cut): every open connection is reset now; new ones pass.
//! - [`refuse`](FaultProxy::refuse): every open connection is reset and new ones are closed at
//!   once (the service is down), until `pass`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Pause,
    BlackHole,
    Refuse,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    mode: Mode,
    /// Bumped by `cut` and `refuse`: connections opened before it are reset.
    cuts: u64,
}

pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    state: watch::Sender<State>,
    accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        // Every connection's task ends with the state channel.
    }
}

impl FaultProxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (state, _) = watch::channel(State {
            mode: Mode::Pass,
            cuts: 0,
        });
        let accepted = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(accept_loop(
            listener,
            upstream,
            state.clone(),
            accepted.clone(),
        ));
        Ok(FaultProxy {
            addr,
            upstream,
            state,
            accepted,
            task,
        })
    }

    /// Resolves `host:port` (the part of a service URL after `scheme://`, before any path).
    pub async fn start_for(host_port: &str) -> std::io::Result<FaultProxy> {
        let upstream = tokio::net::lookup_host(host_port)
            .await?
            .next()
            .ok_or_else(|| std::io::Error::other(format!("cannot resolve {host_port}")))?;
        FaultProxy::start(upstream).await
    }

    /// Where the role connects instead of the service.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The service behind it.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// `url` with its `host:port` replaced by the proxy's (`redis://127.0.0.1:16379/0` →
    /// `redis://127.0.0.1:PROXY/0`); the scheme, credentials and path stay.
    pub fn rewrite_url(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
        let (auth, hostpath) = match rest.rsplit_once('@') {
            Some((a, h)) => (format!("{a}@"), h),
            None => (String::new(), rest),
        };
        let tail = hostpath
            .find(['/', '?'])
            .map(|i| &hostpath[i..])
            .unwrap_or("");
        if scheme.is_empty() {
            format!("{auth}{}{tail}", self.addr)
        } else {
            format!("{scheme}://{auth}{}{tail}", self.addr)
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    pub fn mode(&self) -> Mode {
        self.state.borrow().mode
    }

    fn set(&self, mode: Mode, cut: bool) {
        self.state.send_modify(|s| {
            s.mode = mode;
            if cut {
                s.cuts += 1;
            }
        });
    }

    pub fn pass(&self) {
        self.set(Mode::Pass, false)
    }

    pub fn pause(&self) {
        self.set(Mode::Pause, false)
    }

    pub fn black_hole(&self) {
        self.set(Mode::BlackHole, false)
    }

    /// Resets every open connection; new ones pass (whatever the mode was, it is `pass` after).
    pub fn cut(&self) {
        self.set(Mode::Pass, true)
    }

    pub fn refuse(&self) {
        self.set(Mode::Refuse, true)
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    state: watch::Sender<State>,
    accepted: Arc<AtomicU64>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        accepted.fetch_add(1, Ordering::Relaxed);
        let rx = state.subscribe();
        tokio::spawn(connection(client, upstream, rx));
    }
}

/// Resets the socket on close (RST, not FIN): what a peer sees when a connection is cut.
fn reset(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(std::time::Duration::ZERO));
}

async fn connection(client: TcpStream, upstream: SocketAddr, mut rx: watch::Receiver<State>) {
    let _ = client.set_nodelay(true);
    let start = *rx.borrow_and_update();
    if start.mode == Mode::Refuse {
        reset(&client);
        return;
    }
    // A connection opened into a black hole never reaches the service.
    let mut server = None;
    let mut poisoned = start.mode == Mode::BlackHole;
    let (mut cr, mut cw) = client.into_split();
    let mut buf_c = vec![0u8; 16 * 1024];
    let mut buf_s = vec![0u8; 16 * 1024];
    loop {
        let now = *rx.borrow();
        if now.cuts != start.cuts || now.mode == Mode::Refuse {
            break;
        }
        if poisoned && now.mode == Mode::Pass {
            break; // it lost bytes: the peers' streams are out of step
        }
        if server.is_none() && !poisoned {
            match TcpStream::connect(upstream).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    server = Some(s.into_split());
                }
                Err(_) => break,
            }
        }
        // Read only while bytes may go somewhere (pass) or are to be swallowed (black hole);
        // in a pause nothing is read, so the senders' buffers fill as over a stalled link.
        let reading = matches!(now.mode, Mode::Pass | Mode::BlackHole);
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { break },
            r = cr.read(&mut buf_c), if reading => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if now.mode == Mode::BlackHole {
                        poisoned = true;
                    } else if let Some((_, sw)) = server.as_mut()
                        && sw.write_all(&buf_c[..n]).await.is_err()
                    {
                        break;
                    }
                }
            },
            r = async {
                match server.as_mut() {
                    Some((sr, _)) => sr.read(&mut buf_s).await,
                    None => std::future::pending().await,
                }
            }, if reading => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if now.mode == Mode::BlackHole {
                        poisoned = true;
                    } else if cw.write_all(&buf_s[..n]).await.is_err() {
                        break;
                    }
                }
            },
        }
    }
    // Reset both sides.
    if let Ok(c) = cr.reunite(cw) {
        reset(&c);
    }
    if let Some((sr, sw)) = server
        && let Ok(s) = sr.reunite(sw)
    {
        reset(&s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// An echo server; returns its address.
    async fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut b = [0u8; 1024];
                    while let Ok(n) = s.read(&mut b).await {
                        if n == 0 || s.write_all(&b[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn roundtrip(s: &mut TcpStream, msg: &[u8], within: Duration) -> Option<Vec<u8>> {
        s.write_all(msg).await.ok()?;
        let mut got = vec![0u8; msg.len()];
        match tokio::time::timeout(within, s.read_exact(&mut got)).await {
            Ok(Ok(_)) => Some(got),
            _ => None,
        }
    }

    #[tokio::test]
    async fn passes_pauses_black_holes_cuts_and_refuses() {
        let p = FaultProxy::start(echo().await).await.unwrap();
        let short = Duration::from_millis(200);
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        assert_eq!(
            roundtrip(&mut s, b"a", short).await.as_deref(),
            Some(&b"a"[..])
        );

        // Paused: held, then released in order.
        p.pause();
        assert_eq!(roundtrip(&mut s, b"b", short).await, None);
        p.pass();
        let mut got = [0u8; 1];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"b");

        // Black hole: swallowed; the connection is reset once the proxy passes again.
        p.black_hole();
        assert_eq!(roundtrip(&mut s, b"c", short).await, None);
        p.pass();
        let r = tokio::time::timeout(Duration::from_secs(2), s.read(&mut got)).await;
        assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "reset: {r:?}");

        // Cut: open connections reset, new ones pass.
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        assert!(roundtrip(&mut s, b"d", short).await.is_some());
        p.cut();
        let r = tokio::time::timeout(Duration::from_secs(2), s.read(&mut got)).await;
        assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "reset: {r:?}");
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        assert!(roundtrip(&mut s, b"e", short).await.is_some());

        // Refuse: closed at once, until pass.
        p.refuse();
        let mut s2 = TcpStream::connect(p.addr()).await.unwrap();
        let r = tokio::time::timeout(Duration::from_secs(2), s2.read(&mut got)).await;
        assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "refused: {r:?}");
        p.pass();
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        assert!(roundtrip(&mut s, b"f", short).await.is_some());
        assert_eq!(p.accepted(), 5);
    }

    #[test]
    fn rewrites_urls() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let p = FaultProxy::start("127.0.0.1:9".parse().unwrap())
                .await
                .unwrap();
            let a = p.addr();
            assert_eq!(
                p.rewrite_url("redis://127.0.0.1:16379/0"),
                format!("redis://{a}/0")
            );
            assert_eq!(
                p.rewrite_url("mysql://root:pw@127.0.0.1:13306/db?x=1"),
                format!("mysql://root:pw@{a}/db?x=1")
            );
            assert_eq!(p.rewrite_url("127.0.0.1:19092"), a.to_string());
            assert_eq!(p.rewrite_url("etcd://127.0.0.1:1"), format!("etcd://{a}"));
        });
    }
}
