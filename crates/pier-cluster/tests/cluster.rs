//! In-process clusters on loopback: formation, read-your-writes, convergence, snapshots
//! (log truncation and a new member catching up from one), and a minority refusing changes.
//! The process-level faults (SIGKILL, SIGSTOP, cut links) are in tests/cluster/ (Python).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../pier/tests/common/ports.rs"]
mod ports;

use std::sync::Arc;
use std::time::Duration;

use pier_broker::storage::BrokerStorage;
use pier_broker::Broker;
use pier_cluster::metadata::{MetadataCommand, MetadataSnapshot, Outcome};
use pier_cluster::{ClusterConfig, ClusterError, ClusterHandle};
use ports::free_port;

struct TestNode {
    name: String,
    broker: Arc<Broker>,
    storage: Arc<BrokerStorage>,
    handle: ClusterHandle,
    _dir: tempfile::TempDir,
}

async fn start(name: &str, port: u16, peers: &[u16]) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    // Only what every node has alike (a real node's config-file users are proposed to the
    // cluster by the binary at start-up, so every node ends up with the same hashes).
    let broker = Arc::new(Broker::empty(Vec::new()));
    broker.add_vhost("/");
    let storage =
        Arc::new(BrokerStorage::open(dir.path(), pier_store::SyncPolicy::Always).unwrap());
    {
        let (s, b) = (Arc::clone(&storage), Arc::clone(&broker));
        tokio::task::spawn_blocking(move || s.recover(&b))
            .await
            .unwrap()
            .unwrap();
    }
    let config = ClusterConfig {
        node_name: name.to_owned(),
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        advertise: format!("127.0.0.1:{port}"),
        peers: peers.iter().map(|p| format!("127.0.0.1:{p}")).collect(),
        dir: dir.path().join("cluster"),
        cluster_name: None,
        propose_timeout: Duration::from_secs(5),
        tls: None,
        quorum_replication: false,
        quorum_heartbeats: true,
    };
    let handle = ClusterHandle::start(
        config,
        Arc::clone(&broker),
        Arc::clone(storage.definitions()),
        None,
    )
    .await
    .unwrap();
    TestNode {
        name: name.to_owned(),
        broker,
        storage,
        handle,
        _dir: dir,
    }
}

impl TestNode {
    async fn stop(self) {
        self.handle.shutdown().await;
        let s = Arc::clone(&self.storage);
        tokio::task::spawn_blocking(move || s.shutdown())
            .await
            .unwrap();
    }

    fn definitions(&self) -> MetadataSnapshot {
        MetadataSnapshot::capture(self.storage.definitions(), self.handle.catalog()).unwrap()
    }
}

fn declare(vhost: &str, name: &str, home: &str) -> MetadataCommand {
    MetadataCommand::DeclareQueue {
        vhost: vhost.into(),
        name: name.into(),
        durable: true,
        auto_delete: false,
        arguments: Vec::new(),
        home: home.into(),
        members: vec![home.into()],
        checked: true,
    }
}

/// Waits (bounded) until `f` holds.
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..300 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("not reached within 15 s: {what}");
}

async fn propose_retrying(h: &ClusterHandle, cmd: MetadataCommand) -> Outcome {
    // Right after start-up a node may not know the leader yet.
    for _ in 0..10 {
        match h.propose(cmd.clone()).await {
            Ok(a) => return a.outcome.unwrap(),
            Err(ClusterError::NoQuorum { .. }) => continue,
            Err(e) => panic!("propose: {e}"),
        }
    }
    panic!("no leader");
}

