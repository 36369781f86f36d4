//! TLS cost of sluice's two pure-Rust crypto providers, in one run, on the same input: Graviola
//! (the default) and RustCrypto (rustls-rustcrypto 0.0.2-alpha, the provider before it), against
//! one Apache Kafka 4.4 broker's TLS listener (server authentication only; an ECDSA P-256
//! certificate from the harness's test CA, `scripts/kafka.sh --tls`).
//!
//! - Handshakes: 200 connections (set `SLUICE_BENCH_HANDSHAKES` to change) opened one after
//!   another with `Connection::connect`, each a TCP connect, a full TLS handshake and ApiVersions,
//!   then closed. Each connection has a `TlsConfig` of its own (built before the clock starts), so
//!   none could resume a session. Printed: mean, p50 and p99 milliseconds per connection, and
//!   client CPU per connection.
//! - Bulk: 1,000,000 x 100-byte records (set `SLUICE_BENCH_RECORDS` to change) produced over TLS
//!   by the sluice Producer (defaults: acks=all, idempotent, no compression) to a fresh
//!   1-partition topic, from connecting to the last acknowledgement. Printed: records/s, MB/s (of
//!   record values, 10^6 bytes) and client CPU microseconds per record.
//!
//! Both are made in 3 rounds (set `SLUICE_BENCH_ROUNDS` to change), the providers' order
//! alternating from one round to the next, so that a change in the machine's load falls on both;
//! the handshake rows take every round's connections together, the bulk rows the median round
//! (each round's numbers are printed too).
//!
//! Each measurement runs in a child process of this binary (`--child`), which reads its own CPU
//! (user + system, `common::cpu_s`, from /proc in 10 ms ticks: the precision is printed) around the
//! measured part only, so the CPU is the client's own and the process start-up is left out. The
//! broker is warmed up first by one unmeasured run of every measurement with each provider. Also
//! printed: the TLS version, cipher suite and key exchange each provider negotiated, whether a
//! second connection with the same configuration resumed the session, and the load average
//! before and after (the wall times are the broker's too, and it shares the machine). Ratios are
//! graviola / rustcrypto: below 1 for times and CPU, above 1 for records/s and MB/s, means
//! Graviola is better.
//!
//! The broker is one of its own (1 GiB heap), or the one `SLUICE_TEST_KAFKA_DIR` names (started
//! with `--tls`, as `scripts/test.sh` does).
//! Run: `cargo bench -p sluice-client --bench tls` (needs `scripts/install-peers.sh`).
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)] // a command-line program

use sluice_testkit as common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};
use sluice_client::{
    Client, ClientConfig, Connection, ConnectionConfig, Crypto, Producer, ProducerConfig, ProducerRecord, TlsConfig,
    Trust,
};

const VALUE_BYTES: usize = 100;

/// The providers compared, the new default first.
const PROVIDERS: [Crypto; 2] = [Crypto::Graviola, Crypto::RustCrypto];

fn records() -> usize {
    std::env::var("SLUICE_BENCH_RECORDS").ok().and_then(|n| n.parse().ok()).unwrap_or(1_000_000)
}

fn rounds() -> usize {
    std::env::var("SLUICE_BENCH_ROUNDS").ok().and_then(|n| n.parse().ok()).unwrap_or(3).max(1)
}

fn connection_count() -> usize {
    std::env::var("SLUICE_BENCH_HANDSHAKES").ok().and_then(|n| n.parse().ok()).unwrap_or(200)
}

