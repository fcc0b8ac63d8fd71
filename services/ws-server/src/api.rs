//! The REST API (poem-openapi): keyset history pages and publishing. The spec is served at
//! `/openapi.json` and browsable at `/docs`. Every request counts against its client's read or
//! write rate (`admission`) before any work; bodies are bounded before they are read
//! (`admission::body`, 413).

use std::borrow::Cow;
use std::sync::Arc;

use chat_core::channel::{ChannelName, MAX_CHANNEL_LEN};
use chat_core::message::{validate_text, MessageId, MAX_AUTHOR_CHARS, MAX_TEXT_CHARS};
use chrono::{DateTime, Utc};
use poem::http::header;
use poem::{IntoResponse, Request};
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::{Json, Payload};
use poem_openapi::registry::{MetaSchemaRef, Registry};
use poem_openapi::types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type};
use poem_openapi::{ApiResponse, Object, OpenApi, Tags};
use serde::Serialize;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::admission::{Admission, Operation, Refusal};
use crate::auth::gate::{bearer, Gate, Principal};
use crate::auth::Right;
use crate::error::ErrorBody;
use crate::history::{Cursor, History};
use crate::metrics::Metrics;
use crate::protocol::Limits;
use crate::publish::{Draft, KafkaPublisher};
use crate::recent::{JsonList, Shared};

#[derive(Tags)]
enum ApiTags {
    /// Channel history and publishing.
    Messages,
}

/// A stored message.
#[derive(Debug, Clone, Object)]
pub struct MessageDto {
    pub channel: String,
    /// Per-channel position: 1, 2, 3, … without holes. The cursor everywhere.
    pub seq: i64,
    pub id: Uuid,
    pub author: String,
    pub text: String,
    pub sent_at: DateTime<Utc>,
    pub stored_at: DateTime<Utc>,
    /// The publisher's user id (a verified token's `sub`), when known.
    #[oai(skip_serializing_if_is_none)]
    pub user_id: Option<String>,
}

/// One page of a channel's history, oldest to newest.
#[derive(Debug, Clone, Object)]
pub struct HistoryPage {
    pub channel: String,
    /// Messages of the page, ascending `seq`.
    pub messages: Vec<MessageDto>,
    /// Pass as `before` to get the previous (older) page; absent when this page starts at the
    /// beginning of the channel, or when paging forward with `after`.
    #[oai(skip_serializing_if_is_none)]
    pub next_before: Option<i64>,
    /// Pass as `after` to get the next (newer) page; the last `seq` of this page (or the cursor
    /// given, when the page is empty). Absent when paging backward with `before` only.
    #[oai(skip_serializing_if_is_none)]
    pub next_after: Option<i64>,
}

/// A [`HistoryPage`] serialized directly from the messages' JSON (see [`PageBody`]), without
/// poem-openapi's detour through `serde_json::Value`. Documented with `HistoryPage`'s schema.
pub struct PageJson(Vec<u8>);

impl Payload for PageJson {
    const CONTENT_TYPE: &'static str = "application/json; charset=utf-8";

    fn schema_ref() -> MetaSchemaRef {
        HistoryPage::schema_ref()
    }

    fn register(registry: &mut Registry) {
        HistoryPage::register(registry);
    }
}

impl IntoResponse for PageJson {
    fn into_response(self) -> poem::Response {
        poem::Response::builder()
            .content_type(Self::CONTENT_TYPE)
            .body(self.0)
    }
}

/// The serde twin of [`HistoryPage`]: the same fields, messages spliced in as serialized.
#[derive(Serialize)]
struct PageBody<'a> {
    channel: &'a str,
    messages: JsonList<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_before: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_after: Option<i64>,
}

/// A message to publish.
#[derive(Debug, Clone, Object)]
pub struct PublishRequest {
    /// 1 to 64 characters, no control characters. Required with `AUTH_MODE=anonymous`; with
    /// tokens, the author is the token's `name` (else `sub`) and this field, when given, must
    /// still be a valid name but is otherwise ignored.
    pub author: Option<JsonString>,
    /// 1 to 4000 characters, none of them U+0000 (NUL), which PostgreSQL cannot store.
    pub text: JsonString,
}

