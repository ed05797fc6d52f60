//! The roomcast wire format, and nothing else.
//!
//! A WebSocket binary frame carries one or more *packets*
//! (`magic u16 | version u8 | op u8 | seq u32 | body_len u32 | body`, big-endian);
//! a text frame carries one JSON packet `{"op":"join","seq":1,"body":{..}}` or an array of them.
//! Bodies are JSON or Protobuf (chosen per connection by WebSocket subprotocol).
//!
//! This crate is pure: no I/O, no async runtime, no allocation it does not need. Everything is a
//! function of bytes so that it can be fuzzed and property-tested, and shared by the gateway, the
//! load generator and any Rust client. It must not learn about rooms, users or sockets.

pub mod body;
pub mod deflate;
pub mod op;
pub mod packet;
pub mod text;
pub mod wire;
pub mod ws;

pub use op::Op;
pub use packet::{HEADER_LEN, MAGIC, PacketError, Packets, VERSION};
pub use wire::{BodyFormat, Wire};
