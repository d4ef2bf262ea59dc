//! A quorum queue's Raft group, in openraft's terms: its types (a log entry is a
//! [`QueueEntry`], an answer a [`QueueReply`]), its timing, how its RPCs travel, and its
//! state machine — a [`QueueMachine`] that hands what each entry did to the queue's
//! [`EffectRunner`] (which carries out deliveries where this member leads).
//!
//! Snapshots are the engine's state in `quorum::snapshot`'s format, one file per group
//! (`raft/snapshot_file.rs`). openraft's own policy is off: the queue's duties task asks for
//! one when enough log has piled up and the queue is small enough to copy cheaply (the log
//! holds the bodies of a deep backlog until it drains, as Ra's does).

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{AnyError, EntryPayload, OptionalSend, StorageIOError};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use pier_broker::queue::engine::{EngineConfig, Snapshot};

use super::log_adapter::decode;
use super::network::{RaftRequest, Route};
use super::snapshot_file::{snap_err, SnapshotFiles};
use super::{LogId, PeerNode, SnapshotMeta, StorageError};
use crate::quorum::{Applied, QueueEntry, QueueMachine};
use crate::rpc::Request;

/// What the leader answers a proposer once its entry is applied there.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub enum QueueReply {
    #[default]
    Done,
    /// A publish: `false` when the queue refused it (`x-overflow: reject-publish`).
    Enqueued(bool),
    /// basic.get: what it took (encoded [`GotMessage`]), and the ready messages left.
    Got(Option<Box<GotMessage>>, u64),
    /// Purge: the messages dropped.
    Dropped(u64),
    /// A consumer refused: 404 (the queue is gone) or 403 (an exclusive consumer).
    Refused(u16),
    /// A batch's answers, one per op in order.
    Batch(Vec<QueueReply>),
}

/// A message basic.get took on the leader.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GotMessage {
    pub offset: u64,
    pub redelivered: bool,
    pub returns: u32,
    pub enqueued_at: u32,
    /// The failed deliveries among `returns` (absent from a node before it: 0).
    #[serde(default)]
    pub failed: u32,
    /// The message, as an enqueue entry.
    pub message: QueueEntry,
}

/// The log entry travels in openraft's (MessagePack) frames as its own binary format.
impl Serialize for QueueEntry {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let b = self.to_bytes().map_err(serde::ser::Error::custom)?;
        s.serialize_bytes(&b)
    }
}

struct EntryVisitor;

impl<'de> serde::de::Visitor<'de> for EntryVisitor {
    type Value = QueueEntry;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a quorum queue log entry (bytes)")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<QueueEntry, E> {
        QueueEntry::decode(&Bytes::copy_from_slice(v)).map_err(E::custom)
    }

    /// Borrowed from the input: from a log record, the entry (and its bodies) are slices of
    /// it (`decode_shared`).
    fn visit_borrowed_bytes<E: serde::de::Error>(self, v: &'de [u8]) -> Result<QueueEntry, E> {
        QueueEntry::decode(&super::log_adapter::shared_bytes(v)).map_err(E::custom)
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<QueueEntry, E> {
        QueueEntry::decode(&Bytes::from(v)).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for QueueEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_byte_buf(EntryVisitor)
    }
}

