//! Content headers and the `basic` class content properties.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{self, Reader};
use crate::error::WireError;
use crate::generated::class_id;
use crate::strings::ShortString;
use crate::table::FieldTable;

const FLAG_CONTENT_TYPE: u16 = 1 << 15;
const FLAG_CONTENT_ENCODING: u16 = 1 << 14;
const FLAG_HEADERS: u16 = 1 << 13;
const FLAG_DELIVERY_MODE: u16 = 1 << 12;
const FLAG_PRIORITY: u16 = 1 << 11;
const FLAG_CORRELATION_ID: u16 = 1 << 10;
const FLAG_REPLY_TO: u16 = 1 << 9;
const FLAG_EXPIRATION: u16 = 1 << 8;
const FLAG_MESSAGE_ID: u16 = 1 << 7;
const FLAG_TIMESTAMP: u16 = 1 << 6;
const FLAG_TYPE: u16 = 1 << 5;
const FLAG_USER_ID: u16 = 1 << 4;
const FLAG_APP_ID: u16 = 1 << 3;
const FLAG_CLUSTER_ID: u16 = 1 << 2;
/// Bit 0 of a property-flags word: another flags word follows.
const FLAG_CONTINUATION: u16 = 1;

/// Content properties of the `basic` class; all optional (presence = property flag).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct BasicProperties {
    pub content_type: Option<ShortString>,
    pub content_encoding: Option<ShortString>,
    pub headers: Option<FieldTable>,
    /// 1 = transient, 2 = persistent.
    pub delivery_mode: Option<u8>,
    pub priority: Option<u8>,
    pub correlation_id: Option<ShortString>,
    pub reply_to: Option<ShortString>,
    pub expiration: Option<ShortString>,
    pub message_id: Option<ShortString>,
    pub timestamp: Option<u64>,
    /// The `type` property.
    pub kind: Option<ShortString>,
    pub user_id: Option<ShortString>,
    pub app_id: Option<ShortString>,
    pub cluster_id: Option<ShortString>,
}

impl BasicProperties {
    /// Decodes property flags (following continuation words: bit 0 set means another 16-bit
    /// flags word follows; flags in continuation words name no `basic` property and are
    /// ignored) and then the property list, which must span all of `buf`.
    pub fn decode(buf: &Bytes) -> Result<BasicProperties, WireError> {
        let mut r = Reader::new(buf, "content properties");
        let flags = r.u16()?;
        let mut word = flags;
        while word & FLAG_CONTINUATION != 0 {
            word = r.u16()?;
        }
        let has = |bit: u16| flags & bit != 0;
        let mut p = BasicProperties::default();
        if has(FLAG_CONTENT_TYPE) {
            p.content_type = Some(r.shortstr()?);
        }
        if has(FLAG_CONTENT_ENCODING) {
            p.content_encoding = Some(r.shortstr()?);
        }
        if has(FLAG_HEADERS) {
            p.headers = Some(r.table()?);
        }
        if has(FLAG_DELIVERY_MODE) {
            p.delivery_mode = Some(r.u8()?);
        }
        if has(FLAG_PRIORITY) {
            p.priority = Some(r.u8()?);
        }
        if has(FLAG_CORRELATION_ID) {
            p.correlation_id = Some(r.shortstr()?);
        }
        if has(FLAG_REPLY_TO) {
            p.reply_to = Some(r.shortstr()?);
        }
        if has(FLAG_EXPIRATION) {
            p.expiration = Some(r.shortstr()?);
        }
        if has(FLAG_MESSAGE_ID) {
            p.message_id = Some(r.shortstr()?);
        }
        if has(FLAG_TIMESTAMP) {
            p.timestamp = Some(r.u64()?);
        }
        if has(FLAG_TYPE) {
            p.kind = Some(r.shortstr()?);
        }
        if has(FLAG_USER_ID) {
            p.user_id = Some(r.shortstr()?);
        }
        if has(FLAG_APP_ID) {
            p.app_id = Some(r.shortstr()?);
        }
        if has(FLAG_CLUSTER_ID) {
            p.cluster_id = Some(r.shortstr()?);
        }
        r.finish()?;
        Ok(p)
    }

