//! Flag groups shared by the services, each flattened into a service's `Settings` with
//! `#[command(flatten)]`. Every setting is a flag and an environment variable, with the same
//! name, default and help text in every service. A setting whose default or help differs per
//! service (the Kafka topic, the Redis prefix, the pool size, the HTTP address) is declared by
//! that service instead.

use std::path::{Path, PathBuf};

use anyhow::Context;
use chat_core::store::Store;
use chat_core::telemetry::{redact_url, LogFormat};
use sqlx::postgres::{PgConnectOptions, PgSslMode};

use crate::kafka::KafkaProperties;

// No `///` on the structs: clap's derive turns a struct's doc comment into the `about` of the
// command it is flattened into.

#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma separated.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
    /// File of librdkafka `property=value` lines for every Kafka client (TLS, SASL, …);
    /// `KAFKA_CONFIG_<NAME>` variables add to it and win. Read at start; see docs/DEPLOY.md.
    #[arg(long, env = "KAFKA_CONFIG_FILE")]
    pub kafka_config_file: Option<PathBuf>,
    /// The passthrough properties, read by [`KafkaArgs::load`].
    #[arg(skip)]
    pub properties: KafkaProperties,
}

impl KafkaArgs {
    /// Plain settings for `brokers` with no passthrough.
    pub fn new(brokers: &str) -> Self {
        Self {
            kafka_brokers: brokers.to_owned(),
            kafka_config_file: None,
            properties: KafkaProperties::default(),
        }
    }

    /// Reads the passthrough (the file, then the process's `KAFKA_CONFIG_*` variables) and logs
    /// the property names (never the values) and any warning. Fails on a refused property.
    pub fn load(&mut self) -> anyhow::Result<()> {
        self.properties =
            KafkaProperties::load(self.kafka_config_file.as_deref(), std::env::vars())
                .context("Kafka client properties")?;
        if !self.properties.is_empty() {
            tracing::info!(
                kafka.properties = ?self.properties.names(),
                "Kafka client properties from the environment"
            );
        }
        for warning in self.properties.warnings() {
            tracing::warn!("{warning}");
        }
        Ok(())
    }

    /// `config` (the client's own tuning) with the passthrough on top and the bootstrap
    /// servers: what every Kafka client of the services is created from.
    pub fn apply<'a>(
        &self,
        config: &'a mut rdkafka::ClientConfig,
    ) -> &'a mut rdkafka::ClientConfig {
        self.properties.apply(config);
        config.set("bootstrap.servers", &self.kafka_brokers)
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct PostgresArgs {
    /// PostgreSQL connection URL (a secret: never logged).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://chat:chat@127.0.0.1:5432/chat",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub database_url: String,
    /// CA certificates (PEM) that verify PostgreSQL's server certificate, trusted besides the
    /// system's. Without `sslmode` in the URL, setting this makes it `verify-full`.
    #[arg(long, env = "DATABASE_CA_FILE")]
    pub database_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) presented to PostgreSQL (with DATABASE_CLIENT_KEY_FILE).
    #[arg(
        long,
        env = "DATABASE_CLIENT_CERT_FILE",
        requires = "database_client_key_file"
    )]
    pub database_client_cert_file: Option<PathBuf>,
    /// Private key (PEM) of DATABASE_CLIENT_CERT_FILE (a secret: never logged).
    #[arg(
        long,
        env = "DATABASE_CLIENT_KEY_FILE",
        requires = "database_client_cert_file"
    )]
    pub database_client_key_file: Option<PathBuf>,
}

impl PostgresArgs {
    pub fn new(database_url: &str) -> Self {
        Self {
            database_url: database_url.to_owned(),
            database_ca_file: None,
            database_client_cert_file: None,
            database_client_key_file: None,
        }
    }

    /// A pool of at most `max_connections` that connects on first use (so a service starts while
    /// PostgreSQL is down, and readiness tells).
    pub fn store(&self, max_connections: u32) -> anyhow::Result<Store> {
        Ok(Store::connect_lazy_with(
            self.connect_options()?,
            max_connections,
        ))
    }

    /// The URL's options with the TLS files applied. The files are checked here, at start, so
    /// that a wrong path is an error now rather than a failing probe later.
    pub fn connect_options(&self) -> anyhow::Result<PgConnectOptions> {
        let mut options: PgConnectOptions =
            self.database_url.parse().context("invalid DATABASE_URL")?;
        if let Some(ca) = &self.database_ca_file {
            readable("DATABASE_CA_FILE", ca)?;
            options = options.ssl_root_cert(ca);
            if !url_query_has(&self.database_url, "sslmode") {
                options = options.ssl_mode(PgSslMode::VerifyFull);
            }
        }
        if let (Some(cert), Some(key)) = (
            &self.database_client_cert_file,
            &self.database_client_key_file,
        ) {
            readable("DATABASE_CLIENT_CERT_FILE", cert)?;
            readable("DATABASE_CLIENT_KEY_FILE", key)?;
            options = options.ssl_client_cert(cert).ssl_client_key(key);
        }
        Ok(options)
    }

