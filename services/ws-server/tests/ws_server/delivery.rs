use std::time::Duration;

use chat_core::channel::ChannelName;
use chat_core::envelope::{redis_channel, Envelope};
use chat_core::message::{MessageId, NewMessage, StoredMessage};
use chat_testkit::chaos::{url_addr, url_via, ChaosProxy};
use futures::StreamExt;
use rand::Rng;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{
    assert_contiguous, receive_until, redis_url, seqs, Client, Ended, Stack, PATIENCE,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_subscribing_at_random_moments_of_a_busy_channel_see_contiguous_seq() {
    // The hub's cache of the newest messages answers most of these subscribes.
    let hits = handoff_under_load(100).await;
    assert!(hits > 0.0, "no subscribe was served from the cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_history_cache_off_every_subscribe_reads_postgresql_and_still_sees_contiguous_seq()
{
    let hits = handoff_under_load(0).await;
    assert_eq!(hits, 0.0);
}

/// 50 clients subscribe (last 1..60) at random moments while a producer writes 1,500 messages;
/// each must see a contiguous run up to the last. Returns the subscribes served from the cache.
async fn handoff_under_load(history_cache: usize) -> f64 {
    let stack = Stack::start_with(|s| s.history_cache_messages = history_cache).await;
    const TOTAL: usize = 1500;
    let channel = "#busy";
    let producer = async {
        for chunk in 0..(TOTAL / 25) {
            stack.produce_many(channel, &format!("c{chunk}-"), 25).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let clients = futures::future::join_all((0..50).map(|_| async {
        let delay = rand::rng().random_range(0..800);
        let limit = rand::rng().random_range(1..60);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let mut client = stack.connect().await;
        let reply = client
            .subscribe(json!({"command": "subscribe", "channel": channel, "limit": limit}))
            .await;
        let mut seen = seqs(&reply["messages"]);
        assert_eq!(
            reply["last_seq"].as_i64().unwrap(),
            *seen.last().unwrap_or(&reply["last_seq"].as_i64().unwrap())
        );
        let last = reply["last_seq"].as_i64().unwrap();
        if last < TOTAL as i64 {
            let live = receive_until(&mut client, channel, TOTAL as i64).await;
            seen.extend(live.iter().map(|m| m["seq"].as_i64().unwrap()));
        }
        seen
    }));
    let ((), all) = tokio::join!(producer, clients);
    for seen in all {
        let first = seen.first().copied().unwrap_or(1);
        assert_contiguous(&seen, first, TOTAL as i64);
    }
    let hits = stack
        .metric("chat_ws_history_cache_total{outcome=\"hit\",path=\"subscribe\"}")
        .await;
    stack.finish().await;
    hits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_with_since_after_missing_thousands_delivers_every_message_in_order_then_live() {
    let stack = Stack::start().await;
    stack.produce_many("resume", "a", 10).await;
    stack.wait_stored("resume", 10).await;
    let mut client = stack.connect().await;
    let reply = client
        .subscribe(json!({"command": "subscribe", "channel": "resume", "limit": 5}))
        .await;
    let resume_from = reply["last_seq"].as_i64().unwrap();
    assert_eq!(resume_from, 10);
    drop(client);

    stack.produce_many("resume", "missed", 3500).await;
    stack.wait_stored("resume", 3510).await;

    let mut client = stack.connect().await;
    let reply = client
        .subscribe(json!({"command": "subscribe", "channel": "resume", "since": resume_from}))
        .await;
    let mut seen = seqs(&reply["messages"]);
    assert_eq!(seen.first(), Some(&11));
    assert!(seen.len() <= 1000, "the first page is bounded");
    let rest = receive_until(&mut client, "resume", 3510).await;
    seen.extend(rest.iter().map(|m| m["seq"].as_i64().unwrap()));
    assert_contiguous(&seen, 11, 3510);

    stack.produce("resume", "a", "live again").await;
    let live = receive_until(&mut client, "resume", 3511).await;
    assert_eq!(live.len(), 1);
    assert_eq!(live[0]["text"], "live again");
    stack.finish().await;
}

/// Found by the nemesis run: PostgreSQL failing after `subscribed` was sent, while the rest of a
/// long history is read, used to answer an `error` the client could not tell from a refused
/// subscribe, so it believed itself subscribed and waited forever. The subscription now ends
/// with `unsubscribed` and a reason, and a resume with `since` continues without gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_read_failing_after_subscribed_ends_the_subscription_with_a_reason() {
    let mut proxy = None;
    let stack = Stack::start_with(|settings| {
        let url = &settings.postgres.database_url;
        let through = ChaosProxy::bind(url_addr(url));
        settings.postgres.database_url = url_via(url, through.addr());
        proxy = Some(through);
    })
    .await;
    let proxy = proxy.expect("proxy");
    stack.produce_many("long", "m", 350).await;
    stack.wait_stored("long", 350).await;
    let mut client = stack.connect().await;
    // Slow enough that the read after the first page is still on the wire when the link drops.
    proxy.slow(Duration::from_millis(300));
    let reply = client
        .subscribe(json!({"command": "subscribe", "channel": "long", "since": 0, "id": 1}))
        .await;
    proxy.cut();
    let mut seen = seqs(&reply["messages"]);
    assert!(seen.len() < 350, "the history takes more than one read");
    let ended = loop {
        let frame = client.recv().await;
        match frame["type"].as_str() {
            Some("message") => seen.push(frame["message"]["seq"].as_i64().unwrap()),
            _ => break frame,
        }
    };
    assert_eq!(ended["type"], "unsubscribed", "{ended}");
    assert_eq!(ended["channel"], "long");
    assert_eq!(ended["reason"], "history_unavailable", "{ended}");

    proxy.restore();
    let last = *seen.last().expect("the first page");
    assert_contiguous(&seen, 1, last);
    let reply = client
        .subscribe(json!({"command": "subscribe", "channel": "long", "since": last}))
        .await;
    seen.extend(seqs(&reply["messages"]));
    if *seen.last().unwrap() < 350 {
        let rest = receive_until(&mut client, "long", 350).await;
        seen.extend(rest.iter().map(|m| m["seq"].as_i64().unwrap()));
    }
    assert_contiguous(&seen, 1, 350);
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_seq_jump_is_preceded_by_the_skipped_message_read_from_postgresql() {
    let stack = Stack::start().await;
    let mut client = stack.connect().await;
    client
        .subscribe(json!({"command": "subscribe", "channel": "gap"}))
        .await;
    stack.produce("gap", "a", "one").await;
    assert_eq!(receive_until(&mut client, "gap", 1).await[0]["seq"], 1);

    // Seq 2 and 3 are stored but never published: Redis lost them. Then seq 3 alone arrives.
    let channel = ChannelName::parse("gap").unwrap();
    let now = chat_core::message::db_time(chrono::Utc::now());
    let batch: Vec<NewMessage> = ["two", "three"]
        .iter()
        .map(|text| NewMessage {
            id: MessageId::new_random(),
            channel: channel.clone(),
            author: "direct".into(),
            text: (*text).into(),
            sent_at: now,
            user_id: None,
        })
        .collect();
    let outcomes = stack.iso.store.insert_batch(&batch).await.unwrap();
    let third = outcomes[1].message().clone();
    assert_eq!(third.seq, 3);
    publish_on_redis(&stack, third).await;

    let repaired = receive_until(&mut client, "gap", 3).await;
    assert_eq!(seqs(&json!(repaired)), vec![2, 3]);
    assert_eq!(repaired[0]["text"], "two");
    assert!(stack.metric("chat_ws_backfills_total").await >= 1.0);

    // The pipeline's own publish of seq 4 follows without a repeat.
    stack.produce("gap", "a", "four").await;
    let next = receive_until(&mut client, "gap", 4).await;
    assert_eq!(seqs(&json!(next)), vec![4]);
    stack.finish().await;
}

/// Publishes `message` on the channel's Redis channel, as the worker would, bypassing it.
async fn publish_on_redis(stack: &Stack, message: StoredMessage) {
    let mut redis = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let name = redis_channel(&stack.iso.redis_prefix, &message.channel);
    let _: i64 = redis::cmd("PUBLISH")
        .arg(name)
        .arg(Envelope::new(message, None).encode())
        .query_async(&mut redis)
        .await
        .unwrap();
}

/// A subscriber never goes live below the seq the hub delivered last; it reads PostgreSQL until
/// it gets there. When the log cannot get there (here a message was published on Redis and
/// never stored; in production, a database restored from an older backup), the subscribe ends
/// with a reason after a bounded number of reads instead of reading forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_below_a_live_stream_ahead_of_the_log_ends_with_a_reason() {
    let stack = Stack::start().await;
    let mut first = stack.connect().await;
    first
        .subscribe(json!({"command": "subscribe", "channel": "ahead"}))
        .await;
    let unstored = StoredMessage {
        channel: ChannelName::parse("ahead").unwrap(),
        seq: 1,
        id: MessageId::new_random(),
        author: "nobody".into(),
        text: "never stored".into(),
        sent_at: chrono::Utc::now(),
        stored_at: chrono::Utc::now(),
        user_id: None,
    };
    publish_on_redis(&stack, unstored).await;
    assert_eq!(receive_until(&mut first, "ahead", 1).await.len(), 1);

    let mut second = stack.connect().await;
    let subscribed = second
        .subscribe(json!({"command": "subscribe", "channel": "ahead", "since": 0}))
        .await;
    assert_eq!(subscribed["last_seq"], 0);
    let ended = second.recv().await;
    assert_eq!(ended["type"], "unsubscribed", "{ended}");
    assert_eq!(ended["reason"], "history_unavailable");
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_redis_pubsub_connection_mid_stream_loses_no_message() {
    let stack = Stack::start().await;
    const TOTAL: i64 = 800;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut client = stack.connect().await;
        client
            .subscribe(json!({"command": "subscribe", "channel": "kill"}))
            .await;
        clients.push(client);
    }
    let producer = async {
        for chunk in 0..(TOTAL / 20) {
            stack.produce_many("kill", &format!("k{chunk}-"), 20).await;
            if chunk == 10 || chunk == 25 {
                let mut redis = redis::Client::open(redis_url())
                    .unwrap()
                    .get_multiplexed_async_connection()
                    .await
                    .unwrap();
                let killed: i64 = redis::cmd("CLIENT")
                    .arg(&["KILL", "TYPE", "pubsub"])
                    .query_async(&mut redis)
                    .await
                    .unwrap();
                assert!(killed >= 1);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let readers = futures::future::join_all(
        clients
            .iter_mut()
            .map(|client| async move { receive_until(client, "kill", TOTAL).await }),
    );
    let ((), received) = tokio::join!(producer, readers);
    for messages in received {
        assert_contiguous(&seqs(&json!(messages)), 1, TOTAL);
    }
    assert!(stack.metric("chat_ws_redis_reconnects_total").await >= 1.0);
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_closed_with_4008_while_the_others_keep_receiving() {
    let stack = Stack::start_with(|s| s.client_limits.ws_outbound_queue_bytes = 2 << 20).await;
    // A small receive buffer so the kernel does not absorb megabytes for the stalled client.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(stack.ws_addr).await.unwrap();
    let (mut stalled, _) = tokio_tungstenite::client_async(
        format!("ws://{}/ws", stack.ws_addr),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await
    .unwrap();
    futures::SinkExt::send(
        &mut stalled,
        Message::text(json!({"command": "subscribe", "channel": "flood"}).to_string()),
    )
    .await
    .unwrap();
    let mut healthy = stack.connect().await;
    healthy
        .subscribe(json!({"command": "subscribe", "channel": "flood"}))
        .await;

    const TOTAL: i64 = 2500;
    let text = "x".repeat(3900);
    let producer = async {
        for chunk in 0..(TOTAL / 100) {
            stack
                .produce_many("flood", &format!("{text}{chunk}-"), 100)
                .await;
        }
    };
    let reader = receive_until(&mut healthy, "flood", TOTAL);
    let ((), received) = tokio::join!(producer, reader);
    assert_contiguous(&seqs(&json!(received)), 1, TOTAL);
    assert!(stack.metric("chat_ws_slow_consumer_closes_total").await >= 1.0);

    let mut stalled = Client { socket: stalled };
    assert_eq!(stalled.until_closed().await, Ended::Closed(4008));
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_turns_readiness_off_then_closes_clients_with_1001() {
    let stack = Stack::start_with(|s| s.shutdown_drain_secs = 2).await;
    let mut client = stack.connect().await;
    client
        .subscribe(json!({"command": "subscribe", "channel": "bye"}))
        .await;
    stack.server_stop.cancel();
    let ready = reqwest::get(stack.internal("/readyz")).await.unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    assert!(
        tokio_tungstenite::connect_async(format!("ws://{}/ws", stack.ws_addr))
            .await
            .is_err()
    );
    assert_eq!(client.until_closed().await, Ended::Closed(1001));
    let stopped = tokio::time::timeout(PATIENCE, async {
        while client.socket.next().await.is_some() {}
    })
    .await;
    assert!(stopped.is_ok());
    stack.finish().await;
}
