//! A producer, a consumer and a consumer group running side by side while faults happen
//! (`cluster.rs`: a changing cluster; `faults.rs`: connections cut and frozen), and the checks
//! that none of them lost or repeated what it must not: every acknowledged record in the log
//! once, the consumer reading every offset once, the group every offset at least once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_client::{
    Acks, Client, ClientConfig, Consumer, ConsumerConfig, DeliveryFuture, GroupConfig, GroupConsumer, GroupEvent,
    Isolation, OffsetReset, PartitionRecords, Producer, ProducerConfig, ProducerRecord, StartAt,
};

/// A producer, a consumer and a group of two members on `topic`, each with a client of its own
/// (as separate applications would have), running until [`Riders::finish`].
pub struct Riders {
    topic: String,
    /// How many partitions the producer spreads over and the consumer reads; raise it when
    /// partitions are added.
    pub partitions: Arc<AtomicUsize>,
    /// What the consumer read.
    pub consumed: Seen,
    /// What the group's members read.
    pub grouped: Seen,
    stop_producing: Arc<AtomicBool>,
    stop_consuming: Arc<AtomicBool>,
    producing: tokio::task::JoinHandle<Vec<String>>,
    consuming: tokio::task::JoinHandle<()>,
    members: Vec<tokio::task::JoinHandle<()>>,
}

impl Riders {
    /// Starts them, with clients made from `config`; the producer sends at least `at_least`.
    pub async fn start(config: &ClientConfig, topic: &str, partitions: i32, at_least: usize) -> Self {
        let connect = || async { Client::connect(config.clone()).await.unwrap() };
        let partitions = Arc::new(AtomicUsize::new(usize::try_from(partitions).unwrap()));
        let (stop_producing, stop_consuming) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let producing = tokio::spawn(produce(
            connect().await,
            topic.to_owned(),
            Arc::clone(&partitions),
            Arc::clone(&stop_producing),
            at_least,
        ));
        let consumed = Seen::default();
        let consuming = tokio::spawn(consumer(
            connect().await,
            topic.to_owned(),
            Arc::clone(&partitions),
            consumed.clone(),
            Arc::clone(&stop_consuming),
        ));
        let group = super::unique("riders");
        let grouped = Seen::default();
        let mut members = Vec::new();
        for _ in 0..2 {
            let (client, stop) = (connect().await, Arc::clone(&stop_consuming));
            members.push(tokio::spawn(member(client, topic.to_owned(), group.clone(), grouped.clone(), stop)));
        }
        Self {
            topic: topic.to_owned(),
            partitions,
            consumed,
            grouped,
            stop_producing,
            stop_consuming,
            producing,
            consuming,
            members,
        }
    }

    /// Stops the producer, waits (with `client`) until the consumer has read every record and
    /// the group every offset, stops them and checks what they read.
    pub async fn finish(self, client: &Client) {
        self.stop_producing.store(true, Ordering::SeqCst);
        let acknowledged = self.producing.await.unwrap();
        let count = i32::try_from(self.partitions.load(Ordering::SeqCst)).unwrap();
        let keys: Vec<(String, i32)> = (0..count).map(|p| (self.topic.clone(), p)).collect();
        let ends = client.log_ends(&keys, Isolation::ReadUncommitted).await.unwrap();
        let total = usize::try_from(ends.values().sum::<i64>()).unwrap();
        wait_for("the consumer", &self.consumed, total).await;
        wait_to_cover("the group", &self.grouped, total).await;
        self.stop_consuming.store(true, Ordering::SeqCst);
        self.consuming.await.unwrap();
        for member in self.members {
            member.await.unwrap();
        }
        check(&ends, &acknowledged, &self.consumed, &self.grouped);
    }
}

/// (partition, offset, value) of every record seen, in the order seen.
pub type Seen = Arc<Mutex<Vec<(i32, i64, String)>>>;

fn note(seen: &Seen, parts: &[PartitionRecords]) {
    let mut seen = seen.lock().unwrap();
    for part in parts {
        for record in part.records() {
            let value = String::from_utf8(record.value().unwrap().to_vec()).unwrap();
            seen.push((part.partition, record.offset(), value));
        }
    }
}

