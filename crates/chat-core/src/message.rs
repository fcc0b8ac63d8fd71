//! Messages: the Kafka input contract, its validation, and the stored form.
//!
//! Input limits (a violation dead-letters the record, see [`RejectReason`]):
//! - the record value is at most [`MAX_RECORD_BYTES`] bytes of JSON object;
//! - `channel` is a valid [`ChannelName`] and equals the record key when a key is set;
//! - `author` is 1 to [`MAX_AUTHOR_CHARS`] characters with no control characters;
//! - `text` is 1 to [`MAX_TEXT_CHARS`] characters, none of them U+0000 (PostgreSQL's `text` cannot
//!   hold it, so one such record would otherwise stall every later record of its partition);
//! - `id`, when present, is a UUID; `sent_at`, when present, is RFC 3339;
//! - `user_id`, when present, is 1 to [`MAX_USER_ID_CHARS`] characters without control
//!   characters (producers writing to Kafka directly are trusted to set it truthfully).

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::channel::ChannelName;

/// Largest accepted Kafka record value, in bytes.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;
/// Longest accepted author name, in characters.
pub const MAX_AUTHOR_CHARS: usize = 64;
/// Longest accepted message text, in characters.
pub const MAX_TEXT_CHARS: usize = 4000;
/// Longest accepted user id (a token's `sub`), in characters.
pub const MAX_USER_ID_CHARS: usize = 256;

/// Namespace of the hash that places a topic-partition's derived ids (see [`MessageId::derived`]).
const DERIVED_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6b65_726e_6f2d_6368_6174_2d73_7472_6561);

/// A message's identity. Producer-supplied, or derived from the record's Kafka coordinates so
/// that a redelivered record maps to the same id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(pub Uuid);

impl MessageId {
    /// A new id for a message this system produces: UUIDv7, time-ordered, so that successive
    /// messages land next to each other in the `id` index rather than on random pages.
    pub fn new_random() -> Self {
        Self(Uuid::now_v7())
    }

    /// Deterministic id for a record that carries none, from its Kafka coordinates: a UUIDv8
    /// (RFC 9562 custom layout) whose first 60 bits are a hash of `topic/partition` and whose
    /// last 62 bits are the offset. Distinct coordinates give distinct ids, and a partition's
    /// ids ascend with its offsets, so the unique `id` index is appended to in a few places
    /// instead of being written on random pages (a UUIDv5 here made the raw COPY of the same
    /// rows about 40 % slower, see docs/BENCHMARKS.md).
    pub fn derived(topic: &str, partition: i32, offset: i64) -> Self {
        IdPrefix::new(topic, partition).id(offset)
    }
}

/// The part of [`MessageId::derived`] that every record of one topic-partition shares: the
/// hash of `topic/partition`, with the UUID version bits. Compute it once per partition, not
/// once per record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdPrefix(u128);

impl IdPrefix {
    pub fn new(topic: &str, partition: i32) -> Self {
        let name = format!("{topic}/{partition}");
        let hash = Uuid::new_v5(&DERIVED_ID_NAMESPACE, name.as_bytes()).as_u128();
        let prefix = hash >> 68; // 60 bits
        Self((prefix >> 12) << 80 | 0x8 << 76 | (prefix & 0xfff) << 64)
    }

    /// The id of the record at `offset`.
    pub fn id(self, offset: i64) -> MessageId {
        // Offsets are non-negative and far below 2^62; the mask keeps the variant bits free.
        let offset = (offset as u64 & ((1 << 62) - 1)) as u128;
        MessageId(Uuid::from_u128(self.0 | 0b10 << 62 | offset))
    }
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a record came from; used to derive its id and its fallback `sent_at`.
#[derive(Debug, Clone, Copy)]
pub struct RecordOrigin {
    /// Of the record's topic-partition.
    pub id_prefix: IdPrefix,
    pub offset: i64,
    /// The record's Kafka timestamp, if it has one.
    pub timestamp: Option<DateTime<Utc>>,
}

/// The JSON a producer writes, before validation.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct IncomingMessage {
    pub channel: Option<String>,
    pub author: Option<String>,
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

/// A validated message, ready to be stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NewMessage {
    pub id: MessageId,
    pub channel: ChannelName,
    pub author: String,
    pub text: String,
    pub sent_at: DateTime<Utc>,
    /// Who published it, when known (a verified token's `sub`).
    pub user_id: Option<String>,
}

