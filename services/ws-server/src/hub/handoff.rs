//! The gap-free subscribe: a subscriber is registered buffering (and its channel's Redis
//! SUBSCRIBE confirmed) before its session reads history, then handed over to live delivery.

use std::sync::atomic::Ordering;
use std::time::Duration;

use chat_core::channel::ChannelName;

use super::{GoLive, Hub, HubError, Snapshot, Subscription};
use crate::outbox::Outbox;
use crate::recent::Shared;

impl Hub {
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
        let (snapshot, ready) = {
            let mut channels = self.lock();
            let state = self.state(&mut channels, channel)?;
            let (snapshot, ready) = state.join(id, outbox, latest);
            if latest.is_some() {
                let outcome = if snapshot.is_some() { "hit" } else { "miss" };
                self.inner
                    .metrics
                    .history_cache
                    .with_label_values(&["subscribe", outcome])
                    .inc();
            }
            (snapshot, ready)
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
        let (outcome, tally) = state.go_live(subscription.id, cursor, history);
        self.count(tally);
        outcome
    }
}
