//! The optional TOML config file: extra users, vhosts, permissions and topic permissions on
//! top of RabbitMQ's
//! defaults (vhost `/`, guest/guest from loopback only), plus server limits.
//!
//! ```toml
//! [[users]]
//! name = "alice"
//! password = "secret"
//! tags = ["administrator"]
//! [[vhosts]]
//! name = "other"
//! max_connections = 100     # RabbitMQ's vhost limits (default: none)
//! max_queues = 1000
//! [[permissions]]
//! user = "alice"
//! vhost = "/"
//! configure = ".*"
//! write = ".*"
//! read = ".*"
//! [[topic_permissions]]     # routing keys on a topic exchange (none: all allowed)
//! user = "alice"
//! vhost = "/"
//! exchange = "amq.topic"
//! write = "^{username}\\."  # {username} and {vhost} are expanded
//! read = ".*"
//! [[policies]]
//! name = "short-lived"
//! vhost = "/"
//! pattern = "^tmp\\."
//! apply-to = "queues"
//! priority = 1
//! definition = { message-ttl = 60000, dead-letter-exchange = "dlx" }
//!
//! # Limits and resource alarms, with RabbitMQ's names and defaults
//! max_connections = 10000            # node-wide (connection_max; default: no limit)
//! handshake_timeout = 10000          # ms
//! vm_memory_high_watermark.relative = 0.4   # or .absolute = <bytes>
//! disk_free_limit.absolute = 50000000       # bytes free on the data directory's disk
//!
//! # AMQP over TLS on --amqps-port (5671); paths relative to the config file
//! [tls]
//! cert = "server.pem"    # certificate chain, leaf first
//! key = "server.key"
//! ca = "ca.pem"          # optional: verify client certificates (SASL EXTERNAL: user = CN)
//! verify_peer = true     # with ca: a client certificate is required
//! http = true            # the management API on --http-port speaks HTTPS (same certificate)
//!
//! # The MQTT server (docs/mqtt.md); RabbitMQ's mqtt.* keys
//! [mqtt]
//! port = 1883            # --mqtt-port wins; 0: off
//! tls_port = 8883        # with [tls]; --mqtt-tls-port wins
//! vhost = "/"
//! allow_anonymous = true # no username: default_user / default_pass (guest)
//!
//! # RabbitMQ's deprecated features (docs/quorum-queues.md, "RabbitMQ 4.3's stricter
//! # defaults"): Pier permits them as 4.2 does; "4.3" denies transient non-exclusive queues,
//! # global QoS and x-queue-master-locator as 4.3 does; each can be set on its own
//! # (RabbitMQ's deprecated_features.permit.<name>)
//! [deprecated_features]
//! defaults = "4.3"                          # or --deprecated-features 4.3
//! permit.transient_nonexcl_queues = true
//!
//! # How quorum queues count deliveries (docs/quorum-queues.md): "4.2" (default) or "4.3"
//! # (only failed deliveries count towards the delivery limit); the same on every node
//! [quorum_queues]
//! delivery_counting = "4.3"                 # or --quorum-delivery-counting 4.3
//!
//! # What connection.start advertises (default: product "Pier", Pier's version); only for
//! # client code that insists on product == "RabbitMQ"
//! [server_properties]
//! product = "RabbitMQ"
//! version = "3.10.8"
//! # Run as a member of a cluster (docs/clustering.md); the command line's --node-name,
//! # --cluster-port, --peers and --cluster-advertise win over these
//! [cluster]
//! node_name = "pier@host1"
//! cluster_port = 25672                                  # default: AMQP port + 20000
//! peers = ["host1:25672", "host2:25672", "host3:25672"] # the same list on every node
//! advertise = "host1:25672"   # how peers reach this node (default: --bind or hostname)
//! propose_timeout = 5000      # ms a definition change may wait for the cluster
//! quorum_replication = true   # quorum queues as Raft groups of several members
//! quorum_heartbeats = false   # true: per-group heartbeats and Raft election timers
//! # The STOMP server (docs/stomp.md); --stomp-port, --stomp-tls-port, --web-stomp-port win
//! [stomp]
//! port = 61613                # 0: off
//! tls_port = 61614            # with [tls]
//! web_port = 15674            # STOMP over WebSocket, path /ws
//! max_frame_size = 4194304
//! default_login = "guest"     # used by a CONNECT without login ("" : refused)
//! default_passcode = "guest"
//! ```

use std::path::Path;

