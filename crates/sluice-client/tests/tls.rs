//! TLS against a real broker: Apache Kafka's own TLS listeners (one with server authentication,
//! one requiring a client certificate; `scripts/kafka.sh --tls` makes their test CA), or with
//! `SLUICE_TEST_BROKER=tansu`, which has no TLS, Debian's stunnel4 terminating TLS in front of
//! Tansu. Either way the broker advertises its TLS address, so every connection the client makes
//! (bootstrap and after metadata) is encrypted. Certificates are made by the openssl command line.

use sluice_testkit as common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{unique, Broker, Kind};
use sluice_client::{
    Client, ClientConfig, Consumer, ConsumerConfig, Error, Producer, ProducerConfig, ProducerRecord, StartAt, TlsConfig,
};

fn free_addr() -> String {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string()
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl is installed");
    assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

/// A CA, a server certificate it signs for 127.0.0.1, and a client certificate; plus a second,
/// unrelated CA.
fn make_certificates(dir: &Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    for ca in ["ca", "other-ca"] {
        let (key, pem, subject) = (format!("{ca}.key"), format!("{ca}.pem"), format!("/CN=sluice test {ca}"));
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &pem, "-days", "2", "-subj", &subject]);
        openssl(dir, &args);
    }
    std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
        .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for who in ["server", "client"] {
        let (key, csr, pem, ext) =
            (format!("{who}.key"), format!("{who}.csr"), format!("{who}.pem"), format!("{who}.ext"));
        let mut args = vec!["req"];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=localhost"]);
        openssl(dir, &args);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
    }
}

/// stunnel4 terminating TLS on `tls_addr` (and, requiring a client certificate, on `mtls_addr`)
/// and forwarding to the brokers behind them (Tansu has no TLS of its own).
struct Stunnel(Child);

