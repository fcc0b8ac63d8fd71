//! librdkafka properties from the environment: the passthrough for what the dedicated settings
//! do not cover (TLS, SASL, the timeouts of a managed cluster).
//!
//! Two sources, the environment winning over the file for the same property:
//! - `KAFKA_CONFIG_FILE`: a file of `property=value` lines (`#` or `!` starts a comment line),
//!   e.g. a mounted Secret holding `sasl.password`;
//! - `KAFKA_CONFIG_<NAME>` variables, named the way Confluent's images name theirs: the
//!   property in upper case with `.` written `_`, `_` written `__` and `-` written `___`
//!   (`KAFKA_CONFIG_SASL_MECHANISM=SCRAM-SHA-512` sets `sasl.mechanism`).
//!
//! They apply to every Kafka client of the process (consumer, producers, admin), after the
//! service's own tuning, so they may retune it. Two kinds of property are not theirs to set:
//! - the ones the delivery guarantees depend on ([`REFUSED`]): any of them stops the service
//!   at start with an error naming it;
//! - the ones a dedicated setting owns ([`DEDICATED`]): the dedicated setting wins, and a
//!   warning at start says the passthrough value is ignored.
//!
//! Values are never logged (`sasl.password` is one of them); the start-up log names the
//! properties only.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use rdkafka::ClientConfig;

/// Prefix of the environment variables that set a property.
pub const ENV_PREFIX: &str = "KAFKA_CONFIG_";
/// The variable naming the properties file (not itself a property).
pub const FILE_ENV: &str = "KAFKA_CONFIG_FILE";

/// Properties the guarantees depend on, with the reason, as the start-up error states it.
/// Aliases librdkafka accepts for the same property are listed too.
pub const REFUSED: &[(&str, &str)] = &[
    (
        "enable.auto.offset.store",
        "offsets are stored only after a batch is stored and published (at-least-once intake)",
    ),
    (
        "enable.auto.commit",
        "only offsets of finished batches are committed, by the worker's own schedule",
    ),
    (
        "auto.offset.reset",
        "a new consumer group must start at the earliest record, or records are skipped",
    ),
    (
        "isolation.level",
        "only committed records are read (an aborted transaction's records are never stored)",
    ),
    (
        "enable.partition.eof",
        "the consumer loop treats every consumer error as a failure",
    ),
    (
        "acks",
        "a publish is acknowledged only once every in-sync replica has it",
    ),
    (
        "request.required.acks",
        "a publish is acknowledged only once every in-sync replica has it",
    ),
    (
        "enable.idempotence",
        "a retried produce must not write a record twice or out of order",
    ),
    (
        "enable.gapless.guarantee",
        "set by the producer's idempotence settings",
    ),
    (
        "max.in.flight.requests.per.connection",
        "idempotent producers bound it themselves to keep order across retries",
    ),
    (
        "max.in.flight",
        "idempotent producers bound it themselves to keep order across retries",
    ),
    (
        "message.send.max.retries",
        "a publish retries until its timeout",
    ),
    ("retries", "a publish retries until its timeout"),
    (
        "transactional.id",
        "the services do not use Kafka transactions; a shared id would fence replicas",
    ),
];

/// Properties a dedicated setting owns: the setting wins.
pub const DEDICATED: &[(&str, &str)] = &[
    ("bootstrap.servers", "KAFKA_BROKERS"),
    ("group.id", "KAFKA_GROUP_ID"),
    ("queued.max.messages.kbytes", "KAFKA_FETCH_QUEUE_KBYTES"),
    ("queue.buffering.max.kbytes", "KAFKA_PRODUCER_QUEUE_KBYTES"),
];

/// Properties set through the passthrough, with where each came from. `Debug` shows the
/// names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaProperties {
    entries: BTreeMap<String, Entry>,
}

#[derive(Clone, PartialEq, Eq)]
struct Entry {
    value: String,
    origin: String,
}

impl fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.entries.keys()).finish()
    }
}

/// Why the passthrough was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PassthroughError {
    #[error("{origin}: {property} cannot be set ({reason}); remove it")]
    Refused {
        property: String,
        origin: String,
        reason: &'static str,
    },
    #[error(
        "{0}: not a property name (letters, digits and single _ between them; __ for _, ___ for -)"
    )]
    BadName(String),
    #[error("{origin}: expected `property=value`")]
    BadLine { origin: String },
    #[error("{path}: {error}")]
    File { path: String, error: String },
}

