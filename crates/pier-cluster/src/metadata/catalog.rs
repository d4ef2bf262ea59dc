//! The replicated definitions the broker itself does not keep: the cluster name, vhost
//! metadata (description, tags, default queue type) and limits, and each durable queue's home
//! node and members.
//!
//! A single node keeps them in memory (as it always has: a restart goes back to the config
//! file's values). A clustered node also writes them to the `cluster` table of its
//! `definitions.redb`, inside the apply batch that changed them, so they are part of the
//! state machine's durable copy and of its snapshots.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, RwLock};

use pier_store::DefinitionsStore;
use serde::{Deserialize, Serialize};

/// A vhost's metadata and limits (RabbitMQ keeps the limits as a runtime parameter).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VhostMeta {
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub default_queue_type: Option<String>,
    #[serde(default)]
    pub max_connections: Option<u64>,
    #[serde(default)]
    pub max_queues: Option<u64>,
}

/// Where a durable queue lives: its home node (RabbitMQ's queue leader) and the nodes with a
/// replica (a classic queue: the home alone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueHome {
    pub home: String,
    #[serde(default)]
    pub members: Vec<String>,
    /// A replicated quorum queue's Raft group (0: not replicated).
    #[serde(default)]
    pub group: u64,
    /// A replicated stream's leader changes: epoch `k` (from 1) began with its leader's log
    /// `epochs[k - 1]` long (see `queues::stream`, failover). Empty: the first leader.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub epochs: Vec<u64>,
}

/// Everything the catalog holds: part of every metadata snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogState {
    #[serde(default)]
    pub cluster_name: Option<String>,
    #[serde(default)]
    pub vhosts: BTreeMap<String, VhostMeta>,
    /// Keyed by (vhost, queue name).
    #[serde(default, with = "pairs")]
    pub queue_homes: BTreeMap<(String, String), QueueHome>,
}

/// JSON objects need string keys: the (vhost, name) map travels as a list of triples.
mod pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::QueueHome;

    type Map = BTreeMap<(String, String), QueueHome>;

    pub fn serialize<S: Serializer>(m: &Map, s: S) -> Result<S::Ok, S::Error> {
        let v: Vec<(&str, &str, &QueueHome)> = m
            .iter()
            .map(|((vh, n), h)| (vh.as_str(), n.as_str(), h))
            .collect();
        v.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Map, D::Error> {
        let v: Vec<(String, String, QueueHome)> = Vec::deserialize(d)?;
        Ok(v.into_iter().map(|(vh, n, h)| ((vh, n), h)).collect())
    }
}

const NAME_KEY: &[u8] = b"catalog/cluster_name";
const VHOST_PREFIX: &str = "catalog/vhost/";
const HOME_PREFIX: &str = "catalog/home/";

fn vhost_key(vhost: &str) -> Vec<u8> {
    format!("{VHOST_PREFIX}{vhost}").into_bytes()
}

/// `catalog/home/["vhost","name"]`: JSON-escaped, so a vhost's entries share the prefix
/// `catalog/home/["vhost",` and no other vhost's do.
fn home_key(vhost: &str, name: &str) -> Vec<u8> {
    let parts = serde_json::to_string(&[vhost, name]).unwrap_or_default();
    format!("{HOME_PREFIX}{parts}").into_bytes()
}

fn home_prefix(vhost: &str) -> Vec<u8> {
    let v = serde_json::to_string(vhost).unwrap_or_default();
    format!("{HOME_PREFIX}[{v},").into_bytes()
}

/// The catalog of one node (cheap to share).
#[derive(Debug, Default)]
pub struct Catalog {
    state: RwLock<CatalogState>,
    store: OnceLock<Arc<DefinitionsStore>>,
}

impl Catalog {
    /// An in-memory catalog; `cluster_name` is the configured default.
    pub fn new(cluster_name: Option<String>) -> Self {
        Catalog {
            state: RwLock::new(CatalogState {
                cluster_name,
                ..CatalogState::default()
            }),
            store: OnceLock::new(),
        }
    }

