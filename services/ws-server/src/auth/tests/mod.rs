//! Unit tests of the identity core, with helpers to sign tokens. The keys under `testdata/` are
//! test-only keys generated with `openssl genpkey`.
//!
//! - `tokens`: static keys (secret, PEM): accepted algorithms, every refusal, rights, dev tokens.
//! - `jwks`: a tiny local JWKS server: kid selection, new and removed keys, rate limit.

mod jwks;
mod tokens;

use std::time::Duration;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::{AuthConfig, AuthError, Verifier};

pub(super) const RSA_PRIVATE: &str = include_str!("../testdata/test_only_rsa_private.pem");
pub(super) const RSA_PUBLIC: &str = include_str!("../testdata/test_only_rsa_public.pem");
pub(super) const EC_PRIVATE: &str = include_str!("../testdata/test_only_ec_p256_private.pem");
pub(super) const EC_PUBLIC: &str = include_str!("../testdata/test_only_ec_p256_public.pem");
pub(super) const ED_PRIVATE: &str = include_str!("../testdata/test_only_ed25519_private.pem");
pub(super) const ED_PUBLIC: &str = include_str!("../testdata/test_only_ed25519_public.pem");
pub(super) const SECRET: &[u8] = b"test-only-shared-secret-of-32-bytes!";

pub(super) fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Valid claims: `sub`, `name`, `exp` in an hour, `iat`; `extra` fields are added or replace.
pub(super) fn claims(extra: Value) -> Value {
    let mut claims = json!({"sub": "user-1", "name": "Ada", "exp": now() + 3600, "iat": now()});
    if let (Value::Object(base), Value::Object(extra)) = (&mut claims, extra) {
        base.extend(extra);
    }
    claims
}

pub(super) fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, key).unwrap()
}

pub(super) fn hs256(claims: &Value) -> String {
    hmac(Algorithm::HS256, SECRET, None, claims)
}

/// A token signed with `secret` as an HMAC key under `alg` (HS256, HS384).
pub(super) fn hmac(alg: Algorithm, secret: &[u8], kid: Option<&str>, claims: &Value) -> String {
    sign(alg, &EncodingKey::from_secret(secret).unwrap(), kid, claims)
}

pub(super) fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap()
}

pub(super) fn ec_key() -> EncodingKey {
    EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap()
}

pub(super) fn ed_key() -> EncodingKey {
    EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap()
}

/// The test-only private key for `alg`: RS256, ES256, else Ed25519.
pub(super) fn private_key(alg: Algorithm) -> EncodingKey {
    match alg {
        Algorithm::RS256 => rsa_key(),
        Algorithm::ES256 => ec_key(),
        _ => ed_key(),
    }
}

pub(super) fn secret_config() -> AuthConfig {
    AuthConfig {
        secret: Some(SECRET.to_vec()),
        ..AuthConfig::new()
    }
}

pub(super) fn verifier(config: AuthConfig) -> Verifier {
    Verifier::new(config).unwrap()
}

/// Verifies a token that must be refused; returns the error's code, after checking that the
/// message does not contain the token nor its signature.
pub(super) async fn refused(verifier: &Verifier, token: &str) -> &'static str {
    let err: AuthError = verifier
        .verify(token)
        .await
        .expect_err("the token must be refused");
    let message = err.to_string();
    let signature = token.rsplit('.').next().unwrap_or_default();
    assert!(!message.contains(token), "the message contains the token");
    assert!(
        signature.len() < 8 || !message.contains(signature),
        "the message contains the signature"
    );
    err.code()
}

pub(super) const HOUR: Duration = Duration::from_secs(3600);
