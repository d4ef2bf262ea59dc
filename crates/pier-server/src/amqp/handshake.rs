//! Connection negotiation: protocol header, start/start-ok (SASL PLAIN and AMQPLAIN),
//! tune/tune-ok, open/open-ok, as RabbitMQ performs it.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use pier_broker::{AuthError, Broker, User, VHost};
use pier_wire::{
    decode_frame, encode_method_frame, reply_code as rc, ConnectionClose, ConnectionOpenOk,
    ConnectionStart, ConnectionTune, FieldTable, FieldValue, Frame, LongString, Method,
    ShortString, FRAME_MIN_SIZE, PROTOCOL_HEADER,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::access::AccessControl;
use super::error::{AmqpException, ConnectionError};
use crate::config::ServerConfig;

/// What the handshake settled.
pub(crate) struct Negotiated {
    pub user: User,
    pub vhost: Arc<VHost>,
    pub frame_max: u32,
    pub channel_max: u16,
    pub heartbeat: u16,
    pub capabilities: ClientCapabilities,
    /// The client's properties from start-ok (product, version, platform, connection_name…).
    pub client_properties: FieldTable,
    /// The SASL mechanism the client logged in with.
    pub mechanism: String,
    /// Permission checks for this user on this vhost (holds the vhost connection slot).
    pub access: AccessControl,
}

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ClientCapabilities {
    pub consumer_cancel_notify: bool,
    pub authentication_failure_close: bool,
    /// The client understands connection.blocked / connection.unblocked.
    pub connection_blocked: bool,
}

impl ClientCapabilities {
    fn from_client_properties(props: &FieldTable) -> Self {
        let Some(FieldValue::Table(caps)) = props.get("capabilities") else {
            return Self::default();
        };
        let flag = |k: &str| caps.get(k).and_then(FieldValue::as_bool).unwrap_or(false);
        ClientCapabilities {
            consumer_cancel_notify: flag("consumer_cancel_notify"),
            authentication_failure_close: flag("authentication_failure_close"),
            connection_blocked: flag("connection.blocked"),
        }
    }
}

pub(crate) fn server_properties(config: &ServerConfig) -> FieldTable {
    let mut caps = FieldTable::new();
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "consumer_priorities",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
    ] {
        caps.insert(cap, FieldValue::Bool(true));
    }
    let s = |v: &str| FieldValue::LongString(LongString::from(v));
    let mut p = FieldTable::new();
    p.insert("capabilities", FieldValue::Table(caps));
    p.insert("product", s(&config.product));
    p.insert("version", s(&config.product_version));
    p.insert("platform", s("Rust"));
    p.insert("copyright", s("Copyright (c) the Pier developers"));
    p.insert(
        "information",
        s("A RabbitMQ-compatible message broker. Licensed under Apache-2.0"),
    );
    p.insert("cluster_name", s(&config.cluster_name));
    p
}

/// Reads frames one at a time during the handshake (no pipelining expected before open-ok).
pub(crate) struct FrameReader<R> {
    pub io: R,
    pub buf: BytesMut,
    pub frame_max: u32,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub async fn next_frame(&mut self) -> Result<Frame, ConnectionError> {
        loop {
            if let Some(frame) =
                decode_frame(&mut self.buf, self.frame_max).map_err(AmqpException::from)?
            {
                return Ok(frame);
            }
            self.buf.reserve(8192);
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return Err(ConnectionError::Eof);
            }
        }
    }

    /// The next method on channel 0, skipping heartbeats.
    async fn next_connection_method(&mut self) -> Result<Method, ConnectionError> {
        loop {
            match self.next_frame().await? {
                Frame::Heartbeat { .. } => continue,
                Frame::Method { channel: 0, method } => return Ok(method),
                other => {
                    return Err(AmqpException::new(
                        rc::COMMAND_INVALID,
                        format!(
                            "expected a connection method on channel 0, got {:?} on channel {}",
                            frame_kind(&other),
                            other.channel()
                        ),
                    )
                    .into())
                }
            }
        }
    }
}

fn frame_kind(f: &Frame) -> &'static str {
    match f {
        Frame::Method { method, .. } => method.name(),
        Frame::Header { .. } => "content header",
        Frame::Body { .. } => "content body",
        Frame::Heartbeat { .. } => "heartbeat",
    }
}