    /// The 16-bit property flags word this value encodes with.
    pub fn flags(&self) -> u16 {
        let mut f = 0;
        let mut set = |present: bool, bit: u16| {
            if present {
                f |= bit;
            }
        };
        set(self.content_type.is_some(), FLAG_CONTENT_TYPE);
        set(self.content_encoding.is_some(), FLAG_CONTENT_ENCODING);
        set(self.headers.is_some(), FLAG_HEADERS);
        set(self.delivery_mode.is_some(), FLAG_DELIVERY_MODE);
        set(self.priority.is_some(), FLAG_PRIORITY);
        set(self.correlation_id.is_some(), FLAG_CORRELATION_ID);
        set(self.reply_to.is_some(), FLAG_REPLY_TO);
        set(self.expiration.is_some(), FLAG_EXPIRATION);
        set(self.message_id.is_some(), FLAG_MESSAGE_ID);
        set(self.timestamp.is_some(), FLAG_TIMESTAMP);
        set(self.kind.is_some(), FLAG_TYPE);
        set(self.user_id.is_some(), FLAG_USER_ID);
        set(self.app_id.is_some(), FLAG_APP_ID);
        set(self.cluster_id.is_some(), FLAG_CLUSTER_ID);
        f
    }

    /// Encodes flags + property list. If a short string is longer than 255 bytes (only
    /// possible via the unchecked `From` impls of [`ShortString`]), nothing is written; use
    /// [`BasicProperties::try_encode`] to see the error.
    pub fn encode(&self, out: &mut BytesMut) {
        let r = self.try_encode(out);
        debug_assert!(r.is_ok(), "BasicProperties::encode: {r:?}");
    }

    /// Encodes flags + property list; on error `out` is left unchanged.
    pub fn try_encode(&self, out: &mut BytesMut) -> Result<(), WireError> {
        codec::atomically(out, |out| self.encode_inner(out))
    }

    fn encode_inner(&self, out: &mut BytesMut) -> Result<(), WireError> {
        out.reserve(self.encoded_size());
        out.put_u16(self.flags());
        let short = |out: &mut BytesMut, v: &Option<ShortString>| match v {
            Some(s) => codec::put_shortstr(out, s.as_bytes()),
            None => Ok(()),
        };
        short(out, &self.content_type)?;
        short(out, &self.content_encoding)?;
        if let Some(h) = &self.headers {
            codec::put_table(out, h)?;
        }
        if let Some(v) = self.delivery_mode {
            out.put_u8(v);
        }
        if let Some(v) = self.priority {
            out.put_u8(v);
        }
        short(out, &self.correlation_id)?;
        short(out, &self.reply_to)?;
        short(out, &self.expiration)?;
        short(out, &self.message_id)?;
        if let Some(v) = self.timestamp {
            out.put_u64(v);
        }
        short(out, &self.kind)?;
        short(out, &self.user_id)?;
        short(out, &self.app_id)?;
        short(out, &self.cluster_id)?;
        Ok(())
    }

    /// The encoded properties as a standalone buffer (what `raw_properties` holds).
    pub fn to_bytes(&self) -> Result<Bytes, WireError> {
        let mut out = BytesMut::with_capacity(self.encoded_size());
        self.try_encode(&mut out)?;
        Ok(out.freeze())
    }

    /// Size of flags + property list on the wire.
    pub fn encoded_size(&self) -> usize {
        let s = |v: &Option<ShortString>| v.as_ref().map_or(0, codec::shortstr_size);
        2 + s(&self.content_type)
            + s(&self.content_encoding)
            + self.headers.as_ref().map_or(0, FieldTable::encoded_size)
            + self.delivery_mode.map_or(0, |_| 1)
            + self.priority.map_or(0, |_| 1)
            + s(&self.correlation_id)
            + s(&self.reply_to)
            + s(&self.expiration)
            + s(&self.message_id)
            + self.timestamp.map_or(0, |_| 8)
            + s(&self.kind)
            + s(&self.user_id)
            + s(&self.app_id)
            + s(&self.cluster_id)
    }
}

