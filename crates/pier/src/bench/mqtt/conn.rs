//! `mqtt://` URIs, the connection handshake (CONNECT/CONNACK, SUBSCRIBE/SUBACK) and the
//! pre-encoded PUBLISH that publishers copy and patch.

use std::fmt;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::{Bytes, BytesMut};
use pier_mqtt_wire::{
    Connect, Packet, Properties, ProtocolVersion, Publish, QoS, Subscribe, Subscription,
    SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::bench::uri::AmqpUri;

/// The MQTT port when the URI names none.
pub const DEFAULT_PORT: u16 = 1883;

/// A broker to connect to: `mqtt://[user[:password]@]host[:port][/]`.
#[derive(Clone, PartialEq, Eq)]
pub struct MqttUri {
    pub host: String,
    pub port: u16,
    /// `None`: CONNECT without a user name (anonymous).
    pub user: Option<String>,
    pub password: Option<String>,
}

/// Shown without the password.
impl fmt::Display for MqttUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match &self.user {
            Some(u) => write!(f, "mqtt://{u}@{host}:{}", self.port),
            None => write!(f, "mqtt://{host}:{}", self.port),
        }
    }
}

impl fmt::Debug for MqttUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl MqttUri {
    pub fn socket_addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl std::str::FromStr for MqttUri {
    type Err = anyhow::Error;

    /// Parses `mqtt://[user[:password]@]host[:port][/]` (user and password
    /// percent-decoded; port 1883 by default; no credentials: an anonymous CONNECT).
    fn from_str(s: &str) -> anyhow::Result<MqttUri> {
        let Some(rest) = s.strip_prefix("mqtt://") else {
            if s.starts_with("mqtts://") {
                bail!("mqtts:// (TLS) is not supported by pier bench");
            }
            bail!("the MQTT URI must start with mqtt:// (got {s:?})");
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let has_port = match host_port.strip_prefix('[') {
            Some(b) => b.split_once(']').is_some_and(|(_, p)| p.starts_with(':')),
            None => host_port.contains(':'),
        };
        // The AMQP parser does the authority (percent-decoding, IPv6 brackets).
        let amqp: AmqpUri = format!("amqp://{authority}/").parse()?;
        let (user, password) = match authority.rsplit_once('@') {
            None => (None, None),
            Some((u, _)) if u.contains(':') => (Some(amqp.user), Some(amqp.password)),
            Some(_) => (Some(amqp.user), None),
        };
        Ok(MqttUri {
            host: amqp.host,
            port: if has_port { amqp.port } else { DEFAULT_PORT },
            user,
            password,
        })
    }
}

/// Parses `--mqtt-version`.
pub fn parse_version(s: &str) -> anyhow::Result<ProtocolVersion> {
    match s {
        "3.1.1" | "311" | "4" => Ok(ProtocolVersion::V3_1_1),
        "5" | "5.0" => Ok(ProtocolVersion::V5),
        "3.1" | "31" | "3" => Ok(ProtocolVersion::V3_1),
        other => bail!("--mqtt-version: 3.1.1, 5 or 3.1 (got {other:?})"),
    }
}

pub fn version_name(v: ProtocolVersion) -> &'static str {
    match v {
        ProtocolVersion::V3_1 => "3.1",
        ProtocolVersion::V3_1_1 => "3.1.1",
        ProtocolVersion::V5 => "5.0",
    }
}

/// A connected, accepted MQTT connection.
pub struct MqttConn {
    pub stream: TcpStream,
    /// Bytes read past the CONNACK (and SUBACK).
    pub buf: BytesMut,
    pub version: ProtocolVersion,
    /// The server's Receive Maximum (5.0; 65,535 otherwise): QoS 1 PUBLISHes it accepts
    /// unacknowledged.
    pub receive_maximum: u16,
    /// The largest packet the bench accepts.
    pub max_packet: u32,
}

/// Encodes a packet the bench built itself (an error here is the bench's own bug).
pub fn encode(packet: &Packet, version: ProtocolVersion, out: &mut BytesMut) -> anyhow::Result<()> {
    packet
        .encode(version, out)
        .map_err(|e| anyhow!("encoding {}: {e}", packet.name()))
}

impl MqttConn {
    /// Opens a TCP connection and sends CONNECT (clean session); fails unless the CONNACK
    /// accepts it.
    pub async fn connect(
        uri: &MqttUri,
        version: ProtocolVersion,
        client_id: &str,
        keep_alive: u16,
        max_packet: u32,
    ) -> anyhow::Result<MqttConn> {
        let stream = TcpStream::connect(uri.socket_addr())
            .await
            .with_context(|| format!("connecting to {}", uri.socket_addr()))?;
        stream.set_nodelay(true)?;
        let mut c = MqttConn {
            stream,
            buf: BytesMut::with_capacity(256),
            version,
            receive_maximum: u16::MAX,
            max_packet,
        };
        let mut properties = Properties::default();
        if version == ProtocolVersion::V5 {
            properties.maximum_packet_size = Some(max_packet);
        }
        let connect = Packet::Connect(Box::new(Connect {
            protocol: version,
            clean_start: true,
            keep_alive,
            properties,
            client_id: client_id.to_owned(),
            will: None,
            username: uri.user.clone(),
            password: uri.password.clone().map(Bytes::from),
        }));
        c.send(&connect).await?;
        match c.recv().await? {
            Packet::ConnAck(ack) if !ack.reason_code.is_error() => {
                if let Some(m) = ack.properties.receive_maximum {
                    c.receive_maximum = m;
                }
                Ok(c)
            }
            Packet::ConnAck(ack) => bail!(
                "CONNECT refused: {} (0x{:02x})",
                ack.reason_code.description(),
                ack.reason_code.code()
            ),
            other => bail!("expected CONNACK, got {}", other.name()),
        }
    }

