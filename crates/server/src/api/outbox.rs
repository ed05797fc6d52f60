//! `POST /outbox`: a row in the outbox, durable when the call returns; the relay publishes it.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use roomcast_core::ids::RoomId;
use roomcast_core::outbox::NewOutboxRow;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, MessageFields, St, bad, body, unavailable};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OutboxReq {
    room_id: String,
    kind: Option<String>,
    text: String,
    payload: Option<Value>,
    user_id: Option<String>,
    name: Option<String>,
}

/// An outbox body, checked.
pub(super) fn outbox_row(req: OutboxReq, max_chars: usize) -> Result<NewOutboxRow, ApiError> {
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
pub(super) async fn outbox_insert(
    State(s): St,
    b: Result<Json<OutboxReq>, JsonRejection>,
) -> Response {
    let req = match body(b) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let Some(relay) = &s.outbox else {
        return unavailable(
            "the outbox needs a database store (store.url = sqlite://… or mysql://…)",
        )
        .into_response();
    };
    let row = match outbox_row(req, s.max_text_chars) {
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
