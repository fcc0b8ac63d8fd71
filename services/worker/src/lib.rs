//! `chat-worker`: Kafka → PostgreSQL + Redis with exactly-once effect.
//!
//! - [`settings`]: configuration from flags and environment variables.
//! - [`startup`]: [`startup::Application`] wires everything and runs it until a shutdown signal.
//! - [`consumer`]: the Kafka consumer loop: batches, retries, offset storage.
//! - [`record`]: the owned consumed record the consumer hands on.
//! - [`pipeline`]: what happens to one batch: store, dead-letter, publish.
//! - [`dlq`]: the dead-letter producer.
//! - [`fanout`]: pipelined Redis publishing.
//! - [`health`]: `/healthz`, `/readyz` and `/metrics`.
//! - [`readiness`]: the flags `/readyz` reads, set by the pipeline and the shutdown path.
//! - [`metrics`]: the Prometheus registry of the worker.
//! - [`error`]: retryable versus permanent failures.

pub mod consumer;
pub mod dlq;
pub mod error;
pub mod fanout;
pub mod health;
pub mod metrics;
pub mod pipeline;
pub mod readiness;
pub mod record;
pub mod settings;
pub mod startup;
