//! The micro-batch loop on a three-node Apache Kafka cluster (replication factor 3,
//! `min.insync.replicas` 2), each node behind a fault proxy that the job and its producer go
//! through, that changes under a running job, as clusters do: the leader of the partitions
//! killed and brought back, every connection cut, every connection frozen (open, carrying
//! nothing), then a rolling restart of every node. The job never stops, and reads every record
//! of the log exactly once.
//!
//! `SLUICE_CLUSTER_FAULTS=N` (`scripts/crash-test.sh N cluster`) runs N random faults instead:
//! a node killed with SIGKILL (the leader of a partition, or any node) or stopped cleanly, and
//! started again after a random while, or the connections to a node cut or frozen; the seed is
//! printed (`SLUICE_FAULT_SEED` replays it), and so is the longest stall each kind of fault
//! caused.

use sluice_testkit as common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{cluster, riding, unique, Rng};
use sluice_client::{Client, ClientConfig, Isolation, Producer, ProducerRecord};
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
    async fn process(&mut self, mut batch: Batch) -> Result<BatchOutput, sluice_scheduler::BoxError> {
        while let Some(piece) = batch.next_piece().await? {
            let mut seen = self.0.lock().unwrap();
            for task in &piece.tasks {
                for record in task.records() {
                    let value = String::from_utf8(record.value().unwrap().to_vec()).unwrap();
                    seen.push((task.range.partition, record.offset(), value));
                }
            }
        }
        Ok(BatchOutput::default())
    }
}

