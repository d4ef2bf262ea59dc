//! Proposals to a quorum queue's group on the member that leads it: everything proposed
//! there — this node's own batch of writes and the writes other nodes forward — goes into
//! one Raft entry per round, with at most [`IN_FLIGHT`] entries waiting for their commit.
//!
//! openraft 0.9's core appends every proposal as its own entry and waits for that entry's
//! fsync before it handles anything else (`RaftCore::append_to_log`), replication and the
//! followers' answers included. A leader whose consumers are on other nodes got a publish
//! batch from its own writer and a settlement batch from each consumer's node, each its own
//! serial fsync and its own replicated entry (scenario C on three nodes: ~540 entries/s,
//! the core blocked in fsyncs ~40% of the time). Combined, they share one of each.
//!
//! Order: proposals are taken first come, first served and keep their order inside an entry,
//! and entries are proposed one after the other, so what one source proposes in order is
//! in the log in that order (a writer's publish batches rely on it).

use std::sync::Arc;

use openraft::error::ClientWriteError;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::entry::{QueueEntry, QueueOp};
use crate::raft::queue_group::QueueRaft;
use crate::raft::queue_group::QueueReply;
use crate::raft::PeerNode;

/// Entries proposed and not yet answered: one committing while the next fills.
const IN_FLIGHT: usize = 2;
/// What one entry takes at most: ops...
const ENTRY_OPS: usize = 1024;
/// ...and message bytes (an entry stays well below the transport's frame limit, with
/// `queue_config`'s entries per AppendEntries).
const ENTRY_BYTES: usize = 2 << 20;
/// Proposals waiting for a round (backpressure on the writers and the forwarded writes).
const QUEUED: usize = 256;

/// How a proposal ended.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    /// Committed and applied: one answer per op, in order.
    Applied(Vec<QueueReply>),
    /// This member does not lead (any more): the leader it knows.
    NotLeader(Option<PeerNode>),
    /// Not decided here (the group stopped, the leadership ended before the commit, ...).
    Failed(String),
}

struct Proposal {
    ops: Vec<QueueOp>,
    bytes: usize,
    done: oneshot::Sender<Outcome>,
}

/// The group's proposer (one per member; it proposes only while its member leads, else
/// openraft answers `ForwardToLeader`).
pub(crate) struct Proposer {
    tx: mpsc::Sender<Proposal>,
}

/// Stamps an entry with the leader's clocks just before it is proposed.
pub(crate) type Stamp = Arc<dyn Fn(&mut QueueEntry) + Send + Sync>;

impl Proposer {
    /// Starts the proposing task on `runtime`; it ends with the last handle.
    pub(crate) fn start(
        raft: QueueRaft,
        stamp: Stamp,
        runtime: &tokio::runtime::Handle,
    ) -> Proposer {
        let (tx, rx) = mpsc::channel(QUEUED);
        runtime.spawn(run(raft, stamp, rx));
        Proposer { tx }
    }

    /// Queues `ops` for the next entry; the receiver gets one answer per op. `bytes`: the
    /// message bytes they carry.
    pub(crate) async fn propose(
        &self,
        ops: Vec<QueueOp>,
        bytes: usize,
    ) -> oneshot::Receiver<Outcome> {
        let (done, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(p)) = self.tx.send(Proposal { ops, bytes, done }).await {
            let _ = p.done.send(Outcome::Failed("the group stopped".into()));
        }
        rx
    }
}

async fn run(raft: QueueRaft, stamp: Stamp, mut rx: mpsc::Receiver<Proposal>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut carried: Option<Proposal> = None;
    loop {
        // A slot first, then the proposals: what arrives meanwhile joins the entry.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let first = match carried.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let (mut ops_n, mut bytes) = (first.ops.len(), first.bytes);
        let mut round = vec![first];
        while ops_n < ENTRY_OPS && bytes < ENTRY_BYTES {
            match rx.try_recv() {
                Ok(p) if ops_n + p.ops.len() > ENTRY_OPS || bytes + p.bytes > ENTRY_BYTES => {
                    carried = Some(p);
                    break;
                }
                Ok(p) => {
                    ops_n += p.ops.len();
                    bytes += p.bytes;
                    round.push(p);
                }
                Err(_) => break,
            }
        }
        let mut counts = Vec::with_capacity(round.len());
        let mut dones = Vec::with_capacity(round.len());
        let mut ops = Vec::with_capacity(ops_n);
        for p in round {
            counts.push(p.ops.len());
            dones.push(p.done);
            ops.extend(p.ops);
        }
        let mut entry = batch_entry(ops);
        stamp(&mut entry);
        match raft.client_write_ff(entry).await {
            Ok(answer) => {
                tokio::spawn(async move {
                    let outcome = match answer.await {
                        Ok(Ok(r)) => match batch_replies(r.data, counts.iter().sum()) {
                            Some(replies) => Ok(replies),
                            None => Err(Outcome::Failed("mismatched answer".into())),
                        },
                        Ok(Err(ClientWriteError::ForwardToLeader(f))) => {
                            Err(Outcome::NotLeader(f.leader_node))
                        }
                        Ok(Err(e)) => Err(Outcome::Failed(e.to_string())),
                        Err(_) => Err(Outcome::Failed("the group stopped".into())),
                    };
                    hand_out(outcome, &counts, dones);
                    drop(slot);
                });
            }
            Err(e) => hand_out(Err(Outcome::Failed(e.to_string())), &counts, dones),
        }
    }
}