    /// The URL with its password masked, for logs.
    pub fn redacted(&self) -> String {
        redact_url(&self.database_url)
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct RedisArgs {
    /// Redis connection URL (a secret: never logged).
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub redis_url: String,
    /// CA certificates (PEM) that verify Redis's server certificate (`rediss://` URLs), trusted
    /// instead of the system's.
    #[arg(long, env = "REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) presented to Redis (with REDIS_CLIENT_KEY_FILE).
    #[arg(
        long,
        env = "REDIS_CLIENT_CERT_FILE",
        requires = "redis_client_key_file"
    )]
    pub redis_client_cert_file: Option<PathBuf>,
    /// Private key (PEM) of REDIS_CLIENT_CERT_FILE (a secret: never logged).
    #[arg(
        long,
        env = "REDIS_CLIENT_KEY_FILE",
        requires = "redis_client_cert_file"
    )]
    pub redis_client_key_file: Option<PathBuf>,
}

impl RedisArgs {
    pub fn new(redis_url: &str) -> Self {
        Self {
            redis_url: redis_url.to_owned(),
            redis_ca_file: None,
            redis_client_cert_file: None,
            redis_client_key_file: None,
        }
    }

    /// The client for the URL, with the TLS files when any is set (they need `rediss://`).
    /// A username and password in the URL authenticate as that ACL user.
    pub fn client(&self) -> anyhow::Result<redis::Client> {
        if self.redis_ca_file.is_none() && self.redis_client_cert_file.is_none() {
            return redis::Client::open(self.redis_url.as_str()).context("invalid REDIS_URL");
        }
        if !self.redis_url.starts_with("rediss://") {
            anyhow::bail!("REDIS_CA_FILE and REDIS_CLIENT_CERT_FILE need a rediss:// REDIS_URL");
        }
        let read = |name: &str, path: &Path| {
            std::fs::read(path).with_context(|| format!("{name} {}", path.display()))
        };
        let root_cert = match &self.redis_ca_file {
            Some(path) => Some(read("REDIS_CA_FILE", path)?),
            None => None,
        };
        let client_tls = match (&self.redis_client_cert_file, &self.redis_client_key_file) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read("REDIS_CLIENT_CERT_FILE", cert)?,
                client_key: read("REDIS_CLIENT_KEY_FILE", key)?,
            }),
            _ => None,
        };
        redis::Client::build_with_tls(
            self.redis_url.as_str(),
            redis::TlsCertificates {
                client_tls,
                root_cert,
            },
        )
        .context("REDIS_URL with its TLS files")
    }

    /// The URL with its password masked, for logs.
    pub fn redacted(&self) -> String {
        redact_url(&self.redis_url)
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log format: json or text.
    #[arg(long, env = "LOG_FORMAT", default_value = "json")]
    pub log_format: LogFormat,
}

fn readable(setting: &str, path: &Path) -> anyhow::Result<()> {
    std::fs::File::open(path)
        .map(drop)
        .with_context(|| format!("{setting} {}", path.display()))
}

/// True when the URL's query string sets `key` (`?sslmode=…`).
fn url_query_has(url: &str, key: &str) -> bool {
    url.split_once('?').is_some_and(|(_, query)| {
        query
            .split('&')
            .any(|pair| pair.split('=').next() == Some(key))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_without_sslmode_means_verify_full_and_an_explicit_mode_stays() {
        let dir = std::env::temp_dir().join(format!("pg-args-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, "not read until a connection is made").unwrap();
        let mut args = PostgresArgs::new("postgres://chat:pw@db.example:5432/chat");
        assert!(matches!(
            args.connect_options().unwrap().get_ssl_mode(),
            PgSslMode::Prefer
        ));
        args.database_ca_file = Some(ca.clone());
        assert!(matches!(
            args.connect_options().unwrap().get_ssl_mode(),
            PgSslMode::VerifyFull
        ));
        args.database_url = "postgres://chat:pw@db.example/chat?sslmode=require".into();
        assert!(matches!(
            args.connect_options().unwrap().get_ssl_mode(),
            PgSslMode::Require
        ));
        args.database_ca_file = Some(dir.join("missing.pem"));
        let err = format!("{:#}", args.connect_options().unwrap_err());
        assert!(err.starts_with("DATABASE_CA_FILE "), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn redis_tls_files_need_a_rediss_url() {
        let mut args = RedisArgs::new("redis://127.0.0.1:6379");
        assert!(args.client().is_ok());
        args.redis_ca_file = Some(PathBuf::from("ca.pem"));
        let err = args.client().unwrap_err().to_string();
        assert!(err.contains("rediss://"), "{err}");
        args.redis_url = "rediss://127.0.0.1:6380".into();
        let err = format!("{:#}", args.client().unwrap_err());
        assert!(err.starts_with("REDIS_CA_FILE ca.pem"), "{err}");
    }
}
