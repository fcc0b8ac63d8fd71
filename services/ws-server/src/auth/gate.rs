//! The gate every client passes: who it is ([`Principal`]), from a token or, in anonymous
//! mode, nobody in particular; and which browser origins may connect.

use std::time::Duration;

use chat_core::channel::ChannelName;

use super::origin::Origins;
use super::{AuthError, DevTokenError, Identity, Right, Verifier};

/// Who is on the other end.
#[derive(Debug, Clone)]
pub enum Principal {
    /// `AUTH_MODE=anonymous`: every right, no identity (authors are the client's word).
    Anonymous,
    /// A verified token.
    User(Identity),
}

impl Principal {
    pub fn allows(&self, channel: &ChannelName, right: Right) -> bool {
        match self {
            Principal::Anonymous => true,
            Principal::User(identity) => identity.allows(channel, right),
        }
    }

    /// The author name stored with a publish (from the token), if there is one.
    pub fn author(&self) -> Option<&str> {
        match self {
            Principal::Anonymous => None,
            Principal::User(identity) => Some(identity.author()),
        }
    }

    /// The user id stored with a publish (the token's `sub`), if there is one.
    pub fn user_id(&self) -> Option<&str> {
        match self {
            Principal::Anonymous => None,
            Principal::User(identity) => Some(identity.user_id()),
        }
    }

    /// How long until the token expires (never for anonymous).
    pub fn expires_in(&self) -> Option<Duration> {
        match self {
            Principal::Anonymous => None,
            Principal::User(identity) => Some(identity.expires_in()),
        }
    }
}

#[derive(Clone)]
pub struct Gate {
    verifier: Option<Verifier>,
    origins: Origins,
    dev_tokens: bool,
}

impl Gate {
    pub fn anonymous(origins: Origins) -> Self {
        Self {
            verifier: None,
            origins,
            dev_tokens: false,
        }
    }

    pub fn jwt(verifier: Verifier, origins: Origins, dev_tokens: bool) -> Self {
        Self {
            verifier: Some(verifier),
            origins,
            dev_tokens,
        }
    }

    pub fn is_anonymous(&self) -> bool {
        self.verifier.is_none()
    }

    pub fn origins(&self) -> &Origins {
        &self.origins
    }

    /// Admits a client presenting `token` (none: `missing_token`, unless anonymous).
    pub async fn admit(&self, token: Option<&str>) -> Result<Principal, AuthError> {
        let Some(verifier) = &self.verifier else {
            return Ok(Principal::Anonymous);
        };
        let token = token.ok_or(AuthError::MissingToken)?;
        verifier.verify(token).await.map(Principal::User)
    }

    /// Signs a development token for `name`, when `AUTH_DEV_TOKENS` is on (else `None`).
    pub fn dev_token(&self, name: &str, ttl: Duration) -> Option<Result<String, DevTokenError>> {
        let verifier = self.verifier.as_ref().filter(|_| self.dev_tokens)?;
        Some(verifier.sign_dev_token(name, ttl))
    }

    /// Fetches a configured JWKS ahead of the first client.
    pub async fn prefetch(&self) {
        if let Some(verifier) = &self.verifier {
            verifier.prefetch().await;
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bearer_header_gives_its_token() {
        assert_eq!(bearer("Bearer abc.def.ghi"), Some("abc.def.ghi"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("abc"), None);
    }
}
