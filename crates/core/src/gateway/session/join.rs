//! `join {room_id, history?, since?, history_secs?}`: membership first, then the room's history
//! page, answered with `join_ok`.

use roomcast_proto::{Op, body};

use super::{Ctx, ErrorCode, Handler, ReplyError, Request, parse_room};
use crate::BoxFut;
use crate::gateway::limits::Bucket;
use crate::history::HistoryQuery;

pub(super) struct JoinHandler;

impl Handler for JoinHandler {
    fn handle<'a>(&'a self, cx: Ctx<'a>, req: Request<'a>) -> BoxFut<'a, Result<(), ReplyError>> {
        Box::pin(async move {
            let join: body::Join = req.decode()?;
            let room = parse_room(&join.room_id)?;
            let (limit, now) = (&cx.gw.config().join_limit, cx.gw.clock_ms());
            let joins = cx
                .session
                .joins
                .get_or_insert_with(|| Bucket::new(limit, now));
            if let Err(wait) = joins.take(limit, now) {
                cx.gw.metrics().limited_requests.inc();
                return Err(ReplyError {
                    retry_after_ms: Some(wait.as_millis().min(u64::MAX as u128) as u64),
                    counts_as_error: true,
                    ..ReplyError::new(ErrorCode::RateLimited, "too many joins on this connection")
                }
                .in_room(room.as_str()));
            }
            let already = cx.session.rooms.contains(&room);
            if !already && cx.session.rooms.len() >= cx.gw.config().max_rooms_per_conn {
                return Err(ReplyError::new(
                    ErrorCode::TooManyRooms,
                    format!(
                        "a connection may be in at most {} rooms",
                        cx.gw.config().max_rooms_per_conn
                    ),
                )
                .in_room(room.as_str()));
            }
            if !already && let Err(wait) = cx.gw.admit_new_room(&room) {
                cx.gw.metrics().limited_requests.inc();
                return Err(ReplyError {
                    retry_after_ms: Some(wait.as_millis().min(u64::MAX as u128) as u64),
                    ..ReplyError::new(
                        ErrorCode::RateLimited,
                        "too many new rooms on this server right now",
                    )
                }
                .in_room(room.as_str()));
            }
            // Member first, history second: a message flushed in between shows up in both
            // (clients drop duplicates by seq), never in neither.
            if !already {
                cx.session.rooms.push(room.clone());
                cx.gw.join_room(&room, cx.conn).await;
            }
            // Room-wide: this node's members and the other nodes' as last read.
            let online = cx.gw.room_online(&room);
            let query = HistoryQuery {
                limit: join.history,
                since: join.since.clone(),
                secs: join.history_secs,
            };
            let page = match cx.gw.deps().history.query(&room, &query).await {
                Ok(page) => page,
                Err(e) => {
                    // A failed join leaves no membership behind.
                    if !already {
                        cx.session.rooms.retain(|r| r != &room);
                        cx.gw.leave_room(&room, cx.conn).await;
                    }
                    return Err(ReplyError::new(
                        ErrorCode::Unavailable,
                        format!("history unavailable: {e}"),
                    )
                    .in_room(room.as_str()));
                }
            };
            let reply = body::JoinOk {
                room_id: room.as_str().to_owned(),
                online,
                epoch: page.epoch,
                recovered: page.recovered,
                history: page.msgs.iter().map(|m| (**m).clone()).collect(),
                last_seq: page.last_seq,
            };
            cx.reply(Op::JoinOk, req.seq, &reply);
            Ok(())
        })
    }
}
