//! The writer task of a connection: drains the outbound queue (feeding every waiting frame,
//! then flushing once), sends pings, and finally the close frame. A write that does not finish
//! within the write timeout (the client stopped reading and the socket buffers are full) ends
//! the connection without a close frame: nothing more can be written to it.

use std::time::Duration;

use futures::stream::SplitSink;
use futures::SinkExt;
use poem::web::websocket::{Message, WebSocketStream};

use crate::outbox::{Closer, Inbox, Queued, CLOSE_SLOW_CONSUMER};

/// Most frames written before one flush.
const MAX_WRITE_BATCH: usize = 256;
/// How long the close frame may take to go out before the connection is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) struct Writer {
    pub sink: SplitSink<WebSocketStream, Message>,
    pub inbox: Inbox,
    pub closer: Closer,
    pub ping_interval: Duration,
    pub write_timeout: Duration,
}

/// How a write ended, when it did not succeed.
enum Failed {
    Io,
    TimedOut,
}

impl Writer {
    pub(super) async fn run(mut self) {
        let mut ping = tokio::time::interval(self.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let closer = self.closer.clone();
        // Created once: registering a fresh cancellation waiter on every wake-up costs a lock.
        let closed = closer.closed();
        tokio::pin!(closed);
        let (code, reason) = loop {
            let written = tokio::select! {
                biased;
                reason = &mut closed => break reason,
                _ = ping.tick() => {
                    tokio::select! {
                        biased;
                        reason = &mut closed => break reason,
                        sent = bounded(self.write_timeout, self.sink.send(Message::Ping(Vec::new()))) => sent,
                    }
                }
                queued = self.inbox.frames.recv() => {
                    let Some(queued) = queued else { break (1000, "") };
                    tokio::select! {
                        biased;
                        reason = &mut closed => break reason,
                        written = self.write_batch(queued) => written,
                    }
                }
            };
            match written {
                Ok(()) => {}
                Err(Failed::Io) => {
                    self.closer.close(1000, "");
                    return;
                }
                Err(Failed::TimedOut) => {
                    tracing::debug!("websocket write timed out; connection dropped");
                    self.closer.close(CLOSE_SLOW_CONSUMER, "write timeout");
                    return;
                }
            }
        };
        let close = Message::close_with(code, reason);
        let sink = &mut self.sink;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            let _ = sink.send(close).await;
            let _ = sink.close().await;
        })
        .await;
    }

    /// Feeds the frame and whatever else is waiting, then flushes once. The frames keep their
    /// room in the queue until the flush is over, so the bound covers the sink's buffer too.
    async fn write_batch(&mut self, first: Queued) -> Result<(), Failed> {
        let mut batch = Vec::with_capacity(8);
        batch.push(first);
        while batch.len() < MAX_WRITE_BATCH {
            match self.inbox.frames.try_recv() {
                Ok(queued) => batch.push(queued),
                Err(_) => break,
            }
        }
        let sink = &mut self.sink;
        let write = async {
            for queued in &batch {
                sink.feed(Message::Text(queued.frame.to_string())).await?;
            }
            sink.flush().await
        };
        let written = bounded(self.write_timeout, write).await;
        self.inbox.written(&batch);
        written
    }
}

/// A write on the socket, bounded by the write timeout.
async fn bounded(
    timeout: Duration,
    write: impl std::future::Future<Output = std::io::Result<()>>,
) -> Result<(), Failed> {
    match tokio::time::timeout(timeout, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Failed::Io),
        Err(_elapsed) => Err(Failed::TimedOut),
    }
}
