//! Scale-out mode against Apache Kafka 4.4: schedulers sharing a job's partitions through a
//! consumer group, each batch one Kafka transaction (its output and its source offsets). While
//! records keep arriving, processes join, one stops (and leaves), one crashes (dropped mid-run,
//! its transaction left open) and comes back on its checkpoint: every input record is in the
//! read_committed output exactly once, and the group's offsets reach the end of the input.
//! Under both group protocols: the KIP-848 consumer protocol and the classic one with
//! cooperative rebalancing. Tansu has neither transactions' group checks nor aborted-record
//! filtering: these tests skip there and say so.

use sluice_testkit as common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{java, ScaleJob};
use sluice_client::{Client, ClientConfig, GroupProtocol, Producer, ProducerRecord};
use sluice_scheduler::{
    Batch, BatchOutput, BatchProgress, CancellationToken, PartitionChanges, Processor, RateLimits, ScaleConfig,
    Scheduler, SchedulerConfig, SchedulerError, StartingOffsets, SystemClock,
};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

const PARTITIONS: i32 = 6;

/// Copies every record's value to the output topic through the batch's transaction.
struct Copy {
    output: String,
    hooks: Hooks,
    /// The partition changes the scheduler told of, in order.
    changes: Changes,
}

type Changes = Arc<std::sync::Mutex<Vec<PartitionChanges>>>;

/// What a test does to, or learns from, the batches of a process.
#[derive(Default)]
struct Hooks {
    /// Once: the first batch with records takes this long after sending them, having said it
    /// has begun.
    stall: Option<(Duration, Arc<Notify>)>,
    /// Once: the `n`th batch with records that goes on with the transaction of the batch
    /// before fails after sending them.
    fail_going_on: Option<usize>,
    /// Each batch with records: whether it began its transaction, and whether it ended it.
    seen: Arc<std::sync::Mutex<Vec<(bool, bool)>>>,
}

impl Processor for Copy {
    async fn process(&mut self, mut batch: Batch) -> Result<BatchOutput, sluice_scheduler::BoxError> {
        let mut records = Vec::new();
        while let Some(piece) = batch.next_piece().await? {
            for task in &piece.tasks {
                records.extend(task.records().map(|r| r.value().map(<[u8]>::to_vec).unwrap_or_default()));
            }
        }
        if records.is_empty() {
            return Ok(BatchOutput::default());
        }
        let producer = batch.transaction().ok_or("scale-out batch without a transaction")?;
        for value in records {
            let record = ProducerRecord { partition: Some(0), ..ProducerRecord::new(&self.output, value) };
            // Delivered (or failed) by the transaction's commit.
            drop(producer.send(record).await?);
        }
        let going_on = {
            let mut seen = self.hooks.seen.lock().unwrap();
            seen.push((batch.begins_transaction(), batch.ends_transaction()));
            seen.iter().filter(|(begins, _)| !begins).count()
        };
        if self.hooks.fail_going_on.is_some_and(|n| going_on >= n) {
            self.hooks.fail_going_on = None;
            return Err("failing, as the test asks, in a batch that went on with its transaction".into());
        }
        if let Some((pause, begun)) = self.hooks.stall.take() {
            // The records went out first, so the transaction is open at the coordinator.
            producer.flush().await?;
            begun.notify_one();
            tokio::time::sleep(pause).await;
        }
        Ok(BatchOutput::default())
    }

    async fn partitions_changed(&mut self, changes: &PartitionChanges) -> Result<(), sluice_scheduler::BoxError> {
        self.changes.lock().unwrap().push(changes.clone());
        Ok(())
    }
}

/// One process of the job: a scheduler on its own checkpoint directory, run in a task, and the
/// records its committed batches read.
struct Process {
    stop: CancellationToken,
    run: JoinHandle<Result<u64, SchedulerError>>,
    rows: Arc<AtomicU64>,
    /// Batches whose transaction did not commit.
    aborted: Arc<AtomicU64>,
    changes: Changes,
}

async fn start(broker: &str, dir: &Path, input: &str, output: &str, group: &str, protocol: GroupProtocol) -> Process {
    start_with(broker, dir, (input, output, group), protocol, |_| {}, Hooks::default()).await
}

