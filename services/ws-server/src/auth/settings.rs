//! The identity settings (`AUTH_*`, `WS_ALLOWED_ORIGINS`, `CORS_ALLOWED_ORIGINS`), and turning
//! them into a [`Gate`](super::gate::Gate) at start-up. Secrets come from the environment or a
//! file (`*_FILE`, for mounted Kubernetes Secrets) and are never logged.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use super::gate::Gate;
use super::origin::Origins;
use super::{AuthConfig, Verifier};

/// Who may connect: `jwt` (a signed token per client, the default) or `anonymous` (anyone, as
/// anyone: only behind another gate, or for tests and benchmarks that say so).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    Jwt,
    Anonymous,
}

#[derive(Debug, Clone, clap::Args)]
pub struct AuthSettings {
    /// `jwt`: every WebSocket and REST client presents a signed token; `anonymous`: no identity
    /// at all (anyone reads and publishes anything under any author; a warning is logged).
    #[arg(long, env = "AUTH_MODE", value_enum, default_value = "jwt")]
    pub auth_mode: AuthMode,
    /// HS256 shared secret (a secret: never logged).
    #[arg(long, env = "AUTH_JWT_SECRET", hide_env_values = true)]
    pub auth_jwt_secret: Option<String>,
    /// File holding the HS256 shared secret (e.g. a mounted Kubernetes Secret).
    #[arg(long, env = "AUTH_JWT_SECRET_FILE")]
    pub auth_jwt_secret_file: Option<PathBuf>,
    /// PEM public key (RSA: RS256, EC P-256: ES256, Ed25519: EdDSA).
    #[arg(long, env = "AUTH_JWT_PUBLIC_KEY")]
    pub auth_jwt_public_key: Option<String>,
    /// File holding the PEM public key.
    #[arg(long, env = "AUTH_JWT_PUBLIC_KEY_FILE")]
    pub auth_jwt_public_key_file: Option<PathBuf>,
    /// URL of a JWKS; a token's `kid` picks the key; keys rotate without a restart.
    #[arg(long, env = "AUTH_JWKS_URL")]
    pub auth_jwks_url: Option<String>,
    /// Required `iss` claim, when set.
    #[arg(long, env = "AUTH_ISSUER")]
    pub auth_issuer: Option<String>,
    /// Required `aud` claim member, when set.
    #[arg(long, env = "AUTH_AUDIENCE")]
    pub auth_audience: Option<String>,
    /// Claim holding the token's rights: `{"<channel or prefix*>": ["read", "publish"]}`.
    #[arg(long, env = "AUTH_RIGHTS_CLAIM", default_value = "chat")]
    pub auth_rights_claim: String,
    /// Rights every valid token has, same shape, e.g. `{"#public-*":["read"]}`.
    #[arg(long, env = "AUTH_DEFAULT_RIGHTS", default_value = "{}")]
    pub auth_default_rights: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[arg(long, env = "AUTH_LEEWAY_SECS", default_value_t = 30)]
    pub auth_leeway_secs: u64,
    /// Seconds after which a cached JWKS is fetched again.
    #[arg(long, env = "AUTH_JWKS_REFRESH_SECS", default_value_t = 300)]
    pub auth_jwks_refresh_secs: u64,
    /// UNSAFE outside development: `POST /dev/token {"name": …}` signs a short-lived HS256 token
    /// for anyone who asks (the demo page signs in with it).
    #[arg(long, env = "AUTH_DEV_TOKENS", default_value_t = false)]
    pub auth_dev_tokens: bool,
    /// Browser origins allowed to open WebSockets, comma separated: exact
    /// (`https://chat.example.com`) or one leading wildcard label (`https://*.example.com`).
    /// Empty: only the request's own host.
    #[arg(long, env = "WS_ALLOWED_ORIGINS", default_value = "")]
    pub ws_allowed_origins: String,
    /// Origins allowed to call the REST API from a browser (CORS), same syntax; empty: none.
    #[arg(long, env = "CORS_ALLOWED_ORIGINS", default_value = "")]
    pub cors_allowed_origins: String,
}