async fn three() -> Vec<TestNode> {
    let ports = [free_port(), free_port(), free_port()];
    let mut nodes = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        nodes.push(start(&format!("pier@n{}", i + 1), *p, &ports).await);
    }
    for n in &nodes {
        let h = n.handle.clone();
        eventually("three voters", || {
            let h = h.clone();
            async move {
                let s = h.status().await;
                s.cluster_id.is_some() && s.members.iter().filter(|m| m.voter).count() == 3
            }
        })
        .await;
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_form_apply_on_every_node_and_read_their_writes() {
    let nodes = three().await;
    let status = nodes[0].handle.status().await;
    assert!(status.cluster_id.is_some());
    assert!(status.leader.is_some());
    let ids: Vec<_> = nodes.iter().map(|n| n.handle.cluster_id()).collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "one cluster id: {ids:?}");

    // Proposed on every node in turn: the proposer sees its own write at once.
    for (i, n) in nodes.iter().enumerate() {
        let q = format!("q{i}");
        let out = propose_retrying(&n.handle, declare("/", &q, &n.name)).await;
        assert_eq!(out, Outcome::Created(true));
        let vh = n.broker.vhost("/").unwrap();
        assert!(
            vh.find_queue(&q).is_some(),
            "read-your-writes on {}",
            n.name
        );
        assert_eq!(n.handle.catalog().queue_home("/", &q).unwrap().home, n.name);
    }
    // A refusal is the same everywhere, and comes back to the proposer.
    let mut args = pier_wire::FieldTable::new();
    args.insert("x-max-length", pier_wire::FieldValue::from(5i64));
    let mut inequivalent = declare("/", "q0", "pier@n1");
    if let MetadataCommand::DeclareQueue { arguments, .. } = &mut inequivalent {
        *arguments = pier_store::encode_arguments(&args).unwrap();
    }
    let r = nodes[2].handle.propose(inequivalent).await.unwrap();
    assert!(matches!(
        r.outcome,
        Err(pier_cluster::metadata::CommandError::Broker(_))
    ));
    // A user, a vhost and a policy, from a follower.
    for cmd in [
        MetadataCommand::PutVhost {
            name: "v".into(),
            description: "d".into(),
            tags: vec!["t".into()],
            default_queue_type: None,
            creator: Some("guest".into()),
        },
        MetadataCommand::PutUser {
            name: "alice".into(),
            password_hash: pier_broker::auth::hash_password("secret"),
            tags: vec![],
        },
        MetadataCommand::SetPolicy {
            vhost: "v".into(),
            name: "p".into(),
            pattern: "^q".into(),
            apply_to: "queues".into(),
            priority: 1,
            definition: serde_json::json!({"max-length": 10}),
        },
    ] {
        propose_retrying(&nodes[1].handle, cmd).await;
    }
    // Every node ends up with the same definitions (checked, not assumed).
    let want = nodes[1].definitions();
    for n in &nodes {
        eventually(&format!("{} has the definitions", n.name), || {
            let same = n.definitions() == want;
            async move { same }
        })
        .await;
    }
    for n in &nodes {
        assert_eq!(n.definitions(), want, "{}", n.name);
    }
    assert!(want.definitions.queues.len() >= 3);
    assert!(nodes[0].broker.user("alice").is_some());
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshots_truncate_the_log_and_a_new_member_catches_up_from_one() {
    let (p1, p2) = (free_port(), free_port());
    let first = start("pier@a", p1, &[p1]).await;
    // More entries than a snapshot interval, a few at a time.
    let total = pier_cluster::raft::SNAPSHOT_EVERY as usize + 100;
    let mut done = 0;
    while done < total {
        let mut batch = Vec::new();
        for i in done..(done + 50).min(total) {
            let h = first.handle.clone();
            batch.push(tokio::spawn(async move {
                propose_retrying(&h, declare("/", &format!("s{i}"), "pier@a")).await
            }));
        }
        for b in batch {
            b.await.unwrap();
        }
        done = (done + 50).min(total);
    }
    let h = first.handle.clone();
    eventually("a snapshot was taken and the log purged", || {
        let h = h.clone();
        async move {
            let s = h.status().await;
            s.snapshot.is_some() && s.purged.is_some()
        }
    })
    .await;
    // A new node joins: the log it needs is gone, so it gets the snapshot.
    let second = start("pier@b", p2, &[p1, p2]).await;
    let want = first.definitions();
    eventually("the new member has every queue", || {
        let same = second.definitions() == want;
        async move { same }
    })
    .await;
    assert!(second.broker.vhost("/").unwrap().find_queue("s0").is_some());
    // And it takes part: a change made on it is applied on both.
    propose_retrying(&second.handle, declare("/", "after", "pier@b")).await;
    eventually("the first node has it", || {
        let there = first
            .broker
            .vhost("/")
            .unwrap()
            .find_queue("after")
            .is_some();
        async move { there }
    })
    .await;
    second.stop().await;
    first.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_minority_refuses_changes_instead_of_hanging() {
    let mut nodes = three().await;
    propose_retrying(&nodes[0].handle, declare("/", "before", "pier@n1")).await;
    let survivor = nodes.remove(0);
    for n in nodes {
        n.stop().await;
    }
    let err = survivor
        .handle
        .propose(declare("/", "after", "pier@n1"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClusterError::NoQuorum { .. } | ClusterError::Unconfirmed { .. }
        ),
        "{err}"
    );
    // Nothing changed on the survivor.
    assert!(survivor
        .broker
        .vhost("/")
        .unwrap()
        .find_queue("after")
        .is_none());
    survivor.stop().await;
}
