//! AMQP string types: `shortstr` ([`ShortString`]) and `longstr` ([`LongString`]).

use std::borrow::{Borrow, Cow};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

use bytes::Bytes;

use crate::error::WireError;

/// Maximum length of a `shortstr` in bytes.
pub const SHORT_STRING_MAX: usize = 255;

/// A UTF-8 `shortstr` (at most 255 bytes), zero-copy over [`Bytes`].
///
/// Values decoded off the wire are always valid (UTF-8 is checked, the length octet bounds
/// the size). For values built in Pier:
///
/// * [`ShortString::try_from_string`] / [`ShortString::try_from_bytes`] check the length and
///   are the constructors to use for anything a client controls;
/// * `From<&str>` / `From<String>` / [`ShortString::from_static`] are meant for trusted, short
///   strings: they `debug_assert!` the length and never truncate. If an over-long value slips
///   through in a release build, the encoders refuse it: the `try_encode*` functions return
///   [`WireError::ShortStringTooLong`] and the infallible `encode*` functions write nothing
///   (and `debug_assert!`). Nothing is ever truncated or mis-framed;
/// * [`ShortString::truncated`] explicitly shortens a message (e.g. a `reply-text` that embeds
///   a 255-byte queue name) to fit, at a char boundary, the way RabbitMQ trims its reply texts.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ShortString(Bytes);

impl ShortString {
    /// A `shortstr` from a string literal (no copy).
    pub fn from_static(s: &'static str) -> Self {
        debug_assert!(
            s.len() <= SHORT_STRING_MAX,
            "shortstr longer than 255 bytes"
        );
        ShortString(Bytes::from_static(s.as_bytes()))
    }

    /// The string. (Re-validates UTF-8, at most 255 bytes: there is no `unsafe` in Pier.)
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The underlying buffer (shared, no copy).
    pub fn as_shared_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Checked constructor for client-controlled data: errors if longer than 255 bytes.
    pub fn try_from_string(s: String) -> Result<Self, WireError> {
        if s.len() > SHORT_STRING_MAX {
            return Err(WireError::ShortStringTooLong(s.len()));
        }
        Ok(ShortString(Bytes::from(s)))
    }

    /// Checked constructor from raw bytes: errors if longer than 255 bytes or not UTF-8.
    pub fn try_from_bytes(b: Bytes) -> Result<Self, WireError> {
        if b.len() > SHORT_STRING_MAX {
            return Err(WireError::ShortStringTooLong(b.len()));
        }
        Self::from_utf8_bytes(b)
    }

    /// UTF-8 check only (the caller bounded the length).
    pub(crate) fn from_utf8_bytes(b: Bytes) -> Result<Self, WireError> {
        match std::str::from_utf8(&b) {
            Ok(_) => Ok(ShortString(b)),
            Err(_) => Err(WireError::InvalidUtf8),
        }
    }

    /// Builds a `shortstr` from `s`, cutting it (at a char boundary) to at most 255 bytes if
    /// needed, ending with `"..."` when cut. For human-readable texts only (reply texts).
    pub fn truncated(s: &str) -> Self {
        if s.len() <= SHORT_STRING_MAX {
            return ShortString(Bytes::copy_from_slice(s.as_bytes()));
        }
        let mut end = SHORT_STRING_MAX - 3;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        let mut owned = String::with_capacity(end + 3);
        owned.push_str(s.get(..end).unwrap_or_default());
        owned.push_str("...");
        ShortString(Bytes::from(owned))
    }

    #[cfg(test)]
    pub(crate) fn unchecked_for_tests(b: Bytes) -> Self {
        ShortString(b)
    }

    /// `true` when the value fits in a `shortstr` (always, unless built through the
    /// unchecked `From` impls from an over-long string).
    pub fn is_valid_length(&self) -> bool {
        self.0.len() <= SHORT_STRING_MAX
    }
}

