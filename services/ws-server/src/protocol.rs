//! The WebSocket protocol (`docs/PROTOCOL.md`): client commands parsed at the edge into domain
//! types, and server frames as serde types. Every error has a stable [`ErrorCode`].

use chat_core::channel::ChannelName;
use chat_core::message::{validate_text, MessageId, StoredMessage};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::auth::AuthError;
use crate::publish::Draft;
use crate::recent::{JsonList, Shared, SharedMessage};

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The newest `n` stored messages, then live.
    Newest(i64),
    /// Every message with a `seq` above this one, then live.
    Since(i64),
}

/// A parsed client command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Subscribe {
        channel: ChannelName,
        start: Start,
    },
    Unsubscribe {
        channel: ChannelName,
    },
    Publish(Draft),
    /// A fresh token for the same connection (refresh before `exp`).
    Auth {
        token: String,
    },
    Ping,
}

/// A command and its optional client-chosen `id`, echoed as `reply_to`.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: Option<Value>,
    pub command: Command,
}

/// Stable machine-readable error codes of `error` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidJson,
    UnknownCommand,
    MissingField,
    InvalidChannel,
    InvalidLimit,
    InvalidSince,
    InvalidMessage,
    InvalidMessageId,
    Forbidden,
    MissingToken,
    InvalidToken,
    TokenExpired,
    TokenNotYetValid,
    WrongIssuer,
    WrongAudience,
    MissingClaim,
    NoAuthor,
    InvalidRights,
    KeysUnavailable,
    AuthDisabled,
    TooManySubscriptions,
    NotSubscribed,
    AlreadySubscribed,
    BinaryNotSupported,
    PublishFailed,
    HistoryUnavailable,
    RateLimited,
    ServerBusy,
}

/// A refused command: the code, a human explanation, and the command's `id` if it had one.
#[derive(Debug, Clone, PartialEq)]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
    pub reply_to: Option<Value>,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            reply_to: None,
        }
    }

    pub fn reply_to(mut self, id: Option<Value>) -> Self {
        self.reply_to = id;
        self
    }
}

/// Limits that parsing enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub default_limit: i64,
    pub max_limit: i64,
}

/// Parses one text frame.
pub fn parse(text: &str, limits: Limits) -> Result<Request, ProtocolError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|err| ProtocolError::new(ErrorCode::InvalidJson, err.to_string()))?;
    let Value::Object(fields) = value else {
        return Err(ProtocolError::new(
            ErrorCode::InvalidJson,
            "a command is a JSON object",
        ));
    };
    let id = fields.get("id").cloned();
    parse_command(&fields, limits)
        .map(|command| Request {
            id: id.clone(),
            command,
        })
        .map_err(|err| err.reply_to(id))
}

fn parse_command(fields: &Map<String, Value>, limits: Limits) -> Result<Command, ProtocolError> {
    let command = match fields.get("command") {
        None => return Err(missing("command")),
        Some(Value::String(name)) => name.as_str(),
        Some(_) => {
            return Err(ProtocolError::new(
                ErrorCode::UnknownCommand,
                "`command` must be a string",
            ))
        }
    };
    match command {
        "subscribe" => {
            let channel = channel(fields)?;
            let limit = optional_i64(fields, "limit", ErrorCode::InvalidLimit)?;
            let since = optional_i64(fields, "since", ErrorCode::InvalidSince)?;
            let start = match (limit, since) {
                (Some(_), Some(_)) => {
                    return Err(ProtocolError::new(
                        ErrorCode::InvalidSince,
                        "give `limit` or `since`, not both",
                    ))
                }
                (None, Some(since)) if since < 0 => {
                    return Err(ProtocolError::new(
                        ErrorCode::InvalidSince,
                        "`since` must be a seq, 0 or more",
                    ))
                }
                (None, Some(since)) => Start::Since(since),
                (Some(limit), None) if !(0..=limits.max_limit).contains(&limit) => {
                    return Err(ProtocolError::new(
                        ErrorCode::InvalidLimit,
                        format!("`limit` must be 0 to {}", limits.max_limit),
                    ))
                }
                (Some(limit), None) => Start::Newest(limit),
                (None, None) => Start::Newest(limits.default_limit),
            };
            Ok(Command::Subscribe { channel, start })
        }
        "unsubscribe" => Ok(Command::Unsubscribe {
            channel: channel(fields)?,
        }),
        "publish" => {
            let channel = channel(fields)?;
            let author = match fields.get("author") {
                None | Some(Value::Null) => None,
                Some(_) => Some(required_string(fields, "author")?),
            };
            let text = required_string(fields, "text")?;
            validate_text(&text).map_err(|reason| {
                ProtocolError::new(ErrorCode::InvalidMessage, reason.to_string())
            })?;
            let id = match fields.get("message_id") {
                None | Some(Value::Null) => None,
                Some(Value::String(raw)) => Some(parse_message_id(raw)?),
                Some(_) => return Err(invalid_message_id()),
            };
            Ok(Command::Publish(Draft {
                channel,
                author,
                text,
                id,
            }))
        }
        "auth" => Ok(Command::Auth {
            token: required_string(fields, "token")?,
        }),
        "ping" => Ok(Command::Ping),
        other => Err(ProtocolError::new(
            ErrorCode::UnknownCommand,
            format!("unknown command {other:?}; use subscribe, unsubscribe, publish, auth or ping"),
        )),
    }
}

