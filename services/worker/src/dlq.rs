//! The dead-letter producer: a malformed record is copied to the dead-letter topic with its
//! original key, value and headers, plus headers saying why and where it came from.

use std::time::Duration;

use chat_core::message::RejectReason;
use chat_service::args::KafkaArgs;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use crate::record::Record;

/// Header with the stable reason code (`not_json`, `invalid_channel`, …).
pub const REASON_HEADER: &str = "dlq.reason";
/// Header with the human-readable explanation.
pub const DETAIL_HEADER: &str = "dlq.detail";
/// Header with PostgreSQL's SQLSTATE, on records it refused (`rejected_by_store`).
pub const SQLSTATE_HEADER: &str = "dlq.sqlstate";

#[derive(Clone)]
pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
}

impl DeadLetters {
    pub fn new(kafka: &KafkaArgs, topic: &str) -> Result<Self, rdkafka::error::KafkaError> {
        let producer: FutureProducer = kafka
            .apply(
                ClientConfig::new()
                    .set("acks", "all")
                    .set("enable.idempotence", "true")
                    .set("linger.ms", "5")
                    .set("message.timeout.ms", "30000"),
            )
            .create()?;
        Ok(Self {
            producer,
            topic: topic.to_owned(),
        })
    }

    /// Sends one record to the dead-letter topic and waits for the broker's acknowledgement.
    pub async fn send(
        &self,
        record: &Record,
        reason: &RejectReason,
    ) -> Result<(), rdkafka::error::KafkaError> {
        let detail = reason.to_string();
        let partition = record.partition.to_string();
        let offset = record.offset.to_string();
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len() + 6);
        for (name, value) in &record.headers {
            headers = headers.insert(Header {
                key: name,
                value: value.as_deref(),
            });
        }
        for (key, value) in [
            (REASON_HEADER, reason.code()),
            (DETAIL_HEADER, detail.as_str()),
            ("dlq.topic", record.topic.as_str()),
            ("dlq.partition", partition.as_str()),
            ("dlq.offset", offset.as_str()),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        if let RejectReason::RejectedByStore { sqlstate, .. } = reason {
            headers = headers.insert(Header {
                key: SQLSTATE_HEADER,
                value: Some(sqlstate.as_str()),
            });
        }
        let mut out: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic).headers(headers);
        if let Some(key) = record.key.as_deref() {
            out = out.key(key);
        }
        if let Some(value) = record.value.as_deref() {
            out = out.payload(value);
        }
        self.producer
            .send(out, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(err, _)| err)
    }
}
