//! Between the core's types and the messages of `proto/internal.proto`. Everything that comes
//! off the network is checked here (ids, kinds) and refused with a clear reason, never unwrapped.

use std::sync::Arc;

use bytes::Bytes;
use prost::Message;
use roomcast_core::ids::{MsgId, RoomId, UserId};
use roomcast_core::ingest::{Accepted, ChatRequest, IngestError};
use roomcast_core::model::{MsgKind, RoomBatch};
use roomcast_core::ports::{Command, CriticalMsg};

use crate::pb;

/// A message from another node that does not make sense.
#[derive(Debug, thiserror::Error)]
#[error("invalid {what}: {reason}")]
pub struct Invalid {
    pub what: &'static str,
    pub reason: String,
}

fn invalid(what: &'static str, reason: impl std::fmt::Display) -> Invalid {
    Invalid {
        what,
        reason: reason.to_string(),
    }
}

fn room(s: &str) -> Result<RoomId, Invalid> {
    RoomId::parse(s).map_err(|e| invalid("room id", e))
}

fn user(s: &str) -> Result<UserId, Invalid> {
    UserId::parse(s).map_err(|e| invalid("user id", e))
}

pub fn submit_request(r: &ChatRequest) -> pb::SubmitRequest {
    pb::SubmitRequest {
        room: r.room.as_str().to_owned(),
        user: r.user.as_str().to_owned(),
        name: r.name.as_deref().map(str::to_owned),
        text: r.text.clone(),
        kind: r.kind.as_str().to_owned(),
        payload: r.payload.clone(),
        trusted: r.trusted,
        msg_id: r.msg_id.map(|m| m.0),
    }
}

pub fn chat_request(r: pb::SubmitRequest) -> Result<ChatRequest, Invalid> {
    Ok(ChatRequest {
        room: room(&r.room)?,
        user: user(&r.user)?,
        name: r.name.map(Arc::from),
        text: r.text,
        kind: MsgKind::parse(&r.kind).ok_or_else(|| invalid("message kind", &r.kind))?,
        payload: r.payload,
        trusted: r.trusted,
        msg_id: r.msg_id.map(MsgId),
    })
}

pub fn submit_reply(r: Result<Accepted, IngestError>) -> pb::SubmitReply {
    use pb::rejected::Reason;
    let rejected = |reason: Reason| pb::Rejected {
        reason: reason as i32,
        ..pb::Rejected::default()
    };
    let result = match r {
        Ok(a) => pb::submit_reply::Result::Accepted(pb::Accepted {
            msg_id: a.msg_id.0,
            text: a.text,
        }),
        Err(e) => pb::submit_reply::Result::Rejected(match e {
            IngestError::BadRequest(m) => pb::Rejected {
                message: m,
                ..rejected(Reason::BadRequest)
            },
            IngestError::RateLimited {
                retry_after_ms,
                scope,
            } => pb::Rejected {
                retry_after_ms,
                scope: scope.to_owned(),
                ..rejected(Reason::RateLimited)
            },
            IngestError::Muted { until_ms, reason } => pb::Rejected {
                until_ms,
                sanction_reason: reason,
                ..rejected(Reason::Muted)
            },
            IngestError::Banned { until_ms, reason } => pb::Rejected {
                until_ms,
                sanction_reason: reason,
                ..rejected(Reason::Banned)
            },
            IngestError::ContentRejected => rejected(Reason::ContentRejected),
            IngestError::Unavailable(m) => pb::Rejected {
                message: m,
                ..rejected(Reason::Unavailable)
            },
        }),
    };
    pb::SubmitReply {
        result: Some(result),
    }
}

