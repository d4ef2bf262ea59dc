//! Golden tests: frames from real RabbitMQ code, decoded and re-encoded byte for byte.
//!
//! * `golden/rabbitmq-3.10.8.txt`: a session with the RabbitMQ 3.10.8 stream plugin
//!   (`rabbitmq_stream-3.10.8`, Erlang/OTP 25), both directions, captured with
//!   `golden/capture.py` (a raw-socket client; see its docstring), including a message
//!   published over AMQP 0-9-1 and delivered over the stream protocol, and the closes the
//!   server sends for an unknown command, a malformed command and an oversize frame.
//! * `golden/rabbit_stream_core-main.txt`: frames produced by RabbitMQ's own stream codec,
//!   `rabbit_stream_core:frame/1` of rabbitmq-server main (2026-08), run under Erlang/OTP
//!   25, for the commands 3.10.8 does not have (publish v2, deliver v2, consumer update,
//!   exchange command versions, stream stats, super streams, resolve offset spec) and
//!   shapes the session did not produce.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use bytes::{Bytes, BytesMut};
use pier_stream_wire::amqp::{Body, Message, Value};
use pier_stream_wire::chunk::{Chunk, ChunkType, Record};
use pier_stream_wire::*;

struct Frame {
    dir: char,
    label: String,
    bytes: Bytes,
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn load(text: &str) -> Vec<Frame> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut parts = l.split(' ');
            let dir = parts.next().unwrap().chars().next().unwrap();
            let label = parts.next().unwrap().to_string();
            let bytes = Bytes::from(hex(parts.next().unwrap()));
            Frame { dir, label, bytes }
        })
        .collect()
}

fn session() -> Vec<Frame> {
    load(include_str!("golden/rabbitmq-3.10.8.txt"))
}

fn core_main() -> Vec<Frame> {
    load(include_str!("golden/rabbit_stream_core-main.txt"))
}

fn client(f: &Frame) -> ClientCommand {
    let (cmd, n) = ClientCommand::decode(&f.bytes, 0)
        .unwrap_or_else(|e| panic!("{}: {e}", f.label))
        .unwrap_or_else(|| panic!("{}: incomplete", f.label));
    assert_eq!(n, f.bytes.len(), "{}", f.label);
    cmd
}

fn server(f: &Frame) -> ServerCommand {
    let (cmd, n) = ServerCommand::decode(&f.bytes, 0)
        .unwrap_or_else(|e| panic!("{}: {e}", f.label))
        .unwrap_or_else(|| panic!("{}: incomplete", f.label));
    assert_eq!(n, f.bytes.len(), "{}", f.label);
    cmd
}

fn find<'a>(frames: &'a [Frame], label: &str) -> &'a Frame {
    frames
        .iter()
        .find(|f| f.label == label)
        .unwrap_or_else(|| panic!("no frame {label}"))
}

/// Frames the broker refused: they are decode errors here too.
const BAD_CLIENT_FRAMES: [&str; 3] = [
    "unknown-command",
    "truncated-declare-publisher",
    "too-large(first-64-bytes)",
];

#[test]
fn every_frame_decodes_and_reencodes_identically() {
    let mut seen = 0;
    for f in session().iter().chain(core_main().iter()) {
        if BAD_CLIENT_FRAMES.contains(&f.label.as_str()) {
            continue;
        }
        let mut out = BytesMut::new();
        match f.dir {
            'C' => client(f).encode(&mut out).unwrap(),
            'S' => server(f).encode(&mut out).unwrap(),
            d => panic!("direction {d}"),
        }
        if f.label == "unsolicited-0018" {
            // RabbitMQ 3.10.8 answered Route with key 0x0018 instead of 0x8018; the
            // response is re-encoded with the response bit, otherwise identical.
            let mut fixed = f.bytes.to_vec();
            fixed[4] |= 0x80;
            assert_eq!(&out[..], &fixed[..]);
        } else {
            assert_eq!(&out[..], &f.bytes[..], "{} re-encoded differently", f.label);
        }
        seen += 1;
    }
    assert!(seen > 100, "{seen}");
}

