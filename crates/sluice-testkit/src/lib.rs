//! Real brokers for integration tests, chosen by `SLUICE_TEST_BROKER`:
//!
//! - `kafka` (the default): Apache Kafka 4.4 in KRaft mode, started by `scripts/kafka.sh` from the
//!   jars `scripts/install-peers.sh` put in `.peers/kafka/lib`. A JVM takes seconds to start, so
//!   the tests of one binary share one broker ([`shared`]), and a whole `cargo test` run shares
//!   the one named by `SLUICE_TEST_KAFKA_DIR` (a directory `kafka.sh start` made; `scripts/test.sh`
//!   starts it) when that is set. The shared broker also has SASL and TLS listeners.
//! - `tansu`: Tansu 0.6.0 (`.peers/bin/tansu`, or `$SLUICE_TANSU`), in memory, 0.1 s to start.
//!
//! Tests sharing a broker name their topics, groups and transactional ids with [`unique`].
//! Tests that stop, kill or restart a broker, or put a proxy in front of it, start their own
//! ([`Broker::start`], [`Broker::start_cluster`], [`Broker::start_behind_proxy`]); it is stopped
//! when dropped, and also once this process has exited (a Kafka broker by `kafka.sh --watch`,
//! Tansu by a watcher of its own), so that a shared broker, which lives in a static, does not
//! outlive the test binary.

// Test support: it prints what the tests should show, and its helpers panic on what a test
// cannot go on without.
#![allow(clippy::print_stdout, missing_debug_implementations)]

pub mod cancel;
pub mod cluster;
pub mod java;
pub mod member;
pub mod proxy;
pub mod riding;
pub mod streams;
pub mod timing;

use bytes::BytesMut;
use sluice_client::Connection;
use sluice_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use sluice_protocol::messages::produce_response::PartitionProduceResponse;
use sluice_protocol::messages::ProduceRequest;
use sluice_protocol::record::{encode_batch, BatchHeader, Record};

use std::collections::{BTreeMap, HashMap};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Which broker implementation the tests run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Apache Kafka 4.4 (KRaft): the reference.
    Kafka,
    /// Tansu 0.6.0 (memory storage): a second implementation, with known deviations.
    Tansu,
}

impl Kind {
    /// The implementation and version, for what tests and benchmarks print.
    pub fn name(self) -> &'static str {
        match self {
            Self::Kafka => "Apache Kafka 4.4.0",
            Self::Tansu => "Tansu 0.6.0",
        }
    }
}

/// The broker implementation chosen by `SLUICE_TEST_BROKER` (`kafka`, the default, or `tansu`).
pub fn kind() -> Kind {
    match std::env::var("SLUICE_TEST_BROKER").as_deref() {
        Ok("kafka") | Ok("") | Err(_) => Kind::Kafka,
        Ok("tansu") => Kind::Tansu,
        Ok(other) => panic!("SLUICE_TEST_BROKER={other}: expected `kafka` or `tansu`"),
    }
}

/// `prefix` made unique among the tests of every process sharing a broker: topic, group and
/// transactional-id names.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The broker the tests of this process share (started on first use).
pub fn shared() -> &'static Broker {
    static SHARED: OnceLock<Broker> = OnceLock::new();
    SHARED.get_or_init(|| match kind() {
        Kind::Tansu => Broker::start_tansu(None, &[]),
        Kind::Kafka => match std::env::var_os("SLUICE_TEST_KAFKA_DIR") {
            Some(dir) => Broker::attach_kafka(Path::new(&dir)),
            None => Broker::start_kafka(&KafkaOptions {
                nodes: 1,
                heap: TEST_HEAP,
                sasl: true,
                tls: true,
                external: None,
                config: &[],
            }),
        },
    })
}

/// The shared broker, a client of it, and a new topic named after `prefix` with `partitions`
/// partitions (replication 1).
pub async fn new_topic(prefix: &str, partitions: i32) -> (&'static Broker, sluice_client::Client, String) {
    let broker = shared();
    let client =
        sluice_client::Client::connect(sluice_client::ClientConfig::new([broker.addr.as_str()])).await.unwrap();
    let topic = unique(prefix);
    client.create_topic(&topic, partitions, 1).await.unwrap();
    (broker, client, topic)
}

