//! Users, password hashes and per-vhost permissions.
//!
//! Password hashes use RabbitMQ's default scheme (`rabbit_password_hashing_sha256`):
//! `base64(salt ‖ sha256(salt ‖ password))` with a 4-byte random salt, so user definitions move
//! between RabbitMQ and Pier unchanged. Plain passwords are never stored or logged.

use std::collections::HashMap;
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
}
