//! The limits of the HTTP edge (issue #12): timeouts, body size, WebSocket connection caps and
//! rates, REST rates, trusted proxies. One flattened group of [`crate::settings::Settings`].
//! Every count and rate also takes `0`: no limit.

use std::time::Duration;

use anyhow::Context;
use chat_service::http::HttpTimeouts;

use super::client_ip::TrustedProxies;

pub const DEFAULT_HEADER_TIMEOUT_SECS: u64 = 10;
pub const DEFAULT_KEEP_ALIVE_TIMEOUT_SECS: u64 = 60;
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
pub const DEFAULT_WS_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_WS_MAX_CONNECTIONS_PER_IP: usize = 1_000;
pub const DEFAULT_WS_CONNECTS_PER_IP_PER_SEC: u32 = 50;
pub const DEFAULT_WS_CONNECT_BURST_PER_IP: u32 = 200;
pub const DEFAULT_WS_ABUSE_COOLDOWN_SECS: u64 = 10;
pub const DEFAULT_CLIENT_READS_PER_SEC: u32 = 200;
pub const DEFAULT_CLIENT_READ_BURST: u32 = 1_000;
pub const DEFAULT_CLIENT_WRITES_PER_SEC: u32 = 50;
pub const DEFAULT_CLIENT_WRITE_BURST: u32 = 250;

#[derive(Debug, Clone, clap::Args)]
pub struct AdmissionSettings {
    /// Seconds a connection has to send a complete request head, from the accept or from the
    /// first byte of a later request; a slower one is closed (slowloris). Both listeners.
    #[arg(long, env = "HTTP_HEADER_TIMEOUT_SECS", default_value_t = DEFAULT_HEADER_TIMEOUT_SECS)]
    pub http_header_timeout_secs: u64,
    /// Seconds a kept-alive HTTP connection may stay silent between requests. WebSockets are
    /// never cut by it (they have WS_PING_INTERVAL_SECS / WS_IDLE_TIMEOUT_SECS).
    #[arg(long, env = "HTTP_KEEP_ALIVE_TIMEOUT_SECS", default_value_t = DEFAULT_KEEP_ALIVE_TIMEOUT_SECS)]
    pub http_keep_alive_timeout_secs: u64,
    /// Largest REST request body, in bytes: a larger Content-Length gets 413 before the body is
    /// read, a chunked body gets 413 as soon as it passes the limit.
    #[arg(long, env = "HTTP_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub http_max_body_bytes: usize,
    /// Most WebSocket connections of this process; a new one past it gets 503 with
    /// Retry-After. 0: no limit.
    #[arg(long, env = "WS_MAX_CONNECTIONS", default_value_t = DEFAULT_WS_MAX_CONNECTIONS)]
    pub ws_max_connections: usize,
    /// Most WebSocket connections of one client IP (IPv6: one /64) at a time; past it, 429.
    /// 0: no limit.
    #[arg(long, env = "WS_MAX_CONNECTIONS_PER_IP", default_value_t = DEFAULT_WS_MAX_CONNECTIONS_PER_IP)]
    pub ws_max_connections_per_ip: usize,
    /// New WebSocket connections per second one client IP may open, on average; past it (and
    /// the burst), 429 with Retry-After. 0: no limit.
    #[arg(long, env = "WS_CONNECTS_PER_IP_PER_SEC", default_value_t = DEFAULT_WS_CONNECTS_PER_IP_PER_SEC)]
    pub ws_connects_per_ip_per_sec: u32,
    /// New WebSocket connections one client IP may open at once, before the rate applies.
    #[arg(long, env = "WS_CONNECT_BURST_PER_IP", default_value_t = DEFAULT_WS_CONNECT_BURST_PER_IP)]
    pub ws_connect_burst_per_ip: u32,
    /// Seconds a client IP may open no new WebSocket connection after one of its connections was
    /// closed with 4029 (it kept going over its command rates); 429 with Retry-After meanwhile.
    /// Without it an abuser would reconnect for fresh buckets. 0: no cool-down.
    #[arg(long, env = "WS_ABUSE_COOLDOWN_SECS", default_value_t = DEFAULT_WS_ABUSE_COOLDOWN_SECS)]
    pub ws_abuse_cooldown_secs: u64,
    /// Reads per second per client: REST GETs and WebSocket `subscribe`s of the user of a
    /// verified token, else of the client IP. Past it (and the burst), 429 with Retry-After
    /// (WebSocket: `rate_limited`). 0: no limit.
    #[arg(long, env = "CLIENT_READS_PER_SEC", default_value_t = DEFAULT_CLIENT_READS_PER_SEC)]
    pub client_reads_per_sec: u32,
    /// Reads one client may make at once, before the rate applies.
    #[arg(long, env = "CLIENT_READ_BURST", default_value_t = DEFAULT_CLIENT_READ_BURST)]
    pub client_read_burst: u32,
    /// Writes per second per client (REST POSTs and WebSocket `publish`es), as for reads.
    /// 0: no limit.
    #[arg(long, env = "CLIENT_WRITES_PER_SEC", default_value_t = DEFAULT_CLIENT_WRITES_PER_SEC)]
    pub client_writes_per_sec: u32,
    /// Writes one client may make at once, before the rate applies.
    #[arg(long, env = "CLIENT_WRITE_BURST", default_value_t = DEFAULT_CLIENT_WRITE_BURST)]
    pub client_write_burst: u32,
    /// Proxies whose `X-Forwarded-For` is believed, comma separated IPs or CIDRs (e.g. the
    /// ingress controller's pod range `10.0.0.0/8`). The client is the rightmost address of
    /// X-Forwarded-For that is not one of them. Empty: nobody; the TCP peer is the client.
    #[arg(long, env = "TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: String,
}

impl AdmissionSettings {
    /// The defaults, for tests and benchmarks that set a field or two.
    pub fn defaults() -> Self {
        Self {
            http_header_timeout_secs: DEFAULT_HEADER_TIMEOUT_SECS,
            http_keep_alive_timeout_secs: DEFAULT_KEEP_ALIVE_TIMEOUT_SECS,
            http_max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            ws_max_connections: DEFAULT_WS_MAX_CONNECTIONS,
            ws_max_connections_per_ip: DEFAULT_WS_MAX_CONNECTIONS_PER_IP,
            ws_connects_per_ip_per_sec: DEFAULT_WS_CONNECTS_PER_IP_PER_SEC,
            ws_connect_burst_per_ip: DEFAULT_WS_CONNECT_BURST_PER_IP,
            ws_abuse_cooldown_secs: DEFAULT_WS_ABUSE_COOLDOWN_SECS,
            client_reads_per_sec: DEFAULT_CLIENT_READS_PER_SEC,
            client_read_burst: DEFAULT_CLIENT_READ_BURST,
            client_writes_per_sec: DEFAULT_CLIENT_WRITES_PER_SEC,
            client_write_burst: DEFAULT_CLIENT_WRITE_BURST,
            trusted_proxies: String::new(),
        }
    }

    /// The header and keep-alive timeouts of both listeners (at least a second each).
    pub fn http_timeouts(&self) -> HttpTimeouts {
        HttpTimeouts {
            header: Duration::from_secs(self.http_header_timeout_secs.max(1)),
            keep_alive: Duration::from_secs(self.http_keep_alive_timeout_secs.max(1)),
        }
    }

    /// The parsed `TRUSTED_PROXIES`; a bad entry fails the start.
    pub fn trusted_proxies(&self) -> anyhow::Result<TrustedProxies> {
        TrustedProxies::parse(&self.trusted_proxies).context("TRUSTED_PROXIES")
    }
}
