//! Test harness: every test gets its own PostgreSQL database, Kafka topic and Redis prefix, and
//! runs the real chat-worker and the real chat-ws-server in process against the real services.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use chat_core::store::Store;
use chat_service::args::{KafkaArgs, LogArgs, PostgresArgs, RedisArgs};
use chat_testkit::{Services, TestDatabase};
use futures::{SinkExt, StreamExt};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// Upper bound for waiting on anything, so a broken test fails instead of hanging. Never an
/// assertion on speed.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub fn redis_url() -> String {
    Services::from_env().redis_url
}
pub fn kafka_brokers() -> String {
    Services::from_env().kafka_brokers
}

/// Isolated dependencies of one test, from chat-testkit: its own database, topic and prefix.
pub struct Isolation {
    pub id: String,
    pub db: TestDatabase,
    pub database_url: String,
    pub topic: String,
    pub redis_prefix: String,
    pub store: Store,
}

impl Isolation {
    pub async fn create() -> Self {
        let db = TestDatabase::create(&Services::from_env()).await;
        let id = db.name.clone();
        let topic = format!("test.ws.{id}");
        chat_testkit::kafka::create_topic(&kafka_brokers(), &topic, 4).await;
        Self {
            redis_prefix: format!("test:{id}:"),
            database_url: db.url.clone(),
            store: Store::from_pool(db.pool.clone()),
            db,
            id,
            topic,
        }
    }

    /// Drops the database and deletes the topics (a failing test keeps them for a look).
    pub async fn finish(self) {
        let dlq = format!("{}.dlq", self.topic);
        chat_testkit::kafka::delete_topics(&kafka_brokers(), &[&self.topic, &dlq]).await;
        self.db.drop_database().await;
    }
}

/// A running worker and ws-server over one isolation.
pub struct Stack {
    pub iso: Isolation,
    pub ws_addr: SocketAddr,
    /// The internal listener: `/healthz`, `/readyz`, `/metrics`.
    pub internal_addr: SocketAddr,
    pub worker_stop: CancellationToken,
    pub server_stop: CancellationToken,
    pub server: tokio::task::JoinHandle<anyhow::Result<()>>,
    producer: FutureProducer,
}

