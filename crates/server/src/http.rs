//! HTTP on the same port as the WebSocket: the accept loop (hyper, HTTP/1.1), the axum router,
//! and the WebSocket upgrade that hands the raw socket to the gateway.
//!
//! The upgrade is done here rather than with a WebSocket library so that, once switched, the
//! gateway owns the plain `TcpStream` and can write shared, pre-built frames to it directly.
//!
//! Limits a public listener needs live here: a cap on TCP connections in total and per IP
//! address (checked at accept, before any byte is read; a WebSocket keeps its slot until its
//! socket closes), a deadline for request headers (slow handshakes) and one for the whole
//! request, body included (trickled bodies), and an optional `Origin` allow-list for browser
//! upgrades.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use roomcast_core::client_error::ClientError;
use roomcast_core::config::LimitConfig;
use roomcast_core::gateway::limits::Bucket;
use roomcast_core::gateway::{AcceptError, Gateway, Upgraded};
use roomcast_core::metrics::Metrics;
use roomcast_proto::Wire;
use roomcast_proto::deflate::Deflate;
use roomcast_proto::wire::{SUBPROTOCOL_JSON, SUBPROTOCOL_PROTO};
use roomcast_proto::ws::accept_key;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

/// The peer address of the HTTP connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// What the HTTP handlers share.
pub struct HttpState {
    pub gateway: Arc<Gateway>,
    /// Lifetime of tokens from `POST /dev/token`.
    pub dev_token_ttl_s: u64,
    pub ready: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
    /// Requests to the dev endpoints, all clients together.
    pub dev_limit: LimitConfig,
    pub dev_bucket: parking_lot::Mutex<Bucket>,
    pub started: std::time::Instant,
    /// `http.allowed_origins` (empty: any).
    pub allowed_origins: Vec<String>,
}

impl HttpState {
    /// Takes a token from the dev endpoints' budget; the 429 response when there is none.
    pub fn dev_refusal(&self) -> Option<Response> {
        let now = self.started.elapsed().as_millis() as u64;
        self.dev_bucket
            .lock()
            .take(&self.dev_limit, now)
            .err()
            .map(|wait| {
                self.gateway.metrics().limited_requests.inc();
                let mut r = error_response(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "too many requests to the dev endpoints",
                );
                let secs = wait.as_secs().max(1).to_string();
                if let Ok(v) = HeaderValue::from_str(&secs) {
                    r.headers_mut().insert(header::RETRY_AFTER, v);
                }
                r
            })
    }
}

/// Which optional routes are served.
#[derive(Debug, Clone, Copy)]
pub struct Routes {
    /// `/dev/token`, `/dev/gift`.
    pub dev_endpoints: bool,
    /// `/dev/echo`.
    pub echo: bool,
}

pub fn router(state: Arc<HttpState>, routes: Routes, api: Arc<crate::api::ApiState>) -> Router {
    let mut r = Router::new()
        .route("/ws", get(ws_upgrade))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    if routes.echo {
        r = r.route("/dev/echo", get(echo_upgrade));
    }
    r.merge(crate::web::routes(routes.dev_endpoints))
        .fallback(not_found)
        .with_state(state)
        .nest("/api/v1", crate::api::router(api))
}

async fn metrics(State(s): State<Arc<HttpState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.gateway.deps().metrics.render(),
    )
        .into_response()
}

/// A JSON error body: `{"error": {"code": .., "message": ..}}`.
pub fn error_response(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = json!({ "error": { "code": code, "message": message.into() } });
    (status, axum::Json(body)).into_response()
}

/// A refusal described by core ([`ClientError`]: an ingest refusal, for one): its status, and
/// `{"error": {"code", "message", "retry_after_ms"?}}`.
pub fn client_error_response(e: ClientError) -> Response {
    let status = StatusCode::from_u16(e.http_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut err = json!({ "code": e.code.as_str(), "message": e.message });
    if let Some(ms) = e.retry_after_ms {
        err["retry_after_ms"] = json!(ms);
    }
    (status, axum::Json(json!({ "error": err }))).into_response()
}

/// What a node without clients serves (ingest and worker roles): `/healthz`, `/readyz` and
/// `/metrics`.
pub fn health_router(
    metrics: Arc<Metrics>,
    ready: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
) -> Router {
    let render = move || {
        let body = metrics.render();
        async move {
            (
                [(
                    header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                body,
            )
                .into_response()
        }
    };
    let readiness = move || {
        let r = ready();
        async move {
            match r {
                Ok(()) => axum::Json(json!({ "status": "ready" })).into_response(),
                Err(why) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    axum::Json(json!({ "status": "not_ready", "reason": why })),
                )
                    .into_response(),
            }
        }
    };
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readiness))
        .route("/metrics", get(render))
        .fallback(not_found)
}