impl Stunnel {
    fn start(dir: &Path, tls_addr: &str, tls_broker: &str, mtls_addr: &str, mtls_broker: &str) -> Self {
        let config = format!(
            "foreground = yes\npid =\ndebug = 3\n\
             [kafka]\naccept = {tls_addr}\nconnect = {tls_broker}\ncert = server.pem\nkey = server.key\n\
             [kafka-mtls]\naccept = {mtls_addr}\nconnect = {mtls_broker}\ncert = server.pem\nkey = server.key\n\
             verifyChain = yes\nCAfile = ca.pem\n"
        );
        std::fs::write(dir.join("stunnel.conf"), config).unwrap();
        let child = Command::new("stunnel4")
            .arg("stunnel.conf")
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("stunnel4 is installed (scripts/install-peers.sh)");
        let deadline = Instant::now() + Duration::from_secs(10);
        for addr in [tls_addr, mtls_addr] {
            while std::net::TcpStream::connect(addr).is_err() {
                assert!(Instant::now() < deadline, "stunnel did not listen on {addr}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Self(child)
    }
}

impl Drop for Stunnel {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tls_client_config(addr: &str, tls: TlsConfig) -> ClientConfig {
    let mut config = ClientConfig::new([addr]);
    config.connection.tls = Some(tls);
    config.connection.connect_timeout = Duration::from_secs(5);
    config.connection.request_timeout = Duration::from_secs(5);
    config
}

async fn round_trip(client: &Client, topic: &str) {
    client.create_topic(topic, 1, 1).await.unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig::default()).await.unwrap();
    let mut deliveries = Vec::new();
    for i in 0..100 {
        let record = ProducerRecord::new(topic, format!("secret {i}")).key(format!("k{i}"));
        deliveries.push(producer.send(record).await.unwrap());
    }
    for delivery in deliveries {
        delivery.await.unwrap();
    }
    let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default());
    consumer.assign(topic, 0, StartAt::Earliest).await.unwrap();
    let mut values = Vec::new();
    for _ in 0..50 {
        for part in consumer.poll().await.unwrap() {
            values.extend(part.records().map(|r| String::from_utf8(r.value().unwrap().to_vec()).unwrap()));
        }
        if values.len() >= 100 {
            break;
        }
    }
    assert_eq!(values, (0..100).map(|i| format!("secret {i}")).collect::<Vec<_>>());
}

/// Where TLS is served and the files to trust and present, kept alive for a test.
struct TlsBroker {
    tls_addr: String,
    mtls_addr: String,
    ca: Vec<u8>,
    client_cert: Vec<u8>,
    client_key: Vec<u8>,
    /// A CA that signed nothing the broker has.
    other_ca: Vec<u8>,
    _dir: tempfile::TempDir,
    _tansu: Option<(Broker, Broker, Stunnel)>,
}

fn tls_broker() -> TlsBroker {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let read = |path: &Path| std::fs::read(path).unwrap();
    let broker = common::shared();
    match broker.kind {
        Kind::Kafka => {
            let tls = broker.tls.as_ref().expect("the shared Kafka broker has TLS listeners");
            TlsBroker {
                tls_addr: tls.addr.clone(),
                mtls_addr: tls.mutual_addr.clone(),
                ca: read(&tls.ca),
                client_cert: read(&tls.client_cert),
                client_key: read(&tls.client_key),
                other_ca: read(&dir.path().join("other-ca.pem")),
                _dir: dir,
                _tansu: None,
            }
        }
        Kind::Tansu => {
            // One broker advertising the TLS address, one the mutual-TLS address.
            let (tls_addr, mtls_addr) = (free_addr(), free_addr());
            let tls = Broker::start_tansu_advertising(&tls_addr);
            let mtls = Broker::start_tansu_advertising(&mtls_addr);
            let stunnel = Stunnel::start(dir.path(), &tls_addr, &tls.addr, &mtls_addr, &mtls.addr);
            TlsBroker {
                tls_addr,
                mtls_addr,
                ca: read(&dir.path().join("ca.pem")),
                client_cert: read(&dir.path().join("client.pem")),
                client_key: read(&dir.path().join("client.key")),
                other_ca: read(&dir.path().join("other-ca.pem")),
                _dir: dir,
                _tansu: Some((tls, mtls, stunnel)),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produces_and_consumes_over_tls_and_refuses_untrusted_brokers() {
    let broker = tls_broker();
    let tls_addr = &broker.tls_addr;
    let client = Client::connect(tls_client_config(tls_addr, TlsConfig::new(&broker.ca).unwrap())).await.unwrap();
    round_trip(&client, &unique("encrypted")).await;

    // A broker whose certificate does not chain to the trusted CA is refused, saying why.
    let untrusted = TlsConfig::new(&broker.other_ca).unwrap();
    let error = Client::connect(tls_client_config(tls_addr, untrusted)).await.unwrap_err();
    assert!(matches!(error, Error::Tls { .. }), "{error}");
    assert!(error.to_string().contains("not signed by a CA this client trusts"), "{error}");

    // A certificate for another name is refused too.
    let wrong_name = TlsConfig::new(&broker.ca).unwrap().server_name("kafka.example.com");
    let error = Client::connect(tls_client_config(tls_addr, wrong_name)).await.unwrap_err();
    assert!(matches!(error, Error::Tls { .. }), "{error}");
    assert!(error.to_string().contains("not valid for the name \"kafka.example.com\""), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_presents_the_client_certificate() {
    let broker = tls_broker();
    let mtls_addr = &broker.mtls_addr;

    // Without a client certificate the broker hangs up during or right after the handshake.
    let anonymous = Client::connect(tls_client_config(mtls_addr, TlsConfig::new(&broker.ca).unwrap())).await;
    assert!(anonymous.is_err(), "a client without a certificate must not get through");

    // A certificate the broker's CA did not sign is refused as well.
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let stranger = |name: &str| std::fs::read(dir.path().join(name)).unwrap();
    let foreign =
        TlsConfig::with_client_certificate(&broker.ca, &stranger("client.pem"), &stranger("client.key")).unwrap();
    let refused = Client::connect(tls_client_config(mtls_addr, foreign)).await;
    assert!(refused.is_err(), "a client certificate from another CA must not get through");

    let identity = TlsConfig::with_client_certificate(&broker.ca, &broker.client_cert, &broker.client_key).unwrap();
    let client = Client::connect(tls_client_config(mtls_addr, identity)).await.unwrap();
    round_trip(&client, &unique("mutual")).await;
}
