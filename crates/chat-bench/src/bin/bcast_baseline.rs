//! The fan-out baseline (issue: chat-ws-server §4): a minimal broadcast WebSocket server built
//! with the same library as chat-ws-server (poem websocket), with no Redis and no PostgreSQL.
//!
//! - Clients connect to `/ws` and send the same `subscribe` frame; the reply is a `subscribed`
//!   frame with no history (`last_seq` 0).
//! - One Kafka consumer reads the topic the load generator produces to (the same records the
//!   worker would store) and broadcasts each record to the channel's subscribers.
//! - Kept like chat-ws-server where it costs the same: each record is serialized once into a
//!   `message` frame of the same shape (seq, id, author, text, sent_at, stored_at) shared by
//!   every subscriber; a bounded queue per connection filled with `try_send` (a full queue
//!   closes the connection with 4008); a writer task that feeds every waiting frame then flushes
//!   once.
//! - What it omits: the worker (PostgreSQL insert, seq assignment, Redis PUBLISH), the Redis
//!   pub/sub hop, history reads on subscribe, gap detection and repair, duplicate filtering,
//!   metrics, pings, idle timeouts and every protocol command but `subscribe`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use clap::Parser;
use futures::{SinkExt, StreamExt};
use poem::listener::TcpListener;
use poem::web::websocket::{Message, WebSocket};
use poem::web::Data;
use poem::{get, handler, EndpointExt, IntoResponse, Route};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message as _};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

#[derive(Debug, Parser)]
#[command(about = "minimal broadcast WebSocket server (fan-out baseline)")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8090")]
    addr: String,
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(long)]
    topic: String,
    /// Frames waiting per connection before it is closed (the server bounds bytes instead:
    /// WS_OUTBOUND_QUEUE_BYTES).
    #[arg(long, default_value_t = 1024)]
    outbound_queue: usize,
}

type Frame = Arc<str>;

#[derive(Default)]
struct Channel {
    subscribers: HashMap<u64, mpsc::Sender<Frame>>,
    seq: i64,
}

#[derive(Default)]
struct State {
    channels: Mutex<HashMap<String, Channel>>,
    next_id: AtomicU64,
    queue: usize,
}

#[derive(Deserialize)]
struct Input {
    channel: String,
    author: String,
    text: String,
    sent_at: Option<String>,
}

#[derive(Serialize)]
struct Stored<'a> {
    channel: &'a str,
    seq: i64,
    id: uuid::Uuid,
    author: &'a str,
    text: &'a str,
    sent_at: &'a str,
    stored_at: &'a str,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Out<'a> {
    Message {
        channel: &'a str,
        message: Stored<'a>,
    },
    Subscribed {
        channel: &'a str,
        messages: [(); 0],
        last_seq: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        reply_to: Option<&'a serde_json::Value>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let state = Arc::new(State {
        queue: args.outbound_queue.max(1),
        ..State::default()
    });
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set(
            "group.id",
            format!("bcast-baseline-{}", uuid::Uuid::new_v4()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()?;
    consumer.subscribe(&[&args.topic])?;
    let broadcaster = tokio::spawn(broadcast(consumer, Arc::clone(&state)));
    let app = Route::new().at("/ws", get(ws).data(state));
    eprintln!("bcast-baseline listening on {}", args.addr);
    tokio::select! {
        result = poem::Server::new(TcpListener::bind(args.addr)).run(app) => result?,
        result = broadcaster => result??,
    }
    Ok(())
}

async fn broadcast(consumer: StreamConsumer, state: Arc<State>) -> anyhow::Result<()> {
    let mut stream = consumer.stream();
    while let Some(record) = stream.next().await {
        let record = record?;
        let Some(Ok(input)) = record.payload().map(serde_json::from_slice::<Input>) else {
            continue;
        };
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let mut channels = state.channels.lock().unwrap();
        let Some(channel) = channels.get_mut(&input.channel) else {
            continue;
        };
        channel.seq += 1;
        let frame: Frame = serde_json::to_string(&Out::Message {
            channel: &input.channel,
            message: Stored {
                channel: &input.channel,
                seq: channel.seq,
                id: uuid::Uuid::new_v4(),
                author: &input.author,
                text: &input.text,
                sent_at: input.sent_at.as_deref().unwrap_or(&now),
                stored_at: &now,
            },
        })?
        .into();
        channel
            .subscribers
            .retain(|_, queue| queue.try_send(frame.clone()).is_ok());
    }
    Ok(())
}

#[handler]
fn ws(websocket: WebSocket, Data(state): Data<&Arc<State>>) -> impl IntoResponse {
    let state = Arc::clone(state);
    // The same buffer setting as chat-ws-server (2 KiB initial read buffer).
    let config = poem::web::websocket::WebSocketConfig::default().read_buffer_size(2048);
    websocket
        .config(config)
        .on_upgrade(move |socket| async move {
            let (mut sink, mut stream) = socket.split();
            let (frames, mut queue) = mpsc::channel::<Frame>(state.queue);
            let writer = tokio::spawn(async move {
                while let Some(first) = queue.recv().await {
                    if sink.feed(Message::Text(first.to_string())).await.is_err() {
                        return;
                    }
                    for _ in 1..256 {
                        match queue.try_recv() {
                            Ok(frame) => {
                                if sink.feed(Message::Text(frame.to_string())).await.is_err() {
                                    return;
                                }
                            }
                            Err(_) => break,
                        }
                    }
                    if sink.flush().await.is_err() {
                        return;
                    }
                }
                // The queue was dropped: by the broadcaster (full queue) or the reader (closed).
                let _ = sink
                    .send(Message::close_with(4008u16, "slow consumer"))
                    .await;
            });
            let mut mine = Vec::new();
            while let Some(Ok(message)) = stream.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                let Ok(command) = serde_json::from_str::<serde_json::Value>(&text) else {
                    continue;
                };
                let Some(channel) = command.get("channel").and_then(|c| c.as_str()) else {
                    continue;
                };
                if command.get("command").and_then(|c| c.as_str()) != Some("subscribe") {
                    continue;
                }
                let id = state.next_id.fetch_add(1, Ordering::Relaxed);
                let reply = serde_json::to_string(&Out::Subscribed {
                    channel,
                    messages: [],
                    last_seq: 0,
                    reply_to: command.get("id"),
                })
                .unwrap_or_default();
                let _ = frames.send(reply.into()).await;
                state
                    .channels
                    .lock()
                    .unwrap()
                    .entry(channel.to_owned())
                    .or_default()
                    .subscribers
                    .insert(id, frames.clone());
                mine.push((channel.to_owned(), id));
            }
            {
                let mut channels = state.channels.lock().unwrap();
                for (channel, id) in mine {
                    if let Some(c) = channels.get_mut(&channel) {
                        c.subscribers.remove(&id);
                    }
                }
            }
            drop(frames);
            let _ = writer.await;
        })
}