/// The i-th record's value, built in one allocation (as in benches/clients.rs).
fn value(i: usize) -> Vec<u8> {
    use std::io::Write as _;
    let mut v = Vec::with_capacity(VALUE_BYTES);
    write!(v, "{i:010}-").unwrap();
    v.resize(VALUE_BYTES, b'x');
    v
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--child") {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let report = runtime.block_on(child(&args[pos + 1..]));
        println!("{report}");
        return;
    }
    assert!(
        Crypto::RustCrypto.built(),
        "the rustcrypto provider is not built in: the bench needs the sluice-client dev-dependency on itself with \
         features = [\"rustcrypto\"]"
    );
    if let Err(e) = Crypto::Graviola.provider() {
        panic!("Graviola cannot run here, nothing to compare: {e}");
    }
    // The broker: the one SLUICE_TEST_KAFKA_DIR names (attached, left running), else our own.
    let own;
    let broker = if std::env::var_os("SLUICE_TEST_KAFKA_DIR").is_some() {
        common::shared()
    } else {
        own = common::Broker::start_for_benchmark_with_tls();
        &own
    };
    let tls = broker.tls.as_ref().expect("the broker has no TLS listeners (start it with scripts/kafka.sh --tls)");
    let ca = tls.ca.to_str().unwrap();
    let (n, connections, rounds) = (records(), connection_count(), rounds());
    println!(
        "TLS crypto providers against {} on {} (TLS listener {}): {rounds} rounds of {connections} connections and \
         {n} records of {VALUE_BYTES} bytes",
        broker.kind.name(),
        broker.addr,
        tls.addr
    );
    println!("load average before: {}", load_average());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let admin = runtime.block_on(Client::connect(ClientConfig::new([broker.addr.as_str()]))).unwrap();
    let fresh_topic = |name: &str| {
        let topic = common::unique(name);
        runtime.block_on(async {
            admin.create_topic(&topic, 1, 1).await.unwrap();
            let connection = Connection::connect(&broker.addr, ConnectionConfig::default()).await.unwrap();
            common::wait_for_leaders(&connection, &topic, 1).await;
        });
        topic
    };
    // A JVM broker compiles its hot paths (its TLS among them) as it runs: warm it up with every
    // measurement once per provider, not measured.
    for crypto in PROVIDERS {
        eprintln!("[warm-up: {crypto}]");
        myself(&["handshakes", crypto.name(), &tls.addr, ca, &connections.to_string()]);
        let topic = fresh_topic(&format!("tls-warm-up-{crypto}"));
        myself(&["produce", crypto.name(), &tls.addr, ca, &topic, &n.to_string()]);
    }
    // Rounds with the providers' order alternating, so that a change in the machine's load
    // (the broker's wall times are in every number) falls on both.
    let mut runs: Vec<Measured> =
        PROVIDERS.into_iter().map(|crypto| Measured { crypto, handshakes: Vec::new(), bulk: Vec::new() }).collect();
    for round in 0..rounds {
        let order: Vec<usize> = if round % 2 == 0 { vec![0, 1] } else { vec![1, 0] };
        for i in order {
            let run = &mut runs[i];
            eprintln!("[round {} of {rounds}: {}]", round + 1, run.crypto);
            let name = run.crypto.name();
            run.handshakes.push(myself(&["handshakes", name, &tls.addr, ca, &connections.to_string()]));
            let topic = fresh_topic(&format!("tls-bulk-{name}"));
            run.bulk.push(myself(&["produce", name, &tls.addr, ca, &topic, &n.to_string()]));
        }
    }
    println!("load average after: {}", load_average());
    print_table(&runs, n, connections);
}

/// The 1, 5 and 15 minute load averages, from /proc.
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// Runs this binary as `--child ARGS`, returning the JSON report it prints.
fn myself(args: &[&str]) -> Value {
    let output = Command::new(std::env::current_exe().unwrap())
        .arg("--child")
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(output.status.success(), "the child {args:?} failed");
    let text = String::from_utf8(output.stdout).unwrap();
    serde_json::from_str(text.lines().last().unwrap()).unwrap()
}

/// One provider's reports, one a round.
struct Measured {
    crypto: Crypto,
    handshakes: Vec<Value>,
    bulk: Vec<Value>,
}