    pub async fn send(&mut self, packet: &Packet) -> anyhow::Result<()> {
        let mut out = BytesMut::new();
        encode(packet, self.version, &mut out)?;
        self.stream.write_all(&out).await?;
        Ok(())
    }

    /// The next packet (cancel safe: bytes read stay in `buf`).
    pub async fn recv(&mut self) -> anyhow::Result<Packet> {
        loop {
            if let Some(p) = Packet::decode_from(&mut self.buf, self.version, self.max_packet)
                .map_err(|e| anyhow!("decoding a packet from the broker: {e}"))?
            {
                return Ok(p);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                bail!("connection closed by the broker");
            }
        }
    }

    /// SUBSCRIBE to one filter and wait for its SUBACK; returns the granted QoS. Anything
    /// else that arrives first (a retained message) is dropped.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> anyhow::Result<QoS> {
        self.send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            subscriptions: vec![Subscription {
                filter: filter.to_owned(),
                options: SubscriptionOptions {
                    qos,
                    ..SubscriptionOptions::default()
                },
            }],
        }))
        .await?;
        loop {
            match self.recv().await? {
                Packet::SubAck(ack) if ack.packet_id == 1 => {
                    let code = ack
                        .reason_codes
                        .first()
                        .copied()
                        .context("SUBACK without a reason code")?;
                    if code.is_error() {
                        bail!(
                            "SUBSCRIBE to {filter:?} refused: {} (0x{:02x})",
                            code.description(),
                            code.code()
                        );
                    }
                    return QoS::from_u8(code.code()).context("SUBACK with a bad granted QoS");
                }
                Packet::Disconnect(d) => bail!(
                    "disconnected by the broker: {}",
                    d.reason_code.description()
                ),
                _ => {}
            }
        }
    }

    /// DISCONNECT, then wait (briefly) for the broker to close, so that the closing side's
    /// TIME_WAIT is the broker's, not one of the bench's ephemeral ports.
    pub async fn disconnect(mut self) {
        let packet = Packet::Disconnect(pier_mqtt_wire::Disconnect::default());
        if self.send(&packet).await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let mut sink = [0u8; 256];
            while matches!(self.stream.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
    }
}

/// One PUBLISH encoded once; each message is a copy with the packet identifier and the send
/// time patched in.
pub struct PublishTemplate {
    bytes: Vec<u8>,
    /// Offset of the packet identifier (QoS 1 only).
    id_at: Option<usize>,
    /// Offset of the payload, whose first 8 bytes are the send time (see `message.rs`).
    payload_at: usize,
}