async fn start_with(
    broker: &str,
    dir: &Path,
    (input, output, group): (&str, &str, &str),
    protocol: GroupProtocol,
    tune: impl FnOnce(&mut SchedulerConfig),
    hooks: Hooks,
) -> Process {
    let client = Client::connect(ClientConfig::new([broker])).await.unwrap();
    let mut config = SchedulerConfig::new([input], Duration::from_millis(200));
    let mut scale = ScaleConfig::new(group);
    scale.protocol = protocol;
    scale.session_timeout = Duration::from_secs(6);
    scale.heartbeat_interval = Duration::from_millis(500);
    config.scale = Some(scale);
    tune(&mut config);
    let mut scheduler = Scheduler::open(client, dir, config, SystemClock::new()).unwrap();
    let stop = scheduler.stop_handle();
    let output = output.to_owned();
    let (rows, aborted) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (counted, not_committed) = (Arc::clone(&rows), Arc::clone(&aborted));
    let changes = Changes::default();
    let told = Arc::clone(&changes);
    let run = tokio::spawn(async move {
        // The rows of a transaction spanning batches count once the batch ending it commits.
        let mut in_open_transaction = 0;
        let count = move |progress: &BatchProgress| {
            in_open_transaction += progress.num_input_rows;
            if progress.transaction_open {
                return;
            }
            let rows = std::mem::take(&mut in_open_transaction);
            if progress.aborted {
                not_committed.fetch_add(1, Ordering::Relaxed);
            } else {
                counted.fetch_add(rows, Ordering::Relaxed);
            }
        };
        scheduler.run(&mut Copy { output, hooks, changes: told }, count).await
    });
    Process { stop, run, rows, aborted, changes }
}

