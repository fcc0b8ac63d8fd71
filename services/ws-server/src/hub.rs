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

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use chat_core::backoff::Backoff;
use chat_core::channel::ChannelName;
use chat_core::envelope::{redis_channel, Envelope};
use chat_core::message::StoredMessage;
use chat_core::store::Store;
use chat_core::telemetry::{self, MessageSpan};
use chrono::Utc;
use futures::StreamExt;
use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::protocol;
use crate::recent::{Recent, Shared};

/// A serialized server frame, shared by every connection it is delivered to.
pub type Frame = Arc<str>;

/// Close code for a connection whose outbound queue overflowed.
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;

/// Rows per PostgreSQL read while back-filling or catching up, so memory stays bounded.
pub const PAGE_SIZE: i64 = 1000;

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

/// Where the hub puts a session's frames.
#[derive(Debug, Clone)]
pub struct Outbox {
    pub frames: mpsc::Sender<Frame>,
    pub closer: Closer,
}

/// A live message, serialized once: the message object and the `message` frame around it.
#[derive(Debug, Clone)]
struct Delivery {
    seq: i64,
    frame: Frame,
    message: Shared,
}

impl Delivery {
    fn new(message: &StoredMessage) -> Self {
        let (shared, frame) = protocol::message_frame(message);
        Self {
            seq: message.seq,
            frame: frame.into(),
            message: shared,
        }
    }
}

enum SubscriberState {
    /// History is being read: live messages wait here. When more than the limit arrive the
    /// buffer is dropped and `overflowed` makes the session read PostgreSQL again.
    Buffering {
        buffer: Vec<Delivery>,
        overflowed: bool,
    },
    /// Receiving live messages; `cursor` is the last seq handed to the session.
    Live { cursor: i64 },
}

struct Subscriber {
    outbox: Outbox,
    state: SubscriberState,
}

struct ChannelState {
    /// Tells apart successive states of the same channel (see [`Ticket`]).
    generation: u64,
    subscribers: HashMap<u64, Subscriber>,
    /// Since when the channel has no subscriber (or was last read over REST without one).
    idle_since: Option<Instant>,
    /// The newest delivered messages, contiguous up to `last`.
    recent: Recent,
    /// Last seq delivered by the hub; unknown until a message arrives or a subscriber goes live.
    last: Option<i64>,
    repairing: bool,
    /// Set by a reconnect: read everything after `last` from PostgreSQL.
    resync: bool,
    /// Live messages that arrived while a repair was running.
    pending: BTreeMap<i64, Delivery>,
    /// The Redis SUBSCRIBE of this channel is confirmed on the current connection.
    on_redis: bool,
    waiters: Vec<oneshot::Sender<()>>,
}

impl ChannelState {
    fn new(generation: u64) -> Self {
        Self {
            generation,
            subscribers: HashMap::new(),
            idle_since: None,
            recent: Recent::default(),
            last: None,
            repairing: false,
            resync: false,
            pending: BTreeMap::new(),
            on_redis: false,
            waiters: Vec::new(),
        }
    }

    /// The newest `limit` messages, if the cache (of `capacity`, 0: off) holds them.
    fn cached(&self, limit: usize, capacity: usize) -> Option<(Vec<Shared>, i64)> {
        let last = self.last.filter(|_| capacity > 0)?;
        self.recent
            .covers(limit, last)
            .then(|| (self.recent.newest(limit), last))
    }
}

/// What the hub knows of a channel's newest messages, for a REST read.
pub enum Latest {
    /// The newest messages, from the cache.
    Cached(Vec<Shared>),
    /// Read PostgreSQL. With a ticket, hand the page to [`Hub::seed`] afterwards.
    Read(Option<Ticket>),
}

/// Proof that a PostgreSQL read started while the channel's Redis subscription was confirmed:
/// every message stored after the read's snapshot reaches the hub live, so the page may seed
/// the cache. Void after a reconnect or once the channel left the hub.
pub struct Ticket {
    channel: ChannelName,
    epoch: u64,
    generation: u64,
}

