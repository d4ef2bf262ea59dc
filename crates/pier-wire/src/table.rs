//! Field tables (`table` domain) and their values, with RabbitMQ's type tags.
//!
//! | tag | Rust                         | RabbitMQ type name |
//! |-----|------------------------------|--------------------|
//! | `t` | [`FieldValue::Bool`]         | bool               |
//! | `b` | [`FieldValue::ShortShortInt`]| byte               |
//! | `B` | [`FieldValue::ShortShortUInt`]| unsignedbyte      |
//! | `s` | [`FieldValue::ShortInt`]     | short              |
//! | `u` | [`FieldValue::ShortUInt`]    | unsignedshort      |
//! | `I` | [`FieldValue::LongInt`]      | signedint          |
//! | `i` | [`FieldValue::LongUInt`]     | unsignedint        |
//! | `l` | [`FieldValue::LongLongInt`]  | long               |
//! | `L` | [`FieldValue::LongLongUInt`] | long               |
//! | `f` | [`FieldValue::Float`]        | float              |
//! | `d` | [`FieldValue::Double`]       | double             |
//! | `D` | [`FieldValue::Decimal`]      | decimal            |
//! | `S` | [`FieldValue::LongString`]   | longstr            |
//! | `x` | [`FieldValue::ByteArray`]    | binary             |
//! | `A` | [`FieldValue::Array`]        | array              |
//! | `T` | [`FieldValue::Timestamp`]    | timestamp          |
//! | `F` | [`FieldValue::Table`]        | table              |
//! | `V` | [`FieldValue::Void`]         | void               |
//!
//! (RabbitMQ itself decodes `L` as a signed 64-bit value; Pier keeps it unsigned and
//! re-encodes it with the same tag, so the bits round-trip unchanged.)

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{self, Reader};
use crate::error::WireError;
use crate::strings::{LongString, ShortString};

/// Maximum nesting of tables/arrays inside a table. Deeper input is rejected with
/// [`WireError::NestingTooDeep`] (so decoding never recurses more than this).
pub const MAX_NESTING_DEPTH: usize = 64;

/// A value in a [`FieldTable`] or field array.
#[derive(Clone, Debug, PartialEq)]
pub enum FieldValue {
    /// `t`
    Bool(bool),
    /// `b`
    ShortShortInt(i8),
    /// `B`
    ShortShortUInt(u8),
    /// `s`
    ShortInt(i16),
    /// `u`
    ShortUInt(u16),
    /// `I`
    LongInt(i32),
    /// `i`
    LongUInt(u32),
    /// `l`
    LongLongInt(i64),
    /// `L`
    LongLongUInt(u64),
    /// `f`
    Float(f32),
    /// `d`
    Double(f64),
    /// `D`: `value / 10^scale`
    Decimal { scale: u8, value: u32 },
    /// `S`
    LongString(LongString),
    /// `x`: `u32`-length-prefixed blob
    ByteArray(Bytes),
    /// `A`: `u32` byte length, then tagged values
    Array(Vec<FieldValue>),
    /// `T`: seconds since the epoch
    Timestamp(u64),
    /// `F`
    Table(FieldTable),
    /// `V`
    Void,
}

