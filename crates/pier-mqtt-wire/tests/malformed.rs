//! Malformed and refused input: each case decodes to the expected error, and each error to
//! the reason code (5.0) and server action the spec asks for. Encode-side refusals too.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use bytes::{Bytes, BytesMut};
use pier_mqtt_wire::*;

const V3: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

fn err(bytes: &[u8], v: ProtocolVersion) -> DecodeError {
    let b = Bytes::copy_from_slice(bytes);
    let e = match Packet::decode(&b, v, 0) {
        Err(e) => e,
        other => panic!("{bytes:02x?} should fail: {other:?}"),
    };
    // decode_from agrees and leaves the buffer alone on error.
    let mut rx = BytesMut::from(bytes);
    assert_eq!(Packet::decode_from(&mut rx, v, 0), Err(e.clone()));
    e
}

fn ok(bytes: &[u8], v: ProtocolVersion) -> Packet {
    let b = Bytes::copy_from_slice(bytes);
    let (p, n) = Packet::decode(&b, v, 0).unwrap().unwrap();
    assert_eq!(n, bytes.len());
    p
}

/// (bytes, version, expected 5.0 reason code) for packets after CONNECT.
const CASES: &[(&str, &[u8], ProtocolVersion, u8)] = &[
    ("reserved type 0", b"\x00\x00", V5, 0x81),
    ("AUTH before 5.0", b"\xf0\x00", V3, 0x81),
    ("PUBREL flags 0000", b"\x60\x02\x00\x01", V5, 0x81),
    (
        "SUBSCRIBE flags 0000",
        b"\x80\x06\x00\x01\x00\x01a\x00",
        V3,
        0x81,
    ),
    (
        "UNSUBSCRIBE flags 0011",
        b"\xa3\x05\x00\x01\x00\x01a",
        V3,
        0x81,
    ),
    ("PUBACK flags 0001", b"\x41\x02\x00\x01", V3, 0x81),
    ("PUBLISH QoS 3", b"\x36\x05\x00\x01a\x00\x01", V3, 0x81),
    (
        "remaining length of 5 octets",
        b"\x30\xff\xff\xff\xff\x01",
        V3,
        0x81,
    ),
    ("CONNACK reserved flag bits", b"\x20\x02\x02\x00", V3, 0x81),
    ("CONNACK return code 6", b"\x20\x02\x00\x06", V3, 0x81),
    ("CONNACK 5.0 reason 0x10", b"\x20\x03\x00\x10\x00", V5, 0x81),
    (
        "PUBLISH QoS 1 packet id 0",
        b"\x32\x05\x00\x01a\x00\x00",
        V3,
        0x82,
    ),
    ("topic with U+0000", b"\x30\x04\x00\x02a\x00", V3, 0x81),
    ("topic not UTF-8", b"\x30\x04\x00\x02\xc3\x28", V3, 0x81),
    ("topic surrogate", b"\x30\x05\x00\x03\xed\xa0\x80", V3, 0x81),
    ("string longer than packet", b"\x30\x03\x00\x05a", V3, 0x81),
    (
        "PUBLISH without property length",
        b"\x30\x03\x00\x01a",
        V5,
        0x81,
    ),
    (
        "PUBACK 3 octets in 3.1.1",
        b"\x40\x03\x00\x01\x00",
        V3,
        0x81,
    ),
    ("PUBACK reason 0x92", b"\x40\x03\x00\x01\x92", V5, 0x81),
    ("PUBREL reason 0x10", b"\x62\x03\x00\x01\x10", V5, 0x81),
    (
        "PUBCOMP trailing after properties",
        b"\x70\x05\x00\x01\x00\x00\xff",
        V5,
        0x81,
    ),
    ("PUBACK packet id 0", b"\x40\x02\x00\x00", V3, 0x82),
    ("PINGREQ with a body", b"\xc0\x01\x00", V3, 0x81),
    ("PINGRESP with a body", b"\xd0\x01\x00", V5, 0x81),
    (
        "DISCONNECT with a body before 5.0",
        b"\xe0\x01\x00",
        V3,
        0x81,
    ),
    ("DISCONNECT reason 0x01", b"\xe0\x01\x01", V5, 0x81),
    ("AUTH reason 0x04", b"\xf0\x02\x04\x00", V5, 0x81),
    ("SUBSCRIBE without filters", b"\x82\x02\x00\x01", V3, 0x82),
    (
        "SUBSCRIBE 5.0 without filters",
        b"\x82\x03\x00\x01\x00",
        V5,
        0x82,
    ),
    (
        "SUBSCRIBE 3.1.1 reserved option bits",
        b"\x82\x06\x00\x01\x00\x01a\x04",
        V3,
        0x81,
    ),
    (
        "SUBSCRIBE QoS 3",
        b"\x82\x06\x00\x01\x00\x01a\x03",
        V3,
        0x81,
    ),
    (
        "SUBSCRIBE 5.0 reserved option bits",
        b"\x82\x07\x00\x01\x00\x00\x01a\x40",
        V5,
        0x81,
    ),
    (
        "SUBSCRIBE 5.0 retain handling 3",
        b"\x82\x07\x00\x01\x00\x00\x01a\x30",
        V5,
        0x82,
    ),
    (
        "SUBSCRIBE filter without options",
        b"\x82\x05\x00\x01\x00\x01a",
        V3,
        0x81,
    ),
    ("UNSUBSCRIBE without filters", b"\xa2\x02\x00\x01", V3, 0x82),
    ("SUBACK 3.1.1 code 3", b"\x90\x03\x00\x01\x03", V3, 0x81),
    (
        "SUBACK 5.0 code 0x11",
        b"\x90\x04\x00\x01\x00\x11",
        V5,
        0x81,
    ),
    (
        "UNSUBACK 3.1.1 with codes",
        b"\xb0\x03\x00\x01\x00",
        V3,
        0x81,
    ),
    (
        "property length past the packet",
        b"\x30\x05\x00\x01a\x05\x01",
        V5,
        0x81,
    ),
    (
        "property id of 5 octets",
        b"\x30\x09\x00\x01a\x05\xff\xff\xff\xff\x01",
        V5,
        0x81,
    ),
    (
        "unknown property 0x7f",
        b"\x30\x06\x00\x01a\x02\x7f\x00",
        V5,
        0x81,
    ),
    (
        "session expiry in PUBLISH",
        b"\x30\x09\x00\x01a\x05\x11\x00\x00\x00\x01",
        V5,
        0x81,
    ),
    (
        "will delay in PUBLISH",
        b"\x30\x09\x00\x01a\x05\x18\x00\x00\x00\x01",
        V5,
        0x81,
    ),
    (
        "content type twice",
        b"\x30\x0c\x00\x01a\x08\x03\x00\x01x\x03\x00\x01y",
        V5,
        0x82,
    ),
    (
        "payload format indicator 2",
        b"\x30\x06\x00\x01a\x02\x01\x02",
        V5,
        0x82,
    ),
    (
        "subscription identifier 0",
        b"\x30\x06\x00\x01a\x02\x0b\x00",
        V5,
        0x82,
    ),
    (
        "two subscription identifiers in SUBSCRIBE",
        b"\x82\x0b\x00\x01\x04\x0b\x01\x0b\x02\x00\x01a\x00",
        V5,
        0x82,
    ),
    (
        "topic alias 0",
        b"\x30\x07\x00\x01a\x03\x23\x00\x00",
        V5,
        0x94,
    ),
    (
        "correlation data truncated",
        b"\x30\x07\x00\x01a\x03\x09\x00\x05",
        V5,
        0x81,
    ),
    (
        "maximum QoS 2 in CONNACK",
        b"\x20\x05\x00\x00\x02\x24\x02",
        V5,
        0x82,
    ),
    (
        "receive maximum 0 in CONNACK",
        b"\x20\x06\x00\x00\x03\x21\x00\x00",
        V5,
        0x82,
    ),
    (
        "maximum packet size 0 in CONNACK",
        b"\x20\x08\x00\x00\x05\x27\x00\x00\x00\x00",
        V5,
        0x82,
    ),
    (
        "retain available 2 in CONNACK",
        b"\x20\x05\x00\x00\x02\x25\x02",
        V5,
        0x82,
    ),
    (
        "authentication data without a method",
        b"\x20\x06\x00\x00\x03\x16\x00\x00",
        V5,
        0x82,
    ),
    (
        "user property without value",
        b"\x30\x09\x00\x01a\x05\x26\x00\x01k\x00",
        V5,
        0x81,
    ),
];