#[test]
fn handshake_session() {
    let s = session();
    let ServerCommand::PeerPropertiesResponse(p) = server(find(&s, "peer-properties-response"))
    else {
        panic!()
    };
    assert_eq!(p.code, ResponseCode::Ok);
    assert!(p
        .properties
        .contains(&("version".to_string(), "3.10.8".to_string())));
    let ServerCommand::SaslHandshakeResponse(h) = server(find(&s, "sasl-handshake-response"))
    else {
        panic!()
    };
    assert!(h.mechanisms.contains(&"PLAIN".to_string()));
    let ClientCommand::SaslAuthenticate(a) = client(find(&s, "sasl-authenticate")) else {
        panic!()
    };
    assert_eq!(&a.data[..], b"\0guest\0guest");
    assert_eq!(
        server(find(&s, "tune")),
        ServerCommand::Tune(Tune {
            frame_max: 1_048_576,
            heartbeat: 60
        })
    );
    let ServerCommand::OpenResponse(o) = server(find(&s, "open-response")) else {
        panic!()
    };
    assert_eq!(o.code, ResponseCode::Ok);
    assert!(o.properties.iter().any(|(k, _)| k == "advertised_port"));
}

#[test]
fn response_codes_from_the_broker() {
    let s = session();
    let code_of = |label: &str| match server(find(&s, label)) {
        ServerCommand::CreateResponse(r)
        | ServerCommand::SubscribeResponse(r)
        | ServerCommand::DeletePublisherResponse(r) => r.code,
        ServerCommand::QueryOffsetResponse(r) => r.code,
        other => panic!("{other:?}"),
    };
    assert_eq!(code_of("create-response"), ResponseCode::Ok);
    // Re-creating with other arguments is refused as a precondition failure.
    assert_eq!(
        code_of("create-response-already-exists"),
        ResponseCode::PreconditionFailed
    );
    assert_eq!(
        code_of("subscribe-response-duplicate"),
        ResponseCode::SubscriptionIdAlreadyExists
    );
    assert_eq!(
        code_of("delete-publisher-response-unknown"),
        ResponseCode::PublisherDoesNotExist
    );
    assert_eq!(
        code_of("query-offset-response-none"),
        ResponseCode::NoOffset
    );
    let ServerCommand::QueryOffsetResponse(q) = server(find(&s, "query-offset-response")) else {
        panic!()
    };
    assert_eq!((q.code, q.offset), (ResponseCode::Ok, 2));
    assert_eq!(
        server(find(&s, "credit-response")),
        ServerCommand::CreditResponse(CreditResponse {
            code: ResponseCode::SubscriptionIdDoesNotExist,
            subscription_id: 42
        })
    );
    let ServerCommand::PublishError(e) = server(find(&s, "publish-error")) else {
        panic!()
    };
    assert_eq!(e.publisher_id, 9);
    assert_eq!(
        e.errors,
        vec![PublishingError {
            publishing_id: 1,
            code: ResponseCode::PublisherDoesNotExist
        }]
    );
    let ServerCommand::MetadataResponse(m) = server(find(&s, "metadata-response")) else {
        panic!()
    };
    assert_eq!(m.brokers.len(), 1);
    assert_eq!(m.streams[0].code, ResponseCode::Ok);
    assert_eq!(m.streams[1].code, ResponseCode::StreamDoesNotExist);
    assert_eq!(m.streams[1].leader, 0xFFFF);
    // Deleting a stream with a live publisher/subscription: MetadataUpdate 6.
    let ServerCommand::RouteResponse(r) = server(find(&s, "unsolicited-0018")) else {
        panic!()
    };
    assert_eq!(
        (r.code, r.streams.len()),
        (ResponseCode::StreamDoesNotExist, 0)
    );
    let ServerCommand::MetadataUpdate(u) = server(find(&s, "unsolicited-0010")) else {
        panic!()
    };
    assert_eq!(u.code, ResponseCode::StreamNotAvailable);
    assert_eq!(u.stream, "pier-golden-stream");
}