/// A content header frame payload.
///
/// `raw_properties` is the exact flags + property-list bytes as received (a zero-copy slice
/// of the frame), so the broker can re-send them without re-encoding; `properties` is the
/// decoded form.
///
/// For a header whose `class_id` is not `basic` (60) — which the broker must reject anyway,
/// since only `basic` methods carry content — the properties are not decoded:
/// `properties` is the default and `raw_properties` holds whatever followed the body size.
///
/// When encoding ([`crate::Frame::encode`]), `raw_properties` is written as is, except that
/// an empty `raw_properties` on a `basic` header means "encode `properties`" (a real `basic`
/// property list is never empty: it has at least the two flag octets).
#[derive(Clone, Debug, PartialEq)]
pub struct ContentHeader {
    pub class_id: u16,
    pub weight: u16,
    pub body_size: u64,
    pub properties: BasicProperties,
    pub raw_properties: Bytes,
}

impl ContentHeader {
    /// A `basic` content header with `raw_properties` filled in from `properties`.
    pub fn new(body_size: u64, properties: BasicProperties) -> Result<Self, WireError> {
        let raw_properties = properties.to_bytes()?;
        Ok(ContentHeader {
            class_id: class_id::BASIC,
            weight: 0,
            body_size,
            properties,
            raw_properties,
        })
    }

    /// Decodes a header frame payload (class id, weight, body size, flags, properties).
    pub fn decode(payload: &Bytes) -> Result<ContentHeader, WireError> {
        let mut r = Reader::new(payload, "content header");
        let class_id = r.u16()?;
        let weight = r.u16()?;
        let body_size = r.u64()?;
        let raw_properties = r.take(r.remaining())?;
        let properties = if class_id == class_id::BASIC {
            BasicProperties::decode(&raw_properties)?
        } else {
            BasicProperties::default()
        };
        Ok(ContentHeader {
            class_id,
            weight,
            body_size,
            properties,
            raw_properties,
        })
    }

    /// `true` when encoding writes `properties` rather than `raw_properties`.
    fn encodes_properties(&self) -> bool {
        self.raw_properties.is_empty() && self.class_id == class_id::BASIC
    }

    /// Size of the frame payload.
    pub fn encoded_size(&self) -> usize {
        12 + if self.encodes_properties() {
            self.properties.encoded_size()
        } else {
            self.raw_properties.len()
        }
    }