async fn send<W: AsyncWrite + Unpin>(w: &mut W, method: &Method) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(method.encoded_size() + 8);
    encode_method_frame(&mut buf, 0, method);
    w.write_all(&buf).await
}

/// Reads and checks the 8-byte protocol header. A wrong one is answered with the header Pier
/// speaks, then the socket is closed (AMQP 0-9-1 §4.2.2).
pub(crate) async fn read_protocol_header<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    r: &mut R,
    w: &mut W,
) -> Result<(), ConnectionError> {
    let mut header = [0u8; 8];
    let mut got = 0;
    while got < header.len() {
        let Some(rest) = header.get_mut(got..) else {
            break;
        };
        let n = r.read(rest).await?;
        if n == 0 {
            if got == 0 {
                return Err(ConnectionError::Eof);
            }
            break;
        }
        got += n;
        // Bail out early on garbage instead of waiting for 8 bytes that may never come.
        if header.get(..got) != PROTOCOL_HEADER.get(..got) {
            break;
        }
    }
    if got == header.len() && header == PROTOCOL_HEADER {
        return Ok(());
    }
    w.write_all(&PROTOCOL_HEADER).await?;
    let _ = w.flush().await;
    Err(ConnectionError::BadProtocolHeader)
}

/// Runs start → tune → open. On failure the right close (if any) has already been sent.
pub(crate) async fn negotiate<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    reader: &mut FrameReader<R>,
    w: &mut W,
    broker: &Arc<Broker>,
    config: &ServerConfig,
    peer: SocketAddr,
    cert_user: Option<&str>,
) -> Result<Negotiated, ConnectionError> {
    // SASL EXTERNAL is offered only over TLS with a verified client certificate.
    let mechanisms = if cert_user.is_some() {
        "PLAIN AMQPLAIN EXTERNAL"
    } else {
        "PLAIN AMQPLAIN"
    };
    send(
        w,
        &Method::ConnectionStart(ConnectionStart {
            version_major: 0,
            version_minor: 9,
            server_properties: server_properties(config),
            mechanisms: LongString::from(mechanisms),
            locales: LongString::from("en_US"),
        }),
    )
    .await?;

    let Method::ConnectionStartOk(start_ok) = reader.next_connection_method().await? else {
        return Err(
            AmqpException::new(rc::COMMAND_INVALID, "expected 'connection.start-ok'").into(),
        );
    };
    let capabilities = ClientCapabilities::from_client_properties(&start_ok.client_properties);
    let mechanism = start_ok.mechanism.as_str().to_owned();
    let from_loopback = peer.ip().is_loopback();
    let user = match (mechanism.as_str(), cert_user) {
        // The user is the certificate's subject CN; the response (an authzid) is ignored.
        ("EXTERNAL", Some(cn)) => broker.authenticate_external(cn, from_loopback),
        _ => {
            let credentials = match mechanism.as_str() {
                "PLAIN" => parse_plain(start_ok.response.as_bytes()),
                "AMQPLAIN" => parse_amqplain(&start_ok.response.0),
                _ => None,
            };
            match credentials {
                Some((user, pass)) => broker.authenticate(&user, &pass, from_loopback),
                None => Err(AuthError::InvalidCredentials(String::new())),
            }
        }
    };
    let user = match user {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(%peer, mechanism = %mechanism, "authentication failed: {e}");
            if capabilities.authentication_failure_close {
                let text = format!(
                    "ACCESS_REFUSED - Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
                );
                let close = Method::ConnectionClose(ConnectionClose {
                    reply_code: rc::ACCESS_REFUSED,
                    reply_text: ShortString::truncated(&text),
                    class_id: 0,
                    method_id: 0,
                });
                send(w, &close).await?;
                // Give the client a moment to read the close before the socket goes.
                let _ = tokio::time::timeout(config.close_timeout, reader.next_frame()).await;
            }
            return Err(ConnectionError::AuthFailed(e.to_string()));
        }
    };

    send(
        w,
        &Method::ConnectionTune(ConnectionTune {
            channel_max: config.channel_max,
            frame_max: config.frame_max,
            heartbeat: config.heartbeat,
        }),
    )
    .await?;
    let Method::ConnectionTuneOk(tune_ok) = reader.next_connection_method().await? else {
        return Err(
            AmqpException::new(rc::COMMAND_INVALID, "expected 'connection.tune-ok'").into(),
        );
    };
    let frame_max = match tune_ok.frame_max {
        0 => config.frame_max,
        n if n < FRAME_MIN_SIZE => {
            return Err(AmqpException::new(
                rc::NOT_ALLOWED,
                format!("frame_max={n} < {FRAME_MIN_SIZE} min size"),
            )
            .into())
        }
        n if n > config.frame_max => {
            return Err(AmqpException::new(
                rc::NOT_ALLOWED,
                format!("frame_max={n} > {} max size", config.frame_max),
            )
            .into())
        }
        n => n,
    };
    let channel_max = match tune_ok.channel_max {
        0 => config.channel_max,
        n => n.min(config.channel_max),
    };
    reader.frame_max = frame_max;

    let Method::ConnectionOpen(open) = reader.next_connection_method().await? else {
        return Err(AmqpException::new(rc::COMMAND_INVALID, "expected 'connection.open'").into());
    };
    // Failures are logged (with the peer) where the close is sent.
    let vhost = broker
        .open_vhost(&user.name, open.virtual_host.as_str())
        .map_err(|e| AmqpException::from(e).on_ids(10, 40))?;
    let slot = vhost
        .acquire_connection_slot(&user.name)
        .map_err(|e| AmqpException::from(e).on_ids(10, 40))?;
    let access = AccessControl::new(
        Arc::clone(broker),
        &user.name,
        vhost.name(),
        peer,
        Some(slot),
    );
    send(
        w,
        &Method::ConnectionOpenOk(ConnectionOpenOk {
            known_hosts: ShortString::default(),
        }),
    )
    .await?;
    Ok(Negotiated {
        user,
        vhost,
        frame_max,
        channel_max,
        heartbeat: tune_ok.heartbeat,
        capabilities,
        client_properties: start_ok.client_properties,
        mechanism,
        access,
    })
}

