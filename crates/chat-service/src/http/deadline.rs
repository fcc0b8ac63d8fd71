//! When an HTTP connection must have sent something, as a plain state machine (no I/O, no
//! timer): the connection's task sleeps until [`Deadline::due`] and closes the connection if it
//! is still due then.
//!
//! - A new connection has [`HttpTimeouts::header`] to deliver a complete request head. Bytes
//!   trickling in do not extend it (slowloris).
//! - While a request is being answered there is no deadline (the handler and the body have their
//!   own bounds).
//! - Once every response is written, a kept-alive connection may stay silent for
//!   [`HttpTimeouts::keep_alive`]; the first byte of the next request starts its header timeout.
//! - An upgraded connection (WebSocket) is never timed here again: the session has its own ping
//!   and idle rules.

use std::time::Duration;

use tokio::time::Instant;

/// The two timers of a plain HTTP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpTimeouts {
    /// From the accept (or the first byte of a later request) to a complete request head.
    pub header: Duration,
    /// Silence allowed between requests on a kept-alive connection.
    pub keep_alive: Duration,
}

impl Default for HttpTimeouts {
    /// 10 s for a request head, 60 s between requests.
    fn default() -> Self {
        Self {
            header: Duration::from_secs(10),
            keep_alive: Duration::from_secs(60),
        }
    }
}

/// What a connection was waiting for when its deadline passed (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// A complete request head.
    Header,
    /// The first byte of the next request.
    KeepAlive,
}

impl Waiting {
    pub fn label(self) -> &'static str {
        match self {
            Waiting::Header => "header",
            Waiting::KeepAlive => "keep_alive",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A request head is due by `until`.
    Head { until: Instant },
    /// Kept alive between requests, nothing received since the last response.
    Idle { until: Instant },
    /// Requests received whose responses are not fully written yet.
    Busy { requests: usize },
    /// Switched protocols: not HTTP any more.
    Upgraded,
}

/// The deadline of one connection.
#[derive(Debug, Clone)]
pub struct Deadline {
    timeouts: HttpTimeouts,
    phase: Phase,
    /// HTTP/2: frames (pings, window updates) arrive between requests, so a byte does not start
    /// a request head there; the keep-alive timeout alone applies between requests.
    multiplexed: bool,
}

impl Deadline {
    /// A connection accepted at `now`: its first request head is due.
    pub fn new(timeouts: HttpTimeouts, now: Instant) -> Self {
        Self {
            timeouts,
            phase: Phase::Head {
                until: now + timeouts.header,
            },
            multiplexed: false,
        }
    }

    /// Bytes arrived at `now`: on an idle kept-alive connection, the next request head is due.
    pub fn received(&mut self, now: Instant) {
        if let Phase::Idle { .. } = self.phase {
            if !self.multiplexed {
                self.phase = Phase::Head {
                    until: now + self.timeouts.header,
                };
            }
        }
    }

    /// A complete request head arrived (`multiplexed`: over HTTP/2).
    pub fn request_started(&mut self, multiplexed: bool) {
        self.multiplexed |= multiplexed;
        self.phase = match self.phase {
            Phase::Head { .. } | Phase::Idle { .. } => Phase::Busy { requests: 1 },
            Phase::Busy { requests } => Phase::Busy {
                requests: requests + 1,
            },
            Phase::Upgraded => Phase::Upgraded,
        };
    }

    /// A response was written in full (or abandoned) at `now`.
    pub fn response_finished(&mut self, now: Instant) {
        self.phase = match self.phase {
            Phase::Busy { requests } if requests > 1 => Phase::Busy {
                requests: requests - 1,
            },
            Phase::Busy { .. } => Phase::Idle {
                until: now + self.timeouts.keep_alive,
            },
            other => other,
        };
    }

    /// The connection switched protocols (a WebSocket): no deadline from now on.
    pub fn upgraded(&mut self) {
        self.phase = Phase::Upgraded;
    }

    /// When the connection must be closed unless something happens first, and what it waits for.
    pub fn due(&self) -> Option<(Instant, Waiting)> {
        match self.phase {
            Phase::Head { until } => Some((until, Waiting::Header)),
            Phase::Idle { until } => Some((until, Waiting::KeepAlive)),
            Phase::Busy { .. } | Phase::Upgraded => None,
        }
    }

    /// Whether the next received byte changes the deadline (an idle HTTP/1 connection).
    pub fn waits_for_bytes(&self) -> bool {
        matches!(self.phase, Phase::Idle { .. }) && !self.multiplexed
    }

    pub fn is_upgraded(&self) -> bool {
        self.phase == Phase::Upgraded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUTS: HttpTimeouts = HttpTimeouts {
        header: Duration::from_secs(10),
        keep_alive: Duration::from_secs(60),
    };

    fn at(start: Instant, secs: u64) -> Instant {
        start + Duration::from_secs(secs)
    }

    #[test]
    fn a_new_connection_owes_a_request_head_and_trickled_bytes_do_not_extend_it() {
        let start = Instant::now();
        let mut deadline = Deadline::new(TIMEOUTS, start);
        assert_eq!(deadline.due(), Some((at(start, 10), Waiting::Header)));
        deadline.received(at(start, 5));
        deadline.received(at(start, 9));
        assert_eq!(deadline.due(), Some((at(start, 10), Waiting::Header)));
    }

    #[test]
    fn requests_in_flight_have_no_deadline_and_the_last_response_starts_keep_alive() {
        let start = Instant::now();
        let mut deadline = Deadline::new(TIMEOUTS, start);
        deadline.request_started(false);
        assert_eq!(deadline.due(), None);
        deadline.received(at(start, 100));
        assert_eq!(
            deadline.due(),
            None,
            "a request body arriving is not a new head"
        );
        deadline.response_finished(at(start, 200));
        assert_eq!(deadline.due(), Some((at(start, 260), Waiting::KeepAlive)));
        assert!(deadline.waits_for_bytes());
    }

    #[test]
    fn the_first_byte_after_keep_alive_starts_the_next_header_timeout() {
        let start = Instant::now();
        let mut deadline = Deadline::new(TIMEOUTS, start);
        deadline.request_started(false);
        deadline.response_finished(at(start, 1));
        deadline.received(at(start, 30));
        assert_eq!(deadline.due(), Some((at(start, 40), Waiting::Header)));
        assert!(!deadline.waits_for_bytes());
        deadline.received(at(start, 39));
        assert_eq!(deadline.due(), Some((at(start, 40), Waiting::Header)));
    }

    #[test]
    fn concurrent_http2_requests_keep_the_connection_busy_until_the_last_response() {
        let start = Instant::now();
        let mut deadline = Deadline::new(TIMEOUTS, start);
        deadline.request_started(true);
        deadline.request_started(true);
        deadline.response_finished(at(start, 1));
        assert_eq!(deadline.due(), None);
        deadline.response_finished(at(start, 2));
        assert_eq!(deadline.due(), Some((at(start, 62), Waiting::KeepAlive)));
        deadline.received(at(start, 3));
        assert_eq!(
            deadline.due(),
            Some((at(start, 62), Waiting::KeepAlive)),
            "HTTP/2 frames between requests are not a request head"
        );
    }

    #[test]
    fn an_upgraded_connection_is_never_timed_again() {
        let start = Instant::now();
        let mut deadline = Deadline::new(TIMEOUTS, start);
        deadline.request_started(false);
        deadline.upgraded();
        deadline.response_finished(at(start, 1));
        deadline.received(at(start, 2));
        deadline.request_started(false);
        assert!(deadline.is_upgraded());
        assert_eq!(deadline.due(), None);
    }
}
