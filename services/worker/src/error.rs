//! Worker failures are either retryable (a dependency is down: back off, never commit past the
//! batch) or permanent (a bad record: dead-letter it, count it, move on). Permanent failures are
//! values ([`chat_core::message::RejectReason`]), not errors; this enum holds the retryable ones.

/// A dependency failed while processing a batch. The batch is retried as a whole step.
#[derive(Debug, thiserror::Error)]
pub enum Retryable {
    #[error("postgresql: {0}")]
    Database(#[from] sqlx::Error),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

impl Retryable {
    /// The dependency's name, as used in the `dependency` label of the retry metric.
    pub fn dependency(&self) -> &'static str {
        match self {
            Retryable::Database(_) => "postgresql",
            Retryable::Redis(_) => "redis",
            Retryable::Kafka(_) => "kafka",
        }
    }
}
