//! SASL against a real broker.
//!
//! On Apache Kafka (the default) the shared broker has a SASL_PLAINTEXT listener offering PLAIN,
//! SCRAM-SHA-256 and SCRAM-SHA-512 for the user `alice`, and one offering SCRAM-SHA-512 only
//! (`scripts/kafka.sh --sasl`): logins succeed with every mechanism and a wrong password fails
//! with an error that says so.
//!
//! Tansu 0.6.0 (`SLUICE_TEST_BROKER=tansu`, started with `--authentication`) offers SCRAM but,
//! with the in-memory storage we can run, cannot keep SCRAM credentials: every login is refused as
//! `unknown-user`. There, what is checked is that sluice runs the handshake and the first SCRAM
//! round trip with a real SCRAM server and reports the refusal clearly.

use sluice_testkit as common;

use std::time::Duration;

use common::{unique, Broker, Kind};
use sluice_client::{
    Client, ClientConfig, Connection, ConnectionConfig, Consumer, ConsumerConfig, Error, Producer, ProducerConfig,
    ProducerRecord, SaslConfig, SaslMechanism, StartAt,
};
use sluice_protocol::messages::MetadataRequest;

const MECHANISMS: [SaslMechanism; 3] = [SaslMechanism::Plain, SaslMechanism::ScramSha256, SaslMechanism::ScramSha512];

fn config(addr: &str, sasl: Option<SaslConfig>) -> ClientConfig {
    let mut config = ClientConfig::new([addr]);
    // The test listeners are SASL without TLS, on loopback.
    config.connection.sasl = sasl.map(SaslConfig::allow_plain_without_tls);
    config.connection.request_timeout = Duration::from_secs(5);
    config
}

