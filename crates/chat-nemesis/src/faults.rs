//! The nemesis: faults of every kind, at random moments, overlapping, while the workload runs.
//!
//! Kinds are drawn from a shuffled deck (each kind once per deck), so even a short run injects
//! every kind. A fault starts at a random interval after the previous one, whether or not that
//! one ended, so faults come together; only two faults on the same target never overlap.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use crate::cluster::{Cluster, Dependency, Proc};
use crate::history::{FaultRecord, History};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Net {
    /// Connections dropped, new ones refused.
    Drop,
    /// Connections held, nothing forwarded.
    Stall,
    /// Every chunk delayed.
    Slow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// SIGKILL of one of the two workers, restarted after a pause.
    WorkerKill,
    /// SIGTERM of a worker while a batch is in flight (PostgreSQL made slow just before, so the
    /// batch's transaction is open when the signal lands).
    WorkerTerm,
    /// SIGKILL of one of the two ws-servers; its clients move to the other.
    WsServerKill,
    /// A third worker joins the group and leaves again: two rebalances.
    Rebalance,
    /// A crash (or, every other time, a clean stop) of a server, restarted after a pause.
    Restart(Dependency),
    /// A network fault between the chat processes and a server.
    Network(Dependency, Net),
}

impl Kind {
    pub fn all() -> Vec<Kind> {
        let mut all = vec![
            Kind::WorkerKill,
            Kind::WorkerTerm,
            Kind::WsServerKill,
            Kind::Rebalance,
        ];
        for dependency in Dependency::ALL {
            all.push(Kind::Restart(dependency));
            for net in [Net::Drop, Net::Stall, Net::Slow] {
                all.push(Kind::Network(dependency, net));
            }
        }
        all
    }

    /// The kinds whose name contains one of `filters` (all when there is none).
    pub fn matching(filters: &[String]) -> Vec<Kind> {
        Kind::all()
            .into_iter()
            .filter(|k| filters.is_empty() || filters.iter().any(|f| k.name().contains(f.as_str())))
            .collect()
    }

    pub fn name(self) -> String {
        match self {
            Kind::WorkerKill => "worker SIGKILL".to_owned(),
            Kind::WorkerTerm => "worker SIGTERM in a batch".to_owned(),
            Kind::WsServerKill => "ws-server SIGKILL".to_owned(),
            Kind::Rebalance => "consumer-group rebalance".to_owned(),
            Kind::Restart(d) => format!("{} restart", d.name()),
            Kind::Network(d, net) => format!(
                "{} link {}",
                d.name(),
                match net {
                    Net::Drop => "drop",
                    Net::Stall => "stall",
                    Net::Slow => "slow",
                }
            ),
        }
    }

