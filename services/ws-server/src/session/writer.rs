//! The writer task of a connection: drains the bounded outbound queue (feeding every waiting
//! frame, then flushing once), sends pings, and finally the close frame.

use std::time::Duration;

use futures::stream::SplitSink;
use futures::SinkExt;
use poem::web::websocket::{Message, WebSocketStream};
use tokio::sync::mpsc;

use crate::outbox::{Closer, Frame};

/// Most frames written before one flush.
const MAX_WRITE_BATCH: usize = 256;
/// How long the close frame may take to go out before the connection is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) async fn write_loop(
    mut sink: SplitSink<WebSocketStream, Message>,
    mut queue: mpsc::Receiver<Frame>,
    closer: Closer,
    ping_interval: Duration,
) {
    let mut ping = tokio::time::interval(ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    // Created once: registering a fresh cancellation waiter on every wake-up costs a lock.
    let closed = closer.closed();
    tokio::pin!(closed);
    let (code, reason) = loop {
        tokio::select! {
            biased;
            reason = &mut closed => break reason,
            _ = ping.tick() => {
                let sent = tokio::select! {
                    biased;
                    reason = &mut closed => break reason,
                    sent = sink.send(Message::Ping(Vec::new())) => sent,
                };
                if sent.is_err() {
                    closer.close(1000, "");
                    return;
                }
            }
            frame = queue.recv() => {
                let Some(frame) = frame else { break (1000, "") };
                let written = tokio::select! {
                    biased;
                    reason = &mut closed => break reason,
                    written = write_batch(&mut sink, &mut queue, frame) => written,
                };
                if written.is_err() {
                    closer.close(1000, "");
                    return;
                }
            }
        }
    };
    let close = Message::close_with(code, reason);
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        let _ = sink.send(close).await;
        let _ = sink.close().await;
    })
    .await;
}

/// Feeds the frame and whatever else is waiting, then flushes once.
async fn write_batch(
    sink: &mut SplitSink<WebSocketStream, Message>,
    queue: &mut mpsc::Receiver<Frame>,
    first: Frame,
) -> std::io::Result<()> {
    sink.feed(Message::Text(first.to_string())).await?;
    for _ in 1..MAX_WRITE_BATCH {
        match queue.try_recv() {
            Ok(frame) => sink.feed(Message::Text(frame.to_string())).await?,
            Err(_) => break,
        }
    }
    sink.flush().await
}
