//! `nemesis`: a Jepsen-style run against the whole system. A workload publishes (WebSocket,
//! REST, raw Kafka) and reads (WebSocket subscribers that unsubscribe, reconnect and resume;
//! REST pagers) while a nemesis kills and restarts the chat processes and the servers and
//! breaks the network to each server; after a quiet period a checker compares everything the
//! clients were told and given with PostgreSQL, Kafka and the REST API. It prints a summary,
//! keeps the history in the state folder and exits 1 on any violation.
//!
//! Run it through `scripts/nemesis`, which starts the run's own servers and builds the binaries.

mod check;
mod cluster;
mod faults;
mod history;
mod workload;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

use crate::cluster::{Cluster, Layout};
use crate::history::History;
use crate::workload::subscribers::Tails;
use crate::workload::Workload;

#[derive(Debug, Parser)]
#[command(
    name = "nemesis",
    about = "Faults at random under load, and a checker of every acknowledged message"
)]
struct Args {
    /// How long the faults run, in seconds (the workload runs a little longer on each side).
    #[arg(long, default_value_t = 150)]
    duration_secs: u64,
    /// Seed of the fault schedule and the workload's choices (random when absent; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Pause between the starts of two faults: a random duration between these, in seconds.
    #[arg(long, default_value_t = 2.0)]
    fault_min_secs: f64,
    #[arg(long, default_value_t = 8.0)]
    fault_max_secs: f64,
    /// Only the fault kinds whose name contains one of these (e.g. `--faults "redis link drop"
    /// --faults "ws-server"`); all kinds when absent.
    #[arg(long = "faults")]
    fault_filters: Vec<String>,
    /// Folder for the logs and the history of the run.
    #[arg(long)]
    state_dir: PathBuf,
    /// Folder of the chat-worker and chat-ws-server binaries.
    #[arg(long)]
    bin_dir: PathBuf,
    /// `scripts/services`, to restart the run's servers.
    #[arg(long)]
    services_script: PathBuf,
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    #[arg(long, env = "REDIS_URL")]
    redis_url: String,
    #[arg(long, env = "KAFKA_BROKERS")]
    kafka_brokers: String,
    /// The broker's second listener (behind the Kafka proxy).
    #[arg(long)]
    kafka_proxied_port: u16,
    /// The address that listener advertises: the Kafka proxy listens there.
    #[arg(long)]
    kafka_proxy_port: u16,
    /// First port of the chat processes (workers +1..+3, ws-servers +11/+12, internal +21/+22).
    #[arg(long, default_value_t = 25400)]
    port_base: u16,
    #[arg(long, default_value_t = 24)]
    channels: usize,
    #[arg(long, default_value_t = 24)]
    subscribers: usize,
    #[arg(long, default_value_t = 4)]
    channels_per_subscriber: usize,
    #[arg(long, default_value_t = 4)]
    ws_publishers: usize,
    #[arg(long, default_value_t = 2)]
    rest_publishers: usize,
    #[arg(long, default_value_t = 2)]
    kafka_producers: usize,
    #[arg(long, default_value_t = 2)]
    rest_readers: usize,
    /// Mean pause between two publishes of one publisher, in milliseconds.
    #[arg(long, default_value_t = 30)]
    publish_pause_ms: u64,
    /// Every Nth raw Kafka record is malformed on purpose.
    #[arg(long, default_value_t = 25)]
    malformed_every: u64,
    /// Longest wait for quiet after the faults, in seconds.
    #[arg(long, default_value_t = 180)]
    quiet_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(rand::random);
    std::fs::create_dir_all(&args.state_dir)?;
    let started = Instant::now();
    println!(
        "nemesis: {} s of faults, seed {seed}; history in {}",
        args.duration_secs,
        args.state_dir.display()
    );
    let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let layout = Layout {
        bin_dir: args.bin_dir.clone(),
        services_script: args.services_script.clone(),
        state_dir: args.state_dir.clone(),
        database_url: args.database_url.clone(),
        redis_url: args.redis_url.clone(),
        kafka_brokers: args.kafka_brokers.clone(),
        kafka_proxy_addr: loopback(args.kafka_proxy_port),
        kafka_proxied_addr: loopback(args.kafka_proxied_port),
        port_base: args.port_base,
    };
    let cluster = Arc::new(Cluster::start(layout).await?);
    // Interrupted (Ctrl-C, SIGTERM): the chat processes must not outlive the run.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let passed = tokio::select! {
        passed = run(&args, seed, cluster.clone(), started) => passed?,
        _ = tokio::signal::ctrl_c() => interrupted(&cluster).await,
        _ = terminate.recv() => interrupted(&cluster).await,
    };
    std::process::exit(if passed { 0 } else { 1 });
}

