//! The binary packet: `magic u16 | version u8 | op u8 | seq u32 | body_len u32 | body`.
//!
//! Big-endian, 12-byte header. One WebSocket binary frame holds one or more packets back to back.
//! Parsing never panics and never allocates; a broken header stops the walk through a frame
//! (nothing after it can be trusted), an oversized body is reported and skipped.

/// `"RC"`.
pub const MAGIC: u16 = 0x5243;
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 12;

/// One packet borrowed from a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    pub op: u8,
    pub seq: u32,
    pub body: &'a [u8],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("truncated packet: {have} bytes left, header says {need}")]
    Truncated { need: usize, have: usize },
    #[error("bad magic 0x{0:04x} (expected 0x5243)")]
    BadMagic(u16),
    #[error("unsupported protocol version {0} (expected 1)")]
    BadVersion(u8),
    #[error("packet body of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        op: u8,
        seq: u32,
        len: usize,
        max: usize,
    },
}

impl PacketError {
    /// The request `seq` the error can be attributed to, when the header was readable.
    pub fn seq(&self) -> u32 {
        match self {
            PacketError::TooLarge { seq, .. } => *seq,
            _ => 0,
        }
    }
}

/// Appends a packet header.
#[inline]
pub fn put_header(out: &mut Vec<u8>, op: u8, seq: u32, body_len: u32) {
    out.extend_from_slice(&MAGIC.to_be_bytes());
    out.push(VERSION);
    out.push(op);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&body_len.to_be_bytes());
}

/// Appends a header with a zero length, runs `body` to append the body, then patches the length.
#[inline]
pub fn put_packet<E>(
    out: &mut Vec<u8>,
    op: u8,
    seq: u32,
    body: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<(), E> {
    let start = out.len();
    put_header(out, op, seq, 0);
    body(out)?;
    let len = (out.len() - start - HEADER_LEN) as u32;
    out[start + 8..start + 12].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Iterates over the packets of one binary frame.
pub struct Packets<'a> {
    buf: &'a [u8],
    max_body: usize,
    done: bool,
}

impl<'a> Packets<'a> {
    pub fn new(buf: &'a [u8], max_body: usize) -> Self {
        Packets {
            buf,
            max_body,
            done: buf.is_empty(),
        }
    }
}

impl<'a> Iterator for Packets<'a> {
    type Item = Result<Packet<'a>, PacketError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let buf = self.buf;
        if buf.len() < HEADER_LEN {
            self.done = true;
            return Some(Err(PacketError::Truncated {
                need: HEADER_LEN,
                have: buf.len(),
            }));
        }
        let magic = u16::from_be_bytes([buf[0], buf[1]]);
        if magic != MAGIC {
            self.done = true;
            return Some(Err(PacketError::BadMagic(magic)));
        }
        if buf[2] != VERSION {
            self.done = true;
            return Some(Err(PacketError::BadVersion(buf[2])));
        }
        let op = buf[3];
        let seq = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        let len = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
        let rest = &buf[HEADER_LEN..];
        if len > self.max_body {
            // The body may be present (then it can be skipped) or cut off (then nothing follows).
            if rest.len() >= len {
                self.buf = &rest[len..];
                self.done = self.buf.is_empty();
            } else {
                self.done = true;
            }
            return Some(Err(PacketError::TooLarge {
                op,
                seq,
                len,
                max: self.max_body,
            }));
        }
        if rest.len() < len {
            self.done = true;
            return Some(Err(PacketError::Truncated {
                need: len,
                have: rest.len(),
            }));
        }
        self.buf = &rest[len..];
        self.done = self.buf.is_empty();
        Some(Ok(Packet {
            op,
            seq,
            body: &rest[..len],
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn packet(op: u8, seq: u32, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_header(&mut out, op, seq, body.len() as u32);
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn walks_several_packets() {
        let mut frame = packet(3, 7, b"{}");
        frame.extend(packet(5, 8, b"hello"));
        let got: Vec<_> = Packets::new(&frame, 4096).collect();
        assert_eq!(
            got,
            vec![
                Ok(Packet {
                    op: 3,
                    seq: 7,
                    body: b"{}"
                }),
                Ok(Packet {
                    op: 5,
                    seq: 8,
                    body: b"hello"
                })
            ]
        );
    }

    #[test]
    fn put_packet_patches_length() {
        let mut out = Vec::new();
        put_packet::<()>(&mut out, 9, 1, |b| {
            b.extend_from_slice(b"abc");
            Ok(())
        })
        .unwrap();
        assert_eq!(out, packet(9, 1, b"abc"));
    }

    #[test]
    fn reports_bad_magic_version_and_truncation() {
        let mut bad = packet(1, 1, b"x");
        bad[0] = 0;
        assert!(matches!(
            Packets::new(&bad, 10).next(),
            Some(Err(PacketError::BadMagic(_)))
        ));
        let mut bad = packet(1, 1, b"x");
        bad[2] = 9;
        assert_eq!(
            Packets::new(&bad, 10).next(),
            Some(Err(PacketError::BadVersion(9)))
        );
        let bad = &packet(1, 1, b"xyz")[..13];
        assert_eq!(
            Packets::new(bad, 10).next(),
            Some(Err(PacketError::Truncated { need: 3, have: 1 }))
        );
        assert_eq!(
            Packets::new(&[1, 2, 3], 10).next(),
            Some(Err(PacketError::Truncated { need: 12, have: 3 }))
        );
    }

    #[test]
    fn skips_an_oversized_body_and_goes_on() {
        let mut frame = packet(5, 1, &[b'a'; 20]);
        frame.extend(packet(2, 2, b"{}"));
        let got: Vec<_> = Packets::new(&frame, 10).collect();
        assert_eq!(got.len(), 2);
        assert!(matches!(
            got[0],
            Err(PacketError::TooLarge {
                seq: 1,
                len: 20,
                ..
            })
        ));
        assert_eq!(
            got[1],
            Ok(Packet {
                op: 2,
                seq: 2,
                body: b"{}"
            })
        );
    }

    proptest! {
        #[test]
        fn never_panics_and_terminates(data in proptest::collection::vec(any::<u8>(), 0..256), max in 0usize..64) {
            let n = Packets::new(&data, max).take(1000).count();
            prop_assert!(n <= data.len() / HEADER_LEN + 1);
        }

        #[test]
        fn round_trips(packets in proptest::collection::vec((any::<u8>(), any::<u32>(), proptest::collection::vec(any::<u8>(), 0..50)), 1..8)) {
            let mut frame = Vec::new();
            for (op, seq, body) in &packets {
                frame.extend(packet(*op, *seq, body));
            }
            let got: Vec<_> = Packets::new(&frame, 64).map(|p| p.unwrap()).collect();
            prop_assert_eq!(got.len(), packets.len());
            for (g, (op, seq, body)) in got.iter().zip(&packets) {
                prop_assert_eq!(g.op, *op);
                prop_assert_eq!(g.seq, *seq);
                prop_assert_eq!(g.body, &body[..]);
            }
        }
    }
}
