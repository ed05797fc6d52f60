//! Identifier newtypes. Ids cross ports and logs as these types, never as bare strings, and each
//! constructor that takes outside input validates it.

use std::fmt;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{what} must not be empty")]
    Empty { what: &'static str },
    #[error("{what} is longer than {max} bytes")]
    TooLong { what: &'static str, max: usize },
    #[error("{what} contains {found:?}; allowed are {allowed}")]
    BadChar {
        what: &'static str,
        found: char,
        allowed: &'static str,
    },
}

macro_rules! str_id {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", &*self.0)
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

str_id!(
    /// A room: 1–64 bytes of `A-Z a-z 0-9 _ - . :`.
    RoomId
);
str_id!(
    /// A user, as the token's `sub` claim says: 1–128 bytes, no control, direction-override or
    /// zero-width characters ([`crate::text::refused_in_name`]).
    UserId
);
str_id!(
    /// A gateway node in the route table.
    NodeId
);

pub const ROOM_ID_MAX: usize = 64;
pub const USER_ID_MAX: usize = 128;

impl RoomId {
    pub fn parse(s: &str) -> Result<RoomId, IdError> {
        const ALLOWED: &str = "A-Z a-z 0-9 _ - . :";
        if s.is_empty() {
            return Err(IdError::Empty { what: "room_id" });
        }
        if s.len() > ROOM_ID_MAX {
            return Err(IdError::TooLong {
                what: "room_id",
                max: ROOM_ID_MAX,
            });
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')))
        {
            return Err(IdError::BadChar {
                what: "room_id",
                found: c,
                allowed: ALLOWED,
            });
        }
        Ok(RoomId(s.into()))
    }
}

impl UserId {
    pub fn parse(s: &str) -> Result<UserId, IdError> {
        if s.is_empty() {
            return Err(IdError::Empty { what: "user id" });
        }
        if s.len() > USER_ID_MAX {
            return Err(IdError::TooLong {
                what: "user id",
                max: USER_ID_MAX,
            });
        }
        if let Some(c) = s
            .chars()
            .find(|&c| crate::text::refused_in_name(c).is_some())
        {
            return Err(IdError::BadChar {
                what: "user id",
                found: c,
                allowed: "any character but control, direction-override and zero-width characters",
            });
        }
        Ok(UserId(s.into()))
    }
}

impl NodeId {
    pub fn new(s: &str) -> NodeId {
        NodeId(s.into())
    }
}

/// A connection on one gateway node (unique within the node's lifetime).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

/// A message id: time-ordered and unique across nodes (see [`crate::ingest::ids`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MsgId(pub u64);

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_ids() {
        assert!(RoomId::parse("lobby-1:a_b.c").is_ok());
        assert_eq!(RoomId::parse(""), Err(IdError::Empty { what: "room_id" }));
        assert!(matches!(
            RoomId::parse("a b"),
            Err(IdError::BadChar { found: ' ', .. })
        ));
        assert!(matches!(RoomId::parse("é"), Err(IdError::BadChar { .. })));
        assert!(matches!(
            RoomId::parse(&"a".repeat(65)),
            Err(IdError::TooLong { .. })
        ));
        assert!(RoomId::parse(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn user_ids() {
        assert!(UserId::parse("Алиса 42").is_ok());
        assert!(UserId::parse("a\nb").is_err());
        assert!(UserId::parse("").is_err());
        for bad in [
            "ali\u{202E}ce",
            "a\u{2066}b",
            "ad\u{200B}min",
            "a\u{200D}b",
            "\u{FEFF}a",
            "a\u{2060}",
        ] {
            let e = UserId::parse(bad).unwrap_err();
            assert!(
                matches!(
                    e,
                    IdError::BadChar {
                        what: "user id",
                        ..
                    }
                ),
                "{bad:?}: {e}"
            );
            assert!(e.to_string().contains("zero-width"), "{e}");
        }
        assert!(UserId::parse(&"é".repeat(64)).is_ok());
        assert!(
            UserId::parse(&"é".repeat(65)).is_err(),
            "the limit is in bytes"
        );
    }
}
