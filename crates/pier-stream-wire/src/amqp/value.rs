//! The AMQP 1.0 type system (AMQP 1.0 part 1, "Types"): every primitive type, compound
//! types, arrays and described types, with all their encodings.

use bytes::{BufMut, Bytes, BytesMut};

use crate::buf::{Reader, Short};

/// How deep lists, maps, arrays and described values may nest before decoding gives up.
pub const MAX_DEPTH: usize = 32;

/// Array elements that take no input of their own (zero-width elements: null, true, false,
/// uint0, ulong0, list0; and the shared descriptor of a described array, copied into every
/// element) are charged against this budget, per decode call, one unit per zero-width element
/// and the descriptor's encoded length per described element. Everything else a decoded value
/// holds takes input octets, so allocation stays linear in the input.
pub const MAX_EXPANSION: usize = 65_536;

/// Format codes (AMQP 1.0 part 1, 1.6).
pub mod code {
    pub const DESCRIBED: u8 = 0x00;
    pub const NULL: u8 = 0x40;
    pub const TRUE: u8 = 0x41;
    pub const FALSE: u8 = 0x42;
    pub const UINT0: u8 = 0x43;
    pub const ULONG0: u8 = 0x44;
    pub const LIST0: u8 = 0x45;
    pub const UBYTE: u8 = 0x50;
    pub const BYTE: u8 = 0x51;
    pub const SMALL_UINT: u8 = 0x52;
    pub const SMALL_ULONG: u8 = 0x53;
    pub const SMALL_INT: u8 = 0x54;
    pub const SMALL_LONG: u8 = 0x55;
    pub const BOOLEAN: u8 = 0x56;
    pub const USHORT: u8 = 0x60;
    pub const SHORT: u8 = 0x61;
    pub const UINT: u8 = 0x70;
    pub const INT: u8 = 0x71;
    pub const FLOAT: u8 = 0x72;
    pub const CHAR: u8 = 0x73;
    pub const DECIMAL32: u8 = 0x74;
    pub const ULONG: u8 = 0x80;
    pub const LONG: u8 = 0x81;
    pub const DOUBLE: u8 = 0x82;
    pub const TIMESTAMP: u8 = 0x83;
    pub const DECIMAL64: u8 = 0x84;
    pub const DECIMAL128: u8 = 0x94;
    pub const UUID: u8 = 0x98;
    pub const VBIN8: u8 = 0xa0;
    pub const STR8: u8 = 0xa1;
    pub const SYM8: u8 = 0xa3;
    pub const VBIN32: u8 = 0xb0;
    pub const STR32: u8 = 0xb1;
    pub const SYM32: u8 = 0xb3;
    pub const LIST8: u8 = 0xc0;
    pub const MAP8: u8 = 0xc1;
    pub const LIST32: u8 = 0xd0;
    pub const MAP32: u8 = 0xd1;
    pub const ARRAY8: u8 = 0xe0;
    pub const ARRAY32: u8 = 0xf0;
}

/// An AMQP 1.0 value.
///
/// Maps keep their wire order (AMQP maps are ordered and may repeat keys on the wire).
/// Arrays are homogeneous: on encoding, every element must be of the first element's type;
/// an empty array is written with the null element constructor, so its element type is not
/// kept through a round trip.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Ubyte(u8),
    Ushort(u16),
    Uint(u32),
    Ulong(u64),
    Byte(i8),
    Short(i16),
    Int(i32),
    Long(i64),
    Float(f32),
    Double(f64),
    /// IEEE 754-2008 decimal32, raw big-endian bits.
    Decimal32([u8; 4]),
    Decimal64([u8; 8]),
    Decimal128([u8; 16]),
    /// A UTF-32 code point (not checked to be a valid `char`).
    Char(u32),
    /// Milliseconds since the Unix epoch.
    Timestamp(i64),
    Uuid([u8; 16]),
    /// A zero-copy slice of the input.
    Binary(Bytes),
    String(String),
    /// Symbols are ASCII on the wire; decoded ones are checked to be UTF-8.
    Symbol(String),
    List(Vec<Value>),
    Map(Vec<(Value, Value)>),
    Array(Vec<Value>),
    /// A descriptor (usually a ulong or a symbol) and the described value.
    Described(Box<Value>, Box<Value>),
}

