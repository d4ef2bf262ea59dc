//! Golden tests: packets from real MQTT implementations, decoded and re-encoded.
//!
//! * `golden/rabbitmq-3.10.8.txt`: paho-mqtt 2.2.0's 3.1.1 and 3.1 clients against the
//!   RabbitMQ 3.10.8 MQTT plugin, both directions, recorded by the proxy in
//!   `golden/capture.py`; raw-socket CONNECTs the broker refuses; and the routing keys an
//!   AMQP 0-9-1 consumer on `amq.topic` saw for MQTT publishes (and the reverse).
//! * `golden/paho-mosquitto-v5.txt`: paho-mqtt 2.2.0's 5.0 client against mosquitto 2.0.11
//!   (configured by `golden/mosquitto.conf`), both directions, and raw-socket packets
//!   mosquitto refuses. RabbitMQ 3.10.8 does not speak 5.0, so the 5.0 client packets come
//!   from paho and the 5.0 server packets from mosquitto.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use bytes::{Bytes, BytesMut};
use pier_mqtt_wire::topic::{amqp_to_mqtt, mqtt_to_amqp, topic_matches};
use pier_mqtt_wire::*;

struct Line {
    dir: char,
    version: String,
    label: String,
    bytes: Bytes,
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn load(text: &str) -> Vec<Line> {
    text.lines()
        .filter(|l| l.starts_with("C ") || l.starts_with("S "))
        .map(|l| {
            let p: Vec<&str> = l.split(' ').collect();
            Line {
                dir: p[0].chars().next().unwrap(),
                version: p[1].to_string(),
                label: p[2].to_string(),
                bytes: Bytes::from(hex(p[3])),
            }
        })
        .collect()
}

fn rabbitmq() -> Vec<Line> {
    load(include_str!("golden/rabbitmq-3.10.8.txt"))
}

fn mosquitto() -> Vec<Line> {
    load(include_str!("golden/paho-mosquitto-v5.txt"))
}

fn version(v: &str) -> Option<ProtocolVersion> {
    match v {
        "3.1" => Some(ProtocolVersion::V3_1),
        "3.1.1" => Some(ProtocolVersion::V3_1_1),
        "5" => Some(ProtocolVersion::V5),
        _ => None,
    }
}

fn decode(l: &Line, v: ProtocolVersion) -> Packet {
    let (p, n) = Packet::decode(&l.bytes, v, 0)
        .unwrap_or_else(|e| panic!("{} {}: {e}", l.dir, l.label))
        .unwrap_or_else(|| panic!("{}: incomplete", l.label));
    assert_eq!(n, l.bytes.len(), "{}", l.label);
    p
}

/// Raw packets sent to mosquitto to be refused (and the packets after them).
fn refused_raw(l: &Line) -> bool {
    let good_connects = [
        "connect-properties",
        "connect-assigned-id",
        "connect-auth-method",
    ];
    let bad_connect = l.label.starts_with("connect-")
        && l.version == "5"
        && l.dir == 'C'
        && !good_connects.contains(&l.label.as_str());
    bad_connect || l.label.ends_with("-after-connect")
}

/// Packets of sessions that completed normally (not the refused raw ones).
fn session_lines() -> Vec<Line> {
    rabbitmq()
        .into_iter()
        .chain(mosquitto())
        .filter(|l| version(&l.version).is_some() && !l.label.ends_with("-reply"))
        .filter(|l| !refused_raw(l))
        .collect()
}

/// mosquitto writes properties in its own order, not by identifier; these re-encode to
/// the same packet but not the same bytes.
const REORDERED: [(&str, char); 3] = [
    ("connect-properties", 'S'),
    ("connect-assigned-id", 'S'),
    ("publish-properties-qos1", 'S'),
];

#[test]
fn every_packet_decodes_and_reencodes() {
    let mut exact = 0;
    let mut total = 0;
    for l in session_lines() {
        let v = version(&l.version).unwrap();
        let p = decode(&l, v);
        if let Packet::Connect(c) = &p {
            assert_eq!(c.protocol, v, "{}", l.label);
            let (c2, n) = Connect::decode(&l.bytes, 0).unwrap().unwrap();
            assert_eq!(n, l.bytes.len());
            assert_eq!(&c2, &**c);
        }
        let mut out = BytesMut::new();
        p.encode(v, &mut out).unwrap();
        assert_eq!(p.encoded_len(v).unwrap(), out.len());
        if out[..] == l.bytes[..] {
            exact += 1;
        } else {
            assert!(
                REORDERED.contains(&(l.label.as_str(), l.dir)),
                "{} {} {} re-encoded differently",
                l.dir,
                l.version,
                l.label
            );
            let again = Packet::decode(&out.freeze(), v, 0).unwrap().unwrap().0;
            assert_eq!(again, p, "{}", l.label);
        }
        total += 1;
    }
    assert!(total > 90, "{total}");
    assert_eq!(total - exact, REORDERED.len(), "{exact}/{total}");
}

#[test]
fn decode_from_a_stream_of_everything_one_byte_at_a_time() {
    // The whole 3.1.1 client side, as one stream, fed a byte at a time.
    let stream: Vec<u8> = rabbitmq()
        .iter()
        .filter(|l| l.version == "3.1.1" && l.dir == 'C')
        .flat_map(|l| l.bytes.to_vec())
        .collect();
    let mut rx = BytesMut::new();
    let mut packets = Vec::new();
    let mut connected = false;
    for b in stream {
        rx.extend_from_slice(&[b]);
        if !connected {
            if let Some(c) = Connect::decode_from(&mut rx, 1 << 16).unwrap() {
                assert_eq!(c.client_id, "pier-golden-3.1.1");
                connected = true;
            }
            continue;
        }
        while let Some(p) = Packet::decode_from(&mut rx, ProtocolVersion::V3_1_1, 1 << 16).unwrap()
        {
            packets.push(p);
        }
    }
    assert!(rx.is_empty());
    assert_eq!(packets.first().map(Packet::name), Some("SUBSCRIBE"));
    assert_eq!(
        packets.last(),
        Some(&Packet::Disconnect(Disconnect::default()))
    );
}

fn find<'a>(lines: &'a [Line], dir: char, label: &str, nth: usize) -> &'a Line {
    lines
        .iter()
        .filter(|l| l.dir == dir && l.label == label)
        .nth(nth)
        .unwrap_or_else(|| panic!("no {dir} {label} #{nth}"))
}

