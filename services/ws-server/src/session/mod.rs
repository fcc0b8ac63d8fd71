//! One WebSocket connection.
//!
//! Two tasks share a [`Closer`]: the reader parses commands and answers them, the writer drains
//! the bounded outbound queue (feeding every waiting frame, then flushing once), sends pings and
//! finally the close frame. Whoever decides the connection ends (the hub for a slow consumer,
//! the reader for an oversized frame or an idle client, shutdown) sets the close code once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chat_core::channel::ChannelName;
use chat_core::message::RejectReason;
use futures::stream::SplitStream;
use futures::StreamExt;
use poem::web::websocket::{Message, WebSocketStream};
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::admission::{Admission, Client, Operation};
use crate::auth::gate::{Gate, Principal};
use crate::auth::Right;
use crate::history::{FirstPage, History, READ_PAGE};
use crate::hub::{GoLive, Hub, HubError, Subscription};
use crate::metrics::Metrics;
use crate::outbox::{Closer, Frame, Outbox, MAX_FRAME_BYTES};
use crate::protocol::{self, Command, ErrorCode, Limits, ProtocolError, ServerFrame, Start};
use crate::publish::{KafkaPublisher, Publication};
use crate::recent::JsonList;

mod access;
pub mod limits;
mod writer;

use limits::{ClientLimits, Kind, Rates, Verdict, CLOSE_RATE_LIMITED};

use writer::Writer;

/// Going away: the server shuts down.
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// A frame or message above the size limit.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// The token is missing, invalid or expired: fetch a new one before reconnecting.
pub const CLOSE_UNAUTHORIZED: u16 = 4001;
/// How long a subscribe waits for the Redis SUBSCRIBE confirmation.
const HUB_WAIT: Duration = Duration::from_secs(5);
/// Catch-up reads in a row that find nothing new before a subscribe gives up (at least 0.5 s).
const MAX_STUCK_CATCH_UPS: u32 = 100;

/// What every session needs; one per application.
pub struct SessionContext {
    pub gate: Gate,
    pub hub: Hub,
    pub history: History,
    pub publisher: KafkaPublisher,
    pub metrics: Metrics,
    pub limits: Limits,
    pub max_subscriptions: usize,
    /// Outbound bytes, write timeout, command rates, publishes in flight.
    pub client_limits: ClientLimits,
    /// The per-client read and write rates, shared with REST.
    pub admission: Arc<Admission>,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    /// Cancelled when the drain period after SIGTERM is over: every socket closes with 1001.
    pub close_all: CancellationToken,
}

/// Runs one connection to its end; `ip` is the client's address.
pub async fn run(
    socket: WebSocketStream,
    ctx: Arc<SessionContext>,
    principal: Principal,
    ip: IpAddr,
) {
    ctx.metrics.connections.inc();
    let (sink, stream) = socket.split();
    let closer = Closer::default();
    let limits = &ctx.client_limits;
    let (outbox, inbox) = Outbox::new(limits.ws_outbound_queue_bytes, closer.clone());
    let writer = Writer {
        sink,
        inbox,
        closer,
        ping_interval: ctx.ping_interval,
        write_timeout: limits.write_timeout(),
    };
    let writer = tokio::spawn(writer.run());
    let mut session = Session {
        outbox,
        subscriptions: HashMap::new(),
        rates: limits.rates(),
        client: ctx.admission.ws_client(ip, principal.user_id()),
        ip,
        in_flight: OnceLock::new(),
        ctx: Arc::clone(&ctx),
        principal,
    };
    session.read_loop(stream).await;
    ctx.metrics
        .subscriptions
        .sub(session.subscriptions.len() as i64);
    drop(session);
    let _ = writer.await;
    ctx.metrics.connections.dec();
}

struct Session {
    outbox: Outbox,
    subscriptions: HashMap<ChannelName, Subscription>,
    ctx: Arc<SessionContext>,
    /// Who is on the other end; replaced by an `auth` command.
    principal: Principal,
    rates: Rates,
    /// Whom the shared read and write rates count: the user, else the address (set again when
    /// an `auth` changes the principal).
    client: Client,
    /// The client's address: it cools down after a 4029.
    ip: IpAddr,
    /// Publishes waiting for Kafka's acknowledgement, at most `WS_PUBLISHES_IN_FLIGHT`; made at
    /// the first publish (most connections never publish).
    in_flight: OnceLock<Arc<Semaphore>>,
}