async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "not_found", "no such path")
}

async fn healthz() -> Response {
    axum::Json(json!({ "status": "ok" })).into_response()
}

async fn readyz(State(s): State<Arc<HttpState>>) -> Response {
    match (s.ready)() {
        Ok(()) => axum::Json(json!({ "status": "ready" })).into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "status": "not_ready", "reason": why })),
        )
            .into_response(),
    }
}

fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The subprotocol to answer with, and the wire it means.
fn choose_subprotocol(headers: &HeaderMap) -> (Option<&'static str>, Wire) {
    let offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .collect();
    if offered.iter().any(|p| p == SUBPROTOCOL_PROTO) {
        (Some(SUBPROTOCOL_PROTO), Wire::Proto)
    } else if offered.iter().any(|p| p == SUBPROTOCOL_JSON) {
        (Some(SUBPROTOCOL_JSON), Wire::JsonText)
    } else {
        (None, Wire::JsonText)
    }
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

async fn ws_upgrade(State(s): State<Arc<HttpState>>, req: Request) -> Response {
    upgrade(s, req, false)
}

async fn echo_upgrade(State(s): State<Arc<HttpState>>, req: Request) -> Response {
    upgrade(s, req, true)
}

/// Whether a browser's `Origin` may open a WebSocket here.
fn origin_allowed(allowed: &[String], headers: &HeaderMap) -> bool {
    if allowed.is_empty() {
        return true;
    }
    match headers.get(header::ORIGIN) {
        // Not a browser (browsers always send it on WebSocket upgrades).
        None => true,
        Some(origin) => {
            let origin = origin.to_str().unwrap_or("");
            allowed.iter().any(|a| a.eq_ignore_ascii_case(origin))
        }
    }
}

fn upgrade(s: Arc<HttpState>, mut req: Request, echo: bool) -> Response {
    let headers = req.headers();
    if !header_has(headers, header::UPGRADE, "websocket")
        || !header_has(headers, header::CONNECTION, "upgrade")
    {
        return error_response(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "this endpoint speaks WebSocket: send Connection: Upgrade and Upgrade: websocket",
        );
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        let mut r = error_response(
            StatusCode::UPGRADE_REQUIRED,
            "bad_version",
            "only WebSocket version 13 is supported",
        );
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return r;
    }
    let Some(key) = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| k.as_bytes().to_vec())
    else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "missing Sec-WebSocket-Key",
        );
    };
    if !origin_allowed(&s.allowed_origins, headers) {
        return error_response(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "this origin may not open WebSocket connections here",
        );
    }
    match s.gateway.can_accept() {
        Ok(()) => {}
        Err(e @ AcceptError::ShuttingDown) | Err(e @ AcceptError::Full) => {
            return client_error_response(ClientError::unavailable(e.to_string()));
        }
    }
    let token = if echo {
        None
    } else {
        req.uri().query().and_then(|q| query_param(q, "token"))
    };
    let identity = match token {
        None => None,
        Some(token) => match s.gateway.authenticate(token) {
            Ok(id) => Some(id),
            Err(e) => {
                return error_response(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string());
            }
        },
    };
    let (subprotocol, wire) = choose_subprotocol(req.headers());
    let deflate = s.gateway.negotiate_deflate(
        req.headers()
            .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    let mode = deflate.as_ref().map_or(Deflate::Off, |d| d.mode);
    let peer = req
        .extensions()
        .get::<PeerAddr>()
        .map(|p| p.0)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    // The connection keeps its slot in the HTTP limits until its socket closes.
    let hold: Option<Box<dyn Send + Sync>> = req
        .extensions()
        .get::<ConnSlot>()
        .map(|slot| Box::new(slot.clone()) as Box<dyn Send + Sync>);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let gateway = s.gateway.clone();
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let up = Upgraded {
                    stream: parts.io.into_inner(),
                    peer,
                    read_ahead: parts.read_buf,
                    wire,
                    identity,
                    hold,
                    echo,
                    deflate: mode,
                };
                if let Err(e) = gateway.accept(up) {
                    tracing::info!(error = %e, "connection refused after upgrade");
                }
            }
            Err(_) => tracing::error!("upgraded connection is not a TCP stream"),
        }
    });
    let mut r = Response::new(axum::body::Body::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept_key(&key)) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(p) = subprotocol {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    if let Some(v) = deflate.and_then(|d| HeaderValue::from_str(&d.response).ok()) {
        h.insert(header::SEC_WEBSOCKET_EXTENSIONS, v);
    }
    r
}

