//! The sharded store: placement, recovery per shard, and a deleted name's shard.

use std::sync::mpsc;

use bytes::Bytes;
use pier_store::{
    shard_dir, Command, QueueRef, ShardConfig, ShardedStore, StoreHandle, StoredMessage,
};

use super::common::small_config;

fn open(dir: &std::path::Path, shards: usize) -> ShardedStore {
    ShardedStore::open(
        dir,
        ShardConfig {
            shards,
            store: small_config(),
            ..ShardConfig::default()
        },
    )
    .unwrap()
}

fn msg(q: usize, i: u64) -> StoredMessage {
    StoredMessage::new(
        "x".into(),
        "k".into(),
        Bytes::from_static(&[0, 0]),
        Bytes::from(format!("{q}:{i}")),
    )
}

fn shard_of(shards: &pier_store::Shards, h: &StoreHandle) -> usize {
    shards
        .handles()
        .iter()
        .position(|x| x.same_store(h))
        .unwrap()
}

#[test]
fn queues_spread_over_shards_and_stay_there_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 3);
    let shards = store.shards();
    let mut per_shard = [0; 3];
    for q in 0..6 {
        let (h, id) = shards.open_queue(&format!("q{q}")).unwrap();
        per_shard[shard_of(&shards, &h)] += 1;
        for i in 0..50u64 {
            let refs = vec![QueueRef {
                queue: id,
                offset: i,
            }];
            h.append(refs, msg(q, i), |r| assert!(r.is_ok())).unwrap();
        }
    }
    assert_eq!(per_shard, [2, 2, 2], "fewest queues first");
    shards.wait_durable().unwrap();
    let homes: Vec<_> = (0..6).map(|q| shards.home(&format!("q{q}"))).collect();
    store.shutdown().unwrap();
    for i in 1..3 {
        assert!(shard_dir(dir.path(), i).join("queues.log").exists());
    }

    // Fewer shards configured: every shard directory is still opened, queues stay put, new
    // queues go to the first shard only.
    let store = open(dir.path(), 1);
    let shards = store.shards();
    assert_eq!(shards.len(), 3);
    for (q, home) in homes.iter().enumerate() {
        assert_eq!(shards.home(&format!("q{q}")), *home);
    }
    let listed = shards.queues().unwrap();
    assert_eq!(listed.len(), 6);
    for (h, info) in listed {
        let q: usize = info.name[1..].parse().unwrap();
        assert_eq!(Some(shard_of(&shards, &h)), homes[q]);
        assert_eq!(info.messages, 50);
        assert_eq!(info.next_offset, 50);
        let id = info.id;
        let m = h.call(move |s| s.read(id, 49)).unwrap().unwrap();
        assert_eq!(m.body, Bytes::from(format!("{q}:49")));
    }
    let (h, _) = shards.open_queue("new").unwrap();
    assert_eq!(shard_of(&shards, &h), 0);
    store.shutdown().unwrap();
}

#[test]
fn a_name_opened_again_while_its_deletion_is_pending_keeps_its_shard() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 4);
    let shards = store.shards();
    let (h, id) = shards.open_queue("q").unwrap();
    h.append(
        vec![QueueRef {
            queue: id,
            offset: 0,
        }],
        msg(0, 0),
        |_| {},
    )
    .unwrap();
    let home = shard_of(&shards, &h);
    // Hold the queue's shard so that its deletion waits in the channel.
    let (parked_tx, parked_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    h.send(Command::Run(Box::new(move |_| {
        parked_tx.send(()).unwrap();
        let _ = go_rx.recv();
    })))
    .unwrap();
    parked_rx.recv().unwrap();
    shards.delete_queue(&h, id, "q").unwrap();
    // Other queues fill the emptier shards meanwhile.
    for n in 0..3 {
        shards.open_queue(&format!("other{n}")).unwrap();
    }
    let again = {
        let shards = shards.clone();
        std::thread::spawn(move || shards.open_queue("q").unwrap())
    };
    std::thread::sleep(std::time::Duration::from_millis(50));
    go_tx.send(()).unwrap();
    let (h2, id2) = again.join().unwrap();
    assert_eq!(
        shard_of(&shards, &h2),
        home,
        "same shard as the pending deletion"
    );
    assert_eq!(
        shards.home("q"),
        Some(home),
        "the deletion did not forget the new queue"
    );
    let live = h2.call(move |s| s.live_messages(id2)).unwrap().unwrap();
    assert!(live.is_empty(), "deleted, then opened anew");
    store.shutdown().unwrap();

    // Without a re-open, a finished deletion frees the name and the shard's slot.
    let store = open(dir.path(), 4);
    let shards = store.shards();
    let (h, id) = shards.open_queue("gone").unwrap();
    let before = shard_of(&shards, &h);
    shards.delete_queue(&h, id, "gone").unwrap();
    h.wait_durable().unwrap();
    assert_eq!(shards.home("gone"), None);
    let (h, _) = shards.open_queue("next").unwrap();
    assert_eq!(shard_of(&shards, &h), before, "its slot is free again");
    store.shutdown().unwrap();
}

/// Registering ahead (a cluster node's batch of declarations): names spread as `open_queue`
/// spreads them, each shard registers its new ones, and opening them afterwards finds them
/// where they were registered, before and after a restart.
#[test]
fn open_queues_registers_ahead_on_each_names_shard() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 3);
    let shards = store.shards();
    let (h0, _) = shards.open_queue("a").unwrap();
    let names: Vec<String> = ["a", "b", "c", "d", "e", "b"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    shards.open_queues(&names).unwrap();
    assert_eq!(shards.home("a"), Some(shard_of(&shards, &h0)));
    let mut per_shard = [0; 3];
    for n in ["a", "b", "c", "d", "e"] {
        per_shard[shards.home(n).unwrap()] += 1;
    }
    assert_eq!(per_shard, [2, 2, 1], "fewest queues first");
    let mut listed: Vec<String> = shards
        .queues()
        .unwrap()
        .into_iter()
        .map(|(_, q)| q.name)
        .collect();
    listed.sort();
    assert_eq!(listed, ["a", "b", "c", "d", "e"]);
    let homes: Vec<_> = ["b", "c", "d", "e"]
        .iter()
        .map(|n| {
            let (h, _) = shards.open_queue(n).unwrap();
            let shard = shard_of(&shards, &h);
            assert_eq!(shards.home(n), Some(shard));
            shard
        })
        .collect();
    store.shutdown().unwrap();

    let store = open(dir.path(), 3);
    let shards = store.shards();
    for (n, home) in ["b", "c", "d", "e"].iter().zip(homes) {
        assert_eq!(shards.home(n), Some(home), "{n}");
    }
    store.shutdown().unwrap();
}
