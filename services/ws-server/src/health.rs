//! `/healthz` (liveness: the process answers), `/readyz` (PostgreSQL, Redis pub/sub and the
//! Kafka producer reachable, not draining) and `/metrics` (Prometheus text).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chat_core::store::Store;
use poem::http::StatusCode;
use poem::web::{Data, Json};
use poem::{handler, IntoResponse, Response};
use serde_json::json;

use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::publish::KafkaPublisher;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct Probes {
    pub draining: Arc<AtomicBool>,
    pub store: Store,
    pub hub: Hub,
    pub publisher: KafkaPublisher,
    pub metrics: Metrics,
}

#[handler]
pub fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

#[handler]
pub async fn readyz(Data(probes): Data<&Probes>) -> Response {
    let draining = probes.draining.load(Ordering::Relaxed);
    let (postgres, kafka) = tokio::join!(
        async {
            match tokio::time::timeout(CHECK_TIMEOUT, probes.store.ping()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(err)) => Err(err.to_string()),
                Err(_) => Err("timed out".to_owned()),
            }
        },
        probes.publisher.ping(),
    );
    let redis: Result<(), String> = if probes.hub.is_connected() {
        Ok(())
    } else {
        Err("pub/sub connection down".into())
    };
    let ready = !draining && postgres.is_ok() && redis.is_ok() && kafka.is_ok();
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "draining": draining,
        "checks": {
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
pub fn metrics(Data(probes): Data<&Probes>) -> Response {
    Response::builder()
        .content_type("text/plain; version=0.0.4")
        .body(probes.metrics.render())
}
