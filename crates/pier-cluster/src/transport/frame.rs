//! The peer transport's frames, sans I/O.
//!
//! ```text
//!  u32 length (of what follows) | u8 kind | u64 id | payload
//!  kind: 1 hello, 2 welcome, 3 refused, 4 request, 5 response (payload: MessagePack)
//!        6 lane (payload: the message path's own encoding, queues/wire.rs; id unused)
//!        7 lane credit (no payload; id: the bytes of lane frames the sender may send more)
//! ```
//!
//! `id` pairs a response with its request on a connection that carries many at once, in
//! both directions (each side numbers its own requests). The length is checked against the
//! limit before anything is allocated.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The largest frame accepted (a snapshot chunk is 1 MiB; a log batch of 256 metadata
/// entries is far smaller; a definitions import is cut into batches; a quorum queue's
/// Raft entry or forwarded batch holds at most 1 MiB of bodies, or one message of up to
/// 16 MiB (`MAX_REPLICATED_MESSAGE` in `quorum/service.rs`) with the rest of its batch).
pub const MAX_FRAME: usize = 24 << 20;
/// The largest lane frame: one message of the largest size a client may publish
/// (`max_message_size`, 128 MiB by default) with its properties and routing.
pub const MAX_LANE_FRAME: usize = 136 << 20;
const HEADER: usize = 4 + 1 + 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Hello = 1,
    Welcome = 2,
    Refused = 3,
    Request = 4,
    Response = 5,
    Lane = 6,
    LaneCredit = 7,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Hello,
            2 => Kind::Welcome,
            3 => Kind::Refused,
            4 => Kind::Request,
            5 => Kind::Response,
            6 => Kind::Lane,
            7 => Kind::LaneCredit,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub id: u64,
    pub payload: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME}")]
    TooLarge(usize),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("frame length {0} is shorter than a frame header")]
    Short(usize),
    #[error("payload does not encode: {0}")]
    Encode(String),
    #[error("payload does not decode: {0}")]
    Decode(String),
}

/// Appends one frame carrying `value` to `out`.
pub fn encode<T: Serialize>(
    kind: Kind,
    id: u64,
    value: &T,
    out: &mut BytesMut,
) -> Result<(), FrameError> {
    // Measured first, then written in place: an AppendEntries carries batches of message
    // bodies, which a buffer of its own would grow (and copy) several times and then copy
    // once more into `out`. Entries keep their encoding, so measuring copies nothing.
    let size = encoded_len(value).map_err(|e| FrameError::Encode(e.to_string()))?;
    let len = 1 + 8 + size;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    out.reserve(4 + len);
    let start = out.len();
    out.put_u32(0);
    out.put_u8(kind as u8);
    out.put_u64(id);
    let mut w = out.writer();
    let r = rmp_serde::encode::write_named(&mut w, value);
    let out = w.into_inner();
    if let Err(e) = r {
        out.truncate(start);
        return Err(FrameError::Encode(e.to_string()));
    }
    let len = out.len() - start - 4;
    if len > MAX_FRAME {
        out.truncate(start);
        return Err(FrameError::TooLarge(len));
    }
    if let Some(l) = out.get_mut(start..start + 4) {
        l.copy_from_slice(&(len as u32).to_be_bytes());
    }
    Ok(())
}

/// The MessagePack encoding's length of `value` (`rmp_serde::to_vec_named`'s), written
/// nowhere.
pub fn encoded_len<T: Serialize>(value: &T) -> Result<usize, rmp_serde::encode::Error> {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    rmp_serde::encode::write_named(&mut c, value)?;
    Ok(c.0)
}

/// Starts a frame whose payload the caller appends (`finish` writes its length).
pub fn begin(kind: Kind, id: u64, capacity: usize) -> BytesMut {
    let mut out = BytesMut::with_capacity(HEADER + capacity);
    out.put_u32(0);
    out.put_u8(kind as u8);
    out.put_u64(id);
    out
}

/// Completes a frame made with `begin`.
pub fn finish(mut frame: BytesMut) -> Result<Bytes, FrameError> {
    let len = frame.len().saturating_sub(4);
    let limit = match frame.get(4) {
        Some(&k) if k == Kind::Lane as u8 => MAX_LANE_FRAME,
        _ => MAX_FRAME,
    };
    if len > limit || len < HEADER - 4 {
        return Err(FrameError::TooLarge(len));
    }
    let bytes = u32::try_from(len).map_err(|_| FrameError::TooLarge(len))?;
    frame
        .get_mut(..4)
        .ok_or(FrameError::Short(len))?
        .copy_from_slice(&bytes.to_be_bytes());
    Ok(frame.freeze())
}

