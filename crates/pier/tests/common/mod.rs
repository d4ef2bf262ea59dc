//! Shared harness for Pier's black-box integration tests.
//!
//! Every test talks AMQP 0-9-1 to a broker through `lapin`, the same way a
//! real client would. By default each test starts its own `pier` process on
//! free loopback ports with a fresh temporary data directory and kills it when
//! the test ends. Set `PIER_TEST_AMQP_URL` (e.g.
//! `amqp://guest:guest@127.0.0.1:5673/%2F`) to run the very same tests against
//! an already running broker such as RabbitMQ, which is how the expectations
//! in these tests were validated.
//!
//! All resource names are unique per test run so that the suite can be run
//! repeatedly against a long-lived external broker.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

mod ports;

pub use ports::free_port;

use std::fs::File;
use std::future::Future;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::protocol::AMQPErrorKind;
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties, Consumer, ErrorKind};

/// Environment variable naming an external broker to test instead of `pier`.
pub const EXTERNAL_URL_ENV: &str = "PIER_TEST_AMQP_URL";

/// How long to wait for a freshly started broker to accept connections.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the broker to exit after SIGTERM before SIGKILL.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Default bound for a single expected event (a delivery, a reply, ...).
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait to be reasonably sure that something does NOT happen.
pub const QUIET_PERIOD: Duration = Duration::from_millis(400);

/// A broker under test: either a `pier` child process owned by this value or
/// an external broker given by [`EXTERNAL_URL_ENV`].
pub struct Broker {
    url: String,
    /// Management HTTP base URL (`http://127.0.0.1:PORT`), for a `pier` process.
    http_url: Option<String>,
    /// The stream protocol port of a `pier` process.
    stream_port: Option<u16>,
    process: Option<PierProcess>,
}

struct PierProcess {
    child: Child,
    // Keeps the data directory (and the log inside it) alive until drop.
    dir: tempfile::TempDir,
    log_path: PathBuf,
}

impl Broker {
    /// Start (or locate) the broker for one test.
    pub fn start() -> Broker {
        if let Ok(url) = std::env::var(EXTERNAL_URL_ENV) {
            if !url.trim().is_empty() {
                return Broker {
                    url: url.trim().to_owned(),
                    http_url: None,
                    stream_port: None,
                    process: None,
                };
            }
        }
        // The ports are picked free and then bound by the child: another test's process can
        // take one in between. That start fails at once with "Address already in use"; try
        // again with new ports.
        for _ in 0..4 {
            match Broker::start_process() {
                Ok(b) => return b,
                Err(log) if log.contains("Address already in use") => continue,
                Err(log) => panic!("{log}"),
            }
        }
        Broker::start_process().unwrap_or_else(|log| panic!("{log}"))
    }

    fn start_process() -> Result<Broker, String> {
        let dir = tempfile::Builder::new()
            .prefix("pier-it-")
            .tempdir()
            .expect("create temporary directory");
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&data_dir).expect("create data dir");
        let log_path = dir.path().join("broker.log");
        let log = File::create(&log_path).expect("create broker log file");
        let log_err = log.try_clone().expect("clone log file handle");

        let amqp_port = free_port();
        let mut http_port = free_port();
        while http_port == amqp_port {
            http_port = free_port();
        }
        let mut stream_port = free_port();
        while stream_port == amqp_port || stream_port == http_port {
            stream_port = free_port();
        }
        let child = Command::new(env!("CARGO_BIN_EXE_pier"))
            .arg("server")
            .arg("--amqp-port")
            .arg(amqp_port.to_string())
            .arg("--http-port")
            .arg(http_port.to_string())
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--stream-port")
            .arg(stream_port.to_string())
            .arg("--stream-advertised-host")
            .arg("127.0.0.1")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .expect("spawn the pier binary");
        let mut broker = Broker {
            url: format!("amqp://guest:guest@127.0.0.1:{amqp_port}/%2F"),
            http_url: Some(format!("http://127.0.0.1:{http_port}")),
            stream_port: Some(stream_port),
            process: Some(PierProcess {
                child,
                dir,
                log_path,
            }),
        };
        broker.wait_until_accepting(amqp_port)?;
        // The stream listener starts a moment after the AMQP one.
        broker.wait_until_accepting(stream_port)?;
        Ok(broker)
    }

    fn wait_until_accepting(&mut self, port: u16) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(process) = self.process.as_mut() {
                if let Ok(Some(status)) = process.child.try_wait() {
                    return Err(format!(
                        "pier exited during startup with {status}\n{}",
                        self.log_contents()
                    ));
                }
            }
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                panic!(
                    "pier did not accept connections on port {port} within {STARTUP_TIMEOUT:?}\n{}",
                    self.log_contents()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The stream protocol port of the `pier` process (`None` for an external broker).
    pub fn stream_port(&self) -> Option<u16> {
        self.stream_port
    }

    /// Whether the tests run against an external broker.
    pub fn is_external(&self) -> bool {
        self.process.is_none()
    }

    /// The AMQP URL of the broker (guest/guest on vhost `/`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The management HTTP base URL of a `pier` process (None for an external broker).
    pub fn http_url(&self) -> Option<&str> {
        self.http_url.as_deref()
    }

    /// The broker URL, parsed, for tests that alter credentials or vhost.
    pub fn uri(&self) -> AMQPUri {
        self.url.parse().expect("parse broker URL")
    }

    /// Open a connection as guest/guest on `/`.
    pub async fn connect(&self) -> Connection {
        tokio::time::timeout(
            STEP_TIMEOUT,
            Connection::connect(&self.url, ConnectionProperties::default()),
        )
        .await
        .expect("timed out connecting to the broker")
        .expect("connect to the broker")
    }

    /// Open a connection and one channel on it.
    pub async fn connect_channel(&self) -> (Connection, Channel) {
        let connection = self.connect().await;
        let channel = timed(connection.create_channel())
            .await
            .expect("create channel");
        (connection, channel)
    }

    /// The broker's combined stdout/stderr so far (empty for external brokers).
    pub fn log_contents(&self) -> String {
        match &self.process {
            Some(process) => match std::fs::read_to_string(&process.log_path) {
                Ok(text) => format!(
                    "----- pier log ({}) -----\n{text}----- end of pier log -----",
                    process.log_path.display()
                ),
                Err(error) => format!("(could not read pier log: {error})"),
            },
            None => String::new(),
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if std::thread::panicking() && self.process.is_some() {
            eprintln!("{}", self.log_contents());
        }
        if let Some(process) = self.process.as_mut() {
            // Polite shutdown first (SIGTERM), SIGKILL if it does not exit.
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(process.child.id().to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
            loop {
                match process.child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    _ => {
                        let _ = process.child.kill();
                        let _ = process.child.wait();
                        break;
                    }
                }
            }
        }
    }
}

/// A name that is unique across tests, processes and repeated runs.
/// `s` as one path segment of a management API URL (RFC 3986 unreserved bytes kept).
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b))
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("pier-it.{prefix}.{}.{nanos}.{n}", std::process::id())
}