/// The SASL listener of the shared Kafka broker (`None` on Tansu).
fn kafka_sasl() -> Option<&'static str> {
    let broker = common::shared();
    (broker.kind == Kind::Kafka).then(|| broker.sasl_addr.as_deref().expect("the shared Kafka broker has SASL"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_succeed_with_every_mechanism_and_the_session_works() {
    let Some(addr) = kafka_sasl() else {
        eprintln!("SKIPPED on Tansu: its memory storage keeps no SASL credentials, so no login can succeed");
        return;
    };
    for mechanism in MECHANISMS {
        let sasl = SaslConfig::new(mechanism, "alice", "alice-secret");
        let client = Client::connect(config(addr, Some(sasl))).await.unwrap_or_else(|e| panic!("{mechanism:?}: {e}"));
        // Every connection the client opens after metadata authenticates too: produce and read back.
        let topic = unique(&format!("sasl-{}", mechanism.name()));
        client.create_topic(&topic, 1, 1).await.unwrap();
        let producer = Producer::new(client.clone(), ProducerConfig::default()).await.unwrap();
        let delivery = producer.send(ProducerRecord::new(&topic, "authenticated")).await.unwrap();
        assert_eq!(delivery.await.unwrap().offset, 0);
        let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default());
        consumer.assign(&topic, 0, StartAt::Earliest).await.unwrap();
        let mut values = Vec::new();
        for _ in 0..20 {
            for part in consumer.poll().await.unwrap() {
                values.extend(part.records().map(|r| r.value().unwrap().to_vec()));
            }
            if !values.is_empty() {
                break;
            }
        }
        assert_eq!(values, vec![b"authenticated".to_vec()], "{mechanism:?}");
    }
}

/// The broker's SASL sessions last 5 s (`connections.max.reauth.ms`; KIP-368) and it closes a
/// connection used after that. Connections log in again on the same socket before then, with
/// every mechanism, while requests keep flowing and while none do; a consumer reads a
/// producer's records across several sessions without losing its connection. Before, the first
/// request after 5 s found the connection closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_renewed_on_the_same_connection_before_the_broker_ends_them() {
    let Some(addr) = kafka_sasl() else {
        eprintln!("SKIPPED on Tansu: its memory storage keeps no SASL credentials, so no login can succeed");
        return;
    };
    const RUN: Duration = Duration::from_secs(13);
    let connections = MECHANISMS.map(|mechanism| async move {
        let sasl = SaslConfig::new(mechanism, "alice", "alice-secret").allow_plain_without_tls();
        let mut config = ConnectionConfig::default();
        config.sasl = Some(sasl);
        let connection = Connection::connect(addr, config).await.unwrap_or_else(|e| panic!("{mechanism:?}: {e}"));
        let started = std::time::Instant::now();
        let mut requests = 0;
        while started.elapsed() < RUN {
            let metadata = connection.send(&MetadataRequest::default()).await;
            metadata.unwrap_or_else(|e| panic!("{mechanism:?}: request {requests} after {:?}: {e}", started.elapsed()));
            requests += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!connection.is_closed(), "{mechanism:?}");
        (mechanism, requests, connection.relogins())
    });

    let topic = unique("sasl-sessions");
    let sasl = SaslConfig::new(SaslMechanism::ScramSha512, "alice", "alice-secret");
    let client = Client::connect(config(addr, Some(sasl))).await.unwrap();
    client.create_topic(&topic, 1, 1).await.unwrap();
    let leader = client.leader(&topic, 0).await.unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig::default()).await.unwrap();
    let produce = async {
        let started = std::time::Instant::now();
        let mut sent = 0;
        while started.elapsed() < RUN {
            producer.send(ProducerRecord::new(&topic, format!("record-{sent}"))).await.unwrap().await.unwrap();
            sent += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sent
    };
    let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default());
    consumer.assign(&topic, 0, StartAt::Earliest).await.unwrap();
    let consume = async {
        let mut values = Vec::new();
        let started = std::time::Instant::now();
        while started.elapsed() < RUN + Duration::from_secs(5) {
            for part in consumer.poll().await.unwrap() {
                values.extend(part.records().map(|r| String::from_utf8(r.value().unwrap().to_vec()).unwrap()));
            }
        }
        values
    };
    // A connection that sends nothing after its login renews its session all the same.
    let idle = async {
        let sasl = SaslConfig::new(SaslMechanism::ScramSha256, "alice", "alice-secret");
        let mut config = ConnectionConfig::default();
        config.sasl = Some(sasl);
        let connection = Connection::connect(addr, config).await.unwrap();
        tokio::time::sleep(RUN).await;
        let answer = connection.send(&MetadataRequest::default()).await;
        answer.unwrap_or_else(|e| panic!("the first request after {RUN:?} idle: {e}"));
        connection.relogins()
    };
    let [plain, scram_256, scram_512] = connections;
    let (plain, scram_256, scram_512, idle, sent, read) =
        tokio::join!(plain, scram_256, scram_512, idle, produce, consume);
    assert!(idle >= 2, "the idle connection logged in again {idle} times in 13 s of 5 s sessions");
    for (mechanism, requests, relogins) in [plain, scram_256, scram_512] {
        eprintln!("{mechanism:?}: {requests} requests on one connection, {relogins} logins after the first");
        assert!(relogins >= 2, "{mechanism:?}: 13 s of 5 s sessions need at least two more logins, saw {relogins}");
    }
    assert_eq!(read, (0..sent).map(|i| format!("record-{i}")).collect::<Vec<_>>());
    let still = client.leader(&topic, 0).await.unwrap();
    assert!(std::sync::Arc::ptr_eq(&leader, &still), "the client kept its connection to the leader");
    assert!(leader.relogins() >= 2, "the leader's connection logged in again ({})", leader.relogins());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_or_user_fails_with_an_error_that_says_so() {
    let Some(addr) = kafka_sasl() else {
        scram_refusals_on_tansu().await;
        return;
    };
    for mechanism in MECHANISMS {
        for (user, password) in [("alice", "not-her-password"), ("mallory", "alice-secret")] {
            let sasl = SaslConfig::new(mechanism, user, password);
            let error = Client::connect(config(addr, Some(sasl))).await.unwrap_err();
            match &error {
                Error::Authentication { mechanism: name, reason, broker } => {
                    assert_eq!(*name, mechanism.name());
                    assert_eq!(broker, addr);
                    assert!(reason.contains("Authentication failed"), "{mechanism:?} {user}: {error}");
                }
                other => panic!("{mechanism:?} {user}: expected an authentication error, got {other}"),
            }
            assert!(error.to_string().contains("check the user name, password and mechanism"), "{error}");
            assert!(!error.is_retriable(), "retrying a refused login cannot help: {error}");
        }
    }
}