/// Produces values `from..to` round-robin over the input's partitions.
async fn produce(producer: &Producer, input: &str, values: std::ops::Range<u32>) {
    let mut deliveries = Vec::new();
    for value in values {
        let partition = (value % PARTITIONS as u32) as i32;
        let record = ProducerRecord { partition: Some(partition), ..ProducerRecord::new(input, value.to_string()) };
        deliveries.push(producer.send(record).await.unwrap());
    }
    for delivery in deliveries {
        delivery.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_that_join_stop_and_crash_output_every_record_once_on_the_consumer_protocol() {
    share_the_job(GroupProtocol::Consumer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_that_join_stop_and_crash_output_every_record_once_on_the_classic_protocol() {
    share_the_job(GroupProtocol::Classic).await;
}

async fn share_the_job(protocol: GroupProtocol) {
    let why = format!("scale-out ({protocol:?}): Tansu checks no group metadata in transactions and does not hide aborted records (docs/brokers.md)");
    let Some(ScaleJob { broker, client, input, output, group, producer }) =
        common::scale_job(&why, "scale", PARTITIONS).await
    else {
        return;
    };
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let started = Instant::now();
    let step = |what: &str| eprintln!("[{:5.1} s] {protocol:?}: {what}", started.elapsed().as_secs_f64());

    produce(&producer, &input, 0..2_000).await;
    let a = start(&broker.addr, dirs[0].path(), &input, &output, &group, protocol).await;
    let b = start(&broker.addr, dirs[1].path(), &input, &output, &group, protocol).await;
    step("a and b started");
    produce(&producer, &input, 2_000..4_000).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let c = start(&broker.addr, dirs[2].path(), &input, &output, &group, protocol).await;
    step("c joined");
    produce(&producer, &input, 4_000..6_000).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // b crashes: dropped mid-run, its transaction (if one is open) left to the broker.
    let b_rows = b.rows.load(Ordering::Relaxed);
    b.run.abort();
    let _ = b.run.await;
    step("b crashed");
    produce(&producer, &input, 6_000..8_000).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // a stops: it finishes its batch, commits, and leaves the group.
    a.stop.cancel();
    a.run.await.unwrap().unwrap();
    step("a stopped");
    let a_rows = a.rows.load(Ordering::Relaxed);
    produce(&producer, &input, 8_000..10_000).await;

    // b comes back on its checkpoint: same instance, same transactional id.
    let b = start(&broker.addr, dirs[1].path(), &input, &output, &group, protocol).await;
    step("b restarted");
    produce(&producer, &input, 10_000..12_000).await;

    // Everything is consumed once the group's offsets reach the ends of the input.
    common::wait_for_group_at_end(&client, &group, &input, PARTITIONS, Duration::from_secs(120), || {}).await;
    step("caught up");
    let mut rows = vec![("a", a_rows), ("b before its crash", b_rows)];
    for (name, process) in [("b after its restart", b), ("c", c)] {
        process.stop.cancel();
        process.run.await.unwrap().unwrap();
        rows.push((name, process.rows.load(Ordering::Relaxed)));
    }
    eprintln!("{protocol:?}: records read in committed batches: {rows:?}");
    for (name, read) in &rows {
        assert!(*read > 0, "{protocol:?}: {name} read nothing: was the work shared? {rows:?}");
    }

    assert_each_once(&broker.addr, &output, 12_000, &format!("{protocol:?}"));
    step("every record once in the read_committed output");
}

/// The read_committed output holds the values `0..count`, each once.
fn assert_each_once(broker: &str, output: &str, count: u32, what: &str) {
    let mut values: Vec<u32> = java::consume_values(broker, output, true).iter().map(|v| v.parse().unwrap()).collect();
    values.sort_unstable();
    let expected: Vec<u32> = (0..count).collect();
    if values != expected {
        let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
        for value in &values {
            *counts.entry(*value).or_default() += 1;
        }
        let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(10).collect();
        let missing: Vec<_> = expected.iter().filter(|v| !counts.contains_key(v)).take(10).collect();
        panic!("{what}: {} values read; twice (first 10): {twice:?}; missing (first 10): {missing:?}", values.len());
    }
}

/// A batch that outlives its member's hold on its partitions: the member is slow to release a
/// revocation (its batch takes longer than the rebalance timeout), so the coordinator fences it
/// and gives the partitions to the other process; the member joins again at once, with a valid
/// new epoch. Its batch must not commit under that new identity: it is aborted, and every record
/// is in the output once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_member_was_fenced_meanwhile_does_not_commit() {
    let why = "a_batch_whose_member_was_fenced_meanwhile_does_not_commit: no consumer protocol (KIP-848) on Tansu";
    let Some(ScaleJob { broker, client, input, output, group, producer }) =
        common::scale_job(why, "fenced", PARTITIONS).await
    else {
        return;
    };
    produce(&producer, &input, 0..3_000).await;
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let names = (input.as_str(), output.as_str(), group.as_str());

    let begun = Arc::new(Notify::new());
    let stall = Some((Duration::from_secs(10), Arc::clone(&begun)));
    let short_rebalance = |config: &mut SchedulerConfig| scale_of(config).rebalance_timeout = Duration::from_secs(3);
    let hooks = Hooks { stall, ..Hooks::default() };
    let slow = start_with(&broker.addr, dirs[0].path(), names, GroupProtocol::Consumer, short_rebalance, hooks).await;
    begun.notified().await;
    // The slow member holds every partition in a 10 s batch; the newcomer's arrival revokes
    // some, which the slow member cannot release within its 3 s rebalance timeout.
    let other = start(&broker.addr, dirs[1].path(), &input, &output, &group, GroupProtocol::Consumer).await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    produce(&producer, &input, 3_000..4_000).await;
    common::wait_for_group_at_end(&client, &group, &input, PARTITIONS, Duration::from_secs(120), || {}).await;
    let aborted = slow.aborted.load(Ordering::Relaxed);
    for process in [slow, other] {
        process.stop.cancel();
        process.run.await.unwrap().unwrap();
    }
    assert_each_once(&broker.addr, &output, 4_000, "fenced mid-batch");
    assert!(aborted >= 1, "the fenced member's batch was not aborted");
}

/// A batch that outlives its transaction's timeout: the broker aborts the transaction and bumps
/// the producer's epoch, so the commit fails. The batch counts as not committed, the producer is
/// started again, and the records are read again: each is in the output once, and the job goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_outliving_its_transaction_timeout_is_done_again() {
    let why = "a_batch_outliving_its_transaction_timeout_is_done_again: Tansu does not time transactions out";
    let Some(ScaleJob { broker, client, input, output, group, producer }) =
        common::scale_job(why, "timeout", PARTITIONS).await
    else {
        return;
    };
    produce(&producer, &input, 0..1_000).await;
    let dir = tempfile::tempdir().unwrap();
    let begun = Arc::new(Notify::new());
    // The test brokers sweep timed-out transactions every second.
    let stall = Some((Duration::from_secs(6), Arc::clone(&begun)));
    let short_transactions =
        |config: &mut SchedulerConfig| scale_of(config).transaction_timeout = Duration::from_secs(2);
    let names = (input.as_str(), output.as_str(), group.as_str());
    let hooks = Hooks { stall, ..Hooks::default() };
    let job = start_with(&broker.addr, dir.path(), names, GroupProtocol::Auto, short_transactions, hooks).await;
    begun.notified().await;
    produce(&producer, &input, 1_000..2_000).await;
    common::wait_for_group_at_end(&client, &group, &input, PARTITIONS, Duration::from_secs(60), || {}).await;
    let aborted = job.aborted.load(Ordering::Relaxed);
    job.stop.cancel();
    job.run.await.unwrap().unwrap();
    assert_each_once(&broker.addr, &output, 2_000, "a transaction timed out");
    assert!(aborted >= 1, "the timed-out batch was not counted as not committed");
    // The processor is told to rebuild what it keeps for the batch's partitions: they are
    // gained again (from what Kafka holds) without having been lost.
    let changes = job.changes.lock().unwrap();
    let gained = |p: i32| changes.iter().filter(|c| c.gained.contains(&(input.clone(), p))).count();
    assert!(changes.iter().all(|c| c.lost.is_empty()), "a partition was lost: {changes:?}");
    assert!((0..PARTITIONS).any(|p| gained(p) >= 2), "no partition gained again after the abort: {changes:?}");
}

/// While a process catches up (its batches leave records to read: here a rate limit), one
/// transaction spans its batches for up to the commit interval: the first begins it, the
/// others go on with it, and the one that reaches the end of the input ends it. A batch failing
/// part way through such a transaction aborts all of it: what committed before it stays, nothing
/// of it is committed, the next run reads every record of it again from the group's offsets, and
/// each is in the output once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlogs_batches_share_a_transaction_and_a_failure_undoes_all_of_it() {
    let why =
        "a_backlogs_batches_share_a_transaction_and_a_failure_undoes_all_of_it: Tansu does not hide aborted records";
    let Some(ScaleJob { broker, client, input, output, group, producer }) =
        common::scale_job(why, "spanning", PARTITIONS).await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let names = (input.as_str(), output.as_str(), group.as_str());
    // 100 records of each partition per 200 ms batch.
    let paced = |config: &mut SchedulerConfig| {
        config.limits = RateLimits { max_per_partition: Some(500.0), min_per_partition: 0.0 };
        scale_of(config).commit_interval = Duration::from_secs(5);
    };
    // A first run reads 100 records of each partition in one batch and commits them.
    produce(&producer, &input, 0..600).await;
    let done = Hooks::default();
    let seen = Arc::clone(&done.seen);
    let job = start_with(&broker.addr, dir.path(), names, GroupProtocol::Auto, paced, done).await;
    common::wait_for_group_at_end(&client, &group, &input, PARTITIONS, Duration::from_secs(60), || {}).await;
    job.stop.cancel();
    job.run.await.unwrap().unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![(true, true)], "the first run's batch reached the end");

    // The backlog after it takes four batches; the second that goes on with its transaction
    // fails.
    produce(&producer, &input, 600..3_000).await;
    let failing = Hooks { fail_going_on: Some(2), ..Hooks::default() };
    let seen = Arc::clone(&failing.seen);
    let job = start_with(&broker.addr, dir.path(), names, GroupProtocol::Auto, paced, failing).await;
    let failed = job.run.await.unwrap();
    assert!(matches!(failed, Err(SchedulerError::Processing { .. })), "{failed:?}");
    assert_eq!(
        *seen.lock().unwrap(),
        vec![(true, false), (false, false), (false, false)],
        "the failed run's batches: three in one transaction, the first of the run among them"
    );
    // Only the first run's batch committed: the first 100 records of each partition.
    let offsets = client.group_offsets(&group).await.unwrap();
    let committed: Vec<i64> =
        (0..PARTITIONS).map(|p| offsets.get(&(input.clone(), p)).copied().unwrap_or(-1)).collect();
    assert_eq!(committed, vec![100; PARTITIONS as usize], "{offsets:?}");
    assert_each_once(&broker.addr, &output, 600, "the run before the failed transaction");

    let again = Hooks::default();
    let seen = Arc::clone(&again.seen);
    let job = start_with(&broker.addr, dir.path(), names, GroupProtocol::Auto, paced, again).await;
    common::wait_for_group_at_end(&client, &group, &input, PARTITIONS, Duration::from_secs(60), || {}).await;
    job.stop.cancel();
    job.run.await.unwrap().unwrap();
    assert_each_once(&broker.addr, &output, 3_000, "a transaction spanning batches, failed and done again");
    let seen = seen.lock().unwrap();
    assert!(seen.iter().any(|(_, ends)| !ends), "no transaction spanned batches: {seen:?}");
    assert_eq!(seen.last().map(|(_, ends)| *ends), Some(true), "{seen:?}");
    // Each transaction: begun by one batch, gone on with by the next ones, ended by the last.
    let mut open = false;
    for (begins, ends) in seen.iter() {
        assert_eq!(*begins, !open, "{seen:?}");
        open = !ends;
    }
    assert!(!open, "{seen:?}");
}

