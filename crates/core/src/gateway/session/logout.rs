//! `logout`: the clean end of a session.

use roomcast_proto::body;
use roomcast_proto::{Op, ws::close};

use super::{Ctx, Handler, ReplyError, Request};
use crate::BoxFut;
use crate::gateway::conn::Closing;

/// `logout`: ends the session cleanly — leaves every room at once (routes and online counts
/// follow), drops presence, answers `logout_ok` and closes with 1000. Requests after it are
/// ignored.
pub(super) struct LogoutHandler;

impl Handler for LogoutHandler {
    fn handle<'a>(&'a self, cx: Ctx<'a>, req: Request<'a>) -> BoxFut<'a, Result<(), ReplyError>> {
        Box::pin(async move {
            let _: body::Logout = req.decode()?;
            let rooms = std::mem::take(&mut cx.session.rooms);
            let user = cx.session.identity.take().map(|i| i.user);
            cx.gw.logout(cx.conn, user.as_ref(), &rooms).await;
            cx.reply(Op::LogoutOk, req.seq, &body::LogoutOk {});
            cx.conn.close(
                Closing {
                    code: close::NORMAL,
                    reason: "logged out",
                    notice: None,
                    discard: false,
                },
                cx.gw.limits(),
                cx.gw.metrics(),
                cx.gw.clock_ms(),
            );
            cx.session.draining = true;
            Ok(())
        })
    }
}
