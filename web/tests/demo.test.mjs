// Browser tests of the demo page and the client library: a real standalone server (the binary
// in $RC_BIN) — and, for the gateway drain, the local cluster of scripts/cluster.sh (which
// starts the services it needs) — and Debian's Chromium driven by playwright-core. Screenshots go to
// $ARTIFACTS_DIR (default: ../artifacts/browser).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { promisify } from "node:util";
import { mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const BIN = process.env.RC_BIN || resolve("../target/debug/roomcast");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const ARTIFACTS = resolve(process.env.ARTIFACTS_DIR || "../artifacts/browser");
mkdirSync(ARTIFACTS, { recursive: true });

let server;
let base;
let browser;
const dataDirs = [];

async function startServer() {
  const dataDir = mkdtempSync(join(tmpdir(), "roomcast-web-"));
  dataDirs.push(dataDir);
  const words = join(dataDir, "words.txt");
  writeFileSync(words, "forbiddenword\n");
  const child = spawn(BIN, ["standalone", "--listen", "127.0.0.1:0", "--data-dir", dataDir], {
    // Only this test's settings: any ROOMCAST_* variable would be read as config.
    env: {
      ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("ROOMCAST_"))),
      ROOMCAST_LOG: "warn",
      ROOMCAST_INGEST__WORDS_FILE: words,
    },
    stdio: ["ignore", "pipe", "inherit"],
  });
  const addr = await new Promise((resolveAddr, reject) => {
    const lines = createInterface({ input: child.stdout });
    lines.on("line", (line) => {
      const m = line.match(/listening on http:\/\/(\S+)/);
      if (m) resolveAddr(m[1]);
    });
    child.on("exit", (code) => reject(new Error(`server exited early (${code})`)));
  });
  return { child, url: `http://${addr}`, dataDir };
}

async function stopServer(s) {
  const exited = new Promise((r) => s.child.once("exit", r));
  s.child.kill("SIGTERM");
  await exited;
}

before(async () => {
  server = await startServer();
  base = server.url;
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
});

after(async () => {
  await browser?.close();
  if (server) await stopServer(server);
  for (const d of dataDirs) rmSync(d, { recursive: true, force: true });
});

/** A viewer in its own browser context (own storage = own user). */
async function viewer(nick, room, viewport = { width: 1280, height: 800 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(String(e)));
  await page.goto(base + "/");
  await page.fill("#nick", nick);
  await page.fill("#room", room);
  await page.click("#enter-btn");
  await page.waitForSelector("#status[data-state=online]");
  await page.waitForSelector(`#chat li.system >> text=You joined #${room}`);
  return { page, context, problems };
}

async function say(page, text) {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
}

const chatLine = (page, text) => page.locator("#chat li .text", { hasText: text });

test("two viewers in one room see each other in the chat list and as danmaku; another room sees nothing", async () => {
  const alice = await viewer("Alice", "stage-1");
  const bob = await viewer("Bob", "stage-1");
  const carol = await viewer("Carol", "stage-2");

  await say(alice.page, "hello from alice");
  await say(bob.page, "hi alice, bob here");

  for (const v of [alice, bob]) {
    await chatLine(v.page, "hello from alice").waitFor();
    await chatLine(v.page, "hi alice, bob here").waitFor();
    // Each appears as danmaku flying over the stage.
    await v.page.locator(".dm", { hasText: "hi alice, bob here" }).waitFor();
  }
  await bob.page.locator("#chat li", { hasText: "Alice" }).first().waitFor();
  // Online count: two viewers in stage-1.
  await alice.page.waitForFunction(() => document.querySelector("#online").textContent === "2");

  // Carol's room stays quiet: she sends her own line and sees only it.
  await say(carol.page, "carol alone");
  await chatLine(carol.page, "carol alone").waitFor();
  assert.equal(await chatLine(carol.page, "hello from alice").count(), 0);
  assert.equal(await chatLine(carol.page, "hi alice, bob here").count(), 0);
  assert.equal(await chatLine(alice.page, "carol alone").count(), 0);

  // A gift looks different from chat, in the list and on the stage.
  await bob.page.click("#gift");
  const gift = alice.page.locator("#chat li.gift", { hasText: "rocket" });
  await gift.waitFor();
  await alice.page.locator(".dm.gift").first().waitFor();
  const [chatColor, giftColor] = await alice.page.evaluate(() => [
    getComputedStyle(document.querySelector("#chat li.chat .text")).color,
    getComputedStyle(document.querySelector("#chat li.gift .text")).color,
  ]);
  assert.notEqual(chatColor, giftColor);

  await alice.page.screenshot({ path: join(ARTIFACTS, "room-alice.png") });
  await carol.page.screenshot({ path: join(ARTIFACTS, "room-carol.png") });
  for (const v of [alice, bob, carol]) {
    assert.deepEqual(v.problems, []);
    await v.context.close();
  }
});