/// Tansu: sluice's SCRAM client-first message reaches the broker's SCRAM server, which answers
/// with a SCRAM error attribute (RFC 5802 `e=`) that sluice passes on.
async fn scram_refusals_on_tansu() {
    let tansu = Broker::start_tansu_authenticating();
    for mechanism in [SaslMechanism::ScramSha256, SaslMechanism::ScramSha512] {
        let sasl = SaslConfig::new(mechanism, "alice", "alice-secret");
        let error = Client::connect(config(&tansu.addr, Some(sasl))).await.unwrap_err();
        match &error {
            Error::Authentication { mechanism: name, reason, .. } => {
                assert_eq!(*name, mechanism.name());
                assert!(reason.contains("unknown-user"), "{error}");
            }
            other => panic!("{mechanism:?}: expected an authentication error, got {other}"),
        }
        assert!(error.to_string().contains("check the user name, password and mechanism"), "{error}");
    }
    eprintln!(
        "note: Tansu 0.6.0's in-memory storage accepts AlterUserScramCredentials but keeps nothing, so no SCRAM \
         login can succeed against it; checked here: the refusal is reported clearly"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_password_is_not_sent_without_tls_unless_allowed() {
    // Refused before anything is sent: no broker needed, and none listens on port 9.
    let mut config = ClientConfig::new(["127.0.0.1:9"]);
    config.connection.sasl = Some(SaslConfig::new(SaslMechanism::Plain, "alice", "alice-secret"));
    let error = Client::connect(config.clone()).await.unwrap_err();
    assert!(matches!(error, Error::Authentication { mechanism: "PLAIN", .. }), "{error}");
    assert!(error.to_string().contains("without TLS"), "{error}");
    // SCRAM does not send the password; allowed PLAIN goes on to connect (and finds no broker).
    for sasl in [
        SaslConfig::new(SaslMechanism::ScramSha256, "alice", "alice-secret"),
        SaslConfig::new(SaslMechanism::Plain, "alice", "alice-secret").allow_plain_without_tls(),
    ] {
        config.connection.sasl = Some(sasl);
        let error = Client::connect(config.clone()).await.unwrap_err();
        assert!(!matches!(error, Error::Authentication { .. }), "{error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mechanism_the_broker_does_not_offer_fails_the_connection() {
    let broker = common::shared();
    let (_tansu, addr) = match broker.kind {
        Kind::Kafka => (None, broker.sasl_scram_only_addr.clone().expect("a SCRAM-SHA-512-only listener")),
        Kind::Tansu => {
            let tansu = Broker::start_tansu_authenticating();
            let addr = tansu.addr.clone();
            (Some(tansu), addr)
        }
    };
    let sasl = SaslConfig::new(SaslMechanism::Plain, "alice", "alice-secret");
    let error = Client::connect(config(&addr, Some(sasl))).await.unwrap_err();
    eprintln!("PLAIN against a broker that does not offer it: {error}");
    match broker.kind {
        // Kafka answers the handshake with UNSUPPORTED_SASL_MECHANISM and the mechanisms it has.
        Kind::Kafka => {
            assert!(matches!(error, Error::Authentication { mechanism: "PLAIN", .. }), "{error}");
            assert!(error.to_string().contains("SCRAM-SHA-512"), "the error names what the broker offers: {error}");
        }
        Kind::Tansu => {
            assert!(
                matches!(error, Error::Authentication { mechanism: "PLAIN", .. } | Error::Disconnected { .. }),
                "{error}"
            )
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_sasl_an_authenticating_listener_refuses_requests() {
    let broker = common::shared();
    let (_tansu, addr) = match broker.kind {
        Kind::Kafka => (None, broker.sasl_addr.clone().unwrap()),
        Kind::Tansu => {
            let tansu = Broker::start_tansu_authenticating();
            let addr = tansu.addr.clone();
            (Some(tansu), addr)
        }
    };
    let result = Client::connect(config(&addr, None)).await;
    assert!(result.is_err(), "a listener that requires authentication must refuse an unauthenticated client");
}

/// The shared Kafka broker's SASL_SSL listener and its CA (`None` on Tansu, which has neither).
fn kafka_sasl_tls() -> Option<(&'static str, sluice_client::TlsConfig)> {
    let broker = common::shared();
    (broker.kind == Kind::Kafka).then(|| {
        let addr = broker.sasl_tls_addr.as_deref().expect("the shared Kafka broker has SASL over TLS");
        let ca = std::fs::read(&broker.tls.as_ref().expect("and TLS").ca).unwrap();
        (addr, sluice_client::TlsConfig::new(&ca).unwrap())
    })
}

/// Over Kafka's SASL_SSL listener: PLAIN (no allowance needed inside TLS), both SCRAMs, and
/// OAUTHBEARER with a fixed token and with a token file (read at login) log in and work; a
/// token Kafka's validator refuses (expired) fails with the broker's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mechanism_logs_in_over_tls_oauthbearer_included() {
    let Some((addr, tls)) = kafka_sasl_tls() else {
        eprintln!("SKIPPED on Tansu: it has no TLS listener and keeps no SASL credentials");
        return;
    };
    let token_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token_file.path(), format!("{}\n", common::unsecured_jwt("bob", 3600))).unwrap();
    let logins = [
        ("PLAIN", SaslConfig::new(SaslMechanism::Plain, "alice", "alice-secret")),
        ("SCRAM-SHA-256", SaslConfig::new(SaslMechanism::ScramSha256, "alice", "alice-secret")),
        ("SCRAM-SHA-512", SaslConfig::new(SaslMechanism::ScramSha512, "alice", "alice-secret")),
        ("OAUTHBEARER token", SaslConfig::oauth_bearer(common::unsecured_jwt("bob", 3600))),
        ("OAUTHBEARER file", SaslConfig::oauth_bearer_file(token_file.path())),
    ];
    for (what, sasl) in logins {
        let mut config = ClientConfig::new([addr]);
        config.connection.tls = Some(tls.clone());
        config.connection.sasl = Some(sasl);
        config.connection.request_timeout = Duration::from_secs(5);
        let client = Client::connect(config).await.unwrap_or_else(|e| panic!("{what}: {e}"));
        let topic = unique("sasl-tls");
        client.create_topic(&topic, 1, 1).await.unwrap_or_else(|e| panic!("{what}: {e}"));
        let producer = Producer::new(client.clone(), ProducerConfig::default()).await.unwrap();
        let delivery = producer.send(ProducerRecord::new(&topic, what)).await.unwrap();
        assert_eq!(delivery.await.unwrap_or_else(|e| panic!("{what}: {e}")).offset, 0);
    }

    let mut config = ClientConfig::new([addr]);
    config.connection.tls = Some(tls);
    config.connection.sasl = Some(SaslConfig::oauth_bearer(common::unsecured_jwt("bob", -3600)));
    let error = Client::connect(config).await.unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, Error::Authentication { mechanism: "OAUTHBEARER", .. }), "{error:?}");
    assert!(text.contains("invalid_token") || text.contains("expir"), "{text}");
}
