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
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let broker = Arc::new(file.build_broker()?);
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
    // Recovery reads the store through its thread: keep it off the async workers.
    {
        let (storage, broker) = (Arc::clone(&storage), Arc::clone(&broker));
        tokio::task::spawn_blocking(move || storage.recover(&broker))
            .await
            .context("recovery task")?
            .context("recovering from the data directory")?;
    }

    let mut server_config = file.server_config()?;
    server_config.data_dir = Some(args.data_dir.clone());

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
        let amqps_addr = SocketAddr::new(args.bind, args.amqps_port);
        let tls_listener = tokio::net::TcpListener::bind(amqps_addr)
            .await
            .with_context(|| format!("binding AMQPS listener on {amqps_addr}"))?;
        let client_certificates = match (&tls.ca, tls.verify_peer) {
            (None, _) => "none",
            (Some(_), true) => "required",
            (Some(_), false) => "optional",
        };
        tracing::info!(
            amqps = %tls_listener.local_addr().unwrap_or(amqps_addr),
            client_certificates,
            "TLS listener ready"
        );
        listeners.push(pier_server::Listener::tls(tls_listener, acceptor));
    }
    pier_server::run_listeners(
        listeners,
        broker,
        registry,
        server_config,
        shutdown_signal(),
    )
    .await?;
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
