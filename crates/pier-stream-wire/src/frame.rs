//! Framing, command keys, and the primitive encoders/decoders of the stream protocol.

use bytes::{BufMut, Bytes, BytesMut};

use crate::buf::Reader;
use crate::error::{DecodeError, EncodeError};

/// Octets of the size prefix in front of every frame.
pub const FRAME_SIZE_PREFIX: usize = 4;
/// Octets of key and version at the start of every frame body.
pub const FRAME_HEADER_SIZE: usize = 4;
/// The key bit that marks a response.
pub const RESPONSE_FLAG: u16 = 0x8000;
/// RabbitMQ's default maximum frame size (`stream.frame_max`, 1 MiB), offered in `Tune`.
pub const DEFAULT_FRAME_MAX: u32 = 1_048_576;
/// The frame size RabbitMQ enforces until `Open` succeeds (`stream.initial_frame_max`,
/// 8 KiB), whatever `Tune` negotiated: decode with this until the connection is open.
pub const DEFAULT_INITIAL_FRAME_MAX: u32 = 8192;
/// RabbitMQ's default heartbeat in seconds, offered in `Tune`.
pub const DEFAULT_HEARTBEAT: u32 = 60;

/// Command keys (PROTOCOL.adoc, "Commands"; `rabbit_stream.hrl`). A response carries the
/// key of its request with [`RESPONSE_FLAG`] set.
pub mod key {
    pub const DECLARE_PUBLISHER: u16 = 0x0001;
    pub const PUBLISH: u16 = 0x0002;
    pub const PUBLISH_CONFIRM: u16 = 0x0003;
    pub const PUBLISH_ERROR: u16 = 0x0004;
    pub const QUERY_PUBLISHER_SEQUENCE: u16 = 0x0005;
    pub const DELETE_PUBLISHER: u16 = 0x0006;
    pub const SUBSCRIBE: u16 = 0x0007;
    pub const DELIVER: u16 = 0x0008;
    pub const CREDIT: u16 = 0x0009;
    pub const STORE_OFFSET: u16 = 0x000a;
    pub const QUERY_OFFSET: u16 = 0x000b;
    pub const UNSUBSCRIBE: u16 = 0x000c;
    pub const CREATE: u16 = 0x000d;
    pub const DELETE: u16 = 0x000e;
    pub const METADATA: u16 = 0x000f;
    pub const METADATA_UPDATE: u16 = 0x0010;
    pub const PEER_PROPERTIES: u16 = 0x0011;
    pub const SASL_HANDSHAKE: u16 = 0x0012;
    pub const SASL_AUTHENTICATE: u16 = 0x0013;
    pub const TUNE: u16 = 0x0014;
    pub const OPEN: u16 = 0x0015;
    pub const CLOSE: u16 = 0x0016;
    pub const HEARTBEAT: u16 = 0x0017;
    pub const ROUTE: u16 = 0x0018;
    pub const PARTITIONS: u16 = 0x0019;
    pub const CONSUMER_UPDATE: u16 = 0x001a;
    pub const EXCHANGE_COMMAND_VERSIONS: u16 = 0x001b;
    pub const STREAM_STATS: u16 = 0x001c;
    pub const CREATE_SUPER_STREAM: u16 = 0x001d;
    pub const DELETE_SUPER_STREAM: u16 = 0x001e;
    pub const RESOLVE_OFFSET_SPEC: u16 = 0x001f;
}

/// The `(key, min version, max version)` triples RabbitMQ 4.x answers
/// `ExchangeCommandVersions` with (`rabbit_stream_utils:command_versions/0`): what a
/// server implementing every command of this crate can advertise. (`Deliver` v2 is not
/// listed: the server uses it when the *client* advertises it.)
pub const SERVER_COMMAND_VERSIONS: [(u16, u16, u16); 20] = [
    (key::DECLARE_PUBLISHER, 1, 1),
    (key::PUBLISH, 1, 2),
    (key::QUERY_PUBLISHER_SEQUENCE, 1, 1),
    (key::DELETE_PUBLISHER, 1, 1),
    (key::SUBSCRIBE, 1, 1),
    (key::CREDIT, 1, 1),
    (key::STORE_OFFSET, 1, 1),
    (key::QUERY_OFFSET, 1, 1),
    (key::UNSUBSCRIBE, 1, 1),
    (key::CREATE, 1, 1),
    (key::DELETE, 1, 1),
    (key::METADATA, 1, 1),
    (key::CLOSE, 1, 1),
    (key::HEARTBEAT, 1, 1),
    (key::ROUTE, 1, 1),
    (key::PARTITIONS, 1, 1),
    (key::STREAM_STATS, 1, 1),
    (key::CREATE_SUPER_STREAM, 1, 1),
    (key::DELETE_SUPER_STREAM, 1, 1),
    (key::RESOLVE_OFFSET_SPEC, 1, 1),
];

