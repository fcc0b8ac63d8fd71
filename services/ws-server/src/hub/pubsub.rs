//! The process's one Redis pub/sub connection: [`PubSubTask`] connects, (re)subscribes every
//! channel of the hub, reconnects with backoff and feeds the hub the live payloads, its
//! SUBSCRIBE/UNSUBSCRIBE commands and the linger sweep.

use std::sync::atomic::Ordering;
use std::time::Duration;

use chat_core::backoff::Backoff;
use chat_core::channel::ChannelName;
use chat_core::envelope::redis_channel;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::linger::sweep_period;
use super::Hub;

pub(super) enum PubSubCommand {
    Subscribe(ChannelName),
    Unsubscribe(ChannelName),
}

/// Owns the Redis pub/sub connection; run it with [`PubSubTask::run`].
pub struct PubSubTask {
    hub: Hub,
    client: redis::Client,
    commands: mpsc::UnboundedReceiver<PubSubCommand>,
}

impl Hub {
    fn has_channel(&self, channel: &ChannelName) -> bool {
        self.lock().contains_key(channel)
    }

    fn redis_names(&self) -> Vec<(ChannelName, String)> {
        self.lock()
            .keys()
            .map(|c| (c.clone(), redis_channel(&self.inner.prefix, c)))
            .collect()
    }

    fn mark_on_redis(&self, channel: &ChannelName) {
        if let Some(state) = self.lock().get_mut(channel) {
            state.confirmed();
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
            state.confirmed();
            if reconnect && state.reconnected() {
                self.spawn_repair(channel.clone(), "reconnect");
            }
        }
    }

    fn on_disconnected(&self) {
        self.inner.connected.store(false, Ordering::Relaxed);
        for state in self.lock().values_mut() {
            state.disconnected();
        }
    }
}

impl PubSubTask {
    pub(super) fn new(
        hub: Hub,
        client: redis::Client,
        commands: mpsc::UnboundedReceiver<PubSubCommand>,
    ) -> Self {
        Self {
            hub,
            client,
            commands,
        }
    }

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
            let mut sweep = tokio::time::interval(sweep_period(hub.inner.options.linger));
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
