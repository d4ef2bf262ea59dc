//! Queues: `/api/queues[/{vhost}[/{name}]]` (list, show, declare, delete), purging
//! (`contents`), getting messages (`get`), mirror-sync `actions`, and Pier's quorum queue
//! membership endpoints (`quorum-status`, `members`, `transfer-leadership`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::{Extension, Router};
use base64::Engine;
use pier_broker::{BrokerError, Queue, VHost};
use pier_cluster::metadata::{self, MetadataCommand};
use pier_server::ConnectionInfo;
use serde_json::{Map, Value};

use crate::auth::{change_vhost, view_vhost, visible_vhosts, AuthUser};
use crate::error::{ApiError, ApiResult};
use crate::json::{self, body_object, get_bool, get_str, get_table, short, table_to_json};
use crate::routes::connections::connections_by_id;
use crate::routes::consumers::consumer_view;
use crate::routes::Q;
use crate::stats::{queue_counters, queueing};
use crate::views::queue::{
    GotMessage, OwnerDetails, Queue as QueueView, QueueDetails, QueueMessageStats, QuorumFields,
    QuorumMember, StreamMembers,
};
use crate::views::{self, Rate};
use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/queues", get(queues))
        .route("/queues/{vhost}", get(vhost_queues))
        .route(
            "/queues/{vhost}/{name}",
            get(queue).put(put_queue).delete(delete_queue),
        )
        .route("/queues/{vhost}/{name}/contents", delete(purge_queue))
        .route("/queues/{vhost}/{name}/get", post(get_messages))
        .route("/queues/{vhost}/{name}/actions", post(queue_actions))
        .route("/queues/{vhost}/{name}/quorum-status", get(quorum_status))
        .route("/queues/{vhost}/{name}/members", post(add_queue_member))
        .route(
            "/queues/{vhost}/{name}/members/{node}",
            delete(delete_queue_member),
        )
        .route(
            "/queues/{vhost}/{name}/transfer-leadership",
            post(transfer_queue_leadership),
        )
}

fn queue_type(q: &Queue) -> String {
    q.options()
        .arguments
        .get("x-queue-type")
        .and_then(|v| v.as_str())
        .unwrap_or("classic")
        .to_owned()
}

