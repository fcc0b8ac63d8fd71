//! An owned copy of a consumed Kafka record: what the consumer hands to the pipeline and the
//! pipeline hands to the dead-letter producer.

use chat_core::telemetry::TraceHeaders;
use chrono::{DateTime, Utc};
use rdkafka::message::{BorrowedMessage, Headers, Message};

/// An owned copy of a consumed record.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub timestamp: Option<DateTime<Utc>>,
}

impl Record {
    pub fn from_message(message: &BorrowedMessage<'_>) -> Self {
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers,
            timestamp: message
                .timestamp()
                .to_millis()
                .and_then(DateTime::<Utc>::from_timestamp_millis),
        }
    }

    /// The first header with this name, if it has a UTF-8 value.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| value.as_deref())
            .and_then(|value| std::str::from_utf8(value).ok())
    }

    /// The `traceparent` / `tracestate` headers the producer sent, unparsed (nothing is
    /// allocated for a record without them).
    pub fn trace_headers(&self) -> TraceHeaders {
        TraceHeaders::from_lookup(|name| self.header_str(name))
    }
}