openraft::declare_raft_types!(
    /// A quorum queue group's types.
    pub QueueTypeConfig:
        D = QueueEntry,
        R = QueueReply,
        NodeId = u64,
        Node = PeerNode,
        Entry = openraft::Entry<QueueTypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type QueueRaft = openraft::Raft<QueueTypeConfig>;
pub type QueueEntryOf = openraft::Entry<QueueTypeConfig>;
pub type QueueMembership = openraft::StoredMembership<u64, PeerNode>;

/// With `--quorum-heartbeats true` a quorum queue's group heartbeats every 250 ms and elects after 1–1.6 s of
/// silence (openraft's timers; a follower waits for the lease too, so 2.6–3.2 s after a
/// leader's death).
pub const QUEUE_HEARTBEAT_MS: u64 = 250;
pub const QUEUE_ELECTION_MIN_MS: u64 = 1000;
pub const QUEUE_ELECTION_MAX_MS: u64 = 1600;

/// With `--quorum-heartbeats false` (the default, decision 0009) a group neither
/// heartbeats nor starts elections by itself: a node with 1,000 quorum queues would
/// otherwise send 1,000 groups' heartbeats to every follower several times a second while
/// they are idle. As RabbitMQ's Ra (with its node-level failure detector, aten), the node
/// watches its peers instead, and a member elects itself when its group's leader's node
/// stops answering pings (`quorum/elections.rs`). Committed indexes still reach followers:
/// openraft sends an AppendEntries when the commit index moves. With elections off, the
/// election timeout only sets the leader lease (openraft's is the maximum): a voter refuses
/// to elect another leader this long after it last heard from the current one. The
/// heartbeat interval is also how long an AppendEntries may take.
pub const QUIET_HEARTBEAT_MS: u64 = 500;
pub const QUIET_ELECTION_MIN_MS: u64 = 1000;
pub const QUIET_ELECTION_MAX_MS: u64 = 1200;

/// openraft's configuration for a quorum queue's group; `heartbeats`: the default timers
/// (else decision 0009's).
pub fn queue_config(
    group: u64,
    heartbeats: bool,
) -> Result<openraft::Config, openraft::ConfigError> {
    let (heartbeat, min, max) = if heartbeats {
        (
            QUEUE_HEARTBEAT_MS,
            QUEUE_ELECTION_MIN_MS,
            QUEUE_ELECTION_MAX_MS,
        )
    } else {
        (
            QUIET_HEARTBEAT_MS,
            QUIET_ELECTION_MIN_MS,
            QUIET_ELECTION_MAX_MS,
        )
    };
    openraft::Config {
        cluster_name: format!("queue-{group:016x}"),
        heartbeat_interval: heartbeat,
        election_timeout_min: min,
        election_timeout_max: max,
        enable_heartbeat: heartbeats,
        enable_elect: heartbeats,
        // An entry is a node's batch of writes (up to 1 MiB of bodies, `quorum/service.rs`);
        // an AppendEntries also stops at 4 MiB (`network.rs`, `APPEND_BYTES`).
        max_payload_entries: 64,
        // Entries are batches: a few dozen behind a snapshot are plenty for a follower that
        // is a little behind.
        max_in_snapshot_log_to_keep: 64,
        snapshot_policy: openraft::SnapshotPolicy::Never,
        ..openraft::Config::default()
    }
    .validate()
}

/// A queue group's RPCs: `Request::QueueRaft` with its group id.
#[derive(Debug, Clone, Copy)]
pub struct QueueRoute(pub u64);

impl Route<QueueTypeConfig> for QueueRoute {
    fn request(&self, r: RaftRequest<QueueTypeConfig>) -> Request {
        Request::QueueRaft {
            group: self.0,
            request: Box::new(r),
        }
    }

    fn entry_bytes(&self, entry: &QueueEntryOf) -> usize {
        match &entry.payload {
            EntryPayload::Normal(e) => e.size_hint(),
            _ => 0,
        }
    }
}

/// Carries out what applied entries did (deliveries, cancellations, dead letters): the
/// member decides whether it leads. Called on the state machine's task, in log order.
pub trait EffectRunner: Send + Sync + 'static {
    fn applied(&self, entry: &QueueEntry, applied: &Applied);
    /// This member leads: entries are applied with every body they deliver at hand.
    fn leading(&self) -> bool;
}

/// A member's bodies kept only in its log, read back from its log store: the entry at the
/// message's index, the op at its position (`quorum::machine::place_of`). The last entry
/// read is kept decoded, as read-ahead and a backlog's deliveries take its messages in turn.
pub struct LogBodies<S> {
    store: Arc<S>,
    last: Mutex<Option<(u64, Arc<QueueEntry>)>>,
}

impl<S> LogBodies<S> {
    pub fn new(store: Arc<S>) -> Self {
        LogBodies {
            store,
            last: Mutex::new(None),
        }
    }
}

impl<S: super::log_store::LogStore> crate::quorum::BodySource for LogBodies<S> {
    fn message(&self, offset: u64) -> Option<Arc<pier_broker::message::Message>> {
        let (index, position) = crate::quorum::place_of(offset);
        let cached = self
            .last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|(i, _)| *i == index)
            .map(|(_, e)| Arc::clone(e));
        let entry = match cached {
            Some(e) => e,
            None => {
                let records = self.store.read(index..index + 1).ok()?;
                let (_, bytes) = records.into_iter().next()?;
                let EntryPayload::Normal(e) = decode::<QueueEntryOf>(&bytes).ok()?.payload else {
                    return None;
                };
                let e = Arc::new(e);
                *self.last.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((index, Arc::clone(&e)));
                e
            }
        };
        crate::quorum::message_of(entry.op_at(position)?).map(Arc::new)
    }
}

fn sm_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_state_machine(AnyError::new(&e)).into()
}

/// The group's state machine on this member.
pub struct QueueStateMachine {
    machine: Arc<Mutex<QueueMachine>>,
    last_applied: Option<LogId>,
    membership: QueueMembership,
    runner: Arc<dyn EffectRunner>,
    files: SnapshotFiles,
    /// The queue's configuration as this member built it (a snapshot does not carry it).
    config: EngineConfig,
}

