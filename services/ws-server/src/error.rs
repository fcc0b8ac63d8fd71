//! The JSON problem body of the HTTP API: `{"code", "message"}` with a stable `code`. Bad input
//! is a 4xx, a dependency outage a 503; internal detail is logged, never returned.

use poem::http::StatusCode;
use poem::{IntoResponse, Response};
use poem_openapi::Object;

/// An error of the HTTP API.
#[derive(Debug, Clone, Object)]
pub struct ErrorBody {
    /// Stable machine-readable code, e.g. `invalid_channel`, `invalid_limit`, `unavailable`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

/// A JSON problem response outside the OpenAPI operations (the WebSocket upgrade, the
/// development sign-in, poem's own errors).
pub fn problem(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = ErrorBody::new(code, message);
    poem::web::Json(serde_json::json!({"code": body.code, "message": body.message}))
        .with_status(status)
        .into_response()
}

/// The stable code of a status that poem or poem-openapi produced on its own.
pub fn code_for_status(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_client_error() => "bad_request",
        _ => "internal",
    }
}

/// Turns any error poem raised (unknown route, unparsable parameter, wrong content type) into
/// the JSON problem body, keeping its status. Server errors keep their detail in the log.
pub async fn render(err: poem::Error) -> Response {
    let status = err.status();
    let message = if status.is_server_error() {
        tracing::error!(error = %err, "request failed");
        "internal error".to_owned()
    } else {
        err.to_string()
    };
    problem(status, code_for_status(status), message)
}
