// The live-room demo page served at / in standalone. Uses the client library exactly as an
// application would; tokens come from the dev-only endpoint POST /dev/token.
import { RoomcastClient } from "/roomcast.js";

const $ = (id) => document.getElementById(id);
const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;

let client = null;
let room = null;
let token = null;

// ---- toasts ---------------------------------------------------------------------------------

function toast(text, kind = "warn", ms = 4000) {
  const el = document.createElement("div");
  el.className = "toast";
  el.dataset.kind = kind;
  el.textContent = text;
  $("toasts").append(el);
  setTimeout(() => el.remove(), ms);
}

function explain(err) {
  switch (err.code) {
    case "rate_limited": {
      const s = Math.max(1, Math.ceil((err.retryAfterMs ?? err.body?.retry_after_ms ?? 1000) / 1000));
      return [`You're sending too fast — try again in ${s} s.`, "warn"];
    }
    case "content_rejected":
      return ["That message contains words that aren't allowed here.", "error"];
    case "muted":
      return ["You are muted in this room.", "error"];
    case "banned":
      return ["You are banned from chatting.", "error"];
    case "too_large":
      return ["That message is too long.", "error"];
    case "disconnected":
    case "timeout":
      return ["Not connected — reconnecting…", "warn"];
    default:
      return [err.message || String(err), "error"];
  }
}

// ---- danmaku: lanes, constant speed, no overlap ----------------------------------------------

const SPEED_PX_S = 160; // every item moves at the same speed, so none can catch up with another
const GAP_PX = 28;
const lanes = []; // per lane: time (ms) when a new item may enter
const waiting = [];
let waitTimer = null;

function laneCount() {
  const h = $("danmaku").clientHeight;
  const line = parseFloat(getComputedStyle(document.documentElement).fontSize) * 1.9;
  return Math.max(1, Math.floor((h * 0.8) / line)); // keep the bottom fifth clear
}

function danmaku(msg) {
  waiting.push(msg);
  if (waiting.length > 100) waiting.shift(); // a flood drops the oldest, not the newest
  pump();
}

function pump() {
  clearTimeout(waitTimer);
  const n = laneCount();
  while (lanes.length < n) lanes.push(0);
  lanes.length = n;
  const now = performance.now();
  while (waiting.length) {
    const lane = lanes.findIndex((t) => t <= now);
    if (lane < 0) break;
    fly(waiting.shift(), lane, n, now);
  }
  if (waiting.length) {
    const soonest = Math.min(...lanes);
    waitTimer = setTimeout(pump, Math.max(16, soonest - now));
  }
}

function fly(msg, lane, n, now) {
  const box = $("danmaku");
  const el = document.createElement("div");
  el.className = "dm" + (msg.kind === "gift" ? " gift" : "");
  el.textContent = msg.kind === "gift" ? `🎁 ${msg.name || msg.user_id} ${msg.text}` : msg.text;
  el.dataset.msgId = msg.msg_id;
  box.append(el);
  const W = box.clientWidth;
  const w = el.offsetWidth;
  const laneH = (box.clientHeight * 0.8) / n;
  el.style.top = `${lane * laneH}px`;
  const duration = ((W + w) / SPEED_PX_S) * 1000;
  lanes[lane] = now + ((w + GAP_PX) / SPEED_PX_S) * 1000;
  const anim = el.animate(
    [{ transform: `translateX(${W}px)` }, { transform: `translateX(${-w}px)` }],
    { duration, easing: "linear" },
  );
  anim.onfinish = () => el.remove();
}

// ---- chat list -----------------------------------------------------------------------------

function addLine(msg, { history = false } = {}) {
  const list = $("chat");
  const li = document.createElement("li");
  li.className = msg.kind === "gift" ? "gift" : msg.kind === "system" ? "system" : "chat";
  if (history) li.classList.add("history");
  li.dataset.msgId = msg.msg_id;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = msg.name || msg.user_id;
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = msg.kind === "gift" ? `sent ${msg.text}` : msg.text;
  li.append(who, text);
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  list.append(li);
  while (list.children.length > 300) list.firstElementChild.remove();
  if (atBottom || !history) list.scrollTop = list.scrollHeight;
}

function systemLine(text) {
  addLine({ kind: "system", user_id: "·", text, msg_id: "" });
}

// ---- session ---------------------------------------------------------------------------------

function setStatus(state, text) {
  $("status").dataset.state = state;
  $("status").textContent = text;
}

function setEnabled(on) {
  for (const id of ["text", "send", "gift", "heart"]) $(id).disabled = !on;
}

async function fetchToken(nick) {
  const r = await fetch("/dev/token", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ name: nick }),
  });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error?.message || `token request failed (${r.status})`);
  return body;
}