#[test]
fn malformed_packets_map_to_reason_codes() {
    for (name, bytes, v, rc) in CASES {
        let e = err(bytes, *v);
        assert_eq!(e.reason_code().code(), *rc, "{name}: {e}");
        match v {
            ProtocolVersion::V5 => {
                assert_eq!(
                    e.action(*v),
                    ServerAction::Disconnect(e.reason_code()),
                    "{name}"
                )
            }
            _ => assert_eq!(e.action(*v), ServerAction::Close, "{name}"),
        }
    }
}

#[test]
fn errors_are_found_as_early_as_possible() {
    // Type and flags from the first octet alone.
    let one = |b: u8, v| Packet::decode(&Bytes::copy_from_slice(&[b]), v, 0);
    assert!(matches!(
        one(0x00, V5),
        Err(DecodeError::ReservedPacketType(0))
    ));
    assert!(matches!(
        one(0x61, V5),
        Err(DecodeError::InvalidFlags { .. })
    ));
    assert!(matches!(
        one(0xf0, V3),
        Err(DecodeError::ReservedPacketType(15))
    ));
    assert_eq!(one(0xf0, V5), Ok(None));
    assert_eq!(one(0x30, V3), Ok(None));
    // The size from the fixed header alone, before any of the body arrives.
    let e = Packet::decode(&Bytes::from_static(b"\x30\xff\xff\xff\x7f"), V3, 1 << 20).unwrap_err();
    assert_eq!(
        e,
        DecodeError::PacketTooLarge {
            size: 268_435_460,
            max: 1 << 20
        }
    );
    assert_eq!(
        e.action(V5),
        ServerAction::Disconnect(ReasonCode::PacketTooLarge)
    );
    let e = Packet::decode(&Bytes::from_static(b"\x30\x81\x01"), V3, 129).unwrap_err();
    assert_eq!(
        e,
        DecodeError::PacketTooLarge {
            size: 132,
            max: 129
        }
    );
    assert_eq!(
        Packet::decode(&Bytes::from_static(b"\x30\x81\x01"), V3, 132),
        Ok(None)
    );
    // An incomplete remaining length waits.
    assert_eq!(
        Packet::decode(&Bytes::from_static(b"\x30\xff\xff"), V3, 0),
        Ok(None)
    );
    // A whole packet followed by garbage decodes; the garbage fails next time.
    let b = Bytes::from_static(b"\xc0\x00\x00\x00");
    let (p, n) = Packet::decode(&b, V3, 0).unwrap().unwrap();
    assert_eq!((p, n), (Packet::PingReq, 2));
    assert!(Packet::decode(&b.slice(n..), V3, 0).is_err());
}

