//! The route table in Redis (R3, R21): `room:subs:{roomId}` is the design's set of gateway nodes
//! with members in the room; each node's routes live under its lease `node:lease:{nodeId}` (a key
//! with a TTL the node renews) and are indexed by `node:rooms:{nodeId}` so `drop_node` removes
//! them in one call. `nodes` filters the set by live leases in one Lua script, so a crashed
//! node's routes are invisible once its lease expires. `node:all` lists every node that took a
//! lease: `collect_dead` deletes the routes of those whose lease is gone (every gateway runs it
//! as it reconciles). `reconcile` re-asserts a node's whole route set in one script — the
//! missing routes added, the stale ones removed, the lease renewed — so a lost write, a flush
//! or a fail-over to a replica that lagged is repaired by the node's next renewal.
//!
//! Changes are published on `{prefix}routes` and reported to this process's watchers directly,
//! before the call returns; a task forwards the other nodes' changes from the channel (after a
//! reconnect it reports `Lagged`). A lease that expires is not published (Redis would need
//! keyspace notifications): caches bound their age (`worker.route_cache_ms`).

use std::time::Duration;

use futures_util::StreamExt;
use redis::{AsyncCommands, Script};
use roomcast_core::BoxFut;
use roomcast_core::ids::{NodeId, RoomId};
use roomcast_core::ports::{Reconciled, RouteChange, RouteError, RouteTable, RouteWatch};
use tokio::sync::broadcast;

use super::RedisConn;

/// KEYS: room set, lease prefix. ARGV: none. Returns the members whose lease key exists.
const LIVE: &str = r#"
local out = {}
for _, n in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', KEYS[2] .. n) == 1 then table.insert(out, n) end
end
return out
"#;

/// KEYS: node's rooms index, room prefix, lease, the set of nodes, room-online prefix. ARGV:
/// node. Returns how many rooms.
const DROP: &str = r#"
local rooms = redis.call('SMEMBERS', KEYS[1])
for _, r in ipairs(rooms) do
  redis.call('SREM', KEYS[2] .. r, ARGV[1])
  redis.call('HDEL', KEYS[5] .. r, ARGV[1])
end
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('SREM', KEYS[4], ARGV[1])
return #rooms
"#;

/// KEYS: node's rooms index, room prefix, lease, the set of nodes, room-online prefix. ARGV:
/// node, ttl ms, then the rooms the node has members in (a removed room's count goes too). Makes the node's routes exactly those rooms and renews the
/// lease. Returns {added, removed}.
const RECONCILE: &str = r#"
local node = ARGV[1]
local want = {}
for i = 3, #ARGV do want[ARGV[i]] = true end
local added, removed = 0, 0
for _, r in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if not want[r] then
    removed = removed + redis.call('SREM', KEYS[2] .. r, node)
    redis.call('SREM', KEYS[1], r)
    redis.call('HDEL', KEYS[5] .. r, node)
  end
end
for i = 3, #ARGV do
  added = added + redis.call('SADD', KEYS[2] .. ARGV[i], node)
  redis.call('SADD', KEYS[1], ARGV[i])
end
redis.call('SET', KEYS[3], '1', 'PX', ARGV[2])
redis.call('SADD', KEYS[4], node)
return {added, removed}
"#;

/// KEYS: the set of nodes, lease prefix, rooms-index prefix, room prefix, room-online prefix.
/// Deletes the routes (and room counts) of every node whose lease is gone. Returns those nodes.
const COLLECT: &str = r#"
local dead = {}
for _, n in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', KEYS[2] .. n) == 0 then
    local idx = KEYS[3] .. n
    for _, r in ipairs(redis.call('SMEMBERS', idx)) do
      redis.call('SREM', KEYS[4] .. r, n)
      redis.call('HDEL', KEYS[5] .. r, n)
    end
    redis.call('DEL', idx)
    redis.call('SREM', KEYS[1], n)
    table.insert(dead, n)
  end
end
return dead
"#;

pub struct RedisRouteTable {
    redis: RedisConn,
    tx: broadcast::Sender<RouteChange>,
    /// Tags this process's publications, so the forwarder skips them (already reported).
    instance: String,
    live: Script,
    drop: Script,
    reconcile: Script,
    collect: Script,
    forwarder: tokio::task::JoinHandle<()>,
}

