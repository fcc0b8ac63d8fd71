//! Wiring: build every component from [`Settings`], then run until a shutdown signal.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chat_service::http::HttpListener;
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
pub async fn migrate(settings: &Settings, wait: Duration) -> anyhow::Result<()> {
    let store = settings.postgres.store(1)?;
    let deadline = tokio::time::Instant::now() + wait;
    let mut pause = Duration::from_millis(250);
    while let Err(err) = store.ping().await {
        if tokio::time::Instant::now() + pause > deadline {
            return Err(err).context(format!(
                "PostgreSQL not reachable after {} s (MIGRATE_WAIT_SECS)",
                wait.as_secs()
            ));
        }
        tracing::info!(error = %err, "PostgreSQL not reachable yet; migrations wait");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
    tracing::info!(database = %settings.postgres.redacted(), "applying migrations");
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

    let admin: AdminClient<DefaultClientContext> = settings
        .kafka
        .apply(&mut rdkafka::ClientConfig::new())
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
    listener: HttpListener,
    consumer: Arc<WorkerConsumer>,
    pipeline: Pipeline,
    probes: Probes,
    settings: Settings,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let metrics = Metrics::new();
        let health = Arc::new(Health::default());
        let store = settings.postgres.store(settings.database_max_connections)?;
        let publisher = Arc::new(Publisher::new(
            settings.redis.client()?,
            &settings.redis_prefix,
        ));
        let dead_letters = DeadLetters::new(&settings.kafka, &settings.kafka_dlq_topic)
            .context("creating the dead-letter producer")?;
        let consumer = Arc::new(
            consumer::create(&settings, metrics.clone()).context("creating the Kafka consumer")?,
        );
        let listener = HttpListener::bind(settings.http_addr).await?;

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
            listener,
            consumer,
            pipeline,
            probes,
            settings,
        })
    }

    /// The bound HTTP port (useful with `HTTP_ADDR=127.0.0.1:0`).
    pub fn http_port(&self) -> u16 {
        self.listener.local_addr().port()
    }

    pub fn metrics(&self) -> Metrics {
        self.probes.metrics.clone()
    }

    /// Runs until `shutdown` is cancelled: readiness turns 503 at once, the batch in flight is
    /// finished and its offsets committed, then the HTTP server stops.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(
            http.addr = %self.listener.local_addr(),
            kafka.brokers = %self.settings.kafka.kafka_brokers,
            kafka.topic = %self.settings.kafka_topic,
            kafka.group = %self.settings.kafka_group_id,
            database = %self.settings.postgres.redacted(),
            redis = %self.settings.redis.redacted(),
            "chat-worker started"
        );
        let http_stop = CancellationToken::new();
        let server = self.listener.serve(
            health::routes(self.probes.clone()),
            http_stop.clone(),
            Duration::from_secs(1),
        );

        let probes = self.probes.clone();
        let readiness = chat_service::health::refresh_readiness(
            chat_service::health::READINESS_REFRESH,
            http_stop.clone(),
            move || {
                let probes = probes.clone();
                async move { probes.refresh().await }
            },
        );

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
        let _ = readiness.await;
        server.finished().await?;
        tracing::info!("chat-worker stopped");
        Ok(())
    }
}
