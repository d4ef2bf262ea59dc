//! Durable definitions (vhosts, users, permissions, topic permissions, exchanges, queues,
//! bindings, policies) in
//! a redb database (`definitions.redb`).
//!
//! redb gives ACID transactions with a durable (fsynced) commit, copy-on-write B-trees with
//! checksums and crash recovery, in pure Rust. Definitions change rarely and are read once at
//! boot, so one table per kind with a JSON value is plenty; each change is one transaction,
//! and cascades (deleting a queue deletes its bindings) happen in the same transaction.
//!
//! ```text
//!  table        key (each part: u16 BE length + UTF-8/bytes)             value
//!  vhosts       [name]                                                   VhostDef (JSON)
//!  users        [name]                                                   UserDef
//!  permissions  [user][vhost]                                            PermissionDef
//!  topic_permissions [user][vhost][exchange]                             TopicPermissionDef
//!  exchanges    [vhost][name]                                            ExchangeDef
//!  queues       [vhost][name]                                            QueueDef
//!  bindings     [vhost][source]["q"|"e"][destination][routing key][args] BindingDef
//!  policies     [vhost][name]                                            PolicyDef
//!  cluster      owned by pier-cluster's state machine (opaque bytes)      opaque bytes
//! ```
//!
//! A clustered node applies a batch of Raft log entries as one transaction
//! ([`DefinitionsStore::batch`]): every write made on that thread during the batch, the
//! broker's write-through included, lands in one commit (one fsync) together with the state
//! machine's own record of what it has applied, so the two can never disagree after a crash.
//!
//! The types are plain serde structs with no broker types in them; AMQP field tables
//! (arguments) are kept as their exact AMQP encoding ([`encode_arguments`]) so that
//! `FieldValue` needs no second serialization.

use std::path::Path;

use bytes::{Bytes, BytesMut};
use pier_wire::{decode_field_table, encode_field_table, FieldTable};
use redb::{Database, ReadableTable, TableDefinition, TableHandle, WriteTransaction};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::DefinitionsError;

type Table = TableDefinition<'static, &'static [u8], &'static [u8]>;

const VHOSTS: Table = TableDefinition::new("vhosts");
const USERS: Table = TableDefinition::new("users");
const PERMISSIONS: Table = TableDefinition::new("permissions");
const TOPIC_PERMISSIONS: Table = TableDefinition::new("topic_permissions");
const EXCHANGES: Table = TableDefinition::new("exchanges");
const QUEUES: Table = TableDefinition::new("queues");
const BINDINGS: Table = TableDefinition::new("bindings");
const POLICIES: Table = TableDefinition::new("policies");
const CLUSTER: Table = TableDefinition::new("cluster");
const ALL: [Table; 9] = [
    VHOSTS,
    USERS,
    PERMISSIONS,
    TOPIC_PERMISSIONS,
    EXCHANGES,
    QUEUES,
    BINDINGS,
    POLICIES,
    CLUSTER,
];

