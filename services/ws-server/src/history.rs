//! The one history reader. Every read of a channel's stored messages goes through [`History`]:
//! the first page of a subscription, the pages of a resume, the REST pages. It owns the store,
//! the hub's cache of the newest messages and the query timing, and decides by itself when the
//! cache answers: callers say which page they want, never where it comes from.
//!
//! One name for one concept: "the newest page" is the newest `n` messages of a channel
//! ([`History::newest_page`], `Hub::newest`, `Store::newest`, `Recent::newest`,
//! `Start::Newest`).

use chat_core::channel::ChannelName;
use chat_core::message::StoredMessage;
use chat_core::store::Store;

use crate::hub::{Hub, Newest, Snapshot};
use crate::metrics::Metrics;
use crate::protocol::Start;
use crate::recent::{Shared, SharedMessage};

/// Messages per PostgreSQL read of a subscription's history (its first page, and each page of
/// a `since` resume or catch-up). Small, so that what one connection holds while its client
/// reads slowly stays small whatever the messages hold: 100 messages of at most 4,000
/// characters are at most 1.6 MB as read, 2.4 MB as JSON.
pub const READ_PAGE: i64 = 100;

/// Most bytes of messages in one REST page: a page of `limit` large messages (up to ~24 KB each
/// as JSON) holds fewer, and its cursors continue from what it holds.
pub const MAX_PAGE_BYTES: usize = 1024 * 1024;

/// A history query failed (PostgreSQL unavailable); it was logged and timed.
#[derive(Debug, thiserror::Error)]
#[error("history is unavailable: {0}")]
pub struct Unavailable(#[from] sqlx::Error);

/// Which REST page: the newest, or one by cursor (see the `GET` route's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    Newest,
    /// The messages just below this seq.
    Before(i64),
    /// The messages just above this seq.
    After(i64),
    /// The first messages above `after` and below `before`.
    Between {
        after: i64,
        before: i64,
    },
}

impl Cursor {
    pub fn of(before: Option<i64>, after: Option<i64>) -> Self {
        match (before, after) {
            (None, None) => Self::Newest,
            (Some(before), None) => Self::Before(before),
            (None, Some(after)) => Self::After(after),
            (Some(before), Some(after)) => Self::Between { after, before },
        }
    }
}

/// What a subscription starts with: the history of its `subscribed` frame.
#[derive(Debug)]
pub struct FirstPage {
    pub messages: Vec<Shared>,
    /// The `last_seq` of the `subscribed` frame: the live stream continues after it.
    pub last_seq: i64,
    /// More stored messages follow (a `since` resume longer than one page): catch up with
    /// [`History::after`] before going live.
    pub more: bool,
    /// Read from PostgreSQL, contiguous up to `last_seq`: hand it to `Hub::go_live`, which may
    /// seed the channel's cache with it. False when it came from that cache.
    pub from_store: bool,
}

#[derive(Clone)]
pub struct History {
    store: Store,
    hub: Hub,
    metrics: Metrics,
}

impl History {
    pub fn new(store: Store, hub: Hub, metrics: Metrics) -> Self {
        Self {
            store,
            hub,
            metrics,
        }
    }

    /// The first page of a subscription. `snapshot` is what the hub's cache gave under the lock
    /// that registered the subscriber; without one, PostgreSQL answers.
    pub async fn first_page(
        &self,
        channel: &ChannelName,
        start: Start,
        snapshot: Option<Snapshot>,
    ) -> Result<FirstPage, Unavailable> {
        let page = |messages: &[StoredMessage], last_seq, more| FirstPage {
            messages: SharedMessage::from_page(messages),
            last_seq,
            more,
            from_store: !more,
        };
        Ok(match (start, snapshot) {
            (_, Some(snapshot)) => FirstPage {
                messages: snapshot.messages,
                last_seq: snapshot.last_seq,
                more: false,
                from_store: false,
            },
            (Start::Newest(0), None) => FirstPage {
                last_seq: self.last_seq(channel).await?,
                messages: Vec::new(),
                more: false,
                from_store: false,
            },
            (Start::Newest(limit), None) if limit <= READ_PAGE => {
                let newest = self.timed(self.store.newest(channel, limit)).await?;
                page(&newest, newest.last().map_or(0, |m| m.seq), false)
            }
            (start, None) => {
                // More than a page: seqs are contiguous, so the newest `limit` are those after
                // `last_seq - limit`, read a page at a time like a resume.
                let since = match start {
                    Start::Since(since) => since,
                    Start::Newest(limit) => (self.last_seq(channel).await? - limit).max(0),
                };
                let after = self.after(channel, since).await?;
                let more = after.len() as i64 == READ_PAGE;
                let last_seq = match after.last() {
                    Some(m) => m.seq,
                    None => since.min(self.last_seq(channel).await?),
                };
                page(&after, last_seq, more)
            }
        })
    }

    /// Up to [`READ_PAGE`] messages after `cursor`, oldest first: a resume, one page at a time.
    pub async fn after(
        &self,
        channel: &ChannelName,
        cursor: i64,
    ) -> Result<Vec<StoredMessage>, Unavailable> {
        self.timed(self.store.after(channel, cursor, READ_PAGE))
            .await
    }

