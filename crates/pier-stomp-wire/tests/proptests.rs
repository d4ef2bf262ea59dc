//! Property tests: every command in every version, with headers that need escaping,
//! repeated headers and binary bodies, survives encode → decode unchanged; prefixes ask for
//! more; the incremental decoder agrees with the one-shot one however the bytes are cut;
//! the frame size limit holds before the body arrives.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use bytes::{Bytes, BytesMut};
use pier_stomp_wire::*;
use proptest::collection::vec;
use proptest::prelude::*;

fn version() -> impl Strategy<Value = Version> {
    prop_oneof![
        Just(Version::V1_0),
        Just(Version::V1_1),
        Just(Version::V1_2)
    ]
}

fn command() -> impl Strategy<Value = Command> {
    proptest::sample::select(Command::ALL.to_vec())
}

fn raw_text() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z0-9/._-]{0,10}", "[a-z:\\\\\r\n]{0,8}", "[^\u{0}]{0,6}",]
}

/// Whether a header can be written (and read back the same) under this version/command.
fn writable(v: Version, c: Command, name: &str, value: &str) -> bool {
    let unescaped =
        v == Version::V1_0 || matches!(c, Command::Connect | Command::Stomp | Command::Connected);
    if name.is_empty() || name == "content-length" {
        return false;
    }
    if unescaped {
        return !name.contains(['\n', ':', '\r'])
            && !value.contains('\n')
            && !value.ends_with('\r');
    }
    if v == Version::V1_1 {
        return !name.ends_with('\r') && !value.ends_with('\r');
    }
    true
}

fn frame_for(v: Version) -> impl Strategy<Value = Frame> {
    (
        command(),
        vec((raw_text(), raw_text()), 0..6),
        prop_oneof![
            Just(Bytes::new()),
            vec(any::<u8>(), 0..64).prop_map(Bytes::from),
            "[a-z ]{1,20}".prop_map(Bytes::from)
        ],
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(move |(command, headers, body, with_length, repeat)| {
            let mut f = Frame::new(command);
            for (k, val) in headers {
                if writable(v, command, &k, &val) {
                    f.headers.push(k.clone(), val);
                    if repeat {
                        f.headers.push(k, "second");
                    }
                }
            }
            if with_length || body.contains(&0) {
                f.body(body)
            } else {
                f.body = body;
                f
            }
        })
}

fn versioned() -> impl Strategy<Value = (Version, Frame)> {
    version().prop_flat_map(|v| frame_for(v).prop_map(move |f| (v, f)))
}

fn encode(f: &Frame, v: Version) -> Bytes {
    let mut out = BytesMut::new();
    f.encode(v, &mut out).unwrap();
    assert_eq!(f.encoded_len(v).unwrap(), out.len());
    out.freeze()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn round_trip((v, f) in versioned()) {
        let bytes = encode(&f, v);
        let (item, n) = decode(&bytes, v, &Limits::default()).unwrap().unwrap();
        prop_assert_eq!(n, bytes.len());
        prop_assert_eq!(item, Item::Frame(f.clone()));
    }

    #[test]
    fn prefixes_ask_for_more((v, f) in versioned(), cut in any::<prop::sample::Index>()) {
        let bytes = encode(&f, v);
        let n = cut.index(bytes.len());
        prop_assert_eq!(decode(&bytes.slice(..n), v, &Limits::default()), Ok(None));
    }

    #[test]
    fn chunked_streams_decode_the_same(
        (v, frames) in version().prop_flat_map(|v| vec(frame_for(v), 1..5).prop_map(move |fs| (v, fs))),
        beats in vec(prop_oneof![Just(&b"\n"[..]), Just(&b"\r\n"[..])], 0..3),
        chunk in 1usize..20,
    ) {
        let mut stream = BytesMut::new();
        for f in &frames {
            f.encode(v, &mut stream).unwrap();
            for b in &beats {
                stream.extend_from_slice(b);
            }
        }
        let mut dec = Decoder::new(Limits::default());
        dec.version = v;
        let mut rx = BytesMut::new();
        let mut got = Vec::new();
        let mut hb = 0;
        for piece in stream.chunks(chunk) {
            rx.extend_from_slice(piece);
            while let Some(item) = dec.decode(&mut rx).unwrap() {
                match item {
                    Item::Frame(f) => got.push(f),
                    Item::HeartBeat => hb += 1,
                }
            }
        }
        prop_assert!(rx.is_empty());
        prop_assert_eq!(got, frames.clone());
        prop_assert_eq!(hb > 0, !beats.is_empty());
    }

    #[test]
    fn frame_limit_holds_before_the_body((v, f) in versioned()) {
        let bytes = encode(&f, v);
        let limits = Limits { max_frame_size: bytes.len(), ..Limits::default() };
        prop_assert!(decode(&bytes, v, &limits).unwrap().is_some());
        let limits = Limits { max_frame_size: bytes.len() - 1, ..Limits::default() };
        let too_large = matches!(decode(&bytes, v, &limits), Err(DecodeError::FrameTooLarge { .. }));
        prop_assert!(too_large);
        if f.headers.get("content-length").is_some() {
            // Known from the header alone.
            let head_end = bytes.windows(2).position(|w| w == b"\n\n").unwrap() + 2;
            let early = matches!(decode(&bytes.slice(..head_end), v, &limits), Err(DecodeError::FrameTooLarge { .. }));
            prop_assert!(early);
        }
    }
}