/// Errors of the AMQP 1.0 codec.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AmqpError {
    #[error("truncated {context}")]
    Truncated { context: &'static str },
    #[error("unknown format code {0:#04x}")]
    UnknownFormatCode(u8),
    #[error("malformed UTF-8 in a {0}")]
    InvalidUtf8(&'static str),
    #[error("values nested deeper than {MAX_DEPTH}")]
    NestingTooDeep,
    #[error("{context}: {count} element(s) cannot fit in {size} byte(s)")]
    CountTooLarge {
        context: &'static str,
        count: usize,
        size: usize,
    },
    #[error("{context}: {count} byte(s) left after the last element")]
    SizeMismatch { context: &'static str, count: usize },
    #[error("a map with an odd number of elements ({0})")]
    OddMapCount(usize),
    #[error("invalid boolean octet {0:#04x}")]
    InvalidBoolean(u8),
    #[error("{0} trailing byte(s) after the message")]
    TrailingBytes(usize),
    #[error("not a message section: {0}")]
    UnknownSection(String),
    #[error("section {0} out of order or repeated")]
    SectionOutOfOrder(&'static str),
    #[error("field {field} of {section} has the wrong type")]
    InvalidField {
        section: &'static str,
        field: &'static str,
    },
    #[error("cannot encode: {0}")]
    Encode(&'static str),
}

impl From<Short> for AmqpError {
    fn from(s: Short) -> Self {
        AmqpError::Truncated { context: s.context }
    }
}

/// Fixed width of the values of a format code, or `None` for variable-width ones.
fn fixed_width(c: u8) -> Option<usize> {
    match c >> 4 {
        0x4 => Some(0),
        0x5 => Some(1),
        0x6 => Some(2),
        0x7 => Some(4),
        0x8 => Some(8),
        0x9 => Some(16),
        _ => None,
    }
}

fn utf8(raw: &[u8], what: &'static str) -> Result<String, AmqpError> {
    std::str::from_utf8(raw)
        .map(str::to_owned)
        .map_err(|_| AmqpError::InvalidUtf8(what))
}

/// Decodes the value at the front of `input`; returns it and the octets it took.
pub fn decode_value(input: &Bytes) -> Result<(Value, usize), AmqpError> {
    let mut r = Reader::new(input);
    let v = read_value(&mut r, 0, &mut { MAX_EXPANSION })?;
    Ok((v, r.position()))
}

/// Decodes one value that must fill `input` exactly.
pub fn decode_value_exact(input: &Bytes) -> Result<Value, AmqpError> {
    let (v, n) = decode_value(input)?;
    if n == input.len() {
        Ok(v)
    } else {
        Err(AmqpError::TrailingBytes(input.len() - n))
    }
}

pub(crate) fn read_value(
    r: &mut Reader<'_>,
    depth: usize,
    budget: &mut usize,
) -> Result<Value, AmqpError> {
    let c = r.u8("format code")?;
    if c == code::DESCRIBED {
        if depth >= MAX_DEPTH {
            return Err(AmqpError::NestingTooDeep);
        }
        let descriptor = read_value(r, depth + 1, budget)?;
        let value = read_value(r, depth + 1, budget)?;
        return Ok(Value::Described(Box::new(descriptor), Box::new(value)));
    }
    read_with_code(r, c, depth, budget)
}

/// Reads a value whose constructor `c` was already read (array elements share one).
fn read_with_code(
    r: &mut Reader<'_>,
    c: u8,
    depth: usize,
    budget: &mut usize,
) -> Result<Value, AmqpError> {
    Ok(match c {
        code::NULL => Value::Null,
        code::TRUE => Value::Bool(true),
        code::FALSE => Value::Bool(false),
        code::BOOLEAN => match r.u8("boolean")? {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            other => return Err(AmqpError::InvalidBoolean(other)),
        },
        code::UINT0 => Value::Uint(0),
        code::ULONG0 => Value::Ulong(0),
        code::UBYTE => Value::Ubyte(r.u8("ubyte")?),
        code::BYTE => Value::Byte(r.u8("byte")? as i8),
        code::SMALL_UINT => Value::Uint(u32::from(r.u8("smalluint")?)),
        code::SMALL_ULONG => Value::Ulong(u64::from(r.u8("smallulong")?)),
        code::SMALL_INT => Value::Int(i32::from(r.u8("smallint")? as i8)),
        code::SMALL_LONG => Value::Long(i64::from(r.u8("smalllong")? as i8)),
        code::USHORT => Value::Ushort(r.u16("ushort")?),
        code::SHORT => Value::Short(r.i16("short")?),
        code::UINT => Value::Uint(r.u32("uint")?),
        code::INT => Value::Int(r.i32("int")?),
        code::FLOAT => Value::Float(f32::from_bits(r.u32("float")?)),
        code::CHAR => Value::Char(r.u32("char")?),
        code::DECIMAL32 => Value::Decimal32(r.bytes("decimal32")?),
        code::ULONG => Value::Ulong(r.u64("ulong")?),
        code::LONG => Value::Long(r.i64("long")?),
        code::DOUBLE => Value::Double(f64::from_bits(r.u64("double")?)),
        code::TIMESTAMP => Value::Timestamp(r.i64("timestamp")?),
        code::DECIMAL64 => Value::Decimal64(r.bytes("decimal64")?),
        code::DECIMAL128 => Value::Decimal128(r.bytes("decimal128")?),
        code::UUID => Value::Uuid(r.bytes("uuid")?),
        code::VBIN8 => {
            let n = r.u8("vbin8 size")?;
            Value::Binary(r.take(usize::from(n), "vbin8")?)
        }
        code::VBIN32 => {
            let n = r.u32("vbin32 size")?;
            Value::Binary(r.take(n as usize, "vbin32")?)
        }
        code::STR8 => {
            let n = r.u8("str8 size")?;
            Value::String(utf8(r.take_slice(usize::from(n), "str8")?, "string")?)
        }
        code::STR32 => {
            let n = r.u32("str32 size")?;
            Value::String(utf8(r.take_slice(n as usize, "str32")?, "string")?)
        }
        code::SYM8 => {
            let n = r.u8("sym8 size")?;
            Value::Symbol(utf8(r.take_slice(usize::from(n), "sym8")?, "symbol")?)
        }
        code::SYM32 => {
            let n = r.u32("sym32 size")?;
            Value::Symbol(utf8(r.take_slice(n as usize, "sym32")?, "symbol")?)
        }
        code::LIST0 => Value::List(Vec::new()),
        code::LIST8 | code::LIST32 | code::MAP8 | code::MAP32 => {
            if depth >= MAX_DEPTH {
                return Err(AmqpError::NestingTooDeep);
            }
            let wide = c == code::LIST32 || c == code::MAP32;
            let (body, count) = compound_body(r, wide, "compound")?;
            let mut inner = Reader::new(&body);
            if c == code::LIST8 || c == code::LIST32 {
                check_count(count, 1, inner.remaining(), "list")?;
                let mut items = Vec::with_capacity(count);
                for _ in 0..count {
                    items.push(read_value(&mut inner, depth + 1, budget)?);
                }
                finish(&inner, "list")?;
                Value::List(items)
            } else {
                if count % 2 != 0 {
                    return Err(AmqpError::OddMapCount(count));
                }
                check_count(count, 1, inner.remaining(), "map")?;
                let mut pairs = Vec::with_capacity(count / 2);
                for _ in 0..count / 2 {
                    let k = read_value(&mut inner, depth + 1, budget)?;
                    let v = read_value(&mut inner, depth + 1, budget)?;
                    pairs.push((k, v));
                }
                finish(&inner, "map")?;
                Value::Map(pairs)
            }
        }
        code::ARRAY8 | code::ARRAY32 => {
            if depth >= MAX_DEPTH {
                return Err(AmqpError::NestingTooDeep);
            }
            let (body, count) = compound_body(r, c == code::ARRAY32, "array")?;
            let mut inner = Reader::new(&body);
            let mut ec = inner.u8("array constructor")?;
            let descriptor = if ec == code::DESCRIBED {
                let d = read_value(&mut inner, depth + 1, budget)?;
                ec = inner.u8("array constructor")?;
                Some(d)
            } else {
                None
            };
            if ec == code::DESCRIBED {
                return Err(AmqpError::Encode("nested described array constructor"));
            }
            // What the elements cost beyond their own input octets.
            let per_element = usize::from(fixed_width(ec) == Some(0))
                + descriptor.as_ref().map_or(0, Value::encoded_len);
            let expansion = count.saturating_mul(per_element);
            if expansion > *budget {
                return Err(AmqpError::CountTooLarge {
                    context: "array (expansion budget)",
                    count,
                    size: inner.remaining(),
                });
            }
            *budget -= expansion;
            match fixed_width(ec) {
                Some(0) => {}
                Some(w) => check_count(count, w, inner.remaining(), "array")?,
                // variable-width elements take at least their size field
                None => check_count(count, 1, inner.remaining(), "array")?,
            }
            let mut items = Vec::with_capacity(count);
            for _ in 0..count {
                let v = read_with_code(&mut inner, ec, depth + 1, budget)?;
                items.push(match &descriptor {
                    Some(d) => Value::Described(Box::new(d.clone()), Box::new(v)),
                    None => v,
                });
            }
            finish(&inner, "array")?;
            Value::Array(items)
        }
        other => return Err(AmqpError::UnknownFormatCode(other)),
    })
}

/// Reads `size` and `count` of a list/map/array and returns the octets after the count.
fn compound_body(
    r: &mut Reader<'_>,
    wide: bool,
    context: &'static str,
) -> Result<(Bytes, usize), AmqpError> {
    if wide {
        let size = r.u32(context)? as usize;
        let body = r.take(size, context)?;
        let mut br = Reader::new(&body);
        let count = br.u32(context)? as usize;
        Ok((br.rest(), count))
    } else {
        let size = usize::from(r.u8(context)?);
        let body = r.take(size, context)?;
        let mut br = Reader::new(&body);
        let count = usize::from(br.u8(context)?);
        Ok((br.rest(), count))
    }
}

fn check_count(
    count: usize,
    min_width: usize,
    size: usize,
    context: &'static str,
) -> Result<(), AmqpError> {
    if count.saturating_mul(min_width) > size {
        Err(AmqpError::CountTooLarge {
            context,
            count,
            size,
        })
    } else {
        Ok(())
    }
}

fn finish(r: &Reader<'_>, context: &'static str) -> Result<(), AmqpError> {
    if r.is_empty() {
        Ok(())
    } else {
        Err(AmqpError::SizeMismatch {
            context,
            count: r.remaining(),
        })
    }
}

// ---- encoding -----------------------------------------------------------------------------

/// The category of a value inside an array: its element constructor.
fn array_constructor(v: &Value) -> Result<u8, AmqpError> {
    Ok(match v {
        Value::Null => code::NULL,
        Value::Bool(_) => code::BOOLEAN,
        Value::Ubyte(_) => code::UBYTE,
        Value::Ushort(_) => code::USHORT,
        Value::Uint(_) => code::UINT,
        Value::Ulong(_) => code::ULONG,
        Value::Byte(_) => code::BYTE,
        Value::Short(_) => code::SHORT,
        Value::Int(_) => code::INT,
        Value::Long(_) => code::LONG,
        Value::Float(_) => code::FLOAT,
        Value::Double(_) => code::DOUBLE,
        Value::Decimal32(_) => code::DECIMAL32,
        Value::Decimal64(_) => code::DECIMAL64,
        Value::Decimal128(_) => code::DECIMAL128,
        Value::Char(_) => code::CHAR,
        Value::Timestamp(_) => code::TIMESTAMP,
        Value::Uuid(_) => code::UUID,
        Value::Binary(_) => code::VBIN32,
        Value::String(_) => code::STR32,
        Value::Symbol(_) => code::SYM32,
        Value::List(_) => code::LIST32,
        Value::Map(_) => code::MAP32,
        Value::Array(_) => code::ARRAY32,
        Value::Described(_, _) => {
            return Err(AmqpError::Encode(
                "a described value inside a described array",
            ))
        }
    })
}

/// Length of a value written with a given element constructor (no constructor octet).
fn element_len(v: &Value, c: u8) -> usize {
    match c {
        code::NULL => 0,
        code::BOOLEAN => 1,
        code::VBIN32 | code::STR32 | code::SYM32 => 4 + payload_len(v),
        code::LIST32 | code::MAP32 | code::ARRAY32 => 8 + compound_payload_len(v),
        other => fixed_width(other).unwrap_or(0),
    }
}

fn payload_len(v: &Value) -> usize {
    match v {
        Value::Binary(b) => b.len(),
        Value::String(s) | Value::Symbol(s) => s.len(),
        _ => 0,
    }
}

/// Octets after size and count of a list/map/array.
fn compound_payload_len(v: &Value) -> usize {
    match v {
        Value::List(items) => items.iter().map(Value::encoded_len).sum(),
        Value::Map(pairs) => pairs
            .iter()
            .map(|(k, v)| k.encoded_len() + v.encoded_len())
            .sum(),
        Value::Array(items) => array_parts(items)
            .map(|(ctor_len, c)| {
                ctor_len
                    + items
                        .iter()
                        .map(|i| element_len(described_inner(i), c))
                        .sum::<usize>()
            })
            .unwrap_or(0),
        _ => 0,
    }
}

fn described_inner(v: &Value) -> &Value {
    match v {
        Value::Described(_, inner) => inner,
        other => other,
    }
}

/// Constructor length and element code of an array (for encoded_len); errors are reported
/// by `encode`.
fn array_parts(items: &[Value]) -> Option<(usize, u8)> {
    match items.first() {
        None => Some((1, code::NULL)),
        Some(Value::Described(d, inner)) => {
            Some((2 + d.encoded_len(), array_constructor(inner).ok()?))
        }
        Some(first) => Some((1, array_constructor(first).ok()?)),
    }
}

/// Equality with floats compared by bits (so that a NaN descriptor equals itself).
fn identical(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits(),
        (Value::Double(x), Value::Double(y)) => x.to_bits() == y.to_bits(),
        (Value::List(x), Value::List(y)) | (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| identical(p, q))
        }
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((k1, v1), (k2, v2))| identical(k1, k2) && identical(v1, v2))
        }
        (Value::Described(d1, v1), Value::Described(d2, v2)) => {
            identical(d1, d2) && identical(v1, v2)
        }
        _ => a == b,
    }
}

