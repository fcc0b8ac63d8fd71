//! Every HTTP request of the public and the internal listener: a server span for API requests
//! (continuing the caller's trace), a 405's `Allow` header, and the request metrics by route
//! template.

use std::time::Instant;

use chat_core::telemetry::TraceHeaders;
use poem::http::{header, HeaderValue, StatusCode};
use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response};
use tracing::Instrument;

use crate::metrics::Metrics;

/// `endpoint` with JSON error bodies and [`observe`] around every request.
pub fn observed(endpoint: impl Endpoint + 'static, metrics: Metrics) -> impl Endpoint {
    endpoint
        .catch_all_error(crate::error::render)
        .around(move |endpoint, request| {
            let metrics = metrics.clone();
            async move { observe(endpoint, request, metrics).await }
        })
}

/// Counts HTTP requests by route template (never the raw path: bounded cardinality) and status.
pub async fn observe<E: Endpoint>(
    endpoint: E,
    request: Request,
    metrics: Metrics,
) -> poem::Result<Response> {
    let route = route_of(request.uri().path());
    let started = Instant::now();
    let span = http_span(&request, route);
    let mut response = match endpoint.call(request).instrument(span.clone()).await {
        Ok(response) => response.into_response(),
        Err(err) => crate::error::render(err).await,
    };
    span.record("http.response.status_code", response.status().as_u16());
    if response.status().is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    // RFC 9110 §15.5.6: a 405 lists the methods the resource supports.
    if response.status() == StatusCode::METHOD_NOT_ALLOWED
        && !response.headers().contains_key(header::ALLOW)
    {
        let allow = match route {
            "/channels/{channel}/messages" => "GET, POST",
            _ => "GET, HEAD",
        };
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    metrics
        .http_requests
        .with_label_values(&[route, response.status().as_str()])
        .inc();
    metrics
        .http_request_duration
        .with_label_values(&[route])
        .observe(started.elapsed().as_secs_f64());
    Ok(response)
}

/// A server span per API request (`GET /channels/{channel}/messages`, …), continuing the
/// caller's trace when the request carries `traceparent` (and `tracestate`) headers. Probes, metrics, docs and the
/// page get none: they would only flood the traces.
fn http_span(request: &Request, route: &'static str) -> tracing::Span {
    if matches!(
        route,
        "/healthz"
            | "/readyz"
            | "/metrics"
            | "/"
            | "/docs"
            | "/openapi.json"
            | "/asyncapi.json"
            | "/chat-client.js"
            | "/app.js"
            | "/app.css"
    ) {
        return tracing::Span::none();
    }
    let method = request.method().as_str();
    let span = tracing::info_span!(
        parent: None,
        "http.request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = method,
        http.route = route,
        http.response.status_code = tracing::field::Empty,
    );
    let headers = TraceHeaders::from_lookup(|name| {
        request
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
    });
    chat_core::telemetry::set_remote_parent(&span, &headers);
    span
}

fn route_of(path: &str) -> &'static str {
    match path {
        "/" => "/",
        "/ws" => "/ws",
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/metrics" => "/metrics",
        "/openapi.json" => "/openapi.json",
        "/asyncapi.json" => "/asyncapi.json",
        "/chat-client.js" => "/chat-client.js",
        "/app.js" => "/app.js",
        "/app.css" => "/app.css",
        "/dev/token" => "/dev/token",
        p if p.starts_with("/docs") => "/docs",
        p if p.starts_with("/channels/") && p.ends_with("/messages") => {
            "/channels/{channel}/messages"
        }
        _ => "other",
    }
}
