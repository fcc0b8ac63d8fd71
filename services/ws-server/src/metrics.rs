//! The ws-server's Prometheus metrics. One registry per [`crate::startup::Application`], so
//! tests can run several servers in one process.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    pub connections: IntGauge,
    pub subscriptions: IntGauge,
    pub hub_channels: IntGauge,
    pub deliveries: IntCounter,
    pub delivery_latency: Histogram,
    pub backfills: IntCounterVec,
    pub backfilled_messages: IntCounter,
    pub duplicates_dropped: IntCounter,
    pub slow_consumer_closes: IntCounter,
    pub redis_reconnects: IntCounter,
    pub history_query_duration: Histogram,
    pub history_cache: IntCounterVec,
    pub published: IntCounterVec,
    pub protocol_errors: IntCounterVec,
    pub http_requests: IntCounterVec,
    pub http_request_duration: HistogramVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("chat_ws".into()), None).expect("a static prefix is valid");
        fn register<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
            r.register(Box::new(c.clone())).expect("registered once");
            c
        }
        let r = &registry;
        let counter = |name: &str, help: &str| {
            register(r, IntCounter::new(name, help).expect("valid metric"))
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let gauge =
            |name: &str, help: &str| register(r, IntGauge::new(name, help).expect("valid metric"));
        let histogram = |name: &str, help: &str| {
            register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                )
                .expect("valid metric"),
            )
        };
        Self {
            connections: gauge("connections", "Open WebSocket connections"),
            subscriptions: gauge("subscriptions", "Channel subscriptions held by connections"),
            hub_channels: gauge(
                "hub_channels",
                "Channels this process is subscribed to on Redis",
            ),
            deliveries: counter(
                "deliveries_total",
                "Message frames queued to WebSocket connections",
            ),
            delivery_latency: histogram(
                "delivery_latency_seconds",
                "Time from a message's stored_at to its fan-out by the hub",
            ),
            backfills: counter_vec(
                "backfills_total",
                "Back-fills from PostgreSQL, by reason (gap, reconnect)",
                &["reason"],
            ),
            backfilled_messages: counter(
                "backfilled_messages_total",
                "Messages delivered from PostgreSQL because Redis missed them",
            ),
            duplicates_dropped: counter(
                "duplicates_dropped_total",
                "Live messages dropped because their seq was already delivered",
            ),
            slow_consumer_closes: counter(
                "slow_consumer_closes_total",
                "Connections closed with 4008 because their outbound queue overflowed",
            ),
            redis_reconnects: counter(
                "redis_reconnects_total",
                "Times the Redis pub/sub connection was re-established",
            ),
            history_query_duration: histogram(
                "history_query_duration_seconds",
                "PostgreSQL history query latency",
            ),
            history_cache: counter_vec(
                "history_cache_total",
                "Newest-messages reads by path (subscribe, rest) and outcome (hit: served from the hub's cache; miss: read from PostgreSQL)",
                &["path", "outcome"],
            ),
            published: counter_vec(
                "published_total",
                "Messages produced to Kafka by clients, by outcome",
                &["outcome"],
            ),
            protocol_errors: counter_vec(
                "protocol_errors_total",
                "WebSocket error replies, by code",
                &["code"],
            ),
            http_requests: counter_vec(
                "http_requests_total",
                "HTTP requests by route and status",
                &["route", "status"],
            ),
            http_request_duration: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new("http_request_duration_seconds", "HTTP request latency")
                        .buckets(LATENCY_BUCKETS.to_vec()),
                    &["route"],
                )
                .expect("valid metric"),
            ),
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
