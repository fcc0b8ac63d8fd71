//! WebSocket load generator (issue: chat-ws-server §4). Run it through `scripts/bench-ws`.
//!
//! - `fanout`: a coordinator spawns K `clients` child processes of this binary, each opening its
//!   share of N WebSocket subscribers (over C channels) from its own 127.0.0.x source address.
//!   It then produces to Kafka **open-loop** at each rate of a sweep. Every record carries its
//!   *intended* send time (`lg:<step>:<unix nanos>:` at the start of `text`, and `sent_at`), and a
//!   client records `receive time − intended send time`, so a stalled producer or server cannot
//!   hide latency (no coordinated omission). Children send their per-step HdrHistograms (V2
//!   serialization, hex) on stdout; the coordinator merges them and prints deliveries/s,
//!   p50/p99/p99.9 per step, the knee, and a confirmation step at half the highest sustained rate.
//! - `idle`: opens N subscribed connections (children again) and reports the server's VmRSS
//!   before and after, per connection.
//! - `storm`: P connections each loop subscribe (last `--limit`) → `subscribed` → unsubscribe as
//!   fast as they can while records are produced to the same channels; reports subscribes/s and
//!   the subscribe→`subscribed` latency.
//! - `clients`: the child process (driven over stdin/stdout by the coordinator).

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use chat_bench::{cpu_secs, proc_status_kib};
use clap::{Args, Parser, Subcommand};
use futures::{SinkExt, StreamExt};
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Parser)]
#[command(
    name = "ws-loadgen",
    about = "WebSocket fan-out / idle / subscribe-storm load generator"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Fan-out sweep: N subscribers, open-loop Kafka producer at increasing rates.
    Fanout(FanoutArgs),
    /// N idle subscribed connections; the server's RSS per connection.
    Idle(IdleArgs),
    /// Subscribe storm (last N) while records are produced.
    Storm(StormArgs),
    /// Produces records to one channel (e.g. history for the REST benchmark).
    Produce(ProduceArgs),
    /// Child process: opens connections and reports histograms (used by the coordinator).
    Clients(ClientsArgs),
}

#[derive(Debug, Clone, Args)]
struct Common {
    /// WebSocket URL of the server under test.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// Channels the subscribers are spread over.
    #[arg(long, default_value_t = 10)]
    channels: usize,
    /// Channel names are `<prefix><index, 2 digits>`.
    #[arg(long, default_value = "#bench-")]
    channel_prefix: String,
    /// Child processes opening the connections (each from its own source address).
    #[arg(long, default_value_t = 4)]
    procs: usize,
    /// First source address; child i binds 127.0.0.(first + i).
    #[arg(long, default_value_t = 2)]
    bind_first: u8,
    /// Name of the target in the printed report.
    #[arg(long, default_value = "server")]
    label: String,
}

#[derive(Debug, Clone, Args)]
struct KafkaArgs {
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Topic the server under test consumes (through chat-worker, or directly for the baseline).
    #[arg(long)]
    topic: String,
    /// Characters of padding in each record's text (message size).
    #[arg(long, default_value_t = 64)]
    pad: usize,
}

#[derive(Debug, Args)]
struct FanoutArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Subscribers in total.
    #[arg(long, default_value_t = 10_000)]
    subscribers: usize,
    /// Publish rates to sweep, in records per second over all channels.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "50,100,200,300,400,600,800,1000"
    )]
    rates: Vec<f64>,
    /// Seconds each step produces for.
    #[arg(long, default_value_t = 5.0)]
    step_secs: f64,
    /// Seconds to wait after a step for its last deliveries.
    #[arg(long, default_value_t = 2.0)]
    grace_secs: f64,
    /// Skip the confirmation step at half the highest sustained rate.
    #[arg(long)]
    no_half: bool,
    /// A process whose CPU time is reported per step, as NAME=PID (repeatable): e.g. the
    /// server, to compare its CPU cost per delivery with the baseline's.
    #[arg(long = "cpu-pid", value_parser = parse_named_pid)]
    cpu_pids: Vec<(String, u32)>,
}

fn parse_named_pid(raw: &str) -> Result<(String, u32), String> {
    let (name, pid) = raw.split_once('=').ok_or("expected NAME=PID")?;
    let pid = pid.parse().map_err(|_| format!("not a PID: {pid}"))?;
    Ok((name.to_owned(), pid))
}

