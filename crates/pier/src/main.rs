//! The `pier` binary: command line, config, logging and signals; everything else is in the
//! library crates.

mod bench;
mod config;
mod ctl;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::config::FileConfig;

/// jemalloc gives freed memory back to the operating system (background threads purge it
/// within ~10 s), so the resident set the memory alarm measures falls again once queues drain;
/// glibc's malloc keeps what it freed and the alarm would never clear.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser, Debug)]
#[command(
    name = "pier",
    version,
    about = "Pier: a RabbitMQ-compatible message broker",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// With no command, `pier` runs the server with these options.
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the broker (the default when no command is given).
    Server(ServerArgs),
    /// Load-test an AMQP broker (Pier or any other) and report throughput and latency.
    Bench(bench::BenchArgs),
    /// Manage a running Pier: rabbitmqctl's commands over the management HTTP API.
    Ctl(ctl::CtlArgs),
}

#[derive(Args, Debug)]
struct ServerArgs {
    /// AMQP 0-9-1 port.
    #[arg(long, default_value_t = 5672, env = "PIER_AMQP_PORT")]
    amqp_port: u16,
    /// AMQP over TLS port (listened on only when the config file has a `[tls]` section).
    #[arg(long, default_value_t = 5671, env = "PIER_AMQPS_PORT")]
    amqps_port: u16,
    /// Management HTTP API and Prometheus `/metrics` port.
    #[arg(long, default_value_t = 15672, env = "PIER_HTTP_PORT")]
    http_port: u16,
    /// RabbitMQ stream protocol port (0: off) [default: 5552; when not given, a port already
    /// in use only logs a warning, so several brokers can share a host]
    #[arg(long, env = "PIER_STREAM_PORT")]
    stream_port: Option<u16>,
    /// Stream protocol over TLS port (listened on only when the config file has a `[tls]`
    /// section; 0: off) [default: 5551, with the same leniency as --stream-port]
    #[arg(long, env = "PIER_STREAM_TLS_PORT")]
    stream_tls_port: Option<u16>,
    /// The host stream clients are told to connect to (Metadata, Open): RabbitMQ's
    /// `advertised_host` [default: --bind's address, or this machine's hostname when binding
    /// every interface].
    #[arg(long, env = "PIER_STREAM_ADVERTISED_HOST")]
    stream_advertised_host: Option<String>,
    /// The port stream clients are told to connect to [default: --stream-port].
    #[arg(long, env = "PIER_STREAM_ADVERTISED_PORT")]
    stream_advertised_port: Option<u16>,
    /// The RabbitMQ version the stream protocol reports (clients enable features by it).
    #[arg(long, default_value = pier_server::stream::DEFAULT_ADVERTISED_VERSION, env = "PIER_STREAM_ADVERTISED_VERSION")]
    stream_advertised_version: String,
    /// Whether streams fsync before confirming (RabbitMQ's streams do not).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "PIER_STREAM_FSYNC")]
    stream_fsync: bool,
    /// STOMP port (0: off) [default: 61613, or `[stomp] port`; when not given, a port
    /// already in use only logs a warning]
    #[arg(long, env = "PIER_STOMP_PORT")]
    stomp_port: Option<u16>,
    /// STOMP over TLS port (only with a `[tls]` section; 0: off) [default: 61614]
    #[arg(long, env = "PIER_STOMP_TLS_PORT")]
    stomp_tls_port: Option<u16>,
    /// STOMP over WebSocket port, path /ws (0: off) [default: 15674]
    #[arg(long, env = "PIER_WEB_STOMP_PORT")]
    web_stomp_port: Option<u16>,
    /// MQTT port (0: off) [default: the config file's `mqtt.port`, else 1883; when not
    /// given, a port already in use only logs a warning]
    #[arg(long, env = "PIER_MQTT_PORT")]
    mqtt_port: Option<u16>,
    /// MQTT over TLS port (listened on only when the config file has a `[tls]` section;
    /// 0: off) [default: `mqtt.tls_port`, else 8883]
    #[arg(long, env = "PIER_MQTT_TLS_PORT")]
    mqtt_tls_port: Option<u16>,
    /// MQTT over WebSocket port, path /ws (0: off) [default: `mqtt.web_port`, else 15675]
    #[arg(long, env = "PIER_WEB_MQTT_PORT")]
    web_mqtt_port: Option<u16>,
    /// Where Pier keeps its data.
    #[arg(long, default_value = "./pier-data", env = "PIER_DATA_DIR")]
    data_dir: PathBuf,
    /// Address to listen on [default: every IPv6 and IPv4 address, as RabbitMQ's default
    /// listener; IPv4 only where the host has no IPv6]
    #[arg(long, env = "PIER_BIND")]
    bind: Option<IpAddr>,
    /// TOML file with users, vhosts, permissions and limits.
    #[arg(long, env = "PIER_CONFIG")]
    config: Option<PathBuf>,
    /// Cluster: this node's name (RabbitMQ's `rabbit@host`; default `pier@<hostname>`).
    /// Any of the cluster options makes the node a cluster member (docs/clustering.md).
    #[arg(long, env = "PIER_NODE_NAME")]
    node_name: Option<String>,
    /// Cluster: the port nodes talk to each other on (default: AMQP port + 20000).
    #[arg(long, env = "PIER_CLUSTER_PORT")]
    cluster_port: Option<u16>,
    /// Cluster: every node's cluster address, host:port, comma-separated; the same list on
    /// every node (it may include this node's own).
    #[arg(long, env = "PIER_PEERS", value_delimiter = ',')]
    peers: Option<Vec<String>>,
    /// Cluster: the address peers reach this node at (default: --bind's address, or the
    /// hostname when binding all interfaces), with the cluster port.
    #[arg(long, env = "PIER_CLUSTER_ADVERTISE")]
    cluster_advertise: Option<String>,
    /// Cluster: quorum queues declared through this node are Raft groups over several
    /// members (x-quorum-initial-group-size, default 3; docs/quorum-queues.md). On by
    /// default in a cluster; `--quorum-replication false` keeps each on its declaring node
    /// as one member.
    #[arg(
        long,
        env = "PIER_QUORUM_REPLICATION",
        num_args = 0..=1,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    quorum_replication: Option<bool>,
    /// Cluster: `--quorum-heartbeats true` makes quorum queue groups heartbeat every 250 ms
    /// and elect by Raft's timers. By default (false, docs/decisions/0009) they send no
    /// per-group heartbeats and elect when a leader's node stops answering pings.
    #[arg(
        long,
        env = "PIER_QUORUM_HEARTBEATS",
        num_args = 0..=1,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    quorum_heartbeats: Option<bool>,
    /// Whose defaults RabbitMQ's deprecated features follow: "4.2" (the default: permitted)
    /// or "4.3" (transient non-exclusive queues, global QoS and x-queue-master-locator
    /// refused as RabbitMQ 4.3 refuses them). The config file's
    /// `deprecated_features.permit.<name>` still sets each one.
    #[arg(long, env = "PIER_DEPRECATED_FEATURES", value_name = "VERSION")]
    deprecated_features: Option<String>,
    /// How quorum queues count deliveries: "4.2" (the default: every return counts, shown
    /// as x-delivery-count, limited by the delivery limit) or "4.3" (only failed deliveries
    /// count towards the limit and x-delivery-count; x-acquired-count has every return).
    /// Set the same on every node of a cluster.
    #[arg(long, env = "PIER_QUORUM_DELIVERY_COUNTING", value_name = "VERSION")]
    quorum_delivery_counting: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            // openraft logs every vote and membership step at info.
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = match cli.command {
        Some(Command::Server(a)) => a,
        Some(Command::Bench(a)) => return bench::main(a),
        Some(Command::Ctl(a)) => return ctl::main(a),
        None => cli.server,
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(serve(args))
}

async fn serve(args: ServerArgs) -> anyhow::Result<()> {
    let file = Arc::new(match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    });
    let mut server_config = file.server_config()?;
    server_config.data_dir = Some(args.data_dir.clone());
    server_config.deprecated_features = file
        .deprecated_features
        .clone()
        .unwrap_or_default()
        .resolve(args.deprecated_features.as_deref())?;
    let cluster_config = cluster_config(&args, &file, &server_config)?;
    // A cluster member starts from what the cluster has (its data directory); the config
    // file's definitions are proposed to the cluster once the node has caught up, so every
    // node holds the same ones (the same password hashes included).
    let broker = Arc::new(if cluster_config.is_some() {
        file.build_broker()?;
        file.empty_broker()
    } else {
        file.build_broker()?
    });
    broker.set_delivery_counting(config::delivery_counting(
        args.quorum_delivery_counting.as_deref().or(file
            .quorum_queues
            .as_ref()
            .and_then(|q| q.delivery_counting.as_deref())),
    )?);
    catch_file_size_signal();
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data directory {}", args.data_dir.display()))?;
    let options = pier_broker::storage::StorageOptions {
        sync_policy: config::sync_policy(file.fsync.as_deref())?,
        shards: file
            .store_shards
            .unwrap_or_else(pier_store::default_shards)
            .clamp(1, pier_store::MAX_SHARDS),
    };
    let storage = Arc::new(
        pier_broker::storage::BrokerStorage::open_with(&args.data_dir, options)
            .with_context(|| format!("opening the data directory {}", args.data_dir.display()))?,
    );
    storage.set_stream_sync(args.stream_fsync);
    // A cluster member reads where each durable queue lives before recovering, so that
    // queues homed on other nodes get remote handles rather than local storage.
    let prepared = match &cluster_config {
        Some(config) => {
            let p = pier_cluster::ClusterHandle::prepare(config, storage.definitions())
                .context("reading the cluster catalog")?;
            broker.set_cluster(p.cluster());
            Some(p)
        }
        None => None,
    };
    // Recovery reads the store through its thread: keep it off the async workers.
    {
        let (storage, broker) = (Arc::clone(&storage), Arc::clone(&broker));
        tokio::task::spawn_blocking(move || storage.recover(&broker))
            .await
            .context("recovery task")?
            .context("recovering from the data directory")?;
    }

