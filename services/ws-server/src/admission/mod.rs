//! Admission at the HTTP edge (issue #12): what a client may cost before the server does any
//! work for it.
//!
//! - [`settings`]: every limit below, plus the listeners' header and keep-alive timeouts (which
//!   `chat_service::http` enforces per connection).
//! - [`client_ip`]: the client's address: the TCP peer, or behind `TRUSTED_PROXIES` the
//!   rightmost untrusted `X-Forwarded-For` entry; IPv6 clients count per /64.
//! - [`connections`]: open WebSocket connections in all and per IP; a [`connections::Slot`]
//!   lives in each session's future and frees its place when the session ends.
//! - [`rate`]: keyed rates (governor): new WebSocket connections per IP, REST reads and writes
//!   per client (the user of a verified token, else the IP).
//! - [`body`]: the REST body limit, enforced while the body streams in.
//!
//! [`Admission`] holds them for the upgrade (`upgrade.rs`) and the REST API (`api.rs`);
//! refusals are JSON problems with `Retry-After`, counted in `/metrics`.

pub mod body;
pub mod client_ip;
pub mod connections;
pub mod rate;
pub mod settings;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use poem::http::{header, HeaderValue, StatusCode};
use poem::{Request, Response};
use tokio_util::sync::CancellationToken;

use crate::error::{problem, ErrorBody};
use crate::metrics::Metrics;
use client_ip::{limit_key, TrustedProxies};
use connections::{ConnectionSlots, Full, Slot};
use rate::{KeyedRate, RetryAfter};
use settings::AdmissionSettings;

/// What a client hitting a connection cap is told to wait: slots free up as sessions end, at
/// no predictable moment.
const FULL_RETRY_AFTER: RetryAfter = RetryAfter(5);
/// How often the rate limiters forget the keys at rest.
const FORGET_IDLE_EVERY: Duration = Duration::from_secs(10);

/// Whom the REST rates count: a verified token's user, else the client's IP (its limit key).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Client {
    User(Arc<str>),
    Ip(IpAddr),
}

/// The two REST rates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Read,
    Write,
}

/// A request turned away at the edge: its status, stable code and when to come back.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: RetryAfter,
}

impl Refusal {
    pub fn body(&self) -> ErrorBody {
        ErrorBody::new(self.code, self.message.clone())
    }

    /// The JSON problem with its `Retry-After` (outside the OpenAPI operations).
    pub fn into_response(self) -> Response {
        let mut response = problem(self.status, self.code, self.message);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(self.retry_after.0));
        response
    }

    fn rate_limited(what: &str, retry_after: RetryAfter) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "rate_limited",
            message: format!("too many {what}; retry in {} s", retry_after.0),
            retry_after,
        }
    }
}

pub struct Admission {
    proxies: TrustedProxies,
    /// Addresses whose connection was closed with 4029, until when they may not reconnect.
    cooling_down: Mutex<HashMap<IpAddr, Instant>>,
    cooldown: Duration,
    slots: Arc<ConnectionSlots>,
    connects: Option<KeyedRate<IpAddr>>,
    reads: Option<KeyedRate<Client>>,
    writes: Option<KeyedRate<Client>>,
    metrics: Metrics,
}

