//! `chat-ws-server`: WebSocket and REST front of the chat backend.
//!
//! - [`settings`]: configuration from flags and environment variables.
//! - [`startup`]: [`startup::Application`] binds, wires everything and runs until shutdown.
//! - [`hub`]: the one Redis pub/sub connection of the process, in-process fan-out to sessions,
//!   duplicate dropping and live-gap repair from PostgreSQL; its per-channel state machine is a
//!   plain type with no I/O.
//! - [`upgrade`]: `GET /ws`: connection caps, origin and token checks before (or right after)
//!   the upgrade.
//! - [`admission`]: the HTTP edge's limits: client IP (trusted proxies), WebSocket connection
//!   caps and rates, REST rates, the body limit, the listeners' timeouts.
//! - [`auth`]: tokens, rights, the gate every client passes.
//! - [`page`]: the demo page, Swagger UI and the development token endpoint, with security
//!   headers.
//! - [`outbox`]: a session's bounded queue of frames and its close request, filled by the hub.
//! - [`session`]: one WebSocket connection: command loop, gap-free subscribe, bounded outbound
//!   queue with coalesced writes, keepalive.
//! - [`history`]: the one history reader (store, the hub's cache of the newest page, query
//!   timing) behind subscribe, resume and the REST pages.
//! - [`recent`]: the per-channel cache of the newest messages, serialized once.
//! - [`protocol`]: the client and server frames as serde types, with stable error codes.
//! - [`publish`]: the Kafka producer behind the `publish` command and `POST`.
//! - [`api`]: the REST API (poem-openapi): history pages and publishing.
//! - [`health`]: `/healthz`, `/readyz`, `/metrics`.
//! - [`observe`]: per-request span, metrics and `Allow` header of both HTTP listeners.
//! - [`metrics`]: the Prometheus registry of one application.
//! - [`error`]: the JSON problem body of the HTTP API.
//! - [`auth`]: the identity core (not wired in yet): JWT verification (secret, PEM, JWKS) to an
//!   identity with an author name and rights per channel.

pub mod admission;
pub mod api;
pub mod auth;
pub mod error;
pub mod health;
pub mod history;
pub mod hub;
pub mod metrics;
pub mod observe;
pub mod outbox;
pub mod page;
pub mod protocol;
pub mod publish;
pub mod recent;
pub mod session;
pub mod settings;
pub mod startup;
pub mod upgrade;