/// Length of the first frame in `buf`, size prefix included, once all of it is there.
///
/// The size is checked against `max_frame_size` (0: no limit) as soon as the 4-octet prefix
/// has arrived, so an oversize frame is refused before anything is buffered for it. Like
/// RabbitMQ, the limit applies to the size field (the frame without its prefix).
pub fn frame_len(buf: &[u8], max_frame_size: u32) -> Result<Option<usize>, DecodeError> {
    let Some(prefix) = buf.get(..FRAME_SIZE_PREFIX) else {
        return Ok(None);
    };
    let mut size_bytes = [0u8; 4];
    size_bytes.copy_from_slice(prefix);
    let size = u32::from_be_bytes(size_bytes);
    if max_frame_size != 0 && size > max_frame_size {
        return Err(DecodeError::FrameTooLarge {
            size,
            max: max_frame_size,
        });
    }
    if (size as usize) < FRAME_HEADER_SIZE {
        return Err(DecodeError::FrameTooSmall { size });
    }
    let total = FRAME_SIZE_PREFIX + size as usize;
    Ok((buf.len() >= total).then_some(total))
}

/// Key and version at the front of a frame body.
pub(crate) struct Header {
    pub key: u16,
    pub version: u16,
}

pub(crate) fn read_header(r: &mut Reader<'_>) -> Result<Header, DecodeError> {
    Ok(Header {
        key: r.u16("key")?,
        version: r.u16("version")?,
    })
}

/// Fails unless `r` is exhausted.
pub(crate) fn finish(r: &Reader<'_>, context: &'static str) -> Result<(), DecodeError> {
    if r.is_empty() {
        Ok(())
    } else {
        Err(DecodeError::TrailingBytes {
            context,
            count: r.remaining(),
        })
    }
}

/// A `string` (int16 length + UTF-8). Null (-1) is refused: RabbitMQ reads the length as
/// unsigned and fails the frame too.
pub(crate) fn read_string(
    r: &mut Reader<'_>,
    context: &'static str,
) -> Result<String, DecodeError> {
    let len = r.i16(context)?;
    if len < 0 {
        return Err(DecodeError::InvalidValue {
            context,
            value: i64::from(len),
        });
    }
    let raw = r.take_slice(len as usize, context)?;
    String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::InvalidUtf8 { context })
}

/// A `string` that may be null (-1), kept as raw bytes (publish filter values).
pub(crate) fn read_opt_raw_string(
    r: &mut Reader<'_>,
    context: &'static str,
) -> Result<Option<Bytes>, DecodeError> {
    let len = r.i16(context)?;
    if len < 0 {
        if len == -1 {
            return Ok(None);
        }
        return Err(DecodeError::InvalidValue {
            context,
            value: i64::from(len),
        });
    }
    Ok(Some(r.take(len as usize, context)?))
}

/// A `bytes` (int32 length); null (-1) reads as empty, as RabbitMQ reads SASL data.
pub(crate) fn read_bytes(r: &mut Reader<'_>, context: &'static str) -> Result<Bytes, DecodeError> {
    let len = r.i32(context)?;
    if len == -1 {
        return Ok(Bytes::new());
    }
    if len < 0 {
        return Err(DecodeError::InvalidValue {
            context,
            value: i64::from(len),
        });
    }
    Ok(r.take(len as usize, context)?)
}

/// An array count (int32), checked to fit in the rest of the frame at `min_size` octets per
/// element before the caller allocates anything for it.
pub(crate) fn read_count(
    r: &mut Reader<'_>,
    context: &'static str,
    min_size: usize,
) -> Result<usize, DecodeError> {
    let count = r.i32(context)?;
    if count < 0 {
        return Err(DecodeError::InvalidValue {
            context,
            value: i64::from(count),
        });
    }
    let count = count as usize;
    if count.saturating_mul(min_size.max(1)) > r.remaining() {
        return Err(DecodeError::CountTooLarge {
            context,
            count: count as u32,
        });
    }
    Ok(count)
}

pub(crate) fn read_strings(
    r: &mut Reader<'_>,
    context: &'static str,
) -> Result<Vec<String>, DecodeError> {
    let n = read_count(r, context, 2)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(read_string(r, context)?);
    }
    Ok(out)
}

/// A `[Key Value]` map of strings, in wire order.
pub(crate) fn read_map(
    r: &mut Reader<'_>,
    context: &'static str,
) -> Result<Vec<(String, String)>, DecodeError> {
    let n = read_count(r, context, 4)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let k = read_string(r, context)?;
        let v = read_string(r, context)?;
        out.push((k, v));
    }
    Ok(out)
}

/// A map that the sender leaves out when it is empty (RabbitMQ omits the count of an empty
/// `Subscribe`/`ResolveOffsetSpec` properties map and of `Open`'s connection properties).
pub(crate) fn read_optional_map(
    r: &mut Reader<'_>,
    context: &'static str,
) -> Result<Vec<(String, String)>, DecodeError> {
    if r.is_empty() {
        Ok(Vec::new())
    } else {
        read_map(r, context)
    }
}

// ---- encoding -----------------------------------------------------------------------------

