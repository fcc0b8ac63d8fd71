//! What one hostile WebSocket client can make the server hold or do, each bound tried by the
//! client that would break it: one that never reads, one that floods commands, one that opens
//! channel after channel, and a forged envelope on Redis.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::process::ServerProcess;
use crate::support::*;

/// A WebSocket client with a 4 KiB receive buffer, so the kernel absorbs little for it.
async fn small_buffer_client(addr: std::net::SocketAddr) -> Socket {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let (socket, _) = tokio_tungstenite::client_async(
        format!("ws://{addr}/ws"),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await
    .unwrap();
    socket
}

/// Stores `count` messages of 3,900 control characters on `channel`: ~23 KB each as JSON,
/// since every character escapes to six.
async fn store_heavy(stack: &Stack, channel: &str, count: usize) {
    let text = "\u{1}".repeat(3900);
    for _ in 0..count.div_ceil(100) {
        stack.produce_many(channel, &text, 100.min(count)).await;
    }
    stack.wait_stored(channel, count as i64).await;
}

/// Most the server may grow while clients that never read loop subscribe/unsubscribe on a
/// channel of large messages (each connection holds at most its 1 MiB queue, a history page
/// and one frame being built).
const NON_READER_GROWTH: u64 = 64 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_cannot_grow_the_server() {
    let stack = Stack::start().await;
    store_heavy(&stack, "heavy", 1000).await;
    let server = ServerProcess::spawn(&stack.iso, &[]).await;
    let before = server.rss();
    let subscribe = json!({"command": "subscribe", "channel": "heavy", "limit": 1000}).to_string();
    let unsubscribe = json!({"command": "unsubscribe", "channel": "heavy"}).to_string();

    // Four clients loop subscribe/unsubscribe for 15 s without reading a byte; a client whose
    // connection the server dropped connects again.
    let abuse = |_| {
        let (subscribe, unsubscribe, addr) =
            (subscribe.clone(), unsubscribe.clone(), server.ws_addr);
        async move {
            let until = tokio::time::Instant::now() + Duration::from_secs(15);
            let (mut commands, mut dropped) = (0u64, 0u64);
            let mut socket = small_buffer_client(addr).await;
            while tokio::time::Instant::now() < until {
                let text = if commands % 2 == 0 {
                    &subscribe
                } else {
                    &unsubscribe
                };
                let sent = tokio::time::timeout(
                    Duration::from_millis(200),
                    socket.send(Message::text(text.as_str())),
                )
                .await;
                match sent {
                    Ok(Ok(())) => commands += 1,
                    Ok(Err(_)) => {
                        dropped += 1;
                        socket = small_buffer_client(addr).await;
                    }
                    // The server stopped reading this client: it waits for room to write.
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
            (commands, dropped)
        }
    };
    let clients = futures::future::join_all((0..4).map(abuse));
    let mut peak = before;
    // Stops early once the bound is broken (an unbounded server would take the machine down).
    let watch = async {
        while peak.saturating_sub(before) < NON_READER_GROWTH {
            peak = peak.max(server.rss());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let outcomes = tokio::select! {
        outcomes = clients => outcomes,
        () = watch => Vec::new(),
    };
    let growth = peak.saturating_sub(before);
    println!(
        "server RSS {} MiB before, {} MiB at peak; (commands sent, connections dropped) per client: {outcomes:?}",
        before >> 20,
        peak >> 20
    );
    assert!(
        growth < NON_READER_GROWTH,
        "the server grew by {} MiB",
        growth >> 20
    );
    // The write timeout dropped the stalled connections (and they came back to try again).
    assert!(
        outcomes.iter().all(|(_, dropped)| *dropped >= 1),
        "{outcomes:?}"
    );

    // A normal client of the same channel is served in full meanwhile.
    let mut reader = Client::connect(server.ws_addr).await;
    let reply = reader
        .subscribe(json!({"command": "subscribe", "channel": "heavy", "limit": 1000}))
        .await;
    let mut seqs = seqs(&reply["messages"]);
    seqs.extend(
        receive_until(&mut reader, "heavy", 1000)
            .await
            .iter()
            .map(|m| m["seq"].as_i64().unwrap()),
    );
    assert_contiguous(&seqs, 1, 1000);
    drop(server);
    stack.finish().await;
}

/// Largest frame the server sends on purpose (PROTOCOL.md).
const MAX_FRAME_BYTES: usize = 256 * 1024;

/// Reads frames until `channel`'s `last` seq, checking each frame's size; returns the
/// `subscribed` frame and the seqs of the `message` frames after it.
async fn frames_until(client: &mut Client, last: i64) -> (Value, Vec<i64>) {
    let mut subscribed = None;
    let mut seqs = Vec::new();
    loop {
        let message = tokio::time::timeout(PATIENCE, client.socket.next())
            .await
            .expect("a frame arrives")
            .expect("connection open")
            .expect("frame readable");
        let Message::Text(text) = message else {
            continue;
        };
        assert!(
            text.len() <= MAX_FRAME_BYTES,
            "a frame of {} bytes",
            text.len()
        );
        let frame: Value = serde_json::from_str(&text).unwrap();
        let seq = match frame["type"].as_str() {
            Some("subscribed") => {
                let seq = frame["last_seq"].as_i64().unwrap();
                subscribed = Some(frame);
                seq
            }
            Some("message") => {
                let seq = frame["message"]["seq"].as_i64().unwrap();
                seqs.push(seq);
                seq
            }
            _ => panic!("unexpected {frame}"),
        };
        if seq >= last {
            return (subscribed.expect("subscribed first"), seqs);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_history_reply_is_cut_into_frames_of_at_most_256_kib() {
    let stack = Stack::start_with(|s| s.history_cache_messages = 0).await;
    store_heavy(&stack, "big", 300).await;
    // Above a read page (a resume underneath) and below it (one read).
    for limit in [300, 50] {
        let mut client = stack.connect().await;
        client
            .send(json!({"command": "subscribe", "channel": "big", "limit": limit}))
            .await;
        let (subscribed, tail) = frames_until(&mut client, 300).await;
        let head = seqs(&subscribed["messages"]);
        assert!(
            !tail.is_empty(),
            "everything fit in one frame: the test proves nothing"
        );
        // `last_seq` is the last message of `subscribed`; the rest follows in order.
        assert_eq!(subscribed["last_seq"].as_i64(), head.last().copied());
        let all: Vec<i64> = head.into_iter().chain(tail).collect();
        assert_contiguous(&all, 301 - limit, 300);
    }

    // REST pages hold at most 1 MiB of messages; the cursors walk the rest.
    let mut seqs_seen = Vec::new();
    let mut url = stack.http("/channels/big/messages?limit=300");
    loop {
        let body = reqwest::get(&url).await.unwrap().bytes().await.unwrap();
        assert!(
            body.len() <= 1024 * 1024 + 1024,
            "a page of {} bytes",
            body.len()
        );
        let page: Value = serde_json::from_slice(&body).unwrap();
        let mut seqs = seqs(&page["messages"]);
        assert!(
            seqs.len() < 300,
            "the whole page fit: the test proves nothing"
        );
        seqs.extend(seqs_seen);
        seqs_seen = seqs;
        match page["next_before"].as_i64() {
            Some(before) => {
                url = stack.http(&format!("/channels/big/messages?limit=300&before={before}"))
            }
            None => break,
        }
    }
    assert_contiguous(&seqs_seen, 1, 300);
    stack.finish().await;
}

/// Replies to commands `1..=count` sent at once, by `reply_to` order of arrival: the `type`
/// (or error `code`) of each.
async fn replies(client: &mut Client, count: usize) -> Vec<String> {
    let mut kinds = Vec::new();
    while kinds.len() < count {
        let frame = client.recv().await;
        if frame["reply_to"].is_null() {
            continue;
        }
        let kind = match frame["type"].as_str().unwrap() {
            "error" => frame["code"].as_str().unwrap().to_owned(),
            other => other.to_owned(),
        };
        kinds.push(kind);
    }
    kinds
}

fn count(kinds: &[String], kind: &str) -> usize {
    kinds.iter().filter(|k| *k == kind).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_flood_is_rate_limited_while_other_clients_go_through() {
    let stack = Stack::start_with(|s| {
        let limits = &mut s.client_limits;
        (limits.ws_publish_rate, limits.ws_publish_burst) = (1, 5);
        (limits.ws_command_rate, limits.ws_command_burst) = (1, 5);
        limits.ws_rate_limit_strikes = 10_000;
    })
    .await;
    let mut flooder = stack.connect().await;
    for id in 1..=40 {
        flooder
            .send(json!({"command": "publish", "channel": "flood", "author": "mallory", "text": "spam", "id": id}))
            .await;
    }
    let kinds = replies(&mut flooder, 40).await;
    assert!(
        count(&kinds, "published") >= 5,
        "the burst passes: {kinds:?}"
    );
    assert!(count(&kinds, "rate_limited") >= 20, "{kinds:?}");
    assert_eq!(
        count(&kinds, "published") + count(&kinds, "rate_limited"),
        40
    );

    // Another client publishes and subscribes as usual: its buckets are its own.
    let mut other = stack.connect().await;
    other
        .subscribe(json!({"command": "subscribe", "channel": "calm", "id": 0}))
        .await;
    for id in 1..=3 {
        other
            .send(json!({"command": "publish", "channel": "calm", "author": "ada", "text": "hi", "id": id}))
            .await;
    }
    assert_eq!(replies(&mut other, 3).await, ["published"; 3]);

    // Subscribe, unsubscribe, ping and garbage share the other bucket.
    for id in 1..=20 {
        flooder.send(json!({"command": "ping", "id": id})).await;
    }
    let kinds = replies(&mut flooder, 20).await;
    assert!(count(&kinds, "rate_limited") >= 10, "{kinds:?}");
    assert!(
        stack
            .metric("chat_ws_protocol_errors_total{code=\"rate_limited\"}")
            .await
            >= 30.0
    );
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_keeps_flooding_is_closed_with_4029() {
    let stack = Stack::start_with(|s| {
        let limits = &mut s.client_limits;
        (limits.ws_command_rate, limits.ws_command_burst) = (1, 5);
        limits.ws_rate_limit_strikes = 20;
    })
    .await;
    let mut flooder = stack.connect().await;
    for id in 0..100 {
        if flooder
            .socket
            .send(Message::text(
                json!({"command": "ping", "id": id}).to_string(),
            ))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(flooder.until_closed().await, Ended::Closed(4029));
    assert_eq!(stack.metric("chat_ws_rate_limit_closes_total").await, 1.0);

    // Reconnecting for fresh buckets does not work: the address cools down first
    // (WS_ABUSE_COOLDOWN_SECS), while other addresses connect as usual.
    use crate::edge::{open_from, refused_from, source};
    let refused = refused_from(stack.ws_addr, source(1), &[]).await;
    assert_eq!(
        (refused.status, &refused.body["code"]),
        (429, &json!("rate_limited"))
    );
    assert!(
        refused
            .retry_after
            .is_some_and(|secs| (1..=10).contains(&secs)),
        "{refused:?}"
    );
    assert!(open_from(stack.ws_addr, source(7), &[]).await.is_ok());
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_holds_at_most_hub_max_channels_evicting_idle_ones_first() {
    let stack = Stack::start_with(|s| s.hub_max_channels = 3).await;
    let mut client = stack.connect().await;
    for channel in ["a", "b", "c"] {
        client
            .subscribe(json!({"command": "subscribe", "channel": channel}))
            .await;
    }
    client
        .send(json!({"command": "subscribe", "channel": "d", "id": 1}))
        .await;
    let refused = client.recv().await;
    assert_eq!(refused["code"], "server_busy", "{refused}");
    assert_eq!(refused["reply_to"], 1);

    // Once `a` has no subscriber (it lingers), a new channel takes its place.
    client
        .send(json!({"command": "unsubscribe", "channel": "a"}))
        .await;
    assert_eq!(client.recv().await["type"], "unsubscribed");
    client
        .subscribe(json!({"command": "subscribe", "channel": "d"}))
        .await;
    assert_eq!(stack.metric("chat_ws_hub_evictions_total").await, 1.0);
    assert_eq!(stack.metric("chat_ws_hub_channels").await, 3.0);
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_envelopes_are_dropped_and_a_far_ahead_seq_does_not_poll_forever() {
    let stack = Stack::start().await;
    let mut client = stack.connect().await;
    client
        .subscribe(json!({"command": "subscribe", "channel": "forged"}))
        .await;
    stack.produce("forged", "ada", "one").await;
    assert_eq!(receive_until(&mut client, "forged", 1).await.len(), 1);

    let redis = redis::Client::open(redis_url()).unwrap();
    let mut redis = redis.get_multiplexed_async_connection().await.unwrap();
    let envelope = |seq: i64, text: &str| {
        json!({
            "channel": "forged", "seq": seq, "id": uuid::Uuid::new_v4(), "author": "mallory",
            "text": text, "sent_at": "2026-11-30T00:00:00Z", "stored_at": "2026-11-30T00:00:00Z"
        })
        .to_string()
    };
    let redis_channel = format!("{}forged", stack.iso.redis_prefix);
    for payload in [
        envelope(1_000_000, "far ahead"),
        envelope(0, "seq zero"),
        envelope(2, "nul \u{0} inside"),
        "{not json".to_owned(),
    ] {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(&redis_channel)
            .arg(payload)
            .query_async(&mut redis)
            .await
            .unwrap();
    }
    // Real messages still arrive, in order, and the forged ones never do.
    stack.produce("forged", "ada", "two").await;
    stack.produce("forged", "ada", "three").await;
    let received = receive_until(&mut client, "forged", 3).await;
    assert_eq!(seqs(&json!(received)), [2, 3]);
    assert!(received.iter().all(|m| m["author"] == "ada"));

    let dropped = |reason: &'static str| {
        let stack = &stack;
        async move {
            stack
                .metric(&format!(
                    "chat_ws_envelopes_dropped_total{{reason=\"{reason}\"}}"
                ))
                .await
        }
    };
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while dropped("not_in_log").await < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the far-ahead seq is still pending"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(dropped("invalid").await, 2.0);
    assert_eq!(dropped("undecodable").await, 1.0);
    // The repair is over: no more PostgreSQL reads for the channel.
    let queries = "chat_ws_history_query_duration_seconds_count";
    let settled = stack.metric(queries).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(stack.metric(queries).await, settled);
    stack.produce("forged", "ada", "four").await;
    assert_eq!(
        seqs(&json!(receive_until(&mut client, "forged", 4).await)),
        [4]
    );
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_producer_queue_refuses_a_publish_at_once() {
    // A 1 KiB producer queue: a 3,000-character message never fits, a short one does.
    let stack = Stack::start_with(|s| s.kafka_producer_queue_kbytes = 1).await;
    let mut client = stack.connect().await;
    let publish = |id: i64, text: String| json!({"command": "publish", "channel": "q", "author": "ada", "text": text, "id": id});
    client.send(publish(1, "x".repeat(3000))).await;
    client.send(publish(2, "short".into())).await;
    let mut kinds = replies(&mut client, 2).await;
    kinds.sort();
    assert_eq!(kinds, ["publish_failed", "published"]);

    let response = reqwest::Client::new()
        .post(stack.http("/channels/q/messages"))
        .json(&json!({"author": "ada", "text": "x".repeat(3000)}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    stack.finish().await;
}

/// Accepts TCP connections and never answers: a Kafka broker that acknowledges nothing.
async fn black_hole() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_in_flight_per_connection_are_bounded() {
    let iso = Isolation::create().await;
    let mut settings = server_settings(&iso);
    settings.kafka.kafka_brokers = black_hole().await.to_string();
    settings.client_limits.ws_publishes_in_flight = 2;
    let server = chat_ws_server::startup::Application::build(settings)
        .await
        .unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], server.http_port()));
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(server.run_until_stopped(stop.clone()));

    let mut client = Client::connect(addr).await;
    for id in 1..=3 {
        client
            .send(json!({"command": "publish", "channel": "c", "author": "ada", "text": "hi", "id": id}))
            .await;
    }
    client.send(json!({"command": "ping", "id": 4})).await;
    // Two publishes wait for the broker; the third waits for one of them, and the ping after
    // it is read only then: its pong comes after a publish was answered (here: failed, once
    // the delivery timeout is over).
    let first = client.recv().await;
    assert_eq!(first["code"], "publish_failed", "{first}");
    assert!(
        [1, 2].contains(&first["reply_to"].as_i64().unwrap()),
        "{first}"
    );
    loop {
        let frame = client.recv().await;
        if frame["type"] == "pong" {
            break;
        }
        assert_eq!(frame["code"], "publish_failed", "{frame}");
    }
    stop.cancel();
    let _ = tokio::time::timeout(PATIENCE, running).await;
    iso.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_does_not_escape_the_clients_write_rate_shared_with_rest() {
    use crate::edge::{http_from, open_from, source};
    let stack = Stack::start_with(|s| {
        // No per-connection bucket at all: only the client's shared write rate holds.
        s.client_limits.ws_publish_rate = 0;
        (
            s.admission.client_writes_per_sec,
            s.admission.client_write_burst,
        ) = (1, 6);
    })
    .await;
    let publish = |id: i64| json!({"command": "publish", "channel": "w", "author": "mallory", "text": "x", "id": id});
    // Three connections from one address, then REST from it: one budget of 6 in all.
    let mut published = 0;
    for _ in 0..3 {
        let mut client = open_from(stack.ws_addr, source(5), &[]).await.unwrap();
        for id in 1..=4 {
            client.send(publish(id)).await;
        }
        let kinds = replies(&mut client, 4).await;
        published += count(&kinds, "published");
        assert_eq!(
            count(&kinds, "published") + count(&kinds, "rate_limited"),
            4
        );
    }
    assert!(
        (6..=8).contains(&published),
        "{published} published from one address"
    );
    let rest = http_from(source(5))
        .post(stack.http("/channels/w/messages"))
        .json(&json!({"author": "mallory", "text": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(rest.status().as_u16(), 429);

    // Another address has its own budget.
    let mut other = open_from(stack.ws_addr, source(6), &[]).await.unwrap();
    for id in 1..=3 {
        other.send(publish(id)).await;
    }
    assert_eq!(replies(&mut other, 3).await, ["published"; 3]);
    stack.finish().await;
}
