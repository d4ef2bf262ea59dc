//! Known byte vectors (hand-assembled, not produced by our encoder), malformed input, and the
//! delivery hot path.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use bytes::{Bytes, BytesMut};
use pier_wire::*;

// ---- helpers to hand-assemble AMQP bytes ---------------------------------------------------

fn short(out: &mut Vec<u8>, s: &str) {
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

fn long(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

/// Table entries already encoded as `key tag value`; adds the length prefix.
fn table(entries: &[Vec<u8>]) -> Vec<u8> {
    let body: Vec<u8> = entries.concat();
    let mut out = Vec::new();
    long(&mut out, &body);
    out
}

fn entry_str(key: &str, value: &str) -> Vec<u8> {
    let mut e = Vec::new();
    short(&mut e, key);
    e.push(b'S');
    long(&mut e, value.as_bytes());
    e
}

fn entry_bool(key: &str, value: bool) -> Vec<u8> {
    let mut e = Vec::new();
    short(&mut e, key);
    e.push(b't');
    e.push(u8::from(value));
    e
}

fn entry_table(key: &str, t: &[u8]) -> Vec<u8> {
    let mut e = Vec::new();
    short(&mut e, key);
    e.push(b'F');
    e.extend_from_slice(t);
    e
}

fn frame(frame_type: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![frame_type];
    f.extend_from_slice(&channel.to_be_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f.push(0xCE);
    f
}

fn method_payload(class_id: u16, method_id: u16, args: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&class_id.to_be_bytes());
    p.extend_from_slice(&method_id.to_be_bytes());
    p.extend_from_slice(args);
    p
}

/// Decodes `bytes` as a method payload, checks it equals `expected`, and checks that encoding
/// `expected` gives back exactly `bytes`.
fn check_method_vector(bytes: &[u8], expected: Method) {
    let decoded = Method::decode(&Bytes::copy_from_slice(bytes)).unwrap();
    assert_eq!(decoded, expected);
    let mut out = BytesMut::new();
    expected.encode(&mut out);
    assert_eq!(&out[..], bytes, "{}", expected.name());
    assert_eq!(expected.encoded_size(), bytes.len());
}

fn decode_all(buf: &mut BytesMut, frame_max: u32) -> Vec<Frame> {
    let mut frames = Vec::new();
    while let Some(f) = decode_frame(buf, frame_max).unwrap() {
        frames.push(f);
    }
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    frames
}

// ---- known vectors ---------------------------------------------------------------------------

fn rabbitmq_server_properties() -> Vec<u8> {
    // What RabbitMQ 3.12 puts in connection.start (keys sorted, as rabbit_reader does; the
    // capabilities table in RabbitMQ's own order).
    let capabilities = table(&[
        entry_bool("publisher_confirms", true),
        entry_bool("exchange_exchange_bindings", true),
        entry_bool("basic.nack", true),
        entry_bool("consumer_cancel_notify", true),
        entry_bool("connection.blocked", true),
        entry_bool("consumer_priorities", true),
        entry_bool("authentication_failure_close", true),
        entry_bool("per_consumer_qos", true),
        entry_bool("direct_reply_to", true),
    ]);
    table(&[
        entry_table("capabilities", &capabilities),
        entry_str("cluster_name", "rabbit@host"),
        entry_str(
            "copyright",
            "Copyright (c) 2007-2023 VMware, Inc. or its affiliates.",
        ),
        entry_str(
            "information",
            "Licensed under the MPL 2.0. Website: https://rabbitmq.com",
        ),
        entry_str("platform", "Erlang/OTP 25.3"),
        entry_str("product", "RabbitMQ"),
        entry_str("version", "3.12.0"),
    ])
}

#[test]
fn rabbitmq_connection_start() {
    let mut args = vec![0, 9];
    args.extend_from_slice(&rabbitmq_server_properties());
    long(&mut args, b"AMQPLAIN PLAIN");
    long(&mut args, b"en_US");
    let wire = frame(1, 0, &method_payload(10, 10, &args));

    let mut buf = BytesMut::from(&wire[..]);
    let frames = decode_all(&mut buf, 0);
    let Frame::Method {
        channel: 0,
        method: Method::ConnectionStart(start),
    } = &frames[0]
    else {
        panic!("{frames:?}")
    };
    assert_eq!((start.version_major, start.version_minor), (0, 9));
    assert_eq!(start.mechanisms.to_str(), Some("AMQPLAIN PLAIN"));
    assert_eq!(start.locales.to_str(), Some("en_US"));
    let props = &start.server_properties;
    assert_eq!(props.len(), 7);
    assert_eq!(
        props.get("product").and_then(FieldValue::as_str),
        Some("RabbitMQ")
    );
    let caps = props
        .get("capabilities")
        .and_then(FieldValue::as_table)
        .unwrap();
    assert_eq!(caps.len(), 9);
    assert_eq!(
        caps.get("basic.nack").and_then(FieldValue::as_bool),
        Some(true)
    );
    assert_eq!(
        props.get("version").map(FieldValue::type_name),
        Some("longstr")
    );

    // Re-encoding gives a frame of the same size that decodes to the same value (the nested
    // capabilities come out in key order rather than RabbitMQ's order).
    let mut out = BytesMut::new();
    encode_method_frame(&mut out, 0, &Method::ConnectionStart(start.clone()));
    assert_eq!(out.len(), wire.len());
    assert_eq!(decode_all(&mut out, 0), frames);
}

#[test]
fn pika_connection_start_ok() {
    let capabilities = table(&[
        entry_bool("authentication_failure_close", true),
        entry_bool("basic.nack", true),
        entry_bool("connection.blocked", true),
        entry_bool("consumer_cancel_notify", true),
        entry_bool("publisher_confirms", true),
    ]);
    let client_properties = table(&[
        entry_table("capabilities", &capabilities),
        entry_str("information", "See http://pika.rtfd.org"),
        entry_str("platform", "Python 3.11.2"),
        entry_str("product", "Pika Python Client Library"),
        entry_str("version", "1.3.2"),
    ]);
    let mut args = client_properties;
    short(&mut args, "PLAIN");
    long(&mut args, b"\0guest\0guest");
    short(&mut args, "en_US");
    let payload = method_payload(10, 11, &args);

    let m = Method::decode(&Bytes::copy_from_slice(&payload)).unwrap();
    let Method::ConnectionStartOk(ok) = &m else {
        panic!("{m:?}")
    };
    assert_eq!(ok.mechanism, "PLAIN");
    assert_eq!(ok.response.as_bytes(), b"\0guest\0guest");
    assert_eq!(ok.locale, "en_US");
    assert_eq!(
        ok.client_properties
            .get("product")
            .and_then(FieldValue::as_str),
        Some("Pika Python Client Library")
    );
    // Here every table is already in key order, so the bytes round-trip exactly.
    let mut out = BytesMut::new();
    m.encode(&mut out);
    assert_eq!(&out[..], &payload[..]);
}

#[test]
fn connection_tune_and_open() {
    // tune: channel-max 2047, frame-max 131072, heartbeat 60
    check_method_vector(
        &[0, 10, 0, 30, 0x07, 0xff, 0, 2, 0, 0, 0, 60],
        Method::ConnectionTune(ConnectionTune {
            channel_max: 2047,
            frame_max: 131_072,
            heartbeat: 60,
        }),
    );
    // open: vhost "/", capabilities "", insist false
    check_method_vector(
        &[0, 10, 0, 40, 1, b'/', 0, 0],
        Method::ConnectionOpen(ConnectionOpen {
            virtual_host: "/".into(),
            capabilities: "".into(),
            insist: false,
        }),
    );
    // close: 320 CONNECTION_FORCED "bye" 0 0
    check_method_vector(
        &[0, 10, 0, 50, 0x01, 0x40, 3, b'b', b'y', b'e', 0, 0, 0, 0],
        Method::ConnectionClose(ConnectionClose {
            reply_code: reply_code::CONNECTION_FORCED,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        }),
    );
}

#[test]
fn exchange_declare_five_bits() {
    // ticket 0, "logs", "fanout", bits: passive 0, durable 1, auto-delete 0, internal 1,
    // nowait 1 => 0b11010, empty arguments
    let mut args = vec![0, 0];
    short(&mut args, "logs");
    short(&mut args, "fanout");
    args.push(0b1_1010);
    args.extend_from_slice(&[0, 0, 0, 0]);
    check_method_vector(
        &method_payload(40, 10, &args),
        Method::ExchangeDeclare(ExchangeDeclare {
            ticket: 0,
            exchange: "logs".into(),
            kind: "fanout".into(),
            passive: false,
            durable: true,
            auto_delete: false,
            internal: true,
            nowait: true,
            arguments: FieldTable::new(),
        }),
    );
}

#[test]
fn queue_declare_five_bits_and_arguments() {
    // bits: passive 1, durable 0, exclusive 1, auto-delete 0, nowait 0 => 0b00101
    let mut args = vec![0, 0];
    short(&mut args, "q1");
    args.push(0b0_0101);
    let mut ttl = Vec::new();
    short(&mut ttl, "x-message-ttl");
    ttl.push(b'I');
    ttl.extend_from_slice(&60_000i32.to_be_bytes());
    args.extend_from_slice(&table(&[ttl]));
    let mut arguments = FieldTable::new();
    arguments.insert("x-message-ttl", FieldValue::LongInt(60_000));
    check_method_vector(
        &method_payload(50, 10, &args),
        Method::QueueDeclare(QueueDeclare {
            ticket: 0,
            queue: "q1".into(),
            passive: true,
            durable: false,
            exclusive: true,
            auto_delete: false,
            nowait: false,
            arguments,
        }),
    );
    // durable + auto-delete + nowait => 0b11010
    let mut args = vec![0, 0, 0, 0b1_1010, 0, 0, 0, 0];
    let m = Method::decode(&Bytes::from(method_payload(50, 10, &args))).unwrap();
    let Method::QueueDeclare(q) = &m else {
        panic!()
    };
    assert!(!q.passive && q.durable && !q.exclusive && q.auto_delete && q.nowait);
    assert!(m.nowait() && !m.expects_reply() && m.is_synchronous_request());
    args[3] = 0;
    let m = Method::decode(&Bytes::from(method_payload(50, 10, &args))).unwrap();
    assert!(m.expects_reply());
}

#[test]
fn basic_consume_four_bits() {
    // bits: no-local 0, no-ack 1, exclusive 0, nowait 1 => 0b1010
    let mut args = vec![0, 0];
    short(&mut args, "work");
    short(&mut args, "ctag-1");
    args.push(0b1010);
    args.extend_from_slice(&[0, 0, 0, 0]);
    check_method_vector(
        &method_payload(60, 20, &args),
        Method::BasicConsume(BasicConsume {
            ticket: 0,
            queue: "work".into(),
            consumer_tag: "ctag-1".into(),
            no_local: false,
            no_ack: true,
            exclusive: false,
            nowait: true,
            arguments: FieldTable::new(),
        }),
    );
}

#[test]
fn queue_delete_three_bits() {
    // bits: if-unused 0, if-empty 1, nowait 1 => 0b110
    let mut args = vec![0, 0];
    short(&mut args, "old");
    args.push(0b110);
    check_method_vector(
        &method_payload(50, 40, &args),
        Method::QueueDelete(QueueDelete {
            ticket: 0,
            queue: "old".into(),
            if_unused: false,
            if_empty: true,
            nowait: true,
        }),
    );
}

#[test]
fn access_request_and_small_bit_groups() {
    // access.request: realm "/data", exclusive 0, passive 1, active 1, write 0, read 1
    let mut args = Vec::new();
    short(&mut args, "/data");
    args.push(0b1_0110);
    check_method_vector(
        &method_payload(30, 10, &args),
        Method::AccessRequest(AccessRequest {
            realm: "/data".into(),
            exclusive: false,
            passive: true,
            active: true,
            write: false,
            read: true,
        }),
    );
    // basic.nack: delivery-tag 7, multiple 0, requeue 1
    check_method_vector(
        &[0, 60, 0, 120, 0, 0, 0, 0, 0, 0, 0, 7, 0b10],
        Method::BasicNack(BasicNack {
            delivery_tag: 7,
            multiple: false,
            requeue: true,
        }),
    );
    // basic.ack multiple
    check_method_vector(
        &[0, 60, 0, 80, 0, 0, 0, 0, 0, 0, 1, 0, 1],
        Method::BasicAck(BasicAck {
            delivery_tag: 256,
            multiple: true,
        }),
    );
    // basic.qos prefetch-count 10, global 0
    check_method_vector(
        &[0, 60, 0, 10, 0, 0, 0, 0, 0, 10, 0],
        Method::BasicQos(BasicQos {
            prefetch_size: 0,
            prefetch_count: 10,
            global: false,
        }),
    );
    // confirm.select nowait 0; tx.select; basic.recover-async requeue 1
    check_method_vector(
        &[0, 85, 0, 10, 0],
        Method::ConfirmSelect(ConfirmSelect { nowait: false }),
    );
    check_method_vector(&[0, 90, 0, 10], Method::TxSelect(TxSelect));
    check_method_vector(
        &[0, 60, 0, 100, 1],
        Method::BasicRecoverAsync(BasicRecoverAsync { requeue: true }),
    );
}

#[test]
fn single_bit_uses_only_the_low_bit_like_rabbitmq() {
    // RabbitMQ decodes a bit as (Bits band 1) /= 0: other bits of the octet are ignored.
    let m = Method::decode(&Bytes::from_static(&[0, 85, 0, 10, 0b10])).unwrap();
    assert_eq!(m, Method::ConfirmSelect(ConfirmSelect { nowait: false }));
}

#[test]
fn basic_publish_header_body_sequence() {
    let mut publish_args = vec![0, 0];
    short(&mut publish_args, "");
    short(&mut publish_args, "hello");
    publish_args.push(0b01); // mandatory
    let mut header = Vec::new();
    header.extend_from_slice(&60u16.to_be_bytes());
    header.extend_from_slice(&0u16.to_be_bytes());
    header.extend_from_slice(&11u64.to_be_bytes());
    header.extend_from_slice(&0x9000u16.to_be_bytes()); // content-type + delivery-mode
    short(&mut header, "text/plain");
    header.push(2);

    let mut wire = Vec::new();
    wire.extend(frame(1, 1, &method_payload(60, 40, &publish_args)));
    wire.extend(frame(2, 1, &header));
    wire.extend(frame(3, 1, b"hello "));
    wire.extend(frame(3, 1, b"world"));

    // Feed it byte by byte: every prefix that is not a whole frame yields Ok(None).
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for b in &wire {
        buf.extend_from_slice(&[*b]);
        if let Some(f) = decode_frame(&mut buf, 4096).unwrap() {
            frames.push(f);
        }
    }
    assert!(buf.is_empty());
    assert_eq!(frames.len(), 4);
    assert_eq!(
        frames[0],
        Frame::Method {
            channel: 1,
            method: Method::BasicPublish(BasicPublish {
                ticket: 0,
                exchange: "".into(),
                routing_key: "hello".into(),
                mandatory: true,
                immediate: false,
            })
        }
    );
    let Frame::Header {
        channel: 1,
        header: h,
    } = &frames[1]
    else {
        panic!("{:?}", frames[1])
    };
    assert_eq!((h.class_id, h.weight, h.body_size), (60, 0, 11));
    assert_eq!(h.properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!(h.properties.delivery_mode, Some(2));
    assert_eq!(&h.raw_properties[..], &header[12..]);
    assert!(frames[0].channel() == 1 && frames[0].frame_type() == 1);
    let body: Vec<u8> = frames[2..]
        .iter()
        .flat_map(|f| match f {
            Frame::Body { payload, .. } => payload.to_vec(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(body, b"hello world");
    assert!(Method::BasicPublish(BasicPublish::default()).has_content());
}

// ---- malformed input ---------------------------------------------------------------------------

#[test]
fn malformed_frames() {
    // bad frame end
    let mut bad = frame(8, 0, &[]);
    *bad.last_mut().unwrap() = 0;
    let e = decode_frame(&mut BytesMut::from(&bad[..]), 0).unwrap_err();
    assert_eq!(e, WireError::BadFrameEnd(0));
    assert_eq!(e.reply_code(), reply_code::FRAME_ERROR);

    // oversize, detected from the 7 header octets alone
    let e = decode_frame(&mut BytesMut::from(&[1u8, 0, 1, 0, 1, 0, 0][..]), 4096).unwrap_err();
    assert!(matches!(
        e,
        WireError::FrameTooLarge {
            size: 65_544,
            max: 4096
        }
    ));
    assert_eq!(e.reply_code(), 501);

    // unknown frame type
    let e = decode_frame(&mut BytesMut::from(&frame(7, 0, &[])[..]), 0).unwrap_err();
    assert_eq!(e, WireError::UnknownFrameType(7));
    assert_eq!(e.reply_code(), 501);

    // method frame too short for class + method ids
    let e = decode_frame(&mut BytesMut::from(&frame(1, 1, &[0, 60, 0])[..]), 0).unwrap_err();
    assert!(matches!(e, WireError::Truncated { .. }));

    // header frame too short
    let e = decode_frame(&mut BytesMut::from(&frame(2, 1, &[0, 60, 0, 0])[..]), 0).unwrap_err();
    assert!(matches!(e, WireError::Truncated { .. }));
}

#[test]
fn unknown_class_and_method() {
    let e = Method::decode(&Bytes::from_static(&[0, 61, 0, 10])).unwrap_err();
    assert_eq!(
        e,
        WireError::UnknownClass {
            class_id: 61,
            method_id: 10
        }
    );
    assert_eq!(e.reply_code(), reply_code::NOT_IMPLEMENTED);
    let e = Method::decode(&Bytes::from_static(&[0, 60, 0, 41])).unwrap_err();
    assert_eq!(
        e,
        WireError::UnknownMethod {
            class_id: 60,
            method_id: 41
        }
    );
    assert_eq!(e.reply_code(), reply_code::NOT_IMPLEMENTED);
    // exchange.unbind-ok is 40/51, not 40/41
    assert!(Method::decode(&Bytes::from_static(&[0, 40, 0, 41])).is_err());
    assert!(Method::decode(&Bytes::from_static(&[0, 40, 0, 51])).is_ok());
}

fn queue_declare_with_raw_table(table_bytes: &[u8]) -> Result<Method, WireError> {
    let mut args = vec![0, 0];
    short(&mut args, "q");
    args.push(0);
    args.extend_from_slice(table_bytes);
    Method::decode(&Bytes::from(method_payload(50, 10, &args)))
}

#[test]
fn malformed_tables_inside_methods() {
    // table length past the end of the frame
    let e = queue_declare_with_raw_table(&[0, 0, 0, 50, 1, b'k']).unwrap_err();
    assert!(matches!(e, WireError::Truncated { .. }), "{e:?}");
    // truncated value inside a table
    let e = queue_declare_with_raw_table(&[0, 0, 0, 4, 1, b'k', b'I', 0]).unwrap_err();
    assert!(matches!(e, WireError::Truncated { .. }), "{e:?}");
    // unknown type char
    let e = queue_declare_with_raw_table(&[0, 0, 0, 4, 1, b'k', b'Q', 0]).unwrap_err();
    assert_eq!(e, WireError::UnknownFieldType(b'Q'));
    assert_eq!(e.reply_code(), 501);
    // key (short string) length pointing past the end of the table
    let e = queue_declare_with_raw_table(&[0, 0, 0, 3, 200, b'k', b'V']).unwrap_err();
    assert!(matches!(e, WireError::Truncated { .. }), "{e:?}");
    // huge array length
    let e = queue_declare_with_raw_table(&[0, 0, 0, 7, 1, b'k', b'A', 0xff, 0xff, 0xff, 0xf0])
        .unwrap_err();
    assert!(matches!(e, WireError::Truncated { .. }), "{e:?}");
    // huge long string
    let e = queue_declare_with_raw_table(&[0, 0, 0, 7, 1, b'k', b'S', 0x7f, 0xff, 0xff, 0xff])
        .unwrap_err();
    assert!(matches!(e, WireError::Truncated { .. }), "{e:?}");
    // short string argument length pointing past the end of the frame
    let e = Method::decode(&Bytes::from_static(&[0, 50, 0, 10, 0, 0, 9, b'q'])).unwrap_err();
    assert!(
        matches!(
            e,
            WireError::Truncated {
                context: "queue.declare"
            }
        ),
        "{e:?}"
    );
    // invalid UTF-8 in a short string argument
    let e = Method::decode(&Bytes::from_static(&[
        0, 50, 0, 10, 0, 0, 1, 0xC0, 0, 0, 0, 0, 0,
    ]))
    .unwrap_err();
    assert_eq!(e, WireError::InvalidUtf8);
    assert_eq!(e.reply_code(), 501);
}

#[test]
fn thousand_deep_nested_tables() {
    let mut body: Vec<u8> = Vec::new();
    for _ in 0..1000 {
        let mut outer = Vec::new();
        short(&mut outer, "n");
        outer.push(b'F');
        long(&mut outer, &body);
        body = outer;
    }
    let mut t = Vec::new();
    long(&mut t, &body);
    let e = queue_declare_with_raw_table(&t).unwrap_err();
    assert!(matches!(e, WireError::NestingTooDeep { .. }), "{e:?}");
    assert_eq!(e.reply_code(), 501);

    // Same through a whole frame and through decode_field_table.
    let mut args = vec![0, 0];
    short(&mut args, "q");
    args.push(0);
    args.extend_from_slice(&t);
    let wire = frame(1, 1, &method_payload(50, 10, &args));
    assert!(decode_frame(&mut BytesMut::from(&wire[..]), 0).is_err());
    assert!(decode_field_table(&Bytes::from(t)).is_err());
}

#[test]
fn content_header_with_bad_properties() {
    let mut header = Vec::new();
    header.extend_from_slice(&60u16.to_be_bytes());
    header.extend_from_slice(&0u16.to_be_bytes());
    header.extend_from_slice(&1u64.to_be_bytes());
    header.extend_from_slice(&0x2000u16.to_be_bytes()); // headers flagged...
    header.extend_from_slice(&[0, 0, 0, 9]); // ...table length past the end
    let e = decode_frame(&mut BytesMut::from(&frame(2, 1, &header)[..]), 0).unwrap_err();
    assert!(matches!(e, WireError::Truncated { .. }));
}

// ---- delivery hot path -------------------------------------------------------------------------

#[test]
fn encode_basic_deliver_decodes_into_frames() {
    let frame_max = 4096u32;
    let props = BasicProperties {
        content_type: Some("application/octet-stream".into()),
        delivery_mode: Some(2),
        headers: Some({
            let mut h = FieldTable::new();
            h.insert("x-first-death-queue", FieldValue::from("dlq"));
            h
        }),
        ..Default::default()
    };
    let raw = props.to_bytes().unwrap();
    let fm = frame_max as usize;
    for body_len in [0usize, 1, fm - 8, fm - 7, 3 * fm + 5] {
        let body: Vec<u8> = (0..body_len).map(|i| (i % 251) as u8).collect();
        let mut out = BytesMut::new();
        encode_basic_deliver(
            &mut out,
            5,
            frame_max,
            "amq.ctag-1",
            99,
            true,
            "ex",
            "rk.1",
            &raw,
            &body,
        );
        let frames = decode_all(&mut out, frame_max);
        assert_eq!(
            frames[0],
            Frame::Method {
                channel: 5,
                method: Method::BasicDeliver(BasicDeliver {
                    consumer_tag: "amq.ctag-1".into(),
                    delivery_tag: 99,
                    redelivered: true,
                    exchange: "ex".into(),
                    routing_key: "rk.1".into(),
                })
            }
        );
        let Frame::Header { channel: 5, header } = &frames[1] else {
            panic!("{:?}", frames[1])
        };
        assert_eq!(header.class_id, 60);
        assert_eq!(header.body_size, body_len as u64);
        assert_eq!(header.properties, props);
        assert_eq!(header.raw_properties, raw);
        let mut got = Vec::new();
        for f in &frames[2..] {
            let Frame::Body {
                channel: 5,
                payload,
            } = f
            else {
                panic!("{f:?}")
            };
            assert!(!payload.is_empty());
            assert!(payload.len() + FRAME_OVERHEAD <= fm);
            got.extend_from_slice(payload);
        }
        assert_eq!(got, body);
        let expected_body_frames = body_len.div_ceil(fm - 8);
        assert_eq!(frames.len(), 2 + expected_body_frames, "body {body_len}");
    }
}

#[test]
fn encode_basic_deliver_unlimited_frame_max() {
    let body = vec![1u8; 100_000];
    let mut out = BytesMut::new();
    encode_basic_deliver(&mut out, 1, 0, "c", 1, false, "", "q", &[0, 0], &body);
    let frames = decode_all(&mut out, 0);
    assert_eq!(frames.len(), 3);
}
