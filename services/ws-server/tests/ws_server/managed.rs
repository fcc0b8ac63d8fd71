//! Managed backing services: PostgreSQL, Redis and Kafka behind TLS and credentials, and an
//! OTLP endpoint on https, the way RDS, ElastiCache, MSK or a hosted collector present them.
//!
//! The test makes its own CA (and a second, unrelated one) and starts its own servers with
//! `scripts/services` and `SERVICES_TLS_DIR` on free ports: PostgreSQL with TLS only, Redis
//! with TLS only, a client certificate required and an ACL user, Kafka with a SASL_SSL
//! listener and a SCRAM-SHA-512 user. The shared plain servers the other tests use are not
//! touched. The services run as child processes, configured through the environment exactly
//! as a deployment configures them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_service::args::{PostgresArgs, RedisArgs};
use chat_service::kafka::KafkaProperties;
use chat_testkit::tls::TestPki;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::procs::{free_port, poll_client, repo_root, wait_ready, worker_binary, Proc};
use crate::support::{Client, PATIENCE};

const CHANNEL: &str = "#managed";
const BEFORE: usize = 20;

/// A set of TLS servers of this test's own, stopped (and its folder removed) when dropped.
struct TlsServices {
    /// The variables `scripts/services` exported: what a deployment would set.
    exports: Vec<(String, String)>,
    script_env: Vec<(String, String)>,
    dir: PathBuf,
}

