//! Property tests: arbitrary values round-trip, arbitrary bytes never panic.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use bytes::{Bytes, BytesMut};
use pier_wire::*;
use proptest::prelude::*;

fn short_string() -> impl Strategy<Value = ShortString> {
    prop_oneof![
        "[a-zA-Z0-9._/-]{0,20}",
        "\\PC{0,30}",
        Just("k".repeat(255)),
        Just(String::new()),
    ]
    .prop_map(|s| {
        // `\PC{0,30}` may exceed 255 bytes only in theory; keep whole chars within the limit.
        let mut s = s;
        while s.len() > 255 {
            s.pop();
        }
        ShortString::try_from_string(s).unwrap()
    })
}

fn long_string() -> impl Strategy<Value = LongString> {
    proptest::collection::vec(any::<u8>(), 0..64).prop_map(LongString::from)
}

fn leaf_value() -> impl Strategy<Value = FieldValue> {
    prop_oneof![
        any::<bool>().prop_map(FieldValue::Bool),
        any::<i8>().prop_map(FieldValue::ShortShortInt),
        any::<u8>().prop_map(FieldValue::ShortShortUInt),
        any::<i16>().prop_map(FieldValue::ShortInt),
        any::<u16>().prop_map(FieldValue::ShortUInt),
        any::<i32>().prop_map(FieldValue::LongInt),
        any::<u32>().prop_map(FieldValue::LongUInt),
        any::<i64>().prop_map(FieldValue::LongLongInt),
        any::<u64>().prop_map(FieldValue::LongLongUInt),
        any::<f32>()
            .prop_filter("NaN != NaN", |f| !f.is_nan())
            .prop_map(FieldValue::Float),
        any::<f64>()
            .prop_filter("NaN != NaN", |f| !f.is_nan())
            .prop_map(FieldValue::Double),
        (any::<u8>(), any::<u32>()).prop_map(|(scale, value)| FieldValue::Decimal { scale, value }),
        long_string().prop_map(FieldValue::LongString),
        proptest::collection::vec(any::<u8>(), 0..32)
            .prop_map(|v| FieldValue::ByteArray(Bytes::from(v))),
        any::<u64>().prop_map(FieldValue::Timestamp),
        Just(FieldValue::Void),
    ]
}

fn field_value() -> impl Strategy<Value = FieldValue> {
    leaf_value().prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(FieldValue::Array),
            proptest::collection::btree_map(short_string(), inner, 0..8)
                .prop_map(|m| FieldValue::Table(FieldTable(m))),
        ]
    })
}

fn field_table() -> impl Strategy<Value = FieldTable> {
    proptest::collection::btree_map(short_string(), field_value(), 0..10).prop_map(FieldTable)
}