impl PublishTemplate {
    pub fn new(
        version: ProtocolVersion,
        topic: &str,
        qos: QoS,
        payload: Vec<u8>,
    ) -> anyhow::Result<PublishTemplate> {
        let payload_len = payload.len();
        let packet = Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.to_owned(),
            packet_id: if qos == QoS::AtMostOnce { 0 } else { 1 },
            properties: Properties::default(),
            payload: Bytes::from(payload),
        });
        let mut out = BytesMut::new();
        encode(&packet, version, &mut out)?;
        let bytes = out.to_vec();
        let payload_at = bytes
            .len()
            .checked_sub(payload_len)
            .context("PUBLISH shorter than its payload")?;
        // Fixed header: one octet + remaining length (a varint); then the topic (u16 length +
        // octets), then the packet identifier.
        let varint_len = bytes
            .iter()
            .skip(1)
            .position(|b| b & 0x80 == 0)
            .context("PUBLISH without a remaining length")?
            + 1;
        let id_at = (qos != QoS::AtMostOnce).then_some(1 + varint_len + 2 + topic.len());
        Ok(PublishTemplate {
            bytes,
            id_at,
            payload_at,
        })
    }

    /// Bytes per PUBLISH.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Appends one PUBLISH with packet identifier `id` (ignored at QoS 0) sent at `send_ns`.
    pub fn put(&self, out: &mut Vec<u8>, id: u16, send_ns: u64) {
        let start = out.len();
        out.extend_from_slice(&self.bytes);
        if let Some(at) = self.id_at {
            if let Some(slot) = out.get_mut(start + at..start + at + 2) {
                slot.copy_from_slice(&id.to_be_bytes());
            }
        }
        if let Some(payload) = out.get_mut(start + self.payload_at..) {
            crate::bench::message::write_stamp(payload, send_ns);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::bench::message::{make_body, read_stamp, Stamp};

    #[test]
    fn uris() {
        let u: MqttUri = "mqtt://guest:guest@127.0.0.1:1884".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 1884));
        assert_eq!(
            (u.user.as_deref(), u.password.as_deref()),
            (Some("guest"), Some("guest"))
        );
        assert_eq!(u.socket_addr(), "127.0.0.1:1884");
        assert_eq!(u.to_string(), "mqtt://guest@127.0.0.1:1884");
        let u: MqttUri = "mqtt://localhost".parse().unwrap();
        assert_eq!((u.port, u.user, u.password), (1883, None, None));
        let u: MqttUri = "mqtt://a%40b:p%3Aw@[::1]/".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 1883));
        assert_eq!(u.socket_addr(), "[::1]:1883");
        assert_eq!(
            (u.user.as_deref(), u.password.as_deref()),
            (Some("a@b"), Some("p:w"))
        );
        let u: MqttUri = "mqtt://alice@[::1]:1999".parse().unwrap();
        assert_eq!((u.port, u.password), (1999, None));
        for bad in ["amqp://x", "mqtts://x", "mqtt://h:99999", "mqtt://h:x"] {
            assert!(bad.parse::<MqttUri>().is_err(), "{bad}");
        }
        assert_eq!(parse_version("5").unwrap(), ProtocolVersion::V5);
        assert_eq!(parse_version("3.1.1").unwrap(), ProtocolVersion::V3_1_1);
        assert!(parse_version("2").is_err());
    }

    /// A patched copy of the template is the PUBLISH the codec reads back, with the
    /// identifier and the send time in place, for every version and QoS.
    #[test]
    fn publish_template_patching() {
        for version in [
            ProtocolVersion::V3_1,
            ProtocolVersion::V3_1_1,
            ProtocolVersion::V5,
        ] {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
                // 200 bytes: a two-octet remaining length.
                for size in [16usize, 200, 70_000] {
                    let t = PublishTemplate::new(version, "bench/t1", qos, make_body(size, 42))
                        .unwrap();
                    let mut out = Vec::new();
                    t.put(&mut out, 513, 7);
                    t.put(&mut out, 65_535, 1_234_567_890);
                    assert_eq!(out.len(), 2 * t.len());
                    let mut buf = BytesMut::from(&out[..]);
                    for (id, sent) in [(513u16, 7u64), (65_535, 1_234_567_890)] {
                        let Some(Packet::Publish(p)) =
                            Packet::decode_from(&mut buf, version, 1 << 20).unwrap()
                        else {
                            panic!("not a PUBLISH");
                        };
                        assert_eq!((p.qos, p.topic.as_str()), (qos, "bench/t1"));
                        let want_id = if qos == QoS::AtMostOnce { 0 } else { id };
                        assert_eq!(p.packet_id, want_id);
                        assert_eq!(p.payload.len(), size);
                        assert_eq!(
                            read_stamp(&p.payload, p.payload.len() as u64, 42),
                            Stamp::Sent(sent)
                        );
                        assert_eq!(
                            read_stamp(&p.payload, p.payload.len() as u64, 43),
                            Stamp::Foreign
                        );
                    }
                    assert!(buf.is_empty());
                }
            }
        }
    }
}
