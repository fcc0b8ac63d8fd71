//! Verification keys, each pinned to exactly one algorithm: the shared secret (HS256), a PEM
//! public key (RS256, ES256/ES384 or EdDSA from the key's type) and a JWK (its `alg`, else
//! from its key type).
//!
//! A token's header `alg` must equal its key's algorithm; that is what stops an attacker from
//! using a public key's bytes as an HMAC secret.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

use super::error::ConfigError;

/// A decoding key and the one algorithm it accepts.
#[derive(Clone)]
pub(crate) struct PinnedKey {
    pub(crate) alg: Algorithm,
    pub(crate) key: DecodingKey,
}

impl std::fmt::Debug for PinnedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedKey")
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl PinnedKey {
    /// The shared secret, for HS256.
    pub(crate) fn from_secret(secret: &[u8]) -> Result<Self, ConfigError> {
        let key = DecodingKey::from_secret(secret).map_err(|_| ConfigError::EmptySecret)?;
        Ok(Self {
            alg: Algorithm::HS256,
            key,
        })
    }

    /// One PEM public key (`PUBLIC KEY`, or PKCS#1 `RSA PUBLIC KEY`); its type picks the
    /// algorithm: RSA -> RS256, EC P-256 -> ES256, EC P-384 -> ES384, Ed25519 -> EdDSA.
    pub(crate) fn from_pem(pem: &str) -> Result<Self, ConfigError> {
        let trimmed = pem.trim_start();
        if !(trimmed.starts_with("-----BEGIN PUBLIC KEY-----")
            || trimmed.starts_with("-----BEGIN RSA PUBLIC KEY-----"))
        {
            return Err(ConfigError::InvalidPem(
                "expected one public key (BEGIN PUBLIC KEY or BEGIN RSA PUBLIC KEY)",
            ));
        }
        let bytes = pem.as_bytes();
        if let Ok(key) = DecodingKey::from_rsa_pem(bytes) {
            return Ok(Self {
                alg: Algorithm::RS256,
                key,
            });
        }
        if let Ok(key) = DecodingKey::from_ec_pem(bytes) {
            // The uncompressed point: 0x04, x and y of 32 (P-256) or 48 (P-384) bytes.
            let alg = match key.try_get_as_bytes().map(<[u8]>::len) {
                Ok(65) => Algorithm::ES256,
                Ok(97) => Algorithm::ES384,
                _ => return Err(ConfigError::InvalidPem("unsupported EC curve")),
            };
            return Ok(Self { alg, key });
        }
        if let Ok(key) = DecodingKey::from_ed_pem(bytes) {
            return Ok(Self {
                alg: Algorithm::EdDSA,
                key,
            });
        }
        Err(ConfigError::InvalidPem(
            "not an RSA, EC or Ed25519 public key",
        ))
    }

    /// One key of a JWKS. Symmetric (`oct`) keys and encryption keys are refused: a key set is
    /// public, so a secret in it would let anyone sign.
    pub(crate) fn from_jwk(jwk: &Jwk) -> Result<Self, &'static str> {
        if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
            return Err("an encryption key (use: enc)");
        }
        let alg = match (jwk.common.key_algorithm, &jwk.algorithm) {
            (Some(declared), _) => {
                Algorithm::try_from(declared).map_err(|_| "an unsupported alg")?
            }
            (None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
            (None, AlgorithmParameters::EllipticCurve(ec)) => match ec.curve {
                EllipticCurve::P256 => Algorithm::ES256,
                EllipticCurve::P384 => Algorithm::ES384,
                _ => return Err("an unsupported EC curve"),
            },
            (None, AlgorithmParameters::OctetKeyPair(okp)) => match okp.curve {
                EllipticCurve::Ed25519 => Algorithm::EdDSA,
                _ => return Err("an unsupported OKP curve"),
            },
            (None, AlgorithmParameters::OctetKey(_)) => return Err("a symmetric key"),
            (None, _) => return Err("an unsupported key type"),
        };
        if alg.family() == AlgorithmFamily::Hmac {
            return Err("a symmetric key");
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|_| "an unreadable key")?;
        if key.family() != alg.family() {
            return Err("a key whose type does not match its alg");
        }
        Ok(Self { alg, key })
    }
}
