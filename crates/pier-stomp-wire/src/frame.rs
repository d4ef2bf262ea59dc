//! Versions, commands, headers and frames, and how a frame is written.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::EncodeError;

/// A STOMP protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Version {
    V1_0,
    V1_1,
    V1_2,
}

impl Version {
    /// Every version, oldest first.
    pub const ALL: [Version; 3] = [Version::V1_0, Version::V1_1, Version::V1_2];

    /// `"1.0"`, `"1.1"` or `"1.2"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1_0 => "1.0",
            Version::V1_1 => "1.1",
            Version::V1_2 => "1.2",
        }
    }

    pub fn parse(s: &str) -> Option<Version> {
        match s.trim() {
            "1.0" => Some(Version::V1_0),
            "1.1" => Some(Version::V1_1),
            "1.2" => Some(Version::V1_2),
            _ => None,
        }
    }

    /// The version a server picks for a CONNECT's `accept-version` header (1.1 §"Protocol
    /// Negotiation"): the highest one both support; 1.0 when the header is absent. `None`
    /// means no common version: answer with [`Frame::version_mismatch`].
    pub fn negotiate(accept_version: Option<&str>) -> Option<Version> {
        match accept_version {
            None => Some(Version::V1_0),
            Some(list) => list.split(',').filter_map(Version::parse).max(),
        }
    }

    /// How header names and values are escaped in frames of this version (CONNECT,
    /// STOMP and CONNECTED frames are never escaped).
    pub(crate) fn escaping(self, command: Command) -> Escaping {
        match (self, command) {
            (_, Command::Connect | Command::Stomp | Command::Connected) => Escaping::None,
            (Version::V1_0, _) => Escaping::None,
            (Version::V1_1, _) => Escaping::V1_1,
            (Version::V1_2, _) => Escaping::V1_2,
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The three escaping regimes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Escaping {
    /// 1.0, and CONNECT/STOMP/CONNECTED in every version: octets as they are.
    None,
    /// 1.1: `\n`, `\c`, `\\`.
    V1_1,
    /// 1.2: `\r`, `\n`, `\c`, `\\`.
    V1_2,
}

/// A frame command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    // client frames
    Connect,
    /// 1.1+: CONNECT under another name.
    Stomp,
    Send,
    Subscribe,
    Unsubscribe,
    Ack,
    /// 1.1+.
    Nack,
    Begin,
    Commit,
    Abort,
    Disconnect,
    // server frames
    Connected,
    Message,
    Receipt,
    Error,
}

impl Command {
    pub const ALL: [Command; 15] = [
        Command::Connect,
        Command::Stomp,
        Command::Send,
        Command::Subscribe,
        Command::Unsubscribe,
        Command::Ack,
        Command::Nack,
        Command::Begin,
        Command::Commit,
        Command::Abort,
        Command::Disconnect,
        Command::Connected,
        Command::Message,
        Command::Receipt,
        Command::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Connect => "CONNECT",
            Command::Stomp => "STOMP",
            Command::Send => "SEND",
            Command::Subscribe => "SUBSCRIBE",
            Command::Unsubscribe => "UNSUBSCRIBE",
            Command::Ack => "ACK",
            Command::Nack => "NACK",
            Command::Begin => "BEGIN",
            Command::Commit => "COMMIT",
            Command::Abort => "ABORT",
            Command::Disconnect => "DISCONNECT",
            Command::Connected => "CONNECTED",
            Command::Message => "MESSAGE",
            Command::Receipt => "RECEIPT",
            Command::Error => "ERROR",
        }
    }

    /// The command for a command line (case-sensitive, as the spec and RabbitMQ have it).
    pub fn from_bytes(b: &[u8]) -> Option<Command> {
        Command::ALL
            .iter()
            .copied()
            .find(|c| c.as_str().as_bytes() == b)
    }

    /// Frames a client sends.
    pub fn is_client(self) -> bool {
        !self.is_server()
    }

    /// Frames a server sends.
    pub fn is_server(self) -> bool {
        matches!(
            self,
            Command::Connected | Command::Message | Command::Receipt | Command::Error
        )
    }

    /// 1.2 §"STOMP Frames": only SEND, MESSAGE and ERROR may have a body. Not enforced by
    /// the decoder (RabbitMQ ignores bodies elsewhere); a server may check it.
    pub fn allows_body(self) -> bool {
        matches!(self, Command::Send | Command::Message | Command::Error)
    }
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A frame's headers in wire order. Names may repeat: 1.2 §"Repeated Header Entries" says
/// only the first counts, which is what [`Headers::get`] returns; the rest are kept so a
/// frame re-encodes as it came.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    pub fn new() -> Headers {
        Headers(Vec::new())
    }

    /// The value of the first header with this name.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Appends a header (after any with the same name, which keep precedence).
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.push((name.into(), value.into()));
    }

    /// Replaces every header of this name with one, at the place of the first (or at the end).
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        match self.0.iter().position(|(k, _)| k == name) {
            Some(i) => {
                if let Some(slot) = self.0.get_mut(i) {
                    slot.1 = value;
                }
                let mut n = 0;
                self.0.retain(|(k, _)| {
                    n += 1;
                    k != name || n - 1 == i
                });
            }
            None => self.0.push((name.to_string(), value)),
        }
    }

    /// Removes every header of this name.
    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(k, _)| k != name);
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first `content-length`, parsed: `None` if absent, `Some(Err)` if not a decimal
    /// number (surrounding spaces allowed, as RabbitMQ strips them).
    pub fn content_length(&self) -> Option<Result<usize, ()>> {
        self.get("content-length").map(parse_content_length)
    }
}

