//! `protocol::parse`: one WebSocket text frame, as the session hands it over. Text frames are
//! UTF-8 (the WebSocket layer checks); other bytes are parsed as their lossy UTF-8 text.
//!
//! Invariants: no panic; a parsed command holds a valid channel, a `limit` within the limits,
//! a `since` of 0 or more, a text that passes `validate_text`; the `id` is echoed, on success
//! and in the `error` frame, which is a JSON object with the stable code.
#![no_main]

use chat_core::channel::ChannelName;
use chat_core::message::validate_text;
use chat_ws_server::protocol::{parse, Command, Limits, Start};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// The server's defaults (`HISTORY_DEFAULT_LIMIT`, `HISTORY_MAX_LIMIT`).
const LIMITS: Limits = Limits {
    default_limit: 50,
    max_limit: 1000,
};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let id = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|value| value.get("id").cloned());
    match parse(&text, LIMITS) {
        Ok(request) => {
            assert_eq!(request.id, id, "the id is echoed");
            check(&request.command);
        }
        Err(err) => {
            assert_eq!(err.reply_to, id, "the id is echoed in the error");
            let frame: Value =
                serde_json::from_str(&err.to_frame()).expect("an error frame is JSON");
            assert_eq!(frame["type"], "error");
            assert!(frame["code"].is_string());
        }
    }
});

fn check(command: &Command) {
    let valid = |channel: &ChannelName| {
        assert_eq!(ChannelName::parse(channel.as_str()).as_ref(), Ok(channel));
    };
    match command {
        Command::Subscribe { channel, start } => {
            valid(channel);
            match *start {
                Start::Newest(limit) => assert!((0..=LIMITS.max_limit).contains(&limit)),
                Start::Since(since) => assert!(since >= 0),
            }
        }
        Command::Unsubscribe { channel } => valid(channel),
        Command::Publish(draft) => {
            valid(&draft.channel);
            assert!(validate_text(&draft.text).is_ok());
        }
        Command::Auth { .. } | Command::Ping => {}
    }
}