    /// What the fault holds while it lasts.
    fn targets(self) -> Vec<Target> {
        match self {
            Kind::WorkerKill | Kind::Rebalance => vec![Target::Workers],
            Kind::WorkerTerm => vec![Target::Workers, Target::Link(Dependency::Postgres)],
            Kind::WsServerKill => vec![Target::WsServers],
            Kind::Restart(d) => vec![Target::Server(d)],
            Kind::Network(d, _) => vec![Target::Link(d)],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Target {
    Workers,
    WsServers,
    Server(Dependency),
    Link(Dependency),
}

/// Runs faults until `stop`, then waits for those in progress to end. Faults start every
/// `interval` (a random duration within it).
pub async fn run(
    cluster: Arc<Cluster>,
    history: Arc<History>,
    seed: u64,
    interval: (Duration, Duration),
    kinds: Vec<Kind>,
    stop: CancellationToken,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let busy: Arc<Mutex<HashSet<Target>>> = Arc::default();
    let mut deck: Vec<Kind> = Vec::new();
    let mut running = tokio::task::JoinSet::new();
    let mut restarts = 0u32;
    loop {
        let pause = rng.random_range(interval.0..=interval.1);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
        }
        if deck.is_empty() {
            deck = kinds.clone();
            deck.shuffle(&mut rng);
        }
        // The next kind whose targets are free; the others keep their place in the deck.
        let free = {
            let held = busy.lock().unwrap();
            deck.iter()
                .position(|k| k.targets().iter().all(|t| !held.contains(t)))
        };
        let Some(position) = free else { continue };
        let kind = deck.remove(position);
        busy.lock().unwrap().extend(kind.targets());
        if matches!(kind, Kind::Restart(_)) {
            restarts += 1;
        }
        let fault = Fault {
            kind,
            seed: rng.random(),
            clean: restarts.is_multiple_of(2),
        };
        let (cluster, history, busy) = (cluster.clone(), history.clone(), busy.clone());
        running.spawn(async move {
            let start = Instant::now();
            let at_secs = history.now_secs();
            let target = match fault.inject(&cluster).await {
                Ok(target) => target,
                Err(err) => {
                    history.violation("fault_failed", format!("{}: {err:#}", kind.name()));
                    String::new()
                }
            };
            history.fault(FaultRecord {
                kind: kind.name(),
                target,
                at_secs,
                secs: start.elapsed().as_secs_f64(),
            });
            let mut held = busy.lock().unwrap();
            for t in kind.targets() {
                held.remove(&t);
            }
        });
    }
    while running.join_next().await.is_some() {}
}

struct Fault {
    kind: Kind,
    seed: u64,
    /// For server restarts: a clean stop instead of a crash.
    clean: bool,
}

impl Fault {
    /// Injects the fault and ends it; returns what it hit.
    async fn inject(&self, cluster: &Cluster) -> anyhow::Result<String> {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let secs =
            |rng: &mut StdRng, lo: f64, hi: f64| Duration::from_secs_f64(rng.random_range(lo..=hi));
        match self.kind {
            Kind::WorkerKill => {
                let worker = &cluster.workers[rng.random_range(0..2)];
                kill_and_restart(worker, secs(&mut rng, 1.0, 4.0)).await
            }
            Kind::WorkerTerm => {
                let mut worker = cluster.workers[rng.random_range(0..2)].lock().await;
                cluster.postgres.slow(Duration::from_millis(150));
                tokio::time::sleep(Duration::from_millis(400)).await;
                let clean = worker.terminate(Duration::from_secs(30)).await;
                cluster.postgres.restore();
                tokio::time::sleep(secs(&mut rng, 0.5, 3.0)).await;
                worker.start()?;
                Ok(if clean {
                    worker.name.clone()
                } else {
                    format!("{} (did not exit within 30 s: killed)", worker.name)
                })
            }
            Kind::WsServerKill => {
                let server = &cluster.ws_servers[rng.random_range(0..2)];
                kill_and_restart(server, secs(&mut rng, 2.0, 6.0)).await
            }
            Kind::Rebalance => {
                let mut third = cluster.workers[2].lock().await;
                third.start()?;
                tokio::time::sleep(secs(&mut rng, 4.0, 9.0)).await;
                third.terminate(Duration::from_secs(30)).await;
                Ok(third.name.clone())
            }
            Kind::Restart(dependency) => {
                let mut args = vec!["kill", dependency.name()];
                if self.clean {
                    args.push("--clean");
                }
                cluster.services(&args).await?;
                tokio::time::sleep(secs(&mut rng, 1.0, 4.0)).await;
                cluster.services(&["start"]).await?;
                Ok(format!(
                    "{} ({})",
                    dependency.name(),
                    if self.clean { "clean stop" } else { "crash" }
                ))
            }
            Kind::Network(dependency, net) => {
                let proxy = cluster.proxy(dependency);
                let (lasts, what) = match net {
                    Net::Drop => {
                        proxy.cut();
                        (secs(&mut rng, 1.0, 8.0), "dropped".to_owned())
                    }
                    Net::Stall => {
                        proxy.stall();
                        (secs(&mut rng, 1.0, 8.0), "stalled".to_owned())
                    }
                    Net::Slow => {
                        let delay = Duration::from_millis(rng.random_range(20..=250));
                        proxy.slow(delay);
                        (secs(&mut rng, 3.0, 12.0), format!("{delay:?} per chunk"))
                    }
                };
                tokio::time::sleep(lasts).await;
                proxy.restore();
                Ok(format!("{} {what}", dependency.name()))
            }
        }
    }
}

/// SIGKILL, a pause, and the process started again.
async fn kill_and_restart(
    proc: &tokio::sync::Mutex<Proc>,
    down: Duration,
) -> anyhow::Result<String> {
    let mut proc = proc.lock().await;
    proc.kill().await;
    tokio::time::sleep(down).await;
    proc.start()?;
    Ok(proc.name.clone())
}
