//! The checker: after the faults, once the system is quiet, the history of the run against
//! PostgreSQL (the log), Kafka (offsets, dead letters) and the REST API.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::cluster::{DLQ_TOPIC, GROUP, TOPIC};
use crate::history::History;
use crate::workload::publishers::MALFORMED_HEADER;
use crate::workload::readers::{page, PageError};
use crate::workload::subscribers::Tails;

/// A stored message.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Row {
    channel: String,
    seq: i64,
    id: Uuid,
    author: String,
    text: String,
}

async fn rows(pool: &PgPool) -> anyhow::Result<Vec<Row>> {
    Ok(sqlx::query_as::<_, Row>(
        "select channel, seq, id, author, text from messages order by channel, seq",
    )
    .fetch_all(pool)
    .await?)
}

async fn last_seqs(pool: &PgPool) -> anyhow::Result<HashMap<String, i64>> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("select channel, max(seq) from messages group by channel")
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().collect())
}

/// The partitions of a topic.
fn partitions(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<Vec<i32>> {
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let found = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>())
        .unwrap_or_default();
    anyhow::ensure!(!found.is_empty(), "topic {topic} has no partitions");
    Ok(found)
}

/// Records the group has not committed yet, over every partition of the input topic.
fn consumer_lag(brokers: &str) -> anyhow::Result<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", GROUP)
        .set("enable.auto.commit", "false")
        .create()?;
    let mut list = TopicPartitionList::new();
    for p in partitions(&consumer, TOPIC)? {
        list.add_partition(TOPIC, p);
    }
    let committed = consumer.committed_offsets(list, Duration::from_secs(10))?;
    let mut lag = 0;
    for element in committed.elements() {
        let (low, high) =
            consumer.fetch_watermarks(TOPIC, element.partition(), Duration::from_secs(10))?;
        let at = match element.offset() {
            Offset::Offset(o) => o,
            _ => low,
        };
        lag += (high - at).max(0);
    }
    Ok(lag)
}

/// The ids in the malformed-record header of every dead letter, and how many dead letters
/// carry none.
fn dead_letters(brokers: &str) -> anyhow::Result<(HashSet<Uuid>, u64)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "nemesis-checker")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut list = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for p in partitions(&consumer, DLQ_TOPIC)? {
        let (low, high) = consumer.fetch_watermarks(DLQ_TOPIC, p, Duration::from_secs(10))?;
        if high > low {
            list.add_partition_offset(DLQ_TOPIC, p, Offset::Offset(low))?;
            ends.insert(p, high);
        }
    }
    consumer.assign(&list)?;
    let (mut marked, mut unmarked) = (HashSet::new(), 0u64);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ends.is_empty() && Instant::now() < deadline {
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let id = message.headers().and_then(|headers| {
            headers
                .iter()
                .find(|h| h.key == MALFORMED_HEADER)
                .and_then(|h| h.value)
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.parse().ok())
        });
        match id {
            Some(id) => {
                marked.insert(id);
            }
            None => unmarked += 1,
        }
        if ends.get(&message.partition()) == Some(&(message.offset() + 1)) {
            ends.remove(&message.partition());
        }
    }
    anyhow::ensure!(ends.is_empty(), "dead-letter topic not read to its end");
    Ok((marked, unmarked))
}

/// What the end of the run reached while waiting for quiet.
#[derive(Debug, Serialize)]
pub struct Quiet {
    pub secs: f64,
    pub consumer_lag: i64,
    /// Open streams still short of their channel's last seq.
    pub streams_behind: Vec<String>,
}

