//! Gap repair and reconnect back-fill: reads PostgreSQL after the channel's last delivered seq,
//! once per channel (not once per client), until the pending live messages connect (and, after
//! a reconnect, until the stored log is exhausted).

use std::time::Duration;

use chat_core::backoff::Backoff;
use chat_core::channel::ChannelName;

use super::{Hub, PAGE_SIZE};

impl Hub {
    pub(super) fn spawn_repair(&self, channel: ChannelName, reason: &'static str) {
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
            let read = {
                let mut channels = self.lock();
                let Some(state) = channels.get_mut(&channel) else {
                    return;
                };
                let (read, tally) = state.next_repair();
                self.count(tally);
                match read {
                    Some(read) => read,
                    None => return,
                }
            };
            let upto = read.upto;
            let mut cursor = read.after;
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
                let tally = state.backfill(&page);
                self.count(tally);
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
}
