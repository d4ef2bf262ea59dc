//! The seam between the broker and a cluster of nodes. `pier-cluster` implements it; a single
//! node has none, and then nothing here runs.
//!
//! ```text
//!  VHost ── Cluster::home_of / node ──► where a durable queue lives (the replicated catalog)
//!    │   ── Cluster::link(home) ──────► QueueLink: the message path to that node's queues
//!    │                                   (Queue backend `Remote`, queue/remote.rs)
//!    └── Cluster::delete_queue / delete_exchange: lifecycle events (auto-delete, x-expires)
//!        of replicated objects, proposed to the cluster instead of acted on locally
//! ```
//!
//! Everything here is synchronous and must not block: the broker calls it under its locks.
//! Work that needs the network (a proposal) is started and left to run.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::queue::remote::QueueLink;

/// A boxed, sendable future (the broker itself runs none: the server awaits them).
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What the broker needs to know about the cluster it is part of.
pub trait Cluster: Send + Sync + std::fmt::Debug + 'static {
    /// This node's name (`pier@host`).
    fn node(&self) -> &str;

    /// The home node of the durable queue `queue` of `vhost` as the cluster recorded it;
    /// `None` when the cluster has no record of it (it is then created here).
    fn home_of(&self, vhost: &str, queue: &str) -> Option<String>;

    /// The message path to the queues homed on `node`.
    fn link(&self, node: &str) -> Arc<dyn QueueLink>;

    /// A replicated queue homed here must go (auto-delete after its last consumer,
    /// `x-expires`): propose its deletion to the cluster. `reason` is for the log.
    fn delete_queue(&self, vhost: &str, queue: &str, reason: &'static str);

    /// A durable auto-delete exchange lost its last binding on this node: propose its
    /// deletion (the cluster deletes it everywhere).
    fn delete_exchange(&self, vhost: &str, exchange: &str);

    /// The message path of a replicated quorum queue (a Raft group of several members): on
    /// every node, its handle is a remote one over this link, whose home is the group's
    /// leader. `None` for every other queue.
    fn quorum_link(
        &self,
        _vhost: &str,
        _queue: &str,
        _config: &crate::args::QueueConfig,
    ) -> Option<Arc<dyn QueueLink>> {
        None
    }

    /// A durable queue was deleted by the cluster (its replication, if any, stops here).
    fn queue_removed(&self, _vhost: &str, _queue: &str) {}

    /// The members of a replicated queue changed (this node may have joined or left it).
    fn queue_members_changed(&self, _vhost: &str, _queue: &str) {}

    /// A durable queue was declared by the cluster (applied on this node).
    fn queue_declared(&self, _vhost: &str, _queue: &str) {}

    /// How many nodes hold a copy of stream `queue` homed here (its leader and its
    /// replicas): its appends are committed once a majority of them has synced them.
    fn stream_members(&self, _vhost: &str, _queue: &str) -> usize {
        1
    }

    /// Before stream `queue`'s log in `dir` is opened to lead it here: the cluster drops
    /// what this copy holds from a deposed leader's epoch that the stream's history does not
    /// keep (failover).
    fn prepare_stream(
        &self,
        _vhost: &str,
        _queue: &str,
        _dir: &std::path::Path,
    ) -> Result<(), String> {
        Ok(())
    }

    /// A replicated stream got a new leader (applied on this node).
    fn stream_leader_changed(&self, _vhost: &str, _queue: &str) {}
}
