//! `POST /broadcast`: a critical notice for every connected user, on every gateway node.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use roomcast_core::model::MsgKind;
use roomcast_core::ports::{Command, ControlTarget};
use serde::Deserialize;
use serde_json::{Value, json};

use super::critical::critical_msg;
use super::{ApiError, St, bad, body, kind_field, payload_field, text_field, unavailable};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BroadcastReq {
    kind: Option<String>,
    text: Option<String>,
    payload: Option<Value>,
}

/// A broadcast body, checked: kind, text, payload (one of the last two at least).
pub(super) fn broadcast_parts(
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

pub(super) async fn broadcast(
    State(s): St,
    b: Result<Json<BroadcastReq>, JsonRejection>,
) -> Response {
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
