//! SASL authentication of a connection (KIP-43, KIP-84, KIP-152): after ApiVersions, the client
//! names a mechanism with SaslHandshake v1 and exchanges its tokens in SaslAuthenticate requests.
//! PLAIN (RFC 4616) sends the name and password in one token (use it over TLS only);
//! SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677) prove knowledge of the password without
//! sending it, and check that the broker knows it too. OAUTHBEARER (RFC 7628, KIP-255) sends a
//! bearer token the caller got from its identity provider: a fixed one, or one read from a file
//! at every login, so a token refreshed in the file is picked up by the next re-login.
//!
//! A broker with `connections.max.reauth.ms` gives each login a session lifetime and closes a
//! connection used after it (KIP-368). The connection logs in again on the same socket before
//! then (between 85 % and 95 % of the lifetime, as the Java client does).
//!
//! This module holds the exchange without I/O ([`Login`]); the connection sends its requests.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};
use sluice_protocol::error_code::ErrorCode;
use sluice_protocol::messages::{SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse};

use crate::error::{Error, Result};

/// The SASL mechanisms sluice speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    /// Name and password in clear (inside TLS).
    Plain,
    /// Salted challenge-response with SHA-256.
    ScramSha256,
    /// Salted challenge-response with SHA-512.
    ScramSha512,
    /// A bearer token (OAuth 2), in clear (inside TLS).
    OAuthBearer,
}

impl SaslMechanism {
    /// The mechanism's name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
            Self::OAuthBearer => "OAUTHBEARER",
        }
    }

    /// The mechanism of this name (as Kafka and librdkafka spell it, any case).
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Plain, Self::ScramSha256, Self::ScramSha512, Self::OAuthBearer]
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(name))
    }
}

/// Credentials a connection authenticates with.
///
/// Fields may be added in later versions (`#[non_exhaustive]`): start from [`SaslConfig::new`] (or
/// another constructor) and set the fields you need.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SaslConfig {
    /// The mechanism.
    pub mechanism: SaslMechanism,
    /// The user name (OAUTHBEARER: unused).
    pub username: String,
    /// The password (OAUTHBEARER: the token, unless `token_file` is set).
    pub password: String,
    /// OAUTHBEARER: a file holding the token, read again at every login (surrounding white space
    /// ignored).
    pub token_file: Option<PathBuf>,
    /// Whether a PLAIN login may go over a connection without TLS, where anyone on the path
    /// reads the password (false: such a connection is refused before it is made).
    pub allow_plain_without_tls: bool,
}

impl fmt::Debug for SaslConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaslConfig")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .field("token_file", &self.token_file)
            .field("allow_plain_without_tls", &self.allow_plain_without_tls)
            .finish()
    }
}

impl SaslConfig {
    /// Credentials for `mechanism`.
    pub fn new(mechanism: SaslMechanism, username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            mechanism,
            username: username.into(),
            password: password.into(),
            token_file: None,
            allow_plain_without_tls: false,
        }
    }

    /// OAUTHBEARER with a fixed token.
    pub fn oauth_bearer(token: impl Into<String>) -> Self {
        Self::new(SaslMechanism::OAuthBearer, "", token)
    }

    /// OAUTHBEARER with the token in `path`, read at every login (so a re-login before the
    /// broker's session ends sends the token the file holds then).
    pub fn oauth_bearer_file(path: impl Into<PathBuf>) -> Self {
        Self { token_file: Some(path.into()), ..Self::new(SaslMechanism::OAuthBearer, "", "") }
    }

    /// Lets a PLAIN login go over a connection without TLS (a listener on a trusted network);
    /// without this, such a connection is refused with an error that says why.
    pub fn allow_plain_without_tls(mut self) -> Self {
        self.allow_plain_without_tls = true;
        self
    }

    /// Why connections with these credentials and no TLS must not be made, if they must not.
    pub(crate) fn refusal_without_tls(&self) -> Option<String> {
        (self.mechanism == SaslMechanism::Plain && !self.allow_plain_without_tls).then(|| {
            "refusing to send a PLAIN password over a connection without TLS, where anyone on the path \
             can read it: enable TLS, use SCRAM-SHA-256/512, or allow it explicitly \
             (SaslConfig::allow_plain_without_tls)"
                .to_owned()
        })
    }
}

