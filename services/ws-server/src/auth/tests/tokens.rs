//! Static keys (shared secret, one PEM public key): what is accepted, what is refused and with
//! which code, rights from claims and defaults, configuration errors, dev tokens.

use chat_core::channel::ChannelName;
use jsonwebtoken::Algorithm;
use serde_json::json;

use super::*;
use crate::auth::{ConfigError, DevTokenError, Right};

fn pem_config(pem: &str) -> AuthConfig {
    AuthConfig {
        public_key_pem: Some(pem.to_owned()),
        ..AuthConfig::new()
    }
}

fn ch(name: &str) -> ChannelName {
    ChannelName::parse(name).unwrap()
}

#[tokio::test]
async fn hs256_is_accepted_with_identity_and_expiry() {
    let exp = now() + 600;
    let token = hs256(&claims(json!({"exp": exp})));
    let id = verifier(secret_config()).verify(&token).await.unwrap();
    assert_eq!((id.user_id(), id.author()), ("user-1", "Ada"));
    assert_eq!(id.expires_at().timestamp(), exp);
    assert!(id.expires_in() > Duration::from_secs(590));
}

#[tokio::test]
async fn rs256_es256_and_eddsa_are_accepted_from_their_pem() {
    for (alg, key, pem) in [
        (Algorithm::RS256, rsa_key(), RSA_PUBLIC),
        (Algorithm::ES256, ec_key(), EC_PUBLIC),
        (Algorithm::EdDSA, ed_key(), ED_PUBLIC),
    ] {
        let token = sign(alg, &key, None, &claims(json!({})));
        let id = verifier(pem_config(pem)).verify(&token).await;
        assert_eq!(id.unwrap().author(), "Ada", "{alg:?}");
    }
}

#[tokio::test]
async fn a_signature_by_another_secret_is_refused() {
    let forged = hmac(
        Algorithm::HS256,
        b"another-secret",
        None,
        &claims(json!({})),
    );
    assert_eq!(
        refused(&verifier(secret_config()), &forged).await,
        "invalid_token"
    );
}

#[tokio::test]
async fn expired_and_not_yet_valid_tokens_are_refused_beyond_the_leeway() {
    let verifier = verifier(secret_config());
    let expired = hs256(&claims(json!({"exp": now() - 120})));
    assert_eq!(refused(&verifier, &expired).await, "token_expired");
    let early = hs256(&claims(json!({"nbf": now() + 120})));
    assert_eq!(refused(&verifier, &early).await, "token_not_yet_valid");
    // Within the 30 s leeway both are accepted.
    let just_expired = hs256(&claims(json!({"exp": now() - 5, "nbf": now() + 5})));
    assert!(verifier.verify(&just_expired).await.is_ok());
}

#[tokio::test]
async fn exp_is_required() {
    let mut no_exp = claims(json!({}));
    no_exp.as_object_mut().unwrap().remove("exp");
    let verifier = verifier(secret_config());
    assert_eq!(refused(&verifier, &hs256(&no_exp)).await, "missing_claim");
}

#[tokio::test]
async fn issuer_and_audience_are_checked_when_configured() {
    let verifier = verifier(AuthConfig {
        issuer: Some("https://idp.test".into()),
        audience: Some("chat".into()),
        ..secret_config()
    });
    let good = claims(json!({"iss": "https://idp.test", "aud": "chat"}));
    assert!(verifier.verify(&hs256(&good)).await.is_ok());
    let wrong_iss = claims(json!({"iss": "https://evil.test", "aud": "chat"}));
    assert_eq!(refused(&verifier, &hs256(&wrong_iss)).await, "wrong_issuer");
    let no_iss = claims(json!({"aud": "chat"}));
    assert_eq!(refused(&verifier, &hs256(&no_iss)).await, "wrong_issuer");
    let wrong_aud = claims(json!({"iss": "https://idp.test", "aud": "other"}));
    assert_eq!(
        refused(&verifier, &hs256(&wrong_aud)).await,
        "wrong_audience"
    );
    let no_aud = claims(json!({"iss": "https://idp.test"}));
    assert_eq!(refused(&verifier, &hs256(&no_aud)).await, "wrong_audience");
}

#[tokio::test]
async fn audience_is_not_required_when_unconfigured() {
    let token = hs256(&claims(json!({"aud": "whatever"})));
    assert!(verifier(secret_config()).verify(&token).await.is_ok());
}

#[tokio::test]
async fn alg_none_is_refused() {
    // base64url of {"alg":"none","typ":"JWT"}, a valid payload, an empty signature.
    let valid = hs256(&claims(json!({})));
    let payload = valid.split('.').nth(1).unwrap();
    let token = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
    assert_eq!(
        refused(&verifier(secret_config()), &token).await,
        "invalid_token"
    );
}

#[tokio::test]
async fn an_rsa_public_key_used_as_an_hmac_secret_is_refused() {
    let attack = hmac(
        Algorithm::HS256,
        RSA_PUBLIC.as_bytes(),
        None,
        &claims(json!({})),
    );
    let verifier = verifier(pem_config(RSA_PUBLIC));
    assert_eq!(refused(&verifier, &attack).await, "invalid_token");
}