fn print_table(runs: &[Measured], n: usize, connections: usize) {
    let f = |v: &Value| v.as_f64().unwrap();
    // Each row: its name and each provider's number. Handshakes: every round's connections
    // together; bulk: the median of the rounds.
    let mut rows: Vec<(String, Vec<f64>)> = Vec::new();
    let sorted: Vec<Vec<f64>> = runs.iter().map(|r| times(&r.handshakes)).collect();
    let of = |stat: &dyn Fn(&[f64]) -> f64| sorted.iter().map(|t| stat(t)).collect::<Vec<f64>>();
    rows.push(("handshake: mean ms".to_owned(), of(&|t| t.iter().sum::<f64>() / t.len().max(1) as f64)));
    rows.push(("handshake: p50 ms".to_owned(), of(&|t| common::percentile(t, 0.50))));
    rows.push(("handshake: p99 ms".to_owned(), of(&|t| common::percentile(t, 0.99))));
    let cpu_ms = runs
        .iter()
        .map(|r| {
            r.handshakes.iter().map(|h| f(&h["cpu_s"])).sum::<f64>() * 1e3 / (connections * r.handshakes.len()) as f64
        })
        .collect();
    rows.push(("handshake: client CPU ms".to_owned(), cpu_ms));
    let bulk = |of: &dyn Fn(f64, f64) -> f64| {
        runs.iter().map(|r| median(r.bulk.iter().map(|b| of(f(&b["wall_s"]), f(&b["cpu_s"]))).collect())).collect()
    };
    rows.push(("bulk: records/s".to_owned(), bulk(&|wall, _| n as f64 / wall)));
    rows.push(("bulk: MB/s".to_owned(), bulk(&|wall, _| (n * VALUE_BYTES) as f64 / wall / 1e6)));
    rows.push(("bulk: client CPU us/record".to_owned(), bulk(&|_, cpu| cpu * 1e6 / n as f64)));
    rows.push(("bulk: wall s".to_owned(), bulk(&|wall, _| wall)));

    println!();
    for run in runs {
        println!(
            "{}: negotiated {}; a second connection with the same config: {}",
            run.crypto,
            run.handshakes[0]["negotiated"].as_str().unwrap(),
            run.handshakes[0]["second"].as_str().unwrap()
        );
    }
    for run in runs {
        let each = |of: &dyn Fn(&Value) -> f64| run.bulk.iter().map(|b| format!("{:.0}", of(b))).collect::<Vec<_>>();
        println!(
            "{} bulk by round: records/s {}; client CPU ns/record {}",
            run.crypto,
            each(&|b| n as f64 / f(&b["wall_s"])).join(", "),
            each(&|b| f(&b["cpu_s"]) * 1e9 / n as f64).join(", ")
        );
    }
    println!();
    let names: Vec<&str> = runs.iter().map(|r| r.crypto.name()).collect();
    println!("| measurement | {} | {} / {} |", names.join(" | "), names[0], names[1]);
    println!("| --- | {}--- |", "--- | ".repeat(names.len()));
    for (name, values) in &rows {
        let shown: Vec<String> = values.iter().map(|v| format!("{v:.3}")).collect();
        let ratio = if values[1] > 0.0 { format!("{:.2}", values[0] / values[1]) } else { "n/a".to_owned() };
        println!("| {name} | {} | {ratio} |", shown.join(" | "));
    }
    println!(
        "\nhandshake rows: all rounds' connections together; bulk rows: the median of the rounds\n\
         ratio = graviola / rustcrypto: below 1 for ms, CPU and wall s, above 1 for records/s and MB/s, means \
         Graviola is better"
    );
    println!(
        "CPU precision: 10 ms a child run, so +-{:.3} ms per connection and +-{:.4} us per record",
        10.0 / connections as f64,
        10_000.0 / n as f64
    );
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    common::percentile(&values, 0.5)
}

/// Every round's handshake times, sorted.
fn times(reports: &[Value]) -> Vec<f64> {
    let mut times: Vec<f64> =
        reports.iter().flat_map(|r| r["times_ms"].as_array().unwrap().iter().map(|t| t.as_f64().unwrap())).collect();
    times.sort_by(f64::total_cmp);
    times
}

fn crypto_named(name: &str) -> Crypto {
    PROVIDERS.into_iter().find(|c| c.name() == name).unwrap_or_else(|| panic!("unknown provider {name}"))
}

/// A child's measurement, as one line of JSON.
async fn child(args: &[String]) -> Value {
    match args[0].as_str() {
        "handshakes" => {
            let (crypto, addr, ca) = (crypto_named(&args[1]), &args[2], std::fs::read(&args[3]).unwrap());
            handshakes(crypto, addr, &ca, args[4].parse().unwrap()).await
        }
        "produce" => {
            let (crypto, addr, ca, topic) =
                (crypto_named(&args[1]), &args[2], std::fs::read(&args[3]).unwrap(), &args[4]);
            produce(crypto, addr, &ca, topic, args[5].parse().unwrap()).await
        }
        other => panic!("unknown mode {other}"),
    }
}