impl Drop for RedisRouteTable {
    fn drop(&mut self) {
        self.forwarder.abort();
    }
}

impl RedisRouteTable {
    /// Starts the task that forwards other nodes' changes (needs a tokio runtime).
    pub fn new(redis: RedisConn) -> Self {
        let (tx, _) = broadcast::channel(1024);
        let instance = format!("{:016x}", fastrand::u64(..));
        let forwarder = tokio::spawn(forward(
            redis.client().clone(),
            redis.key(&["routes"]),
            instance.clone(),
            tx.clone(),
        ));
        RedisRouteTable {
            redis,
            tx,
            instance,
            live: Script::new(LIVE),
            drop: Script::new(DROP),
            reconcile: Script::new(RECONCILE),
            collect: Script::new(COLLECT),
            forwarder,
        }
    }

    fn room_key(&self, room: &RoomId) -> String {
        self.redis.key(&["room", "subs", room.as_str()])
    }

    fn lease_key(&self, node: &NodeId) -> String {
        self.redis.key(&["node", "lease", node.as_str()])
    }

    fn index_key(&self, node: &NodeId) -> String {
        self.redis.key(&["node", "rooms", node.as_str()])
    }

    /// Every node that took a lease: where [`RouteTable::collect_dead`] looks for dead ones.
    fn nodes_key(&self) -> String {
        self.redis.key(&["node", "all"])
    }

    /// Reports a change here, then to the other nodes.
    async fn changed(&self, change: RouteChange) -> Result<(), RouteError> {
        let _ = self.tx.send(change.clone());
        let msg = match change {
            RouteChange::Room(r) => format!("{}|R|{}", self.instance, r.as_str()),
            RouteChange::Node(n) => format!("{}|N|{}", self.instance, n.as_str()),
            RouteChange::Lagged => return Ok(()),
        };
        let mut conn = self.redis.conn();
        conn.publish::<_, _, ()>(self.redis.key(&["routes"]), msg)
            .await
            .map_err(err)
    }
}

fn err(e: redis::RedisError) -> RouteError {
    RouteError(e.to_string())
}

/// Forwards the other nodes' changes into `tx` until aborted; `Lagged` after every reconnect.
async fn forward(
    client: redis::Client,
    channel: String,
    instance: String,
    tx: broadcast::Sender<RouteChange>,
) {
    let mut first = true;
    loop {
        let sub = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let mut pubsub = match sub.await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "route change feed: cannot subscribe; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if !first {
            let _ = tx.send(RouteChange::Lagged);
        }
        first = false;
        let mut messages = pubsub.on_message();
        while let Some(m) = messages.next().await {
            let Ok(text) = m.get_payload::<String>() else {
                continue;
            };
            let mut parts = text.splitn(3, '|');
            let (Some(from), Some(kind), Some(id)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if from == instance {
                continue;
            }
            let change = match kind {
                "R" => RoomId::parse(id).ok().map(RouteChange::Room),
                "N" => Some(RouteChange::Node(NodeId::new(id))),
                _ => None,
            };
            if let Some(c) = change {
                let _ = tx.send(c);
            }
        }
        tracing::warn!("route change feed: connection lost; resubscribing");
    }
}

