//! Time-boxed mutation fuzzing of the server API's request bodies (publish, outbox, critical,
//! broadcast, ban/mute, kick) through `api::check_body`, the same decoding and checks as the
//! handlers without HTTP: no panic, every refusal a 400, allocation within a stated bound.
//! The fuzzer is `roomcast-proto`'s (`crates/proto/tests/fuzzkit`); `ROOMCAST_FUZZ_MS` and
//! `ROOMCAST_FUZZ_SEED` work the same way.

#[path = "../../proto/tests/fuzzkit/mod.rs"]
mod fuzzkit;

use axum::http::StatusCode;
use fuzzkit::{Bound, CountingAlloc};
use roomcast_server::api::{ApiBody, MAX_CRITICAL_USERS, check_body};
use serde_json::json;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// The default `ingest.max_text_chars`.
const MAX_TEXT_CHARS: usize = 300;

/// Valid bodies of every kind, prefixed with the kind's index.
fn seeds() -> Vec<Vec<u8>> {
    let payload = json!({"gift": "rocket", "count": 2, "tags": ["a", "é"], "x": 1.5, "n": null});
    let bodies = [
        (
            ApiBody::Publish,
            json!({"kind": "gift", "text": "hello ✨", "payload": payload, "user_id": "alice",
                   "name": "Alice", "critical": false}),
        ),
        (ApiBody::Publish, json!({"text": "hi", "critical": true})),
        (
            ApiBody::Outbox,
            json!({"room_id": "lobby", "kind": "system", "text": "paid", "payload": payload,
                   "user_id": "system", "name": "Shop"}),
        ),
        (
            ApiBody::Critical,
            json!({"user_ids": ["alice", "bob", "alice"], "kind": "admin", "text": "hello",
                   "payload": [1, 2, 3], "room_id": "lobby"}),
        ),
        (
            ApiBody::Broadcast,
            json!({"kind": "system", "text": "maintenance", "payload": {"at": 10}}),
        ),
        (
            ApiBody::Sanction,
            json!({"duration_s": 600, "reason": "spam"}),
        ),
        (ApiBody::Kick, json!({"reason": "flooding"})),
    ];
    let mut seeds: Vec<Vec<u8>> = bodies
        .iter()
        .map(|(which, body)| {
            let i = ApiBody::ALL.iter().position(|w| w == which).unwrap() as u8;
            let mut seed = vec![i];
            seed.extend(serde_json::to_vec(body).unwrap());
            seed
        })
        .collect();
    // Empty bodies (valid for ban, mute and kick).
    seeds.push(vec![4]);
    seeds.push(vec![5, b' ', b'\n']);
    seeds
}

#[test]
fn seeds_are_accepted() {
    for seed in seeds() {
        let which = ApiBody::ALL[usize::from(seed[0])];
        assert!(
            check_body(which, &seed[1..], MAX_TEXT_CHARS).is_ok(),
            "{which:?} {}",
            String::from_utf8_lossy(&seed[1..])
        );
    }
    let users: Vec<String> = (0..=MAX_CRITICAL_USERS).map(|i| format!("u{i}")).collect();
    let too_many = serde_json::to_vec(&json!({"user_ids": users, "text": "x"})).unwrap();
    let e = check_body(ApiBody::Critical, &too_many, MAX_TEXT_CHARS).unwrap_err();
    assert_eq!(e.status(), StatusCode::BAD_REQUEST);
}

#[test]
fn api_request_bodies() {
    let seeds = seeds();
    let r = fuzzkit::run(
        "api_request_bodies",
        &seeds,
        // serde_json values (arrays, maps, nested) and error messages that quote the input.
        Bound {
            base: 4096,
            per_byte: 64,
            cap: 64 * fuzzkit::MAX_INPUT,
        },
        |input, _| {
            let Some((&sel, body)) = input.split_first() else {
                return;
            };
            let which = ApiBody::ALL[usize::from(sel) % ApiBody::ALL.len()];
            if let Err(e) = check_body(which, body, MAX_TEXT_CHARS) {
                let status = e.status();
                assert_eq!(status, StatusCode::BAD_REQUEST, "{which:?}");
            }
        },
    );
    assert!(r.inputs > seeds.len() as u64);
}
