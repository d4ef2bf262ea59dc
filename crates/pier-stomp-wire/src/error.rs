//! Errors of the frame codec, and the ERROR frame a server sends for each.

use bytes::Bytes;

use crate::frame::Frame;

/// A frame that could not be decoded. Every decode error is fatal for the connection: the
/// 1.2 spec has the server send an ERROR frame and then close (§"ERROR"), and the byte
/// stream cannot be resynchronised after a bad frame anyway. [`DecodeError::error_frame`]
/// builds that ERROR.
///
/// What RabbitMQ 3.10.8 does, as captured in `tests/golden/rabbitmq-3.10.8.txt`: for an
/// unknown command it sends `ERROR` `message:Bad command` with the body
/// `Could not interpret command "FOO"` (and keeps reading); for a frame its parser refuses
/// (bad escape, header line without a colon, bare CR) it closes the socket without an
/// ERROR. 3.11+ also closes silently on a frame over `stomp.max_frame_size`.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The frame is, or will be, larger than the limit (found from `content-length`, or
    /// from the octets buffered without a NUL).
    #[error("frame larger than {max} bytes")]
    FrameTooLarge { max: usize },
    /// More header lines than the limit.
    #[error("more than {max} headers")]
    TooManyHeaders { max: usize },
    /// A command or header line longer than the limit.
    #[error("header line longer than {max} bytes")]
    HeaderTooLong { max: usize },
    /// Not one of the fifteen commands.
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    /// A CR not followed by LF (anywhere in 1.2; outside header values in 1.0/1.1).
    #[error("carriage return not followed by line feed")]
    BareCarriageReturn,
    /// A header line without a colon.
    #[error("header line without a colon: {0:?}")]
    HeaderWithoutColon(String),
    /// A header line starting with a colon.
    #[error("empty header name")]
    EmptyHeaderName,
    /// A backslash followed by something the version does not define (`\t`, `\r` in 1.1,
    /// or the end of the line).
    #[error("undefined escape sequence \\{}", char::from(*.0))]
    InvalidEscape(u8),
    /// A header name or value that is not UTF-8.
    #[error("header not UTF-8")]
    InvalidUtf8,
    /// A `content-length` that is not a decimal number.
    #[error("invalid content-length {0:?}")]
    InvalidContentLength(String),
    /// The octet after a `content-length` body is not NUL.
    #[error("frame body not followed by NUL")]
    MissingNul,
}

impl DecodeError {
    /// The `message` header of the ERROR frame for this error.
    pub fn message(&self) -> &'static str {
        match self {
            // RabbitMQ's text for a command it does not know.
            DecodeError::UnknownCommand(_) => "Bad command",
            DecodeError::FrameTooLarge { .. } => "Frame too large",
            _ => "Malformed frame",
        }
    }

    /// The ERROR frame a server sends before closing: `message`, `content-type:text/plain`,
    /// `version:1.0,1.1,1.2` and a one-line detail, in RabbitMQ's format
    /// ([`Frame::error`]); for an unknown command exactly RabbitMQ's frame.
    pub fn error_frame(&self) -> Frame {
        let detail = match self {
            DecodeError::UnknownCommand(c) => format!("Could not interpret command {c:?}\n"),
            other => format!("{other}\n"),
        };
        Frame::error(self.message(), Bytes::from(detail))
    }
}

/// A frame that cannot be encoded; nothing is written when it happens.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// `content-length` says one size and the body has another.
    #[error("content-length {header} but the body has {body} bytes")]
    ContentLengthMismatch { header: usize, body: usize },
    /// `content-length` is not a decimal number.
    #[error("invalid content-length header")]
    InvalidContentLength,
    /// The body has a NUL and no `content-length` says where it ends.
    #[error("body contains NUL but the frame has no content-length")]
    NulInBodyWithoutContentLength,
    /// A header with an empty name.
    #[error("empty header name")]
    EmptyHeaderName,
    /// A header that cannot be written in this version or frame: a line feed (or a colon in
    /// a name, or a trailing CR) where no escaping applies (1.0, CONNECT, CONNECTED), or a
    /// trailing CR in 1.1, which has no escape for it.
    #[error("header cannot be written without escaping: {0:?}")]
    Unescapable(String),
}
