//! Malformed and over-limit input: each case fails with the expected error (as early as
//! the bytes allow), and each error has an ERROR frame to send. Encode-side refusals too.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use bytes::{Bytes, BytesMut};
use pier_stomp_wire::*;

const V10: Version = Version::V1_0;
const V11: Version = Version::V1_1;
const V12: Version = Version::V1_2;

fn err_with(bytes: &[u8], v: Version, limits: Limits) -> DecodeError {
    let e = match decode(&Bytes::copy_from_slice(bytes), v, &limits) {
        Err(e) => e,
        other => panic!(
            "{:?} should fail: {other:?}",
            String::from_utf8_lossy(bytes)
        ),
    };
    // The incremental decoder agrees.
    let mut dec = Decoder::new(limits);
    dec.version = v;
    let mut rx = BytesMut::from(bytes);
    assert_eq!(dec.decode(&mut rx), Err(e.clone()));
    // Every error has an ERROR frame that can be written in every version.
    let f = e.error_frame();
    assert_eq!(f.command, Command::Error);
    assert_eq!(f.headers.get("message"), Some(e.message()));
    for v in Version::ALL {
        f.encode(v, &mut BytesMut::new()).unwrap();
    }
    e
}

fn err(bytes: &[u8], v: Version) -> DecodeError {
    err_with(bytes, v, Limits::default())
}

