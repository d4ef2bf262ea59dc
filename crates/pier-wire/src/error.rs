//! Codec errors and the AMQP reply code each one maps to.

use crate::reply_code;

/// Everything that can go wrong while decoding (or, rarely, encoding) AMQP 0-9-1.
///
/// Every decoding error is fatal for the connection: once a frame could not be parsed the
/// byte stream is out of sync. [`WireError::reply_code`] tells which code to put in the
/// `connection.close` sent before dropping the socket.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum WireError {
    // ---- frame level -------------------------------------------------------------------
    /// The octet after the frame payload was not `0xCE`.
    #[error("invalid frame end marker {0:#04x}")]
    BadFrameEnd(u8),
    /// The frame header announced a frame bigger than the negotiated `frame_max`.
    /// `size` is the whole frame (payload + 8 octets of overhead).
    #[error("frame too large: {size} octets, frame_max is {max}")]
    FrameTooLarge { size: u64, max: u32 },
    /// The frame type octet is not method (1), header (2), body (3) or heartbeat (8).
    #[error("unknown frame type {0}")]
    UnknownFrameType(u8),
    /// A frame whose payload cannot be what its type requires (e.g. a heartbeat with a payload).
    #[error("malformed frame: {context}")]
    MalformedFrame { context: &'static str },

    // ---- payload level -----------------------------------------------------------------
    /// A method, header or field ran past the end of its frame (or of its enclosing table).
    #[error("truncated {context}")]
    Truncated { context: &'static str },
    /// Bytes were left over after the last argument of a method / the last property.
    #[error("{count} trailing octet(s) after {context}")]
    TrailingBytes { context: &'static str, count: usize },
    /// The class id of a method frame is not a class of AMQP 0-9-1.
    #[error("unknown class id {class_id} (method id {method_id})")]
    UnknownClass { class_id: u16, method_id: u16 },
    /// The class is known but the method id is not.
    #[error("unknown method id {class_id}/{method_id}")]
    UnknownMethod { class_id: u16, method_id: u16 },
    /// A field table / array held a value type tag this codec does not know.
    #[error("unknown field value type {:?} ({:#04x})", char::from(*.0), .0)]
    UnknownFieldType(u8),
    /// A short string (method argument, property, table key) was not valid UTF-8.
    #[error("malformed UTF-8 in shortstr")]
    InvalidUtf8,
    /// Tables / arrays nested deeper than [`crate::MAX_NESTING_DEPTH`].
    #[error("field tables/arrays nested too deeply (limit {limit})")]
    NestingTooDeep { limit: usize },

    // ---- encode side (programming errors on our side) ------------------------------------
    /// A short string longer than 255 bytes was about to be encoded (or built with
    /// [`crate::ShortString::try_from_string`]).
    #[error("shortstr too long: {0} bytes (max 255)")]
    ShortStringTooLong(usize),
    /// A long string, table or array longer than `u32::MAX` bytes was about to be encoded.
    #[error("value too long to encode: {0} bytes")]
    LongValueTooLong(usize),
}

impl WireError {
    /// The AMQP reply code to close the connection with for this error.
    ///
    /// * Framing and payload problems map to `501 FRAME_ERROR`, as RabbitMQ does
    ///   (`rabbit_reader:frame_error/5` for bad frame ends, oversize frames and unknown frame
    ///   types; `rabbit_misc:frame_error/2` — "cannot decode" — for method arguments that do
    ///   not parse, and `assert_utf8` for malformed short strings).
    /// * An unknown class or method maps to `540 NOT_IMPLEMENTED`. (RabbitMQ's generated
    ///   `lookup_method_name/1` exits with `unknown_method_id`, which is not an AMQP error and
    ///   ends the connection without a `connection.close`; Pier sends a proper close instead,
    ///   using the code the AMQP spec reserves for functionality the server does not have.)
    /// * Encode-side errors are Pier's own bugs: `541 INTERNAL_ERROR`.
    pub fn reply_code(&self) -> u16 {
        match self {
            WireError::BadFrameEnd(_)
            | WireError::FrameTooLarge { .. }
            | WireError::UnknownFrameType(_)
            | WireError::MalformedFrame { .. }
            | WireError::Truncated { .. }
            | WireError::TrailingBytes { .. }
            | WireError::UnknownFieldType(_)
            | WireError::InvalidUtf8
            | WireError::NestingTooDeep { .. } => reply_code::FRAME_ERROR,
            WireError::UnknownClass { .. } | WireError::UnknownMethod { .. } => {
                reply_code::NOT_IMPLEMENTED
            }
            WireError::ShortStringTooLong(_) | WireError::LongValueTooLong(_) => {
                reply_code::INTERNAL_ERROR
            }
        }
    }

    /// `true` for errors detected while parsing the 7-octet frame header or frame end, i.e.
    /// before the payload was looked at.
    pub fn is_framing_error(&self) -> bool {
        matches!(
            self,
            WireError::BadFrameEnd(_)
                | WireError::FrameTooLarge { .. }
                | WireError::UnknownFrameType(_)
                | WireError::MalformedFrame { .. }
        )
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

    #[test]
    fn reply_codes() {
        assert_eq!(WireError::BadFrameEnd(0).reply_code(), 501);
        assert_eq!(
            WireError::FrameTooLarge { size: 1, max: 0 }.reply_code(),
            501
        );
        assert_eq!(WireError::UnknownFrameType(9).reply_code(), 501);
        assert_eq!(WireError::Truncated { context: "x" }.reply_code(), 501);
        assert_eq!(WireError::InvalidUtf8.reply_code(), 501);
        assert_eq!(WireError::UnknownFieldType(b'Z').reply_code(), 501);
        assert_eq!(
            WireError::UnknownMethod {
                class_id: 60,
                method_id: 999
            }
            .reply_code(),
            540
        );
        assert_eq!(
            WireError::UnknownClass {
                class_id: 61,
                method_id: 1
            }
            .reply_code(),
            540
        );
        assert_eq!(WireError::ShortStringTooLong(300).reply_code(), 541);
    }

    #[test]
    fn display_is_informative() {
        assert_eq!(
            WireError::UnknownFieldType(b'Z').to_string(),
            "unknown field value type 'Z' (0x5a)"
        );
        assert_eq!(
            WireError::FrameTooLarge {
                size: 200_000,
                max: 131_072
            }
            .to_string(),
            "frame too large: 200000 octets, frame_max is 131072"
        );
    }
}
