//! Worker ingest benchmark (issue: stream worker §4).
//!
//! Produces N JSON records (~200 bytes) over C channels to a fresh topic, then measures in one
//! run:
//! - baseline 1: the raw consume rate of that topic (an rdkafka consumer doing no work);
//! - baseline 2: COPY of the same rows (with the ids the worker derives from their Kafka
//!   coordinates), in batches of the worker's size, into an empty table with the same indexes
//!   as `messages`;
//! - baseline 3: pipelined Redis PUBLISH of the same payloads;
//! - the real `chat-worker` binary (release build, next to this one): time from the first
//!   record stored to the last record published, and its peak RSS.
//!
//! Run it with `scripts/bench-ingest` (starts the services, builds in release mode).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chat_bench::proc_status_kib;
use chat_core::channel::ChannelName;
use chat_core::envelope::Envelope;
use chat_core::message::{db_time, MessageId, StoredMessage};
use chat_testkit::kafka::{create_topic, delete_topics};
use chat_testkit::{unique, Services, TestDatabase};
use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

#[derive(Debug, Parser)]
#[command(about = "chat-worker ingest benchmark with same-run baselines")]
struct Args {
    /// Records to produce.
    #[arg(long, default_value_t = 1_000_000)]
    records: usize,
    /// Channels the records are spread over.
    #[arg(long, default_value_t = 100)]
    channels: usize,
    /// Partitions of the benchmark topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Worker batch size (BATCH_MAX_RECORDS), also the COPY and PUBLISH batch size.
    #[arg(long, default_value_t = 2000)]
    batch: usize,
    /// Extra environment for the worker, as NAME=VALUE (repeatable).
    #[arg(long = "worker-env")]
    worker_env: Vec<String>,
    /// Skip the baselines (only run the worker).
    #[arg(long)]
    worker_only: bool,
    /// Give every record a W3C `traceparent` header (as the ws-server does when tracing), with
    /// this fraction of them flagged sampled: measures the worker's per-message spans.
    #[arg(long)]
    traceparents: Option<f64>,
}

struct Row {
    channel: String,
    author: String,
    text: String,
    payload: Vec<u8>,
    traceparent: Option<String>,
}

fn make_rows(args: &Args) -> Vec<Row> {
    (0..args.records)
        .map(|i| {
            let channel = format!("#bench-{:03}", i % args.channels);
            let author = format!("user-{:04}", i % 5000);
            let text = format!(
                "message {i:08} lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore"
            );
            let payload = serde_json::json!({"channel": channel, "author": author, "text": text})
                .to_string()
                .into_bytes();
            // Sampled records spread evenly: record i is sampled when floor(i * ratio) steps.
            let traceparent = args.traceparents.map(|ratio| {
                let sampled = ((i + 1) as f64 * ratio).floor() > (i as f64 * ratio).floor();
                format!(
                    "00-{:032x}-{:016x}-{}",
                    i as u128 + 1,
                    i as u64 + 1,
                    if sampled { "01" } else { "00" }
                )
            });
            Row {
                channel,
                author,
                text,
                payload,
                traceparent,
            }
        })
        .collect()
}

