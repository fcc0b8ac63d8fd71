use std::time::{Duration, Instant};

use super::*;
use crate::hub::testing::{delivery, outbox, page, queued, room_for, seqs, stored};
use crate::outbox::{Closer, Inbox, CLOSE_SLOW_CONSUMER};

/// Bytes of live messages buffered per subscriber while it reads history: 100 frames.
fn buffer() -> usize {
    room_for(100)
}

/// A channel whose Redis SUBSCRIBE is confirmed.
fn confirmed(cache: usize) -> Channel {
    let mut channel = Channel::new(1, buffer(), cache);
    channel.confirmed();
    channel
}

/// Registers subscriber `id` with a queue of `capacity` frames; returns the session's end of the
/// queue and its closer.
fn join(channel: &mut Channel, id: u64, capacity: usize) -> (Inbox, Closer) {
    let (outbox, queue) = outbox(capacity);
    let closer = outbox.closer.clone();
    channel.join(id, outbox, None);
    (queue, closer)
}

fn receive(channel: &mut Channel, seqs: std::ops::RangeInclusive<i64>) -> Tally {
    let mut tally = Tally::default();
    for seq in seqs {
        tally += channel.receive(delivery(seq)).1;
    }
    tally
}

fn cached_seqs(channel: &Channel, limit: usize) -> Option<(Vec<i64>, i64)> {
    channel
        .cached(limit)
        .map(|(messages, last)| (seqs(&messages), last))
}

#[test]
fn a_live_subscriber_gets_each_message_once_in_order() {
    let mut channel = confirmed(10);
    let (mut queue, _) = join(&mut channel, 1, 10);
    assert_eq!(channel.go_live(1, 0, &[]).0, GoLive::Live);
    assert_eq!(receive(&mut channel, 1..=2).delivered, 2);
    let (received, tally) = channel.receive(delivery(2));
    assert_eq!(received, Received::Duplicate);
    assert_eq!(
        tally,
        Tally {
            duplicates: 1,
            ..Tally::default()
        }
    );
    receive(&mut channel, 3..=3);
    assert_eq!(queued(&mut queue), [1, 2, 3]);
}

#[test]
fn a_buffering_subscriber_gets_only_messages_above_its_history_at_go_live() {
    let mut channel = confirmed(10);
    let (outbox, mut queue) = outbox(10);
    let (snapshot, ready) = channel.join(1, outbox, None);
    assert!(snapshot.is_none() && ready.is_none());
    // Messages 1..=5 arrive while the session reads history up to 3.
    assert_eq!(receive(&mut channel, 1..=5).delivered, 0);
    assert!(queued(&mut queue).is_empty());
    let (outcome, tally) = channel.go_live(1, 3, &page(1..=3));
    assert_eq!(outcome, GoLive::Live);
    assert_eq!(tally.delivered, 2);
    assert_eq!(queued(&mut queue), [4, 5]);
    receive(&mut channel, 6..=6);
    assert_eq!(queued(&mut queue), [6]);
    // The history and the buffer extended the cache back to seq 1.
    assert_eq!(cached_seqs(&channel, 10), Some(((1..=6).collect(), 6)));
}

#[test]
fn a_live_subscriber_skips_what_its_history_already_had() {
    let mut channel = confirmed(10);
    receive(&mut channel, 1..=1);
    let (mut queue, _) = join(&mut channel, 1, 10);
    // The session read up to 3 from PostgreSQL before 2 and 3 arrived live.
    assert_eq!(channel.go_live(1, 3, &[]).0, GoLive::Live);
    receive(&mut channel, 2..=4);
    assert_eq!(queued(&mut queue), [4]);
}

#[test]
fn a_hole_between_history_and_buffer_means_catch_up() {
    let mut channel = confirmed(10);
    let (mut queue, _) = join(&mut channel, 1, 10);
    receive(&mut channel, 5..=5);
    assert_eq!(channel.go_live(1, 2, &[]).0, GoLive::CatchUp);
    // The session read 3 and 4 from PostgreSQL meanwhile.
    assert_eq!(channel.go_live(1, 4, &[]).0, GoLive::Live);
    assert_eq!(queued(&mut queue), [5]);
}

