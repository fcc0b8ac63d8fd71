//! Structured logging and OpenTelemetry traces.
//!
//! Logs: JSON lines by default (what log pipelines in a cluster expect), or human-readable text
//! with `LOG_FORMAT=text`. The filter comes from `RUST_LOG` (default `info`).
//!
//! Traces: only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans go to that OTLP/HTTP
//! (protobuf) endpoint (`/v1/traces` is appended) through a batch span processor running on its
//! own thread. The standard variables apply: `OTEL_SERVICE_NAME` (default: the binary's name),
//! `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (e.g. `parentbased_traceidratio` and
//! `0.01`; default `parentbased_always_on`), `OTEL_BSP_*` for the batch processor and
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_HEADERS` (e.g. an API key). An
//! `https://` endpoint is verified against the system's CAs, or only against
//! `OTEL_EXPORTER_OTLP_CERTIFICATE`'s; `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE` and
//! `OTEL_EXPORTER_OTLP_CLIENT_KEY` add a client certificate. Without an endpoint no
//! exporter, processor or OpenTelemetry layer exists: spans are plain `tracing` spans and the
//! per-message helpers below return `None` at once. Trace context travels as W3C
//! `traceparent` and `tracestate` ([`TraceHeaders`]).

use std::sync::OnceLock;
use std::time::SystemTime;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanKind, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

/// Header (Kafka, HTTP) and envelope field carrying the W3C trace context.
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// Header and envelope field carrying the vendors' W3C trace state.
pub const TRACESTATE_HEADER: &str = "tracestate";

/// Most links a span gets (a batch span links the records it carries, up to this many).
pub const MAX_LINKS: usize = 128;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(Self::Json),
            "text" => Ok(Self::Text),
            other => Err(format!("unknown log format {other:?}; use json or text")),
        }
    }
}

/// The tracer of the process, set once by [`init`] when an OTLP endpoint is configured.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Keeps the trace pipeline alive; dropping it (or [`Telemetry::shutdown`]) flushes the spans
/// still queued. Hold it in `main` until the application stopped.
#[must_use = "dropping the guard shuts the trace exporter down"]
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// True when spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Flushes queued spans and stops the exporter.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(err) = provider.shutdown() {
                tracing::warn!(error = %err, "trace exporter shutdown failed");
            }
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Installs the global subscriber: logs, plus traces when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set. `service` is the default `service.name`.
/// Safe to call more than once (later calls install nothing and return an inert guard).
pub fn init(service: &str, format: LogFormat) -> Telemetry {
    install_tls_provider();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = log_layer(format, std::io::stderr).with_filter(filter);

    let provider = otlp_endpoint_configured()
        .then(|| build_provider(service))
        .and_then(|built| match built {
            Ok(provider) => Some(provider),
            Err(err) => {
                eprintln!("OTLP trace exporter not started: {err}");
                None
            }
        });
    // Spans reach OpenTelemetry at info and above whatever RUST_LOG says about log lines.
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("chat"))
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_filter(LevelFilter::INFO)
    });
    if tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
        .is_err()
    {
        // A subscriber exists already (tests): keep it, export nothing.
        if let Some(provider) = provider {
            let _ = provider.shutdown();
        }
        return Telemetry::default();
    }
    let Some(provider) = provider else {
        return Telemetry::default();
    };
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());
    let _ = TRACER.set(provider.tracer("chat"));
    tracing::info!(
        service.name = %service_name(service),
        "exporting traces over OTLP/HTTP"
    );
    Telemetry {
        provider: Some(provider),
    }
}

/// The log layer: JSON lines (each with `trace_id` and `span_id` when it is written inside a
/// span that has an OpenTelemetry context, so logs join traces), or text.
fn log_layer<S, W>(format: LogFormat, writer: W) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    match format {
        LogFormat::Json => fmt::layer()
            .event_format(JsonWithTraceIds(
                fmt::format()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false),
            ))
            .fmt_fields(JsonFields::new())
            .with_writer(writer)
            .boxed(),
        LogFormat::Text => fmt::layer().with_writer(writer).boxed(),
    }
}

/// tracing-subscriber's JSON line, plus the `trace_id` and `span_id` of the OpenTelemetry
/// context active on this thread (tracing-opentelemetry activates a span's context while the
/// span is entered), spliced in before the closing brace.
struct JsonWithTraceIds(fmt::format::Format<fmt::format::Json>);