#[derive(Debug, Args)]
struct IdleArgs {
    #[command(flatten)]
    common: Common,
    /// Connections to open (each subscribed to one channel).
    #[arg(long, default_value_t = 15_000)]
    connections: usize,
    /// PID of the server whose RSS is measured.
    #[arg(long)]
    server_pid: u32,
    /// Seconds to let the server settle before the second RSS reading.
    #[arg(long, default_value_t = 2.0)]
    settle_secs: f64,
}

#[derive(Debug, Args)]
struct StormArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Concurrent connections, each subscribing in a closed loop.
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// `limit` of each subscribe (last N messages).
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Seconds the storm lasts.
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    /// Records per second produced to the storm's channels meanwhile (ingest).
    #[arg(long, default_value_t = 500.0)]
    ingest_rate: f64,
    /// Records produced per channel before the storm so that every subscribe returns `limit`.
    #[arg(long, default_value_t = 60)]
    prefill: usize,
}

#[derive(Debug, Args)]
struct ProduceArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[arg(long)]
    channel: String,
    #[arg(long, default_value_t = 100)]
    count: usize,
}

#[derive(Debug, Args)]
struct ClientsArgs {
    #[arg(long)]
    url: String,
    #[arg(long)]
    connections: usize,
    /// Global index of this child's first connection (connection g subscribes to channel g % C).
    #[arg(long, default_value_t = 0)]
    offset: usize,
    #[arg(long)]
    channels: usize,
    #[arg(long)]
    channel_prefix: String,
    /// Source address of the connections.
    #[arg(long)]
    bind: IpAddr,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.mode {
        Mode::Clients(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(clients(args)),
        mode => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(async move {
                match mode {
                    Mode::Fanout(args) => fanout(args).await,
                    Mode::Idle(args) => idle(args).await,
                    Mode::Storm(args) => storm(args).await,
                    Mode::Produce(args) => {
                        let producer = producer(&args.kafka.brokers)?;
                        let channels = [args.channel];
                        let n = args.count as f64;
                        produce_open_loop(&producer, &args.kafka, &channels, 0, n, 1.0).await?;
                        producer.flush(Duration::from_secs(10))?;
                        Ok(())
                    }
                    Mode::Clients(_) => unreachable!(),
                }
            }),
    }
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn channel_name(prefix: &str, index: usize) -> String {
    format!("{prefix}{index:02}")
}

fn new_histogram() -> Histogram<u64> {
    // Microseconds, 1 µs to 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

// ------------------------------------------------------------------ WebSocket client side

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn connect(url: &str, bind: IpAddr) -> anyhow::Result<Ws> {
    let without_scheme = url.trim_start_matches("ws://");
    let host = without_scheme.split('/').next().unwrap_or(without_scheme);
    let target: SocketAddr = tokio::net::lookup_host(host)
        .await?
        .next()
        .context("server address")?;
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(bind, 0))?;
    let stream = socket.connect(target).await?;
    stream.set_nodelay(true)?;
    // Small initial read buffer (the default reserves 128 KiB per connection).
    let config =
        tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096);
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await?;
    Ok(ws)
}

async fn connect_retrying(url: &str, bind: IpAddr) -> anyhow::Result<Ws> {
    let mut last = None;
    for attempt in 0..5 {
        match connect(url, bind).await {
            Ok(ws) => return Ok(ws),
            Err(err) => last = Some(err),
        }
        tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
    }
    Err(last.expect("at least one attempt"))
}

fn subscribe_frame(channel: &str, limit: usize) -> String {
    serde_json::json!({"command": "subscribe", "channel": channel, "limit": limit}).to_string()
}

fn frame_type(text: &str) -> Option<&str> {
    let rest = &text[text.find("\"type\":\"")? + 8..];
    Some(&rest[..rest.find('"')?])
}

/// Per-step results of one process.
#[derive(Default)]
struct Steps {
    by_step: HashMap<u32, StepStats>,
}

struct StepStats {
    /// Intended send time → received.
    histogram: Histogram<u64>,
    /// The message's `stored_at` → received: the part of the latency after the store.
    after_store: Histogram<u64>,
    last_receive_nanos: u64,
}

/// The `stored_at` of a message frame, in Unix nanoseconds.
fn stored_at_nanos(text: &str) -> Option<u64> {
    const KEY: &str = "\"stored_at\":\"";
    let rest = &text[text.find(KEY)? + KEY.len()..];
    let stamp = chrono::DateTime::parse_from_rfc3339(&rest[..rest.find('"')?]).ok()?;
    u64::try_from(stamp.timestamp_nanos_opt()?).ok()
}

/// Finds `lg:<step>:<nanos>:` in a message frame.
fn parse_marker(text: &str) -> Option<(u32, u64)> {
    let rest = &text[text.find("lg:")? + 3..];
    let mut parts = rest.splitn(3, ':');
    let step = parts.next()?.parse().ok()?;
    let nanos = parts.next()?.parse().ok()?;
    Some((step, nanos))
}

async fn clients(args: ClientsArgs) -> anyhow::Result<()> {
    let steps = Arc::new(Mutex::new(Steps::default()));
    let ready = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let closed = Arc::new(AtomicU64::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    for i in 0..args.connections {
        let global = args.offset + i;
        let channel = channel_name(&args.channel_prefix, global % args.channels.max(1));
        let (url, bind) = (args.url.clone(), args.bind);
        let (steps, ready, failed, closed, gate) = (
            steps.clone(),
            ready.clone(),
            failed.clone(),
            closed.clone(),
            gate.clone(),
        );
        tokio::spawn(async move {
            let mut permit = Some(gate.acquire_owned().await);
            let mut ws = match connect_retrying(&url, bind).await {
                Ok(ws) => ws,
                Err(err) => {
                    eprintln!("connect failed: {err:#}");
                    failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            if ws
                .send(Message::text(subscribe_frame(&channel, 0)))
                .await
                .is_err()
            {
                failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let mut subscribed = false;
            while let Some(message) = ws.next().await {
                let Ok(message) = message else { break };
                let Message::Text(text) = message else {
                    if let Message::Close(frame) = message {
                        eprintln!("closed by server: {frame:?}");
                    }
                    continue;
                };
                let text = text.as_str();
                if !subscribed {
                    if frame_type(text) == Some("subscribed") {
                        subscribed = true;
                        drop(permit.take());
                        ready.fetch_add(1, Ordering::Relaxed);
                    } else if frame_type(text) == Some("error") {
                        eprintln!("subscribe failed: {text}");
                        failed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    continue;
                }
                if let Some((step, sent)) = parse_marker(text) {
                    let now = unix_nanos();
                    let micros = (now.saturating_sub(sent) / 1000).max(1);
                    let mut steps = steps.lock().unwrap();
                    let stats = steps.by_step.entry(step).or_insert_with(|| StepStats {
                        histogram: new_histogram(),
                        after_store: new_histogram(),
                        last_receive_nanos: 0,
                    });
                    stats.histogram.saturating_record(micros);
                    if let Some(stored) = stored_at_nanos(text) {
                        let after = (now.saturating_sub(stored) / 1000).max(1);
                        stats.after_store.saturating_record(after);
                    }
                    stats.last_receive_nanos = stats.last_receive_nanos.max(now);
                }
            }
            closed.fetch_add(1, Ordering::Relaxed);
        });
    }
    // Report readiness once every connection is subscribed (or failed).
    loop {
        let done = ready.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed);
        if done >= args.connections as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut out = tokio::io::stdout();
    out.write_all(
        format!(
            "READY {} {}\n",
            ready.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed)
        )
        .as_bytes(),
    )
    .await?;
    out.flush().await?;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("report"), Some(step)) => {
                let step: u32 = step.parse()?;
                let stats = steps.lock().unwrap().by_step.remove(&step);
                let (histogram, after_store, last) = match stats {
                    Some(s) => (s.histogram, s.after_store, s.last_receive_nanos),
                    None => (new_histogram(), new_histogram(), 0),
                };
                let line = format!(
                    "REPORT {step} {last} {} {} {}\n",
                    closed.load(Ordering::Relaxed),
                    serialized(&histogram)?,
                    serialized(&after_store)?,
                );
                out.write_all(line.as_bytes()).await?;
                out.flush().await?;
            }
            (Some("quit"), _) | (None, _) => break,
            _ => {}
        }
    }
    Ok(())
}

/// A histogram as hex (V2 serialization), for a report line.
fn serialized(histogram: &Histogram<u64>) -> anyhow::Result<String> {
    let mut bytes = Vec::new();
    V2Serializer::new()
        .serialize(histogram, &mut bytes)
        .map_err(|e| anyhow::anyhow!("serialize histogram: {e:?}"))?;
    Ok(hex(&bytes))
}

fn deserialized(hex: &str) -> anyhow::Result<Histogram<u64>> {
    let bytes = unhex(hex)?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| anyhow::anyhow!("deserialize histogram: {e:?}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> anyhow::Result<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).context("hex"))
        .collect()
}

// ------------------------------------------------------------------ child processes

struct Child {
    process: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

struct Fleet {
    children: Vec<Child>,
    connected: u64,
    failed: u64,
}

impl Fleet {
    /// Spawns `procs` children opening `total` connections between them and waits until every
    /// one is subscribed.
    fn start(common: &Common, total: usize) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let procs = common.procs.max(1);
        let mut children = Vec::new();
        let mut offset = 0;
        for i in 0..procs {
            let share = total / procs + usize::from(i < total % procs);
            let bind = format!("127.0.0.{}", common.bind_first as usize + i);
            let mut process = Command::new(&exe)
                .args(["clients", "--url", &common.url, "--bind", &bind])
                .args(["--connections", &share.to_string()])
                .args(["--offset", &offset.to_string()])
                .args(["--channels", &common.channels.to_string()])
                .args(["--channel-prefix", &common.channel_prefix])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .context("spawn a clients process")?;
            offset += share;
            children.push(Child {
                stdin: process.stdin.take().context("child stdin")?,
                stdout: std::io::BufReader::new(process.stdout.take().context("child stdout")?),
                process,
            });
        }
        let mut fleet = Fleet {
            children,
            connected: 0,
            failed: 0,
        };
        for child in &mut fleet.children {
            let mut line = String::new();
            child.stdout.read_line(&mut line)?;
            let mut words = line.split_whitespace();
            if words.next() != Some("READY") {
                bail!("a clients process did not get ready: {line:?}");
            }
            fleet.connected += words.next().unwrap_or("0").parse::<u64>()?;
            fleet.failed += words.next().unwrap_or("0").parse::<u64>()?;
        }
        Ok(fleet)
    }

    /// Merged histograms (end to end, after the store), latest receive time and closed
    /// connections of one step.
    fn report(&mut self, step: u32) -> anyhow::Result<(Histogram<u64>, Histogram<u64>, u64, u64)> {
        for child in &mut self.children {
            writeln!(child.stdin, "report {step}")?;
            child.stdin.flush()?;
        }
        let (mut merged, mut after_store) = (new_histogram(), new_histogram());
        let (mut last, mut closed) = (0u64, 0u64);
        for child in &mut self.children {
            let mut line = String::new();
            child.stdout.read_line(&mut line)?;
            let words: Vec<&str> = line.split_whitespace().collect();
            if words.len() != 6 || words[0] != "REPORT" {
                bail!("bad report from a clients process: {line:?}");
            }
            last = last.max(words[2].parse()?);
            closed += words[3].parse::<u64>()?;
            merged.add(&deserialized(words[4])?)?;
            after_store.add(&deserialized(words[5])?)?;
        }
        Ok((merged, after_store, last, closed))
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = writeln!(child.stdin, "quit");
            let _ = child.stdin.flush();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for child in &mut self.children {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.process.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.process.kill();
            let _ = child.process.wait();
        }
    }
}

// ------------------------------------------------------------------ producer

fn producer(brokers: &str) -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "1")
        .set("linger.ms", "1")
        .set("queue.buffering.max.messages", "1000000")
        .create()?)
}

