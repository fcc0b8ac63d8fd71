//! REST rates per client (`CLIENT_READS_PER_SEC` / `CLIENT_WRITES_PER_SEC` and their bursts): the
//! user of a verified token, else the client's address. Past them, 429 `rate_limited` with
//! `Retry-After`, documented in the spec and counted.

use chat_ws_server::auth::settings::AuthSettings;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};

use super::{http_from, source};
use crate::support::Stack;

const PATH: &str = "/channels/%23edge/messages";
const BURST: u32 = 5;
const SECRET: &str = "test-secret-of-the-edge-tests";

/// One POST: its status, `Retry-After` and JSON body.
async fn post(
    stack: &Stack,
    client: &reqwest::Client,
    token: Option<&str>,
) -> (u16, Option<u64>, Value) {
    let mut request = client
        .post(stack.http(PATH))
        .json(&json!({"author": "flood", "text": "again"}));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|value| value.to_str().unwrap().parse().unwrap());
    (status, retry_after, response.json().await.unwrap())
}

/// Sends `BURST + 5` POSTs in a row: the first `BURST` are accepted, then 429s with a
/// `Retry-After` (a cell comes back every second, so a slow run may see one more 202). Returns
/// how many were refused.
async fn flood(stack: &Stack, client: &reqwest::Client, token: Option<&str>) -> u32 {
    let mut refused = 0;
    for n in 0..BURST + 5 {
        let (status, retry_after, body) = post(stack, client, token).await;
        if n < BURST || status == 202 {
            assert_eq!(status, 202, "request {n}: {body}");
        } else {
            assert_eq!(status, 429, "request {n}: {body}");
            assert_eq!(body["code"], "rate_limited", "{body}");
            assert!(retry_after.is_some_and(|secs| secs >= 1), "{retry_after:?}");
            refused += 1;
        }
    }
    assert!(refused > 0, "a flood past the burst was never limited");
    refused
}

fn slow_writes(settings: &mut chat_ws_server::settings::Settings) {
    settings.admission.client_writes_per_sec = 1;
    settings.admission.client_write_burst = BURST;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_posts_from_one_address_gets_429_while_another_address_still_publishes() {
    let stack = Stack::start_with(slow_writes).await;
    let flooder = http_from(source(1));
    let refused = flood(&stack, &flooder, None).await;
    let (status, _, body) = post(&stack, &http_from(source(2)), None).await;
    assert_eq!(status, 202, "{body}");
    // Reads have their own rate.
    let read = flooder.get(stack.http(PATH)).send().await.unwrap();
    assert_eq!(read.status(), 200);
    let limited = stack
        .metric("chat_ws_rest_rate_limited_total{operation=\"write\"}")
        .await;
    assert_eq!(limited, f64::from(refused));

    // The spec says so.
    let spec: Value = reqwest::get(stack.http("/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let operation = &spec["paths"]["/channels/{channel}/messages"];
    for method in ["get", "post"] {
        let limited = &operation[method]["responses"]["429"];
        let headers = limited["headers"]
            .as_object()
            .expect("429 documents headers");
        assert!(
            headers
                .keys()
                .any(|name| name.eq_ignore_ascii_case("retry-after")),
            "{limited}"
        );
    }
    assert!(operation["post"]["responses"]["413"].is_object());
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tokens_the_rate_counts_per_user_so_a_neighbour_at_the_same_address_still_publishes() {
    let stack = Stack::start_with(|settings| {
        slow_writes(settings);
        settings.auth = AuthSettings::hs256(SECRET);
    })
    .await;
    let token = |name: &str| {
        let claims = json!({"sub": format!("user-{name}"), "name": name,
            "exp": jsonwebtoken::get_current_timestamp() + 300,
            "chat": {"#edge": ["read", "publish"]}});
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        )
        .unwrap()
    };
    let same_address = http_from(source(1));
    flood(&stack, &same_address, Some(&token("alice"))).await;
    let (status, _, body) = post(&stack, &same_address, Some(&token("bob"))).await;
    assert_eq!(status, 202, "{body}");
    stack.finish().await;
}
