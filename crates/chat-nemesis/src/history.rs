//! What the workload did and saw, recorded as it happens for the checker to read afterwards:
//! every publish (tried, acknowledged), every message a subscriber or a REST reader was given,
//! the violations found on the spot, and the faults injected.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use uuid::Uuid;

/// How a message entered the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    WebSocket,
    Rest,
    Kafka,
}

/// One message the workload tried to publish (its retries share the id).
#[derive(Debug, Clone, Serialize)]
pub struct Publish {
    pub id: Uuid,
    pub channel: String,
    pub author: String,
    pub text: String,
    pub via: Via,
    /// The publisher, e.g. `ws-2`: it waits for each acknowledgement before its next publish.
    pub publisher: String,
    /// Its position in the publisher's sequence.
    pub index: u64,
    /// Made malformed on purpose: must be dead-lettered, never stored.
    pub malformed: bool,
    pub attempts: u32,
    pub acknowledged: bool,
}

/// A message as a client was given it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Seen {
    pub id: Uuid,
    pub author: String,
    pub text: String,
}

/// A broken guarantee, kept with enough context to look it up in PostgreSQL and the logs.
#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    pub kind: &'static str,
    pub detail: String,
    pub at_secs: f64,
}

/// How many of the longest waits are kept (to line them up with the faults).
const LONGEST_KEPT: usize = 10;

#[derive(Debug, Default)]
pub struct History {
    publishes: Mutex<HashMap<Uuid, Publish>>,
    /// (channel, seq) → the message clients were given there (subscribers and REST readers).
    seen: Mutex<HashMap<(String, i64), Seen>>,
    violations: Mutex<Vec<Violation>>,
    violation_counts: Mutex<BTreeMap<&'static str, u64>>,
    faults: Mutex<Vec<FaultRecord>>,
    pub counters: Counters,
    started: std::sync::OnceLock<std::time::Instant>,
    /// The longest waits for an owed message: (wait, what, received at run secs), longest first.
    longest_waits: Mutex<Vec<(Duration, String, f64)>>,
    latency: Mutex<Option<hdrhistogram::Histogram<u64>>>,
}

/// Event counts of the workload.
#[derive(Debug, Default)]
pub struct Counters {
    pub deliveries: AtomicU64,
    pub subscribes: AtomicU64,
    pub resumes: AtomicU64,
    pub unsubscribes: AtomicU64,
    pub reconnects: AtomicU64,
    pub connect_failures: AtomicU64,
    pub subscribe_retries: AtomicU64,
    pub publish_retries: AtomicU64,
    pub rest_pages: AtomicU64,
    pub rest_errors: AtomicU64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    pub kind: String,
    pub target: String,
    pub at_secs: f64,
    pub secs: f64,
}

pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl History {
    pub fn new() -> Self {
        let history = Self::default();
        history.started.get_or_init(std::time::Instant::now);
        *history.latency.lock().unwrap() =
            Some(hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("bounds"));
        history
    }

    /// Seconds since the run started.
    pub fn now_secs(&self) -> f64 {
        self.started
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_secs_f64()
    }

    pub fn tried(&self, publish: Publish) {
        self.publishes.lock().unwrap().insert(publish.id, publish);
    }

    pub fn retried(&self, id: Uuid) {
        bump(&self.counters.publish_retries);
        if let Some(p) = self.publishes.lock().unwrap().get_mut(&id) {
            p.attempts += 1;
        }
    }

    pub fn acknowledged(&self, id: Uuid) {
        if let Some(p) = self.publishes.lock().unwrap().get_mut(&id) {
            p.acknowledged = true;
        }
    }

    pub fn publishes(&self) -> Vec<Publish> {
        self.publishes.lock().unwrap().values().cloned().collect()
    }

    /// Records what a client was given at (channel, seq); a different message there than
    /// another client was given is a violation at once (PostgreSQL is compared at the end).
    pub fn saw(&self, channel: &str, seq: i64, seen: Seen, source: &str) {
        let mut map = self.seen.lock().unwrap();
        match map.get(&(channel.to_owned(), seq)) {
            Some(before) if *before != seen => {
                let detail = format!(
                    "{source}: {channel} seq {seq} is {} but was {} before",
                    seen.id, before.id
                );
                drop(map);
                self.violation("two_messages_at_one_seq", detail);
            }
            Some(_) => {}
            None => {
                map.insert((channel.to_owned(), seq), seen);
            }
        }
    }

    pub fn seen(&self) -> HashMap<(String, i64), Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn violation(&self, kind: &'static str, detail: String) {
        *self
            .violation_counts
            .lock()
            .unwrap()
            .entry(kind)
            .or_default() += 1;
        let mut all = self.violations.lock().unwrap();
        // The first ones of each kind tell the story; the counts tell the size.
        if all.iter().filter(|v| v.kind == kind).count() < 50 {
            all.push(Violation {
                kind,
                detail,
                at_secs: self.now_secs(),
            });
        }
    }

    pub fn violations(&self) -> (Vec<Violation>, BTreeMap<&'static str, u64>) {
        (
            self.violations.lock().unwrap().clone(),
            self.violation_counts.lock().unwrap().clone(),
        )
    }

    pub fn fault(&self, record: FaultRecord) {
        self.faults.lock().unwrap().push(record);
    }

    pub fn faults(&self) -> Vec<FaultRecord> {
        self.faults.lock().unwrap().clone()
    }

    /// A delivery `wait` after the message was owed (stored, and the subscription active).
    pub fn waited(&self, wait: Duration, what: impl FnOnce() -> String) {
        bump(&self.counters.deliveries);
        if let Some(h) = self.latency.lock().unwrap().as_mut() {
            let _ = h.record((wait.as_micros() as u64).max(1));
        }
        let mut longest = self.longest_waits.lock().unwrap();
        if longest.len() < LONGEST_KEPT || longest.last().is_some_and(|l| wait > l.0) {
            let entry = (wait, what(), self.now_secs());
            let at = longest.partition_point(|l| l.0 >= wait);
            longest.insert(at, entry);
            longest.truncate(LONGEST_KEPT);
        }
    }

    /// The longest waits, longest first: (wait, what, received at run secs).
    pub fn longest_waits(&self) -> Vec<(Duration, String, f64)> {
        self.longest_waits.lock().unwrap().clone()
    }

    /// Delivery latency percentiles in milliseconds (p50, p99, p99.9).
    pub fn latency_ms(&self) -> (f64, f64, f64) {
        let guard = self.latency.lock().unwrap();
        let Some(h) = guard.as_ref().filter(|h| !h.is_empty()) else {
            return (0.0, 0.0, 0.0);
        };
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        (ms(0.5), ms(0.99), ms(0.999))
    }
}