impl Session {
    async fn read_loop(&mut self, mut stream: SplitStream<WebSocketStream>) {
        let closer = self.outbox.closer.clone();
        let close_all = self.ctx.close_all.clone();
        loop {
            let expiry = self.expiry();
            let next = tokio::select! {
                biased;
                () = close_all.cancelled() => {
                    closer.close(CLOSE_GOING_AWAY, "server shutting down");
                    return;
                }
                _ = closer.closed() => return,
                () = expiry => {
                    // Boxed, like the refresh: rare, and idle connections should not carry it.
                    Box::pin(self.expire()).await;
                    return;
                }
                next = tokio::time::timeout(self.ctx.idle_timeout, stream.next()) => next,
            };
            let message = match next {
                Err(_elapsed) => {
                    closer.close(CLOSE_GOING_AWAY, "idle timeout");
                    return;
                }
                Ok(None) => break,
                Ok(Some(Err(err))) => {
                    let text = err.to_string();
                    if text.contains("Space limit exceeded") || text.contains("too long") {
                        closer.close(CLOSE_TOO_BIG, "frame too big");
                        return;
                    }
                    tracing::debug!(error = %err, "websocket read failed");
                    break;
                }
                Ok(Some(Ok(message))) => message,
            };
            match message {
                Message::Text(text) => {
                    tokio::select! {
                        biased;
                        _ = closer.closed() => return,
                        () = close_all.cancelled() => {
                            closer.close(CLOSE_GOING_AWAY, "server shutting down");
                            return;
                        }
                        // Boxed: a command's future (history pages, a publish waiting for
                        // room) would otherwise be reserved in every idle connection's task.
                        () = Box::pin(self.handle(&text)) => {}
                    }
                }
                Message::Binary(_) => {
                    self.reply_error(ProtocolError::new(
                        ErrorCode::BinaryNotSupported,
                        "frames are JSON text; binary frames are not supported",
                    ))
                    .await;
                }
                Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) => {}
            }
        }
        closer.close(1000, "");
    }

    async fn handle(&mut self, text: &str) {
        let parsed = protocol::parse(text, self.ctx.limits);
        let kind = match &parsed {
            Ok(request) if matches!(request.command, Command::Publish(_)) => Kind::Publish,
            _ => Kind::Command,
        };
        let operation = match &parsed {
            Ok(request) => match request.command {
                Command::Publish(_) => Some(Operation::Write),
                Command::Subscribe { .. } => Some(Operation::Read),
                _ => None,
            },
            Err(_) => None,
        };
        match self.check_rates(kind, operation) {
            Verdict::Allowed => {}
            Verdict::Limited => {
                let id = parsed.ok().and_then(|request| request.id);
                let err = ProtocolError::new(
                    ErrorCode::RateLimited,
                    match kind {
                        Kind::Publish => {
                            "too many publishes; slow down (WS_PUBLISH_RATE, CLIENT_WRITES_PER_SEC)"
                        }
                        Kind::Command => {
                            "too many commands; slow down (WS_COMMAND_RATE, CLIENT_READS_PER_SEC)"
                        }
                    },
                );
                return self.reply_error(err.reply_to(id)).await;
            }
            Verdict::Abusive => {
                self.ctx.metrics.rate_limit_closes.inc();
                self.ctx.admission.cool_down(self.ip);
                self.outbox
                    .closer
                    .close(CLOSE_RATE_LIMITED, "rate limit exceeded");
                return;
            }
        }
        let request = match parsed {
            Ok(request) => request,
            Err(err) => return self.reply_error(err).await,
        };
        // Every command is the root of its own trace (a connection lives too long for one).
        let (name, command) = match &request.command {
            Command::Subscribe { .. } => ("WS subscribe", "subscribe"),
            Command::Unsubscribe { .. } => ("WS unsubscribe", "unsubscribe"),
            Command::Publish(_) => ("WS publish", "publish"),
            Command::Auth { .. } => ("WS auth", "auth"),
            Command::Ping => ("WS ping", "ping"),
        };
        let span = tracing::info_span!(
            parent: None,
            "ws.command",
            otel.name = name,
            otel.kind = "server",
            ws.command = command,
        );
        self.execute(request).instrument(span).await;
    }

    /// The connection's bucket for the command, then, for a `publish` or `subscribe`, the
    /// client's write or read rate (shared by its connections and its REST requests). A
    /// refusal by either is a strike.
    fn check_rates(&self, kind: Kind, operation: Option<Operation>) -> Verdict {
        let verdict = self.rates.check(kind);
        let Some(operation) = operation.filter(|_| verdict == Verdict::Allowed) else {
            return verdict;
        };
        if self.ctx.admission.admit_command(&self.client, operation) {
            Verdict::Allowed
        } else {
            self.rates.strike()
        }
    }

    async fn execute(&mut self, request: protocol::Request) {
        let id = request.id;
        let result = match request.command {
            Command::Subscribe { channel, start } => {
                self.subscribe(channel, start, id.as_ref()).await
            }
            Command::Unsubscribe { channel } => {
                if self.unsubscribe(&channel, None, id.as_ref()).await {
                    Ok(())
                } else {
                    Err(ProtocolError::new(
                        ErrorCode::NotSubscribed,
                        format!("not subscribed to {channel}"),
                    ))
                }
            }
            Command::Publish(draft) => {
                let publication = self
                    .authorize(&draft.channel, Right::Publish)
                    .and_then(|()| {
                        draft.by(&self.principal).map_err(|reason| {
                            let code = match reason {
                                RejectReason::MissingField(_) => ErrorCode::MissingField,
                                _ => ErrorCode::InvalidMessage,
                            };
                            ProtocolError::new(code, reason.to_string())
                        })
                    });
                match publication {
                    Ok(publication) => {
                        self.publish(publication, id.clone()).await;
                        Ok(())
                    }
                    Err(err) => Err(err),
                }
            }
            // Boxed: verifying may fetch a JWKS (a large future), and every connection's task
            // would otherwise reserve room for it while idle.
            Command::Auth { token } => Box::pin(self.reauthenticate(&token, id.as_ref())).await,
            Command::Ping => {
                self.send(
                    ServerFrame::Pong {
                        reply_to: id.as_ref(),
                    }
                    .to_json(),
                )
                .await;
                Ok(())
            }
        };
        if let Err(err) = result {
            self.reply_error(err.reply_to(id)).await;
        }
    }

    /// Gap-free subscribe: registered with the hub first (buffering), then history, then the
    /// buffered messages above the last one sent, then live.
    async fn subscribe(
        &mut self,
        channel: ChannelName,
        start: Start,
        id: Option<&Value>,
    ) -> Result<(), ProtocolError> {
        self.authorize(&channel, Right::Read)?;
        if self.subscriptions.contains_key(&channel) {
            return Err(ProtocolError::new(
                ErrorCode::AlreadySubscribed,
                format!("already subscribed to {channel}"),
            ));
        }
        if self.subscriptions.len() >= self.ctx.max_subscriptions {
            return Err(ProtocolError::new(
                ErrorCode::TooManySubscriptions,
                format!(
                    "a connection holds at most {} subscriptions",
                    self.ctx.max_subscriptions
                ),
            ));
        }
        let unavailable = |what: &str| {
            ProtocolError::new(
                ErrorCode::HistoryUnavailable,
                format!("{what} is unavailable; retry later"),
            )
        };
        let newest = match start {
            Start::Newest(limit) => usize::try_from(limit).ok(),
            Start::Since(_) => None,
        };
        let (subscription, snapshot) = self
            .ctx
            .hub
            .subscribe(&channel, self.outbox.clone(), HUB_WAIT, newest)
            .await
            .map_err(|err| match err {
                HubError::Full(_) => ProtocolError::new(
                    ErrorCode::ServerBusy,
                    format!("{err} (HUB_MAX_CHANNELS); retry later"),
                ),
                HubError::Unavailable => unavailable("the live stream"),
            })?;
        let FirstPage {
            messages,
            last_seq: cursor,
            more,
            from_store,
        } = self
            .ctx
            .history
            .first_page(&channel, start, snapshot)
            .await
            .map_err(|_| unavailable("history"))?;
        // No frame above MAX_FRAME_BYTES: what does not fit in `subscribed` follows as
        // `message` frames, and `last_seq` is then the last message in `subscribed`.
        let around = ServerFrame::Subscribed {
            channel: &channel,
            messages: JsonList(&[]),
            last_seq: cursor,
            reply_to: id,
        };
        let budget = MAX_FRAME_BYTES.saturating_sub(around.to_json().len() + 32);
        let (head, tail) = messages.split_at(crate::history::fitting(messages.iter(), budget));
        let frame = ServerFrame::Subscribed {
            channel: &channel,
            messages: JsonList(head),
            last_seq: match (head.last(), tail.is_empty()) {
                (Some(last), false) => last.seq,
                _ => cursor,
            },
            reply_to: id,
        };
        self.send(frame.to_json()).await;
        for message in tail {
            let frame = ServerFrame::Message {
                channel: &channel,
                message: &message.json,
            };
            self.send(frame.to_json()).await;
        }
        let history = if from_store { messages } else { Vec::new() };
        match self
            .go_live(&subscription, &channel, cursor, more, history)
            .await
        {
            Ok(true) => {
                self.subscriptions.insert(channel, subscription);
                self.ctx.metrics.subscriptions.inc();
            }
            Ok(false) => {}
            Err(err) => {
                // `subscribed` is out: an error would leave the client believing it is
                // subscribed. The subscription ends like any the server ends, with a reason;
                // the client resumes with `since` = the last seq it received.
                tracing::warn!(%channel, error = %err.message, "history read failed during a subscribe");
                drop(subscription);
                let frame = ServerFrame::Unsubscribed {
                    channel: &channel,
                    reason: Some("history_unavailable"),
                    reply_to: None,
                };
                self.send(frame.to_json()).await;
            }
        }
        Ok(())
    }

    /// After `subscribed`: the rest of the history, then the hub's buffered messages above it.
    /// True once live; false when the hub closed the subscription meanwhile.
    async fn go_live(
        &self,
        subscription: &Subscription,
        channel: &ChannelName,
        mut cursor: i64,
        more: bool,
        mut history: Vec<crate::recent::Shared>,
    ) -> Result<bool, ProtocolError> {
        if more {
            cursor = self.catch_up(channel, cursor).await?;
        }
        let mut stuck = 0;
        loop {
            let outcome = self.ctx.hub.go_live(subscription, cursor, &history);
            history = Vec::new();
            match outcome {
                GoLive::Live => return Ok(true),
                GoLive::Closed => return Ok(false),
                GoLive::CatchUp => {
                    let before = cursor;
                    cursor = self.catch_up(channel, cursor).await?;
                    if cursor != before {
                        stuck = 0;
                        continue;
                    }
                    // The hub is ahead of the stored log and the log does not grow: it was
                    // restored from an older backup, or something else published on the Redis
                    // prefix. Give up instead of reading PostgreSQL forever.
                    stuck += 1;
                    if stuck == MAX_STUCK_CATCH_UPS {
                        tracing::error!(%channel, log.last_seq = cursor, "the live stream is ahead of the stored log");
                        return Err(ProtocolError::new(
                            ErrorCode::HistoryUnavailable,
                            "the stored history is behind the live stream; retry later",
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }

    /// Ends a subscription (the client asked, or `reason` says why the server did); false when
    /// there was none.
    async fn unsubscribe(
        &mut self,
        channel: &ChannelName,
        reason: Option<&str>,
        reply_to: Option<&Value>,
    ) -> bool {
        let Some(subscription) = self.subscriptions.remove(channel) else {
            return false;
        };
        drop(subscription);
        self.ctx.metrics.subscriptions.dec();
        let frame = ServerFrame::Unsubscribed {
            channel,
            reason,
            reply_to,
        };
        self.send(frame.to_json()).await;
        true
    }

    /// Sends every stored message after `cursor` as `message` frames, a page at a time.
    /// Returns the new cursor.
    async fn catch_up(&self, channel: &ChannelName, mut cursor: i64) -> Result<i64, ProtocolError> {
        loop {
            let page = self.ctx.history.after(channel, cursor).await.map_err(|_| {
                ProtocolError::new(
                    ErrorCode::HistoryUnavailable,
                    "history is unavailable; resubscribe with since",
                )
            })?;
            for message in &page {
                self.send(protocol::message_frame(message).1).await;
                cursor = message.seq;
            }
            if (page.len() as i64) < READ_PAGE {
                return Ok(cursor);
            }
        }
    }

    /// Produces the message on a task of its own and answers when Kafka did; waits first while
    /// the connection has `WS_PUBLISHES_IN_FLIGHT` publishes unanswered.
    async fn publish(&self, publication: Publication, id: Option<Value>) {
        let in_flight = self.in_flight.get_or_init(|| {
            let most = self.ctx.client_limits.ws_publishes_in_flight;
            Arc::new(Semaphore::new(most.max(1)))
        });
        let Ok(in_flight) = Arc::clone(in_flight).acquire_owned().await else {
            return;
        };
        let publisher = self.ctx.publisher.clone();
        let metrics = self.ctx.metrics.clone();
        let outbox = self.outbox.clone();
        tokio::spawn(async move {
            let frame = match publisher.publish(&publication).await {
                Ok(message_id) => {
                    metrics.published.with_label_values(&["ok"]).inc();
                    ServerFrame::Published {
                        channel: &publication.channel,
                        id: message_id.to_string(),
                        reply_to: id.as_ref(),
                    }
                    .to_json()
                }
                Err(err) => {
                    tracing::warn!(channel = %publication.channel, error = %err, "publish failed");
                    metrics.published.with_label_values(&["failed"]).inc();
                    metrics
                        .protocol_errors
                        .with_label_values(&["publish_failed"])
                        .inc();
                    ProtocolError::new(
                        ErrorCode::PublishFailed,
                        "kafka did not acknowledge the message; retry",
                    )
                    .reply_to(id)
                    .to_frame()
                }
            };
            drop(in_flight);
            outbox.push(frame.into()).await;
        }.in_current_span());
    }

    async fn reply_error(&self, err: ProtocolError) {
        let code = serde_json::to_value(err.code)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        self.ctx
            .metrics
            .protocol_errors
            .with_label_values(&[&code])
            .inc();
        self.send(err.to_frame()).await;
    }

    /// Queues a reply. Replies wait for room (they slow down only this client's own commands).
    async fn send(&self, frame: String) {
        self.outbox.push(Frame::from(frame)).await;
    }
}