fn invalid_message_id() -> ProtocolError {
    ProtocolError::new(
        ErrorCode::InvalidMessageId,
        "`message_id` must be a UUID string",
    )
}

fn parse_message_id(raw: &str) -> Result<MessageId, ProtocolError> {
    uuid::Uuid::parse_str(raw)
        .map(MessageId)
        .map_err(|_| invalid_message_id())
}

fn missing(field: &str) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::MissingField,
        format!("required field `{field}` is missing"),
    )
}

fn channel(fields: &Map<String, Value>) -> Result<ChannelName, ProtocolError> {
    match fields.get("channel") {
        None => Err(missing("channel")),
        Some(Value::String(raw)) => ChannelName::parse(raw)
            .map_err(|err| ProtocolError::new(ErrorCode::InvalidChannel, err.to_string())),
        Some(_) => Err(ProtocolError::new(
            ErrorCode::InvalidChannel,
            "`channel` must be a string",
        )),
    }
}

fn optional_i64(
    fields: &Map<String, Value>,
    name: &str,
    code: ErrorCode,
) -> Result<Option<i64>, ProtocolError> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_i64()
            .map(Some)
            .ok_or_else(|| ProtocolError::new(code, format!("`{name}` must be an integer"))),
    }
}

fn required_string(fields: &Map<String, Value>, name: &str) -> Result<String, ProtocolError> {
    match fields.get(name) {
        None => Err(missing(name)),
        Some(Value::String(value)) => Ok(value.clone()),
        Some(_) => Err(ProtocolError::new(
            ErrorCode::InvalidMessage,
            format!("`{name}` must be a string"),
        )),
    }
}

/// Frames the server sends.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    Subscribed {
        channel: &'a ChannelName,
        messages: JsonList<'a>,
        last_seq: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        reply_to: Option<&'a Value>,
    },
    Message {
        channel: &'a ChannelName,
        message: &'a RawValue,
    },
    Unsubscribed {
        channel: &'a ChannelName,
        /// Why the server ended the subscription (`forbidden` after a token refresh removed the
        /// right; `history_unavailable` when PostgreSQL failed after `subscribed`, while the rest
        /// of the history was read); absent when the client asked.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reply_to: Option<&'a Value>,
    },
    /// A token refresh was accepted.
    Authenticated {
        user_id: &'a str,
        expires_at: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        reply_to: Option<&'a Value>,
    },
    Published {
        channel: &'a ChannelName,
        id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        reply_to: Option<&'a Value>,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        reply_to: Option<&'a Value>,
    },
    Error {
        code: ErrorCode,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        reply_to: Option<&'a Value>,
    },
}

impl ServerFrame<'_> {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server frames always serialize")
    }
}

/// A stored message serialized once, and the `message` frame that carries it.
pub fn message_frame(message: &StoredMessage) -> (Shared, String) {
    let shared = SharedMessage::new(message);
    let frame = ServerFrame::Message {
        channel: &message.channel,
        message: &shared.json,
    }
    .to_json();
    (shared, frame)
}

