//! The client on a three-node Apache Kafka cluster (replication factor 3, `min.insync.replicas`
//! 2) that changes under it as clusters do: the leader of the partitions killed with SIGKILL and
//! brought back, a rolling restart of every node, partitions added. Through all of it an
//! idempotent acks=all producer loses and duplicates nothing it acknowledged, a consumer
//! reads every offset once, and a consumer group of two members reads every record at least
//! once with no gap, the added partitions from their start. Nobody's calls fail.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{cluster, unique};
use sluice_client::{
    Acks, Client, Consumer, ConsumerConfig, GroupConfig, GroupConsumer, GroupEvent, Isolation, OffsetReset,
    PartitionRecords, Producer, ProducerConfig, ProducerRecord, StartAt,
};

const PARTITIONS: i32 = 4;
const ADDED: i32 = 2;
/// At least this many records are produced (through every fault).
const RECORDS: usize = 200_000;

/// (partition, offset, value) of every record seen, in the order seen.
type Seen = Arc<Mutex<Vec<(i32, i64, String)>>>;

fn note(seen: &Seen, parts: &[PartitionRecords]) -> usize {
    let mut seen = seen.lock().unwrap();
    let before = seen.len();
    for part in parts {
        for record in part.records() {
            let value = String::from_utf8(record.value().unwrap().to_vec()).unwrap();
            seen.push((part.partition, record.offset(), value));
        }
    }
    seen.len() - before
}

