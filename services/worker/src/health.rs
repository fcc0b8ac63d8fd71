//! `/healthz` (liveness: the process answers), `/readyz` (Kafka, PostgreSQL and Redis reachable,
//! no dependency failing the pipeline, not draining) and `/metrics` (Prometheus text).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chat_core::store::Store;
use poem::http::StatusCode;
use poem::web::{Data, Json};
use poem::{get, handler, EndpointExt, IntoResponse, Response, Route};
use rdkafka::consumer::Consumer;
use serde_json::json;

use crate::consumer::WorkerConsumer;
use crate::fanout::Publisher;
use crate::metrics::Metrics;
use crate::readiness::Health;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

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
        .at("/healthz", get(healthz))
        .at("/readyz", get(readyz))
        .at("/metrics", get(metrics))
        .data(probes)
}

#[handler]
fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

#[handler]
async fn readyz(Data(probes): Data<&Probes>) -> Response {
    let draining = probes.health.draining.load(Ordering::Relaxed);
    let pipeline = probes.health.dependencies_ok.load(Ordering::Relaxed);
    let (postgres, redis, kafka) = tokio::join!(
        check(probes.store.ping()),
        check(probes.publisher.ping()),
        kafka_ready(probes.consumer.clone(), probes.topic.clone()),
    );
    let ready = !draining && pipeline && postgres.is_ok() && redis.is_ok() && kafka.is_ok();
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "draining": draining,
        "checks": {
            "pipeline": if pipeline { "ok" } else { "retrying" },
            "postgresql": postgres.err().unwrap_or_else(|| "ok".into()),
            "redis": redis.err().unwrap_or_else(|| "ok".into()),
            "kafka": kafka.err().unwrap_or_else(|| "ok".into()),
        }
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Json(body).with_status(status).into_response()
}

#[handler]
fn metrics(Data(probes): Data<&Probes>) -> Response {
    Response::builder()
        .content_type("text/plain; version=0.0.4")
        .body(probes.metrics.render())
}

async fn check<E: std::fmt::Display>(
    probe: impl std::future::Future<Output = Result<(), E>>,
) -> Result<(), String> {
    match tokio::time::timeout(CHECK_TIMEOUT, probe).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// Kafka is ready when partitions are assigned, or else when the broker answers a metadata
/// request for the topic (an idle replica beyond the partition count is still healthy).
async fn kafka_ready(consumer: Arc<WorkerConsumer>, topic: String) -> Result<(), String> {
    if consumer
        .assignment()
        .map(|a| a.count() > 0)
        .unwrap_or(false)
    {
        return Ok(());
    }
    tokio::task::spawn_blocking(move || {
        consumer
            .fetch_metadata(Some(&topic), CHECK_TIMEOUT)
            .map(|_| ())
            .map_err(|err| err.to_string())
    })
    .await
    .map_err(|err| err.to_string())?
}
