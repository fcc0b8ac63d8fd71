//! Identity: verifies a JWT and turns its claims into an [`Identity`] (user id, author name,
//! expiry, rights per channel); the [`gate::Gate`] every WebSocket and REST client passes.
//!
//! Use: build an [`AuthConfig`] from the settings, [`Verifier::new`] it once at startup (cheap
//! to clone, share it), then `verifier.verify(token).await` per connection or request and check
//! `identity.allows(&channel, Right::Read)` before subscribe/resume/GET, `Right::Publish` before
//! publish. An [`AuthError`] has a stable [`AuthError::code`] and a human message; none of them
//! contains the token.
//!
//! - [`verifier`]: [`Verifier`]: key selection by `alg`/`kid`, signature and claim validation,
//!   dev tokens.
//! - `keys`: keys pinned to one algorithm each (secret, PEM, JWK).
//! - `jwks`: the JWKS key source, cached, refreshed and refetched with a rate limit.
//! - [`identity`]: [`Identity`] from validated claims (author rule fallback).
//! - [`rights`]: [`Rights`] and [`Right`]: channel patterns to rights.
//! - [`error`]: [`AuthError`], [`ConfigError`], [`DevTokenError`].
//! - [`gate`]: [`gate::Gate`] (token or anonymous, origins) and [`gate::Principal`].
//! - [`origin`]: allowed browser origins (WebSocket upgrade, CORS).
//! - [`settings`]: the `AUTH_*` settings and building the gate from them.

use std::fmt;
use std::time::Duration;

pub mod error;
pub mod gate;
pub mod identity;
mod jwks;
mod keys;
pub mod origin;
pub mod rights;
pub mod settings;
pub mod verifier;

#[cfg(test)]
mod tests;

pub use error::{AuthError, ConfigError, DevTokenError};
pub use identity::Identity;
pub use rights::{Right, Rights, RightsError};
pub use verifier::Verifier;

/// What the settings give the [`Verifier`]. At least one of `secret`, `public_key_pem` and
/// `jwks_url` must be set; any combination works.
#[derive(Clone)]
pub struct AuthConfig {
    /// HS256 shared secret.
    pub secret: Option<Vec<u8>>,
    /// One PEM public key: RSA (RS256), EC P-256 (ES256) or Ed25519 (EdDSA).
    pub public_key_pem: Option<String>,
    /// URL of a JWKS (`{"keys": [...]}`); a token's `kid` selects the key.
    pub jwks_url: Option<String>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud` member, when set; when unset `aud` is neither required nor checked.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf` (whole seconds).
    pub leeway: Duration,
    /// Name of the claim with the token's rights.
    pub rights_claim: String,
    /// Rights granted to every valid token, as JSON (`{"#public-*": ["read"]}`).
    pub default_rights: String,
    /// Age after which the JWKS is fetched again before use.
    pub jwks_refresh: Duration,
    /// Least time between two JWKS fetches (unknown kids, refreshes, failures).
    pub jwks_min_refetch: Duration,
}

impl AuthConfig {
    /// The defaults, no key source yet: leeway 30 s, rights claim `chat`, no default rights,
    /// JWKS refreshed after 5 min and fetched at most once per 10 s.
    pub fn new() -> Self {
        Self {
            secret: None,
            public_key_pem: None,
            jwks_url: None,
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(30),
            rights_claim: "chat".to_owned(),
            default_rights: "{}".to_owned(),
            jwks_refresh: Duration::from_secs(300),
            jwks_min_refetch: Duration::from_secs(10),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// Never shows the secret.
impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("public_key_pem", &self.public_key_pem.is_some())
            .field("jwks_url", &self.jwks_url)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .field("rights_claim", &self.rights_claim)
            .field("default_rights", &self.default_rights)
            .field("jwks_refresh", &self.jwks_refresh)
            .field("jwks_min_refetch", &self.jwks_min_refetch)
            .finish()
    }
}
