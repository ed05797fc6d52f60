//! JSON text frames: one packet `{"op":"join","seq":1,"body":{..}}` or an array of packets.
//!
//! Parsing borrows the body as raw JSON, so a body is parsed once, by the handler that knows its
//! type.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

/// One packet of a text frame.
#[derive(Debug, Deserialize)]
pub struct TextPacket<'a> {
    #[serde(borrow)]
    pub op: Cow<'a, str>,
    #[serde(default)]
    pub seq: u32,
    #[serde(borrow, default)]
    pub body: Option<&'a RawValue>,
}

impl TextPacket<'_> {
    /// The body as JSON text (`{}` when absent).
    pub fn body_json(&self) -> &[u8] {
        self.body.map(|b| b.get().as_bytes()).unwrap_or(b"{}")
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid JSON packet: {0}")]
pub struct TextError(#[from] serde_json::Error);

/// Parses a text frame into its packets.
pub fn parse(text: &str) -> Result<Vec<TextPacket<'_>>, TextError> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        Ok(serde_json::from_str(trimmed)?)
    } else {
        Ok(vec![serde_json::from_str(trimmed)?])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_or_many() {
        let one = parse(r#"{"op":"join","seq":3,"body":{"room_id":"a"}}"#).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].op, "join");
        assert_eq!(one[0].seq, 3);
        assert_eq!(one[0].body_json(), br#"{"room_id":"a"}"#);

        let many = parse(r#" [{"op":"heartbeat"},{"op":"leave","seq":9,"body":{"room_id":"a"}}]"#)
            .unwrap();
        assert_eq!(many.len(), 2);
        assert_eq!(many[0].body_json(), b"{}");
        assert_eq!(many[1].seq, 9);
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "x",
            "{",
            r#"{"seq":1}"#,
            r#"{"op":1}"#,
            r#"{"op":"a","seq":-1}"#,
            "[1]",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