/// A JSON string and nothing else. poem-openapi's `String` also accepts a number or a boolean
/// (`"text": false` becomes `"false"`), which the spec (`type: string`) rejects.
#[derive(Debug, Clone)]
pub struct JsonString(pub String);

impl Type for JsonString {
    const IS_REQUIRED: bool = true;
    type RawValueType = String;
    type RawElementValueType = String;

    fn name() -> Cow<'static, str> {
        String::name()
    }

    fn schema_ref() -> MetaSchemaRef {
        String::schema_ref()
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(&self.0)
    }

    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl ParseFromJSON for JsonString {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value.unwrap_or_default() {
            Value::String(value) => Ok(Self(value)),
            other => Err(ParseError::expected_type(other)),
        }
    }
}

impl ToJSON for JsonString {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(self.0.clone()))
    }
}

/// The id of an accepted message.
#[derive(Debug, Clone, Object)]
pub struct Accepted {
    pub id: Uuid,
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "history_bad_request")]
pub enum HistoryResponse {
    /// A page of messages (a `HistoryPage`).
    #[oai(status = 200)]
    Ok(PageJson),
    /// Invalid channel, limit or cursor (`invalid_channel`, `invalid_limit`, `invalid_cursor`,
    /// `bad_request`).
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// No valid bearer token (`missing_token`, `invalid_token`, `token_expired`, …).
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>, #[oai(header = "WWW-Authenticate")] String),
    /// The token has no `read` right on this channel (`forbidden`).
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// Too many reads from this client, the token's user or else the address (`rate_limited`,
    /// `CLIENT_READS_PER_SEC`); retry after `Retry-After` seconds.
    #[oai(status = 429)]
    TooManyRequests(Json<ErrorBody>, #[oai(header = "Retry-After")] u64),
    /// PostgreSQL, or the token signing keys, are unavailable (`unavailable`,
    /// `keys_unavailable`).
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

fn history_bad_request(err: poem::Error) -> HistoryResponse {
    HistoryResponse::BadRequest(Json(ErrorBody::new("bad_request", err.to_string())))
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "publish_bad_request")]
pub enum PublishResponse {
    /// Kafka acknowledged the message; it reaches subscribers through the pipeline.
    #[oai(status = 202)]
    Accepted(Json<Accepted>),
    /// Invalid channel, message or idempotency key (`invalid_channel`, `invalid_message`,
    /// `invalid_idempotency_key`, `bad_request`).
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// No valid bearer token (`missing_token`, `invalid_token`, `token_expired`, …).
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>, #[oai(header = "WWW-Authenticate")] String),
    /// The token has no `publish` right on this channel (`forbidden`).
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// The body is larger than `HTTP_MAX_BODY_BYTES` (`payload_too_large`); refused before it
    /// is buffered, by the body limit in front of this operation.
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// Too many writes from this client, the token's user or else the address (`rate_limited`,
    /// `CLIENT_WRITES_PER_SEC`); retry after `Retry-After` seconds.
    #[oai(status = 429)]
    TooManyRequests(Json<ErrorBody>, #[oai(header = "Retry-After")] u64),
    /// Kafka did not acknowledge the message (`publish_failed`), or the token signing keys are
    /// unavailable (`keys_unavailable`).
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

/// Why a request may not go on, before its work starts.
enum Denied {
    BadRequest(ErrorBody),
    Unauthorized(ErrorBody),
    Forbidden(ErrorBody),
    TooManyRequests(ErrorBody, u64),
    Unavailable(ErrorBody),
}

impl From<Refusal> for Denied {
    fn from(refusal: Refusal) -> Self {
        Denied::TooManyRequests(refusal.body(), refusal.retry_after.0)
    }
}

/// The `WWW-Authenticate` challenge of a 401 (RFC 6750).
const BEARER_CHALLENGE: &str = r#"Bearer realm="chat""#;

/// Both operations answer a denial with the same statuses.
macro_rules! denials {
    ($($response:ty),*) => {$(
        impl From<Denied> for $response {
            fn from(denied: Denied) -> Self {
                match denied {
                    Denied::BadRequest(body) => Self::BadRequest(Json(body)),
                    Denied::Unauthorized(body) => {
                        Self::Unauthorized(Json(body), BEARER_CHALLENGE.to_owned())
                    }
                    Denied::Forbidden(body) => Self::Forbidden(Json(body)),
                    Denied::TooManyRequests(body, retry_after) => {
                        Self::TooManyRequests(Json(body), retry_after)
                    }
                    Denied::Unavailable(body) => Self::Unavailable(Json(body)),
                }
            }
        }
    )*};
}

denials!(HistoryResponse, PublishResponse);

fn publish_bad_request(err: poem::Error) -> PublishResponse {
    PublishResponse::BadRequest(Json(ErrorBody::new("bad_request", err.to_string())))
}

pub struct ChatApi {
    pub gate: Gate,
    pub history: History,
    pub publisher: KafkaPublisher,
    pub metrics: Metrics,
    pub admission: Arc<Admission>,
    pub default_limit: i64,
    pub max_limit: i64,
}

#[OpenApi]
impl ChatApi {
    /// Read a channel's history.
    ///
    /// Keyset paging by `seq`, stable while the channel is written. Without a cursor: the newest
    /// `limit` messages. `before=S`: the `limit` messages just below `seq` S (page backward with
    /// `next_before`). `after=S`: the `limit` messages just above S (page forward with
    /// `next_after`). Both: the first `limit` messages between the two, paged forward. Messages
    /// are always ascending within a page.
    #[oai(
        path = "/channels/:channel/messages",
        method = "get",
        tag = "ApiTags::Messages"
    )]
    async fn history(
        &self,
        request: &Request,
        /// URL-encoded channel name, e.g. `%23kerno-challenge`.
        channel: Path<String>,
        /// Page size, 1 to the configured maximum (default 50).
        limit: Query<Option<i64>>,
        /// Return messages with `seq` below this one (1 or more).
        before: Query<Option<i64>>,
        /// Return messages with `seq` above this one (0 or more). With `before` too: the first
        /// `limit` messages between the two.
        after: Query<Option<i64>>,
    ) -> HistoryResponse {
        let channel = match self.admit(request, &channel.0, Right::Read).await {
            Ok((_, channel)) => channel,
            Err(denied) => return denied.into(),
        };
        let limits = Limits {
            default_limit: self.default_limit,
            max_limit: self.max_limit,
        };
        let (cursor, limit) = match page_query(limit.0, before.0, after.0, limits) {
            Ok(query) => query,
            Err(body) => return HistoryResponse::BadRequest(Json(body)),
        };
        let page = match self.history.page(&channel, cursor, limit).await {
            Ok(page) => page,
            // Logged by the history reader.
            Err(_) => {
                return HistoryResponse::Unavailable(Json(ErrorBody::new(
                    "unavailable",
                    "history is unavailable; retry later",
                )));
            }
        };
        HistoryResponse::Ok(page_body(&channel, &page, before.0, after.0))
    }

