//! openraft's `RaftStateMachine` over [`Applier`]: committed entries are applied to the
//! node's broker; snapshots are the whole definitions.
//!
//! ```text
//!  apply(batch) ─► blocking thread: DefinitionsStore::batch {
//!                      for entry: Applier::apply(command)      (broker + write-through)
//!                      cluster["sm/applied"] = {last_applied, membership}
//!                  }  ── one redb commit, one fsync
//!               ─► outcomes of this node's own proposals ─► their waiting callers
//! ```
//!
//! Because the applied position is committed in the same redb transaction as the changes it
//! describes, the node's `definitions.redb` is always exactly "the state after entry N": a
//! crash loses at most the batch in flight, which is applied again from the log.
//!
//! Snapshots are built from `definitions.redb` (captured on the state machine's task, so at
//! exactly the applied position; serialised off it), kept as two files under
//! `<data>/cluster/snapshot/` so that a restarted node can serve them, and installed by
//! making the local definitions equal to the snapshot's (`Applier::install`).

use std::collections::HashMap;
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use openraft::storage::RaftStateMachine;
use openraft::{AnyError, EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use pier_store::DefinitionsStore;

use super::snapshot_file::{snap_err, SnapshotFiles};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use super::{Applied, Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::metadata::{Applier, CommandError, MetadataSnapshot, Outcome};

/// The state machine's record in the `cluster` table of `definitions.redb`.
const SM_KEY: &[u8] = b"sm/applied";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct SmRecord {
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

fn sm_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_state_machine(AnyError::new(&e)).into()
}

type Reply = oneshot::Sender<Result<Outcome, CommandError>>;

/// Callers waiting for the outcome of this node's own proposals, by request number.
#[derive(Debug, Default)]
pub struct Waiters {
    map: Mutex<HashMap<u64, Reply>>,
}

impl Waiters {
    pub fn register(&self, request: u64) -> oneshot::Receiver<Result<Outcome, CommandError>> {
        let (tx, rx) = oneshot::channel();
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(request, tx);
        rx
    }

    pub fn forget(&self, request: u64) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&request);
    }

    fn complete(&self, request: u64, outcome: Result<Outcome, CommandError>) {
        let tx = self
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&request);
        if let Some(tx) = tx {
            let _ = tx.send(outcome);
        }
    }
}

/// Registers the message stores of the new durable queues a batch declares, per vhost, in
/// one durable write each (instead of one fsync per queue while applying).
fn prepare_queues(applier: &Applier, entries: &[Entry]) {
    fn collect(
        cmd: &crate::metadata::MetadataCommand,
        me: Option<&str>,
        out: &mut HashMap<String, Vec<String>>,
    ) {
        use crate::metadata::MetadataCommand as C;
        match cmd {
            // Only queues homed here store messages here.
            C::DeclareQueue {
                vhost,
                name,
                durable: true,
                home,
                ..
            } if me.is_none_or(|me| me == home) => {
                out.entry(vhost.clone()).or_default().push(name.clone())
            }
            C::Batch { commands } => commands.iter().for_each(|c| collect(c, me, out)),
            _ => {}
        }
    }
    let me = applier.broker().cluster().map(|c| c.node().to_owned());
    let mut by_vhost = HashMap::new();
    for e in entries {
        if let EntryPayload::Normal(p) = &e.payload {
            collect(&p.command, me.as_deref(), &mut by_vhost);
        }
    }
    for (vhost, mut names) in by_vhost {
        let Some(vh) = applier.broker().vhost(&vhost) else {
            continue;
        };
        names.retain(|n| vh.find_queue(n).is_none());
        if names.len() > 1 {
            vh.prepare_durable_queues(names);
        }
    }
}

/// The metadata state machine of one node.
pub struct MetadataStateMachine {
    me: u64,
    applier: Applier,
    defs: Arc<DefinitionsStore>,
    waiters: Arc<Waiters>,
    applied: watch::Sender<Option<LogId>>,
    record: SmRecord,
    snapshots: SnapshotFiles,
}

impl MetadataStateMachine {
    /// Opens the state machine of node `me`: its applied position comes from
    /// `definitions.redb`, its snapshot from `snapshot_dir`.
    pub fn open(
        me: u64,
        applier: Applier,
        defs: Arc<DefinitionsStore>,
        snapshot_dir: PathBuf,
        waiters: Arc<Waiters>,
        applied: watch::Sender<Option<LogId>>,
    ) -> Result<Self, StorageError> {
        let record = match defs.cluster_entry(SM_KEY).map_err(sm_err)? {
            Some(b) => serde_json::from_slice(&b).map_err(sm_err)?,
            None => SmRecord::default(),
        };
        applied.send_replace(record.last_applied);
        Ok(MetadataStateMachine {
            me,
            applier,
            defs,
            waiters,
            applied,
            record,
            snapshots: SnapshotFiles::open(snapshot_dir)?,
        })
    }
}

