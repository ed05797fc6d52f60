//! The browser side: the client library and the live-room demo page (compiled into the binary
//! from `web/`), and the dev-only endpoints the demo uses — `POST /dev/token` (a token for a
//! nickname) and `POST /dev/gift` (a gift event in a room). The dev endpoints exist only when
//! `[dev] endpoints` is on (the standalone default); a platform hands out tokens and sends gifts
//! from its own backend.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use roomcast_core::clock::now_s;
use roomcast_core::ids::{RoomId, UserId};
use roomcast_core::ingest::ChatRequest;
use roomcast_core::model::MsgKind;
use serde::Deserialize;
use serde_json::json;

use crate::http::{HttpState, client_error_response, error_response};

const INDEX_HTML: &str = include_str!("../../../web/index.html");
const DEMO_JS: &str = include_str!("../../../web/demo.js");
const DEMO_CSS: &str = include_str!("../../../web/demo.css");
const CLIENT_JS: &str = include_str!("../../../web/roomcast.js");
const CLIENT_DTS: &str = include_str!("../../../web/roomcast.d.ts");

/// Longest nickname (the token's `name` claim has the same limit).
pub use roomcast_core::text::NAME_MAX_CHARS;

/// Static pages and, when enabled, the dev endpoints.
pub fn routes(dev: bool) -> Router<Arc<HttpState>> {
    let r = Router::new()
        .route("/", get(|| asset("text/html; charset=utf-8", INDEX_HTML)))
        .route(
            "/demo.js",
            get(|| asset("text/javascript; charset=utf-8", DEMO_JS)),
        )
        .route(
            "/demo.css",
            get(|| asset("text/css; charset=utf-8", DEMO_CSS)),
        )
        .route(
            "/roomcast.js",
            get(|| asset("text/javascript; charset=utf-8", CLIENT_JS)),
        )
        .route(
            "/roomcast.d.ts",
            get(|| asset("text/plain; charset=utf-8", CLIENT_DTS)),
        );
    if dev {
        r.route("/dev/token", post(dev_token))
            .route("/dev/gift", post(dev_gift))
    } else {
        r
    }
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

fn bad_json(e: JsonRejection) -> Response {
    error_response(StatusCode::BAD_REQUEST, "bad_request", e.body_text())
}

/// Checks a nickname with the rules a token's `name` follows ([`roomcast_core::text::check_name`]:
/// trimmed, 1–32 characters, no control, direction-override or zero-width characters); the
/// error starts with `name: `.
pub fn check_name(name: &str) -> Result<&str, String> {
    roomcast_core::text::check_name(name).map_err(|e| format!("name: {e}"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenReq {
    name: String,
}

async fn dev_token(
    State(s): State<Arc<HttpState>>,
    body: Result<Json<TokenReq>, JsonRejection>,
) -> Response {
    if let Some(r) = s.dev_refusal() {
        return r;
    }
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return bad_json(e),
    };
    let name = match check_name(&req.name) {
        Ok(n) => n,
        Err(m) => return error_response(StatusCode::BAD_REQUEST, "bad_request", m),
    };
    let mut raw = [0u8; 6];
    if getrandom::fill(&mut raw).is_err() {
        return error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "no randomness",
        );
    }
    let id: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let Ok(user) = UserId::parse(&format!("guest-{id}")) else {
        return error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal", "bad user id");
    };
    let exp = now_s() + s.dev_token_ttl_s;
    let token = match s.gateway.deps().auth.issue(&user, Some(name), exp) {
        Ok(t) => t,
        Err(e) => {
            return error_response(StatusCode::NOT_IMPLEMENTED, "cannot_sign", e.to_string());
        }
    };
    Json(json!({ "token": token, "user_id": user.as_str(), "name": name, "exp": exp }))
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GiftReq {
    room_id: String,
    gift: String,
}

/// The gifts the demo knows, with the text shown for them.
const GIFTS: &[(&str, &str)] = &[("rocket", "a rocket 🚀"), ("heart", "a heart ❤")];

async fn dev_gift(
    State(s): State<Arc<HttpState>>,
    headers: HeaderMap,
    body: Result<Json<GiftReq>, JsonRejection>,
) -> Response {
    if let Some(r) = s.dev_refusal() {
        return r;
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = token else {
        return error_response(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "send the client token as Authorization: Bearer <token>",
        );
    };
    let identity = match s.gateway.authenticate(token) {
        Ok(i) => i,
        Err(e) => {
            return error_response(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string());
        }
    };
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return bad_json(e),
    };
    let room = match RoomId::parse(&req.room_id) {
        Ok(r) => r,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("room_id: {e}"),
            );
        }
    };
    let Some((gift, text)) = GIFTS.iter().find(|(g, _)| *g == req.gift) else {
        let known: Vec<&str> = GIFTS.iter().map(|(g, _)| *g).collect();
        return error_response(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("gift: one of {}", known.join(", ")),
        );
    };
    let request = ChatRequest {
        room,
        user: identity.user,
        name: identity.name,
        text: (*text).to_owned(),
        kind: MsgKind::Gift,
        payload: Some(json!({ "gift": gift, "count": 1 }).to_string()),
        trusted: false,
        msg_id: None,
    };
    match s.gateway.deps().ingest.submit(request).await {
        Ok(a) => Json(json!({ "msg_id": a.msg_id.0.to_string() })).into_response(),
        Err(e) => client_error_response(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(check_name("  Alice ").unwrap(), "Alice");
        assert!(check_name("   ").is_err());
        assert!(check_name(&"x".repeat(33)).is_err());
        assert!(check_name("a\u{7}b").is_err());
        assert_eq!(check_name(&"é".repeat(32)).unwrap().chars().count(), 32);
    }
}
