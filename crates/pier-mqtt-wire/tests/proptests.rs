//! Property tests: every packet type, in every version it exists in, survives
//! encode → decode unchanged; every prefix of an encoding asks for more; the maximum packet
//! size is enforced from the fixed header; a stream of packets decodes back in order.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use bytes::{Bytes, BytesMut};
use pier_mqtt_wire::properties::id;
use pier_mqtt_wire::*;
use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;

fn text() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z/+#$ ]{0,12}", "[^\u{0}]{0,8}",]
}

fn blob() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..40).prop_map(Bytes::from)
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn version() -> impl Strategy<Value = ProtocolVersion> {
    prop_oneof![
        Just(ProtocolVersion::V3_1),
        Just(ProtocolVersion::V3_1_1),
        Just(ProtocolVersion::V5)
    ]
}

fn pid() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

/// Properties holding only what `ctx` allows.
fn props(ctx: PropertyContext) -> impl Strategy<Value = Properties> {
    let a = (
        of(any::<bool>()),
        of(any::<u32>()),
        of(text()),
        of(text()),
        of(blob()),
        vec(1..=MAX_VARINT, 0..3),
        of(any::<u32>()),
        of(text()),
        of(any::<u16>()),
        of(text()),
    );
    let b = (
        of(blob()),
        of(any::<bool>()),
        of(any::<u32>()),
        of(any::<bool>()),
        of(text()),
        of(text()),
        of(text()),
        of(1..=u16::MAX),
        of(any::<u16>()),
        of(1..=u16::MAX),
    );
    let c = (
        of(prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce)]),
        of(any::<bool>()),
        vec((text(), text()), 0..3),
        of(1..=u32::MAX),
        of(any::<bool>()),
        of(any::<bool>()),
        of(any::<bool>()),
    );
    (a, b, c).prop_map(move |(a, b, c)| {
        let ok = |i| ctx.allows(i);
        let has_method = a.9.is_some() && ok(id::AUTHENTICATION_METHOD);
        let mut subs = if ok(id::SUBSCRIPTION_IDENTIFIER) {
            a.5
        } else {
            vec![]
        };
        if ctx == PropertyContext::Subscribe {
            subs.truncate(1);
        }
        Properties {
            payload_format_indicator: a.0.filter(|_| ok(id::PAYLOAD_FORMAT_INDICATOR)),
            message_expiry_interval: a.1.filter(|_| ok(id::MESSAGE_EXPIRY_INTERVAL)),
            content_type: a.2.filter(|_| ok(id::CONTENT_TYPE)),
            response_topic: a.3.filter(|_| ok(id::RESPONSE_TOPIC)),
            correlation_data: a.4.filter(|_| ok(id::CORRELATION_DATA)),
            subscription_identifiers: subs,
            session_expiry_interval: a.6.filter(|_| ok(id::SESSION_EXPIRY_INTERVAL)),
            assigned_client_identifier: a.7.filter(|_| ok(id::ASSIGNED_CLIENT_IDENTIFIER)),
            server_keep_alive: a.8.filter(|_| ok(id::SERVER_KEEP_ALIVE)),
            authentication_method: a.9.filter(|_| ok(id::AUTHENTICATION_METHOD)),
            // Data only with a method (§3.1.2.11.10).
            authentication_data: b.0.filter(|_| ok(id::AUTHENTICATION_DATA) && has_method),
            request_problem_information: b.1.filter(|_| ok(id::REQUEST_PROBLEM_INFORMATION)),
            will_delay_interval: b.2.filter(|_| ok(id::WILL_DELAY_INTERVAL)),
            request_response_information: b.3.filter(|_| ok(id::REQUEST_RESPONSE_INFORMATION)),
            response_information: b.4.filter(|_| ok(id::RESPONSE_INFORMATION)),
            server_reference: b.5.filter(|_| ok(id::SERVER_REFERENCE)),
            reason_string: b.6.filter(|_| ok(id::REASON_STRING)),
            receive_maximum: b.7.filter(|_| ok(id::RECEIVE_MAXIMUM)),
            topic_alias_maximum: b.8.filter(|_| ok(id::TOPIC_ALIAS_MAXIMUM)),
            topic_alias: b.9.filter(|_| ok(id::TOPIC_ALIAS)),
            maximum_qos: c.0.filter(|_| ok(id::MAXIMUM_QOS)),
            retain_available: c.1.filter(|_| ok(id::RETAIN_AVAILABLE)),
            user_properties: c.2,
            maximum_packet_size: c.3.filter(|_| ok(id::MAXIMUM_PACKET_SIZE)),
            wildcard_subscription_available: c
                .4
                .filter(|_| ok(id::WILDCARD_SUBSCRIPTION_AVAILABLE)),
            subscription_identifier_available: c
                .5
                .filter(|_| ok(id::SUBSCRIPTION_IDENTIFIER_AVAILABLE)),
            shared_subscription_available: c.6.filter(|_| ok(id::SHARED_SUBSCRIPTION_AVAILABLE)),
        }
    })
}