    let registry = Arc::new(pier_server::Registry::new());
    // A cluster member only when configured: a single node runs no cluster code.
    let cluster = match (cluster_config, prepared) {
        (Some(config), Some(prepared)) => {
            let handle = pier_cluster::ClusterHandle::start_prepared(
                config,
                prepared,
                Arc::clone(&broker),
                Arc::clone(storage.definitions()),
                Some(pier_mgmt::registry_hooks(Arc::clone(&registry))),
            )
            .await
            .context("starting the cluster node")?;
            tokio::spawn(seed_cluster(
                handle.clone(),
                Arc::clone(&broker),
                Arc::clone(&file),
            ));
            // Members that are up answer within a ping round; one that is down costs this
            // node two seconds of start-up, as RabbitMQ's boot waits for its peers.
            handle
                .await_members(std::time::Duration::from_secs(2))
                .await;
            Some(handle)
        }
        _ => None,
    };

    let listener = listen(args.bind, args.amqp_port).context("binding the AMQP listener")?;
    tracing::info!(
        amqp = %listener.local_addr().map_or_else(|_| args.amqp_port.to_string(), |a| a.to_string()),
        http_port = args.http_port,
        data_dir = %args.data_dir.display(),
        "Pier {} ready",
        env!("CARGO_PKG_VERSION")
    );
    // Management API and /metrics on --http-port, stopped once the AMQP server has stopped.
    let http_listener =
        listen(args.bind, args.http_port).context("binding the management HTTP listener")?;
    let http_addr = http_listener
        .local_addr()
        .context("the management HTTP listener's address")?;
    let (stop_http, http_stop) = tokio::sync::oneshot::channel::<()>();
    // One metadata front for the management API and the AMQP server: on a cluster member
    // both send definition changes through the cluster; a single node applies them locally
    // (the server then keeps to its own path, with no cluster code at all).
    let metadata = match &cluster {
        Some(handle) => pier_cluster::Metadata::clustered(handle.clone()),
        None => pier_cluster::Metadata::local(
            Arc::clone(&broker),
            Arc::new(pier_cluster::metadata::Catalog::new(Some(
                server_config.cluster_name.clone(),
            ))),
            Some(pier_mgmt::registry_hooks(Arc::clone(&registry))),
        ),
    };
    // The other listeners, shown by /api/overview as they are bound below.
    let extra_listeners = pier_mgmt::Listeners::default();
    let mgmt_options = pier_mgmt::ServeOptions {
        amqp_addr: listener.local_addr().ok(),
        listeners: extra_listeners.clone(),
        cluster_name: Some(server_config.cluster_name.clone()),
        metadata: Some(metadata.clone()),
        deprecated_features: server_config.deprecated_features,
    };
    let http_shutdown = async move {
        let _ = http_stop.await;
    };
    let http = match file.tls_settings().filter(|_| file.https()) {
        Some(tls) => {
            let acceptor = pier_server::tls::http_acceptor(&tls).context("setting up HTTPS")?;
            tracing::info!(%http_addr, "management API over HTTPS");
            tokio::spawn(pier_mgmt::serve_tls_with(
                http_listener,
                acceptor,
                Arc::clone(&broker),
                Arc::clone(&registry),
                mgmt_options,
                http_shutdown,
            ))
        }
        None => tokio::spawn(pier_mgmt::serve_with(
            http_listener,
            Arc::clone(&broker),
            Arc::clone(&registry),
            mgmt_options,
            http_shutdown,
        )),
    };
    let mut listeners = vec![pier_server::Listener::plain(listener)];
    if let Some(tls) = file.tls_settings() {
        let acceptor = pier_server::tls::acceptor(&tls).context("setting up TLS")?;
        let tls_listener =
            listen(args.bind, args.amqps_port).context("binding the AMQPS listener")?;
        let client_certificates = match (&tls.ca, tls.verify_peer) {
            (None, _) => "none",
            (Some(_), true) => "required",
            (Some(_), false) => "optional",
        };
        if let Ok(addr) = tls_listener.local_addr() {
            extra_listeners.add("amqp/ssl", addr);
        }
        tracing::info!(
            amqps = %tls_listener.local_addr().map_or_else(|_| args.amqps_port.to_string(), |a| a.to_string()),
            client_certificates,
            "TLS listener ready"
        );
        listeners.push(pier_server::Listener::tls(tls_listener, acceptor));
    }
    // The stream protocol (5552, and 5551 over TLS), stopped with the AMQP server.
    let stop_streams = tokio_util::sync::CancellationToken::new();
    let mut stream_servers = Vec::new();
    let stream_port = args.stream_port.unwrap_or(5552);
    let stream_config = pier_server::stream::StreamServerConfig {
        // A node bound to one address is reached there (three nodes on one host, each on its
        // own address, must not all send clients to the hostname).
        advertised_host: args.stream_advertised_host.clone().unwrap_or_else(|| {
            args.bind
                .filter(|ip| !ip.is_unspecified())
                .map_or_else(hostname, |ip| ip.to_string())
        }),
        advertised_port: args.stream_advertised_port.unwrap_or(stream_port),
        advertised_version: args.stream_advertised_version.clone(),
        cluster_name: server_config.cluster_name.clone(),
        ..pier_server::stream::StreamServerConfig::default()
    };
    let mut stream_listeners = Vec::new();
    if let Some(l) = listen_optional(
        args.bind,
        args.stream_port,
        5552,
        "stream",
        (&extra_listeners, "stream"),
    )? {
        stream_listeners.push((l, None, stream_config.clone()));
        // The other nodes name this one as the leader of the streams it hosts.
        if let Some(c) = &cluster {
            c.set_stream_endpoint(
                false,
                stream_config.advertised_host.clone(),
                stream_config.advertised_port,
            );
        }
    }
    if let Some(tls) = file.tls_settings() {
        if let Some(l) = listen_optional(
            args.bind,
            args.stream_tls_port,
            5551,
            "stream TLS",
            (&extra_listeners, "stream/ssl"),
        )? {
            let acceptor = pier_server::tls::acceptor(&tls).context("setting up TLS")?;
            let port = l.local_addr().map_or(5551, |a| a.port());
            let config = pier_server::stream::StreamServerConfig {
                advertised_port: port,
                ..stream_config.clone()
            };
            // A client connected over TLS is named the other nodes' TLS port.
            if let Some(c) = &cluster {
                c.set_stream_endpoint(true, config.advertised_host.clone(), port);
            }
            stream_listeners.push((l, Some(acceptor), config));
        }
    }
    for (l, tls, config) in stream_listeners {
        tracing::info!(
            stream = %l.local_addr().map_or_else(|_| "?".to_owned(), |a| a.to_string()),
            tls = tls.is_some(),
            advertised = %format!("{}:{}", config.advertised_host, config.advertised_port),
            version = %config.advertised_version,
            "stream protocol listener ready"
        );
        stream_servers.push(tokio::spawn(pier_server::stream::serve(
            l,
            tls,
            Arc::clone(&broker),
            Arc::clone(&registry),
            config,
            Some(metadata.clone()),
            stop_streams.clone(),
        )));
    }
    // STOMP (61613, 61614 over TLS), stopped with the AMQP server.
    let stomp_file = file.stomp.clone().unwrap_or_default();
    let mut stomp_config = pier_server::stomp::StompServerConfig {
        product: server_config.product.clone(),
        product_version: server_config.product_version.clone(),
        handshake_timeout: server_config.handshake_timeout,
        outbound_high_watermark: server_config.outbound_high_watermark,
        max_message_size: server_config.max_message_size,
        ..pier_server::stomp::StompServerConfig::default()
    };
    if let Some(n) = stomp_file.max_frame_size {
        stomp_config.max_frame_size = n;
    }
    if let Some(login) = &stomp_file.default_login {
        stomp_config.default_user = (!login.is_empty()).then(|| {
            (
                login.clone(),
                stomp_file.default_passcode.clone().unwrap_or_default(),
            )
        });
    }
    let stomp_ctx = pier_server::stomp::StompContext::new(
        Arc::clone(&broker),
        Arc::clone(&registry),
        stomp_config,
        Some(metadata.clone()),
    );
    let mut stomp_listeners = Vec::new();
    if let Some(l) = listen_optional(
        args.bind,
        args.stomp_port.or(stomp_file.port),
        61613,
        "STOMP",
        (&extra_listeners, "stomp"),
    )? {
        stomp_listeners.push((l, None));
    }
    if let Some(tls) = file.tls_settings() {
        if let Some(l) = listen_optional(
            args.bind,
            args.stomp_tls_port.or(stomp_file.tls_port),
            61614,
            "STOMP TLS",
            (&extra_listeners, "stomp/ssl"),
        )? {
            let acceptor = pier_server::tls::acceptor(&tls).context("setting up TLS")?;
            stomp_listeners.push((l, Some(acceptor)));
        }
    }
    for (l, tls) in stomp_listeners {
        tracing::info!(
            stomp = %l.local_addr().map_or_else(|_| "?".to_owned(), |a| a.to_string()),
            tls = tls.is_some(),
            "STOMP listener ready"
        );
        stream_servers.push(tokio::spawn(pier_server::stomp::serve(
            l,
            tls,
            Arc::clone(&stomp_ctx),
            stop_streams.clone(),
        )));
    }
    // STOMP over WebSocket (15674, path /ws), as RabbitMQ's Web-STOMP plugin.
    if let Some(l) = listen_optional(
        args.bind,
        args.web_stomp_port.or(stomp_file.web_port),
        15674,
        "Web-STOMP",
        (&extra_listeners, "http/web-stomp"),
    )? {
        tracing::info!(
            web_stomp = %l.local_addr().map_or_else(|_| "?".to_owned(), |a| a.to_string()),
            "STOMP over WebSocket listener ready (path /ws)"
        );
        let ctx = Arc::clone(&stomp_ctx);
        stream_servers.push(tokio::spawn(pier_server::websocket::serve(
            l,
            pier_server::websocket::WsEndpoint::stomp(),
            stop_streams.clone(),
            move |io, peer, local, token| {
                pier_server::stomp::serve_connection(io, peer, local, None, Arc::clone(&ctx), token)
            },
        )));
    }
    // MQTT (1883, and 8883 over TLS), stopped with the AMQP server.
    let stop_mqtt = tokio_util::sync::CancellationToken::new();
    let mut mqtt_servers = Vec::new();
    {
        let entry = file.mqtt.clone().unwrap_or_default();
        let mut mqtt_config = entry.server_config();
        mqtt_config.data_dir = Some(args.data_dir.clone());
        let ctx = pier_server::mqtt::MqttContext::with_metadata(
            Arc::clone(&broker),
            Arc::clone(&registry),
            mqtt_config,
            stop_mqtt.clone(),
            Some(metadata.clone()),
        );
        let mut mqtt_listeners = Vec::new();
        let port = args.mqtt_port.or(entry.port);
        if let Some(l) = listen_optional(args.bind, port, 1883, "MQTT", (&extra_listeners, "mqtt"))?
        {
            mqtt_listeners.push((l, None));
        }
        if let Some(tls) = file.tls_settings() {
            let port = args.mqtt_tls_port.or(entry.tls_port);
            if let Some(l) = listen_optional(
                args.bind,
                port,
                8883,
                "MQTT TLS",
                (&extra_listeners, "mqtt/ssl"),
            )? {
                let acceptor = pier_server::tls::acceptor(&tls).context("setting up TLS")?;
                mqtt_listeners.push((l, Some(acceptor)));
            }
        }
        for (l, tls) in mqtt_listeners {
            tracing::info!(
                mqtt = %l.local_addr().map_or_else(|_| "?".to_owned(), |a| a.to_string()),
                tls = tls.is_some(),
                "MQTT listener ready"
            );
            mqtt_servers.push(tokio::spawn(pier_server::mqtt::serve(
                l,
                tls,
                Arc::clone(&ctx),
            )));
        }
        // MQTT over WebSocket (15675, path /ws), as RabbitMQ's Web-MQTT plugin.
        let port = args.web_mqtt_port.or(entry.web_port);
        if let Some(l) = listen_optional(
            args.bind,
            port,
            15675,
            "Web-MQTT",
            (&extra_listeners, "http/web-mqtt"),
        )? {
            tracing::info!(
                web_mqtt = %l.local_addr().map_or_else(|_| "?".to_owned(), |a| a.to_string()),
                "MQTT over WebSocket listener ready (path /ws)"
            );
            let ctx = Arc::clone(&ctx);
            mqtt_servers.push(tokio::spawn(pier_server::websocket::serve(
                l,
                pier_server::websocket::WsEndpoint::mqtt(),
                stop_mqtt.clone(),
                // MQTT connections end with the context's own shutdown (`stop_mqtt`).
                move |io, peer, local, _token| {
                    pier_server::mqtt::serve_connection(
                        io,
                        peer,
                        local,
                        None,
                        None,
                        Arc::clone(&ctx),
                    )
                },
            )));
        }
    }
    pier_server::run_listeners(
        listeners,
        broker,
        registry,
        server_config,
        Some(metadata),
        shutdown_signal(),
    )
    .await?;
    stop_streams.cancel();
    stop_mqtt.cancel();
    for s in stream_servers {
        let _ = s.await;
    }
    for s in mqtt_servers {
        let _ = s.await;
    }
    let _ = stop_http.send(());
    match tokio::time::timeout(std::time::Duration::from_secs(5), http).await {
        Ok(Ok(Err(e))) => tracing::warn!("management HTTP server failed: {e}"),
        Ok(Err(e)) => tracing::warn!("management HTTP task failed: {e}"),
        Ok(Ok(Ok(()))) | Err(_) => {}
    }
    if let Some(c) = &cluster {
        c.shutdown().await;
    }
    // Every store flushed and synced (acks included) before the process exits.
    tokio::task::spawn_blocking(move || storage.shutdown())
        .await
        .context("closing the stores")?;
    tracing::info!("stopped");
    Ok(())
}

