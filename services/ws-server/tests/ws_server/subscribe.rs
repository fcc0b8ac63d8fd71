use serde_json::json;

use crate::support::{assert_contiguous, receive_until, seqs, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_returns_last_n_oldest_first_then_live_and_channels_do_not_leak() {
    let stack = Stack::start().await;
    for i in 0..5 {
        stack
            .produce("#kerno-challenge", "alice", &format!("k{i}"))
            .await;
        stack.produce("#other", "bob", &format!("o{i}")).await;
    }
    stack.wait_stored("#kerno-challenge", 5).await;
    stack.wait_stored("#other", 5).await;

    let mut client = stack.connect().await;
    let reply = client
        .subscribe(
            json!({"command": "subscribe", "channel": "#kerno-challenge", "limit": 3, "id": 1}),
        )
        .await;
    assert_eq!(reply["reply_to"], 1);
    assert_eq!(reply["channel"], "#kerno-challenge");
    assert_eq!(seqs(&reply["messages"]), vec![3, 4, 5]);
    assert_eq!(reply["last_seq"], 5);
    assert_eq!(reply["messages"][0]["text"], "k2");
    assert_eq!(reply["messages"][0]["author"], "alice");
    for field in ["id", "sent_at", "stored_at"] {
        assert!(reply["messages"][0][field].is_string(), "{field} missing");
    }

    stack.produce("#other", "bob", "not for you").await;
    stack.produce("#kerno-challenge", "alice", "live").await;
    let live = client.recv().await;
    assert_eq!(live["type"], "message");
    assert_eq!(live["channel"], "#kerno-challenge");
    assert_eq!(live["message"]["seq"], 6);
    assert_eq!(live["message"]["text"], "live");

    // A ping round trip proves nothing from #other was queued in between.
    client.send(json!({"command": "ping", "id": "p"})).await;
    let pong = client.recv().await;
    assert_eq!(pong, json!({"type": "pong", "reply_to": "p"}));
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_without_limit_returns_the_default_fifty() {
    let stack = Stack::start().await;
    stack.produce_many("room", "m", 60).await;
    stack.wait_stored("room", 60).await;
    let mut client = stack.connect().await;
    let reply = client
        .subscribe(json!({"command": "subscribe", "channel": "room"}))
        .await;
    assert_contiguous(&seqs(&reply["messages"]), 11, 60);
    assert_eq!(reply["last_seq"], 60);
    // The channel is live now: the hub's cache answers the same questions.
    for (limit, first) in [(50, 11), (5, 56), (0, 61)] {
        let mut again = stack.connect().await;
        let reply = again
            .subscribe(json!({"command": "subscribe", "channel": "room", "limit": limit}))
            .await;
        assert_contiguous(&seqs(&reply["messages"]), first, 60);
        assert_eq!(reply["last_seq"], 60);
    }
    let hits = "chat_ws_history_cache_total{outcome=\"hit\",path=\"subscribe\"}";
    assert_eq!(stack.metric(hits).await, 3.0);

    let mut empty = stack.connect().await;
    let reply = empty
        .subscribe(json!({"command": "subscribe", "channel": "quiet", "limit": 0}))
        .await;
    assert_eq!(reply["messages"], json!([]));
    assert_eq!(reply["last_seq"], 0);
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_over_websocket_is_acknowledged_with_its_id_and_reaches_a_subscriber() {
    let stack = Stack::start().await;
    let mut reader = stack.connect().await;
    reader
        .subscribe(json!({"command": "subscribe", "channel": "#kerno-challenge"}))
        .await;
    let mut writer = stack.connect().await;
    writer
        .send(json!({"command": "publish", "channel": "#kerno-challenge", "author": "alice", "text": "hi", "id": 9}))
        .await;
    let ack = writer.recv().await;
    assert_eq!(ack["type"], "published", "{ack}");
    assert_eq!(ack["reply_to"], 9);
    assert_eq!(ack["channel"], "#kerno-challenge");
    let id = ack["id"].as_str().unwrap().to_owned();

    let delivered = receive_until(&mut reader, "#kerno-challenge", 1).await;
    assert_eq!(delivered[0]["id"], id);
    assert_eq!(delivered[0]["text"], "hi");
    assert_eq!(delivered[0]["author"], "alice");
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_stops_delivery_and_a_second_unsubscribe_is_an_error() {
    let stack = Stack::start().await;
    let mut client = stack.connect().await;
    client
        .subscribe(json!({"command": "subscribe", "channel": "a"}))
        .await;
    client
        .subscribe(json!({"command": "subscribe", "channel": "b"}))
        .await;
    client
        .send(json!({"command": "unsubscribe", "channel": "a", "id": 2}))
        .await;
    assert_eq!(
        client.recv().await,
        json!({"type": "unsubscribed", "channel": "a", "reply_to": 2})
    );
    stack.produce("a", "x", "gone").await;
    stack.produce("b", "x", "here").await;
    let frame = client.recv().await;
    assert_eq!(frame["channel"], "b", "{frame}");
    client
        .send(json!({"command": "unsubscribe", "channel": "a"}))
        .await;
    assert_eq!(client.recv().await["code"], "not_subscribed");
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_nobody_uses_stays_on_redis_for_the_linger_period_then_leaves() {
    let stack = Stack::start_with(|s| s.channel_linger_secs = 2).await;
    let redis_name = format!("{}lingering", stack.iso.redis_prefix);
    let redis = redis::Client::open(crate::support::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let subscribers = || {
        let mut redis = redis.clone();
        let name = redis_name.clone();
        async move {
            let counts: Vec<(String, i64)> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(&name)
                .query_async(&mut redis)
                .await
                .unwrap();
            counts[0].1
        }
    };
    let mut client = stack.connect().await;
    client
        .subscribe(json!({"command": "subscribe", "channel": "lingering"}))
        .await;
    client
        .send(json!({"command": "unsubscribe", "channel": "lingering"}))
        .await;
    assert_eq!(client.recv().await["type"], "unsubscribed");
    // Nobody subscribes any more, but the hub keeps the channel (and its cache) for a while.
    assert_eq!(subscribers().await, 1);
    assert_eq!(stack.metric("chat_ws_hub_channels").await, 1.0);
    let deadline = tokio::time::Instant::now() + crate::support::PATIENCE;
    while subscribers().await != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the idle channel never left Redis"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(stack.metric("chat_ws_hub_channels").await, 0.0);
    drop(redis);
    stack.finish().await;
}
