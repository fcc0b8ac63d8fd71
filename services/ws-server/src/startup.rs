//! Wiring: build every component from [`Settings`], bind the listener, then run until a
//! shutdown signal.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chat_service::health;
use chat_service::http::HttpListener;
use poem::web::websocket::{WebSocket, WebSocketConfig};
use poem::web::{Data, Html};
use poem::{get, handler, EndpointExt, IntoResponse, Response, Route};
use poem_openapi::OpenApiService;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::ChatApi;
use crate::health::{readyz, Probes};
use crate::history::History;
use crate::hub::{Hub, PubSubTask};
use crate::metrics::Metrics;
use crate::observe::observed;
use crate::protocol::Limits;
use crate::publish::KafkaPublisher;
use crate::session::{self, SessionContext};
use crate::settings::Settings;

/// A built server: listener bound, clients created, nothing running yet.
pub struct Application {
    listener: HttpListener,
    internal: HttpListener,
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
        let internal = HttpListener::bind(settings.internal_http_addr).await?;
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
            internal,
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

    /// The bound public HTTP port (useful with `HTTP_ADDR=127.0.0.1:0`).
    pub fn http_port(&self) -> u16 {
        self.listener.local_addr().port()
    }

    /// The bound internal HTTP port: `/healthz`, `/readyz`, `/metrics`.
    pub fn internal_port(&self) -> u16 {
        self.internal.local_addr().port()
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
            http.internal_addr = %self.internal.local_addr(),
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
            .at("/openapi.json", spec)
            .at(
                "/docs",
                get(poem::endpoint::make_sync(move |_| Html(docs_html.clone()))),
            )
            .nest_no_strip("/channels", api_service);
        let internal_routes = Route::new()
            .at("/healthz", get(health::healthz))
            .at("/readyz", get(readyz))
            .at(
                "/metrics",
                get(health::metrics(self.metrics.registry.clone())),
            )
            .data(self.probes.clone());

        let http_stop = CancellationToken::new();
        let grace = Duration::from_secs(2);
        let server =
            self.listener
                .serve(observed(routes, metrics.clone()), http_stop.clone(), grace);
        let internal =
            self.internal
                .serve(observed(internal_routes, metrics), http_stop.clone(), grace);

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
        internal.finished().await?;
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
