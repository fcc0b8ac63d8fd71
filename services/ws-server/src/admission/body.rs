//! The REST body limit (`HTTP_MAX_BODY_BYTES`), before anything buffers the body: a larger
//! `Content-Length` is answered 413 at once, unread; any other body is counted as it streams in
//! and cut off at the first chunk past the limit, and the handler's answer is replaced by 413.
//! poem's `SizeLimit` only reads `Content-Length` (and refuses chunked bodies with 411).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use poem::http::{header, StatusCode};
use poem::{Body, Endpoint, IntoResponse, Middleware, Request, Response};

use crate::error::problem;
use crate::metrics::Metrics;

pub struct BodyLimit {
    max_bytes: usize,
    metrics: Metrics,
}

impl BodyLimit {
    pub fn new(max_bytes: usize, metrics: Metrics) -> Self {
        Self { max_bytes, metrics }
    }
}

impl<E: Endpoint> Middleware<E> for BodyLimit {
    type Output = BodyLimited<E>;

    fn transform(&self, inner: E) -> Self::Output {
        BodyLimited {
            inner,
            max_bytes: self.max_bytes,
            metrics: self.metrics.clone(),
        }
    }
}

pub struct BodyLimited<E> {
    inner: E,
    max_bytes: usize,
    metrics: Metrics,
}

impl<E> BodyLimited<E> {
    fn too_large(&self) -> Response {
        self.metrics.payload_too_large.inc();
        problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the request body is larger than {} bytes (HTTP_MAX_BODY_BYTES)",
                self.max_bytes
            ),
        )
    }
}

impl<E: Endpoint> Endpoint for BodyLimited<E> {
    type Output = Response;

    async fn call(&self, mut request: Request) -> poem::Result<Response> {
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        if declared.is_some_and(|length| length > self.max_bytes as u64) {
            return Ok(self.too_large());
        }
        let exceeded = Arc::new(AtomicBool::new(false));
        let body = capped(request.take_body(), self.max_bytes, Arc::clone(&exceeded));
        request.set_body(body);
        let response = self.inner.call(request).await;
        if exceeded.load(Ordering::Relaxed) {
            // Whatever the handler made of the cut body (poem-openapi: a 400), it was too large.
            return Ok(self.too_large());
        }
        response.map(IntoResponse::into_response)
    }
}

/// `body`, failing at the first chunk that takes it past `max_bytes` (and flagging `exceeded`).
fn capped(body: Body, max_bytes: usize, exceeded: Arc<AtomicBool>) -> Body {
    let mut total = 0usize;
    Body::from_bytes_stream(body.into_bytes_stream().map(move |chunk| {
        let chunk = chunk?;
        total = total.saturating_add(chunk.len());
        if total > max_bytes {
            exceeded.store(true, Ordering::Relaxed);
            return Err(io::Error::other("request body over the limit"));
        }
        Ok(chunk)
    }))
}