fn same_kind(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Described(da, ia), Value::Described(db, ib)) => {
            identical(da, db) && same_kind(ia, ib)
        }
        (Value::Described(..), _) | (_, Value::Described(..)) => false,
        _ => std::mem::discriminant(a) == std::mem::discriminant(b),
    }
}

impl Value {
    /// Octets [`Value::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        match self {
            Value::Null | Value::Bool(_) => 1,
            Value::Uint(0) | Value::Ulong(0) => 1,
            Value::Uint(v) if *v < 256 => 2,
            Value::Ulong(v) if *v < 256 => 2,
            Value::Int(v) if i8::try_from(*v).is_ok() => 2,
            Value::Long(v) if i8::try_from(*v).is_ok() => 2,
            Value::Ubyte(_) | Value::Byte(_) => 2,
            Value::Ushort(_) | Value::Short(_) => 3,
            Value::Uint(_)
            | Value::Int(_)
            | Value::Float(_)
            | Value::Char(_)
            | Value::Decimal32(_) => 5,
            Value::Ulong(_)
            | Value::Long(_)
            | Value::Double(_)
            | Value::Timestamp(_)
            | Value::Decimal64(_) => 9,
            Value::Decimal128(_) | Value::Uuid(_) => 17,
            Value::Binary(_) | Value::String(_) | Value::Symbol(_) => {
                let n = payload_len(self);
                if n <= 255 {
                    2 + n
                } else {
                    5 + n
                }
            }
            Value::List(items) if items.is_empty() => 1,
            Value::List(items) => compound_len(items.len(), compound_payload_len(self)),
            Value::Map(pairs) => compound_len(pairs.len() * 2, compound_payload_len(self)),
            Value::Array(items) => compound_len(items.len(), compound_payload_len(self)),
            Value::Described(d, v) => 1 + d.encoded_len() + v.encoded_len(),
        }
    }

    /// Writes the value with its most compact encoding. On error nothing is written.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), AmqpError> {
        let start = out.len();
        let r = self.write(out, 0);
        if r.is_err() {
            out.truncate(start);
        }
        r
    }

    /// The encoded value as `Bytes`.
    pub fn to_bytes(&self) -> Result<Bytes, AmqpError> {
        let mut out = BytesMut::with_capacity(self.encoded_len());
        self.encode(&mut out)?;
        Ok(out.freeze())
    }

    fn write(&self, out: &mut BytesMut, depth: usize) -> Result<(), AmqpError> {
        if depth > MAX_DEPTH {
            return Err(AmqpError::NestingTooDeep);
        }
        match self {
            Value::Null => out.put_u8(code::NULL),
            Value::Bool(true) => out.put_u8(code::TRUE),
            Value::Bool(false) => out.put_u8(code::FALSE),
            Value::Ubyte(v) => {
                out.put_u8(code::UBYTE);
                out.put_u8(*v);
            }
            Value::Byte(v) => {
                out.put_u8(code::BYTE);
                out.put_i8(*v);
            }
            Value::Ushort(v) => {
                out.put_u8(code::USHORT);
                out.put_u16(*v);
            }
            Value::Short(v) => {
                out.put_u8(code::SHORT);
                out.put_i16(*v);
            }
            Value::Uint(0) => out.put_u8(code::UINT0),
            Value::Uint(v) => match u8::try_from(*v) {
                Ok(small) => {
                    out.put_u8(code::SMALL_UINT);
                    out.put_u8(small);
                }
                Err(_) => {
                    out.put_u8(code::UINT);
                    out.put_u32(*v);
                }
            },
            Value::Ulong(0) => out.put_u8(code::ULONG0),
            Value::Ulong(v) => match u8::try_from(*v) {
                Ok(small) => {
                    out.put_u8(code::SMALL_ULONG);
                    out.put_u8(small);
                }
                Err(_) => {
                    out.put_u8(code::ULONG);
                    out.put_u64(*v);
                }
            },
            Value::Int(v) => match i8::try_from(*v) {
                Ok(small) => {
                    out.put_u8(code::SMALL_INT);
                    out.put_i8(small);
                }
                Err(_) => {
                    out.put_u8(code::INT);
                    out.put_i32(*v);
                }
            },
            Value::Long(v) => match i8::try_from(*v) {
                Ok(small) => {
                    out.put_u8(code::SMALL_LONG);
                    out.put_i8(small);
                }
                Err(_) => {
                    out.put_u8(code::LONG);
                    out.put_i64(*v);
                }
            },
            Value::Float(v) => {
                out.put_u8(code::FLOAT);
                out.put_u32(v.to_bits());
            }
            Value::Double(v) => {
                out.put_u8(code::DOUBLE);
                out.put_u64(v.to_bits());
            }
            Value::Decimal32(b) => {
                out.put_u8(code::DECIMAL32);
                out.put_slice(b);
            }
            Value::Decimal64(b) => {
                out.put_u8(code::DECIMAL64);
                out.put_slice(b);
            }
            Value::Decimal128(b) => {
                out.put_u8(code::DECIMAL128);
                out.put_slice(b);
            }
            Value::Char(c) => {
                out.put_u8(code::CHAR);
                out.put_u32(*c);
            }
            Value::Timestamp(t) => {
                out.put_u8(code::TIMESTAMP);
                out.put_i64(*t);
            }
            Value::Uuid(u) => {
                out.put_u8(code::UUID);
                out.put_slice(u);
            }
            Value::Binary(b) => put_variable(out, code::VBIN8, code::VBIN32, b)?,
            Value::String(s) => put_variable(out, code::STR8, code::STR32, s.as_bytes())?,
            Value::Symbol(s) => put_variable(out, code::SYM8, code::SYM32, s.as_bytes())?,
            Value::List(items) if items.is_empty() => out.put_u8(code::LIST0),
            Value::List(_) | Value::Map(_) | Value::Array(_) => {
                self.write_compound(out, depth, false)?
            }
            Value::Described(d, v) => {
                out.put_u8(code::DESCRIBED);
                d.write(out, depth + 1)?;
                v.write(out, depth + 1)?;
            }
        }
        Ok(())
    }

    /// Writes a list, map or array: with the most compact constructor, or (`element`) in
    /// the 32-bit form without constructor, as an array element.
    fn write_compound(
        &self,
        out: &mut BytesMut,
        depth: usize,
        element: bool,
    ) -> Result<(), AmqpError> {
        let payload = compound_payload_len(self);
        let (narrow, wide, count) = match self {
            Value::List(items) => (code::LIST8, code::LIST32, items.len()),
            Value::Map(pairs) => (code::MAP8, code::MAP32, pairs.len() * 2),
            Value::Array(items) => (code::ARRAY8, code::ARRAY32, items.len()),
            _ => return Err(AmqpError::Encode("not a compound value")),
        };
        if element {
            let size =
                u32::try_from(payload + 4).map_err(|_| AmqpError::Encode("compound over 4 GiB"))?;
            let count = u32::try_from(count).map_err(|_| AmqpError::Encode("too many elements"))?;
            out.put_u32(size);
            out.put_u32(count);
        } else {
            put_compound_header(out, narrow, wide, count, payload)?;
        }
        match self {
            Value::List(items) => {
                for i in items {
                    i.write(out, depth + 1)?;
                }
            }
            Value::Map(pairs) => {
                for (k, v) in pairs {
                    k.write(out, depth + 1)?;
                    v.write(out, depth + 1)?;
                }
            }
            Value::Array(items) => {
                if let Some(first) = items.first() {
                    if items.iter().any(|i| !same_kind(first, i)) {
                        return Err(AmqpError::Encode(
                            "an array with elements of different types",
                        ));
                    }
                }
                let (descriptor, ec) = match items.first() {
                    None => (None, code::NULL),
                    Some(Value::Described(d, inner)) => (Some(d), array_constructor(inner)?),
                    Some(first) => (None, array_constructor(first)?),
                };
                if let Some(d) = descriptor {
                    out.put_u8(code::DESCRIBED);
                    d.write(out, depth + 1)?;
                }
                out.put_u8(ec);
                for item in items {
                    described_inner(item).write_element(ec, out, depth + 1)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Writes the value without constructor, in the array element format `c`.
    fn write_element(&self, c: u8, out: &mut BytesMut, depth: usize) -> Result<(), AmqpError> {
        match (c, self) {
            (code::NULL, _) => {}
            (code::BOOLEAN, Value::Bool(b)) => out.put_u8(u8::from(*b)),
            (code::VBIN32 | code::STR32 | code::SYM32, v) => {
                let raw: &[u8] = match v {
                    Value::Binary(b) => b,
                    Value::String(s) | Value::Symbol(s) => s.as_bytes(),
                    _ => return Err(AmqpError::Encode("array element type")),
                };
                let n =
                    u32::try_from(raw.len()).map_err(|_| AmqpError::Encode("value over 4 GiB"))?;
                out.put_u32(n);
                out.put_slice(raw);
            }
            (code::LIST32 | code::MAP32 | code::ARRAY32, v) => {
                if !matches!(v, Value::List(_) | Value::Map(_) | Value::Array(_)) {
                    return Err(AmqpError::Encode("array element type"));
                }
                v.write_compound(out, depth, true)?;
            }
            (_, v) => {
                // fixed-width: the wide form of the value minus its constructor
                let mut tmp = BytesMut::new();
                match v {
                    Value::Ubyte(x) => tmp.put_u8(*x),
                    Value::Byte(x) => tmp.put_i8(*x),
                    Value::Ushort(x) => tmp.put_u16(*x),
                    Value::Short(x) => tmp.put_i16(*x),
                    Value::Uint(x) => tmp.put_u32(*x),
                    Value::Int(x) => tmp.put_i32(*x),
                    Value::Ulong(x) => tmp.put_u64(*x),
                    Value::Long(x) => tmp.put_i64(*x),
                    Value::Float(x) => tmp.put_u32(x.to_bits()),
                    Value::Double(x) => tmp.put_u64(x.to_bits()),
                    Value::Char(x) => tmp.put_u32(*x),
                    Value::Timestamp(x) => tmp.put_i64(*x),
                    Value::Decimal32(b) => tmp.put_slice(b),
                    Value::Decimal64(b) => tmp.put_slice(b),
                    Value::Decimal128(b) => tmp.put_slice(b),
                    Value::Uuid(b) => tmp.put_slice(b),
                    _ => return Err(AmqpError::Encode("array element type")),
                }
                out.put_slice(&tmp);
            }
        }
        Ok(())
    }
}

fn compound_len(count: usize, payload: usize) -> usize {
    if count <= 255 && payload < 255 {
        3 + payload
    } else {
        9 + payload
    }
}

fn put_compound_header(
    out: &mut BytesMut,
    narrow: u8,
    wide: u8,
    count: usize,
    payload: usize,
) -> Result<(), AmqpError> {
    if count <= 255 && payload < 255 {
        out.put_u8(narrow);
        out.put_u8((payload + 1) as u8);
        out.put_u8(count as u8);
        Ok(())
    } else {
        put_wide_header(out, wide, count, payload)
    }
}

fn put_wide_header(
    out: &mut BytesMut,
    c: u8,
    count: usize,
    payload: usize,
) -> Result<(), AmqpError> {
    let size = u32::try_from(payload + 4).map_err(|_| AmqpError::Encode("compound over 4 GiB"))?;
    let count = u32::try_from(count).map_err(|_| AmqpError::Encode("too many elements"))?;
    out.put_u8(c);
    out.put_u32(size);
    out.put_u32(count);
    Ok(())
}

fn put_variable(out: &mut BytesMut, narrow: u8, wide: u8, raw: &[u8]) -> Result<(), AmqpError> {
    match u8::try_from(raw.len()) {
        Ok(n) => {
            out.put_u8(narrow);
            out.put_u8(n);
        }
        Err(_) => {
            let n = u32::try_from(raw.len()).map_err(|_| AmqpError::Encode("value over 4 GiB"))?;
            out.put_u8(wide);
            out.put_u32(n);
        }
    }
    out.put_slice(raw);
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

    fn roundtrip(v: Value) -> Bytes {
        let b = v.to_bytes().unwrap();
        assert_eq!(b.len(), v.encoded_len(), "{v:?}");
        assert_eq!(decode_value_exact(&b).unwrap(), v);
        b
    }

    #[test]
    fn compact_encodings() {
        assert_eq!(&roundtrip(Value::Null)[..], &[0x40]);
        assert_eq!(&roundtrip(Value::Bool(true))[..], &[0x41]);
        assert_eq!(&roundtrip(Value::Uint(0))[..], &[0x43]);
        assert_eq!(&roundtrip(Value::Uint(7))[..], &[0x52, 7]);
        assert_eq!(&roundtrip(Value::Ulong(0x70))[..], &[0x53, 0x70]);
        assert_eq!(&roundtrip(Value::Int(-1))[..], &[0x54, 0xff]);
        assert_eq!(
            &roundtrip(Value::Long(300))[..],
            &[0x81, 0, 0, 0, 0, 0, 0, 1, 44]
        );
        assert_eq!(
            &roundtrip(Value::String("hi".into()))[..],
            &[0xa1, 2, b'h', b'i']
        );
        assert_eq!(&roundtrip(Value::List(vec![]))[..], &[0x45]);
        assert_eq!(
            &roundtrip(Value::List(vec![Value::Bool(true)]))[..],
            &[0xc0, 2, 1, 0x41]
        );
        let long = "x".repeat(300);
        let b = roundtrip(Value::Symbol(long));
        assert_eq!(b[0], 0xb3);
    }

    #[test]
    fn arrays() {
        let b = roundtrip(Value::Array(vec![
            Value::Symbol("a".into()),
            Value::Symbol("bc".into()),
        ]));
        assert_eq!(
            &b[..],
            &[0xe0, 13, 2, 0xb3, 0, 0, 0, 1, b'a', 0, 0, 0, 2, b'b', b'c']
        );
        roundtrip(Value::Array(vec![Value::Bool(false), Value::Bool(true)]));
        roundtrip(Value::Array(vec![
            Value::Array(vec![Value::Int(5)]),
            Value::Array(vec![]),
        ]));
        roundtrip(Value::Array(vec![
            Value::List(vec![Value::Null]),
            Value::List(vec![]),
        ]));
        roundtrip(Value::Array(vec![Value::Map(vec![(
            Value::Int(1),
            Value::Null,
        )])]));
        let d = Box::new(Value::Ulong(0x75));
        roundtrip(Value::Array(vec![
            Value::Described(d.clone(), Box::new(Value::Binary(Bytes::from_static(b"x")))),
            Value::Described(d, Box::new(Value::Binary(Bytes::new()))),
        ]));
        assert!(Value::Array(vec![Value::Int(1), Value::Uint(1)])
            .to_bytes()
            .is_err());
        // zero-width elements: bounded
        let evil = Bytes::from_static(&[0xf0, 0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0x40]);
        assert!(matches!(
            decode_value(&evil),
            Err(AmqpError::CountTooLarge { .. })
        ));
        // a big descriptor shared by many one-octet elements: bounded too
        let mut raw = vec![0xf0];
        let body_len = 4 + 1 + 2 + 200 + 1 + 1000;
        raw.extend_from_slice(&(body_len as u32).to_be_bytes());
        raw.extend_from_slice(&1000u32.to_be_bytes());
        raw.extend_from_slice(&[0x00, 0xa3, 200]);
        raw.extend_from_slice(&[b'd'; 200]);
        raw.push(0x50);
        raw.extend_from_slice(&[7; 1000]);
        assert!(matches!(
            decode_value(&Bytes::from(raw)),
            Err(AmqpError::CountTooLarge { .. })
        ));
        let ok = Bytes::from_static(&[0xe0, 2, 3, 0x41]);
        assert_eq!(
            decode_value_exact(&ok).unwrap(),
            Value::Array(vec![Value::Bool(true); 3])
        );
    }

    /// Found by `cargo fuzz run stream_amqp_message`: a described array whose descriptor
    /// is a NaN was decoded but could not be re-encoded (NaN != NaN made the elements look
    /// heterogeneous).
    #[test]
    fn described_array_with_nan_descriptor() {
        let raw = Bytes::from_static(&[
            0xe0, 0x14, 0x06, 0x00, 0x00, 0x82, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xc7,
            0x44, 0x52, 0x70, 0x53, 0x2b, 0x00, 0x00, 0x3e, 0x00,
        ]);
        let (v, _) = decode_value(&raw).unwrap();
        let once = v.to_bytes().unwrap();
        let (again, _) = decode_value(&once).unwrap();
        assert_eq!(again.to_bytes().unwrap(), once);
    }

    #[test]
    fn nesting_is_bounded() {
        let mut v = Value::Null;
        for _ in 0..40 {
            v = Value::List(vec![v]);
        }
        assert!(v.to_bytes().is_err());
        // hand-made deep input: 60 nested list8s around a null
        let mut raw = Vec::new();
        for i in 0..60u8 {
            raw.extend_from_slice(&[0xc0, 3 * (60 - i) - 1, 1]);
        }
        raw.push(0x40);
        assert_eq!(
            decode_value(&Bytes::from(raw)),
            Err(AmqpError::NestingTooDeep)
        );
        let mut described = vec![0u8; 200];
        described.push(0x40);
        assert_eq!(
            decode_value(&Bytes::from(described)),
            Err(AmqpError::NestingTooDeep)
        );
    }

    #[test]
    fn malformed() {
        for raw in [
            &[0x56, 2][..],
            &[0xa1, 1, 0xff],
            &[0xc0, 1, 2],
            &[0xc1, 2, 1, 0x40],
            &[0xc0, 3, 1, 0x40, 0x40],
            &[0x01],
            &[0xb0, 0xff, 0xff, 0xff, 0xff],
        ] {
            assert!(
                decode_value(&Bytes::copy_from_slice(raw)).is_err(),
                "{raw:x?}"
            );
        }
    }
}
