//! `connect-storm`: how fast clients get in. P concurrent loops each open a new WebSocket (the
//! token, if any, in the URL's `?token=`), subscribe (`limit` 0), wait for `subscribed`, close,
//! and start over. Prints connects+subscribes per second and the latency from the TCP connect
//! to the `subscribed` reply. Run it against a server with tokens and one without (the same-run
//! baseline) to read the cost of verifying a token.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Parser)]
#[command(name = "connect-storm", about = "WebSocket connect + subscribe storm")]
struct Args {
    /// WebSocket URL, with `?token=…` for a server with tokens.
    #[arg(long)]
    url: String,
    /// Label of the output line.
    #[arg(long, default_value = "server")]
    label: String,
    /// Concurrent loops.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds the storm lasts.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// Channel every connection subscribes to.
    #[arg(long, default_value = "#storm")]
    channel: String,
    /// Source addresses 127.0.0.1 … 127.0.0.N (spreads the client ports).
    #[arg(long, default_value_t = 8)]
    sources: u8,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    chat_bench::run_on_two_threads(run(args))?
}

async fn run(args: Args) -> anyhow::Result<()> {
    let host = args
        .url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .context("a ws:// URL")?
        .to_owned();
    let target: SocketAddr = tokio::net::lookup_host(&host)
        .await?
        .next()
        .context("server address")?;
    let histogram = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
    ));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(args.secs);
    let subscribe =
        serde_json::json!({"command": "subscribe", "channel": args.channel, "limit": 0})
            .to_string();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.concurrency {
        let (histogram, errors) = (histogram.clone(), errors.clone());
        let (url, subscribe) = (args.url.clone(), subscribe.clone());
        let source: IpAddr =
            format!("127.0.0.{}", 1 + i % usize::from(args.sources.max(1))).parse()?;
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let began = Instant::now();
                match once(target, source, &url, &subscribe).await {
                    Ok(()) => {
                        let micros = (began.elapsed().as_micros() as u64).max(1);
                        histogram.lock().unwrap().saturating_record(micros);
                    }
                    Err(err) => {
                        if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("connect-storm: {err:#}");
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let histogram = histogram.lock().unwrap();
    println!(
        "{}: {} connects+subscribes in {:.1} s from {} loops: {:.0}/s  {}  errors {}",
        args.label,
        histogram.len(),
        elapsed,
        args.concurrency,
        histogram.len() as f64 / elapsed,
        chat_bench::latency_summary(&histogram),
        errors.load(Ordering::Relaxed)
    );
    Ok(())
}

/// One client: connect, upgrade, subscribe, wait for `subscribed`, close.
async fn once(
    target: SocketAddr,
    source: IpAddr,
    url: &str,
    subscribe: &str,
) -> anyhow::Result<()> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = socket.connect(target).await?;
    stream.set_nodelay(true)?;
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await?;
    ws.send(Message::text(subscribe)).await?;
    loop {
        match ws.next().await.context("closed before `subscribed`")?? {
            Message::Text(text) if text.as_str().contains(r#""type":"subscribed""#) => break,
            Message::Text(text) if text.as_str().contains(r#""type":"error""#) => {
                anyhow::bail!("error frame: {}", text.as_str())
            }
            Message::Close(frame) => anyhow::bail!("closed: {frame:?}"),
            _ => {}
        }
    }
    let _ = ws.close(None).await;
    Ok(())
}
