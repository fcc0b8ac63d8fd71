//! Slow request heads (slowloris) are closed after `HTTP_HEADER_TIMEOUT_SECS`; kept-alive
//! connections may stay silent until `HTTP_KEEP_ALIVE_TIMEOUT_SECS`; upgraded WebSockets are cut
//! by neither.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{raw_exchange, read_response};
use crate::support::{Stack, PATIENCE};

const SLOW_CLIENTS: usize = 50;
const REQUEST: &str = "GET /channels/%23edge/messages HTTP/1.1\r\nHost: edge\r\n\r\n";

/// Sends a request head a byte every 100 ms, never finishing it, until the server closes the
/// connection; how long it stayed open.
async fn slowloris(addr: SocketAddr) -> Duration {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.split();
    let head = b"GET /channels/%23edge/messages HTTP/1.1\r\nHost: edge\r\nX-Slow: ";
    let mut buffer = [0u8; 256];
    for sent in 0.. {
        assert!(
            started.elapsed() < PATIENCE,
            "a slow request head was never closed"
        );
        tokio::select! {
            read = reader.read(&mut buffer) => match read {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => panic!("the server answered an incomplete request head"),
            },
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                let byte = head.get(sent).copied().unwrap_or(b'a');
                if writer.write_all(&[byte]).await.is_err() {
                    return started.elapsed();
                }
            }
        }
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_heads_are_closed_after_the_header_timeout_while_requests_and_idle_websockets_are_served(
) {
    let stack = Stack::start_with(|settings| {
        settings.admission.http_header_timeout_secs = 1;
        settings.admission.http_keep_alive_timeout_secs = 30;
    })
    .await;
    let mut websocket = stack.connect().await;
    let idle_since = Instant::now();

    let slow: Vec<_> = (0..SLOW_CLIENTS)
        .map(|_| tokio::spawn(slowloris(stack.ws_addr)))
        .collect();
    // While they trickle, others are served.
    let response = reqwest::get(stack.http("/channels/%23edge/messages"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let mut open_for = Vec::new();
    for task in slow {
        open_for.push(task.await.unwrap());
    }
    let shortest = open_for.iter().min().unwrap();
    let longest = open_for.iter().max().unwrap();
    println!(
        "{SLOW_CLIENTS} slow request heads closed after {shortest:?} to {longest:?} \
         (header timeout 1 s)"
    );
    assert!(
        *shortest >= Duration::from_millis(900),
        "a slow head was closed before its header timeout: {shortest:?}"
    );
    let timed_out = stack
        .metric("chat_ws_http_connections_timed_out_total{waiting=\"header\"}")
        .await;
    assert!(timed_out >= SLOW_CLIENTS as f64, "{timed_out}");

    // The WebSocket has been idle for longer than the header timeout and lives on.
    tokio::time::sleep_until((idle_since + Duration::from_millis(2500)).into()).await;
    websocket.send(json!({"command": "ping"})).await;
    assert_eq!(websocket.recv().await["type"], "pong");
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_may_idle_past_the_header_timeout_until_the_keep_alive_timeout() {
    let stack = Stack::start_with(|settings| {
        settings.admission.http_header_timeout_secs = 1;
        settings.admission.http_keep_alive_timeout_secs = 3;
    })
    .await;
    let mut stream = TcpStream::connect(stack.ws_addr).await.unwrap();
    assert_eq!(raw_exchange(&mut stream, REQUEST).await.status, 200);
    // Silent for longer than the header timeout, well within the keep-alive timeout.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(raw_exchange(&mut stream, REQUEST).await.status, 200);
    let idle_since = Instant::now();
    assert!(read_response(&mut stream).await.is_none());
    let idled = idle_since.elapsed();
    println!("an idle kept-alive connection was closed after {idled:?} (keep-alive timeout 3 s)");
    assert!(idled >= Duration::from_millis(2900), "{idled:?}");
    let metric = |waiting: &str| {
        format!("chat_ws_http_connections_timed_out_total{{waiting=\"{waiting}\"}}")
    };
    assert_eq!(stack.metric(&metric("keep_alive")).await, 1.0);
    assert_eq!(stack.metric(&metric("header")).await, 0.0);

    // The first byte of the next request starts that request's header timeout.
    let mut stream = TcpStream::connect(stack.ws_addr).await.unwrap();
    assert_eq!(raw_exchange(&mut stream, REQUEST).await.status, 200);
    stream.write_all(b"GET /chan").await.unwrap();
    assert!(read_response(&mut stream).await.is_none());
    assert_eq!(stack.metric(&metric("header")).await, 1.0);
    assert_eq!(stack.metric(&metric("keep_alive")).await, 1.0);
    stack.finish().await;
}
