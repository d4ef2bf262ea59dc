//! A WebSocket listener that turns each connection into a plain byte stream, so protocol
//! servers written for TCP (`stomp::serve_connection`, later `mqtt::serve_connection`) serve
//! WebSocket clients unchanged, as RabbitMQ's Web-STOMP and Web-MQTT plugins do.
//!
//! ```text
//!  TcpListener ─accept─► HTTP upgrade (path, subprotocol) ─► WebSocket
//!        inbound pump:  WS text/binary message payloads ─► duplex ─► protocol reader
//!        outbound pump: protocol writer ─► duplex ─► one WS message per chunk read
//!                       (text frames when `Framing::Text` and the chunk is UTF-8, as
//!                        Web-STOMP sends; binary otherwise, as MQTT needs)
//! ```
//!
//! Buffering is bounded: the duplex pipe holds at most `buffer` bytes each way, so a slow
//! WebSocket peer stops the protocol writer (and a slow protocol reader stops reading the
//! socket).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How outgoing bytes are framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Text frames (binary for a chunk that is not UTF-8): STOMP, as Web-STOMP's default.
    Text,
    /// Binary frames: MQTT.
    Binary,
}

/// What a WebSocket endpoint accepts.
#[derive(Debug, Clone)]
pub struct WsEndpoint {
    /// The HTTP path of the upgrade request (`/ws`); others get 404.
    pub path: String,
    /// Subprotocols offered, in preference order; the first the client also lists is
    /// chosen. A client listing none of them is still accepted, with no subprotocol.
    pub protocols: Vec<&'static str>,
    pub framing: Framing,
    /// Bytes buffered each way between the socket and the protocol server.
    pub buffer: usize,
    /// Largest WebSocket message accepted.
    pub max_message_size: usize,
}

/// STOMP's subprotocols, as Web-STOMP offers them.
pub const STOMP_PROTOCOLS: &[&str] = &["v12.stomp", "v11.stomp", "v10.stomp", "stomp"];
/// MQTT's subprotocols, as Web-MQTT offers them.
pub const MQTT_PROTOCOLS: &[&str] = &["mqtt", "mqttv3.1"];

impl WsEndpoint {
    pub fn stomp() -> WsEndpoint {
        WsEndpoint {
            path: "/ws".to_owned(),
            protocols: STOMP_PROTOCOLS.to_vec(),
            framing: Framing::Text,
            buffer: 256 * 1024,
            max_message_size: 8 * 1024 * 1024,
        }
    }

    pub fn mqtt() -> WsEndpoint {
        WsEndpoint {
            protocols: MQTT_PROTOCOLS.to_vec(),
            framing: Framing::Binary,
            ..WsEndpoint::stomp()
        }
    }
}

