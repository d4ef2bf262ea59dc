//! Topic names and filters (3.1.1 §4.7, 5.0 §4.7 and §4.8.2), and RabbitMQ's mapping
//! between MQTT topics and AMQP 0-9-1 routing keys on its topic exchange.
//!
//! ## The mapping (RabbitMQ 3.10.8 `rabbit_mqtt_util`, checked against the broker)
//!
//! | MQTT  | AMQP | note |
//! |-------|------|------|
//! | `/`   | `.`  | level separator ↔ word separator |
//! | `+`   | `*`  | single-level wildcard |
//! | `#`   | `#`  | multi-level wildcard, unchanged |
//! | `.`   | `.`  | **passed through**: a dot in an MQTT topic becomes a word separator |
//! | `*`   | `*`  | passed through into the routing key; mapped back to `+` for MQTT |
//!
//! The mapping is character by character and not injective: the MQTT topics `a/b` and
//! `a.b` both publish with routing key `a.b`, and an MQTT subscriber to `a/b` receives
//! messages published to MQTT topic `a.b` (as topic `a/b`). Empty levels survive (`/a/` ↔
//! `.a.`). With RabbitMQ's `mqtt.sparkplug = true`, a Sparkplug topic (`spBv1.0/...`) keeps
//! the dot of its namespace by turning it into `___` on the way in and back on the way out.

use crate::reason::ReasonCode;

/// Why a topic name or filter is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// A topic name or filter of zero length (§4.7.3).
    #[error("empty topic")]
    Empty,
    /// A topic name with `+` or `#` in it (§3.3.2.1).
    #[error("wildcard in a topic name")]
    WildcardInName,
    /// `+` or `#` not occupying a whole level, or `#` not the last level (§4.7.1).
    #[error("misplaced wildcard in a topic filter")]
    MisplacedWildcard,
    /// `$share/` without a share name, with a wildcard in it, or without a filter (§4.8.2).
    #[error("invalid shared subscription")]
    InvalidShare,
    /// Longer than 65,535 octets.
    #[error("topic longer than 65535 bytes")]
    TooLong,
}

impl TopicError {
    /// The 5.0 reason code for a bad topic name (0x90, in PUBACK/PUBREC or DISCONNECT).
    pub fn name_reason_code(self) -> ReasonCode {
        ReasonCode::TopicNameInvalid
    }

    /// The 5.0 reason code for a bad topic filter (0x8F, in SUBACK/UNSUBACK), or 0x9E when
    /// shared subscriptions are not supported and the filter is one.
    pub fn filter_reason_code(self) -> ReasonCode {
        ReasonCode::TopicFilterInvalid
    }
}

/// Checks a PUBLISH topic name: not empty, no wildcards. (A 5.0 PUBLISH may have an empty
/// topic name when it carries a topic alias; resolve the alias first.)
pub fn validate_topic_name(name: &str) -> Result<(), TopicError> {
    if name.is_empty() {
        return Err(TopicError::Empty);
    }
    if name.len() > usize::from(u16::MAX) {
        return Err(TopicError::TooLong);
    }
    if name.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Checks a topic filter: not empty, `+` alone in its level, `#` alone in the last level,
/// and a well-formed `$share/{name}/{filter}` (5.0 §4.8.2).
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    if filter.len() > usize::from(u16::MAX) {
        return Err(TopicError::TooLong);
    }
    let filter = match shared_subscription(filter) {
        Some(Ok((_, f))) => f,
        Some(Err(e)) => return Err(e),
        None => filter,
    };
    validate_plain_filter(filter)
}

fn validate_plain_filter(filter: &str) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        match level {
            "+" => {}
            "#" if last => {}
            l if l.contains(['+', '#']) => return Err(TopicError::MisplacedWildcard),
            _ => {}
        }
    }
    Ok(())
}

