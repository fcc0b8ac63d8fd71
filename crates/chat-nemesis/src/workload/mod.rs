//! The workload: publishers (WebSocket, REST, raw Kafka), a fleet of WebSocket subscribers and
//! REST history readers, over a few dozen channels and both ws-servers. Every client records
//! what it did and saw in [`History`]; the subscribers and readers check what they can on the
//! spot (order, gaps, repeats), the checker the rest at the end.

pub mod publishers;
pub mod readers;
pub mod subscribers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use rand::seq::IndexedRandom;
use rand::Rng;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use crate::history::{bump, History};

/// What every client of the workload shares.
#[derive(Debug, Clone)]
pub struct Workload {
    pub history: Arc<History>,
    pub servers: Vec<SocketAddr>,
    pub channels: Vec<String>,
    /// Direct address of the broker, for the raw producer.
    pub kafka_brokers: String,
    /// Cancelled when the faults end: publishers finish the message in hand, subscribers stop
    /// their random unsubscribes, readers stop.
    pub winding_down: CancellationToken,
    /// Cancelled after the check: everything stops.
    pub end: CancellationToken,
    /// Mean pause between two publishes of one publisher.
    pub publish_pause: Duration,
}

impl Workload {
    pub fn channel_name(i: usize) -> String {
        format!("#nemesis-{i:02}")
    }

    pub fn random_server(&self, rng: &mut impl Rng) -> SocketAddr {
        *self.servers.choose(rng).expect("servers")
    }

    /// A random pause around the mean publish pause.
    pub fn pause(&self, rng: &mut impl Rng) -> Duration {
        self.publish_pause
            .mul_f64(rng.random_range(0.0..2.0))
            .max(Duration::from_millis(1))
    }
}

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connects to one of the ws-servers, trying them in random order, with capped backoff until
/// `end`. Each failed round counts as a connect failure.
pub async fn connect(workload: &Workload, rng: &mut impl Rng) -> Option<(Socket, SocketAddr)> {
    let mut backoff = Duration::from_millis(100);
    loop {
        let first = workload.random_server(rng);
        let order =
            std::iter::once(first).chain(workload.servers.iter().copied().filter(|a| *a != first));
        for addr in order {
            let attempt = tokio::time::timeout(
                Duration::from_secs(5),
                tokio_tungstenite::connect_async(format!("ws://{addr}/ws")),
            );
            if let Ok(Ok((socket, _))) = attempt.await {
                return Some((socket, addr));
            }
        }
        bump(&workload.history.counters.connect_failures);
        tokio::select! {
            _ = workload.end.cancelled() => return None,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

pub async fn send(socket: &mut Socket, command: &Value) -> anyhow::Result<()> {
    tokio::time::timeout(
        Duration::from_secs(10),
        socket.send(Message::text(command.to_string())),
    )
    .await
    .context("send timed out")?
    .context("send")
}

/// The next JSON frame; `None` when the connection ended (closed, reset, or silent for
/// `silence`: the server pings every 20 s, so a longer silence is a dead connection).
pub async fn next_frame(socket: &mut Socket, silence: Duration) -> Option<Value> {
    loop {
        match tokio::time::timeout(silence, socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                return serde_json::from_str(text.as_str()).ok();
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => continue,
            Ok(Some(Ok(Message::Binary(_)))) => continue,
            Ok(Some(Ok(Message::Close(_)) | Err(_))) | Ok(None) | Err(_) => return None,
        }
    }
}

/// A delivered message, as the protocol sends it (other fields ignored).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Delivered {
    pub seq: i64,
    pub id: uuid::Uuid,
    pub author: String,
    pub text: String,
    pub stored_at: chrono::DateTime<chrono::Utc>,
}

impl Delivered {
    pub fn seen(&self) -> crate::history::Seen {
        crate::history::Seen {
            id: self.id,
            author: self.author.clone(),
            text: self.text.clone(),
        }
    }
}

/// The path of a channel's history route (`#` URL-encoded).
pub fn messages_path(channel: &str) -> String {
    format!("/channels/{}/messages", channel.replace('#', "%23"))
}
