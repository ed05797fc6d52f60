//! The gRPC adapters over real tonic servers on loopback: what a gateway, an ingest node and a
//! worker say to each other, including when one of them is dead or stuck.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use roomcast_core::BoxFut;
use roomcast_core::config::{IngestConfig, LimitConfig};
use roomcast_core::gateway::RoutedControl;
use roomcast_core::ids::{NodeId, RoomId, UserId};
use roomcast_core::ingest::filter::WordFilter;
use roomcast_core::ingest::{ChatRequest, Ingest, IngestError, IngestService};
use roomcast_core::memory::{
    MemoryAckStore, MemoryBus, MemoryDiscovery, MemoryModeration, MemoryPresence, MemoryRateLimiter,
};
use roomcast_core::metrics::Metrics;
use roomcast_core::model::{MsgKind, RoomBatch, RoomMsg};
use roomcast_core::ports::{
    BusConsumer, BusEvent, Command, Control, ControlTarget, Delivery, DeliveryError, Discovery,
    NodeInfo, NodeRole, Presence, StoreError,
};
use roomcast_rpc::{
    ChannelSettings, DeliverySettings, GatewayNode, GatewayServer, GrpcDelivery, GrpcNodeCommands,
    IngestClient, IngestServer, NodeDirectory,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

/// The longest any test waits for an event.
const WAIT: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

async fn listener() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    (l, addr)
}

fn info(id: &str, role: NodeRole, addr: &str) -> NodeInfo {
    NodeInfo {
        id: NodeId::new(id),
        role,
        addr: addr.to_owned(),
        public_url: None,
    }
}

fn directory(nodes: &[NodeInfo]) -> Arc<NodeDirectory> {
    let d = NodeDirectory::new(ChannelSettings::default());
    d.set(nodes);
    d
}

// ---- gateway -> ingest -------------------------------------------------------------------------

/// A real ingest node (memory bus) served on loopback; returns its address and the bus.
async fn ingest_node(user_rate: f64) -> (String, Arc<MemoryBus>, tokio::task::JoinHandle<()>) {
    let (bus, _) = MemoryBus::new(1, 1024);
    let bus = Arc::new(bus);
    let ingest = Arc::new(IngestService::new(
        IngestConfig {
            user_limit: LimitConfig {
                rate: user_rate,
                burst: 1.0,
            },
            ..IngestConfig::default()
        },
        bus.clone(),
        Arc::new(MemoryRateLimiter::default()),
        Arc::new(MemoryModeration::default()),
        WordFilter::empty(),
        Arc::new(Metrics::default()),
    ));
    let (l, addr) = listener().await;
    let task = tokio::spawn(async move {
        Server::builder()
            .add_service(IngestServer::service(ingest))
            .serve_with_incoming(TcpIncoming::from(l))
            .await
            .unwrap();
    });
    (addr, bus, task)
}

fn chat(room: &str, user: &str, text: &str) -> ChatRequest {
    ChatRequest {
        room: RoomId::parse(room).unwrap(),
        user: UserId::parse(user).unwrap(),
        name: Some("Alice".into()),
        text: text.into(),
        kind: MsgKind::Chat,
        payload: None,
        trusted: false,
        msg_id: None,
    }
}

#[tokio::test]
async fn a_chat_goes_through_ingest_over_grpc_and_refusals_come_back_intact() {
    let (addr, bus, _server) = ingest_node(0.001).await;
    let mut consumer = bus.join();
    let client = IngestClient::new(
        directory(&[info("i1", NodeRole::Ingest, &addr)]),
        Duration::from_secs(2),
    );
    let ok = client.submit(chat("r1", "alice", "hello")).await.unwrap();
    let mut events = Vec::new();
    let msg = within("the record on the bus", async {
        loop {
            consumer.next(&mut events).await.unwrap();
            if let Some(m) = events.drain(..).find_map(BusEvent::into_message) {
                return m;
            }
        }
    })
    .await;
    assert_eq!((msg.msg_id, msg.text.as_str()), (ok.msg_id, "hello"));
    assert_eq!(msg.name.as_deref(), Some("Alice"));

    // The burst of 1 is spent: the limit comes back with its retry time.
    match client.submit(chat("r1", "alice", "again")).await {
        Err(IngestError::RateLimited {
            retry_after_ms,
            scope,
        }) => {
            assert_eq!(scope, "user");
            assert!(retry_after_ms > 1000, "{retry_after_ms}");
        }
        other => panic!("expected a rate limit, got {other:?}"),
    }
    // Bad input is refused by the ingest node with its reason.
    match client.submit(chat("r1", "bob", "   ")).await {
        Err(IngestError::BadRequest(m)) => assert!(m.contains("empty"), "{m}"),
        other => panic!("expected a bad request, got {other:?}"),
    }
}

