//! `/healthz` (liveness: the process answers), `/readyz` (Kafka, PostgreSQL and Redis reachable,
//! no dependency failing the pipeline, not draining) and `/metrics` (Prometheus text), built
//! from the pieces of [`chat_service::health`]. The same checks feed the readiness gauges
//! (`chat_worker_ready`, `chat_worker_dependency_up`), also re-run in the background by
//! [`Probes::refresh`].

use std::sync::atomic::Ordering;
use std::sync::Arc;

use chat_core::store::Store;
use chat_service::health::{self, check, check_blocking, CHECK_TIMEOUT};
use poem::web::Data;
use poem::{get, handler, EndpointExt, Response, Route};
use rdkafka::consumer::Consumer;

use crate::consumer::WorkerConsumer;
use crate::fanout::Publisher;
use crate::metrics::Metrics;
use crate::readiness::Health;

#[derive(Clone)]
pub struct Probes {
    pub health: Arc<Health>,
    pub store: Store,
    pub publisher: Arc<Publisher>,
    pub consumer: Arc<WorkerConsumer>,
    pub topic: String,
    pub metrics: Metrics,
}

pub fn routes(probes: Probes) -> impl poem::Endpoint {
    Route::new()
        .at("/healthz", get(health::healthz))
        .at("/readyz", get(readyz))
        .at(
            "/metrics",
            get(health::metrics(probes.metrics.registry.clone())),
        )
        .data(probes)
}

type Checks = [(&'static str, Result<(), String>); 4];

impl Probes {
    /// Runs the readiness checks: whether the worker is draining, and each check's outcome.
    async fn evaluate(&self) -> (bool, Checks) {
        let draining = self.health.draining.load(Ordering::Relaxed);
        let pipeline = if self.health.dependencies_ok.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err("retrying".to_owned())
        };
        let (postgres, redis, kafka) = tokio::join!(
            check(self.store.ping()),
            check(self.publisher.ping()),
            kafka_ready(self.consumer.clone(), self.topic.clone()),
        );
        let checks = [
            ("pipeline", pipeline),
            ("postgresql", postgres),
            ("redis", redis),
            ("kafka", kafka),
        ];
        (draining, checks)
    }

    /// Runs the readiness checks and records them in the readiness gauges (the background
    /// refresh, for when nothing calls `/readyz`).
    pub async fn refresh(&self) {
        let (draining, checks) = self.evaluate().await;
        self.metrics.readiness.record(draining, &checks);
    }
}

#[handler]
async fn readyz(Data(probes): Data<&Probes>) -> Response {
    let (draining, checks) = probes.evaluate().await;
    probes.metrics.readiness.respond(draining, checks)
}

/// Kafka is ready when partitions are assigned, or else when the broker answers a metadata
/// request showing the topic with partitions (an idle replica beyond the partition count is
/// still healthy; a missing topic is not: the worker would wait forever for records).
async fn kafka_ready(consumer: Arc<WorkerConsumer>, topic: String) -> Result<(), String> {
    if consumer
        .assignment()
        .map(|a| a.count() > 0)
        .unwrap_or(false)
    {
        return Ok(());
    }
    check_blocking(move || {
        let metadata = consumer
            .fetch_metadata(Some(&topic), CHECK_TIMEOUT)
            .map_err(|err| err.to_string())?;
        topic_state(&topic, metadata.topics().iter().find(|t| t.name() == topic))
    })
    .await
}

fn topic_state(
    topic: &str,
    found: Option<&rdkafka::metadata::MetadataTopic>,
) -> Result<(), String> {
    match found {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
        Some(t) => match t.error() {
            Some(err) => Err(format!(
                "topic {topic}: {} (create it: chat-worker create-topics)",
                rdkafka::types::RDKafkaErrorCode::from(err)
            )),
            None => Err(format!("topic {topic} has no partitions")),
        },
        None => Err(format!(
            "topic {topic} does not exist (create it: chat-worker create-topics)"
        )),
    }
}