/// One login's exchange (after ApiVersions), without I/O: the connection sends the requests it
/// is given, at the SaslAuthenticate version it negotiated, and hands back the answers. Starting
/// with [`Login::start`]'s SaslHandshake v1 (the tokens then travel in SaslAuthenticate requests
/// rather than as raw frames), each answer gives the next token to send, or the end.
pub(crate) struct Login {
    broker: String,
    mechanism: SaslMechanism,
    step: Step,
    /// From the last answer (v1+): how long the session lasts, 0 for ever.
    session_lifetime_ms: i64,
}

/// Where a login is: what its next answer is for.
enum Step {
    /// The mechanism was named; its first token is next.
    Handshake { first_token: Vec<u8>, scram: Option<Scram> },
    /// PLAIN's one token was sent.
    Plain,
    /// SCRAM's first message was sent; the broker's first message comes back.
    ScramFirst(Scram),
    /// SCRAM's final message was sent; the broker's signature comes back.
    ScramFinal(Scram),
    /// The bearer token was sent.
    OAuthBearer,
    /// The broker refused the token with this status, acknowledged with 0x01; it then fails the
    /// exchange, naming why (RFC 7628 section 3.2.2).
    OAuthRefused(String),
    /// Over.
    Done,
}

/// A SCRAM exchange, by hash.
enum Scram {
    Sha256(ScramClient<Sha256Hash>),
    Sha512(ScramClient<Sha512Hash>),
}

impl Scram {
    fn first_message(&self) -> String {
        match self {
            Self::Sha256(client) => client.first_message(),
            Self::Sha512(client) => client.first_message(),
        }
    }

    fn final_message(&mut self, server_first: &str) -> std::result::Result<String, String> {
        match self {
            Self::Sha256(client) => client.final_message(server_first),
            Self::Sha512(client) => client.final_message(server_first),
        }
    }

    fn verify_server(&self, server_final: &str) -> std::result::Result<(), String> {
        match self {
            Self::Sha256(client) => client.verify_server(server_final),
            Self::Sha512(client) => client.verify_server(server_final),
        }
    }
}

impl Login {
    /// A login with `config` to `broker` (named in errors), and the SaslHandshake request that
    /// begins it. Fails if the configuration cannot log in: no randomness for a SCRAM nonce, or
    /// an OAUTHBEARER token that cannot be read or is malformed (the token file is read here,
    /// at every login, so a token refreshed in it is picked up).
    pub(crate) fn start(config: &SaslConfig, broker: &str) -> Result<(Self, SaslHandshakeRequest)> {
        let mechanism = config.mechanism;
        let failed =
            |reason: String| Error::Authentication { broker: broker.to_owned(), mechanism: mechanism.name(), reason };
        let (first_token, scram) = match mechanism {
            SaslMechanism::Plain => (plain_token(&config.username, &config.password), None),
            SaslMechanism::ScramSha256 | SaslMechanism::ScramSha512 => {
                let mut nonce = [0u8; 24];
                getrandom::getrandom(&mut nonce).map_err(|e| failed(format!("no randomness for the nonce: {e}")))?;
                let (username, password, nonce) = (&config.username, &config.password, &BASE64.encode(nonce));
                let scram = match mechanism {
                    SaslMechanism::ScramSha256 => Scram::Sha256(ScramClient::new(username, password, nonce)),
                    _ => Scram::Sha512(ScramClient::new(username, password, nonce)),
                };
                (scram.first_message().into_bytes(), Some(scram))
            }
            SaslMechanism::OAuthBearer => (oauth_bearer_token(&bearer_token(config).map_err(failed)?), None),
        };
        let login = Self {
            broker: broker.to_owned(),
            mechanism,
            step: Step::Handshake { first_token, scram },
            session_lifetime_ms: 0,
        };
        Ok((login, SaslHandshakeRequest { mechanism: mechanism.name().into() }))
    }