/// Properties for `v`: none before 5.0.
fn props_for(v: ProtocolVersion, ctx: PropertyContext) -> BoxedStrategy<Properties> {
    if v == ProtocolVersion::V5 {
        props(ctx).boxed()
    } else {
        Just(Properties::default()).boxed()
    }
}

fn reason(codes: &'static [u8]) -> impl Strategy<Value = ReasonCode> {
    proptest::sample::select(codes).prop_map(|b| ReasonCode::from_u8(b).unwrap())
}

const CONNACK_V5: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];
const CONNACK_V3: &[u8] = &[0x00, 0x84, 0x85, 0x88, 0x86, 0x87];
const PUBACK: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
const PUBREL: &[u8] = &[0x00, 0x92];
const SUBACK_V5: &[u8] = &[
    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
];
const SUBACK_V3: &[u8] = &[0x00, 0x01, 0x02, 0x80];
const UNSUBACK: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
const DISCONNECT: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
const AUTH: &[u8] = &[0x00, 0x18, 0x19];

fn connect(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let will = of((
        qos(),
        any::<bool>(),
        props_for(v, PropertyContext::Will),
        text(),
        blob(),
    )
        .prop_map(|(qos, retain, properties, topic, payload)| Will {
            qos,
            retain,
            properties,
            topic,
            payload,
        }));
    (
        any::<bool>(),
        any::<u16>(),
        props_for(v, PropertyContext::Connect),
        text(),
        will,
        of(text()),
        of(blob()),
    )
        .prop_map(
            move |(clean_start, keep_alive, properties, client_id, will, username, password)| {
                // Before 5.0 a password needs a user name.
                let password = if v != ProtocolVersion::V5 && username.is_none() {
                    None
                } else {
                    password
                };
                Packet::Connect(Box::new(Connect {
                    protocol: v,
                    clean_start,
                    keep_alive,
                    properties,
                    client_id,
                    will,
                    username,
                    password,
                }))
            },
        )
}

fn publish(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        any::<bool>(),
        qos(),
        any::<bool>(),
        text(),
        pid(),
        props_for(v, PropertyContext::Publish),
        blob(),
    )
        .prop_map(|(dup, qos, retain, topic, id, properties, payload)| {
            Packet::Publish(Publish {
                dup,
                qos,
                retain,
                topic,
                packet_id: if qos == QoS::AtMostOnce { 0 } else { id },
                properties,
                payload,
            })
        })
}

fn pub_reply(v: ProtocolVersion, codes: &'static [u8]) -> BoxedStrategy<PubReply> {
    if v == ProtocolVersion::V5 {
        (pid(), reason(codes), props(PropertyContext::PubReply))
            .prop_map(|(packet_id, reason_code, properties)| PubReply {
                packet_id,
                reason_code,
                properties,
            })
            .boxed()
    } else {
        pid().prop_map(PubReply::new).boxed()
    }
}

fn subscribe(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let v5 = v == ProtocolVersion::V5;
    let options =
        (qos(), any::<bool>(), any::<bool>(), 0u8..3).prop_map(move |(qos, nl, rap, rh)| {
            if v5 {
                SubscriptionOptions {
                    qos,
                    no_local: nl,
                    retain_as_published: rap,
                    retain_handling: match rh {
                        0 => RetainHandling::SendAtSubscribe,
                        1 => RetainHandling::SendAtSubscribeIfNew,
                        _ => RetainHandling::DoNotSend,
                    },
                }
            } else {
                SubscriptionOptions {
                    qos,
                    ..SubscriptionOptions::default()
                }
            }
        });
    (
        pid(),
        props_for(v, PropertyContext::Subscribe),
        vec(
            (text(), options).prop_map(|(filter, options)| Subscription { filter, options }),
            1..5,
        ),
    )
        .prop_map(|(packet_id, properties, subscriptions)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                properties,
                subscriptions,
            })
        })
}

