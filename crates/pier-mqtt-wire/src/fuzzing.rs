//! Entry points shared by the cargo-fuzz target (`fuzz/fuzz_targets/mqtt_packet.rs`) and the
//! stable fuzz smoke test (`tests/fuzz_smoke.rs`), so both check the same things: nothing
//! panics, every error maps to a server action, and whatever decodes re-encodes to bytes
//! that decode to the same packet and encode the same again. Not part of the API.

use bytes::{Bytes, BytesMut};

use crate::packet::{Connect, Packet, ProtocolVersion};
use crate::topic;

const LIMITS: [u32; 4] = [0, 64, 1024, 268_435_460];
const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V3_1,
    ProtocolVersion::V3_1_1,
    ProtocolVersion::V5,
];

/// Fails the run (the crate denies `panic!`; `assert!` carries the message).
fn fail(msg: &str) {
    assert!(msg.is_empty(), "{msg}");
}

fn check_round_trip(p: &Packet, version: ProtocolVersion) {
    let mut out1 = BytesMut::new();
    if let Err(e) = p.encode(version, &mut out1) {
        return fail(&format!("encode of decoded {p:?}: {e}"));
    }
    assert_eq!(p.encoded_len(version).ok(), Some(out1.len()));
    let bytes = out1.clone().freeze();
    match Packet::decode(&bytes, version, 0) {
        Ok(Some((again, n))) => {
            assert_eq!(n, out1.len());
            assert_eq!(&again, p);
            let mut out2 = BytesMut::new();
            assert!(again.encode(version, &mut out2).is_ok());
            assert_eq!(out1, out2);
        }
        other => fail(&format!("re-decode of {p:?}: {other:?}")),
    }
}

/// The first octet picks the version and the packet size limit; the rest is a byte stream:
/// a CONNECT-phase decode, then packets until the input runs out or fails. Returns how many
/// packets decoded.
pub fn packets(data: &[u8]) -> usize {
    let sel = usize::from(data.first().copied().unwrap_or(0));
    let version = VERSIONS
        .get(sel % 3)
        .copied()
        .unwrap_or(ProtocolVersion::V5);
    let max = LIMITS.get((sel / 3) % 4).copied().unwrap_or(0);
    let input = Bytes::copy_from_slice(data.get(1..).unwrap_or(&[]));
    let mut n = 0;

    // As a connection's first packet.
    match Connect::decode(&input, max) {
        Ok(Some((c, used))) => {
            assert!(used <= input.len());
            check_round_trip(&Packet::Connect(Box::new(c)), version);
        }
        Ok(None) => {}
        Err(e) => {
            let _ = e.action();
        }
    }

    // As a stream of packets on an established connection.
    let mut buf = input.clone();
    let mut rx = BytesMut::from(&input[..]);
    loop {
        let a = Packet::decode(&buf, version, max);
        let b = Packet::decode_from(&mut rx, version, max);
        match (a, b) {
            (Ok(Some((p, used))), Ok(Some(q))) => {
                assert_eq!(p, q);
                assert!(used >= 2 && used <= buf.len());
                n += 1;
                if let Packet::Publish(pb) = &p {
                    let _ = topic::validate_topic_name(&pb.topic);
                    let key = topic::mqtt_to_amqp(&pb.topic);
                    assert_eq!(key.len(), pb.topic.len());
                }
                if let Packet::Subscribe(s) = &p {
                    for sub in &s.subscriptions {
                        if topic::validate_topic_filter(&sub.filter).is_ok() {
                            let _ = topic::topic_matches(&sub.filter, "a/b");
                        }
                    }
                }
                check_round_trip(&p, version);
                buf = buf.slice(used..);
            }
            (Ok(None), Ok(None)) => break,
            (Err(e), Err(f)) => {
                assert_eq!(e, f);
                let _ = e.action(version);
                let _ = e.reason_code();
                break;
            }
            (a, b) => {
                fail(&format!("decode and decode_from disagree: {a:?} / {b:?}"));
                break;
            }
        }
    }
    n
}
