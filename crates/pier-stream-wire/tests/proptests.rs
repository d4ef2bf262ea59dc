//! Property tests: every command in both directions, the chunk format with its bloom filter,
//! and the AMQP 1.0 types and message sections survive encode → decode unchanged; partial
//! input asks for more instead of failing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use bytes::{Bytes, BytesMut};
use pier_stream_wire::amqp::{
    decode_value_exact, Annotations, Body, Header, Message, Properties as AmqpProperties, Value,
};
use pier_stream_wire::chunk::{Chunk, ChunkBuilder, ChunkType, Record};
use pier_stream_wire::*;
use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;

// ---- stream protocol -----------------------------------------------------------------------

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9._-]{0,24}",
        any::<String>().prop_map(|s| s.chars().take(12).collect()),
    ]
}

fn blob(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn props() -> impl Strategy<Value = Properties> {
    vec((name(), name()), 0..4)
}

fn code() -> impl Strategy<Value = ResponseCode> {
    prop_oneof![
        (1u16..=0x15).prop_map(ResponseCode::from_u16),
        any::<u16>().prop_map(ResponseCode::from_u16),
    ]
}

fn offset_spec() -> impl Strategy<Value = OffsetSpec> {
    prop_oneof![
        Just(OffsetSpec::First),
        Just(OffsetSpec::Last),
        Just(OffsetSpec::Next),
        any::<u64>().prop_map(OffsetSpec::Offset),
        any::<i64>().prop_map(OffsetSpec::Timestamp),
    ]
}

fn sub_batch() -> impl Strategy<Value = SubBatch> {
    (0u8..8, any::<u16>(), any::<u32>(), blob(48)).prop_map(|(c, n, u, data)| SubBatch {
        compression: Compression::from_bits(c),
        record_count: n,
        uncompressed_length: u,
        data,
    })
}

fn entry() -> impl Strategy<Value = Entry> {
    prop_oneof![
        3 => blob(64).prop_map(Entry::Simple),
        1 => sub_batch().prop_map(Entry::SubBatch),
    ]
}

fn publish() -> impl Strategy<Value = Publish> {
    let v1 = (any::<u8>(), vec((any::<u64>(), entry()), 0..5)).prop_map(|(id, ms)| Publish {
        version: PublishVersion::V1,
        publisher_id: id,
        messages: ms
            .into_iter()
            .map(|(publishing_id, entry)| PublishedMessage {
                publishing_id,
                filter_value: None,
                entry,
            })
            .collect(),
    });
    let v2 = (
        any::<u8>(),
        vec((any::<u64>(), of(blob(12)), blob(64)), 0..5),
    )
        .prop_map(|(id, ms)| Publish {
            version: PublishVersion::V2,
            publisher_id: id,
            messages: ms
                .into_iter()
                .map(|(publishing_id, filter_value, body)| PublishedMessage {
                    publishing_id,
                    filter_value,
                    entry: Entry::Simple(body),
                })
                .collect(),
        });
    prop_oneof![v1, v2]
}

fn command_versions() -> impl Strategy<Value = Vec<CommandVersion>> {
    vec(
        (any::<u16>(), any::<u16>(), any::<u16>()).prop_map(|(key, min_version, max_version)| {
            CommandVersion {
                key,
                min_version,
                max_version,
            }
        }),
        0..5,
    )
}

fn client_command() -> impl Strategy<Value = ClientCommand> {
    let c = any::<u32>;
    prop_oneof![
        (c(), any::<u8>(), name(), name()).prop_map(
            |(correlation_id, publisher_id, reference, stream)| {
                ClientCommand::DeclarePublisher(DeclarePublisher {
                    correlation_id,
                    publisher_id,
                    reference,
                    stream,
                })
            }
        ),
        publish().prop_map(ClientCommand::Publish),
        (c(), name(), name()).prop_map(|(correlation_id, reference, stream)| {
            ClientCommand::QueryPublisherSequence(QueryPublisherSequence {
                correlation_id,
                reference,
                stream,
            })
        }),
        (c(), any::<u8>()).prop_map(|(correlation_id, publisher_id)| {
            ClientCommand::DeletePublisher(DeletePublisher {
                correlation_id,
                publisher_id,
            })
        }),
        (
            c(),
            any::<u8>(),
            name(),
            offset_spec(),
            any::<u16>(),
            props()
        )
            .prop_map(
                |(correlation_id, subscription_id, stream, offset, credit, properties)| {
                    ClientCommand::Subscribe(Subscribe {
                        correlation_id,
                        subscription_id,
                        stream,
                        offset,
                        credit,
                        properties,
                    })
                }
            ),
        (any::<u8>(), any::<u16>()).prop_map(|(subscription_id, credit)| {
            ClientCommand::Credit(Credit {
                subscription_id,
                credit,
            })
        }),
        (name(), name(), any::<u64>()).prop_map(|(reference, stream, offset)| {
            ClientCommand::StoreOffset(StoreOffset {
                reference,
                stream,
                offset,
            })
        }),
        (c(), name(), name()).prop_map(|(correlation_id, reference, stream)| {
            ClientCommand::QueryOffset(QueryOffset {
                correlation_id,
                reference,
                stream,
            })
        }),
        (c(), any::<u8>()).prop_map(|(correlation_id, subscription_id)| {
            ClientCommand::Unsubscribe(Unsubscribe {
                correlation_id,
                subscription_id,
            })
        }),
        (c(), name(), props()).prop_map(|(correlation_id, stream, arguments)| {
            ClientCommand::Create(Create {
                correlation_id,
                stream,
                arguments,
            })
        }),
        (c(), name()).prop_map(|(correlation_id, stream)| ClientCommand::Delete(Delete {
            correlation_id,
            stream
        })),
        (c(), vec(name(), 0..4)).prop_map(|(correlation_id, streams)| {
            ClientCommand::Metadata(Metadata {
                correlation_id,
                streams,
            })
        }),
        (c(), props()).prop_map(|(correlation_id, properties)| {
            ClientCommand::PeerProperties(PeerProperties {
                correlation_id,
                properties,
            })
        }),
        c().prop_map(
            |correlation_id| ClientCommand::SaslHandshake(SaslHandshake { correlation_id })
        ),
        (c(), name(), blob(40)).prop_map(|(correlation_id, mechanism, data)| {
            ClientCommand::SaslAuthenticate(SaslAuthenticate {
                correlation_id,
                mechanism,
                data,
            })
        }),
        (any::<u32>(), any::<u32>()).prop_map(|(frame_max, heartbeat)| ClientCommand::Tune(Tune {
            frame_max,
            heartbeat
        })),
        (c(), name()).prop_map(|(correlation_id, virtual_host)| ClientCommand::Open(Open {
            correlation_id,
            virtual_host
        })),
        (c(), code(), name()).prop_map(|(correlation_id, code, reason)| {
            ClientCommand::Close(Close {
                correlation_id,
                code,
                reason,
            })
        }),
        (c(), code()).prop_map(
            |(correlation_id, code)| ClientCommand::CloseResponse(Response {
                correlation_id,
                code
            })
        ),
        Just(ClientCommand::Heartbeat),
        (c(), name(), name()).prop_map(|(correlation_id, routing_key, super_stream)| {
            ClientCommand::Route(Route {
                correlation_id,
                routing_key,
                super_stream,
            })
        }),
        (c(), name()).prop_map(|(correlation_id, super_stream)| {
            ClientCommand::Partitions(Partitions {
                correlation_id,
                super_stream,
            })
        }),
        (c(), code(), of(offset_spec())).prop_map(|(correlation_id, code, offset)| {
            ClientCommand::ConsumerUpdateResponse(ConsumerUpdateResponse {
                correlation_id,
                code,
                offset,
            })
        }),
        (c(), command_versions()).prop_map(|(correlation_id, versions)| {
            ClientCommand::ExchangeCommandVersions(ExchangeCommandVersions {
                correlation_id,
                versions,
            })
        }),
        (c(), name()).prop_map(|(correlation_id, stream)| ClientCommand::StreamStats(
            StreamStats {
                correlation_id,
                stream
            }
        )),
        (c(), name(), vec(name(), 0..3), vec(name(), 0..3), props()).prop_map(
            |(correlation_id, name, partitions, binding_keys, arguments)| {
                ClientCommand::CreateSuperStream(CreateSuperStream {
                    correlation_id,
                    name,
                    partitions,
                    binding_keys,
                    arguments,
                })
            }
        ),
        (c(), name()).prop_map(|(correlation_id, name)| {
            ClientCommand::DeleteSuperStream(DeleteSuperStream {
                correlation_id,
                name,
            })
        }),
        (c(), name(), offset_spec(), props()).prop_map(
            |(correlation_id, stream, offset, properties)| {
                ClientCommand::ResolveOffsetSpec(ResolveOffsetSpec {
                    correlation_id,
                    stream,
                    offset,
                    properties,
                })
            }
        ),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    (any::<u32>(), code()).prop_map(|(correlation_id, code)| Response {
        correlation_id,
        code,
    })
}

fn server_command() -> impl Strategy<Value = ServerCommand> {
    let c = any::<u32>;
    prop_oneof![
        response().prop_map(ServerCommand::DeclarePublisherResponse),
        (any::<u8>(), vec(any::<u64>(), 0..6)).prop_map(|(publisher_id, publishing_ids)| {
            ServerCommand::PublishConfirm(PublishConfirm {
                publisher_id,
                publishing_ids,
            })
        }),
        (any::<u8>(), vec((any::<u64>(), code()), 0..6)).prop_map(|(publisher_id, e)| {
            ServerCommand::PublishError(PublishError {
                publisher_id,
                errors: e
                    .into_iter()
                    .map(|(publishing_id, code)| PublishingError {
                        publishing_id,
                        code,
                    })
                    .collect(),
            })
        }),
        (c(), code(), any::<u64>()).prop_map(|(correlation_id, code, sequence)| {
            ServerCommand::QueryPublisherSequenceResponse(QueryPublisherSequenceResponse {
                correlation_id,
                code,
                sequence,
            })
        }),
        response().prop_map(ServerCommand::DeletePublisherResponse),
        response().prop_map(ServerCommand::SubscribeResponse),
        (any::<u8>(), of(any::<u64>()), blob(120)).prop_map(
            |(subscription_id, committed_chunk_id, chunk)| {
                ServerCommand::Deliver(Deliver {
                    subscription_id,
                    committed_chunk_id,
                    chunk,
                })
            }
        ),
        (code(), any::<u8>()).prop_map(|(code, subscription_id)| {
            ServerCommand::CreditResponse(CreditResponse {
                code,
                subscription_id,
            })
        }),
        (c(), code(), any::<u64>()).prop_map(|(correlation_id, code, offset)| {
            ServerCommand::QueryOffsetResponse(QueryOffsetResponse {
                correlation_id,
                code,
                offset,
            })
        }),
        response().prop_map(ServerCommand::UnsubscribeResponse),
        response().prop_map(ServerCommand::CreateResponse),
        response().prop_map(ServerCommand::DeleteResponse),
        (
            c(),
            vec((any::<u16>(), name(), any::<u32>()), 0..3),
            vec(
                (name(), code(), any::<u16>(), vec(any::<u16>(), 0..3)),
                0..3
            )
        )
            .prop_map(|(correlation_id, b, s)| {
                ServerCommand::MetadataResponse(MetadataResponse {
                    correlation_id,
                    brokers: b
                        .into_iter()
                        .map(|(reference, host, port)| Broker {
                            reference,
                            host,
                            port,
                        })
                        .collect(),
                    streams: s
                        .into_iter()
                        .map(|(stream, code, leader, replicas)| StreamMetadata {
                            stream,
                            code,
                            leader,
                            replicas,
                        })
                        .collect(),
                })
            }),
        (code(), name()).prop_map(
            |(code, stream)| ServerCommand::MetadataUpdate(MetadataUpdate { code, stream })
        ),
        (c(), code(), props()).prop_map(|(correlation_id, code, properties)| {
            ServerCommand::PeerPropertiesResponse(PeerPropertiesResponse {
                correlation_id,
                code,
                properties,
            })
        }),
        (c(), code(), vec(name(), 0..4)).prop_map(|(correlation_id, code, mechanisms)| {
            ServerCommand::SaslHandshakeResponse(SaslHandshakeResponse {
                correlation_id,
                code,
                mechanisms,
            })
        }),
        (c(), code(), blob(40)).prop_map(|(correlation_id, code, challenge)| {
            ServerCommand::SaslAuthenticateResponse(SaslAuthenticateResponse {
                correlation_id,
                code,
                challenge,
            })
        }),
        (any::<u32>(), any::<u32>()).prop_map(|(frame_max, heartbeat)| ServerCommand::Tune(Tune {
            frame_max,
            heartbeat
        })),
        (c(), code(), props()).prop_map(|(correlation_id, code, properties)| {
            ServerCommand::OpenResponse(OpenResponse {
                correlation_id,
                code,
                properties,
            })
        }),
        (c(), code(), name()).prop_map(|(correlation_id, code, reason)| {
            ServerCommand::Close(Close {
                correlation_id,
                code,
                reason,
            })
        }),
        response().prop_map(ServerCommand::CloseResponse),
        Just(ServerCommand::Heartbeat),
        (c(), code(), vec(name(), 0..4)).prop_map(|(correlation_id, code, streams)| {
            ServerCommand::RouteResponse(StreamsResponse {
                correlation_id,
                code,
                streams,
            })
        }),
        (c(), code(), vec(name(), 0..4)).prop_map(|(correlation_id, code, streams)| {
            ServerCommand::PartitionsResponse(StreamsResponse {
                correlation_id,
                code,
                streams,
            })
        }),
        (c(), any::<u8>(), any::<bool>()).prop_map(|(correlation_id, subscription_id, active)| {
            ServerCommand::ConsumerUpdate(ConsumerUpdate {
                correlation_id,
                subscription_id,
                active,
            })
        }),
        (c(), code(), command_versions()).prop_map(|(correlation_id, code, versions)| {
            ServerCommand::ExchangeCommandVersionsResponse(ExchangeCommandVersionsResponse {
                correlation_id,
                code,
                versions,
            })
        }),
        (c(), code(), vec((name(), any::<i64>()), 0..4)).prop_map(
            |(correlation_id, code, stats)| {
                ServerCommand::StreamStatsResponse(StreamStatsResponse {
                    correlation_id,
                    code,
                    stats,
                })
            }
        ),
        response().prop_map(ServerCommand::CreateSuperStreamResponse),
        response().prop_map(ServerCommand::DeleteSuperStreamResponse),
        (c(), code(), any::<u16>(), any::<u64>()).prop_map(
            |(correlation_id, code, offset_type, offset)| {
                ServerCommand::ResolveOffsetSpecResponse(ResolveOffsetSpecResponse {
                    correlation_id,
                    code,
                    offset_type,
                    offset,
                })
            }
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn client_commands_roundtrip(cmd in client_command(), split in any::<prop::sample::Index>()) {
        let mut out = BytesMut::new();
        cmd.encode(&mut out).unwrap();
        let bytes = out.clone().freeze();
        let (back, n) = ClientCommand::decode(&bytes, 0).unwrap().unwrap();
        prop_assert_eq!(&back, &cmd);
        prop_assert_eq!(n, bytes.len());
        prop_assert_eq!(back.key(), cmd.key());
        prop_assert_eq!(back.correlation_id(), cmd.correlation_id());
        // Any strict prefix is incomplete, not an error.
        let cut = split.index(bytes.len());
        prop_assert_eq!(ClientCommand::decode(&bytes.slice(..cut), 0).unwrap(), None);
        // The frame limit is the size field: exactly enough passes, one less fails.
        let size = (bytes.len() - 4) as u32;
        prop_assert!(ClientCommand::decode(&bytes, size).is_ok());
        let err = ClientCommand::decode(&bytes, size - 1).unwrap_err();
        prop_assert_eq!(err.close_code(), ResponseCode::FrameTooLarge);
        // Streaming: the frame split off a receive buffer, with the next one behind it.
        let mut buf = out.clone();
        buf.extend_from_slice(&bytes);
        prop_assert_eq!(ClientCommand::decode_from(&mut buf, 0).unwrap(), Some(cmd.clone()));
        prop_assert_eq!(ClientCommand::decode_from(&mut buf, 0).unwrap(), Some(cmd));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn server_commands_roundtrip(cmd in server_command(), split in any::<prop::sample::Index>()) {
        let mut out = BytesMut::new();
        cmd.encode(&mut out).unwrap();
        let bytes = out.freeze();
        let (back, n) = ServerCommand::decode(&bytes, 0).unwrap().unwrap();
        prop_assert_eq!(&back, &cmd);
        prop_assert_eq!(n, bytes.len());
        prop_assert_eq!(back.key(), cmd.key());
        let cut = split.index(bytes.len());
        prop_assert_eq!(ServerCommand::decode(&bytes.slice(..cut), 0).unwrap(), None);
        // A deliver's chunk is a zero-copy slice of the input.
        if let ServerCommand::Deliver(d) = back {
            if !d.chunk.is_empty() {
                let start = d.chunk.as_ptr() as usize - bytes.as_ptr() as usize;
                prop_assert!(start < bytes.len());
            }
        }
    }

    #[test]
    fn trailing_bytes_are_refused(cmd in client_command(), extra in vec(any::<u8>(), 1..4)) {
        // Publish v1/v2 end with entries and Subscribe with an optional map: appended bytes
        // must still be refused, never silently ignored.
        let mut out = BytesMut::new();
        cmd.encode(&mut out).unwrap();
        let mut frame = out.to_vec();
        frame.extend_from_slice(&extra);
        let size = (frame.len() - 4) as u32;
        frame[..4].copy_from_slice(&size.to_be_bytes());
        let r = ClientCommand::decode(&Bytes::from(frame), 0);
        if let Ok(Some((other, _))) = &r {
            // only possible when the extra bytes parse as the optional tail
            prop_assert!(matches!(other, ClientCommand::Subscribe(_) | ClientCommand::ResolveOffsetSpec(_)), "{other:?}");
        } else {
            prop_assert_eq!(r.unwrap_err().close_code(), ResponseCode::UnknownFrame);
        }
    }

    #[test]
    fn a_deliver_head_and_its_chunk_are_the_whole_frame(
        subscription_id in any::<u8>(),
        committed in of(any::<u64>()),
        chunk in blob(300),
    ) {
        let d = Deliver { subscription_id, committed_chunk_id: committed, chunk };
        let mut whole = BytesMut::new();
        ServerCommand::Deliver(d.clone()).encode(&mut whole).unwrap();
        let mut parts = BytesMut::new();
        d.encode_head(&mut parts).unwrap();
        parts.extend_from_slice(&d.chunk);
        prop_assert_eq!(&parts[..], &whole[..]);
    }
}

// ---- chunks ------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn chunks_roundtrip(
        entries in vec((entry(), of(blob(10))), 0..12),
        first in any::<u64>(),
        epoch in any::<u64>(),
        ts in any::<i64>(),
        size in 0u8..=255,
        kind in 0u8..3,
        trailer in blob(20),
    ) {
        let mut b = ChunkBuilder::new(first, epoch, ts)
            .filter_size(size)
            .chunk_type(ChunkType::from_code(kind).unwrap())
            .trailer(trailer.clone());
        for (e, f) in &entries {
            b.push_entry(e, f.as_deref()).unwrap();
        }
        let chunk = b.build();
        prop_assert_eq!(chunk.header.num_entries as usize, entries.len());
        let parsed = chunk.validate().unwrap();
        prop_assert_eq!(parsed, entries.iter().map(|(e, _)| e.clone()).collect::<Vec<_>>());

        let mut stored = BytesMut::new();
        chunk.encode_stored(&mut stored);
        let stored = stored.freeze();
        let (back, n) = Chunk::parse_stored(&stored).unwrap();
        prop_assert_eq!(n, stored.len());
        prop_assert_eq!(&back, &chunk);

        let mut delivered = BytesMut::new();
        chunk.encode_delivered(&mut delivered);
        let delivered = delivered.freeze();
        let d = Chunk::parse_delivered(&delivered).unwrap();
        prop_assert_eq!(d.header, chunk.header);
        prop_assert_eq!(&d.data, &chunk.data);
        d.validate().unwrap();

        // Offsets: consecutive from the chunk id, sub-batches taking their record count.
        let mut expected = first;
        for r in d.records() {
            match r {
                Ok(Record::Message { offset, .. }) => {
                    prop_assert_eq!(offset, expected);
                    expected = expected.wrapping_add(1);
                }
                Ok(Record::Compressed { offset, batch }) => {
                    prop_assert_eq!(offset, expected);
                    expected = expected.wrapping_add(u64::from(batch.record_count));
                }
                // random uncompressed sub-batch bodies need not hold valid records
                Err(_) => break,
            }
        }

        // Bloom filter: no false negatives.
        let filtered: Vec<&Bytes> = entries.iter().filter_map(|(_, f)| f.as_ref()).filter(|f| !f.is_empty()).collect();
        if filtered.is_empty() {
            prop_assert!(chunk.bloom.is_empty());
        } else {
            prop_assert_eq!(chunk.bloom.len(), usize::from(size.max(16)));
        }
        for f in &filtered {
            prop_assert!(BloomMatcher::new([f], false).matches(&chunk.bloom));
        }
        let unfiltered = entries.iter().any(|(_, f)| f.as_ref().is_none_or(|f| f.is_empty()));
        if unfiltered {
            prop_assert!(BloomMatcher::new(["zzz"], true).matches(&chunk.bloom));
        }
    }
}

// ---- AMQP 1.0 ------------------------------------------------------------------------------

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<u8>().prop_map(Value::Ubyte),
        any::<u16>().prop_map(Value::Ushort),
        prop_oneof![Just(0u32), 0u32..256, any::<u32>()].prop_map(Value::Uint),
        prop_oneof![Just(0u64), 0u64..256, any::<u64>()].prop_map(Value::Ulong),
        any::<i8>().prop_map(Value::Byte),
        any::<i16>().prop_map(Value::Short),
        prop_oneof![-128i32..128, any::<i32>()].prop_map(Value::Int),
        prop_oneof![-128i64..128, any::<i64>()].prop_map(Value::Long),
        any::<f32>()
            .prop_filter("NaN", |f| !f.is_nan())
            .prop_map(Value::Float),
        any::<f64>()
            .prop_filter("NaN", |f| !f.is_nan())
            .prop_map(Value::Double),
        any::<[u8; 4]>().prop_map(Value::Decimal32),
        any::<[u8; 8]>().prop_map(Value::Decimal64),
        any::<[u8; 16]>().prop_map(Value::Decimal128),
        any::<u32>().prop_map(Value::Char),
        any::<i64>().prop_map(Value::Timestamp),
        any::<[u8; 16]>().prop_map(Value::Uuid),
        prop_oneof![blob(20), blob(300)].prop_map(Value::Binary),
        prop_oneof![name(), "[a-z]{256,300}"].prop_map(Value::String),
        "[a-z:.-]{0,20}".prop_map(Value::Symbol),
    ]
}

/// An array: elements of one kind.
fn array(inner: BoxedStrategy<Value>) -> impl Strategy<Value = Value> {
    prop_oneof![
        vec(any::<i32>(), 0..5).prop_map(|v| Value::Array(v.into_iter().map(Value::Int).collect())),
        vec(any::<bool>(), 0..5)
            .prop_map(|v| Value::Array(v.into_iter().map(Value::Bool).collect())),
        vec("[a-z]{0,8}", 0..5)
            .prop_map(|v| Value::Array(v.into_iter().map(Value::Symbol).collect())),
        vec(Just(Value::Null), 0..5).prop_map(Value::Array),
        vec(any::<u64>(), 1..5).prop_map(|v| Value::Array(
            v.into_iter()
                .map(|x| Value::Described(
                    Box::new(Value::Symbol("d".into())),
                    Box::new(Value::Ulong(x))
                ))
                .collect()
        )),
        vec(vec(inner, 0..3), 0..3)
            .prop_map(|v| Value::Array(v.into_iter().map(Value::List).collect())),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::List),
            vec((inner.clone(), inner.clone()), 0..4).prop_map(Value::Map),
            array(inner.clone().boxed()),
            (leaf(), inner).prop_map(|(d, v)| Value::Described(Box::new(d), Box::new(v))),
        ]
    })
}

