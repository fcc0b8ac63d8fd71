//! One text rule at every edge: U+0000, which PostgreSQL cannot store, is refused where it
//! enters (REST, WebSocket, Kafka), and the message sent right after it still gets through.

use std::time::Duration;

use chat_testkit::kafka::read_topic;
use serde_json::json;

use crate::support::{kafka_brokers, Stack, PATIENCE};

/// How long the next ordinary message may take to reach a subscriber. A worker that stalls on
/// the poison record never delivers it; a healthy one does in milliseconds.
const NEXT_MESSAGE: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_in_text_is_refused_at_every_edge_and_the_next_message_is_delivered() {
    let stack = Stack::start().await;
    let channel = "#poison";
    let mut subscriber = stack.connect().await;
    subscriber
        .subscribe(json!({"command": "subscribe", "channel": channel}))
        .await;
    let http = reqwest::Client::new();
    let url = stack.http("/channels/%23poison/messages");
    let post = |text: &str| {
        let request = http
            .post(&url)
            .json(&json!({"author": "alice", "text": text}));
        async move { assert_eq!(request.send().await.unwrap().status().as_u16(), 202) }
    };

    // REST: 400 invalid_message.
    let response = http
        .post(&url)
        .json(&json!({"author": "mallory", "text": "a\u{0}b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "invalid_message", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("U+0000"),
        "{body}"
    );
    post("after the REST one").await;
    expect_delivery(&mut subscriber, 1, "after the REST one").await;

    // WebSocket: an error frame, the connection stays.
    let mut publisher = stack.connect().await;
    publisher
        .send(json!({"command": "publish", "id": 1, "channel": channel,
            "author": "mallory", "text": "a\u{0}b"}))
        .await;
    let reply = publisher.recv().await;
    assert_eq!(
        (reply["type"].as_str(), reply["code"].as_str()),
        (Some("error"), Some("invalid_message")),
        "{reply}"
    );
    assert_eq!(reply["reply_to"], 1);
    post("after the WebSocket one").await;
    expect_delivery(&mut subscriber, 2, "after the WebSocket one").await;

    // Kafka, bypassing both: dead-lettered as invalid_text by the worker.
    stack.produce(channel, "mallory", "a\u{0}b").await;
    post("after the Kafka one").await;
    expect_delivery(&mut subscriber, 3, "after the Kafka one").await;
    let dead = read_topic(
        &kafka_brokers(),
        &format!("{}.dlq", stack.iso.topic),
        1,
        PATIENCE,
    );
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].header("dlq.reason"), Some("invalid_text"));
    stack.finish().await;
}

async fn expect_delivery(subscriber: &mut crate::support::Client, seq: i64, text: &str) {
    let frame = tokio::time::timeout(NEXT_MESSAGE, subscriber.recv())
        .await
        .unwrap_or_else(|_| panic!("{text:?} not delivered within {NEXT_MESSAGE:?}"));
    assert_eq!(frame["type"], "message", "{frame}");
    assert_eq!(frame["message"]["seq"], seq, "{frame}");
    assert_eq!(frame["message"]["text"], text, "{frame}");
}
