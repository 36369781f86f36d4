//! TLS and SASL for every command. Three sources, later ones winning: the job file's
//! `[security]` table (`run` only), the command line's flags, and kcat-style `-X key=value`
//! properties under librdkafka's names. Passwords and tokens come from files or the environment,
//! never necessarily from the command line.

use std::path::{Path, PathBuf};

use clap::Args;
use serde::Deserialize;
use sluice_client::{ConnectionConfig, Crypto, Identity, SaslConfig, SaslMechanism, TlsConfig, Trust};

use crate::error::{CliError, CliResult};

/// The environment variable a SASL password may come from.
pub const PASSWORD_ENV: &str = "SLUICE_SASL_PASSWORD";
/// The environment variable an OAUTHBEARER token may come from.
pub const TOKEN_ENV: &str = "SLUICE_SASL_TOKEN";

/// The librdkafka properties `-X` takes.
const PROPERTIES: &str = "security.protocol, sasl.mechanism (or sasl.mechanisms), sasl.username, \
    sasl.password, ssl.ca.location, ssl.certificate.location, ssl.key.location, \
    ssl.endpoint.identification.algorithm (https), enable.ssl.certificate.verification (true), \
    bootstrap.servers (or metadata.broker.list)";

/// TLS and SASL flags, on every command that talks to brokers.
#[derive(Debug, Clone, Default, Args)]
pub struct SecurityArgs {
    /// Encrypt connections with TLS; brokers' certificates are checked against the public CAs,
    /// or those of --tls-ca.
    #[arg(long, help_heading = "Security")]
    pub tls: bool,
    /// CA certificates (PEM) the brokers' certificates must chain to (implies --tls).
    #[arg(long, value_name = "FILE", env = "SLUICE_TLS_CA", help_heading = "Security")]
    pub tls_ca: Option<PathBuf>,
    /// A client certificate chain (PEM) for brokers that require one (with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key", help_heading = "Security")]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1, unencrypted).
    #[arg(long, value_name = "FILE", requires = "tls_cert", help_heading = "Security")]
    pub tls_key: Option<PathBuf>,
    /// The name brokers' certificates must carry, instead of the host connected to.
    #[arg(long, value_name = "NAME", help_heading = "Security")]
    pub tls_server_name: Option<String>,
    /// SASL mechanism: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER.
    #[arg(long, value_name = "MECHANISM", env = "SLUICE_SASL_MECHANISM", help_heading = "Security")]
    pub sasl_mechanism: Option<String>,
    /// SASL user name.
    #[arg(long, value_name = "NAME", env = "SLUICE_SASL_USERNAME", help_heading = "Security")]
    pub sasl_username: Option<String>,
    /// A file holding the SASL password (else the environment's SLUICE_SASL_PASSWORD).
    #[arg(long, value_name = "FILE", help_heading = "Security")]
    pub sasl_password_file: Option<PathBuf>,
    /// OAUTHBEARER: a file holding the token, read at every login (else the environment's
    /// SLUICE_SASL_TOKEN).
    #[arg(long, value_name = "FILE", env = "SLUICE_SASL_TOKEN_FILE", help_heading = "Security")]
    pub sasl_token_file: Option<PathBuf>,
    /// Let a PLAIN password go over a connection without TLS, readable on the way (refused
    /// otherwise).
    #[arg(long, help_heading = "Security")]
    pub sasl_allow_plain_without_tls: bool,
    /// A librdkafka property, as kcat takes them (repeatable): security.protocol,
    /// sasl.mechanism, sasl.username, sasl.password, ssl.ca.location,
    /// ssl.certificate.location, ssl.key.location, bootstrap.servers, ...
    #[arg(short = 'X', value_name = "KEY=VALUE", help_heading = "Security")]
    pub properties: Vec<String>,
}

/// A job file's `[security]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySpec {
    /// TLS (implied by `ca` or `certificate`).
    #[serde(default)]
    pub tls: bool,
    /// CA certificates (PEM); the public CAs without it.
    pub ca: Option<PathBuf>,
    /// Client certificate chain (PEM), with `key`.
    pub certificate: Option<PathBuf>,
    /// Its private key (PEM).
    pub key: Option<PathBuf>,
    /// The name brokers' certificates must carry.
    pub server_name: Option<String>,
    /// `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512` or `OAUTHBEARER`.
    pub sasl_mechanism: Option<String>,
    /// SASL user name.
    pub username: Option<String>,
    /// A file holding the password.
    pub password_file: Option<PathBuf>,
    /// The environment variable holding the password.
    pub password_env: Option<String>,
    /// OAUTHBEARER: a file holding the token, read at every login.
    pub token_file: Option<PathBuf>,
    /// Let a PLAIN password go over a connection without TLS.
    #[serde(default)]
    pub allow_plain_without_tls: bool,
}

