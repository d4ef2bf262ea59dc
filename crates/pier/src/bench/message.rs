//! What the bench puts on the wire per message, and how consumers read it back fast.
//!
//! Body layout (end-to-end latency stamp):
//!
//! ```text
//!  0            8            16                 size
//!  +------------+------------+-------- ... -----+
//!  | send time  | run nonce  |  filler (0x2E)   |
//!  +------------+------------+-------- ... -----+
//!   u64 BE: ns    u64 BE       only when size >= 16
//!   since the process-local monotonic epoch
//! ```
//!
//! Producers and consumers of one `pier bench` process share a single `Instant` epoch, so
//! latency is `now - send time` with no clock synchronisation. The nonce (present when the
//! body has room, i.e. `--size >= 16`) identifies this run: a message left in a queue by an
//! earlier run is counted as *stale* instead of polluting the latency and the drain check.
//! A requested size below 8 bytes cannot hold the stamp, so it is raised to 16 (stamp +
//! nonce); any size of 8 or more is honoured exactly.

use bytes::{BufMut, BytesMut};
use pier_wire::{
    class_id, encode_body_frames, encode_content_header, BasicProperties, BasicPublish, Method,
    ShortString, FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD,
    FRAME_SIZE_FUDGE,
};

/// Bytes taken by the send-time stamp.
pub const STAMP_LEN: usize = 8;
/// Size used when `--size` is too small to hold the stamp: stamp + run nonce.
pub const MIN_STAMPED_SIZE: usize = 16;
/// The channel every bench connection uses.
pub const CHANNEL: u16 = 1;

/// The body size actually sent for a requested `--size`.
pub fn effective_size(requested: usize) -> usize {
    if requested < STAMP_LEN {
        MIN_STAMPED_SIZE
    } else {
        requested
    }
}

/// A message body of `size` bytes (at least [`STAMP_LEN`]) with a zero stamp and, when there
/// is room, the run nonce.
pub fn make_body(size: usize, nonce: u64) -> Vec<u8> {
    let size = size.max(STAMP_LEN);
    let mut body = vec![b'.'; size];
    if let Some(stamp) = body.get_mut(..STAMP_LEN) {
        stamp.fill(0);
    }
    if let Some(n) = body.get_mut(STAMP_LEN..MIN_STAMPED_SIZE) {
        n.copy_from_slice(&nonce.to_be_bytes());
    }
    body
}

/// Writes the send time into the first 8 bytes of `body` (no-op if shorter).
pub fn write_stamp(body: &mut [u8], send_ns: u64) {
    if let Some(stamp) = body.get_mut(..STAMP_LEN) {
        stamp.copy_from_slice(&send_ns.to_be_bytes());
    }
}

/// What the start of a received body says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stamp {
    /// Sent by this run at this time (ns since the epoch).
    Sent(u64),
    /// Carries another run's nonce: left over in the queue from before.
    Foreign,
    /// Too short to carry a stamp.
    Missing,
}

/// Reads the stamp from the first body chunk of a message of `body_size` bytes.
pub fn read_stamp(first_chunk: &[u8], body_size: u64, nonce: u64) -> Stamp {
    let Some(stamp) = first_chunk
        .get(..STAMP_LEN)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
    else {
        return Stamp::Missing;
    };
    if body_size >= MIN_STAMPED_SIZE as u64 {
        match first_chunk
            .get(STAMP_LEN..MIN_STAMPED_SIZE)
            .and_then(|s| <[u8; 8]>::try_from(s).ok())
        {
            Some(n) if u64::from_be_bytes(n) == nonce => {}
            Some(_) => return Stamp::Foreign,
            None => return Stamp::Missing,
        }
    }
    Stamp::Sent(u64::from_be_bytes(stamp))
}

/// The complete frames of one `basic.publish` (method, header, body frames), encoded once;
/// each message is a copy with the send time patched in.
pub struct PublishTemplate {
    frames: Vec<u8>,
    stamp_at: usize,
}