impl KafkaProperties {
    /// Reads both sources: `file` (when given) then the `KAFKA_CONFIG_*` variables of `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, PassthroughError> {
        let mut properties = Self::default();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|err| PassthroughError::File {
                path: path.display().to_string(),
                error: err.to_string(),
            })?;
            properties.read_file(&path.display().to_string(), &text)?;
        }
        let mut vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(name, _)| name.starts_with(ENV_PREFIX) && name != FILE_ENV)
            .collect();
        vars.sort();
        for (name, value) in vars {
            let property = property_name(&name[ENV_PREFIX.len()..])
                .ok_or_else(|| PassthroughError::BadName(name.clone()))?;
            properties.insert(property, value, name)?;
        }
        Ok(properties)
    }

    fn read_file(&mut self, path: &str, text: &str) -> Result<(), PassthroughError> {
        for (index, line) in text.lines().enumerate() {
            let origin = format!("{path}:{}", index + 1);
            let line = line.trim_start().trim_end_matches('\r');
            if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(PassthroughError::BadLine { origin });
            };
            let key = key.trim();
            if key.is_empty() {
                return Err(PassthroughError::BadLine { origin });
            }
            self.insert(key.to_owned(), value.trim_start().to_owned(), origin)?;
        }
        Ok(())
    }

    fn insert(
        &mut self,
        property: String,
        value: String,
        origin: String,
    ) -> Result<(), PassthroughError> {
        if let Some((_, reason)) = REFUSED.iter().find(|(name, _)| *name == property) {
            return Err(PassthroughError::Refused {
                property,
                origin,
                reason,
            });
        }
        self.entries.insert(property, Entry { value, origin });
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The property names, for the start-up log.
    pub fn names(&self) -> Vec<&str> {
        self.entries.keys().map(String::as_str).collect()
    }

    /// What the start-up log should warn about: passthrough values a dedicated setting
    /// overrides, and TLS verification turned off.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        for (property, setting) in DEDICATED {
            if let Some(entry) = self.entries.get(*property) {
                warnings.push(format!(
                    "{} sets {property}, which {setting} owns: the passthrough value is ignored",
                    entry.origin
                ));
            }
        }
        if let Some(entry) = self.entries.get("enable.ssl.certificate.verification") {
            if entry.value.trim().eq_ignore_ascii_case("false") {
                warnings.push(format!(
                    "{} turns Kafka TLS certificate verification off",
                    entry.origin
                ));
            }
        }
        warnings
    }

    /// Sets every property on `config` except the ones a dedicated setting owns.
    pub fn apply(&self, config: &mut ClientConfig) {
        for (property, entry) in &self.entries {
            if !DEDICATED.iter().any(|(owned, _)| owned == property) {
                config.set(property, &entry.value);
            }
        }
    }
}

