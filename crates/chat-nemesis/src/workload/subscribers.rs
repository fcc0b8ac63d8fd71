//! The subscriber fleet. Each client holds a few channels on one connection; now and then it
//! unsubscribes one and subscribes it again (resuming with `since`, or afresh with a last-N);
//! after any disconnect it reconnects, to either ws-server, and resumes every channel with
//! `since` = the last seq it received.
//!
//! A *stream* is what one client received on one channel from its first message on, across
//! resumes. Checked on the spot: each message's seq is the previous one's plus one (a jump is
//! a gap, a smaller or equal seq a repeat or a reordering), no message arrives for a channel the
//! client is not subscribed to, and no two clients are given different messages at one seq.
//! The checker then compares every (channel, seq) given with PostgreSQL, and waits for every
//! open stream to reach its channel's last seq.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::{connect, next_frame, send, Delivered, Socket, Workload};
use crate::history::bump;

/// The last seq of every open stream, for the end of the run: (client, channel) → last seq.
#[derive(Debug, Default)]
pub struct Tails(Mutex<HashMap<(usize, String), Option<i64>>>);

impl Tails {
    fn set(&self, client: usize, channel: &str, last: Option<Option<i64>>) {
        let mut map = self.0.lock().unwrap();
        match last {
            Some(last) => map.insert((client, channel.to_owned()), last),
            None => map.remove(&(client, channel.to_owned())),
        };
    }

    pub fn open(&self) -> HashMap<(usize, String), Option<i64>> {
        self.0.lock().unwrap().clone()
    }
}

#[derive(Debug)]
struct Stream {
    /// The client wants the subscription (subscribed, or subscribing).
    wanted: bool,
    /// The server confirmed it (`subscribed`) and has not ended it.
    subscribed: bool,
    /// The seq of the last message received; `None` before the stream's first message.
    last: Option<i64>,
    /// Since when messages are owed: the (re)subscribe the client chose to make. A reconnect
    /// after a fault does not move it, so outages count in the wait.
    owed_since: SystemTime,
    /// The stream's last events (commands, replies, messages), printed with a violation.
    events: VecDeque<String>,
}

/// Events kept per stream for a violation's detail.
const EVENTS_KEPT: usize = 24;

impl Stream {
    fn note(&mut self, at: f64, event: String) {
        if self.events.len() == EVENTS_KEPT {
            self.events.pop_front();
        }
        self.events.push_back(format!("[{at:.3}] {event}"));
    }

    fn story(&self) -> String {
        self.events.iter().cloned().collect::<Vec<_>>().join("; ")
    }
}

enum Pending {
    Subscribe(String),
    Unsubscribe(String),
}

impl Pending {
    fn channel(&self) -> &str {
        match self {
            Pending::Subscribe(channel) | Pending::Unsubscribe(channel) => channel,
        }
    }
}

struct Client {
    n: usize,
    workload: Workload,
    tails: Arc<Tails>,
    streams: BTreeMap<String, Stream>,
    pending: HashMap<u64, Pending>,
    command: u64,
    /// Subscribes to send again after a refusal such as `history_unavailable`.
    retries: Vec<(Instant, String)>,
    rng: StdRng,
    /// The ws-server of the current connection.
    server: Option<SocketAddr>,
}

pub async fn run(
    workload: Workload,
    n: usize,
    channels: Vec<String>,
    seed: u64,
    tails: Arc<Tails>,
) {
    let now = SystemTime::now();
    let streams = channels
        .into_iter()
        .map(|channel| {
            let stream = Stream {
                wanted: true,
                subscribed: false,
                last: None,
                owed_since: now,
                events: VecDeque::new(),
            };
            (channel, stream)
        })
        .collect();
    let mut client = Client {
        n,
        workload,
        tails,
        streams,
        pending: HashMap::new(),
        command: 0,
        retries: Vec::new(),
        rng: StdRng::seed_from_u64(seed),
        server: None,
    };
    client.run().await;
}

