//! Bind and serve. A service binds its HTTP listener while it is built, before anything runs, so
//! that a bad address fails the start and the bound port is known (tests bind port 0); it serves
//! its routes once it runs, until a token fires.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use poem::listener::{Acceptor, Listener, TcpAcceptor, TcpListener};
use poem::IntoEndpoint;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A bound HTTP listener, not serving yet.
pub struct HttpListener {
    acceptor: TcpAcceptor,
    local_addr: SocketAddr,
}

impl HttpListener {
    /// Binds `addr` (port 0: any free port, see [`HttpListener::local_addr`]).
    pub async fn bind(addr: SocketAddr) -> anyhow::Result<Self> {
        let acceptor = TcpListener::bind(addr.to_string())
            .into_acceptor()
            .await
            .with_context(|| format!("binding {addr}"))?;
        let local_addr = *acceptor
            .local_addr()
            .first()
            .and_then(|addr| addr.as_socket_addr())
            .context("listener has no socket address")?;
        Ok(Self {
            acceptor,
            local_addr,
        })
    }

    /// The bound address, with the port the system chose for port 0.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves `endpoint` on a task until `stop` fires; requests still open then get `grace` to
    /// finish.
    pub fn serve<E>(self, endpoint: E, stop: CancellationToken, grace: Duration) -> Serving
    where
        E: IntoEndpoint + Send + 'static,
        E::Endpoint: 'static,
    {
        let task = tokio::spawn(async move {
            poem::Server::new_with_acceptor(self.acceptor)
                .run_with_graceful_shutdown(endpoint, stop.cancelled_owned(), Some(grace))
                .await
        });
        Serving { task }
    }
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