#[test]
fn rabbitmq_3_1_1_session() {
    let all = rabbitmq();
    let s: Vec<Line> = all.into_iter().filter(|l| l.version == "3.1.1").collect();
    let v = ProtocolVersion::V3_1_1;
    let Packet::Connect(c) = decode(find(&s, 'C', "connect", 0), v) else {
        panic!()
    };
    assert_eq!(c.client_id, "pier-golden-3.1.1");
    assert_eq!(c.keep_alive, 30);
    assert!(c.clean_start);
    assert_eq!(c.username.as_deref(), Some("guest"));
    assert_eq!(c.password.as_deref(), Some(&b"guest"[..]));
    let w = c.will.unwrap();
    assert_eq!(
        (w.topic.as_str(), &w.payload[..], w.qos, w.retain),
        ("pier/golden/will", &b"gone"[..], QoS::AtLeastOnce, false)
    );
    assert_eq!(
        decode(find(&s, 'S', "connect", 0), v),
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: ReasonCode::Success,
            properties: Properties::default()
        })
    );
    let Packet::Subscribe(sub) = decode(find(&s, 'C', "subscribe", 0), v) else {
        panic!()
    };
    assert_eq!(sub.subscriptions.len(), 2);
    assert_eq!(sub.subscriptions[0].filter, "pier/golden/#");
    assert_eq!(sub.subscriptions[0].options.qos, QoS::AtLeastOnce);
    assert_eq!(sub.subscriptions[1].options.qos, QoS::AtMostOnce);
    let Packet::SubAck(ack) = decode(find(&s, 'S', "subscribe", 0), v) else {
        panic!()
    };
    assert_eq!(
        ack.reason_codes,
        vec![ReasonCode::GrantedQos1, ReasonCode::GRANTED_QOS_0]
    );
    // RabbitMQ 3.10.8 downgrades QoS 2 to 1: the client's QoS 2 PUBLISH gets a PUBACK and
    // is delivered at QoS 1.
    let Packet::Publish(p) = decode(find(&s, 'C', "publish-qos2", 0), v) else {
        panic!()
    };
    assert_eq!(p.qos, QoS::ExactlyOnce);
    let Packet::Publish(d) = decode(find(&s, 'S', "publish-qos2", 0), v) else {
        panic!()
    };
    assert_eq!(
        (d.qos, &d.payload[..]),
        (QoS::AtLeastOnce, &b"qos2 payload"[..])
    );
    assert_eq!(
        decode(find(&s, 'S', "publish-qos2", 1), v),
        Packet::PubAck(PubReply::new(p.packet_id))
    );
    // A retained publish comes back to the subscriber without the retain flag.
    let Packet::Publish(r) = decode(find(&s, 'C', "publish-retain", 0), v) else {
        panic!()
    };
    assert!(r.retain);
    let Packet::Publish(r) = decode(find(&s, 'S', "publish-retain", 0), v) else {
        panic!()
    };
    assert!(!r.retain);
    let Packet::Publish(b) = decode(find(&s, 'S', "publish-binary-payload", 0), v) else {
        panic!()
    };
    assert_eq!(b.payload.len(), 768);
    assert_eq!(b.payload[255], 255);
    let Packet::Unsubscribe(u) = decode(find(&s, 'C', "unsubscribe", 0), v) else {
        panic!()
    };
    assert_eq!(u.filters, vec!["pier/golden/#", "pier/+/q0"]);
    assert_eq!(decode(find(&s, 'C', "ping", 0), v), Packet::PingReq);
    assert_eq!(decode(find(&s, 'S', "ping", 0), v), Packet::PingResp);
}