pub type DefResult<T> = std::result::Result<T, DefinitionsError>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VhostDef {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserDef {
    pub name: String,
    /// RabbitMQ-format salted hash (`rabbit_password_hashing_sha256`).
    pub password_hash: String,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PermissionDef {
    pub user: String,
    pub vhost: String,
    pub configure: String,
    pub write: String,
    pub read: String,
}

/// A user's write / read patterns for routing keys on one topic exchange of a vhost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicPermissionDef {
    pub user: String,
    pub vhost: String,
    pub exchange: String,
    pub write: String,
    pub read: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExchangeDef {
    pub vhost: String,
    pub name: String,
    /// "direct", "fanout", "topic", "headers".
    pub kind: String,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    /// AMQP-encoded field table (see [`encode_arguments`]); empty means no arguments.
    #[serde(default)]
    pub arguments: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueDef {
    pub vhost: String,
    pub name: String,
    pub durable: bool,
    pub auto_delete: bool,
    #[serde(default)]
    pub arguments: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DestinationKind {
    Queue,
    Exchange,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindingDef {
    pub vhost: String,
    /// Source exchange.
    pub source: String,
    pub destination: String,
    pub destination_kind: DestinationKind,
    pub routing_key: String,
    #[serde(default)]
    pub arguments: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyDef {
    pub vhost: String,
    pub name: String,
    pub pattern: String,
    /// "queues", "exchanges" or "all".
    pub apply_to: String,
    pub priority: i32,
    /// The policy's definition object, as in RabbitMQ's definitions JSON.
    pub definition: serde_json::Value,
}

/// Everything, as loaded at boot (or imported).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Definitions {
    pub vhosts: Vec<VhostDef>,
    pub users: Vec<UserDef>,
    pub permissions: Vec<PermissionDef>,
    #[serde(default)]
    pub topic_permissions: Vec<TopicPermissionDef>,
    pub exchanges: Vec<ExchangeDef>,
    pub queues: Vec<QueueDef>,
    pub bindings: Vec<BindingDef>,
    pub policies: Vec<PolicyDef>,
}

/// AMQP encoding of an arguments table (u32 length + pairs); an empty table is stored as
/// nothing at all.
pub fn encode_arguments(table: &FieldTable) -> DefResult<Vec<u8>> {
    if table.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = BytesMut::with_capacity(table.encoded_size());
    encode_field_table(&mut out, table)?;
    Ok(out.to_vec())
}

pub fn decode_arguments(bytes: &[u8]) -> DefResult<FieldTable> {
    if bytes.is_empty() {
        return Ok(FieldTable::new());
    }
    Ok(decode_field_table(&Bytes::copy_from_slice(bytes))?)
}

fn key(parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(parts.iter().map(|p| p.len() + 2).sum());
    for p in parts {
        // Names are far below 64 KiB (AMQP short strings); longer parts are cut, never panic.
        let n = p.len().min(usize::from(u16::MAX));
        k.extend_from_slice(&(n as u16).to_be_bytes());
        k.extend_from_slice(p.get(..n).unwrap_or(p));
    }
    k
}

/// Splits a key back into its parts (None if malformed).
fn key_parts(mut k: &[u8]) -> Option<Vec<&[u8]>> {
    let mut parts = Vec::new();
    while !k.is_empty() {
        let n = usize::from(u16::from_be_bytes(k.get(..2)?.try_into().ok()?));
        parts.push(k.get(2..2 + n)?);
        k = k.get(2 + n..)?;
    }
    Some(parts)
}

fn topic_permission_key(user: &str, vhost: &str, exchange: &str) -> Vec<u8> {
    key(&[user.as_bytes(), vhost.as_bytes(), exchange.as_bytes()])
}

fn binding_key(b: &BindingDef) -> Vec<u8> {
    let kind: &[u8] = match b.destination_kind {
        DestinationKind::Queue => b"q",
        DestinationKind::Exchange => b"e",
    };
    key(&[
        b.vhost.as_bytes(),
        b.source.as_bytes(),
        kind,
        b.destination.as_bytes(),
        b.routing_key.as_bytes(),
        &b.arguments,
    ])
}

/// The definitions database. Cheap to share (`&self` methods; redb serialises writers).
pub struct DefinitionsStore {
    db: Database,
    /// The open transaction of a [`DefinitionsStore::batch`], and the thread running it.
    /// Writes from that thread join it; writes from other threads wait in `begin_write`
    /// until it commits (redb allows one write transaction at a time).
    batch: std::sync::Mutex<Option<(std::thread::ThreadId, WriteTransaction)>>,
}

/// Ends a batch: `take` hands its transaction over for commit; dropped without `take` (a
/// panic in the batch) it aborts it.
struct BatchGuard<'a>(&'a DefinitionsStore);

impl BatchGuard<'_> {
    fn take(self) -> Option<(std::thread::ThreadId, WriteTransaction)> {
        self.0
            .batch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

impl Drop for BatchGuard<'_> {
    fn drop(&mut self) {
        drop(
            self.0
                .batch
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
    }
}

impl std::fmt::Debug for DefinitionsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DefinitionsStore").finish_non_exhaustive()
    }
}

impl DefinitionsStore {
    /// Opens or creates `path` (e.g. `data/definitions.redb`).
    pub fn open(path: impl AsRef<Path>) -> DefResult<DefinitionsStore> {
        let db = Database::create(path.as_ref())?;
        let txn = db.begin_write()?;
        for t in ALL {
            txn.open_table(t)?;
        }
        txn.commit()?;
        Ok(DefinitionsStore {
            db,
            batch: std::sync::Mutex::new(None),
        })
    }

    fn write(&self, f: impl FnOnce(&WriteTransaction) -> DefResult<()>) -> DefResult<()> {
        {
            let batch = self.batch.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((owner, txn)) = batch.as_ref() {
                if *owner == std::thread::current().id() {
                    return f(txn);
                }
            }
        }
        let txn = self.db.begin_write()?;
        f(&txn)?;
        txn.commit()?;
        Ok(())
    }

    /// Runs `f` with every write this thread makes in one transaction, committed (one fsync)
    /// when `f` returns. A write that fails inside the batch is reported to its caller as
    /// usual; what the other writes did is committed all the same (the same outcome as
    /// separate transactions, minus the fsyncs). If the commit itself fails, nothing of the
    /// batch is stored and the error is returned. Batches do not nest: an inner call runs `f`
    /// inside the outer batch.
    pub fn batch<T>(&self, f: impl FnOnce() -> T) -> DefResult<T> {
        let me = std::thread::current().id();
        {
            let batch = self.batch.lock().unwrap_or_else(|p| p.into_inner());
            if batch.as_ref().is_some_and(|(owner, _)| *owner == me) {
                drop(batch);
                return Ok(f());
            }
        }
        // Outside the mutex: this waits for other threads' transactions to commit.
        let txn = self.db.begin_write()?;
        *self.batch.lock().unwrap_or_else(|p| p.into_inner()) = Some((me, txn));
        // If `f` panics, the guard drops (aborts) the transaction so other writers go on.
        let guard = BatchGuard(self);
        let out = f();
        let taken = guard.take();
        if let Some((_, txn)) = taken {
            txn.commit()?;
        }
        Ok(out)
    }

    /// Stores an entry of the `cluster` table (the clustering layer's own records: what its
    /// state machine has applied, queue home nodes, vhost metadata).
    pub fn put_cluster_entry(&self, k: &[u8], v: &[u8]) -> DefResult<()> {
        self.write(|txn| {
            txn.open_table(CLUSTER)?.insert(k, v)?;
            Ok(())
        })
    }

    /// Removes one `cluster` entry, or with `prefix` every entry whose key starts with `k`.
    pub fn delete_cluster_entries(&self, k: &[u8], prefix: bool) -> DefResult<()> {
        self.write(|txn| {
            let mut t = txn.open_table(CLUSTER)?;
            if prefix {
                t.retain(|key, _| !key.starts_with(k))?;
            } else {
                t.remove(k)?;
            }
            Ok(())
        })
    }

    /// Every `cluster` entry, in key order.
    pub fn cluster_entries(&self) -> DefResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(CLUSTER)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// One `cluster` entry.
    pub fn cluster_entry(&self, k: &[u8]) -> DefResult<Option<Vec<u8>>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(CLUSTER)?;
        Ok(t.get(k)?.map(|v| v.value().to_vec()))
    }

    fn put<T: Serialize>(&self, table: Table, k: &[u8], v: &T) -> DefResult<()> {
        let bytes = serde_json::to_vec(v).map_err(DefinitionsError::Encode)?;
        self.write(|txn| {
            txn.open_table(table)?.insert(k, bytes.as_slice())?;
            Ok(())
        })
    }

    fn remove(&self, table: Table, k: &[u8]) -> DefResult<bool> {
        let mut existed = false;
        self.write(|txn| {
            existed = txn.open_table(table)?.remove(k)?.is_some();
            Ok(())
        })?;
        Ok(existed)
    }

    fn all<T: DeserializeOwned>(&self, table: Table) -> DefResult<Vec<T>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(table)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            let def =
                serde_json::from_slice(v.value()).map_err(|source| DefinitionsError::Decode {
                    table: table.name().to_owned(),
                    key: String::from_utf8_lossy(k.value()).into_owned(),
                    source,
                })?;
            out.push(def);
        }
        Ok(out)
    }

    /// Everything stored.
    pub fn load(&self) -> DefResult<Definitions> {
        Ok(Definitions {
            vhosts: self.all(VHOSTS)?,
            users: self.all(USERS)?,
            permissions: self.all(PERMISSIONS)?,
            topic_permissions: self.all(TOPIC_PERMISSIONS)?,
            exchanges: self.all(EXCHANGES)?,
            queues: self.all(QUEUES)?,
            bindings: self.all(BINDINGS)?,
            policies: self.all(POLICIES)?,
        })
    }

    /// Stores every definition of `defs` in one transaction (boot-time import).
    pub fn import(&self, defs: &Definitions) -> DefResult<()> {
        fn put_all<T: Serialize>(
            txn: &WriteTransaction,
            table: Table,
            items: &[T],
            k: impl Fn(&T) -> Vec<u8>,
        ) -> DefResult<()> {
            let mut t = txn.open_table(table)?;
            for item in items {
                let v = serde_json::to_vec(item).map_err(DefinitionsError::Encode)?;
                t.insert(k(item).as_slice(), v.as_slice())?;
            }
            Ok(())
        }
        self.write(|txn| {
            put_all(txn, VHOSTS, &defs.vhosts, |v| key(&[v.name.as_bytes()]))?;
            put_all(txn, USERS, &defs.users, |u| key(&[u.name.as_bytes()]))?;
            put_all(txn, PERMISSIONS, &defs.permissions, |p| {
                key(&[p.user.as_bytes(), p.vhost.as_bytes()])
            })?;
            put_all(txn, TOPIC_PERMISSIONS, &defs.topic_permissions, |p| {
                topic_permission_key(&p.user, &p.vhost, &p.exchange)
            })?;
            put_all(txn, EXCHANGES, &defs.exchanges, |e| {
                key(&[e.vhost.as_bytes(), e.name.as_bytes()])
            })?;
            put_all(txn, QUEUES, &defs.queues, |q| {
                key(&[q.vhost.as_bytes(), q.name.as_bytes()])
            })?;
            put_all(txn, BINDINGS, &defs.bindings, binding_key)?;
            put_all(txn, POLICIES, &defs.policies, |p| {
                key(&[p.vhost.as_bytes(), p.name.as_bytes()])
            })
        })
    }

    pub fn put_vhost(&self, v: &VhostDef) -> DefResult<()> {
        self.put(VHOSTS, &key(&[v.name.as_bytes()]), v)
    }

    /// Deletes a vhost and everything in it (exchanges, queues, bindings, policies,
    /// permissions, topic permissions), atomically.
    pub fn delete_vhost(&self, name: &str) -> DefResult<bool> {
        let mut existed = false;
        let vhost = name.as_bytes();
        self.write(|txn| {
            existed = txn
                .open_table(VHOSTS)?
                .remove(key(&[vhost]).as_slice())?
                .is_some();
            for t in [EXCHANGES, QUEUES, BINDINGS, POLICIES] {
                txn.open_table(t)?
                    .retain(|k, _| key_parts(k).and_then(|p| p.first().copied()) != Some(vhost))?;
            }
            for t in [PERMISSIONS, TOPIC_PERMISSIONS] {
                txn.open_table(t)?
                    .retain(|k, _| key_parts(k).and_then(|p| p.get(1).copied()) != Some(vhost))?;
            }
            Ok(())
        })?;
        Ok(existed)
    }

    pub fn put_user(&self, u: &UserDef) -> DefResult<()> {
        self.put(USERS, &key(&[u.name.as_bytes()]), u)
    }

    /// Deletes a user and its permissions and topic permissions.
    pub fn delete_user(&self, name: &str) -> DefResult<bool> {
        let mut existed = false;
        let user = name.as_bytes();
        self.write(|txn| {
            existed = txn
                .open_table(USERS)?
                .remove(key(&[user]).as_slice())?
                .is_some();
            for t in [PERMISSIONS, TOPIC_PERMISSIONS] {
                txn.open_table(t)?
                    .retain(|k, _| key_parts(k).and_then(|p| p.first().copied()) != Some(user))?;
            }
            Ok(())
        })?;
        Ok(existed)
    }

    pub fn put_permission(&self, p: &PermissionDef) -> DefResult<()> {
        self.put(
            PERMISSIONS,
            &key(&[p.user.as_bytes(), p.vhost.as_bytes()]),
            p,
        )
    }

    pub fn delete_permission(&self, user: &str, vhost: &str) -> DefResult<bool> {
        self.remove(PERMISSIONS, &key(&[user.as_bytes(), vhost.as_bytes()]))
    }

    pub fn put_topic_permission(&self, p: &TopicPermissionDef) -> DefResult<()> {
        self.put(
            TOPIC_PERMISSIONS,
            &topic_permission_key(&p.user, &p.vhost, &p.exchange),
            p,
        )
    }

    pub fn delete_topic_permission(
        &self,
        user: &str,
        vhost: &str,
        exchange: &str,
    ) -> DefResult<bool> {
        self.remove(
            TOPIC_PERMISSIONS,
            &topic_permission_key(user, vhost, exchange),
        )
    }

    pub fn put_exchange(&self, e: &ExchangeDef) -> DefResult<()> {
        self.put(EXCHANGES, &key(&[e.vhost.as_bytes(), e.name.as_bytes()]), e)
    }

    /// Deletes an exchange with the bindings from it and the bindings to it.
    pub fn delete_exchange(&self, vhost: &str, name: &str) -> DefResult<bool> {
        let mut existed = false;
        let (v, n) = (vhost.as_bytes(), name.as_bytes());
        self.write(|txn| {
            existed = txn
                .open_table(EXCHANGES)?
                .remove(key(&[v, n]).as_slice())?
                .is_some();
            txn.open_table(BINDINGS)?.retain(|k, _| {
                let Some(p) = key_parts(k) else { return true };
                let same_vhost = p.first() == Some(&v);
                let from_it = p.get(1) == Some(&n);
                let to_it = p.get(2) == Some(&&b"e"[..]) && p.get(3) == Some(&n);
                !(same_vhost && (from_it || to_it))
            })?;
            Ok(())
        })?;
        Ok(existed)
    }

    pub fn put_queue(&self, q: &QueueDef) -> DefResult<()> {
        self.put(QUEUES, &key(&[q.vhost.as_bytes(), q.name.as_bytes()]), q)
    }

    /// Deletes a queue with the bindings to it.
    pub fn delete_queue(&self, vhost: &str, name: &str) -> DefResult<bool> {
        let mut existed = false;
        let (v, n) = (vhost.as_bytes(), name.as_bytes());
        self.write(|txn| {
            existed = txn
                .open_table(QUEUES)?
                .remove(key(&[v, n]).as_slice())?
                .is_some();
            txn.open_table(BINDINGS)?.retain(|k, _| {
                let Some(p) = key_parts(k) else { return true };
                !(p.first() == Some(&v) && p.get(2) == Some(&&b"q"[..]) && p.get(3) == Some(&n))
            })?;
            Ok(())
        })?;
        Ok(existed)
    }

    pub fn put_binding(&self, b: &BindingDef) -> DefResult<()> {
        self.put(BINDINGS, &binding_key(b), b)
    }

    pub fn delete_binding(&self, b: &BindingDef) -> DefResult<bool> {
        self.remove(BINDINGS, &binding_key(b))
    }

    pub fn put_policy(&self, p: &PolicyDef) -> DefResult<()> {
        self.put(POLICIES, &key(&[p.vhost.as_bytes(), p.name.as_bytes()]), p)
    }

    pub fn delete_policy(&self, vhost: &str, name: &str) -> DefResult<bool> {
        self.remove(POLICIES, &key(&[vhost.as_bytes(), name.as_bytes()]))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use pier_wire::FieldValue;

    fn q(vhost: &str, name: &str) -> QueueDef {
        let mut args = FieldTable::new();
        args.insert("x-max-length", FieldValue::from(10i64));
        QueueDef {
            vhost: vhost.into(),
            name: name.into(),
            durable: true,
            auto_delete: false,
            arguments: encode_arguments(&args).unwrap(),
        }
    }

    fn b(vhost: &str, src: &str, dst: &str, kind: DestinationKind) -> BindingDef {
        BindingDef {
            vhost: vhost.into(),
            source: src.into(),
            destination: dst.into(),
            destination_kind: kind,
            routing_key: "a.#".into(),
            arguments: Vec::new(),
        }
    }

    fn x(vhost: &str, name: &str) -> ExchangeDef {
        ExchangeDef {
            vhost: vhost.into(),
            name: name.into(),
            kind: "topic".into(),
            durable: true,
            auto_delete: false,
            internal: false,
            arguments: Vec::new(),
        }
    }

    fn tp(user: &str, vhost: &str, exchange: &str) -> TopicPermissionDef {
        TopicPermissionDef {
            user: user.into(),
            vhost: vhost.into(),
            exchange: exchange.into(),
            write: "^w".into(),
            read: "^r".into(),
        }
    }

    #[test]
    fn definitions_survive_reopen_with_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("definitions.redb");
        {
            let s = DefinitionsStore::open(&path).unwrap();
            s.put_vhost(&VhostDef {
                name: "/".into(),
                description: String::new(),
                tags: vec![],
            })
            .unwrap();
            s.put_user(&UserDef {
                name: "guest".into(),
                password_hash: "h".into(),
                tags: vec!["administrator".into()],
            })
            .unwrap();
            s.put_permission(&PermissionDef {
                user: "guest".into(),
                vhost: "/".into(),
                configure: ".*".into(),
                write: ".*".into(),
                read: ".*".into(),
            })
            .unwrap();
            s.put_exchange(&x("/", "ex")).unwrap();
            s.put_queue(&q("/", "q1")).unwrap();
            s.put_binding(&b("/", "ex", "q1", DestinationKind::Queue))
                .unwrap();
            s.put_policy(&PolicyDef {
                vhost: "/".into(),
                name: "p".into(),
                pattern: "^q".into(),
                apply_to: "queues".into(),
                priority: 1,
                definition: serde_json::json!({"max-length": 5}),
            })
            .unwrap();
        }
        let s = DefinitionsStore::open(&path).unwrap();
        let d = s.load().unwrap();
        assert_eq!(d.vhosts.len(), 1);
        assert_eq!(d.users[0].tags, vec!["administrator".to_string()]);
        assert_eq!(d.permissions.len(), 1);
        assert_eq!(d.exchanges[0], x("/", "ex"));
        assert_eq!(d.queues[0], q("/", "q1"));
        let args = decode_arguments(&d.queues[0].arguments).unwrap();
        assert_eq!(
            args.get("x-max-length").and_then(FieldValue::as_i64),
            Some(10)
        );
        assert_eq!(d.bindings.len(), 1);
        assert_eq!(d.policies[0].definition["max-length"], 5);
    }

    #[test]
    fn deletes_cascade_to_bindings_and_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let s = DefinitionsStore::open(dir.path().join("d.redb")).unwrap();
        s.put_exchange(&x("/", "ex")).unwrap();
        s.put_exchange(&x("/", "ex2")).unwrap();
        s.put_queue(&q("/", "q1")).unwrap();
        s.put_queue(&q("/", "q2")).unwrap();
        s.put_queue(&q("other", "q1")).unwrap();
        s.put_binding(&b("/", "ex", "q1", DestinationKind::Queue))
            .unwrap();
        s.put_binding(&b("/", "ex", "q2", DestinationKind::Queue))
            .unwrap();
        s.put_binding(&b("/", "ex2", "ex", DestinationKind::Exchange))
            .unwrap();
        s.put_binding(&b("other", "ex", "q1", DestinationKind::Queue))
            .unwrap();

        assert!(s.delete_queue("/", "q1").unwrap());
        assert!(!s.delete_queue("/", "q1").unwrap());
        let d = s.load().unwrap();
        assert_eq!(d.bindings.len(), 3);
        assert!(d
            .bindings
            .iter()
            .all(|b| !(b.vhost == "/" && b.destination == "q1")));

        // Deleting "ex" removes bindings from it and the exchange-to-exchange binding to it.
        assert!(s.delete_exchange("/", "ex").unwrap());
        let d = s.load().unwrap();
        assert_eq!(d.bindings.len(), 1);
        assert_eq!(d.bindings[0].vhost, "other");

        s.put_permission(&PermissionDef {
            user: "u".into(),
            vhost: "other".into(),
            configure: String::new(),
            write: String::new(),
            read: String::new(),
        })
        .unwrap();
        s.put_topic_permission(&tp("u", "other", "t")).unwrap();
        s.put_topic_permission(&tp("u", "/", "t")).unwrap();
        s.put_topic_permission(&tp("u2", "/", "t")).unwrap();
        s.delete_vhost("other").unwrap();
        let d = s.load().unwrap();
        assert!(d.bindings.is_empty());
        assert!(d.permissions.is_empty());
        assert_eq!(d.topic_permissions.len(), 2);
        s.delete_user("u").unwrap();
        let d = s.load().unwrap();
        assert_eq!(d.topic_permissions, vec![tp("u2", "/", "t")]);
        assert!(s.delete_topic_permission("u2", "/", "t").unwrap());
        assert!(!s.delete_topic_permission("u2", "/", "t").unwrap());
        assert_eq!(d.queues.len(), 1);
    }

    #[test]
    fn import_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let s = DefinitionsStore::open(dir.path().join("d.redb")).unwrap();
        let defs = Definitions {
            exchanges: vec![x("/", "a"), x("/", "b")],
            queues: vec![q("/", "q")],
            bindings: vec![b("/", "a", "q", DestinationKind::Queue)],
            topic_permissions: vec![tp("u", "/", "a"), tp("u", "/", "b")],
            ..Definitions::default()
        };
        s.import(&defs).unwrap();
        assert_eq!(s.load().unwrap(), defs);
    }

    #[test]
    fn a_batch_is_one_transaction_and_other_threads_wait_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(DefinitionsStore::open(dir.path().join("d.redb")).unwrap());
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let other = {
            let s = std::sync::Arc::clone(&s);
            std::thread::spawn(move || {
                entered_rx.recv().unwrap();
                // Blocks until the batch has committed.
                s.put_queue(&q("/", "from-another-thread")).unwrap();
                s.load().unwrap().queues.len()
            })
        };
        let seen_inside = s
            .batch(|| {
                s.put_queue(&q("/", "a")).unwrap();
                s.put_cluster_entry(b"applied", b"7").unwrap();
                entered_tx.send(()).unwrap();
                // Not committed yet: a reader sees nothing of the batch.
                let inside = s.load().unwrap().queues.len();
                go_tx.send(()).unwrap();
                inside
            })
            .unwrap();
        drop(go_rx);
        assert_eq!(seen_inside, 0);
        assert_eq!(other.join().unwrap(), 2);
        assert_eq!(
            s.cluster_entry(b"applied").unwrap().as_deref(),
            Some(&b"7"[..])
        );
        s.put_cluster_entry(b"home/x", b"1").unwrap();
        s.put_cluster_entry(b"home/y", b"2").unwrap();
        s.delete_cluster_entries(b"home/", true).unwrap();
        assert_eq!(s.cluster_entries().unwrap().len(), 1);
    }

    #[test]
    fn key_parts_round_trip_and_reject_garbage() {
        let k = key(&[b"a", b"", b"xyz"]);
        assert_eq!(key_parts(&k).unwrap(), vec![&b"a"[..], b"", b"xyz"]);
        assert!(key_parts(&[0, 5, 1]).is_none());
    }
}