fn connect_err(bytes: &[u8]) -> ConnectError {
    Connect::decode(&Bytes::copy_from_slice(bytes), 0).expect_err("should fail")
}

#[test]
fn connect_refusals() {
    // 3.1.1 body with a reserved flag bit: malformed, close.
    let e = connect_err(b"\x10\x0d\x00\x04MQTT\x04\x03\x00\x3c\x00\x01c");
    assert_eq!(e.version, Some(V3));
    assert_eq!(e.action(), ServerAction::Close);
    // 3.1 did not reserve it.
    assert!(Connect::decode(
        &Bytes::from_static(b"\x10\x0f\x00\x06MQIsdp\x03\x03\x00\x3c\x00\x01c"),
        0
    )
    .is_ok());
    // Will QoS 3; will retain without a will.
    for flags in [0x1e, 0x22, 0x0a] {
        let e = connect_err(
            &[
                &b"\x10\x0d\x00\x04MQTT\x04"[..],
                &[flags],
                b"\x00\x3c\x00\x01c",
            ]
            .concat(),
        );
        assert!(
            matches!(e.error, DecodeError::Invalid { .. }),
            "{flags:#x}: {e}"
        );
    }
    // Password without user name: malformed before 5.0, fine in 5.0.
    let e = connect_err(b"\x10\x10\x00\x04MQTT\x04\x42\x00\x3c\x00\x01c\x00\x01p");
    assert!(matches!(e.error, DecodeError::Invalid { .. }));
    let (c, _) = Connect::decode(
        &Bytes::from_static(b"\x10\x11\x00\x04MQTT\x05\x42\x00\x3c\x00\x00\x01c\x00\x01p"),
        0,
    )
    .unwrap()
    .unwrap();
    assert_eq!((c.username, c.password.as_deref()), (None, Some(&b"p"[..])));
    // 5.0 errors get a CONNACK with the reason code.
    let e = connect_err(b"\x10\x10\x00\x04MQTT\x05\x02\x00\x3c\x02\x21\x00\x00\x01c");
    assert_eq!(
        e.action(),
        ServerAction::ConnAck(ReasonCode::MalformedPacket)
    );
    let e = connect_err(b"\x10\x11\x00\x04MQTT\x05\x02\x00\x3c\x03\x21\x00\x00\x00\x01c");
    assert_eq!(e.action(), ServerAction::ConnAck(ReasonCode::ProtocolError));
    let e = connect_err(b"\x10\x12\x00\x04MQTT\x05\x02\x00\x3c\x03\x21\x00\x01\x00\x01c\xff");
    assert_eq!(
        e.action(),
        ServerAction::ConnAck(ReasonCode::MalformedPacket)
    );
    // Too large: the version is not known yet, so just close.
    let e = Connect::decode(&Bytes::from_static(b"\x10\x7f"), 64).unwrap_err();
    assert_eq!(e.error.reason_code(), ReasonCode::PacketTooLarge);
    assert_eq!(e.action(), ServerAction::Close);
    // Not a CONNECT: refused from the first octet.
    let e = Connect::decode(&Bytes::from_static(b"\x30"), 0).unwrap_err();
    assert_eq!(e.error, DecodeError::ExpectedConnect(3));
    // Level 4 under the 3.1 name, and a name that is not UTF-8.
    assert_eq!(
        connect_err(b"\x10\x0f\x00\x06MQIsdp\x04\x02\x00\x3c\x00\x01c").error,
        DecodeError::UnsupportedProtocolLevel(4)
    );
    assert!(matches!(
        connect_err(b"\x10\x0d\x00\x04MQ\xffT\x04\x02\x00\x3c\x00\x01c").error,
        DecodeError::InvalidProtocolName(_)
    ));
    // A second CONNECT on an established connection decodes; refusing it is the session's.
    assert!(matches!(
        ok(b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01c", V3),
        Packet::Connect(_)
    ));
}

#[test]
fn server_actions_build_the_packets() {
    let enc = |a: ServerAction| {
        let (p, v) = a.packet().unwrap();
        let mut out = BytesMut::new();
        p.encode(v, &mut out).unwrap();
        out.to_vec()
    };
    assert_eq!(
        enc(ServerAction::Disconnect(ReasonCode::MalformedPacket)),
        b"\xe0\x01\x81"
    );
    assert_eq!(
        enc(ServerAction::Disconnect(ReasonCode::PacketTooLarge)),
        b"\xe0\x01\x95"
    );
    assert_eq!(
        enc(ServerAction::ConnAck(ReasonCode::ProtocolError)),
        b"\x20\x03\x00\x82\x00"
    );
    assert_eq!(
        enc(ServerAction::ConnAckV3(
            ConnectReturnCode::UnacceptableProtocolVersion
        )),
        b"\x20\x02\x00\x01"
    );
}

#[test]
fn encode_refusals() {
    let fails = |p: Packet, v| {
        let mut out = BytesMut::new();
        let e = p.encode(v, &mut out).unwrap_err();
        assert!(out.is_empty(), "{e}");
        assert!(p.encoded_len(v).is_err());
        e
    };
    let publish = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "t".into(),
        packet_id: 0,
        properties: Properties::default(),
        payload: Bytes::new(),
    };
    fails(
        Packet::Publish(Publish {
            packet_id: 1,
            ..publish.clone()
        }),
        V3,
    );
    fails(
        Packet::Publish(Publish {
            qos: QoS::AtLeastOnce,
            ..publish.clone()
        }),
        V3,
    );
    fails(
        Packet::Publish(Publish {
            topic: "x".repeat(65_536),
            ..publish.clone()
        }),
        V3,
    );
    fails(
        Packet::Publish(Publish {
            topic: "a\0".into(),
            ..publish.clone()
        }),
        V3,
    );
    let props = Properties {
        session_expiry_interval: Some(1),
        ..Properties::default()
    };
    assert_eq!(
        fails(
            Packet::Publish(Publish {
                properties: props,
                ..publish.clone()
            }),
            V5
        ),
        EncodeError::PropertyNotAllowed {
            id: 0x11,
            packet: "PUBLISH"
        }
    );
    let props = Properties {
        topic_alias: Some(0),
        ..Properties::default()
    };
    fails(
        Packet::Publish(Publish {
            properties: props,
            ..publish.clone()
        }),
        V5,
    );
    // The same properties are simply not written for 3.1.1.
    let mut out = BytesMut::new();
    let props = Properties {
        topic_alias: Some(3),
        ..Properties::default()
    };
    Packet::Publish(Publish {
        properties: props,
        ..publish
    })
    .encode(V3, &mut out)
    .unwrap();
    assert_eq!(&out[..], b"\x30\x03\x00\x01t");
    fails(Packet::PubAck(PubReply::new(0)), V5);
    fails(
        Packet::PubRel(PubReply {
            reason_code: ReasonCode::NoMatchingSubscribers,
            ..PubReply::new(1)
        }),
        V5,
    );
    fails(
        Packet::Auth(Auth {
            reason_code: ReasonCode::Success,
            properties: Properties::default(),
        }),
        V3,
    );
    let connack = |rc| {
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: rc,
            properties: Properties::default(),
        })
    };
    fails(connack(ReasonCode::PacketTooLarge), V3);
    fails(connack(ReasonCode::GrantedQos1), V5);
    fails(
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            subscriptions: vec![],
        }),
        V3,
    );
    fails(
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: vec![],
        }),
        V3,
    );
    fails(
        Packet::Connect(Box::new(Connect {
            protocol: V3,
            clean_start: true,
            keep_alive: 0,
            properties: Properties::default(),
            client_id: String::new(),
            will: None,
            username: None,
            password: Some(Bytes::from_static(b"p")),
        })),
        V3,
    );
    // A 5.0 SUBACK failure code becomes 0x80 for 3.1.1.
    let mut out = BytesMut::new();
    Packet::SubAck(SubAck {
        packet_id: 1,
        properties: Properties::default(),
        reason_codes: vec![ReasonCode::GrantedQos1, ReasonCode::NotAuthorized],
    })
    .encode(V3, &mut out)
    .unwrap();
    assert_eq!(&out[..], b"\x90\x04\x00\x01\x01\x80");
}