/// Counts TCP connections in total and per IP address; a [`ConnSlot`] is one of them.
pub struct ConnLimits {
    max_total: usize,
    max_per_ip: usize,
    total: std::sync::atomic::AtomicUsize,
    per_ip: parking_lot::Mutex<HashMap<IpAddr, usize>>,
    metrics: Arc<Metrics>,
}

impl ConnLimits {
    /// `max_per_ip` 0: no per-address cap.
    pub fn new(max_total: usize, max_per_ip: usize, metrics: Arc<Metrics>) -> Self {
        ConnLimits {
            max_total,
            max_per_ip,
            total: Default::default(),
            per_ip: Default::default(),
            metrics,
        }
    }

    /// A slot for a connection from `ip`, or `None` when a cap is reached.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ConnSlot> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.total.fetch_add(1, Relaxed) >= self.max_total {
            self.total.fetch_sub(1, Relaxed);
            self.metrics.http_refused_total.inc();
            return None;
        }
        if self.max_per_ip > 0 {
            let mut map = self.per_ip.lock();
            let n = map.entry(ip).or_default();
            if *n >= self.max_per_ip {
                drop(map);
                self.total.fetch_sub(1, Relaxed);
                self.metrics.http_refused_per_ip.inc();
                return None;
            }
            *n += 1;
        }
        self.metrics.http_connections.inc();
        Some(ConnSlot {
            _inner: Arc::new(SlotInner {
                limits: self.clone(),
                ip,
            }),
        })
    }
}

/// One admitted TCP connection; released when the last clone goes (the HTTP connection task
/// and, after an upgrade, the WebSocket connection until its socket closes).
#[derive(Clone)]
pub struct ConnSlot {
    _inner: Arc<SlotInner>,
}

struct SlotInner {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
}

impl Drop for SlotInner {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        let l = &self.limits;
        if l.max_per_ip > 0 {
            let mut map = l.per_ip.lock();
            if let Some(n) = map.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&self.ip);
                }
            }
        }
        l.total.fetch_sub(1, Relaxed);
        l.metrics.http_connections.dec();
    }
}

/// The listener's limits (see [`crate::config::HttpConfig`]).
pub struct ServeLimits {
    pub conns: Arc<ConnLimits>,
    pub header_timeout: Duration,
    pub request_timeout: Duration,
    pub metrics: Arc<Metrics>,
}

/// What a connection over a cap gets before it is closed.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 75\r\nconnection: close\r\n\r\n{\"error\":{\"code\":\"unavailable\",\"message\":\"too many connections from here\"}}";

/// Accepts connections until `stop` resolves, then lets in-flight HTTP requests finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServeLimits,
    stop: impl std::future::Future<Output = ()>,
) {
    // Every connection task holds a clone of `alive`; when all are gone, `all_done` yields None.
    let (alive, mut all_done) = tokio::sync::mpsc::channel::<()>(1);
    let (stopping, stop_rx) = tokio::sync::watch::channel(false);
    tokio::pin!(stop);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut stop => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = limits.conns.admit(peer.ip()) else {
            // One non-blocking write, then close: a refused client costs no task and no wait.
            let _ = tcp.try_write(REFUSED);
            tracing::debug!(peer = %peer, "connection refused: over a connection cap");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let (request_timeout, metrics) = (limits.request_timeout, limits.metrics.clone());
        let req_slot = slot.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(PeerAddr(peer));
            req.extensions_mut().insert(req_slot.clone());
            let app = app.clone();
            let metrics = metrics.clone();
            async move {
                // The whole request, body included: a trickled body cannot hold a task forever.
                let response = tokio::time::timeout(
                    request_timeout,
                    app.oneshot(req.map(axum::body::Body::new)),
                )
                .await;
                Ok::<_, Infallible>(match response {
                    Ok(r) => r.unwrap_or_else(|e| match e {}),
                    Err(_) => {
                        metrics.http_timeouts.inc();
                        let mut r = error_response(
                            StatusCode::REQUEST_TIMEOUT,
                            "request_timeout",
                            "the request took too long",
                        );
                        r.headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                        r
                    }
                })
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .serve_connection(TokioIo::new(tcp), service)
            .with_upgrades();
        let (alive, mut stop_rx) = (alive.clone(), stop_rx.clone());
        tokio::spawn(async move {
            let _alive = alive;
            let _slot = slot;
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop_rx.changed() => {
                    // Finish the request in progress, take no more.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "http connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = stopping.send(true);
    drop(alive);
    let _ = tokio::time::timeout(Duration::from_secs(5), all_done.recv()).await;
}
