//! The pieces of the probe routes. Each service mounts them on its own router, with the checks
//! of its own dependencies:
//!
//! - `/healthz`: liveness, the process answers: [`healthz`].
//! - `/readyz`: every dependency reachable and not draining: the checks are run with [`check`]
//!   (or [`check_blocking`]) and answered with [`readiness`].
//! - `/metrics`: the Prometheus text of a registry: [`metrics`].
//!
//! The outcome of the readiness checks is also exported as gauges ([`ReadinessGauges`]:
//! `<prefix>_ready` and `<prefix>_dependency_up{dependency}`), kept current by `/readyz` and by
//! a background re-evaluation every [`READINESS_REFRESH`] ([`refresh_readiness`]), so that they
//! are right also where nothing probes `/readyz` (docker compose).

use std::future::Future;
use std::time::Duration;

use poem::http::StatusCode;
use poem::web::Json;
use poem::{handler, Endpoint, IntoResponse, Response};
use prometheus::{IntGauge, IntGaugeVec};
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use crate::metrics::Registry;

/// How often [`refresh_readiness`] re-runs the readiness checks.
pub const READINESS_REFRESH: Duration = Duration::from_secs(10);

/// How long one readiness check may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// `/healthz`: `{"status": "ok"}` while the process answers.
#[handler]
pub fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Runs one readiness check with [`CHECK_TIMEOUT`]; the error is the text `/readyz` shows.
pub async fn check<E: std::fmt::Display>(
    probe: impl Future<Output = Result<(), E>>,
) -> Result<(), String> {
    match tokio::time::timeout(CHECK_TIMEOUT, probe).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// Runs a blocking readiness check (librdkafka's metadata request) on the blocking pool; the
/// check bounds its own time (pass it [`CHECK_TIMEOUT`]).
pub async fn check_blocking<E: std::fmt::Display>(
    probe: impl FnOnce() -> Result<(), E> + Send + 'static,
) -> Result<(), String> {
    tokio::task::spawn_blocking(move || probe().map_err(|err| err.to_string()))
        .await
        .map_err(|err| err.to_string())?
}

/// The `/readyz` answer: ready (200) when not draining and every check passed, else 503. The
/// body is `{"status": "ready"|"not_ready", "draining": bool, "checks": {name: "ok"|error}}`,
/// the checks in the order given.
pub fn readiness<'a>(
    draining: bool,
    checks: impl IntoIterator<Item = (&'a str, Result<(), String>)>,
) -> Response {
    let mut ready = !draining;
    let mut results = Map::new();
    for (name, result) in checks {
        ready &= result.is_ok();
        let value = result.err().unwrap_or_else(|| "ok".into());
        results.insert(name.to_owned(), Value::String(value));
    }
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "draining": draining,
        "checks": results,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Json(body).with_status(status).into_response()
}

/// The readiness of a service as gauges: `<prefix>_ready` (1 when `/readyz` would answer 200,
/// else 0) and `<prefix>_dependency_up{dependency}` (1 when that check passed, else 0; one
/// series per check name).
#[derive(Debug, Clone)]
pub struct ReadinessGauges {
    ready: IntGauge,
    dependency_up: IntGaugeVec,
}

impl ReadinessGauges {
    /// Registers `ready` and `dependency_up` in `registry`. Until the first evaluation `ready`
    /// is 0: not known to be ready.
    pub fn new(registry: &Registry) -> Self {
        Self {
            ready: registry.gauge(
                "ready",
                "1 when the service is ready (what /readyz answers with 200), else 0",
            ),
            dependency_up: registry.gauge_vec(
                "dependency_up",
                "1 when the readiness check of this dependency passed at the last evaluation, else 0",
                &["dependency"],
            ),
        }
    }

    /// Records one evaluation; returns whether the service is ready (not draining and every
    /// check passed).
    pub fn record(&self, draining: bool, checks: &[(&str, Result<(), String>)]) -> bool {
        let mut ready = !draining;
        for (name, result) in checks {
            ready &= result.is_ok();
            self.dependency_up
                .with_label_values(&[name])
                .set(i64::from(result.is_ok()));
        }
        self.ready.set(i64::from(ready));
        ready
    }

    /// [`ReadinessGauges::record`], then the `/readyz` answer of [`readiness`].
    pub fn respond<'a>(
        &self,
        draining: bool,
        checks: impl IntoIterator<Item = (&'a str, Result<(), String>)>,
    ) -> Response {
        let checks: Vec<_> = checks.into_iter().collect();
        self.record(draining, &checks);
        readiness(draining, checks)
    }
}

/// Runs `evaluate` (which runs the readiness checks and records them in the gauges) now and
/// then every `period` until `stop` is cancelled.
pub fn refresh_readiness<F, Fut>(
    period: Duration,
    stop: CancellationToken,
    mut evaluate: F,
) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = evaluate() => {}
            }
        }
    })
}

