//! A deliberately small AMQP 0-9-1 client on top of `pier-wire`: one TCP connection, one
//! channel (number 1), heartbeats off. Setup steps are synchronous RPCs; the publish and
//! consume hot loops (see `producer.rs` and `consumer.rs`) drive the socket and buffers
//! directly.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::BytesMut;
use pier_wire::{
    decode_frame, encode_method_frame, BasicConsume, BasicQos, ChannelCloseOk, ChannelOpen,
    ConfirmSelect, ConnectionClose, ConnectionCloseOk, ConnectionOpen, ConnectionStartOk,
    ConnectionTuneOk, ExchangeDeclare, FieldTable, FieldValue, Frame, LongString, Method,
    QueueBind, QueueDeclare, QueueDelete, ShortString, PROTOCOL_HEADER,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::message::CHANNEL;
use super::uri::AmqpUri;

/// Size of the receive buffer each connection reads into.
pub const READ_BUFFER: usize = 256 * 1024;
/// frame_max we ask for when the broker offers "no limit" (0).
const DEFAULT_FRAME_MAX: u32 = 131_072;
/// How long a setup step (connect, RPC) may take.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Client {
    pub stream: TcpStream,
    pub rbuf: BytesMut,
    pub wbuf: BytesMut,
    pub frame_max: u32,
}

/// Formats a close reason the way RabbitMQ logs it.
fn close_reason(code: u16, text: &ShortString, class_id: u16, method_id: u16) -> String {
    let cause = pier_wire::method_name(class_id, method_id)
        .map(|m| format!(" (in reply to {m})"))
        .unwrap_or_default();
    format!("{code} {}{cause}", text.as_str())
}

impl Client {
    /// Connects, authenticates (PLAIN), tunes (the broker's channel_max / frame_max,
    /// heartbeat 0), opens the vhost and channel 1.
    pub async fn connect(uri: &AmqpUri, name: &str) -> anyhow::Result<Client> {
        tokio::time::timeout(RPC_TIMEOUT, Self::connect_inner(uri, name))
            .await
            .map_err(|_| anyhow!("timed out connecting to {uri}"))?
    }

    async fn connect_inner(uri: &AmqpUri, name: &str) -> anyhow::Result<Client> {
        let stream = TcpStream::connect(uri.socket_addr())
            .await
            .with_context(|| format!("connecting to {}", uri.socket_addr()))?;
        stream.set_nodelay(true)?;
        let mut client = Client {
            stream,
            rbuf: BytesMut::with_capacity(READ_BUFFER),
            wbuf: BytesMut::with_capacity(64 * 1024),
            frame_max: pier_wire::FRAME_MIN_SIZE,
        };
        client.stream.write_all(&PROTOCOL_HEADER).await?;

        let start = match client.recv_method(0).await? {
            Method::ConnectionStart(s) => s,
            other => bail!("expected connection.start, got {other:?}"),
        };
        let mechanisms = start.mechanisms.to_str_lossy().into_owned();
        if !mechanisms.split(' ').any(|m| m == "PLAIN") {
            bail!("the broker does not offer PLAIN authentication (offers {mechanisms:?})");
        }
        let mut capabilities = FieldTable::new();
        for cap in [
            "publisher_confirms",
            "basic.nack",
            "consumer_cancel_notify",
            "connection.blocked",
            "authentication_failure_close",
        ] {
            capabilities.insert(cap, FieldValue::Bool(true));
        }
        let mut props = FieldTable::new();
        props.insert("product", FieldValue::from("pier-bench"));
        props.insert("version", FieldValue::from(env!("CARGO_PKG_VERSION")));
        props.insert("connection_name", FieldValue::from(name));
        props.insert("capabilities", FieldValue::Table(capabilities));
        let mut response = Vec::with_capacity(uri.user.len() + uri.password.len() + 2);
        response.push(0);
        response.extend_from_slice(uri.user.as_bytes());
        response.push(0);
        response.extend_from_slice(uri.password.as_bytes());
        client
            .send(
                0,
                &Method::ConnectionStartOk(ConnectionStartOk {
                    client_properties: props,
                    mechanism: ShortString::from_static("PLAIN"),
                    response: LongString::from(response),
                    locale: ShortString::from_static("en_US"),
                }),
            )
            .await?;

        let tune = match client.recv_method(0).await {
            Ok(Method::ConnectionTune(t)) => t,
            Ok(Method::ConnectionSecure(_)) => bail!("the broker asked for a SASL challenge"),
            Ok(other) => bail!("expected connection.tune, got {other:?}"),
            Err(e) => return Err(e.context("authentication failed (check user and password)")),
        };
        let frame_max = if tune.frame_max == 0 {
            DEFAULT_FRAME_MAX
        } else {
            tune.frame_max
        };
        client.frame_max = frame_max;
        client
            .send(
                0,
                &Method::ConnectionTuneOk(ConnectionTuneOk {
                    channel_max: tune.channel_max,
                    frame_max,
                    heartbeat: 0,
                }),
            )
            .await?;
        client
            .send(
                0,
                &Method::ConnectionOpen(ConnectionOpen {
                    virtual_host: ShortString::try_from_string(uri.vhost.clone())?,
                    capabilities: ShortString::default(),
                    insist: false,
                }),
            )
            .await?;
        match client.recv_method(0).await? {
            Method::ConnectionOpenOk(_) => {}
            other => bail!("expected connection.open-ok, got {other:?}"),
        }
        match client
            .rpc(Method::ChannelOpen(ChannelOpen::default()))
            .await?
        {
            Method::ChannelOpenOk(_) => {}
            other => bail!("expected channel.open-ok, got {other:?}"),
        }
        Ok(client)
    }

