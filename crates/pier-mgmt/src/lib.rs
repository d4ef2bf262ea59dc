//! Pier's management and observability layer: RabbitMQ's management HTTP API (same paths,
//! JSON shapes and field names, basic auth with RabbitMQ's user tags), definitions export and
//! import in RabbitMQ's format, a Prometheus endpoint with RabbitMQ's metric names, and a
//! web UI (plain HTML, CSS and JavaScript embedded in the binary, served at `/`).
//!
//! ```text
//!  HTTP ─► axum router ─► auth (basic, tags) ─► handlers ─┬─► Broker (vhosts, queues, users)
//!                                                        └─► Registry (connections, channels)
//!  GET /metrics (no auth, as RabbitMQ's Prometheus plugin) ─► text exposition format
//!  GET / and /ui/* (no auth: static files; the UI itself calls /api with basic auth)
//! ```
//!
//! Everything is read on request from the broker and the registry; the only state kept here
//! is vhost metadata (description, tags) and a rate sampler.

mod api;
mod auth;
mod cluster;
mod conns;
mod definitions;
mod error;
mod extras;
mod json;
mod metrics;
mod policies;
mod stats;
mod streams;
mod tls;
mod topology;
mod ui;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::{delete, get, post};
use axum::Router;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use pier_broker::Broker;
use pier_cluster::metadata::{Catalog, Hooks, MetadataCommand, Outcome};
use pier_cluster::Metadata;
use pier_server::Registry;

pub use error::ApiError;
use error::ApiResult;

/// URL path segment escaping: RFC 3986's unreserved characters stay, everything else becomes
/// %XX, `/` included (RabbitMQ's API wants `/` in a vhost name as %2F).
pub(crate) const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes a URL path segment with [`PATH_SEGMENT`] (the API's own links, `pier
/// ctl`'s requests and `pier bench`'s URIs).
pub fn encode_segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, PATH_SEGMENT).to_string()
}

/// The RabbitMQ version whose management API Pier follows (tools sniff it).
pub const RABBITMQ_COMPAT_VERSION: &str = "3.10.8";

/// The node's listeners besides AMQP and HTTP (AMQPS, stream, MQTT, STOMP, their TLS and
/// WebSocket variants) by RabbitMQ's protocol names, as `/api/overview` lists them; the
/// binary adds each once it is bound (after the management server started).
#[derive(Debug, Clone, Default)]
pub struct Listeners(Arc<std::sync::RwLock<Vec<(&'static str, SocketAddr)>>>);

impl Listeners {
    pub fn add(&self, protocol: &'static str, addr: SocketAddr) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push((protocol, addr));
    }

    pub fn list(&self) -> Vec<(&'static str, SocketAddr)> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Settings of the management server beyond the listener.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// The AMQP listener's address, shown in `/api/overview` listeners.
    pub amqp_addr: Option<SocketAddr>,
    /// The other protocol listeners, shown there too.
    pub listeners: Listeners,
    /// `cluster_name` (defaults to the node name).
    pub cluster_name: Option<String>,
    /// Where definition changes go: a clustered node's [`Metadata`] (the binary builds it);
    /// `None` builds a single node's, which applies them locally.
    pub metadata: Option<Metadata>,
}

/// Description and tags of a vhost (RabbitMQ's vhost metadata).
#[derive(Debug, Clone, Default)]
pub(crate) struct VhostMeta {
    pub description: String,
    pub tags: Vec<String>,
    pub default_queue_type: Option<String>,
}

pub(crate) struct Inner {
    pub broker: Arc<Broker>,
    pub registry: Arc<Registry>,
    /// This node's name: `pier@<hostname>`, or the cluster node name.
    pub node: String,
    /// Definition changes go through here (applied locally, or proposed to the cluster);
    /// its catalog holds the cluster name and vhost metadata.
    pub metadata: Metadata,
    pub started: Instant,
    pub http_addr: Option<SocketAddr>,
    pub amqp_addr: Option<SocketAddr>,
    pub listeners: Listeners,
    pub sampler: stats::Sampler,
}

#[derive(Clone)]
pub(crate) struct AppState(Arc<Inner>);

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn cluster_name(&self) -> String {
        self.metadata
            .catalog()
            .cluster_name()
            .unwrap_or_else(|| self.node.clone())
    }

    pub fn vhost_meta(&self, name: &str) -> VhostMeta {
        match self.metadata.catalog().vhost(name) {
            Some(m)
                if !(m.description.is_empty()
                    && m.tags.is_empty()
                    && m.default_queue_type.is_none()) =>
            {
                VhostMeta {
                    description: m.description,
                    tags: m.tags,
                    default_queue_type: m.default_queue_type,
                }
            }
            _ => VhostMeta {
                description: if name == "/" {
                    "Default virtual host".to_owned()
                } else {
                    String::new()
                },
                ..VhostMeta::default()
            },
        }
    }

    /// Fresh figures for the queues homed on other nodes (a clustered node only).
    pub(crate) async fn refresh_remote_queues(&self) {
        if let Some(c) = self.metadata.cluster() {
            c.refresh_queue_figures().await;
        }
    }

    /// Applies a definition change (locally, or through the cluster on a clustered node:
    /// then it returns once this node has applied it).
    pub async fn execute(&self, cmd: MetadataCommand) -> ApiResult<Outcome> {
        Ok(self.metadata.execute(cmd).await?)
    }

    pub fn cluster(&self) -> Option<&pier_cluster::ClusterHandle> {
        self.metadata.cluster()
    }

    /// The members of a queue declared through this node, as a client's declare gets them
    /// (`ClusterHandle::queue_members`, with the `queue-leader-locator` of the policy in
    /// force for it); this node alone when it is not clustered.
    pub fn queue_members(
        &self,
        vhost: &str,
        name: &str,
        durable: bool,
        arguments: &pier_wire::FieldTable,
    ) -> Vec<String> {
        match self.cluster() {
            Some(c) => {
                let locator = self
                    .broker
                    .vhost(vhost)
                    .and_then(|vh| vh.queue_leader_locator_policy(name));
                c.queue_members(durable, arguments, locator.as_deref())
            }
            None => vec![self.node.clone()],
        }
    }
}

/// Closes client connections when the definitions they depend on go, on every node.
struct RegistryHooks(Arc<Registry>);

impl Hooks for RegistryHooks {
    fn vhost_deleted(&self, vhost: &str) {
        self.0
            .close_where(|c| c.vhost == vhost, &format!("vhost '{vhost}' is deleted"));
    }

    fn user_deleted(&self, user: &str) {
        self.0
            .close_where(|c| c.user == user, &format!("user '{user}' is deleted"));
    }
}

/// The hooks a node's metadata applier calls: connections of a deleted vhost or user close.
pub fn registry_hooks(registry: Arc<Registry>) -> Arc<dyn Hooks> {
    Arc::new(RegistryHooks(registry))
}

/// Serves the management API and `/metrics` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    broker: Arc<Broker>,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(
        listener,
        broker,
        registry,
        ServeOptions::default(),
        shutdown,
    )
    .await
}

