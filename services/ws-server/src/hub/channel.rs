//! One channel as the hub sees it, with no I/O: the order of its messages ([`Sequence`]), its
//! subscribers and its cache. The hub's Redis, PostgreSQL and span code calls it under the
//! hub's lock; what must be done outside (start a repair, count a metric) comes back as a value.
//!
//! Every message delivered in order is appended to the cache ([`Recent`]) and offered to each
//! [`Subscriber`]: a buffering one keeps it for [`Channel::go_live`], a live one gets it queued.

use std::collections::HashMap;
use std::ops::AddAssign;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_core::message::StoredMessage;
use tokio::sync::oneshot;

use super::sequence::{Connected, Received, RepairRead, Sequence};
use super::subscriber::{Delivery, Handoff, Offer, Subscriber};
use crate::outbox::Outbox;
use crate::recent::{Recent, Shared};

/// A snapshot of the cache for a new subscriber: the newest messages and the last seq.
pub struct Snapshot {
    pub messages: Vec<Shared>,
    pub last_seq: i64,
}

/// The outcome of [`Hub::go_live`](super::Hub::go_live).
#[derive(Debug, PartialEq, Eq)]
pub enum GoLive {
    /// Live from now on; the buffered messages above the cursor were queued.
    Live,
    /// Live messages may have been missed since the last read: read PostgreSQL after the
    /// cursor again, then retry.
    CatchUp,
    /// The subscriber is gone (its connection is closing).
    Closed,
}

/// What a step of a channel counts toward the hub's metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Frames queued to sessions.
    pub delivered: u64,
    /// Sessions closed as slow consumers.
    pub slow: u64,
    /// Messages dropped as duplicates.
    pub duplicates: u64,
    /// Messages delivered from a PostgreSQL read.
    pub backfilled: u64,
}

impl AddAssign for Tally {
    fn add_assign(&mut self, other: Self) {
        self.delivered += other.delivered;
        self.slow += other.slow;
        self.duplicates += other.duplicates;
        self.backfilled += other.backfilled;
    }
}

pub struct Channel {
    /// Tells apart successive states of the same channel (see [`super::Ticket`]).
    generation: u64,
    /// Bytes of live message frames buffered for a subscriber while it reads history.
    buffer_limit: usize,
    /// Newest messages kept (0: no cache).
    cache: usize,
    subscribers: HashMap<u64, Subscriber>,
    /// Since when the channel has no subscriber (or was last read over REST without one).
    idle_since: Option<Instant>,
    /// The newest delivered messages, contiguous up to the last delivered seq.
    recent: Recent,
    sequence: Sequence,
    /// The Redis SUBSCRIBE of this channel is confirmed on the current connection.
    on_redis: bool,
    waiters: Vec<oneshot::Sender<()>>,
}