/// Produces the values 0, 1, 2, ... spread over the topic's partitions (as many as
/// `partitions` says at the time), about 10,000 a second, until `stop` is set and at least
/// `at_least` are sent; returns the values acknowledged.
async fn produce(
    client: Client,
    topic: String,
    partitions: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    at_least: usize,
) -> Vec<String> {
    let producer = Producer::new(client, durable_producer()).await.unwrap();
    let mut deliveries = Vec::new();
    let mut n: usize = 0;
    while n < at_least || !stop.load(Ordering::SeqCst) {
        let count = partitions.load(Ordering::SeqCst);
        let partition = i32::try_from(n % count).unwrap();
        let record = ProducerRecord { partition: Some(partition), ..ProducerRecord::new(&topic, n.to_string()) };
        deliveries.push((n.to_string(), producer.send(record).await.unwrap()));
        n += 1;
        if n.is_multiple_of(100) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    acknowledged(deliveries).await
}

/// The producer the fault tests write with: idempotent, acks=all, 5 ms linger.
pub fn durable_producer() -> ProducerConfig {
    let mut config = ProducerConfig::default();
    config.acks = Acks::All;
    config.idempotent = true;
    config.linger = Duration::from_millis(5);
    config
}

/// Awaits every delivery; returns the values acknowledged, and prints how many were sent and
/// the failures by error text.
pub async fn acknowledged(deliveries: Vec<(String, DeliveryFuture)>) -> Vec<String> {
    let sent = deliveries.len();
    let mut acknowledged = Vec::new();
    let mut failures: BTreeMap<String, usize> = BTreeMap::new();
    for (value, delivery) in deliveries {
        match delivery.await {
            Ok(_) => acknowledged.push(value),
            Err(e) => *failures.entry(e.to_string()).or_default() += 1,
        }
    }
    eprintln!("[producer: {sent} records sent, {} acknowledged, failures: {failures:?}]", acknowledged.len());
    acknowledged
}

/// A consumer assigning itself the topic's partitions (taking up added ones when `partitions`
/// grows), polling until `stop`; what it reads goes to `seen`. Panics if a poll fails.
async fn consumer(client: Client, topic: String, partitions: Arc<AtomicUsize>, seen: Seen, stop: Arc<AtomicBool>) {
    let mut consumer = Consumer::new(client, ConsumerConfig::default());
    let mut assigned = 0;
    while !stop.load(Ordering::SeqCst) {
        while assigned < partitions.load(Ordering::SeqCst) {
            consumer.assign(&topic, i32::try_from(assigned).unwrap(), StartAt::Earliest).await.unwrap();
            assigned += 1;
        }
        let parts = consumer.poll().await.unwrap_or_else(|e| panic!("the consumer's poll failed: {e}"));
        note(&seen, &parts);
    }
}

/// A member of `group` polling until `stop`; what it sees goes to `seen`. Panics if a poll
/// fails.
async fn member(client: Client, topic: String, group: String, seen: Seen, stop: Arc<AtomicBool>) {
    let mut config = GroupConfig::new(group, [topic]);
    config.session_timeout = Duration::from_secs(10);
    config.rebalance_timeout = Duration::from_secs(30);
    config.heartbeat_interval = Duration::from_millis(500);
    config.auto_commit_interval = Some(Duration::from_millis(500));
    config.partition_discovery_interval = Duration::from_secs(1);
    let mut consumer = ConsumerConfig::default();
    consumer.offset_reset = OffsetReset::Earliest;
    let mut member = GroupConsumer::new(client, config, consumer);
    while !stop.load(Ordering::SeqCst) {
        match member.poll().await {
            Ok(GroupEvent::Records(parts)) => note(&seen, &parts),
            Ok(_) => {}
            Err(e) => panic!("a group member's poll failed: {e}"),
        }
    }
    member.close().await.unwrap();
}

/// Waits (120 s at most) until `seen` holds `count` records.
pub async fn wait_for(what: &str, seen: &Seen, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.lock().unwrap().len() < count {
        assert!(Instant::now() < deadline, "{what}: {} of {count} records within 120 s", seen.lock().unwrap().len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (120 s at most) until `seen` covers `total` distinct offsets.
async fn wait_to_cover(what: &str, seen: &Seen, total: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let covered: BTreeSet<(i32, i64)> = seen.lock().unwrap().iter().map(|(p, o, _)| (*p, *o)).collect();
        if covered.len() >= total {
            return;
        }
        assert!(Instant::now() < deadline, "{what} read {} of {total} offsets within 120 s", covered.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks, given each partition's log end: every acknowledged value is in the log (as the
/// consumer read it) and no value twice; the consumer read each offset of each partition once,
/// in order; the group read every offset at least once.
fn check(ends: &BTreeMap<(String, i32), i64>, acknowledged: &[String], consumed: &Seen, grouped: &Seen) {
    let consumed = consumed.lock().unwrap().clone();
    let mut in_log = BTreeMap::new();
    for (partition, offset, value) in &consumed {
        if let Some(earlier) = in_log.insert(value.clone(), (*partition, *offset)) {
            panic!("{value} is in the log twice: at {earlier:?} and at ({partition}, {offset})");
        }
    }
    let missing: Vec<&String> = acknowledged.iter().filter(|v| !in_log.contains_key(*v)).take(5).collect();
    assert!(missing.is_empty(), "acknowledged but not in the log: {missing:?}");
    let mut by_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for (partition, offset, _) in &consumed {
        by_partition.entry(*partition).or_default().push(*offset);
    }
    for ((_, partition), end) in ends {
        let offsets = by_partition.remove(partition).unwrap_or_default();
        assert_eq!(offsets, (0..*end).collect::<Vec<_>>(), "the consumer, partition {partition}: every offset once");
    }
    let grouped = grouped.lock().unwrap();
    let covered: BTreeSet<(i32, i64)> = grouped.iter().map(|(p, o, _)| (*p, *o)).collect();
    for ((_, partition), end) in ends {
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