impl AuthSettings {
    /// Anonymous mode, for tests and benchmarks that do not exercise identity.
    pub fn anonymous() -> Self {
        Self {
            auth_mode: AuthMode::Anonymous,
            auth_jwt_secret: None,
            auth_jwt_secret_file: None,
            auth_jwt_public_key: None,
            auth_jwt_public_key_file: None,
            auth_jwks_url: None,
            auth_issuer: None,
            auth_audience: None,
            auth_rights_claim: "chat".into(),
            auth_default_rights: "{}".into(),
            auth_leeway_secs: 30,
            auth_jwks_refresh_secs: 300,
            auth_dev_tokens: false,
            ws_allowed_origins: String::new(),
            cors_allowed_origins: String::new(),
        }
    }

    /// JWT mode with an HS256 secret, for tests.
    pub fn hs256(secret: &str) -> Self {
        Self {
            auth_mode: AuthMode::Jwt,
            auth_jwt_secret: Some(secret.to_owned()),
            ..Self::anonymous()
        }
    }

    /// Builds the gate; fails (the service refuses to start) on a JWT mode without a key
    /// source, an unreadable file, a bad key or bad default rights.
    pub fn gate(&self) -> anyhow::Result<Gate> {
        let origins = Origins::parse(&self.ws_allowed_origins).context("WS_ALLOWED_ORIGINS")?;
        if self.auth_mode == AuthMode::Anonymous {
            tracing::warn!(
                "AUTH_MODE=anonymous: anyone who reaches this server reads every channel and \
                 publishes anywhere under any author"
            );
            return Ok(Gate::anonymous(origins));
        }
        let secret = read_either(&self.auth_jwt_secret, &self.auth_jwt_secret_file)
            .context("AUTH_JWT_SECRET_FILE")?;
        let public_key = read_either(&self.auth_jwt_public_key, &self.auth_jwt_public_key_file)
            .context("AUTH_JWT_PUBLIC_KEY_FILE")?;
        if self.auth_dev_tokens && secret.is_none() {
            anyhow::bail!("AUTH_DEV_TOKENS needs AUTH_JWT_SECRET (dev tokens are HS256)");
        }
        let config = AuthConfig {
            secret: secret.map(String::into_bytes),
            public_key_pem: public_key,
            jwks_url: self.auth_jwks_url.clone().filter(|url| !url.is_empty()),
            issuer: self.auth_issuer.clone().filter(|s| !s.is_empty()),
            audience: self.auth_audience.clone().filter(|s| !s.is_empty()),
            leeway: Duration::from_secs(self.auth_leeway_secs),
            rights_claim: self.auth_rights_claim.clone(),
            default_rights: self.auth_default_rights.clone(),
            jwks_refresh: Duration::from_secs(self.auth_jwks_refresh_secs.max(1)),
            ..AuthConfig::new()
        };
        let verifier = Verifier::new(config).context(
            "AUTH_MODE=jwt needs a key: AUTH_JWT_SECRET(_FILE), AUTH_JWT_PUBLIC_KEY(_FILE) or \
             AUTH_JWKS_URL",
        )?;
        if self.auth_dev_tokens {
            tracing::warn!(
                "AUTH_DEV_TOKENS=true: POST /dev/token signs a token for anyone (development only)"
            );
        }
        Ok(Gate::jwt(verifier, origins, self.auth_dev_tokens))
    }
}

impl AuthSettings {
    /// The origins whose browsers may call the REST API (CORS); `None` when none is configured
    /// (no CORS headers at all: same-origin only).
    pub fn cors(&self) -> anyhow::Result<Option<Origins>> {
        let origins = Origins::parse(&self.cors_allowed_origins).context("CORS_ALLOWED_ORIGINS")?;
        Ok((!origins.is_empty()).then_some(origins))
    }
}

/// A value given directly or in a file (trailing newline trimmed); the direct one wins.
fn read_either(value: &Option<String>, file: &Option<PathBuf>) -> anyhow::Result<Option<String>> {
    if let Some(value) = value.as_ref().filter(|v| !v.is_empty()) {
        return Ok(Some(value.clone()));
    }
    let Some(path) = file else {
        return Ok(None);
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let text = text.trim_end_matches(['\n', '\r']).to_owned();
    Ok(Some(text).filter(|t| !t.is_empty()))
}
