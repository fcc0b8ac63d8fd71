//! [`Verifier`]: checks a JWT against the configured keys and claims and returns the
//! [`Identity`] it carries; also signs dev tokens with the shared secret.
//!
//! Key selection: a token's `kid` found in the JWKS selects that key; otherwise the static key
//! (secret or PEM) pinned to the token's `alg`; otherwise, with a JWKS and a `kid`, the JWKS is
//! refetched (rate-limited) and looked up again. The selected key must accept exactly the
//! token's `alg`, so `none`, an algorithm no key accepts, and a public key's bytes used as an
//! HMAC secret are all refused.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chat_core::message::validate_author;
use jsonwebtoken::{decode, decode_header, encode, Algorithm, EncodingKey, Header, Validation};
use serde_json::{json, Map, Value};

use super::error::{AuthError, ConfigError, DevTokenError};
use super::identity::Identity;
use super::jwks::Jwks;
use super::keys::PinnedKey;
use super::rights::Rights;
use super::AuthConfig;

/// Verifies tokens. Cheap to clone (one `Arc`); build one per process.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    secret: Option<Vec<u8>>,
    /// At most one per algorithm: HS256 from the secret, the PEM's algorithm.
    static_keys: Vec<PinnedKey>,
    jwks: Option<Jwks>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway_secs: u64,
    rights_claim: String,
    default_rights: Rights,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("Verifier")
            .field("static_keys", &inner.static_keys)
            .field("jwks", &inner.jwks.is_some())
            .field("issuer", &inner.issuer)
            .field("audience", &inner.audience)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Checks the configuration: at least one key source, a usable PEM, valid default rights.
    /// Fetches nothing (the JWKS is fetched on first use, or by [`Verifier::prefetch`]).
    pub fn new(config: AuthConfig) -> Result<Self, ConfigError> {
        if config.secret.is_none() && config.public_key_pem.is_none() && config.jwks_url.is_none() {
            return Err(ConfigError::NoKeySource);
        }
        let mut static_keys = Vec::new();
        if let Some(secret) = &config.secret {
            static_keys.push(PinnedKey::from_secret(secret)?);
        }
        if let Some(pem) = &config.public_key_pem {
            static_keys.push(PinnedKey::from_pem(pem)?);
        }
        let jwks = config
            .jwks_url
            .as_deref()
            .map(|url| Jwks::new(url, config.jwks_refresh, config.jwks_min_refetch))
            .transpose()?;
        let default_rights = Rights::parse_json(&config.default_rights)
            .map_err(|err| ConfigError::InvalidDefaultRights(err.to_string()))?;
        if config.rights_claim.is_empty() {
            return Err(ConfigError::EmptyRightsClaim);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                secret: config.secret,
                static_keys,
                jwks,
                issuer: config.issuer,
                audience: config.audience,
                leeway_secs: config.leeway.as_secs(),
                rights_claim: config.rights_claim,
                default_rights,
            }),
        })
    }

    /// Fetches the JWKS now, if one is configured and not fresh (for startup; optional).
    pub async fn prefetch(&self) {
        if let Some(jwks) = &self.inner.jwks {
            jwks.refresh_if_stale().await;
        }
    }

    /// Verifies `token` (the bare JWT, no `Bearer ` prefix) and returns its identity.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::MissingToken);
        }
        let header = decode_header(token)
            .map_err(|_| AuthError::InvalidToken("malformed token or unsupported algorithm"))?;
        let key = self.select_key(&header).await?;
        if key.alg != header.alg {
            return Err(AuthError::InvalidToken(
                "the token's algorithm is not the one of its key",
            ));
        }
        let claims = decode::<Map<String, Value>>(token, &key.key, &self.validation(key.alg))
            .map_err(|err| AuthError::from_jwt(&err))?
            .claims;
        Identity::from_claims(
            &claims,
            &self.inner.rights_claim,
            &self.inner.default_rights,
        )
    }

    async fn select_key(&self, header: &Header) -> Result<PinnedKey, AuthError> {
        let inner = &self.inner;
        let kid = header.kid.as_deref();
        if let Some(jwks) = &inner.jwks {
            jwks.refresh_if_stale().await;
            if let Some(key) = jwks.lookup(kid, header.alg) {
                return Ok(key);
            }
        }
        if let Some(key) = inner.static_keys.iter().find(|key| key.alg == header.alg) {
            return Ok(key.clone());
        }
        let Some(jwks) = &inner.jwks else {
            return Err(AuthError::InvalidToken(
                "no key accepts the token's algorithm",
            ));
        };
        if let Some(kid) = kid {
            jwks.refetch_for_unknown_kid().await;
            if let Some(key) = jwks.lookup(Some(kid), header.alg) {
                return Ok(key);
            }
        }
        if !jwks.is_loaded() {
            return Err(AuthError::KeysUnavailable);
        }
        Err(AuthError::InvalidToken(if kid.is_some() {
            "unknown key id"
        } else {
            "no key id and no single key for the token's algorithm"
        }))
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let inner = &self.inner;
        let mut validation = Validation::new(alg);
        validation.leeway = inner.leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(issuer) = &inner.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &inner.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        validation
    }

    /// Signs an HS256 dev token with the configured secret: `sub` = `dev:<name>`, `name`,
    /// `iat`, `exp` = now + `ttl`, the configured `iss`/`aud`, and every right on every channel.
    pub fn sign_dev_token(&self, name: &str, ttl: Duration) -> Result<String, DevTokenError> {
        let inner = &self.inner;
        let secret = inner.secret.as_deref().ok_or(DevTokenError::NoSecret)?;
        validate_author(name).map_err(|_| DevTokenError::InvalidName)?;
        let now = jsonwebtoken::get_current_timestamp();
        let mut claims = Map::new();
        claims.insert("sub".into(), json!(format!("dev:{name}")));
        claims.insert("name".into(), json!(name));
        claims.insert("iat".into(), json!(now));
        claims.insert("exp".into(), json!(now.saturating_add(ttl.as_secs())));
        if let Some(issuer) = &inner.issuer {
            claims.insert("iss".into(), json!(issuer));
        }
        if let Some(audience) = &inner.audience {
            claims.insert("aud".into(), json!(audience));
        }
        claims.insert(inner.rights_claim.clone(), Rights::all().to_value());
        let key = EncodingKey::from_secret(secret).map_err(|_| DevTokenError::NoSecret)?;
        encode(&Header::new(Algorithm::HS256), &claims, &key).map_err(|_| DevTokenError::Signing)
    }
}