pub(crate) fn queue_view(
    state: &AppState,
    conns: &HashMap<u64, ConnectionInfo>,
    vhost: &str,
    q: &Queue,
    detailed: bool,
) -> QueueView {
    let s = q.stats();
    let o = q.options();
    let consumers = q.consumers();
    let length_rates = state.sampler.gauge_rates(
        &crate::stats::queue_key(vhost, q.name()),
        &queue_counters(q),
    );
    let length_rate = |i: usize| Rate::new(length_rates.get(i).copied().unwrap_or(0.0));
    // The policy in force (policy changes reach existing queues: `VHost::set_policy`), with
    // its definition.
    let config = q.config();
    let policy_name = config.policy.as_deref();
    let definition = policy_name
        .and_then(|name| {
            let vh = state.broker.vhost(vhost)?;
            vh.policies().into_iter().find(|p| p.name == name)
        })
        .map_or_else(
            || Value::Object(Map::new()),
            |p| crate::routes::policies::definition_json(&p.definition),
        );
    // Its home node (the cluster's record of it; on a single node, this node).
    let mut node = state
        .metadata
        .catalog()
        .queue_home(vhost, q.name())
        .map_or_else(|| state.node.clone(), |h| h.home);
    let quorum = (q.kind() == pier_broker::queue::QueueType::Quorum).then(|| {
        let replicated = state
            .cluster()
            .and_then(|c| c.quorum_queue(vhost, q.name()).map(|r| (c, r)));
        let (leader, online, members) = match replicated {
            // A Raft group: its leader is the queue's node, as in RabbitMQ.
            Some((c, (members, leader))) => {
                let online = members
                    .iter()
                    .filter(|n| c.is_running(n))
                    .cloned()
                    .collect();
                if let Some(l) = &leader {
                    node.clone_from(l);
                }
                (leader, online, members)
            }
            // A group of one member: its home node, leader and online.
            None => (Some(node.clone()), vec![node.clone()], vec![node.clone()]),
        };
        QuorumFields {
            messages_dlx: s.dead_letters,
            message_bytes_dlx: s.dead_letter_bytes,
            leader,
            online,
            members,
        }
    });
    let stream_members = (q.kind() == pier_broker::queue::QueueType::Stream).then(|| {
        let members = state
            .cluster()
            .and_then(|c| c.stream_members_of(vhost, q.name()).map(|m| (c, m)));
        match members {
            Some((c, members)) => StreamMembers {
                leader: node.clone(),
                online: members
                    .iter()
                    .filter(|n| c.is_running(n))
                    .cloned()
                    .collect(),
                members,
            },
            None => StreamMembers {
                leader: node.clone(),
                online: vec![node.clone()],
                members: vec![node.clone()],
            },
        }
    });
    let c = q.counters();
    let qs = queueing(state, vhost, q);
    // A stream's figures, and its stream-protocol subscriptions among its consumers.
    let stream = crate::routes::stream::stream_figures(q);
    let subscriptions = if stream.is_some() {
        crate::routes::stream::subscriptions_on(state, vhost, q.name())
    } else {
        0
    };
    let owner_pid_details = o
        .exclusive_owner
        .and_then(|owner| conns.get(&owner))
        .map(|conn| OwnerDetails {
            name: conn.meta.name.clone(),
            peer_host: conn.meta.peer.ip().to_string(),
            peer_port: conn.meta.peer.port(),
        });
    let details = detailed.then(|| QueueDetails {
        consumer_details: consumers
            .iter()
            .map(|c| consumer_view(state, conns, vhost, q.name(), c))
            .collect(),
        incoming: Vec::new(),
        deliveries: Vec::new(),
    });
    QueueView {
        name: q.name().as_str().to_owned(),
        vhost: vhost.to_owned(),
        durable: o.durable,
        auto_delete: o.auto_delete,
        exclusive: o.exclusive_owner.is_some(),
        arguments: table_to_json(&o.arguments),
        node,
        kind: queue_type(q),
        state: "running",
        policy: policy_name.map(str::to_owned),
        operator_policy: None,
        effective_policy_definition: definition,
        consumers: u64::from(s.consumers) + subscriptions as u64,
        messages: s.ready + s.unacked,
        messages_details: length_rate(4),
        messages_ready: s.ready,
        messages_ready_details: length_rate(5),
        messages_unacknowledged: s.unacked,
        messages_unacknowledged_details: length_rate(6),
        message_bytes_ready: s.ready_bytes,
        message_bytes_ram: s.memory_bytes,
        message_bytes_paged_out: s.ready_bytes.saturating_sub(s.memory_bytes),
        messages_paged_out: s.paged_out,
        messages_ram: (s.ready + s.unacked).saturating_sub(s.paged_out),
        messages_ready_ram: s.ready.saturating_sub(s.paged_out),
        messages_unacknowledged_ram: s.unacked,
        memory: s.memory_bytes,
        exclusive_consumer_tag: consumers
            .iter()
            .find(|c| c.exclusive)
            .map(|c| c.tag.as_str().to_owned()),
        single_active_consumer_tag: q.active_consumer_tag().map(|t| t.to_string()),
        quorum,
        stream_members,
        message_stats: QueueMessageStats {
            publish: c.published,
            publish_details: Rate::new(qs.arrival_rate),
            deliver_get: c.delivered,
            deliver_get_details: Rate::new(qs.deliver_rate),
            deliver_no_ack: c.delivered_no_ack,
            ack: c.acked,
            ack_details: Rate::new(qs.ack_rate),
        },
        pier_queueing: qs.view(),
        stream,
        owner_pid_details,
        details,
    }
}

pub(crate) fn sorted_queues(vh: &VHost) -> Vec<Arc<Queue>> {
    let mut qs = vh.queues();
    qs.sort_by(|a, b| a.name().cmp(b.name()));
    qs
}