/// Writes `records` records of 100 bytes to `topic`, round-robin over its partitions
/// `0..partitions` (a benchmark's input), and waits until all are acknowledged.
pub async fn fill(client: &sluice_client::Client, topic: &str, records: usize, partitions: i32) {
    use sluice_client::{Producer, ProducerConfig, ProducerRecord};
    let producer = Producer::new(client.clone(), ProducerConfig::default()).await.unwrap();
    let value = vec![b'x'; 100];
    for i in 0..records {
        let partition = Some((i % partitions as usize) as i32);
        drop(producer.send(ProducerRecord { partition, ..ProducerRecord::new(topic, value.clone()) }).await.unwrap());
    }
    producer.flush().await.unwrap();
}

/// A scale-out test's job on the shared broker: a client, new input and output (one partition)
/// topics and a group (named after a prefix), and a producer for the input.
#[derive(Debug)]
pub struct ScaleJob {
    pub broker: &'static Broker,
    pub client: sluice_client::Client,
    pub input: String,
    pub output: String,
    pub group: String,
    pub producer: sluice_client::Producer,
}

/// A [`ScaleJob`] with an input of `partitions`; `None` on Tansu, having said why the test
/// skips (`skip_on_tansu`).
pub async fn scale_job(skip_on_tansu: &str, prefix: &str, partitions: i32) -> Option<ScaleJob> {
    let broker = shared();
    if broker.kind == Kind::Tansu {
        eprintln!("SKIPPED on Tansu: {skip_on_tansu}");
        return None;
    }
    let client =
        sluice_client::Client::connect(sluice_client::ClientConfig::new([broker.addr.as_str()])).await.unwrap();
    let (input, output, group) =
        (unique(&format!("{prefix}-in")), unique(&format!("{prefix}-out")), unique(&format!("{prefix}-job")));
    client.create_topic(&input, partitions, 1).await.unwrap();
    client.create_topic(&output, 1, 1).await.unwrap();
    let producer =
        sluice_client::Producer::new(client.clone(), sluice_client::ProducerConfig::default()).await.unwrap();
    Some(ScaleJob { broker, client, input, output, group, producer })
}

