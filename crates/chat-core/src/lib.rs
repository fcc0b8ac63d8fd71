//! The shared core of the chat stream backend.
//!
//! Both services (`chat-worker` and `chat-ws-server`) build on these modules:
//!
//! - [`channel`]: [`channel::ChannelName`], the validated channel name.
//! - [`message`]: the Kafka input contract ([`message::IncomingMessage`]), its validation into a
//!   [`message::NewMessage`], and the stored/delivered [`message::StoredMessage`].
//! - [`store`]: the PostgreSQL log: batch insert with contiguous per-channel `seq`, history reads.
//! - [`envelope`]: the Redis pub/sub envelope and channel naming.
//! - [`backoff`]: capped exponential backoff for dependency outages.
//! - [`shutdown`]: SIGINT/SIGTERM turned into one cancellation token.
//! - [`telemetry`]: structured logging setup.

pub mod backoff;
pub mod channel;
pub mod envelope;
pub mod message;
pub mod shutdown;
pub mod store;
pub mod telemetry;