    /// From now on changes are written to `store`'s `cluster` table; what is stored there
    /// already replaces the in-memory state (a stored cluster name wins over the configured
    /// one: it was set through the cluster).
    pub fn attach(&self, store: Arc<DefinitionsStore>) -> Result<(), pier_store::DefinitionsError> {
        let mut loaded = CatalogState::default();
        for (k, v) in store.cluster_entries()? {
            let Ok(key) = std::str::from_utf8(&k) else {
                continue;
            };
            if k == NAME_KEY {
                loaded.cluster_name = serde_json::from_slice(&v).ok();
            } else if let Some(vhost) = key.strip_prefix(VHOST_PREFIX) {
                if let Ok(meta) = serde_json::from_slice(&v) {
                    loaded.vhosts.insert(vhost.to_owned(), meta);
                }
            } else if let Some(parts) = key.strip_prefix(HOME_PREFIX) {
                let parsed: Option<(String, String)> = serde_json::from_str(parts).ok();
                if let (Some(k), Ok(home)) = (parsed, serde_json::from_slice(&v)) {
                    loaded.queue_homes.insert(k, home);
                }
            }
        }
        let mut state = self.write();
        if loaded.cluster_name.is_none() {
            loaded.cluster_name = state.cluster_name.take();
        }
        *state = loaded;
        drop(state);
        let _ = self.store.set(store);
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, CatalogState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, CatalogState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn persist(&self, what: &str, f: impl FnOnce(&DefinitionsStore) -> pier_store::DefResult<()>) {
        if let Some(s) = self.store.get() {
            if let Err(e) = f(s) {
                tracing::error!("storing {what} failed: {e}");
            }
        }
    }

    pub fn state(&self) -> CatalogState {
        self.read().clone()
    }

    pub fn cluster_name(&self) -> Option<String> {
        self.read().cluster_name.clone()
    }

    pub fn set_cluster_name(&self, name: &str) {
        self.write().cluster_name = Some(name.to_owned());
        let v = serde_json::to_vec(name).unwrap_or_default();
        self.persist("the cluster name", |s| s.put_cluster_entry(NAME_KEY, &v));
    }

    pub fn vhost(&self, vhost: &str) -> Option<VhostMeta> {
        self.read().vhosts.get(vhost).cloned()
    }

    pub fn set_vhost(&self, vhost: &str, meta: VhostMeta) {
        let v = serde_json::to_vec(&meta).unwrap_or_default();
        self.write().vhosts.insert(vhost.to_owned(), meta);
        self.persist("vhost metadata", |s| {
            s.put_cluster_entry(&vhost_key(vhost), &v)
        });
    }

    /// Changes a vhost's entry in place (creating it with defaults).
    pub fn update_vhost(&self, vhost: &str, f: impl FnOnce(&mut VhostMeta)) {
        let mut meta = self.vhost(vhost).unwrap_or_default();
        f(&mut meta);
        self.set_vhost(vhost, meta);
    }

    /// A vhost is gone: its metadata and its queues' homes with it.
    pub fn forget_vhost(&self, vhost: &str) {
        {
            let mut st = self.write();
            st.vhosts.remove(vhost);
            st.queue_homes.retain(|(v, _), _| v != vhost);
        }
        self.persist("vhost deletion", |s| {
            s.delete_cluster_entries(&vhost_key(vhost), false)?;
            s.delete_cluster_entries(&home_prefix(vhost), true)
        });
    }

    pub fn queue_home(&self, vhost: &str, name: &str) -> Option<QueueHome> {
        self.read()
            .queue_homes
            .get(&(vhost.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Calls `f` with every queue's (vhost, name) and home, under the catalog's read lock.
    pub fn for_each_queue_home(&self, mut f: impl FnMut(&(String, String), &QueueHome)) {
        for (k, h) in &self.read().queue_homes {
            f(k, h);
        }
    }

    pub fn set_queue_home(&self, vhost: &str, name: &str, home: QueueHome) {
        let v = serde_json::to_vec(&home).unwrap_or_default();
        self.write()
            .queue_homes
            .insert((vhost.to_owned(), name.to_owned()), home);
        self.persist("queue home", |s| {
            s.put_cluster_entry(&home_key(vhost, name), &v)
        });
    }

    pub fn forget_queue(&self, vhost: &str, name: &str) {
        self.write()
            .queue_homes
            .remove(&(vhost.to_owned(), name.to_owned()));
        self.persist("queue home deletion", |s| {
            s.delete_cluster_entries(&home_key(vhost, name), false)
        });
    }

    /// Replaces everything (snapshot installation).
    pub fn replace(&self, new: CatalogState) {
        let old = std::mem::replace(&mut *self.write(), new.clone());
        self.persist("the catalog", |s| {
            for v in old.vhosts.keys().filter(|v| !new.vhosts.contains_key(*v)) {
                s.delete_cluster_entries(&vhost_key(v), false)?;
            }
            for (vh, n) in old.queue_homes.keys() {
                if !new.queue_homes.contains_key(&(vh.clone(), n.clone())) {
                    s.delete_cluster_entries(&home_key(vh, n), false)?;
                }
            }
            if let Some(name) = &new.cluster_name {
                s.put_cluster_entry(NAME_KEY, &serde_json::to_vec(name).unwrap_or_default())?;
            }
            for (v, meta) in &new.vhosts {
                s.put_cluster_entry(&vhost_key(v), &serde_json::to_vec(meta).unwrap_or_default())?;
            }
            for ((vh, n), h) in &new.queue_homes {
                s.put_cluster_entry(&home_key(vh, n), &serde_json::to_vec(h).unwrap_or_default())?;
            }
            Ok(())
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn persisted_catalog_comes_back_and_vhost_deletion_takes_its_queues() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(DefinitionsStore::open(dir.path().join("d.redb")).unwrap());
        let c = Catalog::new(Some("configured".into()));
        c.attach(Arc::clone(&store)).unwrap();
        assert_eq!(c.cluster_name().as_deref(), Some("configured"));
        c.set_cluster_name("renamed");
        c.update_vhost("a\"b", |m| m.max_queues = Some(3));
        let home = QueueHome {
            home: "n1".into(),
            members: vec!["n1".into()],
            group: 7,
            epochs: vec![3],
        };
        c.set_queue_home("a\"b", "q", home.clone());
        c.set_queue_home("a", "q", home.clone());
        let again = Catalog::new(Some("configured".into()));
        again.attach(Arc::clone(&store)).unwrap();
        assert_eq!(again.state(), c.state());
        again.forget_vhost("a\"b");
        let third = Catalog::new(None);
        third.attach(store).unwrap();
        assert_eq!(third.cluster_name().as_deref(), Some("renamed"));
        assert!(third.vhost("a\"b").is_none());
        assert_eq!(third.queue_home("a", "q"), Some(home));
        assert!(third.queue_home("a\"b", "q").is_none());
        let json = serde_json::to_string(&third.state()).unwrap();
        let back: CatalogState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, third.state());
    }
}
