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
