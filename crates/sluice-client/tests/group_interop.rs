//! A sluice member and librdkafka members (confluent-kafka 2.16, see docs/brokers.md) in one consumer
//! group: librdkafka as the leader assigns sluice its partitions, sluice as the leader assigns
//! librdkafka's; both decode each other's subscription and assignment payloads, share the
//! committed offsets, and between them consume every record exactly once.

use sluice_testkit as common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::member::{PeerMember, Seen};
use common::unique;
use sluice_client::{
    Client, ClientConfig, ConsumerConfig, GroupConfig, GroupConsumer, GroupEvent, OffsetReset, Producer,
    ProducerConfig, ProducerRecord,
};

const PARTITIONS: i32 = 4;

/// The topic and group of this test (unique: the broker may be shared).
fn topic() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| unique("shared"))
}

fn group() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| unique("mixed"))
}

/// A confluent-kafka consumer in the group: prints `{"assigned": [...]}` on each assignment and
/// `{"value": "..."}` per record (committed synchronously before the next), and closes (leaving
/// the group) when a line arrives on stdin.
const MEMBER_PY: &str = r#"
import json, sys, threading
from confluent_kafka import Consumer
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
def out(obj):
    print(json.dumps(obj), flush=True)
c = Consumer({"bootstrap.servers": sys.argv[1], "group.id": sys.argv[2], "enable.auto.commit": False,
              "auto.offset.reset": "earliest", "partition.assignment.strategy": "range",
              "session.timeout.ms": 10000, "heartbeat.interval.ms": 200})
c.subscribe([sys.argv[3]], on_assign=lambda _c, ps: out({"assigned": sorted(p.partition for p in ps)}),
            on_revoke=lambda _c, ps: out({"revoked": sorted(p.partition for p in ps)}))
while not stop.is_set():
    m = c.poll(0.1)
    if m is None or m.error():
        continue
    out({"value": m.value().decode()})
    c.commit(message=m, asynchronous=False)
c.close()
out({"closed": True})
"#;

/// A librdkafka member (confluent-kafka) running `MEMBER_PY`.
fn rd_member(addr: &str, name: &str, seen: &Arc<Seen>) -> PeerMember {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.peers/bin/python");
    assert!(python.exists(), "no peer python at {} (run scripts/install-peers.sh)", python.display());
    let mut command = Command::new(python);
    command.args(["-c", MEMBER_PY, addr, group(), topic()]);
    PeerMember::start(command, "librdkafka", name, seen)
}

fn spawn_sluice_member(addr: &str, seen: Arc<Seen>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    let addr = addr.to_owned();
    tokio::spawn(async move {
        let client = Client::connect(ClientConfig::new([addr.as_str()])).await.unwrap();
        let mut config = GroupConfig::new(group(), [topic()]);
        config.session_timeout = Duration::from_secs(10);
        config.rebalance_timeout = Duration::from_secs(15);
        config.heartbeat_interval = Duration::from_millis(200);
        config.auto_commit_interval = None;
        let mut consumer = ConsumerConfig::default();
        consumer.offset_reset = OffsetReset::Earliest;
        consumer.max_wait = Duration::from_millis(100);
        let mut member = GroupConsumer::new(client, config, consumer);
        while !stop.load(Ordering::SeqCst) {
            match member.poll().await.unwrap() {
                GroupEvent::Revoked(_) => {
                    member.commit().await.unwrap();
                    seen.assignments.lock().unwrap().remove("sluice");
                }
                GroupEvent::Assigned(partitions) => {
                    let partitions = partitions.iter().map(|(_, p)| *p).collect();
                    seen.assignments.lock().unwrap().insert("sluice".into(), partitions);
                }
                GroupEvent::Records(parts) => {
                    let values = parts
                        .iter()
                        .flat_map(|p| p.records())
                        .map(|r| ("sluice".to_owned(), String::from_utf8(r.value().unwrap().to_vec()).unwrap()));
                    seen.consumed.lock().unwrap().extend(values);
                    if !parts.is_empty() {
                        member.commit().await.unwrap();
                    }
                }
            }
        }
        member.close().await.unwrap();
    })
}

async fn produce(client: &Client, from: usize, count: usize) {
    let producer = Producer::new(client.clone(), ProducerConfig::default()).await.unwrap();
    let mut deliveries = Vec::new();
    for i in from..from + count {
        let partition = Some((i % PARTITIONS as usize) as i32);
        deliveries.push(
            producer.send(ProducerRecord { partition, ..ProducerRecord::new(topic(), format!("{i}")) }).await.unwrap(),
        );
    }
    for delivery in deliveries {
        delivery.await.unwrap();
    }
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_and_librdkafka_share_a_group_each_as_leader() {
    let broker = common::shared();
    let client = Client::connect(ClientConfig::new([broker.addr.as_str()])).await.unwrap();
    client.create_topic(topic(), PARTITIONS, 1).await.unwrap();
    produce(&client, 0, 400).await;
    let seen = Arc::new(Seen::default());

    // librdkafka joins first and leads; sluice joins and is assigned half by librdkafka.
    let first = rd_member(&broker.addr, "librdkafka-1", &seen);
    wait_until("librdkafka owns every partition", || seen.assignment("librdkafka-1").len() == 4).await;
    let stop = Arc::new(AtomicBool::new(false));
    let sluice = spawn_sluice_member(&broker.addr, Arc::clone(&seen), Arc::clone(&stop));
    wait_until("librdkafka's range assignment gives each member two partitions", || {
        seen.assignment("sluice").len() == 2 && seen.assignment("librdkafka-1").len() == 2
    })
    .await;
    let ranges = [vec![0, 1], vec![2, 3]];
    assert!(ranges.contains(&seen.assignment("sluice")), "range hands out halves: {:?}", seen.assignment("sluice"));
    wait_until("the first 400 records are consumed", || seen.count() >= 400).await;

    // librdkafka leaves; sluice takes everything, then leads and assigns a new librdkafka member.
    first.stop();
    wait_until("sluice owns every partition", || seen.assignment("sluice").len() == 4).await;
    let second = rd_member(&broker.addr, "librdkafka-2", &seen);
    wait_until("sluice's range assignment gives each member two partitions", || {
        seen.assignment("sluice").len() == 2 && seen.assignment("librdkafka-2").len() == 2
    })
    .await;
    assert!(ranges.contains(&seen.assignment("librdkafka-2")), "sluice's range: {:?}", seen.assignment("librdkafka-2"));
    produce(&client, 400, 400).await;
    wait_until("all 800 records are consumed", || seen.count() >= 800).await;
    second.stop();
    stop.store(true, Ordering::SeqCst);
    sluice.await.unwrap();

    let consumed = seen.consumed.lock().unwrap().clone();
    let by_member: BTreeMap<&str, usize> = consumed.iter().fold(BTreeMap::new(), |mut m, (who, _)| {
        *m.entry(who.as_str()).or_default() += 1;
        m
    });
    eprintln!("records consumed per member: {by_member:?}");
    assert!(by_member.len() == 3, "every member consumed something: {by_member:?}");
    let mut values: Vec<usize> = consumed.iter().map(|(_, v)| v.parse().unwrap()).collect();
    values.sort_unstable();
    assert_eq!(values, (0..800).collect::<Vec<_>>(), "every record consumed exactly once across the group");
    let committed = client.group_offsets(group()).await.unwrap();
    assert_eq!(committed.values().copied().collect::<Vec<_>>(), vec![200; 4], "committed offsets at the end");
}