/// Waits (up to `timeout`) until `group`'s committed offsets, read as stable, reach the log ends
/// of `topic`'s partitions `0..partitions` (as they are at that moment): a job consuming it has
/// caught up.
/// `alive` runs before each look (to fail at once if the job died); returns the log ends.
pub async fn wait_for_group_at_end(
    client: &sluice_client::Client,
    group: &str,
    topic: &str,
    partitions: i32,
    timeout: Duration,
    mut alive: impl FnMut(),
) -> BTreeMap<(String, i32), i64> {
    let partitions: Vec<(String, i32)> = (0..partitions).map(|p| (topic.to_owned(), p)).collect();
    let deadline = Instant::now() + timeout;
    loop {
        alive();
        // Read again each time: a transaction's commit marker may land after the job's offsets
        // (which then point past it).
        let ends = client.log_ends(&partitions, sluice_client::Isolation::ReadUncommitted).await.unwrap();
        let committed = client.stable_group_offsets(group, &partitions).await.unwrap();
        let behind: BTreeMap<i32, (Option<i64>, Option<i64>)> = partitions
            .iter()
            .filter(|p| committed.get(*p).copied().flatten() != ends.get(*p).copied())
            .map(|p| (p.1, (committed.get(p).copied().flatten(), ends.get(p).copied())))
            .collect();
        if behind.is_empty() {
            return ends;
        }
        assert!(Instant::now() < deadline, "group {group} never caught up (committed, end): {behind:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A broker (or cluster) started by a test: stopped when dropped, unless it is a shared one this
/// process only attached to.
#[derive(Debug)]
pub struct Broker {
    pub kind: Kind,
    /// The first node's plaintext listener.
    pub addr: String,
    /// Every node's plaintext listener.
    pub bootstrap: Vec<String>,
    /// Kafka: the listeners and files of the SASL and TLS options (`None` when not started so).
    /// SASL users: `alice` / `alice-secret`, for PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512.
    pub sasl_addr: Option<String>,
    /// Kafka with SASL: a listener offering SCRAM-SHA-512 only.
    pub sasl_scram_only_addr: Option<String>,
    /// Kafka with SASL and TLS: a SASL_SSL listener offering PLAIN, SCRAM-SHA-256/512 and
    /// OAUTHBEARER (unsigned tokens: [`unsecured_jwt`]).
    pub sasl_tls_addr: Option<String>,
    pub tls: Option<TlsListeners>,
    /// Kafka with proxies in front: per node, the listener its proxy forwards to.
    external: Vec<String>,
    process: Process,
}

/// A Kafka broker's TLS listeners and the test CA's files.
#[derive(Debug, Clone)]
pub struct TlsListeners {
    /// Server authentication only.
    pub addr: String,
    /// A client certificate signed by the CA required.
    pub mutual_addr: String,
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

#[derive(Debug)]
enum Process {
    Tansu {
        child: Mutex<Option<Child>>,
        extra: Vec<String>,
        advertised: String,
    },
    /// `pids` by node id; `owned`: stop the cluster when dropped.
    Kafka {
        dir: PathBuf,
        pids: Mutex<HashMap<u32, u32>>,
        owned: bool,
    },
}

struct KafkaOptions<'a> {
    nodes: u32,
    heap: &'a str,
    sasl: bool,
    tls: bool,
    external: Option<&'a str>,
    /// Broker settings (`key=value`) beside the test defaults.
    config: &'a [&'a str],
}

/// The heap of a test broker's JVM: enough for the tests, small beside the machine's memory.
const TEST_HEAP: &str = "384m";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

impl Broker {
    /// A one-node broker of its own, on a free port.
    pub fn start() -> Self {
        match kind() {
            Kind::Tansu => Self::start_tansu(None, &[]),
            Kind::Kafka => Self::start_kafka(&KafkaOptions {
                nodes: 1,
                heap: TEST_HEAP,
                sasl: false,
                tls: false,
                external: None,
                config: &[],
            }),
        }
    }

    /// A one-node broker of its own for a benchmark: as [`Broker::start`], Kafka with a heap of
    /// 1 GiB (a small test heap makes its collector a cost the clients measured would pay).
    pub fn start_for_benchmark() -> Self {
        match kind() {
            Kind::Tansu => Self::start_tansu(None, &[]),
            Kind::Kafka => Self::start_kafka(&KafkaOptions {
                nodes: 1,
                heap: "1g",
                sasl: false,
                tls: false,
                external: None,
                config: &[],
            }),
        }
    }

    /// A one-node Kafka broker of its own for a benchmark over TLS: as
    /// [`Broker::start_for_benchmark`], with the TLS listeners of [`Broker::tls`] (and their test
    /// CA). Kafka only: Tansu has no TLS of its own.
    pub fn start_for_benchmark_with_tls() -> Self {
        assert_eq!(kind(), Kind::Kafka, "a broker with TLS listeners needs Apache Kafka (SLUICE_TEST_BROKER=kafka)");
        Self::start_kafka(&KafkaOptions { nodes: 1, heap: "1g", sasl: false, tls: true, external: None, config: &[] })
    }

    /// A one-node Kafka broker of its own with these settings (`key=value`, e.g.
    /// `group.coordinator.rebalance.protocols=classic`) beside the test defaults. Kafka only: the
    /// caller of a test that needs it on Tansu says so and skips.
    pub fn start_kafka_configured(config: &[&str]) -> Self {
        assert_eq!(kind(), Kind::Kafka, "a configured broker needs Apache Kafka (SLUICE_TEST_BROKER=kafka)");
        Self::start_kafka(&KafkaOptions { nodes: 1, heap: TEST_HEAP, sasl: false, tls: false, external: None, config })
    }

    /// A cluster of `nodes` Kafka nodes (combined broker and controller each; topics default to
    /// `min(nodes, 3)` replicas). Kafka only: Tansu has no clusters; the caller says so and skips.
    pub fn start_cluster(nodes: u32) -> Self {
        assert_eq!(kind(), Kind::Kafka, "a cluster needs Apache Kafka (SLUICE_TEST_BROKER=kafka)");
        Self::start_kafka(&KafkaOptions {
            nodes,
            heap: TEST_HEAP,
            sasl: false,
            tls: false,
            external: None,
            config: &[],
        })
    }

    /// A broker of its own on a free port behind a fault proxy: the broker advertises the proxy's
    /// address, so every connection the client makes (bootstrap and after metadata) goes through
    /// it. (Kafka: on a listener of its own; its inter-broker traffic does not cross the proxy.)
    /// `addr` stays the broker's own; clients connect to the proxy's.
    pub fn start_behind_proxy() -> (Self, proxy::Proxy) {
        let proxy_listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy_addr = proxy_listener.local_addr().unwrap().to_string();
        let broker = match kind() {
            Kind::Tansu => Self::start_tansu(Some(&proxy_addr), &[]),
            Kind::Kafka => Self::start_kafka(&KafkaOptions {
                nodes: 1,
                heap: TEST_HEAP,
                sasl: false,
                tls: false,
                external: Some(&proxy_addr),
                config: &[],
            }),
        };
        let upstream = broker.external.first().cloned().unwrap_or_else(|| broker.addr.clone());
        let proxy = proxy::Proxy::start(proxy_listener, upstream);
        (broker, proxy)
    }

    /// A cluster of `nodes` Kafka nodes, each behind a fault proxy of its own that its
    /// advertised listener names: a client bootstrapped from the proxies' addresses reaches
    /// every node through its proxy. `bootstrap` stays the nodes' own listeners, for a client
    /// the faults should not touch.
    pub fn start_cluster_behind_proxies(nodes: u32) -> (Self, Vec<proxy::Proxy>) {
        assert_eq!(kind(), Kind::Kafka, "a cluster needs Apache Kafka (SLUICE_TEST_BROKER=kafka)");
        let listeners: Vec<TcpListener> = (0..nodes).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
        let addresses: Vec<String> = listeners.iter().map(|l| l.local_addr().unwrap().to_string()).collect();
        let joined = addresses.join(",");
        let options =
            KafkaOptions { nodes, heap: TEST_HEAP, sasl: false, tls: false, external: Some(&joined), config: &[] };
        let cluster = Self::start_kafka(&options);
        let proxies = listeners
            .into_iter()
            .zip(cluster.external.clone())
            .map(|(listener, upstream)| proxy::Proxy::start(listener, upstream))
            .collect();
        (cluster, proxies)
    }

    /// Tansu only: a broker on a free port advertising `advertised` (a TLS terminator in front).
    pub fn start_tansu_advertising(advertised: &str) -> Self {
        Self::start_tansu(Some(advertised), &[])
    }

    /// Tansu only: a broker on a free port that requires SASL (`--authentication`).
    pub fn start_tansu_authenticating() -> Self {
        Self::start_tansu(None, &["--authentication"])
    }

    /// The first node's process id (for reading its CPU time), if it runs.
    pub fn pid(&self) -> u32 {
        match &self.process {
            Process::Tansu { child, .. } => child.lock().unwrap().as_ref().map_or(0, Child::id),
            Process::Kafka { pids, .. } => pids.lock().unwrap().get(&1).copied().unwrap_or(0),
        }
    }

    /// Every node's process id.
    pub fn pids(&self) -> Vec<u32> {
        match &self.process {
            Process::Tansu { .. } => vec![self.pid()],
            Process::Kafka { pids, .. } => {
                let pids = pids.lock().unwrap();
                let mut ids: Vec<_> = pids.keys().copied().collect();
                ids.sort_unstable();
                ids.iter().map(|id| pids[id]).collect()
            }
        }
    }

    /// Kills node `node` (1-based; Kafka's node id) with SIGKILL: a crash. Kafka keeps its storage, so
    /// [`Broker::restart`] brings back what it had acknowledged; Tansu's memory storage is lost.
    pub fn kill(&self, node: u32) {
        match &self.process {
            Process::Tansu { child, .. } => {
                if let Some(mut child) = child.lock().unwrap().take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
            Process::Kafka { pids, .. } => {
                assert!(self.owns(), "a test must not kill the shared broker");
                if let Some(pid) = pids.lock().unwrap().remove(&node) {
                    // `kill -9` by PID, then wait until the process is gone.
                    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid) {
                        assert!(Instant::now() < deadline, "node {node} (pid {pid}) survived SIGKILL");
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        }
    }

    /// Stops Kafka node `node` (1-based) cleanly, as a rolling restart does: SIGTERM, and the
    /// node's controlled shutdown moves its leaderships to the others first. Kafka only.
    pub fn stop_node(&self, node: u32) {
        let Process::Kafka { dir, pids, .. } = &self.process else { panic!("stop_node needs Apache Kafka") };
        assert!(self.owns(), "a test must not stop the shared broker");
        kafka_sh(&["stop-node", &dir.to_string_lossy(), &node.to_string()]);
        pids.lock().unwrap().remove(&node);
    }

    /// Starts node `node` again on the same address after [`Broker::kill`], and waits until it
    /// answers (Kafka: with its storage as it was; Tansu: empty).
    pub fn restart(&self, node: u32) {
        match &self.process {
            Process::Tansu { child, extra, advertised } => {
                let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
                let started = spawn_tansu(&self.addr, advertised, &extra, false)
                    .unwrap_or_else(|| panic!("Tansu exited at start on {} (is the port taken?)", self.addr));
                *child.lock().unwrap() = Some(started);
            }
            Process::Kafka { dir, pids, .. } => {
                let output = kafka_sh(&["restart", &dir.to_string_lossy(), &node.to_string()]);
                let line = output.lines().find(|l| l.starts_with("node ")).expect("kafka.sh restart prints the node");
                let pid = line.split_whitespace().nth(2).and_then(|p| p.parse().ok()).expect("a pid");
                pids.lock().unwrap().insert(node, pid);
            }
        }
    }

    /// Where the Kafka cluster keeps its files (`None` for Tansu).
    pub fn dir(&self) -> Option<&Path> {
        match &self.process {
            Process::Kafka { dir, .. } => Some(dir),
            Process::Tansu { .. } => None,
        }
    }

    fn owns(&self) -> bool {
        !matches!(self.process, Process::Kafka { owned: false, .. })
    }

    fn start_tansu(advertised: Option<&str>, extra: &[&str]) -> Self {
        // A port free when asked for may be taken by another test's broker before this one binds
        // it; this one then exits, and a fresh port is tried.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let addr = format!("127.0.0.1:{port}");
            let advertised = advertised.unwrap_or(&addr).to_owned();
            if let Some(child) = spawn_tansu(&addr, &advertised, extra, true) {
                return Self {
                    kind: Kind::Tansu,
                    bootstrap: vec![addr.clone()],
                    addr,
                    sasl_addr: None,
                    sasl_scram_only_addr: None,
                    sasl_tls_addr: None,
                    tls: None,
                    external: Vec::new(),
                    process: Process::Tansu {
                        child: Mutex::new(Some(child)),
                        extra: extra.iter().map(|s| (*s).to_owned()).collect(),
                        advertised,
                    },
                };
            }
        }
        panic!("Tansu exited at start on five free ports in a row");
    }

    fn start_kafka(options: &KafkaOptions<'_>) -> Self {
        let nodes = options.nodes.to_string();
        let watch = std::process::id().to_string();
        let mut args = vec!["start", "--nodes", &nodes, "--watch", &watch, "--heap", options.heap];
        if options.sasl {
            args.push("--sasl");
        }
        if options.tls {
            args.push("--tls");
        }
        if let Some(external) = options.external {
            args.extend(["--external", external]);
        }
        for setting in options.config {
            args.extend(["--config", setting]);
        }
        let started = Instant::now();
        let output = kafka_sh(&args);
        eprintln!(
            "[test broker: Apache Kafka, {} node(s), started in {:.1} s]",
            options.nodes,
            started.elapsed().as_secs_f64()
        );
        Self::from_kafka_info(&output, true)
    }

    /// The broker described by `DIR/info` (started by someone else, e.g. `scripts/test.sh`).
    fn attach_kafka(dir: &Path) -> Self {
        let info = std::fs::read_to_string(dir.join("info"))
            .unwrap_or_else(|e| panic!("SLUICE_TEST_KAFKA_DIR={}: cannot read its info file: {e}", dir.display()));
        Self::from_kafka_info(&info, false)
    }

    fn from_kafka_info(info: &str, owned: bool) -> Self {
        let mut fields: HashMap<&str, &str> = HashMap::new();
        let mut pids = HashMap::new();
        for line in info.lines() {
            let (key, value) = line.split_once(' ').unwrap_or((line, ""));
            if key == "node" {
                let parts: Vec<&str> = value.split_whitespace().collect();
                pids.insert(parts[0].parse().unwrap(), parts[1].parse().unwrap());
            } else {
                fields.insert(key, value);
            }
        }
        let list = |key: &str| fields.get(key).map(|v| v.split(',').map(str::to_owned).collect::<Vec<_>>());
        let bootstrap = list("bootstrap").expect("kafka.sh printed no bootstrap address");
        let tls = list("tls").map(|addrs| TlsListeners {
            addr: addrs[0].clone(),
            mutual_addr: list("mtls").unwrap()[0].clone(),
            ca: PathBuf::from(fields["ca"]),
            client_cert: PathBuf::from(fields["client_cert"]),
            client_key: PathBuf::from(fields["client_key"]),
        });
        Self {
            kind: Kind::Kafka,
            addr: bootstrap[0].clone(),
            bootstrap,
            sasl_addr: list("sasl").map(|a| a[0].clone()),
            sasl_scram_only_addr: list("sasl_scram").map(|a| a[0].clone()),
            sasl_tls_addr: list("sasl_tls").map(|a| a[0].clone()),
            tls,
            external: list("external").unwrap_or_default(),
            process: Process::Kafka { dir: PathBuf::from(fields["dir"]), pids: Mutex::new(pids), owned },
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        match &self.process {
            Process::Tansu { child, .. } => {
                if let Some(mut child) = child.lock().unwrap().take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
            Process::Kafka { dir, owned: true, .. } => {
                let _ = Command::new("bash")
                    .arg(repo_root().join("scripts/kafka.sh"))
                    .args(["stop", &dir.to_string_lossy()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
            Process::Kafka { owned: false, .. } => {}
        }
    }
}

/// Runs `scripts/kafka.sh ARGS`, panicking with its error output if it fails; returns its stdout.
fn kafka_sh(args: &[&str]) -> String {
    let output = Command::new("bash")
        .arg(repo_root().join("scripts/kafka.sh"))
        .args(args)
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .output()
        .expect("bash runs scripts/kafka.sh");
    assert!(
        output.status.success(),
        "scripts/kafka.sh {} failed (run scripts/install-peers.sh first; SLUICE_TEST_BROKER=tansu runs the tests on \
         Tansu):\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
        .unwrap_or(true)
}

/// Starts Tansu on `addr` and waits until it accepts connections; `None` if it exited instead
/// (its port taken by another broker, which may be what accepted the connection). With
/// `confirm`, it must still run a little after accepting (for a port that was only found free;
/// a given address returns as soon as it accepts, as tests that time a restart need).
fn spawn_tansu(addr: &str, advertised: &str, extra: &[&str], confirm: bool) -> Option<Child> {
    let binary =
        std::env::var_os("SLUICE_TANSU").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".peers/bin/tansu"));
    assert!(
        binary.exists(),
        "no Tansu broker at {} (run scripts/install-peers.sh, or set SLUICE_TANSU)",
        binary.display()
    );
    let url = format!("tcp://{addr}");
    let advertised = format!("tcp://{advertised}");
    let mut child = Command::new(&binary)
        .args(["broker", "--listener-url", &url, "--advertised-listener-url", &advertised])
        .args(["--storage-engine", "memory://tansu/"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
    let deadline = Instant::now() + Duration::from_secs(10);
    let exited = |child: &mut Child| child.try_wait().ok().flatten().is_some();
    while TcpStream::connect(addr).is_err() {
        if exited(&mut child) {
            return None;
        }
        assert!(Instant::now() < deadline, "Tansu did not accept connections on {addr} within 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    if confirm {
        // A broker that lost its port to another exits soon after that one accepted (14 ms
        // after it was started, measured).
        std::thread::sleep(Duration::from_millis(100));
    }
    if exited(&mut child) {
        return None;
    }
    watch_tansu(child.id(), &url);
    Some(child)
}

/// Stops Tansu `pid`, listening on `url`, once this process has exited: a broker shared by a
/// test binary lives in a static, which is never dropped (as `kafka.sh --watch` does for
/// Kafka). The watcher ends with either process, and kills `pid` only while its command line
/// still names `url` (not another process given the same PID since).
fn watch_tansu(pid: u32, url: &str) {
    let script = r#"
        while kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; do sleep 1; done
        if kill -0 "$2" 2>/dev/null && tr '\0' ' ' < "/proc/$2/cmdline" | grep -qF -- "--listener-url $3 "; then
            kill -9 "$2"
        fi"#;
    // `setsid -f` forks the watcher off and returns at once: nothing is left to reap.
    let watcher = Command::new("setsid")
        .args(["-f", "bash", "-c", script, "tansu-watch"])
        .args([&std::process::id().to_string(), &pid.to_string(), url])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !watcher.as_ref().is_ok_and(|status| status.success()) {
        println!("[no watcher for Tansu pid {pid}: {watcher:?}; it may outlive the tests]");
    }
}

/// Waits (10 s at most) until `connection`'s broker, a one-node cluster's only broker, serves
/// each of the `partitions` of `topic`: Kafka opens a new topic's logs a moment after CreateTopics
/// answers (even after its metadata lists the leader), and a produce or fetch in between is
/// refused. For tests that create topics with raw requests.
pub async fn wait_for_leaders(connection: &Connection, topic: &str, partitions: i32) {
    use sluice_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    use sluice_protocol::messages::ListOffsetsRequest;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let request = ListOffsetsRequest {
            replica_id: -1,
            topics: vec![ListOffsetsTopic {
                name: topic.to_owned(),
                partitions: (0..partitions)
                    .map(|p| ListOffsetsPartition { partition_index: p, timestamp: -2, ..Default::default() })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let response = connection.send(&request).await.unwrap();
        let served = response.topics.iter().flat_map(|t| &t.partitions).filter(|p| p.error_code == 0).count();
        if served == usize::try_from(partitions).unwrap() {
            return;
        }
        assert!(Instant::now() < deadline, "{topic}: no leader for every partition within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Produces one batch of `records` to `topic`/`partition` with a raw Produce request (acks=all),
/// returning the partition's answer: for tests of the layers below the producer.
pub async fn produce_batch(
    connection: &Connection,
    topic: &str,
    partition: i32,
    header: &BatchHeader,
    records: &[Record],
) -> PartitionProduceResponse {
    let mut batch = BytesMut::new();
    encode_batch(header, records, &mut batch).unwrap();
    let request = ProduceRequest {
        acks: -1,
        timeout_ms: 10_000,
        topic_data: vec![TopicProduceData {
            name: topic.into(),
            partition_data: vec![PartitionProduceData {
                index: partition,
                records: Some(batch.freeze()),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    // Produce v13 names topics by id; this names them, so it stays at v12 at most.
    let version = connection.version_for::<ProduceRequest>(Some(12)).unwrap();
    let mut response = connection.send_version(&request, version).await.unwrap();
    response.responses.remove(0).partition_responses.remove(0)
}

/// An unsigned JWT (`"alg":"none"`) for `subject`, valid for `seconds` from now: what Kafka's
/// unsecured OAUTHBEARER validator accepts (the test broker's "sasl_tls" listener).
pub fn unsecured_jwt(subject: &str, seconds: i64) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let claims = format!(r#"{{"sub":"{subject}","iat":{now},"exp":{}}}"#, now + seconds);
    format!("{}.{}.", b64.encode(r#"{"alg":"none"}"#), b64.encode(claims))
}

/// The workspace's seeded generator (SplitMix64, the checkpoint simulator's): reproducible
/// choices (kill delays) from a seed a test prints, `Rng::new(seed)`.
pub use sluice_checkpoint::rng::SplitMix64 as Rng;

/// User + system CPU seconds of this process (benchmarks).
pub fn cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    fields.get(11..13).map_or(0.0, |f| f.iter().map(|t| t.parse::<f64>().unwrap_or(0.0)).sum::<f64>()) / 100.0
}

/// The `p` quantile (0..=1) of `sorted` (0 when empty).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}