/// `SASL_MECHANISM` → `sasl.mechanism`; `__` → `_`, `___` → `-`. `None` for an empty name,
/// a leading or trailing separator, or four underscores in a row.
fn property_name(suffix: &str) -> Option<String> {
    let mut name = String::with_capacity(suffix.len());
    let mut underscores = 0;
    for c in suffix.chars().chain(std::iter::once('\0')) {
        if c == '_' {
            underscores += 1;
            continue;
        }
        if underscores > 0 {
            if name.is_empty() || c == '\0' {
                return None;
            }
            name.push(match underscores {
                1 => '.',
                2 => '_',
                3 => '-',
                _ => return None,
            });
            underscores = 0;
        }
        if c == '\0' {
            break;
        }
        if !c.is_ascii_alphanumeric() {
            return None;
        }
        name.push(c.to_ascii_lowercase());
    }
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn value(properties: &KafkaProperties, name: &str) -> Option<String> {
        properties.entries.get(name).map(|e| e.value.clone())
    }

    #[test]
    fn variable_names_map_to_properties() {
        assert_eq!(property_name("SASL_MECHANISM").unwrap(), "sasl.mechanism");
        assert_eq!(property_name("SSL_CA_LOCATION").unwrap(), "ssl.ca.location");
        assert_eq!(property_name("A__B").unwrap(), "a_b");
        assert_eq!(property_name("A___B").unwrap(), "a-b");
        for bad in ["", "_A", "A_", "A____B", "A-B", "A.B", "É"] {
            assert_eq!(property_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_environment_wins_over_the_file_and_other_variables_are_ignored() {
        let dir = std::env::temp_dir().join(format!("kafka-props-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("client.properties");
        std::fs::write(
            &file,
            "# managed cluster\n! also a comment\n\nsecurity.protocol = SASL_SSL\r\nsasl.password=p=a ss \nsasl.username=file-user\n",
        )
        .unwrap();
        let properties = KafkaProperties::load(
            Some(&file),
            env(&[
                ("KAFKA_CONFIG_SASL_USERNAME", "env-user"),
                ("KAFKA_CONFIG_FILE", "ignored"),
                ("KAFKA_BROKERS", "ignored"),
                ("OTHER", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(
            properties.names(),
            ["sasl.password", "sasl.username", "security.protocol"]
        );
        assert_eq!(value(&properties, "security.protocol").unwrap(), "SASL_SSL");
        // Everything after the first `=` is the value, trailing spaces included.
        assert_eq!(value(&properties, "sasl.password").unwrap(), "p=a ss ");
        assert_eq!(value(&properties, "sasl.username").unwrap(), "env-user");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn guarantee_critical_properties_are_refused_from_either_source() {
        for (name, _) in REFUSED {
            let variable = format!(
                "{ENV_PREFIX}{}",
                name.replace('.', "_").to_ascii_uppercase()
            );
            let err = KafkaProperties::load(None, env(&[(&variable, "x")])).unwrap_err();
            assert!(
                matches!(&err, PassthroughError::Refused { property, origin, .. }
                    if property == name && *origin == variable),
                "{variable}: {err}"
            );
            assert!(err.to_string().contains(name), "{err}");
        }
        let mut properties = KafkaProperties::default();
        let err = properties
            .read_file("kafka.properties", "security.protocol=SSL\nacks=1\n")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "kafka.properties:2: acks cannot be set (a publish is acknowledged only once every \
             in-sync replica has it); remove it"
        );
    }

    #[test]
    fn malformed_input_is_an_error_naming_its_place() {
        let mut properties = KafkaProperties::default();
        let err = properties
            .read_file("p", "security.protocol=SSL\nno equals sign\n")
            .unwrap_err();
        assert_eq!(err.to_string(), "p:2: expected `property=value`");
        let err = KafkaProperties::load(None, env(&[("KAFKA_CONFIG_SASL-X", "1")])).unwrap_err();
        assert!(matches!(err, PassthroughError::BadName(name) if name == "KAFKA_CONFIG_SASL-X"));
        let err = KafkaProperties::load(Some(Path::new("/nonexistent/kafka.properties")), env(&[]))
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/nonexistent/kafka.properties: "),
            "{err}"
        );
    }

    #[test]
    fn dedicated_settings_win_and_values_stay_out_of_debug_and_warnings() {
        let properties = KafkaProperties::load(
            None,
            env(&[
                ("KAFKA_CONFIG_BOOTSTRAP_SERVERS", "elsewhere:9092"),
                ("KAFKA_CONFIG_SASL_PASSWORD", "hunter2"),
                ("KAFKA_CONFIG_LINGER_MS", "20"),
                ("KAFKA_CONFIG_ENABLE_SSL_CERTIFICATE_VERIFICATION", "False"),
            ]),
        )
        .unwrap();
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", "mine:9092")
            .set("linger.ms", "0");
        properties.apply(&mut config);
        assert_eq!(config.get("bootstrap.servers"), Some("mine:9092"));
        assert_eq!(config.get("linger.ms"), Some("20"));
        assert_eq!(config.get("sasl.password"), Some("hunter2"));
        let warnings = properties.warnings();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("KAFKA_BROKERS"), "{warnings:?}");
        assert!(warnings[1].contains("verification off"), "{warnings:?}");
        let shown = format!("{properties:?} {warnings:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("elsewhere"),
            "{shown}"
        );
    }
}
