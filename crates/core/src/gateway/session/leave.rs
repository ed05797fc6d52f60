//! `leave {room_id}`.

use roomcast_proto::{Op, body};

use super::{Ctx, ErrorCode, Handler, ReplyError, Request, parse_room};
use crate::BoxFut;

pub(super) struct LeaveHandler;

impl Handler for LeaveHandler {
    fn handle<'a>(&'a self, cx: Ctx<'a>, req: Request<'a>) -> BoxFut<'a, Result<(), ReplyError>> {
        Box::pin(async move {
            let leave: body::Leave = req.decode()?;
            let room = parse_room(&leave.room_id)?;
            let Some(i) = cx.session.rooms.iter().position(|r| *r == room) else {
                return Err(ReplyError::new(ErrorCode::NotJoined, "not in this room")
                    .in_room(room.as_str()));
            };
            cx.session.rooms.swap_remove(i);
            cx.gw.leave_room(&room, cx.conn).await;
            cx.reply(
                Op::LeaveOk,
                req.seq,
                &body::LeaveOk {
                    room_id: leave.room_id,
                },
            );
            Ok(())
        })
    }
}
