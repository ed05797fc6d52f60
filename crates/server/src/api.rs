//! The server API for the platform's backend: HTTP JSON under `/api/v1`, bearer API key,
//! described by the OpenAPI document at `/api/v1/openapi.json` (`openapi.json` beside this file).
//!
//! Publishing goes through ingest like any message (trusted: no rate limits, no word filter);
//! moderation goes through the `Moderation` port (shared by every gateway in the distributed
//! mode) and then closes the user's live connections; critical messages go through the
//! gateway's per-user ack tracking. Whatever acts on connections — kicks, ban disconnects,
//! critical messages, broadcasts — goes through the `Control` port, which reaches the gateway
//! node(s) holding the user (or every node), so the same handlers serve one node or many.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post, put};
use roomcast_core::clock::now_ms;
use roomcast_core::gateway::Gateway;
use roomcast_core::history::HistoryQuery;
use roomcast_core::ids::{RoomId, UserId};
use roomcast_core::ingest::{ChatRequest, IngestError, IngestService};
use roomcast_core::model::MsgKind;
use roomcast_core::outbox::{NewOutboxRow, OutboxRelay};
use roomcast_core::ports::{Command, Control, ControlTarget, CriticalMsg, Sanction};
use roomcast_proto::ws::close;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::error_response;

pub const OPENAPI: &str = include_str!("openapi.json");

/// Most users one critical request may name.
pub const MAX_CRITICAL_USERS: usize = 1000;
/// Largest JSON payload accepted from the API (serialized).
pub const MAX_PAYLOAD_BYTES: usize = 8192;

pub struct ApiState {
    pub gateway: Arc<Gateway>,
    /// Commands for the gateway nodes (kicks, critical messages, broadcasts).
    pub control: Arc<dyn Control>,
    pub ingest: Arc<IngestService>,
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
        ("/rooms", &["get"], get(top_rooms)),
        ("/rooms/{room}", &["get"], get(room_info)),
        ("/rooms/{room}/history", &["get"], get(room_history)),
        ("/rooms/{room}/messages", &["post"], post(publish)),
        (
            "/rooms/{room}/mutes/{user}",
            &["put", "delete"],
            put(mute).delete(unmute),
        ),
        (
            "/users/{user}/ban",
            &["put", "delete"],
            put(ban).delete(unban),
        ),
        ("/users/{user}/kick", &["post"], post(kick)),
        ("/critical", &["post"], post(critical)),
        ("/broadcast", &["post"], post(broadcast)),
        ("/outbox", &["post"], post(outbox_insert)),
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

fn sanction(duration_s: Option<u64>, reason: Option<String>) -> Sanction {
    Sanction {
        until_ms: duration_s.map(|d| now_ms().saturating_add(d.saturating_mul(1000))),
        reason: reason.unwrap_or_default(),
    }
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError(Box::new(error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        e.to_string(),
    )))
}

// ---- rooms -----------------------------------------------------------------------------------

