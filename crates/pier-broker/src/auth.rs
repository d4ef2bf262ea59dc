//! Users, password hashes, per-vhost permissions and topic permissions.
//!
//! Password hashes use RabbitMQ's default scheme (`rabbit_password_hashing_sha256`):
//! `base64(salt ‖ sha256(salt ‖ password))` with a 4-byte random salt, so user definitions move
//! between RabbitMQ and Pier unchanged. Plain passwords are never stored or logged.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use base64::Engine;
use regex::Regex;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    /// RabbitMQ-format salted SHA-256 hash.
    pub password_hash: String,
    pub tags: Vec<String>,
}

/// configure / write / read regular expressions, as RabbitMQ stores them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    pub configure: String,
    pub write: String,
    pub read: String,
}

impl Permission {
    pub fn full() -> Self {
        Permission {
            configure: ".*".into(),
            write: ".*".into(),
            read: ".*".into(),
        }
    }

    /// Checks that all three patterns compile; the error names the first that does not.
    pub fn validate(&self) -> Result<(), String> {
        for (what, pattern) in [
            ("configure", &self.configure),
            ("write", &self.write),
            ("read", &self.read),
        ] {
            Regex::new(pattern).map_err(|e| format!("invalid {what} pattern '{pattern}': {e}"))?;
        }
        Ok(())
    }

    /// The three patterns compiled, ready for `CompiledPermission::allows`.
    pub fn compile(&self) -> CompiledPermission {
        CompiledPermission {
            configure: Matcher::new(&self.configure),
            write: Matcher::new(&self.write),
            read: Matcher::new(&self.read),
        }
    }
}

/// Which of a permission's three patterns an operation needs (RabbitMQ's terms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Declare and delete.
    Configure,
    /// Publish to an exchange; bind to a queue or exchange (the destination).
    Write,
    /// Consume, get and purge a queue; bind from an exchange (the source).
    Read,
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Access::Configure => "configure",
            Access::Write => "write",
            Access::Read => "read",
        })
    }
}

/// One pattern, matched as RabbitMQ's internal authorisation backend does: an unanchored
/// search (`re:run`), with the empty pattern meaning `^$` (nothing but the empty name).
#[derive(Debug, Clone)]
enum Matcher {
    /// `.*`, the common case: no regex run at all.
    Any,
    Regex(Regex),
    /// A pattern the regex engine rejects (Pier's engine lacks PCRE's look-around and
    /// back-references): it grants nothing.
    Nothing,
}

impl Matcher {
    fn new(pattern: &str) -> Self {
        match pattern {
            ".*" => Matcher::Any,
            "" => Regex::new("^$").map_or(Matcher::Nothing, Matcher::Regex),
            p => match Regex::new(p) {
                Ok(re) => Matcher::Regex(re),
                Err(e) => {
                    tracing::warn!(
                        "permission pattern '{p}' does not compile and grants nothing: {e}"
                    );
                    Matcher::Nothing
                }
            },
        }
    }

    fn is_match(&self, name: &str) -> bool {
        match self {
            Matcher::Any => true,
            Matcher::Regex(re) => re.is_match(name),
            Matcher::Nothing => false,
        }
    }
}

/// A permission with its patterns compiled once (when it is set), shared by every connection
/// of that user on that vhost.
#[derive(Debug, Clone)]
pub struct CompiledPermission {
    configure: Matcher,
    write: Matcher,
    read: Matcher,
}

impl CompiledPermission {
    /// Whether the resource `name` (an exchange or queue name; the default exchange is named
    /// `amq.default` here) is covered by the pattern for `access`.
    pub fn allows(&self, access: Access, name: &str) -> bool {
        match access {
            Access::Configure => self.configure.is_match(name),
            Access::Write => self.write.is_match(name),
            Access::Read => self.read.is_match(name),
        }
    }
}

/// A topic permission (RabbitMQ 3.7+): write / read regular expressions on the routing keys
/// a user publishes with and binds with on one topic exchange of a vhost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPermission {
    pub exchange: String,
    pub write: String,
    pub read: String,
}

impl TopicPermission {
    /// Checks that both patterns compile; the error names the first that does not. The
    /// variables are replaced by a plain word first so that `{username}` is not taken for a
    /// repetition.
    pub fn validate(&self) -> Result<(), String> {
        for (what, pattern) in [("write", &self.write), ("read", &self.read)] {
            let probe = expand(pattern, "u", "v");
            Regex::new(&probe).map_err(|e| format!("invalid {what} pattern '{pattern}': {e}"))?;
        }
        Ok(())
    }

