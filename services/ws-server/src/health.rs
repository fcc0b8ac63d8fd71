//! `/readyz` of the ws-server: PostgreSQL, Redis pub/sub and the Kafka producer reachable, not
//! draining. `/healthz` and `/metrics` are [`chat_service::health`]'s as they are.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chat_core::store::Store;
use chat_service::health::{check, readiness};
use poem::web::Data;
use poem::{handler, Response};

use crate::hub::Hub;
use crate::publish::KafkaPublisher;

#[derive(Clone)]
pub struct Probes {
    pub draining: Arc<AtomicBool>,
    pub store: Store,
    pub hub: Hub,
    pub publisher: KafkaPublisher,
}

#[handler]
pub async fn readyz(Data(probes): Data<&Probes>) -> Response {
    let draining = probes.draining.load(Ordering::Relaxed);
    let (postgres, kafka) = tokio::join!(check(probes.store.ping()), probes.publisher.ping());
    let redis = if probes.hub.is_connected() {
        Ok(())
    } else {
        Err("pub/sub connection down".to_owned())
    };
    readiness(
        draining,
        [("postgresql", postgres), ("redis", redis), ("kafka", kafka)],
    )
}
