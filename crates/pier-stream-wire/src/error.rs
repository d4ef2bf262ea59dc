//! Errors of the frame codec, and what a server answers to each.

use crate::buf::Short;
use crate::response_code::ResponseCode;

/// A frame that could not be decoded.
///
/// Every decode error is fatal for the connection: the byte stream cannot be trusted after
/// it. What RabbitMQ's stream plugin (`rabbit_stream_reader`) does, and so what a Pier stream
/// server should do:
///
/// * **after authentication**: send `Close` with [`DecodeError::close_code`] (13 *unknown
///   frame*, or 14 *frame too large*) and [`DecodeError::close_reason`], ignore everything
///   the peer sends after that except the close response, then drop the socket;
/// * **before authentication** (before a successful `Open`): drop the socket without a
///   `Close`.
///
/// RabbitMQ parses command by command with binary pattern matches, so an unknown key, an
/// unsupported version, a truncated or over-long body and a bad enum value all end the same
/// way (`{unknown, Bin}` → close 13); the variants here only say more about why.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The size prefix is over the negotiated maximum frame size.
    #[error("frame too large: {size} bytes, max frame size is {max}")]
    FrameTooLarge { size: u32, max: u32 },
    /// The frame is too small to hold a key and a version.
    #[error("frame of {size} bytes has no room for key and version")]
    FrameTooSmall { size: u32 },
    /// The key names no command (or a command this direction never sends).
    #[error("unknown command key {key:#06x}")]
    UnknownCommand { key: u16 },
    /// The command exists but not in this version.
    #[error("unsupported version {version} of command key {key:#06x}")]
    UnsupportedVersion { key: u16, version: u16 },
    /// A field ran past the end of the frame.
    #[error("truncated {context}")]
    Truncated { context: &'static str },
    /// Bytes were left in the frame after the last field.
    #[error("{count} trailing byte(s) after {context}")]
    TrailingBytes { context: &'static str, count: usize },
    /// A string was not UTF-8.
    #[error("malformed UTF-8 in {context}")]
    InvalidUtf8 { context: &'static str },
    /// A field held a value its type does not allow (an offset type, a boolean octet, a
    /// negative length).
    #[error("invalid {context}: {value}")]
    InvalidValue { context: &'static str, value: i64 },
    /// An array count cannot fit in the rest of the frame (checked before allocating).
    #[error("{context} count {count} does not fit in the frame")]
    CountTooLarge { context: &'static str, count: u32 },
}

impl DecodeError {
    /// The code of the `Close` a server sends for this error (after authentication).
    pub fn close_code(&self) -> ResponseCode {
        match self {
            DecodeError::FrameTooLarge { .. } => ResponseCode::FrameTooLarge,
            _ => ResponseCode::UnknownFrame,
        }
    }

    /// The reason RabbitMQ puts in that `Close`.
    pub fn close_reason(&self) -> &'static str {
        match self {
            DecodeError::FrameTooLarge { .. } => "frame too large",
            _ => "unknown frame",
        }
    }

    /// The whole `Close` RabbitMQ sends for this error: its code and reason, correlation id
    /// 1 (RabbitMQ's reader uses 1 for every server-initiated close).
    pub fn close_command(&self) -> crate::commands::ServerCommand {
        crate::commands::ServerCommand::Close(crate::commands::Close {
            correlation_id: 1,
            code: self.close_code(),
            reason: self.close_reason().to_string(),
        })
    }
}

impl From<Short> for DecodeError {
    fn from(s: Short) -> Self {
        DecodeError::Truncated { context: s.context }
    }
}

/// A command that cannot be encoded (a bug or bad input on the encoding side; nothing is
/// written when it happens).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// A string longer than `i16::MAX` bytes (the protocol's string length is an `int16`).
    #[error("string too long for an int16 length: {0} bytes")]
    StringTooLong(usize),
    /// A blob or frame longer than the protocol can express.
    #[error("value too long to encode: {0} bytes")]
    TooLong(usize),
    /// An array with more than `i32::MAX` elements (or than its count field allows).
    #[error("too many elements in {context}: {count}")]
    TooManyElements { context: &'static str, count: usize },
    /// A value a field cannot carry (e.g. a filter value in a version 1 `Publish`).
    #[error("cannot encode {0}")]
    Invalid(&'static str),
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
    fn close_codes() {
        let big = DecodeError::FrameTooLarge { size: 9, max: 8 };
        assert_eq!(big.close_code(), ResponseCode::FrameTooLarge);
        assert_eq!(big.close_code().code(), 14);
        assert_eq!(big.close_reason(), "frame too large");
        for e in [
            DecodeError::FrameTooSmall { size: 2 },
            DecodeError::UnknownCommand { key: 0x7fff },
            DecodeError::UnsupportedVersion { key: 1, version: 9 },
            DecodeError::Truncated { context: "x" },
            DecodeError::TrailingBytes {
                context: "x",
                count: 1,
            },
            DecodeError::InvalidUtf8 { context: "x" },
            DecodeError::InvalidValue {
                context: "x",
                value: 7,
            },
            DecodeError::CountTooLarge {
                context: "x",
                count: 7,
            },
        ] {
            assert_eq!(e.close_code().code(), 13, "{e}");
            assert_eq!(e.close_reason(), "unknown frame");
        }
    }
}