/// Produces the values 0, 1, 2, ... spread over the topic's partitions (as many as
/// `partitions` says at the time), about 10,000 a second, until `stop` is set and at least
/// [`RECORDS`] are sent; returns the values acknowledged.
async fn produce(client: Client, topic: String, partitions: Arc<AtomicUsize>, stop: Arc<AtomicBool>) -> Vec<String> {
    let config = ProducerConfig {
        acks: Acks::All,
        idempotent: true,
        linger: Duration::from_millis(5),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, config).await.unwrap();
    let mut deliveries = Vec::new();
    let mut n: usize = 0;
    while n < RECORDS || !stop.load(Ordering::SeqCst) {
        let count = partitions.load(Ordering::SeqCst);
        let partition = i32::try_from(n % count).unwrap();
        let record = ProducerRecord { partition: Some(partition), ..ProducerRecord::new(&topic, n.to_string()) };
        deliveries.push((n.to_string(), producer.send(record).await.unwrap()));
        n += 1;
        if n % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let mut acknowledged = Vec::new();
    let mut failures = BTreeMap::new();
    for (value, delivery) in deliveries {
        match delivery.await {
            Ok(_) => acknowledged.push(value),
            Err(e) => *failures.entry(e.to_string()).or_insert(0) += 1,
        }
    }
    eprintln!("[producer: {n} records sent, {} acknowledged, failures: {failures:?}]", acknowledged.len());
    acknowledged
}

/// A member of `group` polling until `stop`; what it sees goes to `seen`. Panics if a poll
/// fails.
async fn member(client: Client, topic: String, group: String, seen: Seen, stop: Arc<AtomicBool>) {
    let config = GroupConfig {
        session_timeout: Duration::from_secs(10),
        rebalance_timeout: Duration::from_secs(30),
        heartbeat_interval: Duration::from_millis(500),
        auto_commit_interval: Some(Duration::from_millis(500)),
        partition_discovery_interval: Duration::from_secs(1),
        ..GroupConfig::new(group, [topic])
    };
    let consumer = ConsumerConfig { offset_reset: OffsetReset::Earliest, ..ConsumerConfig::default() };
    let mut member = GroupConsumer::new(client, config, consumer);
    while !stop.load(Ordering::SeqCst) {
        match member.poll().await {
            Ok(GroupEvent::Records(parts)) => {
                note(&seen, &parts);
            }
            Ok(_) => {}
            Err(e) => panic!("a group member's poll failed: {e}"),
        }
    }
    member.close().await.unwrap();
}

/// Waits (120 s at most) until `seen` holds `count` records.
async fn wait_for(what: &str, seen: &Seen, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.lock().unwrap().len() < count {
        assert!(Instant::now() < deadline, "{what}: {} of {count} records within 120 s", seen.lock().unwrap().len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_consumer_and_group_ride_through_a_leader_kill_a_rolling_restart_and_added_partitions() {
    let Some((cluster, client)) = cluster::start_or_skip().await else { return };
    let config = client.config().clone();
    let topic = unique("riding");
    client.create_topic(&topic, PARTITIONS, 3).await.unwrap();
    cluster::wait_in_sync(&client).await;

    // Each party has a client of its own, as separate applications would.
    let stop_producing = Arc::new(AtomicBool::new(false));
    let partitions = Arc::new(AtomicUsize::new(PARTITIONS as usize));
    let producing = tokio::spawn(produce(
        Client::connect(config.clone()).await.unwrap(),
        topic.clone(),
        Arc::clone(&partitions),
        Arc::clone(&stop_producing),
    ));
    let stop_consuming = Arc::new(AtomicBool::new(false));
    let consumed = Seen::default();
    let consuming = {
        let (client, topic, seen, stop) =
            (Client::connect(config.clone()).await.unwrap(), topic.clone(), consumed.clone(), stop_consuming.clone());
        let partitions = Arc::clone(&partitions);
        tokio::spawn(async move {
            let mut consumer = Consumer::new(client, ConsumerConfig::default());
            let mut assigned = 0;
            while !stop.load(Ordering::SeqCst) {
                // A consumer that assigns partitions itself takes up the added ones when told.
                while assigned < partitions.load(Ordering::SeqCst) {
                    consumer.assign(&topic, i32::try_from(assigned).unwrap(), StartAt::Earliest).await.unwrap();
                    assigned += 1;
                }
                let parts = consumer.poll().await.unwrap_or_else(|e| panic!("the consumer's poll failed: {e}"));
                note(&seen, &parts);
            }
        })
    };
    let group = unique("riders");
    let grouped = Seen::default();
    let mut members = Vec::new();
    for _ in 0..2 {
        let client = Client::connect(config.clone()).await.unwrap();
        let args = (topic.clone(), group.clone(), grouped.clone(), stop_consuming.clone());
        members.push(tokio::spawn(member(client, args.0, args.1, args.2, args.3)));
    }

    wait_for("the consumer, before the faults", &consumed, 5_000).await;
    cluster::kill_leader(&cluster, &client, &topic, Duration::from_secs(3)).await;
    let so_far = consumed.lock().unwrap().len();
    wait_for("the consumer, after the leader kill", &consumed, so_far + 5_000).await;
    cluster::rolling_restart(&cluster, &client).await;
    eprintln!("[fault: {ADDED} partitions added]");
    client.create_partitions(&topic, PARTITIONS + ADDED).await.unwrap();
    partitions.store((PARTITIONS + ADDED) as usize, Ordering::SeqCst);
    stop_producing.store(true, Ordering::SeqCst);
    let acknowledged = producing.await.unwrap();

    let keys: Vec<(String, i32)> = (0..PARTITIONS + ADDED).map(|p| (topic.clone(), p)).collect();
    let ends = client.log_ends(&keys, Isolation::ReadUncommitted).await.unwrap();
    let total = usize::try_from(ends.values().sum::<i64>()).unwrap();
    wait_for("the consumer", &consumed, total).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let covered: BTreeSet<(i32, i64)> = grouped.lock().unwrap().iter().map(|(p, o, _)| (*p, *o)).collect();
        if covered.len() >= total {
            break;
        }
        assert!(Instant::now() < deadline, "the group read {} of {total} offsets within 120 s", covered.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_consuming.store(true, Ordering::SeqCst);
    consuming.await.unwrap();
    for member in members {
        member.await.unwrap();
    }

    // The producer: every acknowledged value is in the log, and no value twice.
    let consumed = consumed.lock().unwrap().clone();
    let mut in_log = BTreeMap::new();
    for (partition, offset, value) in &consumed {
        if let Some(earlier) = in_log.insert(value.clone(), (*partition, *offset)) {
            panic!("{value} is in the log twice: at {earlier:?} and at ({partition}, {offset})");
        }
    }
    let missing: Vec<&String> = acknowledged.iter().filter(|v| !in_log.contains_key(*v)).take(5).collect();
    assert!(missing.is_empty(), "acknowledged but not in the log: {missing:?}");
    // The consumer: each offset of each partition once, in order.
    let mut by_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for (partition, offset, _) in &consumed {
        by_partition.entry(*partition).or_default().push(*offset);
    }
    for ((_, partition), end) in &ends {
        let offsets = by_partition.remove(partition).unwrap_or_default();
        assert_eq!(offsets, (0..*end).collect::<Vec<_>>(), "the consumer, partition {partition}: every offset once");
    }
    // The group: every offset at least once (the added partitions from their start).
    let grouped = grouped.lock().unwrap();
    let covered: BTreeSet<(i32, i64)> = grouped.iter().map(|(p, o, _)| (*p, *o)).collect();
    for ((_, partition), end) in &ends {
        let gaps: Vec<i64> = (0..*end).filter(|o| !covered.contains(&(*partition, *o))).take(5).collect();
        assert!(gaps.is_empty(), "the group never read offsets {gaps:?} of partition {partition}");
    }
    eprintln!(
        "[{} records in the log; {} acknowledged; the group read {} ({} again after a rebalance)]",
        consumed.len(),
        acknowledged.len(),
        grouped.len(),
        grouped.len() - covered.len()
    );
}
