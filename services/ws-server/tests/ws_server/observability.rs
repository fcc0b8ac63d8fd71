//! The readiness gauges and the Redis reconnect counter the chart's alerts are built on.

use std::time::Duration;

use chat_testkit::chaos::{url_addr, url_via, ChaosProxy};
use chat_testkit::eventually;

use crate::support::Stack;

const SETTLE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_gauges_and_reconnects_follow_a_redis_outage_without_anyone_calling_readyz() {
    let mut proxy = None;
    let stack = Stack::start_with(|settings| {
        let url = &settings.redis.redis_url;
        let through = ChaosProxy::bind(url_addr(url));
        settings.redis.redis_url = url_via(url, through.addr());
        proxy = Some(through);
    })
    .await;
    let proxy = proxy.expect("proxy");
    // `Stack::start` waited for `/readyz`; from here on only `/metrics` is read, so the gauges
    // must move by the background re-evaluation.
    let gauges = || async {
        (
            stack.metric("chat_ws_ready ").await,
            stack
                .metric(r#"chat_ws_dependency_up{dependency="redis"}"#)
                .await,
            stack
                .metric(r#"chat_ws_dependency_up{dependency="postgresql"}"#)
                .await,
            stack
                .metric(r#"chat_ws_dependency_up{dependency="kafka"}"#)
                .await,
        )
    };
    assert!(
        eventually(SETTLE, || async { gauges().await == (1.0, 1.0, 1.0, 1.0) }).await,
        "ready and every dependency up: {:?}",
        gauges().await
    );
    let reconnects = stack.metric("chat_ws_redis_reconnects_total").await;

    proxy.cut();
    assert!(
        eventually(SETTLE, || async { gauges().await == (0.0, 0.0, 1.0, 1.0) }).await,
        "not ready, Redis down, the others up: {:?}",
        gauges().await
    );

    proxy.restore();
    assert!(
        eventually(SETTLE, || async { gauges().await == (1.0, 1.0, 1.0, 1.0) }).await,
        "ready again once Redis is back: {:?}",
        gauges().await
    );
    assert!(
        stack.metric("chat_ws_redis_reconnects_total").await > reconnects,
        "the reconnect is counted"
    );
    stack.finish().await;
}