    /// Encodes the frame payload; on error `out` is left unchanged.
    pub fn try_encode(&self, out: &mut BytesMut) -> Result<(), WireError> {
        codec::atomically(out, |out| {
            out.put_u16(self.class_id);
            out.put_u16(self.weight);
            out.put_u64(self.body_size);
            if self.encodes_properties() {
                self.properties.try_encode(out)
            } else {
                out.put_slice(&self.raw_properties);
                Ok(())
            }
        })
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
    use crate::table::FieldValue;

    pub(crate) fn full_properties() -> BasicProperties {
        let mut headers = FieldTable::new();
        headers.insert("x-retries", FieldValue::LongInt(3));
        headers.insert("trace", FieldValue::from("abc"));
        BasicProperties {
            content_type: Some("application/json".into()),
            content_encoding: Some("gzip".into()),
            headers: Some(headers),
            delivery_mode: Some(2),
            priority: Some(9),
            correlation_id: Some("corr-1".into()),
            reply_to: Some("amq.rabbitmq.reply-to".into()),
            expiration: Some("60000".into()),
            message_id: Some("msg-1".into()),
            timestamp: Some(1_700_000_000),
            kind: Some("order.created".into()),
            user_id: Some("guest".into()),
            app_id: Some("pier-tests".into()),
            cluster_id: Some("c1".into()),
        }
    }

    fn roundtrip(p: &BasicProperties) {
        let mut out = BytesMut::new();
        p.encode(&mut out);
        assert_eq!(out.len(), p.encoded_size());
        assert_eq!(&BasicProperties::decode(&out.freeze()).unwrap(), p);
    }

    #[test]
    fn all_and_none_roundtrip() {
        roundtrip(&full_properties());
        roundtrip(&BasicProperties::default());
        assert_eq!(full_properties().flags(), 0xFFFC);
        assert_eq!(BasicProperties::default().flags(), 0);
    }

    #[test]
    fn each_single_property_roundtrips() {
        let full = full_properties();
        let singles = [
            BasicProperties {
                content_type: full.content_type.clone(),
                ..Default::default()
            },
            BasicProperties {
                headers: full.headers.clone(),
                ..Default::default()
            },
            BasicProperties {
                delivery_mode: Some(1),
                ..Default::default()
            },
            BasicProperties {
                timestamp: Some(0),
                ..Default::default()
            },
            BasicProperties {
                cluster_id: Some("".into()),
                ..Default::default()
            },
        ];
        for p in &singles {
            roundtrip(p);
        }
    }

    #[test]
    fn known_bytes_delivery_mode_and_content_type() {
        let p = BasicProperties {
            content_type: Some("text/plain".into()),
            delivery_mode: Some(2),
            ..Default::default()
        };
        let mut out = BytesMut::new();
        p.encode(&mut out);
        let mut expected = vec![0x90, 0x00, 10];
        expected.extend_from_slice(b"text/plain");
        expected.push(2);
        assert_eq!(&out[..], &expected[..]);
    }

    #[test]
    fn continuation_flag_words_are_skipped() {
        // delivery-mode present + continuation bit; then a continuation word (no more words)
        let buf = Bytes::from_static(&[0x10, 0x01, 0x00, 0x00, 2]);
        let p = BasicProperties::decode(&buf).unwrap();
        assert_eq!(p.delivery_mode, Some(2));
        // two continuation words
        let buf = Bytes::from_static(&[0x10, 0x01, 0x00, 0x01, 0x00, 0x00, 1]);
        assert_eq!(
            BasicProperties::decode(&buf).unwrap().delivery_mode,
            Some(1)
        );
        // a continuation word that never comes
        let buf = Bytes::from_static(&[0x00, 0x01]);
        assert!(BasicProperties::decode(&buf).is_err());
    }

    #[test]
    fn malformed_properties() {
        assert!(BasicProperties::decode(&Bytes::new()).is_err());
        assert!(BasicProperties::decode(&Bytes::from_static(&[0x80])).is_err());
        // content-type flagged, length points past the end
        assert!(matches!(
            BasicProperties::decode(&Bytes::from_static(&[0x80, 0, 5, b'a'])),
            Err(WireError::Truncated { .. })
        ));
        // trailing garbage
        assert!(matches!(
            BasicProperties::decode(&Bytes::from_static(&[0, 0, 1])),
            Err(WireError::TrailingBytes { .. })
        ));
        // invalid UTF-8 in a shortstr property
        assert_eq!(
            BasicProperties::decode(&Bytes::from_static(&[0x80, 0, 1, 0xff])),
            Err(WireError::InvalidUtf8)
        );
    }

    #[test]
    fn content_header_roundtrip_and_zero_copy() {
        let h = ContentHeader::new(42, full_properties()).unwrap();
        let mut out = BytesMut::new();
        h.try_encode(&mut out).unwrap();
        assert_eq!(out.len(), h.encoded_size());
        let payload = out.freeze();
        let d = ContentHeader::decode(&payload).unwrap();
        assert_eq!(d, h);
        assert_eq!(d.raw_properties.as_ptr(), payload[12..].as_ptr());
    }

    #[test]
    fn content_header_other_class_keeps_raw() {
        let payload = Bytes::from_static(&[0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xde, 0xad]);
        let d = ContentHeader::decode(&payload).unwrap();
        assert_eq!(d.class_id, 10);
        assert_eq!(d.properties, BasicProperties::default());
        assert_eq!(&d.raw_properties[..], &[0xde, 0xad]);
        assert!(ContentHeader::decode(&payload.slice(..11)).is_err());
    }
}
