// scripts/k8s-upgrade-check.mjs — run by `scripts/k8s upgrade-check` against the chart's
// ws-server Service: a subscriber and a publisher on the TypeScript client (clients/js, built
// by scripts/client-test or `npm run build` there) while the script disrupts the release
// (helm upgrade, ws-server pod deleted, worker pod deleted). The publisher publishes one message
// at a time and waits for each acknowledgement (the client retries with the same message_id
// across reconnects). When DONE_FILE appears it stops; then every acknowledged message must
// have reached the subscriber exactly once, with seqs 1..N contiguous (the client resumes with
// `since` after every disconnect).
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { ChatClient } from "../clients/js/dist/index.js";

// The `ws` package of clients/js (its test dependency), for Node 20 without a global WebSocket.
const WebSocket = createRequire(new URL("../clients/js/package.json", import.meta.url))("ws");

const { BASE, DONE_FILE } = process.env;
const channel = `#k8s-upgrade-${Date.now()}`;
const fail = (m) => { console.error(`[k8s] upgrade-check FAIL: ${m}`); process.exit(1); };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function token(name) {
  for (;;) {
    try {
      const r = await fetch(`${BASE}/dev/token`, { method: "POST",
        headers: { "content-type": "application/json" }, body: JSON.stringify({ name }) });
      if (r.status === 200) return (await r.json()).token;
    } catch { /* the Service has no ready endpoint for a moment */ }
    await sleep(500);
  }
}

const url = `${BASE.replace("http", "ws")}/ws`;
const reader = new ChatClient({ url, WebSocket, token: () => token("reader") });
const writer = new ChatClient({ url, WebSocket, token: () => token("writer") });
const seqs = [], ids = new Set(), acked = new Set();
let reconnects = 0;
const t0 = Date.now();
reader.on("state", ({ state, code }) => {
  if (state === "reconnecting") reconnects += 1;
  if (process.env.K8S_CHECK_VERBOSE) console.error(`[k8s]   reader ${((Date.now() - t0) / 1000).toFixed(1)}s: ${state}${code ? ` (close ${code})` : ""}`);
});
const sub = reader.subscribe(channel, { limit: 0 });
sub.on("message", ({ message }) => { seqs.push(message.seq); ids.add(message.id); });
await reader.connect();
await writer.connect();

let n = 0;
while (!existsSync(DONE_FILE)) {
  n += 1;
  const { id } = await writer.publish(channel, `upgrade-check ${n}`);
  acked.add(id);
  await sleep(20);
}
const deadline = Date.now() + 60000;
while (seqs.length < acked.size && Date.now() < deadline) await sleep(200);
reader.close();
writer.close();

const expected = Array.from({ length: acked.size }, (_, i) => i + 1);
if (seqs.length !== acked.size) fail(`${acked.size} acknowledged, ${seqs.length} delivered`);
if (seqs.some((s, i) => s !== expected[i])) fail(`seqs not 1..${acked.size} in order: ${seqs.join(",")}`);
for (const id of acked) if (!ids.has(id)) fail(`acknowledged ${id} never delivered`);
console.error(`[k8s] upgrade-check OK: ${acked.size} publishes acknowledged, each delivered once, ` +
  `seqs 1..${acked.size} in order, across ${reconnects} reader reconnects`);
process.exit(0);