/// Takes one complete frame off the front of `buf`; `Ok(None)` when more bytes are needed.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    let Some(len_bytes) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]) as usize;
    if len > MAX_FRAME {
        // Only a lane frame (one message) may be larger.
        match buf.get(4) {
            None => return Ok(None),
            Some(&k) if k == Kind::Lane as u8 && len <= MAX_LANE_FRAME => {}
            Some(_) => return Err(FrameError::TooLarge(len)),
        }
    }
    if len < HEADER - 4 {
        return Err(FrameError::Short(len));
    }
    if buf.len() < 4 + len {
        buf.reserve(4 + len - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    let mut frame = buf.split_to(len);
    let kind_byte = frame.get_u8();
    let kind = Kind::from_u8(kind_byte).ok_or(FrameError::UnknownKind(kind_byte))?;
    let id = frame.get_u64();
    Ok(Some(Frame {
        kind,
        id,
        payload: frame.freeze(),
    }))
}

/// Decodes a frame's payload. Byte strings that decode as shared slices (a quorum queue's
/// entries in an AppendEntries or a forwarded write) stay slices of the frame instead of
/// copies: a follower copied every batch it received before appending it.
pub fn payload<T: DeserializeOwned>(frame: &Frame) -> Result<T, FrameError> {
    crate::raft::log_adapter::decode_shared(&frame.payload)
        .map_err(|e| FrameError::Decode(e.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_in_pieces() {
        let mut out = BytesMut::new();
        encode(Kind::Request, 7, &("hello", 42u64), &mut out).unwrap();
        encode(Kind::Response, 8, &vec![1u8, 2, 3], &mut out).unwrap();
        let all = out.freeze();
        // Fed one byte at a time, the decoder waits, then yields both frames in order.
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for b in all.iter() {
            buf.put_u8(*b);
            while let Some(f) = decode(&mut buf).unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].kind, Kind::Request);
        assert_eq!(frames[0].id, 7);
        let v: (String, u64) = payload(&frames[0]).unwrap();
        assert_eq!(v, ("hello".to_owned(), 42));
        let v: Vec<u8> = payload(&frames[1]).unwrap();
        assert_eq!(v, vec![1, 2, 3]);
    }

    /// Written in place, a frame holds exactly what encoding into a buffer of its own and
    /// copying it gave (length, kind, id, then the MessagePack payload), after what `out`
    /// already held.
    #[test]
    fn frames_written_in_place_are_the_encoding_behind_a_header() {
        #[derive(Serialize)]
        struct Payload<'a> {
            name: &'a str,
            body: &'a [u8],
            n: u64,
        }
        let body = vec![200u8; 70_000];
        let v = Payload {
            name: "q",
            body: &body,
            n: 3,
        };
        let payload = rmp_serde::to_vec_named(&v).unwrap();
        assert_eq!(encoded_len(&v).unwrap(), payload.len());
        let mut out = BytesMut::from(&b"before"[..]);
        encode(Kind::Request, 5, &v, &mut out).unwrap();
        let mut want = b"before".to_vec();
        want.extend_from_slice(&((1 + 8 + payload.len()) as u32).to_be_bytes());
        want.push(Kind::Request as u8);
        want.extend_from_slice(&5u64.to_be_bytes());
        want.extend_from_slice(&payload);
        assert_eq!(&out[..], &want[..]);
    }

    #[test]
    fn hostile_lengths_and_kinds_are_errors_not_allocations() {
        let mut buf = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        // Over the limit: the kind decides (only a lane frame may be larger), so wait for it.
        assert_eq!(decode(&mut buf), Ok(None));
        buf.put_u8(Kind::Request as u8);
        assert_eq!(
            decode(&mut buf),
            Err(FrameError::TooLarge(u32::MAX as usize))
        );
        let mut buf = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        buf.put_u8(Kind::Lane as u8);
        assert_eq!(
            decode(&mut buf),
            Err(FrameError::TooLarge(u32::MAX as usize)),
            "a lane frame has its own, larger limit"
        );
        // A lane frame above the general limit but within its own waits for its bytes.
        let mut buf = BytesMut::new();
        buf.put_u32((MAX_FRAME + 100) as u32);
        buf.put_u8(Kind::Lane as u8);
        assert_eq!(decode(&mut buf), Ok(None));
        let mut buf = BytesMut::from(&[0u8, 0, 0, 3, 1, 2, 3][..]);
        assert_eq!(decode(&mut buf), Err(FrameError::Short(3)));
        let mut buf = BytesMut::new();
        buf.put_u32(9);
        buf.put_u8(99);
        buf.put_u64(0);
        assert_eq!(decode(&mut buf), Err(FrameError::UnknownKind(99)));
        let f = Frame {
            kind: Kind::Request,
            id: 1,
            payload: Bytes::from_static(&[0xc1]),
        };
        assert!(payload::<u64>(&f).is_err());
    }

    #[test]
    fn begun_frames_round_trip() {
        let mut f = begin(Kind::Lane, 0, 8);
        f.extend_from_slice(b"payload");
        let bytes = finish(f).unwrap();
        let mut buf = BytesMut::from(&bytes[..]);
        let got = decode(&mut buf).unwrap().unwrap();
        assert_eq!(got.kind, Kind::Lane);
        assert_eq!(&got.payload[..], b"payload");
        let credit = finish(begin(Kind::LaneCredit, 12345, 0)).unwrap();
        let mut buf = BytesMut::from(&credit[..]);
        let got = decode(&mut buf).unwrap().unwrap();
        assert_eq!((got.kind, got.id), (Kind::LaneCredit, 12345));
    }
}