    /// The SaslHandshake answer: the first token to send.
    pub(crate) fn handshake(&mut self, response: &SaslHandshakeResponse) -> Result<Vec<u8>> {
        match ErrorCode::from_code(response.error_code) {
            ErrorCode::None => {}
            ErrorCode::UnsupportedSaslMechanism => {
                let offered = response.mechanisms.join(", ");
                return Err(self.failed(format!("the broker does not offer it (it offers: {offered})")));
            }
            code => return Err(Error::Broker { broker: self.broker.clone(), api: "SaslHandshake", code }),
        }
        match std::mem::replace(&mut self.step, Step::Done) {
            Step::Handshake { first_token, scram } => {
                self.step = match (self.mechanism, scram) {
                    (_, Some(scram)) => Step::ScramFirst(scram),
                    (SaslMechanism::OAuthBearer, None) => Step::OAuthBearer,
                    (_, None) => Step::Plain,
                };
                Ok(first_token)
            }
            _ => Err(self.failed("the exchange is out of order")),
        }
    }

    /// A SaslAuthenticate answer: the next token to send, or `None` when the login is done.
    pub(crate) fn authenticate(&mut self, response: SaslAuthenticateResponse) -> Result<Option<Vec<u8>>> {
        let step = std::mem::replace(&mut self.step, Step::Done);
        let code = ErrorCode::from_code(response.error_code);
        if code != ErrorCode::None {
            let message = response.error_message.unwrap_or_else(|| code.to_string());
            return Err(match step {
                Step::OAuthRefused(status) => self.failed(format!("{message} ({status})")),
                _ => self.failed(message),
            });
        }
        self.session_lifetime_ms = response.session_lifetime_ms;
        let answer = response.auth_bytes;
        match step {
            Step::Plain => Ok(None),
            Step::OAuthBearer if answer.is_empty() => Ok(None),
            Step::OAuthBearer => {
                // A refusal comes as a JSON error the client acknowledges with a single 0x01.
                self.step = Step::OAuthRefused(String::from_utf8_lossy(&answer).into_owned());
                Ok(Some(vec![0x01]))
            }
            Step::OAuthRefused(status) => Err(self.failed(format!("the broker refused the token: {status}"))),
            Step::ScramFirst(mut scram) => {
                let server_first = std::str::from_utf8(&answer)
                    .map_err(|_| self.failed("the broker's first SCRAM message is not UTF-8"))?;
                let client_final = scram.final_message(server_first).map_err(|reason| self.failed(reason))?;
                self.step = Step::ScramFinal(scram);
                Ok(Some(client_final.into_bytes()))
            }
            Step::ScramFinal(scram) => {
                let server_final = std::str::from_utf8(&answer)
                    .map_err(|_| self.failed("the broker's final SCRAM message is not UTF-8"))?;
                scram.verify_server(server_final).map_err(|reason| self.failed(reason))?;
                Ok(None)
            }
            Step::Handshake { .. } | Step::Done => Err(self.failed("the exchange is out of order")),
        }
    }

    /// The session lifetime the broker gave (KIP-368), if any: the connection must log in again
    /// before it ends.
    pub(crate) fn session_lifetime(&self) -> Option<Duration> {
        u64::try_from(self.session_lifetime_ms).ok().filter(|&ms| ms > 0).map(Duration::from_millis)
    }

    fn failed(&self, reason: impl Into<String>) -> Error {
        Error::Authentication { broker: self.broker.clone(), mechanism: self.mechanism.name(), reason: reason.into() }
    }
}