#[test]
fn mqtt_3_1_connect() {
    let s = rabbitmq();
    let l = s
        .iter()
        .find(|l| l.version == "3.1" && l.label == "connect" && l.dir == 'C')
        .unwrap();
    let (c, _) = Connect::decode(&l.bytes, 0).unwrap().unwrap();
    assert_eq!(c.protocol, ProtocolVersion::V3_1);
    assert_eq!(&l.bytes[2..10], b"\x00\x06MQIsdp");
    assert_eq!(c.client_id, "pier-golden-3.1");
}

#[test]
fn rabbitmq_refusals() {
    let s = rabbitmq();
    let raw = |label: &str| &find(&s, 'C', label, 0).bytes;
    // RabbitMQ 3.10.8 closes the socket without a CONNACK for all three of these; the
    // spec (and mosquitto) answer an unknown level with the 3.1.1 CONNACK 0x01, as Pier will.
    let e = Connect::decode(raw("connect-level-6"), 0).unwrap_err();
    assert_eq!(e.error, DecodeError::UnsupportedProtocolLevel(6));
    assert_eq!(
        e.action(),
        ServerAction::ConnAckV3(ConnectReturnCode::UnacceptableProtocolVersion)
    );
    let e = Connect::decode(raw("connect-bad-name"), 0).unwrap_err();
    assert_eq!(e.error, DecodeError::InvalidProtocolName("MQTX".into()));
    assert_eq!(e.action(), ServerAction::Close);
    // Level 5 with a 3.1.1 body (no property length): malformed as 5.0.
    let e = Connect::decode(raw("connect-level-5"), 0).unwrap_err();
    assert_eq!(e.version, Some(ProtocolVersion::V5));
    assert_eq!(
        e.action(),
        ServerAction::ConnAck(ReasonCode::MalformedPacket)
    );
    let e = Connect::decode(raw("first-packet-not-connect"), 0).unwrap_err();
    assert_eq!(e.error, DecodeError::ExpectedConnect(12));
    assert_eq!(e.action(), ServerAction::Close);
    // These decode; refusing them is the session's business. The CONNACKs RabbitMQ sent
    // (return codes 4 and 2) are what ConnAck encodes for 3.1.1.
    for (label, code) in [
        ("connect-bad-password", ReasonCode::BadUserNameOrPassword),
        (
            "connect-empty-client-id-persistent",
            ReasonCode::ClientIdentifierNotValid,
        ),
    ] {
        let (c, _) = Connect::decode(raw(label), 0).unwrap().unwrap();
        assert_eq!(c.protocol, ProtocolVersion::V3_1_1);
        let reply = &find(&s, 'S', &format!("{label}-reply"), 0).bytes;
        let mut out = BytesMut::new();
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: code,
            properties: Properties::default(),
        })
        .encode(ProtocolVersion::V3_1_1, &mut out)
        .unwrap();
        assert_eq!(&out[..], &reply[..], "{label}");
    }
    let (c, n) = Connect::decode(raw("connect-empty-client-id-persistent"), 0)
        .unwrap()
        .unwrap();
    assert!(
        c.client_id.is_empty()
            && !c.clean_start
            && n == raw("connect-empty-client-id-persistent").len()
    );
}