impl QueueStateMachine {
    /// The state machine of a group whose snapshots live in `dir`: a member restarting
    /// continues from its snapshot, then its log.
    pub fn open(
        machine: Arc<Mutex<QueueMachine>>,
        runner: Arc<dyn EffectRunner>,
        dir: PathBuf,
        config: EngineConfig,
    ) -> Result<Self, StorageError> {
        let files = SnapshotFiles::open(dir)?;
        let mut sm = QueueStateMachine {
            machine,
            last_applied: None,
            membership: QueueMembership::default(),
            runner,
            files,
            config,
        };
        if let Some((meta, data)) = sm.files.current() {
            sm.restore(&meta, &data)?;
        }
        Ok(sm)
    }

    fn machine(&self) -> MutexGuard<'_, QueueMachine> {
        self.machine.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn restore(&mut self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        let index = meta.last_log_id.map_or(0, |l| l.index);
        let mut restored =
            QueueMachine::restore_bytes(self.config.clone(), &Bytes::copy_from_slice(data), index)
                .map_err(snap_err)?;
        let mut machine = self.machine();
        if let Some(bodies) = machine.bodies() {
            restored.set_bodies(bodies);
        }
        *machine = restored;
        drop(machine);
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        Ok(())
    }
}

/// What the leader tells the proposer of an entry.
pub fn reply_of(applied: &Applied) -> QueueReply {
    if applied.batch.is_empty() {
        reply_of_one(&applied.reply)
    } else {
        QueueReply::Batch(applied.batch.iter().map(reply_of_one).collect())
    }
}

fn reply_of_one(
    reply: &Result<pier_broker::queue::engine::Reply, pier_broker::queue::engine::Refusal>,
) -> QueueReply {
    use pier_broker::queue::engine::{Published, Refusal, Reply};
    match reply {
        Err(Refusal::Deleted) => QueueReply::Refused(404),
        Err(Refusal::ExclusiveConsumer) => QueueReply::Refused(403),
        Ok(Reply::Enqueued { result, .. }) => {
            QueueReply::Enqueued(!matches!(result, Published::Rejected))
        }
        Ok(Reply::Got {
            delivery,
            remaining,
        }) => {
            let got = delivery.as_ref().and_then(|d| {
                let message = d.message.as_ref()?;
                let entry = QueueEntry::new(0, 0, crate::quorum::QueueOp::enqueue(message, None));
                Some(Box::new(GotMessage {
                    offset: d.offset,
                    redelivered: d.redelivered,
                    returns: d.returns.count,
                    enqueued_at: d.enqueued_at,
                    failed: d.returns.failed,
                    message: entry,
                }))
            });
            QueueReply::Got(got, *remaining)
        }
        Ok(Reply::Dropped(n)) => QueueReply::Dropped(*n),
        Ok(_) => QueueReply::Done,
    }
}

/// Encodes and writes the snapshot captured when it was asked for.
pub struct QueueSnapshotBuilder {
    captured: Option<(SnapshotMeta, Snapshot)>,
    /// The clock of the last entry applied, and where bodies not in memory are read.
    at: u64,
    bodies: Option<Arc<dyn crate::quorum::BodySource>>,
    /// The machine's last policy change (`QueueMachine::policy_version`).
    policy_version: u64,
    files: SnapshotFiles,
}

impl RaftSnapshotBuilder<QueueTypeConfig> for QueueSnapshotBuilder {
    async fn build_snapshot(
        &mut self,
    ) -> Result<openraft::Snapshot<QueueTypeConfig>, StorageError> {
        let (meta, snapshot) = self
            .captured
            .take()
            .ok_or_else(|| sm_err(std::io::Error::other("snapshot already built")))?;
        let files = self.files.clone();
        let m = meta.clone();
        let (at, bodies, version) = (self.at, self.bodies.clone(), self.policy_version);
        let data = tokio::task::spawn_blocking(move || {
            let bytes = crate::quorum::machine::encode_with_bodies(
                &snapshot,
                at,
                bodies.as_deref(),
                version,
            )
            .ok_or_else(|| {
                snap_err(std::io::Error::other(
                    "a quorum queue body could not be read back from the log",
                ))
            })?
            .map_err(snap_err)?;
            // The buffer itself when nothing else holds it (it does not: just encoded).
            let data = Arc::new(Vec::from(bytes));
            files.store(&m, Arc::clone(&data)).map_err(snap_err)?;
            Ok::<_, StorageError>(data)
        })
        .await
        .map_err(snap_err)??;
        tracing::debug!(snapshot = %meta.snapshot_id, bytes = data.len(), "quorum queue snapshot built");
        Ok(openraft::Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data.as_ref().clone())),
        })
    }
}