/// [`serve`] with options.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    broker: Arc<Broker>,
    registry: Arc<Registry>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_on(listener, broker, registry, options, shutdown).await
}

/// `serve_with` over HTTPS: TLS sessions from `acceptor` on `listener`.
pub async fn serve_tls_with(
    listener: tokio::net::TcpListener,
    acceptor: pier_server::tls::TlsAcceptor,
    broker: Arc<Broker>,
    registry: Arc<Registry>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // tap_io: axum gives the peer's address to ConnectInfo for tapped listeners.
    let listener = tls::TlsListener::new(listener, acceptor)?.tap_io(|_| {});
    serve_on(listener, broker, registry, options, shutdown).await
}

async fn serve_on<L>(
    listener: L,
    broker: Arc<Broker>,
    registry: Arc<Registry>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
    for<'a> SocketAddr: axum::extract::connect_info::Connected<axum::serve::IncomingStream<'a, L>>,
{
    let metadata = match options.metadata {
        Some(m) => m,
        None => Metadata::local(
            Arc::clone(&broker),
            Arc::new(Catalog::new(options.cluster_name.clone())),
            Some(registry_hooks(Arc::clone(&registry))),
        ),
    };
    let node = match metadata.cluster() {
        Some(c) => c.node_name().to_owned(),
        None => format!("pier@{}", hostname()),
    };
    let state = AppState(Arc::new(Inner {
        broker,
        registry,
        node,
        metadata,
        started: Instant::now(),
        http_addr: listener.local_addr().ok(),
        amqp_addr: options.amqp_addr,
        listeners: options.listeners.clone(),
        sampler: stats::Sampler::default(),
    }));
    if let Some(c) = state.cluster() {
        c.set_reporter(Arc::new(cluster::StateReporter(Arc::downgrade(&state.0))));
    }
    let sampler = tokio::spawn(stats::run_sampler(state.clone(), Duration::from_secs(5)));
    let app = router(state);
    let result = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await;
    sampler.abort();
    result
}

fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/overview", get(api::overview))
        .route(
            "/cluster-name",
            get(api::cluster_name).put(extras::put_cluster_name),
        )
        .route("/nodes", get(api::nodes))
        .route("/nodes/{node}", get(api::node))
        .route("/nodes/{node}/memory", get(extras::node_memory))
        .route("/extensions", get(extras::extensions))
        .route("/feature-flags", get(extras::feature_flags))
        .route("/parameters", get(extras::parameters))
        .route("/parameters/{component}", get(extras::component_parameters))
        .route(
            "/parameters/{component}/{vhost}",
            get(extras::vhost_parameters),
        )
        .route(
            "/parameters/{component}/{vhost}/{name}",
            get(extras::parameter)
                .put(extras::put_parameter)
                .delete(extras::delete_parameter),
        )
        .route("/global-parameters", get(extras::global_parameters))
        .route(
            "/global-parameters/{name}",
            get(extras::global_parameter)
                .put(extras::put_global_parameter)
                .delete(extras::delete_global_parameter),
        )
        .route("/operator-policies", get(extras::operator_policies))
        .route(
            "/operator-policies/{vhost}",
            get(extras::vhost_operator_policies),
        )
        .route(
            "/operator-policies/{vhost}/{name}",
            get(extras::operator_policy)
                .put(extras::put_operator_policy)
                .delete(extras::delete_operator_policy),
        )
        .route("/vhost-limits", get(extras::vhost_limits))
        .route("/vhost-limits/{vhost}", get(extras::one_vhost_limits))
        .route(
            "/vhost-limits/{vhost}/{name}",
            axum::routing::put(extras::put_vhost_limit).delete(extras::delete_vhost_limit),
        )
        .route("/user-limits", get(extras::user_limits))
        .route("/user-limits/{user}", get(extras::one_user_limits))
        .route(
            "/user-limits/{user}/{name}",
            axum::routing::put(extras::put_user_limit).delete(extras::delete_user_limit),
        )
        .route("/rebalance/queues", post(extras::rebalance_queues))
        .route("/vhosts/{vhost}/start/{node}", post(extras::start_vhost))
        // Pier's cluster operations (RabbitMQ does these with rabbitmqctl, not over HTTP).
        .route("/pier/cluster", get(cluster::status))
        .route("/pier/cluster/join", post(cluster::join))
        .route("/pier/cluster/nodes/{node}", delete(cluster::forget))
        .route("/whoami", get(api::whoami))
        .route("/vhosts", get(api::vhosts))
        .route(
            "/vhosts/{vhost}",
            get(api::vhost)
                .put(api::put_vhost)
                .delete(api::delete_vhost),
        )
        .route("/vhosts/{vhost}/permissions", get(api::vhost_permissions))
        .route(
            "/vhosts/{vhost}/topic-permissions",
            get(api::vhost_topic_permissions),
        )
        .route("/vhosts/{vhost}/connections", get(conns::vhost_connections))
        .route("/vhosts/{vhost}/channels", get(conns::vhost_channels))
        .route("/users", get(api::users))
        .route(
            "/users/without-permissions",
            get(api::users_without_permissions),
        )
        .route("/users/bulk-delete", post(api::users_bulk_delete))
        .route(
            "/users/{user}",
            get(api::user).put(api::put_user).delete(api::delete_user),
        )
        .route("/users/{user}/permissions", get(api::user_permissions))
        .route(
            "/users/{user}/topic-permissions",
            get(api::user_topic_permissions),
        )
        .route("/topic-permissions", get(api::topic_permissions))
        .route(
            "/topic-permissions/{vhost}/{user}",
            get(api::user_vhost_topic_permissions)
                .put(api::put_topic_permission)
                .delete(api::delete_topic_permissions),
        )
        .route("/permissions", get(api::permissions))
        .route(
            "/permissions/{vhost}/{user}",
            get(api::permission)
                .put(api::put_permission)
                .delete(api::delete_permission),
        )
        .route("/queues", get(topology::queues))
        .route("/queues/{vhost}", get(topology::vhost_queues))
        .route(
            "/queues/{vhost}/{name}",
            get(topology::queue)
                .put(topology::put_queue)
                .delete(topology::delete_queue),
        )
        .route(
            "/queues/{vhost}/{name}/bindings",
            get(topology::queue_bindings),
        )
        .route(
            "/queues/{vhost}/{name}/contents",
            axum::routing::delete(topology::purge_queue),
        )
        .route("/queues/{vhost}/{name}/get", post(topology::get_messages))
        .route(
            "/queues/{vhost}/{name}/actions",
            post(extras::queue_actions),
        )
        .route(
            "/queues/{vhost}/{name}/quorum-status",
            get(extras::quorum_status),
        )
        .route(
            "/queues/{vhost}/{name}/members",
            post(extras::add_queue_member),
        )
        .route(
            "/queues/{vhost}/{name}/members/{node}",
            axum::routing::delete(extras::delete_queue_member),
        )
        .route(
            "/queues/{vhost}/{name}/transfer-leadership",
            post(extras::transfer_queue_leadership),
        )
        .route("/exchanges", get(topology::exchanges))
        .route("/exchanges/{vhost}", get(topology::vhost_exchanges))
        .route(
            "/exchanges/{vhost}/{name}",
            get(topology::exchange)
                .put(topology::put_exchange)
                .delete(topology::delete_exchange),
        )
        .route("/exchanges/{vhost}/{name}/publish", post(topology::publish))
        .route(
            "/exchanges/{vhost}/{name}/bindings/source",
            get(topology::exchange_bindings_source),
        )
        .route(
            "/exchanges/{vhost}/{name}/bindings/destination",
            get(topology::exchange_bindings_destination),
        )
        .route("/bindings", get(topology::bindings))
        .route("/bindings/{vhost}", get(topology::vhost_bindings))
        .route(
            "/bindings/{vhost}/e/{source}/{kind}/{destination}",
            get(topology::binding_pair).post(topology::create_binding),
        )
        .route(
            "/bindings/{vhost}/e/{source}/{kind}/{destination}/{props}",
            get(topology::binding).delete(topology::delete_binding),
        )
        .route("/connections", get(conns::connections))
        .route(
            "/connections/{name}",
            get(conns::connection).delete(conns::close_connection),
        )
        .route(
            "/connections/{name}/channels",
            get(conns::connection_channels),
        )
        .route(
            "/connections/username/{user}",
            get(conns::user_connections).delete(conns::close_user_connections),
        )
        .route("/stream/connections", get(streams::connections))
        .route(
            "/stream/connections/{vhost}",
            get(streams::vhost_connections),
        )
        .route(
            "/stream/connections/{vhost}/{name}",
            get(streams::connection).delete(streams::close_connection),
        )
        .route(
            "/stream/connections/{vhost}/{name}/publishers",
            get(streams::connection_publishers),
        )
        .route(
            "/stream/connections/{vhost}/{name}/consumers",
            get(streams::connection_consumers),
        )
        .route("/stream/publishers", get(streams::publishers))
        .route("/stream/publishers/{vhost}", get(streams::vhost_publishers))
        .route(
            "/stream/publishers/{vhost}/{stream}",
            get(streams::stream_publishers),
        )
        .route("/stream/consumers", get(streams::consumers))
        .route("/stream/consumers/{vhost}", get(streams::vhost_consumers))
        .route("/channels", get(conns::channels))
        .route("/channels/{name}", get(conns::channel))
        .route("/consumers", get(conns::consumers))
        .route("/consumers/{vhost}", get(conns::vhost_consumers))
        .route("/policies", get(policies::policies))
        .route("/policies/{vhost}", get(policies::vhost_policies))
        .route(
            "/policies/{vhost}/{name}",
            get(policies::policy)
                .put(policies::put_policy)
                .delete(policies::delete_policy),
        )
        .route("/aliveness-test/{vhost}", get(api::aliveness_test))
        .route("/health/checks/alarms", get(api::health_alarms))
        .route("/health/checks/local-alarms", get(api::health_alarms))
        .route("/health/checks/virtual-hosts", get(api::health_ok))
        .route(
            "/health/checks/port-listener/{port}",
            get(extras::health_port_listener),
        )
        .route(
            "/health/checks/protocol-listener/{protocol}",
            get(extras::health_protocol_listener),
        )
        .route(
            "/health/checks/node-is-quorum-critical",
            get(extras::health_quorum_critical),
        )
        .route(
            "/health/checks/node-is-mirror-sync-critical",
            get(extras::health_single_node),
        )
        .route(
            "/definitions",
            get(definitions::export_all).post(definitions::import_all),
        )
        // RabbitMQ's deprecated name for /api/definitions.
        .route(
            "/all-configuration",
            get(definitions::export_all).post(definitions::import_all),
        )
        .route(
            "/definitions/{vhost}",
            get(definitions::export_vhost).post(definitions::import_vhost),
        )
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_user,
        ))
        .layer(axum::middleware::from_fn(ui::no_browser_prompt));
    Router::new()
        // Outside the auth layer: RabbitMQ's login page reads it before logging in.
        .route("/api/auth", get(extras::auth_settings))
        .nest("/api", api)
        .route("/metrics", get(metrics::metrics))
        .route("/metrics/per-object", get(metrics::metrics))
        .merge(ui::routes())
        .with_state(state)
}

/// uname's node name (what /proc/sys/kernel/hostname shows), else `$HOSTNAME`.
fn hostname() -> String {
    let name = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .trim()
        .to_owned();
    if !name.is_empty() {
        return name;
    }
    std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".to_owned())
}
