//! Test helpers for the chat stream backend. Every test isolates itself on the real services:
//! its own PostgreSQL database, its own Kafka topics and consumer group, its own Redis prefix.
//!
//! - [`Services`]: where the real services are (`DATABASE_URL`, `REDIS_URL`, `KAFKA_BROKERS`).
//! - [`TestDatabase`]: a fresh, migrated database with a unique name; a test drops it with
//!   [`TestDatabase::drop_database`] when it passes, and a failing test leaves it for a look.
//! - [`kafka`]: topic creation, producing, committed offsets.
//! - [`redis_tap`]: a pattern subscriber collecting every envelope under a prefix.
//! - [`chaos`]: a TCP proxy that can cut a dependency and bring it back.
//! - [`ports`]: free ports for child processes, outside the kernel's ephemeral range.
//! - [`tls`]: a throwaway CA with server and client certificates, for the TLS tests.

pub mod chaos;
pub mod kafka;
pub mod ports;
pub mod redis_tap;
pub mod tls;

use std::future::Future;
use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

/// Connection settings of the real services, from the environment the test command exports,
/// with the same localhost defaults as the services.
#[derive(Debug, Clone)]
pub struct Services {
    pub database_url: String,
    pub redis_url: String,
    pub kafka_brokers: String,
}

impl Services {
    pub fn from_env() -> Self {
        let var =
            |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
        Self {
            database_url: var("DATABASE_URL", "postgres://chat:chat@127.0.0.1:5432/chat"),
            redis_url: var("REDIS_URL", "redis://127.0.0.1:6379"),
            kafka_brokers: var("KAFKA_BROKERS", "127.0.0.1:9092"),
        }
    }
}

/// A short unique name with a readable prefix, e.g. `crash-3f9a1c2b`.
pub fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &id[..12])
}

/// A freshly created and migrated database of its own.
#[derive(Debug, Clone)]
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
    /// The server's maintenance database, where this one is created and dropped.
    admin_url: String,
}

impl TestDatabase {
    pub async fn create(services: &Services) -> Self {
        let name = unique("test").replace('-', "_");
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&services.database_url)
            .await
            .expect("the test command's PostgreSQL is reachable");
        sqlx::query(&format!("create database {name}"))
            .execute(&admin)
            .await
            .expect("create test database");
        admin.close().await;
        let url = replace_database(&services.database_url, &name);
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .expect("connect to the test database");
        chat_core::store::MIGRATOR
            .run(&pool)
            .await
            .expect("migrations apply");
        Self {
            name,
            url,
            pool,
            admin_url: services.database_url.clone(),
        }
    }

    /// Every stored `(channel, seq, text)`, ordered by channel then seq.
    pub async fn rows(&self) -> Vec<(String, i64, String)> {
        sqlx::query_as("select channel, seq, text from messages order by channel, seq")
            .fetch_all(&self.pool)
            .await
            .expect("read messages")
    }

    /// Closes the pool and drops the database (benchmarks call it so that repeated runs do not
    /// fill the disk; a failure is only reported).
    pub async fn drop_database(self) {
        self.pool.close().await;
        let dropped = async {
            let admin = PgPoolOptions::new()
                .max_connections(1)
                .connect(&self.admin_url)
                .await?;
            sqlx::query(&format!(
                "drop database if exists {} with (force)",
                self.name
            ))
            .execute(&admin)
            .await?;
            admin.close().await;
            Ok::<_, sqlx::Error>(())
        };
        if let Err(err) = dropped.await {
            eprintln!("could not drop database {}: {err}", self.name);
        }
    }

    pub async fn count(&self) -> i64 {
        let (n,): (i64,) = sqlx::query_as("select count(*) from messages")
            .fetch_one(&self.pool)
            .await
            .expect("count messages");
        n
    }
}

/// The same connection URL pointing at another database.
pub fn replace_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let slash = base.rfind('/').expect("a database URL has a path");
    let mut out = format!("{}/{}", &base[..slash], database);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// Polls `check` until it returns true or `timeout` passes; returns whether it became true.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts the stored log is exactly `expected` messages per channel, with seq 1..=n and the
/// texts in the order given (the produce order of that channel).
pub fn assert_log_matches(
    rows: &[(String, i64, String)],
    expected: &std::collections::BTreeMap<String, Vec<String>>,
) {
    let mut actual: std::collections::BTreeMap<String, Vec<(i64, String)>> = Default::default();
    for (channel, seq, text) in rows {
        actual
            .entry(channel.clone())
            .or_default()
            .push((*seq, text.clone()));
    }
    assert_eq!(
        actual.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "channels differ"
    );
    for (channel, texts) in expected {
        let stored = &actual[channel];
        assert_eq!(stored.len(), texts.len(), "message count of {channel}");
        for (i, (seq, text)) in stored.iter().enumerate() {
            assert_eq!(
                *seq,
                i as i64 + 1,
                "seq of {channel} is not contiguous at {i}"
            );
            assert_eq!(text, &texts[i], "order of {channel} differs at seq {seq}");
        }
    }
}
