// roomcast browser client — a dependency-free ES module implementing docs/protocol.md
// (JSON text frames). Use it straight from a <script type="module">:
//
//   import { RoomcastClient } from "/roomcast.js";
//   const client = new RoomcastClient("ws://127.0.0.1:8080/ws", { token });
//   client.addEventListener("message", (e) => console.log(e.detail.name, e.detail.text));
//   await client.connect();
//   await client.join("lobby");
//   await client.chat("lobby", "hello");
//
// Events (CustomEvent, payload in `event.detail`):
//   "open"         {user_id, heartbeat_s, name?}   after every successful login (also reconnects)
//   "message"      room_msg body (+ `replayed: true` when it filled a gap after a reconnect)
//   "online"       {room_id, count}
//   "critical"     critical body (acked automatically, each msg_id once)
//   "joined"       join_ok body (history included), on first join and every re-join
//   "gap"          {room_id, epoch}  a re-join could not fill a gap (history too short)
//   "servererror"  error body that answers no pending request
//   "kicked"       {code, reason, reconnect?}   the server closed this session on purpose: no
//                  reconnect, except for code "draining" (a gateway restarting), after which
//                  the client reconnects after a short random pause to one of `reconnect`
//                  (other gateways' URLs), or to the same URL when there is none
//   "reconnecting" {attempt, delay_ms, reason}
//   "close"        {code, reason, willReconnect}
//
// Requests return promises that reject with a RoomcastError ({code, message, retry_after_ms?}).

/** An `error` reply from the server, or a local failure (`code` "disconnected", "timeout"). */
export class RoomcastError extends Error {
  constructor(body) {
    super(body.message || body.code);
    this.name = "RoomcastError";
    this.code = body.code;
    this.body = body;
    if (body.retry_after_ms !== undefined) this.retryAfterMs = body.retry_after_ms;
  }
}

// Close codes after which reconnecting cannot help (docs/protocol.md, "Close codes").
const FINAL_CLOSES = new Set([1008, 4002, 4003, 4006]);
const SEEN_CRITICAL_MAX = 2048;

export class RoomcastClient extends EventTarget {
  /**
   * @param {string} url  ws:// or wss:// URL of the gateway's /ws endpoint
   * @param {object} opts
   * @param {string} [opts.token]  a client token
   * @param {() => (string|Promise<string>)} [opts.getToken]  called before every (re)connect
   * @param {number} [opts.requestTimeoutMs=10000]
   * @param {boolean} [opts.reconnect=true]
   * @param {number} [opts.minBackoffMs=500]
   * @param {number} [opts.maxBackoffMs=15000]
   * @param {number} [opts.history=50]  messages to ask for on first join
   * @param {typeof WebSocket} [opts.WebSocket]
   */
  constructor(url, opts = {}) {
    super();
    this.url = url;
    this.opts = {
      requestTimeoutMs: 10000,
      reconnect: true,
      minBackoffMs: 500,
      maxBackoffMs: 15000,
      history: 50,
      ...opts,
    };
    this.WebSocketImpl = opts.WebSocket || globalThis.WebSocket;
    this.ws = null;
    this.seq = 0;
    this.pending = new Map(); // seq -> {resolve, reject, timer, op}
    this.rooms = new Map(); // room_id -> {epoch, seq, joined, early: []}
    this.seenCritical = new Set();
    this.session = null;
    this.closedByUser = false;
    this.attempt = 0;
    this.heartbeatTimer = null;
    this.reconnectTimer = null;
    this.connecting = null;
  }

  /** True while logged in. */
  get connected() {
    return this.session !== null;
  }

  /** Connects and logs in; resolves with the login_ok body. Reconnects on its own afterwards. */
  connect() {
    this.closedByUser = false;
    if (this.session) return Promise.resolve(this.session);
    if (this.connecting) return this.connecting;
    clearTimeout(this.reconnectTimer);
    this.connecting = this._open().finally(() => {
      this.connecting = null;
    });
    return this.connecting;
  }

  /**
   * Logs out: the server leaves every room at once (online counts drop now, not at the
   * heartbeat timeout), forgets this connection's presence, answers and closes with 1000.
   * No reconnect follows. Resolves when the server has answered (or the connection was gone).
   */
  async logout() {
    this.closedByUser = true;
    clearTimeout(this.reconnectTimer);
    this.rooms.clear();
    if (!this.session) {
      if (this.ws) this.ws.close(1000, "bye");
      return;
    }
    try {
      await this._request("logout", {});
    } catch (e) {
      if (e.code !== "disconnected") throw e;
    } finally {
      this._stopHeartbeat();
    }
  }

  /** Closes for good (no reconnect). */
  close() {
    this.closedByUser = true;
    clearTimeout(this.reconnectTimer);
    this._stopHeartbeat();
    if (this.ws) this.ws.close(1000, "bye");
  }

