//! `chat-service`: the plumbing every chat service repeats, so that `chat-worker` and
//! `chat-ws-server` read alike and keep their own code for what they do.
//!
//! - [`args`]: clap flag groups flattened into each service's `Settings`: [`args::KafkaArgs`],
//!   [`args::PostgresArgs`] (a secret), [`args::RedisArgs`] (a secret), [`args::LogArgs`].
//! - [`kafka`]: the librdkafka passthrough (`KAFKA_CONFIG_*`, `KAFKA_CONFIG_FILE`) and the
//!   properties it may not set.
//! - [`http`]: bind the HTTP listener before anything runs (its port is known, also for port 0),
//!   then serve a poem endpoint until a token fires, with graceful shutdown.
//! - [`health`]: the pieces of the probe routes: `/healthz`, the timed readiness check, the
//!   `/readyz` body and status from named checks, the readiness gauges (`<prefix>_ready`,
//!   `<prefix>_dependency_up`) with their background re-evaluation, and the `/metrics` endpoint.
//! - [`metrics`]: [`metrics::Registry`], a prefixed Prometheus registry with register helpers
//!   and the text rendering.
//!
//! What differs per service (the topic and its role, the Redis prefix, the pool size, the HTTP
//! address and its default, which checks `/readyz` runs) stays in that service.

pub mod args;
pub mod health;
pub mod http;
pub mod kafka;
pub mod metrics;