impl Channel {
    pub fn new(generation: u64, buffer_limit: usize, cache: usize) -> Self {
        Self {
            generation,
            buffer_limit,
            cache,
            subscribers: HashMap::new(),
            idle_since: None,
            recent: Recent::default(),
            sequence: Sequence::default(),
            on_redis: false,
            waiters: Vec::new(),
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn subscribers(&self) -> usize {
        self.subscribers.len()
    }

    pub fn is_unused(&self) -> bool {
        self.subscribers.is_empty()
    }

    /// Live delivery is complete: the Redis SUBSCRIBE is confirmed and no repair is running.
    pub fn is_current(&self) -> bool {
        self.on_redis && !self.sequence.is_repairing()
    }

    /// Registers a buffering subscriber. With `latest`, the newest `latest` messages come back
    /// too when the cache holds them. Unless the Redis SUBSCRIBE is confirmed, also returns a
    /// receiver that fires when it is.
    pub fn join(
        &mut self,
        id: u64,
        outbox: Outbox,
        latest: Option<usize>,
    ) -> (Option<Snapshot>, Option<oneshot::Receiver<()>>) {
        self.idle_since = None;
        let snapshot = latest
            .and_then(|limit| self.cached(limit))
            .map(|(messages, last_seq)| Snapshot { messages, last_seq });
        self.subscribers.insert(id, Subscriber::buffering(outbox));
        let ready = (!self.on_redis).then(|| {
            let (tx, rx) = oneshot::channel();
            self.waiters.push(tx);
            rx
        });
        (snapshot, ready)
    }

    /// Hands subscriber `id` over to live delivery, once its session has sent history up to
    /// `cursor`. `history` is what the session read from PostgreSQL (ascending, contiguous;
    /// empty if not read there): it extends the cache when it connects.
    pub fn go_live(&mut self, id: u64, cursor: i64, history: &[Shared]) -> (GoLive, Tally) {
        let Some(subscriber) = self.subscribers.get_mut(&id) else {
            return (GoLive::Closed, Tally::default());
        };
        match subscriber.go_live(cursor, self.sequence.last()) {
            Handoff::AlreadyLive => (GoLive::Live, Tally::default()),
            Handoff::CatchUp => (GoLive::CatchUp, Tally::default()),
            Handoff::Slow { sent } => {
                self.subscribers.remove(&id);
                let tally = Tally {
                    delivered: sent as u64,
                    slow: 1,
                    ..Tally::default()
                };
                (GoLive::Closed, tally)
            }
            Handoff::Live {
                buffered,
                cursor: sent,
            } => {
                let tally = Tally {
                    delivered: buffered.len() as u64,
                    ..Tally::default()
                };
                let last = self.sequence.last_or_else(|| sent);
                // What this subscriber got, history then buffer, is contiguous up to `sent`.
                if last == sent && history.last().is_none_or(|m| m.seq == cursor) {
                    let mut got = history.to_vec();
                    got.extend(buffered.into_iter().map(|d| d.message));
                    self.recent.prepend(&got, last, self.cache);
                }
                (GoLive::Live, tally)
            }
        }
    }

    /// Removes subscriber `id`; returns whether nobody is left.
    pub fn leave(&mut self, id: u64) -> bool {
        self.subscribers.remove(&id);
        self.subscribers.is_empty()
    }

    /// Unused since `now`.
    pub fn idle(&mut self, now: Instant) {
        self.idle_since = Some(now);
    }

    /// A REST read at `now`: without subscribers, the linger period starts again.
    pub fn touch(&mut self, now: Instant) {
        if self.subscribers.is_empty() {
            self.idle(now);
        }
    }

    /// Nobody used the channel for `linger` up to `now`.
    pub fn expired(&self, linger: Duration, now: Instant) -> bool {
        self.subscribers.is_empty()
            && self
                .idle_since
                .is_none_or(|since| now.saturating_duration_since(since) >= linger)
    }

    /// The newest `limit` messages and the last seq, if the cache holds them.
    pub fn cached(&self, limit: usize) -> Option<(Vec<Shared>, i64)> {
        let last = self.sequence.last().filter(|_| self.cache > 0)?;
        self.recent
            .covers(limit, last)
            .then(|| (self.recent.newest(limit), last))
    }

    /// Seeds the cache with the newest page read from PostgreSQL after the Redis SUBSCRIBE of
    /// state `generation` was confirmed; ignored if that state is gone or no longer current.
    pub fn seed(&mut self, generation: u64, page: &[Shared]) {
        if generation != self.generation || !self.is_current() {
            return;
        }
        // Nothing delivered yet: the page is the channel up to its snapshot, and every later
        // message arrives live (the read started after the Redis subscription).
        let last = self
            .sequence
            .last_or_else(|| page.last().map_or(0, |m| m.seq));
        self.recent.prepend(page, last, self.cache);
    }

    /// A live message from Redis.
    pub fn receive(&mut self, delivery: Delivery) -> (Received, Tally) {
        let (received, next) = self.sequence.receive(delivery);
        let tally = match (&received, next) {
            (_, Some(delivery)) => self.fan_out(&delivery),
            (Received::Duplicate, None) => Tally {
                duplicates: 1,
                ..Tally::default()
            },
            _ => Tally::default(),
        };
        (received, tally)
    }

    /// Hands a message delivered in order to the cache and to every subscriber.
    fn fan_out(&mut self, delivery: &Delivery) -> Tally {
        self.recent.push(Arc::clone(&delivery.message), self.cache);
        let limit = self.buffer_limit;
        let mut tally = Tally::default();
        self.subscribers.retain(|_, subscriber| {
            let offer = subscriber.offer(delivery, limit);
            match offer {
                Offer::Sent => tally.delivered += 1,
                Offer::Slow => tally.slow += 1,
                _ => {}
            }
            offer.keeps()
        });
        tally
    }

    /// The next read of the running repair, after delivering the pending messages that now
    /// connect; `None` when nothing is missing any more (the repair is over).
    pub fn next_repair(&mut self) -> (Option<RepairRead>, Tally) {
        if let Some(read) = self.sequence.resync_read() {
            return (Some(read), Tally::default());
        }
        let mut tally = Tally::default();
        while let Some(connected) = self.sequence.pop_pending() {
            match connected {
                Connected::Duplicate => tally.duplicates += 1,
                Connected::Next(delivery) => tally += self.fan_out(&delivery),
            }
        }
        (self.sequence.gap_read(), tally)
    }

    /// Delivers the messages of a repair read (ascending) that follow the last delivered.
    pub fn backfill(&mut self, page: &[StoredMessage]) -> Tally {
        let mut tally = Tally::default();
        for message in page {
            if self.sequence.advance(message.seq) {
                tally.backfilled += 1;
                tally += self.fan_out(&Delivery::new(message));
            }
        }
        tally
    }

    /// Drops the first pending live message, which the stored log does not reach (see
    /// [`Sequence::discard_first_pending`]); returns its seq.
    pub fn discard_unstored(&mut self) -> Option<i64> {
        self.sequence.discard_first_pending()
    }

    /// Since when a channel without subscribers lingers; `None` while it has subscribers.
    pub fn idle_since(&self) -> Option<Instant> {
        self.idle_since.filter(|_| self.is_unused())
    }

    /// The Redis SUBSCRIBE is confirmed: wakes the subscribers waiting for it.
    pub fn confirmed(&mut self) {
        self.on_redis = true;
        for waiter in self.waiters.drain(..) {
            let _ = waiter.send(());
        }
    }

    /// The Redis connection was lost.
    pub fn disconnected(&mut self) {
        self.on_redis = false;
    }

    /// Subscribed again after a reconnect: live messages may have been missed. Buffering
    /// subscribers must read PostgreSQL again; returns whether a repair must start to read
    /// everything after the last delivered seq.
    pub fn reconnected(&mut self) -> bool {
        for subscriber in self.subscribers.values_mut() {
            subscriber.missed();
        }
        self.sequence.resync()
    }
}

#[cfg(test)]
mod tests;
