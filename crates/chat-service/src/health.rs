//! The pieces of the probe routes. Each service mounts them on its own router, with the checks
//! of its own dependencies:
//!
//! - `/healthz`: liveness, the process answers: [`healthz`].
//! - `/readyz`: every dependency reachable and not draining: the checks are run with [`check`]
//!   (or [`check_blocking`]) and answered with [`readiness`].
//! - `/metrics`: the Prometheus text of a registry: [`metrics`].

use std::future::Future;
use std::time::Duration;

use poem::http::StatusCode;
use poem::web::Json;
use poem::{handler, Endpoint, IntoResponse, Response};
use serde_json::{json, Map, Value};

use crate::metrics::Registry;

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