fn basic_properties() -> impl Strategy<Value = BasicProperties> {
    (
        (
            proptest::option::of(short_string()),
            proptest::option::of(short_string()),
            proptest::option::of(field_table()),
            proptest::option::of(any::<u8>()),
            proptest::option::of(any::<u8>()),
            proptest::option::of(short_string()),
            proptest::option::of(short_string()),
        ),
        (
            proptest::option::of(short_string()),
            proptest::option::of(short_string()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(short_string()),
            proptest::option::of(short_string()),
            proptest::option::of(short_string()),
            proptest::option::of(short_string()),
        ),
    )
        .prop_map(|(a, b)| BasicProperties {
            content_type: a.0,
            content_encoding: a.1,
            headers: a.2,
            delivery_mode: a.3,
            priority: a.4,
            correlation_id: a.5,
            reply_to: a.6,
            expiration: b.0,
            message_id: b.1,
            timestamp: b.2,
            kind: b.3,
            user_id: b.4,
            app_id: b.5,
            cluster_id: b.6,
        })
}

fn selected_method() -> impl Strategy<Value = Method> {
    prop_oneof![
        (
            any::<u16>(),
            short_string(),
            short_string(),
            any::<[bool; 5]>(),
            field_table()
        )
            .prop_map(|(ticket, exchange, kind, b, arguments)| {
                Method::ExchangeDeclare(ExchangeDeclare {
                    ticket,
                    exchange,
                    kind,
                    passive: b[0],
                    durable: b[1],
                    auto_delete: b[2],
                    internal: b[3],
                    nowait: b[4],
                    arguments,
                })
            }),
        (short_string(), any::<[bool; 5]>(), field_table()).prop_map(|(queue, b, arguments)| {
            Method::QueueDeclare(QueueDeclare {
                ticket: 0,
                queue,
                passive: b[0],
                durable: b[1],
                exclusive: b[2],
                auto_delete: b[3],
                nowait: b[4],
                arguments,
            })
        }),
        (
            short_string(),
            short_string(),
            any::<[bool; 4]>(),
            field_table()
        )
            .prop_map(|(queue, consumer_tag, b, arguments)| {
                Method::BasicConsume(BasicConsume {
                    ticket: 0,
                    queue,
                    consumer_tag,
                    no_local: b[0],
                    no_ack: b[1],
                    exclusive: b[2],
                    nowait: b[3],
                    arguments,
                })
            }),
        (short_string(), any::<[bool; 3]>()).prop_map(|(queue, b)| {
            Method::QueueDelete(QueueDelete {
                ticket: 0,
                queue,
                if_unused: b[0],
                if_empty: b[1],
                nowait: b[2],
            })
        }),
        (short_string(), short_string(), any::<[bool; 2]>()).prop_map(|(exchange, rk, b)| {
            Method::BasicPublish(BasicPublish {
                ticket: 0,
                exchange,
                routing_key: rk,
                mandatory: b[0],
                immediate: b[1],
            })
        }),
        (
            short_string(),
            any::<u64>(),
            any::<bool>(),
            short_string(),
            short_string()
        )
            .prop_map(
                |(consumer_tag, delivery_tag, redelivered, exchange, routing_key)| {
                    Method::BasicDeliver(BasicDeliver {
                        consumer_tag,
                        delivery_tag,
                        redelivered,
                        exchange,
                        routing_key,
                    })
                }
            ),
        (any::<u64>(), any::<bool>(), any::<bool>()).prop_map(|(delivery_tag, m, r)| {
            Method::BasicNack(BasicNack {
                delivery_tag,
                multiple: m,
                requeue: r,
            })
        }),
        (field_table(), short_string(), long_string(), short_string()).prop_map(
            |(client_properties, mechanism, response, locale)| {
                Method::ConnectionStartOk(ConnectionStartOk {
                    client_properties,
                    mechanism,
                    response,
                    locale,
                })
            }
        ),
        (any::<u16>(), short_string(), any::<u16>(), any::<u16>()).prop_map(
            |(reply_code, reply_text, class_id, method_id)| {
                Method::ChannelClose(ChannelClose {
                    reply_code,
                    reply_text,
                    class_id,
                    method_id,
                })
            }
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn field_table_roundtrips(t in field_table()) {
        let mut out = BytesMut::new();
        encode_field_table(&mut out, &t).unwrap();
        prop_assert_eq!(out.len(), t.encoded_size());
        let decoded = decode_field_table(&out.freeze()).unwrap();
        prop_assert_eq!(decoded, t);
    }

    #[test]
    fn basic_properties_roundtrip(p in basic_properties()) {
        let mut out = BytesMut::new();
        p.encode(&mut out);
        prop_assert_eq!(out.len(), p.encoded_size());
        let decoded = BasicProperties::decode(&out.freeze()).unwrap();
        prop_assert_eq!(decoded, p);
    }

    #[test]
    fn content_header_frame_roundtrips(p in basic_properties(), size in any::<u64>(), ch in any::<u16>()) {
        let f = Frame::Header { channel: ch, header: ContentHeader::new(size, p).unwrap() };
        let mut out = BytesMut::new();
        f.encode(&mut out);
        prop_assert_eq!(out.len(), f.encoded_size());
        prop_assert_eq!(decode_frame(&mut out, 0).unwrap(), Some(f));
    }

    #[test]
    fn selected_methods_roundtrip(m in selected_method(), channel in any::<u16>()) {
        let mut out = BytesMut::new();
        encode_method_frame(&mut out, channel, &m);
        prop_assert_eq!(out.len(), m.encoded_size() + FRAME_OVERHEAD);
        let f = decode_frame(&mut out, 0).unwrap();
        prop_assert_eq!(f, Some(Frame::Method { channel, method: m }));
        prop_assert!(out.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512), max in prop_oneof![Just(0u32), Just(4096u32), any::<u32>()]) {
        let mut buf = BytesMut::from(&data[..]);
        // Repeatedly, as a connection would, until an error or lack of data.
        while let Ok(Some(_)) = decode_frame(&mut buf, max) {}
        let b = Bytes::from(data);
        let _ = Method::decode(&b);
        let _ = BasicProperties::decode(&b);
        let _ = ContentHeader::decode(&b);
        let _ = decode_field_table(&b);
    }

    #[test]
    fn framed_arbitrary_payloads_never_panic(
        frame_type in prop_oneof![Just(1u8), Just(2u8), Just(3u8), Just(8u8)],
        class_method in prop_oneof![
            Just(vec![]),
            proptest::sample::select(ALL_METHODS.to_vec()).prop_map(|(c, m, _)| {
                let mut v = c.to_be_bytes().to_vec();
                v.extend_from_slice(&m.to_be_bytes());
                v
            }),
        ],
        rest in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        // Valid ids followed by garbage reach every argument decoder.
        let mut payload = class_method;
        payload.extend_from_slice(&rest);
        let mut wire = vec![frame_type, 0, 1];
        wire.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        wire.extend_from_slice(&payload);
        wire.push(FRAME_END);
        let mut buf = BytesMut::from(&wire[..]);
        match decode_frame(&mut buf, 0) {
            Ok(Some(f)) => {
                // Whatever decoded must re-encode to something that decodes and re-encodes to
                // the same bytes (compared as bytes: a garbage float may be NaN).
                let mut out1 = BytesMut::new();
                f.encode(&mut out1);
                prop_assert_eq!(out1.len(), f.encoded_size());
                let f2 = decode_frame(&mut out1.clone(), 0).unwrap().unwrap();
                let mut out2 = BytesMut::new();
                f2.encode(&mut out2);
                prop_assert_eq!(out1, out2);
            }
            Ok(None) => prop_assert!(false, "whole frame reported as partial"),
            Err(e) => prop_assert!(matches!(e.reply_code(), 501 | 540)),
        }
    }
}