#[test]
fn short_forms_of_5_0_acknowledgements() {
    // §3.4.2.1, §3.14.2.1, §3.15.2.1: reason code and property length may be left out.
    assert_eq!(
        ok(b"\x40\x02\x00\x07", V5),
        Packet::PubAck(PubReply::new(7))
    );
    let with_code = ok(b"\x50\x03\x00\x07\x10", V5);
    assert_eq!(
        with_code,
        Packet::PubRec(PubReply {
            reason_code: ReasonCode::NoMatchingSubscribers,
            ..PubReply::new(7)
        })
    );
    assert_eq!(
        ok(b"\x40\x04\x00\x07\x00\x00", V5),
        Packet::PubAck(PubReply::new(7))
    );
    assert_eq!(
        ok(b"\xe0\x00", V5),
        Packet::Disconnect(Disconnect::default())
    );
    assert_eq!(
        ok(b"\xe0\x02\x00\x00", V5),
        Packet::Disconnect(Disconnect::default())
    );
    assert_eq!(
        ok(b"\xf0\x00", V5),
        Packet::Auth(Auth {
            reason_code: ReasonCode::Success,
            properties: Properties::default()
        })
    );
    // And they are what the encoder writes.
    let mut out = BytesMut::new();
    with_code.encode(V5, &mut out).unwrap();
    assert_eq!(&out[..], b"\x50\x03\x00\x07\x10");
}