#[test]
fn publish_and_deliver() {
    let s = session();
    let ClientCommand::Publish(p) = client(find(&s, "publish-v1")) else {
        panic!()
    };
    assert_eq!(p.version, PublishVersion::V1);
    assert_eq!(p.messages.len(), 3);
    let ServerCommand::PublishConfirm(c) = server(find(&s, "publish-confirm")) else {
        panic!()
    };
    assert_eq!(c.publishing_ids, vec![1, 2, 3]);

    let ServerCommand::Deliver(d) = server(find(&s, "deliver")) else {
        panic!()
    };
    assert_eq!(d.committed_chunk_id, None);
    let chunk = Chunk::parse_delivered(&d.chunk).unwrap();
    assert_eq!(chunk.header.chunk_type, ChunkType::User);
    assert_eq!(chunk.header.num_entries, 3);
    assert_eq!(chunk.header.first_offset, 0);
    // The stored chunk has a trailer (writer tracking); the plugin does not send it.
    assert!(chunk.header.trailer_length > 0);
    assert!(chunk.trailer.is_empty());
    chunk.validate().unwrap();
    let bodies: Vec<Bytes> = chunk
        .records()
        .map(|r| match r.unwrap() {
            Record::Message { body, .. } => body,
            Record::Compressed { .. } => panic!(),
        })
        .collect();
    // the published bytes come back untouched
    let published: Vec<Bytes> = p
        .messages
        .iter()
        .map(|m| match &m.entry {
            Entry::Simple(b) => b.clone(),
            Entry::SubBatch(_) => panic!(),
        })
        .collect();
    assert_eq!(bodies, published);
    let m = Message::decode(&bodies[1]).unwrap();
    assert_eq!(m.body, Body::Data(vec![Bytes::from_static(b"world")]));
    let props = m.properties.unwrap();
    assert_eq!(props.message_id, Some(Value::String("m-1".into())));
    assert_eq!(props.content_type.as_deref(), Some("text/plain"));
    // The delivered form re-encodes identically.
    let mut out = BytesMut::new();
    chunk.encode_delivered(&mut out);
    assert_eq!(&out[..], &d.chunk[..]);

    // The sub-entry batch comes back as one entry of two records.
    let ServerCommand::Deliver(d) = server(find(&s, "deliver-sub-batch")) else {
        panic!()
    };
    let chunk = Chunk::parse_delivered(&d.chunk).unwrap();
    chunk.validate().unwrap();
    assert_eq!((chunk.header.num_entries, chunk.header.num_records), (1, 2));
    let offsets: Vec<u64> = chunk
        .records()
        .map(|r| match r.unwrap() {
            Record::Message { offset, body } => {
                assert!(Message::decode(&body).is_ok());
                offset
            }
            Record::Compressed { .. } => panic!(),
        })
        .collect();
    assert_eq!(offsets, vec![3, 4]);
}

#[test]
fn amqp091_message_converted_by_rabbitmq_3_10_8() {
    let s = session();
    let ServerCommand::Deliver(d) = server(find(&s, "deliver-amqp091-published")) else {
        panic!()
    };
    let chunk = Chunk::parse_delivered(&d.chunk).unwrap();
    chunk.verify_crc().unwrap();
    let Record::Message { offset, body } = chunk.records().next().unwrap().unwrap() else {
        panic!()
    };
    assert_eq!(offset, 6);
    let m = Message::decode(&body).unwrap();
    // 3.10.8 writes no header section ...
    assert_eq!(m.header, None);
    // ... puts routing data and the basic properties without a 1.0 home in annotations ...
    let ma = m.message_annotations.unwrap();
    let ann = |k: &str| {
        ma.iter()
            .find(|(key, _)| *key == Value::Symbol(k.into()))
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        ann("x-routing-key"),
        Some(Value::String("pier-golden-stream".into()))
    );
    assert_eq!(ann("x-exchange"), Some(Value::String(String::new())));
    assert_eq!(ann("x-basic-priority"), Some(Value::Ubyte(3)));
    assert_eq!(ann("x-basic-delivery-mode"), Some(Value::Ubyte(2)));
    assert_eq!(
        ann("x-basic-expiration"),
        Some(Value::String("60000".into()))
    );
    // ... maps the rest to properties ...
    let p = m.properties.unwrap();
    assert_eq!(p.message_id, Some(Value::String("msg-1".into())));
    assert_eq!(p.user_id.as_deref(), Some(&b"guest"[..]));
    assert_eq!(p.reply_to.as_deref(), Some("replies"));
    assert_eq!(p.correlation_id, Some(Value::String("corr-1".into())));
    assert_eq!(p.content_type.as_deref(), Some("application/json"));
    assert_eq!(p.content_encoding.as_deref(), Some("utf-8"));
    assert_eq!(p.creation_time, Some(1_700_000_000_000));
    assert_eq!(p.group_id, None);
    // ... and type, app-id and every header to application properties.
    let ap = m.application_properties.unwrap();
    let get = |k: &str| ap.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    assert_eq!(get("x-basic-type"), Some(Value::String("kind".into())));
    assert_eq!(
        get("x-basic-app-id"),
        Some(Value::String("golden-app".into()))
    );
    assert_eq!(get("x-custom"), Some(Value::String("xv".into())));
    assert_eq!(get("plain"), Some(Value::String("pv".into())));
    assert_eq!(get("num"), Some(Value::Int(42)));
    assert_eq!(get("flag"), Some(Value::Bool(true)));
    assert_eq!(m.body, Body::Data(vec![Bytes::from_static(b"{\"a\":1}")]));
}