fn record_value(channel: &str, step: u32, intended: u64, pad: &str) -> String {
    let sent_at = chrono::DateTime::from_timestamp_nanos(intended as i64)
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    serde_json::json!({
        "channel": channel,
        "author": "loadgen",
        "text": format!("lg:{step}:{intended}: {pad}"),
        "sent_at": sent_at,
    })
    .to_string()
}

/// Produces `rate` records per second for `secs`, round-robin over `channels`, each stamped
/// with its intended send time (open loop: a late producer catches up, and the stamps stay
/// the schedule's). Returns the records produced.
async fn produce_open_loop(
    producer: &FutureProducer,
    kafka: &KafkaArgs,
    channels: &[String],
    step: u32,
    rate: f64,
    secs: f64,
) -> anyhow::Result<u64> {
    let pad = "x".repeat(kafka.pad);
    let total = (rate * secs).round() as u64;
    let interval_nanos = 1e9 / rate;
    let started = Instant::now();
    let start_nanos = unix_nanos();
    let mut sent = 0u64;
    while sent < total {
        let due = ((started.elapsed().as_nanos() as f64 / interval_nanos) as u64 + 1).min(total);
        while sent < due {
            let intended = start_nanos + (sent as f64 * interval_nanos) as u64;
            let channel = &channels[sent as usize % channels.len()];
            let value = record_value(channel, step, intended, &pad);
            loop {
                let record = FutureRecord::to(&kafka.topic).key(channel).payload(&value);
                match producer.send_result(record) {
                    Ok(delivery) => {
                        drop(delivery);
                        break;
                    }
                    Err((err, _)) => {
                        eprintln!("produce: {err}; retrying");
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
            sent += 1;
        }
        if sent < total {
            let next = Duration::from_nanos((sent as f64 * interval_nanos) as u64);
            tokio::time::sleep(next.saturating_sub(started.elapsed())).await;
        }
    }
    Ok(sent)
}

// ------------------------------------------------------------------ fanout

struct StepResult {
    rate: f64,
    produced: u64,
    expected: u64,
    delivered: u64,
    per_sec: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    /// p50 and p99 of `stored_at` → received.
    after_store: (f64, f64),
    /// (name, CPU seconds used during the step) of each `--cpu-pid` process.
    cpu: Vec<(String, f64)>,
    window: f64,
}

impl StepResult {
    fn healthy(&self) -> bool {
        self.delivered as f64 >= 0.999 * self.expected as f64 && self.p99 <= 250.0
    }

    fn print(&self, label: &str, name: &str) {
        println!(
            "{label:<10} {name:<6} {:>7.0} msg/s  offered {:>9.0} deliv/s  delivered {:>9}/{:<9} {:>9.0} deliv/s  p50 {:>8.2} ms  p99 {:>8.2} ms  p99.9 {:>8.2} ms  max {:>8.2} ms",
            self.rate,
            self.expected as f64 / (self.produced as f64 / self.rate),
            self.delivered,
            self.expected,
            self.per_sec,
            self.p50,
            self.p99,
            self.p999,
            self.max,
        );
        println!(
            "{label:<10} stages {:>7.0} msg/s  stored_at → received: p50 {:.2} ms, p99 {:.2} ms (the rest is Kafka → consumer → store)",
            self.rate, self.after_store.0, self.after_store.1,
        );
        for (name, secs) in &self.cpu {
            println!(
                "{label:<10} cpu    {:>7.0} msg/s  {name}: {:.2} cores, {:.2} µs of CPU per delivery",
                self.rate,
                secs / self.window,
                secs * 1e6 / (self.delivered.max(1) as f64),
            );
        }
    }
}

async fn fanout(args: FanoutArgs) -> anyhow::Result<()> {
    let common = &args.common;
    let channels: Vec<String> = (0..common.channels)
        .map(|i| channel_name(&common.channel_prefix, i))
        .collect();
    let started = Instant::now();
    let fleet = Fleet::start(common, args.subscribers)?;
    println!(
        "{}: {} subscribers connected and subscribed over {} channels from {} processes in {:.1} s ({} failed)",
        common.label,
        fleet.connected,
        channels.len(),
        common.procs,
        started.elapsed().as_secs_f64(),
        fleet.failed
    );
    if fleet.connected == 0 {
        bail!("no subscriber connected");
    }
    // Subscribers per channel, as the children assign them (global index modulo channels).
    let per_channel: Vec<u64> = (0..channels.len())
        .map(|c| {
            (0..args.subscribers)
                .filter(|g| g % channels.len() == c)
                .count() as u64
        })
        .collect();
    let mut sweep = Sweep {
        producer: producer(&args.kafka.brokers)?,
        fleet,
        args: &args,
        channels: &channels,
        per_channel,
        steps: 0,
    };
    // Warm-up: one step at the lowest rate, not reported (Kafka metadata, first batches).
    let warm_rate = args.rates.first().copied().unwrap_or(50.0);
    sweep.step(warm_rate, 1.0).await?;
    let mut results = Vec::new();
    for &rate in &args.rates {
        let result = sweep.step(rate, args.step_secs).await?;
        result.print(&common.label, "step");
        let stop = !result.healthy();
        results.push(result);
        if stop {
            println!("{}: saturated; sweep stopped", common.label);
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let best = results
        .iter()
        .filter(|r| r.healthy())
        .max_by(|a, b| a.per_sec.total_cmp(&b.per_sec));
    // The knee: the last step before p99 more than doubles over the lowest step's (or a step
    // is unhealthy).
    let base_p99 = results.first().map_or(0.0, |r| r.p99.max(1.0));
    let knee = results
        .iter()
        .take_while(|r| r.healthy() && r.p99 <= 2.0 * base_p99)
        .last();
    match knee {
        Some(k) => println!(
            "{}: knee at {:.0} msg/s = {:.0} deliveries/s (p99 {:.2} ms)",
            common.label, k.rate, k.per_sec, k.p99
        ),
        None => println!("{}: knee below the lowest step", common.label),
    }
    if let Some(best) = best {
        println!(
            "{}: MAX {:.0} deliveries/s sustained (at {:.0} msg/s; all delivered, p99 ≤ 250 ms)",
            common.label, best.per_sec, best.rate
        );
        if !args.no_half {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let half = sweep.step(best.rate / 2.0, args.step_secs).await?;
            half.print(&common.label, "half");
        }
    } else {
        println!("{}: no healthy step", common.label);
    }
    Ok(())
}

/// What every step of a fan-out sweep shares; steps are numbered from 0 (the warm-up).
struct Sweep<'a> {
    fleet: Fleet,
    producer: FutureProducer,
    args: &'a FanoutArgs,
    channels: &'a [String],
    /// Subscribers per channel, as the children assign them.
    per_channel: Vec<u64>,
    steps: u32,
}

impl Sweep<'_> {
    /// Produces at `rate` for `secs`, then collects what every subscriber received.
    async fn step(&mut self, rate: f64, secs: f64) -> anyhow::Result<StepResult> {
        let step = self.steps;
        self.steps += 1;
        let (args, channels, per_channel) = (self.args, self.channels, &self.per_channel);
        let (fleet, producer) = (&mut self.fleet, &self.producer);
        let start_nanos = unix_nanos();
        let cpu_before: Vec<Option<f64>> = args
            .cpu_pids
            .iter()
            .map(|(_, pid)| cpu_secs(*pid))
            .collect();
        let produced = produce_open_loop(producer, &args.kafka, channels, step, rate, secs).await?;
        let expected: u64 = (0..produced)
            .map(|i| per_channel[i as usize % channels.len()])
            .sum();
        let _ = producer.flush(Duration::from_secs(10));
        tokio::time::sleep(Duration::from_secs_f64(args.grace_secs)).await;
        let (histogram, after_store, last, closed) = fleet.report(step)?;
        let cpu = args
            .cpu_pids
            .iter()
            .zip(cpu_before)
            .filter_map(|((name, pid), before)| Some((name.clone(), cpu_secs(*pid)? - before?)))
            .collect();
        if closed > 0 {
            println!("  {closed} subscriber connections were closed by the server");
        }
        let delivered = histogram.len();
        // Deliveries are counted up to the last receive; CPU over the whole step and its grace.
        let window = (last.saturating_sub(start_nanos) as f64 / 1e9).max(secs);
        let cpu_window = (unix_nanos().saturating_sub(start_nanos) as f64 / 1e9).max(secs);
        let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
        Ok(StepResult {
            rate,
            produced,
            expected,
            delivered,
            per_sec: delivered as f64 / window,
            p50: ms(0.5),
            p99: ms(0.99),
            p999: ms(0.999),
            max: histogram.max() as f64 / 1000.0,
            after_store: (
                after_store.value_at_quantile(0.5) as f64 / 1000.0,
                after_store.value_at_quantile(0.99) as f64 / 1000.0,
            ),
            cpu,
            window: cpu_window,
        })
    }
}

// ------------------------------------------------------------------ idle

async fn idle(args: IdleArgs) -> anyhow::Result<()> {
    let before = proc_status_kib(args.server_pid, "VmRSS")?;
    let started = Instant::now();
    let fleet = Fleet::start(&args.common, args.connections)?;
    let opened = started.elapsed();
    tokio::time::sleep(Duration::from_secs_f64(args.settle_secs)).await;
    let after = proc_status_kib(args.server_pid, "VmRSS")?;
    let per = (after.saturating_sub(before)) as f64 / fleet.connected.max(1) as f64;
    println!(
        "{}: idle {} connections subscribed ({} failed) in {:.1} s; server RSS {:.1} MiB → {:.1} MiB: {:.2} KiB per connection",
        args.common.label,
        fleet.connected,
        fleet.failed,
        opened.as_secs_f64(),
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        per
    );
    drop(fleet);
    Ok(())
}

// ------------------------------------------------------------------ storm

async fn storm(args: StormArgs) -> anyhow::Result<()> {
    let common = &args.common;
    let channels: Vec<String> = (0..common.channels)
        .map(|i| channel_name(&common.channel_prefix, i))
        .collect();
    let producer = producer(&args.kafka.brokers)?;
    if args.prefill > 0 {
        let n = (args.prefill * channels.len()) as f64;
        produce_open_loop(&producer, &args.kafka, &channels, 0, n, 1.0).await?;
        let _ = producer.flush(Duration::from_secs(10));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let mut sockets = Vec::new();
    for i in 0..args.connections {
        let bind: IpAddr = format!(
            "127.0.0.{}",
            common.bind_first as usize + i % common.procs.max(1)
        )
        .parse()?;
        sockets.push(connect_retrying(&common.url, bind).await?);
    }
    let histogram = Arc::new(Mutex::new(new_histogram()));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(args.secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, mut ws) in sockets.into_iter().enumerate() {
        let channels = channels.clone();
        let (histogram, errors) = (histogram.clone(), errors.clone());
        let limit = args.limit;
        tasks.push(tokio::spawn(async move {
            let mut k = i;
            while Instant::now() < deadline {
                let channel = &channels[k % channels.len()];
                k += 1;
                let sent = Instant::now();
                if ws
                    .send(Message::text(subscribe_frame(channel, limit)))
                    .await
                    .is_err()
                {
                    errors.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                if !wait_for(&mut ws, "subscribed", &errors).await {
                    return;
                }
                let micros = (sent.elapsed().as_micros() as u64).max(1);
                histogram.lock().unwrap().saturating_record(micros);
                let unsubscribe =
                    serde_json::json!({"command": "unsubscribe", "channel": channel}).to_string();
                if ws.send(Message::text(unsubscribe)).await.is_err()
                    || !wait_for(&mut ws, "unsubscribed", &errors).await
                {
                    return;
                }
            }
            let _ = ws.close(None).await;
        }));
    }
    let ingest = {
        let producer = producer.clone();
        let kafka = args.kafka.clone();
        let channels = channels.clone();
        let (rate, secs) = (args.ingest_rate, args.secs);
        tokio::spawn(async move {
            if rate > 0.0 {
                produce_open_loop(&producer, &kafka, &channels, 1, rate, secs).await
            } else {
                Ok(0)
            }
        })
    };
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = started.elapsed();
    let ingested = ingest.await??;
    let histogram = histogram.lock().unwrap();
    println!(
        "{}: storm {} subscribes (last {}) from {} connections in {:.1} s while producing {} records: {:.0} subscribes/s  {}  errors {}",
        common.label,
        histogram.len(),
        args.limit,
        args.connections,
        elapsed.as_secs_f64(),
        ingested,
        histogram.len() as f64 / elapsed.as_secs_f64(),
        chat_bench::latency_summary(&histogram),
        errors.load(Ordering::Relaxed)
    );
    Ok(())
}

/// Reads frames until one of type `wanted` (true) or an error/close (false).
async fn wait_for(ws: &mut Ws, wanted: &str, errors: &AtomicU64) -> bool {
    while let Some(message) = ws.next().await {
        match message {
            Ok(Message::Text(text)) => match frame_type(text.as_str()) {
                Some(t) if t == wanted => return true,
                Some("error") => {
                    eprintln!("storm: {}", text.as_str());
                    errors.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
                _ => {}
            },
            Ok(Message::Close(frame)) => {
                eprintln!("storm: closed by server: {frame:?}");
                errors.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            Ok(_) => {}
            Err(_) => {
                errors.fetch_add(1, Ordering::Relaxed);
                return false;
            }
        }
    }
    false
}
