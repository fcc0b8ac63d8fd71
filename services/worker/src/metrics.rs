//! The worker's Prometheus metrics. One registry per [`crate::startup::Application`], so tests
//! can run several workers in one process.

use chat_service::health::ReadinessGauges;
use chat_service::metrics::Registry;
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec};

#[derive(Debug, Clone)]
pub struct Metrics {
    /// Every metric below, prefixed `chat_worker_`; rendered by `/metrics`.
    pub registry: Registry,
    pub records_consumed: IntCounter,
    pub messages_stored: IntCounter,
    pub duplicates: IntCounter,
    pub messages_published: IntCounter,
    pub dead_lettered: IntCounterVec,
    pub retries: IntCounterVec,
    pub batch_size: Histogram,
    pub batch_duration: Histogram,
    pub step_duration: HistogramVec,
    pub consumer_lag: IntGaugeVec,
    /// `chat_worker_ready` and `chat_worker_dependency_up{dependency}`: what `/readyz` computes
    /// (dependencies `pipeline`, `postgresql`, `redis`, `kafka`).
    pub readiness: ReadinessGauges,
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new("chat_worker");
        Self {
            records_consumed: r.counter("records_consumed_total", "Kafka records consumed"),
            messages_stored: r.counter(
                "messages_stored_total",
                "Messages newly stored in PostgreSQL",
            ),
            duplicates: r.counter(
                "duplicates_total",
                "Records whose id was already stored (redeliveries)",
            ),
            messages_published: r
                .counter("messages_published_total", "Messages published to Redis"),
            dead_lettered: r.counter_vec(
                "dead_lettered_total",
                "Malformed records sent to the dead-letter topic, by reason",
                &["reason"],
            ),
            retries: r.counter_vec(
                "retries_total",
                "Batch steps retried because a dependency failed, by dependency",
                &["dependency"],
            ),
            batch_size: r.histogram(
                "batch_size_records",
                "Records per processed batch",
                &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0],
            ),
            batch_duration: r.histogram(
                "batch_duration_seconds",
                "Time to dead-letter, store and publish one batch",
                &[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
                ],
            ),
            step_duration: r.histogram_vec(
                "step_duration_seconds",
                "Time of one batch step (dead_letter, store, publish), retries included",
                &["step"],
                &[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
                ],
            ),
            consumer_lag: r.gauge_vec(
                "consumer_lag",
                "Records behind the partition's high watermark (from librdkafka statistics)",
                &["topic", "partition"],
            ),
            readiness: ReadinessGauges::new(&r),
            registry: r,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