impl<S, N> FormatEvent<S, N> for JsonWithTraceIds
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let context = Context::current();
        let span = context.span();
        let ids = span.span_context();
        if !ids.is_valid() {
            return self.0.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        let Some(body) = line.trim_end().strip_suffix('}') else {
            return writer.write_str(&line);
        };
        writeln!(
            writer,
            r#"{body},"trace_id":"{}","span_id":"{}"}}"#,
            ids.trace_id(),
            ids.span_id()
        )
    }
}

fn otlp_endpoint_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty()))
}

fn service_name(default: &str) -> String {
    std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|name| !name.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
}

fn build_provider(service: &str) -> Result<SdkTracerProvider, String> {
    use opentelemetry_otlp::WithHttpConfig;

    let mut builder = opentelemetry_otlp::SpanExporter::builder().with_http();
    if let Some(client) = otlp_tls_client()? {
        builder = builder.with_http_client(client);
    }
    let exporter = builder.build().map_err(|err| err.to_string())?;
    let resource = Resource::builder()
        .with_service_name(service_name(service))
        .with_attribute(KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION").to_owned(),
        ))
        .build();
    // The sampler comes from OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG (SDK default config).
    Ok(SdkTracerProvider::builder()
        .with_resource(resource)
        .with_max_links_per_span(MAX_LINKS as u32)
        .with_batch_exporter(exporter)
        .build())
}

/// The first of the signal-specific and the general OTLP variable that is set and not blank.
fn otlp_env(name: &str) -> Option<String> {
    [
        format!("OTEL_EXPORTER_OTLP_TRACES_{name}"),
        format!("OTEL_EXPORTER_OTLP_{name}"),
    ]
    .iter()
    .find_map(|var| std::env::var(var).ok().filter(|v| !v.trim().is_empty()))
}

/// The exporter's HTTP client when a CA bundle (`OTEL_EXPORTER_OTLP_CERTIFICATE`) or a client
/// certificate (`OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE` + `OTEL_EXPORTER_OTLP_CLIENT_KEY`) is
/// configured, each also in its `_TRACES_` form; `None` leaves the exporter's own client
/// (system CAs). A CA bundle replaces the system's CAs for this endpoint.
fn otlp_tls_client() -> Result<Option<otlp_reqwest::blocking::Client>, String> {
    let ca = otlp_env("CERTIFICATE");
    let cert = otlp_env("CLIENT_CERTIFICATE");
    let key = otlp_env("CLIENT_KEY");
    if ca.is_none() && cert.is_none() && key.is_none() {
        return Ok(None);
    }
    let read = |var: &str, path: &str| {
        std::fs::read(path).map_err(|err| format!("OTEL_EXPORTER_OTLP_{var} {path}: {err}"))
    };
    let timeout = otlp_env("TIMEOUT")
        .and_then(|ms| ms.trim().parse::<u64>().ok())
        .map_or(
            std::time::Duration::from_secs(10),
            std::time::Duration::from_millis,
        );
    let mut builder = otlp_reqwest::blocking::Client::builder().timeout(timeout);
    if let Some(path) = &ca {
        let certs = otlp_reqwest::Certificate::from_pem_bundle(&read("CERTIFICATE", path)?)
            .map_err(|err| format!("OTEL_EXPORTER_OTLP_CERTIFICATE {path}: {err}"))?;
        builder = builder.tls_certs_only(certs);
    }
    match (&cert, &key) {
        (Some(cert), Some(key)) => {
            let mut pem = read("CLIENT_CERTIFICATE", cert)?;
            pem.push(b'\n');
            pem.extend(read("CLIENT_KEY", key)?);
            let identity = otlp_reqwest::Identity::from_pem(&pem)
                .map_err(|err| format!("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE {cert}: {err}"))?;
            builder = builder.identity(identity);
        }
        (None, None) => {}
        _ => return Err(
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY go together"
                .to_owned(),
        ),
    }
    // A blocking client owns a runtime, which must not be built (or dropped) on an async
    // worker thread: build it on a thread of its own, as the exporter does for its default.
    std::thread::spawn(move || builder.build())
        .join()
        .map_err(|_| "building the OTLP HTTP client panicked".to_owned())?
        .map(Some)
        .map_err(|err| format!("building the OTLP HTTP client: {err}"))
}

