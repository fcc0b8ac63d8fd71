//! The hub: the one Redis pub/sub connection of the process and the in-process fan-out.
//!
//! - The hub SUBSCRIBEs to a channel's Redis channel when its first local subscriber arrives and
//!   UNSUBSCRIBEs a linger period after the last one leaves (at once with a linger of 0 or no
//!   cache). A [`PubSubTask`] owns the connection; it reconnects
//!   with backoff, resubscribes every channel and triggers a back-fill from PostgreSQL.
//! - Per channel the hub remembers the last delivered `seq`. A live message at or below it is a
//!   duplicate and dropped; one more than one above it opens a gap that is repaired from
//!   PostgreSQL once per channel (not once per client), delivering the missing messages first.
//! - Each message is serialized once per channel into a shared [`Frame`] and handed to every
//!   subscriber with `try_send`: the hub never waits for a client. A subscriber whose queue is
//!   full is closed with 4008 ([`CLOSE_SLOW_CONSUMER`]).
//! - A new subscriber starts in a buffering state: it is registered (and the Redis SUBSCRIBE is
//!   confirmed) before its session reads history, and [`Hub::go_live`] hands over the buffered
//!   messages above the history's last seq. That makes subscribe gap-free and duplicate-free.
//! - Per channel the hub keeps the newest messages it delivered ([`Recent`]), contiguous up to
//!   the last `seq`. A `subscribe` with the last N and a REST read of the newest page are
//!   answered from it without a PostgreSQL query whenever it covers them. A channel stays on
//!   Redis (and keeps that cache) for a linger period after its last subscriber leaves; a REST
//!   reader of a channel with messages starts such a watch, so the next reads hit the cache.
//! - When spans are exported, each live message whose envelope carries a sampled `traceparent`
//!   gets a `chat.deliver` span in the message's trace (child of the worker's `redis.publish`
//!   span) covering the fan-out to the local subscribers' queues.
//!
//! Where each part lives. The per-channel state machine has no I/O and its own unit tests; the
//! rest is the I/O around it, called under the hub's one lock:
//!
//! - `channel.rs`: one channel (`Channel`): its subscribers, its cache, its Redis confirmation;
//!   `sequence.rs`: its order (last seq, duplicates, gaps, pending messages);
//!   `subscriber.rs`: one subscriber, buffering then live, and the serialized `Delivery`.
//! - `mod.rs` (this file): [`Hub`], its options, [`Subscription`] and the metrics of a step.
//! - `handoff.rs`: [`Hub::subscribe`] and [`Hub::go_live`].
//! - `cache.rs`: REST reads of the newest page ([`Newest`], [`Ticket`], seed, watch).
//! - `linger.rs`: a channel leaving the hub, at once or after the linger period (the sweep).
//! - `live.rs`: a payload from Redis, with its `chat.deliver` span.
//! - `repair.rs`: gap repair and reconnect back-fill from PostgreSQL.
//! - `pubsub.rs`: [`PubSubTask`], the Redis connection.
//!
//! [`Frame`]: crate::outbox::Frame
//! [`CLOSE_SLOW_CONSUMER`]: crate::outbox::CLOSE_SLOW_CONSUMER
//! [`Recent`]: crate::recent::Recent

mod cache;
mod channel;
mod handoff;
mod linger;
mod live;
mod pubsub;
mod repair;
mod sequence;
mod subscriber;
#[cfg(test)]
pub(crate) mod testing;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chat_core::channel::ChannelName;
use chat_core::store::Store;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use channel::{Channel, Tally};
use pubsub::PubSubCommand;

pub use cache::{Newest, Ticket};
pub use channel::{GoLive, Snapshot};
pub use pubsub::PubSubTask;

/// Rows per PostgreSQL read while back-filling or catching up, so memory stays bounded.
pub const PAGE_SIZE: i64 = 1000;

/// What the hub caches and for how long.
#[derive(Debug, Clone, Copy)]
pub struct HubOptions {
    /// Bytes of live message frames buffered for a subscriber while it reads history (past
    /// it the subscriber reads PostgreSQL again before going live).
    pub buffer_limit: usize,
    /// Newest messages kept per channel (0: no cache).
    pub history_cache: usize,
    /// How long a channel stays subscribed (with its cache) once nobody uses it.
    pub linger: Duration,
    /// Most channels kept only for REST readers (no WebSocket subscriber).
    pub max_watched: usize,
    /// Most channels held at all; past it the longest-idle unused channel is evicted.
    pub max_channels: usize,
}

