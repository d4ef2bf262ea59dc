//! Entry points shared by the cargo-fuzz targets (`fuzz/fuzz_targets/stream_*.rs`) and the
//! stable fuzz smoke test (`tests/fuzz_smoke.rs`), so that both check the same things:
//! nothing panics, every error maps to a close code, and whatever decodes re-encodes to bytes
//! that decode to the same encoding again. Not part of the API.

use bytes::{Bytes, BytesMut};

use crate::amqp::{decode_value, Message};
use crate::chunk::Chunk;
use crate::commands::{ClientCommand, ServerCommand};
use crate::response_code::ResponseCode;

/// Frame limits the targets cycle through, picked by the first input octet.
const LIMITS: [u32; 4] = [0, 8192, 64, 1_048_576];

fn limit(data: &[u8]) -> u32 {
    let i = data.first().map_or(0, |b| usize::from(*b) % LIMITS.len());
    LIMITS.get(i).copied().unwrap_or(0)
}

fn assert_close_code(code: ResponseCode) {
    assert!(
        code == ResponseCode::UnknownFrame || code == ResponseCode::FrameTooLarge,
        "{code:?}"
    );
}

/// Decodes client frames from `data` until it runs out or fails; returns how many decoded.
pub fn client_frames(data: &[u8]) -> usize {
    let max = limit(data);
    let mut buf = Bytes::copy_from_slice(data);
    let mut n = 0;
    loop {
        match ClientCommand::decode(&buf, max) {
            Ok(Some((cmd, used))) => {
                n += 1;
                assert!(used >= 8 && used <= buf.len());
                let mut out1 = BytesMut::new();
                let encoded = cmd.encode(&mut out1);
                assert!(encoded.is_ok(), "{cmd:?}: {encoded:?}");
                match ClientCommand::decode(&out1.clone().freeze(), 0) {
                    Ok(Some((again, m))) => {
                        assert_eq!(m, out1.len());
                        assert_eq!(again, cmd);
                        let mut out2 = BytesMut::new();
                        assert!(again.encode(&mut out2).is_ok());
                        assert_eq!(out1, out2);
                    }
                    other => panic_free_fail(&format!("re-decode of {cmd:?}: {other:?}")),
                }
                buf = buf.slice(used..);
            }
            Ok(None) => break,
            Err(e) => {
                assert_close_code(e.close_code());
                break;
            }
        }
    }
    n
}

/// Decodes server frames from `data`, then parses the chunk of every `Deliver` and the
/// messages in it.
pub fn server_frames(data: &[u8]) -> usize {
    let max = limit(data);
    let mut buf = Bytes::copy_from_slice(data);
    let mut n = 0;
    loop {
        match ServerCommand::decode(&buf, max) {
            Ok(Some((cmd, used))) => {
                n += 1;
                let mut out1 = BytesMut::new();
                assert!(cmd.encode(&mut out1).is_ok(), "{cmd:?}");
                match ServerCommand::decode(&out1.clone().freeze(), 0) {
                    Ok(Some((again, _))) => {
                        let mut out2 = BytesMut::new();
                        assert!(again.encode(&mut out2).is_ok());
                        assert_eq!(out1, out2);
                    }
                    other => panic_free_fail(&format!("re-decode of {cmd:?}: {other:?}")),
                }
                if let ServerCommand::Deliver(d) = &cmd {
                    chunk_delivered(&d.chunk);
                }
                buf = buf.slice(used..);
            }
            Ok(None) => break,
            Err(e) => {
                assert_close_code(e.close_code());
                break;
            }
        }
    }
    n
}

fn chunk_delivered(bytes: &Bytes) {
    if let Ok(chunk) = Chunk::parse_delivered(bytes) {
        let mut out = BytesMut::new();
        chunk.encode_delivered(&mut out);
        let expected = if chunk.header.chunk_type == crate::chunk::ChunkType::User {
            bytes.get(..bytes.len() - chunk.trailer.len())
        } else {
            bytes.get(..)
        };
        assert_eq!(Some(&out[..]), expected);
        let _ = chunk.validate();
        for r in chunk.records().take(1024) {
            if let Ok(crate::chunk::Record::Message { body, .. }) = r {
                let _ = amqp_bytes(&body);
            }
        }
    }
}

/// Parses `data` as a stored and as a delivered chunk.
pub fn chunk(data: &[u8]) -> bool {
    let bytes = Bytes::copy_from_slice(data);
    let mut ok = false;
    if let Ok((chunk, used)) = Chunk::parse_stored(&bytes) {
        ok = true;
        assert!(used <= bytes.len());
        let mut out = BytesMut::new();
        chunk.encode_stored(&mut out);
        assert_eq!(Some(&out[..]), bytes.get(..used));
        if let Ok(entries) = chunk.validate() {
            assert_eq!(entries.len(), usize::from(chunk.header.num_entries));
        }
        let _ = crate::bloom::BloomMatcher::new([&b"a"[..]], true).matches(&chunk.bloom);
    }
    chunk_delivered(&bytes);
    ok
}

/// Decodes `data` as an AMQP 1.0 message and as a single value.
pub fn amqp(data: &[u8]) -> bool {
    amqp_bytes(&Bytes::copy_from_slice(data))
}

fn amqp_bytes(bytes: &Bytes) -> bool {
    let mut ok = false;
    if let Ok(m) = Message::decode(bytes) {
        ok = true;
        match m.to_bytes() {
            Ok(out1) => match Message::decode(&out1) {
                Ok(again) => assert_eq!(again.to_bytes().ok(), Some(out1)),
                Err(e) => panic_free_fail(&format!("re-decode of {m:?}: {e}")),
            },
            Err(e) => panic_free_fail(&format!("encode of {m:?}: {e}")),
        }
    }
    if let Ok((v, used)) = decode_value(bytes) {
        assert!(used <= bytes.len());
        match v.to_bytes() {
            Ok(out1) => {
                assert_eq!(out1.len(), v.encoded_len());
                match decode_value(&out1) {
                    Ok((again, n)) => {
                        assert_eq!(n, out1.len());
                        assert_eq!(again.to_bytes().ok(), Some(out1));
                    }
                    Err(e) => panic_free_fail(&format!("re-decode of {v:?}: {e}")),
                }
            }
            // Decoded arrays are homogeneous, so they always encode.
            Err(e) => panic_free_fail(&format!("encode of {v:?}: {e}")),
        }
    }
    ok
}

/// Fails the run (the crate denies `panic!`; `assert!` carries the message).
fn panic_free_fail(msg: &str) {
    assert!(msg.is_empty(), "{msg}");
}
