use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Ended, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_command_gets_its_error_code_and_the_connection_stays_open() {
    let stack = Stack::start_with(|s| s.ws_max_subscriptions = 2).await;
    let mut client = stack.connect().await;
    let cases = [
        (json!("not an object"), "invalid_json"),
        (json!({"command": "dance", "id": 1}), "unknown_command"),
        (json!({"id": 2}), "missing_field"),
        (json!({"command": "subscribe"}), "missing_field"),
        (
            json!({"command": "subscribe", "channel": "no spaces"}),
            "invalid_channel",
        ),
        (
            json!({"command": "subscribe", "channel": 5}),
            "invalid_channel",
        ),
        (
            json!({"command": "subscribe", "channel": "c", "limit": -1}),
            "invalid_limit",
        ),
        (
            json!({"command": "subscribe", "channel": "c", "limit": 1001}),
            "invalid_limit",
        ),
        (
            json!({"command": "subscribe", "channel": "c", "since": "x"}),
            "invalid_since",
        ),
        (
            json!({"command": "subscribe", "channel": "c", "since": 1, "limit": 1}),
            "invalid_since",
        ),
        (
            json!({"command": "unsubscribe", "channel": "c"}),
            "not_subscribed",
        ),
        (
            json!({"command": "publish", "channel": "c", "author": "a"}),
            "missing_field",
        ),
        (
            json!({"command": "publish", "channel": "c", "author": "", "text": "t"}),
            "invalid_message",
        ),
        (
            json!({"command": "publish", "channel": "c", "author": "a", "text": "x".repeat(4001)}),
            "invalid_message",
        ),
    ];
    for (command, code) in cases {
        client.send(command.clone()).await;
        let reply = client.recv().await;
        assert_eq!(reply["type"], "error", "{command}: {reply}");
        assert_eq!(reply["code"], code, "{command}: {reply}");
        assert!(reply["message"].is_string());
        if let Some(id) = command.get("id") {
            assert_eq!(&reply["reply_to"], id);
        }
    }
    client.send_raw(Message::text("{not json")).await;
    assert_eq!(client.recv().await["code"], "invalid_json");
    client.send_raw(Message::binary(vec![1, 2, 3])).await;
    assert_eq!(client.recv().await["code"], "binary_not_supported");

    client
        .subscribe(json!({"command": "subscribe", "channel": "one"}))
        .await;
    client
        .send(json!({"command": "subscribe", "channel": "one"}))
        .await;
    assert_eq!(client.recv().await["code"], "already_subscribed");
    client
        .subscribe(json!({"command": "subscribe", "channel": "two"}))
        .await;
    client
        .send(json!({"command": "subscribe", "channel": "three"}))
        .await;
    assert_eq!(client.recv().await["code"], "too_many_subscriptions");

    client
        .send(json!({"command": "ping", "id": "still-here"}))
        .await;
    assert_eq!(
        client.recv().await,
        json!({"type": "pong", "reply_to": "still-here"})
    );
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_64_kib_closes_the_connection_with_1009_and_one_at_the_limit_does_not() {
    let stack = Stack::start().await;
    let mut client = stack.connect().await;
    // Exactly 64 KiB of JSON is accepted (and refused as a command, not as a frame).
    let padding = 65536 - r#"{"command":"ping","pad":""}"#.len();
    let at_limit = format!(r#"{{"command":"ping","pad":"{}"}}"#, "x".repeat(padding));
    assert_eq!(at_limit.len(), 65536);
    client.send_raw(Message::text(at_limit)).await;
    assert_eq!(client.recv().await["type"], "pong");

    let too_big = format!(
        r#"{{"command":"ping","pad":"{}"}}"#,
        "x".repeat(padding + 1)
    );
    client.send_raw(Message::text(too_big)).await;
    assert_eq!(client.until_closed().await, Ended::Closed(1009));

    let mut other = stack.connect().await;
    other.send(json!({"command": "ping"})).await;
    assert_eq!(other.recv().await["type"], "pong");
    stack.finish().await;
}