#[test]
fn mosquitto_v5_session() {
    let s = mosquitto();
    let v = ProtocolVersion::V5;
    let Packet::Connect(c) = decode(find(&s, 'C', "connect-properties", 0), v) else {
        panic!()
    };
    assert_eq!(c.properties.session_expiry_interval, Some(300));
    assert_eq!(c.properties.receive_maximum, Some(20));
    assert_eq!(c.properties.maximum_packet_size, Some(1 << 20));
    assert_eq!(c.properties.topic_alias_maximum, Some(10));
    assert_eq!(c.properties.request_response_information, Some(true));
    assert_eq!(c.properties.request_problem_information, Some(true));
    assert_eq!(
        c.properties.user_properties,
        vec![
            ("app".into(), "pier".into()),
            ("app".into(), "golden".into())
        ]
    );
    let w = c.will.unwrap();
    assert_eq!(w.properties.will_delay_interval, Some(10));
    assert_eq!(w.properties.message_expiry_interval, Some(120));
    assert_eq!(w.properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!(w.properties.payload_format_indicator, Some(true));
    assert_eq!(w.properties.response_topic.as_deref(), Some("pier/reply"));
    assert_eq!(
        w.properties.correlation_data.as_deref(),
        Some(&[1u8, 2][..])
    );
    assert_eq!(
        w.properties.user_properties,
        vec![("will".into(), "yes".into())]
    );

    let Packet::ConnAck(a) = decode(find(&s, 'S', "connect-properties", 0), v) else {
        panic!()
    };
    assert_eq!(a.reason_code, ReasonCode::Success);
    assert_eq!(a.properties.topic_alias_maximum, Some(5));
    assert_eq!(a.properties.retain_available, Some(false));
    assert_eq!(a.properties.maximum_packet_size, Some(100_000));
    assert_eq!(a.properties.receive_maximum, Some(10));

    let Packet::ConnAck(a) = decode(find(&s, 'S', "connect-assigned-id", 0), v) else {
        panic!()
    };
    assert!(a
        .properties
        .assigned_client_identifier
        .unwrap()
        .starts_with("auto-"));
    assert_eq!(a.properties.server_keep_alive, Some(100));

    let Packet::Subscribe(sub) = decode(find(&s, 'C', "subscribe-options", 0), v) else {
        panic!()
    };
    assert_eq!(sub.properties.subscription_identifiers, vec![42]);
    let o = sub.subscriptions[0].options;
    assert_eq!(
        (o.qos, o.no_local, o.retain_as_published, o.retain_handling),
        (
            QoS::ExactlyOnce,
            false,
            true,
            RetainHandling::SendAtSubscribeIfNew
        )
    );
    let o = sub.subscriptions[1].options;
    assert_eq!(
        (o.qos, o.no_local, o.retain_handling),
        (QoS::AtLeastOnce, true, RetainHandling::DoNotSend)
    );
    assert_eq!(sub.subscriptions[2].filter, "$share/grp/pier/c");
    let Packet::SubAck(sa) = decode(find(&s, 'S', "subscribe-options", 0), v) else {
        panic!()
    };
    assert_eq!(
        sa.reason_codes,
        vec![
            ReasonCode::GrantedQos2,
            ReasonCode::GrantedQos1,
            ReasonCode::Success
        ]
    );

    let Packet::Publish(p) = decode(find(&s, 'C', "publish-properties-qos1", 0), v) else {
        panic!()
    };
    assert_eq!(
        p.properties.content_type.as_deref(),
        Some("application/json")
    );
    assert_eq!(
        p.properties.correlation_data.as_deref(),
        Some(&b"corr-1"[..])
    );
    assert_eq!(p.properties.user_properties.len(), 2);
    assert_eq!(&p.payload[..], b"{\"a\":1}");
    // The server's copy carries the subscription identifier of the matching subscription.
    let Packet::Publish(d) = decode(find(&s, 'S', "publish-properties-qos1", 0), v) else {
        panic!()
    };
    assert_eq!(d.properties.subscription_identifiers, vec![42]);
    assert_eq!(d.properties.message_expiry_interval, Some(60));

    // QoS 2 both ways: PUBREC, PUBREL (flags 0010), PUBCOMP in their 2-octet forms.
    let names: Vec<&str> = s
        .iter()
        .filter(|l| l.label == "publish-qos2")
        .map(|l| decode(l, v).name())
        .collect();
    assert_eq!(
        names,
        ["PUBLISH", "PUBREC", "PUBREL", "PUBLISH", "PUBREC", "PUBCOMP", "PUBREL", "PUBCOMP"]
    );

    let Packet::Publish(alias) = decode(find(&s, 'C', "publish-topic-alias", 1), v) else {
        panic!()
    };
    assert_eq!(
        (alias.topic.as_str(), alias.properties.topic_alias),
        ("", Some(1))
    );
    assert_eq!(
        decode(find(&s, 'S', "publish-no-subscribers", 0), v),
        Packet::PubAck(PubReply {
            packet_id: 6,
            reason_code: ReasonCode::NoMatchingSubscribers,
            properties: Properties::default()
        })
    );
    let Packet::UnsubAck(ua) = decode(find(&s, 'S', "unsubscribe", 0), v) else {
        panic!()
    };
    assert_eq!(
        ua.reason_codes,
        vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted]
    );
    let Packet::Disconnect(dc) = decode(find(&s, 'C', "disconnect-with-will", 0), v) else {
        panic!()
    };
    assert_eq!(dc.reason_code, ReasonCode::DisconnectWithWillMessage);
    assert_eq!(dc.properties.reason_string.as_deref(), Some("golden done"));
    assert_eq!(
        decode(find(&s, 'S', "publish-retain-not-available", 0), v),
        Packet::Disconnect(Disconnect {
            reason_code: ReasonCode::RetainNotSupported,
            properties: Properties::default()
        })
    );
    let Packet::Connect(ac) = decode(find(&s, 'C', "connect-auth-method", 0), v) else {
        panic!()
    };
    assert_eq!(
        ac.properties.authentication_method.as_deref(),
        Some("SCRAM-SHA-1")
    );
    assert_eq!(
        decode(find(&s, 'S', "connect-auth-method", 0), v),
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: ReasonCode::BadAuthenticationMethod,
            properties: Properties::default()
        })
    );
}

