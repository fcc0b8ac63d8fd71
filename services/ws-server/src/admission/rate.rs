//! A rate per key (a client IP, a user): governor's keyed GCRA limiter, with the wait a refused
//! client is told in `Retry-After`. Its state holds only keys that could still be limited once
//! [`KeyedRate::forget_idle`] ran (a key is at rest again 1/rate after its last request when it
//! used one cell), so running that every few seconds bounds it by the keys seen in that time.

use std::hash::Hash;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

/// A refusal: come back after this many whole seconds (at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub u64);

impl RetryAfter {
    pub fn from_wait(wait: Duration) -> Self {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        Self(secs.max(1))
    }
}

pub struct KeyedRate<K: Hash + Eq + Clone> {
    limiter: RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock>,
}

impl<K: Hash + Eq + Clone> KeyedRate<K> {
    /// `per_second` on average with bursts of `burst` (at least one); `None` when
    /// `per_second` is 0 (no limit).
    pub fn new(per_second: u32, burst: u32) -> Option<Self> {
        let rate = NonZeroU32::new(per_second)?;
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(rate).allow_burst(burst);
        Some(Self {
            limiter: RateLimiter::keyed(quota),
        })
    }

    /// Takes one cell for `key`, or says how long until one is free.
    pub fn check(&self, key: &K) -> Result<(), RetryAfter> {
        self.limiter.check_key(key).map_err(|not_until| {
            RetryAfter::from_wait(not_until.wait_time_from(self.limiter.clock().now()))
        })
    }

    /// Drops the state of every key that is at rest (could not be limited any more).
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Keys with state.
    pub fn keys(&self) -> usize {
        self.limiter.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_gets_its_burst_then_a_retry_after_and_other_keys_are_unaffected() {
        let rate = KeyedRate::new(1, 3).unwrap();
        for _ in 0..3 {
            rate.check(&"a").unwrap();
        }
        assert_eq!(rate.check(&"a"), Err(RetryAfter(1)));
        rate.check(&"b").unwrap();
    }

    #[test]
    fn zero_is_no_limit() {
        assert!(KeyedRate::<u8>::new(0, 10).is_none());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(RetryAfter::from_wait(Duration::ZERO), RetryAfter(1));
        assert_eq!(
            RetryAfter::from_wait(Duration::from_millis(1)),
            RetryAfter(1)
        );
        assert_eq!(
            RetryAfter::from_wait(Duration::from_millis(2001)),
            RetryAfter(3)
        );
        assert_eq!(RetryAfter::from_wait(Duration::from_secs(2)), RetryAfter(2));
    }

    #[test]
    fn keys_at_rest_are_forgotten() {
        let rate = KeyedRate::new(1000, 1).unwrap();
        for key in 0..100u32 {
            rate.check(&key).unwrap();
        }
        assert_eq!(rate.keys(), 100);
        std::thread::sleep(Duration::from_millis(20));
        rate.forget_idle();
        assert_eq!(rate.keys(), 0);
    }
}