    /// Publish a message.
    ///
    /// The message is produced to Kafka (key = channel); the reply comes once the broker has
    /// acknowledged it, with the message's id. It then reaches storage and every subscriber
    /// through the pipeline. With an `Idempotency-Key` (a UUID), that key is the message's id:
    /// a retry with the same key and body is stored once and answered with the same id.
    #[oai(
        path = "/channels/:channel/messages",
        method = "post",
        tag = "ApiTags::Messages"
    )]
    async fn publish(
        &self,
        request: &Request,
        /// URL-encoded channel name, e.g. `%23kerno-challenge`.
        channel: Path<String>,
        /// A UUID chosen by the client for this message; retries reuse it.
        #[oai(name = "Idempotency-Key")]
        idempotency_key: Header<Option<String>>,
        body: Json<PublishRequest>,
    ) -> PublishResponse {
        let bad = |body| PublishResponse::BadRequest(Json(body));
        let (principal, channel) = match self.admit(request, &channel.0, Right::Publish).await {
            Ok(admitted) => admitted,
            Err(denied) => return denied.into(),
        };
        let draft = match publish_draft(channel, body.0, idempotency_key.0.as_deref()) {
            Ok(draft) => draft,
            Err(body) => return bad(body),
        };
        let publication = match draft.by(&principal) {
            Ok(publication) => publication,
            Err(reason) => return bad(ErrorBody::new("invalid_message", reason.to_string())),
        };
        match self.publisher.publish(&publication).await {
            Ok(id) => {
                self.metrics.published.with_label_values(&["ok"]).inc();
                PublishResponse::Accepted(Json(Accepted { id: id.0 }))
            }
            Err(err) => {
                tracing::warn!(channel = %publication.channel, error = %err, "publish failed");
                self.metrics.published.with_label_values(&["failed"]).inc();
                PublishResponse::Unavailable(Json(ErrorBody::new(
                    "publish_failed",
                    "kafka did not acknowledge the message; retry",
                )))
            }
        }
    }
}