async function enter(nick, roomId) {
  if (client) client.close();
  $("chat").replaceChildren();
  setEnabled(false);
  setStatus("connecting", "connecting…");
  let saved = null;
  try {
    saved = JSON.parse(localStorage.getItem("roomcast.session") || "null");
  } catch {}
  const fresh = !saved || saved.nick !== nick || saved.exp * 1000 < Date.now() + 60_000;
  const t = fresh ? await fetchToken(nick) : saved;
  token = t.token;
  localStorage.setItem(
    "roomcast.session",
    JSON.stringify({ nick, token: t.token, user_id: t.user_id, exp: t.exp }),
  );
  localStorage.setItem("roomcast.room", roomId);
  room = roomId;
  $("stage-title").textContent = `# ${roomId}`;

  client = new RoomcastClient(wsUrl, {
    getToken: async () => {
      const s = JSON.parse(localStorage.getItem("roomcast.session") || "null");
      if (s && s.nick === nick && s.exp * 1000 > Date.now() + 60_000) return s.token;
      const n = await fetchToken(nick);
      localStorage.setItem("roomcast.session", JSON.stringify({ nick, ...n }));
      token = n.token;
      return n.token;
    },
  });
  client.addEventListener("message", (e) => {
    if (e.detail.room_id !== room) return;
    addLine(e.detail);
    danmaku(e.detail);
  });
  client.addEventListener("joined", (e) => {
    if (e.detail.room_id !== room) return;
    $("online").textContent = e.detail.online;
  });
  client.addEventListener("online", (e) => {
    if (e.detail.room_id === room) $("online").textContent = e.detail.count;
  });
  client.addEventListener("critical", (e) => {
    toast(e.detail.text || "Notice from the platform", "info", 6000);
  });
  client.addEventListener("kicked", (e) => {
    toast(`Disconnected: ${e.detail.reason || e.detail.code}`, "error", 8000);
  });
  client.addEventListener("servererror", (e) => {
    const [text, kind] = explain(e.detail);
    toast(text, kind);
  });
  client.addEventListener("open", () => {
    setStatus("online", `online as ${nick}`);
    setEnabled(true);
  });
  client.addEventListener("close", (e) => {
    setEnabled(false);
    setStatus(e.detail.willReconnect ? "reconnecting" : "offline", e.detail.willReconnect ? "reconnecting…" : "offline");
  });
  client.addEventListener("reconnecting", (e) => {
    setStatus("reconnecting", `reconnecting in ${(e.detail.delay_ms / 1000).toFixed(1)} s…`);
  });

  await client.connect();
  const ok = await client.join(roomId);
  for (const m of ok.history || []) addLine(m, { history: true });
  systemLine(`You joined #${roomId}`);
  $("online").textContent = ok.online;
  $("text").focus();
}

$("enter").addEventListener("submit", (e) => {
  e.preventDefault();
  const nick = $("nick").value.trim();
  const roomId = $("room").value.trim();
  if (!nick || !roomId) return;
  enter(nick, roomId).catch((err) => {
    setStatus("offline", "offline");
    toast(explain(err)[0], "error", 6000);
  });
});

$("say").addEventListener("submit", async (e) => {
  e.preventDefault();
  const text = $("text").value.trim();
  if (!text || !client) return;
  // Cleared at once, so the next line can be typed while this one is on its way.
  $("text").value = "";
  try {
    await client.chat(room, text);
  } catch (err) {
    const [msg, kind] = explain(err);
    toast(msg, kind);
    // Give the text back unless something new was typed meanwhile.
    if (!$("text").value) $("text").value = text;
  }
});

async function sendGift(gift) {
  const r = await fetch("/dev/gift", {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
    body: JSON.stringify({ room_id: room, gift }),
  });
  if (!r.ok) {
    const body = await r.json().catch(() => ({}));
    const err = body.error || { code: "internal", message: `gift failed (${r.status})` };
    const [msg, kind] = explain({ ...err, retryAfterMs: err.retry_after_ms });
    toast(msg, kind);
  }
}
$("gift").addEventListener("click", () => sendGift("rocket"));
$("heart").addEventListener("click", () => sendGift("heart"));

// Come back to where we were after a reload.
{
  let saved = null;
  try {
    saved = JSON.parse(localStorage.getItem("roomcast.session") || "null");
  } catch {}
  const savedRoom = new URLSearchParams(location.hash.slice(1)).get("room") || localStorage.getItem("roomcast.room");
  if (savedRoom) $("room").value = savedRoom;
  if (saved?.nick) {
    $("nick").value = saved.nick;
    if (savedRoom) $("enter").requestSubmit();
  }
}
