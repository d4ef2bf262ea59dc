//! The `pier` binary: command line, config, logging and signals; everything else is in the
//! library crates.

mod bench;
mod config;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::config::FileConfig;

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
}

#[derive(Args, Debug)]
struct ServerArgs {
    /// AMQP 0-9-1 port.
    #[arg(long, default_value_t = 5672, env = "PIER_AMQP_PORT")]
    amqp_port: u16,
    /// Management HTTP API and Prometheus `/metrics` port.
    #[arg(long, default_value_t = 15672, env = "PIER_HTTP_PORT")]
    http_port: u16,
    /// Where Pier keeps its data.
    #[arg(long, default_value = "./pier-data", env = "PIER_DATA_DIR")]
    data_dir: PathBuf,
    /// Address to listen on (all interfaces by default).
    #[arg(long, default_value = "0.0.0.0", env = "PIER_BIND")]
    bind: IpAddr,
    /// TOML file with users, vhosts, permissions and limits.
    #[arg(long, env = "PIER_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = match cli.command {
        Some(Command::Server(a)) => a,
        Some(Command::Bench(a)) => return bench::main(a),
        None => cli.server,
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(serve(args))
}

async fn serve(args: ServerArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let broker = Arc::new(file.build_broker()?);
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data directory {}", args.data_dir.display()))?;
    let sync_policy = config::sync_policy(file.fsync.as_deref())?;
    let storage = Arc::new(
        pier_broker::storage::BrokerStorage::open(&args.data_dir, sync_policy)
            .with_context(|| format!("opening the data directory {}", args.data_dir.display()))?,
    );
    // Recovery reads the store through its thread: keep it off the async workers.
    {
        let (storage, broker) = (Arc::clone(&storage), Arc::clone(&broker));
        tokio::task::spawn_blocking(move || storage.recover(&broker))
            .await
            .context("recovery task")?
            .context("recovering from the data directory")?;
    }

    let mut server_config = pier_server::ServerConfig::default();
    if let Some(v) = file.frame_max {
        server_config.frame_max = v;
    }
    if let Some(v) = file.channel_max {
        server_config.channel_max = v;
    }
    if let Some(v) = file.heartbeat {
        server_config.heartbeat = v;
    }
    if let Some(v) = file.max_message_size {
        server_config.max_message_size = v;
    }
    if let Some(ms) = file.consumer_timeout {
        server_config.consumer_timeout = (ms > 0).then(|| std::time::Duration::from_millis(ms));
    }

    let addr = SocketAddr::new(args.bind, args.amqp_port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding AMQP listener on {addr}"))?;
    tracing::info!(
        amqp = %listener.local_addr().unwrap_or(addr),
        http_port = args.http_port,
        data_dir = %args.data_dir.display(),
        "Pier {} ready",
        env!("CARGO_PKG_VERSION")
    );
    // Management API and /metrics on --http-port, stopped once the AMQP server has stopped.
    let http_addr = SocketAddr::new(args.bind, args.http_port);
    let http_listener = tokio::net::TcpListener::bind(http_addr)
        .await
        .with_context(|| format!("binding management HTTP listener on {http_addr}"))?;
    let registry = Arc::new(pier_server::Registry::new());
    let (stop_http, http_stop) = tokio::sync::oneshot::channel::<()>();
    let mgmt_options = pier_mgmt::ServeOptions {
        amqp_addr: listener.local_addr().ok(),
        cluster_name: Some(server_config.cluster_name.clone()),
    };
    let http = tokio::spawn(pier_mgmt::serve_with(
        http_listener,
        Arc::clone(&broker),
        Arc::clone(&registry),
        mgmt_options,
        async move {
            let _ = http_stop.await;
        },
    ));
    pier_server::run(listener, broker, registry, server_config, shutdown_signal()).await?;
    let _ = stop_http.send(());
    match tokio::time::timeout(std::time::Duration::from_secs(5), http).await {
        Ok(Ok(Err(e))) => tracing::warn!("management HTTP server failed: {e}"),
        Ok(Err(e)) => tracing::warn!("management HTTP task failed: {e}"),
        Ok(Ok(Ok(()))) | Err(_) => {}
    }
    // Every store flushed and synced (acks included) before the process exits.
    tokio::task::spawn_blocking(move || storage.shutdown())
        .await
        .context("closing the stores")?;
    tracing::info!("stopped");
    Ok(())
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
