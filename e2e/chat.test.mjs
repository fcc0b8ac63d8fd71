// End-to-end test of the demo chat page (services/ws-server/src/index.html) in headless Chromium,
// against the real stack. Run through scripts/e2e, which prepares the environment:
//   WS_SERVER_BIN        the chat-ws-server binary
//   E2E_PORT_A / _B      free ports: A serves the pages (killed and restarted mid-test),
//                        B is a second instance, the "other path" producing through REST
//   E2E_LOG_DIR          where the servers' logs go
//   DATABASE_URL, REDIS_URL, REDIS_PREFIX, KAFKA_BROKERS, KAFKA_TOPIC, LOG_FORMAT: passed through
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const shots = path.join(here, "screenshots");
// Tests write only under ignored folders; `scripts/screenshot` sets this to refresh the README's.
const docsShot = process.env.E2E_UPDATE_SCREENSHOT === "1"
  ? path.join(here, "..", "docs", "screenshot.png")
  : null;
const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run scripts/e2e`);
  return value;
};
const BIN = env("WS_SERVER_BIN");
const PORT_A = Number(env("E2E_PORT_A"));
const PORT_B = Number(env("E2E_PORT_B"));
// The internal listener of each server (/readyz).
const INTERNAL = new Map([
  [PORT_A, Number(env("E2E_INTERNAL_PORT_A"))],
  [PORT_B, Number(env("E2E_INTERNAL_PORT_B"))],
]);
const LOGS = process.env.E2E_LOG_DIR || fs.mkdtempSync("/tmp/chat-e2e-");
const A = `http://127.0.0.1:${PORT_A}`;
const B = `http://127.0.0.1:${PORT_B}`;
const CHANNEL = `#e2e-${Date.now().toString(36)}`;
const TIMEOUT = 30_000;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------- chat-ws-server processes
const servers = new Map(); // port -> child process
let starts = 0;

async function startServer(port) {
  const log = fs.openSync(path.join(LOGS, `ws-server-${port}-${++starts}.log`), "a");
  const child = spawn(BIN, [], {
    env: {
      ...process.env,
      HTTP_ADDR: `127.0.0.1:${port}`,
      INTERNAL_HTTP_ADDR: `127.0.0.1:${INTERNAL.get(port)}`,
    },
    stdio: ["ignore", log, log],
  });
  fs.closeSync(log);
  servers.set(port, child);
  const deadline = Date.now() + TIMEOUT;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`chat-ws-server on ${port} exited (${child.exitCode}); see ${LOGS}`);
    try {
      const res = await fetch(`http://127.0.0.1:${INTERNAL.get(port)}/readyz`);
      if (res.ok) return child;
    } catch { /* not listening yet */ }
    await sleep(100);
  }
  throw new Error(`chat-ws-server on ${port} not ready within ${TIMEOUT} ms`);
}

async function killServer(port, signal = "SIGKILL") {
  const child = servers.get(port);
  servers.delete(port);
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once("exit", resolve));
  child.kill(signal);
  await exited;
}

// Produces through the other server's REST API (202 once Kafka acknowledged).
// A token for `name` from a server's development sign-in (the servers share their secret).
async function devToken(name, base = B) {
  const res = await fetch(`${base}/dev/token`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ name }),
  });
  const body = await res.text();
  assert.equal(res.status, 200, `POST /dev/token: ${res.status} ${body}`);
  return JSON.parse(body).token;
}