/// 0 quiet … 5 huge, by online count: <10, <100, <1k, <10k, <100k, more.
pub fn hot_level(online: usize) -> u8 {
    match online {
        0..10 => 0,
        10..100 => 1,
        100..1_000 => 2,
        1_000..10_000 => 3,
        10_000..100_000 => 4,
        _ => 5,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopQuery {
    top: Option<usize>,
}

async fn top_rooms(State(s): St, q: Result<Query<TopQuery>, QueryRejection>) -> Response {
    let Ok(Query(q)) = q else {
        return bad("top: a number from 1 to 1000").into_response();
    };
    let n = q.top.unwrap_or(10);
    if !(1..=1000).contains(&n) {
        return bad("top: a number from 1 to 1000").into_response();
    }
    let rooms: Vec<Value> = s
        .gateway
        .top_rooms(n)
        .into_iter()
        .map(|(room, online)| {
            json!({ "room_id": room.as_str(), "online": online, "hot_level": hot_level(online) })
        })
        .collect();
    Json(json!({ "rooms": rooms })).into_response()
}

async fn room_info(State(s): St, Path(room): Path<String>) -> Response {
    let room = match room_param(&room) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let online = s.gateway.room_members(&room);
    let nodes = match s.gateway.deps().routes.nodes(&room).await {
        Ok(n) => n,
        Err(e) => return unavailable(e).into_response(),
    };
    let nodes: Vec<&str> = nodes.iter().map(|n| n.as_str()).collect();
    Json(json!({
        "room_id": room.as_str(),
        "online": online,
        "nodes": nodes,
        "hot_level": hot_level(online),
    }))
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryParams {
    limit: Option<u32>,
}

async fn room_history(
    State(s): St,
    Path(room): Path<String>,
    q: Result<Query<HistoryParams>, QueryRejection>,
) -> Response {
    let room = match room_param(&room) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let Ok(Query(q)) = q else {
        return bad("limit: a number").into_response();
    };
    let query = HistoryQuery {
        limit: q.limit,
        since: None,
        secs: None,
    };
    match s.gateway.deps().history.query(&room, &query).await {
        Ok(page) => {
            let msgs: Vec<&roomcast_core::model::RoomMsg> =
                page.msgs.iter().map(|m| &**m).collect();
            Json(json!({
                "room_id": room.as_str(),
                "epoch": page.epoch,
                "last_seq": page.last_seq,
                "messages": msgs,
            }))
            .into_response()
        }
        Err(e) => unavailable(e).into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishReq {
    kind: Option<String>,
    text: Option<String>,
    payload: Option<Value>,
    /// Default `system`.
    user_id: Option<String>,
    name: Option<String>,
    /// Send to each member of the room as a `critical` message (acknowledged per user)
    /// instead of into the room's stream.
    #[serde(default)]
    critical: bool,
}

/// A publish body, checked: its fields and whether it is critical (then it has text or payload).
fn publish_fields(req: PublishReq, max_chars: usize) -> Result<(MessageFields, bool), ApiError> {
    let fields = MessageFields::parse(
        req.kind.as_deref(),
        req.text,
        req.payload,
        req.user_id.as_deref(),
        req.name.as_deref(),
        max_chars,
    )?;
    if req.critical && fields.text.is_none() && fields.payload.is_none() {
        return Err(bad("text or payload: a critical message needs one of them"));
    }
    Ok((fields, req.critical))
}

async fn publish(
    State(s): St,
    Path(room): Path<String>,
    b: Result<Json<PublishReq>, JsonRejection>,
) -> Response {
    let (room, req) = match (room_param(&room), body(b)) {
        (Ok(r), Ok(b)) => (r, b),
        (Err(e), _) | (_, Err(e)) => return e.into_response(),
    };
    let (fields, critical) = match publish_fields(req, s.ingest.config().max_text_chars) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let MessageFields {
        kind,
        text,
        payload,
        user,
        name,
    } = fields;
    if critical {
        let msg = critical_msg(&s, kind, Some(room.clone()), text, payload);
        let msg_id = msg.msg_id;
        let n = match s
            .control
            .send(ControlTarget::AllNodes, Command::RoomCritical { room, msg })
            .await
        {
            Ok(report) => report.count,
            Err(e) => return unavailable(e).into_response(),
        };
        return (
            StatusCode::ACCEPTED,
            Json(json!({ "msg_id": msg_id.to_string(), "recipients": n })),
        )
            .into_response();
    }
    let Some(text) = text else {
        return bad("text: required for a room message (payload is extra data beside it)")
            .into_response();
    };
    let request = ChatRequest {
        room,
        user,
        name: name.map(Into::into),
        text,
        kind,
        payload,
        trusted: true,
        msg_id: None,
    };
    match roomcast_core::ingest::Ingest::submit(&*s.ingest, request).await {
        Ok(a) => (
            StatusCode::ACCEPTED,
            Json(json!({ "msg_id": a.msg_id.0.to_string() })),
        )
            .into_response(),
        Err(IngestError::Unavailable(m)) => unavailable(m).into_response(),
        Err(e) => bad(e.to_string()).into_response(),
    }
}

// ---- outbox --------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutboxReq {
    room_id: String,
    kind: Option<String>,
    text: String,
    payload: Option<Value>,
    user_id: Option<String>,
    name: Option<String>,
}

/// An outbox body, checked.
fn outbox_row(req: OutboxReq, max_chars: usize) -> Result<NewOutboxRow, ApiError> {
    let room = RoomId::parse(&req.room_id).map_err(|e| bad(format!("room_id: {e}")))?;
    let f = MessageFields::parse(
        req.kind.as_deref(),
        Some(req.text),
        req.payload,
        req.user_id.as_deref(),
        req.name.as_deref(),
        max_chars,
    )?;
    Ok(NewOutboxRow {
        room,
        kind: f.kind,
        user: f.user,
        name: f.name,
        text: f.text.unwrap_or_default(),
        payload: f.payload,
    })
}

/// Writes an outbox row (durable when this returns); the relay publishes it.
async fn outbox_insert(State(s): St, b: Result<Json<OutboxReq>, JsonRejection>) -> Response {
    let req = match body(b) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let Some(relay) = &s.outbox else {
        return unavailable("the outbox needs the SQLite store (store.url = sqlite://…)")
            .into_response();
    };
    let row = match outbox_row(req, s.ingest.config().max_text_chars) {
        Ok(row) => row,
        Err(e) => return e.into_response(),
    };
    match relay.store().insert(row).await {
        Ok(id) => {
            relay.wake();
            (StatusCode::ACCEPTED, Json(json!({ "outbox_id": id }))).into_response()
        }
        Err(e) => unavailable(e).into_response(),
    }
}

// ---- critical --------------------------------------------------------------------------------

/// A new critical message (its id taken now).
fn critical_msg(
    s: &ApiState,
    kind: MsgKind,
    room: Option<RoomId>,
    text: Option<String>,
    payload: Option<String>,
) -> CriticalMsg {
    CriticalMsg {
        msg_id: s.ingest.next_id().0,
        kind: kind.as_str().to_owned(),
        room,
        text,
        payload,
        ts: now_ms(),
    }
}

/// Records `msg` for each user and pushes it wherever the user is connected; returns how many
/// of them were connected somewhere.
async fn send_critical_to(
    s: &ApiState,
    users: Vec<UserId>,
    msg: &CriticalMsg,
) -> Result<usize, ApiError> {
    let mut online = 0;
    for user in users {
        let command = Command::Critical {
            user: user.clone(),
            msg: msg.clone(),
        };
        match s.control.send(ControlTarget::User(user), command).await {
            Ok(report) => online += usize::from(report.count > 0),
            Err(e) => return Err(unavailable(e)),
        }
    }
    Ok(online)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CriticalReq {
    user_ids: Vec<String>,
    kind: Option<String>,
    text: Option<String>,
    payload: Option<Value>,
    room_id: Option<String>,
}

/// A critical body, checked: users (sorted, without repeats), kind, text, payload, room.
type CriticalParts = (
    Vec<UserId>,
    MsgKind,
    Option<String>,
    Option<String>,
    Option<RoomId>,
);

fn critical_parts(req: CriticalReq, max_chars: usize) -> Result<CriticalParts, ApiError> {
    if req.user_ids.is_empty() || req.user_ids.len() > MAX_CRITICAL_USERS {
        return Err(bad(format!("user_ids: 1 to {MAX_CRITICAL_USERS} user ids")));
    }
    let mut users = req
        .user_ids
        .iter()
        .map(|u| user_param("user_ids", u))
        .collect::<Result<Vec<_>, _>>()?;
    users.sort();
    users.dedup();
    let kind = kind_field(req.kind.as_deref(), MsgKind::System)?;
    let text = text_field(req.text, max_chars)?;
    let payload = payload_field(req.payload)?;
    if text.is_none() && payload.is_none() {
        return Err(bad("text or payload: a critical message needs one of them"));
    }
    let room = match req.room_id.as_deref() {
        Some(r) => Some(RoomId::parse(r).map_err(|e| bad(format!("room_id: {e}")))?),
        None => None,
    };
    Ok((users, kind, text, payload, room))
}

async fn critical(State(s): St, b: Result<Json<CriticalReq>, JsonRejection>) -> Response {
    let req = match body(b) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let (users, kind, text, payload, room) =
        match critical_parts(req, s.ingest.config().max_text_chars) {
            Ok(v) => v,
            Err(e) => return e.into_response(),
        };
    let msg = critical_msg(&s, kind, room, text, payload);
    let msg_id = msg.msg_id;
    let n = users.len();
    match send_critical_to(&s, users, &msg).await {
        Ok(online) => (
            StatusCode::ACCEPTED,
            Json(json!({ "msg_id": msg_id.to_string(), "recipients": n, "online": online })),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastReq {
    kind: Option<String>,
    text: Option<String>,
    payload: Option<Value>,
}

/// A broadcast body, checked: kind, text, payload (one of the last two at least).
fn broadcast_parts(
    req: BroadcastReq,
    max_chars: usize,
) -> Result<(MsgKind, Option<String>, Option<String>), ApiError> {
    let kind = kind_field(req.kind.as_deref(), MsgKind::System)?;
    let text = text_field(req.text, max_chars)?;
    let payload = payload_field(req.payload)?;
    if text.is_none() && payload.is_none() {
        return Err(bad("text or payload: a notice needs one of them"));
    }
    Ok((kind, text, payload))
}

async fn broadcast(State(s): St, b: Result<Json<BroadcastReq>, JsonRejection>) -> Response {
    let req = match body(b) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let (kind, text, payload) = match broadcast_parts(req, s.ingest.config().max_text_chars) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let msg = critical_msg(&s, kind, None, text, payload);
    let msg_id = msg.msg_id;
    match s
        .control
        .send(ControlTarget::AllNodes, Command::Broadcast { msg })
        .await
    {
        Ok(report) => (
            StatusCode::ACCEPTED,
            Json(json!({ "msg_id": msg_id.to_string(), "recipients": report.count })),
        )
            .into_response(),
        Err(e) => unavailable(e).into_response(),
    }
}

// ---- moderation ------------------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SanctionReq {
    /// Absent: until lifted.
    duration_s: Option<u64>,
    reason: Option<String>,
}

/// A body that may be left out: empty means the defaults; anything else must be valid JSON of
/// the right shape (whatever the content type says — a form-encoded body is an error, not
/// silently "no body").
fn optional_json<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| bad(format!("body: {e}")))
}

/// Ban and mute reasons are shown to the user (close frames allow 123 bytes).
const MAX_REASON_CHARS: usize = 100;

fn reason_ok(reason: &Option<String>) -> Result<(), ApiError> {
    match reason {
        Some(r) if r.chars().count() > MAX_REASON_CHARS => Err(bad(format!(
            "reason: at most {MAX_REASON_CHARS} characters"
        ))),
        _ => Ok(()),
    }
}

/// A ban or mute body (may be empty), checked.
fn sanction_req(body: &[u8]) -> Result<SanctionReq, ApiError> {
    let req = optional_json::<SanctionReq>(body)?;
    reason_ok(&req.reason)?;
    Ok(req)
}

/// A kick body (may be empty), checked.
fn kick_req(body: &[u8]) -> Result<KickReq, ApiError> {
    let req = optional_json::<KickReq>(body)?;
    reason_ok(&req.reason)?;
    Ok(req)
}

async fn ban(State(s): St, Path(user): Path<String>, b: axum::body::Bytes) -> Response {
    let (user, req) = match (user_param("user", &user), sanction_req(&b)) {
        (Ok(u), Ok(r)) => (u, r),
        (Err(e), _) | (_, Err(e)) => return e.into_response(),
    };
    if req.duration_s == Some(0) {
        return bad("duration_s: at least 1 (leave it out for a ban until lifted)").into_response();
    }
    let sanction = sanction(req.duration_s, req.reason);
    if let Err(e) = s
        .gateway
        .deps()
        .moderation
        .ban(&user, sanction.clone())
        .await
    {
        return unavailable(e).into_response();
    }
    // Recorded first, so a reconnect is refused; then every live connection goes.
    let reason = if sanction.reason.is_empty() {
        "banned".to_owned()
    } else {
        format!("banned: {}", sanction.reason)
    };
    let closed = match kick_everywhere(&s, &user, close::BANNED, "banned", reason).await {
        Ok(n) => n,
        Err(e) => return e.into_response(),
    };
    Json(json!({ "user_id": user.as_str(), "until_ms": sanction.until_ms, "closed_connections": closed }))
        .into_response()
}

async fn unban(State(s): St, Path(user): Path<String>) -> Response {
    let user = match user_param("user", &user) {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    match s.gateway.deps().moderation.unban(&user).await {
        Ok(removed) => {
            Json(json!({ "user_id": user.as_str(), "removed": removed })).into_response()
        }
        Err(e) => unavailable(e).into_response(),
    }
}

async fn mute(
    State(s): St,
    Path((room, user)): Path<(String, String)>,
    b: axum::body::Bytes,
) -> Response {
    let (room, user, req) = match (
        room_param(&room),
        user_param("user", &user),
        sanction_req(&b),
    ) {
        (Ok(r), Ok(u), Ok(b)) => (r, u, b),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return e.into_response(),
    };
    if req.duration_s == Some(0) {
        return bad("duration_s: at least 1 (leave it out for a mute until lifted)")
            .into_response();
    }
    let sanction = sanction(req.duration_s, req.reason);
    match s
        .gateway
        .deps()
        .moderation
        .mute(&room, &user, sanction.clone())
        .await
    {
        Ok(()) => Json(json!({
            "room_id": room.as_str(),
            "user_id": user.as_str(),
            "until_ms": sanction.until_ms,
        }))
        .into_response(),
        Err(e) => unavailable(e).into_response(),
    }
}

async fn unmute(State(s): St, Path((room, user)): Path<(String, String)>) -> Response {
    let (room, user) = match (room_param(&room), user_param("user", &user)) {
        (Ok(r), Ok(u)) => (r, u),
        (Err(e), _) | (_, Err(e)) => return e.into_response(),
    };
    match s.gateway.deps().moderation.unmute(&room, &user).await {
        Ok(removed) => {
            Json(json!({ "room_id": room.as_str(), "user_id": user.as_str(), "removed": removed }))
                .into_response()
        }
        Err(e) => unavailable(e).into_response(),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct KickReq {
    reason: Option<String>,
}

async fn kick(State(s): St, Path(user): Path<String>, b: axum::body::Bytes) -> Response {
    let user = match user_param("user", &user) {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    let reason = match kick_req(&b) {
        Ok(k) => k.reason,
        Err(e) => return e.into_response(),
    };
    let reason = reason.unwrap_or_else(|| "removed by a moderator".to_owned());
    match kick_everywhere(&s, &user, close::KICKED, "kicked", reason).await {
        Ok(closed) => {
            Json(json!({ "user_id": user.as_str(), "closed_connections": closed })).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// Closes the user's connections on every node that holds them; returns how many.
async fn kick_everywhere(
    s: &ApiState,
    user: &UserId,
    close_code: u16,
    code: &str,
    reason: String,
) -> Result<usize, ApiError> {
    let command = Command::Kick {
        user: user.clone(),
        close_code,
        code: code.to_owned(),
        reason,
    };
    s.control
        .send(ControlTarget::User(user.clone()), command)
        .await
        .map(|r| r.count)
        .map_err(unavailable)
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
        ApiBody::Publish => publish_fields(json(bytes)?, max_text_chars).map(drop),
        ApiBody::Outbox => outbox_row(json(bytes)?, max_text_chars).map(drop),
        ApiBody::Critical => critical_parts(json(bytes)?, max_text_chars).map(drop),
        ApiBody::Broadcast => broadcast_parts(json(bytes)?, max_text_chars).map(drop),
        ApiBody::Sanction => sanction_req(bytes).map(drop),
        ApiBody::Kick => kick_req(bytes).map(drop),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hot_levels() {
        assert_eq!(hot_level(0), 0);
        assert_eq!(hot_level(9), 0);
        assert_eq!(hot_level(10), 1);
        assert_eq!(hot_level(5_000), 3);
        assert_eq!(hot_level(1_000_000), 5);
    }

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
