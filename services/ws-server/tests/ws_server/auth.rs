//! Identity against the real stack (HS256 tokens): who may connect, what each token may do,
//! authors nobody can forge, refresh and expiry, origins, the development sign-in and the page's
//! security headers. The verifier's own cases (every refused token shape, RS256/ES256/EdDSA,
//! JWKS rotation against a local JWKS server) are unit tests in `src/auth/tests`.

use std::time::Duration;

use chat_ws_server::auth::settings::AuthSettings;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Error as WsError;

use crate::support::{Client, Ended, Stack};

const SECRET: &str = "test-secret-of-the-identity-tests";

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// An HS256 token for `sub` / `name` with these rights, valid for `ttl` seconds.
fn token_with(claims: Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn token(name: &str, rights: Value, ttl: u64) -> String {
    token_with(
        json!({"sub": format!("user-{name}"), "name": name, "exp": now() + ttl,
        "chat": rights}),
    )
}

async fn jwt_stack(configure: impl FnOnce(&mut AuthSettings)) -> Stack {
    let mut auth = AuthSettings::hs256(SECRET);
    configure(&mut auth);
    Stack::start_with(move |settings| settings.auth = auth).await
}

/// Opens `/ws` with extra headers and query; the HTTP status when the upgrade is refused.
async fn open(stack: &Stack, query: &str, headers: &[(&str, &str)]) -> Result<Client, u16> {
    let mut request = format!("ws://{}/ws{query}", stack.ws_addr)
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        let name =
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap();
        request
            .headers_mut()
            .insert(name, HeaderValue::from_str(value).unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(Client { socket }),
        Err(WsError::Http(response)) => Err(response.status().as_u16()),
        Err(other) => panic!("unexpected websocket error {other}"),
    }
}

async fn with_bearer(stack: &Stack, token: &str) -> Client {
    open(stack, "", &[("authorization", &format!("Bearer {token}"))])
        .await
        .expect("a valid token is admitted")
}

async fn rest(
    stack: &Stack,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> (u16, Value, Option<String>) {
    let client = reqwest::Client::new();
    let mut request = match method {
        "GET" => client.get(stack.http(path)),
        _ => client.post(stack.http(path)).json(&body),
    };
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body, challenge)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_valid_token_are_refused_before_the_upgrade_and_on_every_route() {
    let stack = jwt_stack(|_| {}).await;
    let rights = json!({"#room": ["read", "publish"]});
    let forged = encode(
        &Header::default(),
        &json!({"sub": "u", "name": "mallory", "exp": now() + 60, "chat": rights}),
        &EncodingKey::from_secret(b"another secret").unwrap(),
    )
    .unwrap();
    let expired =
        token_with(json!({"sub": "u", "name": "alice", "exp": now() - 120, "chat": rights}));
    let not_yet = token_with(
        json!({"sub": "u", "name": "alice", "exp": now() + 600, "nbf": now() + 300, "chat": rights}),
    );
    let unsigned = {
        use base64::Engine;
        let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!(
            "{}.{}.",
            b64(json!({"alg": "none", "typ": "JWT"})),
            b64(json!({"sub": "u", "name": "alice", "exp": now() + 60, "chat": rights}))
        )
    };
    let cases: [(Option<&str>, &str); 5] = [
        (None, "missing_token"),
        (Some(&forged), "invalid_token"),
        (Some(&expired), "token_expired"),
        (Some(&not_yet), "token_not_yet_valid"),
        (Some(&unsigned), "invalid_token"),
    ];
    for (token, code) in cases {
        let headers: Vec<(&str, String)> = token
            .map(|t| vec![("authorization", format!("Bearer {t}"))])
            .unwrap_or_default();
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        assert_eq!(
            open(&stack, "", &headers).await.err(),
            Some(401),
            "{code} over WebSocket"
        );
        for method in ["GET", "POST"] {
            let (status, body, challenge) = rest(
                &stack,
                method,
                "/channels/%23room/messages",
                token,
                json!({"text": "hi"}),
            )
            .await;
            assert_eq!(
                (status, body["code"].as_str()),
                (401, Some(code)),
                "{method} {body}"
            );
            assert!(
                challenge.is_some_and(|c| c.starts_with("Bearer")),
                "WWW-Authenticate"
            );
            assert!(
                !body.to_string().contains(token.unwrap_or("-no-token-")),
                "the token is never echoed"
            );
        }
    }
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_query_token_gets_the_upgrade_and_an_immediate_close_4001() {
    let stack = jwt_stack(|_| {}).await;
    let mut client = open(&stack, "?token=not.a.jwt", &[])
        .await
        .expect("upgraded");
    assert_eq!(client.until_closed().await, Ended::Closed(4001));
    let good = token("ada", json!({"room": ["read"]}), 60);
    let mut client = open(&stack, &format!("?token={good}"), &[]).await.unwrap();
    client
        .subscribe(json!({"command": "subscribe", "channel": "room"}))
        .await;
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rights_decide_every_command_and_route_and_the_author_comes_from_the_token() {
    let stack =
        jwt_stack(|auth| auth.auth_default_rights = r##"{"#public-*":["read"]}"##.into()).await;
    let alice = token(
        "alice",
        json!({"#open": ["read", "publish"], "#ro": ["read"]}),
        120,
    );
    let mut client = with_bearer(&stack, &alice).await;
    for channel in ["#open", "#ro", "#public-news"] {
        client
            .subscribe(json!({"command": "subscribe", "channel": channel}))
            .await;
    }
    for command in [
        json!({"command": "subscribe", "channel": "#secret", "id": 1}),
        json!({"command": "subscribe", "channel": "#secret", "since": 0, "id": 2}),
        json!({"command": "publish", "channel": "#ro", "text": "no", "id": 3}),
        json!({"command": "publish", "channel": "#public-news", "text": "no", "id": 4}),
    ] {
        client.send(command.clone()).await;
        let reply = client.recv().await;
        assert_eq!(reply["code"], "forbidden", "{command}: {reply}");
        assert_eq!(reply["reply_to"], command["id"]);
    }
    // A forged author is ignored: the token names the author and the user.
    client
        .send(
            json!({"command": "publish", "channel": "#open", "author": "mallory",
            "text": "over the socket", "id": 5}),
        )
        .await;
    assert_eq!(client.recv().await["type"], "published");
    let live = client.recv().await;
    assert_eq!(live["type"], "message", "{live}");
    assert_eq!(live["message"]["author"], "alice");
    assert_eq!(live["message"]["user_id"], "user-alice");

    let (status, body, _) = rest(
        &stack,
        "GET",
        "/channels/%23secret/messages",
        Some(&alice),
        Value::Null,
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
    let (status, _, _) = rest(
        &stack,
        "POST",
        "/channels/%23ro/messages",
        Some(&alice),
        json!({"text": "no"}),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _, _) = rest(
        &stack,
        "POST",
        "/channels/%23open/messages",
        Some(&alice),
        json!({"author": "mallory", "text": "over http"}),
    )
    .await;
    assert_eq!(status, 202);
    let live = client.recv().await;
    assert_eq!(live["message"]["author"], "alice", "{live}");
    stack.wait_stored("#open", 2).await;
    let (status, page, _) = rest(
        &stack,
        "GET",
        "/channels/%23open/messages",
        Some(&alice),
        Value::Null,
    )
    .await;
    assert_eq!(status, 200);
    for message in page["messages"].as_array().unwrap() {
        assert_eq!(message["author"], "alice", "{message}");
        assert_eq!(message["user_id"], "user-alice", "{message}");
    }
    client.send(json!({"command": "ping", "id": "alive"})).await;
    assert_eq!(
        client.recv().await["type"],
        "pong",
        "a denial never closes the connection"
    );
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_keeps_the_connection_and_a_right_it_removes_ends_that_subscription() {
    let stack = jwt_stack(|auth| auth.auth_leeway_secs = 0).await;
    let both = token("bob", json!({"#a": ["read", "publish"], "#b": ["read"]}), 3);
    let mut client = with_bearer(&stack, &both).await;
    for channel in ["#a", "#b"] {
        client
            .subscribe(json!({"command": "subscribe", "channel": channel}))
            .await;
    }
    let only_a = token("bob", json!({"#a": ["read", "publish"]}), 120);
    client
        .send(json!({"command": "auth", "token": only_a, "id": "refresh"}))
        .await;
    let ended = client.recv().await;
    assert_eq!(
        (
            ended["type"].as_str(),
            ended["channel"].as_str(),
            ended["reason"].as_str()
        ),
        (Some("unsubscribed"), Some("#b"), Some("forbidden")),
        "{ended}"
    );
    let refreshed = client.recv().await;
    assert_eq!(refreshed["type"], "authenticated", "{refreshed}");
    assert_eq!(refreshed["user_id"], "user-bob");
    // Past the first token's expiry the connection and its other subscription live on.
    tokio::time::sleep(Duration::from_secs(4)).await;
    client
        .send(json!({"command": "publish", "channel": "#a", "text": "still here"}))
        .await;
    assert_eq!(client.recv().await["type"], "published");
    assert_eq!(client.recv().await["message"]["text"], "still here");
    client
        .send(json!({"command": "auth", "token": "garbage", "id": 9}))
        .await;
    let refused = client.recv().await;
    assert_eq!(refused["code"], "invalid_token", "{refused}");
    client.send(json!({"command": "ping"})).await;
    assert_eq!(
        client.recv().await["type"],
        "pong",
        "a refused refresh keeps the current token"
    );
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_token_expires_without_a_refresh_the_server_says_so_and_closes_with_4001() {
    let stack = jwt_stack(|auth| auth.auth_leeway_secs = 0).await;
    let short = token("carol", json!({"room": ["read"]}), 2);
    let mut client = with_bearer(&stack, &short).await;
    client
        .subscribe(json!({"command": "subscribe", "channel": "room"}))
        .await;
    let expired = client.recv().await;
    assert_eq!(
        (expired["type"].as_str(), expired["code"].as_str()),
        (Some("error"), Some("token_expired")),
        "{expired}"
    );
    assert_eq!(client.until_closed().await, Ended::Closed(4001));
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_from_another_origin_is_refused_and_allowed_origins_are_not() {
    let stack = jwt_stack(|auth| auth.ws_allowed_origins = "https://*.example.com".into()).await;
    let good = token("dan", json!({"*": ["read"]}), 60);
    let bearer = format!("Bearer {good}");
    let from = |origin: &'static str| {
        vec![
            ("authorization", bearer.clone()),
            ("origin", origin.to_owned()),
        ]
    };
    for (origin, admitted) in [
        ("https://evil.example", false),
        ("https://example.com", false),
        ("https://chat.example.com", true),
    ] {
        let headers = from(origin);
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let result = open(&stack, "", &headers).await;
        assert_eq!(result.is_ok(), admitted, "{origin}: {:?}", result.err());
        if !admitted {
            assert_eq!(result.err(), Some(403));
        }
    }
    stack.finish().await;

    // Without a list, only the server's own host.
    let stack = jwt_stack(|_| {}).await;
    let own = format!("http://{}", stack.ws_addr);
    let headers = [("authorization", bearer.as_str()), ("origin", own.as_str())];
    assert!(open(&stack, "", &headers).await.is_ok(), "own origin");
    let headers = [
        ("authorization", bearer.as_str()),
        ("origin", "http://localhost:1"),
    ];
    assert_eq!(open(&stack, "", &headers).await.err(), Some(403));
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_signs_in_through_the_development_endpoint_only_when_it_is_on() {
    let stack = jwt_stack(|auth| auth.auth_dev_tokens = true).await;
    let http = reqwest::Client::new();
    let response = http
        .post(stack.http("/dev/token"))
        .json(&json!({"name": "erin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.unwrap();
    let token = body["token"].as_str().unwrap().to_owned();
    assert!(body["expires_in"].as_u64().unwrap() > 60);
    let mut client = open(&stack, &format!("?token={token}"), &[]).await.unwrap();
    client
        .subscribe(json!({"command": "subscribe", "channel": "#anything"}))
        .await;
    client
        .send(json!({"command": "publish", "channel": "#anything", "author": "x", "text": "hi"}))
        .await;
    assert_eq!(client.recv().await["type"], "published");
    assert_eq!(client.recv().await["message"]["author"], "erin");
    let bad = http
        .post(stack.http("/dev/token"))
        .json(&json!({"name": ""}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    // The body is bounded before it is read.
    let huge = http
        .post(stack.http("/dev/token"))
        .header("content-type", "application/json")
        .body(format!(r#"{{"name": "{}"}}"#, "x".repeat(64 * 1024)))
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status().as_u16(), 413);
    let body: Value = huge.json().await.unwrap();
    assert_eq!(body["code"], "payload_too_large", "{body}");
    stack.finish().await;

    let stack = jwt_stack(|_| {}).await;
    let off = http
        .post(stack.http("/dev/token"))
        .json(&json!({"name": "erin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(off.status().as_u16(), 404, "off unless AUTH_DEV_TOKENS");
    // A page without a token cannot subscribe: its socket never opens.
    assert_eq!(open(&stack, "", &[]).await.err(), Some(401));
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_carry_security_headers_and_the_spec_declares_the_bearer_scheme() {
    let stack = jwt_stack(|_| {}).await;
    for path in ["/", "/app.js", "/app.css", "/docs"] {
        let response = reqwest::get(stack.http(path)).await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{path}");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        let policy = header("content-security-policy");
        assert!(
            policy.contains("frame-ancestors 'none'"),
            "{path}: {policy}"
        );
        let script_src = policy
            .split(';')
            .find(|d| d.trim().starts_with("script-src"))
            .unwrap_or_default()
            .to_owned();
        assert!(
            !script_src.contains("unsafe-inline"),
            "{path}: {script_src}"
        );
        if path == "/docs" {
            assert!(script_src.contains("'sha256-"), "{path}: {script_src}");
        }
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header("referrer-policy"), "no-referrer", "{path}");
    }
    let spec: Value = reqwest::get(stack.http("/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        spec["components"]["securitySchemes"]["bearerAuth"]["scheme"],
        "bearer"
    );
    let operation = &spec["paths"]["/channels/{channel}/messages"];
    assert_eq!(operation["get"]["security"][0]["bearerAuth"], json!([]));
    assert_eq!(operation["post"]["security"][0]["bearerAuth"], json!([]));
    assert!(operation["get"]["responses"]["401"].is_object());
    assert!(operation["post"]["responses"]["403"].is_object());
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_answers_only_the_configured_origins() {
    let preflight = |stack: &Stack, origin: &'static str| {
        let request = reqwest::Client::new()
            .request(
                reqwest::Method::OPTIONS,
                stack.http("/channels/room/messages"),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            );
        async move {
            let response = request.send().await.unwrap();
            response
                .headers()
                .get("access-control-allow-origin")
                .map(|v| v.to_str().unwrap().to_owned())
        }
    };
    let stack =
        jwt_stack(|auth| auth.cors_allowed_origins = "https://app.example.com".into()).await;
    assert_eq!(
        preflight(&stack, "https://app.example.com")
            .await
            .as_deref(),
        Some("https://app.example.com")
    );
    assert_eq!(preflight(&stack, "https://evil.example").await, None);
    stack.finish().await;

    let stack = jwt_stack(|_| {}).await;
    assert_eq!(
        preflight(&stack, "https://app.example.com").await,
        None,
        "no CORS by default"
    );
    stack.finish().await;
}
