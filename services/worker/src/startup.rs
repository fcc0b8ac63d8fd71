//! Wiring: build every component from [`Settings`], then run until a shutdown signal.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chat_core::store::Store;
use chat_core::telemetry::redact_url;
use poem::listener::{Acceptor, Listener, TcpAcceptor, TcpListener};
use tokio_util::sync::CancellationToken;

use crate::consumer::{self, WorkerConsumer};
use crate::dlq::DeadLetters;
use crate::fanout::Publisher;
use crate::health::{self, Probes};
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::readiness::Health;
use crate::settings::Settings;

/// Applies pending migrations (the `migrate` subcommand).
pub async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let store = Store::connect_lazy(&settings.database_url, 1).context("invalid DATABASE_URL")?;
    tracing::info!(database = %redact_url(&settings.database_url), "applying migrations");
    store.migrate().await.context("migrations failed")?;
    tracing::info!("migrations applied");
    Ok(())
}

/// Creates the input topic (`partitions`) and the dead-letter topic (one partition) when they
/// are missing; existing topics are left as they are.
pub async fn create_topics(
    settings: &Settings,
    partitions: i32,
    replication: i32,
) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;

    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka_brokers)
        .create()
        .context("creating the Kafka admin client")?;
    let topics = [
        NewTopic::new(
            &settings.kafka_topic,
            partitions,
            TopicReplication::Fixed(replication),
        ),
        NewTopic::new(
            &settings.kafka_dlq_topic,
            1,
            TopicReplication::Fixed(replication),
        ),
    ];
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin
        .create_topics(&topics, &options)
        .await
        .context("create topics")?
    {
        match result {
            Ok(topic) => tracing::info!(kafka.topic = %topic, "topic created"),
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::info!(kafka.topic = %topic, "topic exists")
            }
            Err((topic, code)) => anyhow::bail!("creating topic {topic}: {code}"),
        }
    }
    Ok(())
}

/// A built worker: HTTP listener bound, clients created, nothing running yet.
pub struct Application {
    acceptor: TcpAcceptor,
    local_addr: SocketAddr,
    consumer: Arc<WorkerConsumer>,
    pipeline: Pipeline,
    probes: Probes,
    settings: Settings,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let metrics = Metrics::new();
        let health = Arc::new(Health::default());
        let store = Store::connect_lazy(&settings.database_url, settings.database_max_connections)
            .context("invalid DATABASE_URL")?;
        let publisher = Arc::new(
            Publisher::new(&settings.redis_url, &settings.redis_prefix)
                .context("invalid REDIS_URL")?,
        );
        let dead_letters = DeadLetters::new(&settings.kafka_brokers, &settings.kafka_dlq_topic)
            .context("creating the dead-letter producer")?;
        let consumer = Arc::new(
            consumer::create(&settings, metrics.clone()).context("creating the Kafka consumer")?,
        );
        let acceptor = TcpListener::bind(settings.http_addr.to_string())
            .into_acceptor()
            .await
            .with_context(|| format!("binding {}", settings.http_addr))?;
        let local_addr = *acceptor
            .local_addr()
            .first()
            .and_then(|addr| addr.as_socket_addr())
            .context("listener has no socket address")?;

        let pipeline = Pipeline {
            store: store.clone(),
            publisher: Arc::clone(&publisher),
            dead_letters,
            metrics: metrics.clone(),
            health: Arc::clone(&health),
            max_backoff: Duration::from_millis(settings.retry_max_backoff_ms),
        };
        let probes = Probes {
            health,
            store,
            publisher,
            consumer: Arc::clone(&consumer),
            topic: settings.kafka_topic.clone(),
            metrics,
        };
        Ok(Self {
            acceptor,
            local_addr,
            consumer,
            pipeline,
            probes,
            settings,
        })
    }

    /// The bound HTTP port (useful with `HTTP_ADDR=127.0.0.1:0`).
    pub fn http_port(&self) -> u16 {
        self.local_addr.port()
    }

    pub fn metrics(&self) -> Metrics {
        self.probes.metrics.clone()
    }

    /// Runs until `shutdown` is cancelled: readiness turns 503 at once, the batch in flight is
    /// finished and its offsets committed, then the HTTP server stops.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(
            http.addr = %self.local_addr,
            kafka.brokers = %self.settings.kafka_brokers,
            kafka.topic = %self.settings.kafka_topic,
            kafka.group = %self.settings.kafka_group_id,
            database = %redact_url(&self.settings.database_url),
            redis = %redact_url(&self.settings.redis_url),
            "chat-worker started"
        );
        let http_stop = CancellationToken::new();
        let server = {
            let stop = http_stop.clone();
            let routes = health::routes(self.probes.clone());
            tokio::spawn(async move {
                poem::Server::new_with_acceptor(self.acceptor)
                    .run_with_graceful_shutdown(
                        routes,
                        stop.cancelled_owned(),
                        Some(Duration::from_secs(1)),
                    )
                    .await
            })
        };

        let health = Arc::clone(&self.probes.health);
        let draining = shutdown.clone();
        tokio::spawn(async move {
            draining.cancelled().await;
            health.draining.store(true, Ordering::Relaxed);
        });

        consumer::run(
            self.consumer,
            self.pipeline,
            self.settings.batch_max_records,
            Duration::from_millis(self.settings.batch_linger_ms),
            self.settings.pipeline_lanes,
            shutdown,
        )
        .await;

        http_stop.cancel();
        server
            .await
            .context("http server task")?
            .context("http server")?;
        tracing::info!("chat-worker stopped");
        Ok(())
    }
}