pub(crate) fn parse_content_length(v: &str) -> Result<usize, ()> {
    let t = v.trim_matches(' ');
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(());
    }
    t.parse::<usize>().map_err(|_| ())
}

/// A STOMP frame. The body is a zero-copy slice of the received buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub command: Command,
    pub headers: Headers,
    pub body: Bytes,
}

/// The `version` header RabbitMQ puts in its ERROR frames: the versions it supports.
pub const SUPPORTED_VERSIONS: &str = "1.0,1.1,1.2";

impl Frame {
    pub fn new(command: Command) -> Frame {
        Frame {
            command,
            headers: Headers::new(),
            body: Bytes::new(),
        }
    }

    /// Adds a header (builder style).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Frame {
        self.headers.push(name, value);
        self
    }

    /// Sets the body and a matching `content-length` (builder style); an empty body gets no
    /// `content-length`, as RabbitMQ writes it.
    pub fn body(mut self, body: impl Into<Bytes>) -> Frame {
        self.body = body.into();
        self.headers.remove("content-length");
        if !self.body.is_empty() {
            let n = self.body.len();
            self.headers.push("content-length", n.to_string());
        }
        self
    }

    /// `RECEIPT` with `receipt-id`.
    pub fn receipt(receipt_id: impl Into<String>) -> Frame {
        Frame::new(Command::Receipt).header("receipt-id", receipt_id)
    }

    /// An `ERROR` frame as RabbitMQ writes them: `message`, `content-type:text/plain`,
    /// `version:1.0,1.1,1.2`, then the detail as the body with its `content-length`.
    pub fn error(message: impl Into<String>, detail: impl Into<Bytes>) -> Frame {
        Frame::new(Command::Error)
            .header("message", message)
            .header("content-type", "text/plain")
            .header("version", SUPPORTED_VERSIONS)
            .body(detail)
    }

    /// RabbitMQ's answer to a CONNECT with no version in common.
    pub fn version_mismatch() -> Frame {
        Frame::error(
            "Version mismatch",
            Bytes::from_static(b"Supported versions are 1.0,1.1,1.2\n"),
        )
    }

    /// Writes the frame for a connection of `version`: command, headers (escaped as the
    /// version and command require), a blank line, the body and a NUL. Headers are written
    /// as they are, `content-length` included: a body with a NUL in it needs one, and one
    /// that disagrees with the body is refused. Nothing is written on error.
    pub fn encode(&self, version: Version, out: &mut BytesMut) -> Result<(), EncodeError> {
        let esc = version.escaping(self.command);
        match self.headers.content_length() {
            Some(Ok(n)) if n != self.body.len() => {
                return Err(EncodeError::ContentLengthMismatch {
                    header: n,
                    body: self.body.len(),
                })
            }
            Some(Err(())) => return Err(EncodeError::InvalidContentLength),
            None if self.body.contains(&0) => {
                return Err(EncodeError::NulInBodyWithoutContentLength)
            }
            _ => {}
        }
        let mut head = BytesMut::with_capacity(64);
        head.put_slice(self.command.as_str().as_bytes());
        head.put_u8(b'\n');
        for (k, v) in &self.headers.0 {
            if k.is_empty() {
                return Err(EncodeError::EmptyHeaderName);
            }
            escape(k, esc, true, &mut head)?;
            head.put_u8(b':');
            escape(v, esc, false, &mut head)?;
            head.put_u8(b'\n');
        }
        head.put_u8(b'\n');
        out.reserve(head.len() + self.body.len() + 1);
        out.put_slice(&head);
        out.put_slice(&self.body);
        out.put_u8(0);
        Ok(())
    }

    /// The octets [`Frame::encode`] writes.
    pub fn encoded_len(&self, version: Version) -> Result<usize, EncodeError> {
        let mut out = BytesMut::new();
        self.encode(version, &mut out)?;
        Ok(out.len())
    }
}