/// Why a subscription could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("the live stream (Redis) is unavailable")]
    Unavailable,
    /// The hub holds `HUB_MAX_CHANNELS` channels, each with a subscriber.
    #[error("this server holds its maximum of {0} channels")]
    Full(usize),
}

struct Inner {
    store: Store,
    prefix: String,
    options: HubOptions,
    metrics: Metrics,
    channels: Mutex<HashMap<ChannelName, Channel>>,
    commands: mpsc::UnboundedSender<PubSubCommand>,
    connected: AtomicBool,
    next_id: AtomicU64,
    /// Counts Redis (re)connections.
    epoch: AtomicU64,
    cancel: CancellationToken,
}

/// Handle to the hub; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

/// A registered subscriber. Dropping it removes the subscriber from the hub.
pub struct Subscription {
    hub: Hub,
    channel: ChannelName,
    id: u64,
}

impl Subscription {
    pub fn channel(&self) -> &ChannelName {
        &self.channel
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.remove(&self.channel, self.id);
    }
}

impl Hub {
    pub fn new(
        client: redis::Client,
        prefix: &str,
        store: Store,
        options: HubOptions,
        metrics: Metrics,
        cancel: CancellationToken,
    ) -> (Self, PubSubTask) {
        let (commands, receiver) = mpsc::unbounded_channel();
        let hub = Hub {
            inner: Arc::new(Inner {
                store,
                prefix: prefix.to_owned(),
                options: HubOptions {
                    buffer_limit: options.buffer_limit.max(1),
                    max_channels: options.max_channels.max(1),
                    ..options
                },
                metrics,
                channels: Mutex::new(HashMap::new()),
                commands,
                connected: AtomicBool::new(false),
                next_id: AtomicU64::new(1),
                epoch: AtomicU64::new(0),
                cancel,
            }),
        };
        let task = PubSubTask::new(hub.clone(), client, receiver);
        (hub, task)
    }

    /// True while the pub/sub connection is up.
    pub fn is_connected(&self) -> bool {
        self.inner.connected.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ChannelName, Channel>> {
        self.inner
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The channel's state, created (and subscribed on Redis) if it is new. At
    /// `HUB_MAX_CHANNELS`, a new channel first evicts the longest-idle unused one; when every
    /// channel has a subscriber, it is refused.
    fn state<'a>(
        &self,
        channels: &'a mut HashMap<ChannelName, Channel>,
        channel: &ChannelName,
    ) -> Result<&'a mut Channel, HubError> {
        let max = self.inner.options.max_channels;
        if !channels.contains_key(channel) && channels.len() >= max {
            let now = std::time::Instant::now();
            let evict = channels
                .iter()
                .filter(|(_, state)| state.is_unused())
                .min_by_key(|(_, state)| state.idle_since().unwrap_or(now))
                .map(|(name, _)| name.clone());
            match evict {
                Some(evict) => {
                    self.drop_channel(channels, &evict);
                    self.inner.metrics.hub_evictions.inc();
                }
                None => return Err(HubError::Full(max)),
            }
        }
        Ok(channels.entry(channel.clone()).or_insert_with(|| {
            self.inner.metrics.hub_channels.inc();
            let _ = self
                .inner
                .commands
                .send(PubSubCommand::Subscribe(channel.clone()));
            let options = &self.inner.options;
            Channel::new(
                self.inner.next_id.fetch_add(1, Ordering::Relaxed),
                options.buffer_limit,
                options.history_cache,
            )
        }))
    }

    /// Counts what a step of a channel did.
    fn count(&self, tally: Tally) {
        let metrics = &self.inner.metrics;
        metrics.deliveries.inc_by(tally.delivered);
        metrics.slow_consumer_closes.inc_by(tally.slow);
        metrics.duplicates_dropped.inc_by(tally.duplicates);
        metrics.backfilled_messages.inc_by(tally.backfilled);
    }
}
