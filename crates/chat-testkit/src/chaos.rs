//! A TCP proxy in front of a real dependency, with network faults on demand:
//!
//! - [`ChaosProxy::cut`] drops every open connection and refuses new ones;
//! - [`ChaosProxy::stall`] keeps connections open but forwards nothing (a partition that TCP
//!   does not notice: the peers wait until their own timeouts);
//! - [`ChaosProxy::slow`] forwards every chunk after a delay (a slow link);
//! - [`ChaosProxy::restore`] ends the fault: held bytes flow again, new connections are taken.
//!
//! The dependency looks broken to whatever connects through the proxy, while everything else
//! sharing the server is unaffected.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything.
    None,
    /// Connections dropped, new ones refused.
    Cut,
    /// Connections held open, nothing forwarded.
    Stall,
    /// Each chunk forwarded after this delay.
    Slow(Duration),
}

#[derive(Debug)]
pub struct ChaosProxy {
    addr: SocketAddr,
    fault: watch::Sender<Fault>,
}

impl ChaosProxy {
    /// A proxy on an ephemeral loopback port.
    pub async fn start(target: SocketAddr) -> Self {
        Self::bind(target)
    }

    /// [`ChaosProxy::start`] for code that cannot await (e.g. a settings closure); it must run
    /// inside a Tokio runtime.
    pub fn bind(target: SocketAddr) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        listener.set_nonblocking(true).expect("non-blocking proxy");
        Self::serve(
            TcpListener::from_std(listener).expect("proxy listener"),
            target,
        )
    }

    /// A proxy on a given address (e.g. the port a Kafka listener advertises).
    pub async fn start_on(listen: SocketAddr, target: SocketAddr) -> std::io::Result<Self> {
        Ok(Self::serve(TcpListener::bind(listen).await?, target))
    }

    fn serve(listener: TcpListener, target: SocketAddr) -> Self {
        let addr = listener.local_addr().expect("proxy address");
        let (fault, _) = watch::channel(Fault::None);
        let accept_fault = fault.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *accept_fault.borrow() == Fault::Cut {
                    drop(client);
                    continue;
                }
                let fault = accept_fault.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    relay(client, server, fault).await;
                });
            }
        });
        Self { addr, fault }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The fault in force.
    pub fn fault(&self) -> Fault {
        *self.fault.borrow()
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.fault.send_replace(Fault::Cut);
    }

    /// Holds every connection open and forwards nothing.
    pub fn stall(&self) {
        self.fault.send_replace(Fault::Stall);
    }

    /// Forwards each chunk after `delay`.
    pub fn slow(&self, delay: Duration) {
        self.fault.send_replace(Fault::Slow(delay));
    }

    /// Ends any fault.
    pub fn restore(&self) {
        self.fault.send_replace(Fault::None);
    }
}

/// Copies both ways until either side closes or the proxy cuts.
async fn relay(client: TcpStream, server: TcpStream, fault: watch::Receiver<Fault>) {
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let mut cut = fault.clone();
    tokio::select! {
        _ = pump(client_read, server_write, fault.clone()) => {}
        _ = pump(server_read, client_write, fault) => {}
        _ = cut.wait_for(|f| *f == Fault::Cut) => {}
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut fault: watch::Receiver<Fault>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Hold the chunk while stalled; delay it while slow.
        loop {
            let now = *fault.borrow_and_update();
            match now {
                Fault::Stall => {
                    if fault.changed().await.is_err() {
                        return;
                    }
                }
                Fault::Slow(delay) => {
                    tokio::time::sleep(delay).await;
                    break;
                }
                Fault::None | Fault::Cut => break,
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// The `host:port` of a URL such as `postgres://u:p@127.0.0.1:5432/db`, resolved.
pub fn url_addr(url: &str) -> SocketAddr {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let host_port = after_scheme
        .rsplit_once('@')
        .map_or(after_scheme, |(_, rest)| rest);
    let host_port = host_port.split(['/', '?']).next().unwrap_or(host_port);
    let host_port = host_port.replace("localhost", "127.0.0.1");
    host_port
        .parse()
        .expect("URL host is an IP address and port")
}

/// The URL with its `host:port` replaced by `addr`.
pub fn url_via(url: &str, addr: SocketAddr) -> String {
    let target = url_addr(url);
    let original = url
        .split_once("://")
        .map(|(_, rest)| rest.rsplit_once('@').map_or(rest, |(_, r)| r))
        .and_then(|rest| rest.split(['/', '?']).next())
        .unwrap_or_default()
        .to_owned();
    debug_assert!(original.ends_with(&target.port().to_string()));
    url.replacen(&original, &addr.to_string(), 1)
}
