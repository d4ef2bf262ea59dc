//! STOMP destinations as RabbitMQ's STOMP plugin reads them (`rabbit_routing_util`):
//!
//! ```text
//!  /queue/<q>            declare durable queue q; SEND: default exchange, key q
//!  /amq/queue/<q>        existing queue q (no declare); SEND: default exchange, key q
//!  /topic/<key>          amq.topic with key; SUBSCRIBE: a queue bound to it
//!  /exchange/<x>[/<key>] exchange x with key ("" when absent)
//!  /temp-queue/<n>       SEND / reply-to only: this session's exclusive reply queue n
//!  /reply-queue/<q>      SEND only: default exchange, key q (a reply address)
//! ```
//!
//! Names are percent-decoded (`%2F` is a `/` inside a name), as RabbitMQ does.

use base64::Engine;
use md5::{Digest, Md5};

/// The exchange `/topic/` destinations use (RabbitMQ's `default_topic_exchange`).
pub const TOPIC_EXCHANGE: &str = "amq.topic";

/// A parsed destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Queue(String),
    AmqQueue(String),
    Topic(String),
    Exchange { name: String, key: Option<String> },
    TempQueue(String),
    ReplyQueue(String),
}

/// Why a destination was refused, with RabbitMQ's ERROR texts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestinationError {
    /// Not one of the prefixes.
    Unknown(String),
    /// A known prefix with a malformed name: the kind (`queue`, `amqqueue`, `topic`,
    /// `exchange`, `reply_queue`, `temp_queue`) and what follows the prefix.
    Invalid { kind: &'static str, rest: String },
}

impl DestinationError {
    /// The ERROR frame's `message` header and body, as RabbitMQ 3.10 writes them.
    pub fn message_and_detail(&self) -> (&'static str, String) {
        match self {
            DestinationError::Unknown(d) => (
                "Unknown destination",
                format!(
                    "'{d}' is not a valid destination.\nValid destination types are: \
                     /temp-queue, /exchange, /topic, /queue, /amq/queue, /reply-queue/.\n"
                ),
            ),
            DestinationError::Invalid { kind, rest } => (
                "Invalid destination",
                format!("'{rest}' is not a valid {kind} destination\n"),
            ),
        }
    }
}

impl Destination {
    pub fn parse(s: &str) -> Result<Destination, DestinationError> {
        const KINDS: [(&str, &str); 6] = [
            ("/amq/queue", "amqqueue"),
            ("/queue", "queue"),
            ("/topic", "topic"),
            ("/exchange", "exchange"),
            ("/temp-queue", "temp_queue"),
            ("/reply-queue", "reply_queue"),
        ];
        let Some((prefix, kind)) = KINDS
            .iter()
            .find(|(p, _)| s.strip_prefix(p).is_some_and(|r| r.starts_with('/')))
        else {
            return Err(DestinationError::Unknown(s.to_owned()));
        };
        // `rest` starts with the '/' after the prefix; RabbitMQ shows it so when refusing.
        let rest = s.get(prefix.len()..).unwrap_or_default();
        let invalid = || DestinationError::Invalid {
            kind,
            rest: rest.to_owned(),
        };
        let parts: Vec<&str> = rest.get(1..).unwrap_or_default().split('/').collect();
        let name = |p: &str| -> Result<String, DestinationError> {
            if p.is_empty() {
                return Err(invalid());
            }
            unescape(p).ok_or_else(invalid)
        };
        match (*kind, parts.as_slice()) {
            ("queue", [q]) => Ok(Destination::Queue(name(q)?)),
            ("amqqueue", [q]) => Ok(Destination::AmqQueue(name(q)?)),
            ("topic", [k]) => Ok(Destination::Topic(name(k)?)),
            ("exchange", [x]) => Ok(Destination::Exchange {
                name: name(x)?,
                key: None,
            }),
            ("exchange", [x, k]) => Ok(Destination::Exchange {
                name: name(x)?,
                key: Some(unescape(k).ok_or_else(invalid)?),
            }),
            ("temp_queue", [n]) => Ok(Destination::TempQueue(name(n)?)),
            // The name is what the broker gave: taken as it is.
            ("reply_queue", _) if rest.len() > 1 => Ok(Destination::ReplyQueue(
                rest.get(1..).unwrap_or_default().to_owned(),
            )),
            _ => Err(invalid()),
        }
    }

    /// The exchange and routing key a SEND to this destination publishes with (for
    /// `/temp-queue/` the caller substitutes the session's queue name).
    pub fn publish_target(&self) -> (&str, &str) {
        match self {
            Destination::Queue(q) | Destination::AmqQueue(q) | Destination::ReplyQueue(q) => {
                ("", q)
            }
            Destination::TempQueue(q) => ("", q),
            Destination::Topic(k) => (TOPIC_EXCHANGE, k),
            Destination::Exchange { name, key } => (name, key.as_deref().unwrap_or("")),
        }
    }
}