pub async fn queues(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Query(q): Q,
) -> ApiResult<Response> {
    st.refresh_remote_queues().await;
    let conns = connections_by_id(&st);
    let mut items = Vec::new();
    for vh in visible_vhosts(&st, &user) {
        for queue in sorted_queues(&vh) {
            items.push(queue_view(&st, &conns, vh.name(), &queue, false));
        }
    }
    json::list(views::values(items), &q)
}

pub async fn vhost_queues(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(vhost): Path<String>,
    Query(q): Q,
) -> ApiResult<Response> {
    let vh = view_vhost(&st.broker, &user, &vhost)?;
    st.refresh_remote_queues().await;
    let conns = connections_by_id(&st);
    let items = sorted_queues(&vh)
        .iter()
        .map(|queue| queue_view(&st, &conns, &vhost, queue, false))
        .collect::<Vec<_>>();
    json::list(views::values(items), &q)
}

pub(crate) fn find_queue(vh: &VHost, name: &str) -> ApiResult<Arc<Queue>> {
    vh.queues()
        .into_iter()
        .find(|q| q.name().as_str() == name)
        .ok_or_else(ApiError::not_found)
}

pub async fn queue(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let vh = view_vhost(&st.broker, &user, &vhost)?;
    let q = find_queue(&vh, &name)?;
    if q.is_remote() {
        st.refresh_remote_queues().await;
    }
    let conns = connections_by_id(&st);
    Ok(json::ok(&queue_view(&st, &conns, &vhost, &q, true)))
}

pub async fn put_queue(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let vh = change_vhost(&st.broker, &user, &vhost)?;
    let b = body_object(&body)?;
    short(&name)?;
    vh.check_queue_limit(&name)?;
    drop(vh);
    // `checked`: the client path, so that `max-queues` and the `amq.*` rule apply as in
    // RabbitMQ's API; access to the vhost was checked above. Its home is this node (a
    // replicated queue's: its first leader).
    let durable = get_bool(&b, "durable", false)?;
    let table = get_table(&b, "arguments")?;
    // The API declares no exclusive queues: a transient one is non-exclusive.
    st.deprecated_features
        .check_queue_declare(&name, &vhost, durable, false, &table)?;
    let members = st.queue_members(&vhost, &name, durable, &table);
    let out = st
        .execute(MetadataCommand::DeclareQueue {
            vhost,
            name,
            durable,
            auto_delete: get_bool(&b, "auto_delete", false)?,
            arguments: metadata::arguments(&table)?,
            home: members.first().cloned().unwrap_or_else(|| st.node.clone()),
            members,
            checked: true,
        })
        .await?;
    Ok(json::created_or_updated(out.created()))
}

pub async fn delete_queue(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Q,
) -> ApiResult<Response> {
    let vh = change_vhost(&st.broker, &user, &vhost)?;
    let queue = find_queue(&vh, &name)?;
    let s = queue.stats();
    if q.get("if-unused").is_some_and(|v| v == "true") && s.consumers > 0 {
        return Err(BrokerError::InUse {
            kind: pier_broker::ObjectKind::Queue,
            name,
            vhost,
        }
        .into());
    }
    let if_empty = q.get("if-empty").is_some_and(|v| v == "true");
    if if_empty && s.ready > 0 {
        return Err(BrokerError::NotEmpty { name, vhost }.into());
    }
    drop(queue);
    st.execute(MetadataCommand::DeleteQueue { vhost, name })
        .await?;
    Ok(json::no_content())
}

