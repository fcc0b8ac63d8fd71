//! `GET /ws`: who may open a WebSocket. Refused before the upgrade, with a JSON body: while
//! draining (503); past the client IP's rate of new connections (429 `rate_limited`), the
//! process's connections (503 `server_full`) or the IP's (429 `too_many_connections`), all with
//! `Retry-After` and before any other work; from a browser origin that is not allowed (403);
//! with a missing or invalid `Authorization: Bearer` token (401, or 503 while the signing keys
//! cannot be fetched).
//! Browsers cannot send that header nor read a 401, so they pass the token as `?token=`: an
//! invalid one gets the upgrade and an immediate close 4001 with the reason, so the page knows
//! to fetch a new token instead of reconnecting blindly. The token never reaches a log.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::future::Either;
use futures::{FutureExt, SinkExt, StreamExt};
use poem::http::{header, StatusCode};
use poem::web::websocket::{CloseCode, Message, WebSocket, WebSocketConfig};
use poem::web::Data;
use poem::{handler, IntoResponse, Request, Response};
use tokio_util::task::TaskTracker;

use crate::admission::Admission;
use crate::auth::gate::bearer;
use crate::auth::AuthError;
use crate::error::problem;
use crate::session::{self, SessionContext, CLOSE_UNAUTHORIZED};

/// Initial read buffer of a WebSocket connection: tungstenite reserves 128 KiB by default, most
/// of an idle connection's memory; client frames are small commands, and the buffer still grows
/// up to the frame limit when one needs it.
const READ_BUFFER_BYTES: usize = 2048;

pub struct Upgrade {
    pub sessions: Arc<SessionContext>,
    pub tracker: TaskTracker,
    pub draining: Arc<AtomicBool>,
    pub max_frame_bytes: usize,
    pub admission: Arc<Admission>,
}

#[handler]
pub async fn ws(
    request: &Request,
    websocket: WebSocket,
    Data(state): Data<&Arc<Upgrade>>,
) -> Response {
    if state.draining.load(Ordering::Relaxed) {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the server is shutting down; reconnect elsewhere",
        );
    }
    // Before any work (token verification, JWKS): the caps and the rate. The slot goes into the
    // session's future and is given back when the session ends.
    let ip = state.admission.client_ip(request);
    let slot = match state.admission.admit_websocket(ip) {
        Ok(slot) => slot,
        Err(refusal) => return refusal.into_response(),
    };
    let gate = &state.sessions.gate;
    let header = |name| {
        request
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
    };
    if !gate
        .origins()
        .allows(header(header::ORIGIN), header(header::HOST))
    {
        return problem(
            StatusCode::FORBIDDEN,
            "forbidden_origin",
            "this origin may not open a WebSocket here (WS_ALLOWED_ORIGINS)",
        );
    }
    let from_header = header(header::AUTHORIZATION).and_then(bearer);
    let admitted = match (from_header, query_token(request)) {
        (Some(token), _) => match gate.admit(Some(token)).await {
            Ok(principal) => Ok(principal),
            Err(err) => return unauthorized(&err),
        },
        (None, Some(token)) => gate.admit(Some(&token)).await,
        (None, None) => match gate.admit(None).await {
            Ok(principal) => Ok(principal),
            Err(err) => return unauthorized(&err),
        },
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_frame_size(Some(state.max_frame_bytes))
        .max_message_size(Some(state.max_frame_bytes));
    let sessions = Arc::clone(&state.sessions);
    let tracker = state.tracker.clone();
    // Either, not an async block around both: a block would keep the socket twice in every
    // connection's task (once captured, once in the session it moves into). The slot rides in
    // `map`'s closure, dropped when the session ends (or its future is dropped).
    websocket
        .config(config)
        .on_upgrade(move |socket| {
            let session = match admitted {
                Ok(principal) => Either::Left(session::run(socket, sessions, principal, ip)),
                Err(err) => Either::Right(close_unauthorized(socket, err)),
            };
            tracker.track_future(session.map(move |()| drop(slot)))
        })
        .into_response()
}

/// The `token` query parameter (browsers), if any.
fn query_token(request: &Request) -> Option<String> {
    let query = request.uri().query()?;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == "token")
        .map(|(_, value)| value.into_owned())
        .filter(|token| !token.is_empty())
}

/// How long a refused socket waits for the client's close reply.
const CLOSE_REPLY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// An invalid query token: the upgraded socket closes at once with 4001 and the error code.
/// It then reads (and ignores) what the client sent meanwhile, until the client's close reply
/// or [`CLOSE_REPLY_WAIT`]: a socket dropped with unread data is reset, and a client that had
/// already sent a command (a `subscribe` right on open) would see 1006 instead of the 4001 that
/// tells it to fetch a new token.
async fn close_unauthorized(mut socket: poem::web::websocket::WebSocketStream, err: AuthError) {
    let code = CloseCode::from(CLOSE_UNAUTHORIZED);
    if socket
        .send(Message::Close(Some((code, err.code().to_owned()))))
        .await
        .is_err()
    {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_REPLY_WAIT, async {
        while let Some(Ok(message)) = socket.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
    let _ = socket.close().await;
}

fn unauthorized(err: &AuthError) -> Response {
    if err.is_server_side() {
        return problem(StatusCode::SERVICE_UNAVAILABLE, err.code(), err.to_string());
    }
    let mut response = problem(StatusCode::UNAUTHORIZED, err.code(), err.to_string());
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        poem::http::HeaderValue::from_static(r#"Bearer realm="chat""#),
    );
    response
}
