//! Definitions export and import in RabbitMQ's format (`GET/POST /api/definitions`, the file
//! `rabbitmqctl export_definitions` writes): users with their password hashes, vhosts,
//! permissions, topic permissions, exchanges, queues and bindings.
//!
//! Import validates everything first (400 and nothing changed on a malformed file or an
//! unsupported hash algorithm), then applies in dependency order: vhosts, users, permissions,
//! topic permissions, exchanges, queues, bindings. Objects the broker refuses (an inequivalent redeclaration) are
//! reported together in one 400 after the rest was applied, as RabbitMQ reports the first
//! failure. Bindings whose source or destination is missing are skipped with a warning:
//! `rabbitmqctl export_definitions` (3.10) leaves internal exchanges out of its files but keeps
//! their bindings. Policies are applied with the definition keys Pier understands (others, such
//! as `ha-mode`, are logged and ignored); parameters are not implemented yet: they are
//! accepted and ignored (logged).
//!
//! The import becomes metadata commands applied in batches of 200 (on a clustered node each
//! batch is one Raft entry, so an import appears on every node). A large import logs its
//! progress (every 10% and at least every two seconds); a single node applies each batch on
//! a blocking thread, so the API stays responsive while thousands of objects are declared.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use pier_broker::{Destination, VHost};
use pier_cluster::metadata::{self, CommandError, MetadataCommand, Outcome};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::auth::AuthUser;
use crate::error::{ApiError, ApiResult};
use crate::json::{self, object_to_table, short, table_to_json};
use crate::routes::permissions::sorted_permissions;
use crate::routes::policies::{parse_policy, policy_view, sorted_policies, unknown_keys};
use crate::routes::topic_permissions::sorted_topic_permissions;
use crate::routes::users::{check_algorithm, sorted_users, valid_hash};
use crate::routes::vhosts::{parse_tags, vhost_meta_from};
use crate::views::definitions::{
    BindingDefinition, Definitions as DefinitionsView, ExchangeDefinition, QueueDefinition,
    VhostDefinition, VhostDefinitions,
};
use crate::views::vhost::VhostMetadata;
use crate::{AppState, RABBITMQ_COMPAT_VERSION};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/definitions", get(export_all).post(import_all))
        // RabbitMQ's deprecated name for /api/definitions.
        .route("/all-configuration", get(export_all).post(import_all))
        .route("/definitions/{vhost}", get(export_vhost).post(import_vhost))
}

// ---- export ----

fn is_system_exchange(name: &str) -> bool {
    name.is_empty() || name.starts_with("amq.")
}

/// Queues, exchanges and bindings of one vhost; `with_vhost` adds the `vhost` field.
fn vhost_objects(
    vh: &VHost,
    with_vhost: bool,
) -> (
    Vec<QueueDefinition>,
    Vec<ExchangeDefinition>,
    Vec<BindingDefinition>,
) {
    let vhost = || with_vhost.then(|| vh.name().to_owned());
    let mut queues = vh.queues();
    queues.sort_by(|a, b| a.name().cmp(b.name()));
    let queues = queues
        .iter()
        .filter(|q| !q.is_exclusive())
        .map(|q| {
            let o = q.options();
            QueueDefinition {
                name: q.name().as_str().to_owned(),
                vhost: vhost(),
                durable: o.durable,
                auto_delete: o.auto_delete,
                arguments: table_to_json(&o.arguments),
            }
        })
        .collect();
    let mut exchanges = vh.exchanges();
    exchanges.sort_by(|a, b| a.name.cmp(&b.name));
    let exchanges = exchanges
        .iter()
        .filter(|x| !is_system_exchange(&x.name))
        .map(|x| ExchangeDefinition {
            name: x.name.as_str().to_owned(),
            vhost: vhost(),
            kind: x.kind.as_str().to_owned(),
            durable: x.durable,
            auto_delete: x.auto_delete,
            internal: x.internal,
            arguments: table_to_json(&x.arguments),
        })
        .collect();
    let mut bindings = vh.bindings();
    bindings.sort_by(|a, b| {
        (&a.source, &a.destination, &a.routing_key).cmp(&(
            &b.source,
            &b.destination,
            &b.routing_key,
        ))
    });
    let bindings = bindings
        .iter()
        .map(|b| {
            let (dest, kind) = match &b.destination {
                Destination::Queue(n) => (n.as_str(), "queue"),
                Destination::Exchange(n) => (n.as_str(), "exchange"),
            };
            BindingDefinition {
                source: b.source.as_str().to_owned(),
                vhost: vhost(),
                destination: dest.to_owned(),
                destination_type: kind,
                routing_key: b.routing_key.as_str().to_owned(),
                arguments: table_to_json(&b.arguments),
            }
        })
        .collect();
    (queues, exchanges, bindings)
}