test("the browser negotiates permessage-deflate by itself and reads compressed batches", async () => {
  // The handshake as Chromium saw it, from the DevTools protocol.
  const context = await browser.newContext();
  const page = await context.newPage();
  const cdp = await context.newCDPSession(page);
  await cdp.send("Network.enable");
  const handshakes = [];
  cdp.on("Network.webSocketWillSendHandshakeRequest", (e) => handshakes.push({ request: e.request.headers }));
  cdp.on("Network.webSocketHandshakeResponseReceived", (e) => handshakes.push({ response: e.response.headers }));
  await page.goto(base + "/");
  await page.fill("#nick", "Zed");
  await page.fill("#room", "zipped");
  await page.click("#enter-btn");
  await page.waitForSelector("#chat li.system >> text=You joined #zipped");
  const header = (h, name) => Object.entries(h).find(([k]) => k.toLowerCase() === name)?.[1];
  const offered = handshakes.map((h) => h.request && header(h.request, "sec-websocket-extensions")).find(Boolean);
  const agreed = handshakes.map((h) => h.response && header(h.response, "sec-websocket-extensions")).find(Boolean);
  assert.match(offered ?? "", /permessage-deflate/, "Chromium offers it with no code in the page");
  assert.equal(agreed, "permessage-deflate; server_no_context_takeover; client_no_context_takeover");

  // A line long enough for its batch to be compressed, from a second (also compressing) viewer.
  const other = await viewer("Yan", "zipped");
  const line = "哈哈哈 666 主播好厉害！🎉 ".repeat(10).trim();
  await say(other.page, line);
  await chatLine(page, line).waitFor();
  await chatLine(other.page, line).waitFor();
  const metrics = await (await fetch(base + "/metrics")).text();
  const value = (name) => Number(metrics.match(new RegExp(`^${name} (\\d+)`, "m"))?.[1] ?? NaN);
  assert.ok(value("roomcast_deflate_connections") >= 2, metrics.match(/roomcast_deflate.*/g)?.join("\n"));
  assert.ok(value("roomcast_deflate_frames_total") >= 1, "the batch went out compressed");
  await context.close();
  await other.context.close();
});

test("danmaku in flight never overlap", async () => {
  const dan = await viewer("Dan", "flood");
  const eve = await viewer("Eve", "flood");
  for (let i = 0; i < 4; i++) await say(dan.page, `dan line ${i} with some length to it`);
  for (let i = 0; i < 4; i++) await say(eve.page, `eve ${i}`);
  await chatLine(dan.page, "eve 3").waitFor();
  await dan.page.locator(".dm", { hasText: "eve 3" }).waitFor();
  const overlaps = await dan.page.evaluate(() => {
    const boxes = [...document.querySelectorAll(".dm")].map((e) => e.getBoundingClientRect());
    let n = 0;
    for (let i = 0; i < boxes.length; i++)
      for (let j = i + 1; j < boxes.length; j++) {
        const a = boxes[i], b = boxes[j];
        if (a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom) n++;
      }
    return { n, count: boxes.length };
  });
  assert.ok(overlaps.count >= 2, `several danmaku in flight (${overlaps.count})`);
  assert.equal(overlaps.n, 0);
  await dan.page.screenshot({ path: join(ARTIFACTS, "danmaku.png") });
  await dan.context.close();
  await eve.context.close();
});