impl ChatApi {
    /// Who sent the request and on which channel, once they may: 429 past the client's rate
    /// (the token's user, else the address: requests with a bad token count against the
    /// address), 401 without a valid token, 400 for a bad channel name, 403 without `right`.
    async fn admit(
        &self,
        request: &Request,
        channel: &str,
        right: Right,
    ) -> Result<(Principal, ChannelName), Denied> {
        let principal = self.principal(request).await;
        let user = principal.as_ref().ok().and_then(Principal::user_id);
        let client = self.admission.rest_client(request, user);
        let operation = match right {
            Right::Read => Operation::Read,
            Right::Publish => Operation::Write,
        };
        self.admission.admit_rest(&client, operation)?;
        let principal = principal?;
        let channel = ChannelName::parse(channel).map_err(|err| {
            Denied::BadRequest(ErrorBody::new("invalid_channel", err.to_string()))
        })?;
        authorize(&principal, &channel, right)?;
        Ok((principal, channel))
    }

    /// Who sent the request: the `Authorization: Bearer` token's identity (anonymous mode:
    /// nobody in particular).
    async fn principal(&self, request: &Request) -> Result<Principal, Denied> {
        let token = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(bearer);
        self.gate.admit(token).await.map_err(|err| {
            let body = ErrorBody::new(err.code(), err.to_string());
            if err.is_server_side() {
                Denied::Unavailable(body)
            } else {
                Denied::Unauthorized(body)
            }
        })
    }
}

/// The page a `GET` asks for: `limit` from 1 to `max_limit` (`default_limit` when absent),
/// `before` 1 or more, `after` 0 or more; else 400 `invalid_limit` or `invalid_cursor`. A pure
/// function, so that the fuzz target `rest_input` (fuzz/) runs the handler's very checks.
pub fn page_query(
    limit: Option<i64>,
    before: Option<i64>,
    after: Option<i64>,
    limits: Limits,
) -> Result<(Cursor, i64), ErrorBody> {
    let limit = limit.unwrap_or(limits.default_limit);
    if !(1..=limits.max_limit).contains(&limit) {
        return Err(ErrorBody::new(
            "invalid_limit",
            format!("limit must be 1 to {}", limits.max_limit),
        ));
    }
    if before.is_some_and(|b| b < 1) || after.is_some_and(|a| a < 0) {
        return Err(ErrorBody::new(
            "invalid_cursor",
            "before must be 1 or more, after 0 or more",
        ));
    }
    Ok((Cursor::of(before, after), limit))
}

/// The draft a `POST` asks to publish: the text rule of every edge, and the `Idempotency-Key`,
/// when given, a UUID that becomes the message's id; else 400 `invalid_message` or
/// `invalid_idempotency_key`. The author is checked by [`Draft::by`], once the principal is
/// known. Pure, like [`page_query`].
pub fn publish_draft(
    channel: ChannelName,
    body: PublishRequest,
    idempotency_key: Option<&str>,
) -> Result<Draft, ErrorBody> {
    let PublishRequest {
        author,
        text: JsonString(text),
    } = body;
    if let Err(reason) = validate_text(&text) {
        return Err(ErrorBody::new("invalid_message", reason.to_string()));
    }
    let id = match idempotency_key.map(Uuid::parse_str) {
        None => None,
        Some(Ok(id)) => Some(MessageId(id)),
        Some(Err(_)) => {
            return Err(ErrorBody::new(
                "invalid_idempotency_key",
                "Idempotency-Key must be a UUID",
            ))
        }
    };
    Ok(Draft {
        channel,
        author: author.map(|JsonString(author)| author),
        text,
        id,
    })
}

