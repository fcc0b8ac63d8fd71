//! Rights per channel: which channels a token may read (subscribe, resume, REST GET) and
//! publish to.
//!
//! The JSON shape, of a token's rights claim and of the default rights setting alike, is an
//! object from channel pattern to a list of right names:
//! `{"#general": ["read", "publish"], "#public-*": ["read"], "*": ["read"]}`. A pattern is an
//! exact channel name, or a prefix followed by a trailing `*`; a bare `*` matches every channel.
//! Right names are `read` and `publish`; anything else refuses the whole object.

use chat_core::channel::ChannelName;
use serde_json::{Map, Value};

use super::error::shorten;

/// One right on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Right {
    /// Subscribe, resume, REST history pages.
    Read,
    /// Publish a message.
    Publish,
}

impl Right {
    /// The name of this right in the JSON shape.
    pub fn as_str(self) -> &'static str {
        match self {
            Right::Read => "read",
            Right::Publish => "publish",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        match name {
            "read" => Some(Right::Read),
            "publish" => Some(Right::Publish),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    /// Channel names starting with this (possibly empty) prefix.
    Prefix(String),
}

impl Pattern {
    fn parse(raw: &str) -> Result<Self, RightsError> {
        let bad = || RightsError(format!("{} is not a channel pattern", shorten(raw)));
        match raw.strip_suffix('*') {
            Some(prefix) => {
                let allowed =
                    |c: char| c.is_ascii_alphanumeric() || matches!(c, '#' | '-' | '_' | '.' | ':');
                if prefix.chars().all(allowed) {
                    Ok(Pattern::Prefix(prefix.to_owned()))
                } else {
                    Err(bad())
                }
            }
            None => ChannelName::parse(raw)
                .map(|name| Pattern::Exact(name.as_str().to_owned()))
                .map_err(|_| bad()),
        }
    }

    fn matches(&self, channel: &str) -> bool {
        match self {
            Pattern::Exact(name) => name == channel,
            Pattern::Prefix(prefix) => channel.starts_with(prefix.as_str()),
        }
    }

    fn to_key(&self) -> String {
        match self {
            Pattern::Exact(name) => name.clone(),
            Pattern::Prefix(prefix) => format!("{prefix}*"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Grant {
    pattern: Pattern,
    rights: Vec<Right>,
}

/// The rights of one identity: a union of grants, each a channel pattern with its rights.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rights {
    grants: Vec<Grant>,
}

/// Why a rights object was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RightsError(String);

impl Rights {
    /// No right on any channel.
    pub fn none() -> Self {
        Self::default()
    }

    /// Every right on every channel (anonymous mode, dev tokens).
    pub fn all() -> Self {
        Self {
            grants: vec![Grant {
                pattern: Pattern::Prefix(String::new()),
                rights: vec![Right::Read, Right::Publish],
            }],
        }
    }

    /// Parses the JSON shape from text (the default rights setting).
    pub fn parse_json(text: &str) -> Result<Self, RightsError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|_| RightsError("rights are not valid JSON".to_owned()))?;
        Self::from_value(&value)
    }

    /// Parses the JSON shape (a token's rights claim).
    pub fn from_value(value: &Value) -> Result<Self, RightsError> {
        let Value::Object(map) = value else {
            return Err(RightsError(
                "rights must be an object from channel pattern to a list of rights".to_owned(),
            ));
        };
        let mut grants = Vec::with_capacity(map.len());
        for (raw_pattern, names) in map {
            let pattern = Pattern::parse(raw_pattern)?;
            let Value::Array(names) = names else {
                return Err(RightsError(format!(
                    "the rights of {} must be a list",
                    shorten(raw_pattern)
                )));
            };
            let mut rights = Vec::with_capacity(names.len());
            for name in names {
                let right = name.as_str().and_then(Right::parse).ok_or_else(|| {
                    let shown = name
                        .as_str()
                        .map_or_else(|| name.to_string(), str::to_owned);
                    RightsError(format!(
                        "unknown right {} (known: read, publish)",
                        shorten(&shown)
                    ))
                })?;
                if !rights.contains(&right) {
                    rights.push(right);
                }
            }
            grants.push(Grant { pattern, rights });
        }
        Ok(Self { grants })
    }

    /// The JSON shape of these rights (what a token's rights claim would carry).
    pub fn to_value(&self) -> Value {
        let mut map = Map::new();
        for grant in &self.grants {
            let entry = map
                .entry(grant.pattern.to_key())
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(names) = entry {
                for right in &grant.rights {
                    let name = Value::from(right.as_str());
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
            }
        }
        Value::Object(map)
    }

    /// The union of these rights and `other`'s.
    pub fn merged(mut self, other: &Rights) -> Self {
        self.grants.extend(other.grants.iter().cloned());
        self
    }

    /// Whether these rights grant `right` on `channel`.
    pub fn allows(&self, channel: &ChannelName, right: Right) -> bool {
        self.grants
            .iter()
            .any(|grant| grant.rights.contains(&right) && grant.pattern.matches(channel.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ch(name: &str) -> ChannelName {
        ChannelName::parse(name).unwrap()
    }

    #[test]
    fn exact_pattern_grants_only_that_channel_and_those_rights() {
        let rights = Rights::from_value(&json!({"#general": ["read", "publish"]})).unwrap();
        assert!(rights.allows(&ch("#general"), Right::Read));
        assert!(rights.allows(&ch("#general"), Right::Publish));
        assert!(!rights.allows(&ch("#general2"), Right::Read));
        assert!(!rights.allows(&ch("#other"), Right::Read));
    }

    #[test]
    fn prefix_pattern_matches_names_with_that_prefix() {
        let rights = Rights::from_value(&json!({"#public-*": ["read"]})).unwrap();
        assert!(rights.allows(&ch("#public-news"), Right::Read));
        assert!(rights.allows(&ch("#public-"), Right::Read));
        assert!(!rights.allows(&ch("#public-news"), Right::Publish));
        assert!(!rights.allows(&ch("#private"), Right::Read));
        assert!(!rights.allows(&ch("public-news"), Right::Read));
    }

    #[test]
    fn bare_star_matches_every_channel() {
        let rights = Rights::from_value(&json!({"*": ["publish"]})).unwrap();
        assert!(rights.allows(&ch("#anything"), Right::Publish));
        assert!(rights.allows(&ch("x"), Right::Publish));
        assert!(!rights.allows(&ch("x"), Right::Read));
        assert!(Rights::all().allows(&ch("#any"), Right::Read));
        assert!(Rights::all().allows(&ch("#any"), Right::Publish));
    }

    #[test]
    fn merged_rights_are_the_union() {
        let defaults = Rights::parse_json(r##"{"#public-*":["read"]}"##).unwrap();
        let claim = Rights::from_value(&json!({"#team": ["read", "publish"]})).unwrap();
        let rights = claim.merged(&defaults);
        assert!(rights.allows(&ch("#public-a"), Right::Read));
        assert!(rights.allows(&ch("#team"), Right::Publish));
        assert!(!rights.allows(&ch("#public-a"), Right::Publish));
        assert!(!rights.allows(&ch("#secret"), Right::Read));
    }

    #[test]
    fn none_and_empty_lists_deny_everything() {
        assert!(!Rights::none().allows(&ch("#general"), Right::Read));
        let rights = Rights::from_value(&json!({"#general": []})).unwrap();
        assert!(!rights.allows(&ch("#general"), Right::Read));
    }

    #[test]
    fn malformed_rights_are_refused() {
        for bad in [
            json!(["#general"]),
            json!("read"),
            json!(null),
            json!({"#general": "read"}),
            json!({"#general": ["read", "write"]}),
            json!({"#general": [1]}),
            json!({"#a*b": ["read"]}),
            json!({"**": ["read"]}),
            json!({"#gen eral": ["read"]}),
            json!({"": ["read"]}),
        ] {
            assert!(Rights::from_value(&bad).is_err(), "accepted {bad}");
        }
        assert!(Rights::parse_json("{not json").is_err());
    }

    #[test]
    fn to_value_round_trips() {
        let value = json!({"#general": ["read", "publish"], "#public-*": ["read"], "*": []});
        let rights = Rights::from_value(&value).unwrap();
        assert_eq!(rights.to_value(), value);
        assert_eq!(Rights::all().to_value(), json!({"*": ["read", "publish"]}));
    }
}