/// Makes ring the process's TLS crypto provider (PostgreSQL, Redis and the OTLP exporter all
/// use rustls). Idempotent.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// True when spans are exported (an OTLP endpoint is configured and [`init`] installed it).
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// W3C trace context as it travels in Kafka headers, HTTP headers and Redis envelopes:
/// `traceparent` and, when the caller's vendors set one, `tracestate`. Read and written by
/// OpenTelemetry's W3C propagator ([`TraceContextPropagator`]), so `tracestate` is carried
/// through rather than dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceHeaders {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

impl TraceHeaders {
    /// Reads the two headers through `get` (header name to value).
    pub fn from_lookup<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Self {
        Self {
            traceparent: get(TRACEPARENT_HEADER).map(str::to_owned),
            tracestate: get(TRACESTATE_HEADER).map(str::to_owned),
        }
    }

    /// The headers describing `context`.
    pub fn of(context: &SpanContext) -> Self {
        let mut headers = Self::default();
        let context = Context::new().with_remote_span_context(context.clone());
        TraceContextPropagator::new().inject_context(&context, &mut headers);
        headers
    }

    /// The remote span context the headers describe; `None` when `traceparent` is absent,
    /// malformed or all-zero.
    pub fn span_context(&self) -> Option<SpanContext> {
        self.traceparent.as_ref()?;
        let context = TraceContextPropagator::new().extract(self);
        let span_context = context.span().span_context().clone();
        span_context.is_valid().then_some(span_context)
    }

    /// The header pairs that are set, for writing into a record or a request.
    pub fn pairs(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            (TRACEPARENT_HEADER, self.traceparent.as_deref()),
            (TRACESTATE_HEADER, self.tracestate.as_deref()),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?)))
    }
}

impl Extractor for TraceHeaders {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT_HEADER => self.traceparent.as_deref(),
            TRACESTATE_HEADER => self.tracestate.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.pairs().map(|(name, _)| name).collect()
    }
}

impl Injector for TraceHeaders {
    fn set(&mut self, key: &str, value: String) {
        match key {
            TRACEPARENT_HEADER => self.traceparent = Some(value),
            TRACESTATE_HEADER => self.tracestate = Some(value).filter(|v| !v.is_empty()),
            _ => {}
        }
    }
}

/// The trace headers of the current `tracing` span, when spans are exported.
pub fn current_trace_headers() -> Option<TraceHeaders> {
    current_span_context().map(|context| TraceHeaders::of(&context))
}

/// The span context of the current `tracing` span, when spans are exported and it is valid.
pub fn current_span_context() -> Option<SpanContext> {
    span_context(&tracing::Span::current())
}

/// The span context of a `tracing` span, when spans are exported and it is valid.
pub fn span_context(span: &tracing::Span) -> Option<SpanContext> {
    if !enabled() {
        return None;
    }
    let context = span.context();
    let otel_span = context.span();
    let span_context = otel_span.span_context();
    span_context.is_valid().then(|| span_context.clone())
}

/// Links `span` to another trace's context (a batch span to the records it carries).
pub fn add_link(span: &tracing::Span, context: SpanContext) {
    if enabled() && context.is_valid() {
        span.add_link(context);
    }
}

/// Makes the remote context in `headers` the parent of `span` (an incoming request or a
/// consumed message continues the caller's trace). Does nothing when spans are not exported.
pub fn set_remote_parent(span: &tracing::Span, headers: &TraceHeaders) {
    if !enabled() {
        return;
    }
    if let Some(parent) = headers.span_context() {
        let _ = span.set_parent(Context::new().with_remote_span_context(parent));
    }
}

/// A span built directly on the OpenTelemetry API, for per-message work inside a batch: it
/// belongs to the message's trace (parent = the message's context), not to the batch's.
#[derive(Debug)]
pub struct MessageSpan {
    span: opentelemetry_sdk::trace::Span,
}