/// `Ok` when `principal` holds `right` on `channel`, else 403 `forbidden`.
fn authorize(principal: &Principal, channel: &ChannelName, right: Right) -> Result<(), Denied> {
    if principal.allows(channel, right) {
        return Ok(());
    }
    let what = match right {
        Right::Read => "read",
        Right::Publish => "publish to",
    };
    Err(Denied::Forbidden(ErrorBody::new(
        "forbidden",
        format!("your token does not allow you to {what} {channel}"),
    )))
}

/// Builds the page with its cursors (the page was read with `before` / `after`).
fn page_body(
    channel: &ChannelName,
    page: &[Shared],
    before: Option<i64>,
    after: Option<i64>,
) -> PageJson {
    let first = page.first().map(|m| m.seq);
    let last = page.last().map(|m| m.seq);
    let (next_before, next_after) = match after {
        // A window starting at `after` continues with `after=next_after&before=<same>`.
        Some(after) => (None, Some(last.unwrap_or(after))),
        None if before.is_some() => (first.filter(|&s| s > 1), None),
        None => (first.filter(|&s| s > 1), Some(last.unwrap_or(0))),
    };
    let body = PageBody {
        channel: channel.as_str(),
        messages: JsonList(page),
        next_before,
        next_after,
    };
    PageJson(serde_json::to_vec(&body).expect("a history page always serializes"))
}

/// A channel name (see [`ChannelName::parse`]): ASCII letters, digits and `# - _ . :`, with at
/// least one letter or digit.
const CHANNEL_PATTERN: &str = "^[#A-Za-z0-9_.:-]*[A-Za-z0-9][#A-Za-z0-9_.:-]*$";
/// No control character (`char::is_control`: Unicode category Cc). The `\uXXXX` escapes mean the
/// same in ECMA-262, Python and Rust regular expressions.
const NO_CONTROL_PATTERN: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$";
/// No U+0000 (`chat_core::message::validate_text`), same escape rules.
const NO_NUL_PATTERN: &str = "^[^\\u0000]*$";

/// Adds to the generated OpenAPI document the input constraints that the handlers enforce
/// themselves (so that a violation keeps its stable error code rather than poem-openapi's
/// generic `bad_request`), so that the spec describes exactly the accepted input: channel
/// pattern and length, `limit` from 1 to `max_limit` (a setting, hence not a compile-time
/// validator), cursor minimums, author and text lengths.
///
/// Panics if the document lacks one of the places: a programming error that every test starting
/// the server catches.
pub fn document_constraints(spec: &mut Value, max_limit: i64) {
    let mut extend = |pointer: &str, constraints: Value| {
        let target = spec
            .pointer_mut(pointer)
            .and_then(Value::as_object_mut)
            .unwrap_or_else(|| panic!("OpenAPI document has no object at {pointer}"));
        if let Value::Object(constraints) = constraints {
            target.extend(constraints);
        }
    };
    let channel = json!({
        "minLength": 1,
        "maxLength": MAX_CHANNEL_LEN,
        "pattern": CHANNEL_PATTERN,
    });
    let operation = "/paths/~1channels~1{channel}~1messages";
    extend(
        &format!("{operation}/get/parameters/0/schema"),
        channel.clone(),
    );
    extend(
        &format!("{operation}/get/parameters/1/schema"),
        json!({"minimum": 1, "maximum": max_limit}),
    );
    extend(
        &format!("{operation}/get/parameters/2/schema"),
        json!({"minimum": 1}),
    );
    extend(
        &format!("{operation}/get/parameters/3/schema"),
        json!({"minimum": 0}),
    );
    extend(&format!("{operation}/post/parameters/0/schema"), channel);
    extend(
        &format!("{operation}/post/parameters/1/schema"),
        json!({"format": "uuid"}),
    );
    let request = "/components/schemas/PublishRequest/properties";
    extend(
        &format!("{request}/author"),
        json!({"minLength": 1, "maxLength": MAX_AUTHOR_CHARS, "pattern": NO_CONTROL_PATTERN,
            "nullable": true}),
    );
    extend(
        &format!("{request}/text"),
        json!({"minLength": 1, "maxLength": MAX_TEXT_CHARS, "pattern": NO_NUL_PATTERN}),
    );
    // The parameters are addressed by position; make sure each is the one meant.
    // (See `document_bearer_auth` for the security scheme.)
    for (index, name) in ["channel", "limit", "before", "after"].iter().enumerate() {
        let got = spec.pointer(&format!("{operation}/get/parameters/{index}/name"));
        assert_eq!(got, Some(&json!(name)), "OpenAPI parameter order changed");
    }
    for (index, name) in ["channel", "Idempotency-Key"].iter().enumerate() {
        let got = spec.pointer(&format!("{operation}/post/parameters/{index}/name"));
        assert_eq!(got, Some(&json!(name)), "OpenAPI parameter order changed");
    }
}

