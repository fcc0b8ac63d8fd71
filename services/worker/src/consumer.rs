//! The Kafka side: consumer configuration, batching, and offset storage.
//!
//! Offsets are stored (`enable.auto.offset.store=false`) only after the whole batch has been
//! dead-lettered, stored and published; librdkafka's auto-commit then commits stored offsets
//! only. A crash at any point therefore redelivers, and never skips, unfinished records.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::record::Record;
use crate::settings::Settings;

/// Receives librdkafka's callbacks: statistics (for the lag gauge) and rebalances (logged).
pub struct WorkerContext {
    metrics: Metrics,
}

impl ClientContext for WorkerContext {
    fn stats(&self, statistics: Statistics) {
        self.metrics.consumer_lag.reset();
        for (topic, stats) in &statistics.topics {
            for (partition, p) in &stats.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    self.metrics
                        .consumer_lag
                        .with_label_values(&[topic.as_str(), &partition.to_string()])
                        .set(p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for WorkerContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                tracing::info!(kafka.partitions = ?partitions(list), "partitions assigned")
            }
            Rebalance::Revoke(list) => {
                tracing::info!(kafka.partitions = ?partitions(list), "partitions revoked")
            }
            Rebalance::Error(err) => tracing::warn!(error = %err, "rebalance failed"),
        }
    }
}

fn partitions(list: &rdkafka::TopicPartitionList) -> Vec<i32> {
    list.elements().iter().map(|e| e.partition()).collect()
}

pub type WorkerConsumer = StreamConsumer<WorkerContext>;

/// Creates the consumer and subscribes it to the input topic.
pub fn create(
    settings: &Settings,
    metrics: Metrics,
) -> Result<WorkerConsumer, rdkafka::error::KafkaError> {
    // The passthrough (KAFKA_CONFIG_*) may retune the timeouts below, never the guarantees:
    // it refuses the commit, offset-store, offset-reset and isolation properties at start.
    let consumer: WorkerConsumer = settings
        .kafka
        .apply(
            ClientConfig::new()
                .set("enable.auto.commit", "true")
                .set("auto.commit.interval.ms", "1000")
                .set("enable.auto.offset.store", "false")
                .set("auto.offset.reset", "earliest")
                .set("statistics.interval.ms", "5000")
                .set("session.timeout.ms", "10000")
                .set("heartbeat.interval.ms", "1000"),
        )
        .set("group.id", &settings.kafka_group_id)
        .set(
            "queued.max.messages.kbytes",
            settings.kafka_fetch_queue_kbytes.max(1).to_string(),
        )
        .create_with_context(WorkerContext { metrics })?;
    consumer.subscribe(&[&settings.kafka_topic])?;
    Ok(consumer)
}

/// Consumes until `cancel` fires. Records are routed by partition to `lanes` lanes; each lane
/// batches, processes (retrying dependencies) and stores offsets on its own, so batches of
/// different partitions (hence of disjoint channels) are stored concurrently while each
/// partition stays strictly in order. On the way out every lane finishes the batch it holds,
/// and the stored offsets are committed synchronously.
pub async fn run(
    consumer: Arc<WorkerConsumer>,
    pipeline: Pipeline,
    max_records: usize,
    linger: Duration,
    lanes: usize,
    cancel: CancellationToken,
) {
    let lanes = lanes.max(1);
    let mut senders = Vec::with_capacity(lanes);
    let mut handles = Vec::with_capacity(lanes);
    for _ in 0..lanes {
        let (sender, receiver) = mpsc::channel::<Record>(max_records.max(1));
        senders.push(sender);
        handles.push(tokio::spawn(lane(
            receiver,
            Arc::clone(&consumer),
            pipeline.clone(),
            max_records,
            linger,
            cancel.clone(),
        )));
    }

    loop {
        let received = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            received = consumer.recv() => received,
        };
        match received {
            Ok(message) => {
                let record = Record::from_message(&message);
                let lane = record.partition.unsigned_abs() as usize % lanes;
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => break,
                    sent = senders[lane].send(record) => if sent.is_err() { break },
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "kafka consumer error");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    drop(senders);
    for handle in handles {
        if let Err(err) = handle.await {
            tracing::error!(error = %err, "pipeline lane panicked");
        }
    }

    let committer = Arc::clone(&consumer);
    let committed =
        tokio::task::spawn_blocking(move || committer.commit_consumer_state(CommitMode::Sync))
            .await;
    match committed {
        Ok(Ok(())) => tracing::info!("offsets committed"),
        Ok(Err(rdkafka::error::KafkaError::ConsumerCommit(
            rdkafka::types::RDKafkaErrorCode::NoOffset,
        ))) => {}
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "final offset commit failed; records will be redelivered")
        }
        Err(err) => tracing::warn!(error = %err, "final offset commit panicked"),
    }
}

