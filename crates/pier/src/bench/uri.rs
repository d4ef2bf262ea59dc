//! `amqp://user:pass@host:port/vhost` URIs (the RabbitMQ URI spec, minus TLS).

use std::fmt;

use anyhow::{bail, Context};

/// A parsed `amqp://` URI.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpUri {
    pub user: String,
    pub password: String,
    pub host: String,
    pub port: u16,
    pub vhost: String,
}

impl fmt::Debug for AmqpUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// Shown without the password.
impl fmt::Display for AmqpUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(
            f,
            "amqp://{}@{}:{}/{}",
            pier_mgmt::encode_segment(&self.user),
            host,
            self.port,
            pier_mgmt::encode_segment(&self.vhost)
        )
    }
}

impl AmqpUri {
    /// `host:port` for `TcpStream::connect`.
    pub fn socket_addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl std::str::FromStr for AmqpUri {
    type Err = anyhow::Error;

    /// Parses `amqp://[user[:password]@]host[:port][/vhost][?query]`.
    ///
    /// User, password and vhost are percent-decoded (`%2F` is `/`). Missing credentials are
    /// `guest`/`guest`, the port defaults to 5672, and a missing or empty vhost means `/`
    /// (the RabbitMQ spec reads `amqp://host/` as the empty vhost, which no broker has by
    /// default; for a load generator `/` is the useful reading). Query parameters
    /// (`heartbeat`, `frame_max`, ...) are accepted and ignored: the bench negotiates what
    /// the broker offers, with heartbeats off.
    fn from_str(s: &str) -> anyhow::Result<AmqpUri> {
        let rest = if let Some(rest) = s.strip_prefix("amqp://") {
            rest
        } else if s.starts_with("amqps://") {
            bail!("amqps:// (TLS) is not supported by pier bench");
        } else {
            bail!("the URI must start with amqp:// (got {s:?})");
        };
        let rest = rest.split_once('?').map_or(rest, |(r, _)| r);
        let rest = rest.split_once('#').map_or(rest, |(r, _)| r);
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (rest, None),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            None => ("guest".to_owned(), "guest".to_owned()),
            Some(u) => match u.split_once(':') {
                Some((user, pass)) => (percent_decode(user)?, percent_decode(pass)?),
                None => (percent_decode(u)?, String::new()),
            },
        };
        let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .context("unterminated [ in the URI host")?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => bail!("unexpected {after:?} after the URI host"),
            };
            (host.to_owned(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (hostport.to_owned(), None),
            }
        };
        let host = if host.is_empty() {
            "localhost".to_owned()
        } else {
            host
        };
        let port = match port {
            None | Some("") => 5672,
            Some(p) => p
                .parse::<u16>()
                .with_context(|| format!("invalid port {p:?} in the URI"))?,
        };
        let vhost = match path {
            None | Some("") => "/".to_owned(),
            Some(p) => {
                if p.contains('/') {
                    bail!("the URI path must be a single segment (the vhost); use %2F for /");
                }
                percent_decode(p)?
            }
        };
        Ok(AmqpUri {
            user,
            password,
            host,
            port,
            vhost,
        })
    }
}

fn percent_decode(s: &str) -> anyhow::Result<String> {
    // The crate passes a bad escape (`%zz`, a trailing `%2`) through as it is; refuse it, so
    // that a typo does not reach the broker as part of a user or vhost name.
    let well_formed = s.split('%').skip(1).all(|after| {
        after
            .as_bytes()
            .get(..2)
            .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    });
    if !well_formed {
        bail!("bad percent-escape in {s:?}");
    }
    let decoded = percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .with_context(|| format!("{s:?} is not UTF-8 once decoded"))?;
    Ok(decoded.into_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn parse(s: &str) -> AmqpUri {
        s.parse().unwrap()
    }

    #[test]
    fn full_uri() {
        let u = parse("amqp://alice:s%40cret@broker.example:5673/prod%2Fa");
        assert_eq!(u.user, "alice");
        assert_eq!(u.password, "s@cret");
        assert_eq!(u.host, "broker.example");
        assert_eq!(u.port, 5673);
        assert_eq!(u.vhost, "prod/a");
        assert_eq!(u.socket_addr(), "broker.example:5673");
    }

    #[test]
    fn defaults() {
        let u = parse("amqp://127.0.0.1");
        assert_eq!(
            (
                u.user.as_str(),
                u.password.as_str(),
                u.port,
                u.vhost.as_str()
            ),
            ("guest", "guest", 5672, "/")
        );
        assert_eq!(parse("amqp://h/").vhost, "/");
        assert_eq!(parse("amqp://h/%2F").vhost, "/");
        assert_eq!(parse("amqp://h/%2f").vhost, "/");
        assert_eq!(parse("amqp://h:1234").port, 1234);
        assert_eq!(parse("amqp://h:").port, 5672);
        assert_eq!(parse("amqp://").host, "localhost");
        assert_eq!(parse("amqp://bob@h").user, "bob");
        assert_eq!(parse("amqp://bob@h").password, "");
        assert_eq!(parse("amqp://a:b:c@h").password, "b:c");
    }

    #[test]
    fn query_is_ignored() {
        let u = parse("amqp://guest:guest@h:5700/v?heartbeat=10&frame_max=8192");
        assert_eq!(u.vhost, "v");
        assert_eq!(u.port, 5700);
    }

    #[test]
    fn ipv6() {
        let u = parse("amqp://[::1]:5700/%2F");
        assert_eq!(u.host, "::1");
        assert_eq!(u.port, 5700);
        assert_eq!(u.socket_addr(), "[::1]:5700");
        assert_eq!(parse("amqp://[::1]").port, 5672);
    }

    #[test]
    fn errors() {
        for bad in [
            "http://h/",
            "amqps://h/",
            "amqp://h:99999/",
            "amqp://h:x/",
            "amqp://h/a/b",
            "amqp://h/%zz",
            "amqp://h/%2",
            "amqp://[::1/",
            "amqp://h/%FF",
        ] {
            assert!(bad.parse::<AmqpUri>().is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn display_hides_the_password() {
        let u = parse("amqp://alice:secret@h:1/%2F");
        let shown = u.to_string();
        assert_eq!(shown, "amqp://alice@h:1/%2F");
        assert!(!format!("{u:?}").contains("secret"));
    }
}