pub fn ingest_result(r: pb::SubmitReply) -> Result<Accepted, IngestError> {
    use pb::rejected::Reason;
    match r.result {
        Some(pb::submit_reply::Result::Accepted(a)) => Ok(Accepted {
            msg_id: MsgId(a.msg_id),
            text: a.text,
        }),
        Some(pb::submit_reply::Result::Rejected(r)) => Err(match r.reason() {
            Reason::BadRequest => IngestError::BadRequest(r.message),
            Reason::RateLimited => IngestError::RateLimited {
                retry_after_ms: r.retry_after_ms,
                scope: if r.scope == "room" { "room" } else { "user" },
            },
            Reason::Muted => IngestError::Muted {
                until_ms: r.until_ms,
                reason: r.sanction_reason,
            },
            Reason::Banned => IngestError::Banned {
                until_ms: r.until_ms,
                reason: r.sanction_reason,
            },
            Reason::ContentRejected => IngestError::ContentRejected,
            Reason::Unavailable => IngestError::Unavailable(r.message),
        }),
        None => Err(IngestError::Unavailable(
            "ingest answered with neither result".into(),
        )),
    }
}

/// A batch encoded once, for every gateway it goes to.
pub fn encode_batch(b: &RoomBatch) -> Bytes {
    // The messages are behind `Arc`s; the message type wants them owned. One copy here, per
    // batch — not per gateway.
    pb::RoomBatch {
        room: b.room.as_str().to_owned(),
        epoch: b.epoch,
        msgs: b.msgs.iter().map(|m| (**m).clone()).collect(),
    }
    .encode_to_vec()
    .into()
}

pub fn decode_batch(bytes: &[u8]) -> Result<RoomBatch, Invalid> {
    let b = pb::RoomBatch::decode(bytes).map_err(|e| invalid("room batch", e))?;
    let room = room(&b.room)?;
    if let Some(m) = b.msgs.iter().find(|m| m.room_id != b.room) {
        return Err(invalid(
            "room batch",
            format!("a message of room {} in a batch of {}", m.room_id, b.room),
        ));
    }
    Ok(RoomBatch {
        room,
        epoch: b.epoch,
        msgs: b.msgs.into_iter().map(Arc::new).collect(),
        outbox_ids: Vec::new(),
    })
}

fn critical_msg(m: &CriticalMsg) -> pb::CriticalMsg {
    pb::CriticalMsg {
        msg_id: m.msg_id,
        kind: m.kind.clone(),
        room: m.room.as_ref().map(|r| r.as_str().to_owned()),
        text: m.text.clone(),
        payload: m.payload.clone(),
        ts: m.ts,
    }
}

fn from_critical_msg(m: Option<pb::CriticalMsg>) -> Result<CriticalMsg, Invalid> {
    let m = m.ok_or_else(|| invalid("command", "a critical message without its message"))?;
    Ok(CriticalMsg {
        msg_id: m.msg_id,
        kind: m.kind,
        room: m.room.as_deref().map(room).transpose()?,
        text: m.text,
        payload: m.payload,
        ts: m.ts,
    })
}

pub fn command(c: &Command) -> pb::Command {
    use pb::command::{Broadcast, Command as C, Critical, Kick, RoomCritical};
    let c = match c {
        Command::Kick {
            user,
            close_code,
            code,
            reason,
        } => C::Kick(Kick {
            user: user.as_str().to_owned(),
            close_code: u32::from(*close_code),
            code: code.clone(),
            reason: reason.clone(),
        }),
        Command::Critical { user, msg } => C::Critical(Critical {
            user: user.as_str().to_owned(),
            msg: Some(critical_msg(msg)),
        }),
        Command::Broadcast { msg } => C::Broadcast(Broadcast {
            msg: Some(critical_msg(msg)),
        }),
        Command::RoomCritical { room, msg } => C::RoomCritical(RoomCritical {
            room: room.as_str().to_owned(),
            msg: Some(critical_msg(msg)),
        }),
    };
    pb::Command { command: Some(c) }
}

