//! What one WebSocket connection may consume: its outbound queue in bytes, its write timeout, its
//! command rates and its publishes in flight. Each is a setting (`WS_*`); [`Rates`] holds a
//! connection's token buckets (governor).
//!
//! Two buckets per connection: `publish`, and every other command (`subscribe`, `unsubscribe`,
//! `auth`, `ping`, and frames that are not a command at all). A command over its bucket gets an
//! `error` `rate_limited` and is not executed; the connection stays. A connection refused more
//! than [`ClientLimits::ws_rate_limit_strikes`] times in a row of 10 s (the strikes refill at a
//! tenth of that per second) is abusive and closed with 4029. A rate of 0 turns its bucket off,
//! strikes of 0 the closing.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::MonotonicClock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

/// A connection's bucket. `MonotonicClock` (std's `Instant`) is zero-sized where the default
/// clock is not: every idle connection carries three of these.
type Bucket =
    RateLimiter<NotKeyed, InMemoryState, MonotonicClock, NoOpMiddleware<std::time::Instant>>;

/// Close code for a connection that kept sending over its rate limits.
pub const CLOSE_RATE_LIMITED: u16 = 4029;

#[derive(Debug, Clone, clap::Args)]
pub struct ClientLimits {
    /// Bytes of frames queued for one connection before it counts as a slow consumer: a live
    /// message that does not fit closes it with 4008 (history and replies wait for room instead).
    /// Replaces `WS_OUTBOUND_QUEUE` (a frame count), which was removed.
    #[arg(long, env = "WS_OUTBOUND_QUEUE_BYTES", default_value_t = 1024 * 1024)]
    pub ws_outbound_queue_bytes: usize,
    /// Seconds a socket write may take (the client stopped reading and the buffers are full)
    /// before the connection is dropped.
    #[arg(long, env = "WS_WRITE_TIMEOUT_SECS", default_value_t = 5)]
    pub ws_write_timeout_secs: u64,
    /// `publish` commands per second per connection (a token bucket refilling at this rate).
    #[arg(long, env = "WS_PUBLISH_RATE", default_value_t = 20)]
    pub ws_publish_rate: u32,
    /// Burst of `publish` commands per connection (the bucket's size).
    #[arg(long, env = "WS_PUBLISH_BURST", default_value_t = 50)]
    pub ws_publish_burst: u32,
    /// Other commands (`subscribe`, `unsubscribe`, `auth`, `ping`, invalid frames) per second
    /// per connection.
    #[arg(long, env = "WS_COMMAND_RATE", default_value_t = 20)]
    pub ws_command_rate: u32,
    /// Burst of other commands per connection: enough to subscribe to `WS_MAX_SUBSCRIPTIONS`
    /// channels at once.
    #[arg(long, env = "WS_COMMAND_BURST", default_value_t = 200)]
    pub ws_command_burst: u32,
    /// Refused commands within 10 s after which the connection is closed with 4029.
    #[arg(long, env = "WS_RATE_LIMIT_STRIKES", default_value_t = 100)]
    pub ws_rate_limit_strikes: u32,
    /// Publishes of one connection waiting for Kafka's acknowledgement; the connection's next
    /// command waits (its socket is not read) until one is answered.
    #[arg(long, env = "WS_PUBLISHES_IN_FLIGHT", default_value_t = 32)]
    pub ws_publishes_in_flight: usize,
}

impl Default for ClientLimits {
    /// The documented defaults.
    fn default() -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            limits: ClientLimits,
        }
        Only::parse_from(["limits"]).limits
    }
}

impl ClientLimits {
    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.ws_write_timeout_secs.max(1))
    }

    /// Fresh buckets for one connection.
    pub fn rates(&self) -> Rates {
        Rates {
            publish: bucket(self.ws_publish_rate, self.ws_publish_burst),
            command: bucket(self.ws_command_rate, self.ws_command_burst),
            strikes: bucket(
                self.ws_rate_limit_strikes.div_ceil(10),
                self.ws_rate_limit_strikes,
            ),
        }
    }
}