/// Where a secret comes from.
#[derive(Debug, Clone)]
enum Secret {
    Value(String),
    File(PathBuf),
    Env(String),
}

/// The security settings from every source, merged.
#[derive(Debug, Default)]
pub struct Security {
    tls: bool,
    ca: Option<PathBuf>,
    certificate: Option<PathBuf>,
    key: Option<PathBuf>,
    server_name: Option<String>,
    /// `security.protocol` named SASL.
    sasl_required: bool,
    /// `security.protocol` named no SASL.
    sasl_refused: bool,
    mechanism: Option<String>,
    username: Option<String>,
    password: Option<Secret>,
    token_file: Option<PathBuf>,
    allow_plain_without_tls: bool,
    /// `-X bootstrap.servers`.
    pub brokers: Option<Vec<String>>,
}

fn usage(message: impl Into<String>) -> CliError {
    CliError::Usage(message.into())
}

impl Security {
    /// The job file's table, then the flags, then the `-X` properties.
    pub fn new(spec: Option<&SecuritySpec>, args: &SecurityArgs) -> CliResult<Self> {
        let mut s = Self::default();
        if let Some(spec) = spec {
            s.tls = spec.tls;
            s.ca.clone_from(&spec.ca);
            s.certificate.clone_from(&spec.certificate);
            s.key.clone_from(&spec.key);
            s.server_name.clone_from(&spec.server_name);
            s.mechanism.clone_from(&spec.sasl_mechanism);
            s.username.clone_from(&spec.username);
            s.password = match (&spec.password_file, &spec.password_env) {
                (Some(_), Some(_)) => {
                    return Err(CliError::Job("`security`: give `password_file` or `password_env`, not both".into()))
                }
                (Some(file), None) => Some(Secret::File(file.clone())),
                (None, Some(var)) => Some(Secret::Env(var.clone())),
                (None, None) => None,
            };
            s.token_file.clone_from(&spec.token_file);
            s.allow_plain_without_tls = spec.allow_plain_without_tls;
        }
        s.tls |= args.tls;
        let overrides = [
            (&mut s.ca, &args.tls_ca),
            (&mut s.certificate, &args.tls_cert),
            (&mut s.key, &args.tls_key),
            (&mut s.token_file, &args.sasl_token_file),
        ];
        for (field, flag) in overrides {
            if flag.is_some() {
                field.clone_from(flag);
            }
        }
        for (field, flag) in [
            (&mut s.server_name, &args.tls_server_name),
            (&mut s.mechanism, &args.sasl_mechanism),
            (&mut s.username, &args.sasl_username),
        ] {
            if flag.is_some() {
                field.clone_from(flag);
            }
        }
        if let Some(file) = &args.sasl_password_file {
            s.password = Some(Secret::File(file.clone()));
        }
        s.allow_plain_without_tls |= args.sasl_allow_plain_without_tls;
        for property in &args.properties {
            s.property(property)?;
        }
        Ok(s)
    }

    /// One `-X key=value`.
    fn property(&mut self, property: &str) -> CliResult {
        let Some((key, value)) = property.split_once('=') else {
            return Err(usage(format!("-X {property}: expected KEY=VALUE")));
        };
        let path = || Some(PathBuf::from(value));
        match key.trim() {
            "security.protocol" => match value.to_ascii_lowercase().as_str() {
                "plaintext" => (self.tls, self.sasl_refused) = (false, true),
                "ssl" => (self.tls, self.sasl_refused) = (true, true),
                "sasl_plaintext" => (self.tls, self.sasl_required) = (false, true),
                "sasl_ssl" => (self.tls, self.sasl_required) = (true, true),
                _ => {
                    return Err(usage(format!(
                        "-X security.protocol={value}: expected plaintext, ssl, sasl_plaintext or sasl_ssl"
                    )))
                }
            },
            "sasl.mechanism" | "sasl.mechanisms" => self.mechanism = Some(value.to_owned()),
            "sasl.username" => self.username = Some(value.to_owned()),
            "sasl.password" => self.password = Some(Secret::Value(value.to_owned())),
            "ssl.ca.location" => self.ca = path(),
            "ssl.certificate.location" => self.certificate = path(),
            "ssl.key.location" => self.key = path(),
            "ssl.endpoint.identification.algorithm" if value.eq_ignore_ascii_case("https") => {}
            "ssl.endpoint.identification.algorithm" => {
                return Err(usage(format!(
                    "-X {key}={value}: sluice always checks that the broker's certificate carries the name \
                     connected to; give the name it carries with --tls-server-name"
                )))
            }
            "enable.ssl.certificate.verification" if value.eq_ignore_ascii_case("true") => {}
            "enable.ssl.certificate.verification" => {
                return Err(usage(format!(
                    "-X {key}={value}: sluice always verifies brokers' certificates; give their CA with \
                     --tls-ca"
                )))
            }
            "bootstrap.servers" | "metadata.broker.list" => {
                self.brokers = Some(value.split(',').map(|b| b.trim().to_owned()).collect());
            }
            other => return Err(usage(format!("-X {other}: not a property sluice knows; it takes {PROPERTIES}"))),
        }
        Ok(())
    }

