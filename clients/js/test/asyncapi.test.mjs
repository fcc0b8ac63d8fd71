// The AsyncAPI document of /ws (services/ws-server/src/asyncapi.json): @asyncapi/parser reports
// no error, its schemas compile under strict Ajv, every example validates, and the frame
// validator the client tests use does reject frames that break the protocol.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Parser } from "@asyncapi/parser";
import { asyncapi, asyncapiText, makeValidator, payloadSchemaName } from "./support/frames.mjs";

test("@asyncapi/parser parses the document without errors", async () => {
  const { document, diagnostics } = await new Parser().parse(asyncapiText);
  // Severity 0 is an error; 1 a warning, 2 information, 3 a hint.
  const errors = diagnostics.filter((d) => d.severity === 0);
  assert.deepEqual(errors.map((d) => `${d.code}: ${d.message} at ${d.path.join(".")}`), []);
  assert.ok(document, "the parser returned a document");
  assert.match(document.version(), /^3\./);
  const channel = document.channels().get("ws");
  assert.equal(channel.address(), "/ws");
  const names = channel.messages().all().map((m) => m.id()).sort();
  assert.deepEqual(names, [
    "auth", "authenticated", "error", "message", "ping", "pong", "publish", "published",
    "subscribe", "subscribed", "unsubscribe", "unsubscribed",
  ]);
  assert.equal(document.operations().all().length, 8);
});

test("the parser does report a broken document (the check above can fail)", async () => {
  const broken = JSON.parse(asyncapiText);
  broken.operations.ping.messages = [{ $ref: "#/channels/ws/messages/nope" }];
  const { diagnostics } = await new Parser().parse(JSON.stringify(broken));
  assert.ok(diagnostics.some((d) => d.severity === 0), "an unresolvable $ref is an error");
});

test("every message example validates against its payload schema", () => {
  const validator = makeValidator();
  let examples = 0;
  for (const [name, message] of Object.entries(asyncapi.components.messages)) {
    const schema = payloadSchemaName(asyncapi, name);
    assert.ok(schema, `message ${name} has a payload schema`);
    assert.ok(message.examples?.length, `message ${name} has examples`);
    const validate = validator.forSchema(schema);
    for (const { payload } of message.examples) {
      examples++;
      assert.ok(validate(payload), `${name} example ${JSON.stringify(payload)}: ${JSON.stringify(validate.errors)}`);
    }
  }
  assert.ok(examples >= 12);
});

test("the frame validator rejects frames that break the protocol", () => {
  const { check } = makeValidator();
  const message = {
    channel: "#c", seq: 1, id: "0d6f3a52-4c1b-4e7e-8a8c-2f9d7b6e5a41", author: "a", text: "t",
    sent_at: "2026-11-28T03:02:58.297922Z", stored_at: "2026-11-28T03:02:58.301145Z",
  };
  assert.deepEqual(check({ type: "message", channel: "#c", message }), []);
  assert.deepEqual(check({ type: "pong" }), []);
  const bad = [
    { type: "teleport" },                                                   // no such frame
    { type: "message", channel: "#c", message: { ...message, seq: 0 } },    // seq starts at 1
    { type: "message", channel: "#c", message: { ...message, id: "x" } },   // id is a UUID
    { type: "message", channel: "a b", message },                           // channel syntax
    { type: "subscribed", channel: "#c", messages: [] },                    // last_seq missing
    { type: "error", code: "oops", message: "m" },                          // unknown code
    { type: "unsubscribed", channel: "#c", reason: "bored" },               // unknown reason
    { type: "pong", extra: 1 },                                             // undocumented field
    { type: "authenticated", user_id: "u", expires_at: "tomorrow" },        // not a date-time
  ];
  for (const frame of bad) assert.notDeepEqual(check(frame), [], `accepted ${JSON.stringify(frame)}`);
});

test("commands of docs/PROTOCOL.md validate; malformed ones do not", () => {
  const { forSchema } = makeValidator();
  const command = forSchema("ClientCommand");
  for (const ok of [
    { command: "subscribe", channel: "#kerno-challenge", id: 1 },
    { command: "subscribe", channel: "#kerno-challenge", limit: 200 },
    { command: "subscribe", channel: "#kerno-challenge", since: 1234 },
    { command: "unsubscribe", channel: "#kerno-challenge" },
    { command: "publish", channel: "#kerno-challenge", author: "alice", text: "hi", id: 7 },
    { command: "auth", token: "eyJ" },
    { command: "ping" },
  ]) assert.ok(command(ok), `${JSON.stringify(ok)}: ${JSON.stringify(command.errors)}`);
  for (const bad of [
    { command: "subscribe", channel: "#c", limit: 1, since: 2 },
    { command: "subscribe", channel: "#c", since: -1 },
    { command: "publish", channel: "#c", text: "" },
    { command: "publish", channel: "#c", text: "t", message_id: "not-a-uuid" },
    { command: "dance" },
  ]) assert.ok(!command(bad), `accepted ${JSON.stringify(bad)}`);
});
