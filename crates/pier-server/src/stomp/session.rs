//! One STOMP session as plain data: what a client frame means (CONNECT negotiation,
//! subscriptions and their ack modes, ACK/NACK targets, transactions, receipts) and when
//! heart-beats are due. No sockets, no clock of its own (the caller passes milliseconds),
//! no broker: it returns [`Action`]s that the connection task carries out.
//!
//! ```text
//!  Frame ─► Session::on_frame ─► Ok(Step { action, receipt }) ─► connection executes action,
//!                               │                                 then sends RECEIPT
//!                               └► Err(StompError) ─► ERROR frame (and close if fatal)
//!  now ──► Session::tick ─► { send heart-beat?, client silent too long? }
//! ```

use std::collections::HashMap;

use pier_stomp_wire::{negotiate_heart_beat, parse_heart_beat, Command, Frame, Version};

use super::destinations::{Destination, DestinationError};

/// How a subscription's deliveries are settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// Settled when sent.
    Auto,
    /// ACK settles that message and every earlier one (cumulative).
    Client,
    /// ACK settles exactly that message.
    ClientIndividual,
}

impl AckMode {
    pub fn parse(v: Option<&str>) -> Option<AckMode> {
        match v {
            None | Some("auto") => Some(AckMode::Auto),
            Some("client") => Some(AckMode::Client),
            Some("client-individual") => Some(AckMode::ClientIndividual),
            Some(_) => None,
        }
    }
}

/// A live subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub id: String,
    pub destination: String,
    pub ack: AckMode,
}

/// The consumer tag RabbitMQ gives a subscription: `T_<id>`.
pub fn consumer_tag(id: &str) -> String {
    format!("T_{id}")
}

/// The `message-id` (and 1.2 `ack`) of a delivery: `T_<sub>@@<session>@@<tag>`.
pub fn message_id(sub_id: &str, session_id: &str, tag: u64) -> String {
    format!("T_{sub_id}@@{session_id}@@{tag}")
}

/// A message-id's subscription id and delivery tag.
pub fn parse_message_id(id: &str) -> Option<(&str, u64)> {
    let (rest, tag) = id.rsplit_once("@@")?;
    let (sub, _session) = rest.rsplit_once("@@")?;
    let sub = sub.strip_prefix("T_")?;
    Some((sub, tag.parse().ok()?))
}

/// The CONNECT's settled terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub version: Version,
    pub login: Option<String>,
    pub passcode: Option<String>,
    /// The `host` header: the vhost (None: the default vhost).
    pub host: Option<String>,
    /// The `heart-beat` header the server answers with (sx, sy).
    pub heart_beat: (u32, u32),
}

/// What the connection does for a frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Authenticate, open the vhost, answer CONNECTED (then call [`Session::connected`]).
    Connect(Connect),
    /// Publish (the frame is the SEND, for its headers and body).
    Send {
        destination: Destination,
        frame: Frame,
    },
    Subscribe {
        subscription: Subscription,
        destination: Destination,
        frame: Frame,
    },
    /// The subscription was forgotten here; cancel its consumer (`durable` asks for the
    /// durable subscription queue to be deleted).
    Unsubscribe {
        subscription: Subscription,
        durable: bool,
    },
    /// Settle delivery `tag` (and, with `multiple`, every earlier one).
    Ack {
        tag: u64,
        multiple: bool,
    },
    Nack {
        tag: u64,
        multiple: bool,
        requeue: bool,
    },
    /// A transaction committed: carry out its frames in order (SEND, ACK, NACK).
    Commit(Vec<Frame>),
    Disconnect,
    /// Nothing to do but the receipt (BEGIN, ABORT, a frame kept in a transaction).
    Nothing,
}

/// A frame's outcome: the action and the receipt to send once it is done.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub action: Action,
    pub receipt: Option<String>,
}

/// An ERROR to send: `message` header, body, and whether the connection then closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StompError {
    pub message: String,
    pub detail: String,
    pub fatal: bool,
}

impl StompError {
    pub fn new(message: impl Into<String>, detail: impl Into<String>) -> StompError {
        StompError {
            message: message.into(),
            detail: detail.into(),
            fatal: false,
        }
    }

    pub fn fatal(message: impl Into<String>, detail: impl Into<String>) -> StompError {
        StompError {
            fatal: true,
            ..StompError::new(message, detail)
        }
    }