/// A new channel state knows no last seq until a live message arrives or a subscriber goes
/// live. Sessions read PostgreSQL at different moments: the first to go live sets the last seq
/// from its own (newer) read, and a message between the two reads, still on its way from Redis,
/// arrives as a duplicate. A subscriber whose older read ended below that last seq must catch up,
/// or it never gets that message.
#[test]
fn going_live_below_the_last_seq_another_read_set_means_catch_up() {
    let mut channel = confirmed(10);
    let (mut older, _) = join(&mut channel, 1, 10);
    let (mut newer, _) = join(&mut channel, 2, 10);
    // Subscriber 1 read up to 100; 101 was stored; subscriber 2 read up to 101.
    assert_eq!(channel.go_live(2, 101, &[]).0, GoLive::Live);
    assert_eq!(channel.go_live(1, 100, &[]).0, GoLive::CatchUp);
    // 101 arrives live: already delivered as far as the channel knows.
    assert_eq!(channel.receive(delivery(101)).0, Received::Duplicate);
    // The catch-up read PostgreSQL again and sent 101.
    assert_eq!(channel.go_live(1, 101, &[]).0, GoLive::Live);
    receive(&mut channel, 102..=102);
    assert_eq!(queued(&mut older), [102]);
    assert_eq!(queued(&mut newer), [102]);
}

/// The same with the last seq set by a REST read's page.
#[test]
fn going_live_below_a_seeded_last_seq_means_catch_up() {
    let mut channel = confirmed(10);
    let (mut queue, _) = join(&mut channel, 1, 10);
    channel.seed(1, &page(1..=5));
    assert_eq!(channel.go_live(1, 3, &[]).0, GoLive::CatchUp);
    assert_eq!(channel.go_live(1, 5, &[]).0, GoLive::Live);
    receive(&mut channel, 4..=6);
    assert_eq!(queued(&mut queue), [6]);
}

#[test]
fn an_overflowing_buffer_means_catch_up() {
    let mut channel = Channel::new(1, room_for(2), 10);
    let (mut queue, _) = join(&mut channel, 1, 10);
    receive(&mut channel, 1..=3);
    assert_eq!(channel.go_live(1, 0, &[]).0, GoLive::CatchUp);
    receive(&mut channel, 4..=4);
    assert_eq!(channel.go_live(1, 3, &[]).0, GoLive::Live);
    assert_eq!(queued(&mut queue), [4]);
}

#[test]
fn delivery_appends_to_the_cache_contiguously() {
    let mut channel = confirmed(3);
    receive(&mut channel, 1..=5);
    assert_eq!(cached_seqs(&channel, 3), Some((vec![3, 4, 5], 5)));
    assert_eq!(cached_seqs(&channel, 4), None, "only the newest 3 are kept");
    // A gap: 7 waits for the repair, the cache still ends at 5.
    assert_eq!(channel.receive(delivery(7)).0, Received::Gap { last: 5 });
    assert_eq!(cached_seqs(&channel, 3), Some((vec![3, 4, 5], 5)));
    channel.backfill(&[stored(6)]);
    assert_eq!(channel.next_repair().0, None);
    assert_eq!(cached_seqs(&channel, 3), Some((vec![5, 6, 7], 7)));
    let off = Channel::new(1, buffer(), 0);
    assert_eq!(cached_seqs(&off, 0), None, "a capacity of 0 turns it off");
}

#[test]
fn a_gap_is_repaired_before_later_messages_are_delivered() {
    let mut channel = confirmed(10);
    let (mut queue, _) = join(&mut channel, 1, 10);
    channel.go_live(1, 0, &[]);
    receive(&mut channel, 1..=1);
    assert_eq!(channel.receive(delivery(4)).0, Received::Gap { last: 1 });
    assert_eq!(channel.receive(delivery(5)).0, Received::Pending);
    assert!(!channel.is_current(), "a repair is running");
    let (read, _) = channel.next_repair();
    let read = read.unwrap();
    assert_eq!((read.after, read.upto), (1, Some(3)));
    // The read returns 2..=4; 4 is pending too.
    let tally = channel.backfill(&[stored(2), stored(3), stored(4)]);
    assert_eq!((tally.backfilled, tally.delivered), (3, 3));
    let (read, tally) = channel.next_repair();
    assert!(read.is_none());
    assert_eq!((tally.duplicates, tally.delivered), (1, 1));
    assert!(channel.is_current());
    assert_eq!(queued(&mut queue), [1, 2, 3, 4, 5]);
}

#[test]
fn a_full_queue_closes_the_subscriber_as_a_slow_consumer() {
    let mut channel = confirmed(10);
    let (_slow_queue, closer) = join(&mut channel, 1, 1);
    let (mut fast_queue, _) = join(&mut channel, 2, 10);
    channel.go_live(1, 0, &[]);
    channel.go_live(2, 0, &[]);
    assert_eq!(receive(&mut channel, 1..=1).delivered, 2);
    let tally = receive(&mut channel, 2..=3);
    assert_eq!((tally.delivered, tally.slow), (2, 1));
    assert_eq!(
        closer.reason(),
        Some((CLOSE_SLOW_CONSUMER, "slow consumer"))
    );
    assert_eq!(channel.subscribers(), 1);
    assert_eq!(queued(&mut fast_queue), [1, 2, 3]);
}

