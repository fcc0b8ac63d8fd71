//! REST reads of a channel's newest page: from the channel's cache when it holds them and is
//! current, else from PostgreSQL, whose page then seeds the cache under a [`Ticket`].

use std::sync::atomic::Ordering;
use std::time::Instant;

use chat_core::channel::ChannelName;

use super::Hub;
use crate::recent::Shared;

/// What the hub knows of a channel's newest messages, for a REST read.
pub enum Newest {
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

impl Hub {
    /// The newest `limit` messages of a channel for a REST read: from the cache when it holds
    /// them and is current (Redis connected, no repair running), else a [`Newest::Read`].
    pub fn newest(&self, channel: &ChannelName, limit: usize) -> Newest {
        let mut channels = self.lock();
        let Some(state) = channels.get_mut(channel) else {
            drop(channels);
            self.count_rest("miss");
            return Newest::Read(None);
        };
        state.touch(Instant::now());
        let current = state.is_current() && self.is_connected();
        if let Some((messages, _)) = state.cached(limit).filter(|_| current) {
            drop(channels);
            self.count_rest("hit");
            return Newest::Cached(messages);
        }
        let ticket = current.then(|| Ticket {
            channel: channel.clone(),
            epoch: self.inner.epoch.load(Ordering::Acquire),
            generation: state.generation(),
        });
        drop(channels);
        self.count_rest("miss");
        Newest::Read(ticket)
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
        if ticket.epoch == self.inner.epoch.load(Ordering::Acquire) {
            state.seed(ticket.generation, page);
        }
    }

    /// Keeps a channel that REST readers use on Redis for the linger period, so that its newest
    /// page is soon served from the cache. Bounded by [`super::HubOptions::max_watched`].
    pub fn watch(&self, channel: &ChannelName) {
        if !self.lingers() {
            return;
        }
        let mut channels = self.lock();
        if let Some(state) = channels.get_mut(channel) {
            state.touch(Instant::now());
            return;
        }
        let watched = channels.values().filter(|state| state.is_unused()).count();
        if watched < self.inner.options.max_watched {
            if let Ok(state) = self.state(&mut channels, channel) {
                state.idle(Instant::now());
            }
        }
    }
}
