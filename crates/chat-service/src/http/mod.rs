//! Bind and serve. A service binds its HTTP listener while it is built, before anything runs, so
//! that a bad address fails the start and the bound port is known (tests bind port 0); it serves
//! its routes once it runs, until a token fires.
//!
//! The accept loop is ours rather than `poem::Server`'s, for one reason: poem offers only an
//! activity timer, and hyper's header timeout would also cut kept-alive connections at the header
//! timeout. Here each connection has a [`deadline::Deadline`]: a complete request head within
//! [`HttpTimeouts::header`] of the accept (slowloris), then [`HttpTimeouts::keep_alive`] of
//! silence between requests, and nothing once upgraded to a WebSocket. Requests reach the poem
//! endpoint exactly as under `poem::Server` (same conversion, same upgrade path).

mod connection;
pub mod deadline;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use poem::{EndpointExt, IntoEndpoint};
use prometheus::IntCounterVec;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use connection::Connections;
pub use deadline::HttpTimeouts;

/// A bound HTTP listener, not serving yet.
pub struct HttpListener {
    listener: tokio::net::TcpListener,
    local_addr: SocketAddr,
    timeouts: HttpTimeouts,
    timed_out: Option<IntCounterVec>,
}

impl HttpListener {
    /// Binds `addr` (port 0: any free port, see [`HttpListener::local_addr`]), with the default
    /// [`HttpTimeouts`].
    pub async fn bind(addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let local_addr = listener
            .local_addr()
            .context("listener has no socket address")?;
        Ok(Self {
            listener,
            local_addr,
            timeouts: HttpTimeouts::default(),
            timed_out: None,
        })
    }

    /// The bound address, with the port the system chose for port 0.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Replaces the default header and keep-alive timeouts.
    pub fn with_timeouts(mut self, timeouts: HttpTimeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// Counts connections closed by a timeout in `counter`, by its one label: `header` or
    /// `keep_alive`.
    pub fn counting_timeouts(mut self, counter: IntCounterVec) -> Self {
        self.timed_out = Some(counter);
        self
    }

    /// Serves `endpoint` on a task until `stop` fires; requests still open then get `grace` to
    /// finish.
    pub fn serve<E>(self, endpoint: E, stop: CancellationToken, grace: Duration) -> Serving
    where
        E: IntoEndpoint + Send + 'static,
        E::Endpoint: 'static,
    {
        let endpoint = endpoint.into_endpoint().map_to_response().boxed();
        let connections = Arc::new(Connections::new(
            endpoint,
            self.timeouts,
            self.local_addr,
            self.timed_out,
        ));
        let task = tokio::spawn(accept_until_stopped(
            self.listener,
            connections,
            stop,
            grace,
        ));
        Serving { task }
    }
}

/// Accepts connections until `stop` fires, then waits up to `grace` for the open ones (which
/// finish their requests in flight and close) and drops the rest.
async fn accept_until_stopped(
    listener: tokio::net::TcpListener,
    connections: Arc<Connections>,
    stop: CancellationToken,
    grace: Duration,
) -> std::io::Result<()> {
    let tracker = TaskTracker::new();
    let force = CancellationToken::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((socket, peer)) => {
                tracker.spawn(Arc::clone(&connections).serve(
                    socket,
                    peer,
                    stop.clone(),
                    force.clone(),
                ));
            }
            Err(err) => {
                // Out of file descriptors, most likely: pause instead of spinning.
                tracing::warn!(error = %err, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        force.cancel();
        tracker.wait().await;
    }
    Ok(())
}

/// A server started by [`HttpListener::serve`].
pub struct Serving {
    task: JoinHandle<std::io::Result<()>>,
}

impl Serving {
    /// Waits until the server stopped (after its token fired), with its error if it failed.
    pub async fn finished(self) -> anyhow::Result<()> {
        self.task
            .await
            .context("http server task")?
            .context("http server")
    }
}