    /// Both patterns with `{username}` and `{vhost}` expanded and compiled. The values are
    /// inserted verbatim, not escaped, as RabbitMQ does (`binary:replace`). `{client_id}`
    /// is left alone: RabbitMQ fills it in for MQTT connections only.
    pub fn compile(&self, user: &str, vhost: &str) -> CompiledTopicPermission {
        CompiledTopicPermission {
            write: Matcher::new(&expand(&self.write, user, vhost)),
            read: Matcher::new(&expand(&self.read, user, vhost)),
        }
    }
}

fn expand(pattern: &str, user: &str, vhost: &str) -> String {
    pattern
        .replace("{username}", user)
        .replace("{vhost}", vhost)
        // Literal braces, as PCRE reads them (Rust's regex would take a repetition).
        .replace("{client_id}", "\\{client_id\\}")
}

/// A topic permission's patterns, expanded for its user and vhost and compiled.
#[derive(Debug, Clone)]
pub struct CompiledTopicPermission {
    write: Matcher,
    read: Matcher,
}

impl CompiledTopicPermission {
    /// Whether `routing_key` is covered by the write (publish) or read (bind) pattern.
    /// Configure access is not part of topic authorisation.
    pub fn allows(&self, access: Access, routing_key: &str) -> bool {
        match access {
            Access::Configure => true,
            Access::Write => self.write.is_match(routing_key),
            Access::Read => self.read.is_match(routing_key),
        }
    }
}

/// One user's topic permissions on one vhost, by exchange name, compiled; shared by the
/// user's connections on that vhost (copied on write).
#[derive(Debug, Clone, Default)]
pub struct TopicPermissions {
    by_exchange: BTreeMap<String, (TopicPermission, CompiledTopicPermission)>,
}

impl TopicPermissions {
    /// The compiled permission for `exchange`; none means every routing key is allowed.
    pub fn get(&self, exchange: &str) -> Option<&CompiledTopicPermission> {
        self.by_exchange.get(exchange).map(|(_, c)| c)
    }

