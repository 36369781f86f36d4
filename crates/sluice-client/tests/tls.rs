//! TLS against a real TLS terminator: Debian's stunnel4 in front of Tansu, with certificates made
//! by the openssl command line for each run. The broker advertises stunnel's address, so every
//! connection the client makes (bootstrap and after metadata) is encrypted.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Tansu;
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
/// and forwarding to the broker.
struct Stunnel(Child);

impl Stunnel {
    fn start(dir: &Path, tls_addr: &str, mtls_addr: &str, broker: &str) -> Self {
        let config = format!(
            "foreground = yes\npid =\ndebug = 3\n\
             [kafka]\naccept = {tls_addr}\nconnect = {broker}\ncert = server.pem\nkey = server.key\n\
             [kafka-mtls]\naccept = {mtls_addr}\nconnect = {broker}\ncert = server.pem\nkey = server.key\n\
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produces_and_consumes_over_tls_and_refuses_untrusted_brokers() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let (tls_addr, mtls_addr) = (free_addr(), free_addr());
    let tansu = Tansu::start_free_advertising(&tls_addr);
    let _stunnel = Stunnel::start(dir.path(), &tls_addr, &mtls_addr, &tansu.addr);
    let read = |name: &str| std::fs::read(dir.path().join(name)).unwrap();

    let client = Client::connect(tls_client_config(&tls_addr, TlsConfig::new(&read("ca.pem")).unwrap())).await.unwrap();
    round_trip(&client, "encrypted").await;

    // A broker whose certificate does not chain to the trusted CA is refused, saying why.
    let untrusted = TlsConfig::new(&read("other-ca.pem")).unwrap();
    let error = Client::connect(tls_client_config(&tls_addr, untrusted)).await.unwrap_err();
    assert!(matches!(error, Error::Tls { .. }), "{error}");
    assert!(error.to_string().contains("CA file"), "{error}");

    // A certificate for another name is refused too.
    let wrong_name = TlsConfig::new(&read("ca.pem")).unwrap().server_name("kafka.example.com");
    let error = Client::connect(tls_client_config(&tls_addr, wrong_name)).await.unwrap_err();
    assert!(matches!(error, Error::Tls { .. }), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_presents_the_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let (tls_addr, mtls_addr) = (free_addr(), free_addr());
    let tansu = Tansu::start_free_advertising(&mtls_addr);
    let _stunnel = Stunnel::start(dir.path(), &tls_addr, &mtls_addr, &tansu.addr);
    let read = |name: &str| std::fs::read(dir.path().join(name)).unwrap();

    // Without a client certificate the terminator hangs up during or right after the handshake.
    let anonymous = Client::connect(tls_client_config(&mtls_addr, TlsConfig::new(&read("ca.pem")).unwrap())).await;
    assert!(anonymous.is_err(), "a client without a certificate must not get through");

    let identity =
        TlsConfig::with_client_certificate(&read("ca.pem"), &read("client.pem"), &read("client.key")).unwrap();
    let client = Client::connect(tls_client_config(&mtls_addr, identity)).await.unwrap();
    round_trip(&client, "mutual").await;
}