pub(crate) fn export(st: &AppState) -> DefinitionsView {
    let mut vhs = st.broker.vhosts();
    vhs.sort_by(|a, b| a.name().cmp(b.name()));
    let mut vhosts = Vec::new();
    let (mut queues, mut exchanges, mut bindings) = (Vec::new(), Vec::new(), Vec::new());
    let mut policies = Vec::new();
    for vh in &vhs {
        policies.extend(
            sorted_policies(vh)
                .iter()
                .map(|p| policy_view(Some(vh.name()), p)),
        );
        let meta = st.vhost_meta(vh.name());
        vhosts.push(VhostDefinition {
            name: vh.name().to_owned(),
            description: meta.description.clone(),
            tags: meta.tags.clone(),
            metadata: VhostMetadata {
                description: meta.description,
                tags: meta.tags,
            },
        });
        let (q, x, b) = vhost_objects(vh, true);
        queues.extend(q);
        exchanges.extend(x);
        bindings.extend(b);
    }
    DefinitionsView {
        rabbit_version: RABBITMQ_COMPAT_VERSION,
        rabbitmq_version: RABBITMQ_COMPAT_VERSION,
        product_name: "Pier",
        product_version: env!("CARGO_PKG_VERSION"),
        users: sorted_users(st),
        vhosts,
        permissions: sorted_permissions(st),
        topic_permissions: sorted_topic_permissions(st),
        parameters: Vec::new(),
        global_parameters: Vec::new(),
        policies,
        queues,
        exchanges,
        bindings,
    }
}

pub async fn export_all(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
) -> ApiResult<Response> {
    user.require_admin()?;
    Ok(json::ok(&export(&st)))
}

pub async fn export_vhost(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(vhost): Path<String>,
) -> ApiResult<Response> {
    user.require_admin()?;
    let vh = st.broker.vhost(&vhost).ok_or_else(ApiError::not_found)?;
    let (queues, exchanges, bindings) = vhost_objects(&vh, false);
    let policies = sorted_policies(&vh)
        .iter()
        .map(|p| policy_view(None, p))
        .collect();
    Ok(json::ok(&VhostDefinitions {
        rabbit_version: RABBITMQ_COMPAT_VERSION,
        rabbitmq_version: RABBITMQ_COMPAT_VERSION,
        product_name: "Pier",
        product_version: env!("CARGO_PKG_VERSION"),
        parameters: Vec::new(),
        policies,
        queues,
        exchanges,
        bindings,
    }))
}

// ---- import ----

#[derive(Debug, Default, Deserialize)]
struct Definitions {
    #[serde(default)]
    users: Vec<UserDef>,
    #[serde(default)]
    vhosts: Vec<Map<String, Value>>,
    #[serde(default)]
    permissions: Vec<PermissionDef>,
    #[serde(default)]
    queues: Vec<QueueDef>,
    #[serde(default)]
    exchanges: Vec<ExchangeDef>,
    #[serde(default)]
    bindings: Vec<BindingDef>,
    #[serde(default)]
    policies: Vec<Map<String, Value>>,
    #[serde(default)]
    parameters: Vec<Value>,
    #[serde(default)]
    topic_permissions: Vec<TopicPermissionDef>,
}