/// One lane: waits for a first record, then processes it with whatever is queued behind it
/// ([`collect`]), stores the batch's offsets, and starts again. Returns once `cancel` fires
/// (after the batch in hand).
///
/// Batching is adaptive: an idle lane sends a lone record at once, and records that arrive while
/// a batch is in flight queue up and form the next one, so batches grow only under load.
async fn lane(
    mut records: mpsc::Receiver<Record>,
    consumer: Arc<WorkerConsumer>,
    pipeline: Pipeline,
    max_records: usize,
    linger: Duration,
    cancel: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            first = records.recv() => match first {
                Some(record) => record,
                None => return,
            },
        };
        let mut batch = Vec::with_capacity(max_records);
        batch.push(first);
        collect(&mut records, &mut batch, max_records, linger).await;
        if pipeline.process(&batch, &cancel).await.is_err() {
            tracing::info!(
                batch.records = batch.len(),
                "stopped while retrying; the batch stays uncommitted"
            );
            return;
        }
        store_offsets(&consumer, &batch);
    }
}

/// Adds the queued records to `batch`, up to `max_records`, without waiting for records that are
/// not there: while a burst is still arriving (each pass finds more) it goes on collecting, for
/// at most `linger`; the first pass that finds nothing ends the batch.
async fn collect(
    records: &mut mpsc::Receiver<Record>,
    batch: &mut Vec<Record>,
    max_records: usize,
    linger: Duration,
) {
    let deadline = tokio::time::Instant::now() + linger;
    loop {
        let before = batch.len();
        while batch.len() < max_records {
            match records.try_recv() {
                Ok(record) => batch.push(record),
                Err(_) => break,
            }
        }
        if batch.len() == before
            || batch.len() >= max_records
            || tokio::time::Instant::now() >= deadline
        {
            return;
        }
        // Let the consumer task queue the rest of the fetch it is handing out.
        tokio::task::yield_now().await;
    }
}

/// Stores, per partition, the highest offset of the batch. librdkafka commits offset + 1.
fn store_offsets(consumer: &WorkerConsumer, batch: &[Record]) {
    let mut highest: Vec<(&str, i32, i64)> = Vec::new();
    for record in batch {
        match highest
            .iter_mut()
            .find(|(t, p, _)| *t == record.topic && *p == record.partition)
        {
            Some(entry) => entry.2 = entry.2.max(record.offset),
            None => highest.push((&record.topic, record.partition, record.offset)),
        }
    }
    for (topic, partition, offset) in highest {
        if let Err(err) = consumer.store_offset(topic, partition, offset) {
            // The partition was revoked meanwhile: its new owner redelivers, which is a no-op.
            tracing::debug!(kafka.partition = partition, kafka.offset = offset, error = %err, "offset not stored");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: i64) -> Record {
        Record {
            topic: "t".into(),
            partition: 0,
            offset,
            key: None,
            value: None,
            headers: Vec::new(),
            timestamp: None,
        }
    }

    /// What `collect` adds to a batch whose first record is 0, with `queued` records behind it.
    async fn batch_of(queued: i64, max_records: usize, linger: Duration) -> Vec<i64> {
        let (sender, mut receiver) = mpsc::channel(64);
        for offset in 1..=queued {
            sender.send(record(offset)).await.unwrap();
        }
        let mut batch = vec![record(0)];
        let collected = collect(&mut receiver, &mut batch, max_records, linger);
        // Far below the linger: `collect` must not wait for records that are not coming.
        tokio::time::timeout(Duration::from_secs(10), collected)
            .await
            .expect("collect waited for records that were not there");
        batch.iter().map(|r| r.offset).collect()
    }

    #[tokio::test]
    async fn an_idle_lane_sends_a_lone_record_at_once() {
        assert_eq!(batch_of(0, 100, Duration::from_secs(3600)).await, [0]);
    }

    #[tokio::test]
    async fn records_queued_behind_the_first_join_its_batch_up_to_the_max() {
        let hour = Duration::from_secs(3600);
        assert_eq!(batch_of(5, 100, hour).await, [0, 1, 2, 3, 4, 5]);
        assert_eq!(batch_of(9, 4, hour).await, [0, 1, 2, 3]);
        assert_eq!(batch_of(3, 100, Duration::ZERO).await, [0, 1, 2, 3]);
    }
}
