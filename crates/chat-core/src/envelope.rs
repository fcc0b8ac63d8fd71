//! The Redis pub/sub envelope.
//!
//! The worker publishes every stored message on the Redis channel `<prefix><channel>`
//! (default prefix `chat:msg:`). The payload is the stored message JSON of the wire contract,
//! plus optional `traceparent` and `tracestate` fields carrying the W3C trace context of the
//! record that produced it, so the ws-server can link its delivery span to the producer's trace.

use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

use opentelemetry::trace::SpanContext;

use crate::channel::ChannelName;
use crate::message::StoredMessage;
use crate::telemetry::TraceHeaders;

/// Default prefix of the Redis pub/sub channels.
pub const DEFAULT_REDIS_PREFIX: &str = "chat:msg:";

/// What travels on Redis pub/sub.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Envelope {
    #[serde(flatten)]
    pub message: StoredMessage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

/// Written by hand rather than with `#[serde(flatten)]`, which goes through a map serializer and
/// cost the worker a measurable share of its CPU per published message.
impl Serialize for Envelope {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let m = &self.message;
        let fields = 7
            + usize::from(m.user_id.is_some())
            + usize::from(self.traceparent.is_some())
            + usize::from(self.tracestate.is_some());
        let mut out = serializer.serialize_struct("Envelope", fields)?;
        out.serialize_field("channel", &m.channel)?;
        out.serialize_field("seq", &m.seq)?;
        out.serialize_field("id", &m.id)?;
        out.serialize_field("author", &m.author)?;
        out.serialize_field("text", &m.text)?;
        out.serialize_field("sent_at", &m.sent_at)?;
        out.serialize_field("stored_at", &m.stored_at)?;
        if let Some(user_id) = &m.user_id {
            out.serialize_field("user_id", user_id)?;
        }
        if let Some(traceparent) = &self.traceparent {
            out.serialize_field("traceparent", traceparent)?;
        }
        if let Some(tracestate) = &self.tracestate {
            out.serialize_field("tracestate", tracestate)?;
        }
        out.end()
    }
}

impl Envelope {
    /// An envelope carrying `message` and, when there is one, the trace context it belongs to.
    pub fn new(message: StoredMessage, trace: Option<&SpanContext>) -> Self {
        Self::carrying(message, trace.map(TraceHeaders::of).unwrap_or_default())
    }

    /// An envelope carrying `message` and trace headers as received (passed on verbatim: the
    /// worker parses them only when it exports spans of its own).
    pub fn carrying(message: StoredMessage, headers: TraceHeaders) -> Self {
        Self {
            message,
            traceparent: headers.traceparent,
            tracestate: headers.tracestate,
        }
    }

    /// The trace context the envelope carries, if any is valid.
    pub fn span_context(&self) -> Option<SpanContext> {
        self.traceparent.as_ref()?;
        TraceHeaders {
            traceparent: self.traceparent.clone(),
            tracestate: self.tracestate.clone(),
        }
        .span_context()
    }

    /// Makes the envelope carry `context` (the span that published it).
    pub fn set_span_context(&mut self, context: &SpanContext) {
        let headers = TraceHeaders::of(context);
        self.traceparent = headers.traceparent;
        self.tracestate = headers.tracestate;
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an envelope always serializes")
    }

    pub fn decode(payload: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(payload)
    }
}

/// The Redis pub/sub channel of a chat channel.
pub fn redis_channel(prefix: &str, channel: &ChannelName) -> String {
    format!("{prefix}{channel}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{db_time, MessageId};

    #[test]
    fn envelope_is_the_stored_message_json_plus_trace_context() {
        let now = db_time(chrono::Utc::now());
        let message = StoredMessage {
            channel: ChannelName::parse("#kerno-challenge").unwrap(),
            seq: 7,
            id: MessageId::new_random(),
            author: "alice".into(),
            text: "hi".into(),
            sent_at: now,
            stored_at: now,
            user_id: Some("user-42".into()),
        };
        let trace = TraceHeaders {
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            tracestate: Some("vendor=abc".into()),
        }
        .span_context()
        .unwrap();
        let envelope = Envelope::new(message.clone(), Some(&trace));
        let bytes = envelope.encode();
        let as_message: StoredMessage = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(as_message, message);
        let decoded = Envelope::decode(&bytes).unwrap();
        assert_eq!(decoded, envelope);
        assert_eq!(decoded.span_context(), Some(trace));
        assert_eq!(decoded.tracestate.as_deref(), Some("vendor=abc"));
        let plain = Envelope::new(message.clone(), None);
        assert_eq!(plain.encode(), serde_json::to_vec(&message).unwrap());
        assert_eq!(
            redis_channel(DEFAULT_REDIS_PREFIX, &message.channel),
            "chat:msg:#kerno-challenge"
        );
    }
}