/// `/metrics`: the Prometheus text exposition of `registry` (mount it under `get`).
pub fn metrics(registry: Registry) -> impl Endpoint<Output = Response> {
    poem::endpoint::make_sync(move |_| {
        Response::builder()
            .content_type("text/plain; version=0.0.4")
            .body(registry.render())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn answer(response: Response) -> (u16, Value) {
        let status = response.status().as_u16();
        let body = response.into_body().into_json().await.unwrap();
        (status, body)
    }

    #[tokio::test]
    async fn ready_only_when_every_check_passed_and_not_draining() {
        let ok = || [("postgresql", Ok(())), ("kafka", Ok(()))];
        let (status, body) = answer(readiness(false, ok())).await;
        assert_eq!(status, 200);
        let checks = json!({"postgresql": "ok", "kafka": "ok"});
        assert_eq!(
            body,
            json!({"status": "ready", "draining": false, "checks": checks})
        );

        let (status, body) = answer(readiness(true, ok())).await;
        assert_eq!(status, 503);
        assert_eq!(body["status"], "not_ready");
        assert_eq!(body["draining"], true);

        let failing = [("postgresql", Ok(())), ("kafka", Err("down".to_owned()))];
        let (status, body) = answer(readiness(false, failing)).await;
        assert_eq!(status, 503);
        assert_eq!(body["checks"], json!({"postgresql": "ok", "kafka": "down"}));
    }

    #[tokio::test]
    async fn the_gauges_follow_each_evaluation() {
        let registry = Registry::new("chat_test");
        let gauges = ReadinessGauges::new(&registry);
        assert!(registry.render().contains("chat_test_ready 0"));

        let (status, _) =
            answer(gauges.respond(false, [("kafka", Ok(())), ("redis", Ok(()))])).await;
        assert_eq!(status, 200);
        let text = registry.render();
        assert!(text.contains("chat_test_ready 1"), "{text}");
        assert!(
            text.contains("chat_test_dependency_up{dependency=\"redis\"} 1"),
            "{text}"
        );

        let down = [("kafka", Ok(())), ("redis", Err("refused".to_owned()))];
        assert!(!gauges.record(false, &down));
        let text = registry.render();
        assert!(text.contains("chat_test_ready 0"), "{text}");
        assert!(
            text.contains("chat_test_dependency_up{dependency=\"redis\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("chat_test_dependency_up{dependency=\"kafka\"} 1"),
            "{text}"
        );

        assert!(!gauges.record(true, &[("kafka", Ok(()))]), "draining");
        assert!(registry.render().contains("chat_test_ready 0"), "draining");
    }

    #[tokio::test]
    async fn refresh_readiness_evaluates_at_once_and_then_periodically_until_stopped() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let runs = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let counted = Arc::clone(&runs);
        let task = refresh_readiness(Duration::from_millis(20), stop.clone(), move || {
            let counted = Arc::clone(&counted);
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
            }
        });
        tokio::time::sleep(Duration::from_millis(150)).await;
        stop.cancel();
        task.await.unwrap();
        let seen = runs.load(Ordering::SeqCst);
        assert!(seen >= 3, "ran {seen} times");
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(runs.load(Ordering::SeqCst), seen, "stopped");
    }

    #[tokio::test]
    async fn a_check_shows_its_error_or_times_out() {
        assert_eq!(check(async { Ok::<_, String>(()) }).await, Ok(()));
        assert_eq!(check(async { Err("refused") }).await, Err("refused".into()));
        let never = std::future::pending::<Result<(), String>>();
        assert_eq!(check(never).await, Err("timed out".into()));
        assert_eq!(
            check_blocking(|| Err("no broker")).await,
            Err("no broker".into())
        );
    }
}