test("a reload gets the history back", async () => {
  const frank = await viewer("Frank", "history-room");
  await say(frank.page, "remember me");
  await chatLine(frank.page, "remember me").waitFor();
  await frank.page.reload();
  await frank.page.waitForSelector("#status[data-state=online]");
  await frank.page.locator("#chat li.history .text", { hasText: "remember me" }).waitFor();
  await frank.page.screenshot({ path: join(ARTIFACTS, "after-reload.png") });
  await frank.context.close();
});

test("sending too fast shows the rate-limit toast", async () => {
  const gina = await viewer("Gina", "fast");
  for (let i = 0; i < 10; i++) await say(gina.page, `spam ${i}`);
  const toast = gina.page.locator(".toast", { hasText: "too fast" });
  await toast.first().waitFor();
  await gina.page.screenshot({ path: join(ARTIFACTS, "rate-limited.png") });
  await gina.context.close();
});

test("rejected content and a mute show their toasts", async () => {
  const kim = await viewer("Kim", "moderated");
  await say(kim.page, "this has forbiddenword in it");
  await kim.page.locator(".toast", { hasText: "aren't allowed" }).first().waitFor();
  assert.equal(await chatLine(kim.page, "forbiddenword").count(), 0);

  // The platform mutes Kim in this room through the server API.
  const userId = await kim.page.evaluate(() => JSON.parse(localStorage.getItem("roomcast.session")).user_id);
  const key = readFileSync(join(server.dataDir, "api_key"), "utf8").trim();
  const r = await fetch(`${base}/api/v1/rooms/moderated/mutes/${userId}`, {
    method: "PUT",
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: JSON.stringify({ duration_s: 600, reason: "test" }),
  });
  assert.equal(r.status, 200);
  await say(kim.page, "can anyone hear me");
  await kim.page.locator(".toast", { hasText: "muted" }).first().waitFor();
  await kim.page.screenshot({ path: join(ARTIFACTS, "muted.png") });
  await kim.context.close();
});

test("works on a phone-sized viewport", async () => {
  const hank = await viewer("Hank", "phone", { width: 390, height: 844 });
  await say(hank.page, "from my phone");
  await chatLine(hank.page, "from my phone").waitFor();
  const fits = await hank.page.evaluate(() => {
    const stage = document.querySelector("#stage").getBoundingClientRect();
    const chat = document.querySelector("#chat").getBoundingClientRect();
    return {
      noHorizontalScroll: document.documentElement.scrollWidth <= window.innerWidth,
      stageFits: stage.width <= window.innerWidth && stage.width > 300,
      chatBelow: chat.top >= stage.bottom,
    };
  });
  assert.deepEqual(fits, { noHorizontalScroll: true, stageFits: true, chatBelow: true });
  await hank.page.screenshot({ path: join(ARTIFACTS, "phone.png") });
  await hank.context.close();
});

test("the client library reconnects and fills the gap from history", async () => {
  // Its own server, so it can be restarted under the page.
  const own = await startServer();
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  await page.goto(own.url + "/");
  const tokenA = await page.evaluate(async () => {
    const r = await fetch("/dev/token", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ name: "Ivy" }) });
    return (await r.json()).token;
  });
  await page.evaluate(async (token) => {
    const { RoomcastClient } = await import("/roomcast.js");
    const c = new RoomcastClient(`ws://${location.host}/ws`, { token, minBackoffMs: 2000, maxBackoffMs: 2000 });
    window.got = [];
    window.closes = 0;
    c.addEventListener("message", (e) => window.got.push({ text: e.detail.text, replayed: !!e.detail.replayed }));
    c.addEventListener("close", () => window.closes++);
    c.addEventListener("open", () => (window.opens = (window.opens || 0) + 1));
    await c.connect();
    await c.join("gap");
    await c.chat("gap", "before");
    window.client = c;
  }, tokenA);
  await page.waitForFunction(() => window.got.some((m) => m.text === "before"));

  // Another client writes while the page is cut off: drop the page's socket from the server
  // side by closing its connection (server-side close → the library reconnects).
  const other = await ctx.newPage();
  await other.goto(own.url + "/");
  await page.evaluate(() => window.client.ws.close(4999, "test cut"));
  await other.evaluate(async () => {
    const { RoomcastClient } = await import("/roomcast.js");
    const r = await fetch("/dev/token", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ name: "Jo" }) });
    const c = new RoomcastClient(`ws://${location.host}/ws`, { token: (await r.json()).token });
    await c.connect();
    await c.join("gap");
    await c.chat("gap", "during");
  });
  await page.waitForFunction(() => window.opens >= 2 && window.got.some((m) => m.text === "during"));
  await page.evaluate(() => window.client.chat("gap", "after"));
  await page.waitForFunction(() => window.got.some((m) => m.text === "after"));
  const got = await page.evaluate(() => window.got);
  assert.deepEqual(got.map((m) => m.text), ["before", "during", "after"], "each once, in order");
  assert.deepEqual(got.map((m) => m.replayed), [false, true, false], "the gap came from history");
  await ctx.close();
  await stopServer(own);
});

