//! Operation codes: the `op` byte of a binary packet and the `"op"` name of a JSON packet.
//!
//! Codes 1–63 are client requests, 64–127 replies (they echo the request's `seq`), 128–255
//! server pushes (`seq` 0). Names are the public contract; codes are stable once released.

/// Every operation the protocol knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Op {
    // client -> server
    Login = 1,
    Heartbeat = 2,
    Join = 3,
    Leave = 4,
    Chat = 5,
    Ack = 6,
    Logout = 7,
    // server -> client replies
    LoginOk = 65,
    HeartbeatOk = 66,
    JoinOk = 67,
    LeaveOk = 68,
    ChatOk = 69,
    LogoutOk = 71,
    Error = 127,
    // server -> client pushes
    RoomMsg = 128,
    Online = 129,
    Critical = 130,
    Kicked = 131,
}

impl Op {
    /// All ops, for tables and documentation.
    pub const ALL: [Op; 18] = [
        Op::Login,
        Op::Heartbeat,
        Op::Join,
        Op::Leave,
        Op::Chat,
        Op::Ack,
        Op::Logout,
        Op::LoginOk,
        Op::HeartbeatOk,
        Op::JoinOk,
        Op::LeaveOk,
        Op::ChatOk,
        Op::LogoutOk,
        Op::Error,
        Op::RoomMsg,
        Op::Online,
        Op::Critical,
        Op::Kicked,
    ];

    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<Op> {
        Op::ALL.iter().copied().find(|op| op.code() == code)
    }

    pub fn name(self) -> &'static str {
        match self {
            Op::Login => "login",
            Op::Heartbeat => "heartbeat",
            Op::Join => "join",
            Op::Leave => "leave",
            Op::Chat => "chat",
            Op::Ack => "ack",
            Op::Logout => "logout",
            Op::LoginOk => "login_ok",
            Op::HeartbeatOk => "heartbeat_ok",
            Op::JoinOk => "join_ok",
            Op::LeaveOk => "leave_ok",
            Op::ChatOk => "chat_ok",
            Op::LogoutOk => "logout_ok",
            Op::Error => "error",
            Op::RoomMsg => "room_msg",
            Op::Online => "online",
            Op::Critical => "critical",
            Op::Kicked => "kicked",
        }
    }

    pub fn from_name(name: &str) -> Option<Op> {
        Op::ALL.iter().copied().find(|op| op.name() == name)
    }

    /// Whether a client may send this op.
    pub fn is_request(self) -> bool {
        self.code() < 64
    }

    /// The reply op for a request op.
    pub fn reply(self) -> Option<Op> {
        match self {
            Op::Login => Some(Op::LoginOk),
            Op::Heartbeat => Some(Op::HeartbeatOk),
            Op::Join => Some(Op::JoinOk),
            Op::Leave => Some(Op::LeaveOk),
            Op::Chat => Some(Op::ChatOk),
            Op::Logout => Some(Op::LogoutOk),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_names_round_trip() {
        for op in Op::ALL {
            assert_eq!(Op::from_code(op.code()), Some(op));
            assert_eq!(Op::from_name(op.name()), Some(op));
        }
        assert_eq!(Op::from_code(0), None);
        assert_eq!(Op::from_name("nope"), None);
    }
}