use anyhow::Context;
use pier_broker::{
    ApplyTo, Broker, Overflow, Permission, Policy, PolicyDefinition, TopicPermission,
};
use pier_cluster::metadata::MetadataCommand;
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
    /// Topic permissions: write / read patterns on routing keys per topic exchange.
    #[serde(default)]
    pub topic_permissions: Vec<TopicPermissionEntry>,
    /// RabbitMQ-style policies (message-ttl, expires, max-length, ...) by name pattern.
    #[serde(default)]
    pub policies: Vec<PolicyEntry>,
    /// Users allowed only from loopback addresses; RabbitMQ's default is `["guest"]`.
    pub loopback_users: Option<Vec<String>>,
    /// Whether to create the default guest user and `/` vhost (default true).
    pub default_user: Option<bool>,
    pub frame_max: Option<u32>,
    pub channel_max: Option<u16>,
    pub heartbeat: Option<u16>,
    pub max_message_size: Option<u64>,
    /// When persistent messages reach the disk: "always" (default: fsync before every
    /// publisher confirm, batched), "never" (the OS decides; a machine crash can lose
    /// confirmed messages), or "<N>ms" (fsync at most every N ms; confirms wait for it).
    pub fsync: Option<String>,
    /// Shards of each vhost's message store that new durable queues are spread over (each
    /// shard: its own log, store thread and group commit). Default: one per core, at most 16.
    /// Changing it later is safe: existing queues stay on their shard.
    pub store_shards: Option<usize>,
    /// RabbitMQ's `consumer_timeout` in milliseconds (default 1800000 = 30 minutes); 0
    /// disables it.
    pub consumer_timeout: Option<u64>,
    /// Most client connections (sockets) the node serves at once (RabbitMQ's
    /// `connection_max`; default: no limit).
    pub max_connections: Option<usize>,
    /// Milliseconds a client has to complete the AMQP handshake (default 10000).
    pub handshake_timeout: Option<u64>,
    /// `vm_memory_high_watermark.relative = 0.4` (fraction of RAM, the default) or
    /// `vm_memory_high_watermark.absolute = <bytes>`.
    pub vm_memory_high_watermark: Option<WatermarkEntry>,
    /// `disk_free_limit.absolute = <bytes>` (default 50000000).
    pub disk_free_limit: Option<DiskFreeLimitEntry>,
    /// AMQP over TLS (`amqps`).
    pub tls: Option<TlsEntry>,
    /// `product` and `version` advertised in connection.start (RabbitMQ's
    /// `server_properties`); Pier's own by default.
    pub server_properties: Option<ServerPropertiesEntry>,
    /// Membership of a cluster (none: a single node, which runs no cluster code).
    pub cluster: Option<ClusterEntry>,
    /// The STOMP server (docs/stomp.md); the command line's --stomp-port,
    /// --stomp-tls-port and --web-stomp-port win over these.
    pub stomp: Option<StompEntry>,
    /// The MQTT server (RabbitMQ's `mqtt.*` keys; see docs/mqtt.md).
    pub mqtt: Option<MqttEntry>,
    /// RabbitMQ's `deprecated_features.permit.<name>`, and whose defaults the others follow.
    pub deprecated_features: Option<DeprecatedFeaturesEntry>,
    /// Quorum queues' node-wide behaviour.
    pub quorum_queues: Option<QuorumQueuesEntry>,
    /// The directory relative paths in this file are resolved against (the file's own).
    #[serde(skip)]
    pub base_dir: Option<std::path::PathBuf>,
}

/// `deprecated_features.*`: which RabbitMQ version's defaults (`"4.2"`, Pier's default, or
/// `"4.3"`) and per-feature permits, with RabbitMQ's names.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeprecatedFeaturesEntry {
    pub defaults: Option<String>,
    #[serde(default)]
    pub permit: std::collections::BTreeMap<String, bool>,
}

impl DeprecatedFeaturesEntry {
    /// The setting these keys give, `defaults` replaced by the command line's when given.
    pub fn resolve(
        &self,
        defaults: Option<&str>,
    ) -> anyhow::Result<pier_broker::DeprecatedFeatures> {
        let mut d = deprecated_defaults(defaults.or(self.defaults.as_deref()))?;
        for (name, &permitted) in &self.permit {
            let Some(f) = pier_broker::DeprecatedFeature::from_name(name) else {
                let known: Vec<&str> = pier_broker::DeprecatedFeature::ALL
                    .iter()
                    .map(|f| f.name())
                    .collect();
                anyhow::bail!(
                    "deprecated_features.permit.{name}: unknown deprecated feature (known: {})",
                    known.join(", ")
                );
            };
            d.set(f, permitted);
        }
        Ok(d)
    }
}