fn packet(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let v5 = v == ProtocolVersion::V5;
    let connack = (
        any::<bool>(),
        reason(if v5 { CONNACK_V5 } else { CONNACK_V3 }),
        props_for(v, PropertyContext::ConnAck),
    )
        .prop_map(|(session_present, reason_code, properties)| {
            Packet::ConnAck(ConnAck {
                session_present,
                reason_code,
                properties,
            })
        });
    let suback = (
        pid(),
        props_for(v, PropertyContext::SubAck),
        vec(reason(if v5 { SUBACK_V5 } else { SUBACK_V3 }), 0..5),
    )
        .prop_map(move |(packet_id, properties, reason_codes)| {
            // Before 5.0 every failure is 0x80, which decodes as Unspecified error.
            let reason_codes = reason_codes
                .into_iter()
                .map(|c| {
                    if c.is_error() && !v5 {
                        ReasonCode::UnspecifiedError
                    } else {
                        c
                    }
                })
                .collect();
            Packet::SubAck(SubAck {
                packet_id,
                properties,
                reason_codes,
            })
        });
    let unsubscribe = (
        pid(),
        props_for(v, PropertyContext::Unsubscribe),
        vec(text(), 1..5),
    )
        .prop_map(|(packet_id, properties, filters)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                properties,
                filters,
            })
        });
    let unsuback = (
        pid(),
        props_for(v, PropertyContext::UnsubAck),
        vec(reason(UNSUBACK), 0..5),
    )
        .prop_map(move |(packet_id, properties, codes)| {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                properties,
                reason_codes: if v5 { codes } else { vec![] },
            })
        });
    let disconnect = if v5 {
        (reason(DISCONNECT), props(PropertyContext::Disconnect))
            .prop_map(|(reason_code, properties)| {
                Packet::Disconnect(Disconnect {
                    reason_code,
                    properties,
                })
            })
            .boxed()
    } else {
        Just(Packet::Disconnect(Disconnect::default())).boxed()
    };
    let mut all = vec![
        connect(v).boxed(),
        connack.boxed(),
        publish(v).boxed(),
        pub_reply(v, PUBACK).prop_map(Packet::PubAck).boxed(),
        pub_reply(v, PUBACK).prop_map(Packet::PubRec).boxed(),
        pub_reply(v, PUBREL).prop_map(Packet::PubRel).boxed(),
        pub_reply(v, PUBREL).prop_map(Packet::PubComp).boxed(),
        subscribe(v).boxed(),
        suback.boxed(),
        unsubscribe.boxed(),
        unsuback.boxed(),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
        disconnect,
    ];
    if v5 {
        all.push(
            (reason(AUTH), props(PropertyContext::Auth))
                .prop_map(|(reason_code, properties)| {
                    Packet::Auth(Auth {
                        reason_code,
                        properties,
                    })
                })
                .boxed(),
        );
    }
    proptest::strategy::Union::new(all).boxed()
}

fn versioned_packet() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    version().prop_flat_map(|v| packet(v).prop_map(move |p| (v, p)))
}

fn encode(p: &Packet, v: ProtocolVersion) -> Bytes {
    let mut out = BytesMut::new();
    p.encode(v, &mut out).unwrap();
    assert_eq!(p.encoded_len(v).unwrap(), out.len());
    out.freeze()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn round_trip((v, p) in versioned_packet()) {
        let bytes = encode(&p, v);
        let (q, n) = Packet::decode(&bytes, v, 0).unwrap().unwrap();
        prop_assert_eq!(n, bytes.len());
        prop_assert_eq!(&q, &p);
        if let Packet::Connect(c) = &p {
            let (c2, _) = Connect::decode(&bytes, 0).unwrap().unwrap();
            prop_assert_eq!(&c2, &**c);
        }
        // Re-encoding is stable.
        prop_assert_eq!(encode(&q, v), bytes);
    }

    #[test]
    fn prefixes_ask_for_more((v, p) in versioned_packet(), cut in any::<prop::sample::Index>()) {
        let bytes = encode(&p, v);
        let n = cut.index(bytes.len());
        prop_assert_eq!(Packet::decode(&bytes.slice(..n), v, 0), Ok(None));
        prop_assert_eq!(Packet::decode(&bytes.slice(..bytes.len() - 1), v, 0), Ok(None));
    }

    #[test]
    fn max_packet_size_is_checked_from_the_header((v, p) in versioned_packet()) {
        let bytes = encode(&p, v);
        let len = bytes.len() as u32;
        prop_assert!(Packet::decode(&bytes, v, len).unwrap().is_some());
        // Refused with only the fixed header there.
        let header = parse_fixed_header(&bytes, 0).unwrap().unwrap();
        let e = Packet::decode(&bytes.slice(..header.header_len), v, len - 1).unwrap_err();
        prop_assert_eq!(&e, &DecodeError::PacketTooLarge { size: u64::from(len), max: len - 1 });
        prop_assert_eq!(e.reason_code(), ReasonCode::PacketTooLarge);
    }

    #[test]
    fn streams_decode_in_order((v, ps) in version().prop_flat_map(|v| vec(packet(v), 1..6).prop_map(move |ps| (v, ps)))) {
        let mut rx = BytesMut::new();
        for p in &ps {
            p.encode(v, &mut rx).unwrap();
        }
        let mut out = Vec::new();
        while let Some(p) = Packet::decode_from(&mut rx, v, 0).unwrap() {
            out.push(p);
        }
        prop_assert!(rx.is_empty());
        prop_assert_eq!(out, ps);
    }

    #[test]
    fn v5_fields_are_dropped_for_v3(p in packet(ProtocolVersion::V5)) {
        // Whatever 5.0 packet a server builds, encoding it for 3.1.1 either fails cleanly or
        // gives a valid 3.1.1 packet of the same type.
        let mut out = BytesMut::new();
        if p.encode(ProtocolVersion::V3_1_1, &mut out).is_ok() {
            let (q, n) = Packet::decode(&out.clone().freeze(), ProtocolVersion::V3_1_1, 0).unwrap().unwrap();
            prop_assert_eq!(n, out.len());
            prop_assert_eq!(q.packet_type(), p.packet_type());
        }
    }
}
