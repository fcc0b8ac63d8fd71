// The wire protocol of chat-ws-server's `/ws` (docs/PROTOCOL.md, services/ws-server/src/protocol.rs,
// and the AsyncAPI document served at /asyncapi.json). Types only: nothing here exists at run time.

/** A stored message, as delivered. `seq` is per channel: 1, 2, 3, … contiguous, never reused. */
export interface ChatMessage {
  channel: string;
  seq: number;
  /** The message's UUID (the publisher's `message_id`, else one the server made). */
  id: string;
  author: string;
  text: string;
  /** RFC 3339 time the publisher sent it. */
  sent_at: string;
  /** RFC 3339 time it was stored. */
  stored_at: string;
  /** The publisher's user id (a token's `sub`); absent when unknown. */
  user_id?: string;
}

/** Stable codes of `error` frames. */
export type ErrorCode =
  | "invalid_json"
  | "unknown_command"
  | "missing_field"
  | "invalid_channel"
  | "invalid_limit"
  | "invalid_since"
  | "invalid_message"
  | "invalid_message_id"
  | "forbidden"
  | "missing_token"
  | "invalid_token"
  | "token_expired"
  | "token_not_yet_valid"
  | "wrong_issuer"
  | "wrong_audience"
  | "missing_claim"
  | "no_author"
  | "invalid_rights"
  | "keys_unavailable"
  | "auth_disabled"
  | "too_many_subscriptions"
  | "not_subscribed"
  | "already_subscribed"
  | "binary_not_supported"
  | "publish_failed"
  | "history_unavailable"
  | "rate_limited"
  | "server_busy";

/** Why the server ended a subscription the client did not ask to end. */
export type UnsubscribeReason = "forbidden" | "history_unavailable";

/** Any JSON value: a command's `id`, echoed as `reply_to`. */
export type RequestId = string | number | boolean | null | RequestId[] | { [key: string]: RequestId };

export type SubscribeCommand =
  | { command: "subscribe"; channel: string; limit?: number; id?: RequestId }
  | { command: "subscribe"; channel: string; since: number; id?: RequestId };
export interface UnsubscribeCommand {
  command: "unsubscribe";
  channel: string;
  id?: RequestId;
}
export interface PublishCommand {
  command: "publish";
  channel: string;
  text: string;
  author?: string;
  message_id?: string;
  id?: RequestId;
}
export interface AuthCommand {
  command: "auth";
  token: string;
  id?: RequestId;
}
export interface PingCommand {
  command: "ping";
  id?: RequestId;
}
export type Command = SubscribeCommand | UnsubscribeCommand | PublishCommand | AuthCommand | PingCommand;

export interface SubscribedFrame {
  type: "subscribed";
  channel: string;
  /** Oldest to newest. */
  messages: ChatMessage[];
  /** The seq of the last message this reply accounts for (0 for an empty channel). */
  last_seq: number;
  reply_to?: RequestId;
}
export interface MessageFrame {
  type: "message";
  channel: string;
  message: ChatMessage;
}
export interface UnsubscribedFrame {
  type: "unsubscribed";
  channel: string;
  /** Absent when the client asked. */
  reason?: UnsubscribeReason;
  reply_to?: RequestId;
}
export interface AuthenticatedFrame {
  type: "authenticated";
  user_id: string;
  expires_at: string;
  reply_to?: RequestId;
}
export interface PublishedFrame {
  type: "published";
  channel: string;
  /** The stored message's id: the command's `message_id` when it had one. */
  id: string;
  reply_to?: RequestId;
}
export interface PongFrame {
  type: "pong";
  reply_to?: RequestId;
}
export interface ErrorFrame {
  type: "error";
  code: ErrorCode;
  message: string;
  reply_to?: RequestId;
}
export type ServerFrame =
  | SubscribedFrame
  | MessageFrame
  | UnsubscribedFrame
  | AuthenticatedFrame
  | PublishedFrame
  | PongFrame
  | ErrorFrame;
