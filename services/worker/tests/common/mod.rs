//! Shared set-up of the worker's integration tests: one isolated world per test (database,
//! topics, consumer group, Redis prefix) on the real services, and ways to run the worker in
//! process or as the real binary.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chat_testkit::kafka::{self, TestRecord};
use chat_testkit::redis_tap::RedisTap;
use chat_testkit::{unique, Services, TestDatabase};
use chat_worker::settings::Settings;
use chat_worker::startup::Application;
use rdkafka::producer::FutureProducer;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct World {
    pub services: Services,
    pub db: TestDatabase,
    pub topic: String,
    pub dlq_topic: String,
    pub group: String,
    pub prefix: String,
    pub partitions: i32,
    pub tap: RedisTap,
    pub producer: FutureProducer,
}

impl World {
    pub async fn new(partitions: i32) -> Self {
        let services = Services::from_env();
        let db = TestDatabase::create(&services).await;
        let topic = unique("chat.messages");
        let dlq_topic = format!("{topic}.dlq");
        kafka::create_topic(&services.kafka_brokers, &topic, partitions).await;
        kafka::create_topic(&services.kafka_brokers, &dlq_topic, 1).await;
        let prefix = format!("{}:", unique("test"));
        let tap = RedisTap::start(&services.redis_url, &prefix).await;
        let producer = kafka::producer(&services.kafka_brokers);
        Self {
            group: unique("group"),
            services,
            db,
            topic,
            dlq_topic,
            prefix,
            partitions,
            tap,
            producer,
        }
    }

    /// Drops the test database and deletes the topics (a passing test leaves nothing behind;
    /// a failing one keeps its data for a look).
    pub async fn finish(self) {
        kafka::delete_topics(
            &self.services.kafka_brokers,
            &[&self.topic, &self.dlq_topic],
        )
        .await;
        self.db.drop_database().await;
    }

    pub fn settings(&self) -> Settings {
        // The dead-letter topic is `<topic>.dlq`, as `self.dlq_topic`.
        Settings::for_tests(
            &self.services.kafka_brokers,
            &self.db.url,
            &self.services.redis_url,
            &self.topic,
            &self.group,
            &self.prefix,
        )
    }

    pub async fn produce(&self, records: &[TestRecord]) -> Vec<(i32, i64)> {
        kafka::produce_all(&self.producer, &self.topic, records).await
    }

    pub async fn wait_stored(&self, n: i64, timeout: Duration) -> bool {
        chat_testkit::eventually(timeout, || async { self.db.count().await >= n }).await
    }

    pub fn committed(&self) -> HashMap<i32, i64> {
        kafka::committed_offsets(
            &self.services.kafka_brokers,
            &self.group,
            &self.topic,
            self.partitions,
        )
    }
}

/// `count` chat records spread round-robin over `channels` channels. Texts are unique and
/// increasing, so the test can check per-channel order. Every third record carries its own id;
/// the others get the id derived from their Kafka coordinates.
pub fn chat_records(
    tag: &str,
    channels: usize,
    count: usize,
) -> (Vec<TestRecord>, BTreeMap<String, Vec<String>>) {
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let records = (0..count)
        .map(|i| {
            let channel = format!("#{tag}-{}", i % channels);
            let text = format!("{tag} message {i:07}");
            expected
                .entry(channel.clone())
                .or_default()
                .push(text.clone());
            let mut record = TestRecord::chat(&channel, "tester", &text);
            if i % 3 == 0 {
                let mut value: serde_json::Value = serde_json::from_slice(&record.value).unwrap();
                value["id"] = uuid::Uuid::new_v4().to_string().into();
                record.value = value.to_string().into_bytes();
            }
            record
        })
        .collect();
    (records, expected)
}

/// A worker running inside the test process.
pub struct InProcessWorker {
    pub cancel: CancellationToken,
    pub handle: JoinHandle<anyhow::Result<()>>,
    pub port: u16,
    pub metrics: chat_worker::metrics::Metrics,
}

impl InProcessWorker {
    pub async fn start(settings: Settings) -> Self {
        let app = Application::build(settings).await.expect("worker builds");
        let port = app.http_port();
        let metrics = app.metrics();
        let cancel = CancellationToken::new();
        let handle = tokio::spawn(app.run_until_stopped(cancel.clone()));
        Self {
            cancel,
            handle,
            port,
            metrics,
        }
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.handle)
            .await
            .expect("worker stops within 10 s")
            .expect("worker task")
            .expect("worker exits cleanly");
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.port, path).await
    }

    /// Asserts `/metrics` counts exactly `n` dead letters with this reason.
    pub async fn assert_dead_lettered(&self, reason: &str, n: u64) {
        let (_, metrics) = self.get("/metrics").await;
        let line = format!(r#"chat_worker_dead_lettered_total{{reason="{reason}"}} {n}"#);
        assert!(metrics.contains(&line), "{line} not in {metrics}");
    }
}

/// A minimal HTTP/1.1 GET against 127.0.0.1:port; returns status and body.
pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the health server");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("an HTTP status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The real `chat-worker` binary as a child process.
pub struct WorkerProcess {
    pub child: Child,
}

impl WorkerProcess {
    pub fn spawn(settings: &Settings) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_chat-worker"))
            .env("KAFKA_BROKERS", &settings.kafka.kafka_brokers)
            .env("KAFKA_TOPIC", &settings.kafka_topic)
            .env("KAFKA_DLQ_TOPIC", &settings.kafka_dlq_topic)
            .env("KAFKA_GROUP_ID", &settings.kafka_group_id)
            .env("DATABASE_URL", &settings.postgres.database_url)
            .env("REDIS_URL", &settings.redis.redis_url)
            .env("REDIS_PREFIX", &settings.redis_prefix)
            .env("HTTP_ADDR", "127.0.0.1:0")
            .env("BATCH_MAX_RECORDS", settings.batch_max_records.to_string())
            .env("RETRY_MAX_BACKOFF_MS", "500")
            .env("LOG_FORMAT", "text")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn chat-worker");
        Self { child }
    }

    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the worker");
        self.child.wait().expect("reap the worker");
    }

    /// Sends SIGTERM and waits up to `grace` for the exit; returns whether it exited with 0.
    pub async fn terminate(&mut self, grace: Duration) -> bool {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "SIGTERM delivered");
        let deadline = std::time::Instant::now() + grace;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the worker") {
                return status.success();
            }
            if std::time::Instant::now() > deadline {
                self.kill();
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
