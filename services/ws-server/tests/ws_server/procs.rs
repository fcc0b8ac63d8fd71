//! Child processes of the real binaries, for the tests that need a process of their own
//! (a global telemetry subscriber, the environment variables as the binaries read them).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::support::PATIENCE;

/// A child process killed (SIGKILL) when dropped, unless it already exited.
pub struct Proc {
    pub name: &'static str,
    pub child: Child,
}

impl Proc {
    /// SIGTERM, then wait: the services flush their spans on the way out.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "{} exited with {status}", self.name);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{} did not stop after SIGTERM", self.name);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub use chat_testkit::ports::free_port;

/// The chat-worker binary of the same build as the chat-ws-server under test, built (or
/// confirmed fresh) with the same command `scripts/test` uses before schemathesis, so the two
/// share their artifacts.
pub fn worker_binary() -> PathBuf {
    let server = PathBuf::from(env!("CARGO_BIN_EXE_chat-ws-server"));
    let profile_dir = server.parent().unwrap().to_path_buf();
    let worker = profile_dir.join("chat-worker");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(repo_root())
        .args([
            "build",
            "--locked",
            "-p",
            "chat-worker",
            "-p",
            "chat-ws-server",
        ])
        .env("CARGO_TARGET_DIR", profile_dir.parent().unwrap());
    if profile_dir.ends_with("release") {
        build.arg("--release");
    }
    let status = build.status().expect("cargo runs");
    assert!(status.success(), "building chat-worker failed");
    assert!(worker.exists(), "{} missing", worker.display());
    worker
}

/// An HTTP client for polling child processes. Every request has a deadline: a port picked for a
/// child can end up held by something that accepts and never answers (a race that lost), and a
/// poll without one would wait there forever instead of failing.
pub fn poll_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client")
}

pub async fn wait_ready(url: &str, what: &str, patience: Duration) {
    let http = poll_client();
    let deadline = Instant::now() + patience;
    loop {
        if let Ok(response) = http.get(url).send().await {
            if response.status().is_success() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{what} not ready at {url}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
