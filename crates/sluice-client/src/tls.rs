//! TLS to brokers with rustls on the pure-Rust RustCrypto provider (`rustls-rustcrypto`: no
//! ring, no aws-lc, no C). The broker's certificate is checked against the CA certificates the
//! caller gives (PEM), and its name against the host the client connects to (or a name set with
//! [`TlsConfig::server_name`]). A client certificate can be presented for mutual TLS.
//!
//! ```no_run
//! # async fn run() -> sluice_client::Result<()> {
//! use sluice_client::{Client, ClientConfig, TlsConfig};
//! let ca = std::fs::read("ca.pem").expect("CA certificate");
//! let mut config = ClientConfig::new(["broker.example.com:9093"]);
//! config.connection.tls = Some(TlsConfig::new(&ca)?);
//! let client = Client::connect(config).await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::error::{Error, Result};

/// How connections to brokers are encrypted and the brokers authenticated.
#[derive(Clone)]
pub struct TlsConfig {
    connector: TlsConnector,
    server_name: Option<String>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig").field("server_name", &self.server_name).finish_non_exhaustive()
    }
}

/// The crypto provider sluice uses: RustCrypto, pure Rust.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls_rustcrypto::provider())
}

fn config_error(reason: impl fmt::Display) -> Error {
    Error::TlsConfig { reason: reason.to_string() }
}

fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| config_error(format!("cannot read the {what} as PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(config_error(format!("the {what} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")));
    }
    Ok(certs)
}

impl TlsConfig {
    /// Trusts brokers whose certificates chain to one of the CA certificates in `ca_pem`.
    pub fn new(ca_pem: &[u8]) -> Result<Self> {
        Self::build(ca_pem, None)
    }

    /// Like [`TlsConfig::new`], also presenting a client certificate chain and its private key
    /// (PEM; PKCS#8, PKCS#1 or SEC1) for brokers that require mutual TLS.
    pub fn with_client_certificate(ca_pem: &[u8], cert_chain_pem: &[u8], key_pem: &[u8]) -> Result<Self> {
        Self::build(ca_pem, Some((cert_chain_pem, key_pem)))
    }

    fn build(ca_pem: &[u8], identity: Option<(&[u8], &[u8])>) -> Result<Self> {
        let mut roots = RootCertStore::empty();
        for cert in certificates(ca_pem, "CA file")? {
            roots.add(cert).map_err(|e| config_error(format!("a CA certificate is not usable: {e}")))?;
        }
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(config_error)?
            .with_root_certificates(roots);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => {
                let chain = certificates(chain, "client certificate file")?;
                let key = PrivateKeyDer::from_pem_slice(key)
                    .map_err(|e| config_error(format!("cannot read the client key as a PEM private key: {e}")))?;
                builder.with_client_auth_cert(chain, key).map_err(config_error)?
            }
        };
        Ok(Self::from_rustls(Arc::new(config)))
    }

    /// Uses a rustls configuration built by the caller (its crypto provider is the caller's
    /// choice).
    pub fn from_rustls(config: Arc<ClientConfig>) -> Self {
        Self { connector: TlsConnector::from(config), server_name: None }
    }

    /// Checks every broker's certificate against this name instead of the host connected to.
    #[must_use]
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Runs the TLS handshake over `stream`, connected to `broker` (`host:port`).
    pub(crate) async fn handshake(&self, broker: &str, stream: TcpStream) -> Result<TlsStream<TcpStream>> {
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => host_of(broker).to_owned(),
        };
        let server_name = ServerName::try_from(name.clone())
            .map_err(|e| config_error(format!("{name:?} is not a valid TLS server name: {e}")))?;
        self.connector
            .connect(server_name, stream)
            .await
            .map_err(|e| Error::Tls { broker: broker.to_owned(), reason: e.to_string() })
    }
}

/// The host part of `host:port` (`[v6]:port` too).
fn host_of(broker: &str) -> &str {
    let host = broker.rsplit_once(':').map_or(broker, |(host, _)| host);
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_is_the_part_before_the_port() {
        assert_eq!(host_of("broker.example.com:9093"), "broker.example.com");
        assert_eq!(host_of("127.0.0.1:9093"), "127.0.0.1");
        assert_eq!(host_of("[::1]:9093"), "::1");
    }

    #[test]
    fn a_ca_file_without_certificates_is_a_clear_error() {
        let error = TlsConfig::new(b"not a certificate").unwrap_err();
        assert!(error.to_string().contains("no PEM certificate"), "{error}");
    }
}
