//! A Redis pattern subscriber that collects every envelope published under a prefix.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use chat_core::envelope::Envelope;
use futures::StreamExt;

#[derive(Debug, Clone, Default)]
pub struct RedisTap {
    received: Arc<Mutex<Vec<Envelope>>>,
}

impl RedisTap {
    /// Subscribes to `<prefix>*` and returns once the subscription is active.
    pub async fn start(redis_url: &str, prefix: &str) -> Self {
        let client = redis::Client::open(redis_url).expect("redis url");
        let mut pubsub = client
            .get_async_pubsub()
            .await
            .expect("redis pubsub connection");
        pubsub
            .psubscribe(format!("{prefix}*"))
            .await
            .expect("psubscribe");
        let tap = Self::default();
        let received = Arc::clone(&tap.received);
        tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            while let Some(message) = messages.next().await {
                let payload: Vec<u8> = message.get_payload().expect("bytes payload");
                let envelope = Envelope::decode(&payload).expect("a valid envelope");
                received.lock().expect("tap lock").push(envelope);
            }
        });
        tap
    }

    pub fn received(&self) -> Vec<Envelope> {
        self.received.lock().expect("tap lock").clone()
    }

    /// The distinct texts of the messages received so far.
    pub fn texts(&self) -> BTreeSet<String> {
        let received = self.received.lock().expect("tap lock");
        received.iter().map(|e| e.message.text.clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.received.lock().expect("tap lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
