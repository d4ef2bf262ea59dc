//! Splitting frames off a byte stream: heart-beats, command and header lines, unescaping,
//! `content-length` and NUL-terminated bodies, and the limits.

use bytes::{Bytes, BytesMut};

use crate::error::DecodeError;
use crate::frame::{parse_content_length, Command, Escaping, Frame, Headers, Version};

/// Limits on what a peer may send; each is checked before the bytes it covers are buffered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest frame, command line to NUL. RabbitMQ 3.11+ defaults
    /// `stomp.max_frame_size` to 4 MiB (3.10.8 has no limit).
    pub max_frame_size: usize,
    /// The most header lines in a frame.
    pub max_headers: usize,
    /// The longest command or header line, escapes included, line end excluded.
    pub max_header_length: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_size: 4 * 1024 * 1024,
            max_headers: 1000,
            max_header_length: 64 * 1024,
        }
    }
}

/// What [`decode`] found at the front of the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// End-of-lines (LF or CRLF) between frames: a heart-beat. NULs there are skipped too,
    /// as RabbitMQ does.
    HeartBeat,
    Frame(Frame),
}

/// How far the parse of the item at the front of the buffer got. Kept by [`Decoder`]
/// between reads, so every line is parsed once and a body's NUL searched for once, however
/// the bytes are cut: small reads of a large frame cost linear time, not quadratic.
#[derive(Debug, Clone, Default)]
struct Progress {
    /// The next octet to look at, from the start of the item.
    pos: usize,
    command: Option<Command>,
    headers: Headers,
    /// Where the body starts, once the blank line ending the headers has been seen.
    body_start: Option<usize>,
    /// How far the search for a NUL-terminated body's NUL got.
    scanned: usize,
    /// How far the search for the current line's LF got.
    line_scanned: usize,
}

/// What a parse step found.
enum Parsed {
    /// `n` octets of inter-frame noise.
    Noise(usize),
    /// A frame of `len` octets whose body is `body` (offsets into the input).
    Frame {
        command: Command,
        headers: Headers,
        body: std::ops::Range<usize>,
        len: usize,
    },
}

/// Decodes the item at the front of `buf` on a connection of `version` (any version for the
/// first frame: CONNECT and STOMP are read the same in all three). `Ok(None)` until it is
/// whole; otherwise the item and the octets it took.
pub fn decode(
    buf: &Bytes,
    version: Version,
    limits: &Limits,
) -> Result<Option<(Item, usize)>, DecodeError> {
    let mut progress = Progress::default();
    Ok(
        step(buf, &mut progress, version, limits)?.map(|parsed| match parsed {
            Parsed::Noise(n) => (Item::HeartBeat, n),
            Parsed::Frame {
                command,
                headers,
                body,
                len,
            } => (
                Item::Frame(Frame {
                    command,
                    headers,
                    body: buf.slice(body),
                }),
                len,
            ),
        }),
    )
}

/// A decoder for one connection's receive buffer. Between calls it keeps how far it parsed
/// the frame at the front of the buffer (the caller only appends to the buffer).
#[derive(Debug, Clone)]
pub struct Decoder {
    pub version: Version,
    pub limits: Limits,
    progress: Progress,
}

impl Decoder {
    /// A decoder for a new connection (version 1.0 until [`Decoder::version`] is set from
    /// the CONNECT negotiation; CONNECT itself decodes the same under every version).
    pub fn new(limits: Limits) -> Decoder {
        Decoder {
            version: Version::V1_0,
            limits,
            progress: Progress::default(),
        }
    }

    /// Splits the next item off `buf` (zero-copy: the body is a slice of it).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Item>, DecodeError> {
        let parsed = step(buf, &mut self.progress, self.version, &self.limits);
        let parsed = match parsed {
            Ok(Some(p)) => p,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.progress = Progress::default();
                return Err(e);
            }
        };
        self.progress = Progress::default();
        match parsed {
            Parsed::Noise(n) => {
                let _ = buf.split_to(n);
                Ok(Some(Item::HeartBeat))
            }
            Parsed::Frame {
                command,
                headers,
                body,
                len,
            } => {
                let frame = buf.split_to(len).freeze();
                Ok(Some(Item::Frame(Frame {
                    command,
                    headers,
                    body: frame.slice(body),
                })))
            }
        }
    }
}