/// `[quorum_queues]`: which RabbitMQ version's delivery counting quorum queues follow.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuorumQueuesEntry {
    pub delivery_counting: Option<String>,
}

/// RabbitMQ 4.2's (the default) or 4.3's delivery counting for quorum queues.
pub fn delivery_counting(version: Option<&str>) -> anyhow::Result<pier_broker::DeliveryCounting> {
    match version {
        None => Ok(pier_broker::DeliveryCounting::default()),
        Some(v) => pier_broker::DeliveryCounting::parse(v).ok_or_else(|| {
            anyhow::anyhow!(
                "quorum_queues.delivery_counting: \"{v}\" is not a version Pier knows (\"4.2\" or \"4.3\")"
            )
        }),
    }
}

/// RabbitMQ 4.2's or 4.3's defaults for its deprecated features.
pub fn deprecated_defaults(
    version: Option<&str>,
) -> anyhow::Result<pier_broker::DeprecatedFeatures> {
    match version {
        None | Some("4.2") => Ok(pier_broker::DeprecatedFeatures::rabbitmq_4_2()),
        Some("4.3") => Ok(pier_broker::DeprecatedFeatures::rabbitmq_4_3()),
        Some(other) => anyhow::bail!(
            "deprecated_features.defaults: \"{other}\" is not a version Pier knows (\"4.2\" or \"4.3\")"
        ),
    }
}

/// `[stomp]`: RabbitMQ's `stomp.*` settings that Pier has.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StompEntry {
    /// STOMP port (default 61613; 0: off).
    pub port: Option<u16>,
    /// STOMP over TLS port, with `[tls]` (default 61614; 0: off).
    pub tls_port: Option<u16>,
    /// STOMP over WebSocket port, path `/ws` (default 15674; 0: off).
    pub web_port: Option<u16>,
    /// Largest frame accepted, bytes (`stomp.max_frame_size`, default 4 MiB).
    pub max_frame_size: Option<usize>,
    /// The login a CONNECT without one uses (`stomp.default_user`, default guest/guest);
    /// an empty login turns that off.
    pub default_login: Option<String>,
    pub default_passcode: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterEntry {
    pub node_name: Option<String>,
    pub cluster_port: Option<u16>,
    pub peers: Option<Vec<String>>,
    pub advertise: Option<String>,
    /// Milliseconds a definition change may wait for the cluster (default 5000).
    pub propose_timeout: Option<u64>,
    /// Quorum queues replicated by Raft over several members (default true;
    /// docs/quorum-queues.md).
    pub quorum_replication: Option<bool>,
    /// Per-group heartbeats and elections of quorum queues (default false: elections from
    /// the node's pings, docs/decisions/0009).
    pub quorum_heartbeats: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsEntry {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub ca: Option<std::path::PathBuf>,
    #[serde(default)]
    pub verify_peer: bool,
    /// Serve the management API over HTTPS too.
    #[serde(default)]
    pub http: bool,
}

/// `[mqtt]`: the MQTT server's settings, with RabbitMQ's `mqtt.*` names.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttEntry {
    /// Plain MQTT port (`--mqtt-port` wins; 0: off).
    pub port: Option<u16>,
    /// MQTT over TLS port (with `[tls]`; `--mqtt-tls-port` wins; 0: off).
    pub tls_port: Option<u16>,
    /// MQTT over WebSocket port, path /ws (`--web-mqtt-port` wins; 0: off; default 15675).
    pub web_port: Option<u16>,
    pub vhost: Option<String>,
    pub exchange: Option<String>,
    pub allow_anonymous: Option<bool>,
    pub default_user: Option<String>,
    pub default_pass: Option<String>,
    pub prefetch: Option<u16>,
    /// Milliseconds a persistent session's queues outlive their connection.
    pub subscription_ttl: Option<u64>,
    pub max_packet_size_unauthenticated: Option<u32>,
    pub max_packet_size_authenticated: Option<u32>,
    pub topic_alias_maximum: Option<u16>,
}