pub(crate) fn put_string(out: &mut BytesMut, s: &str) -> Result<(), EncodeError> {
    let len = i16::try_from(s.len()).map_err(|_| EncodeError::StringTooLong(s.len()))?;
    out.put_i16(len);
    out.put_slice(s.as_bytes());
    Ok(())
}

pub(crate) fn put_opt_raw_string(out: &mut BytesMut, s: Option<&[u8]>) -> Result<(), EncodeError> {
    match s {
        None => out.put_i16(-1),
        Some(s) => {
            let len = i16::try_from(s.len()).map_err(|_| EncodeError::StringTooLong(s.len()))?;
            out.put_i16(len);
            out.put_slice(s);
        }
    }
    Ok(())
}

pub(crate) fn put_count(
    out: &mut BytesMut,
    count: usize,
    context: &'static str,
) -> Result<(), EncodeError> {
    let n = i32::try_from(count).map_err(|_| EncodeError::TooManyElements { context, count })?;
    out.put_i32(n);
    Ok(())
}

pub(crate) fn put_strings(
    out: &mut BytesMut,
    items: &[String],
    context: &'static str,
) -> Result<(), EncodeError> {
    put_count(out, items.len(), context)?;
    for s in items {
        put_string(out, s)?;
    }
    Ok(())
}

pub(crate) fn put_map(
    out: &mut BytesMut,
    items: &[(String, String)],
    context: &'static str,
) -> Result<(), EncodeError> {
    put_count(out, items.len(), context)?;
    for (k, v) in items {
        put_string(out, k)?;
        put_string(out, v)?;
    }
    Ok(())
}

/// Writes a map, or nothing when it is empty (as RabbitMQ does for the optional maps).
pub(crate) fn put_optional_map(
    out: &mut BytesMut,
    items: &[(String, String)],
    context: &'static str,
) -> Result<(), EncodeError> {
    if items.is_empty() {
        Ok(())
    } else {
        put_map(out, items, context)
    }
}

/// Writes size prefix, key, version and the body produced by `body`; patches the size in
/// afterwards. On error `out` is truncated back to where it was.
pub(crate) fn framed(
    out: &mut BytesMut,
    key: u16,
    version: u16,
    body: impl FnOnce(&mut BytesMut) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    let start = out.len();
    out.put_u32(0);
    out.put_u16(key);
    out.put_u16(version);
    let result = body(out).and_then(|()| {
        let size = out.len() - start - FRAME_SIZE_PREFIX;
        let size32 = u32::try_from(size).map_err(|_| EncodeError::TooLong(size))?;
        if let Some(slot) = out.get_mut(start..start + FRAME_SIZE_PREFIX) {
            slot.copy_from_slice(&size32.to_be_bytes());
        }
        Ok(())
    });
    if result.is_err() {
        out.truncate(start);
    }
    result
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

    #[test]
    fn frame_len_checks_size_first() {
        assert_eq!(frame_len(&[0, 0, 0], 0).unwrap(), None);
        assert_eq!(frame_len(&[0, 0, 0, 4, 0, 23], 0).unwrap(), None);
        assert_eq!(frame_len(&[0, 0, 0, 4, 0, 23, 0, 1], 0).unwrap(), Some(8));
        assert_eq!(
            frame_len(&[0, 0, 0, 4, 0, 23, 0, 1, 9], 4).unwrap(),
            Some(8)
        );
        // Oversize is reported from the prefix alone.
        assert_eq!(
            frame_len(&[0xff, 0xff, 0xff, 0xff], 1 << 20),
            Err(DecodeError::FrameTooLarge {
                size: u32::MAX,
                max: 1 << 20
            })
        );
        assert_eq!(
            frame_len(&[0, 0, 0, 3], 0),
            Err(DecodeError::FrameTooSmall { size: 3 })
        );
    }

    #[test]
    fn framed_truncates_on_error() {
        let mut out = BytesMut::from(&b"xy"[..]);
        let r = framed(&mut out, 1, 1, |o| {
            o.put_u8(7);
            Err(EncodeError::Invalid("test"))
        });
        assert!(r.is_err());
        assert_eq!(&out[..], b"xy");
        framed(&mut out, 0x17, 1, |_| Ok(())).unwrap();
        assert_eq!(&out[2..], &[0, 0, 0, 4, 0, 0x17, 0, 1]);
    }

    #[test]
    fn strings() {
        let b = Bytes::from_static(&[0xff, 0xff, 0, 1, b'a', 0, 1, 0xff]);
        let mut r = Reader::new(&b);
        assert!(matches!(
            read_string(&mut r, "s"),
            Err(DecodeError::InvalidValue { value: -1, .. })
        ));
        assert_eq!(read_string(&mut r, "s").unwrap(), "a");
        assert_eq!(
            read_string(&mut r, "s"),
            Err(DecodeError::InvalidUtf8 { context: "s" })
        );
        let b = Bytes::from_static(&[0x7f, 0xff, 0xff, 0xff]);
        assert!(matches!(
            read_count(&mut Reader::new(&b), "n", 1),
            Err(DecodeError::CountTooLarge { .. })
        ));
    }
}
