//! `NewMessage::from_record`: a Kafka record as the worker consumes it, then the envelope the
//! worker publishes for it once stored.
//!
//! Input: `FLAGS [TIMESTAMP] KEY 0xFF VALUE 0xFF HEADERS`. FLAGS bit 0: the record has a key;
//! bit 1: it has a value; bit 2: eight bytes of Kafka timestamp (milliseconds, little-endian)
//! follow; bits 3 to 7: the partition. HEADERS are lines `name:value` (a line without `:` is a
//! header without value), read back as the worker's `Record` does.
//!
//! Invariants: no panic; an accepted record has a valid channel equal to its key, a valid author,
//! text and user id, a `sent_at` already at PostgreSQL's microsecond precision, the derived id
//! when it gave none; its stored form travels through the Redis envelope unchanged, trace
//! headers included.
#![no_main]

use chat_core::channel::ChannelName;
use chat_core::envelope::Envelope;
use chat_core::message::{
    db_time, validate_author, validate_text, validate_user_id, IdPrefix, IncomingMessage,
    NewMessage, RecordOrigin, StoredMessage,
};
use chat_fuzz::parts;
use chat_worker::record::Record;
use chrono::DateTime;
use libfuzzer_sys::fuzz_target;

const TOPIC: &str = "chat.messages";
const OFFSET: i64 = 42;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let timestamp = if flags & 0b100 != 0 {
        let Some((millis, tail)) = rest.split_first_chunk::<8>() else {
            return;
        };
        rest = tail;
        // As `Record::from_message` reads it.
        DateTime::from_timestamp_millis(i64::from_le_bytes(*millis))
    } else {
        None
    };
    let [key, value, headers] = parts::<3>(rest);
    let record = Record {
        topic: TOPIC.to_owned(),
        partition: i32::from(flags >> 3),
        offset: OFFSET,
        key: key.filter(|_| flags & 0b1 != 0).map(<[u8]>::to_vec),
        value: value.filter(|_| flags & 0b10 != 0).map(<[u8]>::to_vec),
        headers: headers.map(header_lines).unwrap_or_default(),
        timestamp,
    };
    let id_prefix = IdPrefix::new(&record.topic, record.partition);
    let origin = RecordOrigin {
        id_prefix,
        offset: record.offset,
        timestamp: record.timestamp,
    };
    let Ok(message) =
        NewMessage::from_record(record.key.as_deref(), record.value.as_deref(), origin)
    else {
        return;
    };

    assert_eq!(
        ChannelName::parse(message.channel.as_str()).as_ref(),
        Ok(&message.channel)
    );
    if let Some(key) = &record.key {
        assert_eq!(key.as_slice(), message.channel.as_str().as_bytes());
    }
    assert!(validate_author(&message.author).is_ok());
    assert!(validate_text(&message.text).is_ok());
    if let Some(user_id) = &message.user_id {
        assert!(validate_user_id(user_id).is_ok());
    }
    assert_eq!(db_time(message.sent_at), message.sent_at);
    // Read as `from_record` reads it (serde_json skips unknown fields without checking them).
    let gave_id =
        serde_json::from_slice::<IncomingMessage>(record.value.as_deref().unwrap_or_default())
            .expect("an accepted value parses")
            .id
            .is_some();
    if !gave_id {
        assert_eq!(message.id, id_prefix.id(OFFSET));
    }

    // What the worker publishes once the message is stored, and the ws-server decodes.
    let stored = StoredMessage {
        channel: message.channel,
        seq: 1,
        id: message.id,
        author: message.author,
        text: message.text,
        sent_at: message.sent_at,
        stored_at: message.sent_at,
        user_id: message.user_id,
    };
    let envelope = Envelope::carrying(stored, record.trace_headers());
    let decoded = Envelope::decode(&envelope.encode()).expect("an encoded envelope decodes");
    assert_eq!(decoded, envelope);
    let _ = decoded.span_context();
});

/// Header lines to the worker's `(name, value)` pairs.
fn header_lines(section: &[u8]) -> Vec<(String, Option<Vec<u8>>)> {
    section
        .split(|&byte| byte == b'\n')
        .map(|line| match line.iter().position(|&byte| byte == b':') {
            Some(at) => (
                String::from_utf8_lossy(&line[..at]).into_owned(),
                Some(line[at + 1..].to_vec()),
            ),
            None => (String::from_utf8_lossy(line).into_owned(), None),
        })
        .collect()
}