/// A message as stored in PostgreSQL and delivered to clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct StoredMessage {
    #[sqlx(try_from = "String")]
    pub channel: ChannelName,
    pub seq: i64,
    #[sqlx(try_from = "Uuid")]
    pub id: MessageId,
    pub author: String,
    pub text: String,
    pub sent_at: DateTime<Utc>,
    pub stored_at: DateTime<Utc>,
    /// Who published it, when known; absent from the JSON otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

impl StoredMessage {
    /// Whether `message` is this one again (a redelivery or a retried publish): same channel,
    /// author, text and user. `sent_at` does not count: a producer's retry may stamp a new time.
    pub fn has_content_of(&self, message: &NewMessage) -> bool {
        self.channel == message.channel
            && self.author == message.author
            && self.text == message.text
            && self.user_id == message.user_id
    }
}

impl TryFrom<String> for ChannelName {
    type Error = crate::channel::ChannelNameError;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        ChannelName::parse(&raw)
    }
}

impl From<Uuid> for MessageId {
    fn from(id: Uuid) -> Self {
        Self(id)
    }
}

/// Why a record was dead-lettered. [`RejectReason::code`] is the stable value of the
/// `dlq.reason` header; the `Display` text is the human explanation in `dlq.detail`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    #[error("record value is {0} bytes, more than the {MAX_RECORD_BYTES} allowed")]
    TooLarge(usize),
    #[error("record value is not a JSON object: {0}")]
    NotJson(String),
    #[error("field has the wrong type: {0}")]
    InvalidField(String),
    #[error("required field `{0}` is missing")]
    MissingField(&'static str),
    #[error("invalid channel: {0}")]
    InvalidChannel(String),
    #[error("record key {key:?} differs from channel {channel:?}")]
    KeyMismatch { key: String, channel: String },
    #[error("author must be 1 to {MAX_AUTHOR_CHARS} characters without control characters")]
    InvalidAuthor,
    #[error("text must be 1 to {MAX_TEXT_CHARS} characters, none of them U+0000 (NUL)")]
    InvalidText,
    #[error("id is not a UUID: {0:?}")]
    InvalidId(String),
    #[error("sent_at is not an RFC 3339 timestamp: {0:?}")]
    InvalidSentAt(String),
    #[error("user_id must be 1 to {MAX_USER_ID_CHARS} characters without control characters")]
    InvalidUserId,
    /// The record passed validation, but PostgreSQL refused to store it for its content (a
    /// data exception, an integrity violation, a program limit): retrying cannot help.
    #[error("postgresql refused the record (sqlstate {sqlstate}): {message}")]
    RejectedByStore { sqlstate: String, message: String },
    /// The record's id is already stored for a message with another channel, author or text.
    /// Reusing an id for different content is a producer error; the stored message stays.
    #[error("id {0} is already stored with a different channel, author or text")]
    IdConflict(MessageId),
}

impl RejectReason {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            RejectReason::TooLarge(_) => "too_large",
            RejectReason::NotJson(_) => "not_json",
            RejectReason::InvalidField(_) => "invalid_field",
            RejectReason::MissingField(_) => "missing_field",
            RejectReason::InvalidChannel(_) => "invalid_channel",
            RejectReason::KeyMismatch { .. } => "key_mismatch",
            RejectReason::InvalidAuthor => "invalid_author",
            RejectReason::InvalidText => "invalid_text",
            RejectReason::InvalidId(_) => "invalid_id",
            RejectReason::InvalidSentAt(_) => "invalid_sent_at",
            RejectReason::InvalidUserId => "invalid_user_id",
            RejectReason::RejectedByStore { .. } => "rejected_by_store",
            RejectReason::IdConflict(_) => "id_conflict",
        }
    }
}

/// PostgreSQL keeps microseconds; truncating up front makes a message read back from the
/// database equal, to the byte, to the one published right after the insert.
pub fn db_time(at: DateTime<Utc>) -> DateTime<Utc> {
    at.trunc_subsecs(6)
}

/// Checks an author name against the documented limits.
pub fn validate_author(author: &str) -> Result<(), RejectReason> {
    let chars = author.chars().count();
    if chars == 0 || chars > MAX_AUTHOR_CHARS || author.chars().any(char::is_control) {
        return Err(RejectReason::InvalidAuthor);
    }
    Ok(())
}

