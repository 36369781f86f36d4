//! A real Tansu broker for integration tests: started on a free loopback port, stopped (killed)
//! when dropped. The binary comes from `scripts/install-peers.sh` (`.peers/bin/tansu`) or
//! `$SLUICE_TANSU`.

#![allow(dead_code)] // each test binary uses a different part

pub mod proxy;

use bytes::BytesMut;
use sluice_client::Connection;
use sluice_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use sluice_protocol::messages::produce_response::PartitionProduceResponse;
use sluice_protocol::messages::ProduceRequest;
use sluice_protocol::record::{encode_batch, BatchHeader, Record};

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Tansu {
    pub addr: String,
    child: Child,
}

impl Tansu {
    /// Starts a broker on a free port.
    pub fn start() -> Self {
        Self::start_free(None, &[])
    }

    /// A broker on a port free when asked for, advertising `advertised` (else its own address).
    /// Another test's broker may take the same port before this one binds it (tests run side by
    /// side); this one then exits, and a fresh port is tried.
    fn start_free(advertised: Option<&str>, extra: &[&str]) -> Self {
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let addr = format!("127.0.0.1:{port}");
            if let Some(tansu) = Self::try_start(&addr, advertised.unwrap_or(&addr), extra, true) {
                return tansu;
            }
        }
        panic!("Tansu exited at start on five free ports in a row");
    }

    /// Starts a broker on `addr` (`127.0.0.1:PORT`), e.g. where a stopped one was.
    pub fn start_on(addr: &str) -> Self {
        Self::try_start(addr, addr, &[], false)
            .unwrap_or_else(|| panic!("Tansu exited at start on {addr} (is the port taken?)"))
    }

    /// A broker on a free port behind a fault proxy: the broker advertises the proxy's address,
    /// so every connection the client makes (bootstrap and after metadata) goes through it.
    pub fn start_behind_proxy() -> (Self, proxy::Proxy) {
        let proxy_listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy_addr = proxy_listener.local_addr().unwrap().to_string();
        let tansu = Self::start_free(Some(&proxy_addr), &[]);
        let proxy = proxy::Proxy::start(proxy_listener, tansu.addr.clone());
        (tansu, proxy)
    }

    /// A broker on a free port advertising `advertised` (a proxy in front of it).
    pub fn start_free_advertising(advertised: &str) -> Self {
        Self::start_free(Some(advertised), &[])
    }

    /// A broker on a free port that requires SASL authentication (`--authentication`).
    pub fn start_authenticating() -> Self {
        Self::start_free(None, &["--authentication"])
    }

    /// Starts the broker and waits until it accepts connections; `None` if it exited instead
    /// (its port taken by another broker, which may be what accepted the connection). With
    /// `confirm`, it must still run a little after accepting (for a port that was only found
    /// free; a given address returns as soon as it accepts, as tests that time a restart need).
    fn try_start(addr: &str, advertised: &str, extra: &[&str], confirm: bool) -> Option<Self> {
        let binary = std::env::var_os("SLUICE_TANSU")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.peers/bin/tansu"));
        assert!(
            binary.exists(),
            "no Tansu broker at {} (run scripts/install-peers.sh, or set SLUICE_TANSU)",
            binary.display()
        );
        let url = format!("tcp://{addr}");
        let advertised = format!("tcp://{advertised}");
        let child = Command::new(&binary)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &advertised])
            .args(["--storage-engine", "memory://tansu/"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut tansu = Self { addr: addr.to_owned(), child };
        let deadline = Instant::now() + Duration::from_secs(10);
        let exited = |tansu: &mut Self| tansu.child.try_wait().ok().flatten().is_some();
        while TcpStream::connect(&tansu.addr).is_err() {
            if exited(&mut tansu) {
                return None;
            }
            assert!(Instant::now() < deadline, "Tansu did not accept connections on {} within 10 s", tansu.addr);
            std::thread::sleep(Duration::from_millis(20));
        }
        if confirm {
            // A broker that lost its port to another exits soon after that one accepted (14 ms
            // after it was started, measured).
            std::thread::sleep(Duration::from_millis(100));
        }
        (!exited(&mut tansu)).then_some(tansu)
    }
}

impl Tansu {
    /// The broker's process id (for reading its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
    let mut response = connection.send(&request).await.unwrap();
    response.responses.remove(0).partition_responses.remove(0)
}

/// SplitMix64: reproducible choices (kill delays) from a seed a test prints.
pub struct Rng(pub u64);

impl Rng {
    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n.max(1)
    }
}

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
