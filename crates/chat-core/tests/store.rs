//! The PostgreSQL log against a real server: seq assignment, duplicates, concurrency.

use chat_core::channel::ChannelName;
use chat_core::message::{db_time, MessageId, NewMessage};
use chat_core::store::{is_broken_seq_invariant, Outcome, Refusal, Store};
use chat_testkit::{Services, TestDatabase};

fn message(channel: &str, text: &str) -> NewMessage {
    NewMessage {
        id: MessageId::new_random(),
        channel: ChannelName::parse(channel).unwrap(),
        author: "tester".into(),
        text: text.into(),
        sent_at: db_time(chrono::Utc::now()),
        user_id: None,
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
        .newest(&x, 50)
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

#[tokio::test]
async fn an_id_stored_with_other_content_is_a_conflict_and_stores_nothing() {
    let db = TestDatabase::create(&Services::from_env()).await;
    let store = Store::from_pool(db.pool.clone());
    let mut original = message("#x", "original");
    original.user_id = Some("user-1".into());
    store
        .insert_batch(std::slice::from_ref(&original))
        .await
        .unwrap();
    let x = ChannelName::parse("#x").unwrap();
    let read = store.newest(&x, 1).await.unwrap();
    assert_eq!(
        read[0].user_id.as_deref(),
        Some("user-1"),
        "user_id is stored"
    );

    let mut later_retry = original.clone();
    later_retry.sent_at = db_time(chrono::Utc::now() + chrono::Duration::seconds(5));
    let mut forged_text = original.clone();
    forged_text.text = "forged".into();
    let mut other_author = original.clone();
    other_author.author = "mallory".into();
    let mut other_user = original.clone();
    other_user.user_id = Some("mallory".into());
    let mut other_channel = original.clone();
    other_channel.channel = ChannelName::parse("#y").unwrap();
    let fresh = message("#x", "fresh");
    let mut fresh_forged = fresh.clone();
    fresh_forged.text = "fresh, forged".into();
    let batch = [
        later_retry,
        forged_text,
        other_author,
        other_user,
        other_channel,
        fresh,
        fresh_forged,
    ];
    let outcomes = store.insert_batch(&batch).await.unwrap();
    let kinds: Vec<&str> = outcomes
        .iter()
        .map(|o| match o {
            Outcome::Inserted(_) => "inserted",
            Outcome::Duplicate(_) => "duplicate",
            Outcome::Conflict(_) => "conflict",
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "duplicate", // sent_at does not count
            "conflict",
            "conflict",
            "conflict",
            "conflict",
            "inserted",
            "conflict" // an id repeated within the batch with other content
        ]
    );
    assert_eq!(outcomes[1].message().text, "original", "the stored message");
    assert_eq!(
        db.rows().await,
        [
            ("#x".to_owned(), 1, "original".to_owned()),
            ("#x".to_owned(), 2, "fresh".to_owned())
        ]
    );
    db.drop_database().await;
}

#[tokio::test]
async fn refusals_of_content_are_told_apart_from_faults_by_sqlstate() {
    let db = TestDatabase::create(&Services::from_env()).await;
    let store = Store::from_pool(db.pool.clone());
    let refusal = |err: &sqlx::Error| Refusal::of(err).map(|r| r.sqlstate);

    // Content PostgreSQL cannot hold (the edge refuses it; the store must not rely on that).
    let nul = store
        .insert_batch(&[message("#x", "a\0b")])
        .await
        .unwrap_err();
    assert_eq!(refusal(&nul).as_deref(), Some("22021"), "{nul}");

    // An integrity rule the edge does not know about.
    sqlx::query("alter table messages add constraint no_marker check (text <> 'marker')")
        .execute(&db.pool)
        .await
        .unwrap();
    let checked = store
        .insert_batch(&[message("#x", "fine"), message("#x", "marker")])
        .await
        .unwrap_err();
    let checked_refusal = Refusal::of(&checked).expect("a check violation is a refusal");
    assert_eq!(checked_refusal.sqlstate, "23514");
    assert!(checked_refusal.message.contains("no_marker"), "{checked}");
    assert_eq!(db.count().await, 0, "a refused batch stores nothing");

    // A (channel, seq) key violation is a broken invariant, retried, never a refusal.
    store.insert_batch(&[message("#x", "one")]).await.unwrap();
    sqlx::query("update channels set last_seq = 0")
        .execute(&db.pool)
        .await
        .unwrap();
    let clash = store
        .insert_batch(&[message("#x", "two")])
        .await
        .unwrap_err();
    assert!(is_broken_seq_invariant(&clash), "{clash}");
    assert_eq!(refusal(&clash), None);

    // A missing table or privilege is a deployment fault: retried, never a refusal.
    sqlx::query("alter table messages rename to messages_elsewhere")
        .execute(&db.pool)
        .await
        .unwrap();
    let missing = store
        .insert_batch(&[message("#x", "three")])
        .await
        .unwrap_err();
    assert_eq!(refusal(&missing), None, "{missing}");

    // Neither is an unreachable server.
    let down = Store::connect_lazy("postgres://chat:chat@127.0.0.1:1/chat", 1).unwrap();
    let unreachable = down
        .insert_batch(&[message("#x", "four")])
        .await
        .unwrap_err();
    assert_eq!(refusal(&unreachable), None, "{unreachable}");
    db.drop_database().await;
}
