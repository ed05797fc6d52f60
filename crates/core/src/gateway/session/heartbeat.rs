//! `heartbeat`: keeps the connection and the user's presence alive.

use roomcast_proto::{Op, body};

use super::{Ctx, Handler, ReplyError, Request};
use crate::BoxFut;

pub(super) struct HeartbeatHandler;

impl Handler for HeartbeatHandler {
    fn handle<'a>(&'a self, cx: Ctx<'a>, req: Request<'a>) -> BoxFut<'a, Result<(), ReplyError>> {
        Box::pin(async move {
            let _: body::Heartbeat = req.decode()?;
            if let Some(user) = cx.session.user()
                && let Err(e) = cx
                    .gw
                    .deps()
                    .presence
                    .touch(user, cx.gw.node(), cx.gw.config().silence_timeout())
                    .await
            {
                tracing::warn!(user = %user, error = %e, "cannot refresh presence");
            }
            cx.reply(Op::HeartbeatOk, req.seq, &body::HeartbeatOk {});
            Ok(())
        })
    }
}
