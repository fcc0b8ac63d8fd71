//! The REST API's input: `GET /channels/{channel}/messages?limit&before&after` and
//! `POST /channels/{channel}/messages` with an `Idempotency-Key` and a JSON body, through the
//! same parsers the server runs: poem's router (percent-decoding the channel), poem-openapi's
//! query, header and JSON extractors with the API's own body types, `ChannelName::parse`, and
//! the handlers' checks `api::page_query`, `api::publish_draft` and `Draft::by`.
//!
//! Input: `PATH-SEGMENT 0xFF QUERY 0xFF IDEMPOTENCY-KEY 0xFF BODY`; a missing part is absent,
//! and an empty IDEMPOTENCY-KEY is no header.
//!
//! Invariants: no panic; a parsed channel is valid and is the decoded path segment; an accepted
//! page has a limit from 1 to the maximum and cursors in range, matching the query; an accepted
//! publication has a valid text and author, and the idempotency key as its id; every refusal has
//! its documented code.
#![no_main]

use std::sync::OnceLock;

use chat_core::channel::ChannelName;
use chat_core::message::{validate_author, validate_text};
use chat_fuzz::{block_on, parts};
use chat_ws_server::api::{page_query, publish_draft, PublishRequest};
use chat_ws_server::auth::gate::Principal;
use chat_ws_server::history::Cursor;
use chat_ws_server::protocol::Limits;
use libfuzzer_sys::fuzz_target;
use poem::endpoint::make_sync;
use poem::http::{HeaderValue, Method, StatusCode, Uri};
use poem::{Body, Endpoint, Request, Route};
use poem_openapi::param::{Header, Query};
use poem_openapi::payload::{Json, ParsePayload};
// The query pairs poem-openapi's service hands to its extractors (hidden, but what the server runs).
use poem_openapi::__private::UrlQuery;
use poem_openapi::{ApiExtractor, ExtractParamOptions};

/// The server's defaults (`HISTORY_DEFAULT_LIMIT`, `HISTORY_MAX_LIMIT`).
const LIMITS: Limits = Limits {
    default_limit: 50,
    max_limit: 1000,
};

fuzz_target!(|data: &[u8]| {
    let [segment, query, key, body] = parts::<4>(data);
    let text = |part: Option<&[u8]>| String::from_utf8_lossy(part.unwrap_or_default()).into_owned();
    let uri = format!("/channels/{}/messages?{}", text(segment), text(query));
    // hyper refuses what is not a URI before poem sees it.
    let Ok(uri) = Uri::try_from(uri) else {
        return;
    };
    let mut request = Request::builder().method(Method::POST).uri(uri).finish();
    // An empty part is no header (hyper refuses a value with control characters).
    let key = key.filter(|key| !key.is_empty());
    if let Some(key) = key.and_then(|key| HeaderValue::from_bytes(key).ok()) {
        request.headers_mut().insert("Idempotency-Key", key);
    }
    // What poem-openapi's service does with the query string before the operation runs.
    let url_query: Vec<(String, String)> = request.params().unwrap_or_default();
    request.extensions_mut().insert(UrlQuery(url_query));

    let channel = channel_of(&request);
    history(&request);
    if let Some(channel) = channel {
        publish(&request, channel, body.unwrap_or_default());
    }
});

/// The channel path parameter as poem's router decodes it, parsed like `ChatApi::admit`.
fn channel_of(request: &Request) -> Option<ChannelName> {
    static ROUTE: OnceLock<Route> = OnceLock::new();
    let route = ROUTE.get_or_init(|| {
        Route::new().at(
            "/channels/:channel/messages",
            make_sync(|request: Request| {
                request
                    .raw_path_param("channel")
                    .unwrap_or_default()
                    .to_owned()
            }),
        )
    });
    let probe = Request::builder().uri(request.uri().clone()).finish();
    let response = block_on(route.get_response(probe));
    if response.status() != StatusCode::OK {
        return None; // e.g. a segment that decodes to a `/` or to invalid UTF-8: 404
    }
    let raw = block_on(response.into_body().into_string()).expect("the probe answers UTF-8");
    let channel = ChannelName::parse(&raw).ok()?;
    assert_eq!(channel.as_str(), raw);
    Some(channel)
}

fn param(name: &'static str) -> ExtractParamOptions<Option<i64>> {
    ExtractParamOptions {
        name,
        ignore_case: false,
        default_value: None,
        example_value: None,
        explode: true,
        style: None,
    }
}

/// The `GET` operation's query: `limit`, `before`, `after`.
fn history(request: &Request) {
    let extract = |name| {
        block_on(Query::<Option<i64>>::from_request(
            request,
            &mut Default::default(),
            param(name),
        ))
        .map(|query| query.0)
    };
    let (Ok(limit), Ok(before), Ok(after)) =
        (extract("limit"), extract("before"), extract("after"))
    else {
        return; // 400 bad_request from poem-openapi
    };
    match page_query(limit, before, after, LIMITS) {
        Ok((cursor, page_limit)) => {
            assert!((1..=LIMITS.max_limit).contains(&page_limit));
            assert_eq!(page_limit, limit.unwrap_or(LIMITS.default_limit));
            assert_eq!(cursor, Cursor::of(before, after));
            assert!(before.is_none_or(|before| before >= 1));
            assert!(after.is_none_or(|after| after >= 0));
        }
        Err(err) => assert!(
            ["invalid_limit", "invalid_cursor"].contains(&err.code.as_str()),
            "{}",
            err.code
        ),
    }
}

/// The `POST` operation's header and body, on a valid channel.
fn publish(request: &Request, channel: ChannelName, body: &[u8]) {
    let key = block_on(Header::<Option<String>>::from_request(
        request,
        &mut Default::default(),
        ExtractParamOptions {
            name: "Idempotency-Key",
            ignore_case: false,
            default_value: None,
            example_value: None,
            explode: true,
            style: None,
        },
    ));
    let Ok(Header(key)) = key else {
        return;
    };
    let mut body = poem::RequestBody::new(Body::from(body.to_vec()));
    let Ok(Json(body)) = block_on(<Json<PublishRequest> as ParsePayload>::from_request(
        request, &mut body,
    )) else {
        return; // 400 bad_request from poem-openapi
    };
    let draft = match publish_draft(channel.clone(), body, key.as_deref()) {
        Ok(draft) => draft,
        Err(err) => {
            assert!(
                ["invalid_message", "invalid_idempotency_key"].contains(&err.code.as_str()),
                "{}",
                err.code
            );
            return;
        }
    };
    assert_eq!(draft.channel, channel);
    assert!(validate_text(&draft.text).is_ok());
    let key_id = key
        .as_deref()
        .map(|key| uuid::Uuid::parse_str(key).unwrap());
    assert_eq!(draft.id.map(|id| id.0), key_id);
    // Anonymous mode: the author is the client's, and must be valid.
    if let Ok(publication) = draft.by(&Principal::Anonymous) {
        assert!(validate_author(&publication.author).is_ok());
        assert!(publication.user_id.is_none());
    }
}
