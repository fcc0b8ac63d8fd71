//! Builders for the unit tests of the hub's pure types.

use super::subscriber::Delivery;
use crate::outbox::{Closer, Inbox, Outbox};
use crate::recent::Shared;
use chat_core::channel::ChannelName;
use chat_core::message::{MessageId, StoredMessage};
use chrono::{TimeZone, Utc};

/// Message `seq` of channel `room`. Its times are fixed: JSON of `Utc::now()` has 0 to 9
/// fractional digits depending on the clock, and tests measure frames in bytes.
pub fn stored(seq: i64) -> StoredMessage {
    let at = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()
        + chrono::Duration::nanoseconds(123_456_789);
    StoredMessage {
        channel: ChannelName::parse("room").unwrap(),
        seq,
        id: MessageId(uuid::Uuid::nil()),
        author: "ada".to_owned(),
        text: format!("message {seq}"),
        sent_at: at,
        stored_at: at,
        user_id: None,
    }
}

pub fn delivery(seq: i64) -> Delivery {
    Delivery::new(&stored(seq))
}

/// The serialized messages `range`, as a history page.
pub fn page(range: std::ops::RangeInclusive<i64>) -> Vec<Shared> {
    range.map(|seq| delivery(seq).message).collect()
}

pub fn seqs(messages: &[Shared]) -> Vec<i64> {
    messages.iter().map(|m| m.seq).collect()
}

/// The bytes of `frames` message frames of seqs below 100 (a frame of seq 1 is 2 bytes shorter
/// than one of seq 99, so no more than `frames` of them fit).
pub fn room_for(frames: usize) -> usize {
    frames * delivery(99).frame.len()
}

/// A session's outbox with a queue of `capacity` frames (see [`room_for`]), and the session's
/// end of it.
pub fn outbox(capacity: usize) -> (Outbox, Inbox) {
    Outbox::new(room_for(capacity), Closer::default())
}

/// The seqs of the `message` frames waiting in a session's queue, taken out of it.
pub fn queued(queue: &mut Inbox) -> Vec<i64> {
    let mut seqs = Vec::new();
    while let Ok(queued) = queue.frames.try_recv() {
        queue.written([&queued]);
        let frame: serde_json::Value = serde_json::from_str(&queued.frame).unwrap();
        assert_eq!(frame["type"], "message");
        seqs.push(frame["message"]["seq"].as_i64().unwrap());
    }
    seqs
}