fn rate(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let services = Services::from_env();
    let rows = make_rows(&args);
    let avg_bytes = rows.iter().map(|r| r.payload.len()).sum::<usize>() / rows.len().max(1);
    println!(
        "ingest benchmark: {} records of ~{} bytes over {} channels, {} partitions, batch {}",
        args.records, avg_bytes, args.channels, args.partitions, args.batch
    );

    let topic = unique("bench.ingest");
    create_topic(&services.kafka_brokers, &topic, args.partitions).await;
    let (produce, coordinates) = produce(&services.kafka_brokers, &topic, &rows).await?;
    println!(
        "produce (setup)             {:>10.0} records/s",
        rate(rows.len(), produce)
    );

    let mut report = Vec::new();
    if !args.worker_only {
        let consume = raw_consume(&services.kafka_brokers, &topic, rows.len())?;
        report.push(("raw consume (rdkafka, no work)", rate(rows.len(), consume)));
        let db = TestDatabase::create(&services).await;
        let ids: Vec<MessageId> = coordinates
            .iter()
            .map(|&(partition, offset)| MessageId::derived(&topic, partition, offset))
            .collect();
        let copy = raw_copy(&db, &rows, &ids, args.batch).await;
        db.drop_database().await;
        let copy = copy?;
        report.push(("raw COPY into empty table", rate(rows.len(), copy)));
        let publish = raw_publish(&services.redis_url, &rows, args.batch).await?;
        report.push(("raw pipelined PUBLISH", rate(rows.len(), publish)));
    }

    let db = TestDatabase::create(&services).await;
    let worker = run_worker(&args, &services, &db, &topic, rows.len()).await;
    // Every run writes ~200 MB to Kafka and ~300 MB to PostgreSQL: leave nothing behind.
    db.drop_database().await;
    let dlq = format!("{topic}.dlq");
    delete_topics(&services.kafka_brokers, &[&topic, &dlq]).await;
    let (elapsed, peak_rss_kib) = worker?;
    let worker_rate = rate(rows.len(), elapsed);
    for (name, value) in &report {
        println!("{name:<32}{value:>10.0} records/s");
    }
    println!(
        "chat-worker end to end          {worker_rate:>10.0} records/s  ({:.2} s, first stored → last published)",
        elapsed.as_secs_f64()
    );
    for (name, value) in &report {
        println!(
            "  worker / {name:<30} {:>6.1} %",
            100.0 * worker_rate / value
        );
    }
    println!(
        "chat-worker peak RSS            {:>10.1} MiB",
        peak_rss_kib as f64 / 1024.0
    );
    Ok(())
}

/// Produces every row; returns the time taken and each row's (partition, offset).
async fn produce(
    brokers: &str,
    topic: &str,
    rows: &[Row],
) -> anyhow::Result<(Duration, Vec<(i32, i64)>)> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "2000000")
        .create()?;
    let started = Instant::now();
    let mut coordinates = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(20_000) {
        let sends = chunk.iter().map(|row| {
            let mut record = FutureRecord::to(topic)
                .key(&row.channel)
                .payload(&row.payload);
            if let Some(traceparent) = &row.traceparent {
                record = record.headers(OwnedHeaders::new().insert(Header {
                    key: "traceparent",
                    value: Some(traceparent.as_str()),
                }));
            }
            producer.send(record, Duration::from_secs(60))
        });
        for result in futures::future::join_all(sends).await {
            let delivery = result.map_err(|(err, _)| err).context("produce")?;
            coordinates.push((delivery.partition, delivery.offset));
        }
    }
    Ok((started.elapsed(), coordinates))
}

fn raw_consume(brokers: &str, topic: &str, expected: usize) -> anyhow::Result<Duration> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("bench-raw"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut seen = 0usize;
    let mut started = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    while seen < expected {
        if Instant::now() > deadline {
            bail!("raw consumer saw only {seen} of {expected} records");
        }
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            message?;
            started.get_or_insert_with(Instant::now);
            seen += 1;
        }
    }
    Ok(started.map_or(Duration::ZERO, |s| s.elapsed()))
}

/// COPY of the rows with the ids the worker derives for them (from their Kafka coordinates).
async fn raw_copy(
    db: &TestDatabase,
    rows: &[Row],
    ids: &[MessageId],
    batch: usize,
) -> anyhow::Result<Duration> {
    sqlx::query("create table copy_baseline (like messages including all)")
        .execute(&db.pool)
        .await?;
    let sent_at = db_time(chrono_now());
    let sent_at = sent_at.to_rfc3339();
    let mut seq_by_channel = std::collections::HashMap::<&str, i64>::new();
    let started = Instant::now();
    for (chunk, ids) in rows.chunks(batch).zip(ids.chunks(batch)) {
        let mut data = String::with_capacity(chunk.len() * 200);
        for (row, id) in chunk.iter().zip(ids) {
            let seq = seq_by_channel.entry(&row.channel).or_insert(0);
            *seq += 1;
            data.push_str(&format!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
                row.channel, seq, id, row.author, row.text, sent_at, sent_at
            ));
        }
        let mut conn = db.pool.acquire().await?;
        let mut copy = conn
            .copy_in_raw("copy copy_baseline (channel, seq, id, author, text, sent_at, stored_at) from stdin")
            .await?;
        copy.send(data.into_bytes()).await?;
        copy.finish().await?;
    }
    Ok(started.elapsed())
}