impl MqttEntry {
    /// The server settings these keys give.
    pub fn server_config(&self) -> pier_server::mqtt::MqttConfig {
        let mut c = pier_server::mqtt::MqttConfig::default();
        if let Some(v) = &self.vhost {
            c.vhost.clone_from(v);
        }
        if let Some(v) = &self.exchange {
            c.exchange.clone_from(v);
        }
        if let Some(v) = self.allow_anonymous {
            c.allow_anonymous = v;
        }
        if let Some(v) = &self.default_user {
            c.default_user.clone_from(v);
        }
        if let Some(v) = &self.default_pass {
            c.default_pass.clone_from(v);
        }
        if let Some(v) = self.prefetch {
            c.prefetch = v.max(1);
        }
        if let Some(ms) = self.subscription_ttl {
            c.max_session_expiry_secs = u32::try_from(ms / 1000).unwrap_or(u32::MAX);
        }
        if let Some(v) = self.max_packet_size_unauthenticated {
            c.max_packet_size_unauthenticated = v.clamp(1, pier_mqtt_wire_max());
        }
        if let Some(v) = self.max_packet_size_authenticated {
            c.max_packet_size = v.clamp(1, pier_mqtt_wire_max());
        }
        if let Some(v) = self.topic_alias_maximum {
            c.topic_alias_maximum = v;
        }
        c
    }
}

/// The largest packet MQTT can express.
fn pier_mqtt_wire_max() -> u32 {
    268_435_455
}

/// What Pier tells clients it is. Some client code (and client test suites) switch
/// RabbitMQ-specific behaviour on `product == "RabbitMQ"`; setting it makes Pier claim to be
/// what it is not, to every client and every log that records it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerPropertiesEntry {
    pub product: Option<String>,
    pub version: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatermarkEntry {
    pub relative: Option<f64>,
    pub absolute: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskFreeLimitEntry {
    pub absolute: Option<u64>,
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
    /// RabbitMQ's vhost limit `max-connections` (default: none).
    pub max_connections: Option<u64>,
    /// RabbitMQ's vhost limit `max-queues` (default: none).
    pub max_queues: Option<u64>,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicPermissionEntry {
    pub user: String,
    pub vhost: String,
    pub exchange: String,
    #[serde(default = "match_all")]
    pub write: String,
    #[serde(default = "match_all")]
    pub read: String,
}

/// One policy, with RabbitMQ's key names (`apply-to`, and the definition keys of
/// `rabbitmqctl set_policy`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyEntry {
    pub name: String,
    #[serde(default = "default_vhost")]
    pub vhost: String,
    pub pattern: String,
    #[serde(rename = "apply-to", alias = "apply_to", default = "apply_to_all")]
    pub apply_to: String,
    #[serde(default)]
    pub priority: i32,
    pub definition: DefinitionEntry,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DefinitionEntry {
    pub message_ttl: Option<u64>,
    pub expires: Option<u64>,
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    pub overflow: Option<String>,
    pub dead_letter_exchange: Option<String>,
    pub dead_letter_routing_key: Option<String>,
    pub max_priority: Option<u8>,
    pub alternate_exchange: Option<String>,
    /// Quorum queues: `delivery-limit` (negative: no limit).
    pub delivery_limit: Option<i64>,
}

fn default_vhost() -> String {
    "/".to_owned()
}

fn apply_to_all() -> String {
    "all".to_owned()
}

impl PolicyEntry {
    fn to_policy(&self) -> anyhow::Result<Policy> {
        let apply_to = ApplyTo::parse(&self.apply_to).with_context(|| {
            format!(
                "policy '{}': apply-to must be all, queues or exchanges, not '{}'",
                self.name, self.apply_to
            )
        })?;
        let d = &self.definition;
        let overflow = match &d.overflow {
            None => None,
            Some(o) => Some(Overflow::parse(o).with_context(|| {
                format!(
                    "policy '{}': overflow must be drop-head, reject-publish or reject-publish-dlx, not '{o}'",
                    self.name
                )
            })?),
        };
        let definition = PolicyDefinition {
            message_ttl: d.message_ttl,
            expires: d.expires,
            max_length: d.max_length,
            max_length_bytes: d.max_length_bytes,
            overflow,
            dead_letter_exchange: d.dead_letter_exchange.clone(),
            dead_letter_routing_key: d.dead_letter_routing_key.clone(),
            max_priority: d.max_priority,
            alternate_exchange: d.alternate_exchange.clone(),
            max_age: None,
            stream_max_segment_size_bytes: None,
            delivery_limit: d.delivery_limit,
            dead_letter_strategy: None,
            queue_leader_locator: None,
        };
        Policy::new(
            self.name.clone(),
            &self.pattern,
            apply_to,
            self.priority,
            definition,
        )
        .map_err(|e| anyhow::anyhow!("policy '{}': {e}", self.name))
    }
}

fn match_all() -> String {
    ".*".to_owned()
}

impl FileConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        let mut config: FileConfig = toml::from_str(&text)
            .with_context(|| format!("parsing config file {}", path.display()))?;
        config.base_dir = path.parent().map(Path::to_owned);
        Ok(config)
    }

    /// Whether the management API is served over HTTPS (`[tls] http = true`).
    pub fn https(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.http)
    }

    /// The `[tls]` section with its paths resolved.
    pub fn tls_settings(&self) -> Option<pier_server::tls::TlsSettings> {
        let t = self.tls.as_ref()?;
        let resolve = |p: &Path| match &self.base_dir {
            Some(base) if p.is_relative() => base.join(p),
            _ => p.to_owned(),
        };
        Some(pier_server::tls::TlsSettings {
            cert: resolve(&t.cert),
            key: resolve(&t.key),
            ca: t.ca.as_deref().map(resolve),
            verify_peer: t.verify_peer,
        })
    }

    /// An empty broker with this config's loopback-only users (a cluster member's start:
    /// its definitions come from the cluster, see [`FileConfig::seed_commands`]).
    pub fn empty_broker(&self) -> Broker {
        Broker::empty(
            self.loopback_users
                .clone()
                .unwrap_or_else(|| vec!["guest".to_owned()]),
        )
    }

    /// Builds the broker state this config describes.
    pub fn build_broker(&self) -> anyhow::Result<Broker> {
        let broker = self.empty_broker();
        if self.default_user.unwrap_or(true) {
            broker.add_vhost("/");
            broker.add_user("guest", "guest", vec!["administrator".to_owned()]);
            broker.set_permission("guest", "/", Permission::full());
        }
        for v in &self.vhosts {
            broker
                .add_vhost(&v.name)
                .set_limits(pier_broker::VhostLimits {
                    max_connections: v.max_connections,
                    max_queues: v.max_queues,
                });
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
            let permission = Permission {
                configure: p.configure.clone(),
                write: p.write.clone(),
                read: p.read.clone(),
            };
            permission.validate().map_err(|e| {
                anyhow::anyhow!(
                    "permission for user '{}' on vhost '{}': {e}",
                    p.user,
                    p.vhost
                )
            })?;
            broker.set_permission(&p.user, &p.vhost, permission);
        }
        for p in &self.topic_permissions {
            if broker.vhost(&p.vhost).is_none() {
                anyhow::bail!(
                    "topic permission for user '{}' names unknown vhost '{}'",
                    p.user,
                    p.vhost
                );
            }
            let permission = TopicPermission {
                exchange: p.exchange.clone(),
                write: p.write.clone(),
                read: p.read.clone(),
            };
            permission.validate().map_err(|e| {
                anyhow::anyhow!(
                    "topic permission for user '{}' on vhost '{}', exchange '{}': {e}",
                    p.user,
                    p.vhost,
                    p.exchange
                )
            })?;
            broker.set_topic_permission(&p.user, &p.vhost, permission);
        }
        for p in &self.policies {
            let Some(vh) = broker.vhost(&p.vhost) else {
                anyhow::bail!("policy '{}' names unknown vhost '{}'", p.name, p.vhost);
            };
            vh.set_policy(p.to_policy()?);
        }
        Ok(broker)
    }
}

