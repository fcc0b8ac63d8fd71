// scripts/message-check.mjs — one message path checked end to end against a deployed stack, for
// scripts/container-test, scripts/compose-test and scripts/k8s chat-check (run it through
// scripts/message-check, which gives Node the WebSocket flag it needs).
//
// A development token (POST /dev/token), a WebSocket subscribed to CHANNEL; then a record produced
// straight to Kafka and a message POSTed to the REST API (which produces to Kafka) must both come
// back on the socket as `message` frames (Kafka -> chat-worker -> PostgreSQL + Redis -> ws-server),
// and REST history must return both.
//
// Arguments: the command that produces to the topic; it reads one `key<TAB>value` line on stdin
// (kcat -K '\t' -P, or kafka-console-producer.sh with parse.key=true and key.separator=<TAB>, in
// a pod or a container).
// Environment:
//   BASE      the ws-server's public URL, e.g. http://127.0.0.1:8080
//   CHANNEL   the channel (default #message-check)
//   LABEL     the prefix of the log lines (default message-check)
//   RUN_ID    makes the texts unique (default: the time)
// Node >= 20 (on 20/21 with --experimental-websocket). Exit 0 when all of it held.
import { execFileSync } from "node:child_process";

const env = process.env;
const label = env.LABEL || "message-check";
const channel = env.CHANNEL || "#message-check";
const runId = env.RUN_ID || `${Date.now()}`;
const produce = process.argv.slice(2);
const texts = [`kafka ${runId}`, `rest ${runId}`];
const want = [...texts];

const fail = (message) => {
  console.error(`[${label}] FAIL: ${message}`);
  process.exit(1);
};
if (!env.BASE || !produce.length) fail("usage: BASE=URL message-check PRODUCER-COMMAND...");
setTimeout(() => fail(`timed out waiting for ${JSON.stringify(want)}`), 75000).unref();

const r = await fetch(`${env.BASE}/dev/token`, {
  method: "POST",
  headers: { "content-type": "application/json" },
  body: JSON.stringify({ name: label }),
});
if (r.status !== 200) fail(`POST /dev/token answered ${r.status}: ${await r.text()}`);
const token = (await r.json()).token;
const auth = { authorization: `Bearer ${token}` };
const messages = `${env.BASE}/channels/${encodeURIComponent(channel)}/messages`;

let t0 = 0;
const next = async () => {
  t0 = performance.now();
  if (want[0].startsWith("kafka")) {
    const value = JSON.stringify({ channel, author: label, text: want[0] });
    try {
      execFileSync(produce[0], produce.slice(1), { input: `${channel}\t${value}\n`, stdio: "pipe" });
    } catch (e) {
      fail(`producing to Kafka failed: ${e.message}\n${e.stderr || ""}`);
    }
  } else {
    const p = await fetch(messages, {
      method: "POST",
      headers: { "content-type": "application/json", ...auth },
      body: JSON.stringify({ text: want[0] }),
    });
    if (p.status !== 202) fail(`REST POST answered ${p.status}: ${await p.text()}`);
  }
};

const ws = new WebSocket(`${env.BASE.replace(/^http/, "ws")}/ws?token=${encodeURIComponent(token)}`);
ws.onerror = (e) => fail(`websocket error: ${e.message || e.type}`);
ws.onclose = (e) => {
  if (want.length) fail(`socket closed ${e.code}`);
};
ws.onopen = () => ws.send(JSON.stringify({ command: "subscribe", channel, limit: 0, id: 1 }));
ws.onmessage = async (ev) => {
  const frame = JSON.parse(ev.data);
  if (frame.type === "error") fail(`error frame ${ev.data}`);
  if (frame.type === "subscribed") return next();
  if (frame.type !== "message" || frame.message.text !== want[0]) return;
  console.error(
    `[${label}] "${want[0]}" came back on the WebSocket (seq ${frame.message.seq}) ` +
      `${(performance.now() - t0).toFixed(0)} ms after it was produced`,
  );
  want.shift();
  if (want.length) return next();
  const h = await fetch(`${messages}?limit=100`, { headers: auth });
  if (h.status !== 200) fail(`REST history answered ${h.status}: ${await h.text()}`);
  const got = ((await h.json()).messages || []).map((m) => m.text);
  for (const text of texts) if (!got.includes(text)) fail(`REST history lacks "${text}"`);
  console.error(`[${label}] REST history returns both`);
  ws.onclose = null;
  ws.close(1000);
  process.exit(0);
};
