//! Publishers. Each waits for the acknowledgement of a message before it publishes the next
//! one, and retries a message with the same id until it is acknowledged (a WebSocket
//! `message_id`, a REST `Idempotency-Key`, a Kafka record's `id`), so that its stored order can
//! be checked against its publish order.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::SeedableRng;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::json;
use uuid::Uuid;

use super::{connect, messages_path, next_frame, send, Socket, Workload};
use crate::history::{Publish, Via};

/// Header that marks a record made malformed on purpose (its value: the record's id).
pub const MALFORMED_HEADER: &str = "nemesis-malformed";

fn next_message(
    workload: &Workload,
    via: Via,
    publisher: &str,
    index: u64,
    rng: &mut StdRng,
) -> Publish {
    let id = Uuid::new_v4();
    let publish = Publish {
        id,
        channel: workload.channels.choose(rng).expect("channels").clone(),
        author: publisher.to_owned(),
        text: format!("{publisher} #{index} {id}"),
        via,
        publisher: publisher.to_owned(),
        index,
        malformed: false,
        attempts: 1,
        acknowledged: false,
    };
    workload.history.tried(publish.clone());
    publish
}

/// What one attempt to publish a message gave.
enum Outcome {
    Acknowledged,
    /// Not acknowledged: try again after this pause.
    Retry(Duration),
    /// Refused for its content: a bug of the workload or the server (a violation).
    Refused(String),
    /// The run ended while connecting.
    Ended,
}

/// One way into the system: how a message is sent once.
trait Way {
    const VIA: Via;
    const NAME: &'static str;

    /// Makes the message ready to send (the raw producer makes some malformed on purpose).
    fn prepare(&mut self, _message: &mut Publish) {}

    async fn attempt(
        &mut self,
        workload: &Workload,
        message: &Publish,
        rng: &mut StdRng,
    ) -> Outcome;
}

/// One publisher: a message, retried with its id until acknowledged, then the next, until the
/// workload winds down.
async fn drive<W: Way>(workload: Workload, mut way: W, n: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let name = format!("{}-{n}", W::NAME);
    let history = workload.history.clone();
    let mut index = 0u64;
    while !workload.winding_down.is_cancelled() {
        let mut message = next_message(&workload, W::VIA, &name, index, &mut rng);
        way.prepare(&mut message);
        if message.malformed {
            history.tried(message.clone());
        }
        let mut first = true;
        loop {
            if !std::mem::take(&mut first) {
                history.retried(message.id);
            }
            if workload.end.is_cancelled() {
                return;
            }
            match way.attempt(&workload, &message, &mut rng).await {
                Outcome::Acknowledged => {
                    history.acknowledged(message.id);
                    break;
                }
                Outcome::Retry(pause) => tokio::time::sleep(pause).await,
                Outcome::Refused(detail) => {
                    history.violation("publish_refused", format!("{name}: {detail}"));
                    break;
                }
                Outcome::Ended => return,
            }
        }
        index += 1;
        tokio::time::sleep(workload.pause(&mut rng)).await;
    }
}

/// The acknowledgement names the message's own id.
fn check_id(workload: &Workload, message: &Publish, acknowledged: Option<&str>) {
    if acknowledged != Some(message.id.to_string().as_str()) {
        workload.history.violation(
            "acknowledged_with_other_id",
            format!(
                "{}: acknowledged as {acknowledged:?}, sent {}",
                message.publisher, message.id
            ),
        );
    }
}

/// Publishes over WebSocket (`publish` with a `message_id`) until the workload winds down.
pub async fn websocket(workload: Workload, n: usize, seed: u64) {
    let way = WebSocket {
        socket: None,
        command: 0,
    };
    drive(workload, way, n, seed).await;
}

struct WebSocket {
    socket: Option<Socket>,
    command: u64,
}

impl Way for WebSocket {
    const VIA: Via = Via::WebSocket;
    const NAME: &'static str = "ws";

    async fn attempt(
        &mut self,
        workload: &Workload,
        message: &Publish,
        rng: &mut StdRng,
    ) -> Outcome {
        if self.socket.is_none() {
            self.socket = connect(workload, rng).await.map(|(socket, _)| socket);
        }
        let Some(ws) = self.socket.as_mut() else {
            return Outcome::Ended;
        };
        self.command += 1;
        let command = self.command;
        let publish = json!({
            "command": "publish", "channel": message.channel, "author": message.author,
            "text": message.text, "message_id": message.id, "id": command,
        });
        if send(ws, &publish).await.is_err() {
            self.socket = None;
            return Outcome::Retry(Duration::from_millis(100));
        }
        // The server answers `publish_failed` after 10 s without Kafka's acknowledgement.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(frame) = next_frame(ws, left).await else {
                // The connection ended or stayed silent: reconnect and try again.
                self.socket = None;
                return Outcome::Retry(Duration::from_millis(100));
            };
            if frame["reply_to"].as_u64() != Some(command) {
                continue;
            }
            return match (frame["type"].as_str(), frame["code"].as_str()) {
                (Some("published"), _) => {
                    check_id(workload, message, frame["id"].as_str());
                    Outcome::Acknowledged
                }
                (Some("error"), Some("publish_failed" | "rate_limited" | "server_busy")) => {
                    Outcome::Retry(Duration::from_millis(200))
                }
                _ => Outcome::Refused(frame.to_string()),
            };
        }
    }
}

