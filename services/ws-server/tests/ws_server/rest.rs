use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::support::{assert_contiguous, receive_until, seqs, Stack};

async fn get_json(url: &str) -> (u16, Value) {
    let response = reqwest::get(url).await.expect("request");
    let status = response.status().as_u16();
    let body = response.json::<Value>().await.expect("a JSON body");
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_pages_backward_and_forward_without_gap_while_the_channel_is_written() {
    let stack = Stack::start().await;
    stack.produce_many("#kerno-challenge", "a", 120).await;
    stack.wait_stored("#kerno-challenge", 120).await;
    let base = stack.http("/channels/%23kerno-challenge/messages");

    let (status, first) = get_json(&format!("{base}?limit=25")).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["channel"], "#kerno-challenge");
    assert_contiguous(&seqs(&first["messages"]), 96, 120);
    assert_eq!(first["next_before"], 96);
    assert_eq!(first["next_after"], 120);

    // Writes continue while we page: keyset cursors never shift.
    let writer = async { stack.produce_many("#kerno-challenge", "b", 200).await };
    let reader = async {
        let mut backward: Vec<i64> = seqs(&first["messages"]);
        let mut cursor = first["next_before"].clone();
        while let Some(before) = cursor.as_i64() {
            let (status, page) = get_json(&format!("{base}?limit=25&before={before}")).await;
            assert_eq!(status, 200, "{page}");
            assert!(page["next_after"].is_null());
            let mut page_seqs = seqs(&page["messages"]);
            page_seqs.extend(backward);
            backward = page_seqs;
            cursor = page["next_before"].clone();
        }
        backward
    };
    let ((), backward) = tokio::join!(writer, reader);
    assert_contiguous(&backward, 1, 120);

    stack.wait_stored("#kerno-challenge", 320).await;
    let mut forward = Vec::new();
    let mut after = 0;
    loop {
        let (status, page) = get_json(&format!("{base}?limit=100&after={after}")).await;
        assert_eq!(status, 200, "{page}");
        let page_seqs = seqs(&page["messages"]);
        if page_seqs.is_empty() {
            assert_eq!(page["next_after"], after);
            break;
        }
        forward.extend(page_seqs);
        after = page["next_after"].as_i64().unwrap();
    }
    assert_contiguous(&forward, 1, 320);

    // `after` and `before` together: a window, paged forward.
    let (status, page) = get_json(&format!("{base}?limit=3&after=10&before=15")).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(seqs(&page["messages"]), [11, 12, 13]);
    assert_eq!(page["next_after"], 13);
    assert!(
        page.get("next_before").is_none(),
        "absent, not null: {page}"
    );
    let (_, page) = get_json(&format!("{base}?limit=3&after=13&before=15")).await;
    assert_eq!(seqs(&page["messages"]), [14]);
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_page_from_the_cache_stays_contiguous_and_current_while_the_channel_is_written()
{
    let stack = Stack::start().await;
    stack.produce_many("#hot", "a", 120).await;
    stack.wait_stored("#hot", 120).await;
    let newest = stack.http("/channels/%23hot/messages?limit=50");
    // The first read finds the channel unwatched (PostgreSQL, then watched), a later one seeds
    // the cache from PostgreSQL, then the cache answers.
    let mut ends = Vec::new();
    for _ in 0..20 {
        let (status, page) = get_json(&newest).await;
        assert_eq!(status, 200, "{page}");
        assert_contiguous(&seqs(&page["messages"]), 71, 120);
        assert_eq!(page["next_before"], 71);
        assert_eq!(page["next_after"], 120);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let hits = || stack.metric("chat_ws_history_cache_total{outcome=\"hit\",path=\"rest\"}");
    let warm = hits().await;
    assert!(
        warm > 0.0,
        "the newest page was never served from the cache"
    );

    // While 300 more are written, every newest page is a contiguous run of 50 whose end never
    // moves backwards.
    let writer = async { stack.produce_many("#hot", "b", 300).await };
    let reader = async {
        for _ in 0..60 {
            let (status, page) = get_json(&newest).await;
            assert_eq!(status, 200, "{page}");
            let got = seqs(&page["messages"]);
            let end = *got.last().unwrap();
            assert_contiguous(&got, end - 49, end);
            assert_eq!(page["next_after"], end);
            ends.push(end);
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    tokio::join!(writer, reader);
    assert!(ends.windows(2).all(|w| w[0] <= w[1]), "{ends:?}");

    // Once the writes reached the hub, the cache serves exactly what PostgreSQL holds.
    stack.wait_stored("#hot", 420).await;
    let deadline = tokio::time::Instant::now() + crate::support::PATIENCE;
    loop {
        let (_, page) = get_json(&newest).await;
        if page["next_after"] == 420 {
            assert_contiguous(&seqs(&page["messages"]), 371, 420);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "stuck at {page}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(hits().await > warm);
    // A limit above the cache's capacity (100) is read from PostgreSQL.
    let (_, page) = get_json(&stack.http("/channels/%23hot/messages?limit=300")).await;
    assert_contiguous(&seqs(&page["messages"]), 121, 420);
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_publish_is_accepted_with_its_id_and_reaches_a_websocket_subscriber() {
    let stack = Stack::start().await;
    let mut reader = stack.connect().await;
    reader
        .subscribe(json!({"command": "subscribe", "channel": "#kerno-challenge"}))
        .await;
    let response = reqwest::Client::new()
        .post(stack.http("/channels/%23kerno-challenge/messages"))
        .json(&json!({"author": "carol", "text": "via rest"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let body: Value = response.json().await.unwrap();
    let id = body["id"].as_str().expect("an id").to_owned();
    let delivered = receive_until(&mut reader, "#kerno-challenge", 1).await;
    assert_eq!(delivered[0]["id"], id);
    assert_eq!(delivered[0]["text"], "via rest");
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_rest_request_gets_a_4xx_json_problem_never_a_5xx() {
    let stack = Stack::start().await;
    let cases: &[(&str, u16, &str)] = &[
        ("/channels/bad%20name/messages", 400, "invalid_channel"),
        ("/channels/c/messages?limit=0", 400, "invalid_limit"),
        ("/channels/c/messages?limit=1001", 400, "invalid_limit"),
        ("/channels/c/messages?limit=abc", 400, "bad_request"),
        ("/channels/c/messages?before=x", 400, "bad_request"),
        ("/channels/c/messages?before=0", 400, "invalid_cursor"),
        ("/channels/c/messages?after=-1", 400, "invalid_cursor"),
        (
            "/channels/c/messages?limit=99999999999999999999",
            400,
            "bad_request",
        ),
        ("/nowhere", 404, "not_found"),
    ];
    for (path, status, code) in cases {
        let (got, body) = get_json(&stack.http(path)).await;
        assert_eq!(got, *status, "{path}: {body}");
        assert_eq!(body["code"], *code, "{path}: {body}");
        assert!(body["message"].is_string(), "{path}: {body}");
    }

    let client = reqwest::Client::new();
    let url = stack.http("/channels/c/messages");
    let posts = [
        (
            client
                .post(&url)
                .body("not json")
                .header("content-type", "application/json"),
            "bad_request",
        ),
        (
            client.post(&url).json(&json!({"author": "a"})),
            "bad_request",
        ),
        (
            client
                .post(&url)
                .json(&json!({"author": "a", "text": false})),
            "bad_request",
        ),
        (
            client.post(&url).json(&json!({"author": 7, "text": "t"})),
            "bad_request",
        ),
        (
            client.post(&url).json(&json!({"author": "", "text": "t"})),
            "invalid_message",
        ),
        (
            client
                .post(&url)
                .json(&json!({"author": "a", "text": "x".repeat(4001)})),
            "invalid_message",
        ),
        (
            client
                .post(stack.http("/channels/a*b/messages"))
                .json(&json!({"author": "a", "text": "t"})),
            "invalid_channel",
        ),
    ];
    for (request, code) in posts {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["code"], code, "{body}");
    }
    let response = client
        .post(&url)
        .body("author=a")
        .header("content-type", "text/plain")
        .send()
        .await
        .unwrap();
    assert!(response.status().is_client_error());
    let body: Value = response.json().await.unwrap();
    assert!(body["code"].is_string());
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_metrics_are_served_only_on_the_internal_port_spec_docs_and_index_on_the_public_one(
) {
    let stack = Stack::start().await;
    for internal_only in ["/healthz", "/readyz", "/metrics"] {
        let response = reqwest::get(stack.http(internal_only)).await.unwrap();
        assert_eq!(
            response.status().as_u16(),
            404,
            "{internal_only} is not served on the public port"
        );
    }
    let (status, body) = get_json(&stack.internal("/healthz")).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, body) = get_json(&stack.internal("/readyz")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"]["postgresql"], "ok");
    assert_eq!(body["checks"]["redis"], "ok");
    assert_eq!(body["checks"]["kafka"], "ok");

    let (status, spec) = get_json(&stack.http("/openapi.json")).await;
    assert_eq!(status, 200);
    let paths: BTreeSet<&str> = spec["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert!(paths.contains("/channels/{channel}/messages"), "{paths:?}");

    let docs = reqwest::get(stack.http("/docs")).await.unwrap();
    assert_eq!(docs.status().as_u16(), 200);
    let index = reqwest::get(stack.http("/")).await.unwrap();
    assert_eq!(index.status().as_u16(), 200);
    assert!(index.text().await.unwrap().contains("<html"));

    let _ = get_json(&stack.http("/channels/c/messages")).await;
    let metrics = reqwest::get(stack.internal("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "chat_ws_connections",
        "chat_ws_subscriptions",
        "chat_ws_deliveries_total",
        "chat_ws_delivery_latency_seconds",
        "chat_ws_slow_consumer_closes_total",
        "chat_ws_history_query_duration_seconds",
    ] {
        assert!(metrics.contains(name), "{name} missing");
    }
    assert!(
        metrics.contains(
            r#"chat_ws_http_requests_total{route="/channels/{channel}/messages",status="200"}"#
        ),
        "{metrics}"
    );
    stack.finish().await;
}