impl TlsServices {
    fn start(dir: &Path, pki: &TestPki, password: &str) -> Self {
        // Kafka takes its port, +1 (controller) and +3 (its own plain listener).
        let kafka_port = chat_testkit::ports::free_ports(4);
        let script_env: Vec<(String, String)> = [
            ("SERVICES_DIR", dir.display().to_string()),
            ("PGPORT", free_port().to_string()),
            ("REDIS_PORT", free_port().to_string()),
            ("KAFKA_PORT", kafka_port.to_string()),
            ("KAFKA_HEAP_OPTS", "-Xms128m -Xmx512m".to_owned()),
            ("SERVICES_TLS_DIR", pki.dir.display().to_string()),
            ("SERVICES_PASSWORD", password.to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let output = Command::new(repo_root().join("scripts/services"))
            .arg("start")
            .envs(script_env.iter().cloned())
            .stderr(Stdio::inherit())
            .output()
            .expect("scripts/services runs");
        let mut services = Self {
            exports: Vec::new(),
            script_env,
            dir: dir.to_path_buf(),
        };
        assert!(output.status.success(), "scripts/services start failed");
        services.exports = String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .filter_map(|line| line.strip_prefix("export ")?.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        services
    }

    fn get(&self, name: &str) -> &str {
        self.exports
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("scripts/services exported no {name}"))
    }
}

impl Drop for TlsServices {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("scripts/services"))
            .arg("stop")
            .envs(self.script_env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One request an OTLP/HTTP exporter sent.
#[derive(Debug, Clone)]
struct Captured {
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// An OTLP/HTTP endpoint on https that wants a client certificate of the test CA and records
/// every request (HTTP/1.1, keep-alive; answers 200 with an empty protobuf body).
async fn otlp_endpoint(pki: &TestPki) -> (SocketAddr, Arc<Mutex<Vec<Captured>>>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(pki.file("server.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(pki.file("server.key")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(pki.file("ca.pem")).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .unwrap();
    let config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let captured = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&captured);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let sink = Arc::clone(&sink);
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let mut buffer = Vec::new();
                loop {
                    let Some(request) = read_request(&mut tls, &mut buffer).await else {
                        return;
                    };
                    sink.lock().unwrap().push(request);
                    let reply = "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                    if tls.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, captured)
}

async fn read_request<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    buffer: &mut Vec<u8>,
) -> Option<Captured> {
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let path = lines.next()?.split(' ').nth(1)?.to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers.get("content-length")?.parse().ok()?;
    while buffer.len() < head_end + length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    let body = buffer[head_end..head_end + length].to_vec();
    buffer.drain(..head_end + length);
    Some(Captured {
        path,
        headers,
        body,
    })
}

async fn redis_ping(args: &RedisArgs) -> Result<(), String> {
    let client = args.client().map_err(|err| format!("{err:#}"))?;
    let mut connection = tokio::time::timeout(
        Duration::from_secs(10),
        client.get_multiplexed_async_connection(),
    )
    .await
    .map_err(|_| "timed out".to_owned())?
    .map_err(|err| err.to_string())?;
    redis::cmd("PING")
        .query_async::<String>(&mut connection)
        .await
        .map(drop)
        .map_err(|err| err.to_string())
}

async fn stored(store: &chat_core::store::Store) -> i64 {
    sqlx::query_scalar("select count(*) from messages where channel = $1")
        .bind(CHANNEL)
        .fetch_one(store.pool())
        .await
        .unwrap()
}

/// Runs a worker that Kafka refuses (`command` says why) until its /readyz answers 503 with
/// the Kafka check failing and its log holds `expected`; stops it and returns the log.
async fn refused_worker(mut command: Command, log_path: &Path, expected: &str) -> String {
    let port = free_port();
    let worker = Proc {
        name: "chat-worker (refused by Kafka)",
        child: command
            .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
            .stderr(std::fs::File::create(log_path).unwrap())
            .spawn()
            .unwrap(),
    };
    let http = poll_client();
    let readyz = format!("http://127.0.0.1:{port}/readyz");
    eventually(
        &format!("the worker logs {expected:?} and is not ready"),
        || {
            let (http, readyz) = (http.clone(), readyz.clone());
            async move {
                let log = std::fs::read_to_string(log_path).unwrap_or_default();
                let Ok(response) = http.get(&readyz).send().await else {
                    return false;
                };
                response.status() == 503 && log.contains(expected)
            }
        },
    )
    .await;
    let body = get_json(&readyz).await;
    assert_eq!(body["status"], "not_ready", "{body}");
    assert_ne!(body["checks"]["kafka"], "ok", "{body}");
    drop(worker);
    std::fs::read_to_string(log_path).unwrap()
}

/// GET `url` and parse its JSON body.
async fn get_json(url: &str) -> serde_json::Value {
    poll_client()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Polls `check` every 200 ms until it returns true, or fails with `what`.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = Instant::now() + PATIENCE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_credentials_for_every_backing_service_end_to_end() {
    chat_core::telemetry::install_tls_provider();
    let scratch = std::env::temp_dir().join(format!("chat-managed-{}", uuid::Uuid::new_v4()));
    let pki = TestPki::create(&scratch.join("pki"), "chat test CA");
    let other = TestPki::create(&scratch.join("other"), "some other CA");
    let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
    let services = TlsServices::start(&scratch.join("services"), &pki, &password);

    // ---- PostgreSQL: TLS only, verify-full against the right CA only.
    let database_url = services.get("DATABASE_URL").to_owned();
    assert!(
        database_url.ends_with("sslmode=verify-full"),
        "{database_url}"
    );
    let refusal = |args: PostgresArgs| async move {
        args.store(1).unwrap().ping().await.unwrap_err().to_string()
    };
    let plain = PostgresArgs::new(&database_url.replace("verify-full", "disable"));
    let err = refusal(plain).await;
    assert!(
        err.contains("pg_hba.conf"),
        "a plain connection is refused: {err}"
    );
    let mut postgres = PostgresArgs::new(&database_url);
    postgres.database_ca_file = Some(other.file("ca.pem"));
    let err = refusal(postgres.clone()).await;
    assert!(
        err.contains("UnknownIssuer"),
        "another CA's server is refused: {err}"
    );
    postgres.database_ca_file = Some(pki.file("ca.pem"));
    let store = postgres.store(2).unwrap();
    store.ping().await.expect("verify-full against the test CA");

    // ---- Redis: TLS with a client certificate, ACL user and password.
    let redis_url = services.get("REDIS_URL").to_owned();
    let mut redis = RedisArgs::new(&redis_url);
    redis.redis_ca_file = Some(pki.file("ca.pem"));
    redis.redis_client_cert_file = Some(pki.file("client.pem"));
    redis.redis_client_key_file = Some(pki.file("client.key"));
    redis_ping(&redis)
        .await
        .expect("rediss:// with the test CA");
    let mut wrong_ca = redis.clone();
    wrong_ca.redis_ca_file = Some(other.file("ca.pem"));
    let err = redis_ping(&wrong_ca).await.unwrap_err();
    assert!(
        err.contains("UnknownIssuer"),
        "another CA's server is refused: {err}"
    );
    let mut wrong_password = redis.clone();
    wrong_password.redis_url = redis_url.replace(&password, "not-the-password");
    let err = redis_ping(&wrong_password).await.unwrap_err();
    assert!(err.contains("AuthenticationFailed"), "{err}");
    let mut no_client_cert = redis.clone();
    no_client_cert.redis_client_cert_file = None;
    no_client_cert.redis_client_key_file = None;
    assert!(
        redis_ping(&no_client_cert).await.is_err(),
        "Redis wants a client certificate"
    );

    // ---- The services, configured by the environment a deployment would set.
    let id = uuid::Uuid::new_v4().simple().to_string();
    let topic = format!("managed.{id}");
    let mut env: Vec<(String, String)> = services.exports.clone();
    env.extend(
        [
            ("KAFKA_TOPIC", topic.clone()),
            ("KAFKA_DLQ_TOPIC", format!("{topic}.dlq")),
            ("KAFKA_GROUP_ID", format!("managed-{id}")),
            ("REDIS_PREFIX", format!("managed:{id}:")),
            ("LOG_FORMAT", "text".to_owned()),
            ("RUST_LOG", "info".to_owned()),
            ("NO_COLOR", "1".to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    let worker_command = |extra: &[(&str, &str)]| {
        let mut command = Command::new(worker_binary());
        command
            .envs(env.iter().cloned())
            .envs(extra.iter().map(|(k, v)| (*k, *v)))
            .stdout(Stdio::null());
        command
    };
    for args in [vec!["migrate"], vec!["create-topics", "--partitions", "2"]] {
        let status = worker_command(&[])
            .args(&args)
            .stderr(Stdio::inherit())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "chat-worker {args:?} over TLS and SASL_SSL"
        );
    }

    // Records wait in Kafka (produced over SASL_SSL with the same passthrough) while the
    // worker has the wrong password.
    let properties = KafkaProperties::load(None, services.exports.iter().cloned()).unwrap();
    let mut producer_config = rdkafka::ClientConfig::new();
    properties.apply(&mut producer_config);
    let producer: FutureProducer = producer_config
        .set("bootstrap.servers", services.get("KAFKA_BROKERS"))
        .create()
        .unwrap();
    for i in 0..BEFORE {
        let value = json!({"channel": CHANNEL, "author": "kafka", "text": format!("before {i}")})
            .to_string();
        producer
            .send(
                FutureRecord::to(&topic).key(CHANNEL).payload(&value),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(err, _)| err)
            .expect("produce over SASL_SSL");
    }

    let wrong = format!("wrong-{}", uuid::Uuid::new_v4().simple());
    let log = refused_worker(
        worker_command(&[("KAFKA_CONFIG_SASL_PASSWORD", &wrong)]),
        &scratch.join("worker-wrong-password.log"),
        "Authentication failed",
    )
    .await;
    assert_eq!(stored(&store).await, 0, "nothing stored without Kafka");
    for secret in [&password, &wrong] {
        assert!(
            !log.contains(secret.as_str()),
            "a password in the log:\n{log}"
        );
    }
    assert!(
        log.contains("sasl.password"),
        "the start-up log names the passthrough properties:\n{log}"
    );
    let other_ca = other.file("ca.pem");
    refused_worker(
        worker_command(&[("KAFKA_CONFIG_SSL_CA_LOCATION", other_ca.to_str().unwrap())]),
        &scratch.join("worker-wrong-ca.log"),
        "certificate verify failed",
    )
    .await;
    assert_eq!(stored(&store).await, 0, "nothing stored without Kafka");

    // The right password: every record waiting in Kafka is stored.
    let worker_port = free_port();
    let mut worker = Proc {
        name: "chat-worker",
        child: worker_command(&[("HTTP_ADDR", &format!("127.0.0.1:{worker_port}"))])
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    };
    wait_ready(
        &format!("http://127.0.0.1:{worker_port}/readyz"),
        "chat-worker over TLS",
        PATIENCE,
    )
    .await;
    eventually(
        "the records produced during the outage are stored",
        || async { stored(&store).await == BEFORE as i64 },
    )
    .await;

    // ---- chat-ws-server over the same services, exporting spans to an https endpoint
    // that wants a client certificate and an API key header.
    let (otlp, captured) = otlp_endpoint(&pki).await;
    let api_key = format!("key-{}", uuid::Uuid::new_v4().simple());
    let server_port = free_port();
    let internal_port = free_port();
    let mut server_command = Command::new(env!("CARGO_BIN_EXE_chat-ws-server"));
    server_command
        .envs(env.iter().cloned())
        .env("HTTP_ADDR", format!("127.0.0.1:{server_port}"))
        .env("INTERNAL_HTTP_ADDR", format!("127.0.0.1:{internal_port}"))
        .env("AUTH_MODE", "anonymous")
        .env("SHUTDOWN_DRAIN_SECS", "0")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("https://{otlp}"))
        .env("OTEL_EXPORTER_OTLP_CERTIFICATE", pki.file("ca.pem"))
        .env(
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
            pki.file("client.pem"),
        )
        .env("OTEL_EXPORTER_OTLP_CLIENT_KEY", pki.file("client.key"))
        .env("OTEL_EXPORTER_OTLP_HEADERS", format!("x-api-key={api_key}"))
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let mut server = Proc {
        name: "chat-ws-server",
        child: server_command.spawn().unwrap(),
    };
    wait_ready(
        &format!("http://127.0.0.1:{internal_port}/readyz"),
        "chat-ws-server over TLS",
        PATIENCE,
    )
    .await;

    let addr = SocketAddr::from(([127, 0, 0, 1], server_port));
    let mut subscriber = Client::connect(addr).await;
    let reply = subscriber
        .subscribe(json!({"command": "subscribe", "channel": CHANNEL, "limit": 100}))
        .await;
    let history = reply["messages"].as_array().cloned().unwrap_or_default();
    let mut seqs: Vec<i64> = history.iter().filter_map(|m| m["seq"].as_i64()).collect();
    while seqs.len() < BEFORE {
        let frame = subscriber.recv().await;
        if frame["type"] == "message" {
            seqs.push(frame["message"]["seq"].as_i64().unwrap());
        }
    }
    assert_eq!(seqs, (1..=BEFORE as i64).collect::<Vec<_>>());
    let mut publisher = Client::connect(addr).await;
    publisher
        .send(json!({"command": "publish", "channel": CHANNEL, "author": "alice", "text": "over tls", "id": 1}))
        .await;
    let ack = publisher.recv().await;
    assert_eq!(ack["type"], "published", "{ack}");
    let live = subscriber.recv().await;
    assert_eq!(live["type"], "message", "{live}");
    assert_eq!(live["message"]["seq"], BEFORE as i64 + 1, "{live}");
    assert_eq!(live["message"]["text"], "over tls", "{live}");
    let page = get_json(&format!(
        "http://127.0.0.1:{server_port}/channels/%23managed/messages?limit=100"
    ))
    .await;
    assert_eq!(
        page["messages"].as_array().map(Vec::len),
        Some(BEFORE + 1),
        "{page}"
    );
    drop(subscriber);
    drop(publisher);

    // A graceful stop flushes the spans still queued.
    server.stop();
    worker.stop();
    let requests = captured.lock().unwrap().clone();
    let traces: Vec<&Captured> = requests.iter().filter(|r| r.path == "/v1/traces").collect();
    assert!(!traces.is_empty(), "no OTLP request arrived: {requests:?}");
    for request in &traces {
        assert_eq!(
            request.headers.get("x-api-key"),
            Some(&api_key),
            "the OTLP headers reach the endpoint"
        );
    }
    let service_name = b"chat-ws-server";
    assert!(
        traces.iter().any(|r| r
            .body
            .windows(service_name.len())
            .any(|w| w == service_name)),
        "the ws-server's spans arrived"
    );
    drop(services);
    let _ = std::fs::remove_dir_all(&scratch);
}
