//! The worker's Prometheus metrics. One registry per [`crate::startup::Application`], so tests
//! can run several workers in one process.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    pub records_consumed: IntCounter,
    pub messages_stored: IntCounter,
    pub duplicates: IntCounter,
    pub messages_published: IntCounter,
    pub dead_lettered: IntCounterVec,
    pub retries: IntCounterVec,
    pub batch_size: Histogram,
    pub batch_duration: Histogram,
    pub step_duration: prometheus::HistogramVec,
    pub consumer_lag: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("chat_worker".into()), None)
            .expect("a static prefix is valid");
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("registered once");
            h
        };
        let step_duration = prometheus::HistogramVec::new(
            HistogramOpts::new(
                "step_duration_seconds",
                "Time of one batch step (dead_letter, store, publish), retries included",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
            ]),
            &["step"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(step_duration.clone()))
            .expect("registered once");
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                "consumer_lag",
                "Records behind the partition's high watermark (from librdkafka statistics)",
            ),
            &["topic", "partition"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(consumer_lag.clone()))
            .expect("registered once");

        Self {
            records_consumed: counter("records_consumed_total", "Kafka records consumed"),
            messages_stored: counter(
                "messages_stored_total",
                "Messages newly stored in PostgreSQL",
            ),
            duplicates: counter(
                "duplicates_total",
                "Records whose id was already stored (redeliveries)",
            ),
            messages_published: counter("messages_published_total", "Messages published to Redis"),
            dead_lettered: counter_vec(
                "dead_lettered_total",
                "Malformed records sent to the dead-letter topic, by reason",
                &["reason"],
            ),
            retries: counter_vec(
                "retries_total",
                "Batch steps retried because a dependency failed, by dependency",
                &["dependency"],
            ),
            batch_size: histogram(
                "batch_size_records",
                "Records per processed batch",
                vec![1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0],
            ),
            batch_duration: histogram(
                "batch_duration_seconds",
                "Time to dead-letter, store and publish one batch",
                vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
                ],
            ),
            step_duration,
            consumer_lag,
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding does not fail");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
