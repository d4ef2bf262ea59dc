//! Frames: the sans-I/O decoder and the frame encoders.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec;
use crate::error::WireError;
use crate::generated::{
    class_id, Method, FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD,
    PROTOCOL_HEADER,
};
use crate::properties::ContentHeader;

/// Octets before the payload: type (1), channel (2), payload size (4).
pub const FRAME_HEADER_SIZE: usize = 7;
/// Octets a frame adds around its payload: the 7-octet header and the frame-end octet.
pub const FRAME_OVERHEAD: usize = 8;
/// How far past the negotiated `frame_max` [`decode_frame`] lets a frame go before calling it
/// too large. RabbitMQ (`rabbit_reader`) tolerates exactly this much (`?FRAME_SIZE_FUDGE`,
/// the size of an empty frame) because several clients get the overhead wrong, sending
/// payloads of `frame_max` octets; Pier accepts the same frames RabbitMQ does.
pub const FRAME_SIZE_FUDGE: u32 = 8;

/// One AMQP frame.
///
/// (`Header` is the largest variant, ~430 bytes with the decoded properties inline. It is
/// kept unboxed so that callers can move the `ContentHeader` out by value; frames are
/// short-lived, so the size costs a memcpy, not memory.)
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum Frame {
    Method {
        channel: u16,
        method: Method,
    },
    Header {
        channel: u16,
        header: ContentHeader,
    },
    /// `payload` is a zero-copy slice of the input buffer.
    Body {
        channel: u16,
        payload: Bytes,
    },
    /// The server rejects `channel != 0` itself (RabbitMQ answers 505 UNEXPECTED_FRAME).
    Heartbeat {
        channel: u16,
    },
}

impl Frame {
    pub fn channel(&self) -> u16 {
        match *self {
            Frame::Method { channel, .. }
            | Frame::Header { channel, .. }
            | Frame::Body { channel, .. }
            | Frame::Heartbeat { channel } => channel,
        }
    }

    /// The frame type octet (1 method, 2 header, 3 body, 8 heartbeat).
    pub fn frame_type(&self) -> u8 {
        match self {
            Frame::Method { .. } => FRAME_METHOD,
            Frame::Header { .. } => FRAME_HEADER,
            Frame::Body { .. } => FRAME_BODY,
            Frame::Heartbeat { .. } => FRAME_HEARTBEAT,
        }
    }

    /// Encodes the whole frame (header, payload, frame end). A body frame is written as one
    /// frame whatever its size (use [`encode_body_frames`] to split a message body). If the
    /// frame cannot be encoded (see [`Frame::try_encode`]) nothing is written.
    pub fn encode(&self, out: &mut BytesMut) {
        let result = self.try_encode(out);
        debug_assert!(result.is_ok(), "Frame::encode: {result:?}");
    }

    /// Encodes the whole frame; on error (a short string over 255 bytes, a payload over
    /// `u32::MAX`) `out` is left unchanged.
    pub fn try_encode(&self, out: &mut BytesMut) -> Result<(), WireError> {
        codec::atomically(out, |out| match self {
            Frame::Method { channel, method } => {
                framed(out, FRAME_METHOD, *channel, |out| method.try_encode(out))
            }
            Frame::Header { channel, header } => {
                framed(out, FRAME_HEADER, *channel, |out| header.try_encode(out))
            }
            Frame::Body { channel, payload } => framed(out, FRAME_BODY, *channel, |out| {
                out.put_slice(payload);
                Ok(())
            }),
            Frame::Heartbeat { channel } => framed(out, FRAME_HEARTBEAT, *channel, |_| Ok(())),
        })
    }

    /// Size of the encoded frame, overhead included.
    pub fn encoded_size(&self) -> usize {
        FRAME_OVERHEAD
            + match self {
                Frame::Method { method, .. } => method.encoded_size(),
                Frame::Header { header, .. } => header.encoded_size(),
                Frame::Body { payload, .. } => payload.len(),
                Frame::Heartbeat { .. } => 0,
            }
    }
}

