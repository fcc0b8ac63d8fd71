//! Gap repair and reconnect back-fill: reads PostgreSQL after the channel's last delivered seq,
//! once per channel (not once per client), until the pending live messages connect (and, after
//! a reconnect, until the stored log is exhausted).

use std::time::Duration;

use chat_core::backoff::Backoff;
use chat_core::channel::ChannelName;

use super::{Hub, PAGE_SIZE};

/// Reads of a gap repair that may find the stored log ending below the first pending live
/// message before that message is dropped as not of the log (the worker publishes a message
/// only after it and every seq before it are committed, so one read normally settles it; the
/// others allow for a read that raced the commit).
const FRUITLESS_READS: u32 = 3;

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
        let mut fruitless = 0;
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
            let Some(upto) = upto else { continue };
            if cursor >= upto {
                fruitless = 0;
                continue;
            }
            // The log ends below the first pending message.
            fruitless += 1;
            if fruitless < FRUITLESS_READS {
                if !progressed {
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                continue;
            }
            fruitless = 0;
            let mut channels = self.lock();
            let Some(state) = channels.get_mut(&channel) else {
                return;
            };
            if let Some(seq) = state.discard_unstored() {
                self.dropped("not_in_log");
                tracing::warn!(channel = %channel, message.seq = seq, log.last_seq = cursor, "live message above the stored log dropped");
            }
        }
    }
}