impl MessageSpan {
    /// Starts a span under `parent` (a message's context), if spans are exported and the parent
    /// is sampled: an unsampled message costs nothing and keeps its incoming context.
    pub fn start(
        name: &'static str,
        kind: SpanKind,
        parent: &SpanContext,
        start: SystemTime,
        attributes: Vec<KeyValue>,
        links: Vec<SpanContext>,
    ) -> Option<Self> {
        let tracer = TRACER.get()?;
        if !parent.is_sampled() {
            return None;
        }
        let links = links
            .into_iter()
            .filter(SpanContext::is_valid)
            .map(Link::with_context)
            .collect();
        let span = tracer
            .span_builder(name)
            .with_kind(kind)
            .with_start_time(start)
            .with_attributes(attributes)
            .with_links(links)
            .start_with_context(
                tracer,
                &Context::new().with_remote_span_context(parent.clone()),
            );
        Some(Self { span })
    }

    pub fn span_context(&self) -> &SpanContext {
        self.span.span_context()
    }

    pub fn set_attribute(&mut self, attribute: KeyValue) {
        self.span.set_attribute(attribute);
    }

    /// Ends the span now.
    pub fn end(mut self) {
        self.span.end();
    }

    /// Ends the span at `end`.
    pub fn end_at(mut self, end: SystemTime) {
        self.span.end_with_timestamp(end);
    }
}

/// A connection URL with its password replaced, safe to log.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}://{}:***@{}", &url[..scheme_end], user, &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_traceparent(value: &str) -> Option<SpanContext> {
        TraceHeaders {
            traceparent: Some(value.to_owned()),
            tracestate: None,
        }
        .span_context()
    }

    #[test]
    fn trace_headers_round_trip_with_their_state_and_reject_garbage() {
        let value = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let context = parse_traceparent(value).unwrap();
        assert!(context.is_sampled() && context.is_remote());
        assert_eq!(
            TraceHeaders::of(&context).traceparent.as_deref(),
            Some(value)
        );
        assert_eq!(TraceHeaders::of(&context).tracestate, None);
        let headers = TraceHeaders {
            traceparent: Some(value.into()),
            tracestate: Some("vendor=abc,other=1".into()),
        };
        let with_state = headers.span_context().unwrap();
        assert_eq!(with_state.trace_state().get("vendor"), Some("abc"));
        assert_eq!(
            TraceHeaders::of(&with_state),
            headers,
            "tracestate travels on"
        );
        assert_eq!(
            headers.pairs().collect::<Vec<_>>(),
            [("traceparent", value), ("tracestate", "vendor=abc,other=1")]
        );
        assert_eq!(TraceHeaders::default().span_context(), None);
        let unsampled =
            parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00");
        assert!(!unsampled.unwrap().is_sampled());
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn without_an_endpoint_nothing_is_traced() {
        assert!(!enabled());
        assert!(current_trace_headers().is_none());
        let parent = parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
        let span = MessageSpan::start(
            "x",
            SpanKind::Internal,
            &parent.unwrap(),
            SystemTime::now(),
            Vec::new(),
            Vec::new(),
        );
        assert!(span.is_none());
    }

    /// Collects what the log layer writes.
    #[derive(Clone, Default)]
    struct Lines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_log_lines_inside_a_traced_span_carry_its_trace_and_span_ids() {
        let lines = Lines::default();
        let writer = lines.clone();
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(log_layer(LogFormat::Json, move || writer.clone()))
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let span_ids = tracing::subscriber::with_default(subscriber, || {
            tracing::info!(outside = true, "no span");
            let span = tracing::info_span!("work");
            let _entered = span.enter();
            tracing::info!(channel = "#c", "inside");
            let context = span.context();
            let ids = context.span().span_context().clone();
            (ids.trace_id().to_string(), ids.span_id().to_string())
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).expect(line))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["message"], "no span");
        assert!(lines[0].get("trace_id").is_none(), "{text}");
        assert_eq!(lines[1]["message"], "inside");
        assert_eq!(lines[1]["channel"], "#c");
        assert_eq!(lines[1]["trace_id"], span_ids.0.as_str(), "{text}");
        assert_eq!(lines[1]["span_id"], span_ids.1.as_str(), "{text}");
        assert_ne!(
            span_ids.0,
            opentelemetry::trace::TraceId::INVALID.to_string()
        );
    }

    #[test]
    fn passwords_never_reach_the_log() {
        assert_eq!(
            redact_url("postgres://chat:s3cret@db:5432/chat"),
            "postgres://chat:***@db:5432/chat"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