impl Admission {
    pub fn new(settings: &AdmissionSettings, metrics: Metrics) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            proxies: settings.trusted_proxies()?,
            cooling_down: Mutex::new(HashMap::new()),
            cooldown: Duration::from_secs(settings.ws_abuse_cooldown_secs),
            slots: ConnectionSlots::new(
                settings.ws_max_connections,
                settings.ws_max_connections_per_ip,
            ),
            connects: KeyedRate::new(
                settings.ws_connects_per_ip_per_sec,
                settings.ws_connect_burst_per_ip,
            ),
            reads: KeyedRate::new(settings.client_reads_per_sec, settings.client_read_burst),
            writes: KeyedRate::new(settings.client_writes_per_sec, settings.client_write_burst),
            metrics,
        }))
    }

    /// The client's address (see [`client_ip`]).
    pub fn client_ip(&self, request: &Request) -> IpAddr {
        let peer = request
            .remote_addr()
            .as_socket_addr()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |addr| addr.ip());
        let forwarded_for = request
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok());
        self.proxies.client_ip(peer, forwarded_for)
    }

    /// A new WebSocket connection from `ip`: within its IP's connection rate, then a slot under
    /// both caps; the slot must live as long as the session.
    pub fn admit_websocket(&self, ip: IpAddr) -> Result<Slot, Refusal> {
        let key = limit_key(ip);
        let refused = |reason: &str| {
            self.metrics
                .connections_refused
                .with_label_values(&[reason])
                .inc();
        };
        if let Some(left) = self.cooldown_left(key) {
            refused("cooldown");
            return Err(Refusal::rate_limited(
                "commands over the limits from this address (closed with 4029)",
                RetryAfter::from_wait(left),
            ));
        }
        if let Some(connects) = &self.connects {
            if let Err(retry_after) = connects.check(&key) {
                refused("ip_rate");
                return Err(Refusal::rate_limited(
                    "new connections from this address",
                    retry_after,
                ));
            }
        }
        self.slots.acquire(key).map_err(|full| match full {
            Full::Process => {
                refused("max_connections");
                Refusal {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    code: "server_full",
                    message: "this server holds as many WebSocket connections as it may \
                              (WS_MAX_CONNECTIONS); retry later"
                        .into(),
                    retry_after: FULL_RETRY_AFTER,
                }
            }
            Full::Ip => {
                refused("ip_connections");
                Refusal {
                    status: StatusCode::TOO_MANY_REQUESTS,
                    code: "too_many_connections",
                    message: "this address holds as many WebSocket connections as it may \
                              (WS_MAX_CONNECTIONS_PER_IP); close one first"
                        .into(),
                    retry_after: FULL_RETRY_AFTER,
                }
            }
        })
    }

    /// A connection from `ip` was closed with 4029: the address opens no new connection for
    /// `WS_ABUSE_COOLDOWN_SECS`.
    pub fn cool_down(&self, ip: IpAddr) {
        if self.cooldown.is_zero() {
            return;
        }
        let until = Instant::now() + self.cooldown;
        self.lock_cooling_down().insert(limit_key(ip), until);
    }

    fn cooldown_left(&self, key: IpAddr) -> Option<Duration> {
        let until = *self.lock_cooling_down().get(&key)?;
        until.checked_duration_since(Instant::now())
    }

    fn lock_cooling_down(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Instant>> {
        self.cooling_down
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whom a REST request counts against: `user` when a token named one, else the address.
    pub fn rest_client(&self, request: &Request, user: Option<&str>) -> Client {
        match user {
            Some(user) => Client::User(user.into()),
            None => Client::Ip(limit_key(self.client_ip(request))),
        }
    }

    /// Whom a WebSocket command counts against: the connection's user, else its address.
    pub fn ws_client(&self, ip: IpAddr, user: Option<&str>) -> Client {
        match user {
            Some(user) => Client::User(user.into()),
            None => Client::Ip(limit_key(ip)),
        }
    }

    /// One read (a `subscribe`) or write (a `publish`) of a WebSocket client: the same rates as
    /// its REST requests, so a client cannot escape them by switching protocol or by
    /// reconnecting (a connection's own buckets start full).
    pub fn admit_command(&self, client: &Client, operation: Operation) -> bool {
        self.rate(operation)
            .is_none_or(|rate| rate.check(client).is_ok())
    }

    fn rate(&self, operation: Operation) -> Option<&KeyedRate<Client>> {
        match operation {
            Operation::Read => self.reads.as_ref(),
            Operation::Write => self.writes.as_ref(),
        }
    }

    /// One REST request of `client`, within its rate for `operation`.
    pub fn admit_rest(&self, client: &Client, operation: Operation) -> Result<(), Refusal> {
        let (label, what) = match operation {
            Operation::Read => ("read", "reads"),
            Operation::Write => ("write", "writes"),
        };
        let Some(rate) = self.rate(operation) else {
            return Ok(());
        };
        rate.check(client).map_err(|retry_after| {
            self.metrics
                .rest_rate_limited
                .with_label_values(&[label])
                .inc();
            Refusal::rate_limited(what, retry_after)
        })
    }

    /// Forgets, every few seconds until `stop`, the rate state of clients at rest, so that many
    /// clients seen once do not pile up.
    pub async fn forget_idle_until(self: Arc<Self>, stop: CancellationToken) {
        let mut every = tokio::time::interval(FORGET_IDLE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = every.tick() => {}
            }
            for rate in [&self.reads, &self.writes].into_iter().flatten() {
                rate.forget_idle();
            }
            if let Some(connects) = &self.connects {
                connects.forget_idle();
            }
            let now = Instant::now();
            self.lock_cooling_down().retain(|_, until| *until > now);
        }
    }
}