    pub fn frame(&self, receipt: Option<&str>) -> Frame {
        let mut f = Frame::error(self.message.clone(), self.detail.clone().into_bytes());
        if let Some(r) = receipt {
            f.headers.push("receipt-id", r);
        }
        f
    }
}

impl From<DestinationError> for StompError {
    fn from(e: DestinationError) -> Self {
        let (m, d) = e.message_and_detail();
        StompError::new(m, d)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitingConnect,
    Connected,
}

/// Heart-beat periods and when traffic last went each way (ms of the caller's clock).
#[derive(Debug, Clone, Copy, Default)]
struct HeartBeat {
    /// The server sends at least this often (0: never).
    send_every: u64,
    /// The client promised to send at least this often (0: never).
    expect_every: u64,
    last_sent: u64,
    last_received: u64,
}

/// How long past its promised interval a silent client is tolerated: it is closed after
/// twice the interval without a byte, as RabbitMQ's heart-beat monitor does.
const SILENCE_FACTOR: u64 = 2;

/// What [`Session::tick`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tick {
    pub send_heartbeat: bool,
    pub client_silent: bool,
}

/// One STOMP session.
#[derive(Debug)]
pub struct Session {
    phase: Phase,
    pub version: Version,
    pub session_id: String,
    subscriptions: HashMap<String, Subscription>,
    transactions: HashMap<String, Vec<Frame>>,
    heart: HeartBeat,
    /// The heart-beats this server offers (sx, sy) in ms; the CONNECT's are mirrored
    /// when this is None, as RabbitMQ does.
    offer: Option<(u32, u32)>,
}

impl Session {
    pub fn new(session_id: String) -> Session {
        Session {
            phase: Phase::AwaitingConnect,
            version: Version::V1_0,
            session_id,
            subscriptions: HashMap::new(),
            transactions: HashMap::new(),
            heart: HeartBeat::default(),
            offer: None,
        }
    }

    pub fn is_connected(&self) -> bool {
        self.phase == Phase::Connected
    }

    pub fn subscription(&self, id: &str) -> Option<&Subscription> {
        self.subscriptions.get(id)
    }

    pub fn subscriptions(&self) -> impl Iterator<Item = &Subscription> {
        self.subscriptions.values()
    }

    /// The CONNECT was accepted: heart-beating starts now.
    pub fn connected(&mut self, c: &Connect, client_heart_beat: (u32, u32), now: u64) {
        self.phase = Phase::Connected;
        self.version = c.version;
        let (server_sends, client_sends) = negotiate_heart_beat(client_heart_beat, c.heart_beat);
        self.heart = HeartBeat {
            send_every: u64::from(server_sends),
            expect_every: u64::from(client_sends),
            last_sent: now,
            last_received: now,
        };
    }

    /// Bytes arrived from the client (any: a frame or a heart-beat).
    pub fn received(&mut self, now: u64) {
        self.heart.last_received = now;
    }

    /// Bytes went to the client.
    pub fn sent(&mut self, now: u64) {
        self.heart.last_sent = now;
    }