#[tokio::test]
async fn an_algorithm_no_key_accepts_is_refused() {
    let es256 = sign(Algorithm::ES256, &ec_key(), None, &claims(json!({})));
    assert_eq!(
        refused(&verifier(pem_config(RSA_PUBLIC)), &es256).await,
        "invalid_token"
    );
    let hs384 = hmac(Algorithm::HS384, SECRET, None, &claims(json!({})));
    assert_eq!(
        refused(&verifier(secret_config()), &hs384).await,
        "invalid_token"
    );
}

#[tokio::test]
async fn missing_and_malformed_tokens_are_refused() {
    let verifier = verifier(secret_config());
    for blank in ["", "   "] {
        assert_eq!(
            verifier.verify(blank).await.unwrap_err().code(),
            "missing_token"
        );
    }
    for garbage in ["abc", "a.b.c", "not a jwt at all"] {
        assert_eq!(refused(&verifier, garbage).await, "invalid_token");
    }
}

#[tokio::test]
async fn sub_is_required() {
    let mut no_sub = claims(json!({}));
    no_sub.as_object_mut().unwrap().remove("sub");
    assert_eq!(
        refused(&verifier(secret_config()), &hs256(&no_sub)).await,
        "missing_claim"
    );
}

#[tokio::test]
async fn an_invalid_name_falls_back_to_sub_and_neither_is_no_author() {
    let verifier = verifier(secret_config());
    let bad_name = hs256(&claims(json!({"name": "tab\there"})));
    assert_eq!(verifier.verify(&bad_name).await.unwrap().author(), "user-1");
    let neither = hs256(&claims(json!({"name": "", "sub": "s".repeat(65)})));
    assert_eq!(refused(&verifier, &neither).await, "no_author");
}

#[tokio::test]
async fn a_malformed_rights_claim_or_unknown_right_is_refused() {
    let verifier = verifier(secret_config());
    for bad in [
        json!(["#general"]),
        json!({"#general": ["read", "admin"]}),
        json!({"#a b": []}),
    ] {
        let token = hs256(&claims(json!({"chat": bad})));
        assert_eq!(refused(&verifier, &token).await, "invalid_rights", "{bad}");
    }
}

#[tokio::test]
async fn rights_come_from_the_configured_claim_merged_with_the_defaults() {
    let verifier = verifier(AuthConfig {
        rights_claim: "perms".into(),
        default_rights: r##"{"#public-*": ["read"]}"##.into(),
        ..secret_config()
    });
    let token = hs256(&claims(json!({"perms": {"#team": ["read", "publish"]}})));
    let id = verifier.verify(&token).await.unwrap();
    assert!(id.allows(&ch("#team"), Right::Publish));
    assert!(id.allows(&ch("#public-news"), Right::Read));
    assert!(!id.allows(&ch("#public-news"), Right::Publish));
    assert!(!id.allows(&ch("#secret"), Right::Read));
    // No rights claim: the defaults only.
    let plain = verifier.verify(&hs256(&claims(json!({})))).await.unwrap();
    assert!(plain.allows(&ch("#public-x"), Right::Read));
    assert!(!plain.allows(&ch("#team"), Right::Read));
}

#[test]
fn configs_without_a_key_or_with_bad_pem_or_rights_are_refused() {
    let err = |config: AuthConfig| Verifier::new(config).unwrap_err();
    assert_eq!(err(AuthConfig::new()), ConfigError::NoKeySource);
    assert_eq!(
        err(AuthConfig {
            secret: Some(Vec::new()),
            ..AuthConfig::new()
        }),
        ConfigError::EmptySecret
    );
    for pem in [
        "nonsense",
        RSA_PRIVATE,
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    ] {
        assert!(matches!(err(pem_config(pem)), ConfigError::InvalidPem(_)));
    }
    let bad_rights = AuthConfig {
        default_rights: r#"{"*": ["write"]}"#.into(),
        ..secret_config()
    };
    assert!(matches!(
        err(bad_rights),
        ConfigError::InvalidDefaultRights(_)
    ));
    let bad_url = AuthConfig {
        jwks_url: Some("ftp://x".into()),
        ..AuthConfig::new()
    };
    assert_eq!(err(bad_url), ConfigError::InvalidJwksUrl);
    let shown = format!("{:?}", secret_config());
    assert!(!shown.contains("test-only-shared-secret"), "{shown}");
}

#[tokio::test]
async fn dev_tokens_verify_with_every_right_and_the_configured_iss_and_aud() {
    let verifier = verifier(AuthConfig {
        issuer: Some("chat-dev".into()),
        audience: Some("chat".into()),
        ..secret_config()
    });
    let token = verifier.sign_dev_token("Grace", HOUR).unwrap();
    let id = verifier.verify(&token).await.unwrap();
    assert_eq!((id.user_id(), id.author()), ("dev:Grace", "Grace"));
    assert!(id.allows(&ch("#anything"), Right::Publish));
    assert!(id.expires_in() > Duration::from_secs(3500));
    assert_eq!(
        verifier.sign_dev_token("", HOUR),
        Err(DevTokenError::InvalidName)
    );
    let no_secret = super::verifier(pem_config(RSA_PUBLIC));
    assert_eq!(
        no_secret.sign_dev_token("Grace", HOUR),
        Err(DevTokenError::NoSecret)
    );
}