impl FieldValue {
    /// The value as an `i64` if it is any integer type (`b B s u I i l L`; `L` only when it
    /// fits). Timestamps, floats and decimals are not integers here.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            FieldValue::ShortShortInt(v) => Some(i64::from(v)),
            FieldValue::ShortShortUInt(v) => Some(i64::from(v)),
            FieldValue::ShortInt(v) => Some(i64::from(v)),
            FieldValue::ShortUInt(v) => Some(i64::from(v)),
            FieldValue::LongInt(v) => Some(i64::from(v)),
            FieldValue::LongUInt(v) => Some(i64::from(v)),
            FieldValue::LongLongInt(v) => Some(v),
            FieldValue::LongLongUInt(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            FieldValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The text of a `longstr` value, if it is valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            FieldValue::LongString(s) => s.to_str(),
            _ => None,
        }
    }

    pub fn as_table(&self) -> Option<&FieldTable> {
        match self {
            FieldValue::Table(t) => Some(t),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[FieldValue]> {
        match self {
            FieldValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// RabbitMQ's name for the type (as in its error messages, e.g.
    /// `{unacceptable_type, longstr}`).
    pub fn type_name(&self) -> &'static str {
        match self {
            FieldValue::Bool(_) => "bool",
            FieldValue::ShortShortInt(_) => "byte",
            FieldValue::ShortShortUInt(_) => "unsignedbyte",
            FieldValue::ShortInt(_) => "short",
            FieldValue::ShortUInt(_) => "unsignedshort",
            FieldValue::LongInt(_) => "signedint",
            FieldValue::LongUInt(_) => "unsignedint",
            FieldValue::LongLongInt(_) | FieldValue::LongLongUInt(_) => "long",
            FieldValue::Float(_) => "float",
            FieldValue::Double(_) => "double",
            FieldValue::Decimal { .. } => "decimal",
            FieldValue::LongString(_) => "longstr",
            FieldValue::ByteArray(_) => "binary",
            FieldValue::Array(_) => "array",
            FieldValue::Timestamp(_) => "timestamp",
            FieldValue::Table(_) => "table",
            FieldValue::Void => "void",
        }
    }

    /// The one-octet type tag on the wire.
    pub fn tag(&self) -> u8 {
        match self {
            FieldValue::Bool(_) => b't',
            FieldValue::ShortShortInt(_) => b'b',
            FieldValue::ShortShortUInt(_) => b'B',
            FieldValue::ShortInt(_) => b's',
            FieldValue::ShortUInt(_) => b'u',
            FieldValue::LongInt(_) => b'I',
            FieldValue::LongUInt(_) => b'i',
            FieldValue::LongLongInt(_) => b'l',
            FieldValue::LongLongUInt(_) => b'L',
            FieldValue::Float(_) => b'f',
            FieldValue::Double(_) => b'd',
            FieldValue::Decimal { .. } => b'D',
            FieldValue::LongString(_) => b'S',
            FieldValue::ByteArray(_) => b'x',
            FieldValue::Array(_) => b'A',
            FieldValue::Timestamp(_) => b'T',
            FieldValue::Table(_) => b'F',
            FieldValue::Void => b'V',
        }
    }

    /// Size on the wire, including the type tag.
    pub fn encoded_size(&self) -> usize {
        1 + match self {
            FieldValue::Bool(_) | FieldValue::ShortShortInt(_) | FieldValue::ShortShortUInt(_) => 1,
            FieldValue::ShortInt(_) | FieldValue::ShortUInt(_) => 2,
            FieldValue::LongInt(_) | FieldValue::LongUInt(_) | FieldValue::Float(_) => 4,
            FieldValue::LongLongInt(_)
            | FieldValue::LongLongUInt(_)
            | FieldValue::Double(_)
            | FieldValue::Timestamp(_) => 8,
            FieldValue::Decimal { .. } => 5,
            FieldValue::LongString(s) => 4 + s.len(),
            FieldValue::ByteArray(b) => 4 + b.len(),
            FieldValue::Array(a) => 4 + a.iter().map(FieldValue::encoded_size).sum::<usize>(),
            FieldValue::Table(t) => t.encoded_size(),
            FieldValue::Void => 0,
        }
    }
}

impl From<bool> for FieldValue {
    fn from(v: bool) -> Self {
        FieldValue::Bool(v)
    }
}

impl From<i32> for FieldValue {
    fn from(v: i32) -> Self {
        FieldValue::LongInt(v)
    }
}

impl From<i64> for FieldValue {
    fn from(v: i64) -> Self {
        FieldValue::LongLongInt(v)
    }
}

impl From<&str> for FieldValue {
    fn from(v: &str) -> Self {
        FieldValue::LongString(LongString::from(v))
    }
}

impl From<String> for FieldValue {
    fn from(v: String) -> Self {
        FieldValue::LongString(LongString::from(v))
    }
}

impl From<LongString> for FieldValue {
    fn from(v: LongString) -> Self {
        FieldValue::LongString(v)
    }
}

impl From<FieldTable> for FieldValue {
    fn from(v: FieldTable) -> Self {
        FieldValue::Table(v)
    }
}

impl From<Vec<FieldValue>> for FieldValue {
    fn from(v: Vec<FieldValue>) -> Self {
        FieldValue::Array(v)
    }
}

/// An AMQP field table. Keys are unique (on decode, a later duplicate key replaces the earlier
/// one) and iteration is in key (byte) order.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct FieldTable(pub BTreeMap<ShortString, FieldValue>);

impl FieldTable {
    pub fn new() -> Self {
        FieldTable(BTreeMap::new())
    }

    pub fn get(&self, key: &str) -> Option<&FieldValue> {
        self.0.get(key)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    pub fn insert(&mut self, key: impl Into<ShortString>, v: FieldValue) {
        self.0.insert(key.into(), v);
    }

    pub fn remove(&mut self, key: &str) -> Option<FieldValue> {
        self.0.remove(key)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ShortString, &FieldValue)> {
        self.0.iter()
    }

    /// Size of the table on the wire **including** its 4-octet length prefix, i.e. exactly
    /// what [`encode_field_table`] writes.
    pub fn encoded_size(&self) -> usize {
        4 + self.body_size()
    }

    /// Size of the field-value pairs without the length prefix.
    pub fn body_size(&self) -> usize {
        self.0
            .iter()
            .map(|(k, v)| 1 + k.len() + v.encoded_size())
            .sum()
    }
}

impl FromIterator<(ShortString, FieldValue)> for FieldTable {
    fn from_iter<I: IntoIterator<Item = (ShortString, FieldValue)>>(iter: I) -> Self {
        FieldTable(iter.into_iter().collect())
    }
}

impl From<BTreeMap<ShortString, FieldValue>> for FieldTable {
    fn from(m: BTreeMap<ShortString, FieldValue>) -> Self {
        FieldTable(m)
    }
}

impl<'a> IntoIterator for &'a FieldTable {
    type Item = (&'a ShortString, &'a FieldValue);
    type IntoIter = std::collections::btree_map::Iter<'a, ShortString, FieldValue>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

// ---- decoding ---------------------------------------------------------------------------

/// Decodes a length-prefixed table (`u32` byte length + pairs) that must span all of `buf`.
/// Strings and blobs in the result share `buf`.
pub fn decode_field_table(buf: &Bytes) -> Result<FieldTable, WireError> {
    let mut r = Reader::new(buf, "field table");
    let t = r.table()?;
    r.finish()?;
    Ok(t)
}

/// Decodes the pairs of a table whose length prefix has already been consumed.
pub(crate) fn decode_table_body(buf: &Bytes, depth: usize) -> Result<FieldTable, WireError> {
    let mut r = Reader::new(buf, "field table");
    let mut map = BTreeMap::new();
    while r.remaining() > 0 {
        let key = r.shortstr()?;
        let value = decode_value(&mut r, depth)?;
        map.insert(key, value);
    }
    Ok(FieldTable(map))
}

fn decode_array_body(buf: &Bytes, depth: usize) -> Result<Vec<FieldValue>, WireError> {
    let mut r = Reader::new(buf, "field array");
    // Every element takes at least one octet, so the input bounds the element count; grow
    // as we go rather than trusting any count.
    let mut out = Vec::new();
    while r.remaining() > 0 {
        out.push(decode_value(&mut r, depth)?);
    }
    Ok(out)
}

fn nested(depth: usize) -> Result<usize, WireError> {
    let next = depth + 1;
    if next > MAX_NESTING_DEPTH {
        return Err(WireError::NestingTooDeep {
            limit: MAX_NESTING_DEPTH,
        });
    }
    Ok(next)
}

fn decode_value(r: &mut Reader<'_>, depth: usize) -> Result<FieldValue, WireError> {
    let tag = r.u8()?;
    Ok(match tag {
        b't' => FieldValue::Bool(r.u8()? != 0),
        b'b' => FieldValue::ShortShortInt(r.i8()?),
        b'B' => FieldValue::ShortShortUInt(r.u8()?),
        b's' => FieldValue::ShortInt(r.i16()?),
        b'u' => FieldValue::ShortUInt(r.u16()?),
        b'I' => FieldValue::LongInt(r.i32()?),
        b'i' => FieldValue::LongUInt(r.u32()?),
        b'l' => FieldValue::LongLongInt(r.i64()?),
        b'L' => FieldValue::LongLongUInt(r.u64()?),
        b'f' => FieldValue::Float(r.f32()?),
        b'd' => FieldValue::Double(r.f64()?),
        b'D' => {
            let scale = r.u8()?;
            let value = r.u32()?;
            FieldValue::Decimal { scale, value }
        }
        b'S' => FieldValue::LongString(r.longstr()?),
        b'x' => FieldValue::ByteArray(r.long_bytes()?),
        b'A' => {
            let next = nested(depth)?;
            let body = r.long_bytes()?;
            FieldValue::Array(decode_array_body(&body, next)?)
        }
        b'T' => FieldValue::Timestamp(r.u64()?),
        b'F' => {
            let next = nested(depth)?;
            let body = r.long_bytes()?;
            FieldValue::Table(decode_table_body(&body, next)?)
        }
        b'V' => FieldValue::Void,
        other => return Err(WireError::UnknownFieldType(other)),
    })
}

// ---- encoding ---------------------------------------------------------------------------

/// Encodes a table with its `u32` length prefix. On error (a key longer than 255 bytes, a
/// value longer than `u32::MAX`), `out` is left as it was.
pub fn encode_field_table(out: &mut BytesMut, table: &FieldTable) -> Result<(), WireError> {
    codec::atomically(out, |out| encode_table_prefixed(out, table))
}

/// Writes a `u32` placeholder, runs `body`, then patches the placeholder with the length.
fn with_length_prefix(
    out: &mut BytesMut,
    body: impl FnOnce(&mut BytesMut) -> Result<(), WireError>,
) -> Result<(), WireError> {
    let at = out.len();
    out.put_u32(0);
    body(out)?;
    let len = out.len() - at - 4;
    let len32 = u32::try_from(len).map_err(|_| WireError::LongValueTooLong(len))?;
    if let Some(slot) = out.get_mut(at..at + 4) {
        slot.copy_from_slice(&len32.to_be_bytes());
    }
    Ok(())
}

pub(crate) fn encode_table_prefixed(
    out: &mut BytesMut,
    table: &FieldTable,
) -> Result<(), WireError> {
    with_length_prefix(out, |out| {
        for (k, v) in &table.0 {
            codec::put_shortstr(out, k.as_bytes())?;
            encode_value(out, v)?;
        }
        Ok(())
    })
}

/// Encodes one tagged value.
pub fn encode_field_value(out: &mut BytesMut, v: &FieldValue) -> Result<(), WireError> {
    codec::atomically(out, |out| encode_value(out, v))
}

fn encode_value(out: &mut BytesMut, v: &FieldValue) -> Result<(), WireError> {
    out.put_u8(v.tag());
    match v {
        FieldValue::Bool(b) => out.put_u8(u8::from(*b)),
        FieldValue::ShortShortInt(x) => out.put_i8(*x),
        FieldValue::ShortShortUInt(x) => out.put_u8(*x),
        FieldValue::ShortInt(x) => out.put_i16(*x),
        FieldValue::ShortUInt(x) => out.put_u16(*x),
        FieldValue::LongInt(x) => out.put_i32(*x),
        FieldValue::LongUInt(x) => out.put_u32(*x),
        FieldValue::LongLongInt(x) => out.put_i64(*x),
        FieldValue::LongLongUInt(x) => out.put_u64(*x),
        FieldValue::Float(x) => out.put_f32(*x),
        FieldValue::Double(x) => out.put_f64(*x),
        FieldValue::Decimal { scale, value } => {
            out.put_u8(*scale);
            out.put_u32(*value);
        }
        FieldValue::LongString(s) => codec::put_long_bytes(out, s.as_bytes())?,
        FieldValue::ByteArray(b) => codec::put_long_bytes(out, b)?,
        FieldValue::Array(items) => with_length_prefix(out, |out| {
            items.iter().try_for_each(|item| encode_value(out, item))
        })?,
        FieldValue::Timestamp(x) => out.put_u64(*x),
        FieldValue::Table(t) => encode_table_prefixed(out, t)?,
        FieldValue::Void => {}
    }
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

    fn all_types() -> FieldTable {
        let mut inner = FieldTable::new();
        inner.insert("nested", FieldValue::Bool(false));
        let mut t = FieldTable::new();
        t.insert("bool", FieldValue::Bool(true));
        t.insert("b", FieldValue::ShortShortInt(-5));
        t.insert("B", FieldValue::ShortShortUInt(250));
        t.insert("s", FieldValue::ShortInt(-30000));
        t.insert("u", FieldValue::ShortUInt(60000));
        t.insert("I", FieldValue::LongInt(-2_000_000_000));
        t.insert("i", FieldValue::LongUInt(4_000_000_000));
        t.insert("l", FieldValue::LongLongInt(i64::MIN));
        t.insert("L", FieldValue::LongLongUInt(u64::MAX));
        t.insert("f", FieldValue::Float(1.5));
        t.insert("d", FieldValue::Double(-2.25e100));
        t.insert(
            "D",
            FieldValue::Decimal {
                scale: 2,
                value: 12345,
            },
        );
        t.insert("S", FieldValue::from("héllo"));
        t.insert(
            "x",
            FieldValue::ByteArray(Bytes::from_static(&[0, 1, 0xff])),
        );
        t.insert(
            "A",
            FieldValue::Array(vec![
                FieldValue::LongInt(1),
                FieldValue::from("two"),
                FieldValue::Array(vec![FieldValue::Void]),
                FieldValue::Table(inner.clone()),
            ]),
        );
        t.insert("T", FieldValue::Timestamp(1_700_000_000));
        t.insert("F", FieldValue::Table(inner));
        t.insert("V", FieldValue::Void);
        t
    }

    fn roundtrip(t: &FieldTable) -> FieldTable {
        let mut out = BytesMut::new();
        encode_field_table(&mut out, t).unwrap();
        assert_eq!(out.len(), t.encoded_size());
        decode_field_table(&out.freeze()).unwrap()
    }

    #[test]
    fn every_type_roundtrips() {
        let t = all_types();
        assert_eq!(roundtrip(&t), t);
        assert_eq!(roundtrip(&FieldTable::new()), FieldTable::new());
    }

    #[test]
    fn known_bytes() {
        let mut t = FieldTable::new();
        t.insert("a", FieldValue::LongInt(1));
        t.insert("b", FieldValue::from("xy"));
        let mut out = BytesMut::new();
        encode_field_table(&mut out, &t).unwrap();
        assert_eq!(
            &out[..],
            &[
                0, 0, 0, 16, // table length
                1, b'a', b'I', 0, 0, 0, 1, // a: signedint 1
                1, b'b', b'S', 0, 0, 0, 2, b'x', b'y', // b: longstr "xy"
            ][..]
        );
    }

    #[test]
    fn rabbitmq_tags() {
        // 's' is a signed 16-bit, 'u' unsigned 16, 'I' signed 32, 'i' unsigned 32.
        let body = Bytes::from_static(&[
            0, 0, 0, 17, 1, b's', b's', 0xff, 0xfe, 1, b'u', b'u', 0xff, 0xfe, 1, b'x', b'x', 0, 0,
            0, 0,
        ]);
        // 17 = 5 + 5 + 7; the blob 'x' is empty
        let t = decode_field_table(&body).unwrap();
        assert_eq!(t.get("s"), Some(&FieldValue::ShortInt(-2)));
        assert_eq!(t.get("u"), Some(&FieldValue::ShortUInt(0xfffe)));
        assert_eq!(t.get("x"), Some(&FieldValue::ByteArray(Bytes::new())));
    }

    #[test]
    fn bool_nonzero_is_true() {
        let body = Bytes::from_static(&[0, 0, 0, 4, 1, b'k', b't', 7]);
        let t = decode_field_table(&body).unwrap();
        assert_eq!(t.get("k").and_then(FieldValue::as_bool), Some(true));
    }

    #[test]
    fn later_duplicate_replaces_earlier() {
        let body = Bytes::from_static(&[0, 0, 0, 8, 1, b'k', b'b', 1, 1, b'k', b'b', 2]);
        let t = decode_field_table(&body).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t.get("k"), Some(&FieldValue::ShortShortInt(2)));
    }

    #[test]
    fn unknown_type_is_error() {
        let body = Bytes::from_static(&[0, 0, 0, 3, 1, b'k', b'Z']);
        assert_eq!(
            decode_field_table(&body),
            Err(WireError::UnknownFieldType(b'Z'))
        );
    }

    #[test]
    fn truncated_inputs_are_errors() {
        let mut out = BytesMut::new();
        encode_field_table(&mut out, &all_types()).unwrap();
        let full = out.freeze();
        for cut in 0..full.len() {
            let partial = full.slice(..cut);
            assert!(decode_field_table(&partial).is_err(), "cut at {cut}");
        }
        // Also: a correct outer length but inner bytes cut short.
        for cut in 4..full.len() {
            let mut v = full.slice(..cut).to_vec();
            let len = (cut - 4) as u32;
            v[..4].copy_from_slice(&len.to_be_bytes());
            let _ = decode_field_table(&Bytes::from(v)); // must not panic
        }
    }

    #[test]
    fn huge_lengths_do_not_allocate() {
        // array claiming 4 GiB
        let body = Bytes::from_static(&[0, 0, 0, 7, 1, b'a', b'A', 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(
            decode_field_table(&body),
            Err(WireError::Truncated { .. })
        ));
        // key length past the end
        let body = Bytes::from_static(&[0, 0, 0, 2, 200, b'a']);
        assert!(matches!(
            decode_field_table(&body),
            Err(WireError::Truncated { .. })
        ));
        // outer length past the end
        let body = Bytes::from_static(&[0x7f, 0xff, 0xff, 0xff, 0]);
        assert!(matches!(
            decode_field_table(&body),
            Err(WireError::Truncated { .. })
        ));
    }

    fn nested_tables(depth: usize) -> Bytes {
        // innermost: empty table body; wrap `depth` times in { "k": F <table> }
        let mut body: Vec<u8> = Vec::new();
        for _ in 0..depth {
            let mut outer = vec![1, b'k', b'F'];
            outer.extend_from_slice(&(body.len() as u32).to_be_bytes());
            outer.extend_from_slice(&body);
            body = outer;
        }
        let mut full = (body.len() as u32).to_be_bytes().to_vec();
        full.extend_from_slice(&body);
        Bytes::from(full)
    }

    #[test]
    fn nesting_is_bounded() {
        assert!(decode_field_table(&nested_tables(MAX_NESTING_DEPTH)).is_ok());
        assert_eq!(
            decode_field_table(&nested_tables(MAX_NESTING_DEPTH + 1)),
            Err(WireError::NestingTooDeep {
                limit: MAX_NESTING_DEPTH
            })
        );
        assert!(matches!(
            decode_field_table(&nested_tables(1000)),
            Err(WireError::NestingTooDeep { .. })
        ));
    }

    #[test]
    fn nested_arrays_are_bounded() {
        let mut body: Vec<u8> = Vec::new();
        for _ in 0..1000 {
            let mut outer = vec![b'A'];
            outer.extend_from_slice(&(body.len() as u32).to_be_bytes());
            outer.extend_from_slice(&body);
            body = outer;
        }
        let mut t = vec![1, b'k'];
        t.extend_from_slice(&body);
        let mut full = (t.len() as u32).to_be_bytes().to_vec();
        full.extend_from_slice(&t);
        assert!(matches!(
            decode_field_table(&Bytes::from(full)),
            Err(WireError::NestingTooDeep { .. })
        ));
    }

    #[test]
    fn trailing_bytes_rejected() {
        let body = Bytes::from_static(&[0, 0, 0, 0, 9]);
        assert!(matches!(
            decode_field_table(&body),
            Err(WireError::TrailingBytes { .. })
        ));
    }

    #[test]
    fn key_too_long_is_an_encode_error() {
        let mut t = FieldTable::new();
        t.0.insert(
            ShortString::try_from_string("k".repeat(255)).unwrap(),
            FieldValue::Void,
        );
        let mut out = BytesMut::new();
        encode_field_table(&mut out, &t).unwrap();
        assert_eq!(out.len(), t.encoded_size());

        let mut bad = FieldTable::new();
        bad.insert("ok", FieldValue::Void);
        bad.0.insert(
            ShortString::unchecked_for_tests(Bytes::from(vec![b'k'; 256])),
            FieldValue::Void,
        );
        let mut out = BytesMut::from(&b"prefix"[..]);
        assert_eq!(
            encode_field_table(&mut out, &bad),
            Err(WireError::ShortStringTooLong(256))
        );
        assert_eq!(&out[..], b"prefix");
    }

    #[test]
    fn accessors() {
        assert_eq!(FieldValue::ShortShortUInt(7).as_i64(), Some(7));
        assert_eq!(FieldValue::LongLongUInt(u64::MAX).as_i64(), None);
        assert_eq!(FieldValue::LongLongUInt(5).as_i64(), Some(5));
        assert_eq!(FieldValue::Timestamp(5).as_i64(), None);
        assert_eq!(FieldValue::from("x").as_str(), Some("x"));
        assert_eq!(
            FieldValue::LongString(LongString::from(vec![0xff])).as_str(),
            None
        );
        assert_eq!(FieldValue::from("x").type_name(), "longstr");
        assert_eq!(FieldValue::LongInt(1).type_name(), "signedint");
        assert_eq!(FieldValue::Void.type_name(), "void");
        let t = all_types();
        for (_, v) in t.iter() {
            let mut out = BytesMut::new();
            encode_field_value(&mut out, v).unwrap();
            assert_eq!(out.len(), v.encoded_size());
            assert_eq!(out[0], v.tag());
        }
    }
}