    /// A REST page, ascending, of at most [`MAX_PAGE_BYTES`]: paging backward (newest, `before`)
    /// keeps the newest messages, paging forward the oldest, so the cursors continue from it.
    pub async fn page(
        &self,
        channel: &ChannelName,
        cursor: Cursor,
        limit: i64,
    ) -> Result<Vec<Shared>, Unavailable> {
        let mut page = self.uncut_page(channel, cursor, limit).await?;
        let backward = matches!(cursor, Cursor::Newest | Cursor::Before(_));
        cut(&mut page, MAX_PAGE_BYTES, backward);
        Ok(page)
    }

    async fn uncut_page(
        &self,
        channel: &ChannelName,
        cursor: Cursor,
        limit: i64,
    ) -> Result<Vec<Shared>, Unavailable> {
        let store = &self.store;
        let page = match cursor {
            Cursor::Newest => return self.newest_page(channel, limit).await,
            Cursor::After(after) => self.timed(store.after(channel, after, limit)).await?,
            Cursor::Before(before) => {
                let mut page = self.timed(store.before(channel, before, limit)).await?;
                page.reverse();
                page
            }
            Cursor::Between { after, before } => {
                let mut page = self.timed(store.after(channel, after, limit)).await?;
                page.retain(|m| m.seq < before);
                page
            }
        };
        Ok(SharedMessage::from_page(&page))
    }

    /// The newest `limit` messages: from the hub's cache when it holds them and is current;
    /// otherwise from PostgreSQL, and the page then seeds the cache (or starts watching the
    /// channel, so that the next reads hit it).
    pub async fn newest_page(
        &self,
        channel: &ChannelName,
        limit: i64,
    ) -> Result<Vec<Shared>, Unavailable> {
        let ticket = match self.hub.newest(channel, limit as usize) {
            Newest::Cached(page) => return Ok(page),
            Newest::Read(ticket) => ticket,
        };
        let newest = self.timed(self.store.newest(channel, limit)).await?;
        let page = SharedMessage::from_page(&newest);
        match ticket {
            Some(ticket) => self.hub.seed(ticket, &page),
            None if !page.is_empty() => self.hub.watch(channel),
            None => {}
        }
        Ok(page)
    }

    async fn last_seq(&self, channel: &ChannelName) -> Result<i64, Unavailable> {
        self.timed(self.store.last_seq(channel)).await
    }

    /// Runs a query, recording its latency in `history_query_duration_seconds` and logging a
    /// failure once, here.
    async fn timed<T>(
        &self,
        query: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, Unavailable> {
        let started = std::time::Instant::now();
        let result = query.await;
        self.metrics
            .history_query_duration
            .observe(started.elapsed().as_secs_f64());
        result.map_err(|err| {
            tracing::warn!(error = %err, "history query failed");
            Unavailable(err)
        })
    }
}

/// Keeps the messages of `page` that fit in `budget` bytes of JSON (at least one): the newest
/// when `keep_newest`, else the oldest.
fn cut(page: &mut Vec<Shared>, budget: usize, keep_newest: bool) {
    if keep_newest {
        let keep = fitting(page.iter().rev(), budget);
        page.drain(..page.len() - keep);
    } else {
        page.truncate(fitting(page.iter(), budget));
    }
}

/// How many of `messages`, taken in order, fit in `budget` bytes of a JSON list; at least one
/// when there is one (a single message is always far below a budget).
pub fn fitting<'a>(messages: impl ExactSizeIterator<Item = &'a Shared>, budget: usize) -> usize {
    let len = messages.len();
    let mut bytes = 0;
    let fit = messages
        .take_while(|message| {
            bytes += message.json.get().len() + 1;
            bytes <= budget
        })
        .count();
    fit.max(1).min(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::testing::page;

    #[test]
    fn a_page_too_large_keeps_the_end_its_cursors_continue_from() {
        // The largest of the ten (seq 10 has one more digit, twice).
        let one = page(10..=10)[0].json.get().len() + 1;
        let mut newest = page(1..=10);
        cut(&mut newest, 3 * one + 10, true);
        assert_eq!(newest.iter().map(|m| m.seq).collect::<Vec<_>>(), [8, 9, 10]);
        let mut forward = page(1..=10);
        cut(&mut forward, 3 * one + 10, false);
        assert_eq!(forward.iter().map(|m| m.seq).collect::<Vec<_>>(), [1, 2, 3]);
        let mut tiny = page(1..=10);
        cut(&mut tiny, 1, true);
        assert_eq!(tiny.iter().map(|m| m.seq).collect::<Vec<_>>(), [10]);
        let mut small = page(1..=2);
        cut(&mut small, MAX_PAGE_BYTES, false);
        assert_eq!(small.len(), 2);
    }

    #[test]
    fn the_cursors_of_a_rest_read_name_one_page() {
        assert_eq!(Cursor::of(None, None), Cursor::Newest);
        assert_eq!(Cursor::of(Some(9), None), Cursor::Before(9));
        assert_eq!(Cursor::of(None, Some(0)), Cursor::After(0));
        assert_eq!(
            Cursor::of(Some(9), Some(3)),
            Cursor::Between {
                after: 3,
                before: 9
            }
        );
    }
}