impl FileConfig {
    /// What a clustered node proposes at start-up so that the cluster has this file's
    /// definitions (as a single node applies them at every start): only what the cluster,
    /// as this node has applied it, lacks or holds differently. A password is re-hashed
    /// only when the stored hash does not verify, so nodes with the same file agree.
    pub fn seed_commands(&self, broker: &Broker) -> Vec<MetadataCommand> {
        let mut out = Vec::new();
        let vhost = |name: &str, out: &mut Vec<MetadataCommand>| {
            if broker.vhost(name).is_none() {
                out.push(MetadataCommand::PutVhost {
                    name: name.to_owned(),
                    description: String::new(),
                    tags: Vec::new(),
                    default_queue_type: None,
                    creator: None,
                });
            }
        };
        let user = |name: &str, password: &str, tags: &[String], out: &mut Vec<MetadataCommand>| {
            let current = broker.user(name);
            let same = current.is_some_and(|u| {
                u.tags == tags && pier_broker::auth::verify_password(password, &u.password_hash)
            });
            if !same {
                out.push(MetadataCommand::PutUser {
                    name: name.to_owned(),
                    password_hash: pier_broker::auth::hash_password(password),
                    tags: tags.to_vec(),
                });
            }
        };
        let permission =
            |user: &str, vhost: &str, p: Permission, out: &mut Vec<MetadataCommand>| {
                if broker.permission(user, vhost).as_ref() != Some(&p) {
                    out.push(MetadataCommand::SetPermission {
                        user: user.to_owned(),
                        vhost: vhost.to_owned(),
                        configure: p.configure,
                        write: p.write,
                        read: p.read,
                    });
                }
            };
        if self.default_user.unwrap_or(true) {
            vhost("/", &mut out);
            user("guest", "guest", &["administrator".to_owned()], &mut out);
            permission("guest", "/", Permission::full(), &mut out);
        }
        for v in &self.vhosts {
            vhost(&v.name, &mut out);
            let have = broker.vhost(&v.name).map(|vh| vh.limits());
            let want = pier_broker::VhostLimits {
                max_connections: v.max_connections,
                max_queues: v.max_queues,
            };
            if (v.max_connections.is_some() || v.max_queues.is_some()) && have != Some(want) {
                out.push(MetadataCommand::SetVhostLimits {
                    vhost: v.name.clone(),
                    max_connections: v.max_connections,
                    max_queues: v.max_queues,
                });
            }
        }
        for u in &self.users {
            user(&u.name, &u.password, &u.tags, &mut out);
        }
        for p in &self.permissions {
            let perm = Permission {
                configure: p.configure.clone(),
                write: p.write.clone(),
                read: p.read.clone(),
            };
            permission(&p.user, &p.vhost, perm, &mut out);
        }
        let topic = broker.users();
        for p in &self.topic_permissions {
            let same = topic.topic_permissions().any(|(u, v, t)| {
                u == p.user
                    && v == p.vhost
                    && t.exchange == p.exchange
                    && t.write == p.write
                    && t.read == p.read
            });
            if !same {
                out.push(MetadataCommand::SetTopicPermission {
                    user: p.user.clone(),
                    vhost: p.vhost.clone(),
                    exchange: p.exchange.clone(),
                    write: p.write.clone(),
                    read: p.read.clone(),
                });
            }
        }
        for p in &self.policies {
            let Ok(policy) = p.to_policy() else { continue };
            let same = broker.vhost(&p.vhost).is_some_and(|vh| {
                vh.policies().iter().any(|h| {
                    h.name == policy.name
                        && h.pattern() == policy.pattern()
                        && h.apply_to == policy.apply_to
                        && h.priority == policy.priority
                        && h.definition == policy.definition
                })
            });
            if !same {
                out.push(MetadataCommand::SetPolicy {
                    vhost: p.vhost.clone(),
                    name: policy.name.clone(),
                    pattern: policy.pattern().to_owned(),
                    apply_to: policy.apply_to.as_str().to_owned(),
                    priority: policy.priority,
                    definition: policy.definition.to_json(),
                });
            }
        }
        out
    }

