//! STOMP headers ⇄ the broker's protocol-neutral message properties, as RabbitMQ's STOMP
//! plugin maps them (`rabbit_stomp_util`):
//!
//! ```text
//!  content-type ⇄ content_type      content-encoding ⇄ content_encoding
//!  persistent:true ⇄ delivery_mode 2   priority ⇄ priority   correlation-id ⇄ correlation_id
//!  reply-to ⇄ reply_to (MESSAGE: /reply-queue/<q> for a bare queue name)
//!  expiration ⇄ expiration   amqp-message-id ⇄ message_id   timestamp ⇄ timestamp
//!  type ⇄ type   user-id ⇄ user_id   app-id ⇄ app_id
//!  any other header ⇄ an AMQP header (longstr; integers shown in decimal on MESSAGE)
//! ```

use pier_broker::message::Properties;
use pier_stomp_wire::Headers;
use pier_wire::{FieldTable, FieldValue, LongString, ShortString};

use super::destinations::reply_to_for_message;

/// Headers of a SEND that are not copied into the AMQP headers table.
const NOT_USER_HEADERS: &[&str] = &[
    "destination",
    "content-length",
    "message-id",
    "content-type",
    "content-encoding",
    "persistent",
    "priority",
    "correlation-id",
    "reply-to",
    "expiration",
    "amqp-message-id",
    "timestamp",
    "type",
    "user-id",
    "app-id",
];

/// Headers a MESSAGE sets itself: AMQP headers of these names are not shown.
const MESSAGE_OWN_HEADERS: &[&str] = &[
    "subscription",
    "destination",
    "message-id",
    "redelivered",
    "ack",
    "content-length",
];

/// Why a SEND's headers were refused (RabbitMQ's "Invalid header" ERROR body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderError(pub String);

/// The AMQP properties of a SEND. `reply_to` is passed through `rewrite_reply_to` (the
/// caller turns `/temp-queue/...` into its reply queue's name).
pub fn properties_from_send(
    headers: &Headers,
    rewrite_reply_to: impl FnOnce(&str) -> String,
) -> Result<Properties, HeaderError> {
    if headers.get("message-id").is_some() {
        return Err(HeaderError(
            "'message-id' is not allowed on 'SEND'.\n".to_owned(),
        ));
    }
    let s = |name: &str| headers.get(name).map(ShortString::truncated);
    let int =
        |name: &str| -> Result<Option<i64>, HeaderError> {
            match headers.get(name) {
                None => Ok(None),
                Some(v) => v.trim().parse::<i64>().map(Some).map_err(|_| {
                    HeaderError(format!("Invalid header value for '{name}': '{v}'\n"))
                }),
            }
        };
    let priority = int("priority")?.map(|p| u8::try_from(p.clamp(0, 255)).unwrap_or(0));
    let timestamp = int("timestamp")?.map(|t| u64::try_from(t).unwrap_or(0));
    let mut table = FieldTable::new();
    for (k, v) in headers.iter() {
        if NOT_USER_HEADERS.contains(&k) || table.contains_key(k) {
            continue;
        }
        table.insert(
            ShortString::truncated(k),
            FieldValue::LongString(LongString::from(v)),
        );
    }
    Ok(Properties {
        content_type: s("content-type"),
        content_encoding: s("content-encoding"),
        headers: (!table.is_empty()).then_some(table),
        delivery_mode: (headers.get("persistent") == Some("true")).then_some(2),
        priority,
        correlation_id: s("correlation-id"),
        reply_to: headers
            .get("reply-to")
            .map(|r| ShortString::truncated(&rewrite_reply_to(r))),
        expiration: s("expiration"),
        message_id: s("amqp-message-id"),
        timestamp,
        kind: s("type"),
        user_id: s("user-id"),
        app_id: s("app-id"),
        cluster_id: None,
    })
}