/// Writes frame header, the payload produced by `payload`, and the frame end; patches the
/// payload size in afterwards.
fn framed(
    out: &mut BytesMut,
    frame_type: u8,
    channel: u16,
    payload: impl FnOnce(&mut BytesMut) -> Result<(), WireError>,
) -> Result<(), WireError> {
    out.put_u8(frame_type);
    out.put_u16(channel);
    let size_at = out.len();
    out.put_u32(0);
    payload(out)?;
    let size = out.len() - size_at - 4;
    let size32 = u32::try_from(size).map_err(|_| WireError::LongValueTooLong(size))?;
    if let Some(slot) = out.get_mut(size_at..size_at + 4) {
        slot.copy_from_slice(&size32.to_be_bytes());
    }
    out.put_u8(FRAME_END);
    Ok(())
}

/// Decodes one frame from the front of `buf` (sans I/O).
///
/// * `Ok(None)`: `buf` does not hold a whole frame yet; nothing was consumed.
/// * `Ok(Some(frame))`: the frame's bytes were split off the front of `buf`
///   (`BytesMut::split_to` + `freeze`), so body payloads, strings and `raw_properties` are
///   zero-copy slices of it.
/// * `Err(_)`: the connection must be closed with [`WireError::reply_code`]; what is left in
///   `buf` is unspecified.
///
/// The frame header is checked as soon as its 7 octets are there, before waiting for (or
/// allocating room for) the payload: an unknown frame type gives
/// [`WireError::UnknownFrameType`], and a declared size over `max_frame_size` (the negotiated
/// `frame_max`, which counts the whole frame, 8 octets of overhead included; 0 = no limit)
/// gives [`WireError::FrameTooLarge`]. Like RabbitMQ, [`FRAME_SIZE_FUDGE`] extra octets are
/// tolerated, i.e. a frame is too large when its *payload* exceeds `max_frame_size`.
/// A frame not ending in `0xCE` gives [`WireError::BadFrameEnd`].
/// The whole length (header, payload, end byte) of the frame at the start of `buf`, once its
/// header is there; nothing is validated (`decode_frame` does that).
pub fn next_frame_len(buf: &[u8]) -> Option<usize> {
    let size = buf.get(3..FRAME_HEADER_SIZE)?;
    let size = u32::from_be_bytes(<[u8; 4]>::try_from(size).ok()?);
    usize::try_from(size).ok()?.checked_add(FRAME_OVERHEAD)
}

pub fn decode_frame(buf: &mut BytesMut, max_frame_size: u32) -> Result<Option<Frame>, WireError> {
    let Some(header) = buf
        .get(..FRAME_HEADER_SIZE)
        .and_then(|h| <[u8; FRAME_HEADER_SIZE]>::try_from(h).ok())
    else {
        return Ok(None);
    };
    let [frame_type, c0, c1, s0, s1, s2, s3] = header;
    let channel = u16::from_be_bytes([c0, c1]);
    let payload_size = u32::from_be_bytes([s0, s1, s2, s3]);
    if !matches!(
        frame_type,
        FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
    ) {
        return Err(WireError::UnknownFrameType(frame_type));
    }
    let total = u64::from(payload_size) + FRAME_OVERHEAD as u64;
    if max_frame_size != 0 && total > u64::from(max_frame_size) + u64::from(FRAME_SIZE_FUDGE) {
        return Err(WireError::FrameTooLarge {
            size: total,
            max: max_frame_size,
        });
    }
    let Ok(total) = usize::try_from(total) else {
        return Err(WireError::FrameTooLarge {
            size: total,
            max: max_frame_size,
        });
    };
    if buf.len() < total {
        return Ok(None);
    }
    match buf.get(total - 1) {
        Some(&FRAME_END) => {}
        Some(&other) => return Err(WireError::BadFrameEnd(other)),
        None => return Ok(None),
    }
    let frame = buf.split_to(total).freeze();
    let payload = frame.slice(FRAME_HEADER_SIZE..total - 1);
    let frame = match frame_type {
        FRAME_METHOD => Frame::Method {
            channel,
            method: Method::decode(&payload)?,
        },
        FRAME_HEADER => Frame::Header {
            channel,
            header: ContentHeader::decode(&payload)?,
        },
        FRAME_BODY => Frame::Body { channel, payload },
        _ => {
            if !payload.is_empty() {
                return Err(WireError::MalformedFrame {
                    context: "heartbeat frame with a payload",
                });
            }
            Frame::Heartbeat { channel }
        }
    };
    Ok(Some(frame))
}

