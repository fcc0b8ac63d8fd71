// The client against the real stack (PostgreSQL, Redis, Kafka, chat-worker, two chat-ws-servers),
// prepared by scripts/client-test. Every frame any client here receives is validated against
// the AsyncAPI document (support/frames.mjs); one that does not validate fails the run.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { ChatClient, ChatError, newMessageId } from "../dist/index.js";
import { frameLog } from "./support/frames.mjs";
import {
  PORT_A, PORT_B, TIMEOUT, devToken, killServer, mintToken, post, recordingWebSocket, sleep,
  startServer, stopAll, stored, uniqueChannel, waitFor, wsUrl,
} from "./support/stack.mjs";

const clients = [];

/** A client on `port` with a development token for `name`, recording what it sends and checking
 * what it receives; its state changes and errors are collected. */
function makeClient(name, { port = PORT_A, token, hooks, ...options } = {}) {
  const transport = recordingWebSocket(hooks);
  const tokenCalls = [];
  const client = new ChatClient({
    url: wsUrl(port),
    WebSocket: transport.WebSocket,
    token: async (request) => {
      tokenCalls.push(request);
      return token ? token(request) : devToken(name, port === PORT_A ? PORT_B : PORT_A);
    },
    reconnectInitialDelayMs: 100,
    reconnectMaxDelayMs: 1000,
    retryDelayMs: 200,
    ...options,
  });
  const states = [];
  const errors = [];
  client.on("state", (change) => states.push(change));
  client.on("error", (error) => errors.push(error));
  clients.push(client);
  return { client, sent: transport.sent, sockets: transport.sockets, states, errors, tokenCalls };
}

/** Collects a subscription's messages. */
function collect(sub) {
  const got = [];
  sub.on("message", ({ message }) => got.push(message));
  return got;
}

const seqsOf = (messages) => messages.map((m) => m.seq);
const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

before(async () => {
  await Promise.all([startServer(PORT_A), startServer(PORT_B)]);
});

after(async () => {
  for (const client of clients) client.close();
  await stopAll();
  assert.deepEqual(frameLog.invalid, [], "every frame validates against the AsyncAPI document");
});

test("subscribe with the last N, then live; publish resolves with the client's message_id", async () => {
  const channel = uniqueChannel("lastn");
  for (let i = 1; i <= 5; i++) await post(channel, `history ${i}`);
  await waitFor(async () => (await stored(channel)).length === 5, "5 stored messages");

  const { client, sent } = makeClient("alice");
  const sub = client.subscribe(channel, { limit: 3 });
  const initial = [];
  sub.on("message", ({ message, initial: fromHistory }) => { if (fromHistory) initial.push(message.seq); });
  const got = collect(sub);
  const states = [];
  sub.on("state", ({ state }) => states.push(state));
  await client.connect();
  await waitFor(() => sub.state === "live", "the subscription to be live");
  assert.deepEqual(initial, [3, 4, 5], "the newest 3, oldest first");
  assert.deepEqual(states, ["live"]);

  const id = newMessageId();
  const published = await client.publish(channel, "live from alice", { messageId: id });
  assert.deepEqual(published, { channel, id });
  await waitFor(() => got.length === 4, () => `4 messages, have ${seqsOf(got)}`);
  assert.deepEqual(seqsOf(got), [3, 4, 5, 6]);
  assert.equal(got[3].id, id);
  assert.equal(got[3].author, "alice", "the token names the author");
  assert.equal(got[3].text, "live from alice");
  assert.equal(sub.lastSeq, 6);
  const publishes = sent.filter((c) => c.command === "publish");
  assert.deepEqual(publishes.map((c) => c.message_id), [id]);

  // Unsubscribing stops delivery.
  await sub.unsubscribe();
  assert.equal(sub.state, "closed");
  await post(channel, "after unsubscribing");
  await sleep(500);
  assert.equal(got.length, 4);
  assert.ok(sent.some((c) => c.command === "unsubscribe" && c.channel === channel));
});

