//! Real crashes: a child process runs the scheduler over 8 partitions of a topic and is
//! killed with SIGKILL at random moments, 20 times (`SLUICE_SCHEDULER_KILLS` for more), each
//! time restarted on the same checkpoint directory; a last run finishes the bounded job. Then the
//! log's committed batches must cover every offset of every partition exactly once, in order, and
//! every batch a child began processing (its intent durable) must be in the log with the same
//! ranges: no intent lost or changed.
//!
//! The child is this test binary itself, re-run with `CHILD_ENV` set. Kill delays come from a
//! seed printed at the start (`SLUICE_KILL_SEED` replays it).

// The child reports on stdout, and the test prints its seed.
#![allow(clippy::print_stdout)]

use sluice_testkit as common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{unique, Rng};
use sluice_client::{Client, ClientConfig, Producer, ProducerConfig, ProducerRecord};
use sluice_scheduler::{Batch, BatchOutput, Processor, RateLimits, Scheduler, SchedulerConfig, SystemClock};

const CHILD_ENV: &str = "SLUICE_SCHEDULER_KILL_CHILD";
const TEST_NAME: &str = "committed_ranges_cover_every_offset_once_across_sigkills";
const PARTITIONS: i32 = 8;
const PER_PARTITION: i64 = 4_000;

fn config(topic: &str) -> SchedulerConfig {
    let ending = (0..PARTITIONS).map(|p| ((topic.to_owned(), p), PER_PARTITION)).collect();
    let mut config = SchedulerConfig::new([topic], Duration::from_millis(10));
    // 10 records per partition per 10 ms batch: 400 batches for the whole job, so that the
    // kills land while it runs.
    config.limits = RateLimits { max_per_partition: Some(1_000.0), min_per_partition: 0.0 };
    config.ending_offsets = Some(ending);
    // Keep every committed batch listed, so the check can see all of them.
    config.checkpoint.retain_batches = 100_000;
    config
}

/// Prints each batch's id and ranges before processing it (its intent is durable by then).
struct Report;

impl Processor for Report {
    async fn process(&mut self, mut batch: Batch) -> Result<BatchOutput, sluice_scheduler::BoxError> {
        while batch.next_piece().await?.is_some() {}
        let ranges: Vec<String> =
            batch.ranges.iter().map(|r| format!("{}:{}-{}", r.partition, r.from, r.until)).collect();
        println!("PROCESS {} {}", batch.batch_id, ranges.join(","));
        // Work takes a while, so that kills land between a batch's intent and its commit too.
        tokio::time::sleep(Duration::from_millis(5)).await;
        Ok(BatchOutput::default())
    }
}

/// Runs the job as a child process: `spec` is `DIR|BROKER|TOPIC`.
fn run_child(spec: &str, graceful: bool) -> ! {
    let mut parts = spec.splitn(3, '|');
    let (dir, broker, topic) = (Path::new(parts.next().unwrap()), parts.next().unwrap(), parts.next().unwrap());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let client = Client::connect(ClientConfig::new([broker])).await.unwrap();
        let mut scheduler = Scheduler::open(client, dir, config(topic), SystemClock::new()).unwrap();
        if graceful {
            scheduler.stop_on_signals().unwrap();
        }
        scheduler.run(&mut Report, |_| {}).await.unwrap();
    });
    println!("DONE");
    std::process::exit(0);
}

/// Batches a child began (id, ranges) and whether it finished the job.
type ChildReport = (Vec<(u64, String)>, bool);

/// Runs one child; kills it after `kill_after` unless it finishes first. Returns the batches it
/// began processing and whether it finished the job.
fn child(dir: &Path, broker: &str, topic: &str, kill_after: Option<Duration>) -> (Vec<(u64, String)>, bool) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{}|{broker}|{topic}", dir.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let seen: Arc<Mutex<ChildReport>> = Arc::default();
    let reader = {
        let seen = Arc::clone(&seen);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // The test harness starts the child's output with "test NAME ... " and no newline,
                // so the first report may follow it on the same line.
                if let Some(rest) = line.find("PROCESS ").and_then(|at| line.get(at + "PROCESS ".len()..)) {
                    let (id, ranges) = rest.split_once(' ').unwrap();
                    seen.lock().unwrap().0.push((id.parse().unwrap(), ranges.to_owned()));
                } else if line.ends_with("DONE") {
                    seen.lock().unwrap().1 = true;
                }
            }
        })
    };
    match kill_after {
        Some(after) => {
            std::thread::sleep(after);
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
        None => assert!(child.wait().unwrap().success(), "the last run must finish the job"),
    }
    reader.join().unwrap();
    let seen = seen.lock().unwrap();
    (seen.0.clone(), seen.1)
}

/// The shared broker's address and a new topic for the job, filled.
fn broker_with_data() -> (String, String) {
    let broker = common::shared();
    let topic = unique("killed");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let client = Client::connect(ClientConfig::new([broker.addr.as_str()])).await.unwrap();
        client.create_topic(&topic, PARTITIONS, 1).await.unwrap();
        let producer = Producer::new(client.clone(), ProducerConfig::default()).await.unwrap();
        for i in 0..PER_PARTITION * i64::from(PARTITIONS) {
            let partition = Some((i % i64::from(PARTITIONS)) as i32);
            drop(
                producer
                    .send(ProducerRecord { partition, ..ProducerRecord::new(&topic, format!("{i}")) })
                    .await
                    .unwrap(),
            );
        }
        producer.flush().await.unwrap();
    });
    (broker.addr.clone(), topic)
}

