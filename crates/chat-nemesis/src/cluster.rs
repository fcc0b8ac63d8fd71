//! The system under test and its own servers: PostgreSQL, Redis and Kafka started by
//! `scripts/services` on the run's own ports and folder (restarted through it), a chaos proxy
//! in front of each, and the chat processes (two workers, a third for rebalances, two
//! ws-servers) connected through the proxies.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chat_testkit::chaos::{url_addr, url_via, ChaosProxy};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

/// The topic, dead-letter topic and consumer group of the run.
pub const TOPIC: &str = "chat.messages";
pub const DLQ_TOPIC: &str = "chat.messages.dlq";
pub const GROUP: &str = "chat-worker";
pub const PARTITIONS: i32 = 8;

/// Where things are.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Folder of the `chat-worker` and `chat-ws-server` binaries.
    pub bin_dir: PathBuf,
    /// `scripts/services`, called with the run's environment (ports, SERVICES_DIR).
    pub services_script: PathBuf,
    /// Logs and the history of the run.
    pub state_dir: PathBuf,
    /// The servers, reached directly (not through the proxies).
    pub database_url: String,
    pub redis_url: String,
    pub kafka_brokers: String,
    /// The address the broker's proxied listener advertises (the Kafka proxy listens there).
    pub kafka_proxy_addr: SocketAddr,
    /// The broker's proxied listener, behind the proxy.
    pub kafka_proxied_addr: SocketAddr,
    /// First of the ports the chat processes listen on.
    pub port_base: u16,
}

/// One dependency of the chat processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dependency {
    Postgres,
    Redis,
    Kafka,
}

impl Dependency {
    pub const ALL: [Dependency; 3] = [Self::Postgres, Self::Redis, Self::Kafka];

    pub fn name(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Redis => "redis",
            Self::Kafka => "kafka",
        }
    }
}

/// A chat process the run starts, kills and starts again.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    program: PathBuf,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    /// The running process's pid (0 when none), readable without the lock (see `kill_all`).
    pid: Arc<AtomicU32>,
    pub starts: u32,
}

impl Proc {
    fn new(name: &str, program: PathBuf, env: Vec<(String, String)>, logs: &Path) -> Self {
        Self {
            name: name.to_owned(),
            program,
            env,
            log: logs.join(format!("{name}.log")),
            child: None,
            pid: Arc::default(),
            starts: 0,
        }
    }

    pub fn start(&mut self) -> anyhow::Result<()> {
        if self.running() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open {}", self.log.display()))?;
        let child = Command::new(&self.program)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", self.program.display()))?;
        self.pid.store(child.id().unwrap_or(0), Ordering::SeqCst);
        self.child = Some(child);
        self.starts += 1;
        Ok(())
    }

    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL: no shutdown path runs.
    pub async fn kill(&mut self) {
        self.pid.store(0, Ordering::SeqCst);
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// SIGTERM, then waits up to `patience` for the exit; SIGKILL after that. Returns whether
    /// the process exited by itself, successfully.
    pub async fn terminate(&mut self, patience: Duration) -> bool {
        self.pid.store(0, Ordering::SeqCst);
        let Some(mut child) = self.child.take() else {
            return true;
        };
        if let Some(pid) = child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        match tokio::time::timeout(patience, child.wait()).await {
            Ok(Ok(status)) => status.success(),
            _ => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                false
            }
        }
    }
}

#[derive(Debug)]
pub struct Cluster {
    pub layout: Layout,
    pub postgres: ChaosProxy,
    pub redis: ChaosProxy,
    pub kafka: ChaosProxy,
    /// Two replicas; a third joins for rebalances.
    pub workers: Vec<Mutex<Proc>>,
    pub ws_servers: Vec<Mutex<Proc>>,
    /// `host:port` of each ws-server's public listener.
    pub ws_addrs: Vec<SocketAddr>,
    ws_internal: Vec<SocketAddr>,
    /// The pid cell of every process.
    pids: Vec<Arc<AtomicU32>>,
    /// One `scripts/services` call at a time.
    services: Mutex<()>,
}

