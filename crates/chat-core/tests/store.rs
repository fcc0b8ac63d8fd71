//! The PostgreSQL log against a real server: seq assignment, duplicates, concurrency.

use chat_core::channel::ChannelName;
use chat_core::message::{db_time, MessageId, NewMessage};
use chat_core::store::{Outcome, Store};
use chat_testkit::{Services, TestDatabase};

fn message(channel: &str, text: &str) -> NewMessage {
    NewMessage {
        id: MessageId::new_random(),
        channel: ChannelName::parse(channel).unwrap(),
        author: "tester".into(),
        text: text.into(),
        sent_at: db_time(chrono::Utc::now()),
    }
}

fn seqs(outcomes: &[Outcome]) -> Vec<(bool, String, i64)> {
    outcomes
        .iter()
        .map(|o| {
            let m = o.message();
            (
                matches!(o, Outcome::Inserted(_)),
                m.channel.to_string(),
                m.seq,
            )
        })
        .collect()
}

#[tokio::test]
async fn duplicates_keep_their_stored_seq_and_new_messages_continue_the_sequence() {
    let db = TestDatabase::create(&Services::from_env()).await;
    let store = Store::from_pool(db.pool.clone());

    let first = vec![
        message("#x", "x1"),
        message("#y", "y1"),
        message("#x", "x2"),
        message("#x", "x3"),
    ];
    let outcomes = store.insert_batch(&first).await.unwrap();
    assert_eq!(
        seqs(&outcomes),
        vec![
            (true, "#x".into(), 1),
            (true, "#y".into(), 1),
            (true, "#x".into(), 2),
            (true, "#x".into(), 3)
        ]
    );

    // A redelivery of x2, two new messages, and the same new id twice in one batch.
    let repeated = message("#x", "x5");
    let second = vec![
        first[2].clone(),
        message("#x", "x4"),
        message("#y", "y2"),
        repeated.clone(),
        repeated,
    ];
    let outcomes = store.insert_batch(&second).await.unwrap();
    assert_eq!(
        seqs(&outcomes),
        vec![
            (false, "#x".into(), 2),
            (true, "#x".into(), 4),
            (true, "#y".into(), 2),
            (true, "#x".into(), 5),
            (false, "#x".into(), 5)
        ]
    );
    assert_eq!(
        outcomes[0].message().text,
        "x2",
        "the duplicate is the stored row"
    );

    let x = ChannelName::parse("#x").unwrap();
    assert_eq!(store.last_seq(&x).await.unwrap(), 5);
    let texts: Vec<String> = store
        .latest(&x, 50)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(texts, ["x1", "x2", "x3", "x4", "x5"]);
    assert_eq!(db.count().await, 7);

    // The whole batch again: nothing new.
    let outcomes = store.insert_batch(&second).await.unwrap();
    assert!(outcomes.iter().all(|o| matches!(o, Outcome::Duplicate(_))));
    assert_eq!(db.count().await, 7);
    db.drop_database().await;
}

#[tokio::test]
async fn concurrent_writers_of_one_channel_never_leave_a_hole_or_reuse_a_seq() {
    let db = TestDatabase::create(&Services::from_env()).await;
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let store = Store::from_pool(db.pool.clone());
            tokio::spawn(async move {
                for b in 0..10 {
                    let batch: Vec<_> = (0..25)
                        .map(|i| message("#shared", &format!("w{w} b{b} m{i}")))
                        .chain([message(&format!("#own-{w}"), "own")])
                        .collect();
                    store.insert_batch(&batch).await.unwrap();
                }
            })
        })
        .collect();
    for writer in futures::future::join_all(writers).await {
        writer.unwrap();
    }
    let shared: Vec<i64> = db
        .rows()
        .await
        .into_iter()
        .filter(|(channel, _, _)| channel == "#shared")
        .map(|(_, seq, _)| seq)
        .collect();
    assert_eq!(shared, (1..=1000).collect::<Vec<i64>>());
    db.drop_database().await;
}