fn annotations() -> impl Strategy<Value = Annotations> {
    vec(
        (
            prop_oneof![
                "x-[a-z-]{1,12}".prop_map(Value::Symbol),
                any::<u64>().prop_map(Value::Ulong)
            ],
            value(),
        ),
        0..4,
    )
}

fn message() -> impl Strategy<Value = Message> {
    let header = (
        of(any::<bool>()),
        of(any::<u8>()),
        of(any::<u32>()),
        of(any::<bool>()),
        of(any::<u32>()),
    )
        .prop_map(
            |(durable, priority, ttl, first_acquirer, delivery_count)| Header {
                durable,
                priority,
                ttl,
                first_acquirer,
                delivery_count,
            },
        );
    let id = || {
        of(prop_oneof![
            any::<u64>().prop_map(Value::Ulong),
            any::<[u8; 16]>().prop_map(Value::Uuid),
            blob(16).prop_map(Value::Binary),
            name().prop_map(Value::String),
        ])
    };
    let props = (
        (
            id(),
            of(blob(8)),
            of(name()),
            of(name()),
            of(name()),
            id(),
            of("[a-z/]{1,16}"),
        ),
        (
            of("[a-z0-9-]{1,8}"),
            of(any::<i64>()),
            of(any::<i64>()),
            of(name()),
            of(any::<u32>()),
            of(name()),
        ),
    )
        .prop_map(
            |((message_id, user_id, to, subject, reply_to, correlation_id, content_type), rest)| {
                let (
                    content_encoding,
                    absolute_expiry_time,
                    creation_time,
                    group_id,
                    group_sequence,
                    reply_to_group_id,
                ) = rest;
                AmqpProperties {
                    message_id,
                    user_id,
                    to,
                    subject,
                    reply_to,
                    correlation_id,
                    content_type,
                    content_encoding,
                    absolute_expiry_time,
                    creation_time,
                    group_id,
                    group_sequence,
                    reply_to_group_id,
                }
            },
        );
    let body = prop_oneof![
        Just(Body::Empty),
        vec(blob(40), 1..3).prop_map(Body::Data),
        vec(vec(value(), 0..3), 1..3).prop_map(Body::Sequence),
        value().prop_map(Body::Value),
    ];
    (
        of(header),
        of(annotations()),
        of(annotations()),
        of(props),
        of(vec((name(), leaf()), 0..4)),
        body,
        of(annotations()),
    )
        .prop_map(
            |(
                header,
                delivery_annotations,
                message_annotations,
                properties,
                application_properties,
                body,
                footer,
            )| {
                Message {
                    header,
                    delivery_annotations,
                    message_annotations,
                    properties,
                    application_properties,
                    body,
                    footer,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn amqp_values_roundtrip(v in value()) {
        let bytes = v.to_bytes().unwrap();
        prop_assert_eq!(bytes.len(), v.encoded_len());
        prop_assert_eq!(decode_value_exact(&bytes).unwrap(), v);
    }

    #[test]
    fn amqp_messages_roundtrip(m in message()) {
        let bytes = m.to_bytes().unwrap();
        let back = Message::decode(&bytes).unwrap();
        prop_assert_eq!(&back, &m);
        // Re-encoding is byte-identical.
        prop_assert_eq!(back.to_bytes().unwrap(), bytes);
    }
}

/// A ConsumerUpdate answer with an offset value after a type that has none (`next` here):
/// RabbitMQ reads the type and ignores the value, and rstream before 0.21 always sends one;
/// Pier closed those connections ("8 trailing byte(s)").
#[test]
fn a_consumer_update_answer_may_carry_a_value_its_type_does_not_use() {
    let mut frame = Vec::new();
    let body: Vec<u8> = [
        &0x801a_u16.to_be_bytes()[..],
        &1_u16.to_be_bytes(),
        &7_u32.to_be_bytes(),
        &1_u16.to_be_bytes(),
        &3_u16.to_be_bytes(),
        &0_u64.to_be_bytes(),
    ]
    .concat();
    frame.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(&body);
    let (cmd, n) = ClientCommand::decode(&Bytes::from(frame.clone()), 0)
        .unwrap()
        .unwrap();
    assert_eq!(n, frame.len());
    assert_eq!(
        cmd,
        ClientCommand::ConsumerUpdateResponse(ConsumerUpdateResponse {
            correlation_id: 7,
            code: ResponseCode::Ok,
            offset: Some(OffsetSpec::Next),
        })
    );
}
