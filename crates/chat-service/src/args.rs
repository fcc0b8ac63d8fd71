//! Flag groups shared by the services, each flattened into a service's `Settings` with
//! `#[command(flatten)]`. Every setting is a flag and an environment variable, with the same
//! name, default and help text in every service. A setting whose default or help differs per
//! service (the Kafka topic, the Redis prefix, the pool size, the HTTP address) is declared by
//! that service instead.

use anyhow::Context;
use chat_core::store::Store;
use chat_core::telemetry::{redact_url, LogFormat};

// No `///` on the structs: clap's derive turns a struct's doc comment into the `about` of the
// command it is flattened into.

#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma separated.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
}

#[derive(Debug, Clone, clap::Args)]
pub struct PostgresArgs {
    /// PostgreSQL connection URL (a secret: never logged).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://chat:chat@127.0.0.1:5432/chat",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub database_url: String,
}

impl PostgresArgs {
    /// A pool of at most `max_connections` that connects on first use (so a service starts while
    /// PostgreSQL is down, and readiness tells).
    pub fn store(&self, max_connections: u32) -> anyhow::Result<Store> {
        Store::connect_lazy(&self.database_url, max_connections).context("invalid DATABASE_URL")
    }

    /// The URL with its password masked, for logs.
    pub fn redacted(&self) -> String {
        redact_url(&self.database_url)
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct RedisArgs {
    /// Redis connection URL (a secret: never logged).
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub redis_url: String,
}

impl RedisArgs {
    /// The URL with its password masked, for logs.
    pub fn redacted(&self) -> String {
        redact_url(&self.redis_url)
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log format: json or text.
    #[arg(long, env = "LOG_FORMAT", default_value = "json")]
    pub log_format: LogFormat,
}
