//! A session's outbound plumbing, shared by the session and the hub: the queue of serialized
//! frames, bounded in bytes ([`Outbox`]), and the one-shot close request ([`Closer`]).
//!
//! The bound counts every byte queued for the connection until the writer has flushed it to the
//! socket: a frame holds its share of the queue's room ([`Queued`]) until the writer gives it back.
//! Live deliveries never wait for room ([`Outbox::try_push`]: a full queue is a slow consumer,
//! closed with 4008); replies and history wait ([`Outbox::push`]), so a slow reader only slows
//! its own commands.

use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, Semaphore, TryAcquireError};
use tokio_util::sync::CancellationToken;

/// A serialized server frame, shared by every connection it is delivered to.
pub type Frame = Arc<str>;

/// Close code for a connection whose outbound queue overflowed.
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;

/// Largest frame the server builds on purpose: history is cut into frames of at most this many
/// bytes (a `subscribed` frame holds the messages that fit; the rest follow as `message` frames).
pub const MAX_FRAME_BYTES: usize = 256 * 1024;

/// How a session is asked to close. The first reason set wins.
#[derive(Debug, Clone, Default)]
pub struct Closer {
    token: CancellationToken,
    reason: Arc<OnceLock<(u16, &'static str)>>,
}

impl Closer {
    pub fn close(&self, code: u16, reason: &'static str) {
        let _ = self.reason.set((code, reason));
        self.token.cancel();
    }

    pub async fn closed(&self) -> (u16, &'static str) {
        self.token.cancelled().await;
        self.reason().unwrap_or((1000, ""))
    }

    pub fn reason(&self) -> Option<(u16, &'static str)> {
        self.reason.get().copied()
    }

    pub fn is_closed(&self) -> bool {
        self.token.is_cancelled()
    }
}

/// A frame in the queue. It holds its room (its length in permits, see [`Outbox::cost`]) until
/// the writer gives it back with [`Inbox::written`], once the frame was flushed. Kept to the
/// frame alone: the queue's slots are allocated in blocks for every connection, idle or not.
#[derive(Debug)]
pub struct Queued {
    pub frame: Frame,
}

/// What became of a frame offered without waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// The queue holds its maximum of bytes.
    Full,
    /// The session is gone.
    Gone,
}

/// Where the hub and the session put a connection's frames.
#[derive(Debug, Clone)]
pub struct Outbox {
    frames: mpsc::UnboundedSender<Queued>,
    room: Arc<Semaphore>,
    capacity: usize,
    pub closer: Closer,
}

/// The writer's end of an [`Outbox`].
#[derive(Debug)]
pub struct Inbox {
    pub frames: mpsc::UnboundedReceiver<Queued>,
    room: Arc<Semaphore>,
    capacity: usize,
}

impl Inbox {
    /// The frames were written: their room is free again (one semaphore call per batch, not
    /// per frame: this runs for every frame of every connection).
    pub fn written<'a>(&self, frames: impl IntoIterator<Item = &'a Queued>) {
        let room: usize = frames
            .into_iter()
            .map(|queued| cost(&queued.frame, self.capacity) as usize)
            .sum();
        if room > 0 {
            self.room.add_permits(room);
        }
    }
}

impl Drop for Inbox {
    /// The writer is gone: whoever waits for room stops waiting.
    fn drop(&mut self) {
        self.room.close();
    }
}

/// The room a frame takes: its length, at most the whole queue (so any frame fits alone).
fn cost(frame: &Frame, capacity: usize) -> u32 {
    let bytes = frame.len().clamp(1, capacity);
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

impl Outbox {
    /// A queue that holds at most `capacity` bytes of frames (at least one frame, however large).
    pub fn new(capacity: usize, closer: Closer) -> (Self, Inbox) {
        let capacity = capacity.clamp(1, Semaphore::MAX_PERMITS);
        let room = Arc::new(Semaphore::new(capacity));
        let (frames, queue) = mpsc::unbounded_channel();
        let outbox = Self {
            frames,
            room: Arc::clone(&room),
            capacity,
            closer,
        };
        (
            outbox,
            Inbox {
                frames: queue,
                room,
                capacity,
            },
        )
    }

    /// Queues a live delivery if there is room, never waiting.
    pub fn try_push(&self, frame: Frame) -> Push {
        if self.frames.is_closed() {
            return Push::Gone;
        }
        match self.room.try_acquire_many(cost(&frame, self.capacity)) {
            Ok(room) => {
                room.forget();
                self.enqueue(frame)
            }
            Err(TryAcquireError::NoPermits) => Push::Full,
            Err(TryAcquireError::Closed) => Push::Gone,
        }
    }

    /// Queues a reply or a history frame, waiting for room. False when the session is gone.
    pub async fn push(&self, frame: Frame) -> bool {
        let cost = cost(&frame, self.capacity);
        match self.room.acquire_many(cost).await {
            Ok(room) => {
                room.forget();
                self.enqueue(frame) == Push::Queued
            }
            Err(_closed) => false,
        }
    }

    /// Whether every queued frame was written to the socket.
    pub fn is_drained(&self) -> bool {
        self.room.available_permits() == self.capacity || self.room.is_closed()
    }

    /// Queues the frame; its room (taken and forgotten by the caller) stays taken until the
    /// writer gives it back.
    fn enqueue(&self, frame: Frame) -> Push {
        match self.frames.send(Queued { frame }) {
            Ok(()) => Push::Queued,
            Err(_) => Push::Gone,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(bytes: usize) -> Frame {
        "x".repeat(bytes).into()
    }

    #[test]
    fn live_frames_fit_until_the_bytes_run_out() {
        let (outbox, mut inbox) = Outbox::new(100, Closer::default());
        assert_eq!(outbox.try_push(frame(60)), Push::Queued);
        assert_eq!(outbox.try_push(frame(41)), Push::Full);
        assert_eq!(outbox.try_push(frame(40)), Push::Queued);
        assert_eq!(outbox.try_push(frame(1)), Push::Full);
        // Written by the writer: its room is free again.
        let written = inbox.frames.try_recv().unwrap();
        inbox.written([&written]);
        assert_eq!(outbox.try_push(frame(60)), Push::Queued);
    }

    #[test]
    fn a_frame_larger_than_the_queue_takes_all_of_it() {
        let (outbox, _inbox) = Outbox::new(100, Closer::default());
        assert_eq!(outbox.try_push(frame(1000)), Push::Queued);
        assert_eq!(outbox.try_push(frame(1)), Push::Full);
    }

    #[tokio::test]
    async fn a_reply_waits_for_room_and_a_gone_writer_ends_the_wait() {
        let (outbox, mut inbox) = Outbox::new(100, Closer::default());
        assert!(outbox.push(frame(100)).await);
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.push(frame(50)).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        let written = inbox.frames.recv().await.unwrap();
        inbox.written([&written]);
        assert!(waiting.await.unwrap());

        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.push(frame(100)).await }
        });
        tokio::task::yield_now().await;
        drop(inbox);
        assert!(!waiting.await.unwrap());
        assert_eq!(outbox.try_push(frame(1)), Push::Gone);
    }
}
