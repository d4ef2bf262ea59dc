//! `pier ctl`: `rabbitmqctl`'s commands and habits, talking to Pier's management HTTP API.
//!
//! ```text
//! pier ctl list_queues name messages consumers
//! pier ctl -p orders set_policy --apply-to queues cap '^orders\.' '{"max-length": 10000}'
//! pier ctl --json list_users
//! ```
//!
//! The broker is reached at `--url` (`PIER_CTL_URL`, default `http://127.0.0.1:15672`) as
//! `--user`/`--password` (`PIER_CTL_USER`/`PIER_CTL_PASSWORD`, default guest/guest); `-p`
//! names the vhost (default `/`). Lists are tables with a header row, or JSON with `--json`;
//! `list_*` take `rabbitmqctl`'s info items as columns (and any field of the API's JSON).
//! Informational lines ("Listing queues …") go to stderr, so stdout stays parseable; `-q`
//! leaves them out. Exit codes follow `rabbitmqctl`: 69 when the API cannot be reached, 77
//! when the credentials are refused, 64 for a usage error, 65 for bad input, 70 otherwise.

mod client;
mod cluster;
mod output;
mod quorum;
mod streams;

use std::io::Read;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use self::client::{
    enc, Client, CtlError, CtlResult, EX_CANTCREAT, EX_DATAERR, EX_NOINPUT, EX_SOFTWARE,
};
use self::output::{cell, columns, emit, emit_json, project, table, ListSpec};

#[derive(Args, Debug)]
#[command(
    about = "Manage a running Pier (rabbitmqctl's commands, over the management HTTP API)",
    after_help = "Examples:\n  pier ctl status\n  pier ctl list_queues name messages consumers \
                  arrival_rate service_rate utilisation\n  pier ctl -p / set_permissions alice \
                  '.*' '.*' '.*'\n  pier ctl --json list_exchanges name type"
)]
pub struct CtlArgs {
    /// Base URL of Pier's management HTTP API.
    #[arg(
        long,
        global = true,
        env = "PIER_CTL_URL",
        default_value = "http://127.0.0.1:15672"
    )]
    url: String,
    /// User for the management API (needs a management tag; most changes need administrator).
    #[arg(long, global = true, env = "PIER_CTL_USER", default_value = "guest")]
    user: String,
    /// Password of --user.
    #[arg(
        long,
        global = true,
        env = "PIER_CTL_PASSWORD",
        default_value = "guest",
        hide_env_values = true
    )]
    password: String,
    /// Virtual host of the command (as rabbitmqctl's -p).
    #[arg(
        short = 'p',
        long = "vhost",
        global = true,
        env = "PIER_CTL_VHOST",
        default_value = "/"
    )]
    vhost: String,
    /// Print JSON instead of tables (for scripts).
    #[arg(long, global = true)]
    json: bool,
    /// Leave out informational messages.
    #[arg(short = 'q', long, global = true)]
    quiet: bool,
    /// Seconds to wait for each API call.
    #[arg(
        long,
        global = true,
        env = "PIER_CTL_TIMEOUT",
        default_value_t = 60,
        value_name = "SECONDS"
    )]
    timeout: u64,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand, Debug)]
