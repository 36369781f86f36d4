//! TLS to brokers with rustls. The broker's certificate is checked against the CA certificates
//! the caller gives (PEM), or the public CAs ([`TlsConfig::public_roots`]), and its name against
//! the host the client connects to (or a name set with [`TlsConfig::server_name`]). A client
//! certificate can be presented for mutual TLS.
//!
//! The cryptography comes from the provider [`Crypto::chosen`] picks by the crate's features:
//! Graviola (default; pure Rust and formally verified assembly, x86_64 and aarch64), RustCrypto
//! (feature `rustcrypto`; pure Rust, any target) where Graviola is not built or the CPU lacks what
//! it needs, or AWS-LC (feature `aws-lc-rs`; C, for users who accept it).
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

/// A TLS crypto provider sluice can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Crypto {
    /// Graviola (feature `graviola`, the default): pure Rust and formally verified assembly
    /// (from s2n-bignum), built by rustc alone; x86_64 and aarch64.
    Graviola,
    /// RustCrypto (feature `rustcrypto`): pure Rust, any target.
    RustCrypto,
    /// AWS-LC (feature `aws-lc-rs`): C and assembly.
    AwsLc,
}

const GRAVIOLA_BUILT: bool = cfg!(all(feature = "graviola", any(target_arch = "x86_64", target_arch = "aarch64")));

impl Crypto {
    /// Every provider, in the order [`Crypto::chosen`] prefers them.
    pub const ALL: [Crypto; 3] = [Crypto::AwsLc, Crypto::Graviola, Crypto::RustCrypto];

    /// The provider TLS connections use: AWS-LC when its feature is on (a user who accepts C
    /// asked for it), else Graviola when built and this CPU has what it needs, else RustCrypto
    /// when built. Without any, the error names the CPU features missing or the features to build
    /// with.
    pub fn chosen() -> Result<Crypto> {
        Self::choose(&graviola_cpu_missing())
    }

    fn choose(cpu_missing: &[&str]) -> Result<Crypto> {
        if Crypto::AwsLc.built() {
            return Ok(Crypto::AwsLc);
        }
        if GRAVIOLA_BUILT && cpu_missing.is_empty() {
            return Ok(Crypto::Graviola);
        }
        if Crypto::RustCrypto.built() {
            return Ok(Crypto::RustCrypto);
        }
        let reason = if GRAVIOLA_BUILT {
            format!(
                "this CPU lacks {} that the Graviola crypto provider needs (x86_64 CPUs from about \
                 2013 on have them; aarch64 ones need AES, PMULL and SHA2); build sluice with the \
                 `rustcrypto` feature (pure Rust, any CPU) or `aws-lc-rs` (C) for TLS here",
                cpu_missing.join(", ")
            )
        } else {
            format!(
                "no TLS crypto provider is built for this target ({}): the default, Graviola, \
                 is for x86_64 and aarch64; build sluice with the `rustcrypto` feature (pure \
                 Rust, any target) or `aws-lc-rs` (C)",
                std::env::consts::ARCH
            )
        };
        Err(config_error(reason))
    }

    /// Whether this provider is compiled in.
    pub fn built(self) -> bool {
        match self {
            Crypto::Graviola => GRAVIOLA_BUILT,
            Crypto::RustCrypto => cfg!(feature = "rustcrypto"),
            Crypto::AwsLc => cfg!(feature = "aws-lc-rs"),
        }
    }

    /// Its name, as the README and error messages give it.
    pub fn name(self) -> &'static str {
        match self {
            Crypto::Graviola => "graviola",
            Crypto::RustCrypto => "rustcrypto",
            Crypto::AwsLc => "aws-lc-rs",
        }
    }

    /// The rustls provider; an error when it is not built, or (Graviola) this CPU cannot run it.
    pub fn provider(self) -> Result<Arc<CryptoProvider>> {
        let unbuilt = || {
            config_error(format!(
                "the {} crypto provider is not built in (enable the sluice feature `{}`)",
                self.name(),
                self.name()
            ))
        };
        match self {
            Crypto::Graviola => {
                let missing = graviola_cpu_missing();
                if !missing.is_empty() {
                    return Err(config_error(format!(
                        "this CPU lacks {} that the Graviola crypto provider needs",
                        missing.join(", ")
                    )));
                }
                graviola_provider().map(Arc::new).ok_or_else(unbuilt)
            }
            Crypto::RustCrypto => rustcrypto_provider().map(Arc::new).ok_or_else(unbuilt),
            Crypto::AwsLc => aws_lc_provider().map(Arc::new).ok_or_else(unbuilt),
        }
    }
}