/// Percent-decoding of a destination part; `None` for a bad escape or non-UTF-8 result.
fn unescape(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The queue a `/topic/` or `/exchange/` subscription consumes from, named as RabbitMQ names
/// it (`rabbit_stomp_util:subscription_queue_name`): `stomp-subscription-` and the
/// URL-safe base64 of the MD5 of Erlang's external term format of `{Name, Id}`, both as
/// strings (lists of bytes), where `Name` is the routing key part of the destination. So a
/// durable subscription made on RabbitMQ finds the same queue on Pier.
pub fn subscription_queue_name(name: &str, id: &str) -> String {
    let mut t = vec![131u8, 104, 2];
    erlang_string(&mut t, name.as_bytes());
    erlang_string(&mut t, id.as_bytes());
    let digest = Md5::digest(&t);
    format!(
        "stomp-subscription-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
    )
}

/// An Erlang list of bytes in external term format: `NIL_EXT` when empty, `STRING_EXT`
/// up to 65535 bytes, `LIST_EXT` of small integers beyond.
fn erlang_string(out: &mut Vec<u8>, s: &[u8]) {
    if s.is_empty() {
        out.push(106);
    } else if let Ok(n) = u16::try_from(s.len()) {
        out.push(107);
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(s);
    } else {
        out.push(108);
        out.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_be_bytes());
        for &c in s {
            out.extend_from_slice(&[97, c]);
        }
        out.push(106);
    }
}

/// The `reply-to` a MESSAGE shows: an address that is not a destination (an AMQP client's
/// queue name) becomes `/reply-queue/<name>`, as RabbitMQ writes it.
pub fn reply_to_for_message(reply_to: &str) -> String {
    if reply_to.starts_with('/') {
        reply_to.to_owned()
    } else {
        format!("/reply-queue/{reply_to}")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_every_kind() {
        assert_eq!(
            Destination::parse("/queue/a").unwrap(),
            Destination::Queue("a".into())
        );
        assert_eq!(
            Destination::parse("/amq/queue/a.b").unwrap(),
            Destination::AmqQueue("a.b".into())
        );
        assert_eq!(
            Destination::parse("/topic/a.*.c").unwrap(),
            Destination::Topic("a.*.c".into())
        );
        assert_eq!(
            Destination::parse("/exchange/amq.fanout").unwrap(),
            Destination::Exchange {
                name: "amq.fanout".into(),
                key: None
            }
        );
        assert_eq!(
            Destination::parse("/exchange/x/k").unwrap(),
            Destination::Exchange {
                name: "x".into(),
                key: Some("k".into())
            }
        );
        assert_eq!(
            Destination::parse("/temp-queue/r").unwrap(),
            Destination::TempQueue("r".into())
        );
        assert_eq!(
            Destination::parse("/reply-queue/amq.gen-x").unwrap(),
            Destination::ReplyQueue("amq.gen-x".into())
        );
        assert_eq!(
            Destination::parse("/queue/a%2Fb").unwrap(),
            Destination::Queue("a/b".into())
        );
    }

    #[test]
    fn refuses_unknown_and_malformed() {
        for d in [
            "/foo/bar",
            "/queue/",
            "/queue",
            "/queue/a/b",
            "queue/a",
            "",
            "/exchange/",
            "/queue/%zz",
            "/topic/",
        ] {
            assert!(Destination::parse(d).is_err(), "{d}");
        }
        let (msg, body) = Destination::parse("/foo/bar")
            .unwrap_err()
            .message_and_detail();
        assert_eq!(msg, "Unknown destination");
        assert!(body.starts_with("'/foo/bar' is not a valid destination.\n"));
    }

    #[test]
    fn arbitrary_input_never_panics() {
        // A parser of peer input: generated strings over the characters that matter.
        let alphabet: Vec<char> = "/%qeuamtopicxhngrly-2F0zé\u{0}".chars().collect();
        let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
        for _ in 0..20_000 {
            let len = (seed % 24) as usize;
            let mut s = String::new();
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                s.push(alphabet[(seed >> 11) as usize % alphabet.len()]);
            }
            if let Ok(d) = Destination::parse(&s) {
                let _ = d.publish_target();
            }
            let _ = subscription_queue_name(&s, &s);
        }
    }

    #[test]
    fn publish_targets() {
        assert_eq!(
            Destination::parse("/queue/a").unwrap().publish_target(),
            ("", "a")
        );
        assert_eq!(
            Destination::parse("/topic/t").unwrap().publish_target(),
            ("amq.topic", "t")
        );
        assert_eq!(
            Destination::parse("/exchange/x").unwrap().publish_target(),
            ("x", "")
        );
    }

    #[test]
    fn subscription_queue_name_is_rabbitmqs() {
        // Observed on RabbitMQ 3.10.8: SUBSCRIBE /topic/probe.t, id:dsub, durable:true.
        assert_eq!(
            subscription_queue_name("probe.t", "dsub"),
            "stomp-subscription-duK4PsP03mrB6UpO00pgOQ"
        );
    }

    #[test]
    fn reply_to_rewrite() {
        assert_eq!(reply_to_for_message("amq.gen-1"), "/reply-queue/amq.gen-1");
        assert_eq!(reply_to_for_message("/queue/x"), "/queue/x");
    }
}