/// A token bucket; `None` (no limit) for a rate of 0.
fn bucket(per_second: u32, burst: u32) -> Option<Bucket> {
    let per_second = NonZeroU32::new(per_second)?;
    let burst = NonZeroU32::new(burst.max(1)).expect("at least one");
    Some(RateLimiter::direct_with_clock(
        Quota::per_second(per_second).allow_burst(burst),
        MonotonicClock,
    ))
}

/// Which bucket a command draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Publish,
    Command,
}

/// What the buckets say about one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Refused: answer `rate_limited`.
    Limited,
    /// Refused, and the connection kept going over its limits: close it with 4029.
    Abusive,
}

/// A connection's token buckets.
pub struct Rates {
    publish: Option<Bucket>,
    command: Option<Bucket>,
    strikes: Option<Bucket>,
}

impl Rates {
    pub fn check(&self, kind: Kind) -> Verdict {
        let bucket = match kind {
            Kind::Publish => &self.publish,
            Kind::Command => &self.command,
        };
        if bucket.as_ref().is_none_or(|bucket| bucket.check().is_ok()) {
            Verdict::Allowed
        } else {
            self.strike()
        }
    }

    /// A command refused (here or by the client's shared rates): limited, or abusive once the
    /// strikes are used up.
    pub fn strike(&self) -> Verdict {
        let left = self
            .strikes
            .as_ref()
            .is_none_or(|strikes| strikes.check().is_ok());
        if left {
            Verdict::Limited
        } else {
            Verdict::Abusive
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(burst: u32, strikes: u32) -> ClientLimits {
        ClientLimits {
            ws_publish_rate: 1,
            ws_publish_burst: burst,
            ws_command_rate: 1,
            ws_command_burst: burst,
            ws_rate_limit_strikes: strikes,
            ..ClientLimits::default()
        }
    }

    #[test]
    fn the_defaults_are_the_documented_ones() {
        let defaults = ClientLimits::default();
        assert_eq!(defaults.ws_outbound_queue_bytes, 1 << 20);
        assert_eq!(defaults.write_timeout(), Duration::from_secs(5));
    }

    #[test]
    fn a_burst_passes_then_commands_are_limited_then_the_connection_is_abusive() {
        let rates = limits(3, 2).rates();
        for _ in 0..3 {
            assert_eq!(rates.check(Kind::Publish), Verdict::Allowed);
        }
        assert_eq!(rates.check(Kind::Publish), Verdict::Limited);
        assert_eq!(rates.check(Kind::Publish), Verdict::Limited);
        assert_eq!(rates.check(Kind::Publish), Verdict::Abusive);
    }

    #[test]
    fn a_rate_of_zero_is_no_limit_and_zero_strikes_never_close() {
        let rates = ClientLimits {
            ws_publish_rate: 0,
            ..limits(1, 0)
        }
        .rates();
        for _ in 0..1000 {
            assert_eq!(rates.check(Kind::Publish), Verdict::Allowed);
        }
        assert_eq!(rates.check(Kind::Command), Verdict::Allowed);
        for _ in 0..1000 {
            assert_eq!(rates.check(Kind::Command), Verdict::Limited);
        }
    }

    #[test]
    fn publish_and_other_commands_have_their_own_buckets() {
        let rates = limits(2, 10).rates();
        assert_eq!(rates.check(Kind::Publish), Verdict::Allowed);
        assert_eq!(rates.check(Kind::Publish), Verdict::Allowed);
        assert_eq!(rates.check(Kind::Publish), Verdict::Limited);
        assert_eq!(rates.check(Kind::Command), Verdict::Allowed);
        assert_eq!(rates.check(Kind::Command), Verdict::Allowed);
        assert_eq!(rates.check(Kind::Command), Verdict::Limited);
    }
}
