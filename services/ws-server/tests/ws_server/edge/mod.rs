//! The HTTP edge under abuse (issue #12): slow request heads, huge bodies, connection floods and
//! request floods, each from real sockets. Clients pick their loopback source address
//! (127.0.0.x) to stand for different users.

mod body;
mod connections;
mod rest_rates;
mod timeouts;

use std::net::{IpAddr, SocketAddr};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::MaybeTlsStream;

use crate::support::{Client, PATIENCE};

/// The loopback address 127.0.0.`n`, a client of its own.
pub fn source(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, n])
}

/// A TCP connection to `addr` from `source`.
pub async fn connect_from(addr: SocketAddr, source: IpAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    socket.connect(addr).await.expect("tcp connects")
}

/// An upgrade the server refused: its status, `Retry-After` and JSON body.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub retry_after: Option<u64>,
    pub body: Value,
}

/// Opens `/ws` from `source` with extra headers.
pub async fn open_from(
    addr: SocketAddr,
    source: IpAddr,
    headers: &[(&str, &str)],
) -> Result<Client, Refused> {
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    let stream = MaybeTlsStream::Plain(connect_from(addr, source).await);
    match tokio_tungstenite::client_async(request, stream).await {
        Ok((socket, _)) => Ok(Client { socket }),
        Err(WsError::Http(response)) => Err(Refused {
            status: response.status().as_u16(),
            retry_after: response
                .headers()
                .get("retry-after")
                .map(|value| value.to_str().unwrap().parse().unwrap()),
            body: serde_json::from_slice(response.body().as_deref().unwrap_or_default())
                .expect("a refusal has a JSON body"),
        }),
        Err(other) => panic!("unexpected websocket error {other}"),
    }
}

/// Opens `/ws` from `source`, expecting a refusal.
pub async fn refused_from(addr: SocketAddr, source: IpAddr, headers: &[(&str, &str)]) -> Refused {
    match open_from(addr, source, headers).await {
        Ok(_) => panic!("the upgrade from {source} {headers:?} was admitted"),
        Err(refused) => refused,
    }
}

/// An HTTP client whose connections come from `source`.
pub fn http_from(source: IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(source)
        .build()
        .unwrap()
}

/// An HTTP/1.1 response read off a raw socket.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// Reads one response (with a `Content-Length`) from `stream`; `None` if the connection ends
/// first.
pub async fn read_response(stream: &mut (impl AsyncReadExt + Unpin)) -> Option<RawResponse> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let read = tokio::time::timeout(PATIENCE, stream.read(&mut chunk))
            .await
            .expect("the response arrives")
            .ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = buffer[head_end..].to_vec();
    while body.len() < length {
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..read]);
    }
    Some(RawResponse { status, head, body })
}

/// Sends one request on a raw connection and reads its response.
pub async fn raw_exchange(stream: &mut TcpStream, request: &str) -> RawResponse {
    stream.write_all(request.as_bytes()).await.unwrap();
    read_response(stream)
        .await
        .expect("a response before the connection ends")
}