/// Opens `count` connections one after another, each with a `TlsConfig` of its own (so each
/// makes a full handshake), timing each.
async fn handshakes(crypto: Crypto, addr: &str, ca: &[u8], count: usize) -> Value {
    let (negotiated, second) = negotiated(crypto, addr, ca).await;
    let configs: Vec<TlsConfig> = (0..count).map(|_| TlsConfig::build(crypto, Trust::Pem(ca), None).unwrap()).collect();
    let mut times_ms = Vec::with_capacity(count);
    let (start, cpu) = (Instant::now(), common::cpu_s());
    for tls in configs {
        let mut config = ConnectionConfig::default();
        config.tls = Some(tls);
        let began = Instant::now();
        let connection = Connection::connect(addr, config).await.unwrap();
        times_ms.push(began.elapsed().as_secs_f64() * 1e3);
        drop(connection);
    }
    let (wall_s, cpu_s) = (start.elapsed().as_secs_f64(), common::cpu_s() - cpu);
    json!({ "wall_s": wall_s, "cpu_s": cpu_s, "times_ms": times_ms, "negotiated": negotiated, "second": second })
}

/// What `crypto` negotiates with the broker (TLS version, cipher suite, key exchange), and
/// whether a second connection with the same configuration resumed: two connections made with
/// rustls directly (the same provider, protocol versions and roots as `TlsConfig::build`), each
/// exchanging an ApiVersions v0 so that the broker's session ticket is read.
async fn negotiated(crypto: Crypto, addr: &str, ca: &[u8]) -> (String, String) {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(crypto.provider().unwrap())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let host = addr.rsplit_once(':').unwrap().0.to_owned();
    let mut said = Vec::new();
    for _ in 0..2 {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut stream = connector.connect(ServerName::try_from(host.clone()).unwrap(), tcp).await.unwrap();
        // ApiVersions v0: size, api key 18, version 0, correlation id 1, null client id.
        stream.write_all(&[0, 0, 0, 10, 0, 18, 0, 0, 0, 0, 0, 1, 0xff, 0xff]).await.unwrap();
        stream.flush().await.unwrap();
        let size = stream.read_u32().await.unwrap();
        let mut body = vec![0; size as usize];
        stream.read_exact(&mut body).await.unwrap();
        let (_, connection) = stream.get_ref();
        said.push((
            format!(
                "{:?} {:?} {} ({:?} handshake)",
                connection.protocol_version().unwrap(),
                connection.negotiated_cipher_suite().unwrap().suite(),
                connection.negotiated_key_exchange_group().map_or("no group".to_owned(), |g| format!("{:?}", g.name())),
                connection.handshake_kind().unwrap()
            ),
            format!("{:?} handshake", connection.handshake_kind().unwrap()),
        ));
    }
    (said.swap_remove(0).0, said.swap_remove(0).1)
}

/// Produces `n` records to partition 0 of `topic` over TLS with `crypto`; timed from connecting to
/// the last acknowledgement.
async fn produce(crypto: Crypto, addr: &str, ca: &[u8], topic: &str, n: usize) -> Value {
    let mut config = ClientConfig::new([addr]);
    config.connection.tls = Some(TlsConfig::build(crypto, Trust::Pem(ca), None).unwrap());
    let (start, cpu) = (Instant::now(), common::cpu_s());
    let client = Client::connect(config).await.unwrap();
    let producer = Producer::new(client, ProducerConfig::default()).await.unwrap();
    let mut last = None;
    for i in 0..n {
        let record = ProducerRecord { partition: Some(0), ..ProducerRecord::new(topic, value(i)) };
        last = Some(producer.send(record).await.unwrap());
    }
    producer.flush().await.unwrap();
    last.unwrap().await.unwrap();
    json!({ "wall_s": start.elapsed().as_secs_f64(), "cpu_s": common::cpu_s() - cpu })
}