    fn tls_on(&self) -> bool {
        self.tls || self.ca.is_some() || self.certificate.is_some()
    }

    /// What the settings amount to, for `run --check` (no secrets).
    pub fn describe(&self) -> String {
        let tls = if self.tls_on() {
            let crypto = Crypto::chosen().map_or_else(|e| format!("unusable: {e}"), |c| c.name().to_owned());
            let trust = self.ca.as_ref().map_or_else(|| "the public CAs".to_owned(), |ca| ca.display().to_string());
            let client = if self.certificate.is_some() { ", client certificate" } else { "" };
            format!("TLS ({crypto}) trusting {trust}{client}")
        } else {
            "plaintext".to_owned()
        };
        match &self.mechanism {
            Some(mechanism) => format!("{tls}, SASL {}", mechanism.to_ascii_uppercase()),
            None => tls,
        }
    }

    /// Sets TLS and SASL on a connection configuration.
    pub fn apply(&self, connection: &mut ConnectionConfig) -> CliResult {
        connection.tls = self.tls()?;
        connection.sasl = self.sasl()?;
        Ok(())
    }

    fn tls(&self) -> CliResult<Option<TlsConfig>> {
        if !self.tls_on() {
            return Ok(None);
        }
        let ca = self.ca.as_deref().map(|file| read(file, "the CA file")).transpose()?;
        let trust = ca.as_deref().map_or(Trust::PublicRoots, Trust::Pem);
        let identity = match (&self.certificate, &self.key) {
            (Some(cert), Some(key)) => Some((read(cert, "the client certificate")?, read(key, "the client key")?)),
            (None, None) => None,
            _ => {
                return Err(usage(
                    "a client certificate needs both the certificate and its key (--tls-cert, --tls-key)",
                ))
            }
        };
        let identity = identity.as_ref().map(|(cert_chain_pem, key_pem)| Identity { cert_chain_pem, key_pem });
        let crypto = Crypto::chosen()?;
        let mut tls = TlsConfig::build(crypto, trust, identity)?;
        if let Some(name) = &self.server_name {
            tls = tls.server_name(name);
        }
        Ok(Some(tls))
    }

    fn sasl(&self) -> CliResult<Option<SaslConfig>> {
        let Some(name) = &self.mechanism else {
            if self.sasl_required {
                return Err(usage(
                    "security.protocol names SASL: give the mechanism (--sasl-mechanism or -X sasl.mechanism: \
                     PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER)",
                ));
            }
            if self.username.is_some() {
                return Err(usage("a SASL user name without a mechanism: give --sasl-mechanism too"));
            }
            return Ok(None);
        };
        if self.sasl_refused {
            return Err(usage(format!("SASL {name} with a security.protocol without SASL (plaintext or ssl)")));
        }
        let Some(mechanism) = SaslMechanism::from_name(name) else {
            return Err(usage(format!(
                "SASL mechanism {name}: expected PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER"
            )));
        };
        let config = if mechanism == SaslMechanism::OAuthBearer {
            match (&self.token_file, std::env::var(TOKEN_ENV)) {
                (Some(file), _) => SaslConfig::oauth_bearer_file(file),
                (None, Ok(token)) => SaslConfig::oauth_bearer(token.trim()),
                (None, Err(_)) => {
                    return Err(usage(format!(
                        "SASL OAUTHBEARER needs a token: --sasl-token-file FILE, or the environment's {TOKEN_ENV}"
                    )))
                }
            }
        } else {
            let Some(username) = &self.username else {
                return Err(usage(format!(
                    "SASL {} needs a user name: --sasl-username or -X sasl.username",
                    mechanism.name()
                )));
            };
            let password = match &self.password {
                Some(secret) => reveal(secret)?,
                None => std::env::var(PASSWORD_ENV).map_err(|_| {
                    usage(format!(
                        "SASL {} needs a password: --sasl-password-file FILE, or the environment's {PASSWORD_ENV}",
                        mechanism.name()
                    ))
                })?,
            };
            SaslConfig::new(mechanism, username, password)
        };
        Ok(Some(if self.allow_plain_without_tls { config.allow_plain_without_tls() } else { config }))
    }
}

