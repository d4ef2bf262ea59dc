//! AMQP over TLS: certificates made at test time with rcgen (a CA, a server certificate for
//! localhost, client certificates), a `pier` process with a `[tls]` config, and a minimal AMQP
//! client on tokio-rustls speaking frames with pier-wire.
//!
//! ```text
//!  rcgen CA ─┬─ server cert (localhost) ──► pier --amqps-port  [tls] cert/key/ca/verify_peer
//!            └─ client cert (CN=tls-user) ─► TlsConnector ─► AMQP handshake (PLAIN | EXTERNAL)
//!                                                        └► stream protocol (--stream-tls-port)
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::free_port;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use pier_stream_wire::{
    ClientCommand, Create, Metadata, Open, PeerProperties, ResponseCode, SaslAuthenticate,
    SaslHandshake, ServerCommand,
};
use pier_wire::{
    decode_frame, encode_method_frame, ChannelOpen, ConnectionOpen, ConnectionStartOk,
    ConnectionTuneOk, FieldTable, Frame, LongString, Method, QueueDeclare, ShortString,
    PROTOCOL_HEADER,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName,
};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

struct Pki {
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

struct Issued {
    cert: CertificateDer<'static>,
    cert_pem: String,
    key: KeyPair,
}

impl Pki {
    fn new() -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Pier test CA");
        let ca = params.self_signed(&ca_key).unwrap();
        Pki { ca, ca_key }
    }

    fn issue(&self, cn: &str, names: &[&str]) -> Issued {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Pier tests");
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        Issued {
            cert: cert.der().clone(),
            cert_pem: cert.pem(),
            key,
        }
    }
}