#[command(rename_all = "snake_case")]
enum CtlCommand {
    /// Node status: versions, uptime, memory, listeners and totals.
    Status,
    /// Queues of the vhost. Columns: name messages messages_ready messages_unacknowledged
    /// consumers durable auto_delete exclusive arguments policy state type, and Pier's
    /// queueing figures arrival_rate service_rate utilisation length time_in_queue
    /// mm1_length mm1_time_in_queue, and time in queue measured per message over the last
    /// minute time_in_queue_mean time_in_queue_p50 time_in_queue_p99 (default: name messages).
    ListQueues {
        /// Info items to show (space- or comma-separated).
        columns: Vec<String>,
    },
    /// Exchanges of the vhost (default columns: name type).
    ListExchanges { columns: Vec<String> },
    /// Bindings of the vhost (default columns: source_name source_kind destination_name
    /// destination_kind routing_key arguments).
    ListBindings { columns: Vec<String> },
    /// Client connections (default columns: user peer_host peer_port state).
    ListConnections { columns: Vec<String> },
    /// STOMP connections (list_connections' columns, STOMP protocols only).
    ListStompConnections { columns: Vec<String> },
    /// Channels (default columns: name user consumer_count messages_unacknowledged).
    ListChannels { columns: Vec<String> },
    /// Consumers of the vhost (default columns: queue_name channel_pid consumer_tag
    /// ack_required prefetch_count active activity_status arguments).
    ListConsumers { columns: Vec<String> },
    /// Users and their tags.
    ListUsers { columns: Vec<String> },
    /// Creates a user (the password is read from stdin when not given).
    AddUser {
        username: String,
        #[arg(value_name = "PASSWORD")]
        new_password: Option<String>,
        /// Tags to give the user (comma-separated), e.g. administrator.
        #[arg(long, default_value = "")]
        tags: String,
    },
    /// Deletes a user (and closes its connections).
    DeleteUser { username: String },
    /// Changes a user's password (read from stdin when not given), keeping its tags.
    ChangePassword {
        username: String,
        new_password: Option<String>,
    },
    /// Replaces a user's tags (none: no tags).
    SetUserTags { username: String, tags: Vec<String> },
    /// Virtual hosts (default columns: name).
    ListVhosts { columns: Vec<String> },
    /// Creates a virtual host.
    AddVhost {
        #[arg(value_name = "VHOST")]
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        /// Comma-separated tags.
        #[arg(long, default_value = "")]
        tags: String,
        #[arg(long = "default-queue-type")]
        default_queue_type: Option<String>,
    },
    /// Deletes a virtual host and everything in it.
    DeleteVhost {
        #[arg(value_name = "VHOST")]
        name: String,
    },
    /// Sets a user's permissions on the vhost (regular expressions; "" for none).
    SetPermissions {
        username: String,
        #[arg(allow_hyphen_values = true)]
        configure: String,
        #[arg(allow_hyphen_values = true)]
        write: String,
        #[arg(allow_hyphen_values = true)]
        read: String,
    },
    /// Removes a user's permissions on the vhost.
    ClearPermissions { username: String },
    /// Permissions on the vhost.
    ListPermissions,
    /// Permissions of one user, on every vhost.
    ListUserPermissions { username: String },
    /// Sets a user's topic permission on one topic exchange of the vhost: regular
    /// expressions on the routing keys it may publish with (write) and bind with (read).
    SetTopicPermissions {
        username: String,
        exchange: String,
        #[arg(allow_hyphen_values = true)]
        write: String,
        #[arg(allow_hyphen_values = true)]
        read: String,
    },
    /// Removes a user's topic permissions on the vhost (all, or one exchange's).
    ClearTopicPermissions {
        username: String,
        exchange: Option<String>,
    },
    /// Topic permissions on the vhost.
    ListTopicPermissions,
    /// Topic permissions of one user, on every vhost.
    ListUserTopicPermissions { username: String },
    /// Sets a policy on the vhost: NAME PATTERN DEFINITION (a JSON object).
    SetPolicy {
        name: String,
        #[arg(allow_hyphen_values = true)]
        pattern: String,
        definition: String,
        /// Which policy wins when several match (highest).
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i32,
        /// all, queues or exchanges.
        #[arg(long = "apply-to", default_value = "all")]
        apply_to: String,
    },
    /// Removes a policy from the vhost.
    ClearPolicy { name: String },
    /// Policies of the vhost.
    ListPolicies { columns: Vec<String> },
    /// Sets the vhost's limits: DEFINITION is a JSON object, e.g. '{"max-queues": 100}'
    /// (max-connections, max-queues; negative: no limit). Replaces the previous limits.
    SetVhostLimits { definition: String },
    /// Removes the vhost's limits.
    ClearVhostLimits,
    /// The vhost's limits (a JSON object); with --global, those of every vhost.
    ListVhostLimits {
        #[arg(long)]
        global: bool,
    },
    /// Renames the cluster (a single node keeps it in memory; a cluster replicates it).
    #[command(alias = "rename_cluster")]
    SetClusterName { name: String },
    /// The cluster as this node sees it: rabbitmqctl's sections (nodes, running nodes,
    /// versions, alarms, network partitions, listeners) and Pier's Raft figures.
    ClusterStatus,
    /// Resets this node (its definitions and messages are deleted, as with rabbitmqctl's
    /// reset) and joins the cluster of the node at NODE, its cluster address (host:port).
    JoinCluster {
        #[arg(value_name = "NODE")]
        node: String,
    },
    /// Removes NODE (a node name, e.g. pier@host2) from the cluster. Stop it first.
    ForgetClusterNode {
        #[arg(value_name = "NODE")]
        node: String,
    },
    /// Removes every ready message of a queue.
    PurgeQueue { queue: String },
    /// Deletes a queue and its messages.
    DeleteQueue {
        queue: String,
        /// Only if the queue has no messages.
        #[arg(short = 'e', long = "if-empty")]
        if_empty: bool,
        /// Only if the queue has no consumers.
        #[arg(short = 'u', long = "if-unused")]
        if_unused: bool,
    },
    /// Closes a client connection (by name, as list_connections name shows it).
    CloseConnection {
        connection: String,
        /// Reason sent to the client.
        #[arg(default_value = "Closed via pier ctl")]
        explanation: String,
    },
    /// Writes every definition (users, vhosts, permissions, topic permissions, policies,
    /// queues, exchanges,
    /// bindings) to FILE in RabbitMQ's format ("-" for stdout).
    ExportDefinitions { file: String },
    /// Imports definitions in RabbitMQ's format from FILE ("-" for stdin).
    ImportDefinitions { file: String },
    /// Creates a super stream (rabbitmq-streams add_super_stream): a direct exchange NAME
    /// and its partition streams NAME-0..NAME-(N-1) bound with keys 0..N-1 (or NAME-key
    /// bound with each of --routing-keys).
    AddSuperStream {
        name: String,
        /// Number of partitions (default 3).
        #[arg(long)]
        partitions: Option<u32>,
        /// Comma-separated routing keys, one partition each (instead of --partitions).
        #[arg(long = "routing-keys")]
        routing_keys: Option<String>,
        /// Retention of each partition by size (bytes).
        #[arg(long = "max-length-bytes")]
        max_length_bytes: Option<String>,
        /// Retention of each partition by age (e.g. 7D, 12h).
        #[arg(long = "max-age")]
        max_age: Option<String>,
        /// Segment file size of each partition (bytes).
        #[arg(long = "stream-max-segment-size-bytes")]
        stream_max_segment_size_bytes: Option<String>,
        /// Accepted for compatibility (a single node leads every stream).
        #[arg(long = "leader-locator")]
        leader_locator: Option<String>,
    },
    /// Deletes a super stream: its partition streams and its exchange.
    DeleteSuperStream { name: String },
    /// Stream queues of the vhost. Columns: name vhost messages consumers arguments policy
    /// node segments size first_offset last_offset committed_offset first_timestamp
    /// last_timestamp offsets sequences (default: name messages segments first_offset
    /// last_offset).
    ListStreams { columns: Vec<String> },
    /// Stream-protocol connections of the vhost (default column: conn_name).
    ListStreamConnections { columns: Vec<String> },
    /// Stream-protocol publishers of the vhost.
    ListStreamPublishers { columns: Vec<String> },
    /// MQTT connections of the vhost (default columns: client_id conn_name); the columns of
    /// list_connections plus client_id and conn_name.
    ListMqttConnections { columns: Vec<String> },
    /// Stream-protocol consumers (subscriptions) of the vhost.
    ListStreamConsumers { columns: Vec<String> },
    /// Single-active-consumer groups of the vhost's streams. Columns: stream reference
    /// partition_index consumers.
    ListStreamConsumerGroups { columns: Vec<String> },
    /// The consumers of one single-active-consumer group. Columns: subscription_id
    /// connection_name state.
    ListStreamGroupConsumers {
        #[arg(long)]
        stream: String,
        #[arg(long)]
        reference: String,
        columns: Vec<String>,
    },
    /// Forces a single-active-consumer group on (rabbitmq-streams activate_stream_consumer,
    /// RabbitMQ 4.2): activates the member that waits for a former active one that never
    /// answered its step-down. Run it against the node hosting the stream.
    ActivateStreamConsumer {
        #[arg(long)]
        stream: String,
        #[arg(long)]
        reference: String,
    },
    /// The members of a quorum queue's Raft group (rabbitmq-queues quorum_status). Columns:
    /// node raft_state term last_log_index commit_index leader.
    QuorumStatus { name: String, columns: Vec<String> },
    /// Fails (69) when stopping this node would cost a quorum queue its majority
    /// (rabbitmq-queues check_if_node_is_quorum_critical).
    CheckIfNodeIsQuorumCritical,
    /// Adds a member (replica) on NODE to a quorum queue (rabbitmq-queues add_member).
    AddMember { queue: String, node: String },
    /// Removes the member on NODE of a quorum queue (rabbitmq-queues delete_member).
    DeleteMember { queue: String, node: String },
    /// Adds NODE as a member of every quorum queue (all) or of those with an even number of
    /// members (rabbitmq-queues grow). Columns: vhost name size result.
    Grow {
        node: String,
        #[arg(value_enum)]
        strategy: quorum::GrowStrategy,
        columns: Vec<String>,
    },
    /// Removes NODE from every quorum queue it is a member of (rabbitmq-queues shrink).
    Shrink { node: String, columns: Vec<String> },
    /// Makes the member on NODE the leader of a quorum queue.
    TransferLeadership { queue: String, node: String },
    /// Adds a replica of a stream on NODE (rabbitmq-streams add_replica): it copies the
    /// leader's log and counts towards commits.
    AddReplica { queue: String, node: String },
    /// Removes the replica of a stream on NODE and deletes its copy (rabbitmq-streams
    /// delete_replica).
    DeleteReplica { queue: String, node: String },
    /// The members of a stream (rabbitmq-streams stream_status). Columns: role node epoch
    /// offset committed_offset first_offset readers segments.
    StreamStatus { name: String, columns: Vec<String> },
    /// Offsets stored by named consumers and sequences of named publishers of a stream.
    ListStreamTracking {
        name: String,
        /// Both kinds (the default).
        #[arg(long, conflicts_with_all = ["offset", "writer"])]
        all: bool,
        /// Consumer offsets only.
        #[arg(long, conflicts_with = "writer")]
        offset: bool,
        /// Publisher sequences only.
        #[arg(long)]
        writer: bool,
    },
}

