//! Client publishing: the Kafka producer behind the WebSocket `publish` command and
//! `POST /channels/{channel}/messages`. Kafka stays the single write path: the message reaches
//! storage and subscribers through the worker like any other.

use std::time::Duration;

use chat_core::channel::ChannelName;
use chat_core::message::{validate_author, MessageId, RejectReason};
use chat_core::telemetry;
use chat_service::args::KafkaArgs;
use chat_service::health::{check_blocking, CHECK_TIMEOUT};
use chrono::{SecondsFormat, Utc};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;
use serde::Serialize;
use tracing::Instrument;

use crate::auth::gate::Principal;

/// How long a publish may wait for the broker's acknowledgement.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// What a client asks to publish, before its author is settled: with a verified token the
/// author and user id come from the token (a given `author` is ignored); an anonymous client
/// names itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draft {
    pub channel: ChannelName,
    /// As the client sent it; checked only where it is used (anonymous mode).
    pub author: Option<String>,
    pub text: String,
    pub id: Option<MessageId>,
}

impl Draft {
    /// The publication `principal` makes of this draft; `Err` with the reason when a given
    /// author is not a valid name (even where it is ignored: a malformed request is refused),
    /// or when an anonymous client gave none.
    pub fn by(self, principal: &Principal) -> Result<Publication, RejectReason> {
        if let Some(author) = &self.author {
            validate_author(author)?;
        }
        let (author, user_id) = match principal.author() {
            Some(author) => (author.to_owned(), principal.user_id().map(str::to_owned)),
            None => {
                let author = self.author.ok_or(RejectReason::MissingField("author"))?;
                (author, None)
            }
        };
        Ok(Publication {
            channel: self.channel,
            author,
            text: self.text,
            id: self.id,
            user_id,
        })
    }
}

/// A validated message a client wants published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    pub channel: ChannelName,
    pub author: String,
    pub text: String,
    /// The client's own id for the message (WebSocket `message_id`, REST `Idempotency-Key`):
    /// a retry with the same id is stored once. A fresh UUIDv7 when absent.
    pub id: Option<MessageId>,
    /// The publisher's user id, from a verified token.
    pub user_id: Option<String>,
}

#[derive(Serialize)]
struct KafkaValue<'a> {
    channel: &'a str,
    author: &'a str,
    text: &'a str,
    id: String,
    sent_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
}

#[derive(Clone)]
pub struct KafkaPublisher {
    producer: FutureProducer,
    topic: String,
}

impl KafkaPublisher {
    /// A producer whose queue holds at most `queue_kbytes` KiB of records (and librdkafka's
    /// default 100,000 of them): a publish that finds it full fails at once.
    pub fn new(
        kafka: &KafkaArgs,
        topic: &str,
        queue_kbytes: u32,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        let producer: FutureProducer = kafka
            .apply(
                ClientConfig::new()
                    .set("acks", "all")
                    .set("enable.idempotence", "true")
                    // Interactive publishes: send at once (librdkafka still batches what
                    // queues up while a request is in flight).
                    .set("linger.ms", "0")
                    .set(
                        "message.timeout.ms",
                        DELIVERY_TIMEOUT.as_millis().to_string(),
                    ),
            )
            .set(
                "queue.buffering.max.kbytes",
                queue_kbytes.max(1).to_string(),
            )
            .create()?;
        Ok(Self {
            producer,
            topic: topic.to_owned(),
        })
    }

    /// Produces the message (key = channel) with its id (the client's, else a fresh one), and
    /// returns the id once the broker acknowledged it. The produce is a `kafka.produce` span (child of the caller's WS command
    /// or HTTP request span) whose context goes out as the record's `traceparent` header when
    /// spans are exported: the worker and the ws-server's delivery continue that trace.
    pub async fn publish(
        &self,
        publication: &Publication,
    ) -> Result<MessageId, rdkafka::error::KafkaError> {
        let id = publication.id.unwrap_or_else(MessageId::new_random);
        let span = tracing::info_span!(
            "kafka.produce",
            otel.kind = "producer",
            messaging.system = "kafka",
            messaging.destination.name = %self.topic,
            chat.channel = %publication.channel,
            chat.message.id = %id,
        );
        self.produce(publication, id)
            .instrument(span)
            .await
            .map(|()| id)
    }

    async fn produce(
        &self,
        publication: &Publication,
        id: MessageId,
    ) -> Result<(), rdkafka::error::KafkaError> {
        let value = serde_json::to_vec(&KafkaValue {
            channel: publication.channel.as_str(),
            author: &publication.author,
            text: &publication.text,
            id: id.to_string(),
            sent_at: Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true),
            user_id: publication.user_id.as_deref(),
        })
        .expect("a publication always serializes");
        let mut record = FutureRecord::to(&self.topic)
            .key(publication.channel.as_str())
            .payload(&value);
        if let Some(trace) = telemetry::current_trace_headers() {
            let headers = trace
                .pairs()
                .fold(OwnedHeaders::new(), |headers, (key, value)| {
                    headers.insert(Header {
                        key,
                        value: Some(value),
                    })
                });
            record = record.headers(headers);
        }
        // A full producer queue fails at once instead of waiting for room: the client retries.
        self.producer
            .send(record, Duration::ZERO)
            .await
            .map(|_| ())
            .map_err(|(err, _)| err)
    }

    /// Reachability check for readiness: the broker answers a metadata request for the topic.
    pub async fn ping(&self) -> Result<(), String> {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        check_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), CHECK_TIMEOUT)
                .map(|_| ())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(author: Option<&str>) -> Draft {
        Draft {
            channel: ChannelName::parse("c").unwrap(),
            author: author.map(str::to_owned),
            text: "hi".into(),
            id: None,
        }
    }

    #[test]
    fn an_anonymous_publisher_must_name_a_valid_author() {
        let publication = draft(Some("ada")).by(&Principal::Anonymous).unwrap();
        assert_eq!(
            (publication.author.as_str(), publication.user_id),
            ("ada", None)
        );
        assert_eq!(
            draft(None).by(&Principal::Anonymous).unwrap_err().code(),
            "missing_field"
        );
        assert_eq!(
            draft(Some(""))
                .by(&Principal::Anonymous)
                .unwrap_err()
                .code(),
            "invalid_author"
        );
    }
}
