//! chat-ws-server against real Kafka, PostgreSQL and Redis, with the real chat-worker, through
//! a real WebSocket client. Each test has its own database, topic and Redis prefix.

mod abuse;
mod asyncapi;
mod auth;
mod bad_input;
mod delivery;
mod edge;
mod idempotent;
mod managed;
mod observability;
mod poison;
mod process;
mod procs;
mod rest;
mod subscribe;
mod support;
mod trace;
