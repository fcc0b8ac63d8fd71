//! The JWKS key source: the key set fetched from a URL (`{"keys": [...]}`), cached.
//!
//! Fetching is lazy and rate-limited:
//! - before a lookup, a set older than `refresh` (or none yet) is fetched again, so a key removed
//!   from the JWKS stops being accepted without a restart;
//! - a token whose `kid` is unknown triggers a refetch, so a new key is accepted at once;
//! - every fetch attempt, successful or not, waits `min_refetch` after the previous one, and one
//!   fetch runs at a time, so a flood of tokens with random kids (or a JWKS server that is down)
//!   costs at most one request per `min_refetch`;
//! - a failed fetch keeps the last good set and logs a warning.

use std::sync::RwLock;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::Algorithm;

use super::error::ConfigError;
use super::keys::PinnedKey;

/// How long one JWKS request may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) struct Jwks {
    url: String,
    client: reqwest::Client,
    refresh: Duration,
    min_refetch: Duration,
    state: RwLock<State>,
    /// Held for the whole of a fetch: one fetch at a time.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    keys: Vec<(Option<String>, PinnedKey)>,
    loaded_at: Option<Instant>,
    attempted_at: Option<Instant>,
}

impl Jwks {
    pub(crate) fn new(
        url: &str,
        refresh: Duration,
        min_refetch: Duration,
    ) -> Result<Self, ConfigError> {
        let parsed = reqwest::Url::parse(url).map_err(|_| ConfigError::InvalidJwksUrl)?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ConfigError::InvalidJwksUrl);
        }
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|err| ConfigError::HttpClient(err.to_string()))?;
        Ok(Self {
            url: url.to_owned(),
            client,
            refresh,
            min_refetch,
            state: RwLock::new(State::default()),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// Whether a key set was ever fetched.
    pub(crate) fn is_loaded(&self) -> bool {
        self.read().loaded_at.is_some()
    }

    /// Fetches the set again if there is none yet or it is older than `refresh`
    /// (rate-limited).
    pub(crate) async fn refresh_if_stale(&self) {
        let stale = match self.read().loaded_at {
            None => true,
            Some(at) => at.elapsed() >= self.refresh,
        };
        if stale {
            self.fetch_rate_limited().await;
        }
    }

    /// Fetches the set again because a token named an unknown kid (rate-limited).
    pub(crate) async fn refetch_for_unknown_kid(&self) {
        self.fetch_rate_limited().await;
    }

    /// The key a token selects: by `kid` when it has one (whatever the key's algorithm: the
    /// caller refuses a mismatch), else the set's only key if it accepts `alg`.
    pub(crate) fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Option<PinnedKey> {
        let state = self.read();
        match kid {
            Some(kid) => state
                .keys
                .iter()
                .find(|(key_id, _)| key_id.as_deref() == Some(kid))
                .map(|(_, key)| key.clone()),
            None => match state.keys.as_slice() {
                [(_, only)] if only.alg == alg => Some(only.clone()),
                _ => None,
            },
        }
    }

    async fn fetch_rate_limited(&self) {
        let _one_at_a_time = self.fetching.lock().await;
        {
            let mut state = self.write();
            if state
                .attempted_at
                .is_some_and(|at| at.elapsed() < self.min_refetch)
            {
                return;
            }
            state.attempted_at = Some(Instant::now());
        }
        match self.fetch().await {
            Ok(keys) => {
                tracing::debug!(url = %self.url, keys = keys.len(), "fetched the JWKS");
                let mut state = self.write();
                state.keys = keys;
                state.loaded_at = Some(Instant::now());
            }
            Err(error) => tracing::warn!(
                url = %self.url,
                %error,
                "JWKS fetch failed; keeping the last good key set"
            ),
        }
    }

    async fn fetch(&self) -> Result<Vec<(Option<String>, PinnedKey)>, reqwest::Error> {
        let set: JwkSet = self
            .client
            .get(&self.url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let mut keys = Vec::with_capacity(set.keys.len());
        for jwk in &set.keys {
            let kid = jwk.common.key_id.clone();
            match PinnedKey::from_jwk(jwk) {
                Ok(key) => keys.push((kid, key)),
                Err(reason) => tracing::warn!(
                    url = %self.url,
                    kid = kid.as_deref().unwrap_or(""),
                    "JWKS key skipped: {reason}"
                ),
            }
        }
        Ok(keys)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