struct Pier {
    child: Child,
    amqp_port: u16,
    amqps_port: u16,
    http_port: u16,
    stomp_tls_port: u16,
    stream_tls_port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Pier {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Pier {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pier.log")).unwrap_or_default()
    }
}

/// Starts pier with the server certificate, the CA and `verify_peer` in a `[tls]` section
/// (relative paths, resolved against the config file's directory).
fn start_pier(pki: &Pki, verify_peer: bool) -> Pier {
    start_pier_with(pki, verify_peer, false)
}

fn start_pier_with(pki: &Pki, verify_peer: bool, https: bool) -> Pier {
    let mut pier = spawn_pier(pki, verify_peer, https, &[]);
    wait_listening(&mut pier);
    pier
}

/// Starts pier as `start_pier_with` does, with `extra` arguments, without waiting for it.
fn spawn_pier(pki: &Pki, verify_peer: bool, https: bool, extra: &[String]) -> Pier {
    let dir = tempfile::tempdir().unwrap();
    let server = pki.issue("localhost", &["localhost", "127.0.0.1"]);
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write("server.pem", &server.cert_pem);
    write("server.key", &server.key.serialize_pem());
    write("ca.pem", &pki.ca.pem());
    write(
        "pier.toml",
        &format!(
            r#"
[[users]]
name = "tls-user"
password = "not-used-with-external"

[[permissions]]
user = "tls-user"
vhost = "/"

[tls]
cert = "server.pem"
key = "server.key"
ca = "ca.pem"
verify_peer = {verify_peer}
http = {https}
"#
        ),
    );
    let amqp_port = free_port();
    let amqps_port = free_port();
    let http_port = free_port();
    let stomp_tls_port = free_port();
    let stream_tls_port = free_port();
    let log = std::fs::File::create(dir.path().join("pier.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_pier"))
        .args(["server", "--bind", "127.0.0.1"])
        .args(["--amqp-port", &amqp_port.to_string()])
        .args(["--amqps-port", &amqps_port.to_string()])
        .args(["--http-port", &http_port.to_string()])
        .args(["--stream-port", "0"])
        .args(["--stream-tls-port", &stream_tls_port.to_string()])
        .args(["--stomp-port", "0", "--web-stomp-port", "0"])
        .args(["--stomp-tls-port", &stomp_tls_port.to_string()])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(dir.path().join("pier.toml"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    Pier {
        child,
        amqp_port,
        amqps_port,
        http_port,
        stomp_tls_port,
        stream_tls_port,
        dir,
    }
}

/// Waits until every listener a test uses is open: they open one after the other, so the
/// AMQPS port alone does not say the STOMP or stream TLS port is (a test once found the STOMP
/// TLS port still closed).
fn wait_listening(pier: &mut Pier) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let ports = [
        ("amqps", pier.amqps_port),
        ("http", pier.http_port),
        ("stomp tls", pier.stomp_tls_port),
        ("stream tls", pier.stream_tls_port),
    ];
    for (name, port) in ports {
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = pier.child.try_wait() {
                panic!("pier exited with {status}:\n{}", pier.log());
            }
            assert!(
                Instant::now() < deadline,
                "no {name} listener:\n{}",
                pier.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn client_config(pki: &Pki, client: Option<&Issued>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some(c) => builder
            .with_client_auth_cert(
                vec![c.cert.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c.key.serialize_der())),
            )
            .unwrap(),
    };
    Arc::new(config)
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn tls_connect(port: u16, config: Arc<ClientConfig>) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut tls = TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    // With TLS 1.3 a refused client certificate shows up on the first read or write.
    tls.write_all(&PROTOCOL_HEADER).await?;
    Ok(tls)
}

/// A minimal AMQP client over any stream.
struct Amqp<S> {
    io: S,
    buf: BytesMut,
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Amqp<S> {
    async fn send(&mut self, channel: u16, method: Method) {
        let mut out = BytesMut::new();
        encode_method_frame(&mut out, channel, &method);
        self.io.write_all(&out).await.unwrap();
    }

    /// The next method, or None when the peer closed the stream.
    async fn method(&mut self) -> Option<Method> {
        let read = async {
            loop {
                if let Some(frame) = decode_frame(&mut self.buf, 131_072).unwrap() {
                    match frame {
                        Frame::Method { method, .. } => return Some(method),
                        _ => continue,
                    }
                }
                match self.io.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("no reply within 10 s")
    }

    /// start → start-ok(mechanism) → tune → open; returns the mechanisms offered and the
    /// method answering connection.open (or the close refusing the login).
    async fn login(&mut self, mechanism: &str, response: &[u8]) -> (String, Option<Method>) {
        let Some(Method::ConnectionStart(start)) = self.method().await else {
            panic!("no connection.start");
        };
        let mechanisms = String::from_utf8_lossy(start.mechanisms.as_bytes()).into_owned();
        let mut caps = FieldTable::new();
        caps.insert(
            "authentication_failure_close",
            pier_wire::FieldValue::Bool(true),
        );
        let mut props = FieldTable::new();
        props.insert("capabilities", pier_wire::FieldValue::Table(caps));
        self.send(
            0,
            Method::ConnectionStartOk(ConnectionStartOk {
                client_properties: props,
                mechanism: ShortString::from(mechanism),
                response: LongString::from(response.to_vec()),
                locale: ShortString::from("en_US"),
            }),
        )
        .await;
        match self.method().await {
            Some(Method::ConnectionTune(tune)) => {
                self.send(
                    0,
                    Method::ConnectionTuneOk(ConnectionTuneOk {
                        channel_max: tune.channel_max,
                        frame_max: tune.frame_max,
                        heartbeat: 0,
                    }),
                )
                .await;
            }
            other => return (mechanisms, other),
        }
        self.send(
            0,
            Method::ConnectionOpen(ConnectionOpen {
                virtual_host: ShortString::from("/"),
                capabilities: ShortString::default(),
                insist: false,
            }),
        )
        .await;
        (mechanisms, self.method().await)
    }

    /// A round trip on a channel: channel.open, then a server-named queue.
    async fn declare_queue(&mut self) {
        self.send(
            1,
            Method::ChannelOpen(ChannelOpen {
                out_of_band: ShortString::default(),
            }),
        )
        .await;
        assert!(matches!(
            self.method().await,
            Some(Method::ChannelOpenOk(_))
        ));
        self.send(
            1,
            Method::QueueDeclare(QueueDeclare {
                ticket: 0,
                queue: ShortString::default(),
                passive: false,
                durable: false,
                exclusive: true,
                auto_delete: false,
                nowait: false,
                arguments: FieldTable::new(),
            }),
        )
        .await;
        match self.method().await {
            Some(Method::QueueDeclareOk(ok)) => assert!(ok.queue.starts_with("amq.gen-")),
            other => panic!("expected queue.declare-ok, got {other:?}"),
        }
    }
}

fn plain(user: &str, pass: &str) -> Vec<u8> {
    format!("\0{user}\0{pass}").into_bytes()
}

#[tokio::test]
async fn plain_login_over_tls_and_tcp_side_by_side() {
    let pki = Pki::new();
    let pier = start_pier(&pki, false);
    // No client certificate (optional when verify_peer is false): PLAIN as usual.
    let tls = tls_connect(pier.amqps_port, client_config(&pki, None))
        .await
        .unwrap();
    let mut c = Amqp {
        io: tls,
        buf: BytesMut::new(),
    };
    let (mechanisms, opened) = c.login("PLAIN", &plain("guest", "guest")).await;
    assert_eq!(
        mechanisms, "PLAIN AMQPLAIN",
        "no EXTERNAL without a certificate"
    );
    assert!(
        matches!(opened, Some(Method::ConnectionOpenOk(_))),
        "{opened:?}"
    );
    c.declare_queue().await;
    // The plain AMQP port serves alongside.
    let mut tcp = TcpStream::connect(("127.0.0.1", pier.amqp_port))
        .await
        .unwrap();
    tcp.write_all(&PROTOCOL_HEADER).await.unwrap();
    let mut c = Amqp {
        io: tcp,
        buf: BytesMut::new(),
    };
    let (_, opened) = c.login("PLAIN", &plain("guest", "guest")).await;
    assert!(matches!(opened, Some(Method::ConnectionOpenOk(_))));
    // Management tells them apart: `ssl` and the TLS session on the TLS one only.
    let tls_conn = listed_connection(&pier, pier.amqps_port);
    assert_eq!(tls_conn["ssl"], true, "{tls_conn}");
    assert_eq!(tls_conn["ssl_protocol"], "tlsv1.3", "{tls_conn}");
    assert!(
        tls_conn["ssl_cipher"]
            .as_str()
            .is_some_and(|c| c.starts_with("TLS13_")),
        "{tls_conn}"
    );
    assert!(tls_conn["peer_cert_subject"].is_null(), "{tls_conn}");
    let tcp_conn = listed_connection(&pier, pier.amqp_port);
    assert_eq!(tcp_conn["ssl"], false, "{tcp_conn}");
    assert!(tcp_conn.get("ssl_protocol").is_none(), "{tcp_conn}");
}

/// The connection management lists on local port `port` (waiting up to 5 s for it).
fn listed_connection(pier: &Pier, port: u16) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = api_get(pier, "/connections");
        let found = body
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["port"] == port).cloned());
        match found {
            Some(c) => return c,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            None => panic!("no connection on port {port} in /api/connections ({status}): {body}"),
        }
    }
}

#[tokio::test]
async fn stomp_over_tls() {
    use tokio::io::AsyncReadExt;
    let pki = Pki::new();
    let pier = start_pier(&pki, false);
    let tcp = TcpStream::connect(("127.0.0.1", pier.stomp_tls_port))
        .await
        .unwrap();
    let mut tls = TlsConnector::from(client_config(&pki, None))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\0")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.contains(&0) {
        let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("CONNECTED\n"), "{text}");
    assert!(text.contains("version:1.2\n"), "{text}");
    let conn = listed_connection(&pier, pier.stomp_tls_port);
    assert_eq!(
        (&conn["protocol"], &conn["ssl"], &conn["ssl_protocol"]),
        (
            &serde_json::json!("STOMP 1.2"),
            &serde_json::json!(true),
            &serde_json::json!("tlsv1.3")
        ),
        "{conn}"
    );
}

#[tokio::test]
async fn external_login_with_a_client_certificate() {
    let pki = Pki::new();
    let pier = start_pier(&pki, true);
    let client = pki.issue("tls-user", &[]);
    let tls = tls_connect(pier.amqps_port, client_config(&pki, Some(&client)))
        .await
        .unwrap();
    let mut c = Amqp {
        io: tls,
        buf: BytesMut::new(),
    };
    let (mechanisms, opened) = c.login("EXTERNAL", b"").await;
    assert_eq!(mechanisms, "PLAIN AMQPLAIN EXTERNAL");
    assert!(
        matches!(opened, Some(Method::ConnectionOpenOk(_))),
        "{opened:?}"
    );
    c.declare_queue().await;
    assert!(pier.log().contains("user=tls-user"), "{}", pier.log());

    // A certificate whose CN names no user is refused like a wrong password.
    let stranger = pki.issue("nobody-here", &[]);
    let tls = tls_connect(pier.amqps_port, client_config(&pki, Some(&stranger)))
        .await
        .unwrap();
    let mut c = Amqp {
        io: tls,
        buf: BytesMut::new(),
    };
    let (_, refused) = c.login("EXTERNAL", b"").await;
    match refused {
        Some(Method::ConnectionClose(close)) => {
            assert_eq!(close.reply_code, 403);
            assert_eq!(
                close.reply_text.as_str(),
                "ACCESS_REFUSED - Login was refused using authentication mechanism EXTERNAL. For details see the broker logfile."
            );
        }
        other => panic!("expected connection.close 403, got {other:?}"),
    }
}

/// A minimal stream-protocol client over TLS.
struct Stream {
    io: Tls,
    rx: BytesMut,
}
impl Stream {
    async fn connect(port: u16, config: Arc<ClientConfig>) -> Stream {
        let deadline = Instant::now() + Duration::from_secs(15);
        let tcp = loop {
            match TcpStream::connect(("127.0.0.1", port)).await {
                Ok(t) => break t,
                Err(e) => {
                    assert!(Instant::now() < deadline, "no stream TLS listener: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        let io = TlsConnector::from(config)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        Stream {
            io,
            rx: BytesMut::new(),
        }
    }
    async fn send(&mut self, c: ClientCommand) {
        let mut out = BytesMut::new();
        c.encode(&mut out).unwrap();
        self.io.write_all(&out).await.unwrap();
    }
    async fn reply(&mut self) -> ServerCommand {
        let read = async {
            loop {
                if let Some(c) = ServerCommand::decode_from(&mut self.rx, 1 << 20).unwrap() {
                    if !matches!(c, ServerCommand::Heartbeat) {
                        return c;
                    }
                    continue;
                }
                let n = self.io.read_buf(&mut self.rx).await.unwrap();
                assert!(n > 0, "the server closed the connection");
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .unwrap()
    }
    /// Peer properties and the SASL handshake: the mechanisms offered.
    async fn hello(&mut self) -> Vec<String> {
        self.send(ClientCommand::PeerProperties(PeerProperties {
            correlation_id: 1,
            properties: vec![("product".into(), "pier-tls-test".into())],
        }))
        .await;
        assert!(matches!(
            self.reply().await,
            ServerCommand::PeerPropertiesResponse(_)
        ));
        self.send(ClientCommand::SaslHandshake(SaslHandshake {
            correlation_id: 2,
        }))
        .await;
        let ServerCommand::SaslHandshakeResponse(r) = self.reply().await else {
            panic!("no handshake response");
        };
        r.mechanisms
    }
    async fn external(&mut self) -> ResponseCode {
        self.send(ClientCommand::SaslAuthenticate(SaslAuthenticate {
            correlation_id: 3,
            mechanism: "EXTERNAL".into(),
            data: bytes::Bytes::new(),
        }))
        .await;
        let ServerCommand::SaslAuthenticateResponse(r) = self.reply().await else {
            panic!("no authenticate response");
        };
        r.code
    }
    /// Hello, PLAIN login, tune and open of vhost `/`.
    async fn open_plain(&mut self, user: &str, pass: &str) {
        self.hello().await;
        self.send(ClientCommand::SaslAuthenticate(SaslAuthenticate {
            correlation_id: 3,
            mechanism: "PLAIN".into(),
            data: plain(user, pass).into(),
        }))
        .await;
        let ServerCommand::SaslAuthenticateResponse(r) = self.reply().await else {
            panic!("no authenticate response");
        };
        assert_eq!(r.code, ResponseCode::Ok);
        let ServerCommand::Tune(t) = self.reply().await else {
            panic!("no tune");
        };
        self.send(ClientCommand::Tune(t)).await;
        self.send(ClientCommand::Open(Open {
            correlation_id: 4,
            virtual_host: "/".into(),
        }))
        .await;
        let ServerCommand::OpenResponse(o) = self.reply().await else {
            panic!("no open response");
        };
        assert_eq!(o.code, ResponseCode::Ok);
    }
}

/// The stream protocol's TLS port: SASL EXTERNAL with a client certificate, as RabbitMQ's
/// stream plugin offers it (only to a client that presented a certificate).
#[tokio::test]
async fn stream_protocol_external_login_with_a_client_certificate() {
    let pki = Pki::new();
    let pier = start_pier(&pki, false);
    let client = pki.issue("tls-user", &[]);
    let mut c = Stream::connect(pier.stream_tls_port, client_config(&pki, Some(&client))).await;
    assert_eq!(c.hello().await, ["PLAIN", "EXTERNAL"]);
    assert_eq!(c.external().await, ResponseCode::Ok);
    let ServerCommand::Tune(t) = c.reply().await else {
        panic!("no tune");
    };
    c.send(ClientCommand::Tune(t)).await;
    c.send(ClientCommand::Open(Open {
        correlation_id: 4,
        virtual_host: "/".into(),
    }))
    .await;
    let ServerCommand::OpenResponse(o) = c.reply().await else {
        panic!("no open response");
    };
    assert_eq!(o.code, ResponseCode::Ok);
    // The certificate's user works with its permissions: it creates a stream.
    c.send(ClientCommand::Create(Create {
        correlation_id: 5,
        stream: "tls-stream".into(),
        arguments: vec![],
    }))
    .await;
    let ServerCommand::CreateResponse(r) = c.reply().await else {
        panic!("no create response");
    };
    assert_eq!(r.code, ResponseCode::Ok);
    // Management shows the stream connection over TLS.
    let conn = listed_connection(&pier, pier.stream_tls_port);
    assert_eq!(
        (&conn["protocol"], &conn["ssl"], &conn["ssl_protocol"]),
        (
            &serde_json::json!("stream"),
            &serde_json::json!(true),
            &serde_json::json!("tlsv1.3")
        ),
        "{conn}"
    );

    // No certificate: EXTERNAL is neither offered nor accepted.
    let mut c = Stream::connect(pier.stream_tls_port, client_config(&pki, None)).await;
    assert_eq!(c.hello().await, ["PLAIN"]);
    assert_eq!(c.external().await, ResponseCode::SaslMechanismNotSupported);
    // A certificate whose CN names no user is refused.
    let stranger = pki.issue("nobody-here", &[]);
    let mut c = Stream::connect(pier.stream_tls_port, client_config(&pki, Some(&stranger))).await;
    assert_eq!(c.hello().await, ["PLAIN", "EXTERNAL"]);
    assert_eq!(c.external().await, ResponseCode::AuthenticationFailure);
}

#[tokio::test]
async fn verify_peer_refuses_clients_without_a_trusted_certificate() {
    let pki = Pki::new();
    let pier = start_pier(&pki, true);
    // No certificate at all.
    let refused = async {
        let mut tls = tls_connect(pier.amqps_port, client_config(&pki, None)).await?;
        let mut b = [0u8; 64];
        match tls.read(&mut b).await? {
            0 => Err(std::io::Error::other("closed")),
            _ => Ok(()),
        }
    };
    assert!(
        refused.await.is_err(),
        "a client without a certificate got in"
    );
    // A certificate from another CA.
    let other = Pki::new();
    let foreign = other.issue("tls-user", &[]);
    let refused = async {
        let mut tls = tls_connect(pier.amqps_port, client_config(&pki, Some(&foreign))).await?;
        let mut b = [0u8; 64];
        match tls.read(&mut b).await? {
            0 => Err(std::io::Error::other("closed")),
            _ => Ok(()),
        }
    };
    assert!(
        refused.await.is_err(),
        "a certificate from an unknown CA got in"
    );
    // Plain TCP on the TLS port is not AMQP.
    let mut tcp = TcpStream::connect(("127.0.0.1", pier.amqps_port))
        .await
        .unwrap();
    tcp.write_all(&PROTOCOL_HEADER).await.unwrap();
    let mut b = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut b))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_ne!(&b[..n], &PROTOCOL_HEADER[..]);
    let log = pier.log();
    assert!(log.contains("TLS handshake failed"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn common_name_is_read_from_the_certificate() {
    let pki = Pki::new();
    let cert = pki.issue("svc-orders", &["svc.example"]);
    assert_eq!(
        pier_server::tls::subject_common_name(&cert.cert).as_deref(),
        Some("svc-orders")
    );
    assert_eq!(
        pier_server::tls::subject_common_name(pki.ca.der()).as_deref(),
        Some("Pier test CA")
    );
}

#[tokio::test]
async fn management_api_over_https() {
    let pki = Pki::new();
    let pier = start_pier_with(&pki, true, true);
    let tcp = TcpStream::connect(("127.0.0.1", pier.http_port))
        .await
        .unwrap();
    // No client certificate needed for the API (it uses basic auth).
    let mut tls = TlsConnector::from(client_config(&pki, None))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(
        b"GET /api/overview HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"management_version\""), "{text}");
    // Plain HTTP on that port gets no answer.
    let mut tcp = TcpStream::connect(("127.0.0.1", pier.http_port))
        .await
        .unwrap();
    tcp.write_all(b"GET /api/overview HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut b = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut b)).await;
    assert!(!String::from_utf8_lossy(&b).contains("200 OK"));
}

/// GET on a node's management API as guest: (status, JSON body).
fn api_get(pier: &Pier, path: &str) -> (u16, serde_json::Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let Ok(resp) = agent
        .get(format!("http://127.0.0.1:{}/api{path}", pier.http_port))
        .header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")
        .call()
    else {
        return (0, serde_json::Value::Null);
    };
    let status = resp.status().as_u16();
    let body = resp.into_body().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&body).unwrap_or_default())
}

/// Three nodes with a `[tls]` section form a cluster whose port speaks mutual TLS: they see
/// each other running and share definitions; the cluster port completes a TLS handshake only
/// for a client certificate of the cluster's CA (ALPN `pier-cluster`), and refuses one of
/// another CA, and one without a certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_port_speaks_mutual_tls() {
    let pki = Pki::new();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let peers: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let peers = peers.join(",");
    let mut nodes: Vec<Pier> = (0..3)
        .map(|i| {
            let extra = [
                "--node-name".to_owned(),
                format!("pier@tls{i}"),
                "--cluster-port".to_owned(),
                ports[i].to_string(),
                "--peers".to_owned(),
                peers.clone(),
            ];
            spawn_pier(&pki, false, false, &extra)
        })
        .collect();
    for n in &mut nodes {
        wait_listening(n);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = api_get(&nodes[0], "/nodes");
        let running = body
            .as_array()
            .map_or(0, |a| a.iter().filter(|n| n["running"] == true).count());
        if status == 200 && running == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster did not form over TLS ({status} {body}):\n{}\n{}",
            nodes[0].log(),
            nodes[1].log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A definition made on one node is applied on another (Raft over the TLS links).
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let put = agent
        .put(format!(
            "http://127.0.0.1:{}/api/queues/%2F/over-tls",
            nodes[0].http_port
        ))
        .header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")
        .header("Content-Type", "application/json")
        .send(r#"{"durable": true}"#)
        .unwrap();
    let put_status = put.status();
    assert!(
        put_status.is_success(),
        "{put_status}: {}\n{}\n{}",
        put.into_body().read_to_string().unwrap_or_default(),
        nodes[0].log(),
        nodes[1].log()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while api_get(&nodes[2], "/queues/%2F/over-tls").0 != 200 {
        assert!(Instant::now() < deadline, "node 3 never saw the queue");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A stream homed on node 2: a stream client connected to node 1's TLS port is told to
    // reach node 2 at its TLS port (not its plain one, which these nodes do not even open).
    let put = agent
        .put(format!(
            "http://127.0.0.1:{}/api/queues/%2F/tls-homed-stream",
            nodes[1].http_port
        ))
        .header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")
        .header("Content-Type", "application/json")
        .send(r#"{"durable": true, "arguments": {"x-queue-type": "stream"}}"#)
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    let mut c = Stream::connect(nodes[0].stream_tls_port, client_config(&pki, None)).await;
    c.open_plain("guest", "guest").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        c.send(ClientCommand::Metadata(Metadata {
            correlation_id: 7,
            streams: vec!["tls-homed-stream".into()],
        }))
        .await;
        let ServerCommand::MetadataResponse(m) = c.reply().await else {
            panic!("no metadata response");
        };
        let leader = m
            .streams
            .first()
            .filter(|s| s.code == ResponseCode::Ok)
            .and_then(|s| m.brokers.iter().find(|b| b.reference == s.leader));
        // Node 2's endpoint arrives with its pongs; until then the stream may look down.
        if let Some(b) = leader {
            assert_eq!(
                (b.host.as_str(), b.port),
                ("127.0.0.1", u32::from(nodes[1].stream_tls_port)),
                "{m:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no leader in {m:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The cluster port itself: mutual TLS with the cluster's CA, nothing else.
    let with_alpn = |config: Arc<ClientConfig>| {
        let mut c = (*config).clone();
        c.alpn_protocols = vec![b"pier-cluster".to_vec()];
        Arc::new(c)
    };
    let dial = |config: Arc<ClientConfig>| {
        let port = ports[0];
        async move {
            let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let mut tls = TlsConnector::from(config)
                .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
                .await?;
            // TLS 1.3: a refused client certificate shows up as an alert on the first read;
            // an accepted one gets nothing until the node's hello deadline.
            let mut b = [0u8; 16];
            match tokio::time::timeout(Duration::from_millis(500), tls.read(&mut b)).await {
                Ok(Err(e)) => Err(e),
                _ => Ok(tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)),
            }
        }
    };
    let node = pki.issue("pier@other", &["localhost", "127.0.0.1"]);
    let alpn = dial(with_alpn(client_config(&pki, Some(&node))))
        .await
        .expect("a certificate of the cluster's CA is accepted");
    assert_eq!(alpn.as_deref(), Some(&b"pier-cluster"[..]));
    let stranger_pki = Pki::new();
    let stranger = stranger_pki.issue("pier@stranger", &["localhost", "127.0.0.1"]);
    // The stranger trusts the cluster's CA, so only the node's check can refuse it.
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca.der().clone()).unwrap();
    let stranger_config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![stranger.cert.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(stranger.key.serialize_der())),
            )
            .unwrap();
    let err = dial(with_alpn(Arc::new(stranger_config)))
        .await
        .expect_err("a certificate of another CA is refused");
    assert!(err.to_string().contains("alert"), "{err}");
    let err = dial(with_alpn(client_config(&pki, None)))
        .await
        .expect_err("no client certificate is refused");
    assert!(err.to_string().contains("alert"), "{err}");
}
