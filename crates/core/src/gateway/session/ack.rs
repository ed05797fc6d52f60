//! `ack {msg_id}`: a critical message reached the user.

use roomcast_proto::body;

use super::{Ctx, ErrorCode, Handler, ReplyError, Request};
use crate::BoxFut;

/// `ack {msg_id}`: the user has a critical message. No reply (an ack of an unknown or already
/// acknowledged id is not an error: retries and reconnects make duplicates normal).
pub(super) struct AckHandler;

impl Handler for AckHandler {
    fn handle<'a>(&'a self, cx: Ctx<'a>, req: Request<'a>) -> BoxFut<'a, Result<(), ReplyError>> {
        Box::pin(async move {
            let ack: body::Ack = req.decode()?;
            cx.session.take_request(cx.gw)?;
            let Some(user) = cx.session.user() else {
                return Err(ReplyError::new(ErrorCode::Unauthenticated, "log in first"));
            };
            cx.gw
                .acknowledge(user, ack.msg_id)
                .await
                .map_err(|e| ReplyError::new(ErrorCode::Unavailable, e.to_string()))?;
            Ok(())
        })
    }
}