/// Splits a 5.0 shared subscription `$share/{ShareName}/{filter}`: `None` if `filter` is
/// not one, `Some(Err)` if it starts with `$share/` but is malformed.
pub fn shared_subscription(filter: &str) -> Option<Result<(&str, &str), TopicError>> {
    let rest = filter.strip_prefix("$share/")?;
    Some(match rest.split_once('/') {
        Some((name, f)) if !name.is_empty() && !name.contains(['+', '#']) && !f.is_empty() => {
            validate_plain_filter(f).map(|()| (name, f))
        }
        _ => Err(TopicError::InvalidShare),
    })
}

/// Topics starting with `$` (`$SYS/...`) are the server's: filters starting with a wildcard
/// do not match them (§4.7.2).
pub fn is_dollar_topic(name: &str) -> bool {
    name.starts_with('$')
}

/// Whether a valid topic filter matches a topic name (§4.7), `$` topics included.
pub fn topic_matches(filter: &str, name: &str) -> bool {
    if is_dollar_topic(name) && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut f = filter.split('/');
    let mut n = name.split('/');
    loop {
        match (f.next(), n.next()) {
            // `#` also matches the parent level: `a/#` matches `a`.
            (Some("#"), _) => return true,
            (Some(fl), Some(nl)) => {
                if fl != "+" && fl != nl {
                    return false;
                }
            }
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// RabbitMQ's translation of an MQTT topic name or filter to an AMQP routing or binding
/// key on the topic exchange: `/` → `.`, `+` → `*`; everything else, `.` and `#`
/// included, unchanged.
pub fn mqtt_to_amqp(topic: &str) -> String {
    topic
        .chars()
        .map(|c| match c {
            '/' => '.',
            '+' => '*',
            c => c,
        })
        .collect()
}

/// RabbitMQ's translation of an AMQP routing key to the MQTT topic a subscriber sees:
/// `*` → `+`, `.` → `/`.
pub fn amqp_to_mqtt(key: &str) -> String {
    key.chars()
        .map(|c| match c {
            '.' => '/',
            '*' => '+',
            c => c,
        })
        .collect()
}

/// [`mqtt_to_amqp`] with RabbitMQ's `mqtt.sparkplug = true`: a topic starting
/// `sp[AB]v<digits>.<digits>/` has that first dot turned into `___` first.
pub fn mqtt_to_amqp_sparkplug(topic: &str) -> String {
    match sparkplug_prefix(topic, ".", '/') {
        Some(dot) => {
            let (head, tail) = topic.split_at(dot);
            mqtt_to_amqp(&format!("{head}___{}", tail.get(1..).unwrap_or("")))
        }
        None => mqtt_to_amqp(topic),
    }
}

/// [`amqp_to_mqtt`] with `mqtt.sparkplug = true`: a key starting
/// `sp[AB]v<digits>___<digits>.` gets its first `___` back as a dot afterwards.
pub fn amqp_to_mqtt_sparkplug(key: &str) -> String {
    let mapped = amqp_to_mqtt(key);
    match sparkplug_prefix(key, "___", '.') {
        Some(_) => mapped.replacen("___", ".", 1),
        None => mapped,
    }
}

/// Where `sep` sits in a `sp[AB]v<digits>{sep}<digits>{end}` prefix of `s`.
fn sparkplug_prefix(s: &str, sep: &str, end: char) -> Option<usize> {
    let rest = s.strip_prefix("spAv").or_else(|| s.strip_prefix("spBv"))?;
    let major = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    if major == 0 {
        return None;
    }
    let after = rest.get(major..)?.strip_prefix(sep)?;
    let minor = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    if minor == 0 || !after.get(minor..)?.starts_with(end) {
        return None;
    }
    Some(4 + major)
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
    fn names() {
        assert!(validate_topic_name("a/b").is_ok());
        assert!(validate_topic_name("/").is_ok());
        assert!(validate_topic_name("$SYS/x").is_ok());
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
        assert_eq!(validate_topic_name("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a#"), Err(TopicError::WildcardInName));
        assert_eq!(
            validate_topic_name("a")
                .err()
                .map(TopicError::name_reason_code),
            None
        );
        assert_eq!(TopicError::Empty.name_reason_code().code(), 0x90);
    }

    #[test]
    fn filters() {
        for ok in [
            "#",
            "+",
            "a/#",
            "+/+",
            "/+",
            "a//b",
            "sport/+/player1",
            "+/tennis/#",
            "$share/g/a/+",
        ] {
            assert_eq!(validate_topic_filter(ok), Ok(()), "{ok}");
        }
        for (bad, e) in [
            ("", TopicError::Empty),
            ("a/#/b", TopicError::MisplacedWildcard),
            ("a#", TopicError::MisplacedWildcard),
            ("a/b+", TopicError::MisplacedWildcard),
            ("sport+", TopicError::MisplacedWildcard),
            ("$share/", TopicError::InvalidShare),
            ("$share//a", TopicError::InvalidShare),
            ("$share/g+/a", TopicError::InvalidShare),
            ("$share/g", TopicError::InvalidShare),
            ("$share/g/", TopicError::InvalidShare),
            ("$share/g/a#", TopicError::MisplacedWildcard),
        ] {
            assert_eq!(validate_topic_filter(bad), Err(e), "{bad}");
        }
        assert_eq!(TopicError::Empty.filter_reason_code().code(), 0x8F);
        assert_eq!(shared_subscription("$share/g/a/b"), Some(Ok(("g", "a/b"))));
        assert_eq!(shared_subscription("a/b"), None);
    }

    #[test]
    fn matching_spec_examples() {
        // §4.7.1.2 and §4.7.1.3 examples.
        assert!(topic_matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1"
        ));
        assert!(topic_matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1/ranking"
        ));
        assert!(topic_matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1/score/wimbledon"
        ));
        assert!(topic_matches("sport/#", "sport"));
        assert!(topic_matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(!topic_matches(
            "sport/tennis/+",
            "sport/tennis/player1/ranking"
        ));
        assert!(!topic_matches("sport/+", "sport"));
        assert!(topic_matches("sport/+", "sport/"));
        assert!(topic_matches("+/+", "/finance"));
        assert!(topic_matches("/+", "/finance"));
        assert!(!topic_matches("+", "/finance"));
        // §4.7.2: wildcards at the first level do not match `$` topics.
        assert!(!topic_matches("#", "$SYS/x"));
        assert!(!topic_matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(topic_matches("$SYS/#", "$SYS/monitor/Clients"));
        assert!(topic_matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
    }

    #[test]
    fn rabbitmq_mapping() {
        assert_eq!(mqtt_to_amqp("a/b/c"), "a.b.c");
        assert_eq!(mqtt_to_amqp("a/+/#"), "a.*.#");
        assert_eq!(mqtt_to_amqp("a.b/c"), "a.b.c");
        assert_eq!(mqtt_to_amqp("/a/"), ".a.");
        assert_eq!(amqp_to_mqtt("a.b.c"), "a/b/c");
        assert_eq!(amqp_to_mqtt("a.*.#"), "a/+/#");
        assert_eq!(amqp_to_mqtt(".a."), "/a/");
        assert_eq!(
            mqtt_to_amqp_sparkplug("spBv1.0/g/NDATA/n"),
            "spBv1___0.g.NDATA.n"
        );
        assert_eq!(
            amqp_to_mqtt_sparkplug("spBv1___0.g.NDATA.n"),
            "spBv1.0/g/NDATA/n"
        );
        assert_eq!(mqtt_to_amqp_sparkplug("spBv1.0"), "spBv1.0");
        assert_eq!(mqtt_to_amqp_sparkplug("spCv1.0/a"), "spCv1.0.a");
        assert_eq!(mqtt_to_amqp_sparkplug("a.b/c"), "a.b.c");
        assert_eq!(amqp_to_mqtt_sparkplug("a.b"), "a/b");
    }
}