test("bad input gets clear errors, from the client and from the server", async () => {
  const { client } = makeClient("bob");
  assert.throws(() => client.subscribe("no spaces allowed"), (e) => e instanceof ChatError && e.code === "invalid_channel" && /1 to 64/.test(e.message));
  assert.throws(() => client.subscribe("#ok", { limit: 1, since: 2 }), { code: "invalid_argument", message: /not both/ });
  assert.throws(() => client.subscribe("#ok", { since: -1 }), { code: "invalid_argument" });
  await assert.rejects(client.publish("#ok", ""), { code: "invalid_message" });
  await assert.rejects(client.publish("#ok", "x".repeat(4001)), { code: "invalid_message" });
  await assert.rejects(client.publish("#ok", "nul \u0000"), { code: "invalid_message" });
  await assert.rejects(client.publish("#ok", "t", { messageId: "nope" }), { code: "invalid_message_id" });
  assert.throws(() => new ChatClient({ url: "ftp://x/ws", WebSocket: class {} }), { code: "invalid_argument", message: /ws:, wss:/ });
  assert.throws(() => new ChatClient({ url: "not a url", WebSocket: class {} }), { code: "invalid_argument" });
  if (typeof globalThis.WebSocket !== "function") {
    assert.throws(() => new ChatClient({ url: wsUrl(PORT_A) }), { code: "invalid_argument", message: /pass options.WebSocket/ });
  }

  // A limit above the server's HISTORY_MAX_LIMIT: the server refuses, the subscription closes.
  const channel = uniqueChannel("bad");
  const sub = client.subscribe(channel, { limit: 1_000_000 });
  client.subscribe("#fine-channel", { limit: 0 });
  assert.throws(() => client.subscribe("#fine-channel"), { code: "already_subscribed" });
  await client.connect();
  await waitFor(() => sub.state === "closed", "the refused subscription to close");
  assert.equal(sub.error.code, "invalid_limit");
  assert.equal(sub.error.frame.type, "error");
  // The refusal ended only that subscription: the other one on the connection is live.
  await waitFor(() => client.subscription("#fine-channel").state === "live", "the other subscription to be live");
  assert.equal(client.state, "open");
  client.close();
  await assert.rejects(client.publish("#ok", "after close"), { code: "closed" });
});

test("killing and restarting the ws-server mid-stream: every seq arrives exactly once, in order", async () => {
  const channel = uniqueChannel("restart");
  // Readers on server A (killed twice), with and without a starting history.
  const reader = makeClient("reader");
  const sub = reader.client.subscribe(channel, { limit: 0 });
  const got = collect(sub);
  await reader.client.connect();
  await waitFor(() => sub.state === "live", "the reader to be live");

  // Two producers publishing continuously: one through server B (never killed), one through A.
  const viaB = makeClient("producer-b", { port: PORT_B });
  const viaA = makeClient("producer-a");
  await Promise.all([viaB.client.connect(), viaA.client.connect()]);
  let producing = true;
  const acked = [];
  const produce = async (who, { client }) => {
    const pending = [];
    for (let i = 1; producing; i++) {
      const id = newMessageId();
      pending.push(client.publish(channel, `${who} ${i}`, { messageId: id }).then((p) => acked.push(p.id)));
      await sleep(60);
    }
    await Promise.all(pending);
  };
  const producers = [produce("via-b", viaB), produce("via-a", viaA)];

  await sleep(1000);
  const beforeKill = sub.lastSeq;
  assert.ok(beforeKill > 5, `messages flowed before the kill (${beforeKill})`);
  const sentBefore = reader.sent.length;
  await killServer(PORT_A, "SIGKILL");
  await waitFor(() => reader.client.state !== "open", "the reader to notice the kill");
  const seenAtKill = sub.lastSeq;
  await sleep(1500);                                  // B's producer goes on meanwhile
  await startServer(PORT_A);
  await waitFor(() => sub.state === "live", "the reader to resume", TIMEOUT);
  const resubscribes = reader.sent.slice(sentBefore).filter((c) => c.command === "subscribe");
  assert.deepEqual(resubscribes.map(({ channel: c, since, limit }) => ({ c, since, limit })),
    [{ c: channel, since: seenAtKill, limit: undefined }], "resumed once, with since = the last seq seen");

  // A graceful restart too (SIGTERM: drain, then close 1001).
  await sleep(800);
  await killServer(PORT_A, "SIGTERM");
  await startServer(PORT_A);
  await waitFor(() => reader.client.state === "open" && sub.state === "live", "the reader to resume again");
  await sleep(800);
  producing = false;
  await Promise.all(producers);

  // Everything acknowledged arrives: the channel's seqs 1..n, each once, in order.
  const all = await (async () => {
    await waitFor(async () => (await stored(channel)).length >= acked.length, "every acknowledged message stored");
    return stored(channel);
  })();
  const last = all.at(-1).seq;
  await waitFor(() => sub.lastSeq === last, () => `the reader to reach seq ${last} (at ${sub.lastSeq})`);
  await sleep(300);                                   // let any duplicate arrive
  assert.deepEqual(seqsOf(got), range(1, last), "every seq exactly once, in order");
  assert.deepEqual(seqsOf(all), range(1, last));
  assert.equal(all.length, acked.length, "each acknowledged publish stored once");
  assert.deepEqual(new Set(all.map((m) => m.id)), new Set(acked));
  const closes = reader.states.filter((s) => s.state === "reconnecting").map((s) => s.code);
  assert.ok(closes.includes(1001), `a 1001 close after SIGTERM (closes: ${closes})`);
  assert.ok(acked.length > 40, `${acked.length} messages published`);
  assert.equal(viaA.client.unacknowledged, 0);
});