/// Declares the bearer-token scheme (JWT in `Authorization: Bearer`) on both operations, so
/// the spec says what the handlers enforce and Swagger UI's Authorize button sends the token.
/// Only with `AUTH_MODE=jwt`; an anonymous server documents no scheme.
pub fn document_bearer_auth(spec: &mut Value) {
    let components = spec
        .as_object_mut()
        .expect("an OpenAPI document is an object")
        .entry("components")
        .or_insert_with(|| json!({}));
    components
        .as_object_mut()
        .expect("components is an object")
        .insert(
            "securitySchemes".into(),
            json!({"bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "A JWT signed by the configured key: rights per channel in its `chat` claim; the author is its `name`, else `sub`."
            }}),
        );
    let operation = "/paths/~1channels~1{channel}~1messages";
    for method in ["get", "post"] {
        let target = spec
            .pointer_mut(&format!("{operation}/{method}"))
            .and_then(Value::as_object_mut)
            .unwrap_or_else(|| panic!("OpenAPI document has no {method} operation"));
        target.insert("security".into(), json!([{"bearerAuth": []}]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        default_limit: 50,
        max_limit: 1000,
    };

    fn code<T>(result: Result<T, ErrorBody>) -> String {
        result.err().expect("a refusal").code
    }

    #[test]
    fn page_query_defaults_the_limit_and_refuses_out_of_range_limits_and_cursors() {
        assert_eq!(
            page_query(None, None, None, LIMITS).unwrap(),
            (Cursor::Newest, 50)
        );
        assert_eq!(
            page_query(Some(1000), Some(1), Some(0), LIMITS).unwrap(),
            (
                Cursor::Between {
                    after: 0,
                    before: 1
                },
                1000
            )
        );
        assert_eq!(
            code(page_query(Some(0), None, None, LIMITS)),
            "invalid_limit"
        );
        assert_eq!(
            code(page_query(Some(1001), None, None, LIMITS)),
            "invalid_limit"
        );
        assert_eq!(
            code(page_query(None, Some(0), None, LIMITS)),
            "invalid_cursor"
        );
        assert_eq!(
            code(page_query(None, None, Some(-1), LIMITS)),
            "invalid_cursor"
        );
    }

    #[test]
    fn publish_draft_checks_the_text_and_takes_the_idempotency_key_as_id() {
        let channel = ChannelName::parse("#kerno-challenge").unwrap();
        let body = |text: &str| PublishRequest {
            author: Some(JsonString("alice".into())),
            text: JsonString(text.into()),
        };
        let key = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
        let draft = publish_draft(channel.clone(), body("hi"), Some(key)).unwrap();
        assert_eq!(draft.id.unwrap().to_string(), key);
        assert_eq!(draft.author.as_deref(), Some("alice"));
        assert_eq!(
            code(publish_draft(channel.clone(), body("a\0b"), None)),
            "invalid_message"
        );
        assert_eq!(
            code(publish_draft(channel, body("hi"), Some("key-1"))),
            "invalid_idempotency_key"
        );
    }
}
