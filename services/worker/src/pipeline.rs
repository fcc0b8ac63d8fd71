//! What happens to one batch: validate every record, dead-letter the malformed ones, store the
//! valid ones in one transaction, publish them to Redis in one pipeline.
//!
//! Each step is retried on its own with capped exponential backoff while its dependency is
//! down, so a Redis outage after a successful insert does not repeat the insert. The batch is
//! done (and its offsets may be stored) only when all three steps succeeded.
//!
//! Tracing (only when spans are exported, see `chat_core::telemetry`): the batch is a
//! `chat.consume` span with `chat.batch.dead_letter`, `chat.batch.store` and
//! `chat.batch.publish` children, linked to (up to 128 of) the records' contexts. A batch holds
//! many traces, so each message whose `traceparent` header is sampled also gets `chat.store` and
//! `redis.publish` spans in its own trace (children of the producer's span), and the Redis
//! envelope carries the `redis.publish` span's context on to the ws-server.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use chat_core::backoff::Backoff;
use chat_core::envelope::Envelope;
use chat_core::message::{IdPrefix, NewMessage, RecordOrigin, RejectReason};
use chat_core::store::{Outcome, Store};
use chat_core::telemetry::{self, MessageSpan};
use opentelemetry::trace::{SpanContext, SpanKind};
use opentelemetry::KeyValue;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::consumer::Record;
use crate::dlq::DeadLetters;
use crate::error::Retryable;
use crate::fanout::Publisher;
use crate::health::Health;
use crate::metrics::Metrics;

/// Header carrying the W3C trace context of a record.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// The batch was abandoned because shutdown was requested while a dependency was down.
#[derive(Debug)]
pub struct Cancelled;

#[derive(Clone)]
pub struct Pipeline {
    pub store: Store,
    pub publisher: Arc<Publisher>,
    pub dead_letters: DeadLetters,
    pub metrics: Metrics,
    pub health: Arc<Health>,
    pub max_backoff: Duration,
}

impl Pipeline {
    pub async fn process(
        &self,
        batch: &[Record],
        cancel: &CancellationToken,
    ) -> Result<(), Cancelled> {
        let span = tracing::info_span!(
            "chat.consume",
            otel.kind = "consumer",
            messaging.system = "kafka",
            messaging.operation.type = "process",
            messaging.batch.message_count = batch.len(),
        );
        self.process_batch(batch, cancel, &span)
            .instrument(span.clone())
            .await
    }

    async fn process_batch(
        &self,
        batch: &[Record],
        cancel: &CancellationToken,
        batch_span: &tracing::Span,
    ) -> Result<(), Cancelled> {
        let started = Instant::now();
        self.metrics.records_consumed.inc_by(batch.len() as u64);

        let mut valid: Vec<NewMessage> = Vec::with_capacity(batch.len());
        let mut traceparents: Vec<Option<String>> = Vec::with_capacity(batch.len());
        let mut rejected: Vec<(&Record, RejectReason)> = Vec::new();
        // A lane serves a few partitions: hash each one's id prefix once per batch.
        let mut prefixes: Vec<(&str, i32, IdPrefix)> = Vec::new();
        for record in batch {
            let known = prefixes.iter().find(|(topic, partition, _)| {
                *partition == record.partition && *topic == record.topic
            });
            let id_prefix = match known {
                Some(&(_, _, prefix)) => prefix,
                None => {
                    let prefix = IdPrefix::new(&record.topic, record.partition);
                    prefixes.push((&record.topic, record.partition, prefix));
                    prefix
                }
            };
            let origin = RecordOrigin {
                id_prefix,
                offset: record.offset,
                timestamp: record.timestamp,
            };
            match NewMessage::from_record(record.key.as_deref(), record.value.as_deref(), origin) {
                Ok(message) => {
                    valid.push(message);
                    traceparents.push(record.header_str(TRACEPARENT_HEADER).map(str::to_owned));
                }
                Err(reason) => rejected.push((record, reason)),
            }
        }
        if telemetry::enabled() {
            traceparents
                .iter()
                .flatten()
                .filter_map(|value| telemetry::parse_traceparent(value))
                .filter(SpanContext::is_sampled)
                .take(telemetry::MAX_LINKS)
                .for_each(|context| telemetry::add_link(batch_span, context));
        }

        if !rejected.is_empty() {
            let step = Instant::now();
            self.retry(cancel, || async {
                let sends = rejected
                    .iter()
                    .map(|(record, reason)| self.dead_letters.send(record, reason));
                futures::future::try_join_all(sends).await?;
                Ok(())
            })
            .instrument(tracing::info_span!(
                "chat.batch.dead_letter",
                messaging.batch.message_count = rejected.len()
            ))
            .await?;
            self.observe_step("dead_letter", step);
            for (record, reason) in &rejected {
                tracing::warn!(
                    kafka.partition = record.partition,
                    kafka.offset = record.offset,
                    dlq.reason = reason.code(),
                    dlq.detail = %reason,
                    "record dead-lettered"
                );
                self.metrics
                    .dead_lettered
                    .with_label_values(&[reason.code()])
                    .inc();
            }
        }

        if !valid.is_empty() {
            let step = Instant::now();
            let store_started = SystemTime::now();
            let store_span = tracing::info_span!(
                "chat.batch.store",
                otel.kind = "client",
                db.system.name = "postgresql",
                db.operation.name = "insert",
                db.operation.batch.size = valid.len(),
            );
            let outcomes = self
                .retry(cancel, || async {
                    Ok(self.store.insert_batch(&valid).await?)
                })
                .instrument(store_span.clone())
                .await?;
            self.observe_step("store", step);
            let inserted = outcomes
                .iter()
                .filter(|o| matches!(o, Outcome::Inserted(_)))
                .count();
            let duplicates = outcomes.len() - inserted;
            let mut envelopes = to_envelopes(outcomes, traceparents);
            let publish_span = tracing::info_span!(
                "chat.batch.publish",
                otel.kind = "producer",
                messaging.system = "redis",
                messaging.batch.message_count = envelopes.len(),
            );
            let message_spans =
                trace_messages(&mut envelopes, store_started, &store_span, &publish_span);
            self.metrics.messages_stored.inc_by(inserted as u64);
            self.metrics.duplicates.inc_by(duplicates as u64);

            let step = Instant::now();
            self.retry(cancel, || async {
                Ok(self.publisher.publish(&envelopes).await?)
            })
            .instrument(publish_span)
            .await?;
            self.observe_step("publish", step);
            message_spans.into_iter().for_each(MessageSpan::end);
            self.metrics
                .messages_published
                .inc_by(envelopes.len() as u64);
        }

        self.metrics.batch_size.observe(batch.len() as f64);
        self.metrics
            .batch_duration
            .observe(started.elapsed().as_secs_f64());
        tracing::debug!(
            batch.records = batch.len(),
            batch.rejected = rejected.len(),
            duration_ms = started.elapsed().as_millis() as u64,
            "batch done"
        );
        Ok(())
    }

