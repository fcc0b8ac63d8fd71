//! Wiring: build every component from [`Settings`], bind the listener, then run until a
//! shutdown signal.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chat_core::telemetry::TraceHeaders;
use chat_service::health;
use chat_service::http::HttpListener;
use poem::http::{header, HeaderValue, StatusCode};
use poem::web::websocket::{WebSocket, WebSocketConfig};
use poem::web::{Data, Html};
use poem::{get, handler, Endpoint, EndpointExt, IntoResponse, Request, Response, Route};
use poem_openapi::OpenApiService;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::api::ChatApi;
use crate::health::{readyz, Probes};
use crate::history::History;
use crate::hub::{Hub, PubSubTask};
use crate::metrics::Metrics;
use crate::protocol::Limits;
use crate::publish::KafkaPublisher;
use crate::session::{self, SessionContext};
use crate::settings::Settings;

/// A built server: listener bound, clients created, nothing running yet.
pub struct Application {
    listener: HttpListener,
    settings: Settings,
    metrics: Metrics,
    draining: Arc<AtomicBool>,
    pubsub: PubSubTask,
    hub_stop: CancellationToken,
    sessions: Arc<SessionContext>,
    tracker: TaskTracker,
    probes: Probes,
    api: ChatApi,
}

/// Initial read buffer of a WebSocket connection (see [`ws`]).
const READ_BUFFER_BYTES: usize = 2048;

struct WsState {
    sessions: Arc<SessionContext>,
    tracker: TaskTracker,
    draining: Arc<AtomicBool>,
    max_frame_bytes: usize,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let metrics = Metrics::new();
        let store = settings.postgres.store(settings.database_max_connections)?;
        let publisher = KafkaPublisher::new(&settings.kafka.kafka_brokers, &settings.kafka_topic)
            .context("creating the Kafka producer")?;
        let hub_stop = CancellationToken::new();
        let (hub, pubsub) = Hub::new(
            &settings.redis.redis_url,
            &settings.redis_prefix,
            store.clone(),
            settings.hub_options(),
            metrics.clone(),
            hub_stop.clone(),
        )
        .context("invalid REDIS_URL")?;
        let listener = HttpListener::bind(settings.http_addr).await?;
        let limits = Limits {
            default_limit: settings.history_default_limit,
            max_limit: settings.history_max_limit,
        };
        let history = History::new(store.clone(), hub.clone(), metrics.clone());
        let sessions = Arc::new(SessionContext {
            hub: hub.clone(),
            history: history.clone(),
            publisher: publisher.clone(),
            metrics: metrics.clone(),
            limits,
            max_subscriptions: settings.ws_max_subscriptions,
            outbound_queue: settings.ws_outbound_queue,
            ping_interval: settings.ping_interval(),
            idle_timeout: settings.idle_timeout(),
            close_all: CancellationToken::new(),
        });
        let draining = Arc::new(AtomicBool::new(false));
        let probes = Probes {
            draining: Arc::clone(&draining),
            store: store.clone(),
            hub: hub.clone(),
            publisher: publisher.clone(),
        };
        let api = ChatApi {
            history,
            publisher,
            metrics: metrics.clone(),
            default_limit: settings.history_default_limit,
            max_limit: settings.history_max_limit,
        };
        Ok(Self {
            listener,
            settings,
            metrics,
            draining,
            pubsub,
            hub_stop,
            sessions,
            tracker: TaskTracker::new(),
            probes,
            api,
        })
    }

    /// The bound HTTP port (useful with `HTTP_ADDR=127.0.0.1:0`).
    pub fn http_port(&self) -> u16 {
        self.listener.local_addr().port()
    }

    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    /// Runs until `shutdown` is cancelled. Then readiness turns 503 and new WebSocket
    /// connections are refused; after the drain period every socket is closed with 1001, and
    /// the server stops.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(
            http.addr = %self.listener.local_addr(),
            kafka.brokers = %self.settings.kafka.kafka_brokers,
            kafka.topic = %self.settings.kafka_topic,
            database = %self.settings.postgres.redacted(),
            redis = %self.settings.redis.redacted(),
            "chat-ws-server started"
        );
        let pubsub = tokio::spawn(self.pubsub.run(self.hub_stop.clone()));

        let server_url = format!("http://{}", self.listener.local_addr());
        let api_service = OpenApiService::new(self.api, "chat-ws-server", env!("CARGO_PKG_VERSION"))
            .description("History and publishing of the chat backend. The WebSocket protocol at /ws is described in docs/PROTOCOL.md.")
            .server(server_url);
        let generated = api_service.spec();
        let mut document: serde_json::Value =
            serde_json::from_str(&generated).context("parsing the generated OpenAPI document")?;
        crate::api::document_constraints(&mut document, self.settings.history_max_limit);
        let spec_json = serde_json::to_string_pretty(&document)?;
        // The Swagger UI page embeds the document: swap in the constrained one.
        let docs_html = api_service
            .swagger_ui_html()
            .replacen(&generated, &spec_json, 1);
        let spec = poem::endpoint::make_sync(move |_| {
            Response::builder()
                .content_type("application/json; charset=utf-8")
                .body(spec_json.clone())
        });
        let ws_state = Arc::new(WsState {
            sessions: Arc::clone(&self.sessions),
            tracker: self.tracker.clone(),
            draining: Arc::clone(&self.draining),
            max_frame_bytes: self.settings.ws_max_frame_bytes,
        });
        let metrics = self.metrics.clone();
        let routes = Route::new()
            .at("/", get(index))
            .at("/ws", get(ws).data(ws_state))
            .at("/healthz", get(health::healthz))
            .at("/readyz", get(readyz))
            .at(
                "/metrics",
                get(health::metrics(self.metrics.registry.clone())),
            )
            .at("/openapi.json", spec)
            .at(
                "/docs",
                get(poem::endpoint::make_sync(move |_| Html(docs_html.clone()))),
            )
            .nest_no_strip("/channels", api_service)
            .data(self.probes.clone())
            .catch_all_error(crate::error::render)
            .around(move |endpoint, request| {
                let metrics = metrics.clone();
                async move { observe(endpoint, request, metrics).await }
            });

        let http_stop = CancellationToken::new();
        let server = self
            .listener
            .serve(routes, http_stop.clone(), Duration::from_secs(2));

        shutdown.cancelled().await;
        self.draining.store(true, Ordering::Relaxed);
        tracing::info!(
            drain_secs = self.settings.shutdown_drain_secs,
            connections = self.metrics.connections.get(),
            "draining"
        );
        tokio::time::sleep(self.settings.shutdown_drain()).await;
        self.sessions.close_all.cancel();
        self.tracker.close();
        if tokio::time::timeout(Duration::from_secs(12), self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not close in time");
        }
        http_stop.cancel();
        self.hub_stop.cancel();
        let _ = pubsub.await;
        server.finished().await?;
        tracing::info!("chat-ws-server stopped");
        Ok(())
    }
}

