//! What happens to one batch: validate every record, store the valid ones in one transaction,
//! dead-letter the malformed ones and those PostgreSQL refuses, publish the stored ones to Redis
//! in one pipeline.
//!
//! A record can be refused twice over: at the edge (`NewMessage::from_record`), and by
//! PostgreSQL for its content (a data exception, an integrity violation, a program limit; see
//! `chat_core::store::Refusal`). The second is found by splitting the refused batch until the
//! record stands alone ([`Pipeline::store_isolating`]), so one poison record never stalls its
//! lane. A record whose producer-supplied id is stored with other content is an `id_conflict`.
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
use chat_core::store::{is_broken_seq_invariant, Outcome, Refusal, Store};
use chat_core::telemetry::{self, MessageSpan, TraceHeaders};
use opentelemetry::trace::{SpanContext, SpanKind};
use opentelemetry::KeyValue;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::dlq::DeadLetters;
use crate::error::Retryable;
use crate::fanout::Publisher;
use crate::metrics::Metrics;
use crate::readiness::Health;
use crate::record::Record;

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

        let Parsed {
            valid,
            sources,
            traces,
            mut rejected,
        } = parse(batch);
        if telemetry::enabled() {
            traces
                .iter()
                .filter_map(TraceHeaders::span_context)
                .filter(SpanContext::is_sampled)
                .take(telemetry::MAX_LINKS)
                .for_each(|context| telemetry::add_link(batch_span, context));
        }

        let mut stored = Vec::with_capacity(valid.len());
        let mut stored_traces = Vec::with_capacity(valid.len());
        let mut store_span = tracing::Span::none();
        let store_started = SystemTime::now();
        if !valid.is_empty() {
            let step = Instant::now();
            store_span = tracing::info_span!(
                "chat.batch.store",
                otel.kind = "client",
                db.system.name = "postgresql",
                db.operation.name = "insert",
                db.operation.batch.size = valid.len(),
            );
            let results = self
                .store_isolating(&valid, cancel)
                .instrument(store_span.clone())
                .await?;
            self.observe_step("store", step);
            for (((result, message), record), trace) in
                results.into_iter().zip(&valid).zip(sources).zip(traces)
            {
                let reason = match result {
                    Ok(Outcome::Conflict(existing)) => RejectReason::IdConflict(existing.id),
                    Ok(outcome) => {
                        stored.push(outcome);
                        stored_traces.push(trace);
                        continue;
                    }
                    Err(Refusal { sqlstate, message }) => {
                        RejectReason::RejectedByStore { sqlstate, message }
                    }
                };
                rejected.push(Rejected {
                    record,
                    channel: Some(message.channel.as_str()),
                    reason,
                });
            }
        }

        if !rejected.is_empty() {
            self.dead_letter(&rejected, cancel).await?;
        }

        if !stored.is_empty() {
            let inserted = stored
                .iter()
                .filter(|o| matches!(o, Outcome::Inserted(_)))
                .count();
            let duplicates = stored.len() - inserted;
            let mut envelopes = to_envelopes(stored, stored_traces);
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

    /// Stores `messages`, isolating the records PostgreSQL refuses for their content: a refused
    /// part is split in halves, each stored on its own (first half first, so a channel's seqs
    /// still follow the input order), until every refused record stands alone. One refused
    /// record in a batch of n costs about 2·log2(n) extra transactions. Anything that is not a
    /// refusal is retried with backoff where it happened; the parts already committed stay
    /// committed, and a redelivery finds them as duplicates. Returns one result per message.
    async fn store_isolating(
        &self,
        messages: &[NewMessage],
        cancel: &CancellationToken,
    ) -> Result<Vec<Result<Outcome, Refusal>>, Cancelled> {
        let mut results = Vec::with_capacity(messages.len());
        // A stack of parts still to store: the next one in input order is on top.
        let mut pending = Vec::new();
        pending.push(0..messages.len());
        while let Some(range) = pending.pop() {
            let part = &messages[range.clone()];
            let attempt = self
                .retry(cancel, || async {
                    match self.store.insert_batch(part).await {
                        Ok(outcomes) => Ok(Ok(outcomes)),
                        Err(err) => match Refusal::of(&err) {
                            Some(refusal) => Ok(Err(refusal)),
                            None => {
                                if is_broken_seq_invariant(&err) {
                                    tracing::error!(
                                        error = %err,
                                        "two writers assigned the same (channel, seq); retrying"
                                    );
                                }
                                Err(err.into())
                            }
                        },
                    }
                })
                .await?;
            match attempt {
                Ok(outcomes) => results.extend(outcomes.into_iter().map(Ok)),
                Err(refusal) if part.len() == 1 => results.push(Err(refusal)),
                Err(_) => {
                    let middle = range.start + range.len() / 2;
                    pending.push(middle..range.end);
                    pending.push(range.start..middle);
                }
            }
        }
        Ok(results)
    }

    /// Copies every rejected record to the dead-letter topic (acknowledged by the broker), then
    /// logs and counts each once.
    async fn dead_letter(
        &self,
        rejected: &[Rejected<'_>],
        cancel: &CancellationToken,
    ) -> Result<(), Cancelled> {
        let step = Instant::now();
        self.retry(cancel, || async {
            let sends = rejected
                .iter()
                .map(|r| self.dead_letters.send(r.record, &r.reason));
            futures::future::try_join_all(sends).await?;
            Ok(())
        })
        .instrument(tracing::info_span!(
            "chat.batch.dead_letter",
            messaging.batch.message_count = rejected.len()
        ))
        .await?;
        self.observe_step("dead_letter", step);
        for Rejected {
            record,
            channel,
            reason,
        } in rejected
        {
            // Never the text: the detail names the rule or PostgreSQL's message, not the content.
            tracing::warn!(
                channel = *channel,
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

/// A record that will not be stored, and why.
struct Rejected<'a> {
    record: &'a Record,
    /// The channel, once the record parsed (never the text: it is not logged).
    channel: Option<&'a str>,
    reason: RejectReason,
}

/// A batch parsed at the edge: the valid messages (with their records and their `traceparent` /
/// `tracestate` headers, unparsed, index by index) and the rejected records. The headers are
/// parsed only when spans are exported; otherwise they travel on to the envelope verbatim.
struct Parsed<'a> {
    valid: Vec<NewMessage>,
    sources: Vec<&'a Record>,
    traces: Vec<TraceHeaders>,
    rejected: Vec<Rejected<'a>>,
}

fn parse(batch: &[Record]) -> Parsed<'_> {
    let mut parsed = Parsed {
        valid: Vec::with_capacity(batch.len()),
        sources: Vec::with_capacity(batch.len()),
        traces: Vec::with_capacity(batch.len()),
        rejected: Vec::new(),
    };
    // A lane serves a few partitions: hash each one's id prefix once per batch.
    let mut prefixes: Vec<(&str, i32, IdPrefix)> = Vec::new();
    for record in batch {
        let known = prefixes
            .iter()
            .find(|(topic, partition, _)| *partition == record.partition && *topic == record.topic);
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
                parsed.valid.push(message);
                parsed.sources.push(record);
                parsed.traces.push(record.trace_headers());
            }
            Err(reason) => parsed.rejected.push(Rejected {
                record,
                channel: None,
                reason,
            }),
        }
    }
    parsed
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
        let Some(parent) = envelope.span_context() else {
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
        envelope.set_span_context(publish.span_context());
        spans.push(publish);
    }
    spans
}

/// One envelope per distinct message, in batch order. A duplicate is published again with its
/// stored seq: the attempt that stored it may have died before publishing. `outcomes` holds no
/// conflict (those are dead-lettered).
/// Takes the outcomes by value so each stored message moves into its envelope, uncloned.
fn to_envelopes(outcomes: Vec<Outcome>, traces: Vec<TraceHeaders>) -> Vec<Envelope> {
    let mut seen = HashSet::with_capacity(outcomes.len());
    outcomes
        .into_iter()
        .zip(traces)
        .filter(|(outcome, _)| seen.insert(outcome.message().id))
        .map(|(outcome, trace)| Envelope::carrying(outcome.into_message(), trace))
        .collect()
}