/// SASL PLAIN: `[authzid] NUL authcid NUL password`.
fn parse_plain(response: &[u8]) -> Option<(String, String)> {
    let mut parts = response.split(|b| *b == 0);
    let _authzid = parts.next()?;
    let user = parts.next()?;
    let pass = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    Some((
        String::from_utf8(user.to_vec()).ok()?,
        String::from_utf8(pass.to_vec()).ok()?,
    ))
}

/// AMQPLAIN: a field table without its length prefix, holding LOGIN and PASSWORD.
fn parse_amqplain(response: &Bytes) -> Option<(String, String)> {
    let len = u32::try_from(response.len()).ok()?;
    let mut framed = BytesMut::with_capacity(response.len() + 4);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(response);
    let table = pier_wire::decode_field_table(&framed.freeze()).ok()?;
    let get = |k: &str| match table.get(k)? {
        FieldValue::LongString(s) => s.to_str().map(str::to_owned),
        _ => None,
    };
    Some((get("LOGIN")?, get("PASSWORD")?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn plain_responses() {
        assert_eq!(
            parse_plain(b"\0guest\0guest"),
            Some(("guest".into(), "guest".into()))
        );
        assert_eq!(
            parse_plain(b"admin\0guest\0pw"),
            Some(("guest".into(), "pw".into()))
        );
        assert_eq!(parse_plain(b"guest"), None);
        assert_eq!(parse_plain(b"\0a\0b\0c"), None);
    }

    #[test]
    fn amqplain_response() {
        let mut t = FieldTable::new();
        t.insert("LOGIN", FieldValue::LongString("guest".into()));
        t.insert("PASSWORD", FieldValue::LongString("pw".into()));
        let mut buf = BytesMut::new();
        pier_wire::encode_field_table(&mut buf, &t).unwrap();
        let body = buf.freeze().slice(4..);
        assert_eq!(parse_amqplain(&body), Some(("guest".into(), "pw".into())));
        assert_eq!(parse_amqplain(&Bytes::from_static(b"\x05LOGIN")), None);
    }

    #[test]
    fn capabilities_advertised() {
        let p = server_properties(&ServerConfig::default());
        let Some(FieldValue::Table(caps)) = p.get("capabilities") else {
            panic!("no capabilities table");
        };
        assert_eq!(caps.len(), 9);
        assert_eq!(caps.get("basic.nack"), Some(&FieldValue::Bool(true)));
    }
}