impl From<&AuthError> for ErrorCode {
    fn from(err: &AuthError) -> Self {
        match err {
            AuthError::MissingToken => ErrorCode::MissingToken,
            AuthError::TokenExpired => ErrorCode::TokenExpired,
            AuthError::TokenNotYetValid => ErrorCode::TokenNotYetValid,
            AuthError::WrongIssuer => ErrorCode::WrongIssuer,
            AuthError::WrongAudience => ErrorCode::WrongAudience,
            AuthError::MissingClaim(_) => ErrorCode::MissingClaim,
            AuthError::NoAuthor => ErrorCode::NoAuthor,
            AuthError::InvalidRights(_) => ErrorCode::InvalidRights,
            AuthError::KeysUnavailable => ErrorCode::KeysUnavailable,
            AuthError::InvalidToken(_) => ErrorCode::InvalidToken,
        }
    }
}

impl From<AuthError> for ProtocolError {
    fn from(err: AuthError) -> Self {
        ProtocolError::new(ErrorCode::from(&err), err.to_string())
    }
}

impl ProtocolError {
    pub fn to_frame(&self) -> String {
        ServerFrame::Error {
            code: self.code,
            message: &self.message,
            reply_to: self.reply_to.as_ref(),
        }
        .to_json()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        default_limit: 50,
        max_limit: 1000,
    };

    fn code(text: &str) -> ErrorCode {
        parse(text, LIMITS).unwrap_err().code
    }

    #[test]
    fn commands_of_the_contract_parse_with_their_id() {
        let req = parse(
            r##"{"command":"subscribe","channel":"#kerno-challenge","id":7}"##,
            LIMITS,
        )
        .unwrap();
        assert_eq!(req.id, Some(Value::from(7)));
        assert!(matches!(
            req.command,
            Command::Subscribe {
                start: Start::Newest(50),
                ..
            }
        ));
        let req = parse(
            r#"{"command":"subscribe","channel":"c","since":12}"#,
            LIMITS,
        )
        .unwrap();
        assert!(matches!(
            req.command,
            Command::Subscribe {
                start: Start::Since(12),
                ..
            }
        ));
        assert_eq!(
            parse(r#"{"command":"ping"}"#, LIMITS).unwrap().command,
            Command::Ping
        );
    }

    #[test]
    fn each_bad_command_has_its_stable_code() {
        assert_eq!(code("nope"), ErrorCode::InvalidJson);
        assert_eq!(code("[1]"), ErrorCode::InvalidJson);
        assert_eq!(code(r#"{"channel":"c"}"#), ErrorCode::MissingField);
        assert_eq!(code(r#"{"command":"dance"}"#), ErrorCode::UnknownCommand);
        assert_eq!(code(r#"{"command":"subscribe"}"#), ErrorCode::MissingField);
        assert_eq!(
            code(r#"{"command":"subscribe","channel":"a b"}"#),
            ErrorCode::InvalidChannel
        );
        assert_eq!(
            code(r#"{"command":"subscribe","channel":"c","limit":1001}"#),
            ErrorCode::InvalidLimit
        );
        assert_eq!(
            code(r#"{"command":"subscribe","channel":"c","limit":"x"}"#),
            ErrorCode::InvalidLimit
        );
        assert_eq!(
            code(r#"{"command":"subscribe","channel":"c","since":-1}"#),
            ErrorCode::InvalidSince
        );
        assert_eq!(
            code(r#"{"command":"publish","channel":"c","author":7,"text":"t"}"#),
            ErrorCode::InvalidMessage
        );
        assert_eq!(code(r#"{"command":"auth"}"#), ErrorCode::MissingField);
        assert_eq!(
            code(r#"{"command":"publish","channel":"c","author":"a","text":"a\u0000b"}"#),
            ErrorCode::InvalidMessage
        );
        assert_eq!(
            code(r#"{"command":"publish","channel":"c","author":"a"}"#),
            ErrorCode::MissingField
        );
        let err = parse(r#"{"command":"dance","id":"x"}"#, LIMITS).unwrap_err();
        assert_eq!(err.reply_to, Some(Value::from("x")));
        assert_eq!(
            err.to_frame(),
            r#"{"type":"error","code":"unknown_command","message":"unknown command \"dance\"; use subscribe, unsubscribe, publish, auth or ping","reply_to":"x"}"#
        );
    }
}