#[test]
fn go_live_closes_a_subscriber_whose_queue_cannot_take_the_buffer() {
    let mut channel = confirmed(10);
    let (_queue, closer) = join(&mut channel, 1, 1);
    receive(&mut channel, 1..=3);
    let (outcome, tally) = channel.go_live(1, 0, &[]);
    assert_eq!(outcome, GoLive::Closed);
    assert_eq!((tally.delivered, tally.slow), (1, 1));
    assert_eq!(
        closer.reason(),
        Some((CLOSE_SLOW_CONSUMER, "slow consumer"))
    );
    assert_eq!(channel.subscribers(), 0);
    assert_eq!(channel.go_live(1, 0, &[]).0, GoLive::Closed);
}

#[test]
fn a_closed_session_leaves_quietly() {
    let mut channel = confirmed(10);
    let (queue, closer) = join(&mut channel, 1, 10);
    channel.go_live(1, 0, &[]);
    drop(queue);
    assert_eq!(receive(&mut channel, 1..=1), Tally::default());
    assert_eq!(channel.subscribers(), 0);
    assert_eq!(closer.reason(), None);
}

#[test]
fn subscribers_wait_for_the_redis_subscribe() {
    let mut channel = Channel::new(1, buffer(), 10);
    let (first, _q1) = outbox(10);
    let (_, ready) = channel.join(1, first, None);
    let mut ready = ready.expect("not on Redis yet");
    assert!(ready.try_recv().is_err());
    assert!(!channel.is_current());
    channel.confirmed();
    assert!(ready.try_recv().is_ok());
    assert!(channel.is_current());
    let (second, _q2) = outbox(10);
    assert!(channel.join(2, second, None).1.is_none());
    channel.disconnected();
    let (third, _q3) = outbox(10);
    assert!(channel.join(3, third, None).1.is_some());
}

#[test]
fn a_snapshot_comes_from_the_cache_only_when_it_covers_the_request() {
    let mut channel = confirmed(10);
    receive(&mut channel, 1..=3);
    let (outbox, _queue) = outbox(10);
    let snapshot = channel.join(1, outbox.clone(), Some(2)).0.unwrap();
    assert_eq!(
        (seqs(&snapshot.messages), snapshot.last_seq),
        (vec![2, 3], 3)
    );
    // Every message since seq 1 is held: enough for any limit.
    let snapshot = channel.join(2, outbox.clone(), Some(50)).0.unwrap();
    assert_eq!(seqs(&snapshot.messages), [1, 2, 3]);
    // A channel first seen at seq 10 holds too few for the newest 5.
    let mut later = confirmed(10);
    receive(&mut later, 10..=10);
    assert!(later.join(1, outbox, Some(5)).0.is_none());
}

#[test]
fn a_seed_needs_the_same_state_and_a_current_subscription() {
    let mut channel = Channel::new(7, buffer(), 10);
    channel.seed(7, &page(1..=3));
    assert_eq!(cached_seqs(&channel, 3), None, "not on Redis yet");
    channel.confirmed();
    channel.seed(6, &page(1..=3));
    assert_eq!(
        cached_seqs(&channel, 3),
        None,
        "another state of the channel"
    );
    channel.seed(7, &page(1..=3));
    assert_eq!(cached_seqs(&channel, 3), Some((vec![1, 2, 3], 3)));
    receive(&mut channel, 4..=4);
    assert_eq!(cached_seqs(&channel, 10), Some(((1..=4).collect(), 4)));
}

#[test]
fn a_reconnect_sends_buffering_subscribers_back_to_postgresql() {
    let mut channel = confirmed(10);
    let (_queue, _) = join(&mut channel, 1, 10);
    receive(&mut channel, 1..=1);
    channel.disconnected();
    channel.confirmed();
    assert!(channel.reconnected(), "a repair must start");
    assert!(!channel.reconnected(), "one is running already");
    assert_eq!(channel.go_live(1, 1, &[]).0, GoLive::CatchUp);
    let read = channel.next_repair().0.unwrap();
    assert_eq!((read.after, read.upto), (1, None));
    assert!(
        !Channel::new(2, buffer(), 10).reconnected(),
        "nothing delivered yet"
    );
}

#[test]
fn an_unused_channel_expires_after_the_linger_period() {
    let linger = Duration::from_secs(30);
    let now = Instant::now();
    let mut channel = confirmed(10);
    assert!(channel.expired(linger, now), "never used");
    let (_queue, _) = join(&mut channel, 1, 10);
    channel.touch(now);
    assert!(!channel.expired(linger, now + linger));
    assert!(channel.leave(1));
    channel.idle(now);
    assert!(!channel.expired(linger, now + linger / 2));
    channel.touch(now + linger / 2);
    assert!(!channel.expired(linger, now + linger));
    assert!(channel.expired(linger, now + linger * 2));
}
