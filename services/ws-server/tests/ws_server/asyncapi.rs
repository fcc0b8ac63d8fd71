//! `GET /asyncapi.json`: the AsyncAPI 3 document of `/ws` is served, parses, and names every
//! error code and every server frame of `src/protocol.rs` (so a new code or frame cannot be
//! added without documenting it). `scripts/client-test` also validates it with
//! `@asyncapi/parser` and checks every frame its client tests receive against its schemas.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::support::Stack;

/// The variants of `pub enum NAME` (or `pub enum NAME<'a>`) in `src/protocol.rs`, snake_cased
/// the way serde's `rename_all = "snake_case"` writes them.
fn protocol_variants(name: &str) -> BTreeSet<String> {
    let source = include_str!("../../src/protocol.rs");
    let start = source
        .find(&format!("pub enum {name}"))
        .unwrap_or_else(|| panic!("pub enum {name} not found in protocol.rs"));
    let body = &source[start..];
    let body = &body[body.find('{').unwrap() + 1..];
    let mut depth = 0;
    let mut variants = BTreeSet::new();
    for line in body.lines() {
        let trimmed = line.trim();
        if depth == 0 && trimmed.starts_with('}') {
            break;
        }
        if depth == 0 && trimmed.starts_with(|c: char| c.is_ascii_uppercase()) {
            let ident: String = trimmed
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            let mut snake = String::new();
            for (i, c) in ident.chars().enumerate() {
                if c.is_ascii_uppercase() {
                    if i > 0 {
                        snake.push('_');
                    }
                    snake.push(c.to_ascii_lowercase());
                } else {
                    snake.push(c);
                }
            }
            variants.insert(snake);
        }
        depth += line.matches('{').count();
        depth -= line.matches('}').count().min(depth);
    }
    assert!(!variants.is_empty(), "no variants parsed for {name}");
    variants
}

/// Follows a local `$ref` (`#/a/b`) within the document.
fn resolve<'a>(doc: &'a Value, reference: &str) -> &'a Value {
    let pointer = reference
        .strip_prefix('#')
        .unwrap_or_else(|| panic!("non-local $ref {reference}"));
    doc.pointer(pointer)
        .unwrap_or_else(|| panic!("$ref {reference} does not resolve"))
}

fn every_ref<'a>(value: &'a Value, refs: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                match (key.as_str(), inner) {
                    ("$ref", Value::String(target)) => refs.push(target),
                    _ => every_ref(inner, refs),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| every_ref(item, refs)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_asyncapi_document_is_served_and_covers_the_protocol() {
    let stack = Stack::start().await;
    let response = reqwest::get(stack.http("/asyncapi.json")).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let body = response.text().await.unwrap();
    assert_eq!(body, include_str!("../../src/asyncapi.json"));
    let doc: Value = serde_json::from_str(&body).expect("/asyncapi.json parses as JSON");

    let version = doc["asyncapi"].as_str().expect("an `asyncapi` version");
    assert!(version.starts_with("3."), "AsyncAPI 3, not {version}");
    assert_eq!(doc["channels"]["ws"]["address"], "/ws");
    let mut refs = Vec::new();
    every_ref(&doc, &mut refs);
    assert!(refs.len() > 20, "only {} $refs", refs.len());
    for reference in refs {
        resolve(&doc, reference);
    }

    // Every error code the server can send is documented, and nothing else.
    let documented: BTreeSet<String> = doc["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .expect("ErrorCode has an enum")
        .iter()
        .map(|code| code.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(documented, protocol_variants("ErrorCode"));

    // Every server frame has a message on the channel whose payload pins its `type`.
    let messages = doc["channels"]["ws"]["messages"].as_object().unwrap();
    for frame in protocol_variants("ServerFrame") {
        let message = messages
            .get(&frame)
            .unwrap_or_else(|| panic!("no message {frame:?} on channel ws"));
        let message = resolve(&doc, message["$ref"].as_str().unwrap());
        let payload = resolve(&doc, message["payload"]["$ref"].as_str().unwrap());
        assert_eq!(payload["properties"]["type"]["const"], frame.as_str());
    }
    // And every command the parser knows.
    for command in ["subscribe", "unsubscribe", "publish", "auth", "ping"] {
        let message = resolve(&doc, messages[command]["$ref"].as_str().unwrap());
        let payload = resolve(&doc, message["payload"]["$ref"].as_str().unwrap());
        assert_eq!(payload["properties"]["command"]["const"], command);
    }
    // The close codes of docs/PROTOCOL.md.
    let closes: BTreeSet<u64> = doc["channels"]["ws"]["x-close-codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|close| close["code"].as_u64().unwrap())
        .collect();
    assert_eq!(closes, BTreeSet::from([1000, 1001, 1009, 4001, 4008, 4029]));

    // The page's client module is served beside it.
    let module = reqwest::get(stack.http("/chat-client.js")).await.unwrap();
    assert_eq!(module.status().as_u16(), 200);
    assert!(module.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    assert!(module
        .text()
        .await
        .unwrap()
        .contains("export class ChatClient"));
}
