//! `POST /critical`: a critical message for named users, recorded for each and pushed wherever
//! they are connected, until they acknowledge it.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use roomcast_core::clock::now_ms;
use roomcast_core::ids::{RoomId, UserId};
use roomcast_core::model::MsgKind;
use roomcast_core::ports::{Command, ControlTarget, CriticalMsg};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    ApiError, ApiState, MAX_CRITICAL_USERS, St, bad, body, kind_field, payload_field, text_field,
    unavailable, user_param,
};

/// A new critical message (its id taken now).
pub(super) fn critical_msg(
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
pub(super) struct CriticalReq {
    user_ids: Vec<String>,
    kind: Option<String>,
    text: Option<String>,
    payload: Option<Value>,
    room_id: Option<String>,
}

/// A critical body, checked: users (sorted, without repeats), kind, text, payload, room.
pub(super) type CriticalParts = (
    Vec<UserId>,
    MsgKind,
    Option<String>,
    Option<String>,
    Option<RoomId>,
);

pub(super) fn critical_parts(
    req: CriticalReq,
    max_chars: usize,
) -> Result<CriticalParts, ApiError> {
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

pub(super) async fn critical(
    State(s): St,
    b: Result<Json<CriticalReq>, JsonRejection>,
) -> Response {
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
