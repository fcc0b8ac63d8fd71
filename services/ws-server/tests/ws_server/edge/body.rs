//! A REST body over `HTTP_MAX_BODY_BYTES` is refused with 413 before it is buffered, whether it
//! declares its length or streams in chunks. Memory is measured on the real binary, run as a
//! child process so that nothing else of the test process moves its numbers: its peak resident
//! set (VmHWM, reset through `/proc/<pid>/clear_refs` before each request) must grow by less than
//! 1 MiB while 64 MiB are sent.

use std::net::SocketAddr;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{read_response, RawResponse};
use crate::process::ServerProcess;
use crate::support::Isolation;

const HUGE: usize = 64 * 1024 * 1024;
/// The default HTTP_MAX_BODY_BYTES.
const LIMIT: usize = 64 * 1024;
const PATH: &str = "/channels/%23edge/messages";

/// Sends a POST of `size` bytes, `start` then spaces (with `Content-Length`, or chunked)
/// while reading; stops sending once the response is in or the server closed the connection.
async fn post(addr: SocketAddr, start: &[u8], size: usize, chunked: bool) -> RawResponse {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let response = tokio::spawn(async move { read_response(&mut reader).await });
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_owned()
    } else {
        format!("Content-Length: {size}")
    };
    let head = format!(
        "POST {PATH} HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n{framing}\r\n\r\n"
    );
    let mut first = start.to_vec();
    first.resize(64 * 1024, b' ');
    let spaces = vec![b' '; 64 * 1024];
    let mut sent = 0;
    let send = async {
        writer.write_all(head.as_bytes()).await?;
        while sent < size {
            let chunk = if sent == 0 { &first } else { &spaces };
            let part = &chunk[..chunk.len().min(size - sent)];
            if chunked {
                writer
                    .write_all(format!("{:x}\r\n", part.len()).as_bytes())
                    .await?;
                writer.write_all(part).await?;
                writer.write_all(b"\r\n").await?;
            } else {
                writer.write_all(part).await?;
            }
            sent += part.len();
        }
        if chunked {
            writer.write_all(b"0\r\n\r\n").await?;
        }
        std::io::Result::Ok(())
    };
    tokio::pin!(response);
    tokio::pin!(send);
    let response = tokio::select! {
        response = &mut response => response,
        // Sent in full (or the server stopped reading): the response is what decides.
        _ = &mut send => response.await,
    };
    response
        .unwrap()
        .expect("a response before the connection ends")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_post_gets_413_before_it_is_buffered_with_a_length_or_chunked() {
    let iso = Isolation::create().await;
    let server = ServerProcess::spawn(&iso, &[("SHUTDOWN_DRAIN_SECS", "0")]).await;
    // Warm up the paths measured below, so the figures show the body, not first use.
    // A body of exactly the limit is read, either way.
    let message = br#"{"author": "edge", "text": "at the limit"}"#;
    for chunked in [false, true] {
        let at_limit = post(server.ws_addr, message, LIMIT, chunked).await;
        assert_eq!(
            at_limit.status,
            202,
            "{}",
            String::from_utf8_lossy(&at_limit.body)
        );
    }
    // Warm up the refusals measured below, so the figures show the body, not first use.
    for chunked in [false, true] {
        let over = post(server.ws_addr, message, LIMIT + 1, chunked).await;
        assert_eq!(over.status, 413);
    }

    for chunked in [false, true] {
        let how = if chunked {
            "chunked"
        } else {
            "with Content-Length"
        };
        let before = server.reset_peak();
        let response = post(server.ws_addr, message, HUGE, chunked).await;
        let peak = server.status_kib("VmHWM");
        let after = server.status_kib("VmRSS");
        println!(
            "64 MiB POST {how}: {} ; resident {before} KiB before, peak {peak} KiB (+{} KiB), \
             {after} KiB after",
            response.status,
            peak - before
        );
        assert_eq!(response.status, 413, "{}", response.head);
        assert_eq!(response.json()["code"], "payload_too_large");
        assert!(
            peak - before < 1024,
            "the server's peak resident set grew by {} KiB",
            peak - before
        );
    }
    drop(server);
    iso.finish().await;
}