fn frame(bytes: &[u8], v: Version) -> Frame {
    match decode(&Bytes::copy_from_slice(bytes), v, &Limits::default()) {
        Ok(Some((Item::Frame(f), n))) => {
            assert_eq!(n, bytes.len());
            f
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_commands() {
    assert_eq!(
        err(b"FOO\n\n\0", V12),
        DecodeError::UnknownCommand("FOO".into())
    );
    assert_eq!(
        err(b"send\n\n\0", V12),
        DecodeError::UnknownCommand("send".into())
    );
    assert_eq!(
        err(b"SEND \n\n\0", V10),
        DecodeError::UnknownCommand("SEND ".into())
    );
    // Known as soon as the command line is complete.
    assert_eq!(
        err(b"FOO\n", V12),
        DecodeError::UnknownCommand("FOO".into())
    );
    let f = DecodeError::UnknownCommand("FOO".into()).error_frame();
    assert_eq!(&f.body[..], b"Could not interpret command \"FOO\"\n");
}

#[test]
fn line_ends() {
    assert_eq!(err(b"\rSEND", V12), DecodeError::BareCarriageReturn);
    assert_eq!(err(b"SEND\rx\n\n\0", V10), DecodeError::BareCarriageReturn);
    assert_eq!(
        err(b"SEND\nx:a\rb\n\n\0", V12),
        DecodeError::BareCarriageReturn
    );
    // 1.0 and 1.1 have no escape for CR, so a raw one is part of the value.
    assert_eq!(
        frame(b"SEND\nx:a\rb\n\n\0", V11).headers.get("x"),
        Some("a\rb")
    );
    assert_eq!(
        frame(b"SEND\nx:a\rb\n\n\0", V10).headers.get("x"),
        Some("a\rb")
    );
    // CR LF ends lines in every version (RabbitMQ accepts it everywhere).
    for v in Version::ALL {
        let f = frame(b"SEND\r\nx:y\r\n\r\nbody\0", v);
        assert_eq!((f.headers.get("x"), &f.body[..]), (Some("y"), &b"body"[..]));
    }
    // A CR at the end of the buffer waits for its LF.
    assert_eq!(
        decode(&Bytes::from_static(b"\r"), V12, &Limits::default()),
        Ok(None)
    );
    assert_eq!(
        decode(&Bytes::from_static(b"SEND\r"), V12, &Limits::default()),
        Ok(None)
    );
}

#[test]
fn escapes_per_version() {
    assert_eq!(
        err(b"SEND\nx:a\\tb\n\n\0", V12),
        DecodeError::InvalidEscape(b't')
    );
    assert_eq!(
        err(b"SEND\nx:a\\tb\n\n\0", V11),
        DecodeError::InvalidEscape(b't')
    );
    assert_eq!(
        frame(b"SEND\nx:a\\tb\n\n\0", V10).headers.get("x"),
        Some("a\\tb")
    );
    assert_eq!(
        err(b"SEND\nx:a\\rb\n\n\0", V11),
        DecodeError::InvalidEscape(b'r')
    );
    assert_eq!(
        frame(b"SEND\nx:a\\rb\n\n\0", V12).headers.get("x"),
        Some("a\rb")
    );
    assert_eq!(
        err(b"SEND\nx:a\\\n\n\0", V12),
        DecodeError::InvalidEscape(b'\n')
    );
    assert_eq!(
        err(b"SEND\nx\\q:a\n\n\0", V11),
        DecodeError::InvalidEscape(b'q')
    );
    let f = frame(b"SEND\nx\\cy:a\\\\b\\nc\n\n\0", V11);
    assert_eq!(f.headers.get("x:y"), Some("a\\b\nc"));
    // CONNECT, STOMP and CONNECTED are never unescaped.
    for c in ["CONNECT", "STOMP", "CONNECTED"] {
        let bytes = format!("{c}\nlogin:a\\cb\\t\n\n\0");
        let f = frame(bytes.as_bytes(), V12);
        assert_eq!(f.headers.get("login"), Some("a\\cb\\t"), "{c}");
    }
}

#[test]
fn headers() {
    assert_eq!(
        err(b"SEND\nnocolon\n\n\0", V12),
        DecodeError::HeaderWithoutColon("nocolon".into())
    );
    assert_eq!(err(b"SEND\n:v\n\n\0", V12), DecodeError::EmptyHeaderName);
    assert_eq!(err(b"SEND\nx:\xff\n\n\0", V12), DecodeError::InvalidUtf8);
    // Values may hold colons; empty values are fine.
    let f = frame(b"SEND\nx:a:b\ny:\n\n\0", V10);
    assert_eq!(
        (f.headers.get("x"), f.headers.get("y")),
        (Some("a:b"), Some(""))
    );
    // Repeated: the first counts, all are kept.
    let f = frame(b"SEND\nx:1\nx:2\n\n\0", V12);
    assert_eq!(f.headers.get("x"), Some("1"));
    assert_eq!(f.headers.len(), 2);
    let f = frame(b"SEND\ncontent-length:2\ncontent-length:9\n\nab\0", V12);
    assert_eq!(&f.body[..], b"ab");
}

#[test]
fn content_length() {
    for bad in ["abc", "-1", "", "1 2", "0x10", "99999999999999999999999"] {
        let bytes = format!("SEND\ncontent-length:{bad}\n\nx\0");
        assert_eq!(
            err(bytes.as_bytes(), V12),
            DecodeError::InvalidContentLength(bad.into()),
            "{bad}"
        );
    }
    assert_eq!(
        &frame(b"SEND\ncontent-length: 3 \n\na\0b\0", V12).body[..],
        b"a\0b"
    );
    assert_eq!(
        err(b"SEND\ncontent-length:1\n\nab\0", V12),
        DecodeError::MissingNul
    );
    // Honoured on every frame, not only SEND (RabbitMQ reads it on SEND only).
    let f = frame(b"MESSAGE\ncontent-length:3\n\n\0\0\0\0", V12);
    assert_eq!(&f.body[..], b"\0\0\0");
    // Waits for the body and its NUL.
    assert_eq!(
        decode(
            &Bytes::from_static(b"SEND\ncontent-length:3\n\nab"),
            V12,
            &Limits::default()
        ),
        Ok(None)
    );
}

#[test]
fn noise_between_frames() {
    let b = Bytes::from_static(b"\n\r\n\0\nSEND\n\n\0");
    let (item, n) = decode(&b, V12, &Limits::default()).unwrap().unwrap();
    assert_eq!((item, n), (Item::HeartBeat, 5));
    let (item, _) = decode(&b.slice(n..), V12, &Limits::default())
        .unwrap()
        .unwrap();
    assert!(matches!(item, Item::Frame(f) if f.command == Command::Send));
}

#[test]
fn limits_are_checked_early() {
    let small = Limits {
        max_frame_size: 100,
        max_headers: 2,
        max_header_length: 10,
    };
    // Too many headers: known at the third header line, before the blank line.
    assert_eq!(
        err_with(b"SEND\na:1\nb:2\nc:3\n", V12, small),
        DecodeError::TooManyHeaders { max: 2 }
    );
    // A header line too long, before its end arrives.
    assert_eq!(
        err_with(b"SEND\nabcdefghijkl", V12, small),
        DecodeError::HeaderTooLong { max: 10 }
    );
    assert_eq!(
        err_with(b"SEND\nabc:defghijkl\n", V12, small),
        DecodeError::HeaderTooLong { max: 10 }
    );
    // The command line counts as a line.
    assert_eq!(
        err_with(b"SENDSENDSENDSEND", V12, small),
        DecodeError::HeaderTooLong { max: 10 }
    );
    // content-length over the limit: before any of the body.
    assert_eq!(
        err_with(
            b"SEND\ncontent-length:99\n\n",
            V12,
            Limits {
                max_header_length: 40,
                ..small
            }
        ),
        DecodeError::FrameTooLarge { max: 100 }
    );
    // No NUL within the limit.
    let big = [&b"SEND\n\n"[..], &[b'x'; 200][..]].concat();
    assert_eq!(
        err_with(&big, V12, small),
        DecodeError::FrameTooLarge { max: 100 }
    );
    let e = DecodeError::FrameTooLarge { max: 100 };
    assert_eq!(
        e.error_frame().headers.get("message"),
        Some("Frame too large")
    );
    // Exactly at the limit is fine.
    let exact = [&b"SEND\n\n"[..], &[b'x'; 93][..], b"\0"].concat();
    assert_eq!(exact.len(), 100);
    assert!(decode(&Bytes::from(exact), V12, &small).unwrap().is_some());
}

#[test]
fn encode_refusals() {
    let fails = |f: Frame, v: Version| {
        let mut out = BytesMut::new();
        let e = f.encode(v, &mut out).unwrap_err();
        assert!(out.is_empty());
        e
    };
    let send = Frame::new(Command::Send);
    assert_eq!(
        fails(send.clone().header("content-length", "3"), V12),
        EncodeError::ContentLengthMismatch { header: 3, body: 0 }
    );
    assert_eq!(
        fails(send.clone().header("content-length", "x"), V12),
        EncodeError::InvalidContentLength
    );
    let mut nul = send.clone();
    nul.body = Bytes::from_static(b"a\0b");
    assert_eq!(fails(nul, V12), EncodeError::NulInBodyWithoutContentLength);
    assert_eq!(
        fails(send.clone().header("", "v"), V12),
        EncodeError::EmptyHeaderName
    );
    assert!(matches!(
        fails(send.clone().header("x", "a\nb"), V10),
        EncodeError::Unescapable(_)
    ));
    assert!(matches!(
        fails(send.clone().header("x:y", "a"), V10),
        EncodeError::Unescapable(_)
    ));
    assert!(matches!(
        fails(send.clone().header("x", "a\r"), V11),
        EncodeError::Unescapable(_)
    ));
    assert!(matches!(
        fails(Frame::new(Command::Connect).header("login", "a\nb"), V12),
        EncodeError::Unescapable(_)
    ));
    // What each version can write.
    let enc = |f: &Frame, v| {
        let mut out = BytesMut::new();
        f.encode(v, &mut out).unwrap();
        out.to_vec()
    };
    let f = send
        .header("k:", "a\\b\nc:d\re")
        .body(Bytes::from_static(b"x\0y"));
    assert_eq!(
        enc(&f, V12),
        b"SEND\nk\\c:a\\\\b\\nc\\cd\\re\ncontent-length:3\n\nx\0y\0"
    );
    assert_eq!(
        enc(&f, V11),
        b"SEND\nk\\c:a\\\\b\\nc\\cd\re\ncontent-length:3\n\nx\0y\0"
    );
    let c = Frame::new(Command::Connected).header("session", "a:b\\c");
    assert_eq!(enc(&c, V12), b"CONNECTED\nsession:a:b\\c\n\n\0");
}

#[test]
fn helpers() {
    assert_eq!(Version::negotiate(None), Some(V10));
    assert_eq!(Version::negotiate(Some("1.1,1.0")), Some(V11));
    assert_eq!(Version::negotiate(Some("1.2, 1.1")), Some(V12));
    assert_eq!(Version::negotiate(Some("1.3")), None);
    assert_eq!(parse_heart_beat("10000,5000"), Some((10_000, 5_000)));
    assert_eq!(parse_heart_beat("x,1"), None);
    assert_eq!(negotiate_heart_beat((0, 0), (10_000, 10_000)), (0, 0));
    assert_eq!(
        negotiate_heart_beat((5000, 20_000), (10_000, 10_000)),
        (20_000, 10_000)
    );
    let mut h = Headers::new();
    h.push("a", "1");
    h.push("b", "2");
    h.push("a", "3");
    h.set("a", "4");
    assert_eq!(
        h.0,
        vec![("a".into(), "4".into()), ("b".into(), "2".into())]
    );
    h.set("c", "5");
    assert_eq!(h.get("c"), Some("5"));
    h.remove("a");
    assert_eq!(h.len(), 2);
    assert!(Command::Send.allows_body() && !Command::Ack.allows_body());
    assert!(Command::Receipt.is_server() && Command::Stomp.is_client());
    let mut out = BytesMut::new();
    encode_heartbeat(&mut out);
    assert_eq!(&out[..], b"\n");
}