/// Runs `pier ctl`; on failure prints `Error: …` and exits with the command's code.
pub fn main(args: CtlArgs) -> anyhow::Result<()> {
    let client = Client::new(
        &args.url,
        &args.user,
        &args.password,
        Duration::from_secs(args.timeout.max(1)),
    );
    let ctl = Ctl {
        client,
        vhost: args.vhost,
        json: args.json,
        quiet: args.quiet,
    };
    match ctl.run(args.command) {
        Ok(()) => Ok(()),
        Err(e) => {
            eprintln!("Error: {}", e.message);
            std::process::exit(e.code)
        }
    }
}

struct Ctl {
    client: Client,
    vhost: String,
    json: bool,
    quiet: bool,
}

// ---- info items of the list commands ----

const QUEUES: ListSpec = ListSpec {
    what: "queue",
    items: &[
        ("name", "name"),
        ("vhost", "vhost"),
        ("durable", "durable"),
        ("auto_delete", "auto_delete"),
        ("exclusive", "exclusive"),
        ("arguments", "arguments"),
        ("policy", "policy"),
        ("state", "state"),
        ("type", "type"),
        ("node", "node"),
        ("messages", "messages"),
        ("messages_ready", "messages_ready"),
        ("messages_unacknowledged", "messages_unacknowledged"),
        ("messages_ram", "messages_ram"),
        ("messages_ready_ram", "messages_ready_ram"),
        ("messages_unacknowledged_ram", "messages_unacknowledged_ram"),
        ("message_bytes_ready", "message_bytes_ready"),
        ("consumers", "consumers"),
        ("exclusive_consumer_tag", "exclusive_consumer_tag"),
        ("single_active_consumer_tag", "single_active_consumer_tag"),
        ("owner_pid", "owner_pid_details.name"),
        ("publish", "message_stats.publish"),
        ("deliver_get", "message_stats.deliver_get"),
        ("ack", "message_stats.ack"),
        ("arrival_rate", "pier_queueing.arrival_rate"),
        ("service_rate", "pier_queueing.service_rate"),
        ("utilisation", "pier_queueing.utilisation"),
        ("length", "pier_queueing.length"),
        ("time_in_queue", "pier_queueing.time_in_queue_seconds"),
        ("mm1_length", "pier_queueing.mm1_predicted_length"),
        (
            "mm1_time_in_queue",
            "pier_queueing.mm1_predicted_time_in_queue_seconds",
        ),
        (
            "time_in_queue_mean",
            "pier_queueing.measured_time_in_queue.mean_seconds",
        ),
        (
            "time_in_queue_p50",
            "pier_queueing.measured_time_in_queue.p50_seconds",
        ),
        (
            "time_in_queue_p99",
            "pier_queueing.measured_time_in_queue.p99_seconds",
        ),
    ],
    default: &["name", "messages"],
};

const EXCHANGES: ListSpec = ListSpec {
    what: "exchange",
    items: &[
        ("name", "name"),
        ("vhost", "vhost"),
        ("type", "type"),
        ("durable", "durable"),
        ("auto_delete", "auto_delete"),
        ("internal", "internal"),
        ("arguments", "arguments"),
        ("policy", "policy"),
    ],
    default: &["name", "type"],
};

const BINDINGS: ListSpec = ListSpec {
    what: "binding",
    items: &[
        ("source_name", "source"),
        ("source_kind", "=exchange"),
        ("destination_name", "destination"),
        ("destination_kind", "destination_type"),
        ("routing_key", "routing_key"),
        ("arguments", "arguments"),
        ("vhost", "vhost"),
        ("properties_key", "properties_key"),
    ],
    default: &[
        "source_name",
        "source_kind",
        "destination_name",
        "destination_kind",
        "routing_key",
        "arguments",
    ],
};

const MQTT_CONNECTIONS: ListSpec = ListSpec {
    what: "MQTT connection",
    items: &[
        ("client_id", "client_id"),
        ("conn_name", "conn_name"),
        ("name", "name"),
        ("user", "user"),
        ("vhost", "vhost"),
        ("peer_host", "peer_host"),
        ("peer_port", "peer_port"),
        ("host", "host"),
        ("port", "port"),
        ("state", "state"),
        ("protocol", "protocol"),
        ("ssl", "ssl"),
        ("timeout", "timeout"),
        ("recv_oct", "recv_oct"),
        ("recv_cnt", "recv_cnt"),
        ("send_oct", "send_oct"),
        ("send_cnt", "send_cnt"),
        ("connected_at", "connected_at"),
        ("client_properties", "client_properties"),
        ("node", "node"),
    ],
    default: &["client_id", "conn_name"],
};

const CONNECTIONS: ListSpec = ListSpec {
    what: "connection",
    items: &[
        ("name", "name"),
        ("user", "user"),
        ("vhost", "vhost"),
        ("peer_host", "peer_host"),
        ("peer_port", "peer_port"),
        ("host", "host"),
        ("port", "port"),
        ("state", "state"),
        ("channels", "channels"),
        ("protocol", "protocol"),
        ("auth_mechanism", "auth_mechanism"),
        ("ssl", "ssl"),
        ("frame_max", "frame_max"),
        ("channel_max", "channel_max"),
        ("timeout", "timeout"),
        ("recv_oct", "recv_oct"),
        ("recv_cnt", "recv_cnt"),
        ("send_oct", "send_oct"),
        ("send_cnt", "send_cnt"),
        ("send_pend", "send_pend"),
        ("connected_at", "connected_at"),
        ("client_properties", "client_properties"),
        ("user_provided_name", "user_provided_name"),
        ("node", "node"),
        ("type", "type"),
    ],
    default: &["user", "peer_host", "peer_port", "state"],
};

const CHANNELS: ListSpec = ListSpec {
    what: "channel",
    items: &[
        ("name", "name"),
        ("pid", "name"),
        ("number", "number"),
        ("connection", "connection_details.name"),
        ("user", "user"),
        ("vhost", "vhost"),
        ("state", "state"),
        ("consumer_count", "consumer_count"),
        ("messages_unacknowledged", "messages_unacknowledged"),
        ("node", "node"),
    ],
    default: &["name", "user", "consumer_count", "messages_unacknowledged"],
};