/// Checks a user id (a token's `sub`) against the documented limits.
pub fn validate_user_id(user_id: &str) -> Result<(), RejectReason> {
    let chars = user_id.chars().count();
    if chars == 0 || chars > MAX_USER_ID_CHARS || user_id.chars().any(char::is_control) {
        return Err(RejectReason::InvalidUserId);
    }
    Ok(())
}

/// Checks a message text against the documented limits. This is the one text rule of every
/// edge (Kafka records, WebSocket `publish`, REST `POST`): U+0000 is refused because PostgreSQL
/// cannot store it in a `text` column.
pub fn validate_text(text: &str) -> Result<(), RejectReason> {
    let chars = text.chars().count();
    if chars == 0 || chars > MAX_TEXT_CHARS || text.contains('\0') {
        return Err(RejectReason::InvalidText);
    }
    Ok(())
}

impl NewMessage {
    /// This message as stored with `seq` at `stored_at`.
    pub fn stored(&self, seq: i64, stored_at: DateTime<Utc>) -> StoredMessage {
        StoredMessage {
            channel: self.channel.clone(),
            seq,
            id: self.id,
            author: self.author.clone(),
            text: self.text.clone(),
            sent_at: self.sent_at,
            stored_at,
            user_id: self.user_id.clone(),
        }
    }