#[test]
fn mosquitto_refusals_map_to_reason_codes() {
    let s = mosquitto();
    let raw = |label: &str| find(&s, 'C', label, 0).bytes.clone();
    // mosquitto 2.0.11 closes without a CONNACK for these; 5.0 §4.13 lets a server send
    // CONNACK with the reason code first, which is what ConnectError::action asks for.
    for (label, rc) in [
        ("connect-duplicate-property", ReasonCode::ProtocolError),
        ("connect-receive-maximum-0", ReasonCode::ProtocolError),
        ("connect-unknown-property", ReasonCode::MalformedPacket),
        ("connect-reserved-flag", ReasonCode::MalformedPacket),
    ] {
        let e = Connect::decode(&raw(label), 0).unwrap_err();
        assert_eq!(e.version, Some(ProtocolVersion::V5), "{label}");
        assert_eq!(e.action(), ServerAction::ConnAck(rc), "{label}: {e}");
    }
    // Level 6: mosquitto's reply is byte for byte the CONNACK the action builds.
    let e = Connect::decode(&raw("connect-level-6"), 0).unwrap_err();
    let (p, v) = e.action().packet().unwrap();
    let mut out = BytesMut::new();
    p.encode(v, &mut out).unwrap();
    assert_eq!(
        &out[..],
        &find(&s, 'S', "connect-level-6-reply", 0).bytes[..]
    );

    // After a good CONNECT: the bad packet's error, and the DISCONNECT it leads to.
    for (label, rc) in [
        ("publish-qos3-after-connect", ReasonCode::MalformedPacket),
        (
            "subscribe-bad-flags-after-connect",
            ReasonCode::MalformedPacket,
        ),
        // mosquitto sends 0x81 here; the spec (§3.3.2.3.4) names 0x94 Topic Alias invalid.
        (
            "publish-topic-alias-0-after-connect",
            ReasonCode::TopicAliasInvalid,
        ),
    ] {
        let bytes = raw(label);
        let (_, n) = Connect::decode(&bytes, 0).unwrap().unwrap();
        let e = Packet::decode(&bytes.slice(n..), ProtocolVersion::V5, 0).unwrap_err();
        assert_eq!(
            e.action(ProtocolVersion::V5),
            ServerAction::Disconnect(rc),
            "{label}: {e}"
        );
        if label == "subscribe-bad-flags-after-connect" {
            let (p, v) = e.action(ProtocolVersion::V5).packet().unwrap();
            let mut out = BytesMut::new();
            p.encode(v, &mut out).unwrap();
            assert_eq!(
                &out[..],
                &find(&s, 'S', &format!("{label}-reply"), 1).bytes[..]
            );
        }
    }
}

