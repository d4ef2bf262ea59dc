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
//!
//! Layout: `routes/` has one module per management resource (its handlers and its
//! `routes()`), merged by `routes::api`; `views/` has the typed response bodies
//! (`#[derive(Serialize)]`, one per shape); `auth` checks credentials and tags; `json` converts
//! AMQP tables and message properties to and from JSON, parses request bodies and applies the
//! list parameters; `error` is the `{"error", "reason"}` answer; `stats` samples the counters
//! that rates and queueing figures come from; `cluster` reports this node to its peers.

mod auth;
mod cluster;
mod error;
mod json;
mod routes;
mod stats;
mod tls;
mod ui;
mod views;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// RabbitMQ's deprecated features this node permits (queue declarations through the
    /// API obey them; `/api/deprecated-features` lists them).
    pub deprecated_features: pier_broker::DeprecatedFeatures,
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
    pub deprecated_features: pier_broker::DeprecatedFeatures,
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
        self.queue_members_after(vhost, name, durable, arguments, &[])
    }

    /// As `queue_members`, with the replicated quorum queues placed before it in the same
    /// definitions import counted as placed (`earlier`, members leader first).
    pub fn queue_members_after(
        &self,
        vhost: &str,
        name: &str,
        durable: bool,
        arguments: &pier_wire::FieldTable,
        earlier: &[Vec<String>],
    ) -> Vec<String> {
        match self.cluster() {
            Some(c) => {
                let locator = self
                    .broker
                    .vhost(vhost)
                    .and_then(|vh| vh.queue_leader_locator_policy(name));
                c.queue_members_after(durable, arguments, locator.as_deref(), earlier)
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
        deprecated_features: options.deprecated_features,
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
    let api = routes::api()
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_user,
        ))
        .layer(axum::middleware::from_fn(ui::no_browser_prompt));
    Router::new()
        // Outside the auth layer: RabbitMQ's login page reads it before logging in.
        .merge(routes::auth::routes())
        .nest("/api", api)
        .merge(routes::metrics::routes())
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