/// Builds a snapshot from what was captured when it was asked for.
pub struct SnapshotBuilder {
    captured: Result<(SnapshotMeta, Vec<u8>), StorageError>,
    files: SnapshotFiles,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<openraft::Snapshot<TypeConfig>, StorageError> {
        let (meta, data) = std::mem::replace(
            &mut self.captured,
            Err(sm_err(std::io::Error::other("snapshot already built"))),
        )?;
        let data = Arc::new(data);
        let files = self.files.clone();
        let (m, d) = (meta.clone(), Arc::clone(&data));
        tokio::task::spawn_blocking(move || files.store(&m, d))
            .await
            .map_err(snap_err)?
            .map_err(snap_err)?;
        tracing::info!(snapshot = %meta.snapshot_id, bytes = data.len(), "metadata snapshot built");
        Ok(openraft::Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data.as_ref().clone())),
        })
    }
}

impl RaftStateMachine<TypeConfig> for MetadataStateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.record.last_applied, self.record.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let count = entries.len();
        let (applier, defs, me) = (self.applier.clone(), Arc::clone(&self.defs), self.me);
        let mut record = self.record.clone();
        let (record, outcomes) = tokio::task::spawn_blocking(move || {
            prepare_queues(&applier, &entries);
            let mut outcomes = Vec::new();
            let stored = defs.batch(|| {
                for e in &entries {
                    match &e.payload {
                        EntryPayload::Blank => {}
                        EntryPayload::Normal(p) => {
                            let out = applier.apply_at(e.log_id.index, &p.command);
                            if let Err(err) = &out {
                                tracing::debug!(
                                    index = e.log_id.index,
                                    "{}: refused: {err}",
                                    p.command.describe()
                                );
                            }
                            if p.origin == me {
                                outcomes.push((p.request, out));
                            }
                        }
                        EntryPayload::Membership(m) => {
                            record.membership = StoredMembership::new(Some(e.log_id), m.clone());
                        }
                    }
                    record.last_applied = Some(e.log_id);
                }
                let bytes = serde_json::to_vec(&record).unwrap_or_default();
                defs.put_cluster_entry(SM_KEY, &bytes)
            });
            match stored {
                Ok(Ok(())) => Ok((record, outcomes)),
                Ok(Err(e)) | Err(e) => Err(e),
            }
        })
        .await
        .map_err(sm_err)?
        .map_err(|e| {
            tracing::error!("applying metadata entries: the definitions store failed: {e}");
            sm_err(e)
        })?;
        // Outcomes first: a caller that sees the applied position move past its entry can
        // rely on its outcome having been delivered already (see `ClusterHandle::propose`).
        for (request, outcome) in outcomes {
            self.waiters.complete(request, outcome);
        }
        self.applied.send_replace(record.last_applied);
        self.record = record;
        Ok(vec![Applied; count])
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Captured here, on the state machine's task, so it is exactly the applied state.
        let (defs, catalog) = (Arc::clone(&self.defs), Arc::clone(self.applier.catalog()));
        let record = self.record.clone();
        let captured = tokio::task::spawn_blocking(move || {
            MetadataSnapshot::capture(&defs, &catalog).map(|s| s.to_bytes())
        })
        .await
        .map_err(snap_err)
        .and_then(|r| r.map_err(snap_err))
        .map(|data| {
            let id = match record.last_applied {
                Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, rand::random::<u32>()),
                None => format!("0-0-{}", rand::random::<u32>()),
            };
            (
                SnapshotMeta {
                    last_log_id: record.last_applied,
                    last_membership: record.membership.clone(),
                    snapshot_id: id,
                },
                data,
            )
        });
        SnapshotBuilder {
            captured,
            files: self.snapshots.clone(),
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
        let parsed = MetadataSnapshot::from_bytes(&data).map_err(snap_err)?;
        let record = SmRecord {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        let (applier, defs) = (self.applier.clone(), Arc::clone(&self.defs));
        let rec = record.clone();
        tokio::task::spawn_blocking(move || {
            let stored = defs.batch(|| {
                let current = defs.load()?;
                applier.install(&parsed, &current);
                defs.put_cluster_entry(SM_KEY, &serde_json::to_vec(&rec).unwrap_or_default())
            });
            match stored {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) | Err(e) => Err(e),
            }
        })
        .await
        .map_err(snap_err)?
        .map_err(snap_err)?;
        let files = self.snapshots.clone();
        let m = meta.clone();
        let data = Arc::new(data);
        tokio::task::spawn_blocking(move || files.store(&m, data))
            .await
            .map_err(snap_err)?
            .map_err(snap_err)?;
        tracing::info!(snapshot = %meta.snapshot_id, last = ?meta.last_log_id, "metadata snapshot installed");
        self.applied.send_replace(record.last_applied);
        self.record = record;
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<openraft::Snapshot<TypeConfig>>, StorageError> {
        Ok(self
            .snapshots
            .current()
            .map(|(meta, data)| openraft::Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data.as_ref().clone())),
            }))
    }
}