pub fn server_settings(iso: &Isolation) -> chat_ws_server::settings::Settings {
    chat_ws_server::settings::Settings {
        kafka: KafkaArgs::new(&kafka_brokers()),
        kafka_topic: iso.topic.clone(),
        kafka_producer_queue_kbytes: 32 * 1024,
        postgres: PostgresArgs::new(&iso.database_url),
        database_max_connections: 8,
        redis: RedisArgs::new(&redis_url()),
        redis_prefix: iso.redis_prefix.clone(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        internal_http_addr: "127.0.0.1:0".parse().unwrap(),
        history_default_limit: 50,
        history_max_limit: 1000,
        history_cache_messages: 100,
        channel_linger_secs: 30,
        hub_max_channels: 10_000,
        history_cache_watched_channels: 1000,
        ws_max_subscriptions: 100,
        client_limits: Default::default(),
        ws_max_frame_bytes: 65536,
        ws_ping_interval_secs: 20,
        ws_idle_timeout_secs: 60,
        shutdown_drain_secs: 0,
        // Identity is not what these tests exercise; auth.rs runs with tokens.
        auth: chat_ws_server::auth::settings::AuthSettings::anonymous(),
        admission: chat_ws_server::admission::settings::AdmissionSettings::defaults(),
        log: LogArgs {
            log_format: chat_core::telemetry::LogFormat::Text,
        },
    }
}

impl Stack {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(
        configure: impl FnOnce(&mut chat_ws_server::settings::Settings),
    ) -> Self {
        if std::env::var_os("RUST_LOG").is_some() {
            std::mem::forget(chat_core::telemetry::init(
                "ws-server-tests",
                chat_core::telemetry::LogFormat::Text,
            ));
        }
        let iso = Isolation::create().await;
        let mut worker_settings = chat_worker::settings::Settings::for_tests(
            &kafka_brokers(),
            &iso.database_url,
            &redis_url(),
            &iso.topic,
            &format!("test-ws-{}", iso.id),
            &iso.redis_prefix,
        );
        worker_settings.retry_max_backoff_ms = 1000;
        let worker = chat_worker::startup::Application::build(worker_settings)
            .await
            .expect("worker builds");
        let worker_stop = CancellationToken::new();
        tokio::spawn(worker.run_until_stopped(worker_stop.clone()));

        let mut settings = server_settings(&iso);
        configure(&mut settings);
        let server = chat_ws_server::startup::Application::build(settings)
            .await
            .expect("ws-server builds");
        let ws_addr = SocketAddr::from(([127, 0, 0, 1], server.http_port()));
        let internal_addr = SocketAddr::from(([127, 0, 0, 1], server.internal_port()));
        let server_stop = CancellationToken::new();
        let server = tokio::spawn(server.run_until_stopped(server_stop.clone()));

        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", kafka_brokers())
            .set("acks", "all")
            .set("linger.ms", "1")
            .create()
            .expect("producer");
        let stack = Self {
            iso,
            ws_addr,
            internal_addr,
            worker_stop,
            server_stop,
            server,
            producer,
        };
        stack.wait_ready().await;
        stack
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.ws_addr, path)
    }

    /// A URL on the internal listener (`/healthz`, `/readyz`, `/metrics`).
    pub fn internal(&self, path: &str) -> String {
        format!("http://{}{}", self.internal_addr, path)
    }

    async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Ok(response) = client.get(self.internal("/readyz")).send().await {
                if response.status().is_success() {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "ws-server never became ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Produces one message to the test topic, the way any producer would.
    pub async fn produce(&self, channel: &str, author: &str, text: &str) {
        let value = json!({"channel": channel, "author": author, "text": text}).to_string();
        self.producer
            .send(
                FutureRecord::to(&self.iso.topic)
                    .key(channel)
                    .payload(&value),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(err, _)| err)
            .expect("produce");
    }

    /// Produces `count` messages (texts `"{prefix}{i}"`) concurrently but in order per channel.
    pub async fn produce_many(&self, channel: &str, prefix: &str, count: usize) {
        let values: Vec<String> = (0..count)
            .map(|i| {
                json!({"channel": channel, "author": "bulk", "text": format!("{prefix}{i}")})
                    .to_string()
            })
            .collect();
        let sends = values.iter().map(|value| {
            self.producer.send(
                FutureRecord::to(&self.iso.topic)
                    .key(channel)
                    .payload(value),
                Duration::from_secs(30),
            )
        });
        for result in futures::future::join_all(sends).await {
            result.map_err(|(err, _)| err).expect("produce");
        }
    }

    /// Waits until the channel has `seq` stored.
    pub async fn wait_stored(&self, channel: &str, seq: i64) {
        let channel = chat_core::channel::ChannelName::parse(channel).unwrap();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.iso.store.last_seq(&channel).await.unwrap() < seq {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{channel} never reached seq {seq}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn connect(&self) -> Client {
        Client::connect(self.ws_addr).await
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let body = reqwest::get(self.internal("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        body.lines()
            .filter(|line| line.starts_with(name))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Stops both services and drops the test database and topics.
    pub async fn finish(self) {
        self.server_stop.cancel();
        self.worker_stop.cancel();
        let _ = tokio::time::timeout(PATIENCE, self.server).await;
        self.iso.finish().await;
    }
}

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A real WebSocket client.
pub struct Client {
    pub socket: Socket,
}

/// How a connection ended, as seen by the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    Closed(u16),
    ClosedWithoutCode,
    Dropped,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Self {
        let (socket, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .expect("websocket connects");
        Self { socket }
    }

    pub async fn send(&mut self, command: Value) {
        self.socket
            .send(Message::text(command.to_string()))
            .await
            .expect("send");
    }

    pub async fn send_raw(&mut self, message: Message) {
        self.socket.send(message).await.expect("send");
    }

    /// The next JSON frame from the server (pings are answered by the library).
    pub async fn recv(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.socket.next())
                .await
                .expect("a frame arrives")
                .expect("connection open")
                .expect("frame readable");
            match message {
                Message::Text(text) => {
                    return serde_json::from_str(&text).expect("frames are JSON")
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// Subscribes and returns the `subscribed` reply.
    pub async fn subscribe(&mut self, command: Value) -> Value {
        self.send(command).await;
        let reply = self.recv().await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
        reply
    }

    /// Reads until the connection ends (within [`PATIENCE`] in all), discarding data frames.
    pub async fn until_closed(&mut self) -> Ended {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .expect("the connection ends")
            {
                None => return Ended::Dropped,
                Some(Err(_)) => return Ended::Dropped,
                Some(Ok(Message::Close(Some(frame)))) => {
                    return Ended::Closed(u16::from(frame.code))
                }
                Some(Ok(Message::Close(None))) => return Ended::ClosedWithoutCode,
                Some(Ok(_)) => continue,
            }
        }
    }
}

/// Seqs of a list of message objects.
pub fn seqs(messages: &Value) -> Vec<i64> {
    messages
        .as_array()
        .expect("an array of messages")
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect()
}

/// Collects `message` frames of a channel until `last` seq, checking order on the way.
pub async fn receive_until(client: &mut Client, channel: &str, last: i64) -> Vec<Value> {
    let mut received = Vec::new();
    loop {
        let frame = client.recv().await;
        assert_eq!(frame["type"], "message", "{frame}");
        assert_eq!(frame["channel"], channel, "{frame}");
        let message = frame["message"].clone();
        let seq = message["seq"].as_i64().unwrap();
        received.push(message);
        if seq >= last {
            return received;
        }
    }
}

/// Asserts the seqs are exactly `from..=to`.
pub fn assert_contiguous(seqs: &[i64], from: i64, to: i64) {
    let expected: Vec<i64> = (from..=to).collect();
    if seqs != expected {
        let mut counts: HashMap<i64, usize> = HashMap::new();
        for seq in seqs {
            *counts.entry(*seq).or_default() += 1;
        }
        let repeats: Vec<_> = counts
            .iter()
            .filter(|(_, c)| **c > 1)
            .map(|(s, _)| *s)
            .collect();
        let holes: Vec<_> = (from..=to).filter(|s| !counts.contains_key(s)).collect();
        panic!(
            "expected seq {from}..={to}; got {} seqs, holes {:?}, repeats {:?}",
            seqs.len(),
            &holes[..holes.len().min(20)],
            &repeats[..repeats.len().min(20)]
        );
    }
}