#[test]
fn what_the_broker_answers_to_bad_frames() {
    let s = session();
    for (bad, close) in [
        ("unknown-command", "close-unknown-frame"),
        ("truncated-declare-publisher", "close-malformed"),
    ] {
        let err = ClientCommand::decode(&find(&s, bad).bytes, 0).unwrap_err();
        let ServerCommand::Close(c) = server(find(&s, close)) else {
            panic!()
        };
        assert_eq!(c.code, ResponseCode::UnknownFrame);
        assert_eq!(err.close_code(), c.code, "{bad}");
        assert_eq!(err.close_reason(), c.reason, "{bad}");
        // RabbitMQ's server-initiated close uses correlation id 1.
        assert_eq!(c.correlation_id, 1);
        let mut out = BytesMut::new();
        err.close_command().encode(&mut out).unwrap();
        assert_eq!(&out[..], &find(&s, close).bytes[..], "{bad}");
    }
    // Oversize: detected from the size prefix alone. RabbitMQ 4.x closes with 14
    // (frame too large, below); 3.10.8 had no frame_max check and answered 13.
    let big = &find(&s, "too-large(first-64-bytes)").bytes;
    let err = frame_len(big, 1_048_576).unwrap_err();
    assert_eq!(err.close_code(), ResponseCode::FrameTooLarge);
    assert!(ClientCommand::decode(big, 1_048_576).is_err());
    let ServerCommand::Close(c) = server(find(&core_main(), "close-frame-too-large")) else {
        panic!()
    };
    assert_eq!(
        (c.code, c.reason.as_str()),
        (err.close_code(), err.close_reason())
    );
}

#[test]
fn newer_commands_from_rabbit_stream_core() {
    let f = core_main();
    let ClientCommand::Publish(p) = client(find(&f, "publish-v2")) else {
        panic!()
    };
    assert_eq!(p.version, PublishVersion::V2);
    assert_eq!(p.messages[0].filter_value.as_deref(), Some(&b"apple"[..]));
    assert_eq!(p.messages[1].filter_value, None);
    let ClientCommand::Subscribe(sub) = client(find(&f, "subscribe-timestamp")) else {
        panic!()
    };
    assert_eq!(sub.offset, OffsetSpec::Timestamp(-5));
    assert_eq!(sub.properties.len(), 2);
    let ClientCommand::Subscribe(sub) = client(find(&f, "subscribe-next")) else {
        panic!()
    };
    assert_eq!((sub.offset, sub.properties.len()), (OffsetSpec::Next, 0));
    let ClientCommand::CreateSuperStream(c) = client(find(&f, "create-super-stream")) else {
        panic!()
    };
    assert_eq!(c.partitions, vec!["inv-0", "inv-1"]);
    assert_eq!(c.binding_keys, vec!["0", "1"]);
    let ClientCommand::ConsumerUpdateResponse(u) =
        client(find(&f, "consumer-update-response-none"))
    else {
        panic!()
    };
    assert_eq!(u.offset, None);
    let ClientCommand::ResolveOffsetSpec(r) = client(find(&f, "resolve-offset-spec")) else {
        panic!()
    };
    assert_eq!(r.offset, OffsetSpec::Timestamp(1_700_000_000_000));
    let ClientCommand::SaslAuthenticate(a) = client(find(&f, "sasl-authenticate-empty")) else {
        panic!()
    };
    assert!(a.data.is_empty());

    let ServerCommand::Deliver(d) = server(find(&f, "deliver-v2")) else {
        panic!()
    };
    assert_eq!(d.committed_chunk_id, Some(99));
    assert_eq!(
        server(find(&f, "consumer-update")),
        ServerCommand::ConsumerUpdate(ConsumerUpdate {
            correlation_id: 30,
            subscription_id: 2,
            active: true
        })
    );
    let ServerCommand::StreamStatsResponse(st) = server(find(&f, "stream-stats-response")) else {
        panic!()
    };
    assert!(st.stats.contains(&("committed_chunk_id".to_string(), -1)));
    let ServerCommand::SaslAuthenticateResponse(a) =
        server(find(&f, "sasl-authenticate-challenge"))
    else {
        panic!()
    };
    assert_eq!(
        (a.code, &a.challenge[..]),
        (ResponseCode::SaslChallenge, &b"challenge"[..])
    );
    let ServerCommand::PublishError(e) = server(find(&f, "publish-error")) else {
        panic!()
    };
    assert_eq!(e.errors.len(), 2);
}