#[handler]
fn ws(websocket: WebSocket, Data(state): Data<&Arc<WsState>>) -> Response {
    if state.draining.load(Ordering::Relaxed) {
        return poem::web::Json(serde_json::json!({
            "code": "unavailable",
            "message": "the server is shutting down; reconnect elsewhere"
        }))
        .with_status(poem::http::StatusCode::SERVICE_UNAVAILABLE)
        .into_response();
    }
    // tungstenite reserves a 128 KiB read buffer per connection by default, most of an idle
    // connection's memory; client frames are small commands, and the buffer still grows up to
    // the frame limit when one needs it.
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_frame_size(Some(state.max_frame_bytes))
        .max_message_size(Some(state.max_frame_bytes));
    let sessions = Arc::clone(&state.sessions);
    let tracker = state.tracker.clone();
    websocket
        .config(config)
        .on_upgrade(move |socket| tracker.track_future(session::run(socket, sessions)))
        .into_response()
}

#[handler]
fn index() -> Html<&'static str> {
    Html(include_str!("index.html"))
}

/// Counts HTTP requests by route template (never the raw path: bounded cardinality) and status.
async fn observe<E: Endpoint>(
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
        "/healthz" | "/readyz" | "/metrics" | "/" | "/docs" | "/openapi.json"
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
        p if p.starts_with("/docs") => "/docs",
        p if p.starts_with("/channels/") && p.ends_with("/messages") => {
            "/channels/{channel}/messages"
        }
        _ => "other",
    }
}
