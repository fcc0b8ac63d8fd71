//! Wiring: build every component from [`Settings`], bind the listener, then run until a
//! shutdown signal.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chat_service::health;
use chat_service::http::HttpListener;

use poem::endpoint::BoxEndpoint;
use poem::http::Method;
use poem::middleware::{Cors, SizeLimit};
use poem::{get, EndpointExt, IntoEndpoint, Response, Route};
use poem_openapi::OpenApiService;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::body::BodyLimit;
use crate::admission::Admission;
use crate::api::ChatApi;
use crate::auth::origin::Origins;
use crate::health::{readyz, Probes};
use crate::history::History;
use crate::hub::{Hub, PubSubTask};
use crate::metrics::Metrics;
use crate::observe::observed;
use crate::page;
use crate::protocol::Limits;
use crate::publish::KafkaPublisher;
use crate::session::SessionContext;
use crate::settings::Settings;
use crate::upgrade::{self, Upgrade};

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
    admission: Arc<Admission>,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let metrics = Metrics::new();
        let store = settings.postgres.store(settings.database_max_connections)?;
        if std::env::var_os("WS_OUTBOUND_QUEUE").is_some() {
            anyhow::bail!(
                "WS_OUTBOUND_QUEUE (a frame count) was removed: set WS_OUTBOUND_QUEUE_BYTES instead"
            );
        }
        let publisher = KafkaPublisher::new(
            &settings.kafka,
            &settings.kafka_topic,
            settings.kafka_producer_queue_kbytes,
        )
        .context("creating the Kafka producer")?;
        // Warm the producer: connect to the broker and learn the topic's partitions now, not
        // on the first client's publish.
        let warm = publisher.clone();
        tokio::spawn(async move {
            if let Err(err) = warm.ping().await {
                tracing::info!(error = %err, "kafka not reachable yet; the first publish connects");
            }
        });
        let hub_stop = CancellationToken::new();
        let (hub, pubsub) = Hub::new(
            settings.redis.client()?,
            &settings.redis_prefix,
            store.clone(),
            settings.hub_options(),
            metrics.clone(),
            hub_stop.clone(),
        );
        let timeouts = settings.admission.http_timeouts();
        let listener = HttpListener::bind(settings.http_addr)
            .await?
            .with_timeouts(timeouts)
            .counting_timeouts(metrics.http_timeouts.clone());
        let internal = HttpListener::bind(settings.internal_http_addr)
            .await?
            .with_timeouts(timeouts);
        let admission = Admission::new(&settings.admission, metrics.clone())?;
        let limits = Limits {
            default_limit: settings.history_default_limit,
            max_limit: settings.history_max_limit,
        };
        let history = History::new(store.clone(), hub.clone(), metrics.clone());
        let gate = settings.auth.gate()?;
        gate.prefetch().await;
        let sessions = Arc::new(SessionContext {
            gate: gate.clone(),
            hub: hub.clone(),
            history: history.clone(),
            publisher: publisher.clone(),
            metrics: metrics.clone(),
            limits,
            max_subscriptions: settings.ws_max_subscriptions,
            client_limits: settings.client_limits.clone(),
            admission: Arc::clone(&admission),
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
            metrics: metrics.clone(),
        };
        let api = ChatApi {
            gate,
            history,
            publisher,
            metrics: metrics.clone(),
            admission: Arc::clone(&admission),
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
            admission,
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
        let forget_idle =
            tokio::spawn(Arc::clone(&self.admission).forget_idle_until(self.hub_stop.clone()));
        let probes = self.probes.clone();
        let readiness = health::refresh_readiness(
            health::READINESS_REFRESH,
            self.hub_stop.clone(),
            move || {
                let probes = probes.clone();
                async move { probes.refresh().await }
            },
        );

        let server_url = format!("http://{}", self.listener.local_addr());
        let api_service = OpenApiService::new(self.api, "chat-ws-server", env!("CARGO_PKG_VERSION"))
            .description("History and publishing of the chat backend. The WebSocket protocol at /ws is described in docs/PROTOCOL.md and by the AsyncAPI document at /asyncapi.json.")
            .server(server_url);
        let generated = api_service.spec();
        let mut document: serde_json::Value =
            serde_json::from_str(&generated).context("parsing the generated OpenAPI document")?;
        crate::api::document_constraints(&mut document, self.settings.history_max_limit);
        if !self.sessions.gate.is_anonymous() {
            crate::api::document_bearer_auth(&mut document);
        }
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
        let ws_state = Arc::new(Upgrade {
            sessions: Arc::clone(&self.sessions),
            tracker: self.tracker.clone(),
            draining: Arc::clone(&self.draining),
            max_frame_bytes: self.settings.ws_max_frame_bytes,
            admission: Arc::clone(&self.admission),
        });
        let metrics = self.metrics.clone();
        let routes = Route::new()
            .at("/", get(page::index))
            .at("/app.js", get(page::script))
            .at("/app.css", get(page::style))
            .at("/chat-client.js", get(page::client_module))
            .at("/asyncapi.json", get(page::asyncapi))
            .at("/ws", get(upgrade::ws).data(ws_state))
            .at("/openapi.json", spec)
            .at("/docs", get(page::docs(docs_html)))
            .at(
                "/dev/token",
                poem::post(page::dev_token)
                    .data(self.sessions.gate.clone())
                    .with(SizeLimit::new(page::DEV_TOKEN_MAX_BODY)),
            )
            .nest_no_strip(
                "/channels",
                with_cors(api_service, self.settings.auth.cors()?).with(BodyLimit::new(
                    self.settings.admission.http_max_body_bytes,
                    metrics.clone(),
                )),
            );
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
        let _ = forget_idle.await;
        let _ = readiness.await;
        server.finished().await?;
        internal.finished().await?;
        tracing::info!("chat-ws-server stopped");
        Ok(())
    }
}

/// The REST API, behind CORS when `CORS_ALLOWED_ORIGINS` names origins (else no CORS headers:
/// browsers on other origins cannot call it).
fn with_cors(
    api: impl IntoEndpoint<Endpoint: 'static>,
    origins: Option<Origins>,
) -> BoxEndpoint<'static> {
    let api = api.into_endpoint();
    let Some(origins) = origins else {
        return api.map_to_response().boxed();
    };
    let cors = Cors::new()
        .allow_origins_fn(move |origin| origins.allows(Some(origin), None))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers(["authorization", "content-type", "idempotency-key"])
        .max_age(600);
    api.with(cors).map_to_response().boxed()
}