/// Await `future` for at most [`STEP_TIMEOUT`], panicking on timeout.
pub async fn timed<F: Future>(future: F) -> F::Output {
    within(STEP_TIMEOUT, future).await
}

/// Await `future` for at most `limit`, panicking on timeout.
pub async fn within<F: Future>(limit: Duration, future: F) -> F::Output {
    match tokio::time::timeout(limit, future).await {
        Ok(output) => output,
        Err(_) => panic!("operation did not complete within {limit:?}"),
    }
}

/// Next delivery of `consumer`, panicking on timeout, error or cancellation.
pub async fn next_delivery(consumer: &mut Consumer) -> Delivery {
    match timed(consumer.next()).await {
        Some(Ok(delivery)) => delivery,
        Some(Err(error)) => panic!("consumer failed: {error}"),
        None => panic!("consumer was cancelled"),
    }
}

/// Assert that `consumer` gets nothing for [`QUIET_PERIOD`].
pub async fn assert_no_delivery(consumer: &mut Consumer) {
    if let Ok(item) = tokio::time::timeout(QUIET_PERIOD, consumer.next()).await {
        match item {
            Some(Ok(delivery)) => panic!(
                "unexpected delivery: tag {} body {:?}",
                delivery.delivery_tag,
                String::from_utf8_lossy(&delivery.data)
            ),
            Some(Err(error)) => panic!("consumer failed: {error}"),
            None => panic!("consumer was cancelled"),
        }
    }
}

/// The AMQP reply code and text of a protocol (channel or connection) error.
pub fn amqp_error(error: &lapin::Error) -> Option<(u16, String)> {
    match error.kind() {
        ErrorKind::ProtocolError(amqp) => {
            Some((amqp.get_id(), amqp.get_message().as_str().to_owned()))
        }
        _ => None,
    }
}

/// Whether `error` is a connection-level (hard) AMQP error.
pub fn is_hard_error(error: &lapin::Error) -> bool {
    matches!(error.kind(), ErrorKind::ProtocolError(amqp) if matches!(amqp.kind(), AMQPErrorKind::Hard(_)))
}

/// Assert that `error` is an AMQP protocol error with reply `code` whose text
/// starts with `text_prefix` (the reply text's symbolic name, e.g. `NOT_FOUND`).
#[track_caller]
pub fn assert_amqp_error(error: &lapin::Error, code: u16, text_prefix: &str) {
    match amqp_error(error) {
        Some((actual_code, text)) => {
            assert_eq!(actual_code, code, "unexpected reply code (text {text:?})");
            assert!(
                text.starts_with(text_prefix),
                "reply text {text:?} does not start with {text_prefix:?}"
            );
        }
        None => panic!("expected AMQP error {code} {text_prefix}, got: {error:?}"),
    }
}

/// Wait until `consumer` reports the error that closed its channel.
pub async fn consumer_error(consumer: &mut Consumer) -> lapin::Error {
    match timed(consumer.next()).await {
        Some(Ok(delivery)) => panic!(
            "expected the channel to be closed, got a delivery: {:?}",
            String::from_utf8_lossy(&delivery.data)
        ),
        Some(Err(error)) => error,
        None => panic!("consumer ended without reporting a channel error"),
    }
}
