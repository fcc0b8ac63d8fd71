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

/// Publishes over WebSocket until the workload winds down.
pub async fn websocket(workload: Workload, n: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let name = format!("ws-{n}");
    let history = workload.history.clone();
    let mut socket: Option<Socket> = None;
    let mut command = 0u64;
    let mut index = 0u64;
    while !workload.winding_down.is_cancelled() {
        let message = next_message(&workload, Via::WebSocket, &name, index, &mut rng);
        let mut first = true;
        loop {
            if !std::mem::take(&mut first) {
                history.retried(message.id);
            }
            if workload.end.is_cancelled() {
                return;
            }
            if socket.is_none() {
                socket = connect(&workload, &mut rng).await;
            }
            let Some(ws) = socket.as_mut() else { return };
            command += 1;
            let publish = json!({
                "command": "publish", "channel": message.channel, "author": message.author,
                "text": message.text, "message_id": message.id, "id": command,
            });
            match ws_publish(ws, &publish, command).await {
                Reply::Acknowledged(id) => {
                    if id != message.id {
                        history.violation(
                            "acknowledged_with_other_id",
                            format!("{name}: published {id}, sent {}", message.id),
                        );
                    }
                    history.acknowledged(message.id);
                    break;
                }
                Reply::Retry => tokio::time::sleep(Duration::from_millis(200)).await,
                Reply::Refused(code) => {
                    history.violation("publish_refused", format!("{name}: {code}"));
                    break;
                }
                Reply::Lost => {
                    socket = None;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        index += 1;
        tokio::time::sleep(workload.pause(&mut rng)).await;
    }
}

enum Reply {
    Acknowledged(Uuid),
    /// Not acknowledged; try again on the same connection.
    Retry,
    /// Refused for its content: a bug of the workload or the server.
    Refused(String),
    /// The connection ended or stayed silent: reconnect and try again.
    Lost,
}

async fn ws_publish(socket: &mut Socket, publish: &serde_json::Value, command: u64) -> Reply {
    if send(socket, publish).await.is_err() {
        return Reply::Lost;
    }
    // The server answers `publish_failed` after 10 s without Kafka's acknowledgement.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(frame) = next_frame(socket, left).await else {
            return Reply::Lost;
        };
        if frame["reply_to"].as_u64() != Some(command) {
            continue;
        }
        return match frame["type"].as_str() {
            Some("published") => frame["id"]
                .as_str()
                .and_then(|id| id.parse().ok())
                .map_or(Reply::Refused(frame.to_string()), Reply::Acknowledged),
            Some("error") => match frame["code"].as_str() {
                Some("publish_failed" | "rate_limited" | "server_busy") => Reply::Retry,
                _ => Reply::Refused(frame.to_string()),
            },
            _ => Reply::Refused(frame.to_string()),
        };
    }
}

/// Publishes over REST (`POST` with an `Idempotency-Key`) until the workload winds down.
pub async fn rest(workload: Workload, n: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let name = format!("rest-{n}");
    let history = workload.history.clone();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("HTTP client");
    let mut index = 0u64;
    while !workload.winding_down.is_cancelled() {
        let message = next_message(&workload, Via::Rest, &name, index, &mut rng);
        let mut first = true;
        loop {
            if !std::mem::take(&mut first) {
                history.retried(message.id);
            }
            if workload.end.is_cancelled() {
                return;
            }
            let server = workload.random_server(&mut rng);
            let response = http
                .post(format!(
                    "http://{server}{}",
                    messages_path(&message.channel)
                ))
                .header("Idempotency-Key", message.id.to_string())
                .json(&json!({"author": message.author, "text": message.text}))
                .send()
                .await;
            let Ok(response) = response else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            match status {
                202 => {
                    if body["id"].as_str() != Some(message.id.to_string().as_str()) {
                        history.violation(
                            "acknowledged_with_other_id",
                            format!("{name}: 202 {body}, sent {}", message.id),
                        );
                    }
                    history.acknowledged(message.id);
                    break;
                }
                429 | 503 => tokio::time::sleep(Duration::from_millis(200)).await,
                _ => {
                    history.violation("publish_refused", format!("{name}: {status} {body}"));
                    break;
                }
            }
        }
        index += 1;
        tokio::time::sleep(workload.pause(&mut rng)).await;
    }
}

/// Produces straight to Kafka (idempotent producer, `acks=all`) until the workload winds down.
/// Every `malformed_every`-th record is malformed on purpose, in turn: not JSON, an invalid
/// channel, a NUL in the text, an empty author. Those must be dead-lettered, never stored.
pub async fn kafka(workload: Workload, n: usize, seed: u64, topic: String, malformed_every: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let name = format!("kafka-{n}");
    let history = workload.history.clone();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &workload.kafka_brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "0")
        .set("message.timeout.ms", "15000")
        .create()
        .expect("Kafka producer");
    let mut index = 0u64;
    while !workload.winding_down.is_cancelled() {
        let mut message = next_message(&workload, Via::Kafka, &name, index, &mut rng);
        let malformed = (index + 1).is_multiple_of(malformed_every);
        let (key, value) = if malformed {
            message.malformed = true;
            workload.history.tried(message.clone());
            malformed_record(&message, index / malformed_every)
        } else {
            let value = json!({
                "id": message.id, "channel": message.channel,
                "author": message.author, "text": message.text,
            });
            (message.channel.clone(), value.to_string().into_bytes())
        };
        let mut first = true;
        loop {
            if !std::mem::take(&mut first) {
                history.retried(message.id);
            }
            if workload.end.is_cancelled() {
                return;
            }
            let id = message.id.to_string();
            let mut headers = OwnedHeaders::new();
            if malformed {
                headers = headers.insert(Header {
                    key: MALFORMED_HEADER,
                    value: Some(&id),
                });
            }
            let record = FutureRecord::to(&topic)
                .key(&key)
                .payload(&value)
                .headers(headers);
            match producer.send(record, Duration::from_secs(5)).await {
                Ok(_) => {
                    history.acknowledged(message.id);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
        index += 1;
        tokio::time::sleep(workload.pause(&mut rng)).await;
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