/// A listening socket on `port`: on `bind` if given, else on every address. That is one
/// dual-stack IPv6 socket (`[::]`, IPv4 clients arrive as mapped addresses), as RabbitMQ's
/// default listener, so that `localhost` resolving to `::1` reaches Pier too; where the host
/// has no IPv6 it is `0.0.0.0`.
fn listen(bind: Option<IpAddr>, port: u16) -> anyhow::Result<tokio::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let open = |addr: SocketAddr, dual_stack: bool| -> std::io::Result<std::net::TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        if dual_stack {
            socket.set_only_v6(false)?;
        }
        // As tokio's and std's listeners do: a restarted broker can rebind at once.
        #[cfg(unix)]
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        socket.set_nonblocking(true)?;
        Ok(socket.into())
    };
    let std_listener = match bind {
        Some(ip) => {
            let addr = SocketAddr::new(ip, port);
            open(addr, false).with_context(|| format!("listening on {addr}"))?
        }
        None => {
            let any6 = SocketAddr::new(IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED), port);
            match open(any6, true) {
                Ok(l) => l,
                // A port in use stays an error; anything else means no usable IPv6.
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    return Err(e).with_context(|| format!("listening on {any6}"));
                }
                Err(e) => {
                    tracing::info!("no IPv6 listener on port {port} ({e}); listening on IPv4 only");
                    let any4 = SocketAddr::new(IpAddr::from(std::net::Ipv4Addr::UNSPECIFIED), port);
                    open(any4, false).with_context(|| format!("listening on {any4}"))?
                }
            }
        }
    };
    Ok(tokio::net::TcpListener::from_std(std_listener)?)
}

