//! [`Metadata`]: where the management API (and, next, the AMQP channel) sends definition
//! changes. On a single node a change is applied at once by the same [`Applier`] the Raft
//! state machine uses, so both behave the same; on a clustered node it goes through
//! [`ClusterHandle::propose`]. Transient objects (non-durable exchanges and queues, and
//! bindings that involve one) stay local to their node, outside Raft, as in RabbitMQ.

use std::sync::Arc;

use pier_broker::Broker;
use pier_store::DestinationKind;

use crate::error::MetadataError;
use crate::handle::ClusterHandle;
use crate::metadata::{Applier, Catalog, Hooks, MetadataCommand, Outcome};

#[derive(Clone, Debug)]
pub struct Metadata {
    applier: Applier,
    cluster: Option<ClusterHandle>,
}

impl Metadata {
    /// A single node: changes are applied locally, nothing is replicated.
    pub fn local(
        broker: Arc<Broker>,
        catalog: Arc<Catalog>,
        hooks: Option<Arc<dyn Hooks>>,
    ) -> Self {
        Metadata {
            applier: Applier::new(broker, catalog, hooks),
            cluster: None,
        }
    }

    /// A clustered node.
    pub fn clustered(handle: ClusterHandle) -> Self {
        Metadata {
            applier: handle.applier().clone(),
            cluster: Some(handle),
        }
    }

    pub fn broker(&self) -> &Arc<Broker> {
        self.applier.broker()
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        self.applier.catalog()
    }

    pub fn cluster(&self) -> Option<&ClusterHandle> {
        self.cluster.as_ref()
    }

    /// Whether `cmd` changes replicated definitions (a clustered node proposes it).
    pub fn replicated(&self, cmd: &MetadataCommand) -> bool {
        use MetadataCommand as C;
        let b = self.applier.broker();
        let durable_exchange = |vhost: &str, name: &str| {
            b.vhost(vhost)
                .is_none_or(|vh| name.is_empty() || vh.is_durable_exchange(name))
        };
        let durable_queue = |vhost: &str, name: &str| {
            b.vhost(vhost).is_none_or(|vh| {
                vh.find_queue(name)
                    .is_none_or(|q| q.options().durable && !q.is_exclusive())
            })
        };
        match cmd {
            C::DeclareExchange { durable, .. } | C::DeclareQueue { durable, .. } => *durable,
            C::DeleteExchange { vhost, name, .. } => durable_exchange(vhost, name),
            C::DeleteQueue { vhost, name, .. } => durable_queue(vhost, name),
            C::Bind {
                vhost,
                source,
                destination,
                destination_kind,
                ..
            }
            | C::Unbind {
                vhost,
                source,
                destination,
                destination_kind,
                ..
            } => {
                durable_exchange(vhost, source)
                    && match destination_kind {
                        DestinationKind::Queue => durable_queue(vhost, destination),
                        DestinationKind::Exchange => durable_exchange(vhost, destination),
                    }
            }
            C::Batch { commands } => commands.iter().any(|c| self.replicated(c)),
            _ => true,
        }
    }

    /// Applies `cmd`: through the cluster when it changes replicated definitions on a
    /// clustered node (returning once this node has applied it), locally otherwise.
    pub async fn execute(&self, cmd: MetadataCommand) -> Result<Outcome, MetadataError> {
        if let Some(c) = &self.cluster {
            if self.replicated(&cmd) {
                return Ok(c.propose(cmd).await?.outcome?);
            }
        }
        if matches!(cmd, MetadataCommand::Batch { .. }) {
            // A large import declares thousands of objects: off the async workers.
            let applier = self.applier.clone();
            return tokio::task::spawn_blocking(move || applier.apply(&cmd))
                .await
                .map_err(|e| {
                    MetadataError::Refused(crate::metadata::CommandError::Invalid(format!(
                        "the import stopped: {e}"
                    )))
                })?
                .map_err(MetadataError::Refused);
        }
        // Durable definitions are fsync'd: not on the worker's other tasks' time.
        Ok(crate::blocking::storage_bound(|| self.applier.apply(&cmd))?)
    }
}
