//! What a connection may do: rights per command, the token's expiry, and refreshing the token
//! without reconnecting (`auth`). A refresh that removes a right ends the subscriptions that
//! needed it, each with `unsubscribed` and the reason `forbidden`.

use std::future::Future;

use chat_core::channel::ChannelName;
use serde_json::Value;

use super::{Session, CLOSE_UNAUTHORIZED};
use crate::auth::gate::Principal;
use crate::auth::Right;
use crate::protocol::{ErrorCode, ProtocolError, ServerFrame};

impl Session {
    /// `Ok` when the principal holds `right` on `channel`, else the `forbidden` error.
    pub(super) fn authorize(
        &self,
        channel: &ChannelName,
        right: Right,
    ) -> Result<(), ProtocolError> {
        if self.principal.allows(channel, right) {
            return Ok(());
        }
        let what = match right {
            Right::Read => "read",
            Right::Publish => "publish to",
        };
        Err(ProtocolError::new(
            ErrorCode::Forbidden,
            format!("your token does not allow you to {what} {channel}"),
        ))
    }

    /// Completes when the token expires (never for anonymous connections). The timer is boxed
    /// so that anonymous connections do not carry its room.
    pub(super) fn expiry(&self) -> impl Future<Output = ()> + 'static {
        let timer = self
            .principal
            .expires_in()
            .map(|left| Box::pin(tokio::time::sleep(left)));
        async move {
            match timer {
                Some(timer) => timer.await,
                None => std::future::pending().await,
            }
        }
    }

    /// The token expired without a refresh: say so, then close with 4001. The close waits
    /// (briefly) for the queue to drain, so the error frame goes out before it.
    pub(super) async fn expire(&mut self) {
        self.reply_error(ProtocolError::new(
            ErrorCode::TokenExpired,
            "the token expired; connect again with a fresh one",
        ))
        .await;
        let drained = async {
            while !self.outbox.is_drained() {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), drained).await;
        self.outbox
            .closer
            .close(CLOSE_UNAUTHORIZED, "token expired");
    }

    /// `auth`: a fresh token replaces the current one; the connection and the subscriptions
    /// it still has rights for stay.
    pub(super) async fn reauthenticate(
        &mut self,
        token: &str,
        reply_to: Option<&Value>,
    ) -> Result<(), ProtocolError> {
        if self.ctx.gate.is_anonymous() {
            return Err(ProtocolError::new(
                ErrorCode::AuthDisabled,
                "this server runs without identities (AUTH_MODE=anonymous)",
            ));
        }
        let principal = self.ctx.gate.admit(Some(token)).await?;
        let Principal::User(identity) = &principal else {
            unreachable!("a server with identities admits users only");
        };
        let frame = ServerFrame::Authenticated {
            user_id: identity.user_id(),
            expires_at: identity
                .expires_at()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            reply_to,
        }
        .to_json();
        self.client = self.ctx.admission.ws_client(self.ip, principal.user_id());
        self.principal = principal;
        let revoked: Vec<ChannelName> = self
            .subscriptions
            .keys()
            .filter(|channel| !self.principal.allows(channel, Right::Read))
            .cloned()
            .collect();
        for channel in revoked {
            self.unsubscribe(&channel, Some("forbidden"), None).await;
        }
        self.send(frame).await;
        Ok(())
    }
}