/// What the hub caches and for how long.
#[derive(Debug, Clone, Copy)]
pub struct HubOptions {
    /// Most live messages buffered for a subscriber while it reads history.
    pub buffer_limit: usize,
    /// Newest messages kept per channel (0: no cache).
    pub history_cache: usize,
    /// How long a channel stays subscribed (with its cache) once nobody uses it.
    pub linger: Duration,
    /// Most channels kept only for REST readers (no WebSocket subscriber).
    pub max_watched: usize,
}

/// A snapshot of the cache for a new subscriber: the newest messages and the last seq.
pub struct Snapshot {
    pub messages: Vec<Shared>,
    pub last_seq: i64,
}

enum PubSubCommand {
    Subscribe(ChannelName),
    Unsubscribe(ChannelName),
}

/// Why a subscription could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("the live stream (Redis) is unavailable")]
    Unavailable,
}

/// The outcome of [`Hub::go_live`].
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

struct Inner {
    store: Store,
    prefix: String,
    options: HubOptions,
    metrics: Metrics,
    channels: Mutex<HashMap<ChannelName, ChannelState>>,
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

/// Owns the Redis pub/sub connection; run it with [`PubSubTask::run`].
pub struct PubSubTask {
    hub: Hub,
    client: redis::Client,
    commands: mpsc::UnboundedReceiver<PubSubCommand>,
}

impl Hub {
    pub fn new(
        redis_url: &str,
        prefix: &str,
        store: Store,
        options: HubOptions,
        metrics: Metrics,
        cancel: CancellationToken,
    ) -> Result<(Self, PubSubTask), redis::RedisError> {
        let client = redis::Client::open(redis_url)?;
        let (commands, receiver) = mpsc::unbounded_channel();
        let hub = Hub {
            inner: Arc::new(Inner {
                store,
                prefix: prefix.to_owned(),
                options: HubOptions {
                    buffer_limit: options.buffer_limit.max(1),
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
        let task = PubSubTask {
            hub: hub.clone(),
            client,
            commands: receiver,
        };
        Ok((hub, task))
    }

    /// True while the pub/sub connection is up.
    pub fn is_connected(&self) -> bool {
        self.inner.connected.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ChannelName, ChannelState>> {
        self.inner
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The channel's state, created (and subscribed on Redis) if it is new.
    fn state<'a>(
        &self,
        channels: &'a mut HashMap<ChannelName, ChannelState>,
        channel: &ChannelName,
    ) -> &'a mut ChannelState {
        channels.entry(channel.clone()).or_insert_with(|| {
            self.inner.metrics.hub_channels.inc();
            let _ = self
                .inner
                .commands
                .send(PubSubCommand::Subscribe(channel.clone()));
            ChannelState::new(self.inner.next_id.fetch_add(1, Ordering::Relaxed))
        })
    }

    /// Registers a buffering subscriber and waits until the hub receives the channel's live
    /// messages (its Redis SUBSCRIBE is confirmed). Read history only after this returns.
    ///
    /// With `latest`, the newest `latest` messages come back too when the cache holds them
    /// (registered under the same lock, so nothing falls between them and live delivery);
    /// without a snapshot, read them from PostgreSQL.
    pub async fn subscribe(
        &self,
        channel: &ChannelName,
        outbox: Outbox,
        wait: Duration,
        latest: Option<usize>,
    ) -> Result<(Subscription, Option<Snapshot>), HubError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (ready, snapshot) = {
            let mut channels = self.lock();
            let state = self.state(&mut channels, channel);
            state.idle_since = None;
            let snapshot = latest
                .and_then(|limit| state.cached(limit, self.inner.options.history_cache))
                .map(|(messages, last_seq)| Snapshot { messages, last_seq });
            if latest.is_some() {
                let outcome = if snapshot.is_some() { "hit" } else { "miss" };
                self.inner
                    .metrics
                    .history_cache
                    .with_label_values(&["subscribe", outcome])
                    .inc();
            }
            state.subscribers.insert(
                id,
                Subscriber {
                    outbox,
                    state: SubscriberState::Buffering {
                        buffer: Vec::new(),
                        overflowed: false,
                    },
                },
            );
            let ready = if state.on_redis {
                None
            } else {
                let (tx, rx) = oneshot::channel();
                state.waiters.push(tx);
                Some(rx)
            };
            (ready, snapshot)
        };
        let subscription = Subscription {
            hub: self.clone(),
            channel: channel.clone(),
            id,
        };
        if let Some(ready) = ready {
            match tokio::time::timeout(wait, ready).await {
                Ok(Ok(())) => {}
                _ => return Err(HubError::Unavailable),
            }
        }
        Ok((subscription, snapshot))
    }

    /// Hands a buffering subscriber over to live delivery, once its session has sent history up
    /// to `cursor`. `history` is what the session read from PostgreSQL (ascending, contiguous;
    /// empty if not read there): it seeds the channel's cache when it connects.
    pub fn go_live(&self, subscription: &Subscription, cursor: i64, history: &[Shared]) -> GoLive {
        let mut channels = self.lock();
        let Some(state) = channels.get_mut(&subscription.channel) else {
            return GoLive::Closed;
        };
        let Some(subscriber) = state.subscribers.get_mut(&subscription.id) else {
            return GoLive::Closed;
        };
        let SubscriberState::Buffering { buffer, overflowed } = &mut subscriber.state else {
            return GoLive::Live;
        };
        if *overflowed {
            *overflowed = false;
            buffer.clear();
            return GoLive::CatchUp;
        }
        buffer.retain(|d| d.seq > cursor);
        if buffer.first().is_some_and(|d| d.seq > cursor + 1) {
            return GoLive::CatchUp;
        }
        let mut sent = cursor;
        let buffered = std::mem::take(buffer);
        for delivery in &buffered {
            if subscriber
                .outbox
                .frames
                .try_send(delivery.frame.clone())
                .is_err()
            {
                self.inner.metrics.slow_consumer_closes.inc();
                subscriber
                    .outbox
                    .closer
                    .close(CLOSE_SLOW_CONSUMER, "slow consumer");
                state.subscribers.remove(&subscription.id);
                return GoLive::Closed;
            }
            self.inner.metrics.deliveries.inc();
            sent = delivery.seq;
        }
        subscriber.state = SubscriberState::Live { cursor: sent };
        let last = *state.last.get_or_insert(sent);
        // What this subscriber got, history then buffer, is contiguous up to `sent`.
        if last == sent && history.last().is_none_or(|m| m.seq == cursor) {
            let mut got = history.to_vec();
            got.extend(buffered.into_iter().map(|d| d.message));
            state
                .recent
                .prepend(&got, last, self.inner.options.history_cache);
        }
        GoLive::Live
    }

    fn remove(&self, channel: &ChannelName, id: u64) {
        let mut channels = self.lock();
        let Some(state) = channels.get_mut(channel) else {
            return;
        };
        state.subscribers.remove(&id);
        if state.subscribers.is_empty() {
            if self.lingers() {
                state.idle_since = Some(Instant::now());
            } else {
                self.drop_channel(&mut channels, channel);
            }
        }
    }

    /// Whether unused channels stay subscribed for a while (to keep their cache warm).
    fn lingers(&self) -> bool {
        let options = &self.inner.options;
        options.history_cache > 0 && !options.linger.is_zero()
    }

    fn drop_channel(
        &self,
        channels: &mut HashMap<ChannelName, ChannelState>,
        channel: &ChannelName,
    ) {
        if channels.remove(channel).is_some() {
            self.inner.metrics.hub_channels.dec();
            let _ = self
                .inner
                .commands
                .send(PubSubCommand::Unsubscribe(channel.clone()));
        }
    }

    /// Unsubscribes the channels nobody used for the linger period.
    fn sweep(&self) {
        let linger = self.inner.options.linger;
        let mut channels = self.lock();
        let expired: Vec<ChannelName> = channels
            .iter()
            .filter(|(_, state)| {
                state.subscribers.is_empty()
                    && state
                        .idle_since
                        .is_none_or(|since| since.elapsed() >= linger)
            })
            .map(|(channel, _)| channel.clone())
            .collect();
        for channel in &expired {
            self.drop_channel(&mut channels, channel);
        }
    }

    /// The newest `limit` messages of a channel for a REST read: from the cache when it holds
    /// them and is current (Redis connected, no repair running), else a [`Latest::Read`].
    pub fn latest(&self, channel: &ChannelName, limit: usize) -> Latest {
        let mut channels = self.lock();
        let Some(state) = channels.get_mut(channel) else {
            drop(channels);
            self.count_rest("miss");
            return Latest::Read(None);
        };
        if state.subscribers.is_empty() {
            state.idle_since = Some(Instant::now());
        }
        let current = state.on_redis && !state.repairing && self.is_connected();
        if let Some((messages, _)) = state
            .cached(limit, self.inner.options.history_cache)
            .filter(|_| current)
        {
            drop(channels);
            self.count_rest("hit");
            return Latest::Cached(messages);
        }
        let ticket = current.then(|| Ticket {
            channel: channel.clone(),
            epoch: self.inner.epoch.load(Ordering::Acquire),
            generation: state.generation,
        });
        drop(channels);
        self.count_rest("miss");
        Latest::Read(ticket)
    }

    fn count_rest(&self, outcome: &str) {
        self.inner
            .metrics
            .history_cache
            .with_label_values(&["rest", outcome])
            .inc();
    }

    /// Seeds the cache with the newest page read from PostgreSQL under `ticket`.
    pub fn seed(&self, ticket: Ticket, page: &[Shared]) {
        let mut channels = self.lock();
        let Some(state) = channels.get_mut(&ticket.channel) else {
            return;
        };
        let valid = state.generation == ticket.generation
            && ticket.epoch == self.inner.epoch.load(Ordering::Acquire)
            && state.on_redis
            && !state.repairing;
        if !valid {
            return;
        }
        // Nothing delivered yet: the page is the channel up to its snapshot, and every later
        // message arrives live (the read started after the Redis subscription).
        let last = *state
            .last
            .get_or_insert_with(|| page.last().map_or(0, |m| m.seq));
        state
            .recent
            .prepend(page, last, self.inner.options.history_cache);
    }

    /// Keeps a channel that REST readers use on Redis for the linger period, so that its newest
    /// page is soon served from the cache. Bounded by [`HubOptions::max_watched`].
    pub fn watch(&self, channel: &ChannelName) {
        if !self.lingers() {
            return;
        }
        let mut channels = self.lock();
        if let Some(state) = channels.get_mut(channel) {
            if state.subscribers.is_empty() {
                state.idle_since = Some(Instant::now());
            }
            return;
        }
        let watched = channels
            .values()
            .filter(|state| state.subscribers.is_empty())
            .count();
        if watched < self.inner.options.max_watched {
            self.state(&mut channels, channel).idle_since = Some(Instant::now());
        }
    }

    fn has_channel(&self, channel: &ChannelName) -> bool {
        self.lock().contains_key(channel)
    }

    /// A payload arrived on a Redis channel.
    fn on_message(&self, redis_name: &str, payload: &[u8]) {
        let Some(name) = redis_name.strip_prefix(&self.inner.prefix) else {
            return;
        };
        let envelope = match Envelope::decode(payload) {
            Ok(envelope) => envelope,
            Err(err) => {
                tracing::warn!(redis.channel = redis_name, error = %err, "undecodable envelope dropped");
                return;
            }
        };
        if envelope.message.channel.as_str() != name {
            tracing::warn!(
                redis.channel = redis_name,
                "envelope of another channel dropped"
            );
            return;
        }
        let mut span = envelope
            .traceparent
            .as_deref()
            .filter(|_| telemetry::enabled())
            .and_then(telemetry::parse_traceparent)
            .and_then(|parent| {
                MessageSpan::start(
                    "chat.deliver",
                    SpanKind::Consumer,
                    &parent,
                    SystemTime::now(),
                    vec![
                        KeyValue::new("messaging.system", "redis"),
                        KeyValue::new("chat.channel", name.to_owned()),
                        KeyValue::new("chat.seq", envelope.message.seq),
                        KeyValue::new("chat.message.id", envelope.message.id.to_string()),
                    ],
                    Vec::new(),
                )
            });
        let message = envelope.message;
        let latency = (Utc::now() - message.stored_at)
            .to_std()
            .unwrap_or_default();
        self.inner
            .metrics
            .delivery_latency
            .observe(latency.as_secs_f64());
        let delivery = Delivery::new(&message);

        let mut channels = self.lock();
        let Some(state) = channels.get_mut(&message.channel) else {
            return;
        };
        if let Some(span) = span.as_mut() {
            let subscribers = state.subscribers.len() as i64;
            span.set_attribute(KeyValue::new("chat.subscribers", subscribers));
        }
        let outcome = match state.last {
            Some(last) if delivery.seq <= last => {
                self.inner.metrics.duplicates_dropped.inc();
                "duplicate"
            }
            _ if state.repairing => {
                state.pending.insert(delivery.seq, delivery);
                "pending"
            }
            Some(last) if delivery.seq > last + 1 => {
                tracing::info!(
                    channel = %message.channel,
                    message.seq = delivery.seq,
                    hub.last_seq = last,
                    "live gap; back-filling from postgresql"
                );
                state.pending.insert(delivery.seq, delivery);
                state.repairing = true;
                self.spawn_repair(message.channel.clone(), "gap");
                "gap"
            }
            _ => {
                self.deliver(state, &delivery);
                "delivered"
            }
        };
        drop(channels);
        if let Some(mut span) = span {
            span.set_attribute(KeyValue::new("chat.delivery", outcome));
            span.end();
        }
    }

    /// Hands one message, in order, to every subscriber of the channel.
    fn deliver(&self, state: &mut ChannelState, delivery: &Delivery) {
        state.last = Some(delivery.seq);
        let metrics = &self.inner.metrics;
        let limit = self.inner.options.buffer_limit;
        state.recent.push(
            Arc::clone(&delivery.message),
            self.inner.options.history_cache,
        );
        let mut delivered = 0;
        state
            .subscribers
            .retain(|_, subscriber| match &mut subscriber.state {
                SubscriberState::Buffering { buffer, overflowed } => {
                    if buffer.len() >= limit {
                        buffer.clear();
                        *overflowed = true;
                    } else {
                        buffer.push(delivery.clone());
                    }
                    true
                }
                SubscriberState::Live { cursor } => {
                    if delivery.seq <= *cursor {
                        return true;
                    }
                    match subscriber.outbox.frames.try_send(delivery.frame.clone()) {
                        Ok(()) => {
                            *cursor = delivery.seq;
                            delivered += 1;
                            true
                        }
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            metrics.slow_consumer_closes.inc();
                            subscriber
                                .outbox
                                .closer
                                .close(CLOSE_SLOW_CONSUMER, "slow consumer");
                            false
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => false,
                    }
                }
            });
        metrics.deliveries.inc_by(delivered);
    }

    fn spawn_repair(&self, channel: ChannelName, reason: &'static str) {
        self.inner
            .metrics
            .backfills
            .with_label_values(&[reason])
            .inc();
        let hub = self.clone();
        tokio::spawn(async move { hub.repair(channel).await });
    }

    /// Back-fills a channel from PostgreSQL until the pending live messages connect to what
    /// was delivered (and, after a reconnect, until the stored log is exhausted).
    async fn repair(&self, channel: ChannelName) {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        loop {
            // Decide the next read under the lock; finish when nothing is missing.
            let (after, upto) = {
                let mut channels = self.lock();
                let Some(state) = channels.get_mut(&channel) else {
                    return;
                };
                let last = state.last.unwrap_or(0);
                if state.resync {
                    state.resync = false;
                    (last, None)
                } else {
                    self.drain_pending(state);
                    match state.pending.first_key_value() {
                        None => {
                            state.repairing = false;
                            return;
                        }
                        Some((&first, _)) => (state.last.unwrap_or(0), Some(first - 1)),
                    }
                }
            };
            let mut cursor = after;
            let mut progressed = false;
            loop {
                if upto.is_some_and(|upto| cursor >= upto) {
                    break;
                }
                let limit = upto.map_or(PAGE_SIZE, |upto| (upto - cursor).min(PAGE_SIZE));
                let started = std::time::Instant::now();
                let page = tokio::select! {
                    () = self.inner.cancel.cancelled() => return,
                    page = self.inner.store.after(&channel, cursor, limit) => page,
                };
                self.inner
                    .metrics
                    .history_query_duration
                    .observe(started.elapsed().as_secs_f64());
                let page = match page {
                    Ok(page) => page,
                    Err(err) => {
                        let delay = backoff.next_delay();
                        tracing::warn!(channel = %channel, error = %err, retry_in_ms = delay.as_millis() as u64, "back-fill read failed");
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                };
                backoff.reset();
                let short = (page.len() as i64) < limit;
                if let Some(tail) = page.last() {
                    cursor = tail.seq;
                    progressed = true;
                }
                let mut channels = self.lock();
                let Some(state) = channels.get_mut(&channel) else {
                    return;
                };
                for message in &page {
                    if state.last.is_none_or(|last| message.seq == last + 1) {
                        self.inner.metrics.backfilled_messages.inc();
                        self.deliver(state, &Delivery::new(message));
                    }
                }
                drop(channels);
                if short {
                    break;
                }
            }
            if !progressed && upto.is_some() {
                // The log does not have the messages yet; give it a moment.
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }

    /// Delivers the pending messages that now connect, dropping duplicates.
    fn drain_pending(&self, state: &mut ChannelState) {
        while let Some(entry) = state.pending.first_entry() {
            let seq = *entry.key();
            match state.last {
                Some(last) if seq <= last => {
                    entry.remove();
                    self.inner.metrics.duplicates_dropped.inc();
                }
                Some(last) if seq > last + 1 => return,
                _ => {
                    let delivery = entry.remove();
                    self.deliver(state, &delivery);
                }
            }
        }
    }

    fn redis_names(&self) -> Vec<(ChannelName, String)> {
        self.lock()
            .keys()
            .map(|c| (c.clone(), redis_channel(&self.inner.prefix, c)))
            .collect()
    }

    fn mark_on_redis(&self, channel: &ChannelName) {
        if let Some(state) = self.lock().get_mut(channel) {
            state.on_redis = true;
            for waiter in state.waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
    }

    /// After a (re)connection subscribed `channels`: wake waiting subscribers and, after a
    /// reconnect, back-fill everything that may have been published meanwhile.
    fn on_connected(&self, channels: &[ChannelName], reconnect: bool) {
        let mut guard = self.lock();
        for channel in channels {
            let Some(state) = guard.get_mut(channel) else {
                continue;
            };
            state.on_redis = true;
            for waiter in state.waiters.drain(..) {
                let _ = waiter.send(());
            }
            if !reconnect {
                continue;
            }
            for subscriber in state.subscribers.values_mut() {
                if let SubscriberState::Buffering { buffer, overflowed } = &mut subscriber.state {
                    buffer.clear();
                    *overflowed = true;
                }
            }
            if state.last.is_some() {
                state.resync = true;
                if !state.repairing {
                    state.repairing = true;
                    self.spawn_repair(channel.clone(), "reconnect");
                }
            }
        }
    }

    fn on_disconnected(&self) {
        self.inner.connected.store(false, Ordering::Relaxed);
        for state in self.lock().values_mut() {
            state.on_redis = false;
        }
    }
}

impl PubSubTask {
    /// Keeps the pub/sub connection up until `cancel` fires.
    pub async fn run(mut self, cancel: CancellationToken) {
        let hub = self.hub;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut reconnect = false;
        loop {
            let connected = tokio::select! {
                () = cancel.cancelled() => return,
                connected = tokio::time::timeout(Duration::from_secs(5), self.client.get_async_pubsub()) => connected,
            };
            let pubsub = match connected {
                Ok(Ok(pubsub)) => pubsub,
                Ok(Err(err)) => {
                    Self::pause(&cancel, &mut backoff, &err.to_string()).await;
                    continue;
                }
                Err(_) => {
                    Self::pause(&cancel, &mut backoff, "connect timed out").await;
                    continue;
                }
            };
            let (mut sink, mut stream) = pubsub.split();
            let channels = hub.redis_names();
            if !channels.is_empty() {
                let names: Vec<&str> = channels.iter().map(|(_, n)| n.as_str()).collect();
                if let Err(err) = sink.subscribe(&names).await {
                    Self::pause(&cancel, &mut backoff, &err.to_string()).await;
                    continue;
                }
            }
            let channels: Vec<ChannelName> = channels.into_iter().map(|(c, _)| c).collect();
            hub.inner.epoch.fetch_add(1, Ordering::AcqRel);
            hub.inner.connected.store(true, Ordering::Relaxed);
            hub.on_connected(&channels, reconnect);
            if reconnect {
                hub.inner.metrics.redis_reconnects.inc();
                tracing::info!(
                    hub.channels = channels.len(),
                    "redis pub/sub reconnected; back-filling"
                );
            }
            reconnect = true;
            backoff.reset();
            let mut sweep = tokio::time::interval(Self::sweep_period(hub.inner.options.linger));
            sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

            loop {
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => return,
                    _ = sweep.tick() => hub.sweep(),
                    message = stream.next() => match message {
                        Some(message) => hub.on_message(message.get_channel_name(), message.get_payload_bytes()),
                        None => break,
                    },
                    command = self.commands.recv() => {
                        let result = match command {
                            None => return,
                            Some(PubSubCommand::Subscribe(channel)) if hub.has_channel(&channel) => {
                                let name = redis_channel(&hub.inner.prefix, &channel);
                                let result = sink.subscribe(&name).await;
                                if result.is_ok() {
                                    hub.mark_on_redis(&channel);
                                }
                                result
                            }
                            Some(PubSubCommand::Unsubscribe(channel)) if !hub.has_channel(&channel) => {
                                sink.unsubscribe(redis_channel(&hub.inner.prefix, &channel)).await
                            }
                            Some(_) => Ok(()),
                        };
                        if let Err(err) = result {
                            tracing::warn!(error = %err, "redis pub/sub command failed");
                            break;
                        }
                    }
                }
            }
            tracing::warn!("redis pub/sub connection lost; reconnecting");
            hub.on_disconnected();
        }
    }

    /// How often lingering channels are checked: a quarter of the linger, within 1 to 10 s.
    fn sweep_period(linger: Duration) -> Duration {
        (linger / 4).clamp(Duration::from_secs(1), Duration::from_secs(10))
    }

    async fn pause(cancel: &CancellationToken, backoff: &mut Backoff, error: &str) {
        let delay = backoff.next_delay();
        tracing::warn!(
            error,
            retry_in_ms = delay.as_millis() as u64,
            "redis pub/sub unavailable"
        );
        tokio::select! {
            () = cancel.cancelled() => {}
            () = tokio::time::sleep(delay) => {}
        }
    }
}