/// What a Pier server will write, compared with what RabbitMQ wrote.
#[test]
fn server_frames_built_from_scratch_match_rabbitmq() {
    let s = session();
    let cases: Vec<(&str, ServerCommand)> = vec![
        (
            "tune",
            ServerCommand::Tune(Tune {
                frame_max: frame::DEFAULT_FRAME_MAX,
                heartbeat: frame::DEFAULT_HEARTBEAT,
            }),
        ),
        (
            "close-unknown-frame",
            ServerCommand::Close(Close {
                correlation_id: 1,
                code: ResponseCode::UnknownFrame,
                reason: "unknown frame".into(),
            }),
        ),
        (
            "credit-response",
            ServerCommand::CreditResponse(CreditResponse {
                code: ResponseCode::SubscriptionIdDoesNotExist,
                subscription_id: 42,
            }),
        ),
    ];
    for (label, cmd) in cases {
        let mut out = BytesMut::new();
        cmd.encode(&mut out).unwrap();
        assert_eq!(&out[..], &find(&s, label).bytes[..], "{label}");
    }
}

/// Writes one frame of every command this crate encodes, for a check with RabbitMQ's own
/// parser (`rabbit_stream_core:parse_command/1` under Erlang; see the report of the branch
/// that added this crate): `PIER_STREAM_FRAMES=/tmp/frames.txt cargo test -p
/// pier-stream-wire --test golden -- --ignored dump_frames_for_erlang`.
#[test]
#[ignore = "writes a file for an external check"]
fn dump_frames_for_erlang() {
    let path = std::env::var("PIER_STREAM_FRAMES").unwrap();
    let p = || vec![("k".to_string(), "v".to_string())];
    let clients = vec![
        ClientCommand::DeclarePublisher(DeclarePublisher {
            correlation_id: 1,
            publisher_id: 2,
            reference: "ref".into(),
            stream: "s".into(),
        }),
        ClientCommand::Publish(Publish {
            version: PublishVersion::V1,
            publisher_id: 2,
            messages: vec![
                PublishedMessage {
                    publishing_id: 7,
                    filter_value: None,
                    entry: Entry::Simple(Bytes::from_static(b"m")),
                },
                PublishedMessage {
                    publishing_id: 8,
                    filter_value: None,
                    entry: Entry::SubBatch(SubBatch::uncompressed([b"a"]).unwrap()),
                },
            ],
        }),
        ClientCommand::Publish(Publish {
            version: PublishVersion::V2,
            publisher_id: 2,
            messages: vec![
                PublishedMessage {
                    publishing_id: 7,
                    filter_value: Some(Bytes::from_static(b"f")),
                    entry: Entry::Simple(Bytes::from_static(b"m")),
                },
                PublishedMessage {
                    publishing_id: 8,
                    filter_value: None,
                    entry: Entry::Simple(Bytes::from_static(b"n")),
                },
            ],
        }),
        ClientCommand::QueryPublisherSequence(QueryPublisherSequence {
            correlation_id: 3,
            reference: "ref".into(),
            stream: "s".into(),
        }),
        ClientCommand::DeletePublisher(DeletePublisher {
            correlation_id: 4,
            publisher_id: 2,
        }),
        ClientCommand::Subscribe(Subscribe {
            correlation_id: 5,
            subscription_id: 1,
            stream: "s".into(),
            offset: OffsetSpec::Offset(9),
            credit: 10,
            properties: p(),
        }),
        ClientCommand::Subscribe(Subscribe {
            correlation_id: 5,
            subscription_id: 1,
            stream: "s".into(),
            offset: OffsetSpec::First,
            credit: 10,
            properties: vec![],
        }),
        ClientCommand::Credit(Credit {
            subscription_id: 1,
            credit: 3,
        }),
        ClientCommand::StoreOffset(StoreOffset {
            reference: "r".into(),
            stream: "s".into(),
            offset: 11,
        }),
        ClientCommand::QueryOffset(QueryOffset {
            correlation_id: 6,
            reference: "r".into(),
            stream: "s".into(),
        }),
        ClientCommand::Unsubscribe(Unsubscribe {
            correlation_id: 7,
            subscription_id: 1,
        }),
        ClientCommand::Create(Create {
            correlation_id: 8,
            stream: "s".into(),
            arguments: p(),
        }),
        ClientCommand::Delete(Delete {
            correlation_id: 9,
            stream: "s".into(),
        }),
        ClientCommand::Metadata(Metadata {
            correlation_id: 10,
            streams: vec!["a".into(), "b".into()],
        }),
        ClientCommand::PeerProperties(PeerProperties {
            correlation_id: 11,
            properties: p(),
        }),
        ClientCommand::SaslHandshake(SaslHandshake { correlation_id: 12 }),
        ClientCommand::SaslAuthenticate(SaslAuthenticate {
            correlation_id: 13,
            mechanism: "PLAIN".into(),
            data: Bytes::from_static(b"\0u\0p"),
        }),
        ClientCommand::Tune(Tune {
            frame_max: 131072,
            heartbeat: 30,
        }),
        ClientCommand::Open(Open {
            correlation_id: 14,
            virtual_host: "/".into(),
        }),
        ClientCommand::Close(Close {
            correlation_id: 15,
            code: ResponseCode::Ok,
            reason: "bye".into(),
        }),
        ClientCommand::CloseResponse(Response {
            correlation_id: 16,
            code: ResponseCode::Ok,
        }),
        ClientCommand::Heartbeat,
        ClientCommand::Route(Route {
            correlation_id: 17,
            routing_key: "rk".into(),
            super_stream: "ss".into(),
        }),
        ClientCommand::Partitions(Partitions {
            correlation_id: 18,
            super_stream: "ss".into(),
        }),
        ClientCommand::ConsumerUpdateResponse(ConsumerUpdateResponse {
            correlation_id: 19,
            code: ResponseCode::Ok,
            offset: Some(OffsetSpec::Timestamp(5)),
        }),
        ClientCommand::ExchangeCommandVersions(ExchangeCommandVersions {
            correlation_id: 20,
            versions: vec![CommandVersion {
                key: 8,
                min_version: 1,
                max_version: 2,
            }],
        }),
        ClientCommand::StreamStats(StreamStats {
            correlation_id: 21,
            stream: "s".into(),
        }),
        ClientCommand::CreateSuperStream(CreateSuperStream {
            correlation_id: 22,
            name: "ss".into(),
            partitions: vec!["ss-0".into()],
            binding_keys: vec!["0".into()],
            arguments: p(),
        }),
        ClientCommand::DeleteSuperStream(DeleteSuperStream {
            correlation_id: 23,
            name: "ss".into(),
        }),
        ClientCommand::ResolveOffsetSpec(ResolveOffsetSpec {
            correlation_id: 24,
            stream: "s".into(),
            offset: OffsetSpec::Last,
            properties: p(),
        }),
    ];
    let r = |c| Response {
        correlation_id: c,
        code: ResponseCode::Ok,
    };
    let servers = vec![
        ServerCommand::DeclarePublisherResponse(r(1)),
        ServerCommand::PublishConfirm(PublishConfirm {
            publisher_id: 2,
            publishing_ids: vec![7, 8],
        }),
        ServerCommand::PublishError(PublishError {
            publisher_id: 2,
            errors: vec![PublishingError {
                publishing_id: 7,
                code: ResponseCode::PublisherDoesNotExist,
            }],
        }),
        ServerCommand::QueryPublisherSequenceResponse(QueryPublisherSequenceResponse {
            correlation_id: 3,
            code: ResponseCode::Ok,
            sequence: 8,
        }),
        ServerCommand::DeletePublisherResponse(r(4)),
        ServerCommand::SubscribeResponse(r(5)),
        ServerCommand::Deliver(Deliver {
            subscription_id: 1,
            committed_chunk_id: None,
            chunk: Bytes::from_static(b"chunk"),
        }),
        ServerCommand::Deliver(Deliver {
            subscription_id: 1,
            committed_chunk_id: Some(3),
            chunk: Bytes::from_static(b"chunk"),
        }),
        ServerCommand::CreditResponse(CreditResponse {
            code: ResponseCode::SubscriptionIdDoesNotExist,
            subscription_id: 1,
        }),
        ServerCommand::QueryOffsetResponse(QueryOffsetResponse {
            correlation_id: 6,
            code: ResponseCode::Ok,
            offset: 11,
        }),
        ServerCommand::UnsubscribeResponse(r(7)),
        ServerCommand::CreateResponse(r(8)),
        ServerCommand::DeleteResponse(r(9)),
        ServerCommand::MetadataResponse(MetadataResponse {
            correlation_id: 10,
            brokers: vec![Broker {
                reference: 0,
                host: "h".into(),
                port: 5552,
            }],
            streams: vec![StreamMetadata {
                stream: "a".into(),
                code: ResponseCode::Ok,
                leader: 0,
                replicas: vec![0],
            }],
        }),
        ServerCommand::MetadataUpdate(MetadataUpdate {
            code: ResponseCode::StreamNotAvailable,
            stream: "s".into(),
        }),
        ServerCommand::PeerPropertiesResponse(PeerPropertiesResponse {
            correlation_id: 11,
            code: ResponseCode::Ok,
            properties: p(),
        }),
        ServerCommand::SaslHandshakeResponse(SaslHandshakeResponse {
            correlation_id: 12,
            code: ResponseCode::Ok,
            mechanisms: vec!["PLAIN".into()],
        }),
        ServerCommand::SaslAuthenticateResponse(SaslAuthenticateResponse {
            correlation_id: 13,
            code: ResponseCode::Ok,
            challenge: Bytes::new(),
        }),
        ServerCommand::Tune(Tune {
            frame_max: 1048576,
            heartbeat: 60,
        }),
        ServerCommand::OpenResponse(OpenResponse {
            correlation_id: 14,
            code: ResponseCode::Ok,
            properties: p(),
        }),
        ServerCommand::Close(Close {
            correlation_id: 1,
            code: ResponseCode::UnknownFrame,
            reason: "unknown frame".into(),
        }),
        ServerCommand::CloseResponse(r(15)),
        ServerCommand::Heartbeat,
        ServerCommand::RouteResponse(StreamsResponse {
            correlation_id: 17,
            code: ResponseCode::Ok,
            streams: vec!["ss-0".into()],
        }),
        ServerCommand::PartitionsResponse(StreamsResponse {
            correlation_id: 18,
            code: ResponseCode::Ok,
            streams: vec!["ss-0".into()],
        }),
        ServerCommand::ConsumerUpdate(ConsumerUpdate {
            correlation_id: 19,
            subscription_id: 1,
            active: true,
        }),
        ServerCommand::ExchangeCommandVersionsResponse(ExchangeCommandVersionsResponse {
            correlation_id: 20,
            code: ResponseCode::Ok,
            versions: vec![CommandVersion {
                key: 2,
                min_version: 1,
                max_version: 2,
            }],
        }),
        ServerCommand::StreamStatsResponse(StreamStatsResponse {
            correlation_id: 21,
            code: ResponseCode::Ok,
            stats: vec![("committed_chunk_id".into(), 4)],
        }),
        ServerCommand::CreateSuperStreamResponse(r(22)),
        ServerCommand::DeleteSuperStreamResponse(r(23)),
        ServerCommand::ResolveOffsetSpecResponse(ResolveOffsetSpecResponse {
            correlation_id: 24,
            code: ResponseCode::Ok,
            offset_type: 4,
            offset: 9,
        }),
    ];
    let mut text = String::new();
    for c in &clients {
        let mut out = BytesMut::new();
        c.encode(&mut out).unwrap();
        text += &format!(
            "C {:?} {}\n",
            c.key(),
            out[4..]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
    }
    for c in &servers {
        let mut out = BytesMut::new();
        c.encode(&mut out).unwrap();
        text += &format!(
            "S {:?} {}\n",
            c.key(),
            out[4..]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
    }
    std::fs::write(path, text).unwrap();
}
