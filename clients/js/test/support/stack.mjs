// The real stack for the client tests, prepared by scripts/client-test: this starts and kills
// chat-ws-server processes (WS_SERVER_BIN) on the ports it was given, and mints tokens.
//   WS_SERVER_BIN                      the chat-ws-server binary
//   CLIENT_TEST_PORT_A / _B            public ports: A is killed and restarted, B is the other path
//   CLIENT_TEST_INTERNAL_PORT_A / _B   their internal listeners (/readyz)
//   CLIENT_TEST_LOG_DIR                where the servers' logs go
//   AUTH_JWT_SECRET                    the servers' HS256 secret (to mint short-lived tokens)
//   DATABASE_URL, REDIS_URL, REDIS_PREFIX, KAFKA_BROKERS, KAFKA_TOPIC, …: passed through
import { spawn } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import WebSocket from "ws";
import { checkFrame } from "./frames.mjs";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run scripts/client-test`);
  return value;
};
export const BIN = env("WS_SERVER_BIN");
export const PORT_A = Number(env("CLIENT_TEST_PORT_A"));
export const PORT_B = Number(env("CLIENT_TEST_PORT_B"));
const INTERNAL = new Map([
  [PORT_A, Number(env("CLIENT_TEST_INTERNAL_PORT_A"))],
  [PORT_B, Number(env("CLIENT_TEST_INTERNAL_PORT_B"))],
]);
const LOGS = env("CLIENT_TEST_LOG_DIR");
const SECRET = env("AUTH_JWT_SECRET");
export const TIMEOUT = 30_000;
export const http = (port) => `http://127.0.0.1:${port}`;
export const wsUrl = (port) => `ws://127.0.0.1:${port}/ws`;
export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
export const uniqueChannel = (name) => `#ct-${name}-${Date.now().toString(36)}${Math.floor(Math.random() * 1e4)}`;

// ---------------------------------------------------------------- chat-ws-server processes
const servers = new Map();
let starts = 0;

export async function startServer(port) {
  const log = fs.openSync(path.join(LOGS, `ws-server-${port}-${++starts}.log`), "a");
  const child = spawn(BIN, [], {
    env: { ...process.env, HTTP_ADDR: `127.0.0.1:${port}`, INTERNAL_HTTP_ADDR: `127.0.0.1:${INTERNAL.get(port)}` },
    stdio: ["ignore", log, log],
  });
  fs.closeSync(log);
  servers.set(port, child);
  const deadline = Date.now() + TIMEOUT;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`chat-ws-server on ${port} exited (${child.exitCode}); see ${LOGS}`);
    try {
      if ((await fetch(`http://127.0.0.1:${INTERNAL.get(port)}/readyz`)).ok) return child;
    } catch { /* not listening yet */ }
    await sleep(100);
  }
  throw new Error(`chat-ws-server on ${port} not ready within ${TIMEOUT} ms`);
}

export async function killServer(port, signal = "SIGKILL") {
  const child = servers.get(port);
  servers.delete(port);
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once("exit", resolve));
  child.kill(signal);
  await exited;
}

export const stopAll = () => Promise.all([...servers.keys()].map((port) => killServer(port, "SIGTERM")));

// ---------------------------------------------------------------- tokens
/** A development token from a server's POST /dev/token. */
export async function devToken(name, port = PORT_B) {
  const res = await fetch(`${http(port)}/dev/token`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ name }),
  });
  const body = await res.text();
  if (res.status !== 200) throw new Error(`POST /dev/token: ${res.status} ${body}`);
  return JSON.parse(body).token;
}

const b64url = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
/** An HS256 token signed with the servers' secret, expiring in `ttlSecs`. */
export function mintToken(name, ttlSecs) {
  const now = Math.floor(Date.now() / 1000);
  const body = `${b64url({ alg: "HS256", typ: "JWT" })}.${b64url({
    sub: `test:${name}`, name, iat: now, exp: now + ttlSecs, chat: { "*": ["read", "publish"] },
  })}`;
  return `${body}.${crypto.createHmac("sha256", SECRET).update(body).digest("base64url")}`;
}

// ---------------------------------------------------------------- REST
export async function post(channel, text, { author = "rest", port = PORT_B, idempotencyKey } = {}) {
  const headers = { "content-type": "application/json", authorization: `Bearer ${await devToken(author, port)}` };
  if (idempotencyKey) headers["idempotency-key"] = idempotencyKey;
  const res = await fetch(`${http(port)}/channels/${encodeURIComponent(channel)}/messages`, {
    method: "POST", headers, body: JSON.stringify({ text }),
  });
  const body = await res.text();
  if (res.status !== 202) throw new Error(`POST ${channel}: ${res.status} ${body}`);
  return JSON.parse(body).id;
}

/** Every stored message of `channel`, ascending, through REST paging. */
export async function stored(channel, port = PORT_B) {
  const token = await devToken("reader", port);
  const all = [];
  let after = 0;
  for (;;) {
    const res = await fetch(`${http(port)}/channels/${encodeURIComponent(channel)}/messages?after=${after}&limit=1000`, {
      headers: { authorization: `Bearer ${token}` },
    });
    const page = await res.json();
    if (res.status !== 200) throw new Error(`GET ${channel}: ${res.status} ${JSON.stringify(page)}`);
    all.push(...page.messages);
    if (page.messages.length === 0) return all;
    after = page.next_after;
  }
}

// ---------------------------------------------------------------- WebSocket transports
/**
 * The `ws` package's WebSocket, recording every command sent (`sent`) and checking every frame
 * received against the AsyncAPI document (support/frames.mjs). `hooks.incoming(text, socket)`
 * may return false to swallow a frame (a lost reply), e.g. after terminating the socket.
 */
export function recordingWebSocket(hooks = {}) {
  const sent = [];
  const sockets = [];
  class Recording extends WebSocket {
    constructor(url) {
      super(url);
      this.url_ = url;
      sockets.push(this);
    }
    send(data) {
      sent.push(JSON.parse(data));
      super.send(data);
    }
    set onmessage(listener) {
      super.onmessage = listener && ((event) => {
        if (typeof event.data === "string") {
          let frame;
          try { frame = JSON.parse(event.data); } catch { frame = event.data; }
          checkFrame(frame);
          if (hooks.incoming && hooks.incoming(frame, this) === false) return;
        }
        listener(event);
      });
    }
    get onmessage() {
      return super.onmessage;
    }
  }
  return { WebSocket: Recording, sent, sockets };
}

/** Resolves when `predicate()` holds (polled), or rejects after `ms` with `what`. */
export async function waitFor(predicate, what, ms = TIMEOUT) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await predicate()) return;
    await sleep(50);
  }
  throw new Error(`timed out after ${ms} ms waiting for ${typeof what === "function" ? what() : what}`);
}
