//! HTTP on the same port as the WebSocket: the accept loop (hyper, HTTP/1.1), the axum router,
//! and the WebSocket upgrade that hands the raw socket to the gateway.
//!
//! The upgrade is done here rather than with a WebSocket library so that, once switched, the
//! gateway owns the plain `TcpStream` and can write shared, pre-built frames to it directly.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use roomcast_core::gateway::{AcceptError, Gateway};
use roomcast_proto::Wire;
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
}

pub fn router(
    state: Arc<HttpState>,
    dev_endpoints: bool,
    api: Arc<crate::api::ApiState>,
) -> Router {
    Router::new()
        .route("/ws", get(ws_upgrade))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(crate::web::routes(dev_endpoints))
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

async fn ws_upgrade(State(s): State<Arc<HttpState>>, mut req: Request) -> Response {
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
    match s.gateway.can_accept() {
        Ok(()) => {}
        Err(e @ AcceptError::ShuttingDown) | Err(e @ AcceptError::Full) => {
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            );
        }
    }
    let identity = match req.uri().query().and_then(|q| query_param(q, "token")) {
        None => None,
        Some(token) => match s.gateway.authenticate(token) {
            Ok(id) => Some(id),
            Err(e) => {
                return error_response(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string());
            }
        },
    };
    let (subprotocol, wire) = choose_subprotocol(req.headers());
    let peer = req
        .extensions()
        .get::<PeerAddr>()
        .map(|p| p.0)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
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
                if let Err(e) =
                    gateway.accept(parts.io.into_inner(), peer, parts.read_buf, wire, identity)
                {
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
    r
}

/// Accepts connections until `stop` resolves, then lets in-flight HTTP requests finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
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
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(PeerAddr(peer));
            let app = app.clone();
            async move {
                Ok::<_, Infallible>(
                    app.oneshot(req.map(axum::body::Body::new))
                        .await
                        .unwrap_or_else(|e| match e {}),
                )
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(10))
            .serve_connection(TokioIo::new(tcp), service)
            .with_upgrades();
        let (alive, mut stop_rx) = (alive.clone(), stop_rx.clone());
        tokio::spawn(async move {
            let _alive = alive;
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
