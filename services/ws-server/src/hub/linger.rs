//! A channel leaves the hub (and Redis) when its last subscriber leaves, or, when the hub
//! keeps a cache and a linger period, once nobody used it for that period (the sweep).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chat_core::channel::ChannelName;

use super::channel::Channel;
use super::pubsub::PubSubCommand;
use super::Hub;

/// How often lingering channels are checked: a quarter of the linger, within 1 to 10 s.
pub(super) fn sweep_period(linger: Duration) -> Duration {
    (linger / 4).clamp(Duration::from_secs(1), Duration::from_secs(10))
}

impl Hub {
    pub(super) fn remove(&self, channel: &ChannelName, id: u64) {
        let mut channels = self.lock();
        let Some(state) = channels.get_mut(channel) else {
            return;
        };
        if state.leave(id) {
            if self.lingers() {
                state.idle(Instant::now());
            } else {
                self.drop_channel(&mut channels, channel);
            }
        }
    }

    /// Whether unused channels stay subscribed for a while (to keep their cache warm).
    pub(super) fn lingers(&self) -> bool {
        let options = &self.inner.options;
        options.history_cache > 0 && !options.linger.is_zero()
    }

    pub(super) fn drop_channel(
        &self,
        channels: &mut HashMap<ChannelName, Channel>,
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
    pub(super) fn sweep(&self) {
        let linger = self.inner.options.linger;
        let mut channels = self.lock();
        let now = Instant::now();
        let expired: Vec<ChannelName> = channels
            .iter()
            .filter(|(_, state)| state.expired(linger, now))
            .map(|(channel, _)| channel.clone())
            .collect();
        for channel in &expired {
            self.drop_channel(&mut channels, channel);
        }
    }
}