#[tokio::test]
async fn a_dead_ingest_node_is_skipped_and_none_at_all_is_unavailable() {
    let (addr, _bus, _server) = ingest_node(100.0).await;
    // A port nobody listens on.
    let (dead, dead_addr) = listener().await;
    drop(dead);
    let nodes = directory(&[
        info("i1", NodeRole::Ingest, &dead_addr),
        info("i2", NodeRole::Ingest, &addr),
    ]);
    let client = IngestClient::new(nodes.clone(), Duration::from_secs(2));
    for i in 0..4 {
        client
            .submit(chat("r1", &format!("u{i}"), "hi"))
            .await
            .unwrap_or_else(|e| panic!("call {i} should reach i2: {e}"));
    }
    nodes.down(&NodeId::new("i2"));
    match within("the answer", client.submit(chat("r1", "u9", "hi"))).await {
        Err(IngestError::Unavailable(m)) => assert!(m.contains("i1"), "{m}"),
        other => panic!("expected unavailable, got {other:?}"),
    }
    nodes.down(&NodeId::new("i1"));
    assert!(matches!(
        client.submit(chat("r1", "u9", "hi")).await,
        Err(IngestError::Unavailable(_))
    ));
}

// ---- worker -> gateway -------------------------------------------------------------------------

/// A gateway node that records what it was given.
#[derive(Clone)]
struct Recorder {
    batches: mpsc::UnboundedSender<Arc<RoomBatch>>,
    commands: Arc<Mutex<Vec<Command>>>,
}

impl GatewayNode for Recorder {
    fn deliver(&self, batch: Arc<RoomBatch>) {
        let _ = self.batches.send(batch);
    }
    fn apply(&self, command: Command) -> BoxFut<'_, Result<usize, StoreError>> {
        self.commands.lock().push(command);
        Box::pin(std::future::ready(Ok(1)))
    }
}

async fn gateway_node() -> (
    String,
    mpsc::UnboundedReceiver<Arc<RoomBatch>>,
    Arc<Mutex<Vec<Command>>>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let commands = Arc::new(Mutex::new(Vec::new()));
    let node = Recorder {
        batches: tx,
        commands: commands.clone(),
    };
    let (l, addr) = listener().await;
    tokio::spawn(async move {
        Server::builder()
            .add_service(GatewayServer::service(node))
            .serve_with_incoming(TcpIncoming::from(l))
            .await
            .unwrap();
    });
    (addr, rx, commands)
}

fn batch(room: &str, epoch: u32, seqs: std::ops::RangeInclusive<u64>) -> Arc<RoomBatch> {
    Arc::new(RoomBatch {
        room: RoomId::parse(room).unwrap(),
        epoch,
        msgs: seqs
            .map(|seq| {
                Arc::new(RoomMsg {
                    room_id: room.into(),
                    msg_id: 1000 + seq,
                    seq,
                    user_id: "alice".into(),
                    name: None,
                    text: format!("m{seq} 哈哈哈 👍"),
                    kind: "chat".into(),
                    ts: 1,
                    epoch,
                    payload: Some("{\"gift\":1}".into()),
                })
            })
            .collect(),
        outbox_ids: Vec::new(),
    })
}

async fn received(
    rx: &mut mpsc::UnboundedReceiver<Arc<RoomBatch>>,
    n: usize,
) -> Vec<(String, u64)> {
    let mut got = Vec::new();
    within("batches", async {
        while got.len() < n {
            let b = rx.recv().await.unwrap();
            got.extend(b.msgs.iter().map(|m| (m.room_id.clone(), m.seq)));
        }
    })
    .await;
    got
}

/// A delivery to two gateways: "a" answers (its batches arrive on the receiver), "b" accepts
/// connections and never answers, so every call to it runs into its timeout.
async fn a_live_and_a_stuck_gateway(
    settings: DeliverySettings,
) -> (GrpcDelivery, mpsc::UnboundedReceiver<Arc<RoomBatch>>) {
    let (a_addr, a_rx, _) = gateway_node().await;
    let (stuck, b_addr) = listener().await;
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = stuck.accept().await {
            held.push(s);
        }
    });
    let nodes = directory(&[
        info("a", NodeRole::Gateway, &a_addr),
        info("b", NodeRole::Gateway, &b_addr),
    ]);
    (GrpcDelivery::new(nodes, settings), a_rx)
}

#[tokio::test]
async fn batches_reach_their_gateways_in_order_and_a_stuck_gateway_stalls_no_one() {
    let (delivery, mut a_rx) = a_live_and_a_stuck_gateway(DeliverySettings {
        queue: 100,
        call_timeout: Duration::from_millis(300),
        ..DeliverySettings::default()
    })
    .await;
    let (a, b) = (NodeId::new("a"), NodeId::new("b"));
    // a's connection is up before the burst (the first call connects).
    delivery.deliver(&a, batch("warm", 1, 1..=1)).await.unwrap();
    received(&mut a_rx, 1).await;
    let mut expected = Vec::new();
    for i in 0..200u64 {
        let batch = batch(
            if i % 2 == 0 { "even" } else { "odd" },
            5,
            (i * 3 + 1)..=(i * 3 + 3),
        );
        expected.extend(batch.msgs.iter().map(|m| (m.room_id.clone(), m.seq)));
        // deliver returns at once for both, whatever b does.
        within("deliver to a", delivery.deliver(&a, batch.clone()))
            .await
            .unwrap();
        let _ = within("deliver to b", delivery.deliver(&b, batch)).await;
        // A worker awaits its store and routes between flushes; the senders run meanwhile.
        tokio::task::yield_now().await;
    }
    assert_eq!(
        received(&mut a_rx, 600).await,
        expected,
        "a got all, in order"
    );
    // b's queue (100) overflowed while its first call hung: the rest was dropped, not held.
    assert!(delivery.dropped() >= 90, "dropped {}", delivery.dropped());
    match delivery
        .deliver(&NodeId::new("zz"), batch("x", 1, 1..=1))
        .await
    {
        Err(DeliveryError::UnknownNode(n)) => assert_eq!(n.as_str(), "zz"),
        other => panic!("expected an unknown node, got {other:?}"),
    }
}

