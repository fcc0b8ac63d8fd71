//! Live messages from Redis: decoded, checked against their Redis channel, timed, traced with a
//! `chat.deliver` span when the envelope carries a sampled `traceparent`, and handed to the
//! channel, which delivers them in order or reports a gap to repair.

use std::time::SystemTime;

use chat_core::envelope::Envelope;
use chat_core::message::{validate_author, validate_text, validate_user_id, MAX_RECORD_BYTES};
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
        let envelope = match decode(payload) {
            Ok(envelope) => envelope,
            Err((reason, err)) => {
                self.dropped(reason);
                tracing::warn!(redis.channel = redis_name, error = %err, "{reason} envelope dropped");
                return;
            }
        };
        if envelope.message.channel.as_str() != name {
            self.dropped("wrong_channel");
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

/// Largest payload accepted from Redis: twice the largest record (escaping can grow a text).
const MAX_ENVELOPE_BYTES: usize = 2 * MAX_RECORD_BYTES;

/// Decodes a Redis payload and checks it is a message the worker could have stored: size,
/// `seq` from 1, and the author, text and user id rules of the log. What fails is dropped (with
/// the reason as a metric label): Redis is trusted for delivery, not for content.
fn decode(payload: &[u8]) -> Result<Envelope, (&'static str, String)> {
    if payload.len() > MAX_ENVELOPE_BYTES {
        let err = format!("{} bytes, above {MAX_ENVELOPE_BYTES}", payload.len());
        return Err(("invalid", err));
    }
    let envelope = Envelope::decode(payload).map_err(|err| ("undecodable", err.to_string()))?;
    let message = &envelope.message;
    if message.seq < 1 {
        return Err(("invalid", format!("seq {} is below 1", message.seq)));
    }
    validate_author(&message.author)
        .and_then(|()| validate_text(&message.text))
        .and_then(|()| message.user_id.as_deref().map_or(Ok(()), validate_user_id))
        .map_err(|reason| ("invalid", reason.to_string()))?;
    Ok(envelope)
}

impl Hub {
    pub(super) fn dropped(&self, reason: &'static str) {
        self.inner
            .metrics
            .envelopes_dropped
            .with_label_values(&[reason])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::testing::stored;

    fn payload(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut json = serde_json::to_value(Envelope::new(stored(3), None)).unwrap();
        edit(&mut json);
        serde_json::to_vec(&json).unwrap()
    }

    #[test]
    fn an_envelope_of_the_log_is_accepted() {
        assert_eq!(decode(&payload(|_| {})).unwrap().message.seq, 3);
    }

    #[test]
    fn envelopes_the_worker_could_not_have_stored_are_refused() {
        let refused = |edit: fn(&mut serde_json::Value)| decode(&payload(edit)).unwrap_err().0;
        assert_eq!(refused(|j| j["seq"] = 0.into()), "invalid");
        assert_eq!(refused(|j| j["seq"] = (-5).into()), "invalid");
        assert_eq!(refused(|j| j["author"] = "".into()), "invalid");
        assert_eq!(refused(|j| j["text"] = "a\u{0}b".into()), "invalid");
        assert_eq!(refused(|j| j["text"] = "x".repeat(4001).into()), "invalid");
        assert_eq!(refused(|j| j["channel"] = "bad name".into()), "undecodable");
        assert_eq!(refused(|j| j["seq"] = "one".into()), "undecodable");
        let huge = vec![b' '; MAX_ENVELOPE_BYTES + 1];
        assert_eq!(decode(&huge).unwrap_err().0, "invalid");
    }
}
