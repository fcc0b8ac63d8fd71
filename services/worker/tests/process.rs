//! The real `chat-worker` binary as a child process: SIGKILL at random moments, a second
//! replica in the same consumer group, SIGTERM.

mod common;

use std::time::Duration;

use chat_testkit::{assert_log_matches, eventually};
use common::{chat_records, WorkerProcess, World};
use rand::Rng;

const SETTLE: Duration = Duration::from_secs(120);
const GRACE: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_at_random_moments_loses_nothing_and_duplicates_nothing() {
    let world = World::new(4).await;
    let (records, expected) = chat_records("crash", 16, 24_000);
    let mut settings = world.settings();
    settings.batch_max_records = 300;

    let producing = {
        let records = records.clone();
        let producer = world.producer.clone();
        let topic = world.topic.clone();
        tokio::spawn(async move {
            for chunk in records.chunks(2000) {
                chat_testkit::kafka::produce_all(&producer, &topic, chunk).await;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    };

    let mut worker = WorkerProcess::spawn(&settings);
    let mut kills = 0;
    while kills < 5 {
        let pause = rand::rng().random_range(300..1500);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        worker.kill();
        kills += 1;
        worker = WorkerProcess::spawn(&settings);
    }
    producing.await.expect("producer task");

    assert!(
        world.wait_stored(24_000, SETTLE).await,
        "every record stored after 5 SIGKILLs"
    );
    assert_log_matches(&world.db.rows().await, &expected);
    assert!(
        eventually(SETTLE, || async { world.tap.texts().len() == 24_000 }).await,
        "every message published at least once"
    );
    assert!(worker.terminate(GRACE).await, "SIGTERM: exit 0 within 10 s");
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_keep_per_channel_order_when_one_stops_mid_stream() {
    let world = World::new(4).await;
    let (records, expected) = chat_records("rebalance", 12, 12_000);
    let settings = world.settings();
    let mut first = WorkerProcess::spawn(&settings);
    let mut second = WorkerProcess::spawn(&settings);

    let producing = {
        let records = records.clone();
        let producer = world.producer.clone();
        let topic = world.topic.clone();
        tokio::spawn(async move {
            for chunk in records.chunks(500) {
                chat_testkit::kafka::produce_all(&producer, &topic, chunk).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    assert!(world.wait_stored(4_000, SETTLE).await);
    assert!(
        second.terminate(GRACE).await,
        "the stopped replica exits 0 within 10 s"
    );
    producing.await.expect("producer task");

    assert!(
        world.wait_stored(12_000, SETTLE).await,
        "the remaining replica takes over every partition"
    );
    assert_log_matches(&world.db.rows().await, &expected);
    assert!(first.terminate(GRACE).await);
    world.finish().await;
}

/// A passthrough property the guarantees depend on stops the worker at start, before it
/// connects anywhere, with an error naming the variable and the property; a refused value is
/// not echoed.
#[test]
fn a_guarantee_critical_kafka_property_is_refused_at_start() {
    for (variable, property) in [
        (
            "KAFKA_CONFIG_ENABLE_AUTO_OFFSET_STORE",
            "enable.auto.offset.store",
        ),
        ("KAFKA_CONFIG_ISOLATION_LEVEL", "isolation.level"),
        ("KAFKA_CONFIG_ACKS", "acks"),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_chat-worker"))
            .env("LOG_FORMAT", "text")
            .env("KAFKA_BROKERS", "127.0.0.1:1")
            .env(variable, "value-never-echoed")
            .output()
            .expect("chat-worker runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{variable}: the worker started");
        assert!(
            stderr.contains(&format!("{variable}: {property} cannot be set")),
            "{variable}: {stderr}"
        );
        assert!(!stderr.contains("value-never-echoed"), "{stderr}");
    }
}

/// `chat-worker migrate` started before PostgreSQL (a migration Job racing the database's
/// start) waits for it, and gives up with a clear error after MIGRATE_WAIT_SECS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_waits_for_postgresql_then_gives_up_clearly() {
    use chat_testkit::chaos::{url_addr, url_via, ChaosProxy};

    let services = chat_testkit::Services::from_env();
    let db = chat_testkit::TestDatabase::create(&services).await;
    let port = std::net::SocketAddr::from(([127, 0, 0, 1], chat_testkit::ports::free_port()));
    let late_url = url_via(&db.url, port);
    let migrate = |url: &str, wait: &str| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_chat-worker"))
            .arg("migrate")
            .env("LOG_FORMAT", "text")
            .env("DATABASE_URL", url)
            .env("MIGRATE_WAIT_SECS", wait)
            .output()
    };

    let nobody = migrate(&late_url, "1").await.unwrap();
    let stderr = String::from_utf8_lossy(&nobody.stderr);
    assert!(!nobody.status.success(), "{stderr}");
    assert!(
        stderr.contains("PostgreSQL not reachable after 1 s"),
        "{stderr}"
    );

    let waiting = tokio::spawn(migrate(&late_url, "60"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !waiting.is_finished(),
        "migrate waits while nothing listens"
    );
    let _proxy = ChaosProxy::start_on(port, url_addr(&db.url)).await.unwrap();
    let done = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("migrate finishes once PostgreSQL answers")
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success(), "{stderr}");
    assert!(stderr.contains("migrations applied"), "{stderr}");
    db.drop_database().await;
}