/// RFC 4616: authorization identity (empty), user name and password, separated by NULs.
fn plain_token(username: &str, password: &str) -> Vec<u8> {
    let mut token = Vec::with_capacity(username.len() + password.len() + 2);
    token.push(0);
    token.extend_from_slice(username.as_bytes());
    token.push(0);
    token.extend_from_slice(password.as_bytes());
    token
}

/// RFC 7628 section 3.1: no channel binding, no authorization id, the `auth` key and nothing
/// else (Kafka's SASL extensions are not sent).
fn oauth_bearer_token(token: &str) -> Vec<u8> {
    format!("n,,\x01auth=Bearer {token}\x01\x01").into_bytes()
}

/// The OAUTHBEARER token: the fixed one, or the token file's (trimmed).
fn bearer_token(config: &SaslConfig) -> std::result::Result<String, String> {
    let token = match &config.token_file {
        None => config.password.clone(),
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?
            .trim()
            .to_owned(),
    };
    if token.is_empty() || token.contains(|c: char| c.is_ascii_control() || c == ' ') {
        let what = if token.is_empty() { "is empty" } else { "holds spaces or control characters" };
        return Err(format!("the OAUTHBEARER token {what}"));
    }
    Ok(token)
}

/// The hash a SCRAM variant is built on.
trait ScramHash {
    fn hmac(key: &[u8], data: &[u8]) -> Vec<u8>;
    fn hash(data: &[u8]) -> Vec<u8>;
    /// Hi() of RFC 5802: PBKDF2 with HMAC as the pseudo-random function, one block.
    fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8>;
}

macro_rules! scram_hash {
    ($name:ident, $digest:ty) => {
        struct $name;
        impl ScramHash for $name {
            fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
                // HMAC takes keys of any length: `new_from_slice` cannot fail.
                let Ok(mut mac) = Hmac::<$digest>::new_from_slice(key) else { return Vec::new() };
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
            fn hash(data: &[u8]) -> Vec<u8> {
                <$digest>::digest(data).to_vec()
            }
            fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
                let mut out = vec![0; <$digest as Digest>::output_size()];
                pbkdf2::pbkdf2_hmac::<$digest>(password, salt, iterations, &mut out);
                out
            }
        }
    };
}
scram_hash!(Sha256Hash, Sha256);
scram_hash!(Sha512Hash, Sha512);

/// Kafka refuses fewer iterations than this (and so does the client: a broker asking for fewer
/// would make the proof cheap to attack).
const MIN_ITERATIONS: u32 = 4096;
/// An upper bound, so a hostile broker cannot make the client spin for minutes.
const MAX_ITERATIONS: u32 = 1 << 20;

/// The client side of one SCRAM exchange (RFC 5802 section 3), without I/O.
struct ScramClient<H> {
    client_first_bare: String,
    client_nonce: String,
    password: String,
    server_signature: Option<Vec<u8>>,
    _hash: std::marker::PhantomData<H>,
}