pub async fn purge_queue(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let vh = change_vhost(&st.broker, &user, &vhost)?;
    find_queue(&vh, &name)?.purge();
    Ok(json::no_content())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum AckMode {
    AckRequeue,
    Ack,
    RejectRequeue,
    Reject,
}

/// POST /api/queues/vhost/name/get: takes up to `count` messages (as basic.get), then acks,
/// rejects or requeues them according to `ackmode`.
pub async fn get_messages(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let vh = change_vhost(&st.broker, &user, &vhost)?;
    let queue = find_queue(&vh, &name)?;
    let b = body_object(&body)?;
    let count = match b.get("count") {
        None => 1,
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .ok_or_else(|| ApiError::bad_request("count must be a non-negative integer"))?,
    };
    let mode = match get_str(&b, "ackmode").unwrap_or("ack_requeue_true") {
        "ack_requeue_true" => AckMode::AckRequeue,
        "ack_requeue_false" => AckMode::Ack,
        "reject_requeue_true" => AckMode::RejectRequeue,
        "reject_requeue_false" => AckMode::Reject,
        other => {
            return Err(ApiError::bad_request(format!("unknown ackmode '{other}'")));
        }
    };
    let base64_always = match get_str(&b, "encoding").unwrap_or("auto") {
        "auto" => false,
        "base64" => true,
        other => {
            return Err(ApiError::bad_request(format!("unknown encoding '{other}'")));
        }
    };
    let truncate: Option<usize> = b
        .get("truncate")
        .and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })
        .and_then(|n| usize::try_from(n).ok());
    let mut taken = Vec::new();
    let mut out = Vec::new();
    for _ in 0..count.min(10_000) {
        let Some((d, remaining)) = queue.get(true) else {
            break;
        };
        let m = &d.message;
        let body = match truncate {
            Some(n) if n < m.body.len() => m.body.slice(..n),
            _ => m.body.clone(),
        };
        let (payload, encoding) = match std::str::from_utf8(&body) {
            Ok(text) if !base64_always => (text.to_owned(), "string"),
            _ => (
                base64::engine::general_purpose::STANDARD.encode(&body),
                "base64",
            ),
        };
        out.push(GotMessage {
            payload_bytes: m.body.len(),
            redelivered: d.redelivered,
            exchange: m.exchange.as_str().to_owned(),
            routing_key: m.routing_key.as_str().to_owned(),
            message_count: remaining,
            properties: json::properties_to_json(&m.properties),
            payload,
            payload_encoding: encoding,
        });
        taken.push(d.offset);
    }
    match mode {
        // RabbitMQ's management plugin nacks (`ack_requeue_true`) or rejects them: only a
        // reject is a failed delivery.
        AckMode::AckRequeue => queue.requeue(&taken, false),
        AckMode::RejectRequeue => queue.requeue(&taken, true),
        AckMode::Ack => queue.settle(&taken),
        AckMode::Reject => queue.reject(&taken),
    }
    Ok(json::ok(&out))
}

/// POST /api/queues/{vhost}/{name}/actions `{"action": "sync"|"cancel_sync"}`: mirror
/// synchronisation; a Pier queue has no mirrors, so (as for RabbitMQ's unmirrored classic
/// queues) there is nothing to do: 204.
pub async fn queue_actions(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let vh = view_vhost(&st.broker, &user, &vhost)?;
    if !vh.queues().iter().any(|q| q.name().as_str() == name) {
        return Err(ApiError::not_found());
    }
    let b = body_object(&body)?;
    match get_str(&b, "action") {
        Some("sync" | "cancel_sync") => Ok(json::no_content()),
        Some(other) => Err(ApiError::bad_request(vec!["unknown", other])),
        None => Err(ApiError::bad_request("[{key_missing,action}]")),
    }
}

/// GET /api/queues/{vhost}/{name}/quorum-status (Pier's; `pier ctl quorum_status`): one
/// row per member of a replicated quorum queue's Raft group.
pub async fn quorum_status(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let vh = crate::auth::view_vhost(&st.broker, &user, &vhost)?;
    let q = find_queue(&vh, &name)?;
    if q.kind() != pier_broker::queue::QueueType::Quorum {
        return Err(ApiError::bad_request(format!(
            "queue '{name}' in vhost '{vhost}' is not a quorum queue"
        )));
    }
    let rows = match st.cluster() {
        Some(c) => c.quorum_status(&vhost, &name).await,
        None => None,
    };
    // Not replicated: a group of one, this node, which leads.
    let rows = rows.unwrap_or_else(|| {
        vec![(
            q.home_node().map_or_else(|| st.node.clone(), str::to_owned),
            Ok(pier_cluster::GroupStatus {
                state: "leader".into(),
                term: 1,
                last_log_index: 0,
                commit_index: 0,
                leader: None,
            }),
        )]
    });
    let items: Vec<QuorumMember> = rows
        .into_iter()
        .map(|(node, r)| match r {
            Ok(s) => QuorumMember::Answered {
                node,
                raft_state: s.state,
                term: s.term,
                last_log_index: s.last_log_index,
                commit_index: s.commit_index,
                leader: s.leader,
            },
            Err(error) => QuorumMember::Failed {
                node,
                raft_state: "noproc",
                error,
            },
        })
        .collect();
    Ok(json::ok(&items))
}