    /// The server limits this config sets, on top of RabbitMQ's defaults.
    pub fn server_config(&self) -> anyhow::Result<pier_server::ServerConfig> {
        use std::time::Duration;
        let mut c = pier_server::ServerConfig::default();
        if let Some(v) = self.frame_max {
            c.frame_max = v;
        }
        if let Some(v) = self.channel_max {
            c.channel_max = v;
        }
        if let Some(v) = self.heartbeat {
            c.heartbeat = v;
        }
        if let Some(v) = self.max_message_size {
            c.max_message_size = v;
        }
        if let Some(ms) = self.consumer_timeout {
            c.consumer_timeout = (ms > 0).then(|| Duration::from_millis(ms));
        }
        c.max_connections = self.max_connections;
        if let Some(ms) = self.handshake_timeout {
            if ms == 0 {
                anyhow::bail!("handshake_timeout must be more than 0 ms");
            }
            c.handshake_timeout = Duration::from_millis(ms);
        }
        if let Some(w) = &self.vm_memory_high_watermark {
            c.memory_high_watermark = match (w.relative, w.absolute) {
                (Some(_), Some(_)) => anyhow::bail!(
                    "vm_memory_high_watermark: set either relative or absolute, not both"
                ),
                (Some(r), None) if (0.0..=1.0).contains(&r) => {
                    pier_server::config::MemoryWatermark::Relative(r)
                }
                (Some(r), None) => anyhow::bail!(
                    "vm_memory_high_watermark.relative must be between 0 and 1, not {r}"
                ),
                (None, Some(bytes)) => pier_server::config::MemoryWatermark::Absolute(bytes),
                (None, None) => c.memory_high_watermark,
            };
        }
        if let Some(DiskFreeLimitEntry {
            absolute: Some(bytes),
        }) = &self.disk_free_limit
        {
            c.disk_free_limit = *bytes;
        }
        if let Some(p) = &self.server_properties {
            if let Some(product) = &p.product {
                c.product = product.clone();
            }
            if let Some(version) = &p.version {
                c.product_version = version.clone();
            }
        }
        Ok(c)
    }
}