const GRACEFUL_TEST_NAME: &str = "sigterm_lets_the_batch_under_way_commit_and_leaves_nothing_open";
const GRACEFUL_CHILD_ENV: &str = "SLUICE_SCHEDULER_TERM_CHILD";

/// The id in a "PROCESS id ranges" report, wherever it starts on the line.
fn reported_batch(line: &str) -> Option<u64> {
    let at = line.find("PROCESS ")?;
    line.get(at + "PROCESS ".len()..)?.split(' ').next()?.parse().ok()
}

#[test]
fn sigterm_lets_the_batch_under_way_commit_and_leaves_nothing_open() {
    if let Ok(spec) = std::env::var(GRACEFUL_CHILD_ENV) {
        run_child(&spec, true);
    }
    let (broker, topic) = broker_with_data();
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([GRACEFUL_TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(GRACEFUL_CHILD_ENV, format!("{}|{broker}|{topic}", dir.path().display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut begun = Vec::new();
    while begun.len() < 5 {
        let line = lines.next().expect("the child reports batches").unwrap();
        begun.extend(reported_batch(&line));
    }
    // Mid-run (each batch's work takes 5 ms): SIGTERM.
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    assert!(child.wait().unwrap().success(), "the scheduler exits cleanly on SIGTERM");
    assert!(rest.iter().any(|l| l.ends_with("DONE")), "run returned normally");
    begun.extend(rest.iter().filter_map(|l| reported_batch(l)));

    let (_, recovered) = sluice_checkpoint::Log::open(dir.path(), config(&topic).checkpoint).unwrap();
    assert!(recovered.pending.is_empty(), "no batch left open: the one under way committed");
    let last = recovered.last_committed.expect("batches committed").intent.batch_id;
    assert_eq!(Some(&last), begun.iter().max(), "the last batch begun is the last committed");
    assert!(last < 399, "stopped long before the end of the job");
}

#[test]
fn committed_ranges_cover_every_offset_once_across_sigkills() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        run_child(&spec, false);
    }
    let seed = std::env::var("SLUICE_KILL_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    println!("scheduler SIGKILL test seed {seed} (replay with SLUICE_KILL_SEED={seed})");
    let mut rng = Rng::new(seed);
    let kills: u64 = std::env::var("SLUICE_SCHEDULER_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);

    let (broker, topic) = broker_with_data();

    let dir = tempfile::tempdir().unwrap();
    let mut processed: Vec<(u64, String)> = Vec::new();
    let mut finished_early = 0;
    for _ in 0..kills {
        // Often during start-up and recovery, often mid-batch.
        let after = Duration::from_millis(20 + rng.below(250));
        let (seen, done) = child(dir.path(), &broker, &topic, Some(after));
        finished_early += u64::from(done);
        processed.extend(seen);
    }
    let (seen, done) = child(dir.path(), &broker, &topic, None);
    assert!(done);
    processed.extend(seen);
    println!("{kills} kills, {} batches begun, {finished_early} runs finished before their kill", processed.len());

    // The log's committed batches, in id order.
    let (_, recovered) = sluice_checkpoint::Log::open(dir.path(), config(&topic).checkpoint).unwrap();
    assert!(recovered.pending.is_empty(), "the finished job leaves no open intent");
    let mut committed: BTreeMap<u64, String> = BTreeMap::new();
    for intent in &recovered.history {
        let ranges: Vec<String> =
            intent.ranges.iter().map(|r| format!("{}:{}-{}", r.partition, r.start_offset, r.end_offset)).collect();
        committed.insert(intent.batch_id, ranges.join(","));
    }
    let ids: Vec<u64> = committed.keys().copied().collect();
    println!("{} batches committed", ids.len());
    assert_eq!(ids, (0..ids.len() as u64).collect::<Vec<_>>(), "batch ids consecutive from 0");

    // Every offset of every partition exactly once, in order.
    let mut next: BTreeMap<i32, i64> = (0..PARTITIONS).map(|p| (p, 0)).collect();
    for ranges in committed.values() {
        for range in ranges.split(',') {
            let (partition, span) = range.split_once(':').unwrap();
            let (from, until) = span.split_once('-').unwrap();
            let (partition, from, until): (i32, i64, i64) =
                (partition.parse().unwrap(), from.parse().unwrap(), until.parse().unwrap());
            assert_eq!(from, next[&partition], "partition {partition}: ranges adjacent, no gap, no overlap");
            next.insert(partition, until);
        }
    }
    assert!(next.values().all(|end| *end == PER_PARTITION), "every offset covered: {next:?}");

    // Every committed batch was seen being processed (so the check below covers them all).
    let begun: std::collections::BTreeSet<u64> = processed.iter().map(|(id, _)| *id).collect();
    assert!(ids.iter().all(|id| begun.contains(id)), "a committed batch was never reported");
    let reruns = processed.len() - ids.len();
    println!("{reruns} batches were begun again after a kill");
    assert!(reruns > 0, "some kills must land between an intent and its commit (seed {seed})");
    // No intent lost or changed: whatever a child began processing is committed with those ranges.
    for (id, ranges) in &processed {
        assert_eq!(committed.get(id), Some(ranges), "batch {id} was processed with these ranges");
    }
}