impl Hash for ShortString {
    // Hash as `str` so that `Borrow<str>` lookups in hash maps work.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl Deref for ShortString {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for ShortString {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for ShortString {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<[u8]> for ShortString {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for ShortString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for ShortString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// For trusted, short strings only (`debug_assert!`s the length; never truncates).
impl From<&str> for ShortString {
    fn from(s: &str) -> Self {
        debug_assert!(
            s.len() <= SHORT_STRING_MAX,
            "shortstr longer than 255 bytes"
        );
        ShortString(Bytes::copy_from_slice(s.as_bytes()))
    }
}

/// For trusted, short strings only (`debug_assert!`s the length; never truncates).
impl From<String> for ShortString {
    fn from(s: String) -> Self {
        debug_assert!(
            s.len() <= SHORT_STRING_MAX,
            "shortstr longer than 255 bytes"
        );
        ShortString(Bytes::from(s))
    }
}

impl From<&ShortString> for ShortString {
    fn from(s: &ShortString) -> Self {
        s.clone()
    }
}

impl PartialEq<str> for ShortString {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for ShortString {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<ShortString> for str {
    fn eq(&self, other: &ShortString) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<ShortString> for &str {
    fn eq(&self, other: &ShortString) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

/// A `longstr`: arbitrary bytes (not necessarily UTF-8), zero-copy.
#[derive(Clone, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct LongString(pub Bytes);

impl LongString {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The bytes as text, replacing invalid UTF-8 sequences.
    pub fn to_str_lossy(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.0)
    }

    /// The bytes as text if they are valid UTF-8.
    pub fn to_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for LongString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.to_str_lossy(), f)
    }
}

impl From<&str> for LongString {
    fn from(s: &str) -> Self {
        LongString(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<String> for LongString {
    fn from(s: String) -> Self {
        LongString(Bytes::from(s))
    }
}

impl From<Vec<u8>> for LongString {
    fn from(v: Vec<u8>) -> Self {
        LongString(Bytes::from(v))
    }
}

impl From<&[u8]> for LongString {
    fn from(v: &[u8]) -> Self {
        LongString(Bytes::copy_from_slice(v))
    }
}

impl From<Bytes> for LongString {
    fn from(b: Bytes) -> Self {
        LongString(b)
    }
}

impl AsRef<[u8]> for LongString {
    fn as_ref(&self) -> &[u8] {
        &self.0
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
    use std::collections::{BTreeMap, HashMap};

    #[test]
    fn short_string_basics() {
        let s = ShortString::from("amq.direct");
        assert_eq!(s.as_str(), "amq.direct");
        assert_eq!(s.len(), 10);
        assert!(!s.is_empty());
        assert_eq!(format!("{s}"), "amq.direct");
        assert_eq!(format!("{s:?}"), "\"amq.direct\"");
        assert!(s.starts_with("amq.")); // via Deref<Target = str>
        assert_eq!(s, "amq.direct");
        assert!(ShortString::default().is_empty());
    }

    #[test]
    fn borrow_lookups_work_in_maps() {
        let mut h = HashMap::new();
        h.insert(ShortString::from("k"), 1);
        assert_eq!(h.get("k"), Some(&1));
        let mut b = BTreeMap::new();
        b.insert(ShortString::from("b"), 2);
        b.insert(ShortString::from("a"), 1);
        assert_eq!(b.get("b"), Some(&2));
        assert_eq!(b.keys().next().unwrap().as_str(), "a");
    }

    #[test]
    fn try_from_checks_length() {
        assert!(ShortString::try_from_string("x".repeat(255)).is_ok());
        assert_eq!(
            ShortString::try_from_string("x".repeat(256)),
            Err(WireError::ShortStringTooLong(256))
        );
        assert_eq!(
            ShortString::try_from_bytes(Bytes::from_static(b"\xff\xfe")),
            Err(WireError::InvalidUtf8)
        );
    }

    #[test]
    fn truncated_respects_char_boundaries() {
        let s = "é".repeat(200); // 400 bytes
        let t = ShortString::truncated(&s);
        assert!(t.len() <= 255);
        assert!(t.as_str().ends_with("..."));
        assert!(t.as_str().starts_with("éé"));
        assert_eq!(ShortString::truncated("short").as_str(), "short");
    }

    #[test]
    fn long_string_lossy() {
        let l = LongString::from(vec![b'h', b'i', 0xff]);
        assert_eq!(l.to_str_lossy(), "hi\u{fffd}");
        assert_eq!(l.to_str(), None);
        assert_eq!(format!("{l:?}"), "\"hi\u{fffd}\"");
        assert_eq!(LongString::from("PLAIN").to_str(), Some("PLAIN"));
    }
}