    /// When [`Session::tick`] has something to do next (None: no heart-beating).
    pub fn next_deadline(&self) -> Option<u64> {
        let h = &self.heart;
        let send = (h.send_every > 0).then(|| h.last_sent + h.send_every);
        let recv = (h.expect_every > 0).then(|| h.last_received + h.expect_every * SILENCE_FACTOR);
        match (send, recv) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn tick(&mut self, now: u64) -> Tick {
        let h = &self.heart;
        Tick {
            send_heartbeat: h.send_every > 0 && now >= h.last_sent + h.send_every,
            client_silent: h.expect_every > 0
                && now >= h.last_received + h.expect_every * SILENCE_FACTOR,
        }
    }

    /// The heart-beat periods in force: (server sends, client sends), ms.
    pub fn heart_beats(&self) -> (u64, u64) {
        (self.heart.send_every, self.heart.expect_every)
    }

    /// Decides what a client frame means.
    pub fn on_frame(&mut self, frame: Frame) -> Result<Step, StompError> {
        let receipt = frame.headers.get("receipt").map(str::to_owned);
        let step = |action| Step {
            action,
            receipt: receipt.clone(),
        };
        if self.phase == Phase::AwaitingConnect {
            return match frame.command {
                Command::Connect | Command::Stomp => {
                    Ok(step(Action::Connect(self.connect(&frame)?)))
                }
                _ => Err(StompError::fatal(
                    "Illegal command",
                    "You must log in using CONNECT first",
                )),
            };
        }
        match frame.command {
            Command::Connect | Command::Stomp => {
                Err(StompError::fatal("Unexpected frame", "Already connected\n"))
            }
            Command::Send | Command::Ack | Command::Nack => {
                if let Some(tx) = frame.headers.get("transaction") {
                    if !self.transactions.contains_key(tx) {
                        return Err(bad_transaction(tx));
                    }
                    // Checked now, carried out at COMMIT.
                    self.check_transactional(&frame)?;
                    let tx = tx.to_owned();
                    if let Some(frames) = self.transactions.get_mut(&tx) {
                        frames.push(frame);
                    }
                    // Its receipt is sent at COMMIT, after the COMMIT's own (RabbitMQ's order).
                    return Ok(Step {
                        action: Action::Nothing,
                        receipt: None,
                    });
                }
                self.transactional(frame).map(step)
            }
            Command::Subscribe => self.subscribe(frame).map(step),
            Command::Unsubscribe => self.unsubscribe(&frame).map(step),
            Command::Begin => {
                let tx = transaction_header(&frame)?;
                if self.transactions.contains_key(&tx) {
                    return Err(StompError::new(
                        "Bad transaction",
                        format!("Transaction \"{tx}\" already started\n"),
                    ));
                }
                self.transactions.insert(tx, Vec::new());
                Ok(step(Action::Nothing))
            }
            Command::Commit => {
                let tx = transaction_header(&frame)?;
                match self.transactions.remove(&tx) {
                    Some(frames) => Ok(step(Action::Commit(frames))),
                    None => Err(bad_transaction(&tx)),
                }
            }
            Command::Abort => {
                let tx = transaction_header(&frame)?;
                match self.transactions.remove(&tx) {
                    Some(_) => Ok(step(Action::Nothing)),
                    None => Err(bad_transaction(&tx)),
                }
            }
            Command::Disconnect => Ok(step(Action::Disconnect)),
            Command::Connected | Command::Message | Command::Receipt | Command::Error => {
                Err(StompError::new(
                    "Bad command",
                    format!("Could not interpret command \"{}\"\n", frame.command),
                ))
            }
        }
    }

    /// A SEND, ACK or NACK outside a transaction (or at its COMMIT).
    pub fn transactional(&mut self, frame: Frame) -> Result<Action, StompError> {
        match frame.command {
            Command::Send => {
                let destination = destination_header(&frame)?;
                if let Destination::TempQueue(_) = destination {
                    return Err(StompError::new(
                        "Invalid destination",
                        format!(
                            "'{}' is not a valid destination for 'SEND'\n",
                            frame.headers.get("destination").unwrap_or_default()
                        ),
                    ));
                }
                Ok(Action::Send { destination, frame })
            }
            Command::Ack => {
                let (tag, multiple) = self.ack_target(&frame)?;
                Ok(Action::Ack { tag, multiple })
            }
            Command::Nack => {
                let (tag, multiple) = self.ack_target(&frame)?;
                // RabbitMQ requeues unless `requeue:false`.
                let requeue = frame.headers.get("requeue") != Some("false");
                Ok(Action::Nack {
                    tag,
                    multiple,
                    requeue,
                })
            }
            _ => Ok(Action::Nothing),
        }
    }

    fn check_transactional(&self, frame: &Frame) -> Result<(), StompError> {
        match frame.command {
            Command::Send => destination_header(frame).map(|_| ()),
            _ => self.ack_target(frame).map(|_| ()),
        }
    }

    fn connect(&mut self, frame: &Frame) -> Result<Connect, StompError> {
        let h = &frame.headers;
        let version = Version::negotiate(h.get("accept-version")).ok_or_else(|| {
            StompError::fatal("Version mismatch", "Supported versions are 1.0,1.1,1.2\n")
        })?;
        let client = h
            .get("heart-beat")
            .and_then(parse_heart_beat)
            .unwrap_or((0, 0));
        // RabbitMQ answers with the client's periods mirrored: it sends as often as the
        // client wants to receive and expects what the client offers to send.
        // RabbitMQ keeps whole seconds (at least one).
        let secs = |ms: u32| {
            if ms == 0 {
                0
            } else {
                (ms / 1000).max(1) * 1000
            }
        };
        let offer = self.offer.unwrap_or((secs(client.1), secs(client.0)));
        Ok(Connect {
            version,
            login: h.get("login").map(str::to_owned),
            passcode: h.get("passcode").map(str::to_owned),
            host: h.get("host").map(str::to_owned),
            heart_beat: offer,
        })
    }

    fn subscribe(&mut self, frame: Frame) -> Result<Action, StompError> {
        let destination_name = frame
            .headers
            .get("destination")
            .ok_or_else(missing_destination)?
            .to_owned();
        let destination = Destination::parse(&destination_name)?;
        if matches!(
            destination,
            Destination::TempQueue(_) | Destination::ReplyQueue(_)
        ) {
            return Err(StompError::new(
                "Invalid destination",
                format!("'{destination_name}' is not a valid destination for 'SUBSCRIBE'\n"),
            ));
        }
        // Without an id (allowed by RabbitMQ in every version) the destination names it.
        let id = frame
            .headers
            .get("id")
            .map_or_else(|| destination_name.clone(), str::to_owned);
        if self.subscriptions.contains_key(&id) {
            return Err(StompError::fatal(
                "Duplicated subscription identifier",
                format!(
                    "A subscription identified by '{}' already exists.",
                    consumer_tag(&id)
                ),
            ));
        }
        let ack = AckMode::parse(frame.headers.get("ack")).ok_or_else(|| {
            StompError::new(
                "Invalid ack mode",
                format!(
                    "Invalid ack mode '{}'\n",
                    frame.headers.get("ack").unwrap_or_default()
                ),
            )
        })?;
        let subscription = Subscription {
            id: id.clone(),
            destination: destination_name,
            ack,
        };
        self.subscriptions.insert(id, subscription.clone());
        Ok(Action::Subscribe {
            subscription,
            destination,
            frame,
        })
    }

    /// The subscribe failed in the broker: forget it.
    pub fn subscribe_failed(&mut self, id: &str) {
        self.subscriptions.remove(id);
    }

    fn unsubscribe(&mut self, frame: &Frame) -> Result<Action, StompError> {
        let by = if frame.headers.get("id").is_some() {
            "id"
        } else {
            "destination"
        };
        let id = frame
            .headers
            .get("id")
            .or_else(|| frame.headers.get("destination"))
            .ok_or_else(|| {
                StompError::new(
                    "Missing destination",
                    "UNSUBSCRIBE must include a 'destination' or 'id' header\n",
                )
            })?;
        let durable = ["durable", "persistent"]
            .iter()
            .any(|h| frame.headers.get(h) == Some("true"));
        match self.subscriptions.remove(id) {
            Some(subscription) => Ok(Action::Unsubscribe {
                subscription,
                durable,
            }),
            None => Err(StompError::new(
                "No subscription found",
                format!(
                    "UNSUBSCRIBE must refer to an existing subscription.\nSubscription to \"{by}='{id}'\" not found.\n"
                ),
            )),
        }
    }

    /// The delivery an ACK or NACK names, and whether it is cumulative (the subscription's
    /// ack mode is `client`).
    fn ack_target(&self, frame: &Frame) -> Result<(u64, bool), StompError> {
        let header = if self.version == Version::V1_2 {
            "id"
        } else {
            "message-id"
        };
        let invalid = || {
            StompError::new(
                "Invalid header",
                format!(
                    "\"{}\" must include a valid \"{header}\" header\n",
                    frame.command
                ),
            )
        };
        let id = frame.headers.get(header).ok_or_else(invalid)?;
        let (sub, tag) = parse_message_id(id).ok_or_else(invalid)?;
        let multiple = self
            .subscriptions
            .get(sub)
            .is_some_and(|s| s.ack == AckMode::Client);
        Ok((tag, multiple))
    }
}

fn destination_header(frame: &Frame) -> Result<Destination, StompError> {
    let d = frame
        .headers
        .get("destination")
        .ok_or_else(missing_destination)?;
    Ok(Destination::parse(d)?)
}

fn missing_destination() -> StompError {
    StompError::new(
        "Missing destination",
        "SEND, SUBSCRIBE and UNSUBSCRIBE frames must include a 'destination' header\n",
    )
}

fn transaction_header(frame: &Frame) -> Result<String, StompError> {
    frame
        .headers
        .get("transaction")
        .map(str::to_owned)
        .ok_or_else(|| {
            StompError::new(
                "Missing transaction",
                format!("{} must include a 'transaction' header\n", frame.command),
            )
        })
}

fn bad_transaction(tx: &str) -> StompError {
    StompError::new(
        "Bad transaction",
        format!("Invalid transaction identifier: \"{tx}\"\n"),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn frame(cmd: Command, headers: &[(&str, &str)]) -> Frame {
        let mut f = Frame::new(cmd);
        for (k, v) in headers {
            f.headers.push(*k, *v);
        }
        f
    }

    fn connected(version: &str) -> Session {
        let mut s = Session::new("session-x".into());
        let step = s
            .on_frame(frame(Command::Connect, &[("accept-version", version)]))
            .unwrap();
        let Action::Connect(c) = step.action else {
            panic!("not a connect")
        };
        s.connected(&c, (0, 0), 0);
        s
    }

    #[test]
    fn frames_before_connect_are_refused() {
        let mut s = Session::new("s".into());
        let e = s
            .on_frame(frame(Command::Send, &[("destination", "/queue/a")]))
            .unwrap_err();
        assert_eq!(e.message, "Illegal command");
        assert!(e.fatal);
    }

    #[test]
    fn connect_negotiates_version_and_mirrors_heart_beats() {
        let mut s = Session::new("s".into());
        let step = s
            .on_frame(frame(
                Command::Stomp,
                &[
                    ("accept-version", "1.0,1.1,1.2"),
                    ("heart-beat", "1000,2000"),
                    ("host", "/"),
                    ("receipt", "r"),
                ],
            ))
            .unwrap();
        assert_eq!(step.receipt.as_deref(), Some("r"));
        let Action::Connect(c) = step.action else {
            panic!()
        };
        assert_eq!(c.version, Version::V1_2);
        assert_eq!(c.heart_beat, (2000, 1000));
        // Whole seconds, at least one, as RabbitMQ answers.
        let mut odd = Session::new("s".into());
        let Action::Connect(c2) = odd
            .on_frame(frame(Command::Connect, &[("heart-beat", "2500,300")]))
            .unwrap()
            .action
        else {
            panic!()
        };
        assert_eq!(c2.heart_beat, (1000, 2000));
        assert_eq!(c.host.as_deref(), Some("/"));
        s.connected(&c, (1000, 2000), 0);
        assert_eq!(s.heart_beats(), (2000, 1000));
        let mut bad = Session::new("s".into());
        let e = bad
            .on_frame(frame(Command::Connect, &[("accept-version", "2.0")]))
            .unwrap_err();
        assert_eq!(e.message, "Version mismatch");
    }

    #[test]
    fn heart_beat_deadlines() {
        let mut s = Session::new("s".into());
        let Action::Connect(c) = s
            .on_frame(frame(
                Command::Connect,
                &[("accept-version", "1.2"), ("heart-beat", "1000,3000")],
            ))
            .unwrap()
            .action
        else {
            panic!()
        };
        assert_eq!(c.heart_beat, (3000, 1000));
        s.connected(&c, (1000, 3000), 10_000);
        // server sends every 3000, client every 1000 (closed after 2000 of silence)
        assert_eq!(s.heart_beats(), (3000, 1000));
        assert_eq!(s.next_deadline(), Some(12_000));
        assert_eq!(s.tick(11_999), Tick::default());
        assert!(s.tick(12_000).client_silent);
        s.received(11_500);
        assert!(!s.tick(12_999).send_heartbeat);
        assert!(s.tick(13_000).send_heartbeat);
        s.sent(13_000);
        assert_eq!(s.next_deadline(), Some(13_500));
        assert!(!s.tick(13_400).client_silent);
        assert!(s.tick(13_500).client_silent);
        let mut quiet = connected("1.2");
        assert_eq!(quiet.next_deadline(), None);
        assert_eq!(quiet.tick(u64::MAX / 2), Tick::default());
    }

    #[test]
    fn subscriptions_ack_modes_and_acks() {
        let mut s = connected("1.2");
        let step = s
            .on_frame(frame(
                Command::Subscribe,
                &[("destination", "/queue/a"), ("id", "1"), ("ack", "client")],
            ))
            .unwrap();
        assert!(
            matches!(step.action, Action::Subscribe { ref subscription, .. } if subscription.ack == AckMode::Client)
        );
        s.on_frame(frame(
            Command::Subscribe,
            &[
                ("destination", "/queue/b"),
                ("id", "2"),
                ("ack", "client-individual"),
            ],
        ))
        .unwrap();
        let dup = s
            .on_frame(frame(
                Command::Subscribe,
                &[("destination", "/queue/a"), ("id", "1")],
            ))
            .unwrap_err();
        assert_eq!(dup.message, "Duplicated subscription identifier");
        assert_eq!(
            dup.detail,
            "A subscription identified by 'T_1' already exists."
        );
        let id1 = message_id("1", "session-x", 7);
        let a = s.on_frame(frame(Command::Ack, &[("id", &id1)])).unwrap();
        assert_eq!(
            a.action,
            Action::Ack {
                tag: 7,
                multiple: true
            }
        );
        let id2 = message_id("2", "session-x", 8);
        let a = s.on_frame(frame(Command::Ack, &[("id", &id2)])).unwrap();
        assert_eq!(
            a.action,
            Action::Ack {
                tag: 8,
                multiple: false
            }
        );
        let n = s
            .on_frame(frame(Command::Nack, &[("id", &id2), ("requeue", "false")]))
            .unwrap();
        assert_eq!(
            n.action,
            Action::Nack {
                tag: 8,
                multiple: false,
                requeue: false
            }
        );
        let n = s.on_frame(frame(Command::Nack, &[("id", &id2)])).unwrap();
        assert_eq!(
            n.action,
            Action::Nack {
                tag: 8,
                multiple: false,
                requeue: true
            }
        );
        let e = s
            .on_frame(frame(Command::Ack, &[("id", "zzz")]))
            .unwrap_err();
        assert_eq!(e.detail, "\"ACK\" must include a valid \"id\" header\n");
        let u = s
            .on_frame(frame(Command::Unsubscribe, &[("id", "1")]))
            .unwrap();
        assert!(matches!(u.action, Action::Unsubscribe { .. }));
        let e = s
            .on_frame(frame(Command::Unsubscribe, &[("id", "9")]))
            .unwrap_err();
        assert_eq!(e.message, "No subscription found");
    }

    #[test]
    fn acks_in_1_1_use_message_id() {
        let mut s = connected("1.1");
        let id = message_id("x", "s", 3);
        let a = s
            .on_frame(frame(
                Command::Ack,
                &[("message-id", &id), ("subscription", "x")],
            ))
            .unwrap();
        assert_eq!(
            a.action,
            Action::Ack {
                tag: 3,
                multiple: false
            }
        );
    }

    #[test]
    fn transactions_hold_frames_until_commit() {
        let mut s = connected("1.2");
        assert_eq!(
            s.on_frame(frame(Command::Begin, &[("transaction", "t")]))
                .unwrap()
                .action,
            Action::Nothing
        );
        let send = frame(
            Command::Send,
            &[("destination", "/queue/a"), ("transaction", "t")],
        );
        assert_eq!(s.on_frame(send.clone()).unwrap().action, Action::Nothing);
        let ack = frame(Command::Ack, &[("id", "T_1@@s@@1"), ("transaction", "t")]);
        s.on_frame(ack.clone()).unwrap();
        let Action::Commit(frames) = s
            .on_frame(frame(Command::Commit, &[("transaction", "t")]))
            .unwrap()
            .action
        else {
            panic!()
        };
        assert_eq!(frames, vec![send, ack]);
        let e = s
            .on_frame(frame(Command::Commit, &[("transaction", "t")]))
            .unwrap_err();
        assert_eq!(e.detail, "Invalid transaction identifier: \"t\"\n");
        s.on_frame(frame(Command::Begin, &[("transaction", "u")]))
            .unwrap();
        s.on_frame(frame(
            Command::Send,
            &[("destination", "/queue/a"), ("transaction", "u")],
        ))
        .unwrap();
        assert_eq!(
            s.on_frame(frame(Command::Abort, &[("transaction", "u")]))
                .unwrap()
                .action,
            Action::Nothing
        );
        assert!(s
            .on_frame(frame(
                Command::Send,
                &[("destination", "/queue/a"), ("transaction", "u")]
            ))
            .is_err());
    }

    #[test]
    fn bad_destinations() {
        let mut s = connected("1.2");
        let e = s
            .on_frame(frame(Command::Send, &[("destination", "/foo/bar")]))
            .unwrap_err();
        assert_eq!(e.message, "Unknown destination");
        let e = s
            .on_frame(frame(
                Command::Subscribe,
                &[("destination", "/temp-queue/r"), ("id", "1")],
            ))
            .unwrap_err();
        assert_eq!(e.message, "Invalid destination");
    }

    #[test]
    fn message_ids_round_trip() {
        let id = message_id("sub@@x", "session-abc", 42);
        assert_eq!(parse_message_id(&id), Some(("sub@@x", 42)));
        assert_eq!(parse_message_id("T_a@@b"), None);
    }
}
