//! The ws-server's Prometheus metrics. One registry per [`crate::startup::Application`], so
//! tests can run several servers in one process.

use chat_service::health::ReadinessGauges;
use chat_service::metrics::Registry;
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge};

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Debug, Clone)]
pub struct Metrics {
    /// Every metric below, prefixed `chat_ws_`; rendered by `/metrics`.
    pub registry: Registry,
    pub connections: IntGauge,
    pub subscriptions: IntGauge,
    pub hub_channels: IntGauge,
    pub hub_evictions: IntCounter,
    pub envelopes_dropped: IntCounterVec,
    pub rate_limit_closes: IntCounter,
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
    pub http_timeouts: IntCounterVec,
    pub payload_too_large: IntCounter,
    pub connections_refused: IntCounterVec,
    pub rest_rate_limited: IntCounterVec,
    /// `chat_ws_ready` and `chat_ws_dependency_up{dependency}`: what `/readyz` computes
    /// (dependencies `postgresql`, `redis`, `kafka`).
    pub readiness: ReadinessGauges,
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new("chat_ws");
        let latency = |name: &str, help: &str| r.histogram(name, help, LATENCY_BUCKETS);
        Self {
            connections: r.gauge("connections", "Open WebSocket connections"),
            subscriptions: r.gauge("subscriptions", "Channel subscriptions held by connections"),
            hub_channels: r.gauge(
                "hub_channels",
                "Channels this process is subscribed to on Redis",
            ),
            hub_evictions: r.counter(
                "hub_evictions_total",
                "Unused channels dropped early to make room for a new one (HUB_MAX_CHANNELS)",
            ),
            envelopes_dropped: r.counter_vec(
                "envelopes_dropped_total",
                "Redis payloads not delivered, by reason (undecodable, invalid, wrong_channel, not_in_log)",
                &["reason"],
            ),
            rate_limit_closes: r.counter(
                "rate_limit_closes_total",
                "Connections closed with 4029 for staying over their command rate limits",
            ),
            deliveries: r.counter(
                "deliveries_total",
                "Message frames queued to WebSocket connections",
            ),
            delivery_latency: latency(
                "delivery_latency_seconds",
                "Time from a message's stored_at to its fan-out by the hub",
            ),
            backfills: r.counter_vec(
                "backfills_total",
                "Back-fills from PostgreSQL, by reason (gap, reconnect)",
                &["reason"],
            ),
            backfilled_messages: r.counter(
                "backfilled_messages_total",
                "Messages delivered from PostgreSQL because Redis missed them",
            ),
            duplicates_dropped: r.counter(
                "duplicates_dropped_total",
                "Live messages dropped because their seq was already delivered",
            ),
            slow_consumer_closes: r.counter(
                "slow_consumer_closes_total",
                "Connections closed with 4008 because their outbound queue overflowed",
            ),
            redis_reconnects: r.counter(
                "redis_reconnects_total",
                "Times the Redis pub/sub connection was re-established",
            ),
            history_query_duration: latency(
                "history_query_duration_seconds",
                "PostgreSQL history query latency",
            ),
            history_cache: r.counter_vec(
                "history_cache_total",
                "Newest-messages reads by path (subscribe, rest) and outcome (hit: served from the hub's cache; miss: read from PostgreSQL)",
                &["path", "outcome"],
            ),
            published: r.counter_vec(
                "published_total",
                "Messages produced to Kafka by clients, by outcome",
                &["outcome"],
            ),
            protocol_errors: r.counter_vec(
                "protocol_errors_total",
                "WebSocket error replies, by code",
                &["code"],
            ),
            http_requests: r.counter_vec(
                "http_requests_total",
                "HTTP requests by route and status",
                &["route", "status"],
            ),
            http_request_duration: r.histogram_vec(
                "http_request_duration_seconds",
                "HTTP request latency",
                &["route"],
                LATENCY_BUCKETS,
            ),
            http_timeouts: r.counter_vec(
                "http_connections_timed_out_total",
                "HTTP connections closed because a request head (header) or the next request (keep_alive) was overdue",
                &["waiting"],
            ),
            payload_too_large: r.counter(
                "http_payload_too_large_total",
                "REST requests refused with 413 because the body passed HTTP_MAX_BODY_BYTES",
            ),
            connections_refused: r.counter_vec(
                "connections_refused_total",
                "WebSocket upgrades refused, by reason (max_connections, ip_connections, ip_rate)",
                &["reason"],
            ),
            rest_rate_limited: r.counter_vec(
                "rest_rate_limited_total",
                "REST requests refused with 429, by operation (read, write)",
                &["operation"],
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
