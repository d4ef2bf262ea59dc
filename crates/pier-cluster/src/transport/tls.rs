//! Mutual TLS on the cluster port. The rustls configurations are made by the binary from the
//! node's `[tls]` section (`pier_server::tls::cluster_configs`); this module only runs the
//! handshakes, so the transport does not read PEM files or know about certificate stores.

use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::link::{ReadHalf, WriteHalf};
use super::TransportError;

/// The node's TLS for peer connections: how it accepts, and how it dials.
#[derive(Clone)]
pub struct ClusterTls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterTls")
    }
}

impl ClusterTls {
    /// `server` must require client certificates and `client` must present one: both sides
    /// of a cluster connection are nodes.
    pub fn new(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Self {
        ClusterTls {
            acceptor: TlsAcceptor::from(server),
            connector: TlsConnector::from(client),
        }
    }

    pub(super) async fn accept(
        &self,
        stream: TcpStream,
    ) -> Result<(ReadHalf, WriteHalf), TransportError> {
        let tls = self
            .acceptor
            .accept(stream)
            .await
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        let (read, write) = tokio::io::split(tls);
        Ok((Box::new(read), Box::new(write)))
    }

    /// Handshakes as a client of the node at `addr` (`host:port`), whose certificate must be
    /// for `host`.
    pub(super) async fn connect(
        &self,
        addr: &str,
        stream: TcpStream,
    ) -> Result<(ReadHalf, WriteHalf), TransportError> {
        let name = server_name(addr).ok_or_else(|| TransportError::Unreachable {
            addr: addr.to_owned(),
            reason: "no host name or address to verify the peer's certificate against".into(),
        })?;
        let tls = self.connector.connect(name, stream).await.map_err(|e| {
            TransportError::Unreachable {
                addr: addr.to_owned(),
                reason: format!("TLS: {e}"),
            }
        })?;
        let (read, write) = tokio::io::split(tls);
        Ok((Box::new(read), Box::new(write)))
    }
}

/// The host of `host:port` (`[v6]:port` too) as a TLS server name.
fn server_name(addr: &str) -> Option<ServerName<'static>> {
    let host = match addr.rsplit_once(':') {
        Some((h, port)) if port.parse::<u16>().is_ok() => h,
        _ => addr,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_from_peer_addresses() {
        let n = |a: &str| server_name(a).map(|n| n.to_str().into_owned());
        assert_eq!(n("node1.example:25672").as_deref(), Some("node1.example"));
        assert_eq!(n("10.0.0.2:25672").as_deref(), Some("10.0.0.2"));
        assert_eq!(n("[::1]:25672").as_deref(), Some("::1"));
        assert_eq!(n("localhost").as_deref(), Some("localhost"));
        assert_eq!(n(":25672"), None);
    }
}