impl PublishTemplate {
    pub fn new(
        exchange: &str,
        routing_key: &str,
        size: usize,
        persistent: bool,
        frame_max: u32,
        nonce: u64,
    ) -> anyhow::Result<PublishTemplate> {
        let publish = Method::BasicPublish(BasicPublish {
            ticket: 0,
            exchange: ShortString::try_from_string(exchange.to_owned())?,
            routing_key: ShortString::try_from_string(routing_key.to_owned())?,
            mandatory: false,
            immediate: false,
        });
        let properties = BasicProperties {
            delivery_mode: Some(if persistent { 2 } else { 1 }),
            ..BasicProperties::default()
        }
        .to_bytes()?;
        let body = make_body(size, nonce);
        let mut out = BytesMut::with_capacity(body.len() + 256);
        pier_wire::try_encode_method_frame(&mut out, CHANNEL, &publish)?;
        encode_content_header(
            &mut out,
            CHANNEL,
            class_id::BASIC,
            body.len() as u64,
            &properties,
        );
        // The first body frame's payload starts 7 octets (frame header) after the header.
        let stamp_at = out.len() + pier_wire::FRAME_HEADER_SIZE;
        encode_body_frames(&mut out, CHANNEL, &body, frame_max);
        Ok(PublishTemplate {
            frames: out.to_vec(),
            stamp_at,
        })
    }

    /// Encoded size of one message.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Appends one message stamped with `send_ns`.
    pub fn append(&self, out: &mut BytesMut, send_ns: u64) {
        let start = out.len();
        out.extend_from_slice(&self.frames);
        if let Some(body) = out.get_mut(start + self.stamp_at..) {
            write_stamp(body, send_ns);
        }
    }
}

/// Appends `basic.ack` without going through [`Method`] (the consumer hot path).
pub fn put_ack(out: &mut BytesMut, delivery_tag: u64, multiple: bool) {
    out.put_u8(FRAME_METHOD);
    out.put_u16(CHANNEL);
    out.put_u32(13);
    out.put_u16(60);
    out.put_u16(80);
    out.put_u64(delivery_tag);
    out.put_u8(u8::from(multiple));
    out.put_u8(FRAME_END);
}

/// One frame at the front of a receive buffer, as far as the consumer hot path cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Peek<'a> {
    /// Not a whole frame yet.
    Incomplete,
    /// `basic.deliver` with its delivery tag.
    Deliver {
        tag: u64,
    },
    /// A content header with its body size.
    Header {
        body_size: u64,
    },
    /// A body frame.
    Body {
        payload: &'a [u8],
    },
    Heartbeat,
    /// Anything else (or anything malformed): hand it to `pier_wire::decode_frame`.
    Other,
}