    pub fn is_empty(&self) -> bool {
        self.by_exchange.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &TopicPermission> {
        self.by_exchange.values().map(|(p, _)| p)
    }
}

#[derive(Debug, Clone)]
struct StoredPermission {
    permission: Permission,
    compiled: Arc<CompiledPermission>,
}

pub fn hash_password(password: &str) -> String {
    let salt: [u8; 4] = rand::random();
    hash_with_salt(salt, password)
}

fn hash_with_salt(salt: [u8; 4], password: &str) -> String {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(password.as_bytes());
    let mut out = salt.to_vec();
    out.extend_from_slice(&h.finalize());
    base64::engine::general_purpose::STANDARD.encode(out)
}

/// Checks a password against a RabbitMQ-format hash in constant time over the digest.
pub fn verify_password(password: &str, stored_hash: &str) -> bool {
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(stored_hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (raw.get(..4), raw.get(4..)) else {
        return false;
    };
    let mut h = Sha256::new();
    h.update(salt);
    h.update(password.as_bytes());
    let got = h.finalize();
    got.len() == expected.len()
        && got
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Users and their permissions.
#[derive(Debug, Default, Clone)]
pub struct UserStore {
    users: HashMap<String, User>,
    /// (user, vhost) → permission, with its patterns compiled
    permissions: HashMap<(String, String), StoredPermission>,
    /// (user, vhost) → topic permissions by exchange
    topic_permissions: HashMap<(String, String), Arc<TopicPermissions>>,
}

impl UserStore {
    pub fn add_user(&mut self, name: &str, password: &str, tags: Vec<String>) {
        self.users.insert(
            name.to_owned(),
            User {
                name: name.to_owned(),
                password_hash: hash_password(password),
                tags,
            },
        );
    }

    /// Adds (or replaces) a user whose password hash is already in RabbitMQ's format
    /// (definitions import, the management API's `password_hash`). An empty hash means the
    /// user cannot log in with a password, as in RabbitMQ.
    pub fn add_user_with_hash(&mut self, name: &str, password_hash: &str, tags: Vec<String>) {
        self.users.insert(
            name.to_owned(),
            User {
                name: name.to_owned(),
                password_hash: password_hash.to_owned(),
                tags,
            },
        );
    }

    pub fn remove_user(&mut self, name: &str) -> bool {
        self.permissions.retain(|(u, _), _| u != name);
        self.topic_permissions.retain(|(u, _), _| u != name);
        self.users.remove(name).is_some()
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    pub fn users(&self) -> impl Iterator<Item = &User> {
        self.users.values()
    }

    /// The user if the password matches.
    pub fn authenticate(&self, name: &str, password: &str) -> Option<&User> {
        self.users
            .get(name)
            .filter(|u| verify_password(password, &u.password_hash))
    }

    pub fn set_permission(&mut self, user: &str, vhost: &str, p: Permission) {
        let compiled = Arc::new(p.compile());
        self.permissions.insert(
            (user.to_owned(), vhost.to_owned()),
            StoredPermission {
                permission: p,
                compiled,
            },
        );
    }

    pub fn permission(&self, user: &str, vhost: &str) -> Option<&Permission> {
        self.permissions
            .get(&(user.to_owned(), vhost.to_owned()))
            .map(|s| &s.permission)
    }

    /// The compiled form of `permission(user, vhost)`, for access checks.
    pub fn compiled_permission(&self, user: &str, vhost: &str) -> Option<Arc<CompiledPermission>> {
        self.permissions
            .get(&(user.to_owned(), vhost.to_owned()))
            .map(|s| Arc::clone(&s.compiled))
    }

    /// Every (user, vhost, permission), in no particular order.
    pub fn permissions(&self) -> impl Iterator<Item = (&str, &str, &Permission)> {
        self.permissions
            .iter()
            .map(|((u, v), s)| (u.as_str(), v.as_str(), &s.permission))
    }

    /// Removes a user's permission on a vhost; false when there was none.
    pub fn clear_permission(&mut self, user: &str, vhost: &str) -> bool {
        self.permissions
            .remove(&(user.to_owned(), vhost.to_owned()))
            .is_some()
    }

    pub fn remove_vhost(&mut self, vhost: &str) {
        self.permissions.retain(|(_, v), _| v != vhost);
        self.topic_permissions.retain(|(_, v), _| v != vhost);
    }

    /// Sets (or replaces) the user's topic permission for `p.exchange` on `vhost`.
    pub fn set_topic_permission(&mut self, user: &str, vhost: &str, p: TopicPermission) {
        let compiled = p.compile(user, vhost);
        let set = self
            .topic_permissions
            .entry((user.to_owned(), vhost.to_owned()))
            .or_default();
        Arc::make_mut(set)
            .by_exchange
            .insert(p.exchange.clone(), (p, compiled));
    }

    /// Removes the user's topic permission for `exchange` on `vhost`, or all of them with
    /// `None`; false when there was none.
    pub fn clear_topic_permission(
        &mut self,
        user: &str,
        vhost: &str,
        exchange: Option<&str>,
    ) -> bool {
        let k = (user.to_owned(), vhost.to_owned());
        let Some(set) = self.topic_permissions.get_mut(&k) else {
            return false;
        };
        let removed = match exchange {
            None => !set.is_empty(),
            Some(x) => Arc::make_mut(set).by_exchange.remove(x).is_some(),
        };
        if exchange.is_none() || set.is_empty() {
            self.topic_permissions.remove(&k);
        }
        removed
    }

    /// The user's topic permissions on a vhost, for checks; none when there are none.
    pub fn compiled_topic_permissions(
        &self,
        user: &str,
        vhost: &str,
    ) -> Option<Arc<TopicPermissions>> {
        self.topic_permissions
            .get(&(user.to_owned(), vhost.to_owned()))
            .filter(|s| !s.is_empty())
            .map(Arc::clone)
    }

    /// Every (user, vhost, topic permission), in no particular order.
    pub fn topic_permissions(&self) -> impl Iterator<Item = (&str, &str, &TopicPermission)> {
        self.topic_permissions
            .iter()
            .flat_map(|((u, v), s)| s.iter().map(move |p| (u.as_str(), v.as_str(), p)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_hash_round_trip() {
        let h = hash_password("secret");
        assert!(verify_password("secret", &h));
        assert!(!verify_password("Secret", &h));
        assert!(!verify_password("secret", "not base64!"));
        assert!(!verify_password("secret", ""));
    }

    #[test]
    fn rabbitmq_hash_format() {
        // Salt 0x908DC60A and password "test12" as in RabbitMQ's password hashing docs.
        let h = hash_with_salt([0x90, 0x8D, 0xC6, 0x0A], "test12");
        assert_eq!(h, "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR");
        assert!(verify_password("test12", &h));
    }

    #[test]
    fn users_and_permissions() {
        let mut s = UserStore::default();
        s.add_user("alice", "pw", vec!["administrator".into()]);
        assert!(s.authenticate("alice", "pw").is_some());
        assert!(s.authenticate("alice", "nope").is_none());
        assert!(s.authenticate("bob", "pw").is_none());
        s.set_permission("alice", "/", Permission::full());
        assert!(s.permission("alice", "/").is_some());
        assert!(s.permission("alice", "other").is_none());
        s.remove_user("alice");
        assert!(s.permission("alice", "/").is_none());
    }

    #[test]
    fn permission_patterns_match_like_rabbitmq() {
        let p = Permission {
            configure: "^perm\\.c".into(),
            write: "".into(),
            read: "loose".into(),
        }
        .compile();
        assert!(p.allows(Access::Configure, "perm.c.1"));
        assert!(!p.allows(Access::Configure, "x.perm.c.1"));
        // The empty pattern is `^$`: it matches only the empty name.
        assert!(!p.allows(Access::Write, "amq.default"));
        assert!(p.allows(Access::Write, ""));
        // Patterns are searched for, not anchored (re:run).
        assert!(p.allows(Access::Read, "a-loose-name"));
        assert!(!p.allows(Access::Read, "tight"));
        let all = Permission::full().compile();
        assert!(all.allows(Access::Write, "anything at all"));
        // A pattern the engine cannot compile grants nothing (and fails validation).
        let bad = Permission {
            configure: "(?=x)".into(),
            write: ".*".into(),
            read: ".*".into(),
        };
        assert!(bad.validate().is_err());
        assert!(!bad.compile().allows(Access::Configure, "x"));
        assert!(Permission::full().validate().is_ok());
    }

    fn tp(exchange: &str, write: &str, read: &str) -> TopicPermission {
        TopicPermission {
            exchange: exchange.into(),
            write: write.into(),
            read: read.into(),
        }
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn topic_patterns_match_expand_and_default_to_allow() {
        let mut s = UserStore::default();
        assert!(s.compiled_topic_permissions("u", "/").is_none());
        s.set_topic_permission(
            "u",
            "vh",
            tp("t", "^{username}\\.", "^{vhost}\\.{client_id}"),
        );
        s.set_topic_permission("u", "vh", tp("t2", "", ".*"));
        let set = s.compiled_topic_permissions("u", "vh").unwrap();
        // No topic permission for an exchange: every key is allowed (the caller skips it).
        assert!(set.get("other").is_none());
        let t = set.get("t").unwrap();
        assert!(t.allows(Access::Write, "u.orders"));
        assert!(!t.allows(Access::Write, "v.orders"));
        // Searched for, not anchored, like resource permissions.
        assert!(!t.allows(Access::Write, "x.u.orders"));
        assert!(t.allows(Access::Read, "vh.{client_id}"));
        assert!(!t.allows(Access::Read, "vh.c1"));
        assert!(t.allows(Access::Configure, "anything"));
        // The empty pattern is `^$`.
        let t2 = set.get("t2").unwrap();
        assert!(!t2.allows(Access::Write, "a"));
        assert!(t2.allows(Access::Write, ""));
        assert!(t2.allows(Access::Read, "a.b"));
        // Another user's and another vhost's permissions are separate.
        assert!(s.compiled_topic_permissions("u", "/").is_none());
        assert!(s.compiled_topic_permissions("w", "vh").is_none());
        assert_eq!(s.topic_permissions().count(), 2);
        // Replacing, clearing one, clearing all.
        s.set_topic_permission("u", "vh", tp("t", ".*", ".*"));
        assert_eq!(s.topic_permissions().count(), 2);
        assert!(s.clear_topic_permission("u", "vh", Some("t")));
        assert!(!s.clear_topic_permission("u", "vh", Some("t")));
        assert_eq!(s.topic_permissions().count(), 1);
        // A set already handed out does not change under its holder.
        assert!(set.get("t").is_some());
        assert!(s.clear_topic_permission("u", "vh", None));
        assert!(s.compiled_topic_permissions("u", "vh").is_none());
        assert!(!s.clear_topic_permission("u", "vh", None));
        // Users and vhosts take their topic permissions with them.
        s.set_topic_permission("u", "vh", tp("t", ".*", ".*"));
        s.set_topic_permission("w", "other", tp("t", ".*", ".*"));
        s.remove_vhost("vh");
        s.remove_user("w");
        assert_eq!(s.topic_permissions().count(), 0);
    }

    #[test]
    fn topic_pattern_validation() {
        assert!(tp("t", "^{username}$", "{vhost}").validate().is_ok());
        assert!(tp("t", "(?=x)", ".*").validate().is_err());
        assert!(tp("t", ".*", "(").validate().is_err());
        // An uncompilable pattern grants nothing.
        assert!(!tp("t", "(?=x)", ".*")
            .compile("u", "/")
            .allows(Access::Write, "x"));
    }
}