async function post(author, text, channel = CHANNEL) {
  const res = await fetch(`${B}/channels/${encodeURIComponent(channel)}/messages`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${await devToken(author)}` },
    body: JSON.stringify({ text }),
  });
  assert.equal(res.status, 202, `POST via B: ${res.status} ${await res.text()}`);
}

// ---------------------------------------------------------------- browser helpers
let browser;
const pageErrors = [];

async function openPage(author, { viewport = { width: 1100, height: 700 }, channel = CHANNEL, colorScheme = "light" } = {}) {
  const context = await browser.newContext({ viewport, colorScheme });
  // The page signs in as its stored name when it loads: store it first.
  await context.addInitScript((name) => localStorage.setItem("chat.author", JSON.stringify(name)), author);
  const page = await context.newPage();
  page.on("pageerror", (err) => pageErrors.push(`${author}: ${err.message}`));
  page.on("dialog", (dialog) => { pageErrors.push(`${author}: dialog "${dialog.message()}"`); dialog.dismiss(); });
  // Every command the page sends, to check what it resumes from.
  page.sent = [];
  page.on("websocket", (ws) => ws.on("framesent", ({ payload }) => {
    try { page.sent.push(JSON.parse(payload)); } catch { /* not JSON */ }
  }));
  await page.goto(`${A}/?channel=${encodeURIComponent(channel)}`);
  await page.fill("#author", author);
  await waitLive(page);
  return page;
}

const waitLive = (page) =>
  page.waitForSelector('#status[data-state="live"]', { timeout: TIMEOUT });

// The messages of the displayed channel, as rendered.
const shown = (page) =>
  page.$$eval("#log li.msg[data-seq]", (items) =>
    items.map((li) => ({
      seq: Number(li.dataset.seq),
      author: li.querySelector(".author").textContent,
      text: li.querySelector(".text").textContent,
    })));

// Waits until every one of `texts` is displayed (confirmed, with a seq).
async function waitTexts(page, texts) {
  try {
    await page.waitForFunction((wanted) => {
      const have = new Set([...document.querySelectorAll("#log li.msg[data-seq] .text")].map((e) => e.textContent));
      return wanted.every((t) => have.has(t));
    }, texts, { timeout: TIMEOUT, polling: 100 });
  } catch (err) {
    const have = (await shown(page)).map((m) => m.text);
    const missing = texts.filter((t) => !have.includes(t));
    throw new Error(`not displayed within ${TIMEOUT} ms: ${JSON.stringify(missing)}`, { cause: err });
  }
}

async function type(page, text) {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
}

// Seqs displayed are exactly 1..n, each once, in order (the channel is fresh).
function assertComplete(messages, who) {
  const seqs = messages.map((m) => m.seq);
  assert.deepEqual(seqs, seqs.map((_, i) => i + 1), `${who}: seqs not contiguous from 1: ${seqs}`);
}

const shot = (page, name) => page.screenshot({ path: path.join(shots, `${name}.png`) });

// ---------------------------------------------------------------- the test
before(async () => {
  fs.mkdirSync(shots, { recursive: true });
  await Promise.all([startServer(PORT_A), startServer(PORT_B)]);
  browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    // Playwright creates (and removes) a fresh --user-data-dir for every launch.
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
});

after(async () => {
  await browser?.close();
  await Promise.all([...servers.keys()].map((port) => killServer(port, "SIGTERM")));
});

test("two browsers chat through the real stack; nothing is lost across a ws-server restart", async (t) => {
  // History written before anyone opened the page.
  await post("carol", "written before the pages opened");

  const alice = await openPage("alice");
  const bob = await openPage("bob");

  await t.test("a socket opened without a token never gets to subscribe", async () => {
    const outcome = await alice.evaluate((url) => new Promise((resolve) => {
      const ws = new WebSocket(url);
      ws.onopen = () => { ws.send(JSON.stringify({ command: "subscribe", channel: "#kerno-challenge" })); };
      ws.onmessage = (event) => resolve(`frame ${event.data}`);
      ws.onclose = (event) => resolve(`closed ${event.code}`);
      setTimeout(() => resolve("timeout"), 5000);
    }), `${A.replace("http", "ws")}/ws`);
    assert.match(outcome, /^closed /, `without a token: ${outcome}`);
    const forged = await alice.evaluate((url) => new Promise((resolve) => {
      const ws = new WebSocket(`${url}?token=forged.token.value`);
      ws.onclose = (event) => resolve(event.code);
      setTimeout(() => resolve("timeout"), 5000);
    }), `${A.replace("http", "ws")}/ws`);
    assert.equal(forged, 4001, "an invalid token closes with 4001");
  });

  await t.test("history, then live messages both ways", async () => {
    await waitTexts(alice, ["written before the pages opened"]);
    await waitTexts(bob, ["written before the pages opened"]);
    await type(alice, "hi bob, this is alice");
    await waitTexts(bob, ["hi bob, this is alice"]);
    await type(bob, "hello alice!\nsecond line");
    await waitTexts(alice, ["hello alice!\nsecond line"]);
    await waitTexts(alice, ["hi bob, this is alice"]);           // her own, confirmed
    assert.equal(await alice.locator("#log .pending").count(), 0);
  });

  await t.test("user text is displayed as text, never run as HTML", async () => {
    const evil = `<script>window.__xss = 1; alert("script")</script><img src=x onerror="window.__xss = 2; alert('img')"> & <b>bold</b>`;
    await type(alice, evil);
    await waitTexts(bob, [evil]);
    await waitTexts(alice, [evil]);
    for (const page of [alice, bob]) {
      assert.equal(await page.evaluate(() => window.__xss), undefined);
      assert.equal(await page.locator("#log img, #log script, #log b").count(), 0);
    }
    // An author name is user text too.
    await post("<img src=x onerror=alert('author')>", "author names are escaped too");
    await waitTexts(alice, ["author names are escaped too"]);
    const authors = (await shown(alice)).map((m) => m.author);
    assert.ok(authors.includes("<img src=x onerror=alert('author')>"));
  });

  await t.test("the history shows up after a reload", async () => {
    const before = await shown(bob);
    await bob.reload();
    await waitLive(bob);
    await waitTexts(bob, before.map((m) => m.text));
    assert.deepEqual(await shown(bob), before);
    assert.equal(await bob.inputValue("#author"), "bob");     // remembered in localStorage
  });

  await t.test("killing and restarting chat-ws-server loses no message on either page", async () => {
    await type(alice, "just before the crash");
    await waitTexts(bob, ["just before the crash"]);
    await waitTexts(alice, ["just before the crash"]);

    // Another producer writes continuously through server B, before, during and after the outage.
    const burst = [];
    let producing = true;
    const producer = (async () => {
      for (let i = 1; producing; i++) {
        const text = `burst ${i} via server B`;
        await post("dave", text);
        burst.push(text);
        await sleep(150);
      }
    })();
    await sleep(600);

    await killServer(PORT_A, "SIGKILL");
    const lastSeen = { alice: (await shown(alice)).at(-1).seq, bob: (await shown(bob)).at(-1).seq };
    const sentBefore = { alice: alice.sent.length, bob: bob.sent.length };
    for (const page of [alice, bob]) {
      await page.waitForSelector('#status:not([data-state="live"])', { timeout: TIMEOUT });
    }
    // Typed while disconnected: queued, published after the reconnect.
    await type(alice, "typed by alice while the server was down");
    await type(bob, "typed by bob while the server was down");
    await sleep(1500);
    await shot(alice, "offline-alice");

    await startServer(PORT_A);
    await Promise.all([waitLive(alice), waitLive(bob)]);
    // Each page resumed from the last seq it had seen, not from "the last N".
    for (const [who, page] of [["alice", alice], ["bob", bob]]) {
      const subs = page.sent.slice(sentBefore[who]).filter((c) => c.command === "subscribe");
      assert.deepEqual(subs.map(({ channel, since, limit }) => ({ channel, since, limit })),
        [{ channel: CHANNEL, since: lastSeen[who], limit: undefined }], `${who} resubscribed with since`);
    }
    await sleep(600);
    producing = false;
    await producer;
    await type(bob, "after the restart");

    const expected = [
      ...burst, "typed by alice while the server was down", "typed by bob while the server was down",
      "after the restart",
    ];
    await Promise.all([waitTexts(alice, expected), waitTexts(bob, expected)]);
    await sleep(500); // let any duplicate arrive before checking there is none
    const [a, b] = [await shown(alice), await shown(bob)];
    assertComplete(a, "alice");
    assertComplete(b, "bob");
    assert.deepEqual(a, b, "both pages show the same messages");
    assert.equal(new Set(a.map((m) => m.text)).size, a.length, "no message shown twice");
    assert.ok(burst.length >= 8, `burst of ${burst.length}`);
    assert.equal(await alice.locator("#log .pending, #log .failed").count(), 0);
    await shot(alice, "after-restart-alice");
    await shot(bob, "after-restart-bob");
  });

  await t.test("switching channels", async () => {
    const other = `${CHANNEL}-side`;
    const main = await shown(alice);
    await alice.fill("#join-name", other);
    await alice.press("#join-name", "Enter");
    await alice.waitForSelector(`#channel-title:text-is("${other}")`);
    await waitLive(alice);
    assert.equal((await shown(alice)).length, 0);
    await type(alice, "over in the side channel");
    await waitTexts(alice, ["over in the side channel"]);
    // Bob stays in the main channel: nothing leaks there; alice sees an unread badge for it.
    await type(bob, "meanwhile in the main channel");
    await alice.waitForSelector("#channels .badge", { timeout: TIMEOUT }); // unread in main channel
    assert.ok(!(await shown(bob)).some((m) => m.text === "over in the side channel"));
    await alice.click(`#channels .pick:text-is("${CHANNEL}")`);
    await waitTexts(alice, ["meanwhile in the main channel"]);
    assert.deepEqual((await shown(alice)).slice(0, main.length), main);
  });

  await t.test("a fresh conversation in #kerno-challenge; screenshots at desktop and phone widths", async () => {
    // The database is fresh, so the default channel is empty and ours alone.
    const channel = "#kerno-challenge";
    await bob.fill("#join-name", "kerno-challenge");   // "#" is added when missing
    await bob.press("#join-name", "Enter");
    await bob.waitForSelector(`#channel-title:text-is("${channel}")`);
    await waitLive(bob);
    await alice.goto(`${A}/?channel=${encodeURIComponent(channel)}`);
    await waitLive(alice);
    await post("carol", "Morning! Is the new ws-server deployed?", channel);
    await type(alice, "Yes, this morning. Resume with `since` works: I restarted it twice and lost nothing.");
    await waitTexts(bob, ["Yes, this morning. Resume with `since` works: I restarted it twice and lost nothing."]);
    await type(bob, "Nice. And the page escapes everything:");
    await type(bob, "<b>not bold</b> <script>alert(1)</script>");
    await post("carol", "Ha. Shipping the README next, with this screenshot.", channel);
    const last = "Ha. Shipping the README next, with this screenshot.";
    await Promise.all([waitTexts(alice, [last]), waitTexts(bob, [last])]);
    await shot(bob, "desktop-bob");
    if (docsShot) fs.copyFileSync(path.join(shots, "desktop-bob.png"), docsShot);

    const phone = await openPage("erin", { viewport: { width: 390, height: 760 }, channel, colorScheme: "dark" });
    await waitTexts(phone, [last]);
    const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `no horizontal scrolling on a phone (overflow ${overflow}px)`);
    await shot(phone, "phone-erin");
  });

  assert.deepEqual(pageErrors, [], "no page errors or dialogs");
});
