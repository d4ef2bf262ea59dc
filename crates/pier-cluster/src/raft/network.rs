//! openraft's `RaftNetwork` over the peer transport, and the receiving side of Raft's RPCs.

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use super::log_adapter::GroupTypes;
use super::{PeerNode, TypeConfig};
use crate::rpc::{Request, Response};
use crate::transport::{Transport, TransportError};

/// One Raft RPC of a group (the metadata group's by default; a quorum queue's group has
/// its own types).
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum RaftRequest<C: GroupTypes = TypeConfig> {
    Append(AppendEntriesRequest<C>),
    Vote(VoteRequest<u64>),
    Snapshot(InstallSnapshotRequest<C>),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum RaftResponse {
    Append(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    Snapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
}

/// Hands a peer's Raft RPC to the local Raft node of its group.
pub async fn serve<C: GroupTypes>(
    raft: &openraft::Raft<C>,
    request: RaftRequest<C>,
) -> RaftResponse {
    match request {
        RaftRequest::Append(r) => RaftResponse::Append(raft.append_entries(r).await),
        RaftRequest::Vote(r) => RaftResponse::Vote(raft.vote(r).await),
        RaftRequest::Snapshot(r) => RaftResponse::Snapshot(raft.install_snapshot(r).await),
    }
}

/// How a group's RPCs travel in the node's request frames.
pub trait Route<C: GroupTypes>: Clone + Send + Sync + 'static {
    fn request(&self, r: RaftRequest<C>) -> Request;

    /// About how many bytes an entry takes in an AppendEntries (0: small, not counted).
    fn entry_bytes(&self, _entry: &C::Entry) -> usize {
        0
    }
}

/// Entries one AppendEntries carries at most, in bytes (more than one entry only while
/// they fit): openraft gives the RPC one heartbeat interval (250 ms for a queue group)
/// before it counts it as failed, and a follower appends and fsyncs the lot before it
/// answers, so a few big entries go in several RPCs rather than one that times out.
const APPEND_BYTES: usize = 4 << 20;

/// The metadata group: `Request::Raft`.
#[derive(Debug, Clone, Copy)]
pub struct MetadataRoute;

impl Route<TypeConfig> for MetadataRoute {
    fn request(&self, r: RaftRequest<TypeConfig>) -> Request {
        Request::Raft(r)
    }
}

/// Makes a [`PeerClient`] per target, all sharing the node's transport.
#[derive(Clone)]
pub struct NetworkFactory<R = MetadataRoute> {
    pub transport: Transport,
    pub route: R,
}

impl<C: GroupTypes, R: Route<C>> RaftNetworkFactory<C> for NetworkFactory<R> {
    type Network = PeerClient<R>;

    async fn new_client(&mut self, target: u64, node: &PeerNode) -> PeerClient<R> {
        PeerClient {
            transport: self.transport.clone(),
            route: self.route.clone(),
            target,
            node: node.clone(),
        }
    }
}

pub struct PeerClient<R = MetadataRoute> {
    transport: Transport,
    route: R,
    target: u64,
    node: PeerNode,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Text(String);

impl<R> PeerClient<R> {
    async fn call<C: GroupTypes, E: std::error::Error>(
        &self,
        request: RaftRequest<C>,
        timeout: Duration,
    ) -> Result<RaftResponse, RPCError<u64, PeerNode, E>>
    where
        R: Route<C>,
    {
        let r = self
            .transport
            .call(
                self.target,
                &self.node.addr,
                &self.route.request(request),
                timeout,
            )
            .await;
        match r {
            Ok(Response::Raft(r)) => Ok(r),
            Ok(Response::Refused(reason)) => Err(RPCError::Unreachable(Unreachable::new(&Text(
                format!("{} refused: {reason}", self.node),
            )))),
            Ok(_) => Err(RPCError::Network(NetworkError::new(&Text(
                "unexpected response".into(),
            )))),
            // Unreachable makes openraft back off before trying this peer again; a closed
            // connection is retried at once.
            Err(e @ (TransportError::Unreachable { .. } | TransportError::Refused { .. })) => {
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Err(TransportError::Timeout) => Err(RPCError::Timeout(Timeout {
                action: openraft::RPCTypes::AppendEntries,
                id: 0,
                target: self.target,
                timeout,
            })),
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }

    fn unexpected<E: std::error::Error>() -> RPCError<u64, PeerNode, E> {
        RPCError::Network(NetworkError::new(&Text("mismatched response".into())))
    }
}

impl<C: GroupTypes, R: Route<C>> RaftNetwork<C> for PeerClient<R> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, PeerNode, RaftError<u64>>> {
        if rpc.entries.len() > 1 {
            let mut total = 0usize;
            let fit = rpc
                .entries
                .iter()
                .take_while(|e| {
                    total += self.route.entry_bytes(e);
                    total <= APPEND_BYTES
                })
                .count();
            if fit < rpc.entries.len() {
                // openraft sends fewer entries (at least one) and goes on at once.
                return Err(RPCError::PayloadTooLarge(
                    PayloadTooLarge::new_entries_hint(fit.max(1) as u64),
                ));
            }
        }
        match self
            .call(RaftRequest::Append(rpc), option.hard_ttl())
            .await?
        {
            RaftResponse::Append(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(Self::unexpected()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<C>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, PeerNode, RaftError<u64, InstallSnapshotError>>,
    > {
        match self
            .call(RaftRequest::Snapshot(rpc), option.hard_ttl())
            .await?
        {
            RaftResponse::Snapshot(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(Self::unexpected()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, PeerNode, RaftError<u64>>> {
        match self.call(RaftRequest::Vote(rpc), option.hard_ttl()).await? {
            RaftResponse::Vote(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(Self::unexpected()),
        }
    }
}
