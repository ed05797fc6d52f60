//! `chat {room_id, text}`: a message from a member into the room, through ingest.

use roomcast_proto::{Op, body};

use super::{Ctx, ErrorCode, Handler, ReplyError, Request, ingest_error, parse_room};
use crate::BoxFut;
use crate::ingest::ChatRequest;
use crate::model::MsgKind;

pub(super) struct ChatHandler;

impl Handler for ChatHandler {
    fn handle<'a>(&'a self, cx: Ctx<'a>, req: Request<'a>) -> BoxFut<'a, Result<(), ReplyError>> {
        Box::pin(async move {
            let chat: body::Chat = req.decode()?;
            let room = parse_room(&chat.room_id)?;
            if !cx.session.rooms.contains(&room) {
                return Err(ReplyError::new(
                    ErrorCode::NotJoined,
                    "join the room before sending to it",
                )
                .in_room(room.as_str()));
            }
            let Some(identity) = cx.session.identity.as_ref() else {
                return Err(ReplyError::new(ErrorCode::Unauthenticated, "log in first"));
            };
            let request = ChatRequest {
                room,
                user: identity.user.clone(),
                name: identity.name.clone(),
                text: chat.text,
                kind: MsgKind::Chat,
                payload: None,
                trusted: false,
                msg_id: None,
            };
            match cx.gw.deps().ingest.submit(request).await {
                Ok(accepted) => {
                    cx.reply(
                        Op::ChatOk,
                        req.seq,
                        &body::ChatOk {
                            msg_id: accepted.msg_id.0,
                        },
                    );
                    Ok(())
                }
                Err(e) => Err(ingest_error(e).in_room(&chat.room_id)),
            }
        })
    }
}
