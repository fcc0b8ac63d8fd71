//! The identity a verified token carries: user id (`sub`), author name, expiry and rights.
//!
//! The author name is the `name` claim when it passes the author rule
//! ([`chat_core::message::validate_author`]), else `sub` when that passes, else the token is
//! refused with [`AuthError::NoAuthor`].

use std::time::Duration;

use chat_core::channel::ChannelName;
use chat_core::message::validate_author;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::error::AuthError;
use super::rights::{Right, Rights};

/// Who a verified token speaks for, and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    user_id: String,
    author: String,
    expires_at: DateTime<Utc>,
    rights: Rights,
}

impl Identity {
    /// Builds the identity from claims whose signature and registered claims (`exp`, `nbf`,
    /// `iss`, `aud`) were already validated.
    pub(crate) fn from_claims(
        claims: &Map<String, Value>,
        rights_claim: &str,
        default_rights: &Rights,
    ) -> Result<Self, AuthError> {
        let user_id = match claims.get("sub") {
            Some(Value::String(sub)) if !sub.is_empty() => sub.clone(),
            _ => return Err(AuthError::MissingClaim("sub")),
        };
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_i64)
            .and_then(|exp| DateTime::from_timestamp(exp, 0))
            .ok_or(AuthError::MissingClaim("exp"))?;
        let author = match claims.get("name") {
            Some(Value::String(name)) if validate_author(name).is_ok() => name.clone(),
            _ if validate_author(&user_id).is_ok() => user_id.clone(),
            _ => return Err(AuthError::NoAuthor),
        };
        let granted = match claims.get(rights_claim) {
            None => Rights::none(),
            Some(value) => Rights::from_value(value)
                .map_err(|err| AuthError::InvalidRights(err.to_string()))?,
        };
        Ok(Self {
            user_id,
            author,
            expires_at,
            rights: granted.merged(default_rights),
        })
    }

    /// The token's subject (`sub`): a stable user id.
    pub fn user_id(&self) -> &str {
        &self.user_id
    }

    /// The author name for this identity's messages (passes the author rule).
    pub fn author(&self) -> &str {
        &self.author
    }

    /// When the token expires (`exp`, without leeway).
    pub fn expires_at(&self) -> DateTime<Utc> {
        self.expires_at
    }

    /// Time left until [`Identity::expires_at`], zero when already past: arm the session's
    /// timer with it.
    pub fn expires_in(&self) -> Duration {
        (self.expires_at - Utc::now()).to_std().unwrap_or_default()
    }

    /// The token's rights merged with the default rights.
    pub fn rights(&self) -> &Rights {
        &self.rights
    }

    /// Shorthand for `self.rights().allows(channel, right)`.
    pub fn allows(&self, channel: &ChannelName, right: Right) -> bool {
        self.rights.allows(channel, right)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn identity(claims: Value) -> Result<Identity, AuthError> {
        let Value::Object(map) = claims else {
            panic!("claims must be an object")
        };
        Identity::from_claims(&map, "chat", &Rights::none())
    }

    #[test]
    fn name_is_the_author_when_valid() {
        let id = identity(json!({"sub": "u-1", "name": "Ada", "exp": 2_000_000_000})).unwrap();
        assert_eq!((id.user_id(), id.author()), ("u-1", "Ada"));
        assert_eq!(id.expires_at().timestamp(), 2_000_000_000);
    }

    #[test]
    fn invalid_or_missing_name_falls_back_to_sub() {
        let long = "x".repeat(65);
        for name in [
            json!(long),
            json!("bad\nname"),
            json!(""),
            json!(7),
            Value::Null,
        ] {
            let id = identity(json!({"sub": "u-1", "name": name, "exp": 2_000_000_000})).unwrap();
            assert_eq!(id.author(), "u-1", "name {name}");
        }
        let id = identity(json!({"sub": "u-1", "exp": 2_000_000_000})).unwrap();
        assert_eq!(id.author(), "u-1");
    }

    #[test]
    fn neither_name_nor_sub_valid_is_no_author() {
        let long_sub = "s".repeat(65);
        let err = identity(json!({"sub": long_sub, "name": "\u{7}", "exp": 2_000_000_000}));
        assert_eq!(err.unwrap_err().code(), "no_author");
    }

    #[test]
    fn missing_or_empty_sub_is_refused() {
        for claims in [
            json!({"name": "Ada", "exp": 2_000_000_000}),
            json!({"sub": "", "name": "Ada", "exp": 2_000_000_000}),
            json!({"sub": 42, "name": "Ada", "exp": 2_000_000_000}),
        ] {
            assert_eq!(
                identity(claims).unwrap_err(),
                AuthError::MissingClaim("sub")
            );
        }
    }
}
