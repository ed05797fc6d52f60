//! The server API for the platform's backend: HTTP JSON under `/api/v1`, bearer API key,
//! described by the OpenAPI document at `/api/v1/openapi.json` (`openapi.json` beside this file).
//!
//! One file per resource — `rooms` (the room list, a room, its history), `messages`
//! (publishing into a room), `moderation` (bans, mutes, kicks), `critical`, `broadcast`,
//! `outbox` — and here what they share: the route table, the API-key check, the JSON errors and
//! the field checks, and [`check_body`], the handlers' body checks without HTTP.
//!
//! Publishing goes through ingest like any message (trusted: no rate limits, no word filter);
//! moderation goes through the `Moderation` port (shared by every gateway in the distributed
//! mode) and then closes the user's live connections; critical messages go through the
//! gateway's per-user ack tracking. Whatever acts on connections — kicks, ban disconnects,
//! critical messages, broadcasts — goes through the `Control` port, which reaches the gateway
//! node(s) holding the user (or every node), so the same handlers serve one node or many.

mod broadcast;
mod critical;
mod messages;
mod moderation;
mod outbox;
mod rooms;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post, put};
use roomcast_core::client_error::ClientError;
use roomcast_core::gateway::Gateway;
use roomcast_core::ids::{RoomId, UserId};
use roomcast_core::ingest::Ingest;
use roomcast_core::ingest::ids::IdGenerator;
use roomcast_core::model::MsgKind;
use roomcast_core::outbox::OutboxRelay;
use roomcast_core::ports::Control;
use serde_json::Value;

use crate::http::{client_error_response, error_response};

pub use rooms::hot_level;

pub const OPENAPI: &str = include_str!("openapi.json");

/// Most users one critical request may name.
pub const MAX_CRITICAL_USERS: usize = 1000;
/// Largest JSON payload accepted from the API (serialized).
pub const MAX_PAYLOAD_BYTES: usize = 8192;

pub struct ApiState {
    pub gateway: Arc<Gateway>,
    /// Commands for the gateway nodes (kicks, critical messages, broadcasts).
    pub control: Arc<dyn Control>,
    /// Where published messages go (the local `IngestService` in standalone, ingest nodes over
    /// gRPC from a gateway of the distributed mode).
    pub ingest: Arc<dyn Ingest>,
    /// `ingest.max_text_chars`: published texts are checked here first, for a clear 400.
    pub max_text_chars: usize,
    /// Ids of critical messages (which do not go through ingest).
    pub ids: Arc<IdGenerator>,
    pub keys: Vec<String>,
    /// The outbox and its relay (none with a memory:// store).
    pub outbox: Option<Arc<OutboxRelay>>,
}

type St = State<Arc<ApiState>>;

/// A refusal, boxed so that `Result<_, ApiError>` stays small.
pub struct ApiError(Box<Response>);

impl ApiError {
    /// The response's status (400 for every bad request body).
    pub fn status(&self) -> StatusCode {
        self.0.status()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        *self.0
    }
}

/// One row of [`route_table`]: path, methods, handlers.
pub type Route = (
    &'static str,
    &'static [&'static str],
    MethodRouter<Arc<ApiState>>,
);

/// Every route: path, the methods it answers, the handlers. The OpenAPI test compares this
/// table with the document.
pub fn route_table() -> Vec<Route> {
    vec![
        ("/rooms", &["get"], get(rooms::top_rooms)),
        ("/rooms/{room}", &["get"], get(rooms::room_info)),
        ("/rooms/{room}/history", &["get"], get(rooms::room_history)),
        ("/rooms/{room}/messages", &["post"], post(messages::publish)),
        (
            "/rooms/{room}/mutes/{user}",
            &["put", "delete"],
            put(moderation::mute).delete(moderation::unmute),
        ),
        (
            "/users/{user}/ban",
            &["put", "delete"],
            put(moderation::ban).delete(moderation::unban),
        ),
        ("/users/{user}/kick", &["post"], post(moderation::kick)),
        ("/critical", &["post"], post(critical::critical)),
        ("/broadcast", &["post"], post(broadcast::broadcast)),
        ("/outbox", &["post"], post(outbox::outbox_insert)),
    ]
}

/// `/api/v1/...` (the caller nests it).
pub fn router(state: Arc<ApiState>) -> Router {
    let mut r = Router::new();
    for (path, _, mr) in route_table() {
        r = r.route(path, mr);
    }
    let r = r
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_key,
        ))
        .route("/openapi.json", get(openapi))
        .fallback(|| async {
            error_response(StatusCode::NOT_FOUND, "not_found", "no such API route")
        });
    r.with_state(state)
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// Constant-time comparison, so the key cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_key(State(s): St, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(k) if s.keys.iter().any(|key| same(key.as_bytes(), k.as_bytes())) => {
            next.run(req).await
        }
        Some(_) => error_response(StatusCode::UNAUTHORIZED, "unauthenticated", "wrong API key"),
        None => error_response(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "send the API key as Authorization: Bearer <key>",
        ),
    }
}

// ---- input helpers -------------------------------------------------------------------------

fn bad(message: impl Into<String>) -> ApiError {
    ApiError(Box::new(error_response(
        StatusCode::BAD_REQUEST,
        "bad_request",
        message,
    )))
}

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(v)| v).map_err(|e| bad(e.body_text()))
}

fn room_param(room: &str) -> Result<RoomId, ApiError> {
    RoomId::parse(room).map_err(|e| bad(format!("room: {e}")))
}

fn user_param(field: &str, user: &str) -> Result<UserId, ApiError> {
    UserId::parse(user).map_err(|e| bad(format!("{field}: {e}")))
}