test("logout leaves the room at once and does not reconnect", async () => {
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  await page.goto(base + "/");
  await page.evaluate(async () => {
    const { RoomcastClient } = await import("/roomcast.js");
    const token = async (name) => {
      const r = await fetch("/dev/token", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ name }) });
      return (await r.json()).token;
    };
    // A quick backoff: a reconnect, if one were scheduled, would come within ~100 ms.
    const a = new RoomcastClient(`ws://${location.host}/ws`, { token: await token("Lou"), minBackoffMs: 50, maxBackoffMs: 100 });
    const b = new RoomcastClient(`ws://${location.host}/ws`, { token: await token("Max") });
    window.counts = [];
    window.closes = [];
    window.opens = 0;
    b.addEventListener("online", (e) => e.detail.room_id === "bye" && window.counts.push(e.detail.count));
    a.addEventListener("close", (e) => window.closes.push(e.detail));
    a.addEventListener("open", () => window.opens++);
    await a.connect();
    await b.connect();
    await a.join("bye");
    await b.join("bye");
    window.a = a;
    window.b = b;
  });
  await page.waitForFunction(() => window.counts.includes(2));
  await page.evaluate(() => window.a.logout());
  // The other viewer sees the count drop right away (not after a heartbeat timeout).
  await page.waitForFunction(() => window.counts.at(-1) === 1);
  await page.waitForFunction(() => window.closes.length === 1);
  const [close] = await page.evaluate(() => window.closes);
  assert.equal(close.code, 1000);
  assert.equal(close.willReconnect, false);
  assert.equal(await page.evaluate(() => window.a.connected), false);
  const opensBefore = await page.evaluate(() => window.opens);
  // An absence can only be shown by waiting: five times the longest backoff.
  await page.evaluate(() => new Promise((r) => setTimeout(r, 500)));
  assert.equal(await page.evaluate(() => window.opens), opensBefore, "no reconnect after logout");
  await ctx.close();
});

test("a re-join that cannot recover adopts the server's epoch and position", async () => {
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  await page.goto(base + "/");
  const seen = await page.evaluate(async () => {
    const { RoomcastClient } = await import("/roomcast.js");
    const r = await fetch("/dev/token", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ name: "Epo" }) });
    const c = new RoomcastClient(`ws://${location.host}/ws`, { token: (await r.json()).token, minBackoffMs: 50, maxBackoffMs: 50 });
    const joins = [];
    c.addEventListener("joined", (e) => joins.push(e.detail));
    await c.connect();
    const first = await c.join("epoch-room");
    // As if this client had followed an epoch the server no longer has (say, one from before
    // a server crash), with no message of the server's epoch seen yet.
    const st = c.rooms.get("epoch-room");
    st.epoch = (first.epoch ^ 0x5a5a5a5a) >>> 0 || 1;
    st.seq = 7;
    const rejoined = new Promise((res) => c.addEventListener("joined", () => res(), { once: true }));
    c.ws.close(4999, "test cut");
    await rejoined;
    const after = { epoch: st.epoch, seq: st.seq, recovered: joins[1].recovered, server: joins[1].epoch };
    // The next re-join asks from the adopted position, and recovers.
    const again = new Promise((res) => c.addEventListener("joined", () => res(), { once: true }));
    c.ws.close(4999, "test cut");
    await again;
    return { after, third: joins[2].recovered, first: first.epoch };
  });
  assert.equal(seen.after.recovered, false);
  assert.equal(seen.after.epoch, seen.after.server, "adopted join_ok.epoch");
  assert.equal(seen.after.epoch, seen.first);
  assert.equal(seen.after.seq, 0, "reset to the server's last seq");
  assert.equal(seen.third, true, "recovers from the adopted position");
  await ctx.close();
});