impl fmt::Display for Crypto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The CPU features Graviola asserts (it panics without them) that this CPU lacks.
fn graviola_cpu_missing() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut missing = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        let have = [
            ("aes", std::arch::is_x86_feature_detected!("aes")),
            ("pclmulqdq", std::arch::is_x86_feature_detected!("pclmulqdq")),
            ("bmi1", std::arch::is_x86_feature_detected!("bmi1")),
            ("adx", std::arch::is_x86_feature_detected!("adx")),
            ("avx", std::arch::is_x86_feature_detected!("avx")),
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
        ];
        missing.extend(have.iter().filter(|(_, has)| !has).map(|(name, _)| *name));
    }
    #[cfg(target_arch = "aarch64")]
    {
        let have = [
            ("neon", std::arch::is_aarch64_feature_detected!("neon")),
            ("aes", std::arch::is_aarch64_feature_detected!("aes")),
            ("pmull", std::arch::is_aarch64_feature_detected!("pmull")),
            ("sha2", std::arch::is_aarch64_feature_detected!("sha2")),
        ];
        missing.extend(have.iter().filter(|(_, has)| !has).map(|(name, _)| *name));
    }
    missing
}

#[cfg(all(feature = "graviola", any(target_arch = "x86_64", target_arch = "aarch64")))]
fn graviola_provider() -> Option<CryptoProvider> {
    Some(rustls_graviola::default_provider())
}
#[cfg(not(all(feature = "graviola", any(target_arch = "x86_64", target_arch = "aarch64"))))]
fn graviola_provider() -> Option<CryptoProvider> {
    None
}

#[cfg(feature = "rustcrypto")]
fn rustcrypto_provider() -> Option<CryptoProvider> {
    Some(rustls_rustcrypto::provider())
}
#[cfg(not(feature = "rustcrypto"))]
fn rustcrypto_provider() -> Option<CryptoProvider> {
    None
}

#[cfg(feature = "aws-lc-rs")]
fn aws_lc_provider() -> Option<CryptoProvider> {
    Some(rustls::crypto::aws_lc_rs::default_provider())
}
#[cfg(not(feature = "aws-lc-rs"))]
fn aws_lc_provider() -> Option<CryptoProvider> {
    None
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

/// Which certificate authorities a client trusts.
#[derive(Debug, Clone, Copy)]
pub enum Trust<'a> {
    /// The CA certificates in this PEM text.
    Pem(&'a [u8]),
    /// The public certificate authorities browsers trust (Mozilla's list, built in), as managed
    /// Kafka services' certificates chain to.
    PublicRoots,
}

/// The client certificate chain and private key (PEM; PKCS#8, PKCS#1 or SEC1) presented for
/// mutual TLS.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    /// The certificate chain, the client's own certificate first.
    pub cert_chain_pem: &'a [u8],
    /// Its private key.
    pub key_pem: &'a [u8],
}

impl TlsConfig {
    /// Trusts brokers whose certificates chain to one of the CA certificates in `ca_pem`.
    pub fn new(ca_pem: &[u8]) -> Result<Self> {
        Self::build(Crypto::chosen()?, Trust::Pem(ca_pem), None)
    }

    /// Trusts brokers whose certificates chain to a public certificate authority
    /// ([`Trust::PublicRoots`]).
    pub fn public_roots() -> Result<Self> {
        Self::build(Crypto::chosen()?, Trust::PublicRoots, None)
    }

