//! `/readyz` of the ws-server: PostgreSQL, Redis pub/sub and the Kafka producer reachable, not
//! draining. `/healthz` and `/metrics` are [`chat_service::health`]'s as they are. The same
//! checks feed the readiness gauges (`chat_ws_ready`, `chat_ws_dependency_up`), also re-run in
//! the background by [`Probes::refresh`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chat_core::store::Store;
use chat_service::health::check;
use poem::web::Data;
use poem::{handler, Response};

use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::publish::KafkaPublisher;

#[derive(Clone)]
pub struct Probes {
    pub draining: Arc<AtomicBool>,
    pub store: Store,
    pub hub: Hub,
    pub publisher: KafkaPublisher,
    pub metrics: Metrics,
}

type Checks = [(&'static str, Result<(), String>); 3];

impl Probes {
    /// Runs the readiness checks: whether the server is draining, and each check's outcome.
    async fn evaluate(&self) -> (bool, Checks) {
        let draining = self.draining.load(Ordering::Relaxed);
        let (postgres, kafka) = tokio::join!(check(self.store.ping()), self.publisher.ping());
        let redis = if self.hub.is_connected() {
            Ok(())
        } else {
            Err("pub/sub connection down".to_owned())
        };
        (
            draining,
            [("postgresql", postgres), ("redis", redis), ("kafka", kafka)],
        )
    }

    /// Runs the readiness checks and records them in the readiness gauges (the background
    /// refresh, for when nothing calls `/readyz`).
    pub async fn refresh(&self) {
        let (draining, checks) = self.evaluate().await;
        self.metrics.readiness.record(draining, &checks);
    }
}

#[handler]
pub async fn readyz(Data(probes): Data<&Probes>) -> Response {
    let (draining, checks) = probes.evaluate().await;
    probes.metrics.readiness.respond(draining, checks)
}