/// Encodes a method frame. If the method cannot be encoded (a short string over 255 bytes,
/// only possible through the unchecked `From` impls of [`crate::ShortString`]) nothing is
/// written; see [`try_encode_method_frame`].
pub fn encode_method_frame(out: &mut BytesMut, channel: u16, method: &Method) {
    let result = try_encode_method_frame(out, channel, method);
    debug_assert!(result.is_ok(), "encode_method_frame: {result:?}");
}

/// Encodes a method frame; on error `out` is left unchanged.
pub fn try_encode_method_frame(
    out: &mut BytesMut,
    channel: u16,
    method: &Method,
) -> Result<(), WireError> {
    codec::atomically(out, |out| {
        framed(out, FRAME_METHOD, channel, |out| method.try_encode(out))
    })
}

/// Encodes a heartbeat frame (channel 0).
pub fn encode_heartbeat(out: &mut BytesMut) {
    out.put_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}

/// Encodes a content header frame from already-encoded properties (flags + property list),
/// weight 0.
pub fn encode_content_header(
    out: &mut BytesMut,
    channel: u16,
    class_id: u16,
    body_size: u64,
    raw_properties: &[u8],
) {
    let payload_size = 12 + raw_properties.len();
    out.reserve(FRAME_OVERHEAD + payload_size);
    out.put_u8(FRAME_HEADER);
    out.put_u16(channel);
    // A property list never comes near 4 GiB (it arrived in one frame); saturate anyway.
    out.put_u32(u32::try_from(payload_size).unwrap_or(u32::MAX));
    out.put_u16(class_id);
    out.put_u16(0);
    out.put_u64(body_size);
    out.put_slice(raw_properties);
    out.put_u8(FRAME_END);
}

/// Largest body-frame payload for a negotiated `frame_max` (0 = no limit).
pub fn max_body_payload(frame_max: u32) -> usize {
    if frame_max == 0 {
        u32::MAX as usize
    } else {
        (frame_max as usize).saturating_sub(FRAME_OVERHEAD).max(1)
    }
}

/// Encodes `body` as body frames no larger than `frame_max` (overhead included; 0 = no
/// limit). Nothing is written for an empty body.
pub fn encode_body_frames(out: &mut BytesMut, channel: u16, body: &[u8], frame_max: u32) {
    if body.is_empty() {
        return;
    }
    let chunk_size = max_body_payload(frame_max);
    let frames = body.len().div_ceil(chunk_size);
    out.reserve(body.len() + frames * FRAME_OVERHEAD);
    for chunk in body.chunks(chunk_size) {
        out.put_u8(FRAME_BODY);
        out.put_u16(channel);
        // chunk_size <= u32::MAX, so this never saturates.
        out.put_u32(u32::try_from(chunk.len()).unwrap_or(u32::MAX));
        out.put_slice(chunk);
        out.put_u8(FRAME_END);
    }
}

/// Content header (class `basic`) + body frames for a message, e.g. after a `basic.get-ok`
/// or `basic.return` method frame.
pub fn encode_content_frames(
    out: &mut BytesMut,
    channel: u16,
    frame_max: u32,
    raw_properties: &[u8],
    body: &[u8],
) {
    encode_content_header(
        out,
        channel,
        class_id::BASIC,
        body.len() as u64,
        raw_properties,
    );
    encode_body_frames(out, channel, body, frame_max);
}

/// How a server should treat the 8 octets a client sends first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolHeaderCheck {
    /// `AMQP\x00\x00\x09\x01`.
    Amqp091,
    /// `AMQP\x01\x01\x00\x09` (AMQP 0-9), which RabbitMQ serves as 0-9-1.
    Amqp09,
    /// Anything else: reply with [`PROTOCOL_HEADER`] and close the socket.
    Unsupported,
}