/// Publishes over REST (`POST` with an `Idempotency-Key`) until the workload winds down.
pub async fn rest(workload: Workload, n: usize, seed: u64) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("HTTP client");
    drive(workload, Rest { http }, n, seed).await;
}

struct Rest {
    http: reqwest::Client,
}

impl Way for Rest {
    const VIA: Via = Via::Rest;
    const NAME: &'static str = "rest";

    async fn attempt(
        &mut self,
        workload: &Workload,
        message: &Publish,
        rng: &mut StdRng,
    ) -> Outcome {
        let server = workload.random_server(rng);
        let response = self
            .http
            .post(format!(
                "http://{server}{}",
                messages_path(&message.channel)
            ))
            .header("Idempotency-Key", message.id.to_string())
            .json(&json!({"author": message.author, "text": message.text}))
            .send()
            .await;
        let Ok(response) = response else {
            return Outcome::Retry(Duration::from_millis(100));
        };
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        match status {
            202 => {
                check_id(workload, message, body["id"].as_str());
                Outcome::Acknowledged
            }
            429 | 503 => Outcome::Retry(Duration::from_millis(200)),
            _ => Outcome::Refused(format!("{status} {body}")),
        }
    }
}

/// Produces straight to Kafka (idempotent producer, `acks=all`) until the workload winds down.
/// Every `malformed_every`-th record is malformed on purpose, in turn: not JSON, an invalid
/// channel, a NUL in the text, an empty author. Those must be dead-lettered, never stored.
pub async fn kafka(workload: Workload, n: usize, seed: u64, topic: String, malformed_every: u64) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &workload.kafka_brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "0")
        .set("message.timeout.ms", "15000")
        .create()
        .expect("Kafka producer");
    let way = Kafka {
        producer,
        topic,
        malformed_every,
        record: (String::new(), Vec::new()),
    };
    drive(workload, way, n, seed).await;
}

struct Kafka {
    producer: FutureProducer,
    topic: String,
    malformed_every: u64,
    /// Key and value of the message in hand.
    record: (String, Vec<u8>),
}

impl Way for Kafka {
    const VIA: Via = Via::Kafka;
    const NAME: &'static str = "kafka";

    fn prepare(&mut self, message: &mut Publish) {
        message.malformed = (message.index + 1).is_multiple_of(self.malformed_every);
        self.record = if message.malformed {
            malformed_record(message, message.index / self.malformed_every)
        } else {
            let value = json!({
                "id": message.id, "channel": message.channel,
                "author": message.author, "text": message.text,
            });
            (message.channel.clone(), value.to_string().into_bytes())
        };
    }

    async fn attempt(&mut self, _: &Workload, message: &Publish, _: &mut StdRng) -> Outcome {
        let id = message.id.to_string();
        let mut headers = OwnedHeaders::new();
        if message.malformed {
            headers = headers.insert(Header {
                key: MALFORMED_HEADER,
                value: Some(&id),
            });
        }
        let (key, value) = &self.record;
        let record = FutureRecord::to(&self.topic)
            .key(key)
            .payload(value)
            .headers(headers);
        match self.producer.send(record, Duration::from_secs(5)).await {
            Ok(_) => Outcome::Acknowledged,
            Err(_) => Outcome::Retry(Duration::from_millis(500)),
        }
    }
}

/// (key, value) of a malformed record of the given turn.
fn malformed_record(message: &Publish, turn: u64) -> (String, Vec<u8>) {
    let record = |channel: &str, author: &str, text: &str| {
        json!({"id": message.id, "channel": channel, "author": author, "text": text})
            .to_string()
            .into_bytes()
    };
    match turn % 4 {
        0 => (
            message.channel.clone(),
            format!("{{\"id\": \"{}\", not json", message.id).into_bytes(),
        ),
        1 => (
            "bad channel!".to_owned(),
            record("bad channel!", &message.author, &message.text),
        ),
        2 => (
            message.channel.clone(),
            record(&message.channel, &message.author, "a NUL \u{0} here"),
        ),
        _ => (
            message.channel.clone(),
            record(&message.channel, "", &message.text),
        ),
    }
}
