//! What a browser loads: the demo chat page (`/`, `/app.js`, `/app.css`), Swagger UI (`/docs`)
//! and, in development only, `POST /dev/token`.
//!
//! Every page goes out with security headers: a Content-Security-Policy that allows no inline
//! script (the chat page's script and style are files of their own; Swagger UI's inline
//! bundle is allowed by its SHA-256 hashes, computed once at start-up), `frame-ancestors
//! 'none'`, `X-Content-Type-Options: nosniff` and `Referrer-Policy: no-referrer`.

use std::time::Duration;

use base64::Engine;
use poem::http::{header, HeaderValue, StatusCode};
use poem::web::{Data, Json};
use poem::{handler, Endpoint, IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::auth::gate::Gate;
use crate::auth::DevTokenError;
use crate::error::problem;

/// The chat page's policy: its own files only; WebSockets to its own origin.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// How long a development token lives; the page refreshes it before.
const DEV_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);

/// A response with the page's security headers.
fn secured(content_type: &'static str, body: impl Into<poem::Body>, policy: &str) -> Response {
    let mut response = Response::builder()
        .content_type(content_type)
        .body(body.into());
    let headers = response.headers_mut();
    if let Ok(policy) = HeaderValue::from_str(policy) {
        headers.insert(header::CONTENT_SECURITY_POLICY, policy);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

#[handler]
pub fn index() -> Response {
    secured(
        "text/html; charset=utf-8",
        include_str!("index.html"),
        PAGE_POLICY,
    )
}

#[handler]
pub fn script() -> Response {
    secured(
        "text/javascript; charset=utf-8",
        include_str!("app.js"),
        PAGE_POLICY,
    )
}

#[handler]
pub fn style() -> Response {
    secured(
        "text/css; charset=utf-8",
        include_str!("app.css"),
        PAGE_POLICY,
    )
}

/// Swagger UI (`/docs`): the HTML poem-openapi renders, with a policy that allows exactly its
/// inline scripts (by hash) and nothing else to run.
pub fn docs(html: String) -> impl Endpoint {
    let policy = format!(
        "default-src 'none'; script-src {}; style-src 'self' 'unsafe-inline'; \
         img-src 'self' data:; connect-src 'self'; font-src 'self' data:; base-uri 'none'; \
         form-action 'none'; frame-ancestors 'none'",
        inline_script_hashes(&html).join(" ")
    );
    // Bytes: each response shares the page instead of copying it.
    let html = bytes::Bytes::from(html);
    poem::endpoint::make_sync(move |_| secured("text/html; charset=utf-8", html.clone(), &policy))
}

/// `'sha256-…'` sources for every inline `<script>` of `html`.
fn inline_script_hashes(html: &str) -> Vec<String> {
    let mut hashes = Vec::new();
    let mut rest = html;
    while let Some(open) = rest.find("<script") {
        let after = &rest[open..];
        let Some(tag_end) = after.find('>') else {
            break;
        };
        let tag = &after[..tag_end];
        let body_start = tag_end + 1;
        let Some(close) = after[body_start..].find("</script>") else {
            break;
        };
        let body = &after[body_start..body_start + close];
        if !tag.contains(" src=") {
            let digest = Sha256::digest(body.as_bytes());
            let encoded = base64::engine::general_purpose::STANDARD.encode(digest);
            hashes.push(format!("'sha256-{encoded}'"));
        }
        rest = &after[body_start + close..];
    }
    hashes
}

#[derive(Deserialize)]
struct DevTokenRequest {
    name: String,
}

/// Largest `POST /dev/token` body: `{"name": …}` with a 64-character name fits many times.
pub const DEV_TOKEN_MAX_BODY: usize = 1024;

/// `POST /dev/token {"name": "…"}`: a short-lived HS256 token for anyone, with every right.
/// Only with `AUTH_DEV_TOKENS=true` (404 otherwise): never in production. The route sits behind
/// a size limit of [`DEV_TOKEN_MAX_BODY`] (413 above it, 411 without a `Content-Length`), so the
/// body is never read past it.
#[handler]
pub fn dev_token(Data(gate): Data<&Gate>, body: poem::Result<Json<DevTokenRequest>>) -> Response {
    let Ok(Json(request)) = body else {
        return problem(
            StatusCode::BAD_REQUEST,
            "bad_request",
            r#"the body must be JSON: {"name": "…"}"#,
        );
    };
    match gate.dev_token(&request.name, DEV_TOKEN_TTL) {
        None => problem(
            StatusCode::NOT_FOUND,
            "not_found",
            "development tokens are off (AUTH_DEV_TOKENS)",
        ),
        Some(Ok(token)) => Json(json!({
            "token": token,
            "token_type": "Bearer",
            "expires_in": DEV_TOKEN_TTL.as_secs(),
        }))
        .into_response(),
        Some(Err(DevTokenError::InvalidName)) => problem(
            StatusCode::BAD_REQUEST,
            "invalid_name",
            "name must be 1 to 64 characters without control characters",
        ),
        Some(Err(err)) => {
            tracing::warn!(error = %err, "signing a development token failed");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "no development token could be signed",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_scripts_are_hashed_and_external_ones_are_not() {
        let html = r#"<p><script src="x.js"></script><script>alert(1)</script>
            <script type="module">let a = 2;</script></p>"#;
        let hashes = inline_script_hashes(html);
        assert_eq!(hashes.len(), 2);
        let expected =
            base64::engine::general_purpose::STANDARD.encode(Sha256::digest(b"alert(1)"));
        assert_eq!(hashes[0], format!("'sha256-{expected}'"));
    }

    #[test]
    fn the_page_runs_no_inline_script() {
        let page = include_str!("index.html");
        assert!(
            inline_script_hashes(page).is_empty(),
            "inline script in index.html"
        );
        assert!(!page.contains("<style"), "inline style in index.html");
        for handler in ["onclick=", "onload=", "onsubmit=", "oninput="] {
            assert!(!page.contains(handler), "inline {handler} in index.html");
        }
    }
}