  /**
   * Joins a room; resolves with join_ok. The room is re-joined after every reconnect, asking
   * for the messages missed meanwhile.
   */
  async join(roomId, { history } = {}) {
    const known = this.rooms.get(roomId);
    if (!known) this.rooms.set(roomId, { epoch: null, seq: 0, joined: false, early: [] });
    try {
      return await this._join(roomId, history ?? this.opts.history);
    } catch (e) {
      if (!known) this.rooms.delete(roomId);
      throw e;
    }
  }

  /** Leaves a room. */
  async leave(roomId) {
    this.rooms.delete(roomId);
    return this._request("leave", { room_id: roomId });
  }

  /** Sends a chat line; resolves with {msg_id}. */
  chat(roomId, text) {
    return this._request("chat", { room_id: roomId, text });
  }

  // ---- internals -------------------------------------------------------------------------

  async _open() {
    const token = this.opts.getToken ? await this.opts.getToken() : this.opts.token;
    if (this.closedByUser) {
      throw new RoomcastError({ code: "disconnected", message: "closed by the application" });
    }
    if (this.ws && this.ws.readyState <= 1) this.ws.close(1000, "replaced");
    const ws = new this.WebSocketImpl(this.url, ["roomcast.v1.json"]);
    this.ws = ws;
    await new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.onerror = () => reject(new RoomcastError({ code: "disconnected", message: "cannot connect" }));
      ws.onclose = (e) =>
        reject(new RoomcastError({ code: "disconnected", message: `closed (${e.code})` }));
    });
    ws.onmessage = (e) => this._onFrame(e.data);
    ws.onclose = (e) => this._onClose(ws, e.code, e.reason);
    ws.onerror = () => {};
    let login;
    try {
      login = await this._request("login", { token });
    } catch (e) {
      ws.close(1000, "login failed");
      throw e;
    }
    this.session = login;
    this.attempt = 0;
    this._startHeartbeat(login.heartbeat_s || 30);
    this._emit("open", login);
    // Re-join every room this client was in, asking for what it missed.
    for (const [roomId, st] of this.rooms) {
      if (st.joined) {
        this._join(roomId, this.opts.history).catch((e) => this._emit("servererror", e.body || e));
      }
    }
    return login;
  }

  async _join(roomId, history) {
    const st = this.rooms.get(roomId);
    const body = { room_id: roomId, history };
    const rejoin = st.joined && st.epoch !== null;
    if (rejoin) body.since = { epoch: st.epoch, seq: st.seq };
    st.early = [];
    st.joining = true;
    let ok;
    try {
      ok = await this._request("join", body);
    } finally {
      // Whatever happened, stop holding messages back.
      st.joining = false;
      const early = st.early;
      st.early = [];
      if (!ok) for (const m of early) this._deliver(st, m, false);
    }
    const msgs = ok.history || [];
    if (rejoin) {
      // Fill the gap (after a new epoch, everything of the new epoch is new).
      for (const m of msgs) this._deliver(st, m, true);
      if (ok.recovered === false) {
        this._emit("gap", { room_id: roomId, epoch: ok.epoch });
        // Not recoverable: the server's position is the one to follow from now on — its epoch
        // (a new one after a server crash, even before any message of it arrives) and its
        // last seq. Keeping the old epoch would ask for an impossible recovery on every re-join.
        st.epoch = ok.epoch;
        st.seq = ok.last_seq || 0;
      }
    } else {
      st.epoch = ok.epoch;
      st.seq = msgs.length ? msgs[msgs.length - 1].seq : ok.last_seq || 0;
    }
    if (ok.last_seq !== undefined && st.epoch === ok.epoch && ok.last_seq > st.seq) {
      st.seq = ok.last_seq;
    }
    st.joined = true;
    this._emit("joined", ok);
    // Messages that arrived before join_ok: those after the history.
    const early = st.early;
    st.early = [];
    for (const m of early) this._deliver(st, m, false);
    return ok;
  }

  _deliver(st, m, replayed) {
    if (m.epoch !== st.epoch) {
      st.epoch = m.epoch;
      st.seq = 0;
    } else if (m.seq <= st.seq) {
      return; // already seen
    } else if (!replayed && st.joined && m.seq > st.seq + 1 && !st.joining) {
      // A hole (the server dropped messages while this client read slowly): re-join from the
      // last message seen; this one is delivered after the gap is filled.
      const roomId = m.room_id;
      this._join(roomId, this.opts.history).catch((e) => this._emit("servererror", e.body || e));
      st.early.push(m);
      return;
    }
    st.seq = m.seq;
    // The same event published twice (an outbox row re-sent after a crash) gets a new seq but
    // keeps its msg_id: show it once.
    st.ids ??= new Set();
    if (st.ids.has(m.msg_id)) return;
    st.ids.add(m.msg_id);
    if (st.ids.size > 1024) st.ids.delete(st.ids.values().next().value);
    this._emit("message", replayed ? { ...m, replayed: true } : m);
  }

  _request(op, body) {
    return new Promise((resolve, reject) => {
      const ws = this.ws;
      if (!ws || ws.readyState !== 1) {
        reject(new RoomcastError({ code: "disconnected", message: "not connected" }));
        return;
      }
      this.seq = (this.seq % 0xfffffff0) + 1;
      const seq = this.seq;
      const timer = setTimeout(() => {
        this.pending.delete(seq);
        reject(new RoomcastError({ code: "timeout", message: `${op}: no answer` }));
      }, this.opts.requestTimeoutMs);
      this.pending.set(seq, { resolve, reject, timer, op });
      ws.send(JSON.stringify({ op, seq, body }));
    });
  }

  _send(op, body) {
    if (this.ws && this.ws.readyState === 1) {
      this.ws.send(JSON.stringify({ op, seq: 0, body }));
    }
  }

  _onFrame(data) {
    if (typeof data !== "string") return; // this client asks for JSON text only
    let parsed;
    try {
      parsed = JSON.parse(data);
    } catch {
      return;
    }
    for (const p of Array.isArray(parsed) ? parsed : [parsed]) this._onPacket(p);
  }

  _onPacket({ op, seq, body }) {
    body = body || {};
    const waiter = seq ? this.pending.get(seq) : undefined;
    if (waiter && (op.endsWith("_ok") || op === "error")) {
      this.pending.delete(seq);
      clearTimeout(waiter.timer);
      if (op === "error") waiter.reject(new RoomcastError(body));
      else waiter.resolve(body);
      return;
    }
    switch (op) {
      case "room_msg": {
        const st = this.rooms.get(body.room_id);
        if (!st) return;
        if (st.joining) st.early.push(body);
        else this._deliver(st, body, false);
        return;
      }
      case "online":
        this._emit("online", body);
        return;
      case "critical":
        this._send("ack", { msg_id: body.msg_id });
        if (this.seenCritical.has(body.msg_id)) return;
        this.seenCritical.add(body.msg_id);
        if (this.seenCritical.size > SEEN_CRITICAL_MAX) {
          this.seenCritical.delete(this.seenCritical.values().next().value);
        }
        this._emit("critical", body);
        return;
      case "kicked":
        this.kicked = body;
        if (body.code === "draining" && Array.isArray(body.reconnect) && body.reconnect.length) {
          this.drainUrls = body.reconnect;
        }
        this._emit("kicked", body);
        return;
      case "error":
        this._emit("servererror", body);
        return;
      default:
        return;
    }
  }

  _onClose(ws, code, reason) {
    if (ws !== this.ws) return;
    const loggedIn = this.session !== null;
    this._stopHeartbeat();
    this.session = null;
    for (const [, w] of this.pending) {
      clearTimeout(w.timer);
      w.reject(new RoomcastError({ code: "disconnected", message: `closed (${code})` }));
    }
    this.pending.clear();
    for (const [, st] of this.rooms) st.joining = false;
    // Closed while logging in: connect() rejects and whoever called it decides.
    if (!loggedIn) return;
    const willReconnect = this.opts.reconnect && !this.closedByUser && !FINAL_CLOSES.has(code);
    if (willReconnect && code === 1012) {
      // A draining gateway: go to another one (rooms are re-joined with `since`).
      if (this.drainUrls) this.url = this.drainUrls[Math.floor(Math.random() * this.drainUrls.length)];
      this.drainUrls = null;
      this.attempt = 0;
    }
    this._emit("close", { code, reason, willReconnect });
    if (willReconnect) this._scheduleReconnect(`closed (${code})`);
  }

  _scheduleReconnect(reason) {
    this.attempt += 1;
    const base = Math.min(this.opts.maxBackoffMs, this.opts.minBackoffMs * 2 ** (this.attempt - 1));
    const delay = Math.round(base / 2 + Math.random() * (base / 2)); // "equal jitter"
    this._emit("reconnecting", { attempt: this.attempt, delay_ms: delay, reason });
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => {
      if (this.closedByUser) return;
      this.connect().catch((e) => {
        if (this.closedByUser) return;
        const transient = e.code === "disconnected" || e.code === "timeout";
        // A refused token is final unless getToken can fetch a new one; a ban is final.
        if (transient || (this.opts.getToken && e.code !== "banned")) this._scheduleReconnect(e.message);
        else this._emit("servererror", e.body || { code: "unauthenticated", message: String(e) });
      });
    }, delay);
  }

  _startHeartbeat(periodS) {
    this._stopHeartbeat();
    this.heartbeatTimer = setInterval(() => {
      this._request("heartbeat", {}).catch((e) => {
        // No answer: the connection is dead even if the socket does not know it yet.
        if (e.code === "timeout" && this.ws) this.ws.close(4000, "heartbeat timeout");
      });
    }, periodS * 1000);
  }

  _stopHeartbeat() {
    clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = null;
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
