//! `abuser`: the hostile clients of `scripts/bench-abuse`, all at once for a while, from their own
//! source addresses (so per-IP limits hit them and not the normal clients):
//!
//! - `--flood N`: connections publishing as fast as the server answers (64 unanswered at most,
//!   so the flood costs the abuser no more CPU than the server);
//! - `--loops N`: connections looping subscribe (last 100) / unsubscribe as fast as they can, on
//!   the victims' channels and on fresh random names (the hub's channel cap);
//! - `--slowloris N`: TCP sockets that send a request head one byte every few seconds and never
//!   finish it; reopened when the server closes them;
//! - `--stalled N`: connections that subscribe to every victim channel with the last 1,000 and
//!   never read a byte; reopened when the server drops them.
//!
//! Prints what each kind achieved and how the server answered (refusals, closes by code).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use futures::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

#[derive(Debug, Parser)]
#[command(
    name = "abuser",
    about = "Hostile WebSocket and HTTP clients, for bench-abuse"
)]
struct Args {
    /// Address of the server (host:port).
    #[arg(long)]
    addr: SocketAddr,
    /// Seconds the abuse lasts.
    #[arg(long, default_value_t = 30.0)]
    secs: f64,
    /// Victim channels are `<prefix><index, 2 digits>`.
    #[arg(long, default_value = "#bench-")]
    channel_prefix: String,
    #[arg(long, default_value_t = 10)]
    channels: usize,
    #[arg(long, default_value_t = 1)]
    flood: usize,
    #[arg(long, default_value_t = 4)]
    loops: usize,
    #[arg(long, default_value_t = 1000)]
    slowloris: usize,
    #[arg(long, default_value_t = 2)]
    stalled: usize,
    /// Source addresses 127.0.0.<first> … <first + sources - 1>, used in turn.
    #[arg(long, default_value_t = 200)]
    bind_first: u8,
    #[arg(long, default_value_t = 4)]
    sources: u8,
}

/// What happened, by name: counts.
#[derive(Default, Clone)]
struct Tally(Arc<Mutex<BTreeMap<String, u64>>>);

impl Tally {
    fn add(&self, name: impl Into<String>, n: u64) {
        *self.0.lock().unwrap().entry(name.into()).or_default() += n;
    }
}

struct Ctx {
    args: Args,
    tally: Tally,
    until: Instant,
}

impl Ctx {
    fn source(&self, i: usize) -> IpAddr {
        let last = self.args.bind_first as usize + i % self.args.sources.max(1) as usize;
        IpAddr::from([127, 0, 0, last.min(254) as u8])
    }

    async fn tcp(&self, i: usize, recv_buffer: Option<u32>) -> anyhow::Result<TcpStream> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(self.source(i), 0))?;
        if let Some(bytes) = recv_buffer {
            socket.set_recv_buffer_size(bytes)?;
        }
        Ok(socket.connect(self.args.addr).await?)
    }

    async fn websocket(
        &self,
        i: usize,
        recv_buffer: Option<u32>,
    ) -> anyhow::Result<WebSocketStream<MaybeTlsStream<TcpStream>>> {
        let stream = self.tcp(i, recv_buffer).await?;
        let url = format!("ws://{}/ws", self.args.addr);
        match tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream)).await {
            Ok((socket, _)) => Ok(socket),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                anyhow::bail!("refused {}", response.status().as_u16())
            }
            Err(err) => Err(err.into()),
        }
    }

    fn victim(&self, i: usize) -> String {
        format!(
            "{}{:02}",
            self.args.channel_prefix,
            i % self.args.channels.max(1)
        )
    }

    fn over(&self) -> bool {
        Instant::now() >= self.until
    }
}

/// Sends a command; false when the connection is gone.
async fn send_json(
    socket: &mut WebSocketStream<MaybeTlsStream<TcpStream>>,
    command: &serde_json::Value,
) -> bool {
    socket
        .send(Message::text(command.to_string()))
        .await
        .is_ok()
}

/// Counts a frame from the server: `type`, or `error:<code>`.
fn kind(text: &str) -> String {
    let frame: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
    match frame["type"].as_str() {
        Some("error") => format!("error:{}", frame["code"].as_str().unwrap_or("?")),
        Some(other) => other.to_owned(),
        None => "?".to_owned(),
    }
}