/// Produces `partition:n` values round the partitions until `stop`, idempotent with acks=all;
/// returns the values acknowledged.
async fn produce_until(client: Client, topic: String, stop: Arc<AtomicBool>) -> BTreeSet<String> {
    let producer = Producer::new(client, riding::durable_producer()).await.unwrap();
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
    riding::acknowledged(deliveries).await.into_iter().collect()
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

/// Waits until the job has read `more` records past the log end as it is now (records produced
/// after now), so that it must have fetched since (not only worked through what it had
/// prefetched).
async fn wait_past_the_log_end(
    client: &Client,
    topic: &str,
    seen: &Seen,
    more: usize,
    running: &mut tokio::task::JoinHandle<Result<u64, sluice_scheduler::SchedulerError>>,
) {
    let keys: Vec<(String, i32)> = (0..PARTITIONS).map(|p| (topic.to_owned(), p)).collect();
    let ends = client.log_ends(&keys, Isolation::ReadUncommitted).await.unwrap();
    let end = usize::try_from(ends.values().sum::<i64>()).unwrap();
    wait_for_progress(seen, end, more, running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_reads_every_record_exactly_once_through_a_leader_kill_and_a_rolling_restart() {
    let Some((cluster, client, proxies)) = cluster::start_behind_proxies_or_skip().await else { return };
    let topic = unique("survive");
    client.create_topic(&topic, PARTITIONS, 3).await.unwrap();
    cluster::wait_in_sync(&client).await;
    // The job and its producer reach the nodes through the proxies; a request on a frozen
    // connection is given up after 5 s.
    let mut proxied = ClientConfig::new(proxies.iter().map(|p| p.addr.clone()));
    proxied.connection.request_timeout = Duration::from_secs(5);
    let proxied = Client::connect(proxied).await.unwrap();

    let producing = Arc::new(AtomicBool::new(false));
    let producer = tokio::spawn(produce_until(proxied.clone(), topic.clone(), Arc::clone(&producing)));
    let dir = tempfile::tempdir().unwrap();
    let mut config = SchedulerConfig::new([&topic], Duration::from_millis(200));
    config.max_concurrent_tasks = 4;
    let mut scheduler = Scheduler::open(proxied.clone(), dir.path(), config, SystemClock::new()).unwrap();
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
    let mut faults: Vec<(&str, Instant)> = Vec::new();
    match std::env::var("SLUICE_CLUSTER_FAULTS").ok().and_then(|n| n.parse::<u32>().ok()) {
        None => {
            faults.push(("leader SIGKILL", Instant::now()));
            cluster::kill_leader(&cluster, &client, &topic, Duration::from_secs(3)).await;
            wait_past_the_log_end(&client, &topic, &seen, 2_000, &mut running).await;
            faults.push(("connections cut", Instant::now()));
            eprintln!("[fault: every connection to every node cut]");
            proxies.iter().for_each(common::proxy::Proxy::cut_all);
            wait_past_the_log_end(&client, &topic, &seen, 2_000, &mut running).await;
            faults.push(("connections frozen", Instant::now()));
            eprintln!("[fault: every connection to every node frozen]");
            proxies.iter().for_each(common::proxy::Proxy::freeze_all);
            wait_past_the_log_end(&client, &topic, &seen, 2_000, &mut running).await;
            faults.push(("rolling restart", Instant::now()));
            cluster::rolling_restart(&cluster, &client).await;
            wait_past_the_log_end(&client, &topic, &seen, 2_000, &mut running).await;
        }
        Some(count) => {
            let seed = std::env::var("SLUICE_FAULT_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
            });
            eprintln!("[{count} random faults, seed {seed} (replay with SLUICE_FAULT_SEED={seed})]");
            let mut rng = Rng::new(seed | 1);
            for _ in 0..count {
                let down = Duration::from_millis(500 + rng.below(4_500));
                let node = u32::try_from(1 + rng.below(3)).unwrap();
                let proxy = &proxies[node as usize - 1];
                match rng.below(5) {
                    0 => {
                        faults.push(("leader SIGKILL", Instant::now()));
                        let partition = i32::try_from(rng.below(PARTITIONS as u64)).unwrap();
                        let leader = cluster::leader_of(&client, &topic, partition).await;
                        eprintln!("[fault: SIGKILL node {leader}, the leader of {topic}/{partition}]");
                        tokio::task::block_in_place(|| cluster.kill(leader));
                        tokio::time::sleep(down).await;
                        tokio::task::block_in_place(|| cluster.restart(leader));
                    }
                    1 => {
                        faults.push(("node SIGKILL", Instant::now()));
                        eprintln!("[fault: SIGKILL node {node}]");
                        tokio::task::block_in_place(|| cluster.kill(node));
                        tokio::time::sleep(down).await;
                        tokio::task::block_in_place(|| cluster.restart(node));
                    }
                    2 => {
                        faults.push(("connections cut", Instant::now()));
                        eprintln!("[fault: every connection to node {node} cut]");
                        proxy.cut_all();
                    }
                    3 => {
                        faults.push(("connections frozen", Instant::now()));
                        eprintln!("[fault: every connection to node {node} frozen]");
                        proxy.freeze_all();
                    }
                    _ => {
                        faults.push(("clean restart", Instant::now()));
                        eprintln!("[fault: clean restart of node {node}]");
                        tokio::task::block_in_place(|| cluster.stop_node(node));
                        tokio::time::sleep(down).await;
                        tokio::task::block_in_place(|| cluster.restart(node));
                    }
                }
                cluster::wait_in_sync(&client).await;
                wait_past_the_log_end(&client, &topic, &seen, 500, &mut running).await;
            }
        }
    }

    producing.store(true, Ordering::SeqCst);
    let acknowledged = producer.await.unwrap();
    let keys: Vec<(String, i32)> = (0..PARTITIONS).map(|p| (topic.clone(), p)).collect();
    let ends = client.log_ends(&keys, Isolation::ReadUncommitted).await.unwrap();
    let total: i64 = ends.values().sum();
    wait_for_progress(&seen, 0, usize::try_from(total).unwrap(), &mut running).await;
    stop.cancel();
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
    // The longest stall each kind of fault caused: the longest time between two batches from
    // the fault until the next one.
    let commits = commits.lock().unwrap();
    let mut stalls: BTreeMap<&str, (u32, Duration)> = BTreeMap::new();
    for (i, (kind, at)) in faults.iter().enumerate() {
        let until = faults.get(i + 1).map_or(Instant::now(), |(_, next)| *next);
        let mut times: Vec<Instant> = commits.iter().copied().filter(|t| *t >= *at && *t < until).collect();
        times.insert(0, *at);
        let longest = times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
        let entry = stalls.entry(kind).or_default();
        entry.0 += 1;
        entry.1 = entry.1.max(longest);
    }
    eprintln!("[job: {} records in {} batches, none lost, none twice]", seen.len(), commits.len());
    for (kind, (count, longest)) in stalls {
        eprintln!("[{kind}: {count} faults, longest stall {:.1} s]", longest.as_secs_f64());
    }
}
