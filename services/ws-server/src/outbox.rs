//! A session's outbound plumbing, shared by the session and the hub: the bounded queue of
//! serialized frames ([`Outbox`]) and the one-shot close request ([`Closer`]).

use std::sync::{Arc, OnceLock};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A serialized server frame, shared by every connection it is delivered to.
pub type Frame = Arc<str>;

/// Close code for a connection whose outbound queue overflowed.
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;

/// How a session is asked to close. The first reason set wins.
#[derive(Debug, Clone, Default)]
pub struct Closer {
    token: CancellationToken,
    reason: Arc<OnceLock<(u16, &'static str)>>,
}

impl Closer {
    pub fn close(&self, code: u16, reason: &'static str) {
        let _ = self.reason.set((code, reason));
        self.token.cancel();
    }

    pub async fn closed(&self) -> (u16, &'static str) {
        self.token.cancelled().await;
        self.reason().unwrap_or((1000, ""))
    }

    pub fn reason(&self) -> Option<(u16, &'static str)> {
        self.reason.get().copied()
    }

    pub fn is_closed(&self) -> bool {
        self.token.is_cancelled()
    }
}

/// Where the hub puts a session's frames.
#[derive(Debug, Clone)]
pub struct Outbox {
    pub frames: mpsc::Sender<Frame>,
    pub closer: Closer,
}