const CONSUMERS: ListSpec = ListSpec {
    what: "consumer",
    items: &[
        ("queue_name", "queue.name"),
        ("channel_pid", "channel_details.name"),
        ("connection", "channel_details.connection_name"),
        ("consumer_tag", "consumer_tag"),
        ("ack_required", "ack_required"),
        ("prefetch_count", "prefetch_count"),
        ("active", "active"),
        ("activity_status", "activity_status"),
        ("exclusive", "exclusive"),
        ("priority", "priority"),
        ("arguments", "arguments"),
    ],
    default: &[
        "queue_name",
        "channel_pid",
        "consumer_tag",
        "ack_required",
        "prefetch_count",
        "active",
        "activity_status",
        "arguments",
    ],
};

const USERS: ListSpec = ListSpec {
    what: "user",
    items: &[
        ("user", "name"),
        ("name", "name"),
        ("tags", "tags"),
        ("hashing_algorithm", "hashing_algorithm"),
    ],
    default: &["user", "tags"],
};

const VHOSTS: ListSpec = ListSpec {
    what: "vhost",
    items: &[
        ("name", "name"),
        ("description", "description"),
        ("tags", "tags"),
        ("tracing", "tracing"),
        ("default_queue_type", "default_queue_type"),
        ("cluster_state", "cluster_state"),
        ("messages", "messages"),
        ("messages_ready", "messages_ready"),
        ("messages_unacknowledged", "messages_unacknowledged"),
        ("arrival_rate", "pier_queueing.arrival_rate"),
        ("service_rate", "pier_queueing.service_rate"),
        (
            "time_in_queue_p50",
            "pier_queueing.measured_time_in_queue.p50_seconds",
        ),
        (
            "time_in_queue_p99",
            "pier_queueing.measured_time_in_queue.p99_seconds",
        ),
    ],
    default: &["name"],
};

const PERMISSIONS: ListSpec = ListSpec {
    what: "permission",
    items: &[
        ("user", "user"),
        ("vhost", "vhost"),
        ("configure", "configure"),
        ("write", "write"),
        ("read", "read"),
    ],
    default: &["user", "configure", "write", "read"],
};

const USER_PERMISSIONS: ListSpec = ListSpec {
    what: "permission",
    items: PERMISSIONS.items,
    default: &["vhost", "configure", "write", "read"],
};

const TOPIC_PERMISSIONS: ListSpec = ListSpec {
    what: "topic permission",
    items: &[
        ("user", "user"),
        ("vhost", "vhost"),
        ("exchange", "exchange"),
        ("write", "write"),
        ("read", "read"),
    ],
    default: &["user", "exchange", "write", "read"],
};

const USER_TOPIC_PERMISSIONS: ListSpec = ListSpec {
    what: "topic permission",
    items: TOPIC_PERMISSIONS.items,
    default: &["vhost", "exchange", "write", "read"],
};

const VHOST_LIMITS: ListSpec = ListSpec {
    what: "vhost limits",
    items: &[("vhost", "vhost"), ("limits", "value"), ("value", "value")],
    default: &["vhost", "limits"],
};

const POLICIES: ListSpec = ListSpec {
    what: "policy",
    items: &[
        ("vhost", "vhost"),
        ("name", "name"),
        ("pattern", "pattern"),
        ("apply-to", "apply-to"),
        ("apply_to", "apply-to"),
        ("definition", "definition"),
        ("priority", "priority"),
    ],
    default: &[
        "vhost",
        "name",
        "pattern",
        "apply-to",
        "definition",
        "priority",
    ],
};

/// Reads a password from stdin (first line) when it was not given on the command line.
fn password_from_stdin(given: Option<String>) -> CtlResult<String> {
    if let Some(p) = given {
        return Ok(p);
    }
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        eprint!("Password: ");
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| CtlError::new(EX_NOINPUT, format!("reading the password: {e}")))?;
    let p = line.trim_end_matches(['\r', '\n']).to_owned();
    if p.is_empty() {
        return Err(CtlError::usage("the password must not be empty"));
    }
    Ok(p)
}

fn tags_list(tags: &[String]) -> String {
    tags.iter()
        .flat_map(|t| t.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join(",")
}

fn fmt_uptime(ms: u64) -> String {
    let s = ms / 1000;
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m {s}s"),
        _ => format!("{d}d {h}h {m}m"),
    }
}

fn fmt_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

impl Ctl {
    /// An informational line on stderr (left out with --quiet or --json).
    fn info(&self, text: &str) {
        if !self.quiet && !self.json {
            eprintln!("{text}");
        }
    }

    fn vh(&self) -> String {
        enc(&self.vhost)
    }

    /// Prints a list: a table of the chosen columns, or a JSON array of objects.
    fn show_list(&self, spec: &ListSpec, requested: &[String], rows: &[Value]) -> CtlResult<()> {
        let cols = columns(spec, requested, rows)?;
        let projected = project(rows, &cols);
        if self.json {
            emit_json(&Value::Array(projected));
            return Ok(());
        }
        let headers: Vec<String> = cols.iter().map(|c| c.name.clone()).collect();
        let cells: Vec<Vec<String>> = projected
            .iter()
            .map(|r| {
                cols.iter()
                    .map(|c| cell(r.get(&c.name).unwrap_or(&Value::Null)))
                    .collect()
            })
            .collect();
        emit(&table(&headers, &cells));
        Ok(())
    }

    /// Prints the outcome of a change: nothing in a table run (the info line said it), an
    /// object with `--json`.
    fn done(&self, v: Value) {
        if self.json {
            emit_json(&v);
        }
    }

    /// Turns a 404 into `what` (rabbitmqctl's `no_such_user: alice` style).
    fn not_found(e: CtlError, what: String) -> CtlError {
        if e.is_not_found() {
            CtlError { message: what, ..e }
        } else {
            e
        }
    }

