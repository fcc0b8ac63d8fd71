//! Capped exponential backoff with jitter, for retrying a dependency that is down: `backon`'s
//! exponential backoff, with the attempt count and reset the retry loops need.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Backoff state: call [`Backoff::next_delay`] after each failure, [`Backoff::reset`] after a
/// success.
#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
    max: Duration,
    attempts: u32,
}

impl Backoff {
    /// Delays start just below `initial`, double after each failure and never exceed `max`.
    /// backon's jitter adds up to 100 % to a delay, so the exponential runs from `initial / 2`
    /// to `max / 2`: replicas retrying a recovering dependency do not do so in lockstep.
    pub fn new(initial: Duration, max: Duration) -> Self {
        let builder = ExponentialBuilder::new()
            .with_min_delay(initial / 2)
            .with_max_delay(max / 2)
            .with_jitter()
            .without_max_times();
        Self {
            builder,
            delays: builder.build(),
            max,
            attempts: 0,
        }
    }

    /// Number of failures since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The delay before the next try.
    pub fn next_delay(&mut self) -> Duration {
        self.attempts = self.attempts.saturating_add(1);
        // Without a limit on tries the iterator never ends.
        self.delays.next().unwrap_or(self.max)
    }

    pub fn reset(&mut self) {
        self.attempts = 0;
        self.delays = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let delays: Vec<_> = (0..10).map(|_| backoff.next_delay()).collect();
        assert!(
            delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100),
            "{delays:?}"
        );
        assert!(delays[3] >= Duration::from_millis(400), "{delays:?}");
        assert!(
            delays.iter().all(|d| *d <= Duration::from_secs(2)),
            "{delays:?}"
        );
        assert!(
            delays[9] >= Duration::from_secs(1),
            "capped at max / 2 plus jitter"
        );
        assert_eq!(backoff.attempts(), 10);
        backoff.reset();
        assert_eq!(backoff.attempts(), 0);
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }
}