impl Client {
    async fn run(&mut self) {
        let mut connected_before = false;
        loop {
            let Some((mut socket, server)) = connect(&self.workload, &mut self.rng).await else {
                return;
            };
            self.server = Some(server);
            let at = self.workload.history.now_secs();
            for stream in self.streams.values_mut() {
                stream.note(at, format!("connected to {server}"));
            }
            if std::mem::replace(&mut connected_before, true) {
                bump(&self.workload.history.counters.reconnects);
            }
            self.pending.clear();
            self.retries.clear();
            let wanted: Vec<String> = self
                .streams
                .iter_mut()
                .filter(|(_, s)| s.wanted)
                .map(|(c, s)| {
                    s.subscribed = false;
                    c.clone()
                })
                .collect();
            for channel in &self.streams.keys().cloned().collect::<Vec<_>>() {
                self.tails.set(self.n, channel, None);
            }
            let mut ok = true;
            for channel in wanted {
                ok &= self.subscribe(&mut socket, &channel).await;
            }
            if ok {
                self.serve(&mut socket).await;
            }
            if self.workload.end.is_cancelled() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(self.rng.random_range(50..500))).await;
        }
    }

    /// Reads and acts until the connection ends (or the run does).
    async fn serve(&mut self, socket: &mut Socket) {
        let mut next_action = Instant::now() + self.action_pause();
        let mut wound_down = false;
        loop {
            if !wound_down && self.workload.winding_down.is_cancelled() {
                // The end: every channel subscribed again, so every stream is checked to the
                // channel's last message.
                wound_down = true;
                for channel in self.streams.keys().cloned().collect::<Vec<_>>() {
                    // One with its `unsubscribe` unanswered follows when the answer comes.
                    if self.streams[&channel].wanted || self.busy(&channel) {
                        continue;
                    }
                    let stream = self.streams.get_mut(&channel).expect("stream");
                    stream.owed_since = SystemTime::now();
                    if !self.subscribe(socket, &channel).await {
                        return;
                    }
                }
            }
            let due = self.retries.iter().map(|(at, _)| *at).min();
            let wake = due.map_or(next_action, |d| d.min(next_action));
            tokio::select! {
                _ = self.workload.end.cancelled() => return,
                frame = next_frame(socket, Duration::from_secs(45)) => {
                    let Some(frame) = frame else { return };
                    self.on_frame(&frame);
                }
                _ = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    let (due, later): (Vec<_>, Vec<_>) =
                        self.retries.drain(..).partition(|(at, _)| *at <= now);
                    self.retries = later;
                    for (_, channel) in due {
                        if self.streams[&channel].wanted && !self.subscribe(socket, &channel).await {
                            return;
                        }
                    }
                    if now >= next_action {
                        next_action = now + self.action_pause();
                        if !wound_down && !self.act(socket).await {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// A command for the channel is unanswered. The next one waits: a `since` sent now would
    /// be the last seq received so far, not the one the server will have sent when it gets to
    /// it (a connection's commands run one at a time, in order).
    fn busy(&self, channel: &str) -> bool {
        self.pending.values().any(|p| p.channel() == channel)
    }

    fn action_pause(&mut self) -> Duration {
        Duration::from_millis(self.rng.random_range(2_000..12_000))
    }

    /// Sends `subscribe`: resuming with `since` when the stream has a last seq, else a last-N.
    async fn subscribe(&mut self, socket: &mut Socket, channel: &str) -> bool {
        self.command += 1;
        let stream = self.streams.get_mut(channel).expect("stream");
        stream.wanted = true;
        let command = match stream.last {
            Some(last) => {
                bump(&self.workload.history.counters.resumes);
                json!({"command": "subscribe", "channel": channel, "since": last, "id": self.command})
            }
            None => {
                bump(&self.workload.history.counters.subscribes);
                let limit = self.rng.random_range(0..=30);
                json!({"command": "subscribe", "channel": channel, "limit": limit, "id": self.command})
            }
        };
        let at = self.workload.history.now_secs();
        stream.note(at, format!("sent {command}"));
        self.pending
            .insert(self.command, Pending::Subscribe(channel.to_owned()));
        send(socket, &command).await.is_ok()
    }

    /// One random change: unsubscribe a subscribed channel, or subscribe an unsubscribed one
    /// again (half the time resuming the stream, half the time starting a new one).
    async fn act(&mut self, socket: &mut Socket) -> bool {
        let channels: Vec<String> = self.streams.keys().cloned().collect();
        let channel = channels.choose(&mut self.rng).expect("channels").clone();
        if self.busy(&channel) {
            return true;
        }
        let stream = self.streams.get_mut(&channel).expect("stream");
        if stream.wanted {
            if !stream.subscribed {
                return true;
            }
            stream.wanted = false;
            bump(&self.workload.history.counters.unsubscribes);
            self.command += 1;
            self.pending
                .insert(self.command, Pending::Unsubscribe(channel.clone()));
            let command = json!({"command": "unsubscribe", "channel": channel, "id": self.command});
            return send(socket, &command).await.is_ok();
        }
        if self.rng.random_bool(0.5) {
            stream.last = None;
        }
        stream.owed_since = SystemTime::now();
        self.subscribe(socket, &channel).await
    }

    fn on_frame(&mut self, frame: &Value) {
        let history = self.workload.history.clone();
        let pending = frame["reply_to"]
            .as_u64()
            .and_then(|id| self.pending.remove(&id));
        match frame["type"].as_str() {
            Some("subscribed") => {
                let Some(Pending::Subscribe(channel)) = pending else {
                    history.violation("unexpected_frame", format!("client {}: {frame}", self.n));
                    return;
                };
                let resumed_from = self.streams[&channel].last;
                let messages = frame["messages"].as_array().cloned().unwrap_or_default();
                let at = history.now_secs();
                let stream = self.streams.get_mut(&channel).expect("stream");
                stream.subscribed = true;
                stream.note(
                    at,
                    format!(
                        "subscribed from {:?}: {} messages {:?}..{:?}, last_seq {}",
                        self.server,
                        messages.len(),
                        messages.first().and_then(|m| m["seq"].as_i64()),
                        messages.last().and_then(|m| m["seq"].as_i64()),
                        frame["last_seq"]
                    ),
                );
                for message in &messages {
                    self.on_message(&channel, message);
                }
                let last_seq = frame["last_seq"].as_i64().unwrap_or(-1);
                let stream = self.streams.get_mut(&channel).expect("stream");
                match (resumed_from, messages.is_empty()) {
                    (None, true) => stream.last = Some(last_seq),
                    (Some(since), true) if last_seq < since => history.violation(
                        "resume_behind",
                        format!(
                            "client {} resumed {channel} since {since}, server's last_seq {last_seq}",
                            self.n
                        ),
                    ),
                    _ => {}
                }
                self.tails.set(self.n, &channel, Some(stream.last));
            }
            Some("message") => {
                let channel = frame["channel"].as_str().unwrap_or_default().to_owned();
                match self.streams.get(&channel) {
                    Some(stream) if stream.subscribed => {
                        self.on_message(&channel, &frame["message"])
                    }
                    _ => history.violation(
                        "message_while_not_subscribed",
                        format!("client {}: {frame}", self.n),
                    ),
                }
            }
            Some("unsubscribed") => {
                let channel = frame["channel"].as_str().unwrap_or_default().to_owned();
                if let Some(stream) = self.streams.get_mut(&channel) {
                    stream.note(history.now_secs(), frame.to_string());
                }
                match (&pending, frame["reason"].as_str()) {
                    (Some(Pending::Unsubscribe(asked)), None) if *asked == channel => {}
                    // The server ended it: PostgreSQL failed while the rest of the history was
                    // read. Resume with `since`, like after a disconnect.
                    (None, Some("history_unavailable")) if self.streams.contains_key(&channel) => {
                        bump(&history.counters.subscribe_retries);
                        let at = Instant::now()
                            + Duration::from_millis(self.rng.random_range(300..1_000));
                        self.retries.push((at, channel.clone()));
                    }
                    _ => history.violation(
                        "unexpected_unsubscribed",
                        format!("client {}: {frame}", self.n),
                    ),
                }
                if let Some(stream) = self.streams.get_mut(&channel) {
                    stream.subscribed = false;
                    if self.workload.winding_down.is_cancelled() && !stream.wanted {
                        // The end: subscribe again (see `serve`).
                        stream.wanted = true;
                        stream.owed_since = SystemTime::now();
                        self.retries.push((Instant::now(), channel.clone()));
                    }
                }
                self.tails.set(self.n, &channel, None);
            }
            Some("error") => {
                let code = frame["code"].as_str().unwrap_or_default();
                match pending {
                    Some(Pending::Subscribe(channel))
                        if matches!(
                            code,
                            "history_unavailable" | "server_busy" | "rate_limited"
                        ) =>
                    {
                        bump(&history.counters.subscribe_retries);
                        let at = Instant::now()
                            + Duration::from_millis(self.rng.random_range(300..1_000));
                        self.retries.push((at, channel));
                    }
                    // The server had ended it already (`unsubscribed` with a reason crossed
                    // this client's `unsubscribe`).
                    Some(Pending::Unsubscribe(channel))
                        if code == "not_subscribed" && !self.streams[&channel].subscribed => {}
                    _ => {
                        history.violation("unexpected_error", format!("client {}: {frame}", self.n))
                    }
                }
            }
            _ => {}
        }
    }

    fn on_message(&mut self, channel: &str, message: &Value) {
        let history = self.workload.history.clone();
        let Ok(delivered) = serde_json::from_value::<Delivered>(message.clone()) else {
            history.violation("malformed_message", format!("client {}: {message}", self.n));
            return;
        };
        let n = self.n;
        let server = self.server;
        let stream = self.streams.get_mut(channel).expect("stream");
        let seq = delivered.seq;
        stream.note(history.now_secs(), format!("seq {seq}"));
        match stream.last {
            Some(last) if seq == last + 1 => {}
            None => {}
            Some(last) if seq > last + 1 => history.violation(
                "gap",
                format!(
                    "client {n}: {channel} jumped from seq {last} to {seq} on {server:?}; its last events: {}",
                    stream.story()
                ),
            ),
            Some(last) => history.violation(
                "repeat_or_reorder",
                format!(
                    "client {n}: {channel} seq {seq} after {last} on {server:?}; its last events: {}",
                    stream.story()
                ),
            ),
        }
        stream.last = Some(stream.last.map_or(seq, |last| last.max(seq)));
        history.saw(channel, seq, delivered.seen(), "subscriber");
        let owed = SystemTime::from(delivered.stored_at).max(stream.owed_since);
        let wait = SystemTime::now().duration_since(owed).unwrap_or_default();
        history.waited(wait, || format!("client {n}, {channel} seq {seq}"));
        if stream.subscribed {
            self.tails.set(n, channel, Some(stream.last));
        }
    }
}
