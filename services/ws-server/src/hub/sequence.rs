//! The order of one channel's messages, with no I/O: the last delivered seq, duplicates, gaps,
//! and the live messages that wait while a gap is repaired from PostgreSQL.
//!
//! A live message at or below the last delivered seq is a duplicate; one more than one above it
//! opens a gap. From then on every live message waits in `pending` while the repair reads
//! PostgreSQL ([`Sequence::resync_read`], [`Sequence::gap_read`]), and the pending messages are
//! delivered as soon as they connect ([`Sequence::pop_pending`]).

use std::collections::BTreeMap;

use super::subscriber::Delivery;

/// What became of a live message.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// At or below the last delivered seq: dropped.
    Duplicate,
    /// A repair is running: kept until it connects.
    Pending,
    /// Above `last + 1`: kept, and a repair must start.
    Gap { last: i64 },
    /// Next in order: delivered.
    Delivered,
}

impl Received {
    /// The `chat.delivery` attribute of the message's span.
    pub fn label(&self) -> &'static str {
        match self {
            Received::Duplicate => "duplicate",
            Received::Pending => "pending",
            Received::Gap { .. } => "gap",
            Received::Delivered => "delivered",
        }
    }
}

/// A PostgreSQL read of a repair: the messages after `after`, up to `upto` (`None`: to the end
/// of the stored log).
#[derive(Debug, PartialEq, Eq)]
pub struct RepairRead {
    pub after: i64,
    pub upto: Option<i64>,
}

/// A pending message that no longer waits.
#[derive(Debug)]
pub enum Connected {
    /// At or below the last delivered seq: dropped.
    Duplicate,
    /// Next in order: to deliver now.
    Next(Delivery),
}

#[derive(Debug, Default)]
pub struct Sequence {
    /// Last seq delivered; unknown until a message arrives or a subscriber goes live.
    last: Option<i64>,
    repairing: bool,
    /// Set by a reconnect: read everything after `last` from PostgreSQL.
    resync: bool,
    /// Live messages that arrived while a repair was running.
    pending: BTreeMap<i64, Delivery>,
}

impl Sequence {
    pub fn last(&self) -> Option<i64> {
        self.last
    }

    pub fn is_repairing(&self) -> bool {
        self.repairing
    }

    /// The last delivered seq; when none is known yet, the one `known` returns becomes it.
    pub fn last_or_else(&mut self, known: impl FnOnce() -> i64) -> i64 {
        *self.last.get_or_insert_with(known)
    }

    /// Sorts a live message. When it is next in order it counts as delivered and comes back,
    /// to be handed to the subscribers.
    pub fn receive(&mut self, delivery: Delivery) -> (Received, Option<Delivery>) {
        match self.last {
            Some(last) if delivery.seq <= last => (Received::Duplicate, None),
            _ if self.repairing => {
                self.pending.insert(delivery.seq, delivery);
                (Received::Pending, None)
            }
            Some(last) if delivery.seq > last + 1 => {
                self.pending.insert(delivery.seq, delivery);
                self.repairing = true;
                (Received::Gap { last }, None)
            }
            _ => {
                self.last = Some(delivery.seq);
                (Received::Delivered, Some(delivery))
            }
        }
    }

    /// Whether a message read from PostgreSQL is next in order; if so it counts as delivered.
    pub fn advance(&mut self, seq: i64) -> bool {
        let next = self.last.is_none_or(|last| seq == last + 1);
        if next {
            self.last = Some(seq);
        }
        next
    }

    /// The first pending message, if it no longer waits. A message next in order counts as
    /// delivered.
    pub fn pop_pending(&mut self) -> Option<Connected> {
        let entry = self.pending.first_entry()?;
        let seq = *entry.key();
        match self.last {
            Some(last) if seq <= last => {
                entry.remove();
                Some(Connected::Duplicate)
            }
            Some(last) if seq > last + 1 => None,
            _ => {
                self.last = Some(seq);
                Some(Connected::Next(entry.remove()))
            }
        }
    }

    /// After a reconnect, the first read of the repair: everything after the last delivered seq.
    pub fn resync_read(&mut self) -> Option<RepairRead> {
        std::mem::take(&mut self.resync).then(|| RepairRead {
            after: self.last.unwrap_or(0),
            upto: None,
        })
    }

    /// The read that fills the gap below the first pending message (take the pending messages
    /// that connect first). `None` when nothing is pending: the repair is over.
    pub fn gap_read(&mut self) -> Option<RepairRead> {
        let Some(&first) = self.pending.keys().next() else {
            self.repairing = false;
            return None;
        };
        Some(RepairRead {
            after: self.last.unwrap_or(0),
            upto: Some(first - 1),
        })
    }