fn read(path: &Path, what: &str) -> CliResult<Vec<u8>> {
    std::fs::read(path).map_err(|e| CliError::Failed(format!("reading {what} {}: {e}", path.display())))
}

/// A secret's text; a file's last line ending is not part of it.
fn reveal(secret: &Secret) -> CliResult<String> {
    match secret {
        Secret::Value(value) => Ok(value.clone()),
        Secret::Env(var) => std::env::var(var)
            .map_err(|_| CliError::Failed(format!("the password's environment variable {var} is not set"))),
        Secret::File(file) => {
            let text = String::from_utf8(read(file, "the password file")?)
                .map_err(|_| CliError::Failed(format!("the password file {} is not UTF-8", file.display())))?;
            let text = text.strip_suffix('\n').map_or(text.as_str(), |t| t.strip_suffix('\r').unwrap_or(t));
            Ok(text.to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(properties: &[&str]) -> SecurityArgs {
        SecurityArgs { properties: properties.iter().map(|p| (*p).to_owned()).collect(), ..SecurityArgs::default() }
    }

    #[test]
    fn librdkafka_properties_set_tls_and_sasl() {
        let s = Security::new(
            None,
            &args(&[
                "security.protocol=SASL_SSL",
                "sasl.mechanisms=SCRAM-SHA-512",
                "sasl.username=alice",
                "sasl.password=secret",
                "bootstrap.servers=a:9093,b:9093",
            ]),
        )
        .unwrap();
        assert!(s.tls_on());
        let sasl = s.sasl().unwrap().unwrap();
        assert_eq!(
            (sasl.mechanism, sasl.username.as_str(), sasl.password.as_str()),
            (SaslMechanism::ScramSha512, "alice", "secret")
        );
        assert_eq!(s.brokers.unwrap(), ["a:9093", "b:9093"]);
    }

    #[test]
    fn flags_override_the_job_file_and_properties_override_flags() {
        let spec = SecuritySpec {
            sasl_mechanism: Some("PLAIN".into()),
            username: Some("job".into()),
            ..SecuritySpec::default()
        };
        let mut flags = args(&["sasl.username=property"]);
        flags.sasl_mechanism = Some("SCRAM-SHA-256".into());
        flags.sasl_username = Some("flag".into());
        let s = Security::new(Some(&spec), &flags).unwrap();
        assert_eq!((s.mechanism.as_deref(), s.username.as_deref()), (Some("SCRAM-SHA-256"), Some("property")));
    }

    #[test]
    fn missing_or_unsafe_settings_are_refused_with_what_to_give() {
        let error = |properties: &[&str]| match Security::new(None, &args(properties)).and_then(|s| s.sasl().map(drop))
        {
            Err(e) => e.message().unwrap_or_default().to_owned(),
            Ok(()) => String::new(),
        };
        assert!(error(&["security.protocol=sasl_ssl"]).contains("give the mechanism"));
        assert!(error(&["sasl.mechanism=GSSAPI", "sasl.username=a"]).contains("expected PLAIN"));
        assert!(error(&["sasl.mechanism=PLAIN"]).contains("needs a user name"));
        assert!(error(&["ssl.endpoint.identification.algorithm=none"]).contains("always checks"));
        assert!(error(&["enable.auto.commit=false"]).contains("not a property sluice knows"));
        assert!(error(&["security.protocol=ssl", "sasl.mechanism=PLAIN"]).contains("without SASL"));
    }

    #[test]
    fn a_password_file_loses_its_last_line_ending_only() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), " pass word \r\n").unwrap();
        assert_eq!(reveal(&Secret::File(file.path().to_owned())).unwrap(), " pass word ");
    }
}