/// Runs `body` on fresh connections until the time is over, counting how each ended.
async fn connection_loop<F, Fut>(ctx: Arc<Ctx>, name: &'static str, i: usize, body: F)
where
    F: Fn(Arc<Ctx>, WebSocketStream<MaybeTlsStream<TcpStream>>) -> Fut,
    Fut: std::future::Future<Output = String>,
{
    let recv_buffer = (name == "stalled").then_some(4096);
    while !ctx.over() {
        match ctx.websocket(i, recv_buffer).await {
            Ok(socket) => {
                ctx.tally.add(format!("{name}: connected"), 1);
                let ended =
                    tokio::time::timeout_at(ctx.until, body(Arc::clone(&ctx), socket)).await;
                if let Ok(how) = ended {
                    ctx.tally.add(format!("{name}: ended {how}"), 1);
                }
            }
            Err(err) => {
                ctx.tally.add(format!("{name}: {err:#}"), 1);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// How a connection ended, from the frame that ended it.
fn ending(message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) -> String {
    match message {
        Some(Ok(Message::Close(Some(frame)))) => format!("close {}", u16::from(frame.code)),
        Some(Ok(Message::Close(None))) => "close".to_owned(),
        Some(Err(_)) | None => "dropped".to_owned(),
        Some(Ok(_)) => "?".to_owned(),
    }
}

async fn flood(ctx: Arc<Ctx>, socket: WebSocketStream<MaybeTlsStream<TcpStream>>) -> String {
    let (mut sink, mut stream) = socket.split();
    let channel = ctx.victim(0);
    let unanswered = tokio::sync::Semaphore::new(64);
    let writer = async {
        let mut id = 0u64;
        loop {
            if let Ok(permit) = unanswered.acquire().await {
                permit.forget();
            }
            id += 1;
            let command = serde_json::json!({"command": "publish", "channel": channel,
                "author": "mallory", "text": "spam", "id": id});
            if sink.send(Message::text(command.to_string())).await.is_err() {
                return std::future::pending::<()>().await;
            }
            ctx.tally.add("flood: publishes sent", 1);
        }
    };
    let reader = async {
        loop {
            match stream.next().await {
                Some(Ok(Message::Text(text))) => {
                    ctx.tally.add(format!("flood: {}", kind(&text)), 1);
                    unanswered.add_permits(1);
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => return ending(other),
            }
        }
    };
    tokio::select! {
        () = writer => unreachable!(),
        how = reader => how,
    }
}

async fn subscribe_loop(
    ctx: Arc<Ctx>,
    mut socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
) -> String {
    let mut round = 0usize;
    loop {
        round += 1;
        let channel = if round.is_multiple_of(2) {
            ctx.victim(round)
        } else {
            format!("#junk-{:016x}", rand_u64())
        };
        for command in [
            serde_json::json!({"command": "subscribe", "channel": channel, "limit": 100}),
            serde_json::json!({"command": "unsubscribe", "channel": channel}),
        ] {
            if !send_json(&mut socket, &command).await {
                return "dropped".to_owned();
            }
            // Wait for the reply (skipping live messages) before the next command.
            loop {
                match socket.next().await {
                    Some(Ok(Message::Text(text))) => {
                        let kind = kind(&text);
                        if kind == "message" {
                            continue;
                        }
                        ctx.tally.add(format!("loops: {kind}"), 1);
                        break;
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    other => return ending(other),
                }
            }
        }
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64,
    );
    hasher.finish()
}

async fn stalled(ctx: Arc<Ctx>, mut socket: WebSocketStream<MaybeTlsStream<TcpStream>>) -> String {
    for i in 0..ctx.args.channels {
        let command =
            serde_json::json!({"command": "subscribe", "channel": ctx.victim(i), "limit": 1000});
        if !send_json(&mut socket, &command).await {
            return "dropped".to_owned();
        }
    }
    // Never read; find out when the server gave up by writing a ping now and then.
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let ping = serde_json::json!({"command": "ping"}).to_string();
        let sent =
            tokio::time::timeout(Duration::from_millis(500), socket.send(Message::text(ping)))
                .await;
        if let Ok(Err(_)) = sent {
            return "dropped".to_owned();
        }
    }
}

async fn slowloris(ctx: Arc<Ctx>, i: usize) {
    let head = format!("GET / HTTP/1.1\r\nHost: {}\r\nX-Slow: ", ctx.args.addr);
    while !ctx.over() {
        let Ok(mut stream) = ctx.tcp(i, None).await else {
            ctx.tally.add("slowloris: connect failed", 1);
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        ctx.tally.add("slowloris: connected", 1);
        let opened = Instant::now();
        let mut written = stream.write_all(head.as_bytes()).await.is_ok();
        while written && !ctx.over() {
            tokio::time::sleep(Duration::from_secs(3)).await;
            written = stream.write_all(b"a").await.is_ok() && stream.flush().await.is_ok();
            // A closed socket shows on the second write after the server's FIN/RST.
        }
        if !written {
            ctx.tally.add("slowloris: closed by the server", 1);
            ctx.tally.add(
                "slowloris: seconds open before the close",
                opened.elapsed().as_secs(),
            );
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    chat_bench::run_on_two_threads(run(args))?
}

async fn run(args: Args) -> anyhow::Result<()> {
    let secs = args.secs;
    let ctx = Arc::new(Ctx {
        until: Instant::now() + Duration::from_secs_f64(secs),
        tally: Tally::default(),
        args,
    });
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..ctx.args.flood {
        tasks.spawn(connection_loop(Arc::clone(&ctx), "flood", i, flood));
    }
    for i in 0..ctx.args.loops {
        tasks.spawn(connection_loop(
            Arc::clone(&ctx),
            "loops",
            i,
            subscribe_loop,
        ));
    }
    for i in 0..ctx.args.stalled {
        tasks.spawn(connection_loop(Arc::clone(&ctx), "stalled", i, stalled));
    }
    for i in 0..ctx.args.slowloris {
        tasks.spawn(slowloris(Arc::clone(&ctx), i));
    }
    // Every kind stops at the deadline; slowloris sockets may sit in a sleep a little longer.
    let _ = tokio::time::timeout(Duration::from_secs_f64(secs + 10.0), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    let tally = ctx.tally.0.lock().unwrap().clone();
    println!("abuser: {secs:.0} s against {}", ctx.args.addr);
    for (name, count) in &tally {
        println!("  {name}: {count}");
    }
    let closed = tally.get("slowloris: closed by the server").copied();
    let open = tally
        .get("slowloris: seconds open before the close")
        .copied();
    if let (Some(closed @ 1..), Some(open)) = (closed, open) {
        println!(
            "  slowloris: {:.1} s open on average before the server closed it",
            open as f64 / closed as f64
        );
    }
    std::io::Write::flush(&mut std::io::stdout()).context("stdout")?;
    Ok(())
}
