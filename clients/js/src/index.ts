// @chat-stream/client: a small, dependency-free client for chat-ws-server's WebSocket protocol
// (docs/PROTOCOL.md). It keeps every subscription gap-free and duplicate-free across reconnects
// (resume with `since`, dedup and ordering by `seq`), retries publishes with a client-chosen
// `message_id` until the server acknowledges them, and reconnects with exponential backoff and
// full jitter, asking the token provider for a token before each connection.
//
// This file must stay self-contained at run time (type-only imports): its compiled form is also
// the module the demo page imports (services/ws-server/src/page/chat-client.js).

import type {
  AuthenticatedFrame,
  ChatMessage,
  Command,
  ErrorCode,
  ErrorFrame,
  PublishCommand,
  PublishedFrame,
  ServerFrame,
  SubscribeCommand,
  SubscribedFrame,
  UnsubscribedFrame,
} from "./protocol.js";

export type * from "./protocol.js";

/** The close codes of docs/PROTOCOL.md. */
export const CloseCode = {
  Normal: 1000,
  GoingAway: 1001,
  MessageTooBig: 1009,
  /** The token is missing, invalid or expired: the client fetches a fresh one and reconnects. */
  Unauthorized: 4001,
  /** Slow consumer: the client reconnects and resumes with `since`. */
  SlowConsumer: 4008,
  /** Too many rate-limited commands: the client waits at least {@link RATE_LIMIT_COOLDOWN_MS}. */
  RateLimited: 4029,
} as const;

/** The server refuses a 4029-closed address's upgrades for this long (`WS_ABUSE_COOLDOWN_SECS`). */
export const RATE_LIMIT_COOLDOWN_MS = 10_000;

// ------------------------------------------------------------------------------------------ errors

/** Codes of errors the client itself raises (the server's are {@link ErrorCode}). */
export type ClientErrorCode =
  /** A bad argument to a client method or option: nothing was sent. */
  | "invalid_argument"
  /** The client was closed before the operation completed. */
  | "closed"
  /** The operation's own `timeoutMs` passed. */
  | "timeout"
  /** The token provider threw or rejected; the client retries with backoff. */
  | "token_unavailable"
  /** The server sent something that is not a JSON object frame. */
  | "invalid_frame";

/** Every error the client reports: a server `error` frame's code, or a {@link ClientErrorCode}. */
export class ChatError extends Error {
  override readonly name = "ChatError";
  readonly code: ErrorCode | ClientErrorCode;
  /** The channel the failed operation was about, when it had one. */
  readonly channel: string | undefined;
  /** The server's `error` frame, when the server refused. */
  readonly frame: ErrorFrame | undefined;

  constructor(
    code: ErrorCode | ClientErrorCode,
    message: string,
    details: { channel?: string; frame?: ErrorFrame; cause?: unknown } = {},
  ) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.code = code;
    this.channel = details.channel;
    this.frame = details.frame;
  }
}

/** Server error codes after which the same command may simply be sent again later. */
const RETRYABLE: ReadonlySet<string> = new Set<ErrorCode>([
  "publish_failed",
  "history_unavailable",
  "rate_limited",
  "server_busy",
]);

// ------------------------------------------------------------------------------ input validation

const CHANNEL_RE = /^[#A-Za-z0-9_.:-]{1,64}$/;
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
// eslint-disable-next-line no-control-regex
const CONTROL_RE = /[\u0000-\u001f\u007f-\u009f]/;
export const MAX_TEXT_CHARS = 4000;
export const MAX_AUTHOR_CHARS = 64;

/** Whether `name` is a valid channel name: 1 to 64 of `A-Z a-z 0-9 # - _ . :`, one alphanumeric. */
export function isValidChannel(name: unknown): name is string {
  return typeof name === "string" && CHANNEL_RE.test(name) && /[A-Za-z0-9]/.test(name);
}

function checkChannel(channel: unknown): asserts channel is string {
  if (!isValidChannel(channel)) {
    throw new ChatError(
      "invalid_channel",
      `invalid channel ${JSON.stringify(channel)}: 1 to 64 of A-Z a-z 0-9 # - _ . : with at least one letter or digit`,
    );
  }
}

function checkSeq(name: string, value: unknown): asserts value is number {
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 0) {
    throw new ChatError("invalid_argument", `${name} must be an integer, 0 or more (got ${String(value)})`);
  }
}

function checkText(text: unknown): asserts text is string {
  if (typeof text !== "string") throw new ChatError("invalid_message", "text must be a string");
  const chars = [...text].length;
  if (chars < 1 || chars > MAX_TEXT_CHARS) {
    throw new ChatError("invalid_message", `text must be 1 to ${MAX_TEXT_CHARS} characters (got ${chars})`);
  }
  if (text.includes("\u0000")) throw new ChatError("invalid_message", "text must not contain U+0000");
}

function checkAuthor(author: unknown): asserts author is string {
  if (typeof author !== "string") throw new ChatError("invalid_message", "author must be a string");
  const chars = [...author].length;
  if (chars < 1 || chars > MAX_AUTHOR_CHARS || CONTROL_RE.test(author)) {
    throw new ChatError(
      "invalid_message",
      `author must be 1 to ${MAX_AUTHOR_CHARS} characters without control characters`,
    );
  }
}