pub fn from_command(c: pb::Command) -> Result<Command, Invalid> {
    use pb::command::Command as C;
    Ok(
        match c.command.ok_or_else(|| invalid("command", "no command"))? {
            C::Kick(k) => Command::Kick {
                user: user(&k.user)?,
                close_code: u16::try_from(k.close_code)
                    .map_err(|_| invalid("close code", k.close_code))?,
                code: k.code,
                reason: k.reason,
            },
            C::Critical(c) => Command::Critical {
                user: user(&c.user)?,
                msg: from_critical_msg(c.msg)?,
            },
            C::Broadcast(b) => Command::Broadcast {
                msg: from_critical_msg(b.msg)?,
            },
            C::RoomCritical(r) => Command::RoomCritical {
                room: room(&r.room)?,
                msg: from_critical_msg(r.msg)?,
            },
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomcast_core::model::RoomMsg;

    fn msg(room: &str, seq: u64) -> Arc<RoomMsg> {
        Arc::new(RoomMsg {
            room_id: room.into(),
            msg_id: seq,
            seq,
            user_id: "u".into(),
            name: Some("名字".into()),
            text: "666 哈哈哈".into(),
            kind: "chat".into(),
            ts: 9,
            epoch: 3,
            payload: None,
        })
    }

    #[test]
    fn batches_round_trip_and_garbage_is_refused() {
        let b = RoomBatch {
            room: RoomId::parse("r").unwrap(),
            epoch: 3,
            msgs: vec![msg("r", 1), msg("r", 2)],
            outbox_ids: vec![],
        };
        let back = decode_batch(&encode_batch(&b)).unwrap();
        assert_eq!((back.room.as_str(), back.epoch), ("r", 3));
        assert_eq!(back.msgs, b.msgs);
        assert!(decode_batch(&[0xff, 0xff, 0xff]).is_err());
        let wrong = RoomBatch {
            msgs: vec![msg("other", 1)],
            ..b
        };
        let e = decode_batch(&encode_batch(&wrong)).unwrap_err().to_string();
        assert!(e.contains("other"), "{e}");
    }

    #[test]
    fn commands_round_trip_and_bad_ones_are_refused() {
        let c = Command::Critical {
            user: UserId::parse("alice").unwrap(),
            msg: CriticalMsg {
                msg_id: 5,
                kind: "gift".into(),
                room: Some(RoomId::parse("r").unwrap()),
                text: None,
                payload: Some("{}".into()),
                ts: 1,
            },
        };
        assert_eq!(from_command(command(&c)).unwrap(), c);
        let mut bad = command(&Command::Kick {
            user: UserId::parse("alice").unwrap(),
            close_code: 4003,
            code: "x".into(),
            reason: "y".into(),
        });
        if let Some(pb::command::Command::Kick(k)) = bad.command.as_mut() {
            k.close_code = 70_000;
        }
        assert!(
            from_command(bad)
                .unwrap_err()
                .to_string()
                .contains("close code")
        );
        assert!(from_command(pb::Command { command: None }).is_err());
        let mut req = submit_request(&ChatRequest {
            room: RoomId::parse("r").unwrap(),
            user: UserId::parse("u").unwrap(),
            name: None,
            text: "t".into(),
            kind: MsgKind::Gift,
            payload: None,
            trusted: true,
            msg_id: Some(MsgId(7)),
        });
        let back = chat_request(req.clone()).unwrap();
        assert_eq!(
            (back.kind, back.msg_id, back.trusted),
            (MsgKind::Gift, Some(MsgId(7)), true)
        );
        req.kind = "nonsense".into();
        assert!(chat_request(req.clone()).is_err());
        req.kind = "chat".into();
        req.room = "has space".into();
        assert!(chat_request(req).is_err());
    }

    #[test]
    fn every_refusal_survives_the_trip() {
        let cases = [
            IngestError::BadRequest("x".into()),
            IngestError::RateLimited {
                retry_after_ms: 1500,
                scope: "room",
            },
            IngestError::Muted {
                until_ms: Some(9),
                reason: "r".into(),
            },
            IngestError::Banned {
                until_ms: None,
                reason: "b".into(),
            },
            IngestError::ContentRejected,
            IngestError::Unavailable("down".into()),
        ];
        for e in cases {
            assert_eq!(ingest_result(submit_reply(Err(e.clone()))), Err(e));
        }
    }
}
