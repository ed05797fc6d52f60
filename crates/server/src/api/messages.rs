//! `POST /rooms/{room}/messages`: a message into the room's stream through ingest (trusted), or
//! with `critical: true` a critical message to each member of the room.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use roomcast_core::ingest::ChatRequest;
use roomcast_core::ports::{Command, ControlTarget};
use serde::Deserialize;
use serde_json::{Value, json};

use super::critical::critical_msg;
use super::{ApiError, MessageFields, St, bad, body, room_param, unavailable};
use crate::http::client_error_response;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PublishReq {
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
pub(super) fn publish_fields(
    req: PublishReq,
    max_chars: usize,
) -> Result<(MessageFields, bool), ApiError> {
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

pub(super) async fn publish(
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
        Err(e) => client_error_response(e.into()),
    }
}