/// Waits (up to `patience`) for the group's lag to reach 0 and every open stream to reach its
/// channel's last seq, the log no longer growing.
pub async fn wait_for_quiet(
    pool: &PgPool,
    brokers: &str,
    tails: &Tails,
    patience: Duration,
) -> anyhow::Result<Quiet> {
    let start = Instant::now();
    let mut previous = HashMap::new();
    loop {
        let broker = brokers.to_owned();
        let lag = tokio::task::spawn_blocking(move || consumer_lag(&broker)).await??;
        let last = last_seqs(pool).await?;
        let behind: Vec<String> = tails
            .open()
            .into_iter()
            .filter_map(|((client, channel), seen)| {
                let end = last.get(&channel).copied().unwrap_or(0);
                let seen = seen.unwrap_or(0);
                (seen != end).then(|| format!("client {client} {channel} at {seen} of {end}"))
            })
            .collect();
        let stable = last == previous;
        if (lag == 0 && behind.is_empty() && stable) || start.elapsed() > patience {
            return Ok(Quiet {
                secs: start.elapsed().as_secs_f64(),
                consumer_lag: lag,
                streams_behind: behind,
            });
        }
        previous = last;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub published_by_way: BTreeMap<String, (u64, u64)>,
    pub attempted: u64,
    pub acknowledged: u64,
    pub stored: u64,
    pub stored_unacknowledged: u64,
    pub malformed_attempted: u64,
    pub malformed_acknowledged: u64,
    pub dead_letters_marked: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub wrong_content: u64,
    pub unexpected_rows: u64,
    pub malformed_stored: u64,
    pub log_seq_breaks: u64,
    pub out_of_order: u64,
    pub seen_differs_from_log: u64,
    pub rest_scan_differs: u64,
    pub dead_letters_missing: u64,
    pub dead_letters_unexpected: u64,
    pub channels: u64,
}

/// Compares the run's history with the log, the REST API and Kafka. Violations go into the
/// history; the figures into the report.
pub async fn check(
    history: &History,
    pool: &PgPool,
    brokers: &str,
    servers: &[SocketAddr],
) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let rows = rows(pool).await?;
    let publishes = history.publishes();

    // The log: per channel, seq 1..n.
    let mut by_channel: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
    for row in &rows {
        by_channel
            .entry(row.channel.as_str())
            .or_default()
            .push(row);
    }
    report.channels = by_channel.len() as u64;
    for (channel, list) in &by_channel {
        for (i, row) in list.iter().enumerate() {
            if row.seq != i as i64 + 1 {
                report.log_seq_breaks += 1;
                history.violation(
                    "log_seq_break",
                    format!("{channel}: position {} holds seq {}", i + 1, row.seq),
                );
                break;
            }
        }
    }

    // Every acknowledged publish stored exactly once, with its content; nothing else stored.
    let mut by_id: HashMap<Uuid, Vec<&Row>> = HashMap::new();
    let mut by_text: HashMap<&str, u64> = HashMap::new();
    for row in &rows {
        by_id.entry(row.id).or_default().push(row);
        *by_text.entry(row.text.as_str()).or_default() += 1;
    }
    let known: HashSet<Uuid> = publishes.iter().map(|p| p.id).collect();
    for p in &publishes {
        report.attempted += 1;
        let way = format!("{:?}", p.via).to_lowercase();
        let entry = report.published_by_way.entry(way).or_default();
        entry.0 += 1;
        if p.acknowledged {
            entry.1 += 1;
        }
        if p.malformed {
            report.malformed_attempted += 1;
            report.malformed_acknowledged += u64::from(p.acknowledged);
            if by_id.contains_key(&p.id) {
                report.malformed_stored += 1;
                history.violation("malformed_stored", format!("{} {}", p.publisher, p.id));
            }
            continue;
        }
        report.acknowledged += u64::from(p.acknowledged);
        let stored = by_id.get(&p.id).map_or(&[][..], Vec::as_slice);
        let copies = by_text.get(p.text.as_str()).copied().unwrap_or(0);
        match stored.len() {
            0 if p.acknowledged => {
                report.lost += 1;
                history.violation(
                    "lost",
                    format!(
                        "{} #{} {} on {} ({} attempts)",
                        p.publisher, p.index, p.id, p.channel, p.attempts
                    ),
                );
            }
            0 => {}
            n => {
                report.stored += 1;
                report.stored_unacknowledged += u64::from(!p.acknowledged);
                if n > 1 || copies > 1 {
                    report.duplicated += 1;
                    history.violation(
                        "duplicated",
                        format!(
                            "{} {}: {n} rows with its id, {copies} with its text",
                            p.publisher, p.id
                        ),
                    );
                }
                let row = stored[0];
                if row.channel != p.channel || row.author != p.author || row.text != p.text {
                    report.wrong_content += 1;
                    history.violation(
                        "wrong_content",
                        format!(
                            "{} stored as {}/{}/{}",
                            p.id, row.channel, row.author, row.text
                        ),
                    );
                }
            }
        }
    }
    for row in &rows {
        if !known.contains(&row.id) {
            report.unexpected_rows += 1;
            history.violation(
                "unexpected_row",
                format!(
                    "{} seq {} id {} text {:?}",
                    row.channel, row.seq, row.id, row.text
                ),
            );
        }
    }

    // Each publisher's stored order is its publish order, per channel.
    let mut sequences: HashMap<(&str, &str), Vec<(u64, i64)>> = HashMap::new();
    for p in &publishes {
        if let Some(row) = by_id.get(&p.id).and_then(|r| r.first()) {
            sequences
                .entry((p.publisher.as_str(), p.channel.as_str()))
                .or_default()
                .push((p.index, row.seq));
        }
    }
    for ((publisher, channel), mut list) in sequences {
        list.sort_unstable();
        for pair in list.windows(2) {
            if pair[1].1 <= pair[0].1 {
                report.out_of_order += 1;
                history.violation(
                    "out_of_order",
                    format!(
                        "{publisher} on {channel}: #{} stored at seq {}, #{} at seq {}",
                        pair[0].0, pair[0].1, pair[1].0, pair[1].1
                    ),
                );
            }
        }
    }

    // What clients were given (subscribers and REST readers) is what the log holds.
    let log: HashMap<(&str, i64), &Row> = rows
        .iter()
        .map(|r| ((r.channel.as_str(), r.seq), r))
        .collect();
    for ((channel, seq), seen) in history.seen() {
        let same = log.get(&(channel.as_str(), seq)).is_some_and(|row| {
            row.id == seen.id && row.author == seen.author && row.text == seen.text
        });
        if !same {
            report.seen_differs_from_log += 1;
            history.violation(
                "seen_differs_from_log",
                format!(
                    "{channel} seq {seq}: a client was given {} ({:?})",
                    seen.id, seen.text
                ),
            );
        }
    }

    // A full REST scan of every channel, forward, equals the log.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    for (i, (channel, list)) in by_channel.iter().enumerate() {
        let server = servers[i % servers.len()];
        let mut scanned = Vec::new();
        let mut after = 0;
        loop {
            match page(&http, server, channel, &format!("limit=1000&after={after}")).await {
                Ok(page) if page.messages.is_empty() => break,
                Ok(page) => {
                    after = page.messages.last().map_or(after, |m| m.seq);
                    scanned.extend(page.messages);
                }
                Err(PageError::Unavailable(e) | PageError::Wrong(e)) => {
                    anyhow::bail!("REST scan of {channel}: {e}")
                }
            }
        }
        let equal = scanned.len() == list.len()
            && scanned.iter().zip(list.iter()).all(|(m, r)| {
                m.seq == r.seq && m.id == r.id && m.author == r.author && m.text == r.text
            });
        if !equal {
            report.rest_scan_differs += 1;
            history.violation(
                "rest_scan_differs",
                format!(
                    "{channel}: REST gave {} messages, the log holds {}",
                    scanned.len(),
                    list.len()
                ),
            );
        }
    }

    // Dead letters: every acknowledged malformed record, and nothing but malformed records
    // (compared as sets: dead-lettering is at-least-once).
    let broker = brokers.to_owned();
    let (marked, unmarked) = tokio::task::spawn_blocking(move || dead_letters(&broker)).await??;
    report.dead_letters_marked = marked.len() as u64;
    let malformed: HashSet<Uuid> = publishes
        .iter()
        .filter(|p| p.malformed)
        .map(|p| p.id)
        .collect();
    for p in publishes.iter().filter(|p| p.malformed && p.acknowledged) {
        if !marked.contains(&p.id) {
            report.dead_letters_missing += 1;
            history.violation("dead_letter_missing", format!("{} {}", p.publisher, p.id));
        }
    }
    let stray = marked.iter().filter(|id| !malformed.contains(id)).count() as u64 + unmarked;
    if stray > 0 {
        report.dead_letters_unexpected = stray;
        history.violation(
            "dead_letter_unexpected",
            format!("{stray} dead letters are not records the workload made malformed"),
        );
    }
    Ok(report)
}
