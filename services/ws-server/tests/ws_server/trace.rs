//! One trace from producer to socket, through a real OpenTelemetry Collector.
//!
//! `telemetry::init` installs a process-global subscriber, so this test runs the real binaries
//! as child processes (each with its own `OTEL_SERVICE_NAME`), exporting OTLP/HTTP to a
//! collector started from `scripts/otelcol` (built once with the collector's builder and cached
//! under `.cache/bin/otelcol-chat`; `OTELCOL_BIN` points it at another binary). The collector's
//! debug exporter dumps every span; the test parses that dump.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::procs::{free_port, repo_root, wait_ready, worker_binary, Proc};
use crate::support::{kafka_brokers, redis_url, Client, Isolation, PATIENCE};

/// The first run builds the collector (a few minutes on a small machine).
const COLLECTOR_PATIENCE: Duration = Duration::from_secs(1200);

async fn wait_listening(addr: SocketAddr, collector: &mut Proc) {
    let deadline = Instant::now() + COLLECTOR_PATIENCE;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        if let Ok(Some(status)) = collector.child.try_wait() {
            panic!("the collector exited with {status} (see its output above)");
        }
        assert!(Instant::now() < deadline, "the collector never listened");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One span from the collector's debug dump.
#[derive(Debug, Clone, Default)]
struct SpanRecord {
    service: String,
    trace_id: String,
    parent_id: String,
    id: String,
    name: String,
    kind: String,
    attributes: HashMap<String, String>,
}

/// Parses the debug exporter's detailed output: `Resource attributes` (for `service.name`),
/// then per span `Trace ID`, `Parent ID`, `ID`, `Name`, `Kind` and its `Attributes`.
fn parse_dump(dump: &str) -> Vec<SpanRecord> {
    let mut spans = Vec::new();
    let mut service = String::new();
    let mut current: Option<SpanRecord> = None;
    let mut in_resource = false;
    for line in dump.lines() {
        let trimmed = line.trim();
        if trimmed.contains("Resource attributes:") {
            in_resource = true;
            spans.extend(current.take());
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix("-> ") {
            let Some((key, value)) = rest.split_once(": ") else {
                continue;
            };
            let value = value
                .strip_prefix("Str(")
                .and_then(|v| v.strip_suffix(')'))
                .unwrap_or(value)
                .to_owned();
            if in_resource {
                if key == "service.name" {
                    service = value;
                }
            } else if let Some(span) = current.as_mut() {
                span.attributes.insert(key.to_owned(), value);
            }
            continue;
        }
        if trimmed.contains("ScopeSpans #") {
            in_resource = false;
            continue;
        }
        if trimmed.contains("Span #") {
            spans.extend(current.take());
            current = Some(SpanRecord {
                service: service.clone(),
                ..SpanRecord::default()
            });
            continue;
        }
        let Some(span) = current.as_mut() else {
            continue;
        };
        let Some((key, value)) = trimmed.split_once(':') else {
            continue;
        };
        let value = value.trim().to_owned();
        match key.trim() {
            "Trace ID" => span.trace_id = value,
            "Parent ID" => span.parent_id = value,
            "ID" => span.id = value,
            "Name" => span.name = value,
            "Kind" => span.kind = value,
            _ => {}
        }
    }
    spans.extend(current);
    spans
}

fn find<'a>(spans: &'a [SpanRecord], service: &str, name: &str) -> Vec<&'a SpanRecord> {
    spans
        .iter()
        .filter(|s| s.service == service && s.name == name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_links_the_publish_the_worker_and_the_delivery() {
    let scratch = std::env::temp_dir().join(format!("chat-trace-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&scratch).unwrap();
    let dump_path = scratch.join("spans.log");
    // The collector takes PORT for HTTP and PORT+1 for gRPC.
    let otlp_port = chat_testkit::ports::free_ports(2);
    let mut collector = Proc {
        name: "otelcol",
        child: Command::new(repo_root().join("scripts/otelcol"))
            .args(["run", &otlp_port.to_string(), dump_path.to_str().unwrap()])
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("scripts/otelcol starts"),
    };
    wait_listening(
        SocketAddr::from(([127, 0, 0, 1], otlp_port)),
        &mut collector,
    )
    .await;

    let iso = Isolation::create().await;
    let endpoint = format!("http://127.0.0.1:{otlp_port}");
    let common = |command: &mut Command| {
        command
            .env("KAFKA_BROKERS", kafka_brokers())
            .env("KAFKA_TOPIC", &iso.topic)
            .env("DATABASE_URL", &iso.database_url)
            .env("REDIS_URL", redis_url())
            .env("REDIS_PREFIX", &iso.redis_prefix)
            .env("LOG_FORMAT", "text")
            .env("RUST_LOG", "warn")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
            .env("OTEL_TRACES_SAMPLER", "parentbased_always_on")
            .env("OTEL_BSP_SCHEDULE_DELAY", "200")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
    };

    let worker_port = free_port();
    let mut worker_command = Command::new(worker_binary());
    common(&mut worker_command);
    worker_command
        .env("OTEL_SERVICE_NAME", "chat-worker")
        .env("KAFKA_DLQ_TOPIC", format!("{}.dlq", iso.topic))
        .env("KAFKA_GROUP_ID", format!("test-trace-{}", iso.id))
        .env("HTTP_ADDR", format!("127.0.0.1:{worker_port}"))
        .env("BATCH_LINGER_MS", "5");
    let mut worker = Proc {
        name: "chat-worker",
        child: worker_command.spawn().expect("chat-worker starts"),
    };

    let server_port = free_port();
    let server_internal_port = free_port();
    let mut server_command = Command::new(env!("CARGO_BIN_EXE_chat-ws-server"));
    common(&mut server_command);
    server_command
        .env("OTEL_SERVICE_NAME", "chat-ws-server")
        .env("HTTP_ADDR", format!("127.0.0.1:{server_port}"))
        .env("AUTH_MODE", "anonymous")
        .env(
            "INTERNAL_HTTP_ADDR",
            format!("127.0.0.1:{server_internal_port}"),
        )
        .env("SHUTDOWN_DRAIN_SECS", "0");
    let mut server = Proc {
        name: "chat-ws-server",
        child: server_command.spawn().expect("chat-ws-server starts"),
    };
    wait_ready(
        &format!("http://127.0.0.1:{worker_port}/readyz"),
        "chat-worker",
        PATIENCE,
    )
    .await;
    wait_ready(
        &format!("http://127.0.0.1:{server_internal_port}/readyz"),
        "chat-ws-server",
        PATIENCE,
    )
    .await;

    let addr = SocketAddr::from(([127, 0, 0, 1], server_port));
    let mut subscriber = Client::connect(addr).await;
    subscriber
        .subscribe(json!({"command": "subscribe", "channel": "#traced", "limit": 0}))
        .await;
    let mut publisher = Client::connect(addr).await;
    publisher
        .send(json!({"command": "publish", "channel": "#traced", "author": "alice", "text": "follow me", "id": 7}))
        .await;
    let ack = publisher.recv().await;
    assert_eq!(ack["type"], "published", "{ack}");
    let message_id = ack["id"].as_str().unwrap().to_owned();
    let frame = subscriber.recv().await;
    assert_eq!(frame["type"], "message", "{frame}");
    assert_eq!(frame["message"]["id"], message_id.as_str(), "{frame}");
    drop(subscriber);
    drop(publisher);

    // A graceful stop flushes whatever the batch span processors still hold.
    server.stop();
    worker.stop();

    let deadline = Instant::now() + PATIENCE;
    let spans = loop {
        let dump = std::fs::read_to_string(&dump_path).unwrap_or_default();
        let spans = parse_dump(&dump);
        let complete = ["chat.store", "redis.publish"]
            .iter()
            .all(|name| !find(&spans, "chat-worker", name).is_empty())
            && !find(&spans, "chat-ws-server", "chat.deliver").is_empty();
        if complete {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "spans missing from the collector's dump {}: {spans:#?}",
            dump_path.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    collector.child.kill().ok();

    let one = |service: &str, name: &str| -> SpanRecord {
        let found: Vec<&SpanRecord> = find(&spans, service, name)
            .into_iter()
            .filter(|s| {
                s.attributes
                    .get("chat.message.id")
                    .is_none_or(|id| *id == message_id)
            })
            .collect();
        assert_eq!(found.len(), 1, "one {service} {name} span: {spans:#?}");
        found[0].clone()
    };
    let command = one("chat-ws-server", "WS publish");
    let produce = one("chat-ws-server", "kafka.produce");
    let store = one("chat-worker", "chat.store");
    let publish = one("chat-worker", "redis.publish");
    let deliver = one("chat-ws-server", "chat.deliver");

    let trace = &command.trace_id;
    for span in [&produce, &store, &publish, &deliver] {
        assert_eq!(&span.trace_id, trace, "{span:#?} is in another trace");
    }
    assert_eq!(command.parent_id, "", "the WS command starts the trace");
    assert_eq!(command.kind, "Server");
    assert_eq!(produce.parent_id, command.id);
    assert_eq!(produce.kind, "Producer");
    assert_eq!(produce.attributes["chat.message.id"], message_id);
    assert_eq!(
        store.parent_id, produce.id,
        "the worker continues the Kafka header"
    );
    assert_eq!(store.attributes["chat.message.id"], message_id);
    assert_eq!(store.attributes["chat.seq"], "Int(1)");
    assert_eq!(publish.parent_id, produce.id);
    assert_eq!(publish.kind, "Producer");
    assert_eq!(
        deliver.parent_id, publish.id,
        "the ws-server continues the Redis envelope"
    );
    assert_eq!(deliver.kind, "Consumer");
    assert_eq!(deliver.attributes["chat.delivery"], "delivered");

    // The worker's batch span is its own trace, linked to the message's context.
    let batch = find(&spans, "chat-worker", "chat.consume");
    assert!(!batch.is_empty(), "a chat.consume span: {spans:#?}");
    let _ = std::fs::remove_dir_all(&scratch);
    iso.finish().await;
}
