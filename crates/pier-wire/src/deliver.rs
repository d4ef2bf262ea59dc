//! The delivery hot path: `basic.deliver` + content header + body frames, written directly
//! from borrowed fields without building a [`crate::Method`].

use bytes::{BufMut, BytesMut};

use crate::error::WireError;
use crate::frame::{encode_content_frames, max_body_payload, FRAME_OVERHEAD};
use crate::generated::{BasicDeliver, FRAME_END, FRAME_METHOD};

fn short_len(s: &str) -> Result<u8, WireError> {
    u8::try_from(s.len()).map_err(|_| WireError::ShortStringTooLong(s.len()))
}

/// Writes the `basic.deliver` method frame, the content header frame (class `basic`, the
/// given pre-encoded `raw_properties`) and the body frames (split to fit `frame_max`, none for
/// an empty body) in one go.
///
/// The strings come from names that arrived as `shortstr`s, so they fit; if one is longer than
/// 255 bytes anyway nothing is written (and debug builds assert) — see
/// [`try_encode_basic_deliver`].
#[allow(clippy::too_many_arguments)]
pub fn encode_basic_deliver(
    out: &mut BytesMut,
    channel: u16,
    frame_max: u32,
    consumer_tag: &str,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &str,
    routing_key: &str,
    raw_properties: &[u8],
    body: &[u8],
) {
    let result = try_encode_basic_deliver(
        out,
        channel,
        frame_max,
        consumer_tag,
        delivery_tag,
        redelivered,
        exchange,
        routing_key,
        raw_properties,
        body,
    );
    debug_assert!(result.is_ok(), "encode_basic_deliver: {result:?}");
}

/// Like [`encode_basic_deliver`], but reports an over-long string instead of writing nothing
/// silently. On error `out` is unchanged.
#[allow(clippy::too_many_arguments)]
pub fn try_encode_basic_deliver(
    out: &mut BytesMut,
    channel: u16,
    frame_max: u32,
    consumer_tag: &str,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &str,
    routing_key: &str,
    raw_properties: &[u8],
    body: &[u8],
) -> Result<(), WireError> {
    // Validate everything before writing a single octet.
    let ct_len = short_len(consumer_tag)?;
    let ex_len = short_len(exchange)?;
    let rk_len = short_len(routing_key)?;

    // class + method ids, consumer-tag, delivery-tag, redelivered, exchange, routing-key
    let method_payload =
        4 + 1 + consumer_tag.len() + 8 + 1 + 1 + exchange.len() + 1 + routing_key.len();
    let chunk = max_body_payload(frame_max);
    let body_frames = body.len().div_ceil(chunk);
    out.reserve(
        FRAME_OVERHEAD
            + method_payload
            + FRAME_OVERHEAD
            + 12
            + raw_properties.len()
            + body.len()
            + body_frames * FRAME_OVERHEAD,
    );

    out.put_u8(FRAME_METHOD);
    out.put_u16(channel);
    // At most 4 + 3 * 256 + 9 octets: always fits.
    out.put_u32(method_payload as u32);
    out.put_u16(BasicDeliver::CLASS_ID);
    out.put_u16(BasicDeliver::METHOD_ID);
    out.put_u8(ct_len);
    out.put_slice(consumer_tag.as_bytes());
    out.put_u64(delivery_tag);
    out.put_u8(u8::from(redelivered));
    out.put_u8(ex_len);
    out.put_slice(exchange.as_bytes());
    out.put_u8(rk_len);
    out.put_slice(routing_key.as_bytes());
    out.put_u8(FRAME_END);

    encode_content_frames(out, channel, frame_max, raw_properties, body);
    Ok(())
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
    use crate::frame::{decode_frame, encode_method_frame, Frame};
    use crate::generated::Method;
    use crate::properties::{BasicProperties, ContentHeader};

    #[test]
    fn matches_generic_encoder() {
        let props = BasicProperties {
            content_type: Some("text/plain".into()),
            ..Default::default()
        }
        .to_bytes()
        .unwrap();
        let mut fast = BytesMut::new();
        encode_basic_deliver(
            &mut fast,
            7,
            4096,
            "ctag",
            42,
            true,
            "amq.topic",
            "a.b.c",
            &props,
            b"hi",
        );

        let mut slow = BytesMut::new();
        encode_method_frame(
            &mut slow,
            7,
            &Method::BasicDeliver(BasicDeliver {
                consumer_tag: "ctag".into(),
                delivery_tag: 42,
                redelivered: true,
                exchange: "amq.topic".into(),
                routing_key: "a.b.c".into(),
            }),
        );
        Frame::Header {
            channel: 7,
            header: ContentHeader {
                class_id: 60,
                weight: 0,
                body_size: 2,
                properties: BasicProperties::default(),
                raw_properties: props,
            },
        }
        .encode(&mut slow);
        Frame::Body {
            channel: 7,
            payload: bytes::Bytes::from_static(b"hi"),
        }
        .encode(&mut slow);
        assert_eq!(fast, slow);
    }

    #[test]
    fn too_long_strings_write_nothing() {
        let mut out = BytesMut::from(&b"q"[..]);
        let long = "x".repeat(256);
        assert_eq!(
            try_encode_basic_deliver(&mut out, 1, 4096, &long, 1, false, "", "", &[0, 0], b""),
            Err(WireError::ShortStringTooLong(256))
        );
        assert_eq!(&out[..], b"q");
        let mut ok = BytesMut::new();
        let max = "x".repeat(255);
        try_encode_basic_deliver(&mut ok, 1, 4096, &max, 1, false, &max, &max, &[0, 0], b"")
            .unwrap();
        let f = decode_frame(&mut ok, 4096).unwrap().unwrap();
        match f {
            Frame::Method {
                method: Method::BasicDeliver(d),
                ..
            } => {
                assert_eq!(d.consumer_tag.len(), 255);
                assert_eq!(d.routing_key.len(), 255);
            }
            other => panic!("{other:?}"),
        }
    }
}