/// RFC 5802 `saslname`: `=` and `,` escaped.
fn sasl_name(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

impl<H: ScramHash> ScramClient<H> {
    fn new(username: &str, password: &str, nonce: &str) -> Self {
        Self {
            client_first_bare: format!("n={},r={nonce}", sasl_name(username)),
            client_nonce: nonce.to_owned(),
            password: password.to_owned(),
            server_signature: None,
            _hash: std::marker::PhantomData,
        }
    }

    /// `n,,` (no channel binding, no authorization id) and the bare message.
    fn first_message(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    fn final_message(&mut self, server_first: &str) -> std::result::Result<String, String> {
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for attribute in server_first.split(',') {
            match attribute.split_once('=') {
                Some(("r", value)) => nonce = Some(value),
                Some(("s", value)) => salt = Some(value),
                Some(("i", value)) => iterations = Some(value),
                Some(("e", error)) => return Err(format!("the broker refused: {error}")),
                _ => {}
            }
        }
        let nonce = nonce.ok_or("the broker's first SCRAM message has no nonce")?;
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err("the broker's nonce does not extend the client's".into());
        }
        let salt = BASE64
            .decode(salt.ok_or("the broker's first SCRAM message has no salt")?)
            .map_err(|e| format!("the broker's salt is not base64: {e}"))?;
        let iterations: u32 = iterations
            .ok_or("the broker's first SCRAM message has no iteration count")?
            .parse()
            .map_err(|_| "the broker's iteration count is not a number")?;
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
            return Err(format!(
                "the broker asks for {iterations} iterations, outside {MIN_ITERATIONS}..={MAX_ITERATIONS}"
            ));
        }
        let salted = H::salted_password(self.password.as_bytes(), &salt, iterations);
        let client_key = H::hmac(&salted, b"Client Key");
        let stored_key = H::hash(&client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let client_signature = H::hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&client_signature).map(|(k, s)| k ^ s).collect();
        let server_key = H::hmac(&salted, b"Server Key");
        self.server_signature = Some(H::hmac(&server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", BASE64.encode(proof)))
    }

    fn verify_server(&self, server_final: &str) -> std::result::Result<(), String> {
        let expected = self.server_signature.as_ref().ok_or("the exchange is out of order")?;
        for attribute in server_final.split(',') {
            match attribute.split_once('=') {
                Some(("e", error)) => return Err(format!("the broker refused: {error}")),
                Some(("v", signature)) => {
                    let signature =
                        BASE64.decode(signature).map_err(|e| format!("the broker's signature is not base64: {e}"))?;
                    return if &signature == expected {
                        Ok(())
                    } else {
                        Err("the broker's signature is wrong: it does not know the password (an impostor?)".into())
                    };
                }
                _ => {}
            }
        }
        Err("the broker's final SCRAM message has no signature".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7628 section 4.1's initial client response, without the host and port keys.
    #[test]
    fn the_oauthbearer_initial_response_is_rfc_7628s() {
        assert_eq!(oauth_bearer_token("vF9dft4qmT"), b"n,,\x01auth=Bearer vF9dft4qmT\x01\x01");
    }

    #[test]
    fn mechanisms_are_found_by_their_names_in_any_case() {
        assert_eq!(SaslMechanism::from_name("scram-sha-512"), Some(SaslMechanism::ScramSha512));
        assert_eq!(SaslMechanism::from_name("OAUTHBEARER"), Some(SaslMechanism::OAuthBearer));
        assert_eq!(SaslMechanism::from_name("GSSAPI"), None);
    }

    /// RFC 7677 section 3: the SCRAM-SHA-256 example exchange.
    #[test]
    fn scram_sha256_matches_rfc_7677() {
        let mut client = ScramClient::<Sha256Hash>::new("user", "pencil", "rOprNGfwEbeRWgbNEkqO");
        assert_eq!(client.first_message(), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        assert_eq!(
            client.final_message(server_first).unwrap(),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        client.verify_server("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=").unwrap();
        let error = client.verify_server("v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").unwrap_err();
        assert!(error.contains("signature is wrong"), "{error}");
    }

    #[test]
    fn scram_refuses_a_broker_that_does_not_extend_the_nonce_or_skimps_on_iterations() {
        let mut client = ScramClient::<Sha512Hash>::new("user", "pencil", "abc");
        assert!(client.final_message("r=xyz,s=QSXCR+Q6sek8bf92,i=4096").unwrap_err().contains("nonce"));
        assert!(client.final_message("r=abc,s=QSXCR+Q6sek8bf92,i=4096").unwrap_err().contains("nonce"));
        assert!(client.final_message("r=abcdef,s=QSXCR+Q6sek8bf92,i=1").unwrap_err().contains("iterations"));
        assert!(client.final_message("e=unknown-user").unwrap_err().contains("unknown-user"));
        assert!(client.verify_server("v=x").unwrap_err().contains("out of order"));
    }

    fn answer(token: &[u8], lifetime_ms: i64) -> SaslAuthenticateResponse {
        SaslAuthenticateResponse {
            auth_bytes: token.to_vec().into(),
            session_lifetime_ms: lifetime_ms,
            ..SaslAuthenticateResponse::default()
        }
    }

    #[test]
    fn a_plain_login_is_one_token_and_keeps_the_session_lifetime() {
        let config = SaslConfig::new(SaslMechanism::Plain, "alice", "pw");
        let (mut login, handshake) = Login::start(&config, "b:9092").unwrap();
        assert_eq!(handshake.mechanism, "PLAIN");
        let token = login.handshake(&SaslHandshakeResponse::default()).unwrap();
        assert_eq!(token, b"\0alice\0pw");
        assert_eq!(login.authenticate(answer(b"", 60_000)).unwrap(), None);
        assert_eq!(login.session_lifetime(), Some(Duration::from_secs(60)));
        assert!(login.authenticate(answer(b"", 0)).unwrap_err().to_string().contains("out of order"));
    }

    #[test]
    fn a_mechanism_the_broker_lacks_names_what_it_offers() {
        let config = SaslConfig::new(SaslMechanism::ScramSha512, "alice", "pw");
        let (mut login, _) = Login::start(&config, "b:9092").unwrap();
        let refusal = SaslHandshakeResponse {
            error_code: ErrorCode::UnsupportedSaslMechanism.code(),
            mechanisms: vec!["PLAIN".into(), "SCRAM-SHA-256".into()],
        };
        let error = login.handshake(&refusal).unwrap_err().to_string();
        assert!(error.contains("b:9092") && error.contains("it offers: PLAIN, SCRAM-SHA-256"), "{error}");
    }

    #[test]
    fn a_scram_login_sends_its_nonce_and_refuses_a_broker_that_does_not_extend_it() {
        let config = SaslConfig::new(SaslMechanism::ScramSha256, "alice", "pw");
        let (mut login, _) = Login::start(&config, "b:9092").unwrap();
        let first = String::from_utf8(login.handshake(&SaslHandshakeResponse::default()).unwrap()).unwrap();
        assert!(first.starts_with("n,,n=alice,r=") && first.len() > "n,,n=alice,r=".len() + 20, "{first}");
        let error = login.authenticate(answer(b"r=other,s=QSXCR+Q6sek8bf92,i=4096", 0)).unwrap_err();
        assert!(matches!(error, Error::Authentication { .. }) && error.to_string().contains("nonce"), "{error}");
    }

    #[test]
    fn a_refused_bearer_token_is_acknowledged_and_the_refusal_says_why() {
        let config = SaslConfig::oauth_bearer("eyJhbGciOi");
        let (mut login, _) = Login::start(&config, "b:9092").unwrap();
        assert_eq!(login.handshake(&SaslHandshakeResponse::default()).unwrap(), oauth_bearer_token("eyJhbGciOi"));
        let status = br#"{"status":"invalid_token"}"#;
        assert_eq!(login.authenticate(answer(status, 0)).unwrap(), Some(vec![0x01]));
        let failure = SaslAuthenticateResponse {
            error_code: ErrorCode::SaslAuthenticationFailed.code(),
            error_message: Some("token expired".into()),
            ..SaslAuthenticateResponse::default()
        };
        let error = login.authenticate(failure).unwrap_err().to_string();
        assert!(error.contains("token expired") && error.contains("invalid_token"), "{error}");
        let malformed = SaslConfig::oauth_bearer("two words");
        assert!(Login::start(&malformed, "b:9092").is_err());
    }

    #[test]
    fn names_are_escaped_and_plain_tokens_are_nul_separated() {
        assert_eq!(sasl_name("a=b,c"), "a=3Db=2Cc");
        assert_eq!(plain_token("alice", "pw"), b"\0alice\0pw".to_vec());
        let config = SaslConfig::new(SaslMechanism::Plain, "alice", "secret");
        assert!(!format!("{config:?}").contains("secret"));
    }
}
