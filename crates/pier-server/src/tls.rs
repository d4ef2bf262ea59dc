//! TLS for AMQP (`amqps`) with rustls: the server's certificate chain and key from PEM files,
//! optionally a CA bundle to verify client certificates (required with `verify_peer`, else
//! checked when offered). A verified client certificate's subject CN is the user name for SASL
//! EXTERNAL.
//!
//! ```text
//!  TcpListener ─accept─► TlsAcceptor::accept (within the handshake timeout) ─► AMQP as on TCP
//!                                 └─ peer certificate ─► subject CN ─► SASL EXTERNAL user
//! ```

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore};
pub use tokio_rustls::server::TlsStream;
pub use tokio_rustls::TlsAcceptor;

/// Where the TLS material is and how clients are verified (the `[tls]` config section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM file with the server's certificate chain (leaf first).
    pub cert: PathBuf,
    /// PEM file with the server's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM file with the CA certificates client certificates are verified against; none: no
    /// client certificates.
    pub ca: Option<PathBuf>,
    /// With `ca`: a client must present a valid certificate (RabbitMQ's `verify_peer` with
    /// `fail_if_no_peer_cert`); without it, a certificate is verified only if offered.
    pub verify_peer: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Pem { path: PathBuf, what: String },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verification: {0}")]
    Verifier(String),
    #[error(
        "TLS between cluster nodes needs [tls] ca: the CA that signed every node's certificate \
         (nodes verify each other with it)"
    )]
    ClusterNeedsCa,
}

fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.to_owned(),
        source,
    })
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(path)?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut BufReader::new(&pem[..])).collect();
    let certs = certs.map_err(|e| TlsError::Pem {
        path: path.to_owned(),
        what: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            what: "no certificate found".to_owned(),
        });
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_pem(path)?;
    rustls_pemfile::private_key(&mut BufReader::new(&pem[..]))
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            what: e.to_string(),
        })?
        .ok_or_else(|| TlsError::Pem {
            path: path.to_owned(),
            what: "no private key found".to_owned(),
        })
}

/// The rustls server configuration these settings describe.
pub fn server_config(settings: &TlsSettings) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    let builder = match &settings.ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca)? {
                roots.add(cert)?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if settings.verify_peer {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config =
        builder.with_single_cert(certificates(&settings.cert)?, private_key(&settings.key)?)?;
    config.alpn_protocols = vec![b"amqp".to_vec()];
    Ok(Arc::new(config))
}

/// A TLS acceptor for `settings`.
pub fn acceptor(settings: &TlsSettings) -> Result<TlsAcceptor, TlsError> {
    Ok(TlsAcceptor::from(server_config(settings)?))
}

/// Mutual TLS between cluster nodes, from the node's `[tls]` section: as server and as
/// client a node presents `cert`, and it verifies the peer's certificate against `ca` (which
/// is required: both ends of a cluster connection are nodes, so both are always verified,
/// whatever `verify_peer` says for clients). Returns (accepting, dialling).
pub fn cluster_configs(
    settings: &TlsSettings,
) -> Result<(Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>), TlsError> {
    let ca = settings.ca.as_ref().ok_or(TlsError::ClusterNeedsCa)?;
    let mut roots = RootCertStore::empty();
    for cert in certificates(ca)? {
        roots.add(cert)?;
    }
    let roots = Arc::new(roots);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let alpn = vec![b"pier-cluster".to_vec()];
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certificates(&settings.cert)?, private_key(&settings.key)?)?;
    server.alpn_protocols.clone_from(&alpn);
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(certificates(&settings.cert)?, private_key(&settings.key)?)?;
    client.alpn_protocols = alpn;
    Ok((Arc::new(server), Arc::new(client)))
}

/// A TLS acceptor for the management HTTP API: the same certificate, no client certificates
/// (the API authenticates with HTTP basic auth), HTTP/1.1.
pub fn http_acceptor(settings: &TlsSettings) -> Result<TlsAcceptor, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certificates(&settings.cert)?, private_key(&settings.key)?)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The TLS session of an accepted server connection (its protocol version and cipher suite).
pub fn session_info(conn: &rustls::ServerConnection) -> crate::registry::TlsInfo {
    let protocol = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "tlsv1.3".to_owned(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "tlsv1.2".to_owned(),
        Some(other) => format!("{other:?}").to_lowercase(),
        None => String::new(),
    };
    let cipher = conn
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_default();
    crate::registry::TlsInfo { protocol, cipher }
}

/// The subject common name of a DER certificate (the first CN, as RabbitMQ's
/// `ssl_cert_login_from = common_name`), if it has one that is a string.
pub fn subject_common_name(cert_der: &[u8]) -> Option<String> {
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const OID: u8 = 0x06;
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    let (tag, cert, _) = der_tlv(cert_der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, mut tbs, _) = der_tlv(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    // [0] version (optional), serialNumber, signature, issuer, validity, subject
    let (tag, _, rest) = der_tlv(tbs)?;
    if tag == 0xA0 {
        tbs = rest;
        tbs = der_tlv(tbs)?.2; // serialNumber
    } else {
        tbs = rest; // that was the serialNumber
    }
    for _ in 0..3 {
        tbs = der_tlv(tbs)?.2; // signature, issuer, validity
    }
    let (tag, mut subject, _) = der_tlv(tbs)?;
    if tag != SEQUENCE {
        return None;
    }
    while !subject.is_empty() {
        let (tag, mut rdn, rest) = der_tlv(subject)?;
        subject = rest;
        if tag != SET {
            return None;
        }
        while !rdn.is_empty() {
            let (tag, attr, rest) = der_tlv(rdn)?;
            rdn = rest;
            if tag != SEQUENCE {
                return None;
            }
            let (tag, oid, value) = der_tlv(attr)?;
            if tag == OID && oid == CN {
                let (vtag, v, _) = der_tlv(value)?;
                return match vtag {
                    // UTF8String, PrintableString, IA5String, TeletexString (as Latin-1)
                    0x0C | 0x13 | 0x16 => std::str::from_utf8(v).ok().map(str::to_owned),
                    0x14 => Some(v.iter().map(|&b| char::from(b)).collect()),
                    // BMPString: UCS-2 big endian
                    0x1E => {
                        let units: Vec<u16> = v
                            .chunks_exact(2)
                            .map(|c| u16::from_be_bytes([c[0], c[1]]))
                            .collect();
                        String::from_utf16(&units).ok()
                    }
                    _ => None,
                };
            }
        }
    }
    None
}

/// One DER TLV: (tag, contents, rest). Low tag numbers only (all that certificates use here).
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, after) = (rest.get(..n)?, rest.get(n..)?);
        rest = after;
        bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    Some((tag, rest.get(..len)?, rest.get(len..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths() {
        assert_eq!(
            der_tlv(&[0x04, 0x01, 0xAA]),
            Some((4, &[0xAA][..], &[][..]))
        );
        assert_eq!(
            der_tlv(&[0x04, 0x81, 0x01, 0xAA, 0xBB]).map(|t| t.2),
            Some(&[0xBB][..])
        );
        assert_eq!(der_tlv(&[0x04, 0x02, 0xAA]), None);
        assert_eq!(der_tlv(&[0x04, 0x85, 0, 0, 0, 0, 1]), None);
        assert_eq!(der_tlv(&[0x04]), None);
        assert_eq!(subject_common_name(b"not a certificate"), None);
        assert_eq!(subject_common_name(&[]), None);
    }
}