/// Appends the headers a MESSAGE carries for `props` after its own (subscription,
/// destination, message-id, redelivered, ack), in RabbitMQ's order.
pub fn message_headers(props: &Properties, out: &mut Headers) {
    if let Some(table) = &props.headers {
        for (k, v) in table.iter() {
            let k = k.as_str();
            if MESSAGE_OWN_HEADERS.contains(&k) || NOT_USER_HEADERS.contains(&k) {
                continue;
            }
            // RabbitMQ shows strings and integers; other AMQP types have no STOMP form.
            let value = match v {
                FieldValue::LongString(s) => s.to_str_lossy().into_owned(),
                other => match other.as_i64() {
                    Some(n) => n.to_string(),
                    None => continue,
                },
            };
            out.push(k, value);
        }
    }
    let mut push = |name: &str, v: Option<String>| {
        if let Some(v) = v {
            out.push(name, v);
        }
    };
    let str_of = |s: &Option<ShortString>| s.as_ref().map(|s| s.as_str().to_owned());
    push("app-id", str_of(&props.app_id));
    push("user-id", str_of(&props.user_id));
    push("type", str_of(&props.kind));
    push("timestamp", props.timestamp.map(|t| t.to_string()));
    push("amqp-message-id", str_of(&props.message_id));
    push("expiration", str_of(&props.expiration));
    push(
        "reply-to",
        props
            .reply_to
            .as_ref()
            .map(|r| reply_to_for_message(r.as_str())),
    );
    push("correlation-id", str_of(&props.correlation_id));
    push("priority", props.priority.map(|p| p.to_string()));
    push(
        "persistent",
        (props.delivery_mode == Some(2)).then(|| "true".to_owned()),
    );
    push("content-encoding", str_of(&props.content_encoding));
    push("content-type", str_of(&props.content_type));
}

/// The `destination` a MESSAGE shows for a message's exchange and routing key (RabbitMQ's
/// `format_destination`): `/queue/<key>` from the default exchange, `/topic/<key>` from
/// amq.topic, else `/exchange/<x>[/<key>]`; `/` and `%` in names are percent-escaped.
pub fn format_destination(exchange: &str, routing_key: &str) -> String {
    match exchange {
        "" => format!("/queue/{}", escape(routing_key)),
        super::destinations::TOPIC_EXCHANGE => format!("/topic/{}", escape(routing_key)),
        x if routing_key.is_empty() => format!("/exchange/{}", escape(x)),
        x => format!("/exchange/{}/{}", escape(x), escape(routing_key)),
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'/' => out.push_str("%2F"),
            b'%' => out.push_str("%25"),
            b if !(32..=127).contains(&b) => out.push_str(&format!("%{b:02X}")),
            b => out.push(char::from(b)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        let mut h = Headers::new();
        for (k, v) in pairs {
            h.push(*k, *v);
        }
        h
    }

    #[test]
    fn send_headers_become_properties() {
        let h = headers(&[
            ("destination", "/queue/a"),
            ("content-type", "text/plain"),
            ("persistent", "true"),
            ("priority", "3"),
            ("reply-to", "/temp-queue/r"),
            ("amqp-message-id", "m1"),
            ("timestamp", "12"),
            ("foo", "bar"),
        ]);
        let p = properties_from_send(&h, |r| {
            assert_eq!(r, "/temp-queue/r");
            "amq.gen-1".into()
        })
        .unwrap();
        assert_eq!(p.content_type.unwrap().as_str(), "text/plain");
        assert_eq!(p.delivery_mode, Some(2));
        assert_eq!(p.priority, Some(3));
        assert_eq!(p.reply_to.unwrap().as_str(), "amq.gen-1");
        assert_eq!(p.message_id.unwrap().as_str(), "m1");
        assert_eq!(p.timestamp, Some(12));
        let t = p.headers.unwrap();
        assert_eq!(t.get("foo").and_then(|v| v.as_str()), Some("bar"));
        assert!(t.get("destination").is_none());
    }

    #[test]
    fn message_id_refused_on_send() {
        let h = headers(&[("destination", "/queue/a"), ("message-id", "x")]);
        assert!(properties_from_send(&h, |r| r.to_owned()).is_err());
    }

    #[test]
    fn properties_become_message_headers() {
        let mut t = FieldTable::new();
        t.insert("h", FieldValue::LongString("v".into()));
        t.insert("n", FieldValue::LongInt(5));
        t.insert("b", FieldValue::Bool(true));
        let p = Properties {
            headers: Some(t),
            reply_to: Some("q".into()),
            delivery_mode: Some(2),
            content_type: Some("a/b".into()),
            ..Properties::default()
        };
        let mut out = Headers::new();
        message_headers(&p, &mut out);
        let got: Vec<(&str, &str)> = out.iter().collect();
        assert_eq!(
            got,
            vec![
                ("h", "v"),
                ("n", "5"),
                ("reply-to", "/reply-queue/q"),
                ("persistent", "true"),
                ("content-type", "a/b")
            ]
        );
    }

    #[test]
    fn destinations_of_messages() {
        assert_eq!(format_destination("", "q"), "/queue/q");
        assert_eq!(format_destination("amq.topic", "a.b"), "/topic/a.b");
        assert_eq!(format_destination("x", ""), "/exchange/x");
        assert_eq!(format_destination("x", "a/b"), "/exchange/x/a%2Fb");
    }
}