    fn observe_step(&self, step: &str, started: Instant) {
        self.metrics
            .step_duration
            .with_label_values(&[step])
            .observe(started.elapsed().as_secs_f64());
    }

    /// Runs `step` until it succeeds, backing off while it fails; readiness is down meanwhile.
    async fn retry<T, F, Fut>(
        &self,
        cancel: &CancellationToken,
        mut step: F,
    ) -> Result<T, Cancelled>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Retryable>>,
    {
        let mut backoff = Backoff::new(Duration::from_millis(100), self.max_backoff);
        loop {
            match step().await {
                Ok(value) => {
                    if backoff.attempts() > 0 {
                        tracing::info!(attempts = backoff.attempts(), "dependency recovered");
                    }
                    self.health.dependencies_ok.store(true, Ordering::Relaxed);
                    return Ok(value);
                }
                Err(err) => {
                    self.health.dependencies_ok.store(false, Ordering::Relaxed);
                    self.metrics
                        .retries
                        .with_label_values(&[err.dependency()])
                        .inc();
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        dependency = err.dependency(),
                        error = %err,
                        retry_in_ms = delay.as_millis() as u64,
                        "batch step failed; retrying"
                    );
                    tokio::select! {
                        () = cancel.cancelled() => return Err(Cancelled),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

/// Per-message spans, when spans are exported: for every envelope whose record carried a
/// sampled `traceparent`, a `chat.store` span (the batch insert's interval) and a started
/// `redis.publish` span, both children of the record's context and linked to the batch steps.
/// The envelope then carries the `redis.publish` span's context. Returns the publish spans,
/// to end once the pipeline is sent.
fn trace_messages(
    envelopes: &mut [Envelope],
    store_started: SystemTime,
    store_span: &tracing::Span,
    publish_span: &tracing::Span,
) -> Vec<MessageSpan> {
    if !telemetry::enabled() {
        return Vec::new();
    }
    let stored = SystemTime::now();
    let store_link: Vec<SpanContext> = telemetry::span_context(store_span).into_iter().collect();
    let publish_link: Vec<SpanContext> =
        telemetry::span_context(publish_span).into_iter().collect();
    let mut spans = Vec::new();
    for envelope in envelopes {
        let Some(parent) = envelope
            .traceparent
            .as_deref()
            .and_then(telemetry::parse_traceparent)
        else {
            continue;
        };
        let message = &envelope.message;
        let attributes = || {
            vec![
                KeyValue::new("chat.channel", message.channel.as_str().to_owned()),
                KeyValue::new("chat.seq", message.seq),
                KeyValue::new("chat.message.id", message.id.to_string()),
            ]
        };
        let Some(store) = MessageSpan::start(
            "chat.store",
            SpanKind::Client,
            &parent,
            store_started,
            attributes(),
            store_link.clone(),
        ) else {
            continue;
        };
        store.end_at(stored);
        let Some(publish) = MessageSpan::start(
            "redis.publish",
            SpanKind::Producer,
            &parent,
            stored,
            attributes(),
            publish_link.clone(),
        ) else {
            continue;
        };
        envelope.traceparent = Some(telemetry::format_traceparent(publish.span_context()));
        spans.push(publish);
    }
    spans
}

/// One envelope per distinct message, in batch order. A duplicate is published again with its
/// stored seq: the attempt that stored it may have died before publishing.
/// Takes the outcomes by value so each stored message moves into its envelope, uncloned.
fn to_envelopes(outcomes: Vec<Outcome>, traceparents: Vec<Option<String>>) -> Vec<Envelope> {
    let mut seen = HashSet::with_capacity(outcomes.len());
    outcomes
        .into_iter()
        .zip(traceparents)
        .filter(|(outcome, _)| seen.insert(outcome.message().id))
        .map(|(outcome, traceparent)| Envelope {
            message: outcome.into_message(),
            traceparent,
        })
        .collect()
}
