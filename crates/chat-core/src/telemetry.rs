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
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_HEADERS`. Without an endpoint no
//! exporter, processor or OpenTelemetry layer exists: spans are plain `tracing` spans and the
//! per-message helpers below return `None` at once. Trace context travels as W3C `traceparent`.

use std::sync::OnceLock;
use std::time::SystemTime;

use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

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
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = match format {
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Text => fmt::layer().with_writer(std::io::stderr).boxed(),
    }
    .with_filter(filter);

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
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
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
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|err| err.to_string())?;
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

/// True when spans are exported (an OTLP endpoint is configured and [`init`] installed it).
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// Parses a W3C `traceparent` (`00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`) into a
/// remote span context. `None` for anything malformed or all-zero.
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let mut parts = value.trim().split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let span_id = parts.next()?;
    let flags = parts.next()?;
    let well_formed = version.len() == 2
        && version != "ff"
        && trace_id.len() == 32
        && span_id.len() == 16
        && flags.len() == 2
        && (version != "00" || parts.next().is_none());
    if !well_formed {
        return None;
    }
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !(hex(version) && hex(trace_id) && hex(span_id) && hex(flags)) {
        return None;
    }
    let context = SpanContext::new(
        TraceId::from_hex(trace_id).ok()?,
        SpanId::from_hex(span_id).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()? & TraceFlags::SAMPLED.to_u8()),
        true,
        TraceState::NONE,
    );
    context.is_valid().then_some(context)
}

/// The W3C `traceparent` of a span context.
pub fn format_traceparent(context: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        context.trace_id(),
        context.span_id(),
        context.trace_flags().to_u8()
    )
}

/// The `traceparent` of the current `tracing` span, when spans are exported.
pub fn current_traceparent() -> Option<String> {
    current_span_context().map(|context| format_traceparent(&context))
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

/// Makes the remote context in `traceparent` the parent of `span` (an incoming request or a
/// consumed message continues the caller's trace). Does nothing when spans are not exported.
pub fn set_remote_parent(span: &tracing::Span, traceparent: Option<&str>) {
    if !enabled() {
        return;
    }
    if let Some(parent) = traceparent.and_then(parse_traceparent) {
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

    #[test]
    fn traceparent_round_trips_and_rejects_garbage() {
        let value = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let context = parse_traceparent(value).unwrap();
        assert!(context.is_sampled() && context.is_remote());
        assert_eq!(format_traceparent(&context), value);
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
        assert!(current_traceparent().is_none());
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
