use roomcast_proto::{Op, Wire};
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn protobuf_json_text_and_json_binary_clients_share_a_room() {
    let s = TestServer::start().await;
    let mut pb = s.client_with("pb", Wire::Proto).await;
    let mut text = s.client_with("text", Wire::JsonText).await;
    let mut bin = s.client_with("bin", Wire::JsonBinary).await;
    let joined = pb.join("mixed").await;
    assert!(joined.body["epoch"].as_u64().unwrap() > 0);
    text.join("mixed").await;
    bin.join("mixed").await;

    assert_eq!(pb.chat("mixed", "from protobuf ✓").await.op, "chat_ok");
    assert_eq!(text.chat("mixed", "from json").await.op, "chat_ok");
    for c in [&mut pb, &mut text, &mut bin] {
        let msgs = c.room_msgs(2).await;
        assert_eq!(msgs[0]["text"], "from protobuf ✓");
        assert_eq!(msgs[0]["user_id"], "pb");
        assert_eq!(msgs[1]["text"], "from json");
        assert_eq!(msgs[0]["seq"], 1);
        assert_eq!(msgs[1]["seq"], 2);
    }
    // Every format reports errors the same way.
    let p = pb
        .call(Op::Chat, json!({ "room_id": "elsewhere", "text": "x" }))
        .await;
    assert_eq!(
        (p.op.as_str(), p.body["code"].as_str()),
        ("error", Some("not_joined"))
    );
    // A protobuf body that does not parse is a bad request, not a crash.
    let mut garbage = Vec::new();
    roomcast_proto::packet::put_header(&mut garbage, Op::Join.code(), 9, 3);
    garbage.extend_from_slice(&[0xff, 0xff, 0xff]);
    pb.send_raw(tokio_tungstenite::tungstenite::Message::binary(garbage))
        .await;
    let p = pb.reply(9).await;
    assert_eq!(p.body["code"], "bad_request");
    assert!(
        p.body["message"].as_str().unwrap().contains("Protobuf"),
        "{p:?}"
    );
}

#[tokio::test]
async fn several_packets_in_one_frame() {
    let s = TestServer::start().await;
    let mut c = s.client("batcher").await;
    // One text frame with an array of requests: each gets its reply.
    let frame = json!([
        { "op": "join", "seq": 10, "body": { "room_id": "a" } },
        { "op": "join", "seq": 11, "body": { "room_id": "b" } },
        { "op": "heartbeat", "seq": 12 }
    ]);
    c.send_raw(tokio_tungstenite::tungstenite::Message::text(
        frame.to_string(),
    ))
    .await;
    assert_eq!(c.reply(10).await.op, "join_ok");
    assert_eq!(c.reply(11).await.op, "join_ok");
    assert_eq!(c.reply(12).await.op, "heartbeat_ok");
}
