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

/// Where a parse attempt stopped.
enum Parsed {
    /// Need more input; `scanned` is how far the body's NUL search got (a hint for the next
    /// attempt).
    Incomplete { scanned: usize },
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
    match parse(buf, version, limits, 0)? {
        Parsed::Incomplete { .. } => Ok(None),
        Parsed::Noise(n) => Ok(Some((Item::HeartBeat, n))),
        Parsed::Frame {
            command,
            headers,
            body,
            len,
        } => Ok(Some((
            Item::Frame(Frame {
                command,
                headers,
                body: buf.slice(body),
            }),
            len,
        ))),
    }
}

/// A decoder for one connection's receive buffer. It remembers how far it has searched a
/// NUL-terminated body, so a large frame arriving in small reads is scanned once, not once
/// per read.
#[derive(Debug, Clone)]
pub struct Decoder {
    pub version: Version,
    pub limits: Limits,
    scanned: usize,
}

impl Decoder {
    /// A decoder for a new connection (version 1.0 until [`Decoder::version`] is set from
    /// the CONNECT negotiation; CONNECT itself decodes the same under every version).
    pub fn new(limits: Limits) -> Decoder {
        Decoder {
            version: Version::V1_0,
            limits,
            scanned: 0,
        }
    }

    /// Splits the next item off `buf` (zero-copy: the body is a slice of it).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Item>, DecodeError> {
        if self.scanned > 0 && buf.len() <= self.scanned {
            return Ok(None);
        }
        match parse(buf, self.version, &self.limits, self.scanned)? {
            Parsed::Incomplete { scanned } => {
                self.scanned = scanned;
                Ok(None)
            }
            Parsed::Noise(n) => {
                self.scanned = 0;
                let _ = buf.split_to(n);
                Ok(Some(Item::HeartBeat))
            }
            Parsed::Frame {
                command,
                headers,
                body,
                len,
            } => {
                self.scanned = 0;
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

fn parse(
    buf: &[u8],
    version: Version,
    limits: &Limits,
    scanned: usize,
) -> Result<Parsed, DecodeError> {
    // Inter-frame noise: LF, CRLF and (as RabbitMQ allows) NUL.
    let mut i = 0;
    loop {
        match (buf.get(i), buf.get(i + 1)) {
            (Some(b'\n' | 0), _) => i += 1,
            (Some(b'\r'), Some(b'\n')) => i += 2,
            (Some(b'\r'), None) => {
                return Ok(if i > 0 {
                    Parsed::Noise(i)
                } else {
                    Parsed::Incomplete { scanned: 0 }
                })
            }
            (Some(b'\r'), Some(_)) => return Err(DecodeError::BareCarriageReturn),
            (None, _) => {
                return Ok(if i > 0 {
                    Parsed::Noise(i)
                } else {
                    Parsed::Incomplete { scanned: 0 }
                })
            }
            (Some(_), _) => break,
        }
    }
    if i > 0 {
        return Ok(Parsed::Noise(i));
    }

    let mut pos = 0;
    let Some(line) = next_line(buf, &mut pos, limits)? else {
        return Ok(Parsed::Incomplete { scanned: 0 });
    };
    if line.contains(&b'\r') {
        return Err(DecodeError::BareCarriageReturn);
    }
    let command = Command::from_bytes(line)
        .ok_or_else(|| DecodeError::UnknownCommand(String::from_utf8_lossy(line).into_owned()))?;
    let esc = version.escaping(command);
    let mut headers = Headers::new();
    loop {
        let Some(line) = next_line(buf, &mut pos, limits)? else {
            return Ok(Parsed::Incomplete { scanned: 0 });
        };
        if pos > limits.max_frame_size {
            return Err(DecodeError::FrameTooLarge {
                max: limits.max_frame_size,
            });
        }
        if line.is_empty() {
            break;
        }
        if headers.len() >= limits.max_headers {
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
        headers.0.push((name, value));
    }
    let body_start = pos;
    match headers.get("content-length") {
        Some(v) => {
            let n = parse_content_length(v)
                .map_err(|()| DecodeError::InvalidContentLength(v.to_string()))?;
            let end = body_start
                .checked_add(n)
                .ok_or(DecodeError::FrameTooLarge {
                    max: limits.max_frame_size,
                })?;
            if end >= limits.max_frame_size {
                return Err(DecodeError::FrameTooLarge {
                    max: limits.max_frame_size,
                });
            }
            match buf.get(end) {
                None => Ok(Parsed::Incomplete { scanned: 0 }),
                Some(0) => Ok(Parsed::Frame {
                    command,
                    headers,
                    body: body_start..end,
                    len: end + 1,
                }),
                Some(_) => Err(DecodeError::MissingNul),
            }
        }
        None => {
            let from = scanned.max(body_start);
            let found = buf
                .get(from..)
                .and_then(|rest| rest.iter().position(|&b| b == 0))
                .map(|p| from + p);
            match found {
                Some(end) if end < limits.max_frame_size => Ok(Parsed::Frame {
                    command,
                    headers,
                    body: body_start..end,
                    len: end + 1,
                }),
                Some(_) => Err(DecodeError::FrameTooLarge {
                    max: limits.max_frame_size,
                }),
                None if buf.len() >= limits.max_frame_size => Err(DecodeError::FrameTooLarge {
                    max: limits.max_frame_size,
                }),
                None => Ok(Parsed::Incomplete { scanned: buf.len() }),
            }
        }
    }
}

/// The next line from `pos` (LF or CRLF stripped), advancing `pos` past its end; `None`
/// if it is not complete yet. A line over the limit fails as soon as that many octets are
/// there, complete or not.
fn next_line<'a>(
    buf: &'a [u8],
    pos: &mut usize,
    limits: &Limits,
) -> Result<Option<&'a [u8]>, DecodeError> {
    let rest = buf.get(*pos..).unwrap_or(&[]);
    let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
        if rest.len() > limits.max_header_length.saturating_add(1)
            || *pos + rest.len() > limits.max_frame_size
        {
            return Err(too_long(rest.len(), pos, limits));
        }
        return Ok(None);
    };
    let mut line = rest.get(..lf).unwrap_or(&[]);
    if let [head @ .., b'\r'] = line {
        line = head;
    }
    if line.len() > limits.max_header_length {
        return Err(DecodeError::HeaderTooLong {
            max: limits.max_header_length,
        });
    }
    *pos += lf + 1;
    Ok(Some(line))
}

fn too_long(len: usize, pos: &usize, limits: &Limits) -> DecodeError {
    if *pos + len > limits.max_frame_size {
        DecodeError::FrameTooLarge {
            max: limits.max_frame_size,
        }
    } else {
        DecodeError::HeaderTooLong {
            max: limits.max_header_length,
        }
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