/// Gives each proposal of an entry its share of the answers, or the entry's failure.
fn hand_out(
    outcome: Result<Vec<QueueReply>, Outcome>,
    counts: &[usize],
    dones: Vec<oneshot::Sender<Outcome>>,
) {
    match outcome {
        Ok(replies) => {
            let mut replies = replies.into_iter();
            for (n, d) in counts.iter().zip(dones) {
                let _ = d.send(Outcome::Applied(replies.by_ref().take(*n).collect()));
            }
        }
        Err(e) => {
            for d in dones {
                let _ = d.send(e.clone());
            }
        }
    }
}

/// One entry for ops written together: the op alone, or a batch of them.
pub(crate) fn batch_entry(ops: Vec<QueueOp>) -> QueueEntry {
    let op = match <[QueueOp; 1]>::try_from(ops) {
        Ok([one]) => one,
        Err(many) => QueueOp::Batch(many),
    };
    QueueEntry::new(0, 0, op)
}

/// The answers to `n` ops written as one entry (`batch_entry`), one per op; `None` when the
/// answer does not match.
pub(crate) fn batch_replies(reply: QueueReply, n: usize) -> Option<Vec<QueueReply>> {
    match reply {
        QueueReply::Batch(replies) if replies.len() == n => Some(replies),
        one if n == 1 => Some(vec![one]),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn answered(rx: oneshot::Receiver<Outcome>) -> Outcome {
        let mut rx = rx;
        rx.try_recv().unwrap()
    }

    /// The answers of one entry go back to the proposals it combined, each its own share
    /// in its own order.
    #[test]
    fn each_proposal_gets_its_own_answers_in_order() {
        let (d1, r1) = oneshot::channel();
        let (d2, r2) = oneshot::channel();
        let (d3, r3) = oneshot::channel();
        let replies = vec![
            QueueReply::Enqueued(true),
            QueueReply::Enqueued(false),
            QueueReply::Done,
            QueueReply::Dropped(4),
        ];
        let entry = batch_entry(vec![QueueOp::Tick; 4]);
        assert!(matches!(entry.op(), QueueOp::Batch(ref ops) if ops.len() == 4));
        let replies = batch_replies(QueueReply::Batch(replies), 4).unwrap();
        hand_out(Ok(replies), &[2, 1, 1], vec![d1, d2, d3]);
        assert!(matches!(answered(r1), Outcome::Applied(v)
            if v == [QueueReply::Enqueued(true), QueueReply::Enqueued(false)]));
        assert!(matches!(answered(r2), Outcome::Applied(v) if v == [QueueReply::Done]));
        assert!(matches!(answered(r3), Outcome::Applied(v) if v == [QueueReply::Dropped(4)]));
    }

    /// An entry that was not applied fails every proposal in it the same way.
    #[test]
    fn a_failed_entry_fails_every_proposal_in_it() {
        let (d1, r1) = oneshot::channel();
        let (d2, r2) = oneshot::channel();
        hand_out(Err(Outcome::NotLeader(None)), &[1, 3], vec![d1, d2]);
        assert!(matches!(answered(r1), Outcome::NotLeader(None)));
        assert!(matches!(answered(r2), Outcome::NotLeader(None)));
        assert!(batch_replies(QueueReply::Batch(vec![QueueReply::Done]), 2).is_none());
        assert_eq!(
            batch_replies(QueueReply::Done, 1),
            Some(vec![QueueReply::Done])
        );
    }
}
