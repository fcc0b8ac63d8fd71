//! Configuration. Every setting is a flag and an environment variable; the defaults point at
//! services on localhost so that a bare `cargo run` works next to `scripts/services`.

use std::net::SocketAddr;
use std::time::Duration;

use chat_service::args::{KafkaArgs, LogArgs, PostgresArgs, RedisArgs};
use clap::Parser;

use crate::admission::settings::AdmissionSettings;
use crate::auth::settings::AuthSettings;
use crate::hub::HubOptions;
use crate::session::limits::ClientLimits;

/// The command line of `chat-ws-server`: every setting, each also an environment variable.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "chat-ws-server",
    version,
    about = "WebSocket and REST front of the chat backend: history + live messages, publishing"
)]
pub struct Settings {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Topic that published messages are produced to.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "chat.messages")]
    pub kafka_topic: String,
    /// Memory of the Kafka producer's queue, in KiB (librdkafka `queue.buffering.max.kbytes`):
    /// when it is full a publish is refused at once (`publish_failed`, REST 503).
    #[arg(long, env = "KAFKA_PRODUCER_QUEUE_KBYTES", default_value_t = 32 * 1024)]
    pub kafka_producer_queue_kbytes: u32,
    #[command(flatten)]
    pub postgres: PostgresArgs,
    /// Size of the PostgreSQL connection pool.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 8)]
    pub database_max_connections: u32,
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Prefix of the Redis pub/sub channels: messages of channel C arrive on `<prefix>C`.
    #[arg(long, env = "REDIS_PREFIX", default_value = chat_core::envelope::DEFAULT_REDIS_PREFIX)]
    pub redis_prefix: String,
    /// Address of the public HTTP server: the page, WebSocket, REST, `/docs`, `/openapi.json`.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Address of the internal HTTP server: `/healthz`, `/readyz`, `/metrics` (probes and
    /// scrapers; never exposed through the public Service or Ingress).
    #[arg(long, env = "INTERNAL_HTTP_ADDR", default_value = "0.0.0.0:8082")]
    pub internal_http_addr: SocketAddr,
    /// Messages returned when a subscribe or a REST read gives no limit.
    #[arg(long, env = "HISTORY_DEFAULT_LIMIT", default_value_t = 50)]
    pub history_default_limit: i64,
    /// Largest accepted `limit` of a subscribe or a REST read.
    #[arg(long, env = "HISTORY_MAX_LIMIT", default_value_t = 1000)]
    pub history_max_limit: i64,
    /// Newest messages the hub keeps per live channel, serving `subscribe` (last N) and the
    /// newest REST page without a PostgreSQL query; 0 turns the cache off.
    #[arg(long, env = "HISTORY_CACHE_MESSAGES", default_value_t = 100)]
    pub history_cache_messages: usize,
    /// Seconds a channel stays subscribed on Redis, with its cache, after its last subscriber
    /// left or its last REST read; 0: unsubscribe at once.
    #[arg(long, env = "CHANNEL_LINGER_SECS", default_value_t = 30)]
    pub channel_linger_secs: u64,
    /// Most channels the hub holds (live, lingering and watched); past it the least recently
    /// used lingering channel is evicted, and a subscribe to a new channel when none lingers is
    /// refused with `server_busy`.
    #[arg(long, env = "HUB_MAX_CHANNELS", default_value_t = 10_000)]
    pub hub_max_channels: usize,
    /// Most channels kept subscribed for REST readers alone (no WebSocket subscriber).
    #[arg(long, env = "HISTORY_CACHE_WATCHED_CHANNELS", default_value_t = 1000)]
    pub history_cache_watched_channels: usize,
    /// Most subscriptions one WebSocket connection may hold.
    #[arg(long, env = "WS_MAX_SUBSCRIPTIONS", default_value_t = 100)]
    pub ws_max_subscriptions: usize,
    #[command(flatten)]
    pub client_limits: ClientLimits,
    /// Largest accepted incoming WebSocket frame or message, in bytes; a bigger one closes with 1009.
    #[arg(long, env = "WS_MAX_FRAME_BYTES", default_value_t = 65536)]
    pub ws_max_frame_bytes: usize,
    /// Seconds between server pings.
    #[arg(long, env = "WS_PING_INTERVAL_SECS", default_value_t = 20)]
    pub ws_ping_interval_secs: u64,
    /// A connection that sends nothing (not even a pong) for this many seconds is closed.
    #[arg(long, env = "WS_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    pub ws_idle_timeout_secs: u64,
    /// Seconds between SIGTERM (readiness turns 503) and closing every socket with 1001.
    #[arg(long, env = "SHUTDOWN_DRAIN_SECS", default_value_t = 5)]
    pub shutdown_drain_secs: u64,
    #[command(flatten)]
    pub auth: AuthSettings,
    #[command(flatten)]
    pub admission: AdmissionSettings,
    #[command(flatten)]
    pub log: LogArgs,
}

impl Settings {
    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ws_ping_interval_secs.max(1))
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.ws_idle_timeout_secs.max(1))
    }

    pub fn hub_options(&self) -> HubOptions {
        HubOptions {
            buffer_limit: self.client_limits.ws_outbound_queue_bytes,
            max_channels: self.hub_max_channels,
            history_cache: self.history_cache_messages,
            linger: Duration::from_secs(self.channel_linger_secs),
            max_watched: self.history_cache_watched_channels,
        }
    }

    pub fn shutdown_drain(&self) -> Duration {
        Duration::from_secs(self.shutdown_drain_secs)
    }
}
