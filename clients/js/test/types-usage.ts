// Compiled (never run) by `npm run check-types` in scripts/client-test: the published type
// declarations accept both the browser's WebSocket and the `ws` package's, and type the events,
// frames and errors as documented. A change that breaks a caller's types fails here.
import WS from "ws";
import {
  ChatClient,
  ChatError,
  type ChatMessage,
  type ConnectionState,
  type ErrorCode,
  type ServerFrame,
  type SubscriptionState,
} from "../dist/index.js";

const node = new ChatClient({ url: "ws://127.0.0.1:8080/ws", WebSocket: WS, token: async ({ fresh }) => (fresh ? "new" : null) });
const browser = new ChatClient({ url: new URL("https://chat.example/ws"), WebSocket, token: () => "token" });

const sub = node.subscribe("#general", { since: 3 });
sub.on("message", ({ message, initial }: { message: ChatMessage; initial: boolean }) => message.seq.toFixed() + String(initial));
sub.on("state", ({ state }) => {
  const s: SubscriptionState = state;
  return s;
});
node.on("state", ({ state, delayMs }) => {
  const s: ConnectionState = state;
  return [s, delayMs];
});
node.on("frame", (frame: ServerFrame) => {
  if (frame.type === "error") {
    const code: ErrorCode = frame.code;
    return code;
  }
  if (frame.type === "subscribed") return frame.messages.map((m) => m.seq + frame.last_seq);
  return frame.type;
});
node.on("error", (error: ChatError) => error.code);
void node.publish("#general", "hello", { messageId: "0d6f3a52-4c1b-4e7e-8a8c-2f9d7b6e5a41" }).then(({ id }) => id.toUpperCase());
void browser.authenticate().then((frame) => frame.expires_at);
// @ts-expect-error: limit and since are numbers
node.subscribe("#general", { limit: "50" });