function checkDuration(name: string, value: unknown, min = 1): number {
  if (typeof value !== "number" || !Number.isFinite(value) || value < min) {
    throw new ChatError("invalid_argument", `${name} must be a number of milliseconds, ${min} or more`);
  }
  return value;
}

/** A random (version 4) UUID: a publish's `message_id`. Uses `crypto.getRandomValues`, which
 * browsers offer on plain-HTTP pages too (unlike `crypto.randomUUID`). */
export function newMessageId(): string {
  const bytes = new Uint8Array(16);
  globalThis.crypto.getRandomValues(bytes);
  bytes[6] = (bytes[6]! & 0x0f) | 0x40;
  bytes[8] = (bytes[8]! & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/**
 * The reconnect delay before attempt `attempt` (0-based): exponential backoff with full jitter,
 * a uniformly random time from 0 to `min(maxMs, initialMs * 2^attempt)`.
 */
export function backoffDelay(attempt: number, initialMs: number, maxMs: number, random: () => number = Math.random): number {
  const ceiling = Math.min(maxMs, initialMs * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

// ---------------------------------------------------------------------------------------- events

type Listener<T> = (value: T) => void;

/** A minimal typed event emitter. A listener that throws does not disturb the client: its error
 * is rethrown on a fresh task (an uncaught error where it belongs). */
class Emitter<Events> {
  private readonly listeners = new Map<keyof Events, Set<Listener<never>>>();

  /** Adds a listener; returns the function that removes it. */
  on<K extends keyof Events>(event: K, listener: Listener<Events[K]>): () => void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(listener as Listener<never>);
    return () => this.off(event, listener);
  }

  off<K extends keyof Events>(event: K, listener: Listener<Events[K]>): void {
    this.listeners.get(event)?.delete(listener as Listener<never>);
  }

  protected emit<K extends keyof Events>(event: K, value: Events[K]): void {
    for (const listener of [...(this.listeners.get(event) ?? [])]) {
      try {
        (listener as Listener<Events[K]>)(value);
      } catch (err) {
        setTimeout(() => {
          throw err;
        });
      }
    }
  }
}

// ------------------------------------------------------------------------------------ the socket

/** What the client needs of a WebSocket: the browser's, Node's global one (Node 22+), or the
 * `ws` package's. */
export interface WebSocketLike {
  readonly readyState: number;
  // `any`: the browser's and `ws`'s event types differ; the client reads only the fields it needs.
  /* eslint-disable @typescript-eslint/no-explicit-any */
  onopen: ((event: any) => void) | null;
  onmessage: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
  /* eslint-enable @typescript-eslint/no-explicit-any */
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

// --------------------------------------------------------------------------------------- options

/** What the token provider is told: `fresh` is true when the last token was refused (a 4001
 * close) or a refresh was asked for, so a cached token must not be returned again. */
export interface TokenRequest {
  fresh: boolean;
  /** 0 for the first connection attempt in a row, then 1, 2, … */
  attempt: number;
}

/** Returns the token for `?token=` (or null/undefined for none); called before every connect. */
export type TokenProvider = (request: TokenRequest) => Promise<string | null | undefined> | string | null | undefined;

export interface ChatClientOptions {
  /** The server's WebSocket URL, e.g. `wss://chat.example/ws` (http(s) URLs are converted). */
  url: string | URL;
  /** Called before each connection attempt; its token goes in `?token=`. */
  token?: TokenProvider;
  /** The WebSocket class to use; default `globalThis.WebSocket` (browsers, Node 22+). */
  WebSocket?: WebSocketConstructor;
  /** The author of publishes that name none (required by servers in anonymous mode). */
  author?: string;
  /** First reconnect delay ceiling, ms (default 500); doubles each attempt. */
  reconnectInitialDelayMs?: number;
  /** Largest reconnect delay ceiling, ms (default 15000). */
  reconnectMaxDelayMs?: number;
  /** How often to ping an idle connection, ms (default 25000). */
  pingIntervalMs?: number;
  /** A connection that sends nothing for this long after a ping is dropped, ms (default 10000). */
  pongTimeoutMs?: number;
  /** A publish unanswered for this long is sent again (same `message_id`), ms (default 15000;
   * the server answers `publish_failed` after 10 s). */
  publishAckTimeoutMs?: number;
  /** Delay before retrying a command refused with a retryable code, ms (default 1000; doubles
   * per try of the same command up to `reconnectMaxDelayMs`, with full jitter). */
  retryDelayMs?: number;
}

export type ConnectionState =
  /** Created; `connect()` not called yet. */
  | "idle"
  /** Getting a token or opening the socket. */
  | "connecting"
  /** The socket is open. */
  | "open"
  /** Disconnected; waiting `delayMs` before the next attempt. */
  | "reconnecting"
  /** `close()` was called: final. */
  | "closed";

export interface StateChange {
  state: ConnectionState;
  /** The connection attempt (0 for the first in a row). */
  attempt: number;
  /** With "reconnecting": the wait before the next attempt. */
  delayMs?: number;
  /** With "reconnecting": the close code of the lost connection (0 when it never opened or was
   * dropped by the client as dead). */
  code?: number;
  reason?: string;
}

export type SubscriptionState =
  /** Subscribing for the first time (history not received yet). */
  | "pending"
  /** Subscribed: messages arrive live. */
  | "live"
  /** Catching up with `since` after a disconnect, a gap or a server-side end. */
  | "resuming"
  /** Ended by `unsubscribe()`, `client.close()`, or a refusal (`error` says which). */
  | "closed";

export interface SubscriptionChange {
  channel: string;
  state: SubscriptionState;
  /** With "closed" after a refusal (e.g. `forbidden`). */
  error?: ChatError;
}

export interface MessageDelivery {
  channel: string;
  message: ChatMessage;
  /** True for the history that the subscription's first `subscribed` reply carried. */
  initial: boolean;
}

export interface ChatClientEvents {
  state: StateChange;
  /** Every message of every subscription, exactly once, in `seq` order per channel. */
  message: MessageDelivery;
  subscription: SubscriptionChange;
  /** Errors not tied to a promise: refused subscriptions, token provider failures, unsolicited
   * `error` frames (e.g. `token_expired` before a 4001 close), invalid frames. */
  error: ChatError;
  /** Every frame received, parsed, before the client acts on it (for logging or validation). */
  frame: ServerFrame;
}

export interface SubscribeOptions {
  /** The newest `limit` messages first (server default 50 when neither option is given). */
  limit?: number;
  /** Every message with a seq above `since` first (a resume from a stored position). */
  since?: number;
}

export interface PublishOptions {
  /** The message's id; default a new random UUID. Reusing one for the same content is safe: the
   * server stores a `message_id` once. */
  messageId?: string;
  /** Overrides the client's `author`. */
  author?: string;
  /** Give up after this long (ms): the promise rejects with `timeout`. The message may still be
   * stored if a send was already on its way; retrying with the same `messageId` is safe. */
  timeoutMs?: number;
}

export interface Published {
  channel: string;
  /** The stored message's id (the `message_id` sent). */
  id: string;
}

export interface SubscriptionEvents {
  message: MessageDelivery;
  state: SubscriptionChange;
}

// ---------------------------------------------------------------------------------- subscription

/** One channel's subscription. Create with {@link ChatClient.subscribe}. */
export class Subscription extends Emitter<SubscriptionEvents> {
  readonly channel: string;
  /** The seq of the last message delivered; null before the first `subscribed` reply. */
  lastSeq: number | null;
  state: SubscriptionState = "pending";
  /** Set when a refusal closed the subscription. */
  error: ChatError | undefined;
  /** Messages dropped because their seq was not above `lastSeq` (replays after a resume). */
  duplicates = 0;
  /** Gaps seen (a seq jump), each repaired by resubscribing with `since`. */
  gaps = 0;

  /** @internal */ readonly limit: number | undefined;
  /** @internal */ needResync = false;
  /** @internal */ synced: boolean;

  /** @internal */
  constructor(
    private readonly client: ChatClient,
    channel: string,
    options: SubscribeOptions,
  ) {
    super();
    this.channel = channel;
    this.limit = options.limit;
    this.lastSeq = options.since ?? null;
    this.synced = options.since !== undefined;
  }

  /** Ends the subscription (no more messages are delivered); resolves once the server confirmed
   * it, or at once when not connected. */
  unsubscribe(): Promise<void> {
    return this.client.unsubscribe(this.channel, this);
  }

  /** @internal */
  setState(state: SubscriptionState, error?: ChatError): SubscriptionChange | null {
    if (state === this.state) return null;
    this.state = state;
    if (error) this.error = error;
    const change: SubscriptionChange = error ? { channel: this.channel, state, error } : { channel: this.channel, state };
    this.emit("state", change);
    return change;
  }

  /** @internal */
  deliver(delivery: MessageDelivery): void {
    this.emit("message", delivery);
  }
}

// ----------------------------------------------------------------------------------- the client

interface Slot {
  readonly channel: string;
  sub: Subscription | null;
  /** A subscribe or unsubscribe of this channel is unanswered (at most one at a time). */
  inFlight: boolean;
  /** The server holds a subscription of this channel for this connection. */
  serverHas: boolean;
  retryTimer: ReturnType<typeof setTimeout> | null;
  retries: number;
  /** Resolvers of `unsubscribe()` calls waiting for the server. */
  unsubscribed: Array<() => void>;
}

interface Outgoing {
  command: PublishCommand;
  resolve: (value: Published) => void;
  reject: (error: ChatError) => void;
  inFlight: boolean;
  tries: number;
  ackTimer: ReturnType<typeof setTimeout> | null;
  retryTimer: ReturnType<typeof setTimeout> | null;
  deadline: ReturnType<typeof setTimeout> | null;
}

type Pending =
  | { kind: "subscribe"; slot: Slot }
  | { kind: "unsubscribe"; slot: Slot }
  | { kind: "publish"; out: Outgoing }
  | { kind: "auth"; resolve: (frame: AuthenticatedFrame) => void; reject: (error: ChatError) => void }
  | { kind: "ping" };

/**
 * A connection to chat-ws-server that stays connected: see the package README.
 *
 * ```ts
 * const client = new ChatClient({ url: "wss://chat.example/ws", token: async () => getToken() });
 * client.subscribe("#general", { limit: 50 }).on("message", ({ message }) => show(message));
 * client.connect();
 * await client.publish("#general", "hello");
 * ```
 */
export class ChatClient extends Emitter<ChatClientEvents> {
  state: ConnectionState = "idle";

  private readonly url: URL;
  private readonly tokenProvider: TokenProvider | undefined;
  private readonly WebSocketImpl: WebSocketConstructor;
  private readonly author: string | undefined;
  private readonly initialDelay: number;
  private readonly maxDelay: number;
  private readonly pingInterval: number;
  private readonly pongTimeout: number;
  private readonly ackTimeout: number;
  private readonly retryDelay: number;

  private ws: WebSocketLike | null = null;
  /** Whether the current connection opened, and whether the server sent anything on it. */
  private opened = false;
  private answered = false;
  private attempt = 0;
  private freshToken = false;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private pingTimer: ReturnType<typeof setInterval> | null = null;
  private pongTimer: ReturnType<typeof setTimeout> | null = null;
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private readonly slots = new Map<string, Slot>();
  private readonly outbox = new Map<string, Outgoing>();
  private waiters: Array<{ resolve: () => void; reject: (error: ChatError) => void }> = [];

  constructor(options: ChatClientOptions) {
    super();
    if (!options || typeof options !== "object") throw new ChatError("invalid_argument", "options are required");
    let url: URL;
    try {
      url = new URL(String(options.url));
    } catch (cause) {
      throw new ChatError("invalid_argument", `url is not a URL: ${JSON.stringify(String(options.url))}`, { cause });
    }
    if (url.protocol === "http:") url.protocol = "ws:";
    else if (url.protocol === "https:") url.protocol = "wss:";
    if (url.protocol !== "ws:" && url.protocol !== "wss:") {
      throw new ChatError("invalid_argument", `url must be ws:, wss:, http: or https: (got ${url.protocol})`);
    }
    this.url = url;
    if (options.token !== undefined && typeof options.token !== "function") {
      throw new ChatError("invalid_argument", "token must be a function returning the token (or a promise of it)");
    }
    this.tokenProvider = options.token;
    const impl = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (typeof impl !== "function") {
      throw new ChatError(
        "invalid_argument",
        "no WebSocket implementation: this runtime has no global WebSocket (Node < 22); pass options.WebSocket, e.g. the `ws` package's",
      );
    }
    this.WebSocketImpl = impl;
    if (options.author !== undefined) checkAuthor(options.author);
    this.author = options.author;
    this.initialDelay = checkDuration("reconnectInitialDelayMs", options.reconnectInitialDelayMs ?? 500);
    this.maxDelay = checkDuration("reconnectMaxDelayMs", options.reconnectMaxDelayMs ?? 15_000);
    this.pingInterval = checkDuration("pingIntervalMs", options.pingIntervalMs ?? 25_000);
    this.pongTimeout = checkDuration("pongTimeoutMs", options.pongTimeoutMs ?? 10_000);
    this.ackTimeout = checkDuration("publishAckTimeoutMs", options.publishAckTimeoutMs ?? 15_000);
    this.retryDelay = checkDuration("retryDelayMs", options.retryDelayMs ?? 1_000);
  }

  // ------------------------------------------------------------------------------ public API

  /** Starts connecting (and reconnecting whenever the connection is lost, until `close()`).
   * Resolves when a connection is open; rejects with `closed` if `close()` comes first. */
  connect(): Promise<void> {
    if (this.state === "closed") return Promise.reject(new ChatError("closed", "the client is closed"));
    const opened = this.whenOpen();
    if (this.state === "idle") void this.open();
    return opened;
  }

  /** Resolves when the connection is (next) open. */
  whenOpen(): Promise<void> {
    if (this.state === "open") return Promise.resolve();
    if (this.state === "closed") return Promise.reject(new ChatError("closed", "the client is closed"));
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  /** While waiting to reconnect, reconnects now (e.g. when the browser goes back online). */
  reconnectNow(): void {
    if (this.state !== "reconnecting") return;
    this.attempt = Math.min(this.attempt, 1);
    void this.open();
  }

  /** Closes the connection for good: subscriptions end, unacknowledged publishes reject with
   * `closed`. */
  close(): void {
    if (this.state === "closed") return;
    this.setState({ state: "closed", attempt: this.attempt });
    this.clearTimers();
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      detach(ws);
      try {
        ws.close(CloseCode.Normal, "client closed");
      } catch {
        /* already closing */
      }
    }
    const closed = () => new ChatError("closed", "the client is closed");
    for (const slot of this.slots.values()) {
      if (slot.retryTimer) clearTimeout(slot.retryTimer);
      if (slot.sub) this.emitSubscription(slot.sub.setState("closed"));
      this.unsubscribed(slot);
    }
    this.slots.clear();
    this.forgetConnection();
    for (const out of this.outbox.values()) this.settle(out, closed());
    for (const waiter of this.waiters) waiter.reject(closed());
    this.waiters = [];
  }

  /**
   * Subscribes to `channel`: first the newest `limit` messages (or every message after `since`),
   * then live ones, each exactly once and in `seq` order, across any number of reconnects.
   * Throws `invalid_channel` / `invalid_argument` for bad input, `already_subscribed` when this
   * client already holds a subscription of `channel`.
   */
  subscribe(channel: string, options: SubscribeOptions = {}): Subscription {
    if (this.state === "closed") throw new ChatError("closed", "the client is closed", { channel });
    checkChannel(channel);
    if (options.limit !== undefined && options.since !== undefined) {
      throw new ChatError("invalid_argument", "give limit or since, not both", { channel });
    }
    if (options.limit !== undefined) checkSeq("limit", options.limit);
    if (options.since !== undefined) checkSeq("since", options.since);
    let slot = this.slots.get(channel);
    if (slot?.sub) throw new ChatError("already_subscribed", `already subscribed to ${channel}`, { channel });
    if (!slot) {
      slot = { channel, sub: null, inFlight: false, serverHas: false, retryTimer: null, retries: 0, unsubscribed: [] };
      this.slots.set(channel, slot);
    }
    const sub = new Subscription(this, channel, options);
    slot.sub = sub;
    this.emitSubscription(sub.setState(sub.synced ? "resuming" : "pending"));
    this.reconcile(channel, slot);
    return sub;
  }

  /** The subscription of `channel`, if any. */
  subscription(channel: string): Subscription | undefined {
    return this.slots.get(channel)?.sub ?? undefined;
  }

  /** Ends the subscription of `channel` (see {@link Subscription.unsubscribe}). */
  unsubscribe(channel: string, only?: Subscription): Promise<void> {
    const slot = this.slots.get(channel);
    const sub = slot?.sub;
    if (!slot || !sub || (only && only !== sub)) return Promise.resolve();
    slot.sub = null;
    if (slot.retryTimer) clearTimeout(slot.retryTimer);
    slot.retryTimer = null;
    this.emitSubscription(sub.setState("closed"));
    if (!slot.serverHas && !slot.inFlight) {
      this.slots.delete(channel);
      return Promise.resolve();
    }
    const done = new Promise<void>((resolve) => slot.unsubscribed.push(resolve));
    this.reconcile(channel, slot);
    return done;
  }

  /**
   * Publishes `text` to `channel` with a `message_id` (given or generated) and resolves once the
   * server acknowledged it. Until then it is sent again after every reconnect, after a retryable
   * refusal (`publish_failed`, `rate_limited`, `server_busy`) and after `publishAckTimeoutMs`
   * without an answer: always with the same `message_id`, so the message is stored once. Rejects
   * with a {@link ChatError} for bad input, a final refusal (`forbidden`, `invalid_message`, …),
   * `timeout` (options.timeoutMs) or `closed`.
   */
  publish(channel: string, text: string, options: PublishOptions = {}): Promise<Published> {
    try {
      if (this.state === "closed") throw new ChatError("closed", "the client is closed", { channel });
      checkChannel(channel);
      checkText(text);
      const author = options.author ?? this.author;
      if (author !== undefined) checkAuthor(author);
      const messageId = options.messageId ?? newMessageId();
      if (typeof messageId !== "string" || !UUID_RE.test(messageId)) {
        throw new ChatError("invalid_message_id", `messageId must be a UUID (got ${JSON.stringify(messageId)})`, { channel });
      }
      const key = messageId.toLowerCase();
      if (this.outbox.has(key)) {
        throw new ChatError("invalid_argument", `message ${messageId} is already being published`, { channel });
      }
      const timeout = options.timeoutMs === undefined ? undefined : checkDuration("timeoutMs", options.timeoutMs);
      const command: PublishCommand = { command: "publish", channel, text, message_id: key };
      if (author !== undefined) command.author = author;
      return new Promise<Published>((resolve, reject) => {
        const out: Outgoing = { command, resolve, reject, inFlight: false, tries: 0, ackTimer: null, retryTimer: null, deadline: null };
        if (timeout !== undefined) {
          out.deadline = setTimeout(
            () => this.settle(out, new ChatError("timeout", `no acknowledgement within ${timeout} ms`, { channel })),
            timeout,
          );
        }
        this.outbox.set(key, out);
        this.sendPublish(out);
      });
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** Publishes not yet acknowledged. */
  get unacknowledged(): number {
    return this.outbox.size;
  }

  /**
   * Refreshes the connection's identity without reconnecting (`auth` command): with the given
   * token, else one from the token provider (asked with `fresh: true`). Subscriptions the new
   * token may not read end (`forbidden`). Rejects with the server's code when refused (the current
   * token stays), or `closed` when not connected.
   */
  async authenticate(token?: string): Promise<AuthenticatedFrame> {
    if (token === undefined) {
      if (!this.tokenProvider) throw new ChatError("invalid_argument", "no token given and no token provider");
      const provided = await this.tokenProvider({ fresh: true, attempt: 0 });
      if (typeof provided !== "string" || !provided) throw new ChatError("token_unavailable", "the token provider gave no token");
      token = provided;
    }
    if (typeof token !== "string" || !token) throw new ChatError("invalid_argument", "token must be a non-empty string");
    const command = { command: "auth", token } as const;
    return new Promise((resolve, reject) => {
      if (!this.request(command, { kind: "auth", resolve, reject })) {
        reject(new ChatError("closed", "not connected"));
      }
    });
  }

  // ------------------------------------------------------------------------------ connection

  private async open(): Promise<void> {
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (this.ws || this.state === "closed" || this.state === "connecting") return;
    this.setState({ state: "connecting", attempt: this.attempt });
    const url = new URL(this.url.href);
    if (this.tokenProvider) {
      let token: string | null | undefined;
      try {
        token = await this.tokenProvider({ fresh: this.freshToken, attempt: this.attempt });
      } catch (cause) {
        if (!this.connecting()) return;
        this.emit("error", new ChatError("token_unavailable", `the token provider failed: ${String(cause)}`, { cause }));
        this.scheduleReconnect(0, "token provider failed");
        return;
      }
      if (!this.connecting()) return; // closed meanwhile
      if (token !== null && token !== undefined) {
        if (typeof token !== "string") {
          this.emit("error", new ChatError("token_unavailable", "the token provider returned a non-string"));
          this.scheduleReconnect(0, "token provider failed");
          return;
        }
        url.searchParams.set("token", token);
      }
      this.freshToken = false;
    }
    let ws: WebSocketLike;
    try {
      ws = new this.WebSocketImpl(url.href);
    } catch (cause) {
      this.emit("error", new ChatError("invalid_argument", `cannot open a WebSocket to ${this.url.href}: ${String(cause)}`, { cause }));
      this.scheduleReconnect(0, "WebSocket constructor failed");
      return;
    }
    this.ws = ws;
    this.opened = this.answered = false;
    ws.onopen = () => {
      if (this.ws === ws) this.onOpen();
    };
    ws.onmessage = (event: { data: unknown }) => {
      if (this.ws === ws) this.onData(event.data);
    };
    ws.onclose = (event: { code?: number; reason?: string }) => {
      if (this.ws === ws) this.onLost(event.code ?? 0, event.reason ?? "");
    };
    ws.onerror = () => {
      /* a close event follows */
    };
  }

  /** Still connecting (not closed while a token was awaited)? A method: TypeScript would narrow
   * `this.state` across the `await`. */
  private connecting(): boolean {
    return this.state === "connecting";
  }

  private onOpen(): void {
    this.opened = true;
    this.setState({ state: "open", attempt: this.attempt });
    // The pong (or any frame) proves the server answers: then the backoff starts over.
    this.request({ command: "ping" }, { kind: "ping" });
    this.armPong();
    this.pingTimer = setInterval(() => {
      if (this.request({ command: "ping" }, { kind: "ping" })) this.armPong();
    }, this.pingInterval);
    for (const [channel, slot] of this.slots) this.reconcile(channel, slot);
    for (const out of this.outbox.values()) this.sendPublish(out);
    const waiters = this.waiters;
    this.waiters = [];
    for (const waiter of waiters) waiter.resolve();
  }

  private armPong(): void {
    if (this.pongTimer) return;
    this.pongTimer = setTimeout(() => {
      this.pongTimer = null;
      // Nothing arrived since the ping: the connection is dead (a sleeping laptop, a lost route).
      const ws = this.ws;
      if (!ws) return;
      detach(ws);
      try {
        ws.close();
      } catch {
        /* ignore */
      }
      this.onLost(0, "no answer to ping");
    }, this.pongTimeout);
  }

  private onLost(code: number, reason: string): void {
    const ws = this.ws;
    if (ws) detach(ws);
    this.ws = null;
    if (this.state === "closed") return;
    this.clearTimers();
    this.forgetConnection();
    // A refused token closes with 4001. A server that drops the socket right after that close
    // can make it arrive as 1006 instead: a connection that opened and closed before the server
    // said anything counts as a refusal too (the cost is one token fetch too many).
    if (code === CloseCode.Unauthorized || (this.opened && !this.answered)) this.freshToken = true;
    this.scheduleReconnect(code, reason);
  }

  private scheduleReconnect(code: number, reason: string): void {
    if (this.state === "closed") return;
    let delayMs = backoffDelay(this.attempt, this.initialDelay, this.maxDelay);
    if (code === CloseCode.RateLimited) delayMs = Math.max(delayMs, RATE_LIMIT_COOLDOWN_MS);
    this.attempt++;
    this.setState({ state: "reconnecting", attempt: this.attempt, delayMs, code, reason });
    this.retryTimer = setTimeout(() => void this.open(), delayMs);
  }

  /** The connection is gone: nothing it carried is answered any more. */
  private forgetConnection(): void {
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const meta of pending) {
      if (meta.kind === "auth") meta.reject(new ChatError("closed", "the connection closed before the answer"));
    }
    for (const [channel, slot] of this.slots) {
      slot.inFlight = false;
      slot.serverHas = false;
      if (slot.retryTimer) clearTimeout(slot.retryTimer);
      slot.retryTimer = null;
      // An unsubscribe the connection took with it is done: the server forgot the channel too.
      this.unsubscribed(slot);
      if (!slot.sub) this.slots.delete(channel);
      else this.updateSubState(slot);
    }
    for (const out of this.outbox.values()) {
      out.inFlight = false;
      if (out.ackTimer) clearTimeout(out.ackTimer);
      out.ackTimer = null;
    }
  }

  private clearTimers(): void {
    if (this.retryTimer) clearTimeout(this.retryTimer);
    if (this.pingTimer) clearInterval(this.pingTimer);
    if (this.pongTimer) clearTimeout(this.pongTimer);
    this.retryTimer = this.pingTimer = this.pongTimer = null;
  }

  private setState(change: StateChange): void {
    this.state = change.state;
    this.emit("state", change);
  }

  private send(command: Command): boolean {
    const ws = this.ws;
    if (!ws || this.state !== "open") return false;
    try {
      ws.send(JSON.stringify(command));
      return true;
    } catch {
      return false; // closing: the close event follows
    }
  }

  private request(command: Command, meta: Pending): boolean {
    const id = this.nextId++;
    this.pending.set(id, meta);
    if (this.send({ ...command, id })) return true;
    this.pending.delete(id);
    return false;
  }

  // ---------------------------------------------------------------------------------- frames

  private onData(data: unknown): void {
    if (this.pongTimer) clearTimeout(this.pongTimer);
    this.pongTimer = null;
    let frame: ServerFrame;
    try {
      if (typeof data !== "string") throw new Error("a binary frame");
      frame = JSON.parse(data) as ServerFrame;
      if (!frame || typeof frame !== "object" || typeof frame.type !== "string") throw new Error("not a frame object");
    } catch (cause) {
      this.emit("error", new ChatError("invalid_frame", `the server sent an invalid frame: ${String(cause)}`, { cause }));
      return;
    }
    this.answered = true;
    if (frame.type !== "error") this.attempt = 0;
    this.emit("frame", frame);
    let meta: Pending | undefined;
    if ("reply_to" in frame && typeof frame.reply_to === "number") {
      meta = this.pending.get(frame.reply_to);
      this.pending.delete(frame.reply_to);
    }
    switch (frame.type) {
      case "subscribed":
        return this.onSubscribed(frame, meta);
      case "message": {
        const slot = this.slots.get(frame.channel);
        if (slot?.sub && slot.serverHas && frame.message) this.deliver(slot, frame.message, false);
        return;
      }
      case "unsubscribed":
        return this.onUnsubscribed(frame, meta);
      case "published":
        return this.onPublished(frame);
      case "authenticated":
        if (meta?.kind === "auth") meta.resolve(frame);
        return;
      case "error":
        return this.onError(frame, meta);
      default:
        return; // pong, and frames of later protocol versions
    }
  }

  private onSubscribed(frame: SubscribedFrame, meta: Pending | undefined): void {
    const slot = meta?.kind === "subscribe" ? meta.slot : this.slots.get(frame.channel);
    if (!slot) return;
    if (meta?.kind === "subscribe") slot.inFlight = false;
    slot.serverHas = true;
    slot.retries = 0;
    const sub = slot.sub;
    if (sub) {
      const initial = !sub.synced;
      for (const message of frame.messages ?? []) this.deliver(slot, message, initial);
      // An empty reply (`limit: 0`, an empty channel, nothing after `since`): the position is
      // `last_seq`. Otherwise `last_seq` is the last message's seq, already delivered.
      if (sub.lastSeq === null || (!frame.messages?.length && frame.last_seq > sub.lastSeq)) {
        sub.lastSeq = frame.last_seq;
      }
      sub.synced = true;
    }
    this.reconcile(frame.channel, slot);
  }

  private onUnsubscribed(frame: UnsubscribedFrame, meta: Pending | undefined): void {
    const slot = meta?.kind === "unsubscribe" ? meta.slot : this.slots.get(frame.channel);
    if (!slot) return;
    if (meta?.kind === "unsubscribe") {
      slot.inFlight = false;
      this.unsubscribed(slot);
    }
    slot.serverHas = false;
    const sub = slot.sub;
    if (sub && frame.reason === "forbidden") {
      this.fail(frame.channel, slot, new ChatError("forbidden", `no longer allowed to read ${frame.channel}`, { channel: frame.channel }));
      return;
    }
    if (sub && frame.reason === "history_unavailable") {
      this.retryLater(frame.channel, slot);
      return;
    }
    this.reconcile(frame.channel, slot);
  }

  private onPublished(frame: PublishedFrame): void {
    const out = this.outbox.get(frame.id.toLowerCase());
    if (out) this.settle(out, { channel: frame.channel, id: frame.id });
  }

  private onError(frame: ErrorFrame, meta: Pending | undefined): void {
    const error = (channel?: string) =>
      new ChatError(frame.code, frame.message, channel === undefined ? { frame } : { frame, channel });
    switch (meta?.kind) {
      case "subscribe": {
        const slot = meta.slot;
        const channel = slot.channel;
        slot.inFlight = false;
        if (frame.code === "already_subscribed") {
          // The server has it, from where we cannot tell: start over from our own position.
          slot.serverHas = true;
          if (slot.sub) slot.sub.needResync = true;
          this.reconcile(channel, slot);
        } else if (RETRYABLE.has(frame.code)) {
          this.retryLater(channel, slot);
        } else if (slot.sub) {
          this.fail(channel, slot, error(channel));
        } else {
          this.reconcile(channel, slot);
        }
        return;
      }
      case "unsubscribe": {
        const slot = meta.slot;
        const channel = slot.channel;
        slot.inFlight = false;
        if (frame.code === "not_subscribed") {
          slot.serverHas = false;
          this.unsubscribed(slot);
        }
        if (RETRYABLE.has(frame.code)) this.retryLater(channel, slot);
        else this.reconcile(channel, slot);
        return;
      }
      case "publish": {
        const out = meta.out;
        if (out.ackTimer) clearTimeout(out.ackTimer);
        out.ackTimer = null;
        out.inFlight = false;
        if (!this.outbox.has(out.command.message_id!)) return;
        if (RETRYABLE.has(frame.code)) {
          const delay = backoffDelay(out.tries, this.retryDelay, this.maxDelay) + this.retryDelay / 2;
          out.retryTimer = setTimeout(() => {
            out.retryTimer = null;
            this.sendPublish(out);
          }, delay);
        } else {
          this.settle(out, error(out.command.channel));
        }
        return;
      }
      case "auth":
        meta.reject(error());
        return;
      default:
        this.emit("error", error());
    }
  }

  // ------------------------------------------------------------------------- subscriptions

  /** Accepts the next message of a subscription: exactly once, in order; a gap starts a resume. */
  private deliver(slot: Slot, message: ChatMessage, initial: boolean): void {
    const sub = slot.sub;
    if (!sub || typeof message?.seq !== "number") return;
    if (sub.lastSeq !== null && message.seq <= sub.lastSeq) {
      sub.duplicates++;
      return;
    }
    if (sub.lastSeq !== null && sub.synced && message.seq > sub.lastSeq + 1) {
      // A hole: drop everything past it and fetch from our position (unsubscribe, then since).
      if (!sub.needResync) {
        sub.gaps++;
        sub.needResync = true;
        this.updateSubState(slot);
        this.reconcile(sub.channel, slot);
      }
      return;
    }
    sub.lastSeq = message.seq;
    const delivery: MessageDelivery = { channel: sub.channel, message, initial };
    sub.deliver(delivery);
    this.emit("message", delivery);
  }

  /**
   * Brings the server's side of `channel` to what the client wants, one command at a time:
   * subscribe (with `since` once synced) when wanted and not held, unsubscribe when held and
   * not wanted (or to resynchronise after a gap).
   */
  private reconcile(channel: string, slot: Slot): void {
    const sub = slot.sub;
    if (!slot.inFlight && !slot.retryTimer && this.state === "open") {
      if (sub && !slot.serverHas) {
        let command: SubscribeCommand;
        if (sub.synced && sub.lastSeq !== null) command = { command: "subscribe", channel, since: sub.lastSeq };
        else if (sub.limit !== undefined) command = { command: "subscribe", channel, limit: sub.limit };
        else command = { command: "subscribe", channel };
        if (this.request(command, { kind: "subscribe", slot })) {
          slot.inFlight = true;
          sub.needResync = false;
        }
      } else if (slot.serverHas && (!sub || sub.needResync)) {
        if (this.request({ command: "unsubscribe", channel }, { kind: "unsubscribe", slot })) slot.inFlight = true;
      }
    }
    if (!sub && !slot.serverHas && !slot.inFlight && !slot.retryTimer) {
      this.unsubscribed(slot);
      if (this.slots.get(channel) === slot) this.slots.delete(channel);
    }
    if (sub) this.updateSubState(slot);
  }

  /** Settles the `unsubscribe()` calls waiting for the server to let go of the channel. */
  private unsubscribed(slot: Slot): void {
    const waiting = slot.unsubscribed;
    slot.unsubscribed = [];
    for (const done of waiting) done();
  }

  private updateSubState(slot: Slot): void {
    const sub = slot.sub;
    if (!sub || sub.state === "closed") return;
    const state: SubscriptionState =
      slot.serverHas && !sub.needResync && !slot.inFlight ? "live" : sub.synced ? "resuming" : "pending";
    this.emitSubscription(sub.setState(state));
  }

  private retryLater(channel: string, slot: Slot): void {
    if (slot.retryTimer) clearTimeout(slot.retryTimer);
    const delay = backoffDelay(slot.retries++, this.retryDelay, this.maxDelay) + this.retryDelay / 2;
    slot.retryTimer = setTimeout(() => {
      slot.retryTimer = null;
      this.reconcile(channel, slot);
    }, delay);
    this.updateSubState(slot);
  }

  private fail(channel: string, slot: Slot, error: ChatError): void {
    const sub = slot.sub;
    slot.sub = null;
    if (sub) this.emitSubscription(sub.setState("closed", error));
    this.emit("error", error);
    this.reconcile(channel, slot);
  }

  private emitSubscription(change: SubscriptionChange | null): void {
    if (change) this.emit("subscription", change);
  }

  // ---------------------------------------------------------------------------- publishing

  private sendPublish(out: Outgoing): void {
    if (out.inFlight || out.retryTimer || !this.outbox.has(out.command.message_id!)) return;
    if (!this.request(out.command, { kind: "publish", out })) return; // sent after reconnect
    out.inFlight = true;
    out.tries++;
    out.ackTimer = setTimeout(() => {
      // No answer: send it again (same message_id, stored once).
      out.ackTimer = null;
      out.inFlight = false;
      this.sendPublish(out);
    }, this.ackTimeout);
  }

  private settle(out: Outgoing, result: Published | ChatError): void {
    if (!this.outbox.delete(out.command.message_id!)) return;
    for (const timer of [out.ackTimer, out.retryTimer, out.deadline]) if (timer) clearTimeout(timer);
    if (result instanceof ChatError) out.reject(result);
    else out.resolve(result);
  }
}

function detach(ws: WebSocketLike): void {
  ws.onopen = ws.onmessage = ws.onclose = null;
  ws.onerror = () => {
    /* late errors of an abandoned socket */
  };
}
