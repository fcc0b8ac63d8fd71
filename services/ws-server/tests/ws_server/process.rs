//! The real `chat-ws-server` binary as a child process, for tests that measure the server's own
//! memory (`/proc/<pid>/status`), which an in-process server shares with the test.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use crate::support::{kafka_brokers, redis_url, Isolation, PATIENCE};

pub struct ServerProcess {
    child: Child,
    pub ws_addr: SocketAddr,
    pub internal_addr: SocketAddr,
}

/// A free port on 127.0.0.1, outside the ephemeral range (see `chat_testkit::ports`).
fn free_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], chat_testkit::ports::free_port()))
}

impl ServerProcess {
    /// Starts the binary over `iso` (anonymous, like the in-process servers) with `env` on top,
    /// and waits until it is ready.
    pub async fn spawn(iso: &Isolation, env: &[(&str, &str)]) -> Self {
        let ws_addr = free_port();
        let internal_addr = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_chat-ws-server"))
            .env_clear()
            .env("KAFKA_BROKERS", kafka_brokers())
            .env("KAFKA_TOPIC", &iso.topic)
            .env("DATABASE_URL", &iso.database_url)
            .env("REDIS_URL", redis_url())
            .env("REDIS_PREFIX", &iso.redis_prefix)
            .env("HTTP_ADDR", ws_addr.to_string())
            .env("INTERNAL_HTTP_ADDR", internal_addr.to_string())
            .env("AUTH_MODE", "anonymous")
            .env("LOG_FORMAT", "text")
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .spawn()
            .expect("chat-ws-server starts");
        let server = Self {
            child,
            ws_addr,
            internal_addr,
        };
        let ready = format!("http://{internal_addr}/readyz");
        crate::procs::wait_ready(&ready, "chat-ws-server", PATIENCE).await;
        server
    }

    /// A `kB` field of the process's `/proc/<pid>/status` (`VmRSS`: resident now, `VmHWM`:
    /// peak resident), in KiB.
    pub fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the server process is alive");
        status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc/<pid>/status"))
    }

    /// The process's resident memory, in bytes.
    pub fn rss(&self) -> u64 {
        self.status_kib("VmRSS") * 1024
    }

    /// Resets the peak resident set to the current one (`/proc/<pid>/clear_refs`); returns the
    /// current one, in KiB.
    pub fn reset_peak(&self) -> u64 {
        std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5")
            .expect("resetting VmHWM through clear_refs");
        self.status_kib("VmHWM")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