/// The worker's pacing over gRPC: a tracked batch counts as written once the call carrying it
/// is answered (the gateway has it; the gateway merges what it gets while a room's pass runs),
/// and a call that fails counts too, so a stuck gateway holds a room for its timeout at most.
#[tokio::test]
async fn a_tracked_batch_is_written_once_its_gateway_answers_or_its_call_fails() {
    let timeout = Duration::from_millis(300);
    let (delivery, mut a_rx) = a_live_and_a_stuck_gateway(DeliverySettings {
        call_timeout: timeout,
        ..DeliverySettings::default()
    })
    .await;
    let (a, b) = (NodeId::new("a"), NodeId::new("b"));
    let written = within(
        "deliver",
        delivery.deliver_tracked(&a, batch("r", 1, 1..=2)),
    )
    .await
    .unwrap();
    within("written", written.wait()).await;
    // Answered means the gateway has it.
    assert_eq!(a_rx.try_recv().unwrap().msgs.len(), 2, "a has the batch");

    let started = tokio::time::Instant::now();
    let mut stuck_write = Box::pin(
        within(
            "deliver",
            delivery.deliver_tracked(&b, batch("r", 1, 3..=3)),
        )
        .await
        .unwrap()
        .wait(),
    );
    // Not written while b has not answered...
    assert!(
        tokio::time::timeout(Duration::from_millis(100), &mut stuck_write)
            .await
            .is_err(),
        "written before the gateway answered"
    );
    // ...and written (given up on) when the call times out, not held any longer.
    within("the call's timeout", stuck_write).await;
    assert!(started.elapsed() >= timeout, "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_gateway_that_leaves_gets_nothing_more() {
    let (a_addr, mut a_rx, _) = gateway_node().await;
    let nodes = directory(&[info("a", NodeRole::Gateway, &a_addr)]);
    let delivery = GrpcDelivery::new(nodes.clone(), DeliverySettings::default());
    let a = NodeId::new("a");
    delivery.deliver(&a, batch("r", 1, 1..=2)).await.unwrap();
    assert_eq!(received(&mut a_rx, 2).await.len(), 2);
    nodes.down(&a);
    assert!(matches!(
        delivery.deliver(&a, batch("r", 1, 3..=3)).await,
        Err(DeliveryError::UnknownNode(_))
    ));
    // Back under the same id (a restart): pushes resume.
    nodes.up(&info("a", NodeRole::Gateway, &a_addr));
    delivery.deliver(&a, batch("r", 1, 4..=4)).await.unwrap();
    assert_eq!(received(&mut a_rx, 1).await, [("r".to_owned(), 4)]);
}

// ---- server API -> gateways --------------------------------------------------------------------

#[tokio::test]
async fn control_reaches_the_users_gateways_through_discovery_and_presence() {
    let (a_addr, _a_rx, a_cmds) = gateway_node().await;
    let (b_addr, _b_rx, b_cmds) = gateway_node().await;
    let discovery = Arc::new(MemoryDiscovery::default());
    let _la = discovery
        .register(
            info("a", NodeRole::Gateway, &a_addr),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let _lb = discovery
        .register(
            info("b", NodeRole::Gateway, &b_addr),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let nodes = NodeDirectory::new(ChannelSettings::default());
    let _follow = nodes.follow(discovery.clone(), NodeRole::Gateway).await;
    assert_eq!(
        nodes.len(),
        2,
        "the first listing is in before follow returns"
    );
    let presence = Arc::new(MemoryPresence::default());
    presence
        .touch(
            &UserId::parse("alice").unwrap(),
            &NodeId::new("b"),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let control = RoutedControl::new(
        presence,
        discovery,
        Arc::new(MemoryAckStore::default()),
        Arc::new(GrpcNodeCommands::new(nodes, Duration::from_secs(2))),
    );
    let kick = Command::Kick {
        user: UserId::parse("alice").unwrap(),
        close_code: 4003,
        code: "banned".into(),
        reason: "spam".into(),
    };
    let r = control
        .send(
            ControlTarget::User(UserId::parse("alice").unwrap()),
            kick.clone(),
        )
        .await
        .unwrap();
    assert_eq!((r.nodes, r.count), (1, 1));
    assert_eq!(*b_cmds.lock(), [kick], "the command arrives whole on b");
    assert!(a_cmds.lock().is_empty(), "a does not hold alice");
}
