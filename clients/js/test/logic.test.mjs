// The client's own logic where the real server cannot be made to misbehave: a gap in the seqs
// (which the server never sends) must make the client resubscribe with `since`, and the
// reconnect delays follow exponential backoff with full jitter. A scripted socket stands in for
// the server here; everything else is tested against the real stack (client.test.mjs).
import { test } from "node:test";
import assert from "node:assert/strict";
import { ChatClient, backoffDelay } from "../dist/index.js";

/** A socket whose server side the test plays: `sent` holds the commands, `frame()` answers. */
function scriptedSocket() {
  const sockets = [];
  class Scripted {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      sockets.push(this);
      queueMicrotask(() => { this.readyState = 1; this.onopen?.({}); });
    }
    send(data) { this.sent.push(JSON.parse(data)); }
    close() { this.readyState = 3; }
    frame(value) { this.onmessage?.({ data: JSON.stringify(value) }); }
    last(command) { return this.sent.filter((c) => c.command === command).at(-1); }
  }
  return { WebSocket: Scripted, sockets };
}

const message = (channel, seq) => ({
  channel, seq, id: `00000000-0000-4000-8000-${String(seq).padStart(12, "0")}`, author: "a", text: `m${seq}`,
  sent_at: "2026-01-01T00:00:00Z", stored_at: "2026-01-01T00:00:00Z",
});

test("a gap in the seqs makes the client resubscribe with since; nothing is delivered twice or out of order", async () => {
  const { WebSocket, sockets } = scriptedSocket();
  const client = new ChatClient({ url: "ws://scripted/ws", WebSocket });
  const sub = client.subscribe("#c", { limit: 2 });
  const got = [];
  sub.on("message", ({ message: m }) => got.push(m.seq));
  await client.connect();
  const socket = sockets[0];
  const subscribe = socket.last("subscribe");
  assert.deepEqual({ ...subscribe, id: undefined }, { command: "subscribe", channel: "#c", limit: 2, id: undefined });

  socket.frame({ type: "subscribed", channel: "#c", messages: [message("#c", 4), message("#c", 5)], last_seq: 5, reply_to: subscribe.id });
  assert.equal(sub.state, "live");
  socket.frame({ type: "message", channel: "#c", message: message("#c", 6) });
  socket.frame({ type: "message", channel: "#c", message: message("#c", 6) });   // a repeat: dropped
  socket.frame({ type: "message", channel: "#c", message: message("#c", 9) });   // 7 and 8 missing
  assert.deepEqual(got, [4, 5, 6]);
  assert.equal(sub.duplicates, 1);
  assert.equal(sub.gaps, 1);
  assert.equal(sub.state, "resuming");

  // One command per channel at a time: unsubscribe, then (once answered) subscribe since 6.
  const unsubscribe = socket.last("unsubscribe");
  assert.equal(unsubscribe.channel, "#c");
  assert.equal(socket.sent.filter((c) => c.command === "subscribe").length, 1, "no subscribe while the unsubscribe is unanswered");
  socket.frame({ type: "message", channel: "#c", message: message("#c", 7) });   // still in flight: contiguous, kept
  socket.frame({ type: "unsubscribed", channel: "#c", reply_to: unsubscribe.id });
  const resume = socket.last("subscribe");
  assert.equal(resume.since, 7, "resumes from the last seq delivered");
  assert.equal(resume.limit, undefined);
  socket.frame({ type: "subscribed", channel: "#c", messages: [message("#c", 8), message("#c", 9)], last_seq: 9, reply_to: resume.id });
  socket.frame({ type: "message", channel: "#c", message: message("#c", 9) });   // replayed live: dropped
  socket.frame({ type: "message", channel: "#c", message: message("#c", 10) });
  assert.deepEqual(got, [4, 5, 6, 7, 8, 9, 10]);
  assert.equal(sub.state, "live");
  client.close();
});

test("reconnect delays: exponential ceilings, full jitter, capped", () => {
  const ceilings = [0, 1, 2, 3, 4, 5, 10].map((attempt) => backoffDelay(attempt, 500, 15_000, () => 0.999999));
  assert.deepEqual(ceilings, [499, 999, 1999, 3999, 7999, 14999, 14999]);
  assert.equal(backoffDelay(3, 500, 15_000, () => 0), 0, "full jitter reaches 0");
  const samples = Array.from({ length: 2000 }, () => backoffDelay(4, 500, 15_000));
  assert.ok(samples.every((d) => d >= 0 && d < 8000));
  const mean = samples.reduce((a, b) => a + b, 0) / samples.length;
  assert.ok(mean > 3000 && mean < 5000, `uniform over [0, 8000): mean ${mean}`);
});
