//! The errors of the identity core: why a token was refused ([`AuthError`], with a stable
//! machine code), why a configuration was refused ([`ConfigError`]) and why a dev token could not
//! be signed ([`DevTokenError`]).
//!
//! No message ever contains the token: only fixed reasons, claim names and, for a malformed
//! rights claim, the offending pattern or right name (shortened).

use std::fmt;

/// Why a token was refused. [`AuthError::code`] is stable (for clients and metrics), the
/// `Display` text is a human reason. Every variant means "not authenticated" (HTTP 401, close
/// 4001) except [`AuthError::KeysUnavailable`], which is the server's fault (HTTP 503).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token was given (empty or blank).
    #[error("a token is required")]
    MissingToken,
    /// Malformed, bad signature, `alg` refused or not matching its key, unknown `kid`.
    #[error("invalid token: {0}")]
    InvalidToken(&'static str),
    /// `exp` is in the past (beyond the leeway).
    #[error("the token has expired")]
    TokenExpired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("the token is not valid yet")]
    TokenNotYetValid,
    /// An issuer is configured and the token's `iss` is another one or missing.
    #[error("the token was issued by another issuer")]
    WrongIssuer,
    /// An audience is configured and the token's `aud` does not name it.
    #[error("the token is meant for another audience")]
    WrongAudience,
    /// A required claim (`exp`, `sub`) is missing or not of the right type.
    #[error("the token has no valid `{0}` claim")]
    MissingClaim(&'static str),
    /// Neither the `name` claim nor `sub` passes the author rule.
    #[error("the token names no valid author: neither `name` nor `sub` is a valid author name")]
    NoAuthor,
    /// The rights claim is malformed.
    #[error("invalid rights claim: {0}")]
    InvalidRights(String),
    /// The token needs a key from the JWKS and no key set could be fetched yet.
    #[error("the signing keys are unavailable; try again later")]
    KeysUnavailable,
}

impl AuthError {
    /// The stable machine code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::InvalidToken(_) => "invalid_token",
            AuthError::TokenExpired => "token_expired",
            AuthError::TokenNotYetValid => "token_not_yet_valid",
            AuthError::WrongIssuer => "wrong_issuer",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::MissingClaim(_) => "missing_claim",
            AuthError::NoAuthor => "no_author",
            AuthError::InvalidRights(_) => "invalid_rights",
            AuthError::KeysUnavailable => "keys_unavailable",
        }
    }

    /// True when the server, not the token, is at fault (answer 503, not 401).
    pub fn is_server_side(&self) -> bool {
        matches!(self, AuthError::KeysUnavailable)
    }

    /// Maps a `jsonwebtoken` validation error to ours, without its text.
    pub(crate) fn from_jwt(err: &jsonwebtoken::errors::Error) -> Self {
        use jsonwebtoken::errors::ErrorKind as K;
        match err.kind() {
            K::ExpiredSignature => AuthError::TokenExpired,
            K::ImmatureSignature => AuthError::TokenNotYetValid,
            K::InvalidIssuer => AuthError::WrongIssuer,
            K::InvalidAudience => AuthError::WrongAudience,
            K::MissingRequiredClaim(claim) => match claim.as_str() {
                "iss" => AuthError::WrongIssuer,
                "aud" => AuthError::WrongAudience,
                "exp" => AuthError::MissingClaim("exp"),
                "sub" => AuthError::MissingClaim("sub"),
                _ => AuthError::InvalidToken("a required claim is missing"),
            },
            K::InvalidClaimFormat(claim) => match claim.as_str() {
                "exp" => AuthError::MissingClaim("exp"),
                "sub" => AuthError::MissingClaim("sub"),
                _ => AuthError::InvalidToken("a registered claim has the wrong type"),
            },
            K::InvalidSignature => AuthError::InvalidToken("bad signature"),
            K::InvalidAlgorithm => AuthError::InvalidToken("the algorithm does not match the key"),
            _ => AuthError::InvalidToken("malformed token"),
        }
    }
}

/// Why an [`AuthConfig`](super::AuthConfig) was refused by [`Verifier::new`](super::Verifier::new).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("no key source: configure a shared secret, a public key PEM or a JWKS URL")]
    NoKeySource,
    #[error("the shared secret is empty")]
    EmptySecret,
    #[error("the public key PEM cannot be used: {0}")]
    InvalidPem(&'static str),
    #[error("the JWKS URL is not an http(s) URL")]
    InvalidJwksUrl,
    #[error("the default rights are invalid: {0}")]
    InvalidDefaultRights(String),
    #[error("the rights claim name is empty")]
    EmptyRightsClaim,
    #[error("the HTTP client for the JWKS cannot be built: {0}")]
    HttpClient(String),
}

/// Why [`Verifier::sign_dev_token`](super::Verifier::sign_dev_token) signed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DevTokenError {
    #[error("dev tokens need a shared secret and none is configured")]
    NoSecret,
    #[error("the name is not a valid author name")]
    InvalidName,
    #[error("the token could not be signed")]
    Signing,
}

/// Shortens attacker-controlled text before it goes into an error message.
pub(crate) fn shorten(text: &str) -> impl fmt::Display + '_ {
    struct Short<'a>(&'a str);
    impl fmt::Display for Short<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let mut chars = self.0.chars();
            let head: String = chars.by_ref().take(40).collect();
            let more = if chars.next().is_some() { "…" } else { "" };
            write!(f, "{head:?}{more}")
        }
    }
    Short(text)
}
