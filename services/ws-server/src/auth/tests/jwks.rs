//! The JWKS key source against a tiny local HTTP server that answers every GET with the
//! current key set and counts the requests.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::Algorithm;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

struct JwksServer {
    url: String,
    body: Arc<Mutex<String>>,
    requests: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(keys: &[Jwk]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let server = Self {
            url,
            body: Arc::new(Mutex::new(String::new())),
            requests: Arc::new(AtomicUsize::new(0)),
        };
        server.set(keys);
        let (body, requests) = (server.body.clone(), server.requests.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (body, requests) = (body.clone(), requests.clone());
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    requests.fetch_add(1, Ordering::SeqCst);
                    let body = body.lock().unwrap().clone();
                    let (status, body) = match body.strip_prefix("status:") {
                        Some(status) => (status.to_owned(), String::new()),
                        None => ("200 OK".to_owned(), body),
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        server
    }

    fn set(&self, keys: &[Jwk]) {
        let set = JwkSet {
            keys: keys.to_vec(),
        };
        *self.body.lock().unwrap() = serde_json::to_string(&set).unwrap();
    }

    fn fail_with(&self, status: &str) {
        *self.body.lock().unwrap() = format!("status:{status}");
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn verifier(&self, refresh: Duration, min_refetch: Duration) -> Verifier {
        verifier(AuthConfig {
            jwks_url: Some(self.url.clone()),
            jwks_refresh: refresh,
            jwks_min_refetch: min_refetch,
            ..AuthConfig::new()
        })
    }
}

fn jwk(kid: &str, alg: Algorithm) -> Jwk {
    let mut jwk = Jwk::from_encoding_key(&private_key(alg), alg).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    jwk
}

fn token(kid: Option<&str>, alg: Algorithm) -> String {
    sign(alg, &private_key(alg), kid, &claims(json!({})))
}

const LONG: Duration = Duration::from_secs(600);

#[tokio::test]
async fn a_kid_in_the_set_is_accepted_and_a_new_kid_without_a_new_verifier() {
    let server = JwksServer::start(&[jwk("rsa-1", Algorithm::RS256)]).await;
    let verifier = server.verifier(LONG, Duration::from_millis(50));
    assert!(verifier
        .verify(&token(Some("rsa-1"), Algorithm::RS256))
        .await
        .is_ok());
    assert_eq!(server.requests(), 1);
    server.set(&[
        jwk("rsa-1", Algorithm::RS256),
        jwk("ec-1", Algorithm::ES256),
    ]);
    tokio::time::sleep(Duration::from_millis(80)).await;
    let id = verifier
        .verify(&token(Some("ec-1"), Algorithm::ES256))
        .await;
    assert_eq!(id.unwrap().user_id(), "user-1");
    assert_eq!(server.requests(), 2);
    // Known kids are served from the cache.
    assert!(verifier
        .verify(&token(Some("rsa-1"), Algorithm::RS256))
        .await
        .is_ok());
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn a_removed_kid_is_refused_once_the_refresh_interval_passed() {
    let server = JwksServer::start(&[
        jwk("rsa-1", Algorithm::RS256),
        jwk("ed-1", Algorithm::EdDSA),
    ])
    .await;
    let verifier = server.verifier(Duration::from_millis(200), Duration::from_millis(50));
    let ed = token(Some("ed-1"), Algorithm::EdDSA);
    assert!(verifier.verify(&ed).await.is_ok());
    server.set(&[jwk("rsa-1", Algorithm::RS256)]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(refused(&verifier, &ed).await, "invalid_token");
    assert!(verifier
        .verify(&token(Some("rsa-1"), Algorithm::RS256))
        .await
        .is_ok());
}

#[tokio::test]
async fn a_flood_of_unknown_kids_causes_at_most_a_couple_of_fetches() {
    let server = JwksServer::start(&[jwk("rsa-1", Algorithm::RS256)]).await;
    let verifier = server.verifier(LONG, Duration::from_secs(60));
    assert!(verifier
        .verify(&token(Some("rsa-1"), Algorithm::RS256))
        .await
        .is_ok());
    let tokens: Vec<String> = (0..100)
        .map(|i| token(Some(&format!("random-{i}")), Algorithm::RS256))
        .collect();
    let results =
        futures::future::join_all(tokens.iter().map(|token| verifier.verify(token))).await;
    for result in results {
        assert_eq!(result.unwrap_err().code(), "invalid_token");
    }
    assert!(server.requests() <= 2, "{} fetches", server.requests());
}

#[tokio::test]
async fn a_failed_fetch_keeps_the_last_good_set() {
    let server = JwksServer::start(&[jwk("rsa-1", Algorithm::RS256)]).await;
    let verifier = server.verifier(Duration::from_millis(100), Duration::from_millis(10));
    let rsa = token(Some("rsa-1"), Algorithm::RS256);
    assert!(verifier.verify(&rsa).await.is_ok());
    server.fail_with("500 Internal Server Error");
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(verifier.verify(&rsa).await.is_ok());
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn an_unreachable_jwks_means_keys_unavailable() {
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let verifier = verifier(AuthConfig {
        jwks_url: Some(format!("http://127.0.0.1:{port}/jwks.json")),
        ..AuthConfig::new()
    });
    let err = verifier
        .verify(&token(Some("rsa-1"), Algorithm::RS256))
        .await
        .unwrap_err();
    assert_eq!(err, AuthError::KeysUnavailable);
    assert!(err.is_server_side());
}

#[tokio::test]
async fn kid_is_required_when_the_set_has_more_than_one_key() {
    let server = JwksServer::start(&[jwk("rsa-1", Algorithm::RS256)]).await;
    let verifier = server.verifier(LONG, Duration::from_millis(10));
    assert!(verifier
        .verify(&token(None, Algorithm::RS256))
        .await
        .is_ok());
    let two = JwksServer::start(&[
        jwk("rsa-1", Algorithm::RS256),
        jwk("ec-1", Algorithm::ES256),
    ])
    .await;
    let verifier = two.verifier(LONG, Duration::from_millis(10));
    assert_eq!(
        refused(&verifier, &token(None, Algorithm::RS256)).await,
        "invalid_token"
    );
}

#[tokio::test]
async fn a_kid_pins_its_key_algorithm() {
    let server = JwksServer::start(&[jwk("rsa-1", Algorithm::RS256)]).await;
    let verifier = server.verifier(LONG, Duration::from_millis(10));
    // The RSA public key's PEM as an HMAC secret, under the RSA key's kid.
    let attack = hmac(
        Algorithm::HS256,
        RSA_PUBLIC.as_bytes(),
        Some("rsa-1"),
        &claims(json!({})),
    );
    assert_eq!(refused(&verifier, &attack).await, "invalid_token");
}

#[tokio::test]
async fn symmetric_keys_in_a_jwks_are_ignored() {
    let oct: Jwk = serde_json::from_value(json!({
        "kty": "oct", "kid": "hs-1", "alg": "HS256", "k": "dGVzdC1vbmx5LXNoYXJlZC1zZWNyZXQ"
    }))
    .unwrap();
    let server = JwksServer::start(&[oct]).await;
    let verifier = server.verifier(LONG, Duration::from_millis(10));
    let hs = hmac(
        Algorithm::HS256,
        b"test-only-shared-secret",
        Some("hs-1"),
        &claims(json!({})),
    );
    assert_eq!(refused(&verifier, &hs).await, "invalid_token");
}
