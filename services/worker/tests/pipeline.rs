//! The worker against real Kafka, PostgreSQL and Redis, running in process.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chat_testkit::chaos::{url_addr, url_via, ChaosProxy};
use chat_testkit::kafka::{read_topic, TestRecord};
use chat_testkit::{assert_log_matches, eventually};
use common::{chat_records, InProcessWorker, World};

const SETTLE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_is_stored_once_with_contiguous_seq_in_partition_order_and_published() {
    let world = World::new(4).await;
    let (records, expected) = chat_records("store", 12, 3000);
    world.produce(&records[..1500]).await;
    let worker = InProcessWorker::start(world.settings()).await;
    world.produce(&records[1500..]).await;

    assert!(
        world.wait_stored(3000, SETTLE).await,
        "all 3000 records stored"
    );
    assert_log_matches(&world.db.rows().await, &expected);
    assert!(
        eventually(SETTLE, || async { world.tap.len() >= 3000 }).await,
        "all published"
    );
    let published: BTreeSet<(String, i64)> = world
        .tap
        .received()
        .iter()
        .map(|e| (e.message.channel.to_string(), e.message.seq))
        .collect();
    let stored: BTreeSet<(String, i64)> = world
        .db
        .rows()
        .await
        .into_iter()
        .map(|(channel, seq, _)| (channel, seq))
        .collect();
    assert_eq!(published, stored, "Redis saw exactly the stored messages");
    assert_eq!(world.tap.len(), 3000, "each message published once");

    let (status, metrics) = worker.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("chat_worker_messages_stored_total 3000"),
        "{metrics}"
    );
    assert!(metrics.contains("chat_worker_records_consumed_total 3000"));
    assert_eq!(worker.get("/readyz").await.0, 200);
    assert_eq!(worker.get("/healthz").await.0, 200);
    worker.stop().await;
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_records_add_no_row_and_no_seq_and_are_republished_with_their_stored_seq() {
    let world = World::new(3).await;
    let (records, expected) = chat_records("redeliver", 5, 900);
    world.produce(&records).await;

    let first = InProcessWorker::start(world.settings()).await;
    assert!(world.wait_stored(900, SETTLE).await);
    assert!(eventually(SETTLE, || async { world.tap.len() >= 900 }).await);
    first.stop().await;
    let before = world.db.rows().await;

    // A second consumer group reads the whole topic again: every record is a redelivery.
    let mut settings = world.settings();
    settings.kafka_group_id = chat_testkit::unique("second-group");
    let second = InProcessWorker::start(settings).await;
    assert!(
        eventually(SETTLE, || async { second.metrics.duplicates.get() >= 900 }).await,
        "the second pass sees 900 duplicates"
    );
    assert!(eventually(SETTLE, || async { world.tap.len() >= 1800 }).await);
    assert_eq!(second.metrics.messages_stored.get(), 0, "no new row");
    second.stop().await;

    let after = world.db.rows().await;
    assert_eq!(before, after, "no new row and no new seq");
    assert_log_matches(&after, &expected);
    // Lanes interleave partitions differently on each pass, so compare message by message.
    let received = world.tap.received();
    let first_pass: std::collections::HashMap<_, _> =
        received[..900].iter().map(|e| (e.message.id, e)).collect();
    assert_eq!(first_pass.len(), 900);
    for again in &received[900..] {
        let original = first_pass[&again.message.id];
        assert_eq!(
            original.message.seq, again.message.seq,
            "republished with the stored seq"
        );
        assert_eq!(original, again, "republished byte-identical");
    }
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_records_are_dead_lettered_with_their_reason_and_the_records_around_them_are_stored(
) {
    let world = World::new(1).await;
    let bad: Vec<(TestRecord, &str)> = vec![
        (TestRecord::raw(Some("c"), b"not json at all"), "not_json"),
        (
            TestRecord::raw(
                Some("#bad-1"),
                br##"{"channel":"#bad-1","text":"no author"}"##,
            ),
            "missing_field",
        ),
        (
            TestRecord::raw(
                Some("has space"),
                br#"{"channel":"has space","author":"a","text":"t"}"#,
            ),
            "invalid_channel",
        ),
        (
            TestRecord::raw(
                Some("#bad-1"),
                format!(
                    r##"{{"channel":"#bad-1","author":"a","text":"{}"}}"##,
                    "x".repeat(5000)
                )
                .as_bytes(),
            ),
            "invalid_text",
        ),
        (
            TestRecord::raw(
                Some("#other"),
                br##"{"channel":"#bad-1","author":"a","text":"t"}"##,
            ),
            "key_mismatch",
        ),
        (
            TestRecord::raw(
                Some("#bad-1"),
                br##"{"channel":"#bad-1","author":7,"text":"t"}"##,
            ),
            "invalid_field",
        ),
        (
            TestRecord::raw(
                Some("#bad-1"),
                br##"{"channel":"#bad-1","author":"a","text":"t","id":"nope"}"##,
            ),
            "invalid_id",
        ),
    ];
    let mut records = Vec::new();
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (i, (mut record, _)) in bad.clone().into_iter().enumerate() {
        let text = format!("valid {i}");
        records.push(TestRecord::chat("#bad-1", "alice", &text));
        expected.entry("#bad-1".into()).or_default().push(text);
        record.headers.push((
            "traceparent".into(),
            format!("00-{:032x}-{:016x}-01", i + 1, i + 1),
        ));
        records.push(record);
    }
    records.push(TestRecord::chat("#bad-1", "alice", "last"));
    expected.get_mut("#bad-1").unwrap().push("last".into());
    world.produce(&records).await;

    let worker = InProcessWorker::start(world.settings()).await;
    assert!(world.wait_stored(8, SETTLE).await);
    let dead = read_topic(
        &world.services.kafka_brokers,
        &world.dlq_topic,
        bad.len(),
        SETTLE,
    );
    assert_eq!(
        dead.len(),
        bad.len(),
        "every malformed record is dead-lettered"
    );
    for (i, ((original, code), dead)) in bad.iter().zip(&dead).enumerate() {
        assert_eq!(dead.header("dlq.reason"), Some(*code));
        assert!(dead.header("dlq.detail").is_some_and(|d| !d.is_empty()));
        assert_eq!(dead.header("dlq.topic"), Some(world.topic.as_str()));
        assert_eq!(dead.key, original.key, "original key kept");
        assert_eq!(dead.value, original.value, "original value kept");
        let traceparent = format!("00-{:032x}-{:016x}-01", i + 1, i + 1);
        assert_eq!(
            dead.header("traceparent"),
            Some(traceparent.as_str()),
            "original headers kept"
        );
    }
    assert!(
        eventually(SETTLE, || async {
            worker
                .metrics
                .dead_lettered
                .with_label_values(&["not_json"])
                .get()
                == 1
        })
        .await
    );
    assert_log_matches(&world.db.rows().await, &expected);
    worker.assert_dead_lettered("key_mismatch", 1).await;
    worker.stop().await;
    world.finish().await;
}

/// For each partition, the committed offset must not pass the first record that is not yet
/// done (not in `done`).
fn assert_nothing_committed_past_unfinished(
    committed: &std::collections::HashMap<i32, i64>,
    coordinates: &[(i32, i64)],
    texts: &[String],
    done: &BTreeSet<String>,
) {
    for (partition, committed_offset) in committed {
        let first_unfinished = coordinates
            .iter()
            .zip(texts)
            .filter(|((p, _), text)| p == partition && !done.contains(*text))
            .map(|((_, offset), _)| *offset)
            .min();
        if let Some(first_unfinished) = first_unfinished {
            assert!(
                *committed_offset <= first_unfinished,
                "partition {partition} committed {committed_offset} past unfinished offset {first_unfinished}"
            );
        }
    }
}

fn texts_of(records: &[TestRecord]) -> Vec<String> {
    records
        .iter()
        .map(|r| {
            serde_json::from_slice::<serde_json::Value>(&r.value).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_mid_stream_loses_nothing_and_commits_nothing_past_unstored_records() {
    let world = World::new(2).await;
    let proxy = ChaosProxy::start(url_addr(&world.db.url)).await;
    let mut settings = world.settings();
    settings.postgres.database_url = url_via(&world.db.url, proxy.addr());
    let (records, expected) = chat_records("pg-outage", 4, 2000);
    let texts = texts_of(&records);

    let worker = InProcessWorker::start(settings).await;
    let mut coordinates = world.produce(&records[..1000]).await;
    assert!(world.wait_stored(1000, SETTLE).await);

    proxy.cut();
    coordinates.extend(world.produce(&records[1000..]).await);
    assert!(
        eventually(SETTLE, || async { worker.get("/readyz").await.0 == 503 }).await,
        "readiness turns 503 while PostgreSQL is down"
    );
    assert!(
        eventually(SETTLE, || async {
            worker
                .metrics
                .retries
                .with_label_values(&["postgresql"])
                .get()
                >= 3
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(1500)).await; // past an auto-commit interval
    let stored: BTreeSet<String> = world
        .db
        .rows()
        .await
        .into_iter()
        .map(|(_, _, t)| t)
        .collect();
    assert!(stored.len() < 2000, "the outage held records back");
    assert_nothing_committed_past_unfinished(&world.committed(), &coordinates, &texts, &stored);

    proxy.restore();
    assert!(
        world.wait_stored(2000, SETTLE).await,
        "everything stored once PostgreSQL is back"
    );
    assert_log_matches(&world.db.rows().await, &expected);
    assert!(eventually(SETTLE, || async { worker.get("/readyz").await.0 == 200 }).await);
    worker.stop().await;
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_mid_stream_loses_nothing_and_commits_nothing_past_unpublished_records() {
    let world = World::new(2).await;
    let proxy = ChaosProxy::start(url_addr(&world.services.redis_url)).await;
    let mut settings = world.settings();
    settings.redis.redis_url = url_via(&world.services.redis_url, proxy.addr());
    let (records, expected) = chat_records("redis-outage", 4, 2000);
    let texts = texts_of(&records);

    let worker = InProcessWorker::start(settings).await;
    let mut coordinates = world.produce(&records[..1000]).await;
    assert!(eventually(SETTLE, || async { world.tap.len() >= 1000 }).await);

    proxy.cut();
    coordinates.extend(world.produce(&records[1000..]).await);
    assert!(eventually(SETTLE, || async { worker.get("/readyz").await.0 == 503 }).await);
    assert!(
        eventually(SETTLE, || async {
            worker.metrics.retries.with_label_values(&["redis"]).get() >= 3
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let published = world.tap.texts();
    assert!(published.len() < 2000, "the outage held records back");
    assert_nothing_committed_past_unfinished(&world.committed(), &coordinates, &texts, &published);

    proxy.restore();
    assert!(
        eventually(SETTLE, || async { world.tap.texts().len() == 2000 }).await,
        "every message published once Redis is back"
    );
    assert_log_matches(&world.db.rows().await, &expected);
    worker.stop().await;
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_and_commits_the_batch_in_flight() {
    let world = World::new(2).await;
    let (records, _) = chat_records("shutdown", 4, 4000);
    let texts = texts_of(&records);
    let coordinates = world.produce(&records).await;
    let mut settings = world.settings();
    settings.batch_max_records = 200;

    let worker = InProcessWorker::start(settings).await;
    assert!(eventually(SETTLE, || async { world.db.count().await > 0 }).await);
    worker.stop().await; // mid-stream: the stream is 4000 records long

    let stored: BTreeSet<String> = world
        .db
        .rows()
        .await
        .into_iter()
        .map(|(_, _, t)| t)
        .collect();
    let committed = world.committed();
    for partition in 0..world.partitions {
        let done_offsets: Vec<i64> = coordinates
            .iter()
            .zip(&texts)
            .filter(|((p, _), text)| *p == partition && stored.contains(*text))
            .map(|((_, o), _)| *o)
            .collect();
        let expected_commit = done_offsets.iter().max().map(|o| o + 1);
        assert_eq!(
            committed.get(&partition).copied(),
            expected_commit,
            "partition {partition}: committed offset is exactly past the last stored record"
        );
    }
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_id_travels_from_the_record_to_the_row_and_the_envelope() {
    let world = World::new(1).await;
    let value = serde_json::json!({"channel": "#who", "author": "alice", "text": "signed",
        "user_id": "auth0|12345"});
    world
        .produce(&[
            TestRecord::raw(Some("#who"), value.to_string().as_bytes()),
            TestRecord::chat("#who", "bob", "anonymous"),
        ])
        .await;
    let worker = InProcessWorker::start(world.settings()).await;
    assert!(world.wait_stored(2, SETTLE).await);
    let users: Vec<(i64, Option<String>)> =
        sqlx::query_as("select seq, user_id from messages order by seq")
            .fetch_all(&world.db.pool)
            .await
            .unwrap();
    assert_eq!(users, [(1, Some("auth0|12345".to_owned())), (2, None)]);
    assert!(eventually(SETTLE, || async { world.tap.len() >= 2 }).await);
    let published = world.tap.received();
    assert_eq!(published[0].message.user_id.as_deref(), Some("auth0|12345"));
    assert_eq!(published[1].message.user_id, None);
    worker.stop().await;
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_headers_travel_to_the_envelope_verbatim_when_the_worker_exports_no_spans() {
    let world = World::new(1).await;
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let mut traced = TestRecord::chat("#traced", "alice", "with context");
    traced.headers = vec![
        ("traceparent".into(), traceparent.into()),
        ("tracestate".into(), "vendor=abc".into()),
    ];
    world
        .produce(&[traced, TestRecord::chat("#traced", "bob", "without")])
        .await;
    let worker = InProcessWorker::start(world.settings()).await;
    assert!(eventually(SETTLE, || async { world.tap.len() >= 2 }).await);
    let published = world.tap.received();
    assert_eq!(published[0].traceparent.as_deref(), Some(traceparent));
    assert_eq!(published[0].tracestate.as_deref(), Some("vendor=abc"));
    assert_eq!(
        (
            published[1].traceparent.as_deref(),
            published[1].tracestate.as_deref()
        ),
        (None, None)
    );
    worker.stop().await;
    world.finish().await;
}

/// A worker whose input topic does not exist says so on /readyz (503, naming the topic and
/// the command that creates it) instead of waiting silently for records that cannot come;
/// once the topic exists it turns ready and consumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_input_topic_is_reported_until_it_exists() {
    let world = World::new(1).await;
    let mut settings = world.settings();
    let missing = chat_testkit::unique("chat.missing");
    settings.kafka_topic = missing.clone();
    let worker = InProcessWorker::start(settings).await;
    let (status, body) = worker.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains(&format!("topic {missing}")) && body.contains("create-topics"),
        "{body}"
    );
    chat_testkit::kafka::create_topic(&world.services.kafka_brokers, &missing, 1).await;
    assert!(
        eventually(SETTLE, || async { worker.get("/readyz").await.0 == 200 }).await,
        "ready once the topic exists"
    );
    worker.stop().await;
    chat_testkit::kafka::delete_topics(&world.services.kafka_brokers, &[&missing]).await;
    world.finish().await;
}

/// The value of an unlabelled or fully labelled series in the `/metrics` text, if present.
fn metric_value(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_gauges_follow_a_redis_outage_without_anyone_calling_readyz() {
    let world = World::new(1).await;
    let proxy = ChaosProxy::start(url_addr(&world.services.redis_url)).await;
    let mut settings = world.settings();
    settings.redis.redis_url = url_via(&world.services.redis_url, proxy.addr());
    let worker = InProcessWorker::start(settings).await;
    // Only `/metrics` is read below: the gauges must move by the background re-evaluation.
    let gauges = || async {
        let (status, metrics) = worker.get("/metrics").await;
        assert_eq!(status, 200);
        let value = |series: &str| metric_value(&metrics, series);
        (
            value("chat_worker_ready"),
            value(r#"chat_worker_dependency_up{dependency="redis"}"#),
            value(r#"chat_worker_dependency_up{dependency="postgresql"}"#),
            value(r#"chat_worker_dependency_up{dependency="kafka"}"#),
        )
    };
    let all_up = (Some(1.0), Some(1.0), Some(1.0), Some(1.0));
    assert!(
        eventually(SETTLE, || async { gauges().await == all_up }).await,
        "ready and every dependency up: {:?}",
        gauges().await
    );

    proxy.cut();
    let redis_down = (Some(0.0), Some(0.0), Some(1.0), Some(1.0));
    assert!(
        eventually(SETTLE, || async { gauges().await == redis_down }).await,
        "not ready, Redis down, the others up: {:?}",
        gauges().await
    );

    proxy.restore();
    assert!(
        eventually(SETTLE, || async { gauges().await == all_up }).await,
        "ready again once Redis is back: {:?}",
        gauges().await
    );
    worker.stop().await;
    world.finish().await;
}
