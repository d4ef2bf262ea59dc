//! The stream protocol's response codes (PROTOCOL.adoc, "Response Codes", plus the two SASL
//! codes that only `rabbit_stream.hrl` lists).

/// A response code: the `uint16` carried by responses, `PublishError`, `MetadataUpdate`,
/// the metadata of each stream, and as the closing code of `Close`.
///
/// Codes the spec does not list decode as [`ResponseCode::Other`], so that a newer peer's
/// code is passed through instead of failing the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResponseCode {
    /// 0x01
    Ok,
    /// 0x02
    StreamDoesNotExist,
    /// 0x03
    SubscriptionIdAlreadyExists,
    /// 0x04
    SubscriptionIdDoesNotExist,
    /// 0x05
    StreamAlreadyExists,
    /// 0x06
    StreamNotAvailable,
    /// 0x07
    SaslMechanismNotSupported,
    /// 0x08
    AuthenticationFailure,
    /// 0x09
    SaslError,
    /// 0x0a
    SaslChallenge,
    /// 0x0b
    SaslAuthenticationFailureLoopback,
    /// 0x0c
    VirtualHostAccessFailure,
    /// 0x0d: what a server closes with after a frame it cannot parse.
    UnknownFrame,
    /// 0x0e: what a server closes with after a frame over the negotiated maximum.
    FrameTooLarge,
    /// 0x0f
    InternalError,
    /// 0x10
    AccessRefused,
    /// 0x11
    PreconditionFailed,
    /// 0x12
    PublisherDoesNotExist,
    /// 0x13: `QueryOffset` for a reference that never stored an offset.
    NoOffset,
    /// 0x14 (`rabbit_stream.hrl`, RabbitMQ ≥ 4.1: re-authentication with another mechanism).
    SaslCannotChangeMechanism,
    /// 0x15 (`rabbit_stream.hrl`, RabbitMQ ≥ 4.1: re-authentication as another user).
    SaslCannotChangeUsername,
    /// Any other value.
    Other(u16),
}

impl ResponseCode {
    /// Every named code, in numeric order.
    pub const ALL: [ResponseCode; 21] = [
        ResponseCode::Ok,
        ResponseCode::StreamDoesNotExist,
        ResponseCode::SubscriptionIdAlreadyExists,
        ResponseCode::SubscriptionIdDoesNotExist,
        ResponseCode::StreamAlreadyExists,
        ResponseCode::StreamNotAvailable,
        ResponseCode::SaslMechanismNotSupported,
        ResponseCode::AuthenticationFailure,
        ResponseCode::SaslError,
        ResponseCode::SaslChallenge,
        ResponseCode::SaslAuthenticationFailureLoopback,
        ResponseCode::VirtualHostAccessFailure,
        ResponseCode::UnknownFrame,
        ResponseCode::FrameTooLarge,
        ResponseCode::InternalError,
        ResponseCode::AccessRefused,
        ResponseCode::PreconditionFailed,
        ResponseCode::PublisherDoesNotExist,
        ResponseCode::NoOffset,
        ResponseCode::SaslCannotChangeMechanism,
        ResponseCode::SaslCannotChangeUsername,
    ];

    pub fn code(self) -> u16 {
        match self {
            ResponseCode::Ok => 0x01,
            ResponseCode::StreamDoesNotExist => 0x02,
            ResponseCode::SubscriptionIdAlreadyExists => 0x03,
            ResponseCode::SubscriptionIdDoesNotExist => 0x04,
            ResponseCode::StreamAlreadyExists => 0x05,
            ResponseCode::StreamNotAvailable => 0x06,
            ResponseCode::SaslMechanismNotSupported => 0x07,
            ResponseCode::AuthenticationFailure => 0x08,
            ResponseCode::SaslError => 0x09,
            ResponseCode::SaslChallenge => 0x0a,
            ResponseCode::SaslAuthenticationFailureLoopback => 0x0b,
            ResponseCode::VirtualHostAccessFailure => 0x0c,
            ResponseCode::UnknownFrame => 0x0d,
            ResponseCode::FrameTooLarge => 0x0e,
            ResponseCode::InternalError => 0x0f,
            ResponseCode::AccessRefused => 0x10,
            ResponseCode::PreconditionFailed => 0x11,
            ResponseCode::PublisherDoesNotExist => 0x12,
            ResponseCode::NoOffset => 0x13,
            ResponseCode::SaslCannotChangeMechanism => 0x14,
            ResponseCode::SaslCannotChangeUsername => 0x15,
            ResponseCode::Other(code) => code,
        }
    }

    /// The named code for `code`, or [`ResponseCode::Other`]. `from_u16(c).code() == c` for
    /// every `c`.
    pub fn from_u16(code: u16) -> ResponseCode {
        match code {
            0x01..=0x15 => Self::ALL
                .get(usize::from(code - 1))
                .copied()
                .unwrap_or(ResponseCode::Other(code)),
            _ => ResponseCode::Other(code),
        }
    }

    pub fn is_ok(self) -> bool {
        self == ResponseCode::Ok
    }
}

impl From<u16> for ResponseCode {
    fn from(code: u16) -> Self {
        ResponseCode::from_u16(code)
    }
}

impl From<ResponseCode> for u16 {
    fn from(code: ResponseCode) -> Self {
        code.code()
    }
}

impl std::fmt::Display for ResponseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResponseCode::Other(c) => write!(f, "response code {c:#06x}"),
            named => write!(f, "{named:?} ({:#04x})", named.code()),
        }
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
    fn numbers_match_the_spec() {
        for (i, code) in ResponseCode::ALL.iter().enumerate() {
            assert_eq!(usize::from(code.code()), i + 1);
            assert_eq!(ResponseCode::from_u16(code.code()), *code);
        }
        assert_eq!(ResponseCode::UnknownFrame.code(), 0x0d);
        assert_eq!(ResponseCode::FrameTooLarge.code(), 0x0e);
        assert_eq!(ResponseCode::NoOffset.code(), 0x13);
        assert_eq!(ResponseCode::from_u16(0), ResponseCode::Other(0));
        assert_eq!(ResponseCode::from_u16(0x16), ResponseCode::Other(0x16));
        for c in 0..=u16::MAX {
            assert_eq!(ResponseCode::from_u16(c).code(), c);
        }
    }
}
