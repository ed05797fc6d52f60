//! `proto/roomcast.proto` is what client authors read; the server encodes with the Rust types in
//! `body.rs`. This test fills every field the .proto names (through the JSON names), encodes
//! with the Rust type, and checks that exactly the .proto's tags come out — a renamed, missing
//! or re-numbered field fails it.

use std::collections::{BTreeMap, BTreeSet};

use roomcast_proto::body;
use serde_json::{Value, json};

#[derive(Debug)]
struct Field {
    ty: String,
    name: String,
    tag: u32,
    repeated: bool,
}

fn parse_proto(text: &str) -> BTreeMap<String, Vec<Field>> {
    let mut out = BTreeMap::new();
    let mut current: Option<(String, Vec<Field>)> = None;
    for line in text.lines() {
        let line = line.split("//").next().unwrap().trim();
        if let Some(rest) = line.strip_prefix("message ") {
            let name = rest
                .trim_end_matches("{}")
                .trim_end_matches('{')
                .trim()
                .to_owned();
            if line.ends_with("{}") {
                out.insert(name, Vec::new());
            } else {
                current = Some((name, Vec::new()));
            }
        } else if line == "}" {
            if let Some((name, fields)) = current.take() {
                out.insert(name, fields);
            }
        } else if let Some((_, fields)) = current.as_mut()
            && line.ends_with(';')
        {
            let words: Vec<&str> = line.trim_end_matches(';').split_whitespace().collect();
            let (repeated, words) = match words[0] {
                "repeated" => (true, &words[1..]),
                "optional" => (false, &words[1..]),
                _ => (false, &words[..]),
            };
            fields.push(Field {
                ty: words[0].to_owned(),
                name: words[1].to_owned(),
                tag: words[3].parse().unwrap(),
                repeated,
            });
        }
    }
    out
}

fn sample(ty: &str, schema: &BTreeMap<String, Vec<Field>>) -> Value {
    match ty {
        "string" => json!("x"),
        "uint32" | "uint64" => json!(7),
        "bool" => json!(true),
        msg => full(msg, schema),
    }
}

fn full(msg: &str, schema: &BTreeMap<String, Vec<Field>>) -> Value {
    let mut obj = serde_json::Map::new();
    for f in &schema[msg] {
        let v = sample(&f.ty, schema);
        obj.insert(f.name.clone(), if f.repeated { json!([v]) } else { v });
    }
    Value::Object(obj)
}

/// The top-level tags present in protobuf bytes.
fn tags(mut b: &[u8]) -> BTreeSet<u32> {
    fn varint(b: &mut &[u8]) -> u64 {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = b[0];
            *b = &b[1..];
            v |= ((byte & 0x7f) as u64) << shift;
            if byte & 0x80 == 0 {
                break;
            }
        }
        v
    }
    let mut out = BTreeSet::new();
    while !b.is_empty() {
        let key = varint(&mut b);
        out.insert((key >> 3) as u32);
        match key & 7 {
            0 => {
                varint(&mut b);
            }
            2 => {
                let len = varint(&mut b) as usize;
                b = &b[len..];
            }
            t => panic!("unexpected wire type {t}"),
        }
    }
    out
}

fn encoded<T: roomcast_proto::wire::Body>(v: Value) -> Vec<u8> {
    serde_json::from_value::<T>(v)
        .expect("JSON names match")
        .encode_to_vec()
}

type Encoder = fn(Value) -> Vec<u8>;

#[test]
fn proto_file_matches_the_rust_types() {
    let schema = parse_proto(include_str!("../../../proto/roomcast.proto"));
    let encoders: Vec<(&str, Encoder)> = vec![
        ("Login", encoded::<body::Login>),
        ("Heartbeat", encoded::<body::Heartbeat>),
        ("Since", encoded::<body::Since>),
        ("Join", encoded::<body::Join>),
        ("Leave", encoded::<body::Leave>),
        ("Chat", encoded::<body::Chat>),
        ("Ack", encoded::<body::Ack>),
        ("Logout", encoded::<body::Logout>),
        ("LogoutOk", encoded::<body::LogoutOk>),
        ("LoginOk", encoded::<body::LoginOk>),
        ("HeartbeatOk", encoded::<body::HeartbeatOk>),
        ("JoinOk", encoded::<body::JoinOk>),
        ("LeaveOk", encoded::<body::LeaveOk>),
        ("ChatOk", encoded::<body::ChatOk>),
        ("Error", encoded::<body::Error>),
        ("RoomMsg", encoded::<body::RoomMsg>),
        ("Online", encoded::<body::Online>),
        ("Critical", encoded::<body::Critical>),
        ("Kicked", encoded::<body::Kicked>),
    ];
    let covered: BTreeSet<&str> = encoders.iter().map(|(n, _)| *n).collect();
    let declared: BTreeSet<&str> = schema.keys().map(String::as_str).collect();
    assert_eq!(
        covered, declared,
        "every message in the .proto has a Rust type here"
    );
    for (name, encode) in encoders {
        let want: BTreeSet<u32> = schema[name].iter().map(|f| f.tag).collect();
        let got = tags(&encode(full(name, &schema)));
        assert_eq!(got, want, "{name}: tags from the Rust type vs the .proto");
    }
}
