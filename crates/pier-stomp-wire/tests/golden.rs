//! Golden tests: frames exchanged with RabbitMQ 3.10.8's STOMP plugin
//! (`golden/rabbitmq-3.10.8.txt`, recorded by the raw-socket client `golden/capture.py`):
//! a session in each of STOMP 1.0, 1.1 and 1.2 (both directions, heart-beats included) and
//! the ERROR frames (or silent closes) RabbitMQ answers bad input with.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use bytes::{Bytes, BytesMut};
use pier_stomp_wire::*;

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

fn lines() -> Vec<Line> {
    include_str!("golden/rabbitmq-3.10.8.txt")
        .lines()
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

fn version(v: &str) -> Version {
    Version::parse(v).unwrap_or(Version::V1_2)
}

/// Client frames RabbitMQ refused without an ERROR (it closed the socket).
const REFUSED: [&str; 3] = ["bad-escape", "header-without-colon", "bare-cr"];

fn frame(l: &Line) -> Frame {
    let (item, n) = decode(&l.bytes, version(&l.version), &Limits::default())
        .unwrap_or_else(|e| panic!("{} {}: {e}", l.dir, l.label))
        .unwrap_or_else(|| panic!("{}: incomplete", l.label));
    assert_eq!(n, l.bytes.len(), "{}", l.label);
    match item {
        Item::Frame(f) => f,
        Item::HeartBeat => panic!("{}: heart-beat", l.label),
    }
}

#[test]
fn every_frame_decodes_and_reencodes() {
    let mut exact = 0;
    let mut heartbeats = 0;
    for l in lines() {
        if REFUSED.contains(&l.label.as_str()) || l.label == "unknown-command" {
            continue;
        }
        let v = version(&l.version);
        if l.label == "eol" || l.label == "client-heartbeat" {
            let mut buf = l.bytes.clone();
            while !buf.is_empty() {
                let (item, n) = decode(&buf, v, &Limits::default()).unwrap().unwrap();
                assert_eq!(item, Item::HeartBeat);
                buf = buf.slice(n..);
                heartbeats += 1;
            }
            continue;
        }
        let f = frame(&l);
        assert_eq!(f.command.is_server(), l.dir == 'S', "{}", l.label);
        let mut out = BytesMut::new();
        f.encode(v, &mut out).unwrap();
        if l.label == "send-crlf" {
            // Written back with LF line ends.
            let lf: Vec<u8> = l.bytes.iter().copied().filter(|&b| b != b'\r').collect();
            assert_eq!(&out[..], &lf[..]);
        } else {
            assert_eq!(
                &out[..],
                &l.bytes[..],
                "{} {} {} re-encoded differently",
                l.dir,
                l.version,
                l.label
            );
            exact += 1;
        }
    }
    assert!(exact > 100, "{exact}");
    assert!(heartbeats > 50, "{heartbeats}");
}

fn find<'a>(all: &'a [Line], v: &str, dir: char, label: &str, nth: usize) -> &'a Line {
    all.iter()
        .filter(|l| l.version == v && l.dir == dir && l.label == label)
        .nth(nth)
        .unwrap_or_else(|| panic!("no {v} {dir} {label} #{nth}"))
}

#[test]
fn escaping_per_version() {
    let all = lines();
    let esc = |v: &str, dir: char, label: &str| {
        let f = frame(find(&all, v, dir, label, 0));
        f.headers.get("x-esc").unwrap().to_string()
    };
    // 1.0: nothing is escaped, the colon after the first belongs to the value.
    assert_eq!(esc("1.0", 'C', "send-content-length"), "a:b\\c");
    assert_eq!(esc("1.1", 'C', "send-content-length"), "a:b\nc\\d");
    assert_eq!(esc("1.2", 'C', "send-content-length"), "a:b\nc\\d\re");
    // RabbitMQ escapes in every version: a 1.0 client gets `a\cb\c` literally (RabbitMQ had
    // unescaped the client's `\c` although 1.0 has no escapes, then escaped both colons).
    assert_eq!(esc("1.0", 'S', "send-receipt"), "a\\cb\\c");
    assert_eq!(esc("1.1", 'S', "send-receipt"), "a:b\nc\\d");
    assert_eq!(esc("1.2", 'S', "send-receipt"), "a:b\nc\\d\re");
}

#[test]
fn bodies_and_headers() {
    let all = lines();
    for v in ["1.0", "1.1", "1.2"] {
        // content-length body with NULs inside, both ways.
        let send = frame(find(&all, v, 'C', "send-content-length", 0));
        assert_eq!(&send.body[..], b"binary\0body\0");
        let msg = frame(find(&all, v, 'S', "send-receipt", 0));
        assert_eq!(msg.command, Command::Message);
        assert_eq!(msg.body, send.body);
        assert_eq!(msg.headers.get("subscription"), Some("sub-1"));
        // NUL-terminated body; repeated headers: the first wins, RabbitMQ forwards only it.
        let send = frame(find(&all, v, 'C', "send-nul-terminated", 0));
        assert_eq!(&send.body[..], b"plain text body");
        assert_eq!(send.headers.get("x-repeated"), Some("first"));
        assert_eq!(send.headers.len(), 4);
        let msg = frame(find(&all, v, 'S', "send-receipt-2", 0));
        assert_eq!(msg.headers.get("x-repeated"), Some("first"));
        assert_eq!(
            msg.headers
                .iter()
                .filter(|(k, _)| *k == "x-repeated")
                .count(),
            1
        );
        let receipt = frame(find(&all, v, 'S', "send-receipt", 1));
        assert_eq!(receipt, Frame::receipt("r-send-1"));
        let connected = frame(find(&all, v, 'S', "connected", 0));
        assert_eq!(connected.headers.get("version"), Some(v));
        assert_eq!(connected.headers.get("server"), Some("RabbitMQ/3.10.8"));
    }
    // 1.2 acks by the MESSAGE's `ack` header, 1.0/1.1 by `message-id`.
    let m12 = frame(find(&all, "1.2", 'S', "send-receipt", 0));
    let ack = frame(find(&all, "1.2", 'C', "ack", 0));
    assert_eq!(ack.headers.get("id"), m12.headers.get("ack"));
    let nack = frame(find(&all, "1.1", 'C', "nack", 0));
    assert_eq!(nack.command, Command::Nack);
    assert_eq!(nack.headers.get("requeue"), Some("false"));
    let crlf = frame(find(&all, "1.2", 'C', "send-crlf", 0));
    assert_eq!(crlf.headers.get("receipt"), Some("r-crlf"));
    assert_eq!(&crlf.body[..], b"crlf");
    assert_eq!(
        frame(find(&all, "1.2", 'C', "connect", 0)).command,
        Command::Stomp
    );
}