/// Classifies a client's protocol header the way RabbitMQ's `rabbit_reader` does for 0-9-1.
pub fn check_protocol_header(header: &[u8; 8]) -> ProtocolHeaderCheck {
    if *header == PROTOCOL_HEADER {
        ProtocolHeaderCheck::Amqp091
    } else if header == b"AMQP\x01\x01\x00\x09" {
        ProtocolHeaderCheck::Amqp09
    } else {
        ProtocolHeaderCheck::Unsupported
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests {
    use super::*;
    use crate::generated::{BasicPublish, ConnectionTune};
    use crate::properties::BasicProperties;

    fn one(buf: &mut BytesMut) -> Frame {
        decode_frame(buf, 0).unwrap().unwrap()
    }

    #[test]
    fn next_frame_len_reads_the_header_only() {
        let mut buf = BytesMut::new();
        encode_heartbeat(&mut buf);
        assert_eq!(next_frame_len(&buf), Some(buf.len()));
        assert_eq!(
            next_frame_len(&buf[..FRAME_HEADER_SIZE]),
            Some(FRAME_OVERHEAD)
        );
        assert_eq!(next_frame_len(&buf[..FRAME_HEADER_SIZE - 1]), None);
        let huge = [FRAME_BODY, 0, 1, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            next_frame_len(&huge),
            Some(u32::MAX as usize + FRAME_OVERHEAD)
        );
    }

    #[test]
    fn connection_tune_known_bytes() {
        // connection.tune channel-max=2047 frame-max=131072 heartbeat=60, as RabbitMQ sends it
        let bytes: &[u8] = &[
            1, 0, 0, 0, 0, 0, 12, // method frame, channel 0, 12 octets
            0, 10, 0, 30, // connection.tune
            0x07, 0xff, // channel-max 2047
            0, 2, 0, 0, // frame-max 131072
            0, 60, // heartbeat 60
            0xce,
        ];
        let mut buf = BytesMut::from(bytes);
        let f = one(&mut buf);
        assert!(buf.is_empty());
        let expected = Frame::Method {
            channel: 0,
            method: Method::ConnectionTune(ConnectionTune {
                channel_max: 2047,
                frame_max: 131_072,
                heartbeat: 60,
            }),
        };
        assert_eq!(f, expected);
        let mut out = BytesMut::new();
        expected.encode(&mut out);
        assert_eq!(&out[..], bytes);
        assert_eq!(expected.encoded_size(), bytes.len());
    }

    #[test]
    fn partial_input_consumes_nothing() {
        let mut full = BytesMut::new();
        encode_method_frame(
            &mut full,
            1,
            &Method::BasicPublish(BasicPublish {
                exchange: "ex".into(),
                routing_key: "rk".into(),
                ..Default::default()
            }),
        );
        for cut in 0..full.len() {
            let mut buf = BytesMut::from(&full[..cut]);
            assert_eq!(decode_frame(&mut buf, 4096), Ok(None), "cut {cut}");
            assert_eq!(buf.len(), cut);
        }
    }

    #[test]
    fn several_frames_in_one_buffer() {
        let mut buf = BytesMut::new();
        encode_heartbeat(&mut buf);
        encode_body_frames(&mut buf, 3, b"hello", 4096);
        encode_heartbeat(&mut buf);
        assert_eq!(one(&mut buf), Frame::Heartbeat { channel: 0 });
        assert_eq!(
            one(&mut buf),
            Frame::Body {
                channel: 3,
                payload: Bytes::from_static(b"hello")
            }
        );
        assert_eq!(one(&mut buf), Frame::Heartbeat { channel: 0 });
        assert_eq!(decode_frame(&mut buf, 0), Ok(None));
    }

    #[test]
    fn body_is_zero_copy() {
        let mut buf = BytesMut::new();
        encode_body_frames(&mut buf, 1, b"abcdef", 0);
        let start = buf.as_ptr();
        match one(&mut buf) {
            Frame::Body { payload, .. } => {
                assert_eq!(payload.as_ptr(), start.wrapping_add(FRAME_HEADER_SIZE))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_frame_end() {
        let mut buf = BytesMut::from(&[8u8, 0, 0, 0, 0, 0, 0, 0xcd][..]);
        assert_eq!(decode_frame(&mut buf, 0), Err(WireError::BadFrameEnd(0xcd)));
    }

    #[test]
    fn unknown_frame_type_detected_from_header() {
        let mut buf = BytesMut::from(&[4u8, 0, 0, 0, 0, 0, 50][..]);
        assert_eq!(
            decode_frame(&mut buf, 0),
            Err(WireError::UnknownFrameType(4))
        );
    }

    #[test]
    fn oversize_rejected_before_payload_arrives() {
        // header only, announcing a 1 MiB payload; frame_max 131072
        let mut buf = BytesMut::from(&[3u8, 0, 1, 0, 0x10, 0, 0][..]);
        assert_eq!(
            decode_frame(&mut buf, 131_072),
            Err(WireError::FrameTooLarge {
                size: 0x10_0000 + 8,
                max: 131_072
            })
        );
        // a 4 GiB announcement with no limit just waits
        let mut buf = BytesMut::from(&[3u8, 0, 1, 0xff, 0xff, 0xff, 0xff][..]);
        assert_eq!(decode_frame(&mut buf, 0), Ok(None));
    }

    #[test]
    fn frame_max_boundary_with_rabbitmq_fudge() {
        let frame_max = 4096u32;
        for (payload, ok) in [(4088usize, true), (4096, true), (4097, false)] {
            let mut buf = BytesMut::new();
            encode_body_frames(&mut buf, 1, &vec![7u8; payload], 0);
            let r = decode_frame(&mut buf, frame_max);
            assert_eq!(r.is_ok(), ok, "payload {payload}");
        }
    }

    #[test]
    fn heartbeat_with_payload_is_malformed() {
        let mut buf = BytesMut::from(&[8u8, 0, 0, 0, 0, 0, 1, 0, 0xce][..]);
        assert!(matches!(
            decode_frame(&mut buf, 0),
            Err(WireError::MalformedFrame { .. })
        ));
    }

    #[test]
    fn header_frame_roundtrip() {
        let props = BasicProperties {
            content_type: Some("text/plain".into()),
            delivery_mode: Some(2),
            ..Default::default()
        };
        let header = ContentHeader::new(5, props.clone()).unwrap();
        let f = Frame::Header { channel: 9, header };
        let mut out = BytesMut::new();
        f.encode(&mut out);
        assert_eq!(out.len(), f.encoded_size());
        assert_eq!(one(&mut out), f);

        // empty raw_properties -> properties are encoded
        let f2 = Frame::Header {
            channel: 9,
            header: ContentHeader {
                class_id: 60,
                weight: 0,
                body_size: 5,
                properties: props,
                raw_properties: Bytes::new(),
            },
        };
        let mut out2 = BytesMut::new();
        f2.encode(&mut out2);
        let mut out1 = BytesMut::new();
        f.encode(&mut out1);
        assert_eq!(out1, out2);
    }

    #[test]
    fn body_frames_split() {
        let body: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let mut out = BytesMut::new();
        encode_body_frames(&mut out, 2, &body, 4096);
        let mut got = Vec::new();
        let mut n = 0;
        while let Some(f) = decode_frame(&mut out, 4096).unwrap() {
            match f {
                Frame::Body { channel, payload } => {
                    assert_eq!(channel, 2);
                    assert!(payload.len() + FRAME_OVERHEAD <= 4096);
                    got.extend_from_slice(&payload);
                    n += 1;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got, body);
        assert_eq!(n, 3); // 4088 + 4088 + 1824
        let mut out = BytesMut::new();
        encode_body_frames(&mut out, 2, &[], 4096);
        assert!(out.is_empty());
    }

    #[test]
    fn protocol_header_check() {
        assert_eq!(
            check_protocol_header(b"AMQP\x00\x00\x09\x01"),
            ProtocolHeaderCheck::Amqp091
        );
        assert_eq!(
            check_protocol_header(b"AMQP\x01\x01\x00\x09"),
            ProtocolHeaderCheck::Amqp09
        );
        assert_eq!(
            check_protocol_header(b"AMQP\x00\x01\x00\x00"),
            ProtocolHeaderCheck::Unsupported
        );
        assert_eq!(
            check_protocol_header(b"GET / HT"),
            ProtocolHeaderCheck::Unsupported
        );
    }

    #[test]
    fn method_frame_encode_failure_writes_nothing() {
        let m = Method::BasicPublish(BasicPublish {
            routing_key: crate::strings::ShortString::unchecked_for_tests(Bytes::from(vec![
                b'r';
                300
            ])),
            ..Default::default()
        });
        let mut out = BytesMut::from(&b"x"[..]);
        assert_eq!(
            try_encode_method_frame(&mut out, 1, &m),
            Err(WireError::ShortStringTooLong(300))
        );
        assert_eq!(&out[..], b"x");
    }
}
