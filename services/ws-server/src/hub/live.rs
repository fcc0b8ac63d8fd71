//! Live messages from Redis: decoded, checked against their Redis channel, timed, traced with a
//! `chat.deliver` span when the envelope carries a sampled `traceparent`, and handed to the
//! channel, which delivers them in order or reports a gap to repair.

use std::time::SystemTime;

use chat_core::envelope::Envelope;
use chat_core::telemetry::{self, MessageSpan};
use chrono::Utc;
use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;

use super::sequence::Received;
use super::subscriber::Delivery;
use super::Hub;

impl Hub {
    /// A payload arrived on a Redis channel.
    pub(super) fn on_message(&self, redis_name: &str, payload: &[u8]) {
        let Some(name) = redis_name.strip_prefix(&self.inner.prefix) else {
            return;
        };
        let envelope = match Envelope::decode(payload) {
            Ok(envelope) => envelope,
            Err(err) => {
                tracing::warn!(redis.channel = redis_name, error = %err, "undecodable envelope dropped");
                return;
            }
        };
        if envelope.message.channel.as_str() != name {
            tracing::warn!(
                redis.channel = redis_name,
                "envelope of another channel dropped"
            );
            return;
        }
        let mut span = Some(&envelope)
            .filter(|_| telemetry::enabled())
            .and_then(Envelope::span_context)
            .and_then(|parent| {
                MessageSpan::start(
                    "chat.deliver",
                    SpanKind::Consumer,
                    &parent,
                    SystemTime::now(),
                    vec![
                        KeyValue::new("messaging.system", "redis"),
                        KeyValue::new("chat.channel", name.to_owned()),
                        KeyValue::new("chat.seq", envelope.message.seq),
                        KeyValue::new("chat.message.id", envelope.message.id.to_string()),
                    ],
                    Vec::new(),
                )
            });
        let message = envelope.message;
        let latency = (Utc::now() - message.stored_at)
            .to_std()
            .unwrap_or_default();
        self.inner
            .metrics
            .delivery_latency
            .observe(latency.as_secs_f64());
        let delivery = Delivery::new(&message);

        let mut channels = self.lock();
        let Some(state) = channels.get_mut(&message.channel) else {
            return;
        };
        if let Some(span) = span.as_mut() {
            let subscribers = state.subscribers() as i64;
            span.set_attribute(KeyValue::new("chat.subscribers", subscribers));
        }
        let seq = delivery.seq;
        let (received, tally) = state.receive(delivery);
        self.count(tally);
        if let Received::Gap { last } = received {
            tracing::info!(
                channel = %message.channel,
                message.seq = seq,
                hub.last_seq = last,
                "live gap; back-filling from postgresql"
            );
            self.spawn_repair(message.channel.clone(), "gap");
        }
        drop(channels);
        if let Some(mut span) = span {
            span.set_attribute(KeyValue::new("chat.delivery", received.label()));
            span.end();
        }
    }
}
