//! `login {token}` (and a token on the upgrade URL, which gets the same checks): verify the
//! token, refuse banned users, register the connection under its user, record presence, answer
//! `login_ok`, then push the critical messages that wait for the user.

use std::sync::Arc;

use roomcast_proto::body;
use roomcast_proto::wire::single_frame;
use roomcast_proto::{Op, ws::close};

use super::{Ctx, ErrorCode, Handler, ReplyError, Request, Session, send_reply};
use crate::BoxFut;
use crate::auth::Identity;
use crate::gateway::Gateway;
use crate::gateway::conn::Conn;

/// A banned user may not log in: `banned`, then close 4003.
pub(super) async fn check_ban(gw: &Arc<Gateway>, identity: &Identity) -> Result<(), ReplyError> {
    let banned = gw
        .deps()
        .moderation
        .banned(&identity.user)
        .await
        .map_err(|e| ReplyError::new(ErrorCode::Unavailable, e.to_string()))?;
    match banned {
        Some(ban) => Err(ReplyError {
            close: Some(close::BANNED),
            ..ReplyError::new(
                ErrorCode::Banned,
                if ban.reason.is_empty() {
                    "banned".to_owned()
                } else {
                    format!("banned: {}", ban.reason)
                },
            )
        }),
        None => Ok(()),
    }
}

pub(super) async fn complete_login(
    gw: &Arc<Gateway>,
    conn: &Arc<Conn>,
    s: &mut Session,
    identity: Identity,
    seq: u32,
) {
    gw.register_user(&identity.user, conn);
    conn.token_exp_s
        .store(identity.exp, std::sync::atomic::Ordering::Relaxed);
    if let Err(e) = gw
        .deps()
        .presence
        .touch(&identity.user, gw.node(), gw.config().silence_timeout())
        .await
    {
        tracing::warn!(user = %identity.user, error = %e, "cannot record presence");
    }
    let reply = body::LoginOk {
        user_id: identity.user.as_str().to_owned(),
        heartbeat_s: gw.config().heartbeat_s,
        name: identity.name.as_deref().map(str::to_owned),
    };
    conn.set_user(&identity.user);
    let user = identity.user.clone();
    s.identity = Some(identity);
    let frame = single_frame(conn.wire(), Op::LoginOk, seq, &reply);
    send_reply(gw, conn, &frame);
    // Whatever critical messages wait for this user, after login_ok.
    gw.deliver_pending(&user).await;
}

pub(super) struct LoginHandler;

impl Handler for LoginHandler {
    fn handle<'a>(&'a self, cx: Ctx<'a>, req: Request<'a>) -> BoxFut<'a, Result<(), ReplyError>> {
        Box::pin(async move {
            let login: body::Login = req.decode()?;
            cx.session.take_request(cx.gw)?;
            let identity = cx
                .gw
                .authenticate(&login.token)
                .map_err(|e| ReplyError::new(ErrorCode::Unauthenticated, e.to_string()))?;
            if let Some(current) = &cx.session.identity
                && current.user != identity.user
            {
                return Err(ReplyError::new(
                    ErrorCode::BadRequest,
                    "already logged in as another user; open a new connection",
                ));
            }
            check_ban(cx.gw, &identity).await?;
            complete_login(cx.gw, cx.conn, cx.session, identity, req.seq).await;
            Ok(())
        })
    }
}