/// A stream listener: on the port given (an error if it cannot be bound), or on the default
/// port when none was given (a warning if it is taken); none for port 0.
/// A bound listener is added to `shown` under its RabbitMQ protocol name (`/api/overview`).
fn listen_optional(
    bind: Option<IpAddr>,
    given: Option<u16>,
    default: u16,
    what: &str,
    (shown, protocol): (&pier_mgmt::Listeners, &'static str),
) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    let listener = match given {
        Some(0) => None,
        Some(port) => {
            Some(listen(bind, port).with_context(|| format!("binding the {what} listener"))?)
        }
        None => match listen(bind, default) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(
                    "no {what} listener: the default port {default} cannot be bound ({e:#}); \
                     set its --*-port option to choose another"
                );
                None
            }
        },
    };
    if let Some(addr) = listener.as_ref().and_then(|l| l.local_addr().ok()) {
        shown.add(protocol, addr);
    }
    Ok(listener)
}

/// The cluster settings from the command line and the config file's `[cluster]` (the
/// command line wins); `None` when neither configures a cluster.
fn cluster_config(
    args: &ServerArgs,
    file: &FileConfig,
    server: &pier_server::ServerConfig,
) -> anyhow::Result<Option<pier_cluster::ClusterConfig>> {
    let f = file.cluster.clone().unwrap_or_default();
    let configured = args.node_name.is_some()
        || args.cluster_port.is_some()
        || args.peers.is_some()
        || file.cluster.is_some();
    if !configured {
        return Ok(None);
    }
    let node_name = args
        .node_name
        .clone()
        .or(f.node_name)
        .unwrap_or_else(|| format!("pier@{}", hostname()));
    let port = match args.cluster_port.or(f.cluster_port) {
        Some(p) => p,
        None => args
            .amqp_port
            .checked_add(20000)
            .context("no --cluster-port given and AMQP port + 20000 is not a port")?,
    };
    let peers: Vec<String> = args
        .peers
        .clone()
        .or(f.peers)
        .unwrap_or_default()
        .into_iter()
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect();
    for p in &peers {
        if p.rsplit_once(':')
            .and_then(|(_, port)| port.parse::<u16>().ok())
            .is_none()
        {
            anyhow::bail!("peer '{p}' is not host:port");
        }
    }
    let advertise = match args.cluster_advertise.clone().or(f.advertise) {
        Some(a) => a,
        None => match args.bind {
            Some(ip) if !ip.is_unspecified() => SocketAddr::new(ip, port).to_string(),
            _ => format!("{}:{port}", hostname()),
        },
    };
    // A node with TLS speaks it to its peers too (mutual TLS against the `[tls]` CA).
    let tls = match file.tls_settings() {
        Some(settings) => {
            let (server, client) =
                pier_server::tls::cluster_configs(&settings).context("TLS on the cluster port")?;
            Some(pier_cluster::ClusterTls::new(server, client))
        }
        None => None,
    };
    Ok(Some(pier_cluster::ClusterConfig {
        node_name,
        listen: SocketAddr::new(
            args.bind
                .unwrap_or(IpAddr::from(std::net::Ipv4Addr::UNSPECIFIED)),
            port,
        ),
        advertise,
        peers,
        dir: args.data_dir.join("cluster"),
        cluster_name: Some(server.cluster_name.clone()),
        propose_timeout: std::time::Duration::from_millis(f.propose_timeout.unwrap_or(5000)),
        tls,
        quorum_replication: args
            .quorum_replication
            .or(f.quorum_replication)
            .unwrap_or(true),
        quorum_heartbeats: args
            .quorum_heartbeats
            .or(f.quorum_heartbeats)
            .unwrap_or(false),
    }))
}