fn kind_field(kind: Option<&str>, default: MsgKind) -> Result<MsgKind, ApiError> {
    match kind {
        None => Ok(default),
        Some(k) => MsgKind::parse(k).ok_or_else(|| {
            let all: Vec<&str> = MsgKind::ALL.iter().map(|k| k.as_str()).collect();
            bad(format!("kind: one of {}", all.join(", ")))
        }),
    }
}

fn payload_field(payload: Option<Value>) -> Result<Option<String>, ApiError> {
    match payload {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            let s = v.to_string();
            if s.len() > MAX_PAYLOAD_BYTES {
                return Err(bad(format!(
                    "payload: at most {MAX_PAYLOAD_BYTES} bytes of JSON"
                )));
            }
            Ok(Some(s))
        }
    }
}

fn text_field(text: Option<String>, max_chars: usize) -> Result<Option<String>, ApiError> {
    match text {
        None => Ok(None),
        Some(t) => roomcast_core::ingest::check_text(&t, max_chars)
            .map(|()| Some(t))
            .map_err(|m| bad(format!("text: {m}"))),
    }
}

/// The message fields shared by publish and the outbox, checked.
struct MessageFields {
    kind: MsgKind,
    text: Option<String>,
    payload: Option<String>,
    user: UserId,
    name: Option<String>,
}

impl MessageFields {
    fn parse(
        kind: Option<&str>,
        text: Option<String>,
        payload: Option<Value>,
        user_id: Option<&str>,
        name: Option<&str>,
        max_chars: usize,
    ) -> Result<Self, ApiError> {
        Ok(MessageFields {
            kind: kind_field(kind, MsgKind::System)?,
            text: text_field(text, max_chars)?,
            payload: payload_field(payload)?,
            user: user_param("user_id", user_id.unwrap_or("system"))?,
            name: match name {
                Some(n) => Some(crate::web::check_name(n).map_err(bad)?.to_owned()),
                None => None,
            },
        })
    }
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError(Box::new(client_error_response(ClientError::unavailable(
        e.to_string(),
    ))))
}

// ---- request bodies without HTTP --------------------------------------------------------------

/// A request body of the server API, for [`check_body`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiBody {
    /// `POST /rooms/{room}/messages`
    Publish,
    /// `POST /outbox`
    Outbox,
    /// `POST /critical`
    Critical,
    /// `POST /broadcast`
    Broadcast,
    /// `PUT /users/{user}/ban` and `PUT /rooms/{room}/mutes/{user}`
    Sanction,
    /// `POST /users/{user}/kick`
    Kick,
}

impl ApiBody {
    pub const ALL: [ApiBody; 6] = [
        ApiBody::Publish,
        ApiBody::Outbox,
        ApiBody::Critical,
        ApiBody::Broadcast,
        ApiBody::Sanction,
        ApiBody::Kick,
    ];
}

/// Decodes and checks one request body the way its handler does (the same JSON decoding as the
/// `Json` extractor, the same field checks), without HTTP, state or side effects: the way in
/// for the fuzz test. `Err` is the handler's 400 response.
pub fn check_body(which: ApiBody, bytes: &[u8], max_text_chars: usize) -> Result<(), ApiError> {
    fn json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
        body(Json::<T>::from_bytes(bytes))
    }
    match which {
        ApiBody::Publish => messages::publish_fields(json(bytes)?, max_text_chars).map(drop),
        ApiBody::Outbox => outbox::outbox_row(json(bytes)?, max_text_chars).map(drop),
        ApiBody::Critical => critical::critical_parts(json(bytes)?, max_text_chars).map(drop),
        ApiBody::Broadcast => broadcast::broadcast_parts(json(bytes)?, max_text_chars).map(drop),
        ApiBody::Sanction => moderation::sanction_req(bytes).map(drop),
        ApiBody::Kick => moderation::kick_req(bytes).map(drop),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_exactly() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
    }

    /// The OpenAPI document is valid JSON, OpenAPI 3, and names exactly the routes served.
    #[test]
    fn openapi_matches_the_routes() {
        let doc: Value = serde_json::from_str(OPENAPI).expect("valid JSON");
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let paths = doc["paths"].as_object().unwrap();
        let mut documented: Vec<(String, String)> = paths
            .iter()
            .flat_map(|(p, ops)| {
                ops.as_object()
                    .unwrap()
                    .keys()
                    .filter(|k| *k != "parameters")
                    .map(move |m| (p.clone(), m.clone()))
            })
            .collect();
        let mut served: Vec<(String, String)> = route_table()
            .iter()
            .flat_map(|(p, methods, _)| methods.iter().map(move |m| (p.to_string(), m.to_string())))
            .chain([("/openapi.json".to_owned(), "get".to_owned())])
            .collect();
        documented.sort();
        served.sort();
        assert_eq!(documented, served);
        // Every operation has an id, a summary and responses; every $ref resolves.
        for (p, ops) in paths {
            for (m, op) in ops.as_object().unwrap() {
                if m == "parameters" {
                    continue;
                }
                assert!(op["operationId"].is_string(), "{m} {p}: operationId");
                assert!(op["summary"].is_string(), "{m} {p}: summary");
                assert!(op["responses"].is_object(), "{m} {p}: responses");
            }
        }
        let text = OPENAPI;
        for r in text.split("\"$ref\": \"#/").skip(1) {
            let target = &r[..r.find('"').unwrap()];
            let mut node = &doc;
            for part in target.split('/') {
                node = &node[part];
            }
            assert!(!node.is_null(), "dangling $ref #/{target}");
        }
    }
}