    /// Like [`TlsConfig::new`], also presenting a client certificate chain and its private key
    /// (PEM; PKCS#8, PKCS#1 or SEC1) for brokers that require mutual TLS.
    pub fn with_client_certificate(ca_pem: &[u8], cert_chain_pem: &[u8], key_pem: &[u8]) -> Result<Self> {
        let identity = Identity { cert_chain_pem, key_pem };
        Self::build(Crypto::chosen()?, Trust::Pem(ca_pem), Some(identity))
    }

    /// The general form: this crypto provider, these authorities, and a client identity or none.
    pub fn build(crypto: Crypto, trust: Trust<'_>, identity: Option<Identity<'_>>) -> Result<Self> {
        let roots = match trust {
            Trust::Pem(ca_pem) => {
                let mut roots = RootCertStore::empty();
                for cert in certificates(ca_pem, "CA file")? {
                    roots.add(cert).map_err(|e| config_error(format!("a CA certificate is not usable: {e}")))?;
                }
                roots
            }
            Trust::PublicRoots => RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() },
        };
        let builder = ClientConfig::builder_with_provider(crypto.provider()?)
            .with_safe_default_protocol_versions()
            .map_err(config_error)?
            .with_root_certificates(roots);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some(Identity { cert_chain_pem, key_pem }) => {
                let chain = certificates(cert_chain_pem, "client certificate file")?;
                let key = PrivateKeyDer::from_pem_slice(key_pem)
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
            .map_err(|e| Error::Tls { broker: broker.to_owned(), reason: handshake_failure(&e, &name) })
    }
}

/// What a failed handshake means, in words that name the cause and what to check.
fn handshake_failure(error: &std::io::Error, name: &str) -> String {
    use rustls::{AlertDescription, CertificateError};
    let Some(tls) = error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) else {
        return format!("{error} (does this port speak TLS?)");
    };
    match tls {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the broker's certificate is not signed by a CA this client trusts (unknown issuer): \
             check the CA file"
                .to_owned()
        }
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!(
            "the broker's certificate is not valid for the name {name:?} ({tls}): connect by a name \
             the certificate carries, or set the server name it carries"
        ),
        rustls::Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
            format!("the broker's certificate has expired ({tls})")
        }
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired | AlertDescription::BadCertificate) => {
            format!("the broker refused this client's certificate or wants one ({tls}): check the client certificate and key")
        }
        rustls::Error::InvalidMessage(_) => format!("{tls} (does this port speak TLS?)"),
        other => other.to_string(),
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
    fn the_default_build_chooses_graviola_on_a_capable_cpu() {
        if GRAVIOLA_BUILT && !Crypto::AwsLc.built() {
            assert_eq!(Crypto::choose(&[]).unwrap(), Crypto::Graviola);
        }
        // Whatever is chosen here makes a working provider.
        let chosen = Crypto::chosen().unwrap();
        assert!(chosen.provider().is_ok(), "{chosen}");
    }

    #[test]
    fn a_cpu_graviola_cannot_serve_falls_back_or_is_named() {
        let chosen = Crypto::choose(&["adx", "avx2"]);
        match (Crypto::AwsLc.built(), Crypto::RustCrypto.built()) {
            (true, _) => assert_eq!(chosen.unwrap(), Crypto::AwsLc),
            (false, true) => assert_eq!(chosen.unwrap(), Crypto::RustCrypto),
            (false, false) => {
                let error = chosen.unwrap_err().to_string();
                assert!(error.contains("adx, avx2") && error.contains("rustcrypto"), "{error}");
            }
        }
    }

    #[test]
    fn every_built_provider_makes_a_config_with_the_public_roots() {
        for crypto in Crypto::ALL.into_iter().filter(|c| c.built()) {
            if crypto == Crypto::Graviola && !graviola_cpu_missing().is_empty() {
                continue;
            }
            TlsConfig::build(crypto, Trust::PublicRoots, None).unwrap();
        }
    }

    #[test]
    fn a_ca_file_without_certificates_is_a_clear_error() {
        let error = TlsConfig::new(b"not a certificate").unwrap_err();
        assert!(error.to_string().contains("no PEM certificate"), "{error}");
    }
}