#[derive(Debug, Deserialize)]
struct UserDef {
    name: String,
    #[serde(default)]
    password_hash: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    hashing_algorithm: Option<String>,
    #[serde(default)]
    tags: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct TopicPermissionDef {
    user: String,
    vhost: String,
    #[serde(default)]
    exchange: String,
    #[serde(default)]
    write: String,
    #[serde(default)]
    read: String,
}

#[derive(Debug, Deserialize)]
struct PermissionDef {
    user: String,
    vhost: String,
    #[serde(default)]
    configure: String,
    #[serde(default)]
    write: String,
    #[serde(default)]
    read: String,
}

#[derive(Debug, Deserialize)]
struct QueueDef {
    name: String,
    #[serde(default)]
    vhost: Option<String>,
    #[serde(default)]
    durable: Option<bool>,
    #[serde(default)]
    auto_delete: bool,
    #[serde(default)]
    arguments: Option<Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
struct ExchangeDef {
    name: String,
    #[serde(default)]
    vhost: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    durable: Option<bool>,
    #[serde(default)]
    auto_delete: bool,
    #[serde(default)]
    internal: bool,
    #[serde(default)]
    arguments: Option<Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
struct BindingDef {
    source: String,
    #[serde(default)]
    vhost: Option<String>,
    destination: String,
    destination_type: String,
    #[serde(default)]
    routing_key: String,
    #[serde(default)]
    arguments: Option<Map<String, Value>>,
}

/// What an import did, for the log and the tests.
#[derive(Debug, Default)]
pub(crate) struct ImportReport {
    pub errors: Vec<String>,
    pub skipped: Vec<String>,
}

/// Imports of at least this many objects log their progress.
const PROGRESS_THRESHOLD: usize = 1000;
/// The longest silence between two progress lines of a large import.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(2);

/// Progress of an import, logged every 10% and at least every [`PROGRESS_INTERVAL`] for an
/// import of [`PROGRESS_THRESHOLD`] objects or more.
struct Progress {
    total: usize,
    done: usize,
    started: Instant,
    last_log: Instant,
    last_decile: usize,
}

impl Progress {
    fn new(total: usize) -> Progress {
        let now = Instant::now();
        Progress {
            total,
            done: 0,
            started: now,
            last_log: now,
            last_decile: 0,
        }
    }

    /// Counts one object of `kind` as done.
    fn step(&mut self, kind: &str) {
        self.done += 1;
        if self.total < PROGRESS_THRESHOLD {
            return;
        }
        let decile = self.done * 10 / self.total;
        if decile > self.last_decile || self.last_log.elapsed() >= PROGRESS_INTERVAL {
            self.last_decile = decile;
            self.last_log = Instant::now();
            tracing::info!(
                done = self.done,
                total = self.total,
                phase = kind,
                "importing definitions: {}/{} objects ({}%)",
                self.done,
                self.total,
                self.done * 100 / self.total
            );
        }
    }

