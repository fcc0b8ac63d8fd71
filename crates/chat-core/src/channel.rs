//! Channel names.
//!
//! A channel name is 1 to [`MAX_CHANNEL_LEN`] bytes of ASCII letters, digits and `# - _ . :`.
//! It must contain at least one letter or digit. `#kerno-challenge` is valid; whitespace, `/`,
//! `*` and non-ASCII characters are not, so a name is always safe in a Redis channel, a URL path
//! segment (once `#` is percent-encoded) and a log line.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// Longest accepted channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 64;

/// A validated channel name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ChannelName(String);

/// Why a channel name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelNameError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is longer than {MAX_CHANNEL_LEN} bytes")]
    TooLong,
    #[error("channel name contains {0:?}; allowed are ASCII letters, digits and # - _ . :")]
    BadCharacter(char),
    #[error("channel name needs at least one letter or digit")]
    NoAlphanumeric,
}

impl ChannelName {
    pub fn parse(raw: &str) -> Result<Self, ChannelNameError> {
        if raw.is_empty() {
            return Err(ChannelNameError::Empty);
        }
        if raw.len() > MAX_CHANNEL_LEN {
            return Err(ChannelNameError::TooLong);
        }
        if let Some(bad) = raw
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '#' | '-' | '_' | '.' | ':')))
        {
            return Err(ChannelNameError::BadCharacter(bad));
        }
        if !raw.chars().any(|c| c.is_ascii_alphanumeric()) {
            return Err(ChannelNameError::NoAlphanumeric);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ChannelName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for ChannelName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        ChannelName::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_reference_channel_and_common_shapes() {
        for ok in [
            "#kerno-challenge",
            "general",
            "team.ops:alerts",
            "a",
            "room_42",
        ] {
            assert_eq!(ChannelName::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_empty_long_and_unsafe_names() {
        assert_eq!(ChannelName::parse(""), Err(ChannelNameError::Empty));
        assert_eq!(
            ChannelName::parse(&"a".repeat(MAX_CHANNEL_LEN + 1)),
            Err(ChannelNameError::TooLong)
        );
        assert!(ChannelName::parse(&"a".repeat(MAX_CHANNEL_LEN)).is_ok());
        assert_eq!(
            ChannelName::parse("a b"),
            Err(ChannelNameError::BadCharacter(' '))
        );
        assert_eq!(
            ChannelName::parse("a*"),
            Err(ChannelNameError::BadCharacter('*'))
        );
        assert_eq!(
            ChannelName::parse("é"),
            Err(ChannelNameError::BadCharacter('é'))
        );
        assert_eq!(
            ChannelName::parse("#--"),
            Err(ChannelNameError::NoAlphanumeric)
        );
    }
}
