//! One accepted connection: hyper serves it with the poem endpoint, and the connection's
//! [`Deadline`] closes it when a request head or the next request is overdue.
//!
//! The deadline learns what happens from three places: the socket ([`Watched`]: bytes arrived),
//! the service (a request head arrived; a 101 switched protocols) and the response body
//! ([`Tracked`]: written in full, or dropped).

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use poem::endpoint::BoxEndpoint;
use poem::http::uri::Scheme;
use poem::http::{StatusCode, Version};
use poem::web::{LocalAddr, RemoteAddr};
use poem::{Addr, Endpoint};
use prometheus::IntCounterVec;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::deadline::{Deadline, HttpTimeouts, Waiting};

/// What the socket wrapper must do on a read, readable without the lock.
const HINT_NONE: u8 = 0;
const HINT_IDLE: u8 = 1;
const HINT_UPGRADED: u8 = 2;

/// The deadline of one connection, shared by its task, its socket and its responses.
struct Clock {
    deadline: Mutex<Deadline>,
    /// Wakes the connection's task when the deadline moved.
    moved: Notify,
    hint: AtomicU8,
}

impl Clock {
    fn new(timeouts: HttpTimeouts) -> Arc<Self> {
        Arc::new(Self {
            deadline: Mutex::new(Deadline::new(timeouts, Instant::now())),
            moved: Notify::new(),
            hint: AtomicU8::new(HINT_NONE),
        })
    }

    fn update(&self, change: impl FnOnce(&mut Deadline)) {
        let mut deadline = self.deadline.lock().expect("deadline lock");
        change(&mut deadline);
        let hint = if deadline.is_upgraded() {
            HINT_UPGRADED
        } else if deadline.waits_for_bytes() {
            HINT_IDLE
        } else {
            HINT_NONE
        };
        self.hint.store(hint, Ordering::Relaxed);
        drop(deadline);
        self.moved.notify_one();
    }

    fn due(&self) -> Option<(Instant, Waiting)> {
        self.deadline.lock().expect("deadline lock").due()
    }

    /// Resolves once the deadline has passed without being moved.
    async fn overdue(&self) -> Waiting {
        loop {
            // A move between reading the deadline and waiting leaves a permit in `moved`.
            match self.due() {
                None => self.moved.notified().await,
                Some((until, waiting)) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => {
                            if self.due() == Some((until, waiting)) {
                                return waiting;
                            }
                        }
                        _ = self.moved.notified() => {}
                    }
                }
            }
        }
    }
}

/// Everything a connection's task needs besides its socket.
pub(super) struct Connections {
    endpoint: BoxEndpoint<'static>,
    builder: auto::Builder<TokioExecutor>,
    timeouts: HttpTimeouts,
    local_addr: std::net::SocketAddr,
    timed_out: Option<IntCounterVec>,
}

impl Connections {
    pub fn new(
        endpoint: BoxEndpoint<'static>,
        timeouts: HttpTimeouts,
        local_addr: std::net::SocketAddr,
        timed_out: Option<IntCounterVec>,
    ) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // The connection's own deadline replaces hyper's header timer (which needs a timer
        // and would also cut kept-alive connections at the header timeout).
        builder.http1().header_read_timeout(None);
        // poem's defaults for HTTP/2 (h2c with prior knowledge).
        builder
            .http2()
            .max_pending_accept_reset_streams(20)
            .max_header_list_size(16 * 1024);
        Self {
            endpoint,
            builder,
            timeouts,
            local_addr,
            timed_out,
        }
    }

    /// Serves one connection until it ends, is overdue, or `force` fires; on `stop`, lets the
    /// requests in flight finish (graceful shutdown) and closes it.
    pub async fn serve(
        self: Arc<Self>,
        socket: tokio::net::TcpStream,
        peer: std::net::SocketAddr,
        stop: CancellationToken,
        force: CancellationToken,
    ) {
        let clock = Clock::new(self.timeouts);
        let io = TokioIo::new(Watched {
            inner: socket,
            clock: Some(Arc::clone(&clock)),
        });
        let service = {
            let connections = Arc::clone(&self);
            let clock = Arc::clone(&clock);
            hyper::service::service_fn(move |request| {
                let connections = Arc::clone(&connections);
                let clock = Arc::clone(&clock);
                async move { Ok::<_, Infallible>(connections.respond(request, peer, clock).await) }
            })
        };
        let connection = self.builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(connection);
        let overdue = clock.overdue();
        tokio::pin!(overdue);
        let mut stopping = false;
        loop {
            tokio::select! {
                _ = connection.as_mut() => return,
                waiting = overdue.as_mut() => {
                    let waiting = waiting.label();
                    tracing::debug!(peer = %peer, waiting, "closing an overdue connection");
                    if let Some(counter) = &self.timed_out {
                        counter.with_label_values(&[waiting]).inc();
                    }
                    return;
                }
                _ = stop.cancelled(), if !stopping => {
                    stopping = true;
                    connection.as_mut().graceful_shutdown();
                }
                _ = force.cancelled() => return,
            }
        }
    }

    async fn respond(
        &self,
        request: poem::http::Request<Incoming>,
        peer: std::net::SocketAddr,
        clock: Arc<Clock>,
    ) -> poem::http::Response<Tracked> {
        let multiplexed = request.version() == Version::HTTP_2;
        clock.update(|deadline| deadline.request_started(multiplexed));
        // Finishes the request on the clock even if this future is dropped (an HTTP/2 reset).
        let mut in_flight = Tracked {
            body: ResponseBody::default(),
            clock: Some(clock),
        };
        let request = poem::Request::from((
            request,
            LocalAddr(Addr::SocketAddr(self.local_addr)),
            RemoteAddr(Addr::SocketAddr(peer)),
            Scheme::HTTP,
        ));
        let response = self.endpoint.get_response(request).await;
        let clock = in_flight.clock.take();
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(clock) = &clock {
                clock.update(Deadline::upgraded);
            }
        }
        let response: poem::http::Response<ResponseBody> = response.into();
        response.map(|body| Tracked { body, clock })
    }
}

/// poem's response body, as hyper gets it.
type ResponseBody = http_body_util::combinators::BoxBody<Bytes, io::Error>;

/// A response body that tells the clock when it is done (written in full or dropped); also
/// the guard of a request in flight, before its response exists.
struct Tracked {
    body: ResponseBody,
    clock: Option<Arc<Clock>>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(clock) = self.clock.take() {
            clock.update(|deadline| deadline.response_finished(Instant::now()));
        }
    }
}

impl HttpBody for Tracked {
    type Data = <ResponseBody as HttpBody>::Data;
    type Error = <ResponseBody as HttpBody>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The socket, telling the clock when bytes arrive on an idle kept-alive connection. After an
/// upgrade it lets go of the clock (a WebSocket keeps this wrapper for its whole life).
struct Watched {
    inner: tokio::net::TcpStream,
    clock: Option<Arc<Clock>>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Some(clock) = &self.clock {
            match clock.hint.load(Ordering::Relaxed) {
                HINT_IDLE if buf.filled().len() > before => {
                    clock.update(|deadline| deadline.received(Instant::now()));
                }
                HINT_UPGRADED => self.clock = None,
                _ => {}
            }
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
