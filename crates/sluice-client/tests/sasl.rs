//! SASL against a real Tansu broker started with `--authentication`.
//!
//! Tansu 0.6.0 offers SCRAM-SHA-256 and SCRAM-SHA-512 but, with the in-memory storage we can run
//! here, cannot keep SCRAM credentials (only its Postgres storage stores them; see the notes
//! below): every login is refused as `unknown-user`. So what is checked against the broker is
//! that sluice runs the handshake and the first SCRAM round trip with a real SCRAM server and
//! reports the refusal clearly; the SCRAM proof itself is checked against RFC 7677's example in
//! the unit tests (`sasl.rs`).

mod common;

use std::time::Duration;

use common::Tansu;
use sluice_client::{Client, ClientConfig, Error, SaslConfig, SaslMechanism};

fn config(addr: &str, sasl: Option<SaslConfig>) -> ClientConfig {
    let mut config = ClientConfig::new([addr]);
    config.connection.sasl = sasl;
    config.connection.request_timeout = Duration::from_secs(5);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_reaches_the_brokers_scram_server_and_a_refusal_is_reported_clearly() {
    let tansu = Tansu::start_authenticating();
    for mechanism in [SaslMechanism::ScramSha256, SaslMechanism::ScramSha512] {
        let sasl = SaslConfig::new(mechanism, "alice", "alice-secret");
        let error = Client::connect(config(&tansu.addr, Some(sasl))).await.unwrap_err();
        match &error {
            Error::Authentication { mechanism: name, reason, .. } => {
                assert_eq!(*name, mechanism.name());
                // The broker's SCRAM server parsed sluice's client-first message and answered
                // with a SCRAM error attribute (RFC 5802 `e=`), which sluice passes on.
                assert!(reason.contains("unknown-user"), "{error}");
            }
            other => panic!("{mechanism:?}: expected an authentication error, got {other}"),
        }
        assert!(error.to_string().contains("check the user name, password and mechanism"), "{error}");
    }
    eprintln!(
        "note: Tansu 0.6.0's in-memory storage accepts AlterUserScramCredentials but keeps nothing, so no SCRAM \
         login can succeed against it; a successful login is not checked against a broker here"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mechanism_the_broker_does_not_offer_fails_the_connection() {
    let tansu = Tansu::start_authenticating();
    let sasl = SaslConfig::new(SaslMechanism::Plain, "alice", "alice-secret");
    let error = Client::connect(config(&tansu.addr, Some(sasl))).await.unwrap_err();
    assert!(matches!(error, Error::Authentication { mechanism: "PLAIN", .. } | Error::Disconnected { .. }), "{error}");
    eprintln!("PLAIN against Tansu (which offers only SCRAM): {error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_sasl_an_authenticating_broker_refuses_requests() {
    let tansu = Tansu::start_authenticating();
    let result = Client::connect(config(&tansu.addr, None)).await;
    assert!(result.is_err(), "a broker that requires authentication must refuse an unauthenticated client");
}
