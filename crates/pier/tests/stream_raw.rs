//! The stream protocol frame by frame (a raw client on pier-stream-wire), for what the client
//! libraries hide: server heartbeats and the close of a silent client, `MetadataUpdate` to a
//! subscriber whose stream is deleted, `PublishError` for an undeclared publisher,
//! `StreamStats`, `ResolveOffsetSpec`, `ExchangeCommandVersions` and a wrong password,
//! `MetadataUpdate` to a publisher whose stream is deleted, stream names, a connection closed
//! through the management API (`PIER_TEST_MGMT_URL` with RabbitMQ); and
//! the order of a single active consumer group's hand-over (Pier only: RabbitMQ 3.10 has no
//! single active consumer).
//!
//! Validated against RabbitMQ 3.10.8: `PIER_TEST_STREAM_ADDR=127.0.0.1:5553 cargo test -p pier
//! --test stream_raw` (the stats test is skipped there: 3.10 has neither command).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use pier_stream_wire::entry::Entry;
use pier_stream_wire::{
    ClientCommand, ConsumerUpdateResponse, Create, CreateSuperStream, DeclarePublisher, Delete,
    ExchangeCommandVersions, OffsetSpec, Open, PeerProperties, Publish, PublishVersion,
    PublishedMessage, ResolveOffsetSpec, ResponseCode, SaslAuthenticate, SaslHandshake,
    ServerCommand, StreamStats, Subscribe, Tune, Unsubscribe,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::Broker;

const STEP: Duration = Duration::from_secs(10);

struct Raw {
    io: TcpStream,
    rx: BytesMut,
    next_id: u32,
}

impl Raw {
    async fn connect(port: u16) -> Raw {
        Raw {
            io: TcpStream::connect(("127.0.0.1", port)).await.unwrap(),
            rx: BytesMut::new(),
            next_id: 1,
        }
    }

    fn id(&mut self) -> u32 {
        self.next_id += 1;
        self.next_id
    }

    async fn send(&mut self, c: ClientCommand) {
        let mut out = BytesMut::new();
        c.encode(&mut out).unwrap();
        self.io.write_all(&out).await.unwrap();
    }

    /// The next frame from the server; `None` once it closed the socket.
    async fn recv(&mut self) -> Option<ServerCommand> {
        let read = async {
            loop {
                if let Some(c) = ServerCommand::decode_from(&mut self.rx, 1 << 20).unwrap() {
                    return Some(c);
                }
                match self.io.read_buf(&mut self.rx).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(STEP, read)
            .await
            .expect("no frame in time")
    }

    /// The next frame that is not a heartbeat, if one comes within `wait`.
    async fn within(&mut self, wait: Duration) -> Option<ServerCommand> {
        let read = async {
            loop {
                if let Some(c) = ServerCommand::decode_from(&mut self.rx, 1 << 20).unwrap() {
                    if matches!(c, ServerCommand::Heartbeat) {
                        continue;
                    }
                    return c;
                }
                // read_buf keeps what it read in `rx` if the timeout drops this future.
                let n = self.io.read_buf(&mut self.rx).await.unwrap();
                assert!(n > 0, "the server closed the connection");
            }
        };
        tokio::time::timeout(wait, read).await.ok()
    }

    /// A `ConsumerUpdate` for `subscription_id`: whether it activates, and its correlation id.
    async fn consumer_update(&mut self, subscription_id: u8) -> (bool, u32) {
        match self.reply().await {
            ServerCommand::ConsumerUpdate(u) => {
                assert_eq!(u.subscription_id, subscription_id);
                (u.active, u.correlation_id)
            }
            other => panic!("expected a consumer update, got {other:?}"),
        }
    }

    async fn answer_update(&mut self, correlation_id: u32) {
        self.send(ClientCommand::ConsumerUpdateResponse(
            ConsumerUpdateResponse {
                correlation_id,
                code: ResponseCode::Ok,
                offset: Some(OffsetSpec::First),
            },
        ))
        .await;
    }

    /// Subscribes `subscription_id` to `stream` as a member of single active consumer group
    /// `name` of super stream `super_stream`.
    async fn subscribe_sac(&mut self, subscription_id: u8, stream: &str, super_stream: &str) {
        self.subscribe_at_first(
            subscription_id,
            stream,
            10,
            vec![
                ("single-active-consumer".into(), "true".into()),
                ("name".into(), "app".into()),
                ("super-stream".into(), super_stream.into()),
            ],
        )
        .await;
    }

    /// The next frame must be a `MetadataUpdate` saying `stream` is not available.
    async fn stream_not_available(&mut self, stream: &str) {
        match self.reply().await {
            ServerCommand::MetadataUpdate(m) => {
                assert_eq!(m.stream, stream);
                assert_eq!(m.code, ResponseCode::StreamNotAvailable);
            }
            other => panic!("expected a metadata update, got {other:?}"),
        }
    }

    /// The next frame must be a `PublishError`.
    async fn publish_error(&mut self) -> pier_stream_wire::PublishError {
        match self.reply().await {
            ServerCommand::PublishError(e) => e,
            other => panic!("expected a publish error, got {other:?}"),
        }
    }

    /// The next frame that is not a heartbeat.
    async fn reply(&mut self) -> ServerCommand {
        loop {
            match self.recv().await {
                Some(ServerCommand::Heartbeat) => {}
                Some(c) => return c,
                None => panic!("the server closed the connection"),
            }
        }
    }

    /// Peer properties, SASL PLAIN, tune (with `heartbeat` seconds), open `/`.
    async fn open(port: u16, password: &str, heartbeat: u32) -> Result<Raw, ServerCommand> {
        let mut c = Raw::connect(port).await;
        let id = c.id();
        c.send(ClientCommand::PeerProperties(PeerProperties {
            correlation_id: id,
            properties: vec![("product".into(), "pier-raw-test".into())],
        }))
        .await;
        assert!(matches!(
            c.reply().await,
            ServerCommand::PeerPropertiesResponse(_)
        ));
        let id = c.id();
        c.send(ClientCommand::SaslHandshake(SaslHandshake {
            correlation_id: id,
        }))
        .await;
        assert!(matches!(
            c.reply().await,
            ServerCommand::SaslHandshakeResponse(_)
        ));
        let id = c.id();
        c.send(ClientCommand::SaslAuthenticate(SaslAuthenticate {
            correlation_id: id,
            mechanism: "PLAIN".into(),
            data: Bytes::from(format!("\0guest\0{password}")),
        }))
        .await;
        match c.reply().await {
            ServerCommand::SaslAuthenticateResponse(r) if r.code == ResponseCode::Ok => {}
            other => return Err(other),
        }
        let ServerCommand::Tune(t) = c.reply().await else {
            panic!("no tune");
        };
        c.send(ClientCommand::Tune(Tune {
            frame_max: t.frame_max,
            heartbeat,
        }))
        .await;
        let id = c.id();
        c.send(ClientCommand::Open(Open {
            correlation_id: id,
            virtual_host: "/".into(),
        }))
        .await;
        match c.reply().await {
            ServerCommand::OpenResponse(r) => assert_eq!(r.code, ResponseCode::Ok),
            other => panic!("expected open response, got {other:?}"),
        }
        Ok(c)
    }

    /// A request with a plain response: its code.
    async fn call(&mut self, c: ClientCommand) -> ResponseCode {
        self.send(c).await;
        match self.reply().await {
            ServerCommand::CreateResponse(r)
            | ServerCommand::DeleteResponse(r)
            | ServerCommand::DeclarePublisherResponse(r)
            | ServerCommand::SubscribeResponse(r) => r.code,
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Subscribes at `first` with `credit`; the response must be Ok.
    async fn subscribe_first(&mut self, subscription_id: u8, stream: &str, credit: u16) {
        self.subscribe_at_first(subscription_id, stream, credit, vec![])
            .await;
    }

    /// Subscribes at `first` with `credit` and `properties`; the response must be Ok.
    async fn subscribe_at_first(
        &mut self,
        subscription_id: u8,
        stream: &str,
        credit: u16,
        properties: Vec<(String, String)>,
    ) {
        let id = self.id();
        let code = self
            .call(ClientCommand::Subscribe(Subscribe {
                correlation_id: id,
                subscription_id,
                stream: stream.into(),
                offset: OffsetSpec::First,
                credit,
                properties,
            }))
            .await;
        assert_eq!(code, ResponseCode::Ok);
    }

    /// Deletes `stream`; the response must be Ok.
    async fn delete(&mut self, stream: &str) {
        let id = self.id();
        let code = self
            .call(ClientCommand::Delete(Delete {
                correlation_id: id,
                stream: stream.into(),
            }))
            .await;
        assert_eq!(code, ResponseCode::Ok);
    }

    /// Waits for confirms of `n` publishing ids (nothing else may come first).
    async fn confirms(&mut self, n: u64) {
        let mut confirmed = 0u64;
        while confirmed < n {
            match self.reply().await {
                ServerCommand::PublishConfirm(p) => confirmed += p.publishing_ids.len() as u64,
                other => panic!("expected confirms, got {other:?}"),
            }
        }
    }

    async fn declare_publisher(&mut self, publisher_id: u8, stream: &str) {
        let id = self.id();
        let code = self
            .call(ClientCommand::DeclarePublisher(DeclarePublisher {
                correlation_id: id,
                publisher_id,
                reference: String::new(),
                stream: stream.into(),
            }))
            .await;
        assert_eq!(code, ResponseCode::Ok);
    }

    /// Publishes one small AMQP 1.0 message per publishing id.
    async fn publish(&mut self, publisher_id: u8, ids: impl IntoIterator<Item = u64>) {
        let messages = ids
            .into_iter()
            .map(|publishing_id| PublishedMessage {
                publishing_id,
                filter_value: None,
                entry: Entry::Simple(Bytes::from_static(b"\x00Sw\xa1\x01x")),
            })
            .collect();
        self.send(ClientCommand::Publish(Publish {
            version: PublishVersion::V1,
            publisher_id,
            messages,
        }))
        .await;
    }

    async fn stats(&mut self, stream: &str) -> pier_stream_wire::StreamStatsResponse {
        let id = self.id();
        self.send(ClientCommand::StreamStats(StreamStats {
            correlation_id: id,
            stream: stream.into(),
        }))
        .await;
        match self.reply().await {
            ServerCommand::StreamStatsResponse(r) => r,
            other => panic!("expected stream stats, got {other:?}"),
        }
    }

    async fn create(&mut self, stream: &str) {
        let id = self.id();
        let code = self
            .call(ClientCommand::Create(Create {
                correlation_id: id,
                stream: stream.into(),
                arguments: vec![],
            }))
            .await;
        assert_eq!(code, ResponseCode::Ok);
    }
}

/// The stream port: `PIER_TEST_STREAM_ADDR` (`127.0.0.1:port`, e.g. a RabbitMQ) when set,
/// else the test's own pier process.
fn stream_port(broker: &Broker) -> Option<u16> {
    if let Ok(addr) = std::env::var("PIER_TEST_STREAM_ADDR") {
        return addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok());
    }
    if broker.is_external() {
        eprintln!("skipped: needs a pier process or PIER_TEST_STREAM_ADDR");
        return None;
    }
    broker.stream_port()
}

fn name(prefix: &str) -> String {
    common::unique(prefix)
}

#[tokio::test]
async fn the_server_sends_heartbeats_and_closes_a_silent_client() {
    let broker = Broker::start();
    let Some(port) = stream_port(&broker) else {
        return;
    };
    let mut c = Raw::open(port, "guest", 1).await.unwrap();
    let started = Instant::now();
    // Idle: the server's heartbeats arrive, and as we never send one, it gives up on us
    // after missing ours for a few intervals (RabbitMQ: two).
    let mut heartbeats = 0;
    loop {
        match c.recv().await {
            Some(ServerCommand::Heartbeat) => heartbeats += 1,
            Some(ServerCommand::Close(_)) | None => break,
            Some(other) => panic!("unexpected {other:?}"),
        }
        assert!(started.elapsed() < STEP, "still open after {STEP:?}");
    }
    assert!(heartbeats >= 1, "closed without a heartbeat");
}

#[tokio::test]
async fn a_subscriber_gets_metadata_update_when_its_stream_is_deleted() {
    let broker = Broker::start();
    let Some(port) = stream_port(&broker) else {
        return;
    };
    let s = name("raw-meta");
    let mut admin = Raw::open(port, "guest", 0).await.unwrap();
    admin.create(&s).await;
    let mut sub = Raw::open(port, "guest", 0).await.unwrap();
    sub.subscribe_first(3, &s, 10).await;
    admin.delete(&s).await;
    sub.stream_not_available(&s).await;
}

/// A stream deleted under a publisher: the publisher's connection gets a `MetadataUpdate`
/// at once, as RabbitMQ's reader (which monitors the streams of its publishers too) sends
/// it, without waiting for the next publish (RabbitMQ's JavaScript client closes the
/// publisher on it).
#[tokio::test]
async fn a_publisher_gets_metadata_update_when_its_stream_is_deleted() {
    let broker = Broker::start();
    let Some(port) = stream_port(&broker) else {
        return;
    };
    let s = name("raw-meta-pub");
    let mut admin = Raw::open(port, "guest", 0).await.unwrap();
    admin.create(&s).await;
    let mut publisher = Raw::open(port, "guest", 0).await.unwrap();
    publisher.declare_publisher(1, &s).await;
    admin.delete(&s).await;
    publisher.stream_not_available(&s).await;
    // The publisher is gone with its stream.
    publisher.publish(1, [1]).await;
    let e = publisher.publish_error().await;
    assert!(e
        .errors
        .iter()
        .all(|e| e.code == ResponseCode::PublisherDoesNotExist));
}

/// `DELETE /api/connections/{name}` on a stream connection closes its socket without a
/// `Close` frame, as RabbitMQ's stream reader does (it stops and closes the socket):
/// RabbitMQ's JavaScript stream client fails on a `Close` the server starts. The management
/// URL: `PIER_TEST_MGMT_URL` (with the stream address of the same RabbitMQ), else the pier's.
#[tokio::test]
async fn a_connection_closed_through_the_api_gets_no_close_frame() {
    let broker = Broker::start();
    let Some(port) = stream_port(&broker) else {
        return;
    };
    let Some(base) = std::env::var("PIER_TEST_MGMT_URL")
        .ok()
        .or_else(|| broker.http_url().map(str::to_owned))
    else {
        eprintln!("skipped: needs a management URL");
        return;
    };
    let mut c = Raw::open(port, "guest", 0).await.unwrap();
    let local = c.io.local_addr().unwrap().port();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let auth = "Basic Z3Vlc3Q6Z3Vlc3Q=";
    // RabbitMQ lists a connection with its next statistics emission (every 5 s).
    let deadline = Instant::now() + 2 * STEP;
    let name = loop {
        let body = agent
            .get(format!("{base}/api/connections"))
            .header("Authorization", auth)
            .call()
            .unwrap()
            .into_body()
            .read_to_string()
            .unwrap();
        let list: serde_json::Value = serde_json::from_str(&body).unwrap();
        let found = list
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["peer_port"].as_u64() == Some(u64::from(local)));
        if let Some(n) = found.and_then(|c| c["name"].as_str()) {
            break n.to_owned();
        }
        assert!(Instant::now() < deadline, "the connection is not listed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let status = agent
        .delete(format!("{base}/api/connections/{}", common::enc(&name)))
        .header("Authorization", auth)
        .call()
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(status, 204);
    match c.recv().await {
        None => {}
        Some(frame) => panic!("expected the socket to close, got {frame:?}"),
    }
}

/// Stream and super stream names as RabbitMQ's `enforce_correct_name` takes them: CR and LF
/// removed, empty and `amq.*` names refused with precondition failed.
#[tokio::test]
async fn streams_are_created_under_names_rabbitmq_accepts() {
    let broker = Broker::start();
    let Some(port) = stream_port(&broker) else {
        return;
    };
    let mut c = Raw::open(port, "guest", 0).await.unwrap();
    for bad in ["", "amq.raw-name", "\r\n"] {
        let id = c.id();
        let code = c
            .call(ClientCommand::Create(Create {
                correlation_id: id,
                stream: bad.into(),
                arguments: vec![],
            }))
            .await;
        assert_eq!(code, ResponseCode::PreconditionFailed, "{bad:?}");
    }
    let s = name("raw-name");
    let id = c.id();
    let code = c
        .call(ClientCommand::Create(Create {
            correlation_id: id,
            stream: format!("{s}\r\n"),
            arguments: vec![],
        }))
        .await;
    assert_eq!(code, ResponseCode::Ok);
    // Created without the CR LF.
    c.delete(&s).await;
}

#[tokio::test]
async fn publishing_with_an_undeclared_publisher_gets_publish_error() {
    let broker = Broker::start();
    let Some(port) = stream_port(&broker) else {
        return;
    };
    let s = name("raw-puberr");
    let mut c = Raw::open(port, "guest", 0).await.unwrap();
    c.create(&s).await;
    c.publish(77, [1, 2]).await;
    let e = c.publish_error().await;
    assert_eq!(e.publisher_id, 77);
    let ids: Vec<u64> = e.errors.iter().map(|e| e.publishing_id).collect();
    assert_eq!(ids, vec![1, 2]);
    assert!(e
        .errors
        .iter()
        .all(|e| e.code == ResponseCode::PublisherDoesNotExist));
    // The connection goes on: a declared publisher is confirmed.
    c.declare_publisher(1, &s).await;
    c.publish(1, [5]).await;
    match c.reply().await {
        ServerCommand::PublishConfirm(p) => assert_eq!(p.publishing_ids, vec![5]),
        other => panic!("expected a confirm, got {other:?}"),
    }
}

#[tokio::test]
async fn stream_stats_resolve_offset_spec_and_command_versions() {
    let broker = Broker::start();
    let Some(port) = stream_port(&broker) else {
        return;
    };
    if std::env::var_os("PIER_TEST_STREAM_ADDR").is_some() {
        eprintln!("skipped: StreamStats and ResolveOffsetSpec need RabbitMQ 3.11 and 4.x");
        return;
    }
    let s = name("raw-stats");
    let mut c = Raw::open(port, "guest", 0).await.unwrap();
    // The server's command versions include the ones it answers here.
    let id = c.id();
    c.send(ClientCommand::ExchangeCommandVersions(
        ExchangeCommandVersions {
            correlation_id: id,
            versions: vec![],
        },
    ))
    .await;
    let ServerCommand::ExchangeCommandVersionsResponse(v) = c.reply().await else {
        panic!("no command versions");
    };
    let keys: Vec<u16> = v.versions.iter().map(|c| c.key).collect();
    assert!(keys.contains(&0x001c), "no StreamStats in {keys:?}");
    // Stats of a missing stream, then of one with three messages.
    assert_eq!(c.stats(&s).await.code, ResponseCode::StreamDoesNotExist);
    c.create(&s).await;
    c.declare_publisher(0, &s).await;
    c.publish(0, 1..=3).await;
    c.confirms(3).await;
    let r = c.stats(&s).await;
    assert_eq!(r.code, ResponseCode::Ok);
    let stat = |k: &str| r.stats.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
    assert_eq!(stat("first_chunk_id"), Some(0), "{:?}", r.stats);
    assert!(
        stat("committed_chunk_id").is_some_and(|v| v >= 0),
        "{:?}",
        r.stats
    );
    // osiris' get_stats gives all three (RabbitMQ's JavaScript client reads last_chunk_id).
    assert_eq!(
        stat("last_chunk_id"),
        stat("committed_chunk_id"),
        "{:?}",
        r.stats
    );
    // ResolveOffsetSpec: first is 0, next is past the three messages.
    for (spec, want) in [(OffsetSpec::First, 0u64), (OffsetSpec::Next, 3)] {
        let id = c.id();
        c.send(ClientCommand::ResolveOffsetSpec(ResolveOffsetSpec {
            correlation_id: id,
            stream: s.clone(),
            offset: spec,
            properties: vec![],
        }))
        .await;
        let ServerCommand::ResolveOffsetSpecResponse(r) = c.reply().await else {
            panic!("no resolve response");
        };
        assert_eq!(r.code, ResponseCode::Ok);
        assert_eq!(r.offset, want, "{spec:?}");
    }
}

#[tokio::test]
async fn a_wrong_password_gets_authentication_failure() {
    let broker = Broker::start();
    let Some(port) = stream_port(&broker) else {
        return;
    };
    match Raw::open(port, "wrong", 0).await {
        Err(ServerCommand::SaslAuthenticateResponse(r)) => {
            assert_eq!(r.code, ResponseCode::AuthenticationFailure);
        }
        Err(other) => panic!("unexpected {other:?}"),
        Ok(_) => panic!("a wrong password was accepted"),
    }
}

/// A super stream partition's consumer group hands over as RabbitMQ's does: when the active
/// member changes while the former one is still subscribed, the former one is told first and
/// the new one only once the former one's client has answered (it may store its offset in
/// that answer's handler); a client that never answers holds the group until an operator
/// forces it on (`activate_stream_consumer`, RabbitMQ 4.2). Before, the new member was
/// activated at once, both consuming side by side for a moment.
#[tokio::test]
async fn a_consumer_group_hands_over_only_after_the_former_active_member_answers() {
    let broker = Broker::start();
    if std::env::var("PIER_TEST_STREAM_ADDR").is_ok() {
        eprintln!("skipped: RabbitMQ 3.10 has no single active consumer");
        return;
    }
    let Some(port) = stream_port(&broker) else {
        return;
    };
    let Some(http) = broker.http_url().map(str::to_owned) else {
        return;
    };
    let ss = name("raw-sac");
    let partition = format!("{ss}-1");
    let mut admin = Raw::open(port, "guest", 0).await.unwrap();
    let id = admin.id();
    admin
        .send(ClientCommand::CreateSuperStream(CreateSuperStream {
            correlation_id: id,
            name: ss.clone(),
            partitions: vec![format!("{ss}-0"), partition.clone()],
            binding_keys: vec!["0".into(), "1".into()],
            arguments: vec![],
        }))
        .await;
    match admin.reply().await {
        ServerCommand::CreateSuperStreamResponse(r) => assert_eq!(r.code, ResponseCode::Ok),
        other => panic!("expected a create super stream response, got {other:?}"),
    }

    // Alone in the group of partition 1, A is active.
    let mut a = Raw::open(port, "guest", 0).await.unwrap();
    a.subscribe_sac(1, &partition, &ss).await;
    let (active, corr) = a.consumer_update(1).await;
    assert!(active);
    a.answer_update(corr).await;
    // B joins: partition 1 of two members is B's. A is told to step down, B waits for A.
    let mut b = Raw::open(port, "guest", 0).await.unwrap();
    b.subscribe_sac(1, &partition, &ss).await;
    let (active, corr) = a.consumer_update(1).await;
    assert!(!active);
    assert_eq!(b.within(Duration::from_millis(700)).await, None);
    a.answer_update(corr).await;
    let (active, corr) = b.consumer_update(1).await;
    assert!(active);
    b.answer_update(corr).await;

    // C joins (B stays: member 1 of three), then A leaves: partition 1 of [B, C] is C's. B
    // is told to step down and never answers: the group waits.
    let mut c = Raw::open(port, "guest", 0).await.unwrap();
    c.subscribe_sac(1, &partition, &ss).await;
    assert_eq!(c.within(Duration::from_millis(300)).await, None);
    let id = a.id();
    a.send(ClientCommand::Unsubscribe(Unsubscribe {
        correlation_id: id,
        subscription_id: 1,
    }))
    .await;
    match a.reply().await {
        ServerCommand::UnsubscribeResponse(r) => assert_eq!(r.code, ResponseCode::Ok),
        other => panic!("expected an unsubscribe response, got {other:?}"),
    }
    let (active, _) = b.consumer_update(1).await;
    assert!(!active);
    assert_eq!(c.within(Duration::from_millis(700)).await, None);
    // The operator forces it on (what `pier ctl activate_stream_consumer` calls).
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let post = |reference: &str| {
        agent
            .post(format!(
                "{http}/api/stream/consumer-groups/%2F/{partition}/{reference}/activate"
            ))
            .header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")
            .send_empty()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(post("no-such-group"), 404);
    assert_eq!(post("app"), 204);
    let (active, _) = c.consumer_update(1).await;
    assert!(active);
}

/// After the connection is open, a `Publish` frame larger than the negotiated `frame_max` is
/// read, as RabbitMQ up to 4.2 (3.10.8 here) reads it: rstream before 0.21 sends a
/// producer's whole buffer as one frame. Before, Pier closed the connection with
/// FRAME_TOO_LARGE.
#[tokio::test]
async fn an_open_connection_may_publish_a_frame_past_frame_max() {
    let broker = Broker::start();
    let Some(port) = stream_port(&broker) else {
        return;
    };
    let s = name("raw-big-frame");
    let mut c = Raw::open(port, "guest", 0).await.unwrap();
    c.create(&s).await;
    c.declare_publisher(0, &s).await;
    // 100,000 messages of 18 bytes each on the wire: one frame of ~1.8 MB, frame_max 1 MiB.
    let n = 100_000u64;
    c.publish(0, 1..=n).await;
    c.confirms(n).await;
    c.delete(&s).await;
}

/// A delivered chunk's header gives the trailer length RabbitMQ's does (rstream's own test
/// suite checks 24 for one publisher reference of 14 characters): Pier keeps a CRC after the
/// publisher sequences in its trailer, which the header sent to consumers leaves out (the
/// trailer itself is never sent).
#[tokio::test]
async fn a_delivered_chunk_header_has_the_trailer_length_of_rabbitmq() {
    let broker = Broker::start();
    let Some(port) = stream_port(&broker) else {
        return;
    };
    let s = name("raw-trailer");
    let mut c = Raw::open(port, "guest", 0).await.unwrap();
    c.create(&s).await;
    let id = c.id();
    let code = c
        .call(ClientCommand::DeclarePublisher(DeclarePublisher {
            correlation_id: id,
            publisher_id: 1,
            reference: "test-reference".into(),
            stream: s.clone(),
        }))
        .await;
    assert_eq!(code, ResponseCode::Ok);
    c.publish(1, 1..=3).await;
    c.confirms(3).await;
    c.subscribe_first(1, &s, 1).await;
    let chunk = match c.reply().await {
        ServerCommand::Deliver(d) => d.chunk,
        other => panic!("expected a delivery, got {other:?}"),
    };
    let chunk = pier_stream_wire::Chunk::parse_delivered(&chunk).unwrap();
    assert_eq!(chunk.header.num_records, 3);
    // kind 1 + length 1 + "test-reference" 14 + sequence 8, as Osiris's writer trailer.
    assert_eq!(chunk.header.trailer_length, 24);
    assert!(chunk.validate().is_ok());
    c.delete(&s).await;
}
