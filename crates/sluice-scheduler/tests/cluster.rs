//! The micro-batch loop on a three-node Apache Kafka cluster (replication factor 3,
//! `min.insync.replicas` 2) that changes under a running job, as clusters do: the leader of
//! the partitions killed and brought back, then a rolling restart of every node. The job never
//! stops, and reads every record of the log exactly once.

#[path = "../../sluice-client/tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{cluster, unique, Broker, Kind};
use sluice_client::{Acks, Client, ClientConfig, Isolation, Producer, ProducerConfig, ProducerRecord};
use sluice_scheduler::{Batch, BatchOutput, Processor, Scheduler, SchedulerConfig, SystemClock};

const PARTITIONS: i32 = 4;

/// Every (partition, offset, value) the job saw, and when each batch was committed.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(i32, i64, String)>>>);

impl Seen {
    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

impl Processor for Seen {
    async fn process(&mut self, batch: Batch) -> Result<BatchOutput, String> {
        let mut seen = self.0.lock().unwrap();
        for task in &batch.tasks {
            for record in task.records() {
                let value = String::from_utf8(record.value().unwrap().to_vec()).unwrap();
                seen.push((task.range.partition, record.offset(), value));
            }
        }
        Ok(BatchOutput::default())
    }
}

/// Produces `partition:n` values round the partitions until `stop`, idempotent with acks=all;
/// returns the values acknowledged.
async fn produce_until(client: Client, topic: String, stop: Arc<AtomicBool>) -> BTreeSet<String> {
    let config = ProducerConfig {
        acks: Acks::All,
        idempotent: true,
        linger: Duration::from_millis(5),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, config).await.unwrap();
    let mut deliveries = Vec::new();
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        for partition in 0..PARTITIONS {
            let value = format!("{partition}:{n}");
            let record = ProducerRecord { partition: Some(partition), ..ProducerRecord::new(&topic, value.clone()) };
            deliveries.push((value, producer.send(record).await.unwrap()));
        }
        n += 1;
        if n % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let mut acknowledged = BTreeSet::new();
    let mut failed = 0;
    for (value, delivery) in deliveries {
        match delivery.await {
            Ok(_) => {
                acknowledged.insert(value);
            }
            Err(_) => failed += 1,
        }
    }
    eprintln!("[producer: {} records acknowledged, {failed} failed]", acknowledged.len());
    acknowledged
}

/// Waits (120 s at most) until the job has seen `more` records beyond `from`; fails with the
/// job's own error if it stopped.
async fn wait_for_progress(
    seen: &Seen,
    from: usize,
    more: usize,
    running: &mut tokio::task::JoinHandle<Result<u64, sluice_scheduler::SchedulerError>>,
) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.count() < from + more {
        if running.is_finished() {
            panic!("the job stopped after {} records: {:?}", seen.count(), running.await);
        }
        assert!(Instant::now() < deadline, "the job made no progress for 120 s ({} records)", seen.count());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_reads_every_record_exactly_once_through_a_leader_kill_and_a_rolling_restart() {
    if common::kind() != Kind::Kafka {
        eprintln!("SKIPPED: a leader kill and a rolling restart need a three-node cluster, and Tansu has none");
        return;
    }
    let cluster = Broker::start_cluster(3);
    let client = Client::connect(ClientConfig::new(cluster.bootstrap.clone())).await.unwrap();
    let topic = unique("survive");
    client.create_topic(&topic, PARTITIONS, 3).await.unwrap();
    cluster::wait_in_sync(&client).await;

    let producing = Arc::new(AtomicBool::new(false));
    let producer = tokio::spawn(produce_until(client.clone(), topic.clone(), Arc::clone(&producing)));
    let dir = tempfile::tempdir().unwrap();
    let config =
        SchedulerConfig { max_concurrent_tasks: 4, ..SchedulerConfig::new([&topic], Duration::from_millis(200)) };
    let mut scheduler = Scheduler::open(client.clone(), dir.path(), config, SystemClock::new()).unwrap();
    let stop = scheduler.stop_handle();
    let seen = Seen::default();
    let mut processor = seen.clone();
    let commits = Arc::new(Mutex::new(Vec::new()));
    let on_commit = Arc::clone(&commits);
    let mut running =
        tokio::spawn(
            async move { scheduler.run(&mut processor, |_| on_commit.lock().unwrap().push(Instant::now())).await },
        );

    wait_for_progress(&seen, 0, 2_000, &mut running).await;
    cluster::kill_leader(&cluster, &client, &topic, Duration::from_secs(3)).await;
    wait_for_progress(&seen, seen.count(), 2_000, &mut running).await;
    cluster::rolling_restart(&cluster, &client).await;
    wait_for_progress(&seen, seen.count(), 2_000, &mut running).await;

    producing.store(true, Ordering::SeqCst);
    let acknowledged = producer.await.unwrap();
    let keys: Vec<(String, i32)> = (0..PARTITIONS).map(|p| (topic.clone(), p)).collect();
    let ends = client.log_ends(&keys, Isolation::ReadUncommitted).await.unwrap();
    let total: i64 = ends.values().sum();
    wait_for_progress(&seen, 0, usize::try_from(total).unwrap(), &mut running).await;
    stop.store(true, Ordering::SeqCst);
    running.await.unwrap().expect("the job ran through every fault");

    let seen = seen.0.lock().unwrap().clone();
    let mut by_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    let mut values = BTreeSet::new();
    for (partition, offset, value) in &seen {
        assert!(value.starts_with(&format!("{partition}:")), "{value} read from partition {partition}");
        by_partition.entry(*partition).or_default().push(*offset);
        assert!(values.insert(value.clone()), "{value} was read twice (or produced twice)");
    }
    for (key, end) in &ends {
        let offsets = by_partition.remove(&key.1).unwrap_or_default();
        assert_eq!(offsets, (0..*end).collect::<Vec<_>>(), "partition {}: every offset once, in order", key.1);
    }
    let unread: Vec<&String> = acknowledged.difference(&values).take(5).collect();
    assert!(unread.is_empty(), "acknowledged records the job never read: {unread:?}");
    let commits = commits.lock().unwrap();
    let longest = commits.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    eprintln!(
        "[job: {} records in {} batches; longest time between two batches {:.1} s]",
        seen.len(),
        commits.len(),
        longest.as_secs_f64()
    );
}