impl RaftStateMachine<QueueTypeConfig> for QueueStateMachine {
    type SnapshotBuilder = QueueSnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, QueueMembership), StorageError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<QueueReply>, StorageError>
    where
        I: IntoIterator<Item = QueueEntryOf> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut replies = Vec::new();
        for e in entries {
            let reply = match &e.payload {
                EntryPayload::Blank => QueueReply::Done,
                EntryPayload::Normal(entry) => {
                    let leading = self.runner.leading();
                    let applied = self.machine().apply_as(e.log_id.index, entry, leading);
                    self.runner.applied(entry, &applied);
                    reply_of(&applied)
                }
                EntryPayload::Membership(m) => {
                    self.membership = QueueMembership::new(Some(e.log_id), m.clone());
                    QueueReply::Done
                }
            };
            self.last_applied = Some(e.log_id);
            replies.push(reply);
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> QueueSnapshotBuilder {
        // The state is captured here, on the state machine's task, so it is exactly the
        // applied state; it is encoded and written off this task (`build_snapshot`).
        let (snapshot, at, bodies, policy_version) = {
            let m = self.machine();
            (m.snapshot(), m.at(), m.bodies(), m.policy_version())
        };
        let id = match self.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, rand::random::<u32>()),
            None => format!("0-0-{}", rand::random::<u32>()),
        };
        QueueSnapshotBuilder {
            captured: Some((
                SnapshotMeta {
                    last_log_id: self.last_applied,
                    last_membership: self.membership.clone(),
                    snapshot_id: id,
                },
                snapshot,
            )),
            at,
            bodies,
            policy_version,
            files: self.files.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        self.restore(meta, &data)?;
        let (files, m, d) = (self.files.clone(), meta.clone(), Arc::new(data));
        tokio::task::spawn_blocking(move || files.store(&m, d))
            .await
            .map_err(snap_err)?
            .map_err(snap_err)?;
        tracing::debug!(snapshot = %meta.snapshot_id, "quorum queue snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<openraft::Snapshot<QueueTypeConfig>>, StorageError> {
        Ok(self.files.current().map(|(meta, data)| openraft::Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data.as_ref().clone())),
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::quorum::QueueOp;
    use crate::raft::log_adapter::{decode_shared, encode};
    use openraft::testing::log_id;
    use pier_broker::message::Message;
    use pier_wire::{BasicProperties, ShortString};

    /// An entry read from the log, or from a peer's frame (AppendEntries, a forwarded
    /// write), carries its bodies as slices of what it was read from (no copy); decoded
    /// from a plain slice, as copies.
    #[test]
    fn entries_read_from_the_log_share_the_record() {
        let body = Bytes::from(vec![7u8; 4096]);
        let m = Message::new(
            ShortString::from("x"),
            ShortString::from("k"),
            BasicProperties::default(),
            body.clone(),
        );
        let entry: openraft::Entry<QueueTypeConfig> = openraft::Entry {
            log_id: log_id(1, 1, 5),
            payload: EntryPayload::Normal(QueueEntry::new(1, 2, QueueOp::enqueue(&m, None))),
        };
        let record = encode(&entry).unwrap();
        let within = |b: &Bytes| {
            let (start, at) = (record.as_ptr() as usize, b.as_ptr() as usize);
            at >= start && at + b.len() <= start + record.len()
        };
        let body_of = |e: &openraft::Entry<QueueTypeConfig>| match &e.payload {
            EntryPayload::Normal(q) => match q.op() {
                QueueOp::Enqueue { body, .. } => body.clone(),
                _ => panic!("not an enqueue"),
            },
            _ => panic!("not an enqueue"),
        };
        let shared: openraft::Entry<QueueTypeConfig> = decode_shared(&record).unwrap();
        assert_eq!(shared, entry);
        assert!(within(&body_of(&shared)));
        let copied: openraft::Entry<QueueTypeConfig> = decode(&record).unwrap();
        assert_eq!(copied, entry);
        assert!(!within(&body_of(&copied)));
        let mut wire = bytes::BytesMut::new();
        crate::transport::frame::encode(
            crate::transport::frame::Kind::Request,
            1,
            &entry,
            &mut wire,
        )
        .unwrap();
        let frame = crate::transport::frame::decode(&mut wire).unwrap().unwrap();
        let received: openraft::Entry<QueueTypeConfig> =
            crate::transport::frame::payload(&frame).unwrap();
        assert_eq!(received, entry);
        let b = body_of(&received);
        let (start, at) = (frame.payload.as_ptr() as usize, b.as_ptr() as usize);
        assert!(at >= start && at + b.len() <= start + frame.payload.len());
    }
}
