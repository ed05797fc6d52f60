//! Moderation of users: `PUT`/`DELETE /users/{user}/ban`, `PUT`/`DELETE
//! /rooms/{room}/mutes/{user}` and `POST /users/{user}/kick`. Bans and mutes are recorded in the
//! `Moderation` port first (so a reconnect is refused), then the user's live connections are
//! closed through the `Control` port, wherever they are.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use roomcast_core::clock::now_ms;
use roomcast_core::ids::UserId;
use roomcast_core::ports::{Command, ControlTarget, Sanction};
use roomcast_proto::ws::close;
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, ApiState, St, bad, room_param, unavailable, user_param};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct SanctionReq {
    /// Absent: until lifted.
    duration_s: Option<u64>,
    reason: Option<String>,
}

fn sanction(duration_s: Option<u64>, reason: Option<String>) -> Sanction {
    Sanction {
        until_ms: duration_s.map(|d| now_ms().saturating_add(d.saturating_mul(1000))),
        reason: reason.unwrap_or_default(),
    }
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
pub(super) fn sanction_req(body: &[u8]) -> Result<SanctionReq, ApiError> {
    let req = optional_json::<SanctionReq>(body)?;
    reason_ok(&req.reason)?;
    Ok(req)
}

/// A kick body (may be empty), checked.
pub(super) fn kick_req(body: &[u8]) -> Result<KickReq, ApiError> {
    let req = optional_json::<KickReq>(body)?;
    reason_ok(&req.reason)?;
    Ok(req)
}

pub(super) async fn ban(State(s): St, Path(user): Path<String>, b: axum::body::Bytes) -> Response {
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

pub(super) async fn unban(State(s): St, Path(user): Path<String>) -> Response {
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

pub(super) async fn mute(
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

pub(super) async fn unmute(State(s): St, Path((room, user)): Path<(String, String)>) -> Response {
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
pub(super) struct KickReq {
    reason: Option<String>,
}

pub(super) async fn kick(State(s): St, Path(user): Path<String>, b: axum::body::Bytes) -> Response {
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