/// The routing keys RabbitMQ 3.10.8 gave MQTT publishes, and the MQTT topics it gave AMQP
/// publishes, as recorded by capture.py.
#[test]
fn rabbitmq_topic_mapping() {
    let text = include_str!("golden/rabbitmq-3.10.8.txt");
    let mut seen = 0;
    for l in text.lines() {
        let p: Vec<&str> = l.split('\t').collect();
        match p.as_slice() {
            ["K", mqtt, amqp] => {
                assert_eq!(mqtt_to_amqp(mqtt), *amqp, "{mqtt}");
                seen += 1;
            }
            ["M", amqp, mqtt] => {
                assert_eq!(amqp_to_mqtt(amqp), *mqtt, "{amqp}");
                seen += 1;
            }
            ["W", filter, got] => {
                assert_eq!(mqtt_to_amqp(filter), "wild.*.x");
                let got: Vec<&str> = got.split(',').collect();
                for k in ["wild.a.x", "wild.a.b.x", "wild.a.y"] {
                    let t = amqp_to_mqtt(k);
                    assert_eq!(topic_matches(filter, &t), got.contains(&t.as_str()), "{t}");
                }
                seen += 1;
            }
            _ => {}
        }
    }
    assert_eq!(seen, 15);
}

/// The CONNECT variable header examples of the specs (3.1.1 figure 3.6, 5.0 §3.1.2.12:
/// flags 0xCE, keep alive 10; 5.0 adds a session expiry interval of 10), completed with
/// a payload (client id, will topic and message, user name, password).
#[test]
fn spec_connect_examples() {
    let payload = b"\x00\x01c\x00\x01w\x00\x01m\x00\x01u\x00\x01p";
    for (version, vh) in [
        (
            ProtocolVersion::V3_1_1,
            &b"\x00\x04MQTT\x04\xce\x00\x0a"[..],
        ),
        (
            ProtocolVersion::V5,
            &b"\x00\x04MQTT\x05\xce\x00\x0a\x05\x11\x00\x00\x00\x0a"[..],
        ),
    ] {
        let will_props: &[u8] = if version == ProtocolVersion::V5 {
            b"\x00"
        } else {
            b""
        };
        let body = [vh, &payload[..3], will_props, &payload[3..]].concat();
        let bytes = Bytes::from([&[0x10, body.len() as u8][..], &body].concat());
        let (c, n) = Connect::decode(&bytes, 0).unwrap().unwrap();
        assert_eq!(n, bytes.len());
        assert_eq!(c.protocol, version);
        assert!(c.clean_start);
        assert_eq!(c.keep_alive, 10);
        let w = c.will.as_ref().unwrap();
        assert_eq!((w.qos, w.retain), (QoS::AtLeastOnce, false));
        assert_eq!(
            (c.username.as_deref(), c.password.as_deref()),
            (Some("u"), Some(&b"p"[..]))
        );
        if version == ProtocolVersion::V5 {
            assert_eq!(c.properties.session_expiry_interval, Some(10));
        }
        let mut out = BytesMut::new();
        Packet::Connect(Box::new(c))
            .encode(version, &mut out)
            .unwrap();
        assert_eq!(&out[..], &bytes[..]);
    }
}
