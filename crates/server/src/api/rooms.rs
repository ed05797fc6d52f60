//! `GET /rooms` (the busiest rooms), `GET /rooms/{room}` and `GET /rooms/{room}/history`.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use roomcast_core::history::HistoryQuery;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{St, bad, room_param, unavailable};

/// 0 quiet … 5 huge, by online count: <10, <100, <1k, <10k, <100k, more.
pub fn hot_level(online: usize) -> u8 {
    match online {
        0..10 => 0,
        10..100 => 1,
        100..1_000 => 2,
        1_000..10_000 => 3,
        10_000..100_000 => 4,
        _ => 5,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TopQuery {
    top: Option<usize>,
}

pub(super) async fn top_rooms(
    State(s): St,
    q: Result<Query<TopQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return bad("top: a number from 1 to 1000").into_response();
    };
    let n = q.top.unwrap_or(10);
    if !(1..=1000).contains(&n) {
        return bad("top: a number from 1 to 1000").into_response();
    }
    let rooms: Vec<Value> = s
        .gateway
        .top_rooms(n)
        .into_iter()
        .map(|(room, _)| {
            let online = s.gateway.room_online(&room);
            json!({ "room_id": room.as_str(), "online": online, "hot_level": hot_level(online as usize) })
        })
        .collect();
    Json(json!({ "rooms": rooms })).into_response()
}

pub(super) async fn room_info(State(s): St, Path(room): Path<String>) -> Response {
    let room = match room_param(&room) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let online = s.gateway.room_online(&room);
    let nodes = match s.gateway.deps().routes.nodes(&room).await {
        Ok(n) => n,
        Err(e) => return unavailable(e).into_response(),
    };
    let nodes: Vec<&str> = nodes.iter().map(|n| n.as_str()).collect();
    Json(json!({
        "room_id": room.as_str(),
        "online": online,
        "nodes": nodes,
        "hot_level": hot_level(online as usize),
    }))
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HistoryParams {
    limit: Option<u32>,
}

pub(super) async fn room_history(
    State(s): St,
    Path(room): Path<String>,
    q: Result<Query<HistoryParams>, QueryRejection>,
) -> Response {
    let room = match room_param(&room) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let Ok(Query(q)) = q else {
        return bad("limit: a number").into_response();
    };
    let query = HistoryQuery {
        limit: q.limit,
        since: None,
        secs: None,
    };
    match s.gateway.deps().history.query(&room, &query).await {
        Ok(page) => {
            let msgs: Vec<&roomcast_core::model::RoomMsg> =
                page.msgs.iter().map(|m| &**m).collect();
            Json(json!({
                "room_id": room.as_str(),
                "epoch": page.epoch,
                "last_seq": page.last_seq,
                "messages": msgs,
            }))
            .into_response()
        }
        Err(e) => unavailable(e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hot_levels() {
        assert_eq!(hot_level(0), 0);
        assert_eq!(hot_level(9), 0);
        assert_eq!(hot_level(10), 1);
        assert_eq!(hot_level(5_000), 3);
        assert_eq!(hot_level(1_000_000), 5);
    }
}