    /// Encodes and writes one method frame.
    pub async fn send(&mut self, channel: u16, method: &Method) -> anyhow::Result<()> {
        self.wbuf.clear();
        pier_wire::try_encode_method_frame(&mut self.wbuf, channel, method)?;
        self.stream.write_all(&self.wbuf).await?;
        self.wbuf.clear();
        Ok(())
    }

    /// Reads until one whole frame is buffered and returns it.
    pub async fn recv_frame(&mut self) -> anyhow::Result<Frame> {
        loop {
            if let Some(frame) = decode_frame(&mut self.rbuf, self.frame_max)? {
                return Ok(frame);
            }
            self.rbuf.reserve(READ_BUFFER);
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                bail!("the broker closed the connection");
            }
        }
    }

    /// Waits for the next method on `channel`, skipping content and heartbeats, and turns
    /// channel and connection closes into errors (answering them first).
    pub async fn recv_method(&mut self, channel: u16) -> anyhow::Result<Method> {
        loop {
            match self.recv_frame().await? {
                Frame::Method {
                    channel: ch,
                    method,
                } => {
                    if let Some(err) = self.handle_close(ch, &method).await {
                        return Err(err);
                    }
                    if ch == channel {
                        return Ok(method);
                    }
                }
                Frame::Header { .. } | Frame::Body { .. } | Frame::Heartbeat { .. } => {}
            }
        }
    }

    /// If `method` closes the connection or the channel, answers it and returns the error to
    /// report.
    pub async fn handle_close(&mut self, channel: u16, method: &Method) -> Option<anyhow::Error> {
        match method {
            Method::ConnectionClose(c) => {
                let _ = self
                    .send(0, &Method::ConnectionCloseOk(ConnectionCloseOk))
                    .await;
                Some(anyhow!(
                    "the broker closed the connection: {}",
                    close_reason(c.reply_code, &c.reply_text, c.class_id, c.method_id)
                ))
            }
            Method::ChannelClose(c) => {
                let _ = self
                    .send(channel, &Method::ChannelCloseOk(ChannelCloseOk))
                    .await;
                Some(anyhow!(
                    "the broker closed the channel: {}",
                    close_reason(c.reply_code, &c.reply_text, c.class_id, c.method_id)
                ))
            }
            _ => None,
        }
    }

    /// Sends `method` on the bench channel and waits for the reply.
    pub async fn rpc(&mut self, method: Method) -> anyhow::Result<Method> {
        let name = pier_wire::method_name(method.class_id(), method.method_id()).unwrap_or("?");
        let step = async {
            self.send(CHANNEL, &method).await?;
            self.recv_method(CHANNEL).await
        };
        tokio::time::timeout(RPC_TIMEOUT, step)
            .await
            .map_err(|_| anyhow!("no reply to {name} within {RPC_TIMEOUT:?}"))?
            .with_context(|| format!("{name} failed"))
    }

    /// `queue.declare`; returns the number of messages ready in the queue.
    pub async fn declare_queue(
        &mut self,
        queue: &str,
        durable: bool,
        quorum: bool,
    ) -> anyhow::Result<u32> {
        let mut arguments = pier_wire::FieldTable::new();
        if quorum {
            arguments.insert(
                "x-queue-type",
                pier_wire::FieldValue::LongString("quorum".into()),
            );
        }
        match self
            .rpc(Method::QueueDeclare(QueueDeclare {
                queue: ShortString::try_from_string(queue.to_owned())?,
                durable,
                arguments,
                ..QueueDeclare::default()
            }))
            .await?
        {
            Method::QueueDeclareOk(ok) => Ok(ok.message_count),
            other => bail!("expected queue.declare-ok, got {other:?}"),
        }
    }

    pub async fn declare_exchange(
        &mut self,
        exchange: &str,
        kind: &str,
        durable: bool,
    ) -> anyhow::Result<()> {
        match self
            .rpc(Method::ExchangeDeclare(ExchangeDeclare {
                exchange: ShortString::try_from_string(exchange.to_owned())?,
                kind: ShortString::try_from_string(kind.to_owned())?,
                durable,
                ..ExchangeDeclare::default()
            }))
            .await?
        {
            Method::ExchangeDeclareOk(_) => Ok(()),
            other => bail!("expected exchange.declare-ok, got {other:?}"),
        }
    }

    pub async fn bind_queue(
        &mut self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
    ) -> anyhow::Result<()> {
        match self
            .rpc(Method::QueueBind(QueueBind {
                queue: ShortString::try_from_string(queue.to_owned())?,
                exchange: ShortString::try_from_string(exchange.to_owned())?,
                routing_key: ShortString::try_from_string(routing_key.to_owned())?,
                ..QueueBind::default()
            }))
            .await?
        {
            Method::QueueBindOk(_) => Ok(()),
            other => bail!("expected queue.bind-ok, got {other:?}"),
        }
    }

    /// `queue.delete`; returns the number of messages it still held.
    pub async fn delete_queue(&mut self, queue: &str) -> anyhow::Result<u32> {
        match self
            .rpc(Method::QueueDelete(QueueDelete {
                queue: ShortString::try_from_string(queue.to_owned())?,
                ..QueueDelete::default()
            }))
            .await?
        {
            Method::QueueDeleteOk(ok) => Ok(ok.message_count),
            other => bail!("expected queue.delete-ok, got {other:?}"),
        }
    }

    pub async fn qos(&mut self, prefetch: u16) -> anyhow::Result<()> {
        match self
            .rpc(Method::BasicQos(BasicQos {
                prefetch_size: 0,
                prefetch_count: prefetch,
                global: false,
            }))
            .await?
        {
            Method::BasicQosOk(_) => Ok(()),
            other => bail!("expected basic.qos-ok, got {other:?}"),
        }
    }

    pub async fn confirm_select(&mut self) -> anyhow::Result<()> {
        match self
            .rpc(Method::ConfirmSelect(ConfirmSelect { nowait: false }))
            .await?
        {
            Method::ConfirmSelectOk(_) => Ok(()),
            other => bail!("expected confirm.select-ok, got {other:?}"),
        }
    }

    /// `basic.consume`. Deliveries may follow the consume-ok immediately; they stay in
    /// `rbuf` for the consumer loop.
    pub async fn consume(
        &mut self,
        queue: &str,
        consumer_tag: &str,
        no_ack: bool,
    ) -> anyhow::Result<()> {
        let method = Method::BasicConsume(BasicConsume {
            queue: ShortString::try_from_string(queue.to_owned())?,
            consumer_tag: ShortString::try_from_string(consumer_tag.to_owned())?,
            no_ack,
            ..BasicConsume::default()
        });
        self.send(CHANNEL, &method).await?;
        // Wait for consume-ok without consuming any delivery frames that come after it.
        let step = async {
            loop {
                if let Some(frame) = decode_frame(&mut self.rbuf, self.frame_max)? {
                    if let Frame::Method { channel, method } = frame {
                        if let Some(err) = self.handle_close(channel, &method).await {
                            return Err(err);
                        }
                        if let Method::BasicConsumeOk(_) = method {
                            return Ok(());
                        }
                    }
                    continue;
                }
                self.rbuf.reserve(READ_BUFFER);
                if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                    bail!("the broker closed the connection");
                }
            }
        };
        tokio::time::timeout(RPC_TIMEOUT, step)
            .await
            .map_err(|_| anyhow!("no reply to basic.consume within {RPC_TIMEOUT:?}"))?
            .context("basic.consume failed")
    }

    /// Writes whatever is in `wbuf` and clears it.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Closes once the work is done and counted: a slow or failed close (a broker still
    /// working through a backlog can take a while to answer) is only worth a note.
    pub async fn close_after_run(self, who: &str) {
        if let Err(e) = self.close().await {
            eprintln!("note: {who}: closing the connection: {e:#}");
        }
    }

    /// Polite `connection.close`: waits (briefly) for close-ok, discarding anything else.
    pub async fn close(mut self) -> anyhow::Result<()> {
        let method = Method::ConnectionClose(ConnectionClose {
            reply_code: 200,
            reply_text: ShortString::from_static("pier bench done"),
            class_id: 0,
            method_id: 0,
        });
        let step = async {
            self.wbuf.clear();
            encode_method_frame(&mut self.wbuf, 0, &method);
            self.stream.write_all(&self.wbuf).await?;
            loop {
                match self.recv_frame().await? {
                    Frame::Method {
                        method: Method::ConnectionCloseOk(_),
                        ..
                    } => return Ok(()),
                    Frame::Method {
                        method: Method::ConnectionClose(_),
                        ..
                    } => {
                        // Both sides closing at once: answer and stop.
                        let _ = self
                            .send(0, &Method::ConnectionCloseOk(ConnectionCloseOk))
                            .await;
                        return Ok(());
                    }
                    _ => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), step)
            .await
            .map_err(|_| anyhow!("no connection.close-ok within 5 s"))?
    }
}
