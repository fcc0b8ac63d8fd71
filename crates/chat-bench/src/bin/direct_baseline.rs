//! The direct-path baseline (latency benchmark): the floor of this design without durability.
//!
//! One Kafka consumer publishes each record straight to Redis, in the envelope chat-worker
//! publishes, as soon as it is consumed: no PostgreSQL, no batch, no linger. The per-channel
//! `seq` is counted in memory from 1. An unmodified chat-ws-server on a fresh database serves
//! it: the channels do not exist there, so a `subscribe` reads an empty history (`last_seq` 0)
//! and the hub sees seq 1, 2, 3, … with no gap, so it never back-fills.
//!
//! Records are parsed and validated by the worker's own code (`NewMessage::from_record`); the
//! invalid ones are skipped. Only the benchmark's fresh topic may feed it: a restart starts
//! every channel at seq 1 again.

use std::collections::HashMap;

use chat_core::channel::ChannelName;
use chat_core::envelope::{redis_channel, Envelope};
use chat_core::message::{IdPrefix, NewMessage, RecordOrigin};
use chrono::{DateTime, Utc};
use clap::Parser;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message};

#[derive(Debug, Parser)]
#[command(about = "Kafka → Redis with in-memory seq, no PostgreSQL (direct-path baseline)")]
struct Args {
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(long)]
    topic: String,
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Prefix of the Redis channels, as the serving chat-ws-server's `REDIS_PREFIX`.
    #[arg(long)]
    redis_prefix: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", format!("direct-baseline-{}", args.topic))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[&args.topic])?;
    let mut redis = redis::Client::open(args.redis_url.as_str())?
        .get_multiplexed_async_connection()
        .await?;

    let mut seqs: HashMap<ChannelName, i64> = HashMap::new();
    let mut prefixes: HashMap<i32, IdPrefix> = HashMap::new();
    let mut skipped = 0u64;
    loop {
        let record = match consumer.recv().await {
            Ok(record) => record,
            Err(err) => {
                eprintln!("direct-baseline: kafka: {err}");
                continue;
            }
        };
        let partition = record.partition();
        let origin = RecordOrigin {
            id_prefix: *prefixes
                .entry(partition)
                .or_insert_with(|| IdPrefix::new(record.topic(), partition)),
            offset: record.offset(),
            timestamp: record
                .timestamp()
                .to_millis()
                .and_then(DateTime::<Utc>::from_timestamp_millis),
        };
        let message = match NewMessage::from_record(record.key(), record.payload(), origin) {
            Ok(message) => message,
            Err(reason) => {
                skipped += 1;
                eprintln!("direct-baseline: record skipped ({skipped} so far): {reason}");
                continue;
            }
        };
        let seq = seqs.entry(message.channel.clone()).or_default();
        *seq += 1;
        let stored = message.stored(*seq, Utc::now());
        let name = redis_channel(&args.redis_prefix, &stored.channel);
        let payload = Envelope::new(stored, None).encode();
        redis::cmd("PUBLISH")
            .arg(name)
            .arg(payload)
            .query_async::<i64>(&mut redis)
            .await?;
    }
}