/// Parses the `fsync` setting.
pub fn sync_policy(value: Option<&str>) -> anyhow::Result<pier_store::SyncPolicy> {
    use pier_store::SyncPolicy;
    Ok(match value {
        None | Some("always") => SyncPolicy::Always,
        Some("never") => SyncPolicy::Never,
        Some(v) => match v
            .strip_suffix("ms")
            .and_then(|n| n.trim().parse::<u64>().ok())
        {
            Some(ms) if ms > 0 => SyncPolicy::Interval(std::time::Duration::from_millis(ms)),
            _ => anyhow::bail!("fsync must be \"always\", \"never\" or \"<N>ms\", not {v:?}"),
        },
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn mqtt_section() {
        let c: FileConfig = toml::from_str(
            "[mqtt]\nport = 1884\nvhost = \"other\"\nallow_anonymous = false\n\
             prefetch = 5\nsubscription_ttl = 60000\nmax_packet_size_authenticated = 1000\n",
        )
        .unwrap();
        let entry = c.mqtt.unwrap();
        assert_eq!(entry.port, Some(1884));
        let m = entry.server_config();
        assert_eq!(m.vhost, "other");
        assert_eq!(m.exchange, "amq.topic");
        assert!(!m.allow_anonymous);
        assert_eq!(m.prefetch, 5);
        assert_eq!(m.max_session_expiry_secs, 60);
        assert_eq!(m.max_packet_size, 1000);
        assert!(toml::from_str::<FileConfig>("[mqtt]\nbogus = 1").is_err());
    }

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
    fn server_properties_default_to_pier_and_can_be_set() {
        let c = FileConfig::default().server_config().unwrap();
        assert_eq!(c.product, "Pier");
        assert_eq!(c.product_version, env!("CARGO_PKG_VERSION"));
        let c: FileConfig = toml::from_str(
            r#"
            [server_properties]
            product = "RabbitMQ"
            version = "3.10.8"
            "#,
        )
        .unwrap();
        let c = c.server_config().unwrap();
        assert_eq!(
            (c.product.as_str(), c.product_version.as_str()),
            ("RabbitMQ", "3.10.8")
        );
        assert!(toml::from_str::<FileConfig>("[server_properties]\nplatform = \"x\"").is_err());
    }

    #[test]
    fn parses_policies() {
        let c: FileConfig = toml::from_str(
            r#"
            [[policies]]
            name = "ttl"
            pattern = '^tmp\.'
            apply-to = "queues"
            priority = 2
            definition = { message-ttl = 100, overflow = "reject-publish", dead-letter-exchange = "dlx" }
            "#,
        )
        .unwrap();
        let b = c.build_broker().unwrap();
        let ps = b.vhost("/").unwrap().policies();
        assert_eq!(ps.len(), 1);
        assert_eq!(ps[0].pattern(), "^tmp\\.");
        assert_eq!(ps[0].priority, 2);
        assert_eq!(ps[0].definition.message_ttl, Some(100));
        assert_eq!(ps[0].definition.overflow, Some(Overflow::RejectPublish));
        for bad in [
            "[[policies]]\nname = \"p\"\npattern = \"(\"\ndefinition = {}",
            "[[policies]]\nname = \"p\"\npattern = \".*\"\ndefinition = { bogus = 1 }",
            "[[policies]]\nname = \"p\"\npattern = \".*\"\napply-to = \"nope\"\ndefinition = {}",
            "[[policies]]\nname = \"p\"\nvhost = \"nope\"\npattern = \".*\"\ndefinition = {}",
        ] {
            let parsed = toml::from_str::<FileConfig>(bad);
            assert!(
                parsed.is_err() || parsed.unwrap().build_broker().is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn fsync_setting() {
        use pier_store::SyncPolicy;
        assert_eq!(sync_policy(None).unwrap(), SyncPolicy::Always);
        assert_eq!(sync_policy(Some("never")).unwrap(), SyncPolicy::Never);
        assert_eq!(
            sync_policy(Some("5ms")).unwrap(),
            SyncPolicy::Interval(std::time::Duration::from_millis(5))
        );
        assert!(sync_policy(Some("sometimes")).is_err());
        assert!(sync_policy(Some("0ms")).is_err());
    }

    #[test]
    fn limits_and_alarms() {
        let c: FileConfig = toml::from_str(
            r#"
            max_connections = 10
            handshake_timeout = 2000
            vm_memory_high_watermark.absolute = 52428800
            disk_free_limit.absolute = 1000
            [[vhosts]]
            name = "/"
            max_queues = 3
            max_connections = 2
            "#,
        )
        .unwrap();
        let s = c.server_config().unwrap();
        assert_eq!(s.max_connections, Some(10));
        assert_eq!(s.handshake_timeout, std::time::Duration::from_secs(2));
        assert_eq!(
            s.memory_high_watermark,
            pier_server::config::MemoryWatermark::Absolute(52_428_800)
        );
        assert_eq!(s.disk_free_limit, 1000);
        let b = c.build_broker().unwrap();
        let limits = b.vhost("/").unwrap().limits();
        assert_eq!(limits.max_queues, Some(3));
        assert_eq!(limits.max_connections, Some(2));
        let d = FileConfig::default().server_config().unwrap();
        assert_eq!(
            d.memory_high_watermark,
            pier_server::config::MemoryWatermark::Relative(0.4)
        );
        assert_eq!(d.disk_free_limit, 50_000_000);
        assert!(
            toml::from_str::<FileConfig>("vm_memory_high_watermark.relative = 2.0")
                .unwrap()
                .server_config()
                .is_err()
        );
    }

    #[test]
    fn tls_section_paths_are_relative_to_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pier.toml");
        std::fs::write(
            &path,
            "[tls]\ncert = \"s.pem\"\nkey = \"/abs/s.key\"\nca = \"ca.pem\"\nverify_peer = true\nhttp = true\n",
        )
        .unwrap();
        let c = FileConfig::load(&path).unwrap();
        let t = c.tls_settings().unwrap();
        assert_eq!(t.cert, dir.path().join("s.pem"));
        assert_eq!(t.key, std::path::PathBuf::from("/abs/s.key"));
        assert_eq!(t.ca, Some(dir.path().join("ca.pem")));
        assert!(t.verify_peer && c.https());
        assert!(FileConfig::default().tls_settings().is_none());
        assert!(
            toml::from_str::<FileConfig>("[tls]\ncert = \"a\"\nkey = \"b\"\nbogus = 1").is_err()
        );
    }

    #[test]
    fn invalid_permission_patterns_are_refused() {
        let c: FileConfig = toml::from_str(
            r#"
            [[users]]
            name = "u"
            password = "p"
            [[permissions]]
            user = "u"
            vhost = "/"
            configure = "(unclosed"
            "#,
        )
        .unwrap();
        assert!(c.build_broker().is_err());
    }

    #[test]
    fn parses_topic_permissions() {
        let c: FileConfig = toml::from_str(
            r#"
            [[users]]
            name = "u"
            password = "p"
            [[topic_permissions]]
            user = "u"
            vhost = "/"
            exchange = "amq.topic"
            write = '^{username}\.'
            "#,
        )
        .unwrap();
        let b = c.build_broker().unwrap();
        let (_, set) = b.compiled_topic_permissions("u", "/");
        let t = set.unwrap();
        let p = t.get("amq.topic").unwrap();
        assert!(p.allows(pier_broker::Access::Write, "u.a"));
        assert!(!p.allows(pier_broker::Access::Write, "v.a"));
        assert!(p.allows(pier_broker::Access::Read, "anything"));
        for bad in [
            "[[topic_permissions]]\nuser = \"u\"\nvhost = \"nope\"\nexchange = \"x\"",
            "[[topic_permissions]]\nuser = \"u\"\nvhost = \"/\"\nexchange = \"x\"\nread = \"(\"",
        ] {
            let c: FileConfig = toml::from_str(bad).unwrap();
            assert!(c.build_broker().is_err(), "{bad}");
        }
        assert!(
            toml::from_str::<FileConfig>("[[topic_permissions]]\nuser = \"u\"\nvhost = \"/\"")
                .is_err()
        );
    }

    #[test]
    fn seed_commands_cover_only_what_the_cluster_lacks() {
        let c: FileConfig = toml::from_str(
            r#"
            [cluster]
            node_name = "pier@a"
            peers = ["127.0.0.1:7001"]
            [[users]]
            name = "alice"
            password = "secret"
            [[vhosts]]
            name = "other"
            max_queues = 5
            [[permissions]]
            user = "alice"
            vhost = "other"
            "#,
        )
        .unwrap();
        assert_eq!(
            c.cluster.as_ref().unwrap().node_name.as_deref(),
            Some("pier@a")
        );
        // A node whose applied state came from the same file needs nothing.
        let same = c.build_broker().unwrap();
        assert!(c.seed_commands(&same).is_empty());
        // A fresh cluster needs everything.
        let empty = Broker::empty(Vec::new());
        let cmds = c.seed_commands(&empty);
        assert_eq!(cmds.len(), 7, "{cmds:?}");
    }

    #[test]
    fn rejects_unknown_keys() {
        assert!(toml::from_str::<FileConfig>("bogus = 1").is_err());
    }
}