/// A heart-beat: one end-of-line.
pub fn encode_heartbeat(out: &mut BytesMut) {
    out.put_u8(b'\n');
}

fn escape(s: &str, esc: Escaping, is_name: bool, out: &mut BytesMut) -> Result<(), EncodeError> {
    match esc {
        Escaping::None => {
            // Nothing can be escaped: refuse what would not read back the same.
            if s.contains('\n') || (is_name && s.contains(':')) || s.ends_with('\r') {
                return Err(EncodeError::Unescapable(s.to_string()));
            }
            out.put_slice(s.as_bytes());
        }
        Escaping::V1_1 | Escaping::V1_2 => {
            if esc == Escaping::V1_1 && s.ends_with('\r') {
                // 1.1 cannot escape CR; one at the end would read as a CRLF line end.
                return Err(EncodeError::Unescapable(s.to_string()));
            }
            for b in s.bytes() {
                match b {
                    b'\\' => out.put_slice(b"\\\\"),
                    b'\n' => out.put_slice(b"\\n"),
                    b':' => out.put_slice(b"\\c"),
                    b'\r' if esc == Escaping::V1_2 => out.put_slice(b"\\r"),
                    b => out.put_u8(b),
                }
            }
        }
    }
    Ok(())
}

/// Parses a `heart-beat` header, `"cx,cy"` in milliseconds (1.1 §"Heart-beating").
pub fn parse_heart_beat(v: &str) -> Option<(u32, u32)> {
    let (a, b) = v.split_once(',')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

/// The heart-beat periods in milliseconds a connection settles on (1.1 §"Heart-beating"):
/// `client` is the CONNECT's `heart-beat` (cx, cy), `server` the CONNECTED's (sx, sy).
/// Returns (how often the server sends, how often the client sends); 0 means never.
pub fn negotiate_heart_beat(client: (u32, u32), server: (u32, u32)) -> (u32, u32) {
    let (cx, cy) = client;
    let (sx, sy) = server;
    let server_sends = if sx == 0 || cy == 0 { 0 } else { sx.max(cy) };
    let client_sends = if cx == 0 || sy == 0 { 0 } else { cx.max(sy) };
    (server_sends, client_sends)
}
