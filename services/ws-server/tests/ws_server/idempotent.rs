//! Idempotent publish: a retry with the client's own message id is stored once and answered
//! with the same id, over WebSocket (`message_id`) and REST (`Idempotency-Key`).

use serde_json::{json, Value};

use crate::support::Stack;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_retried_with_the_same_id_is_stored_once_and_answered_with_that_id() {
    let stack = Stack::start().await;
    let channel = "#retries";
    let mut client = stack.connect().await;
    let ws_id = uuid::Uuid::now_v7().to_string();
    for attempt in 0..3 {
        client
            .send(
                json!({"command": "publish", "id": attempt, "channel": channel,
                "author": "alice", "text": "over the socket", "message_id": ws_id}),
            )
            .await;
        let reply = client.recv().await;
        assert_eq!(reply["type"], "published", "{reply}");
        assert_eq!(reply["id"], ws_id.as_str(), "answered with the client's id");
    }

    let http = reqwest::Client::new();
    let url = stack.http("/channels/%23retries/messages");
    let key = uuid::Uuid::now_v7().to_string();
    for _ in 0..3 {
        let response = http
            .post(&url)
            .header("Idempotency-Key", &key)
            .json(&json!({"author": "bob", "text": "over http"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 202);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["id"], key.as_str());
    }
    // The same id with other content is not a retry: the worker dead-letters it (id_conflict).
    let response = http
        .post(&url)
        .header("Idempotency-Key", &key)
        .json(&json!({"author": "bob", "text": "something else"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let response = http
        .post(&url)
        .json(&json!({"author": "carol", "text": "last"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);

    stack.wait_stored(channel, 3).await;
    let page: Value = reqwest::get(stack.http("/channels/%23retries/messages"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let stored: Vec<(i64, &str, &str)> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["seq"].as_i64().unwrap(),
                m["id"].as_str().unwrap(),
                m["text"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        stored.len(),
        3,
        "each retried message stored once: {stored:?}"
    );
    assert!(stored.contains(&(1, ws_id.as_str(), "over the socket")));
    assert!(stored.contains(&(2, key.as_str(), "over http")));
    let texts: Vec<&str> = stored.iter().map(|(_, _, text)| *text).collect();
    assert_eq!(texts.iter().filter(|t| **t == "over the socket").count(), 1);
    assert_eq!(texts.iter().filter(|t| **t == "over http").count(), 1);
    assert_eq!(texts[2], "last");
    assert!(!texts.contains(&"something else"));
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_id_that_is_not_a_uuid_is_refused_at_the_edge() {
    let stack = Stack::start().await;
    let mut client = stack.connect().await;
    for bad in [json!("not-a-uuid"), json!(42)] {
        client
            .send(json!({"command": "publish", "channel": "c", "author": "a",
                "text": "t", "message_id": bad}))
            .await;
        let reply = client.recv().await;
        assert_eq!(reply["code"], "invalid_message_id", "{reply}");
    }
    let response = reqwest::Client::new()
        .post(stack.http("/channels/c/messages"))
        .header("Idempotency-Key", "not-a-uuid")
        .json(&json!({"author": "a", "text": "t"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "invalid_idempotency_key");
    stack.finish().await;
}