    /// Parses and validates one Kafka record.
    pub fn from_record(
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        origin: RecordOrigin,
    ) -> Result<Self, RejectReason> {
        let value = value.unwrap_or_default();
        if value.len() > MAX_RECORD_BYTES {
            return Err(RejectReason::TooLarge(value.len()));
        }
        let raw: IncomingMessage = serde_json::from_slice(value).map_err(|err| {
            if err.is_data() {
                RejectReason::InvalidField(err.to_string())
            } else {
                RejectReason::NotJson(err.to_string())
            }
        })?;

        let channel_raw = raw.channel.ok_or(RejectReason::MissingField("channel"))?;
        let author = raw.author.ok_or(RejectReason::MissingField("author"))?;
        let text = raw.text.ok_or(RejectReason::MissingField("text"))?;

        let channel = ChannelName::parse(&channel_raw)
            .map_err(|err| RejectReason::InvalidChannel(err.to_string()))?;
        if let Some(key) = key {
            if key != channel.as_str().as_bytes() {
                return Err(RejectReason::KeyMismatch {
                    key: String::from_utf8_lossy(key).into_owned(),
                    channel: channel_raw,
                });
            }
        }
        validate_author(&author)?;
        validate_text(&text)?;
        if let Some(user_id) = &raw.user_id {
            validate_user_id(user_id)?;
        }

        let id = match raw.id {
            Some(id) => MessageId(Uuid::parse_str(&id).map_err(|_| RejectReason::InvalidId(id))?),
            None => origin.id_prefix.id(origin.offset),
        };
        let sent_at = match raw.sent_at {
            Some(at) => DateTime::parse_from_rfc3339(&at)
                .map_err(|_| RejectReason::InvalidSentAt(at))?
                .with_timezone(&Utc),
            None => origin.timestamp.unwrap_or_else(Utc::now),
        };

        Ok(NewMessage {
            id,
            channel,
            author,
            text,
            sent_at: db_time(sent_at),
            user_id: raw.user_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> RecordOrigin {
        RecordOrigin {
            id_prefix: IdPrefix::new("chat.messages", 3),
            offset: 42,
            timestamp: None,
        }
    }

    fn parse(key: Option<&str>, value: &str) -> Result<NewMessage, RejectReason> {
        NewMessage::from_record(key.map(str::as_bytes), Some(value.as_bytes()), origin())
    }

    #[test]
    fn a_valid_record_without_id_gets_the_same_derived_id_every_time() {
        let json = r##"{"channel":"#kerno-challenge","author":"alice","text":"hello"}"##;
        let first = parse(Some("#kerno-challenge"), json).unwrap();
        let again = parse(Some("#kerno-challenge"), json).unwrap();
        assert_eq!(first.id, again.id);
        assert_eq!(first.id, MessageId::derived("chat.messages", 3, 42));
        assert_ne!(first.id, MessageId::derived("chat.messages", 3, 43));
        assert_eq!(first.channel.as_str(), "#kerno-challenge");
    }

    #[test]
    fn derived_ids_are_uuidv8_ascending_with_the_offset_and_distinct_per_partition() {
        let id = |topic, partition, offset| MessageId::derived(topic, partition, offset).0;
        let first = id("chat.messages", 0, 0);
        assert_eq!(first.get_version_num(), 8);
        assert_eq!(first.get_variant(), uuid::Variant::RFC4122);
        let run: Vec<Uuid> = [0, 1, 2, 255, 256, 1 << 40, (1 << 62) - 1]
            .iter()
            .map(|&offset| id("chat.messages", 0, offset))
            .collect();
        assert!(run.windows(2).all(|w| w[0] < w[1]), "{run:?}");
        assert_eq!(run[3].as_u128() & 0xff, 255);
        let others = [id("chat.messages", 1, 0), id("other.topic", 0, 0)];
        assert!(others.iter().all(|other| *other != first));
        assert_ne!(
            others[0].as_u128() >> 64,
            first.as_u128() >> 64,
            "partitions get their own prefix"
        );
        assert_eq!(MessageId::new_random().0.get_version_num(), 7);
    }

    #[test]
    fn producer_id_and_sent_at_are_kept() {
        let json = r##"{"channel":"c","author":"a","text":"t","id":"1b4e28ba-2fa1-11d2-883f-0016d3cca427","sent_at":"2026-01-02T03:04:05.123456789+01:00"}"##;
        let msg = parse(None, json).unwrap();
        assert_eq!(msg.id.to_string(), "1b4e28ba-2fa1-11d2-883f-0016d3cca427");
        assert_eq!(msg.sent_at.to_rfc3339(), "2026-01-02T02:04:05.123456+00:00");
    }

    #[test]
    fn every_malformed_shape_has_its_own_reason() {
        let cases: &[(Option<&str>, &str, &str)] = &[
            (None, "not json", "not_json"),
            (None, "[1,2]", "invalid_field"),
            (
                None,
                r#"{"channel":5,"author":"a","text":"t"}"#,
                "invalid_field",
            ),
            (None, r#"{"author":"a","text":"t"}"#, "missing_field"),
            (None, r#"{"channel":"c","text":"t"}"#, "missing_field"),
            (None, r#"{"channel":"c","author":"a"}"#, "missing_field"),
            (
                None,
                r#"{"channel":"bad name","author":"a","text":"t"}"#,
                "invalid_channel",
            ),
            (
                Some("other"),
                r#"{"channel":"c","author":"a","text":"t"}"#,
                "key_mismatch",
            ),
            (
                None,
                r#"{"channel":"c","author":"","text":"t"}"#,
                "invalid_author",
            ),
            (
                None,
                r#"{"channel":"c","author":"a","text":""}"#,
                "invalid_text",
            ),
            (
                None,
                r#"{"channel":"c","author":"a","text":"a\u0000b"}"#,
                "invalid_text",
            ),
            (
                None,
                r#"{"channel":"c","author":"a","text":"t","id":"x"}"#,
                "invalid_id",
            ),
            (
                None,
                r#"{"channel":"c","author":"a","text":"t","sent_at":"yesterday"}"#,
                "invalid_sent_at",
            ),
            (
                None,
                r#"{"channel":"c","author":"a","text":"t","user_id":""}"#,
                "invalid_user_id",
            ),
            (
                None,
                r#"{"channel":"c","author":"a","text":"t","user_id":7}"#,
                "invalid_field",
            ),
        ];
        for (key, value, code) in cases {
            let err = parse(*key, value).expect_err(value);
            assert_eq!(err.code(), *code, "{value}: {err}");
        }
        let long_text = format!(
            r#"{{"channel":"c","author":"a","text":"{}"}}"#,
            "x".repeat(MAX_TEXT_CHARS + 1)
        );
        assert_eq!(parse(None, &long_text).unwrap_err().code(), "invalid_text");
        let huge = format!(
            r#"{{"channel":"c","author":"a","text":"{}"}}"#,
            "x".repeat(MAX_RECORD_BYTES)
        );
        assert_eq!(parse(None, &huge).unwrap_err().code(), "too_large");
    }
}
