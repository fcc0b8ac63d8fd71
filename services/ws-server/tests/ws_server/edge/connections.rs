//! WebSocket connection caps: the process's (`WS_MAX_CONNECTIONS`, 503), one IP's
//! (`WS_MAX_CONNECTIONS_PER_IP`, 429) and one IP's connection rate
//! (`WS_CONNECTS_PER_IP_PER_SEC` / `WS_CONNECT_BURST_PER_IP`, 429), the client IP taken from
//! `X-Forwarded-For` only behind `TRUSTED_PROXIES`; every refusal counted.

use std::time::Instant;

use serde_json::json;

use super::{open_from, refused_from, source, Refused};
use crate::support::{Client, Stack, PATIENCE};

/// No per-IP limits: only what a test sets applies.
fn without_ip_limits(settings: &mut chat_ws_server::settings::Settings) {
    settings.admission.ws_max_connections_per_ip = 0;
    settings.admission.ws_connects_per_ip_per_sec = 0;
}

async fn refused_count(stack: &Stack, reason: &str) -> f64 {
    stack
        .metric(&format!(
            "chat_ws_connections_refused_total{{reason=\"{reason}\"}}"
        ))
        .await
}

async fn assert_alive(client: &mut Client) {
    client.send(json!({"command": "ping"})).await;
    assert_eq!(client.recv().await["type"], "pong");
}

fn assert_refused(refused: &Refused, status: u16, code: &str) {
    assert_eq!(refused.status, status, "{refused:?}");
    assert_eq!(refused.body["code"], code, "{refused:?}");
    assert!(
        refused.retry_after.is_some_and(|secs| secs >= 1),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_process_cap_an_upgrade_gets_503_until_a_connection_closes() {
    let stack = Stack::start_with(|settings| {
        without_ip_limits(settings);
        settings.admission.ws_max_connections = 3;
    })
    .await;
    let mut open = Vec::new();
    for n in 1..=3 {
        open.push(open_from(stack.ws_addr, source(n), &[]).await.unwrap());
    }
    let refused = refused_from(stack.ws_addr, source(4), &[]).await;
    assert_refused(&refused, 503, "server_full");
    assert_eq!(refused_count(&stack, "max_connections").await, 1.0);

    let mut closing = open.pop().unwrap();
    closing.socket.close(None).await.unwrap();
    closing.until_closed().await;
    // The slot is given back when the session has ended on the server.
    let deadline = Instant::now() + PATIENCE;
    let mut fourth = loop {
        match open_from(stack.ws_addr, source(4), &[]).await {
            Ok(client) => break client,
            Err(refused) => assert_refused(&refused, 503, "server_full"),
        }
        assert!(
            Instant::now() < deadline,
            "the closed connection's slot never came back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_alive(&mut fourth).await;
    for client in &mut open {
        assert_alive(client).await;
    }
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_cap_one_address_is_refused_while_another_still_connects() {
    let stack = Stack::start_with(|settings| {
        without_ip_limits(settings);
        settings.admission.ws_max_connections_per_ip = 2;
    })
    .await;
    let mut first = open_from(stack.ws_addr, source(1), &[]).await.unwrap();
    let _second = open_from(stack.ws_addr, source(1), &[]).await.unwrap();
    let refused = refused_from(stack.ws_addr, source(1), &[]).await;
    assert_refused(&refused, 429, "too_many_connections");
    let mut other = open_from(stack.ws_addr, source(2), &[]).await.unwrap();
    assert_alive(&mut other).await;
    assert_alive(&mut first).await;
    assert_eq!(refused_count(&stack, "ip_connections").await, 1.0);
    assert_eq!(refused_count(&stack, "max_connections").await, 0.0);
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_burst_one_address_gets_429_with_retry_after_while_another_still_connects() {
    let stack = Stack::start_with(|settings| {
        without_ip_limits(settings);
        settings.admission.ws_connects_per_ip_per_sec = 1;
        settings.admission.ws_connect_burst_per_ip = 3;
    })
    .await;
    // Connections that closed count as much as open ones: the rate is of new connections.
    for _ in 0..3 {
        let mut client = open_from(stack.ws_addr, source(1), &[]).await.unwrap();
        client.socket.close(None).await.unwrap();
    }
    let refused = refused_from(stack.ws_addr, source(1), &[]).await;
    assert_refused(&refused, 429, "rate_limited");
    let mut other = open_from(stack.ws_addr, source(2), &[]).await.unwrap();
    assert_alive(&mut other).await;
    assert!(refused_count(&stack, "ip_rate").await >= 1.0);
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_names_the_client_only_when_a_trusted_proxy_sent_it() {
    let proxy = source(2);
    let stack = Stack::start_with(move |settings| {
        without_ip_limits(settings);
        settings.admission.ws_max_connections_per_ip = 1;
        settings.admission.trusted_proxies = proxy.to_string();
    })
    .await;
    let via_proxy = |client: &'static str| [("x-forwarded-for", client)];

    // Behind the trusted proxy, each forwarded client has its own cap of one.
    let _alice = open_from(stack.ws_addr, proxy, &via_proxy("203.0.113.1"))
        .await
        .unwrap();
    let _bob = open_from(stack.ws_addr, proxy, &via_proxy("203.0.113.2"))
        .await
        .unwrap();
    let refused = refused_from(stack.ws_addr, proxy, &via_proxy("203.0.113.1")).await;
    assert_refused(&refused, 429, "too_many_connections");
    // A forged entry left of the one the proxy appended changes nothing.
    let refused = refused_from(
        stack.ws_addr,
        proxy,
        &via_proxy("198.51.100.7, 203.0.113.1"),
    )
    .await;
    assert_refused(&refused, 429, "too_many_connections");

    // From an untrusted peer the header is ignored: the peer is the client.
    let untrusted = source(3);
    let _carol = open_from(stack.ws_addr, untrusted, &via_proxy("203.0.113.3"))
        .await
        .unwrap();
    let refused = refused_from(stack.ws_addr, untrusted, &via_proxy("203.0.113.4")).await;
    assert_refused(&refused, 429, "too_many_connections");
    assert_eq!(refused_count(&stack, "ip_connections").await, 3.0);
    stack.finish().await;
}