/// uname's node name: what /proc/sys/kernel/hostname shows.
fn hostname() -> String {
    let name = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .trim()
        .to_owned();
    if name.is_empty() {
        "localhost".to_owned()
    } else {
        name
    }
}

/// Proposes the config file's definitions to the cluster once this node has caught up
/// (an empty proposal applied here means everything before it is applied here too), so
/// that every node's file is in force cluster-wide, as a single node applies it at start.
async fn seed_cluster(
    handle: pier_cluster::ClusterHandle,
    broker: Arc<pier_broker::Broker>,
    file: Arc<FileConfig>,
) {
    use pier_cluster::metadata::MetadataCommand;
    loop {
        let caught_up = handle
            .propose(MetadataCommand::Batch {
                commands: Vec::new(),
            })
            .await;
        if caught_up.is_ok() {
            let commands = file.seed_commands(&broker);
            if commands.is_empty() {
                return;
            }
            let n = commands.len();
            match handle.propose(MetadataCommand::Batch { commands }).await {
                Ok(_) => {
                    tracing::info!(
                        changes = n,
                        "the config file's definitions are in the cluster"
                    );
                    return;
                }
                Err(e) => tracing::debug!("proposing the config file's definitions: {e}"),
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Keeps SIGXFSZ from killing the broker. A write past RLIMIT_FSIZE raises SIGXFSZ, whose
/// default action terminates the process (with a core dump); with the signal caught the write
/// fails with EFBIG instead, and the store handles that like a full disk (publishes nacked,
/// writes resume when the limit is raised). Installed before any store file is written.
/// Catching rather than ignoring needs no `unsafe`; tokio never uninstalls the handler.
fn catch_file_size_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let xfsz = SignalKind::from_raw(rustix::process::Signal::XFSZ.as_raw());
        match signal(xfsz) {
            Ok(mut s) => {
                tokio::spawn(async move {
                    while s.recv().await.is_some() {
                        tracing::debug!("SIGXFSZ: a write hit the file size limit (EFBIG)");
                    }
                });
            }
            Err(e) => tracing::warn!("cannot catch SIGXFSZ (a write past the file size limit will kill the process): {e}"),
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