async fn interrupted(cluster: &Cluster) -> bool {
    eprintln!("nemesis: interrupted; stopping the chat processes");
    cluster.kill_all();
    std::process::exit(130);
}

/// The workload, the faults, the quiet and the check; true when no guarantee was broken.
async fn run(
    args: &Args,
    seed: u64,
    cluster: Arc<Cluster>,
    started: Instant,
) -> anyhow::Result<bool> {
    let history = Arc::new(History::new());
    let tails = Arc::new(Tails::default());
    let workload = Workload {
        history: history.clone(),
        servers: cluster.ws_addrs.clone(),
        channels: (0..args.channels).map(Workload::channel_name).collect(),
        kafka_brokers: args.kafka_brokers.clone(),
        winding_down: CancellationToken::new(),
        end: CancellationToken::new(),
        publish_pause: Duration::from_millis(args.publish_pause_ms),
    };

    // The workload.
    let mut publishers = tokio::task::JoinSet::new();
    let mut readers = tokio::task::JoinSet::new();
    let mut n = 0u64;
    let mut next_seed = || {
        n += 1;
        seed.wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    };
    for i in 0..args.ws_publishers {
        publishers.spawn(workload::publishers::websocket(
            workload.clone(),
            i + 1,
            next_seed(),
        ));
    }
    for i in 0..args.rest_publishers {
        publishers.spawn(workload::publishers::rest(
            workload.clone(),
            i + 1,
            next_seed(),
        ));
    }
    for i in 0..args.kafka_producers {
        publishers.spawn(workload::publishers::kafka(
            workload.clone(),
            i + 1,
            next_seed(),
            cluster::TOPIC.to_owned(),
            args.malformed_every,
        ));
    }
    for i in 0..args.subscribers {
        let channels = (0..args.channels_per_subscriber)
            .map(|k| Workload::channel_name((i * 7 + k * 5) % args.channels))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        readers.spawn(workload::subscribers::run(
            workload.clone(),
            i + 1,
            channels,
            next_seed(),
            tails.clone(),
        ));
    }
    for _ in 0..args.rest_readers {
        readers.spawn(workload::readers::run(workload.clone(), next_seed()));
    }

    let kinds = faults::Kind::matching(&args.fault_filters);
    anyhow::ensure!(
        !kinds.is_empty(),
        "no fault kind matches {:?}",
        args.fault_filters
    );
    // The nemesis, after a few calm seconds.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let stop_faults = CancellationToken::new();
    let nemesis = tokio::spawn(faults::run(
        cluster.clone(),
        history.clone(),
        seed,
        (
            Duration::from_secs_f64(args.fault_min_secs),
            Duration::from_secs_f64(args.fault_max_secs),
        ),
        kinds,
        stop_faults.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(args.duration_secs)).await;
    stop_faults.cancel();
    nemesis.await?;
    println!(
        "faults over after {:.0} s; healing",
        started.elapsed().as_secs_f64()
    );
    cluster.heal().await.context("heal the cluster")?;

    // Quiet: publishers finish the message in hand, then everything settles.
    workload.winding_down.cancel();
    let patience = Duration::from_secs(args.quiet_secs);
    let publishers_done = tokio::time::timeout(patience, async {
        while publishers.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    if !publishers_done {
        history.violation(
            "publisher_stuck",
            format!("a publisher had no acknowledgement {patience:?} after the faults ended"),
        );
    }
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&args.database_url)
        .await?;
    let quiet = check::wait_for_quiet(&pool, &args.kafka_brokers, &tails, patience).await?;
    if quiet.consumer_lag != 0 {
        history.violation(
            "consumer_lag",
            format!(
                "{} records not committed after {:.0} s",
                quiet.consumer_lag, quiet.secs
            ),
        );
    }
    for stream in &quiet.streams_behind {
        history.violation("owed_not_delivered", stream.clone());
    }
    let report = check::check(&history, &pool, &args.kafka_brokers, &cluster.ws_addrs).await?;
    workload.end.cancel();
    publishers.shutdown().await;
    while readers.join_next().await.is_some() {}
    cluster.stop().await;

    summarize(args, seed, &history, &quiet, &report, started.elapsed())
}

/// Prints the summary, writes the history files; true when no guarantee was broken.
fn summarize(
    args: &Args,
    seed: u64,
    history: &History,
    quiet: &check::Quiet,
    report: &check::Report,
    took: Duration,
) -> anyhow::Result<bool> {
    let (violations, counts) = history.violations();
    let faults = history.faults();
    let mut by_kind: BTreeMap<&str, u64> = BTreeMap::new();
    for fault in &faults {
        *by_kind.entry(fault.kind.as_str()).or_default() += 1;
    }
    let c = &history.counters;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let (p50, p99, p999) = history.latency_ms();
    let longest_waits = history.longest_waits();
    let (longest, longest_what) = longest_waits
        .first()
        .map(|(wait, what, at)| (*wait, format!("{what}, received at {at:.1} s")))
        .unwrap_or_default();
    let gaps = counts.get("gap").copied().unwrap_or(0);
    let repeats = counts.get("repeat_or_reorder").copied().unwrap_or(0);

    println!();
    println!(
        "== nemesis summary (seed {seed}, {:.0} s in all)",
        took.as_secs_f64()
    );
    println!(
        "faults injected: {} in {} s",
        faults.len(),
        args.duration_secs
    );
    for (kind, n) in &by_kind {
        println!("  {kind:<28} {n}");
    }
    println!(
        "publishes: {} tried, {} acknowledged (by way, tried/acknowledged: {}), {} retries",
        report.attempted - report.malformed_attempted,
        report.acknowledged,
        report
            .published_by_way
            .iter()
            .map(|(way, (t, a))| format!("{way} {t}/{a}"))
            .collect::<Vec<_>>()
            .join(", "),
        get(&c.publish_retries),
    );
    println!(
        "stored: {} of them in {} channels ({} stored without an acknowledgement: the ack was lost to a fault)",
        report.stored, report.channels, report.stored_unacknowledged
    );
    println!(
        "lost {}, duplicated {}, wrong content {}, unexpected rows {}, log seq breaks {}, out of order {}",
        report.lost, report.duplicated, report.wrong_content, report.unexpected_rows, report.log_seq_breaks, report.out_of_order
    );
    println!(
        "subscribers: {} deliveries; {} subscribes, {} resumes, {} unsubscribes, {} reconnects, {} subscribe retries",
        get(&c.deliveries),
        get(&c.subscribes),
        get(&c.resumes),
        get(&c.unsubscribes),
        get(&c.reconnects),
        get(&c.subscribe_retries)
    );
    println!(
        "  gaps seen by clients {gaps}, repeats or reorders {repeats}, given something other than the log {}, owed but not delivered {}",
        report.seen_differs_from_log,
        quiet.streams_behind.len()
    );
    println!(
        "  wait for an owed message: p50 {p50:.1} ms, p99 {p99:.1} ms, p99.9 {p999:.1} ms, longest {:.2} s ({longest_what})",
        longest.as_secs_f64()
    );
    println!(
        "REST: {} pages read during faults ({} refused or unanswered), full scan differs from the log in {} channels",
        get(&c.rest_pages),
        get(&c.rest_errors),
        report.rest_scan_differs
    );
    println!(
        "Kafka: consumer lag {} after {:.0} s of quiet; malformed records {} tried, {} acknowledged, {} distinct dead-lettered, {} missing, {} unexpected",
        quiet.consumer_lag,
        quiet.secs,
        report.malformed_attempted,
        report.malformed_acknowledged,
        report.dead_letters_marked,
        report.dead_letters_missing,
        report.dead_letters_unexpected
    );

    let write = |name: &str, value: &serde_json::Value| {
        std::fs::write(
            args.state_dir.join(name),
            serde_json::to_vec_pretty(value).expect("JSON"),
        )
    };
    write("faults.json", &json!(faults))?;
    write("violations.json", &json!(violations))?;
    write(
        "summary.json",
        &json!({
            "seed": seed, "duration_secs": args.duration_secs, "faults_by_kind": by_kind,
            "report": report, "quiet": quiet, "violations_by_kind": counts,
            "deliveries": get(&c.deliveries), "reconnects": get(&c.reconnects),
            "wait_ms": {"p50": p50, "p99": p99, "p99_9": p999, "longest": longest.as_secs_f64() * 1000.0},
            "longest_waits": longest_waits.iter().map(|(wait, what, at)| {
                json!({"secs": wait.as_secs_f64(), "message": what, "received_at_secs": at})
            }).collect::<Vec<_>>(),
        }),
    )?;
    let mut publishes = history.publishes();
    publishes.sort_by(|a, b| (&a.publisher, a.index).cmp(&(&b.publisher, b.index)));
    let lines: Vec<String> = publishes
        .iter()
        .map(|p| serde_json::to_string(p).expect("JSON"))
        .collect();
    std::fs::write(args.state_dir.join("publishes.jsonl"), lines.join("\n"))?;

    if counts.is_empty() {
        println!("RESULT: PASS (no violation)");
        return Ok(true);
    }
    println!("RESULT: FAIL");
    for (kind, n) in &counts {
        println!("  {kind}: {n}");
    }
    for v in violations.iter().take(20) {
        println!("  [{:.1} s] {}: {}", v.at_secs, v.kind, v.detail);
    }
    println!("(all in {}/violations.json)", args.state_dir.display());
    Ok(false)
}
