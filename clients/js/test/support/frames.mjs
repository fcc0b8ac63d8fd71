// Validates server frames against the AsyncAPI document the server serves
// (services/ws-server/src/asyncapi.json): each frame against the payload schema of the channel
// message named by its `type`. A frame whose type has no message, or that does not match its
// schema, is invalid.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import Ajv from "ajv";
import addFormats from "ajv-formats";

const here = path.dirname(fileURLToPath(import.meta.url));
export const ASYNCAPI_PATH = path.resolve(here, "..", "..", "..", "..", "services", "ws-server", "src", "asyncapi.json");
export const asyncapiText = fs.readFileSync(ASYNCAPI_PATH, "utf8");
export const asyncapi = JSON.parse(asyncapiText);

const SCHEMAS = "#/components/schemas/";

/** The component schemas as one JSON Schema document (`#/components/schemas/X` -> `#/definitions/X`). */
function schemaDocument(doc) {
  const rewrite = (value) => {
    if (Array.isArray(value)) return value.map(rewrite);
    if (value && typeof value === "object") {
      return Object.fromEntries(Object.entries(value).map(([key, inner]) => {
        if (key === "$ref" && typeof inner === "string") {
          if (!inner.startsWith(SCHEMAS)) throw new Error(`unexpected $ref ${inner}`);
          return [key, `#/definitions/${inner.slice(SCHEMAS.length)}`];
        }
        return [key, rewrite(inner)];
      }));
    }
    return value;
  };
  return { $id: "asyncapi-schemas", definitions: rewrite(doc.components.schemas) };
}

function resolve(doc, ref) {
  if (!ref.startsWith("#/")) throw new Error(`non-local $ref ${ref}`);
  let node = doc;
  for (const part of ref.slice(2).split("/")) {
    node = node?.[part.replace(/~1/g, "/").replace(/~0/g, "~")];
    if (node === undefined) throw new Error(`$ref ${ref} does not resolve`);
  }
  return node;
}

/** The schema name of the payload of channel `ws`'s message `name`. */
export function payloadSchemaName(doc, name) {
  const onChannel = doc.channels.ws.messages[name];
  if (!onChannel) return null;
  const message = onChannel.$ref ? resolve(doc, onChannel.$ref) : onChannel;
  const ref = message.payload?.$ref;
  if (!ref?.startsWith(SCHEMAS)) throw new Error(`message ${name}: payload is not a component schema`);
  return ref.slice(SCHEMAS.length);
}

export function makeValidator(doc = asyncapi) {
  const ajv = new Ajv({ strict: true, strictRequired: false, allErrors: true });
  addFormats(ajv);
  ajv.addSchema(schemaDocument(doc));
  const cache = new Map();
  const forSchema = (name) => {
    if (!cache.has(name)) cache.set(name, ajv.compile({ $ref: `asyncapi-schemas#/definitions/${name}` }));
    return cache.get(name);
  };
  return {
    ajv,
    forSchema,
    /** Problems of `frame` (empty when valid). */
    check(frame) {
      if (!frame || typeof frame !== "object" || typeof frame.type !== "string") return ["not an object with a string `type`"];
      const name = payloadSchemaName(doc, frame.type);
      if (!name) return [`no message "${frame.type}" on channel ws`];
      const validate = forSchema(name);
      if (validate(frame)) return [];
      return validate.errors.map((e) => `${name}${e.instancePath} ${e.message} ${JSON.stringify(e.params)}`);
    },
  };
}

const shared = makeValidator();
/** Every frame checked so far, and those that failed (tests assert none did). */
export const frameLog = { checked: 0, byType: new Map(), invalid: [] };

/** Checks one received frame, recording the result in `frameLog`. */
export function checkFrame(frame) {
  frameLog.checked++;
  frameLog.byType.set(frame?.type, (frameLog.byType.get(frame?.type) ?? 0) + 1);
  const problems = shared.check(frame);
  if (problems.length) frameLog.invalid.push({ frame, problems });
  return problems;
}