/// Looks at the frame at the front of `buf` without copying; returns it and its total size.
/// Frames over `frame_max` (plus RabbitMQ's fudge) and frames without a proper end octet are
/// [`Peek::Other`], so that the full decoder reports them.
pub fn peek_frame(buf: &[u8], frame_max: u32) -> (Peek<'_>, usize) {
    let Some(&[kind, _, _, s0, s1, s2, s3]) = buf.get(..7) else {
        return (Peek::Incomplete, 0);
    };
    let size = u32::from_be_bytes([s0, s1, s2, s3]);
    if frame_max != 0 && size > frame_max.saturating_add(FRAME_SIZE_FUDGE) {
        return (Peek::Other, 0);
    }
    let total = size as usize + 8;
    let Some(frame) = buf.get(..total) else {
        return (Peek::Incomplete, 0);
    };
    if frame.last() != Some(&FRAME_END) {
        return (Peek::Other, 0);
    }
    let payload = frame.get(7..total - 1).unwrap_or_default();
    let peek = match kind {
        FRAME_METHOD => match payload {
            [0, 60, 0, 60, ctag_len, rest @ ..] => rest
                .get(usize::from(*ctag_len)..usize::from(*ctag_len) + 8)
                .and_then(|t| <[u8; 8]>::try_from(t).ok())
                .map_or(Peek::Other, |t| Peek::Deliver {
                    tag: u64::from_be_bytes(t),
                }),
            _ => Peek::Other,
        },
        FRAME_HEADER => payload
            .get(4..12)
            .and_then(|s| <[u8; 8]>::try_from(s).ok())
            .map_or(Peek::Other, |s| Peek::Header {
                body_size: u64::from_be_bytes(s),
            }),
        FRAME_BODY => Peek::Body { payload },
        FRAME_HEARTBEAT => Peek::Heartbeat,
        _ => Peek::Other,
    };
    (peek, total)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use pier_wire::{decode_frame, encode_method_frame, BasicAck, Frame};

    #[test]
    fn sizes() {
        assert_eq!(effective_size(0), 16);
        assert_eq!(effective_size(7), 16);
        assert_eq!(effective_size(8), 8);
        assert_eq!(effective_size(12), 12);
        assert_eq!(effective_size(1024), 1024);
        assert_eq!(make_body(8, 42).len(), 8);
        assert_eq!(make_body(100, 42).len(), 100);
    }

    #[test]
    fn stamp_roundtrip() {
        let nonce = 0xDEAD_BEEF_0BAD_F00D;
        let mut body = make_body(64, nonce);
        write_stamp(&mut body, 123_456_789);
        assert_eq!(read_stamp(&body, 64, nonce), Stamp::Sent(123_456_789));
        assert_eq!(read_stamp(&body, 64, nonce ^ 1), Stamp::Foreign);
        // 8..15 bytes: a stamp but no nonce, so no staleness check.
        let mut short = make_body(8, nonce);
        write_stamp(&mut short, 77);
        assert_eq!(short.len(), 8);
        assert_eq!(read_stamp(&short, 8, 1), Stamp::Sent(77));
        assert_eq!(read_stamp(&short[..5], 5, nonce), Stamp::Missing);
        assert_eq!(read_stamp(&[], 0, nonce), Stamp::Missing);
        let mut tiny = [0u8; 3];
        write_stamp(&mut tiny, 5);
        assert_eq!(tiny, [0, 0, 0]);
    }

    #[test]
    fn template_is_a_valid_publish() {
        for (size, frame_max) in [(16usize, 131_072u32), (10_000, 4096), (8, 4096)] {
            let t = PublishTemplate::new("", "q", size, true, frame_max, 9).unwrap();
            let mut out = BytesMut::new();
            t.append(&mut out, 1000);
            t.append(&mut out, 2000);
            assert_eq!(out.len(), 2 * t.len());
            for expected in [1000u64, 2000] {
                let Some(Frame::Method {
                    channel: 1,
                    method: Method::BasicPublish(p),
                }) = decode_frame(&mut out, frame_max).unwrap()
                else {
                    panic!("expected basic.publish")
                };
                assert_eq!(p.routing_key.as_str(), "q");
                let Some(Frame::Header { header, .. }) = decode_frame(&mut out, frame_max).unwrap()
                else {
                    panic!("expected a header")
                };
                assert_eq!(header.body_size, size as u64);
                assert_eq!(header.properties.delivery_mode, Some(2));
                let mut body = Vec::new();
                while body.len() < size {
                    let Some(Frame::Body { payload, .. }) =
                        decode_frame(&mut out, frame_max).unwrap()
                    else {
                        panic!("expected a body frame")
                    };
                    body.extend_from_slice(&payload);
                }
                assert_eq!(body.len(), size);
                assert_eq!(read_stamp(&body, size as u64, 9), Stamp::Sent(expected));
            }
            assert!(out.is_empty());
        }
    }

    #[test]
    fn peek_matches_the_decoder() {
        let mut buf = BytesMut::new();
        pier_wire::encode_basic_deliver(
            &mut buf,
            1,
            4096,
            "ctag-1",
            4242,
            false,
            "",
            "q",
            &[0x10, 0, 1],
            b"hello world",
        );
        pier_wire::encode_heartbeat(&mut buf);
        put_ack(&mut buf, 7, true);
        let bytes = buf.to_vec();

        let mut at = 0;
        let mut seen = Vec::new();
        loop {
            let (peek, len) = peek_frame(&bytes[at..], 4096);
            if peek == Peek::Incomplete {
                break;
            }
            seen.push(format!("{peek:?}"));
            at += len;
        }
        assert_eq!(at, bytes.len());
        assert_eq!(
            seen,
            [
                "Deliver { tag: 4242 }",
                "Header { body_size: 11 }",
                format!("Body {{ payload: {:?} }}", b"hello world").as_str(),
                "Heartbeat",
                "Other",
            ]
        );
        // The hand-written ack is what the codec would write.
        let mut codec = BytesMut::new();
        encode_method_frame(
            &mut codec,
            1,
            &Method::BasicAck(BasicAck {
                delivery_tag: 7,
                multiple: true,
            }),
        );
        assert_eq!(&bytes[bytes.len() - codec.len()..], &codec[..]);
        // Every strict prefix is incomplete.
        for cut in 0..20 {
            assert_eq!(peek_frame(&bytes[..cut], 4096).0, Peek::Incomplete);
        }
    }

    #[test]
    fn peek_defers_bad_frames_to_the_decoder() {
        // Bad frame end.
        assert_eq!(
            peek_frame(&[3, 0, 1, 0, 0, 0, 1, 9, 0], 4096).0,
            Peek::Other
        );
        // Oversized frame: reported now, not waited for.
        assert_eq!(peek_frame(&[3, 0, 1, 0x7F, 0, 0, 0], 4096).0, Peek::Other);
        // Truncated deliver.
        assert_eq!(
            peek_frame(&[1, 0, 1, 0, 0, 0, 5, 0, 60, 0, 60, 9, 0xCE], 4096).0,
            Peek::Other
        );
    }
}