impl RouteTable for RedisRouteTable {
    fn add(&self, room: &RoomId, node: &NodeId) -> BoxFut<'_, Result<(), RouteError>> {
        let (room, node) = (room.clone(), node.clone());
        Box::pin(async move {
            let mut conn = self.redis.conn();
            redis::pipe()
                .atomic()
                .sadd(self.room_key(&room), node.as_str())
                .sadd(self.index_key(&node), room.as_str())
                .query_async::<()>(&mut conn)
                .await
                .map_err(err)?;
            self.changed(RouteChange::Room(room)).await
        })
    }

    fn remove(&self, room: &RoomId, node: &NodeId) -> BoxFut<'_, Result<(), RouteError>> {
        let (room, node) = (room.clone(), node.clone());
        Box::pin(async move {
            let mut conn = self.redis.conn();
            redis::pipe()
                .atomic()
                .srem(self.room_key(&room), node.as_str())
                .srem(self.index_key(&node), room.as_str())
                .query_async::<()>(&mut conn)
                .await
                .map_err(err)?;
            self.changed(RouteChange::Room(room)).await
        })
    }

    fn nodes(&self, room: &RoomId) -> BoxFut<'_, Result<Vec<NodeId>, RouteError>> {
        let room = room.clone();
        Box::pin(async move {
            let mut conn = self.redis.conn();
            let mut live: Vec<String> = self
                .live
                .key(self.room_key(&room))
                .key(self.redis.key(&["node", "lease", ""]))
                .invoke_async(&mut conn)
                .await
                .map_err(err)?;
            live.sort();
            Ok(live.iter().map(|n| NodeId::new(n)).collect())
        })
    }

    fn renew(&self, node: &NodeId, ttl: Duration) -> BoxFut<'_, Result<bool, RouteError>> {
        let node = node.clone();
        Box::pin(async move {
            let mut conn = self.redis.conn();
            // SET … GET: whether the lease had run out (its routes become visible again, or
            // were lost with it: the caller reconciles).
            let (old,): (Option<String>,) = redis::pipe()
                .cmd("SET")
                .arg(self.lease_key(&node))
                .arg("1")
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64)
                .arg("GET")
                .cmd("SADD")
                .arg(self.nodes_key())
                .arg(node.as_str())
                .ignore()
                .query_async(&mut conn)
                .await
                .map_err(err)?;
            let lapsed = old.is_none();
            if lapsed {
                self.changed(RouteChange::Node(node)).await?;
            }
            Ok(lapsed)
        })
    }

    fn reconcile<'a>(
        &'a self,
        node: &'a NodeId,
        rooms: &'a [RoomId],
        ttl: Duration,
    ) -> BoxFut<'a, Result<Reconciled, RouteError>> {
        Box::pin(async move {
            let mut conn = self.redis.conn();
            let mut call = self.reconcile.prepare_invoke();
            call.key(self.index_key(node))
                .key(self.redis.key(&["room", "subs", ""]))
                .key(self.lease_key(node))
                .key(self.nodes_key())
                .key(self.redis.key(&["room", "online", ""]))
                .arg(node.as_str())
                .arg(ttl.as_millis().max(1) as u64);
            for r in rooms {
                call.arg(r.as_str());
            }
            let (added, removed): (usize, usize) =
                call.invoke_async(&mut conn).await.map_err(err)?;
            let done = Reconciled { added, removed };
            if done != Reconciled::default() {
                self.changed(RouteChange::Node(node.clone())).await?;
            }
            Ok(done)
        })
    }

    fn collect_dead(&self) -> BoxFut<'_, Result<Vec<NodeId>, RouteError>> {
        Box::pin(async move {
            let mut conn = self.redis.conn();
            let dead: Vec<String> = self
                .collect
                .key(self.nodes_key())
                .key(self.redis.key(&["node", "lease", ""]))
                .key(self.redis.key(&["node", "rooms", ""]))
                .key(self.redis.key(&["room", "subs", ""]))
                .key(self.redis.key(&["room", "online", ""]))
                .invoke_async(&mut conn)
                .await
                .map_err(err)?;
            let dead: Vec<NodeId> = dead.iter().map(|n| NodeId::new(n)).collect();
            for n in &dead {
                self.changed(RouteChange::Node(n.clone())).await?;
            }
            Ok(dead)
        })
    }

    fn drop_node(&self, node: &NodeId) -> BoxFut<'_, Result<usize, RouteError>> {
        let node = node.clone();
        Box::pin(async move {
            let mut conn = self.redis.conn();
            let n: usize = self
                .drop
                .key(self.index_key(&node))
                .key(self.redis.key(&["room", "subs", ""]))
                .key(self.lease_key(&node))
                .key(self.nodes_key())
                .key(self.redis.key(&["room", "online", ""]))
                .arg(node.as_str())
                .invoke_async(&mut conn)
                .await
                .map_err(err)?;
            self.changed(RouteChange::Node(node)).await?;
            Ok(n)
        })
    }

    fn watch(&self) -> RouteWatch {
        RouteWatch::new(self.tx.subscribe())
    }
}