/// The subprotocol to answer for a `Sec-WebSocket-Protocol` request header.
pub fn choose_protocol(offered: &[&'static str], requested: Option<&str>) -> Option<&'static str> {
    let requested: Vec<&str> = requested?.split(',').map(str::trim).collect();
    offered.iter().copied().find(|p| requested.contains(p))
}

/// Accepts WebSocket clients on `listener` until `shutdown`, handing each one's byte stream
/// (with the TCP peer and local addresses and a token cancelled at shutdown) to `serve`.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    endpoint: WsEndpoint,
    shutdown: CancellationToken,
    serve: F,
) where
    F: Fn(DuplexStream, SocketAddr, SocketAddr, CancellationToken) -> Fut
        + Clone
        + Send
        + Sync
        + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let tracker = TaskTracker::new();
    let conns = CancellationToken::new();
    loop {
        let (socket, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok((s, p)) => (s, SocketAddr::new(p.ip().to_canonical(), p.port())),
                Err(e) => {
                    tracing::warn!("WebSocket listener: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = socket.set_nodelay(true);
        let local = socket
            .local_addr()
            .map_or(peer, |a| SocketAddr::new(a.ip().to_canonical(), a.port()));
        let (endpoint, serve, token) = (endpoint.clone(), serve.clone(), conns.child_token());
        tracker.spawn(async move {
            match accept(socket, &endpoint).await {
                Ok(io) => serve(io, peer, local, token).await,
                Err(e) => tracing::debug!(%peer, "WebSocket upgrade refused: {e}"),
            }
        });
    }
    conns.cancel();
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
}

/// Runs the upgrade on `socket` and returns the protocol server's end of the byte pipe; the
/// pumps run until either side closes.
pub async fn accept(
    socket: TcpStream,
    endpoint: &WsEndpoint,
) -> Result<DuplexStream, tokio_tungstenite::tungstenite::Error> {
    let offered = endpoint.protocols.clone();
    let path = endpoint.path.clone();
    // The handshake library's callback type: its error is an HTTP response.
    #[allow(clippy::result_large_err)]
    let callback = move |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != path {
            let mut e = ErrorResponse::new(Some("Not Found".to_owned()));
            *e.status_mut() = StatusCode::NOT_FOUND;
            return Err(e);
        }
        let requested = req
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok());
        if let Some(p) = choose_protocol(&offered, requested) {
            resp.headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(p));
        }
        Ok(resp)
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(endpoint.max_message_size))
        .max_frame_size(Some(endpoint.max_message_size));
    let ws = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::accept_hdr_async_with_config(socket, callback, Some(config)),
    )
    .await
    .map_err(|_| {
        tokio_tungstenite::tungstenite::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "WebSocket handshake timed out",
        ))
    })??;
    let (server_end, pump_end) = tokio::io::duplex(endpoint.buffer);
    let framing = endpoint.framing;
    let buffer = endpoint.buffer;
    tokio::spawn(pump(ws, pump_end, framing, buffer));
    Ok(server_end)
}

/// Moves bytes between the WebSocket and the pipe until one of them ends.
async fn pump(
    ws: tokio_tungstenite::WebSocketStream<TcpStream>,
    pipe: DuplexStream,
    framing: Framing,
    buffer: usize,
) {
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (mut pipe_rx, mut pipe_tx) = tokio::io::split(pipe);
    let inbound = async {
        while let Some(msg) = ws_rx.next().await {
            let data = match msg {
                Ok(Message::Text(t)) => bytes::Bytes::from(t),
                Ok(Message::Binary(b)) => b,
                Ok(Message::Close(_)) | Err(_) => break,
                // Pings are answered by tungstenite on the next write or flush.
                Ok(_) => continue,
            };
            if pipe_tx.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = pipe_tx.shutdown().await;
    };
    let outbound = async {
        let mut buf = vec![0u8; buffer.clamp(4096, 1024 * 1024)];
        loop {
            let n = match pipe_rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let chunk = buf.get(..n).unwrap_or_default();
            let msg = match (framing, std::str::from_utf8(chunk)) {
                (Framing::Text, Ok(text)) => Message::text(text),
                _ => Message::binary(chunk.to_vec()),
            };
            if ws_tx.send(msg).await.is_err() {
                break;
            }
        }
        let _ = ws_tx.send(Message::Close(None)).await;
        let _ = ws_tx.close().await;
    };
    // Either direction ending ends the connection.
    tokio::select! {
        () = inbound => {}
        () = outbound => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_first_offered_protocol_the_client_lists() {
        assert_eq!(
            choose_protocol(STOMP_PROTOCOLS, Some("v10.stomp, v12.stomp")),
            Some("v12.stomp")
        );
        assert_eq!(
            choose_protocol(STOMP_PROTOCOLS, Some("stomp")),
            Some("stomp")
        );
        assert_eq!(choose_protocol(STOMP_PROTOCOLS, Some("mqtt")), None);
        assert_eq!(choose_protocol(STOMP_PROTOCOLS, None), None);
        assert_eq!(
            choose_protocol(MQTT_PROTOCOLS, Some("mqttv3.1")),
            Some("mqttv3.1")
        );
    }
}