/// POST /api/queues/{vhost}/{name}/members `{"node": N}` (Pier's; `pier ctl add_member`):
/// the node joins the replicated quorum queue's Raft group.
pub async fn add_queue_member(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let (c, stream) = member_admin(&st, &user, &vhost, &name)?;
    let node = target_node(&body)?;
    if stream {
        return changed(c.add_stream_replica(&vhost, &name, &node).await);
    }
    changed(c.add_queue_member(&vhost, &name, &node).await)
}

/// DELETE /api/queues/{vhost}/{name}/members/{node} (`pier ctl delete_member`).
pub async fn delete_queue_member(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name, node)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    let (c, stream) = member_admin(&st, &user, &vhost, &name)?;
    if stream {
        return changed(c.delete_stream_replica(&vhost, &name, &node).await);
    }
    changed(c.delete_queue_member(&vhost, &name, &node).await)
}

/// POST /api/queues/{vhost}/{name}/transfer-leadership `{"node": N}`
/// (`pier ctl transfer_leadership`).
pub async fn transfer_queue_leadership(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let c = quorum_admin(&st, &user, &vhost, &name)?;
    let node = target_node(&body)?;
    changed(c.transfer_queue_leadership(&vhost, &name, &node).await)
}

/// Membership changes are an administrator's (as `rabbitmq-queues`), on a quorum queue of a
/// clustered node: the node's cluster handle.
fn quorum_admin<'a>(
    st: &'a AppState,
    user: &AuthUser,
    vhost: &str,
    name: &str,
) -> ApiResult<&'a pier_cluster::ClusterHandle> {
    if !user.is_admin() {
        return Err(ApiError::not_authorised("Not administrator user"));
    }
    let vh = crate::auth::view_vhost(&st.broker, user, vhost)?;
    let q = find_queue(&vh, name)?;
    if q.kind() != pier_broker::queue::QueueType::Quorum {
        return Err(ApiError::bad_request(format!(
            "queue '{name}' in vhost '{vhost}' is not a quorum queue"
        )));
    }
    st.cluster()
        .ok_or_else(|| ApiError::bad_request("not a cluster member"))
}

/// As `quorum_admin`, for the membership endpoints that take streams too (a stream's
/// replicas: `pier ctl add_replica`, `delete_replica`); true for a stream.
fn member_admin<'a>(
    st: &'a AppState,
    user: &AuthUser,
    vhost: &str,
    name: &str,
) -> ApiResult<(&'a pier_cluster::ClusterHandle, bool)> {
    if !user.is_admin() {
        return Err(ApiError::not_authorised("Not administrator user"));
    }
    let vh = crate::auth::view_vhost(&st.broker, user, vhost)?;
    let q = find_queue(&vh, name)?;
    let stream = match q.kind() {
        pier_broker::queue::QueueType::Quorum => false,
        pier_broker::queue::QueueType::Stream => true,
        _ => {
            return Err(ApiError::bad_request(format!(
                "queue '{name}' in vhost '{vhost}' is not a quorum queue or a stream"
            )))
        }
    };
    let c = st
        .cluster()
        .ok_or_else(|| ApiError::bad_request("not a cluster member"))?;
    Ok((c, stream))
}

/// The `node` of a membership request's body.
fn target_node(body: &Bytes) -> ApiResult<String> {
    let m = json::body_object(body)?;
    json::get_str(&m, "node")
        .map(str::to_owned)
        .ok_or_else(|| ApiError::bad_request("\"node\" is required"))
}

fn changed(r: Result<(), pier_cluster::ClusterError>) -> ApiResult<Response> {
    r.map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(json::no_content())
}