async fn raw_publish(redis_url: &str, rows: &[Row], batch: usize) -> anyhow::Result<Duration> {
    let client = redis::Client::open(redis_url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let prefix = format!("{}:", unique("bench-raw"));
    let now = db_time(chrono_now());
    let started = Instant::now();
    for chunk in rows.chunks(batch) {
        let mut pipe = redis::pipe();
        for (i, row) in chunk.iter().enumerate() {
            let envelope = Envelope::new(
                StoredMessage {
                    channel: ChannelName::parse(&row.channel)?,
                    seq: i as i64 + 1,
                    id: MessageId::new_random(),
                    author: row.author.clone(),
                    text: row.text.clone(),
                    sent_at: now,
                    stored_at: now,
                    user_id: None,
                },
                None,
            );
            pipe.cmd("PUBLISH")
                .arg(format!("{prefix}{}", row.channel))
                .arg(envelope.encode())
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
    }
    Ok(started.elapsed())
}

fn chrono_now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

fn worker_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name("chat-worker");
    if !path.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p chat-worker`",
            path.display()
        );
    }
    Ok(path)
}

async fn run_worker(
    args: &Args,
    services: &Services,
    db: &TestDatabase,
    topic: &str,
    expected: usize,
) -> anyhow::Result<(Duration, u64)> {
    let port = chat_testkit::ports::free_port();
    let mut command = Command::new(worker_binary()?);
    command
        .env("KAFKA_BROKERS", &services.kafka_brokers)
        .env("KAFKA_TOPIC", topic)
        .env("KAFKA_DLQ_TOPIC", format!("{topic}.dlq"))
        .env("KAFKA_GROUP_ID", unique("bench-worker"))
        .env("DATABASE_URL", &db.url)
        .env("REDIS_URL", &services.redis_url)
        .env("REDIS_PREFIX", format!("{}:", unique("bench")))
        .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("BATCH_MAX_RECORDS", args.batch.to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for pair in &args.worker_env {
        let (name, value) = pair
            .split_once('=')
            .context("--worker-env takes NAME=VALUE")?;
        command.env(name, value);
    }
    let mut child = KillOnDrop(command.spawn().context("spawn chat-worker")?);

    let deadline = Instant::now() + Duration::from_secs(600);
    let finished = loop {
        if Instant::now() > deadline {
            bail!("the worker did not publish {expected} records in time");
        }
        if let Some(published) = published_count(port).await {
            if published >= expected as u64 {
                break Instant::now();
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let peak_rss = proc_status_kib(child.0.id(), "VmHWM")?;
    if let Some(metrics) = fetch_metrics(port).await {
        println!("chat-worker time per step (sum over all batches and lanes):");
        for line in metrics.lines().filter(|l| {
            l.starts_with("chat_worker_step_duration_seconds_sum")
                || l.starts_with("chat_worker_step_duration_seconds_count")
                || l.starts_with("chat_worker_batch_size_records_sum")
                || l.starts_with("chat_worker_batch_size_records_count")
        }) {
            println!("  {line}");
        }
    }
    let first_stored: (chrono::DateTime<chrono::Utc>,) =
        sqlx::query_as("select min(stored_at) from messages")
            .fetch_one(&db.pool)
            .await?;
    let (stored,): (i64,) = sqlx::query_as("select count(*) from messages")
        .fetch_one(&db.pool)
        .await?;
    if stored != expected as i64 {
        bail!("stored {stored} rows, expected {expected}");
    }
    let now = chrono::Utc::now();
    let since_first = (now - first_stored.0).to_std().unwrap_or_default();
    let elapsed = since_first.saturating_sub(finished.elapsed());
    let _ = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status();
    let _ = child.0.wait();
    Ok((elapsed, peak_rss))
}

async fn published_count(port: u16) -> Option<u64> {
    let body = fetch_metrics(port).await?;
    body.lines()
        .find_map(|line| line.strip_prefix("chat_worker_messages_published_total "))
        .and_then(|v| v.trim().parse().ok())
}

async fn fetch_metrics(port: u16) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await.ok()?;
    Some(body)
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