/// Advances the parse of the item at the front of `buf` as far as the bytes allow.
fn step(
    buf: &[u8],
    st: &mut Progress,
    version: Version,
    limits: &Limits,
) -> Result<Option<Parsed>, DecodeError> {
    if st.command.is_none() && st.pos == 0 {
        // Inter-frame noise: LF, CRLF and (as RabbitMQ allows) NUL.
        let mut i = 0;
        loop {
            match (buf.get(i), buf.get(i + 1)) {
                (Some(b'\n' | 0), _) => i += 1,
                (Some(b'\r'), Some(b'\n')) => i += 2,
                (Some(b'\r'), Some(_)) if i == 0 => return Err(DecodeError::BareCarriageReturn),
                (Some(b'\r'), None) | (None, _) if i == 0 => return Ok(None),
                (Some(_), _) if i == 0 => break,
                _ => return Ok(Some(Parsed::Noise(i))),
            }
        }
    }
    let command = match st.command {
        Some(c) => c,
        None => {
            let Some(line) = next_line(buf, st, limits)? else {
                return Ok(None);
            };
            if line.contains(&b'\r') {
                return Err(DecodeError::BareCarriageReturn);
            }
            let c = Command::from_bytes(line).ok_or_else(|| {
                DecodeError::UnknownCommand(String::from_utf8_lossy(line).into_owned())
            })?;
            st.command = Some(c);
            c
        }
    };
    let esc = version.escaping(command);
    let body_start = loop {
        if let Some(b) = st.body_start {
            break b;
        }
        let Some(line) = next_line(buf, st, limits)? else {
            return Ok(None);
        };
        if line.is_empty() {
            st.body_start = Some(st.pos);
            continue;
        }
        if st.headers.len() >= limits.max_headers {
            return Err(DecodeError::TooManyHeaders {
                max: limits.max_headers,
            });
        }
        // The name ends at the first colon; later colons belong to the value (RabbitMQ reads
        // them so, and 1.0 cannot escape them).
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(DecodeError::HeaderWithoutColon(
                String::from_utf8_lossy(line).into_owned(),
            ));
        };
        let (name, value) = line.split_at(colon);
        if name.is_empty() {
            return Err(DecodeError::EmptyHeaderName);
        }
        let name = unescape(name, esc)?;
        let value = unescape(value.get(1..).unwrap_or(&[]), esc)?;
        st.headers.0.push((name, value));
    };
    let too_large = DecodeError::FrameTooLarge {
        max: limits.max_frame_size,
    };
    let (end, len) = match st.headers.get("content-length") {
        Some(v) => {
            let n = parse_content_length(v)
                .map_err(|()| DecodeError::InvalidContentLength(v.to_string()))?;
            let end = body_start.checked_add(n).ok_or(too_large.clone())?;
            if end >= limits.max_frame_size {
                return Err(too_large);
            }
            match buf.get(end) {
                None => return Ok(None),
                Some(0) => (end, end + 1),
                Some(_) => return Err(DecodeError::MissingNul),
            }
        }
        None => {
            let from = st.scanned.max(body_start);
            let found = buf
                .get(from..)
                .and_then(|rest| rest.iter().position(|&b| b == 0))
                .map(|p| from + p);
            match found {
                Some(end) if end < limits.max_frame_size => (end, end + 1),
                Some(_) => return Err(too_large),
                None if buf.len() >= limits.max_frame_size => return Err(too_large),
                None => {
                    st.scanned = buf.len();
                    return Ok(None);
                }
            }
        }
    };
    Ok(Some(Parsed::Frame {
        command,
        headers: std::mem::take(&mut st.headers),
        body: body_start..end,
        len,
    }))
}

/// The next line from `st.pos` (LF or CRLF stripped), advancing `st.pos` past its end;
/// `None` if it is not complete yet (the LF search resumes where it stopped). A line over
/// the limit fails as soon as that many octets are there, complete or not.
fn next_line<'a>(
    buf: &'a [u8],
    st: &mut Progress,
    limits: &Limits,
) -> Result<Option<&'a [u8]>, DecodeError> {
    let start = st.pos;
    let from = st.line_scanned.max(start);
    let found = buf
        .get(from..)
        .and_then(|rest| rest.iter().position(|&b| b == b'\n'))
        .map(|p| from + p);
    let Some(lf) = found else {
        st.line_scanned = buf.len();
        let mut len = buf.len().saturating_sub(start);
        if buf.last() == Some(&b'\r') {
            // may be the CR of a CRLF
            len = len.saturating_sub(1);
        }
        return check_line(start, len, limits).map(|()| None);
    };
    let mut line = buf.get(start..lf).unwrap_or(&[]);
    if let [head @ .., b'\r'] = line {
        line = head;
    }
    check_line(start, line.len(), limits)?;
    st.pos = lf + 1;
    st.line_scanned = 0;
    Ok(Some(line))
}

/// A line of `len` octets (so far) starting at `start`: the frame cannot end before the
/// line's LF and a NUL, and the line itself is limited.
fn check_line(start: usize, len: usize, limits: &Limits) -> Result<(), DecodeError> {
    if start + len + 2 > limits.max_frame_size {
        Err(DecodeError::FrameTooLarge {
            max: limits.max_frame_size,
        })
    } else if len > limits.max_header_length {
        Err(DecodeError::HeaderTooLong {
            max: limits.max_header_length,
        })
    } else {
        Ok(())
    }
}

/// Undoes header escaping (1.1 and 1.2 §"Value Encoding"); an undefined escape is a fatal
/// error. 1.2 does not allow a raw CR in a header; 1.0 and 1.1 do (it is an octet like any
/// other there).
fn unescape(raw: &[u8], esc: Escaping) -> Result<String, DecodeError> {
    let bytes = match esc {
        Escaping::None => raw.to_vec(),
        Escaping::V1_1 | Escaping::V1_2 => {
            let mut out = Vec::with_capacity(raw.len());
            let mut it = raw.iter();
            while let Some(&b) = it.next() {
                match b {
                    b'\\' => match it.next() {
                        Some(b'n') => out.push(b'\n'),
                        Some(b'c') => out.push(b':'),
                        Some(b'\\') => out.push(b'\\'),
                        Some(b'r') if esc == Escaping::V1_2 => out.push(b'\r'),
                        Some(&other) => return Err(DecodeError::InvalidEscape(other)),
                        None => return Err(DecodeError::InvalidEscape(b'\n')),
                    },
                    b'\r' if esc == Escaping::V1_2 => return Err(DecodeError::BareCarriageReturn),
                    b => out.push(b),
                }
            }
            out
        }
    };
    String::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8)
}
