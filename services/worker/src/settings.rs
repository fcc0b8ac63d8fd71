//! Configuration. Every setting is a flag and an environment variable; the defaults point at
//! services on localhost so that a bare `cargo run` works next to `scripts/services`.

use std::net::SocketAddr;

use chat_core::telemetry::LogFormat;
use chat_service::args::{KafkaArgs, LogArgs, PostgresArgs, RedisArgs};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "chat-worker",
    version,
    about = "Kafka → PostgreSQL + Redis chat message worker"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Clone, Copy, Subcommand)]
pub enum Command {
    /// Consume, store and publish (the default).
    Run,
    /// Apply pending database migrations, then exit. Run once per release, not per replica.
    Migrate {
        /// Seconds to wait for PostgreSQL to accept connections before giving up (a
        /// migration Job or one-shot container may start before the database does).
        #[arg(long, env = "MIGRATE_WAIT_SECS", default_value_t = 120)]
        wait_secs: u64,
    },
    /// Create the input and dead-letter topics if they do not exist, then exit.
    CreateTopics {
        /// Partitions of the input topic (the upper bound of useful worker replicas).
        #[arg(long, default_value_t = 8)]
        partitions: i32,
        /// Replication factor of both topics.
        #[arg(long, default_value_t = 1)]
        replication: i32,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Topic the chat messages arrive on.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "chat.messages")]
    pub kafka_topic: String,
    /// Dead-letter topic for malformed records.
    #[arg(long, env = "KAFKA_DLQ_TOPIC", default_value = "chat.messages.dlq")]
    pub kafka_dlq_topic: String,
    /// Consumer group; replicas in one group share the partitions.
    #[arg(long, env = "KAFKA_GROUP_ID", default_value = "chat-worker")]
    pub kafka_group_id: String,
    /// Records librdkafka prefetches, in KiB (its `queued.max.messages.kbytes`; its own default
    /// is 64 MiB). The largest share of the worker's memory, and what keeps the lanes fed: see
    /// docs/BENCHMARKS.md for rate and RSS at 8, 12 and 16 MiB.
    #[arg(long, env = "KAFKA_FETCH_QUEUE_KBYTES", default_value_t = 16384)]
    pub kafka_fetch_queue_kbytes: u32,
    #[command(flatten)]
    pub postgres: PostgresArgs,
    /// Size of the PostgreSQL connection pool (at least PIPELINE_LANES + 1).
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 6)]
    pub database_max_connections: u32,
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Prefix of the Redis pub/sub channels: a message of channel C is published on `<prefix>C`.
    #[arg(long, env = "REDIS_PREFIX", default_value = chat_core::envelope::DEFAULT_REDIS_PREFIX)]
    pub redis_prefix: String,
    /// Address of the health and metrics HTTP server.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8081")]
    pub http_addr: SocketAddr,
    /// Most records in one batch (one transaction, one Redis pipeline).
    #[arg(long, env = "BATCH_MAX_RECORDS", default_value_t = 2000)]
    pub batch_max_records: usize,
    /// Batches processed concurrently. Partitions are spread over the lanes; one partition
    /// always goes to the same lane, so its records stay in order. One is fastest when
    /// PostgreSQL is near (a batch is one round trip); more overlap the round trips of a remote
    /// one.
    #[arg(long, env = "PIPELINE_LANES", default_value_t = 1)]
    pub pipeline_lanes: usize,
    /// Longest time a lane goes on collecting a batch while records keep arriving, in
    /// milliseconds. An upper bound, not a wait: a lane sends what is queued as soon as nothing
    /// more is arriving (a lone record at once), and batches grow only under load.
    #[arg(long, env = "BATCH_LINGER_MS", default_value_t = 5)]
    pub batch_linger_ms: u64,
    /// Longest pause between retries while a dependency is down, in milliseconds.
    #[arg(long, env = "RETRY_MAX_BACKOFF_MS", default_value_t = 5000)]
    pub retry_max_backoff_ms: u64,
    #[command(flatten)]
    pub log: LogArgs,
}

impl Settings {
    /// A worker for tests on the given services: input `topic` (dead letters on
    /// `<topic>.dlq`), consumer `group` and Redis `redis_prefix`; an ephemeral HTTP port
    /// (`127.0.0.1:0`), text logs, 500-record batches on two lanes, four connections and retries
    /// capped at 500 ms.
    pub fn for_tests(
        kafka_brokers: &str,
        database_url: &str,
        redis_url: &str,
        topic: &str,
        group: &str,
        redis_prefix: &str,
    ) -> Self {
        Self {
            kafka: KafkaArgs::new(kafka_brokers),
            kafka_topic: topic.to_owned(),
            kafka_dlq_topic: format!("{topic}.dlq"),
            kafka_group_id: group.to_owned(),
            kafka_fetch_queue_kbytes: 16384,
            postgres: PostgresArgs::new(database_url),
            database_max_connections: 4,
            redis: RedisArgs::new(redis_url),
            redis_prefix: redis_prefix.to_owned(),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            batch_max_records: 500,
            batch_linger_ms: 5,
            pipeline_lanes: 2,
            retry_max_backoff_ms: 500,
            log: LogArgs {
                log_format: LogFormat::Text,
            },
        }
    }
}
