//! Kafka helpers: topics, producing records, reading a group's committed offsets.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Creates a topic (and fails the test if it cannot).
pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topic request");
    for result in results {
        result.expect("topic created");
    }
}

/// Deletes topics (benchmarks call it on the way out); a failure is only reported.
pub async fn delete_topics(brokers: &str, topics: &[&str]) {
    let admin: Result<AdminClient<DefaultClientContext>, _> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create();
    let deleted = match admin {
        Ok(admin) => admin.delete_topics(topics, &AdminOptions::new()).await,
        Err(err) => Err(err),
    };
    if let Err(err) = deleted {
        eprintln!("could not delete topics {topics:?}: {err}");
    }
}

pub fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer")
}

/// A record to produce: key, value, headers.
#[derive(Debug, Clone, Default)]
pub struct TestRecord {
    pub key: Option<String>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl TestRecord {
    /// A valid chat message keyed by its channel.
    pub fn chat(channel: &str, author: &str, text: &str) -> Self {
        let value = serde_json::json!({"channel": channel, "author": author, "text": text});
        Self {
            key: Some(channel.to_owned()),
            value: value.to_string().into_bytes(),
            headers: Vec::new(),
        }
    }

    pub fn raw(key: Option<&str>, value: &[u8]) -> Self {
        Self {
            key: key.map(str::to_owned),
            value: value.to_vec(),
            headers: Vec::new(),
        }
    }
}

/// Produces all records (concurrently, in order per key) and returns their (partition, offset).
pub async fn produce_all(
    producer: &FutureProducer,
    topic: &str,
    records: &[TestRecord],
) -> Vec<(i32, i64)> {
    let mut out = Vec::with_capacity(records.len());
    for chunk in records.chunks(5000) {
        let sends = chunk.iter().map(|record| {
            let mut headers = OwnedHeaders::new();
            for (key, value) in &record.headers {
                headers = headers.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                });
            }
            let mut out = FutureRecord::<str, [u8]>::to(topic)
                .payload(&record.value)
                .headers(headers);
            if let Some(key) = &record.key {
                out = out.key(key);
            }
            producer.send(out, Duration::from_secs(30))
        });
        for delivery in futures::future::join_all(sends).await {
            let delivery = delivery.map_err(|(err, _)| err).expect("record produced");
            out.push((delivery.partition, delivery.offset));
        }
    }
    out
}

/// The committed offsets of `group` on `topic`, per partition (absent when none committed).
pub fn committed_offsets(
    brokers: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> HashMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("offset reader");
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .expect("committed offsets");
    committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// Every record currently on `topic` (all partitions, from the beginning), as
/// (key, value, headers), read until `expected` records were seen or `timeout` passed.
pub fn read_topic(
    brokers: &str,
    topic: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<ReadRecord> {
    use rdkafka::message::{Headers, Message};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", crate::unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("topic reader");
    consumer.subscribe(&[topic]).expect("subscribe");
    let deadline = std::time::Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < expected && std::time::Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            let headers = message
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| {
                            (
                                h.key.to_owned(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(ReadRecord {
                key: message
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned()),
                value: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                headers,
            });
        }
    }
    out
}

#[derive(Debug, Clone)]
pub struct ReadRecord {
    pub key: Option<String>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl ReadRecord {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}
