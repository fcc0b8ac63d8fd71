//! Publishing stored messages to Redis pub/sub, pipelined: one round trip per batch.

use std::time::Duration;

use chat_core::envelope::{redis_channel, Envelope};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::Mutex;

pub struct Publisher {
    client: redis::Client,
    prefix: String,
    /// Opened on first use, so the worker starts (not ready) while Redis is down; the manager
    /// then reconnects by itself.
    connection: Mutex<Option<ConnectionManager>>,
}

impl Publisher {
    pub fn new(client: redis::Client, prefix: &str) -> Self {
        Self {
            client,
            prefix: prefix.to_owned(),
            connection: Mutex::new(None),
        }
    }

    async fn connection(&self) -> Result<ConnectionManager, redis::RedisError> {
        let mut slot = self.connection.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_with_config(self.client.clone(), config).await?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Publishes every envelope, in order, in one pipeline.
    pub async fn publish(&self, envelopes: &[Envelope]) -> Result<(), redis::RedisError> {
        if envelopes.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for envelope in envelopes {
            pipe.cmd("PUBLISH")
                .arg(redis_channel(&self.prefix, &envelope.message.channel))
                .arg(envelope.encode())
                .ignore();
        }
        let mut conn = self.connection().await?;
        pipe.query_async::<()>(&mut conn).await
    }

    /// Reachability check for readiness.
    pub async fn ping(&self) -> Result<(), redis::RedisError> {
        let mut conn = self.connection().await?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(|_| ())
    }
}
