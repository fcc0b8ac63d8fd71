//! One local subscriber of a channel, as the hub sees it: buffering while its session reads
//! history, then live. No I/O: a frame is handed to the session's [`Outbox`] without waiting,
//! and a full queue closes the session with [`CLOSE_SLOW_CONSUMER`].

use chat_core::message::StoredMessage;

use crate::outbox::{Frame, Outbox, Push, CLOSE_SLOW_CONSUMER};
use crate::protocol;
use crate::recent::Shared;

/// A live message, serialized once: the message object and the `message` frame around it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub seq: i64,
    pub frame: Frame,
    pub message: Shared,
}

impl Delivery {
    pub fn new(message: &StoredMessage) -> Self {
        let (shared, frame) = protocol::message_frame(message);
        Self {
            seq: message.seq,
            frame: frame.into(),
            message: shared,
        }
    }
}

enum State {
    /// History is being read: live messages wait here. When their frames add up to more than
    /// the limit (in bytes) the buffer is dropped and `overflowed` makes the session read
    /// PostgreSQL again.
    Buffering {
        buffer: Vec<Delivery>,
        bytes: usize,
        overflowed: bool,
    },
    /// Receiving live messages; `cursor` is the last seq handed to the session.
    Live { cursor: i64 },
}

/// What became of a message offered to a subscriber.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    /// Kept for the hand-over (or dropped with the buffer when it overflowed).
    Buffered,
    /// Already sent (at or below the cursor).
    Skipped,
    /// Queued to the session.
    Sent,
    /// The queue was full: the session is closed with 4008.
    Slow,
    /// The session is gone.
    Gone,
}

impl Offer {
    /// Whether the subscriber stays registered.
    pub fn keeps(&self) -> bool {
        !matches!(self, Offer::Slow | Offer::Gone)
    }
}

/// What [`Subscriber::go_live`] did.
#[derive(Debug)]
pub enum Handoff {
    /// The subscriber was live already.
    AlreadyLive,
    /// Messages may be missing between the cursor and the buffer: read PostgreSQL again.
    CatchUp,
    /// A buffered message did not fit the queue after `sent` did: closed with 4008.
    Slow { sent: usize },
    /// Live from now on; `buffered` (above the cursor) were queued, up to `cursor`.
    Live {
        buffered: Vec<Delivery>,
        cursor: i64,
    },
}

pub struct Subscriber {
    outbox: Outbox,
    state: State,
}

impl Subscriber {
    /// A subscriber that buffers live messages until [`Subscriber::go_live`].
    pub fn buffering(outbox: Outbox) -> Self {
        Self {
            outbox,
            state: State::Buffering {
                buffer: Vec::new(),
                bytes: 0,
                overflowed: false,
            },
        }
    }

    /// The next message of the channel, in order. A buffering subscriber keeps those whose
    /// frames add up to at most `buffer_limit` bytes; a live one gets those above its cursor.
    pub fn offer(&mut self, delivery: &Delivery, buffer_limit: usize) -> Offer {
        match &mut self.state {
            State::Buffering {
                buffer,
                bytes,
                overflowed,
            } => {
                if *overflowed {
                    // Read from PostgreSQL at the hand-over anyway.
                } else if *bytes + delivery.frame.len() > buffer_limit {
                    buffer.clear();
                    *bytes = 0;
                    *overflowed = true;
                } else {
                    *bytes += delivery.frame.len();
                    buffer.push(delivery.clone());
                }
                Offer::Buffered
            }
            State::Live { cursor } => {
                if delivery.seq <= *cursor {
                    return Offer::Skipped;
                }
                match self.outbox.try_push(delivery.frame.clone()) {
                    Push::Queued => {
                        *cursor = delivery.seq;
                        Offer::Sent
                    }
                    Push::Full => {
                        self.close_slow();
                        Offer::Slow
                    }
                    Push::Gone => Offer::Gone,
                }
            }
        }
    }

    /// Live messages may have been lost (the Redis connection dropped): a buffering subscriber
    /// must read PostgreSQL again before it goes live.
    pub fn missed(&mut self) {
        if let State::Buffering {
            buffer,
            bytes,
            overflowed,
        } = &mut self.state
        {
            buffer.clear();
            *bytes = 0;
            *overflowed = true;
        }
    }

    /// Hands the buffered messages above `cursor` (the last seq its session sent from history)
    /// to the session and makes the subscriber live. `last` is the channel's last delivered seq:
    /// the subscriber must reach it, since nothing at or below it is offered again.
    pub fn go_live(&mut self, cursor: i64, last: Option<i64>) -> Handoff {
        let State::Buffering {
            buffer,
            bytes,
            overflowed,
        } = &mut self.state
        else {
            return Handoff::AlreadyLive;
        };
        if *overflowed {
            *overflowed = false;
            buffer.clear();
            *bytes = 0;
            return Handoff::CatchUp;
        }
        buffer.retain(|d| d.seq > cursor);
        *bytes = buffer.iter().map(|d| d.frame.len()).sum();
        // A hole between the history and the buffer; or, with nothing buffered, a last seq the
        // channel took from another session's newer read (or a REST page) while this session's
        // read ended below it: the messages in between count as delivered and would not come.
        let through = buffer.last().map_or(cursor, |d| d.seq);
        if buffer.first().is_some_and(|d| d.seq > cursor + 1) || last.is_some_and(|l| l > through) {
            return Handoff::CatchUp;
        }
        let mut sent = cursor;
        let buffered = std::mem::take(buffer);
        for (count, delivery) in buffered.iter().enumerate() {
            if self.outbox.try_push(delivery.frame.clone()) != Push::Queued {
                self.close_slow();
                return Handoff::Slow { sent: count };
            }
            sent = delivery.seq;
        }
        self.state = State::Live { cursor: sent };
        Handoff::Live {
            buffered,
            cursor: sent,
        }
    }

    fn close_slow(&self) {
        self.outbox
            .closer
            .close(CLOSE_SLOW_CONSUMER, "slow consumer");
    }
}