/** `scripts/cluster.sh CMD` with the binary under test and a cluster directory of its own. */
async function cluster(cmd, dir) {
  await promisify(execFile)(resolve("../scripts/cluster.sh"), [cmd], {
    env: {
      ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("ROOMCAST_"))),
      RC_BIN: BIN,
      RC_CLUSTER_DIR: dir,
    },
  });
}

test("a draining gateway sends the library to the other one, where it fills the gap", async () => {
  // The distributed mode: scripts/cluster.sh (the services, 2 ingest nodes, 2 workers and 2
  // gateways on ws://127.0.0.1:18081/ws and :18082).
  const dir = mkdtempSync(join(tmpdir(), "roomcast-cluster-"));
  dataDirs.push(dir);
  await cluster("up", dir);
  try {
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    await page.goto("http://127.0.0.1:18081/");
    await page.evaluate(async () => {
      const { RoomcastClient } = await import("/roomcast.js");
      const r = await fetch("/dev/token", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ name: "Dee" }) });
      const c = new RoomcastClient(`ws://${location.host}/ws`, { token: (await r.json()).token, minBackoffMs: 200, maxBackoffMs: 400 });
      window.got = [];
      window.kicks = [];
      window.opens = 0;
      c.addEventListener("message", (e) => window.got.push({ text: e.detail.text, replayed: !!e.detail.replayed }));
      c.addEventListener("kicked", (e) => window.kicks.push(e.detail));
      c.addEventListener("open", () => window.opens++);
      await c.connect();
      await c.join("drain");
      await c.chat("drain", "before");
      window.client = c;
    });
    await page.waitForFunction(() => window.got.some((m) => m.text === "before"));
    // A second viewer, on the demo page served by the other gateway, writes while the first
    // one moves over.
    const otherCtx = await browser.newContext();
    const other = await otherCtx.newPage();
    await other.goto("http://127.0.0.1:18082/");
    await other.fill("#nick", "Eve");
    await other.fill("#room", "drain");
    await other.click("#enter-btn");
    await other.waitForSelector("#status[data-state=online]");
    await other.waitForSelector("#chat li.system >> text=You joined #drain");
    await other.locator("#chat li .text", { hasText: "before" }).waitFor();

    // SIGTERM to the first gateway: it drains (kicked "draining" naming the other, close 1012).
    process.kill(Number(readFileSync(join(dir, "gw1", "pid"), "utf8")), "SIGTERM");
    await page.waitForFunction(() => window.kicks.length === 1);
    await say(other, "during");
    await page.waitForFunction(() => window.opens >= 2 && window.got.some((m) => m.text === "during"));
    await page.evaluate(() => window.client.chat("drain", "after"));
    await page.waitForFunction(() => window.got.some((m) => m.text === "after"));
    const { got, kicks, url } = await page.evaluate(() => ({ got: window.got, kicks: window.kicks, url: window.client.url }));
    assert.equal(kicks[0].code, "draining");
    assert.deepEqual(kicks[0].reconnect, ["ws://127.0.0.1:18082/ws"], "the other gateway, and only it");
    assert.equal(url, "ws://127.0.0.1:18082/ws", "the library moved to it");
    assert.deepEqual(got.map((m) => m.text), ["before", "during", "after"], "each once, in order");
    await other.locator("#chat li .text", { hasText: "after" }).waitFor();
    await other.screenshot({ path: join(ARTIFACTS, "drain.png") });
    await ctx.close();
    await otherCtx.close();
  } finally {
    await cluster("down", dir);
  }
});
