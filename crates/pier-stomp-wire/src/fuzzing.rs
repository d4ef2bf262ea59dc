//! Entry point shared by the cargo-fuzz target (`fuzz/fuzz_targets/stomp_frame.rs`) and the
//! stable fuzz smoke test (`tests/fuzz_smoke.rs`), so both check the same things: nothing
//! panics, the one-shot and the incremental decoder agree, every error has an ERROR frame,
//! and whatever decodes re-encodes to bytes that decode to the same frame. Not part of the
//! API.

use bytes::{Bytes, BytesMut};

use crate::decode::{decode, Decoder, Item, Limits};
use crate::error::DecodeError;
use crate::frame::Version;

const LIMITS: [Limits; 3] = [
    Limits {
        max_frame_size: 4 * 1024 * 1024,
        max_headers: 1000,
        max_header_length: 64 * 1024,
    },
    Limits {
        max_frame_size: 64,
        max_headers: 3,
        max_header_length: 16,
    },
    Limits {
        max_frame_size: 512,
        max_headers: 8,
        max_header_length: 100,
    },
];

/// Fails the run (the crate denies `panic!`; `assert!` carries the message).
fn fail(msg: &str) {
    assert!(msg.is_empty(), "{msg}");
}

/// The first octet picks the version, the limits and how the input is chunked for the
/// incremental decoder; the rest is a byte stream. Returns how many frames decoded.
pub fn frames(data: &[u8]) -> usize {
    let sel = usize::from(data.first().copied().unwrap_or(0));
    let version = Version::ALL.get(sel % 3).copied().unwrap_or(Version::V1_2);
    let limits = LIMITS.get((sel / 3) % 3).copied().unwrap_or_default();
    let chunk = 1 + (sel / 9) % 7;
    let input = Bytes::copy_from_slice(data.get(1..).unwrap_or(&[]));

    // One-shot decoding over the whole input.
    let mut whole = Vec::new();
    let mut buf = input.clone();
    let mut whole_err = None;
    loop {
        match decode(&buf, version, &limits) {
            Ok(Some((item, used))) => {
                assert!(used > 0 && used <= buf.len());
                whole.push(item);
                buf = buf.slice(used..);
            }
            Ok(None) => break,
            Err(e) => {
                let f = e.error_frame();
                let mut out = BytesMut::new();
                assert!(f.encode(version, &mut out).is_ok(), "{f:?}");
                whole_err = Some(e);
                break;
            }
        }
    }

    // The incremental decoder, fed in chunks, must find the same items and error.
    let mut dec = Decoder::new(limits);
    dec.version = version;
    let mut rx = BytesMut::new();
    let mut inc = Vec::new();
    let mut inc_err = None;
    'feed: for piece in input.chunks(chunk) {
        rx.extend_from_slice(piece);
        loop {
            match dec.decode(&mut rx) {
                Ok(Some(item)) => inc.push(item),
                Ok(None) => break,
                Err(e) => {
                    inc_err = Some(e);
                    break 'feed;
                }
            }
        }
    }
    // Heart-beats may split differently; limit errors may be found in another order when
    // a frame breaks several limits at once.
    let frames_of = |v: &[Item]| -> Vec<Item> {
        v.iter()
            .filter(|i| matches!(i, Item::Frame(_)))
            .cloned()
            .collect()
    };
    let limit = |e: &Option<DecodeError>| {
        matches!(
            e,
            Some(
                DecodeError::FrameTooLarge { .. }
                    | DecodeError::HeaderTooLong { .. }
                    | DecodeError::TooManyHeaders { .. }
            )
        )
    };
    let errors_agree = inc_err == whole_err || (limit(&inc_err) && limit(&whole_err));
    if frames_of(&inc) != frames_of(&whole) || !errors_agree {
        fail(&format!(
            "incremental {inc:?} / {inc_err:?} differs from one-shot {whole:?} / {whole_err:?}"
        ));
    }

    let mut n = 0;
    for item in &whole {
        let Item::Frame(f) = item else { continue };
        n += 1;
        let mut out1 = BytesMut::new();
        // Decoded headers can hold what this version cannot write back (a trailing CR in
        // 1.0/1.1); everything else must re-encode.
        if f.encode(version, &mut out1).is_err() {
            continue;
        }
        let bytes = out1.clone().freeze();
        match decode(&bytes, version, &Limits::default()) {
            Ok(Some((Item::Frame(again), used))) => {
                assert_eq!(used, bytes.len());
                assert_eq!(&again, f);
                let mut out2 = BytesMut::new();
                assert!(again.encode(version, &mut out2).is_ok());
                assert_eq!(out1, out2);
            }
            other => fail(&format!("re-decode of {f:?}: {other:?}")),
        }
    }
    n
}
