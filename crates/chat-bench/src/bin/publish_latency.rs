//! Publish → delivered over WebSocket (latency benchmark): one client publishes at a steady rate
//! to a channel that `--readers` other clients read; run it through `scripts/bench-ws`.
//!
//! Each publish carries its *intended* send time (`pl:<n>:<unix nanos>` in its text) and is sent
//! open-loop on schedule, so a slow server shows up as latency (no coordinated omission). It
//! reports the publisher's acknowledgement latency (send → `published`) and every reader's
//! delivery latency (send → `message`), both from the intended time, and the first publish on
//! its own: against a freshly started server it is the process's first publish.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Parser;
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Parser)]
#[command(about = "WebSocket publish → delivered latency")]
struct Args {
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    #[arg(long, default_value = "#publish-latency")]
    channel: String,
    /// Clients reading the channel.
    #[arg(long, default_value_t = 100)]
    readers: usize,
    /// Publishes per second.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    #[arg(long, default_value_t = 30.0)]
    secs: f64,
    /// Name of the target in the printed report.
    #[arg(long, default_value = "server")]
    label: String,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Microseconds, 1 µs to 10 min.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Latencies of the first publish and of the steady state after it.
struct Latencies {
    first: Histogram<u64>,
    steady: Histogram<u64>,
}

impl Latencies {
    fn new() -> Self {
        Self {
            first: histogram(),
            steady: histogram(),
        }
    }

    fn record(&mut self, n: u64, sent_nanos: u64) {
        let micros = unix_nanos().saturating_sub(sent_nanos) / 1_000;
        let histogram = if n == 0 {
            &mut self.first
        } else {
            &mut self.steady
        };
        histogram.saturating_record(micros.max(1));
    }
}

/// `(n, intended nanos)` from a text `pl:<n>:<nanos>`.
fn marker(text: &str) -> Option<(u64, u64)> {
    let mut parts = text.strip_prefix("pl:")?.splitn(2, ':');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

async fn connect(url: &str) -> anyhow::Result<Ws> {
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    Ok(ws)
}

async fn next_json(ws: &mut Ws) -> anyhow::Result<Value> {
    loop {
        match ws.next().await.context("connection closed")?? {
            Message::Text(text) => return Ok(serde_json::from_str(&text)?),
            Message::Close(frame) => bail!("closed: {frame:?}"),
            _ => {}
        }
    }
}

async fn subscribed_reader(url: &str, channel: &str) -> anyhow::Result<Ws> {
    let mut ws = connect(url).await?;
    let subscribe = json!({"command": "subscribe", "channel": channel, "limit": 0});
    ws.send(Message::text(subscribe.to_string())).await?;
    let reply = next_json(&mut ws).await?;
    if reply["type"] != "subscribed" {
        bail!("subscribe answered {reply}");
    }
    Ok(ws)
}

fn print(name: &str, latencies: &Latencies, expected: u64) {
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let s = &latencies.steady;
    println!(
        "{name}: {} of {expected}; steady p50 {:.2} ms, p90 {:.2}, p99 {:.2}, max {:.2}; first publish p50 {:.2} ms (max {:.2})",
        s.len() + latencies.first.len(),
        ms(s, 0.5),
        ms(s, 0.9),
        ms(s, 0.99),
        s.max() as f64 / 1000.0,
        ms(&latencies.first, 0.5),
        latencies.first.max() as f64 / 1000.0,
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let total = (args.rate * args.secs).round().max(1.0) as u64;
    let delivered = Arc::new(Mutex::new(Latencies::new()));
    let mut readers = Vec::with_capacity(args.readers);
    for _ in 0..args.readers {
        let mut ws = subscribed_reader(&args.url, &args.channel).await?;
        let delivered = delivered.clone();
        readers.push(tokio::spawn(async move {
            let mut seen = 0;
            while seen < total {
                let Ok(frame) = next_json(&mut ws).await else {
                    break;
                };
                let text = frame["message"]["text"].as_str().unwrap_or_default();
                if let (Some("message"), Some((n, sent))) = (frame["type"].as_str(), marker(text)) {
                    delivered.lock().expect("lock").record(n, sent);
                    seen += 1;
                }
            }
        }));
    }

    let publisher = connect(&args.url).await?;
    let (mut sink, mut stream) = publisher.split();
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let start = unix_nanos() + 100_000_000;
    let intended = move |n: u64| start + n * interval.as_nanos() as u64;
    let acks = tokio::spawn(async move {
        let mut acked = Latencies::new();
        let mut count = 0;
        while count < total {
            let text = match stream.next().await {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(_)) => continue, // pings
                _ => break,
            };
            let frame: Value = serde_json::from_str(&text).unwrap_or_default();
            match (frame["type"].as_str(), frame["reply_to"].as_u64()) {
                (Some("published"), Some(n)) => {
                    acked.record(n, intended(n));
                    count += 1;
                }
                (Some("error"), _) => eprintln!("{frame}"),
                _ => {}
            }
        }
        acked
    });
    let clock = tokio::time::Instant::now() + Duration::from_millis(100);
    for n in 0..total {
        tokio::time::sleep_until(clock + interval * n as u32).await;
        let publish = json!({
            "command": "publish", "channel": args.channel, "author": "bench",
            "text": format!("pl:{n}:{}", intended(n)), "id": n,
        });
        sink.send(Message::text(publish.to_string())).await?;
    }
    let acked = tokio::time::timeout(Duration::from_secs(10), acks)
        .await
        .context("acknowledgements")??;
    let settle = tokio::time::Instant::now() + Duration::from_secs(5);
    for reader in readers {
        let _ = tokio::time::timeout_at(settle, reader).await;
    }
    println!(
        "== {}: publish every {:.0} ms for {} s to {} with {} readers",
        args.label,
        interval.as_secs_f64() * 1000.0,
        args.secs,
        args.channel,
        args.readers
    );
    print("acknowledged (send → published)", &acked, total);
    let delivered = delivered.lock().expect("lock");
    print(
        "delivered (send → message)",
        &delivered,
        total * args.readers as u64,
    );
    Ok(())
}
