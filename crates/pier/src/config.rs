//! The optional TOML config file: extra users, vhosts and permissions on top of RabbitMQ's
//! defaults (vhost `/`, guest/guest from loopback only), plus server limits.
//!
//! ```toml
//! [[users]]
//! name = "alice"
//! password = "secret"
//! tags = ["administrator"]
//! [[vhosts]]
//! name = "other"
//! [[permissions]]
//! user = "alice"
//! vhost = "/"
//! configure = ".*"
//! write = ".*"
//! read = ".*"
//! ```

use std::path::Path;

use anyhow::Context;
use pier_broker::{Broker, Permission};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub users: Vec<UserEntry>,
    #[serde(default)]
    pub vhosts: Vec<VhostEntry>,
    #[serde(default)]
    pub permissions: Vec<PermissionEntry>,
    /// Users allowed only from loopback addresses; RabbitMQ's default is `["guest"]`.
    pub loopback_users: Option<Vec<String>>,
    /// Whether to create the default guest user and `/` vhost (default true).
    pub default_user: Option<bool>,
    pub frame_max: Option<u32>,
    pub channel_max: Option<u16>,
    pub heartbeat: Option<u16>,
    pub max_message_size: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    pub name: String,
    pub password: String,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VhostEntry {
    pub name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermissionEntry {
    pub user: String,
    pub vhost: String,
    #[serde(default = "match_all")]
    pub configure: String,
    #[serde(default = "match_all")]
    pub write: String,
    #[serde(default = "match_all")]
    pub read: String,
}

fn match_all() -> String {
    ".*".to_owned()
}

impl FileConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
    }

    /// Builds the broker state this config describes.
    pub fn build_broker(&self) -> anyhow::Result<Broker> {
        let loopback = self
            .loopback_users
            .clone()
            .unwrap_or_else(|| vec!["guest".to_owned()]);
        let broker = Broker::empty(loopback);
        if self.default_user.unwrap_or(true) {
            broker.add_vhost("/");
            broker.add_user("guest", "guest", vec!["administrator".to_owned()]);
            broker.set_permission("guest", "/", Permission::full());
        }
        for v in &self.vhosts {
            broker.add_vhost(&v.name);
        }
        for u in &self.users {
            broker.add_user(&u.name, &u.password, u.tags.clone());
        }
        for p in &self.permissions {
            if broker.vhost(&p.vhost).is_none() {
                anyhow::bail!(
                    "permission for user '{}' names unknown vhost '{}'",
                    p.user,
                    p.vhost
                );
            }
            broker.set_permission(
                &p.user,
                &p.vhost,
                Permission {
                    configure: p.configure.clone(),
                    write: p.write.clone(),
                    read: p.read.clone(),
                },
            );
        }
        Ok(broker)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_users_vhosts_permissions() {
        let c: FileConfig = toml::from_str(
            r#"
            [[users]]
            name = "alice"
            password = "secret"
            tags = ["administrator"]
            [[vhosts]]
            name = "other"
            [[permissions]]
            user = "alice"
            vhost = "other"
            "#,
        )
        .unwrap();
        let b = c.build_broker().unwrap();
        assert!(b.authenticate("alice", "secret", false).is_ok());
        assert!(b.open_vhost("alice", "other").is_ok());
        assert!(b.open_vhost("alice", "/").is_err());
        assert!(b.open_vhost("guest", "/").is_ok());
    }

    #[test]
    fn rejects_unknown_keys() {
        assert!(toml::from_str::<FileConfig>("bogus = 1").is_err());
    }
}