test("a publish whose acknowledgement was lost is retried after the reconnect and stored once", async () => {
  const channel = uniqueChannel("retry");
  const watcher = makeClient("watcher", { port: PORT_B });
  const watched = collect(watcher.client.subscribe(channel, { limit: 0 }));
  await watcher.client.connect();
  await waitFor(() => watcher.client.subscription(channel).state === "live", "the watcher to be live");

  // The first `published` reply is lost with its connection (the socket dies before it is read).
  let lost = 0;
  const publisher = makeClient("publisher", {
    hooks: {
      incoming(frame, socket) {
        if (frame.type === "published" && lost === 0) {
          lost++;
          socket.terminate();
          return false;
        }
        return true;
      },
    },
  });
  await publisher.client.connect();
  const id = newMessageId();
  const published = await publisher.client.publish(channel, "sent twice, stored once", { messageId: id });
  assert.equal(published.id, id);
  assert.equal(lost, 1, "the first acknowledgement was dropped");
  const attempts = publisher.sent.filter((c) => c.command === "publish");
  assert.equal(attempts.length, 2, "sent again after the reconnect");
  assert.ok(attempts.every((c) => c.message_id === id && c.text === "sent twice, stored once"));
  assert.ok(publisher.states.some((s) => s.state === "reconnecting"), "the connection was lost in between");

  await waitFor(() => watched.length >= 1, "the watcher to get the message");
  await sleep(1500);                                  // time for a second copy to show up
  const copies = (await stored(channel)).filter((m) => m.id === id);
  assert.equal(copies.length, 1, "stored once");
  assert.deepEqual(watched.map((m) => m.id), [id], "delivered once");
});

test("a 4001 close makes the client fetch a fresh token; expiry too", async () => {
  const channel = uniqueChannel("token");
  // First a token the server refuses (close 4001), then a short-lived one, then good ones.
  const issued = [];
  const alice = makeClient("alice", {
    token: ({ fresh }) => {
      const n = issued.length;
      const token = n === 0 ? "forged.token.value" : n === 1 ? mintToken("alice", 3) : mintToken("alice", 600);
      issued.push({ fresh, kind: n === 0 ? "forged" : n === 1 ? "short" : "long" });
      return token;
    },
  });
  const sub = alice.client.subscribe(channel, { limit: 0 });
  const got = collect(sub);
  await alice.client.connect();
  await waitFor(() => sub.state === "live", "live after the refused token");
  const refused = alice.states.find((s) => s.state === "reconnecting");
  assert.equal(refused.code, 4001, "the forged token was closed with 4001");
  assert.equal(refused.reason, "invalid_token");
  assert.deepEqual(issued.slice(0, 2), [{ fresh: false, kind: "forged" }, { fresh: true, kind: "short" }]);

  await post(channel, "before expiry");
  await waitFor(() => got.length === 1, "the first message");
  // The short token expires: `error` token_expired, close 4001, a fresh token, resume with since.
  await waitFor(() => issued.length === 3, "a fresh token after expiry", 10_000);
  assert.deepEqual(issued[2], { fresh: true, kind: "long" });
  assert.ok(alice.errors.some((e) => e.code === "token_expired" && e.frame?.type === "error"), "token_expired reported");
  assert.equal(alice.states.filter((s) => s.state === "reconnecting" && s.code === 4001).length, 2);
  await post(channel, "after expiry");
  await waitFor(() => got.length === 2, () => `the second message (have ${got.length})`);
  assert.deepEqual(seqsOf(got), [1, 2]);
  const resume = alice.sent.filter((c) => c.command === "subscribe").at(-1);
  assert.equal(resume.since, 1, "resumed with since");

  // A refresh without reconnecting keeps the connection and the subscription.
  const sockets = alice.sockets.length;
  const authenticated = await alice.client.authenticate(mintToken("alice", 600));
  assert.equal(authenticated.type, "authenticated");
  assert.equal(authenticated.user_id, "test:alice");
  await assert.rejects(alice.client.authenticate("forged.token.value"), { code: "invalid_token" });
  assert.equal(alice.sockets.length, sockets, "no reconnect");
  assert.equal(sub.state, "live");
});

test("every frame received validated against the AsyncAPI document", () => {
  // Runs last in this file: the kinds of frames the tests above received.
  for (const type of ["subscribed", "message", "published", "pong", "error", "unsubscribed", "authenticated"]) {
    assert.ok(frameLog.byType.get(type) > 0, `no ${type} frame was checked`);
  }
  assert.deepEqual(frameLog.invalid, []);
});