    /// Drops the first pending message: repair reads found the stored log ending below it, so
    /// it is not a message of the log (the worker publishes a message only once it and every
    /// seq before it are committed). Returns its seq.
    pub fn discard_first_pending(&mut self) -> Option<i64> {
        self.pending.pop_first().map(|(seq, _)| seq)
    }

    /// Subscribed again after a reconnect: live messages may have been missed. When anything
    /// was delivered, the repair reads everything after it; returns whether a repair must start.
    pub fn resync(&mut self) -> bool {
        if self.last.is_none() {
            return false;
        }
        self.resync = true;
        !std::mem::replace(&mut self.repairing, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::testing::delivery;

    /// The pending messages that connect, in order (-1: a duplicate).
    fn next_pending(sequence: &mut Sequence) -> Vec<i64> {
        std::iter::from_fn(|| match sequence.pop_pending()? {
            Connected::Duplicate => Some(-1),
            Connected::Next(delivery) => Some(delivery.seq),
        })
        .collect()
    }

    #[test]
    fn the_first_message_starts_the_order_and_duplicates_are_dropped() {
        let mut sequence = Sequence::default();
        let (received, next) = sequence.receive(delivery(7));
        assert_eq!(received, Received::Delivered);
        assert_eq!(next.map(|d| d.seq), Some(7));
        assert_eq!(sequence.receive(delivery(7)).0, Received::Duplicate);
        assert_eq!(sequence.receive(delivery(3)).0, Received::Duplicate);
        assert_eq!(sequence.receive(delivery(8)).0, Received::Delivered);
        assert_eq!(sequence.last(), Some(8));
        assert!(!sequence.is_repairing());
    }

    #[test]
    fn a_seq_jump_is_a_gap_that_holds_later_messages_until_repaired() {
        let mut sequence = Sequence::default();
        sequence.receive(delivery(1));
        let (received, next) = sequence.receive(delivery(4));
        assert_eq!(received, Received::Gap { last: 1 });
        assert!(next.is_none());
        assert!(sequence.is_repairing());
        // While repairing, even the next in order waits.
        assert_eq!(sequence.receive(delivery(2)).0, Received::Pending);
        assert_eq!(sequence.receive(delivery(5)).0, Received::Pending);
        assert_eq!(next_pending(&mut sequence), [2]);
        assert_eq!(
            sequence.gap_read(),
            Some(RepairRead {
                after: 2,
                upto: Some(3)
            })
        );
        // Read from PostgreSQL: only the next in order counts.
        assert!(!sequence.advance(4));
        assert!(sequence.advance(3));
        assert_eq!(next_pending(&mut sequence), [4, 5]);
        assert_eq!(sequence.gap_read(), None);
        assert!(!sequence.is_repairing());
        assert_eq!(sequence.last(), Some(5));
    }

    #[test]
    fn pending_messages_already_read_from_postgresql_are_duplicates() {
        let mut sequence = Sequence::default();
        sequence.receive(delivery(1));
        sequence.receive(delivery(3));
        sequence.receive(delivery(4));
        assert!(sequence.advance(2) && sequence.advance(3) && sequence.advance(4));
        assert_eq!(next_pending(&mut sequence), [-1, -1]);
        assert_eq!(sequence.gap_read(), None);
    }

    #[test]
    fn a_reconnect_reads_everything_after_the_last_delivered_once() {
        let mut sequence = Sequence::default();
        assert!(!sequence.resync(), "nothing delivered, nothing to read");
        assert_eq!(sequence.resync_read(), None);
        sequence.receive(delivery(1));
        assert!(sequence.resync());
        assert!(!sequence.resync(), "one repair at a time");
        let read = RepairRead {
            after: 1,
            upto: None,
        };
        assert_eq!(sequence.resync_read(), Some(read));
        assert_eq!(sequence.resync_read(), None);
        assert_eq!(sequence.receive(delivery(2)).0, Received::Pending);
    }

    #[test]
    fn a_pending_message_the_log_never_reaches_can_be_discarded() {
        let mut sequence = Sequence::default();
        sequence.receive(delivery(1));
        assert_eq!(
            sequence.receive(delivery(1_000_000)).0,
            Received::Gap { last: 1 }
        );
        assert_eq!(sequence.receive(delivery(2)).0, Received::Pending);
        assert_eq!(next_pending(&mut sequence), [2]);
        assert_eq!(sequence.discard_first_pending(), Some(1_000_000));
        assert_eq!(sequence.gap_read(), None);
        assert!(!sequence.is_repairing());
        assert_eq!(sequence.receive(delivery(3)).0, Received::Delivered);
    }

    #[test]
    fn the_last_seq_is_set_once() {
        let mut sequence = Sequence::default();
        assert_eq!(sequence.last_or_else(|| 10), 10);
        assert_eq!(sequence.last_or_else(|| 20), 10);
        assert!(sequence.advance(11));
    }
}