    fn run(&self, command: CtlCommand) -> CtlResult<()> {
        let c = &self.client;
        match command {
            CtlCommand::Status => self.status(),
            CtlCommand::ListQueues { columns } => {
                self.info(&format!("Listing queues for vhost {} ...", self.vhost));
                let rows = c
                    .list(&format!("/queues/{}", self.vh()))
                    .map_err(|e| Self::not_found(e, self.no_vhost()))?;
                self.show_list(&QUEUES, &columns, &rows)
            }
            CtlCommand::ListExchanges { columns } => {
                self.info(&format!("Listing exchanges for vhost {} ...", self.vhost));
                let rows = c
                    .list(&format!("/exchanges/{}", self.vh()))
                    .map_err(|e| Self::not_found(e, self.no_vhost()))?;
                self.show_list(&EXCHANGES, &columns, &rows)
            }
            CtlCommand::ListBindings { columns } => {
                self.info(&format!("Listing bindings for vhost {}...", self.vhost));
                let rows = c
                    .list(&format!("/bindings/{}", self.vh()))
                    .map_err(|e| Self::not_found(e, self.no_vhost()))?;
                self.show_list(&BINDINGS, &columns, &rows)
            }
            CtlCommand::ListConnections { columns } => {
                self.info("Listing connections ...");
                let rows = c.list("/connections")?;
                self.show_list(&CONNECTIONS, &columns, &rows)
            }
            CtlCommand::ListStompConnections { columns } => {
                self.info("Listing STOMP connections ...");
                let rows: Vec<_> = c
                    .list("/connections")?
                    .into_iter()
                    .filter(|r| {
                        r.get("protocol")
                            .and_then(|p| p.as_str())
                            .is_some_and(|p| p.starts_with("STOMP"))
                    })
                    .collect();
                self.show_list(&CONNECTIONS, &columns, &rows)
            }
            CtlCommand::ListChannels { columns } => {
                self.info("Listing channels ...");
                let rows = c.list("/channels")?;
                self.show_list(&CHANNELS, &columns, &rows)
            }
            CtlCommand::ListConsumers { columns } => {
                self.info(&format!("Listing consumers in vhost {} ...", self.vhost));
                let rows = c
                    .list(&format!("/consumers/{}", self.vh()))
                    .map_err(|e| Self::not_found(e, self.no_vhost()))?;
                self.show_list(&CONSUMERS, &columns, &rows)
            }
            CtlCommand::ListUsers { columns } => {
                self.info("Listing users ...");
                let rows = c.list("/users")?;
                self.show_list(&USERS, &columns, &rows)
            }
            CtlCommand::AddUser {
                username,
                new_password,
                tags,
            } => {
                let password = password_from_stdin(new_password)?;
                self.info(&format!("Adding user \"{username}\" ..."));
                match c.get(&format!("/users/{}", enc(&username))) {
                    Ok(_) => {
                        return Err(CtlError::new(
                            EX_SOFTWARE,
                            format!("user_already_exists: {username}"),
                        ))
                    }
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
                c.put(
                    &format!("/users/{}", enc(&username)),
                    &json!({"password": password, "tags": tags_list(&[tags])}),
                )?;
                self.done(json!({"user": username, "added": true}));
                Ok(())
            }
            CtlCommand::DeleteUser { username } => {
                self.info(&format!("Deleting user \"{username}\" ..."));
                c.delete(&format!("/users/{}", enc(&username)))
                    .map_err(|e| Self::not_found(e, format!("no_such_user: {username}")))?;
                self.done(json!({"user": username, "deleted": true}));
                Ok(())
            }
            CtlCommand::ChangePassword {
                username,
                new_password,
            } => {
                let password = password_from_stdin(new_password)?;
                self.info(&format!("Changing password for user \"{username}\" ..."));
                let user = c
                    .get(&format!("/users/{}", enc(&username)))
                    .map_err(|e| Self::not_found(e, format!("no_such_user: {username}")))?;
                let tags = user.get("tags").cloned().unwrap_or(Value::Null);
                c.put(
                    &format!("/users/{}", enc(&username)),
                    &json!({"password": password, "tags": tags}),
                )?;
                self.done(json!({"user": username, "password_changed": true}));
                Ok(())
            }
            CtlCommand::SetUserTags { username, tags } => {
                let tags = tags_list(&tags);
                self.info(&format!(
                    "Setting tags for user \"{username}\" to [{}] ...",
                    tags.replace(',', ", ")
                ));
                let user = c
                    .get(&format!("/users/{}", enc(&username)))
                    .map_err(|e| Self::not_found(e, format!("no_such_user: {username}")))?;
                let mut body = Map::new();
                body.insert("tags".into(), Value::from(tags.as_str()));
                body.insert(
                    "password_hash".into(),
                    user.get("password_hash")
                        .cloned()
                        .unwrap_or(Value::from("")),
                );
                if let Some(alg) = user.get("hashing_algorithm") {
                    body.insert("hashing_algorithm".into(), alg.clone());
                }
                c.put(&format!("/users/{}", enc(&username)), &Value::Object(body))?;
                let list: Vec<&str> = tags.split(',').filter(|t| !t.is_empty()).collect();
                self.done(json!({"user": username, "tags": list}));
                Ok(())
            }
            CtlCommand::ListVhosts { columns } => {
                self.info("Listing vhosts ...");
                let rows = c.list("/vhosts")?;
                self.show_list(&VHOSTS, &columns, &rows)
            }
            CtlCommand::AddVhost {
                name: vhost,
                description,
                tags,
                default_queue_type,
            } => {
                self.info(&format!("Adding vhost \"{vhost}\" ..."));
                match c.get(&format!("/vhosts/{}", enc(&vhost))) {
                    Ok(_) => {
                        return Err(CtlError::new(
                            EX_SOFTWARE,
                            format!("vhost_already_exists: {vhost}"),
                        ))
                    }
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
                let mut body = json!({"description": description, "tags": tags_list(&[tags])});
                if let (Some(t), Some(m)) = (default_queue_type, body.as_object_mut()) {
                    m.insert("default_queue_type".into(), Value::from(t));
                }
                c.put(&format!("/vhosts/{}", enc(&vhost)), &body)?;
                self.done(json!({"vhost": vhost, "added": true}));
                Ok(())
            }
            CtlCommand::DeleteVhost { name: vhost } => {
                self.info(&format!("Deleting vhost \"{vhost}\" ..."));
                c.delete(&format!("/vhosts/{}", enc(&vhost)))
                    .map_err(|e| Self::not_found(e, format!("no_such_vhost: {vhost}")))?;
                self.done(json!({"vhost": vhost, "deleted": true}));
                Ok(())
            }
            CtlCommand::SetPermissions {
                username,
                configure,
                write,
                read,
            } => {
                self.info(&format!(
                    "Setting permissions for user \"{username}\" in vhost \"{}\" ...",
                    self.vhost
                ));
                c.put(
                    &format!("/permissions/{}/{}", self.vh(), enc(&username)),
                    &json!({"configure": configure, "write": write, "read": read}),
                )?;
                self.done(json!({"user": username, "vhost": self.vhost,
                                 "configure": configure, "write": write, "read": read}));
                Ok(())
            }
            CtlCommand::ClearPermissions { username } => {
                self.info(&format!(
                    "Clearing permissions for user \"{username}\" in vhost \"{}\" ...",
                    self.vhost
                ));
                c.delete(&format!("/permissions/{}/{}", self.vh(), enc(&username)))
                    .map_err(|e| {
                        Self::not_found(
                            e,
                            format!(
                                "no permissions of user \"{username}\" in vhost \"{}\"",
                                self.vhost
                            ),
                        )
                    })?;
                self.done(json!({"user": username, "vhost": self.vhost, "cleared": true}));
                Ok(())
            }
            CtlCommand::ListPermissions => {
                self.info(&format!(
                    "Listing permissions for vhost \"{}\" ...",
                    self.vhost
                ));
                let rows = c
                    .list(&format!("/vhosts/{}/permissions", self.vh()))
                    .map_err(|e| Self::not_found(e, self.no_vhost()))?;
                self.show_list(&PERMISSIONS, &[], &rows)
            }
            CtlCommand::ListUserPermissions { username } => {
                self.info(&format!("Listing permissions for user \"{username}\" ..."));
                let rows = c
                    .list(&format!("/users/{}/permissions", enc(&username)))
                    .map_err(|e| Self::not_found(e, format!("no_such_user: {username}")))?;
                self.show_list(&USER_PERMISSIONS, &[], &rows)
            }
            CtlCommand::SetTopicPermissions {
                username,
                exchange,
                write,
                read,
            } => {
                self.info(&format!(
                    "Setting topic permissions on \"{exchange}\" for user \"{username}\" in vhost \"{}\" ...",
                    self.vhost
                ));
                c.put(
                    &format!("/topic-permissions/{}/{}", self.vh(), enc(&username)),
                    &json!({"exchange": exchange, "write": write, "read": read}),
                )?;
                self.done(json!({"user": username, "vhost": self.vhost,
                                 "exchange": exchange, "write": write, "read": read}));
                Ok(())
            }
            CtlCommand::ClearTopicPermissions { username, exchange } => {
                self.info(&match &exchange {
                    Some(x) => format!(
                        "Clearing topic permissions on \"{x}\" for user \"{username}\" in vhost \"{}\" ...",
                        self.vhost
                    ),
                    None => format!(
                        "Clearing topic permissions for user \"{username}\" in vhost \"{}\" ...",
                        self.vhost
                    ),
                });
                // As rabbitmqctl: clearing what is not there succeeds, an unknown user or
                // vhost does not.
                c.get(&format!("/users/{}", enc(&username)))
                    .map_err(|e| Self::not_found(e, format!("no_such_user: {username}")))?;
                c.get(&format!("/vhosts/{}", self.vh()))
                    .map_err(|e| Self::not_found(e, self.no_vhost()))?;
                let mut path = format!("/topic-permissions/{}/{}", self.vh(), enc(&username));
                if let Some(x) = &exchange {
                    path.push_str(&format!("?exchange={}", enc(x)));
                }
                match c.delete(&path) {
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
                self.done(json!({"user": username, "vhost": self.vhost,
                                 "exchange": exchange, "cleared": true}));
                Ok(())
            }
            CtlCommand::ListTopicPermissions => {
                self.info(&format!(
                    "Listing topic permissions for vhost \"{}\" ...",
                    self.vhost
                ));
                let rows = c
                    .list(&format!("/vhosts/{}/topic-permissions", self.vh()))
                    .map_err(|e| Self::not_found(e, self.no_vhost()))?;
                self.show_list(&TOPIC_PERMISSIONS, &[], &rows)
            }
            CtlCommand::ListUserTopicPermissions { username } => {
                self.info(&format!(
                    "Listing topic permissions for user \"{username}\" ..."
                ));
                let rows = c
                    .list(&format!("/users/{}/topic-permissions", enc(&username)))
                    .map_err(|e| Self::not_found(e, format!("no_such_user: {username}")))?;
                self.show_list(&USER_TOPIC_PERMISSIONS, &[], &rows)
            }
            CtlCommand::SetPolicy {
                name,
                pattern,
                definition,
                priority,
                apply_to,
            } => {
                let def: Value = serde_json::from_str(&definition).map_err(|e| {
                    CtlError::new(
                        EX_DATAERR,
                        format!("the policy definition is not valid JSON: {e}"),
                    )
                })?;
                if !def.is_object() {
                    return Err(CtlError::new(
                        EX_DATAERR,
                        "the policy definition must be a JSON object, e.g. '{\"max-length\": 1000}'",
                    ));
                }
                self.info(&format!(
                    "Setting policy \"{name}\" for pattern \"{pattern}\" to \"{definition}\" \
                     with priority \"{priority}\" for vhost \"{}\" ...",
                    self.vhost
                ));
                c.put(
                    &format!("/policies/{}/{}", self.vh(), enc(&name)),
                    &json!({"pattern": pattern, "definition": def, "priority": priority,
                            "apply-to": apply_to}),
                )
                .map_err(|e| Self::not_found(e, self.no_vhost()))?;
                self.done(
                    json!({"vhost": self.vhost, "name": name, "pattern": pattern,
                                 "definition": def, "priority": priority, "apply-to": apply_to}),
                );
                Ok(())
            }
            CtlCommand::ClearPolicy { name } => {
                self.info(&format!(
                    "Clearing policy \"{name}\" on vhost \"{}\" ...",
                    self.vhost
                ));
                c.delete(&format!("/policies/{}/{}", self.vh(), enc(&name)))
                    .map_err(|e| {
                        Self::not_found(
                            e,
                            format!(
                                "no policy \"{name}\" (or no vhost \"{}\") to clear",
                                self.vhost
                            ),
                        )
                    })?;
                self.done(json!({"vhost": self.vhost, "name": name, "cleared": true}));
                Ok(())
            }
            CtlCommand::ListPolicies { columns } => {
                self.info(&format!(
                    "Listing policies for vhost \"{}\" ...",
                    self.vhost
                ));
                let rows = c
                    .list(&format!("/policies/{}", self.vh()))
                    .map_err(|e| Self::not_found(e, self.no_vhost()))?;
                self.show_list(&POLICIES, &columns, &rows)
            }
            CtlCommand::SetVhostLimits { definition } => {
                let def: Value = serde_json::from_str(&definition).map_err(|e| {
                    CtlError::new(EX_DATAERR, format!("the limits are not valid JSON: {e}"))
                })?;
                if !def.is_object() {
                    return Err(CtlError::new(
                        EX_DATAERR,
                        "the limits must be a JSON object, e.g. '{\"max-queues\": 100}'",
                    ));
                }
                self.info(&format!(
                    "Applying limits to vhost \"{}\" argument list: {definition} ...",
                    self.vhost
                ));
                c.put(
                    &format!("/parameters/vhost-limits/{}/limits", self.vh()),
                    &json!({ "value": def }),
                )
                .map_err(|e| Self::not_found(e, self.no_vhost()))?;
                self.done(json!({"vhost": self.vhost, "value": def}));
                Ok(())
            }
            CtlCommand::ClearVhostLimits => {
                self.info(&format!("Clearing vhost \"{}\" limits ...", self.vhost));
                c.get(&format!("/vhosts/{}", self.vh()))
                    .map_err(|e| Self::not_found(e, self.no_vhost()))?;
                // No limits to clear is fine, as for rabbitmqctl.
                match c.delete(&format!("/parameters/vhost-limits/{}/limits", self.vh())) {
                    Err(e) if !e.is_not_found() => return Err(e),
                    _ => {}
                }
                self.done(json!({"vhost": self.vhost, "cleared": true}));
                Ok(())
            }
            CtlCommand::ListVhostLimits { global } => {
                if global {
                    self.info("Listing limits for all vhosts ...");
                    let rows = c.list("/vhost-limits")?;
                    return self.show_list(&VHOST_LIMITS, &[], &rows);
                }
                self.info(&format!("Listing limits for vhost \"{}\" ...", self.vhost));
                let rows = c
                    .list(&format!("/vhost-limits/{}", self.vh()))
                    .map_err(|e| Self::not_found(e, self.no_vhost()))?;
                let value = rows
                    .first()
                    .and_then(|r| r.get("value"))
                    .cloned()
                    .unwrap_or_else(|| json!({}));
                // rabbitmqctl prints the limits object itself.
                emit_json(&value);
                Ok(())
            }
            CtlCommand::SetClusterName { name } => {
                self.info(&format!("Setting cluster name to {name} ..."));
                c.put("/cluster-name", &json!({ "name": name }))?;
                self.done(json!({ "name": name }));
                Ok(())
            }
            CtlCommand::ClusterStatus => self.cluster_status(),
            CtlCommand::JoinCluster { node } => self.join_cluster(&node),
            CtlCommand::ForgetClusterNode { node } => self.forget_cluster_node(&node),
            CtlCommand::PurgeQueue { queue } => {
                self.info(&format!(
                    "Purging queue '{queue}' in vhost '{}' ...",
                    self.vhost
                ));
                let path = format!("/queues/{}/{}", self.vh(), enc(&queue));
                let before = c
                    .get(&path)
                    .map_err(|e| Self::not_found(e, self.no_queue(&queue)))?;
                c.delete(&format!("{path}/contents"))
                    .map_err(|e| Self::not_found(e, self.no_queue(&queue)))?;
                let ready = before.get("messages_ready").cloned().unwrap_or(json!(0));
                self.done(json!({"vhost": self.vhost, "queue": queue, "purged": ready}));
                Ok(())
            }
            CtlCommand::DeleteQueue {
                queue,
                if_empty,
                if_unused,
            } => {
                self.info(&format!(
                    "Deleting queue '{queue}' on vhost '{}' ...",
                    self.vhost
                ));
                let path = format!("/queues/{}/{}", self.vh(), enc(&queue));
                let before = c
                    .get(&path)
                    .map_err(|e| Self::not_found(e, self.no_queue(&queue)))?;
                let mut query = Vec::new();
                if if_empty {
                    query.push("if-empty=true");
                }
                if if_unused {
                    query.push("if-unused=true");
                }
                let url = if query.is_empty() {
                    path
                } else {
                    format!("{path}?{}", query.join("&"))
                };
                c.delete(&url)
                    .map_err(|e| Self::not_found(e, self.no_queue(&queue)))?;
                let messages = before.get("messages").and_then(Value::as_u64).unwrap_or(0);
                if self.json {
                    self.done(json!({"vhost": self.vhost, "queue": queue, "messages": messages}));
                } else if !self.quiet {
                    emit(&format!(
                        "Queue was successfully deleted with {messages} message{}\n",
                        if messages == 1 { "" } else { "s" }
                    ));
                }
                Ok(())
            }
            CtlCommand::CloseConnection {
                connection,
                explanation,
            } => {
                self.info(&format!(
                    "Closing connection {connection}, reason: {explanation}..."
                ));
                c.call(
                    "DELETE",
                    &format!("/connections/{}", enc(&connection)),
                    None,
                    &[("X-Reason", explanation.as_str())],
                )
                .map_err(|e| Self::not_found(e, format!("no_such_connection: {connection}")))?;
                self.done(json!({"connection": connection, "closed": true}));
                Ok(())
            }
            CtlCommand::ExportDefinitions { file } => self.export_definitions(&file),
            CtlCommand::ImportDefinitions { file } => self.import_definitions(&file),
            CtlCommand::AddSuperStream {
                name,
                partitions,
                routing_keys,
                max_length_bytes,
                max_age,
                stream_max_segment_size_bytes,
                leader_locator,
            } => self.add_super_stream(&streams::SuperStreamSpec {
                name,
                partitions,
                routing_keys,
                max_length_bytes,
                max_age,
                max_segment_size_bytes: stream_max_segment_size_bytes,
                leader_locator,
            }),
            CtlCommand::DeleteSuperStream { name } => self.delete_super_stream(&name),
            CtlCommand::ListStreams { columns } => self.list_streams(&columns),
            CtlCommand::ListStreamConnections { columns } => {
                self.list_stream_objects(&streams::STREAM_CONNECTIONS, "connections", &columns)
            }
            CtlCommand::ListMqttConnections { columns } => {
                self.info(&format!(
                    "Listing MQTT connections in vhost {} ...",
                    self.vhost
                ));
                let rows: Vec<Value> = c
                    .list("/connections")?
                    .into_iter()
                    .filter(|r| {
                        r.get("protocol")
                            .and_then(Value::as_str)
                            .is_some_and(|p| p.starts_with("MQTT"))
                            && r.get("vhost").and_then(Value::as_str) == Some(self.vhost.as_str())
                    })
                    .map(|mut r| {
                        let client_id = r
                            .pointer("/client_properties/client_id")
                            .cloned()
                            .unwrap_or(Value::Null);
                        let name = r.get("name").cloned().unwrap_or(Value::Null);
                        if let Some(o) = r.as_object_mut() {
                            o.insert("client_id".into(), client_id);
                            o.insert("conn_name".into(), name);
                        }
                        r
                    })
                    .collect();
                self.show_list(&MQTT_CONNECTIONS, &columns, &rows)
            }
            CtlCommand::ListStreamPublishers { columns } => {
                self.list_stream_objects(&streams::STREAM_PUBLISHERS, "publishers", &columns)
            }
            CtlCommand::ListStreamConsumers { columns } => {
                self.list_stream_objects(&streams::STREAM_CONSUMERS, "consumers", &columns)
            }
            CtlCommand::ListStreamConsumerGroups { columns } => {
                self.list_stream_consumer_groups(&columns)
            }
            CtlCommand::ListStreamGroupConsumers {
                stream,
                reference,
                columns,
            } => self.list_stream_group_consumers(&stream, &reference, &columns),
            CtlCommand::ActivateStreamConsumer { stream, reference } => {
                self.activate_stream_consumer(&stream, &reference)
            }
            CtlCommand::StreamStatus { name, columns } => self.stream_status(&name, &columns),
            CtlCommand::QuorumStatus { name, columns } => self.quorum_status(&name, &columns),
            CtlCommand::CheckIfNodeIsQuorumCritical => self.check_quorum_critical(),
            CtlCommand::AddMember { queue, node } | CtlCommand::AddReplica { queue, node } => {
                self.add_member(&queue, &node)
            }
            CtlCommand::DeleteMember { queue, node }
            | CtlCommand::DeleteReplica { queue, node } => self.delete_member(&queue, &node),
            CtlCommand::Grow {
                node,
                strategy,
                columns,
            } => self.grow(&node, strategy, &columns),
            CtlCommand::Shrink { node, columns } => self.shrink(&node, &columns),
            CtlCommand::TransferLeadership { queue, node } => {
                self.transfer_leadership(&queue, &node)
            }
            CtlCommand::ListStreamTracking {
                name,
                offset,
                writer,
                ..
            } => {
                let which = match (offset, writer) {
                    (true, _) => streams::Tracking::Offsets,
                    (_, true) => streams::Tracking::Writers,
                    _ => streams::Tracking::All,
                };
                self.list_stream_tracking(&name, which)
            }
        }
    }

    fn no_vhost(&self) -> String {
        format!("no_such_vhost: {}", self.vhost)
    }

    fn no_queue(&self, queue: &str) -> String {
        format!("queue '{queue}' in vhost '{}' not found", self.vhost)
    }

    fn status(&self) -> CtlResult<()> {
        let ov = self.client.get("/overview")?;
        // Nodes need the monitoring tag; status still works without.
        let node = match self.client.get("/nodes") {
            Ok(Value::Array(mut nodes)) if !nodes.is_empty() => Some(nodes.swap_remove(0)),
            _ => None,
        };
        let s = |v: &Value, k: &str| cell(v.get(k).unwrap_or(&Value::Null));
        let n = |v: &Value, path: &str| -> u64 {
            output::lookup(v, path).and_then(Value::as_u64).unwrap_or(0)
        };
        let listeners: Vec<String> = ov
            .get("listeners")
            .and_then(Value::as_array)
            .map(|ls| {
                ls.iter()
                    .map(|l| {
                        format!(
                            "{} {}:{}",
                            s(l, "protocol"),
                            s(l, "ip_address"),
                            s(l, "port")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let publish_rate = output::lookup(&ov, "message_stats.publish_details.rate")
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        if self.json {
            let mut out = json!({
                "node": s(&ov, "node"),
                "product_name": s(&ov, "product_name"),
                "product_version": s(&ov, "product_version"),
                "rabbitmq_version": s(&ov, "rabbitmq_version"),
                "cluster_name": s(&ov, "cluster_name"),
                "listeners": ov.get("listeners").cloned().unwrap_or(json!([])),
                "object_totals": ov.get("object_totals").cloned().unwrap_or(json!({})),
                "queue_totals": ov.get("queue_totals").cloned().unwrap_or(json!({})),
                "publish_rate": publish_rate,
            });
            if let (Some(node), Some(m)) = (&node, out.as_object_mut()) {
                for k in [
                    "uptime",
                    "mem_used",
                    "fd_used",
                    "fd_total",
                    "processors",
                    "os_pid",
                    "running",
                ] {
                    m.insert(k.into(), node.get(k).cloned().unwrap_or(Value::Null));
                }
            }
            emit_json(&out);
            return Ok(());
        }
        self.info(&format!("Status of node {} ...", s(&ov, "node")));
        let mut rows: Vec<(String, String)> = vec![
            ("Node".into(), s(&ov, "node")),
            (
                "Product".into(),
                format!("{} {}", s(&ov, "product_name"), s(&ov, "product_version")),
            ),
            (
                "RabbitMQ compatibility".into(),
                format!("management API {}", s(&ov, "rabbitmq_version")),
            ),
            ("Cluster name".into(), s(&ov, "cluster_name")),
        ];
        if let Some(node) = &node {
            rows.push(("Uptime".into(), fmt_uptime(n(node, "uptime"))));
            rows.push(("Memory used".into(), fmt_bytes(n(node, "mem_used"))));
            rows.push((
                "File descriptors".into(),
                format!("{} of {}", n(node, "fd_used"), n(node, "fd_total")),
            ));
            rows.push(("Processors".into(), n(node, "processors").to_string()));
            rows.push(("OS pid".into(), s(node, "os_pid")));
        }
        rows.push(("Listeners".into(), listeners.join(", ")));
        for (label, path) in [
            ("Connections", "object_totals.connections"),
            ("Channels", "object_totals.channels"),
            ("Queues", "object_totals.queues"),
            ("Exchanges", "object_totals.exchanges"),
            ("Consumers", "object_totals.consumers"),
        ] {
            rows.push((label.into(), n(&ov, path).to_string()));
        }
        rows.push((
            "Messages".into(),
            format!(
                "{} (ready {}, unacknowledged {})",
                n(&ov, "queue_totals.messages"),
                n(&ov, "queue_totals.messages_ready"),
                n(&ov, "queue_totals.messages_unacknowledged")
            ),
        ));
        rows.push(("Publish rate".into(), format!("{publish_rate:.1}/s")));
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let text: String = rows
            .iter()
            .map(|(k, v)| format!("{k:<width$}  {v}\n"))
            .collect();
        emit(&text);
        Ok(())
    }

    fn export_definitions(&self, file: &str) -> CtlResult<()> {
        let defs = self.client.get("/definitions")?;
        let text = serde_json::to_string_pretty(&defs)
            .map_err(|e| CtlError::new(EX_SOFTWARE, format!("encoding definitions: {e}")))?;
        let count = |k: &str| defs.get(k).and_then(Value::as_array).map_or(0, Vec::len);
        let summary = json!({
            "file": file,
            "users": count("users"),
            "vhosts": count("vhosts"),
            "permissions": count("permissions"),
            "topic_permissions": count("topic_permissions"),
            "policies": count("policies"),
            "queues": count("queues"),
            "exchanges": count("exchanges"),
            "bindings": count("bindings"),
        });
        if file == "-" {
            emit(&format!("{text}\n"));
            return Ok(());
        }
        self.info(&format!(
            "Exporting definitions in JSON to a file at \"{file}\" ..."
        ));
        std::fs::write(file, format!("{text}\n"))
            .map_err(|e| CtlError::new(EX_CANTCREAT, format!("writing {file}: {e}")))?;
        self.info(&format!(
            "Exported {} users, {} vhosts, {} permissions, {} topic permissions, {} policies, \
             {} queues, {} exchanges, {} bindings",
            count("users"),
            count("vhosts"),
            count("permissions"),
            count("topic_permissions"),
            count("policies"),
            count("queues"),
            count("exchanges"),
            count("bindings")
        ));
        self.done(summary);
        Ok(())
    }

    fn import_definitions(&self, file: &str) -> CtlResult<()> {
        let text = if file == "-" {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| CtlError::new(EX_NOINPUT, format!("reading stdin: {e}")))?;
            s
        } else {
            std::fs::read_to_string(file)
                .map_err(|e| CtlError::new(EX_NOINPUT, format!("reading {file}: {e}")))?
        };
        let defs: Value = serde_json::from_str(&text).map_err(|e| {
            CtlError::new(
                EX_DATAERR,
                format!("{file} is not a JSON definitions file: {e}"),
            )
        })?;
        if !defs.is_object() {
            return Err(CtlError::new(
                EX_DATAERR,
                format!("{file} is not a JSON definitions file (expected an object)"),
            ));
        }
        let count = |k: &str| defs.get(k).and_then(Value::as_array).map_or(0, Vec::len);
        let total: usize = [
            "users",
            "vhosts",
            "permissions",
            "topic_permissions",
            "policies",
            "queues",
            "exchanges",
            "bindings",
        ]
        .iter()
        .map(|k| count(k))
        .sum();
        self.info(&format!(
            "Importing definitions in JSON from a file at \"{file}\" ...\n\
             {total} objects: {} users, {} vhosts, {} permissions, {} topic permissions, \
             {} policies, {} queues, {} exchanges, {} bindings (the broker logs its progress)",
            count("users"),
            count("vhosts"),
            count("permissions"),
            count("topic_permissions"),
            count("policies"),
            count("queues"),
            count("exchanges"),
            count("bindings")
        ));
        let started = Instant::now();
        self.client.post("/definitions", &defs)?;
        let secs = started.elapsed().as_secs_f64();
        self.info(&format!("Imported {total} objects in {secs:.1} s"));
        self.done(json!({"file": file, "objects": total, "seconds": secs}));
        Ok(())
    }
}