    fn finish(&self, report: &ImportReport) {
        tracing::info!(
            objects = self.done,
            errors = report.errors.len(),
            skipped = report.skipped.len(),
            elapsed_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "definitions imported"
        );
    }
}

fn parse(body: &Bytes) -> ApiResult<Definitions> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid definitions: {e}")))
}

/// Checks what can be checked before anything changes.
fn validate(d: &Definitions) -> ApiResult<()> {
    for u in &d.users {
        if u.password.is_none() {
            check_algorithm(u.hashing_algorithm.as_deref())?;
            if let Some(h) = &u.password_hash {
                if !h.is_empty() && !valid_hash(h) {
                    return Err(ApiError::bad_request(format!(
                        "invalid password_hash for user '{}'",
                        u.name
                    )));
                }
            }
        }
    }
    for q in &d.queues {
        short(&q.name)?;
    }
    for x in &d.exchanges {
        short(&x.name)?;
    }
    for b in &d.bindings {
        short(&b.routing_key)?;
        if b.destination_type != "queue" && b.destination_type != "exchange" {
            return Err(ApiError::bad_request(format!(
                "invalid destination_type '{}'",
                b.destination_type
            )));
        }
    }
    Ok(())
}

fn table(m: &Option<Map<String, Value>>) -> ApiResult<pier_wire::FieldTable> {
    m.as_ref()
        .map_or_else(|| Ok(pier_wire::FieldTable::new()), object_to_table)
}

/// What an import command was about, to word its error as a single node always has.
enum Ctx {
    Plain,
    Permission { user: String, vhost: String },
    TopicPermission { user: String, vhost: String },
    Policy { name: String, vhost: String },
    Object { what: &'static str, name: String },
}

impl Ctx {
    fn error(&self, e: CommandError) -> String {
        match (self, e) {
            (_, CommandError::Broker(b)) => b.to_string(),
            (Ctx::Permission { user, vhost }, e) => {
                format!("permission of user '{user}' on vhost '{vhost}': {e}")
            }
            (Ctx::TopicPermission { user, vhost }, e) => {
                format!("topic permission of user '{user}' on vhost '{vhost}': {e}")
            }
            (Ctx::Policy { name, vhost }, CommandError::NoVhost(_)) => {
                format!("policy '{name}': vhost '{vhost}' not found")
            }
            (Ctx::Policy { name, vhost }, e) => format!("policy '{name}' in vhost '{vhost}': {e}"),
            (Ctx::Object { what, name }, CommandError::NoVhost(_)) => {
                format!("{what} '{name}': vhost not found")
            }
            (Ctx::Object { what, name }, e) => format!("{what} '{name}': {e}"),
            (Ctx::Plain, e) => e.to_string(),
        }
    }
}

/// Commands applied (or proposed to the cluster) per batch: each batch is one Raft entry.
const IMPORT_BATCH: usize = 200;

/// The import as metadata commands, in dependency order: vhosts, users, permissions, topic
/// permissions, policies (before queues: a policy applies when a queue is declared),
/// exchanges, queues, bindings.
fn import_commands(
    st: &AppState,
    d: &Definitions,
    only_vhost: Option<&str>,
    report: &mut ImportReport,
) -> ApiResult<Vec<(Ctx, MetadataCommand)>> {
    let mut out = Vec::new();
    if only_vhost.is_none() {
        for v in &d.vhosts {
            let Some(name) = v.get("name").and_then(Value::as_str) else {
                report.errors.push("vhost without a name".into());
                continue;
            };
            let meta = vhost_meta_from(v);
            out.push((
                Ctx::Plain,
                MetadataCommand::PutVhost {
                    name: name.to_owned(),
                    description: meta.description,
                    tags: meta.tags,
                    default_queue_type: meta.default_queue_type,
                    creator: None,
                },
            ));
        }
        for u in &d.users {
            let password_hash = match (&u.password, &u.password_hash) {
                (Some(p), _) => pier_broker::auth::hash_password(p),
                (None, Some(h)) => h.clone(),
                (None, None) => String::new(),
            };
            out.push((
                Ctx::Plain,
                MetadataCommand::PutUser {
                    name: u.name.clone(),
                    password_hash,
                    tags: parse_tags(u.tags.as_ref()),
                },
            ));
        }
        for p in &d.permissions {
            out.push((
                Ctx::Permission {
                    user: p.user.clone(),
                    vhost: p.vhost.clone(),
                },
                MetadataCommand::SetPermission {
                    user: p.user.clone(),
                    vhost: p.vhost.clone(),
                    configure: p.configure.clone(),
                    write: p.write.clone(),
                    read: p.read.clone(),
                },
            ));
        }
        // Like permissions, a topic pattern Pier's regex engine cannot compile is kept (the
        // file stays RabbitMQ's) and grants nothing; compiling logs a warning.
        for p in &d.topic_permissions {
            out.push((
                Ctx::TopicPermission {
                    user: p.user.clone(),
                    vhost: p.vhost.clone(),
                },
                MetadataCommand::SetTopicPermission {
                    user: p.user.clone(),
                    vhost: p.vhost.clone(),
                    exchange: p.exchange.clone(),
                    write: p.write.clone(),
                    read: p.read.clone(),
                },
            ));
        }
    }
    let vhost_of = |v: &Option<String>| -> String {
        only_vhost
            .map(str::to_owned)
            .or_else(|| v.clone())
            .unwrap_or_else(|| "/".to_owned())
    };
    for p in &d.policies {
        if let Some(cmd) = import_policy(p, only_vhost, report) {
            out.push(cmd);
        }
    }
    for x in &d.exchanges {
        if is_system_exchange(&x.name) {
            continue;
        }
        out.push((
            Ctx::Object {
                what: "exchange",
                name: x.name.clone(),
            },
            MetadataCommand::DeclareExchange {
                vhost: vhost_of(&x.vhost),
                name: x.name.clone(),
                kind: x.kind.clone(),
                durable: x.durable.unwrap_or(true),
                auto_delete: x.auto_delete,
                internal: x.internal,
                arguments: metadata::arguments(&table(&x.arguments)?)?,
            },
        ));
    }
    // Quorum queues this import places, counted in the placement of the later ones (the
    // catalog gets them only once the import is applied): `balanced` leaders spread.
    let mut placed: Vec<Vec<String>> = Vec::new();
    for q in &d.queues {
        let durable = q.durable.unwrap_or(true);
        let arguments = table(&q.arguments)?;
        let vhost = vhost_of(&q.vhost);
        let members = st.queue_members_after(&vhost, &q.name, durable, &arguments, &placed);
        let new = st
            .broker
            .vhost(&vhost)
            .is_none_or(|v| v.find_queue(&q.name).is_none());
        if pier_cluster::declares_quorum(durable, &arguments) && new {
            placed.push(members.clone());
        }
        out.push((
            Ctx::Object {
                what: "queue",
                name: q.name.clone(),
            },
            MetadataCommand::DeclareQueue {
                vhost: vhost_of(&q.vhost),
                name: q.name.clone(),
                durable,
                auto_delete: q.auto_delete,
                arguments: metadata::arguments(&arguments)?,
                home: members.first().cloned().unwrap_or_else(|| st.node.clone()),
                members,
                checked: false,
            },
        ));
    }
    for b in &d.bindings {
        out.push((
            Ctx::Object {
                what: "binding from",
                name: b.source.clone(),
            },
            MetadataCommand::Bind {
                vhost: vhost_of(&b.vhost),
                source: b.source.clone(),
                destination: b.destination.clone(),
                destination_kind: if b.destination_type == "queue" {
                    metadata::DestinationKind::Queue
                } else {
                    metadata::DestinationKind::Exchange
                },
                routing_key: b.routing_key.clone(),
                arguments: metadata::arguments(&table(&b.arguments)?)?,
                // rabbitmqctl export_definitions (3.10) leaves internal exchanges out of its
                // files but keeps their bindings: skipped with a warning, not an error.
                skip_missing: true,
            },
        ));
    }
    if !d.parameters.is_empty() {
        report.skipped.push(format!(
            "{} parameters (not supported yet)",
            d.parameters.len()
        ));
    }
    Ok(out)
}

/// Applies an import in batches (each batch one Raft entry on a clustered node), logging
/// progress for large ones.
async fn apply(st: &AppState, d: Definitions, only_vhost: Option<&str>) -> ApiResult<ImportReport> {
    let mut report = ImportReport::default();
    let global = if only_vhost.is_none() {
        d.vhosts.len() + d.users.len() + d.permissions.len() + d.topic_permissions.len()
    } else {
        0
    };
    let mut progress = Progress::new(
        global + d.policies.len() + d.exchanges.len() + d.queues.len() + d.bindings.len(),
    );
    if progress.total >= PROGRESS_THRESHOLD {
        tracing::info!(
            objects = progress.total,
            "importing definitions: {} objects",
            progress.total
        );
    }
    let commands = import_commands(st, &d, only_vhost, &mut report)?;
    // Objects that became no command (system exchanges, unparsable policies) are done.
    for _ in commands.len()..progress.total {
        progress.step("definitions");
    }
    let mut commands = commands.into_iter().peekable();
    while commands.peek().is_some() {
        let chunk: Vec<(Ctx, MetadataCommand)> = commands.by_ref().take(IMPORT_BATCH).collect();
        let (ctxs, cmds): (Vec<Ctx>, Vec<MetadataCommand>) = chunk.into_iter().unzip();
        let n = cmds.len();
        let kind = cmds.first().map_or("definitions", kind_name);
        let out = st
            .execute(MetadataCommand::Batch { commands: cmds })
            .await?;
        let Outcome::Batch(results) = out else {
            return Err(ApiError::internal("a batch did not answer per command"));
        };
        for (ctx, r) in ctxs.iter().zip(results) {
            match r {
                Ok(Outcome::Skipped(why)) => report.skipped.push(why),
                Ok(_) => {}
                Err(e) => report.errors.push(ctx.error(e)),
            }
        }
        for _ in 0..n {
            progress.step(kind);
        }
    }
    progress.finish(&report);
    Ok(report)
}

fn kind_name(c: &MetadataCommand) -> &'static str {
    match c {
        MetadataCommand::PutVhost { .. } => "vhosts",
        MetadataCommand::PutUser { .. } => "users",
        MetadataCommand::SetPermission { .. } => "permissions",
        MetadataCommand::SetTopicPermission { .. } => "topic permissions",
        MetadataCommand::SetPolicy { .. } => "policies",
        MetadataCommand::DeclareExchange { .. } => "exchanges",
        MetadataCommand::DeclareQueue { .. } => "queues",
        MetadataCommand::Bind { .. } => "bindings",
        _ => "definitions",
    }
}

/// One policy of a definitions file as a command; keys Pier does not apply are reported
/// as skipped.
fn import_policy(
    p: &Map<String, Value>,
    only_vhost: Option<&str>,
    report: &mut ImportReport,
) -> Option<(Ctx, MetadataCommand)> {
    let Some(name) = p.get("name").and_then(Value::as_str) else {
        report.errors.push("policy without a name".into());
        return None;
    };
    let vhost = only_vhost
        .or_else(|| p.get("vhost").and_then(Value::as_str))
        .unwrap_or("/");
    if let Some(Value::Object(def)) = p.get("definition") {
        let unknown = unknown_keys(def);
        if !unknown.is_empty() {
            report.skipped.push(format!(
                "policy '{name}' in vhost '{vhost}': definition keys {} (not applied by Pier)",
                unknown.join(", ")
            ));
        }
    }
    match parse_policy(name, p, true) {
        Ok(policy) => Some((
            Ctx::Policy {
                name: name.to_owned(),
                vhost: vhost.to_owned(),
            },
            MetadataCommand::SetPolicy {
                vhost: vhost.to_owned(),
                name: name.to_owned(),
                pattern: policy.pattern().to_owned(),
                apply_to: policy.apply_to.as_str().to_owned(),
                priority: policy.priority,
                definition: policy.definition.to_json(),
            },
        )),
        Err(e) => {
            report
                .errors
                .push(format!("policy '{name}' in vhost '{vhost}': {e}"));
            None
        }
    }
}

fn finish(report: ImportReport) -> ApiResult<Response> {
    for s in &report.skipped {
        tracing::warn!("definitions import skipped {s}");
    }
    if !report.errors.is_empty() {
        return Err(ApiError::bad_request(report.errors.join("; ")));
    }
    Ok(json::no_content())
}

pub async fn import_all(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    body: Bytes,
) -> ApiResult<Response> {
    user.require_admin()?;
    let d = parse(&body)?;
    validate(&d)?;
    let dedup: HashSet<&str> = d.users.iter().map(|u| u.name.as_str()).collect();
    tracing::info!(
        users = dedup.len(),
        vhosts = d.vhosts.len(),
        queues = d.queues.len(),
        exchanges = d.exchanges.len(),
        bindings = d.bindings.len(),
        "importing definitions"
    );
    finish(apply(&st, d, None).await?)
}

pub async fn import_vhost(
    State(st): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(vhost): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    user.require_admin()?;
    st.broker.vhost(&vhost).ok_or_else(ApiError::not_found)?;
    let d = parse(&body)?;
    validate(&d)?;
    finish(apply(&st, d, Some(&vhost)).await?)
}