#[test]
fn negotiation_and_heart_beats() {
    let all = lines();
    for (v, want) in [
        ("1.0", Version::V1_0),
        ("1.1", Version::V1_1),
        ("1.2", Version::V1_2),
    ] {
        let c = frame(find(&all, v, 'C', "connect", 0));
        assert_eq!(
            Version::negotiate(c.headers.get("accept-version")),
            Some(want)
        );
    }
    let c = frame(find(&all, "1.1", 'C', "connect", 0));
    let s = frame(find(&all, "1.1", 'S', "connected", 0));
    let client = parse_heart_beat(c.headers.get("heart-beat").unwrap()).unwrap();
    let server = parse_heart_beat(s.headers.get("heart-beat").unwrap()).unwrap();
    assert_eq!((client, server), ((0, 500), (1000, 0)));
    // RabbitMQ then sent a heart-beat (LF) about every second; the client sends none.
    assert_eq!(negotiate_heart_beat(client, server), (1000, 0));
    let beats = all
        .iter()
        .skip_while(|l| !(l.version == "1.1" && l.label == "abort-receipt"))
        .take_while(|l| l.label != "unsubscribe")
        .filter(|l| l.label == "eol")
        .count();
    assert!(beats >= 2, "{beats}");
    assert_eq!(Version::negotiate(Some("2.0")), None);
}

#[test]
fn error_frames_match_rabbitmq() {
    let all = lines();
    // Unknown command: RabbitMQ's ERROR, byte for byte.
    let bad = find(&all, "1.2", 'C', "unknown-command", 0);
    let e = decode(&bad.bytes, Version::V1_2, &Limits::default()).unwrap_err();
    assert_eq!(e, DecodeError::UnknownCommand("FOO".into()));
    let mut out = BytesMut::new();
    e.error_frame().encode(Version::V1_2, &mut out).unwrap();
    assert_eq!(
        &out[..],
        &find(&all, "1.2", 'S', "unknown-command-error", 0).bytes[..]
    );
    // Version mismatch, likewise.
    let mut out = BytesMut::new();
    Frame::version_mismatch()
        .encode(Version::V1_2, &mut out)
        .unwrap();
    assert_eq!(
        &out[..],
        &find(&all, "none", 'S', "version-mismatch-error", 0).bytes[..]
    );
    // Other ERRORs RabbitMQ sends are the server's business, but they are Frame::error.
    for label in [
        "subscribe-no-destination-error",
        "send-before-connect-error",
        "bad-login-error",
    ] {
        let l = all.iter().find(|l| l.label == label).unwrap();
        let f = frame(l);
        let rebuilt = Frame::error(f.headers.get("message").unwrap(), f.body.clone());
        assert_eq!(rebuilt, f, "{label}");
    }
    // What RabbitMQ refused by closing the socket is a decode error here too.
    for (label, want) in [
        ("bad-escape", DecodeError::InvalidEscape(b't')),
        (
            "header-without-colon",
            DecodeError::HeaderWithoutColon("nocolon".into()),
        ),
        ("bare-cr", DecodeError::BareCarriageReturn),
    ] {
        let l = find(&all, "1.2", 'C', label, 0);
        assert_eq!(
            decode(&l.bytes, Version::V1_2, &Limits::default()),
            Err(want),
            "{label}"
        );
        let note = format!("# 1.2 {label} server closed");
        assert!(
            include_str!("golden/rabbitmq-3.10.8.txt").contains(&note),
            "{note}"
        );
    }
}

#[test]
fn server_stream_in_small_reads() {
    // Everything RabbitMQ sent in the 1.2 session, fed 7 octets at a time.
    let all = lines();
    let stream: Vec<u8> = all
        .iter()
        .filter(|l| l.version == "1.2" && l.dir == 'S')
        .flat_map(|l| l.bytes.to_vec())
        .collect();
    let expected = all
        .iter()
        .filter(|l| l.version == "1.2" && l.dir == 'S' && l.label != "eol")
        .count();
    let mut dec = Decoder::new(Limits::default());
    dec.version = Version::V1_2;
    let mut rx = BytesMut::new();
    let mut frames = Vec::new();
    for piece in stream.chunks(7) {
        rx.extend_from_slice(piece);
        while let Some(item) = dec.decode(&mut rx).unwrap() {
            if let Item::Frame(f) = item {
                frames.push(f);
            }
        }
    }
    assert!(rx.is_empty());
    assert_eq!(frames.len(), expected);
    assert!(frames.iter().any(|f| f.command == Command::Error));
}
