//! What the benchmark binaries share: reading a process's memory and CPU from `/proc`.

use anyhow::Context;

/// A `kB` field of `/proc/PID/status`, e.g. `VmRSS` (resident now) or `VmHWM` (peak resident).
pub fn proc_status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("{field} in /proc/{pid}/status"))
}

/// User + system CPU seconds a process has used so far (`/proc/PID/stat`, in USER_HZ = 100).
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name start with the state (field 3).
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Runs a benchmark's async main on a two-thread runtime (the load generators leave the rest
/// of the machine to the server under test).
pub fn run_on_two_threads<F: std::future::Future>(main: F) -> anyhow::Result<F::Output> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(main))
}

/// `p50 … ms  p99 … ms  p99.9 … ms  max … ms` of a histogram recorded in microseconds.
pub fn latency_summary(histogram: &hdrhistogram::Histogram<u64>) -> String {
    let ms = |micros: u64| micros as f64 / 1000.0;
    format!(
        "p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
        ms(histogram.value_at_quantile(0.5)),
        ms(histogram.value_at_quantile(0.99)),
        ms(histogram.value_at_quantile(0.999)),
        ms(histogram.max())
    )
}
