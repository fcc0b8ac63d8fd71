//! The newest messages of a channel, kept by the hub so that a `subscribe` with the last N and a
//! REST read of the newest page need no PostgreSQL query while the channel is live.
//!
//! [`Recent`] holds a *contiguous* run of stored messages that ends at the last `seq` the hub
//! delivered on the channel. The hub appends every message it delivers (always `last + 1`: the
//! hub delivers in order, with gaps repaired from PostgreSQL first) and drops the oldest above the
//! capacity. A history page read from PostgreSQL can extend the run backwards when it connects to
//! its first message. Stored messages never change, so a run that is contiguous stays true.
//!
//! Each message is kept as its JSON object, serialized once ([`Shared`]), and spliced as is
//! into `subscribed` frames, `message` frames and REST pages.

use std::collections::VecDeque;
use std::sync::Arc;

use chat_core::message::StoredMessage;
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

/// A stored message serialized once: its `seq` and the JSON object of the wire contract.
#[derive(Debug)]
pub struct SharedMessage {
    pub seq: i64,
    pub json: Box<RawValue>,
}

pub type Shared = Arc<SharedMessage>;

impl SharedMessage {
    pub fn new(message: &StoredMessage) -> Shared {
        let json =
            serde_json::value::to_raw_value(message).expect("a stored message always serializes");
        Arc::new(Self {
            seq: message.seq,
            json,
        })
    }

    pub fn from_page(page: &[StoredMessage]) -> Vec<Shared> {
        page.iter().map(Self::new).collect()
    }
}

/// Serializes as the JSON array of the messages, each spliced in as serialized.
#[derive(Debug, Clone, Copy)]
pub struct JsonList<'a>(pub &'a [Shared]);

impl Serialize for JsonList<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|m| &*m.json))
    }
}

/// A contiguous run of the newest messages of a channel, at most `capacity` long.
#[derive(Debug, Default)]
pub struct Recent {
    messages: VecDeque<Shared>,
}

impl Recent {
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Appends the message the hub just delivered (`seq` = the previous last + 1).
    pub fn push(&mut self, message: Shared, capacity: usize) {
        debug_assert!(self
            .messages
            .back()
            .is_none_or(|back| back.seq + 1 == message.seq));
        if capacity == 0 {
            return;
        }
        if self.messages.len() == capacity {
            self.messages.pop_front();
        }
        self.messages.push_back(message);
    }

    /// Extends the run backwards with the messages of `page` (ascending, contiguous) below its
    /// first one, if they connect to it. `last` is the last seq the hub delivered: an empty run
    /// starts right after it. Returns whether anything was added.
    pub fn prepend(&mut self, page: &[Shared], last: i64, capacity: usize) -> bool {
        let head = self.messages.front().map_or(last + 1, |m| m.seq);
        let below = page.partition_point(|m| m.seq < head);
        let older = &page[..below];
        if older.last().is_none_or(|m| m.seq != head - 1) {
            return false;
        }
        let room = capacity.saturating_sub(self.messages.len());
        for message in older.iter().rev().take(room) {
            self.messages.push_front(Arc::clone(message));
        }
        room > 0
    }

    /// Whether the run answers "the newest `limit` messages" of a channel whose last seq is
    /// `last`: it holds `limit` of them, or every message since seq 1.
    pub fn covers(&self, limit: usize, last: i64) -> bool {
        let all = usize::try_from(last).unwrap_or(usize::MAX);
        self.messages.len() >= limit.min(all)
    }

    /// The newest `limit` messages, oldest first.
    pub fn newest(&self, limit: usize) -> Vec<Shared> {
        let skip = self.messages.len().saturating_sub(limit);
        self.messages.iter().skip(skip).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: i64) -> Shared {
        Arc::new(SharedMessage {
            seq,
            json: RawValue::from_string(format!("{{\"seq\":{seq}}}")).unwrap(),
        })
    }

    fn seqs(recent: &Recent) -> Vec<i64> {
        recent.messages.iter().map(|m| m.seq).collect()
    }

    fn page(range: std::ops::RangeInclusive<i64>) -> Vec<Shared> {
        range.map(message).collect()
    }

    #[test]
    fn push_keeps_the_newest_up_to_capacity() {
        let mut recent = Recent::default();
        for seq in 1..=5 {
            recent.push(message(seq), 3);
        }
        assert_eq!(seqs(&recent), [3, 4, 5]);
        let mut disabled = Recent::default();
        disabled.push(message(1), 0);
        assert!(disabled.is_empty());
    }

    #[test]
    fn prepend_only_connecting_pages() {
        let mut recent = Recent::default();
        recent.push(message(10), 5);
        recent.push(message(11), 5);
        // A page ending two below the head leaves a hole: refused.
        assert!(!recent.prepend(&page(5..=8), 11, 5));
        assert_eq!(seqs(&recent), [10, 11]);
        // A page overlapping the run adds only what is below it, up to the capacity.
        assert!(recent.prepend(&page(4..=10), 11, 5));
        assert_eq!(seqs(&recent), [7, 8, 9, 10, 11]);
        // Full: nothing more is added.
        assert!(!recent.prepend(&page(1..=6), 11, 5));
        assert_eq!(seqs(&recent), [7, 8, 9, 10, 11]);
    }

    #[test]
    fn an_empty_run_starts_after_the_last_delivered() {
        let mut recent = Recent::default();
        // Delivered up to 20, nothing kept: a page must end at 20.
        assert!(!recent.prepend(&page(1..=19), 20, 10));
        assert!(recent.prepend(&page(1..=20), 20, 10));
        assert_eq!(seqs(&recent), (11..=20).collect::<Vec<_>>());
        // A page entirely above the last delivered (not yet seen live) adds nothing.
        let mut ahead = Recent::default();
        assert!(!ahead.prepend(&page(21..=25), 20, 10));
        assert!(ahead.is_empty());
    }

    #[test]
    fn covers_a_limit_or_the_whole_channel() {
        let mut recent = Recent::default();
        assert!(recent.covers(50, 0), "an empty channel is fully known");
        assert!(!recent.covers(50, 3), "messages 1..=3 are not held");
        recent.prepend(&page(1..=3), 3, 100);
        assert!(recent.covers(50, 3), "every message since seq 1 is held");
        assert!(!recent.covers(50, 200));
        assert_eq!(
            recent.newest(2).iter().map(|m| m.seq).collect::<Vec<_>>(),
            [2, 3]
        );
        assert_eq!(recent.newest(10).len(), 3);
    }
}