fn scale_of(config: &mut SchedulerConfig) -> &mut ScaleConfig {
    config.scale.as_mut().unwrap()
}

/// `starting_offsets = Latest`: a partition that gets no records while its first owner has it
/// still has its offset committed, so that the process taking it over later starts where the
/// first did, not at the records from before the job began.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_partition_moves_without_its_history_being_read() {
    let why = "a_quiet_partition_moves_without_its_history_being_read: no transactions' group checks on Tansu";
    let Some(ScaleJob { broker, client, input, output, group, producer }) = common::scale_job(why, "quiet", 2).await
    else {
        return;
    };
    let send = |partition: i32, values: std::ops::Range<u32>| {
        let (producer, input) = (&producer, &input);
        async move {
            for value in values {
                let record =
                    ProducerRecord { partition: Some(partition), ..ProducerRecord::new(input, value.to_string()) };
                producer.send(record).await.unwrap().await.unwrap();
            }
        }
    };
    // History from before the job, in the partition that stays quiet.
    send(1, 10_000..10_100).await;
    let latest = |config: &mut SchedulerConfig| config.starting_offsets = StartingOffsets::Latest;
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let names = (input.as_str(), output.as_str(), group.as_str());
    // Two processes split the partitions: one of them owns only the quiet one, and none of its
    // batches reads anything (on the classic protocol sluice's own assignor moves the lowest
    // partition to the newcomer, so the first keeps the quiet one).
    let first = start_with(&broker.addr, dirs[0].path(), names, GroupProtocol::Classic, latest, Hooks::default()).await;
    let second =
        start_with(&broker.addr, dirs[1].path(), names, GroupProtocol::Classic, latest, Hooks::default()).await;
    // Two cooperative rebalances (the partition that moves is first left out), heartbeats every
    // 500 ms: settled well within 5 s.
    tokio::time::sleep(Duration::from_secs(5)).await;
    send(0, 0..100).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Each leaves in turn, so that whichever owned the quiet partition hands it over to a process
    // that finds the job started (the group holds the busy partition's offset).
    first.stop.cancel();
    first.run.await.unwrap().unwrap();
    send(0, 100..200).await;
    let third = start_with(&broker.addr, dirs[2].path(), names, GroupProtocol::Classic, latest, Hooks::default()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    second.stop.cancel();
    second.run.await.unwrap().unwrap();
    send(0, 200..300).await;
    common::wait_for_group_at_end(&client, &group, &input, 2, Duration::from_secs(60), || {}).await;
    third.stop.cancel();
    third.run.await.unwrap().unwrap();
    assert_each_once(&broker.addr, &output, 300, "a quiet partition moved");
}
