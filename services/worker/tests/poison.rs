//! Poison records against the real services: a record PostgreSQL refuses, or one whose id is
//! already stored with other content, is dead-lettered alone and never stalls its partition.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chat_testkit::kafka::{read_topic, TestRecord};
use chat_testkit::{assert_log_matches, eventually};
use common::{chat_records, InProcessWorker, World};
use serde_json::json;

const SETTLE: Duration = Duration::from_secs(60);

/// Texts containing this are refused by a check constraint that only the test database has:
/// a record the edge accepts and PostgreSQL does not.
const MARKER: &str = "REFUSED-BY-STORE";

fn text_of(record: &TestRecord) -> String {
    serde_json::from_slice::<serde_json::Value>(&record.value).unwrap()["text"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_postgresql_refuses_are_dead_lettered_alone_and_the_rest_of_their_batch_is_stored()
{
    let world = World::new(2).await;
    sqlx::query(&format!(
        "alter table messages add constraint test_refuses_marker \
         check (position('{MARKER}' in text) = 0)"
    ))
    .execute(&world.db.pool)
    .await
    .unwrap();
    let (mut records, _) = chat_records("refused", 4, 1200);
    // Refused records at the head of the stream (three adjacent), mid-batch and at the very end;
    // one NUL text, which the edge itself refuses.
    let refused_at = [0, 1, 2, 600, 1199];
    for &i in &refused_at {
        let channel = records[i].key.clone().unwrap();
        records[i] = TestRecord::chat(&channel, "tester", &format!("{MARKER} {i}"));
    }
    let nul_at = 300;
    let channel = records[nul_at].key.clone().unwrap();
    records[nul_at] = TestRecord::chat(&channel, "tester", "a\u{0}b");
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (i, record) in records.iter().enumerate() {
        if !refused_at.contains(&i) && i != nul_at {
            expected
                .entry(record.key.clone().unwrap())
                .or_default()
                .push(text_of(record));
        }
    }
    let coordinates = world.produce(&records).await;

    let worker = InProcessWorker::start(world.settings()).await;
    let valid = records.len() - refused_at.len() - 1;
    assert!(
        world.wait_stored(valid as i64, SETTLE).await,
        "every valid record is stored although its batch held refused ones"
    );
    let dead = read_topic(
        &world.services.kafka_brokers,
        &world.dlq_topic,
        refused_at.len() + 1,
        SETTLE,
    );
    let mut by_reason: HashMap<&str, Vec<&chat_testkit::kafka::ReadRecord>> = HashMap::new();
    for record in &dead {
        by_reason
            .entry(record.header("dlq.reason").unwrap())
            .or_default()
            .push(record);
    }
    let refused = &by_reason["rejected_by_store"];
    assert_eq!(refused.len(), refused_at.len(), "each refused record, once");
    for record in refused {
        assert_eq!(record.header("dlq.sqlstate"), Some("23514"));
        let detail = record.header("dlq.detail").unwrap();
        assert!(detail.contains("test_refuses_marker"), "{detail}");
        assert!(String::from_utf8_lossy(&record.value).contains(MARKER));
    }
    let mut refused_texts: Vec<String> = refused
        .iter()
        .map(|r| {
            serde_json::from_slice::<serde_json::Value>(&r.value).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    refused_texts.sort();
    let mut wanted: Vec<String> = refused_at.iter().map(|i| format!("{MARKER} {i}")).collect();
    wanted.sort();
    assert_eq!(refused_texts, wanted);
    assert_eq!(by_reason["invalid_text"].len(), 1, "the NUL text");
    assert_eq!(dead.len(), refused_at.len() + 1);

    assert_log_matches(&world.db.rows().await, &expected);
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for (partition, offset) in &coordinates {
        let end = ends.entry(*partition).or_default();
        *end = (*end).max(offset + 1);
    }
    assert!(
        eventually(SETTLE, || async { world.committed() == ends }).await,
        "every partition is committed to its end: {:?} vs {ends:?}",
        world.committed()
    );
    worker.assert_dead_lettered("rejected_by_store", 5).await;
    assert_eq!(worker.get("/readyz").await.0, 200, "never stuck not-ready");
    worker.stop().await;
    world.finish().await;
}

fn with_id(channel: &str, author: &str, text: &str, id: uuid::Uuid) -> TestRecord {
    let value = json!({"channel": channel, "author": author, "text": text, "id": id});
    TestRecord::raw(Some(channel), value.to_string().as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_reused_for_other_content_is_an_id_conflict_and_the_same_content_stays_a_duplicate() {
    let world = World::new(1).await;
    let stored_id = uuid::Uuid::new_v4();
    let batch_id = uuid::Uuid::new_v4();
    world
        .produce(&[with_id("#ids", "alice", "original", stored_id)])
        .await;
    let worker = InProcessWorker::start(world.settings()).await;
    assert!(world.wait_stored(1, SETTLE).await);

    let mut retried = json!({"channel": "#ids", "author": "alice", "text": "original",
        "id": stored_id, "sent_at": "2030-01-01T00:00:00Z"});
    let retried = TestRecord::raw(Some("#ids"), retried.take().to_string().as_bytes());
    let forged = with_id("#ids", "alice", "forged", stored_id);
    let moved = with_id("#elsewhere", "alice", "original", stored_id);
    let first = with_id("#ids", "bob", "first", batch_id);
    let impostor = with_id("#ids", "mallory", "first", batch_id);
    let after = TestRecord::chat("#ids", "carol", "after");
    world
        .produce(&[
            retried,
            forged.clone(),
            moved.clone(),
            first,
            impostor.clone(),
            after,
        ])
        .await;

    assert!(world.wait_stored(3, SETTLE).await);
    let dead = read_topic(&world.services.kafka_brokers, &world.dlq_topic, 3, SETTLE);
    assert_eq!(dead.len(), 3);
    for (dead, original) in dead.iter().zip([&forged, &moved, &impostor]) {
        assert_eq!(dead.header("dlq.reason"), Some("id_conflict"));
        assert_eq!(dead.value, original.value, "original value kept");
        assert!(dead
            .header("dlq.detail")
            .unwrap()
            .contains("already stored"));
    }
    assert!(
        eventually(SETTLE, || async { worker.metrics.duplicates.get() == 1 }).await,
        "the same content again is a duplicate"
    );
    assert_eq!(
        world.db.rows().await,
        [
            ("#ids".to_owned(), 1, "original".to_owned()),
            ("#ids".to_owned(), 2, "first".to_owned()),
            ("#ids".to_owned(), 3, "after".to_owned()),
        ]
    );
    assert!(eventually(SETTLE, || async { world.tap.len() >= 4 }).await);
    let republished = world
        .tap
        .received()
        .into_iter()
        .filter(|e| e.message.id.0 == stored_id)
        .count();
    assert_eq!(republished, 2, "stored, then republished as a duplicate");
    worker.assert_dead_lettered("id_conflict", 3).await;
    worker.stop().await;
    world.finish().await;
}