impl Cluster {
    pub async fn start(layout: Layout) -> anyhow::Result<Self> {
        let logs = layout.state_dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        let postgres = ChaosProxy::start(url_addr(&layout.database_url)).await;
        let redis = ChaosProxy::start(url_addr(&layout.redis_url)).await;
        let kafka = ChaosProxy::start_on(layout.kafka_proxy_addr, layout.kafka_proxied_addr)
            .await
            .with_context(|| format!("Kafka proxy on {}", layout.kafka_proxy_addr))?;

        let worker_bin = layout.bin_dir.join("chat-worker");
        let direct = [
            ("DATABASE_URL", layout.database_url.clone()),
            ("KAFKA_BROKERS", layout.kafka_brokers.clone()),
            ("KAFKA_TOPIC", TOPIC.to_owned()),
            ("KAFKA_DLQ_TOPIC", DLQ_TOPIC.to_owned()),
        ];
        run_once(&worker_bin, &["migrate"], &direct).await?;
        run_once(
            &worker_bin,
            &["create-topics", "--partitions", &PARTITIONS.to_string()],
            &direct,
        )
        .await?;

        let proxied = vec![
            (
                "DATABASE_URL".to_owned(),
                url_via(&layout.database_url, postgres.addr()),
            ),
            (
                "REDIS_URL".to_owned(),
                url_via(&layout.redis_url, redis.addr()),
            ),
            ("KAFKA_BROKERS".to_owned(), kafka.addr().to_string()),
            ("KAFKA_TOPIC".to_owned(), TOPIC.to_owned()),
            ("LOG_FORMAT".to_owned(), "text".to_owned()),
            ("NO_COLOR".to_owned(), "1".to_owned()),
            (
                "RUST_LOG".to_owned(),
                "warn,chat_worker=info,chat_ws_server=info".to_owned(),
            ),
        ];
        let port = |offset: u16| SocketAddr::from(([127, 0, 0, 1], layout.port_base + offset));
        let workers: Vec<Mutex<Proc>> = (0..3)
            .map(|i| {
                let mut env = proxied.clone();
                env.extend(
                    [
                        ("KAFKA_DLQ_TOPIC", DLQ_TOPIC.to_owned()),
                        ("KAFKA_GROUP_ID", GROUP.to_owned()),
                        ("HTTP_ADDR", port(1 + i).to_string()),
                        ("RETRY_MAX_BACKOFF_MS", "1000".to_owned()),
                    ]
                    .map(|(k, v)| (k.to_owned(), v)),
                );
                Mutex::new(Proc::new(
                    &format!("worker-{}", i + 1),
                    worker_bin.clone(),
                    env,
                    &logs,
                ))
            })
            .collect();
        let ws_addrs = vec![port(11), port(12)];
        let ws_internal = vec![port(21), port(22)];
        let ws_servers: Vec<Mutex<Proc>> = (0..2)
            .map(|i| {
                let mut env = proxied.clone();
                env.extend(
                    [
                        ("HTTP_ADDR", ws_addrs[i].to_string()),
                        ("INTERNAL_HTTP_ADDR", ws_internal[i].to_string()),
                        ("AUTH_MODE", "anonymous".to_owned()),
                        // The workload comes from one address: the abuse limits are not
                        // under test here (docs/SECURITY.md).
                        ("WS_MAX_CONNECTIONS", "0".to_owned()),
                        ("WS_MAX_CONNECTIONS_PER_IP", "0".to_owned()),
                        ("WS_CONNECTS_PER_IP_PER_SEC", "0".to_owned()),
                        ("CLIENT_READS_PER_SEC", "0".to_owned()),
                        ("CLIENT_WRITES_PER_SEC", "0".to_owned()),
                        ("WS_COMMAND_RATE", "0".to_owned()),
                        ("WS_PUBLISH_RATE", "0".to_owned()),
                        ("SHUTDOWN_DRAIN_SECS", "1".to_owned()),
                    ]
                    .map(|(k, v)| (k.to_owned(), v)),
                );
                Mutex::new(Proc::new(
                    &format!("ws-server-{}", i + 1),
                    layout.bin_dir.join("chat-ws-server"),
                    env,
                    &logs,
                ))
            })
            .collect();
        let mut pids = Vec::new();
        for proc in workers.iter().chain(&ws_servers) {
            pids.push(proc.lock().await.pid.clone());
        }
        let cluster = Self {
            pids,
            layout,
            postgres,
            redis,
            kafka,
            workers,
            ws_servers,
            ws_addrs,
            ws_internal,
            services: Mutex::new(()),
        };
        for worker in &cluster.workers[..2] {
            worker.lock().await.start()?;
        }
        for server in &cluster.ws_servers {
            server.lock().await.start()?;
        }
        cluster.wait_ready(Duration::from_secs(60)).await?;
        Ok(cluster)
    }

    /// Waits until every ws-server answers `/readyz` with 200.
    pub async fn wait_ready(&self, patience: Duration) -> anyhow::Result<()> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let deadline = Instant::now() + patience;
        for addr in &self.ws_internal {
            loop {
                let ok = http
                    .get(format!("http://{addr}/readyz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("ws-server on {addr} not ready after {patience:?}");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    pub fn proxy(&self, dependency: Dependency) -> &ChaosProxy {
        match dependency {
            Dependency::Postgres => &self.postgres,
            Dependency::Redis => &self.redis,
            Dependency::Kafka => &self.kafka,
        }
    }

    /// `scripts/services ARGS` with the run's environment; its messages go to services.log.
    pub async fn services(&self, args: &[&str]) -> anyhow::Result<()> {
        let _one = self.services.lock().await;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.layout.state_dir.join("logs/services.log"))?;
        let status = Command::new(&self.layout.services_script)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .status()
            .await?;
        if !status.success() {
            bail!("scripts/services {} failed: {status}", args.join(" "));
        }
        Ok(())
    }

    /// Ends every fault: proxies forward again, every server and the four processes run.
    pub async fn heal(&self) -> anyhow::Result<()> {
        for dependency in Dependency::ALL {
            self.proxy(dependency).restore();
        }
        self.services(&["start"]).await?;
        for worker in &self.workers[..2] {
            worker.lock().await.start()?;
        }
        self.workers[2]
            .lock()
            .await
            .terminate(Duration::from_secs(30))
            .await;
        for server in &self.ws_servers {
            server.lock().await.start()?;
        }
        self.wait_ready(Duration::from_secs(120)).await
    }

    /// SIGKILL to every chat process, also those a fault holds the lock of.
    pub fn kill_all(&self) {
        for pid in &self.pids {
            let pid = pid.swap(0, Ordering::SeqCst);
            if pid != 0 {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }

    /// SIGTERM to every chat process.
    pub async fn stop(&self) {
        for proc in self.workers.iter().chain(&self.ws_servers) {
            proc.lock().await.terminate(Duration::from_secs(30)).await;
        }
    }
}

async fn run_once(program: &Path, args: &[&str], env: &[(&str, String)]) -> anyhow::Result<()> {
    let output = Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .await
        .with_context(|| format!("run {}", program.display()))?;
    if !output.status.success() {
        bail!(
            "{} {} failed: {}",
            program.display(),
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}
