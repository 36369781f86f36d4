//! Keyed state in scale-out mode against Apache Kafka 4.4: a job counting clicks per user (the
//! source keyed by user, so each user's clicks are in one partition) run by processes sharing
//! its partitions through a consumer group. Each batch's state changes go to the operators'
//! compacted changelog topics in the batch's transaction; a process that takes a partition on
//! restores its state from there. While clicks arrive, processes join, one crashes (dropped
//! mid-run, its transaction left open) and comes back on its checkpoint, one stops: every
//! user's running counts in the read_committed output are exactly 1, 2, 3, ... up to the user's
//! clicks (a state lost on a move would start again at 1, a batch counted twice would skip),
//! and the per-user totals kept by `update_state_by_key` end at each user's clicks. Tansu has
//! neither transactions' group checks nor aborted-record filtering: the test skips there and
//! says so.

use sluice_testkit as common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{java, unique, Kind, ScaleJob};
use sluice_client::{Client, ClientConfig, GroupProtocol, Producer, ProducerConfig, ProducerRecord};
use sluice_scheduler::{CancellationToken, ScaleConfig};
use sluice_stream::{
    JsonLinesFiles, KafkaSink, KeyState, RestoreCounters, StreamConfig, StreamError, StreamingContext, Timed,
    Watermark, Windowed,
};
use tokio::task::JoinHandle;

const PARTITIONS: i32 = 6;
/// Why the tests of keyed state skip on Tansu.
const STATE_NEEDS: &str =
    "keyed state in scale-out mode needs transactions' group checks and aborted-record filtering (docs/brokers.md)";
const USERS: u32 = 60;

/// Each user's largest total seen by `update_state_by_key`'s output, over all processes.
type Totals = Arc<Mutex<BTreeMap<String, u64>>>;

/// One process of the job, run in a task.
struct Process {
    stop: CancellationToken,
    run: JoinHandle<Result<u64, StreamError>>,
    restored: RestoreCounters,
}

/// A scale-out job's context: 200 ms batches, the consumer protocol, 5 s transactions,
/// consumed repartition records purged every second.
fn context(broker: &str, dir: &Path, input: &str, group: &str) -> StreamingContext {
    StreamingContext::new(scale_config(broker, dir, input, group))
}

/// [`context`]'s configuration.
fn scale_config(broker: &str, dir: &Path, input: &str, group: &str) -> StreamConfig {
    let mut config = StreamConfig::new([broker], [input], Duration::from_millis(200), dir);
    config.repartition_purge_interval = Duration::from_secs(1);
    let mut scale = ScaleConfig::new(group);
    scale.protocol = GroupProtocol::Consumer;
    scale.transaction_timeout = Duration::from_secs(5);
    config.scheduler.scale = Some(scale);
    config
}

/// Runs a job built on `ssc` in a task.
fn run(ssc: StreamingContext) -> Process {
    let (stop, restored) = (ssc.stop_handle(), ssc.restore_counters());
    let run = tokio::spawn(ssc.run(|_| {}));
    Process { stop, run, restored }
}

/// The running counts job: every click gets its user's running count (`map_with_state`, to
/// the output topic), and every user's total is kept by `update_state_by_key` (into `totals`).
fn start(broker: &str, dir: &Path, (input, output, group): (&str, &str, &str), totals: &Totals) -> Process {
    running_counts(context(broker, dir, input, group), broker, output, totals)
}

/// `map_with_state`'s step giving each key's running count: 1, 2, 3, ...
fn count_up<K: Clone>(_: u64, key: &K, _: Option<u64>, state: &mut KeyState<u64>) -> Option<(K, u64)> {
    let count = state.get().copied().unwrap_or(0) + 1;
    state.update(count);
    Some((key.clone(), count))
}

/// Each user's task, as its totals came.
type TasksOfUsers = Arc<Mutex<BTreeMap<String, i32>>>;

/// The task each user's totals came in, of the job writing to `output` (its processes share it).
fn tasks_of_users(output: &str) -> TasksOfUsers {
    static JOBS: Mutex<BTreeMap<String, TasksOfUsers>> = Mutex::new(BTreeMap::new());
    Arc::clone(JOBS.lock().unwrap().entry(output.to_owned()).or_default())
}

/// A click as (its user, 1).
fn user(record: sluice_stream::KafkaRecord) -> (String, u64) {
    (record.key_str().unwrap_or_default().to_owned(), 1)
}

/// [`start`]'s job on `ssc`.
fn running_counts(ssc: StreamingContext, broker: &str, output: &str, totals: &Totals) -> Process {
    // Every click gets its user's running count.
    ssc.kafka_stream().map(user).map_with_state(None, count_up).to_sink(KafkaSink::json(
        ClientConfig::new([broker]),
        output,
        "counts",
    ));
    // Every user's total after each batch.
    let seen = Arc::clone(totals);
    let tasks_of_users = tasks_of_users(output);
    ssc.kafka_stream()
        .map(user)
        .update_state_by_key(|clicks: Vec<u64>, total: Option<u64>| {
            Some(total.unwrap_or(0) + clicks.iter().sum::<u64>())
        })
        .foreach_batch(move |info, totals| {
            // Batch time is the wall clock's in scale-out mode (on the interval's grid), so that
            // the processes agree on it.
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
            if info.time_ms.abs_diff(now) > 5_000 {
                return Err(format!("batch time {} is not the wall clock's ({now})", info.time_ms).into());
            }
            // Each user's total comes in a run of its task's (its partition's), the same in
            // every batch of every process.
            let runs = info.task_runs.as_deref().ok_or("a scale-out batch without its items' tasks")?;
            if runs.iter().map(|(_, items)| items).sum::<usize>() != totals.len() {
                return Err(format!("runs {runs:?} of {} totals", totals.len()).into());
            }
            let tasks = runs.iter().flat_map(|(task, items)| std::iter::repeat_n(*task, *items));
            let mut tasks_of_users = tasks_of_users.lock().unwrap();
            for (task, (user, _)) in tasks.zip(&totals) {
                let first = *tasks_of_users.entry(user.clone()).or_insert(task);
                if task != first {
                    return Err(format!("{user}'s total in a run of task {task}, and before of task {first}").into());
                }
            }
            let mut seen = seen.lock().unwrap();
            for (user, total) in totals {
                let max = seen.entry(user).or_default();
                *max = (*max).max(total);
            }
            Ok(())
        });
    run(ssc)
}

/// Clicks `from..to`: click `i` is user `i % USERS`'s, on the user's partition.
async fn click(producer: &Producer, input: &str, clicks: std::ops::Range<u32>) {
    let mut deliveries = Vec::new();
    for i in clicks {
        let user = i % USERS;
        let record = ProducerRecord {
            partition: Some((user % PARTITIONS as u32) as i32),
            ..ProducerRecord::new(input, i.to_string()).key(format!("user-{user}"))
        };
        deliveries.push(producer.send(record).await.unwrap());
    }
    for delivery in deliveries {
        delivery.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_state_moves_with_its_partitions_and_counts_every_click_once() {
    let Some(ScaleJob { broker, client, input, output, group, producer }) =
        common::scale_job(STATE_NEEDS, "state", PARTITIONS).await
    else {
        return;
    };
    let totals = Totals::default();
    // The running counts go to files too, one per task with counts in each batch, every
    // process's in one directory.
    let files = tempfile::tempdir().unwrap();
    let start = |dir: &Path| {
        let ssc = context(&broker.addr, dir, &input, &group);
        ssc.kafka_stream().map(user).map_with_state(None, count_up).to_sink(JsonLinesFiles::new(files.path()));
        running_counts(ssc, &broker.addr, &output, &totals)
    };
    let restored = come_and_go(&client, &producer, (&input, &group), start).await;
    let started = Instant::now();
    let step = |what: &str| eprintln!("[{:5.1} s] {what}", started.elapsed().as_secs_f64());
    // c took partitions over from a, b and the crashed b, and b again took some on after a
    // stopped: each restored state that other processes had built.
    assert!(restored.iter().all(|(_, tasks, records)| *tasks > 0 && *records > 0), "{restored:?}");

    // Every click once, every user's counts in order with none lost and none twice.
    check_counts_and_totals(&broker.addr, &output, &totals, 12_000);
    step("every user's running counts are 1, 2, 3, ... and the totals from update_state_by_key the clicks");
    let files = check_task_files(files.path(), 12_000 / USERS);
    step(&format!("the files: every user's counts once, in {files} files of the user's partition's task"));
}

/// The files sink's files in `dir` of a running counts job: each is a task's (named
/// `...-task-<partition>.jsonl`), and holds counts of the users of that partition only; over
/// all of them every user's counts are 1..=`per_user`, each once. Returns how many files.
fn check_task_files(dir: &Path, per_user: u32) -> usize {
    let mut counts: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut files = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(!name.starts_with('.'), "{name}: a batch's file left at its temporary name");
        let task = name.rsplit_once("-task-").and_then(|(_, task)| task.strip_suffix(".jsonl")?.parse::<u32>().ok());
        let task = task.unwrap_or_else(|| panic!("{name} is not a task's file"));
        for row in std::fs::read_to_string(&path).unwrap().lines() {
            let (user, count): (String, u64) = serde_json::from_str(row).unwrap();
            let partition = user.trim_start_matches("user-").parse::<u32>().unwrap() % PARTITIONS as u32;
            assert_eq!(partition, task, "{user}'s count {count} in {name}");
            counts.entry(user).or_default().push(count);
        }
        files += 1;
    }
    let wrong: Vec<_> = counts
        .iter_mut()
        .filter_map(|(user, seen)| {
            seen.sort_unstable();
            (*seen != (1..=u64::from(per_user)).collect::<Vec<_>>()).then(|| (user.clone(), seen.len()))
        })
        .take(5)
        .collect();
    assert!(
        counts.len() == USERS as usize && wrong.is_empty(),
        "{} users; (user, counts) wrong: {wrong:?}",
        counts.len()
    );
    files
}

/// After `clicks` clicks: every user's running counts in the read_committed `output` are 1, 2,
/// 3, ... (none lost, none twice), and every user's total from `update_state_by_key` is the
/// user's clicks.
fn check_counts_and_totals(broker: &str, output: &str, totals: &Totals, clicks: u32) {
    let clicks_per_user = u64::from(clicks / USERS);
    check_running_counts(broker, output, ("users", USERS), clicks_per_user);
    let totals = totals.lock().unwrap();
    let off: Vec<_> = totals.iter().filter(|(_, total)| **total != clicks_per_user).take(5).collect();
    assert!(
        totals.len() == USERS as usize && off.is_empty(),
        "{} users' totals; totals not {clicks_per_user}: {off:?}",
        totals.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_copy_leaves_a_failover_only_the_changelogs_tail_to_read() {
    let Some(ScaleJob { broker, client, input, output, group, producer }) =
        common::scale_job(STATE_NEEDS, "standby", PARTITIONS).await
    else {
        return;
    };
    let totals = Totals::default();
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let start = |dir: &Path| {
        let mut config = scale_config(&broker.addr, dir, &input, &group);
        config.standby_replicas = 1;
        running_counts(StreamingContext::new(config), &broker.addr, &output, &totals)
    };
    let started = Instant::now();
    let step = |what: &str| eprintln!("[{:5.1} s] {what}", started.elapsed().as_secs_f64());

    click(&producer, &input, 0..3_000).await;
    let a = start(dirs[0].path());
    let b = start(dirs[1].path());
    step("a and b started, each keeping a copy of the other's tasks");
    for round in 0..6u32 {
        click(&producer, &input, 3_000 + round * 500..3_500 + round * 500).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    common::wait_for_group_at_end(&client, &group, &input, PARTITIONS, Duration::from_secs(60), || {}).await;
    // The copies are placed every 2 s and tail their changelogs.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (tasks_before, records_before) = (read(&a.restored.tasks), read(&a.restored.records));
    b.run.abort();
    let _ = b.run.await;
    step("b crashed (dropped, its transaction left open)");
    click(&producer, &input, 6_000..9_000).await;
    common::wait_for_group_at_end(&client, &group, &input, PARTITIONS, Duration::from_secs(120), || {}).await;
    step("a caught up with b's tasks");
    a.stop.cancel();
    a.run.await.unwrap().unwrap();

    let r = &a.restored;
    // What a restored once b had crashed.
    let (tasks, records, copied, copies) = (
        read(&r.tasks) - tasks_before,
        read(&r.records) - records_before,
        read(&r.standby_records),
        read(&r.standby_tasks),
    );
    let held = changelog_offsets(&client, &group).await;
    eprintln!(
        "after b crashed, a restored {tasks} tasks: {copies} from standby copies ({copied} keys), {records} changelog records read; the changelogs hold {held} offsets (before, a had restored {tasks_before} tasks and read {records_before} records)"
    );
    // b's tasks (about half of the 6) came from a's copies: their users' two states each.
    assert!(copies >= 1 && copied >= copies * 2, "{copies} tasks, {copied} keys from standby copies");
    // What a read was the changelogs' tail after the copies, not b's tasks' history (about
    // half of what the changelogs hold).
    assert!(records * 10 < held, "{records} changelog records read of {held}");

    // The copies were right: every click once, every user's counts in order.
    check_counts_and_totals(&broker.addr, &output, &totals, 9_000);
}

/// The changelog partitions of the running counts job of `group`.
fn changelog_partitions(group: &str) -> Vec<(String, i32)> {
    ["map_with_state-0", "update_state_by_key-1"]
        .iter()
        .flat_map(|name| {
            let topic = format!("{group}-{name}-changelog");
            (0..PARTITIONS).map(move |p| (topic.clone(), p))
        })
        .collect()
}

/// The offsets the job's changelogs hold, over all their partitions.
async fn changelog_offsets(client: &Client, group: &str) -> u64 {
    let ends = client.log_ends(&changelog_partitions(group), sluice_client::Isolation::ReadUncommitted).await.unwrap();
    u64::try_from(ends.values().sum::<i64>()).unwrap()
}

fn read(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(std::sync::atomic::Ordering::Relaxed)
}

/// The local fast path: a process crashes (dropped mid-run, its transaction left open) after
/// building its tasks' state, another process takes every task on and writes to the
/// changelogs, stops, and the first comes back on its checkpoint. It restores every task from
/// its checkpoint's copy and reads only the changelogs' tail after it (what the other process
/// wrote, and at most the transaction the crash kept from the checkpoint), not their history;
/// and the state is right: every user's running counts are 1, 2, 3, ... with none lost and
/// none twice, and the totals are the clicks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_restarted_on_its_checkpoint_reads_only_the_changelogs_tail_after_its_copy() {
    let Some(ScaleJob { broker, client, input, output, group, producer }) =
        common::scale_job(STATE_NEEDS, "local", PARTITIONS).await
    else {
        return;
    };
    let totals = Totals::default();
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let start = |dir: &Path| {
        let mut config = scale_config(&broker.addr, dir, &input, &group);
        // Snapshots and the deltas after them both count.
        config.snapshot_every = 4;
        running_counts(StreamingContext::new(config), &broker.addr, &output, &totals)
    };
    let started = Instant::now();
    let step = |what: &str| eprintln!("[{:5.1} s] {what}", started.elapsed().as_secs_f64());

    click(&producer, &input, 0..2_000).await;
    let a = start(dirs[0].path());
    for round in 0..10u32 {
        click(&producer, &input, 2_000 + round * 400..2_400 + round * 400).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    common::wait_for_group_at_end(&client, &group, &input, PARTITIONS, Duration::from_secs(60), || {}).await;
    a.run.abort();
    let _ = a.run.await;
    let at_crash = changelog_offsets(&client, &group).await;
    step(&format!("a crashed (dropped, its transaction left open); the changelogs hold {at_crash} offsets"));

    let b = start(dirs[1].path());
    click(&producer, &input, 6_000..7_500).await;
    common::wait_for_group_at_end(&client, &group, &input, PARTITIONS, Duration::from_secs(120), || {}).await;
    b.stop.cancel();
    b.run.await.unwrap().unwrap();
    let (b_tasks, b_copies) = (read(&b.restored.tasks), read(&b.restored.local_tasks));
    assert!(
        b_tasks >= PARTITIONS as u64 && b_copies == 0,
        "b, on a checkpoint of its own, restored every task from the changelogs: {b_tasks} tasks, {b_copies} from copies"
    );
    let at_restart = changelog_offsets(&client, &group).await;
    step(&format!("b took every task on, wrote to the changelogs and stopped; they hold {at_restart} offsets"));

    let a = start(dirs[0].path());
    // What its restart restored (before anything later could restore again).
    let r = &a.restored;
    let restarting = Instant::now();
    while read(&r.tasks) < PARTITIONS as u64 {
        assert!(restarting.elapsed() < Duration::from_secs(60), "a never took every task on");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (tasks, copies, keys, records) =
        (read(&r.tasks), read(&r.local_tasks), read(&r.local_records), read(&r.records));
    click(&producer, &input, 7_500..9_000).await;
    common::wait_for_group_at_end(&client, &group, &input, PARTITIONS, Duration::from_secs(120), || {}).await;
    a.stop.cancel();
    a.run.await.unwrap().unwrap();
    step(&format!(
        "a came back on its checkpoint: {tasks} tasks restored, {copies} from its checkpoint's copies ({keys} keys), {records} changelog records read"
    ));
    assert_eq!(copies, PARTITIONS as u64, "every task from the checkpoint's copy");
    assert!(keys >= u64::from(USERS) * 2, "{keys} keys: every user's two states");
    // The tail: what b wrote, and at most one transaction of a's (two states of every user)
    // that the crash kept from the checkpoint. Offsets count transaction markers too, so the
    // bound is loose only by those.
    let tail = at_restart - at_crash + u64::from(USERS) * 2;
    assert!(records <= tail, "{records} changelog records read; the tail after the crash is at most {tail}");
    assert!(records * 3 < at_restart, "{records} records read of the {at_restart} the changelogs hold");

    check_counts_and_totals(&broker.addr, &output, &totals, 9_000);
    step("every user's running counts are 1, 2, 3, ... and the totals the clicks");
}

/// A checkpoint's copy of changelogs that were deleted and made again (to start the job's state
/// over) is not used, even when the new ones go past the old ones' ends: the restarted
/// process's state starts empty, as the new changelogs hold no state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_of_changelogs_made_again_is_not_used() {
    let Some(ScaleJob { broker, client, input, output, group, producer }) =
        common::scale_job(STATE_NEEDS, "remade", PARTITIONS).await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let start = |totals: &Totals| {
        let mut config = scale_config(&broker.addr, dir.path(), &input, &group);
        config.snapshot_every = 2;
        running_counts(StreamingContext::new(config), &broker.addr, &output, totals)
    };
    click(&producer, &input, 0..1_200).await;
    let first = Totals::default();
    let a = start(&first);
    common::wait_for_group_at_end(&client, &group, &input, PARTITIONS, Duration::from_secs(60), || {}).await;
    a.stop.cancel();
    a.run.await.unwrap().unwrap();
    assert!(first.lock().unwrap().values().all(|total| *total == 20), "{:?}", first.lock().unwrap());
    let at_stop = changelog_offsets(&client, &group).await;

    // The state starts over: its changelogs deleted (and gone from the metadata).
    let topics: std::collections::BTreeSet<String> =
        changelog_partitions(&group).into_iter().map(|(topic, _)| topic).collect();
    for topic in &topics {
        client.delete_topic(topic).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let metadata = client.refresh_metadata(Some(&names)).await.unwrap();
        let listed = |topic: &String| {
            metadata.topics.get(topic).is_some_and(|t| t.error == sluice_protocol::error_code::ErrorCode::None)
        };
        if !topics.iter().any(listed) {
            break;
        }
        assert!(Instant::now() < deadline, "the changelogs were not deleted in 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Made again (as the job makes them) and written past where the old ones ended: only the
    // topic ids tell the checkpoint's copy is not of these. The records are removals of a key
    // no state holds (a `String` key in postcard: its length, then its bytes).
    for topic in &topics {
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Err(error) =
            client.create_topic_with_configs(topic, PARTITIONS, 1, &[("cleanup.policy", "compact")]).await
        {
            assert!(Instant::now() < deadline, "making {topic} again: {error}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let removals = topics.iter().flat_map(|topic| {
        (0..PARTITIONS).flat_map(move |partition| {
            (0..200).map(move |_| ProducerRecord {
                partition: Some(partition),
                key: Some(bytes::Bytes::from_static(b"\x06nobody")),
                value: None,
                ..ProducerRecord::new(topic.as_str(), "")
            })
        })
    });
    let mut deliveries = Vec::new();
    for record in removals {
        deliveries.push(producer.send(record).await.unwrap());
    }
    for delivery in deliveries {
        delivery.await.unwrap();
    }
    let old_ends = at_stop;
    let now_ends = changelog_offsets(&client, &group).await;
    assert!(now_ends > old_ends, "the new changelogs ({now_ends} offsets) go past the old ({old_ends})");

    click(&producer, &input, 1_200..2_400).await;
    let second = Totals::default();
    let a = start(&second);
    common::wait_for_group_at_end(&client, &group, &input, PARTITIONS, Duration::from_secs(60), || {}).await;
    a.stop.cancel();
    a.run.await.unwrap().unwrap();
    assert_eq!(read(&a.restored.local_tasks), 0, "no task from the copy of the old changelogs");
    let second = second.lock().unwrap();
    let off: Vec<_> = second.iter().filter(|(_, total)| **total != 20).take(5).collect();
    assert!(second.len() == USERS as usize && off.is_empty(), "totals from the new clicks only (20 each): {off:?}");
}

/// The read_committed `output` of (key, running count) rows holds `keys` keys (named `what`),
/// each with the counts 1, 2, 3, ... `per_key` in order: none lost, none twice.
fn check_running_counts(broker: &str, output: &str, (what, keys): (&str, u32), per_key: u64) {
    let mut counts: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for row in java::consume_values(broker, output, true) {
        let (key, count): (String, u64) = serde_json::from_str(&row).unwrap();
        counts.entry(key).or_default().push(count);
    }
    let wrong: Vec<_> = counts
        .iter()
        .filter(|(_, seen)| **seen != (1..=per_key).collect::<Vec<_>>())
        .map(|(key, seen)| (key, seen.len(), seen.iter().zip(1..).find(|(n, i)| **n != *i).map(|(n, i)| (i, *n))))
        .take(5)
        .collect();
    assert!(
        counts.len() == keys as usize && wrong.is_empty(),
        "{} {what} in the output; {what} whose counts are not 1..={per_key} (key, rows, first (place, count) out of order): {wrong:?}",
        counts.len()
    );
}

/// Event time of click `i` (its value): 1 ms after the one before, from a whole second.
const EPOCH_MS: i64 = 1_800_000_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_time_windows_move_with_their_partitions_and_give_each_count_once() {
    let why = "event-time windows in scale-out mode need transactions' group checks and aborted-record filtering (docs/brokers.md)";
    let Some(ScaleJob { broker, client, input, output, group, producer }) =
        common::scale_job(why, "windows", PARTITIONS).await
    else {
        return;
    };
    let lateness = Duration::from_millis(500);
    // Clicks per user and 1 s event-time window, each window given by the task of the user's
    // partition once its own watermark passes the window's end.
    let start = |dir: &Path| {
        let ssc = context(&broker.addr, dir, &input, &group);
        ssc.kafka_stream()
            .map(|record| {
                let user = record.key_str().unwrap_or_default().to_owned();
                let click: i64 = record.value_str().unwrap_or_default().parse().unwrap_or_default();
                (user, EPOCH_MS + click)
            })
            .with_watermark(Watermark::new(lateness), |(_, time)| *time)
            .map(|timed| timed.map(|(user, _)| (user, 1u64)))
            .reduce_by_key_and_event_window(Duration::from_secs(1), Duration::from_secs(1), |a, b| a + b)
            .to_sink(KafkaSink::json(ClientConfig::new([broker.addr.as_str()]), &output, "windows"));
        run(ssc)
    };
    let restored = come_and_go(&client, &producer, (&input, &group), start).await;
    assert!(restored.iter().any(|(_, tasks, records)| *tasks > 0 && *records > 0), "{restored:?}");

    // What a single process gives: each user's clicks per window, for the windows every
    // partition's watermark has passed (the last clicks of each partition hold the rest open).
    let clicks = 12_000u32;
    let closed_until = EPOCH_MS + i64::from(clicks - PARTITIONS as u32) - lateness.as_millis() as i64;
    let mut expected: BTreeMap<(i64, String), u64> = BTreeMap::new();
    for i in 0..clicks {
        let time = EPOCH_MS + i64::from(i);
        let start = time - time.rem_euclid(1_000);
        if start + 1_000 <= closed_until {
            *expected.entry((start, format!("user-{}", i % USERS))).or_default() += 1;
        }
    }
    let mut given: BTreeMap<(i64, String), Vec<u64>> = BTreeMap::new();
    for row in java::consume_values(&broker.addr, &output, true) {
        let window: Windowed<(String, u64)> = serde_json::from_str(&row).unwrap();
        given.entry((window.start_ms, window.item.0)).or_default().push(window.item.1);
    }
    let wrong: Vec<_> = expected
        .iter()
        .filter(|(window, count)| given.get(*window) != Some(&vec![**count]))
        .map(|(window, count)| (window, count, given.get(window)))
        .take(5)
        .collect();
    assert!(wrong.is_empty(), "windows not given once with their count (window, expected, given): {wrong:?}");
    let twice: Vec<_> = given.iter().filter(|(_, counts)| counts.len() > 1).take(5).collect();
    assert!(twice.is_empty(), "windows given more than once: {twice:?}");
    eprintln!(
        "{} closed windows of {} users given once each, with the counts of a single process",
        expected.len(),
        USERS
    );
}

/// Items clicked: click `i` is of item `i % ITEMS`, so each item's clicks come from every
/// user's partition.
const ITEMS: u32 = 25;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_per_item_of_clicks_keyed_by_user_go_through_a_repartition_topic_and_are_exact() {
    let why = "repartitioning in scale-out mode needs transactions' group checks and aborted-record filtering (docs/brokers.md)";
    let Some(ScaleJob { broker, client, input, output, group, producer }) =
        common::scale_job(why, "repartition", PARTITIONS).await
    else {
        return;
    };
    // Every click gets its item's running count: the source is keyed by user, so the items go
    // through the job's repartition topic to the task of the item's partition first.
    let start = |dir: &Path| {
        let ssc = context(&broker.addr, dir, &input, &group);
        ssc.kafka_stream()
            .map(|record| {
                let click: u32 = record.value_str().unwrap_or_default().parse().unwrap_or_default();
                (format!("item-{}", click % ITEMS), 1u64)
            })
            .repartition("by-item")
            .map_with_state(None, count_up)
            .to_sink(KafkaSink::json(ClientConfig::new([broker.addr.as_str()]), &output, "item-counts"));
        run(ssc)
    };
    let repartition = format!("{group}-by-item-repartition");
    let restored =
        come_and_go_through(&client, &producer, (&input, &group), std::slice::from_ref(&repartition), start).await;
    assert!(restored.iter().any(|(_, tasks, records)| *tasks > 0 && *records > 0), "{restored:?}");

    // Every click counted once, in its item's task: each item's counts are 1, 2, 3, ... (a key
    // kept in two tasks would count from 1 twice; a batch written twice would repeat).
    check_running_counts(&broker.addr, &output, ("items", ITEMS), u64::from(12_000 / ITEMS));
    // What the group consumed was purged as the job went (each owner every second), and
    // nothing it had not.
    let keys: Vec<(String, i32)> = (0..PARTITIONS).map(|p| (repartition.clone(), p)).collect();
    let starts = client.list_offsets(&keys, sluice_client::OffsetSpec::Earliest).await.unwrap();
    let committed = client.stable_group_offsets(&group, &keys).await.unwrap();
    assert!(starts.values().any(|start| *start > 0), "nothing purged: log starts {starts:?}");
    for key in &keys {
        assert!(
            starts[key] <= committed[key].unwrap(),
            "{key:?} purged to {} past the group's offset {committed:?}",
            starts[key]
        );
    }
    eprintln!("{ITEMS} items counted exactly through {repartition} (log starts after purges {starts:?}); restored {restored:?}");
}

/// The item of click `i`: uneven counts per window (item-0 the most), from every user.
fn item_of(i: u32) -> String {
    format!("item-{}", (i % 7) * (i % 3))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_items_per_event_window_cross_a_repartition_with_their_watermark_and_equal_a_single_process() {
    let why = "repartitioning in scale-out mode needs transactions' group checks and aborted-record filtering (docs/brokers.md)";
    let Some(ScaleJob { broker, client, input, output, group, producer }) =
        common::scale_job(why, "top-items", PARTITIONS).await
    else {
        return;
    };
    let lateness = Duration::from_millis(500);
    let late_counts = Mutex::new(Vec::new());
    // The clickstream job: clicks keyed by user, counted per item and 1 s event-time window
    // (through a repartition, with the source partitions' watermarks), the top 3 items of each.
    let start = |dir: &Path| {
        let ssc = context(&broker.addr, dir, &input, &group);
        let watermark = Watermark::new(lateness);
        late_counts.lock().unwrap().push(watermark.late_records());
        ssc.kafka_stream()
            .map(|record| record.value_str().unwrap_or_default().parse::<u32>().unwrap_or_default())
            .with_watermark(watermark, |click| EPOCH_MS + i64::from(*click))
            .map(|timed| timed.map(|click| (item_of(click), 1u64)))
            .repartition("by-item")
            .reduce_by_key_and_event_window(Duration::from_secs(1), Duration::from_secs(1), |a, b| a + b)
            .top_k_per_window(3, |a: &(String, u64), b: &(String, u64)| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)))
            .to_sink(KafkaSink::json(ClientConfig::new([broker.addr.as_str()]), &output, "top-items"));
        run(ssc)
    };
    let internal = [format!("{group}-by-item-repartition"), format!("{group}-top-k-0-repartition")];
    let restored = come_and_go_through(&client, &producer, (&input, &group), &internal, start).await;
    assert!(restored.iter().any(|(_, tasks, records)| *tasks > 0 && *records > 0), "{restored:?}");

    // A single process's top items: per window every partition's watermark passed, the 3
    // items with the most clicks (ties to the lesser name).
    let clicks = 12_000u32;
    let closed_until = EPOCH_MS + i64::from(clicks - PARTITIONS as u32) - lateness.as_millis() as i64;
    let mut counts: BTreeMap<i64, BTreeMap<String, u64>> = BTreeMap::new();
    for i in 0..clicks {
        let time = EPOCH_MS + i64::from(i);
        let start = time - time.rem_euclid(1_000);
        if start + 1_000 <= closed_until {
            *counts.entry(start).or_default().entry(item_of(i)).or_default() += 1;
        }
    }
    let expected: BTreeMap<i64, Vec<(String, u64)>> = counts
        .into_iter()
        .map(|(start, items)| {
            let mut items: Vec<(String, u64)> = items.into_iter().collect();
            items.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            items.truncate(3);
            (start, items)
        })
        .collect();
    let mut given: BTreeMap<i64, Vec<(String, u64)>> = BTreeMap::new();
    for row in java::consume_values(&broker.addr, &output, true) {
        let window: Windowed<(String, u64)> = serde_json::from_str(&row).unwrap();
        given.entry(window.start_ms).or_default().push(window.item);
    }
    let wrong: Vec<_> = expected
        .iter()
        .filter(|(start, top)| given.get(*start) != Some(*top))
        .map(|(start, top)| (start, top, given.get(start)))
        .take(5)
        .collect();
    assert!(
        wrong.is_empty(),
        "windows whose top items differ from a single process's (window, expected, given): {wrong:?}"
    );
    let extra: Vec<_> = given.keys().filter(|start| !expected.contains_key(*start)).collect();
    assert!(extra.is_empty(), "windows given before every partition's watermark passed them: {extra:?}");
    let late: u64 = late_counts.lock().unwrap().iter().map(|n| n.load(std::sync::atomic::Ordering::Relaxed)).sum();
    assert_eq!(late, 0, "clicks judged late");
    eprintln!("the top 3 items of {} windows given once each, as a single process gives them", expected.len());

    // The windows' merges are spread over the tasks: the merge's changelog holds windows'
    // local tops (keys of its `Window` entries, postcard variant 1) in several partitions.
    let metadata = client.refresh_metadata(None).await.unwrap();
    let prefix = format!("{group}-top_k_per_window-");
    let merge_changelog =
        metadata.topics.keys().find(|topic| topic.starts_with(&prefix)).expect("the merge's changelog");
    let merging: std::collections::BTreeSet<i32> = java::consume(&broker.addr, merge_changelog, true)
        .iter()
        .filter(|record| record.key.as_deref().is_some_and(|key| key.first() == Some(&1)))
        .map(|record| record.partition)
        .collect();
    eprintln!("merge tasks that gathered windows: {merging:?}");
    assert!(merging.len() > 1, "one task merged every window: {merging:?}");
}

/// A job counting the clicks of each second of event time (a click's value is its time, ms
/// after EPOCH_MS) with `watermark`, through a repartition of all clicks to one key.
fn count_clicks_per_second(
    broker: &str,
    dir: &Path,
    (input, output, group): (&str, &str, &str),
    watermark: Watermark,
) -> Process {
    let ssc = context(broker, dir, input, group);
    ssc.kafka_stream()
        .map(|record| record.value_str().unwrap_or_default().parse::<i64>().unwrap_or_default())
        .with_watermark(watermark, |time| EPOCH_MS + *time)
        .map(|timed| timed.map(|_| ("clicks".to_owned(), 1u64)))
        .repartition_combined("all", Duration::from_secs(1), |a, b| a + b)
        .reduce_by_key_and_event_window(Duration::from_secs(1), Duration::from_secs(1), |a, b| a + b)
        .to_sink(KafkaSink::json(ClientConfig::new([broker]), output, "clicks-per-second"));
    run(ssc)
}

/// Sends a click at `time` (ms after EPOCH_MS) to `partition` and waits for it to be written.
async fn click_at(producer: &Producer, input: &str, partition: i32, time: i64) {
    let record = ProducerRecord { partition: Some(partition), ..ProducerRecord::new(input, time.to_string()) };
    producer.send(record).await.unwrap().await.unwrap();
}

/// The windows `count_clicks_per_second` gave (read_committed): start after EPOCH_MS, clicks.
fn clicks_per_window(broker: &str, output: &str) -> BTreeMap<i64, u64> {
    java::consume_values(broker, output, true)
        .iter()
        .map(|row| {
            let window: Windowed<(String, u64)> = serde_json::from_str(row).unwrap();
            (window.start_ms - EPOCH_MS, window.item.1)
        })
        .collect()
}

/// A click behind its own partition's watermark but not behind every partition's is not late
/// in one process, and so not in scale-out mode either: before a repartition the watermark does
/// not judge items by their own partition alone (the repartition's side judges them by all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_click_late_for_its_partition_but_not_for_the_job_is_counted_as_one_process_counts_it() {
    let why = "repartitioning in scale-out mode needs transactions' group checks and aborted-record filtering (docs/brokers.md)";
    let Some(ScaleJob { broker, client, input, output, group, producer }) =
        common::scale_job(why, "late-for-partition", 2).await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let watermark = Watermark::new(Duration::from_millis(500));
    let late = watermark.late_records();
    let job = count_clicks_per_second(&broker.addr, dir.path(), (&input, &output, &group), watermark);
    // Event times (ms after EPOCH_MS) by partition, each step in a batch of its own: partition 0
    // goes to 10 s while partition 1 is at 5 s, then 0 gets a click at 8.2 s (behind its own
    // 9.5 s watermark, ahead of the job's 4.5 s), then both go to 20 s.
    let send = |partition: i32, time: i64| click_at(&producer, &input, partition, time);
    for (partition, time) in [(0, 10_000), (1, 5_000), (0, 8_200), (0, 20_000), (1, 20_000)] {
        send(partition, time).await;
        tokio::time::sleep(Duration::from_millis(1_500)).await;
    }
    let repartition = format!("{group}-all-repartition");
    for topic in [&input, &repartition] {
        common::wait_for_group_at_end(&client, &group, topic, 2, Duration::from_secs(60), || {}).await;
    }
    job.stop.cancel();
    job.run.await.unwrap().unwrap();
    let windows = clicks_per_window(&broker.addr, &output);
    let expected = BTreeMap::from([(5_000, 1), (8_000, 1), (10_000, 1)]);
    assert_eq!(windows, expected, "windows (start after EPOCH_MS, clicks)");
    assert_eq!(late.load(std::sync::atomic::Ordering::Relaxed), 0, "clicks judged late");
}

/// With `Watermark::idle_after`, a source partition without records (one that had some, and
/// one that never had any) does not hold back the watermark after the repartition: its owner
/// reports it idle in the markers, and the windows close as in one process. A partition back
/// from idleness behind that watermark sends a late click (counted, not in a window), and the
/// watermark does not go back for it (another partition's click behind it is late too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_partitions_do_not_hold_the_watermark_after_a_repartition_back() {
    let why = "repartitioning in scale-out mode needs transactions' group checks and aborted-record filtering (docs/brokers.md)";
    let Some(ScaleJob { broker, client, input, output, group, producer }) =
        common::scale_job(why, "idle-partitions", 4).await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let watermark = Watermark::new(Duration::from_millis(500)).idle_after(Duration::from_secs(2));
    let late = watermark.late_records();
    let job = count_clicks_per_second(&broker.addr, dir.path(), (&input, &output, &group), watermark);
    let send = |partition: i32, time: i64| click_at(&producer, &input, partition, time);
    let repartition = format!("{group}-all-repartition");
    let caught_up = || async {
        for topic in [&input, &repartition] {
            common::wait_for_group_at_end(&client, &group, topic, 4, Duration::from_secs(60), || {}).await;
        }
    };
    // Event times (ms after EPOCH_MS). Partition 3 never gets a click; 2 gets one at 1 s and
    // then none while 0 and 1 go to 10 s.
    send(2, 1_000).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    for time in [2_000, 5_000, 10_000] {
        send(0, time).await;
        send(1, time).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    caught_up().await;
    // Behind the job's watermark (9.5 s): late. Partition 2 is busy again, its own watermark
    // at 2.5 s, and 0 and 1 are idle: were the job's watermark to go back, 0's click at 4 s
    // would count.
    send(2, 3_000).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    send(0, 4_000).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    // Then all three go on.
    for partition in 0..3 {
        send(partition, 12_000).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    send(0, 20_000).await;
    send(1, 20_000).await;
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    caught_up().await;
    job.stop.cancel();
    job.run.await.unwrap().unwrap();
    let windows = clicks_per_window(&broker.addr, &output);
    let expected = BTreeMap::from([(1_000, 1), (2_000, 2), (5_000, 2), (10_000, 2), (12_000, 3)]);
    assert_eq!(windows, expected, "windows (start after EPOCH_MS, clicks): those before 19.5 s given, once");
    assert_eq!(late.load(std::sync::atomic::Ordering::Relaxed), 2, "the clicks at 3 s and 4 s judged late");
}

/// A scale-out job's problems, found before it connects: each operator's state must be kept per
/// source partition, and each key's records must come with their partition.
#[tokio::test]
async fn state_that_cannot_move_with_its_partitions_is_refused_before_the_job_starts() {
    let refused = |topics: &[&str], build: &dyn Fn(&StreamingContext)| {
        let dir = tempfile::tempdir().unwrap();
        let mut config =
            StreamConfig::new(["127.0.0.1:1"], topics.iter().copied(), Duration::from_millis(200), dir.path());
        config.scheduler.scale = Some(ScaleConfig::new("refused"));
        let ssc = StreamingContext::new(config);
        build(&ssc);
        async move {
            match ssc.run(|_| {}).await {
                Err(StreamError::Invalid(problems)) => problems.join("; "),
                other => panic!("not refused: {other:?}"),
            }
        }
    };
    let user = |record: sluice_stream::KafkaRecord| (record.key_str().unwrap_or_default().to_owned(), 1u64);
    let totals = |clicks: Vec<u64>, total: Option<u64>| Some(total.unwrap_or(0) + clicks.iter().sum::<u64>());

    let window = refused(&["clicks"], &|ssc| {
        ssc.kafka_stream()
            .map(user)
            .window(Duration::from_secs(1), Duration::from_secs(1))
            .foreach_batch(|_, _| Ok(()));
    })
    .await;
    assert!(window.contains("cannot yet: window"), "{window}");

    let regrouped = refused(&["clicks"], &|ssc| {
        ssc.kafka_stream()
            .map(user)
            .reduce_by_key(|a, b| a + b)
            .update_state_by_key(totals)
            .foreach_batch(|_, _| Ok(()));
    })
    .await;
    assert!(regrouped.contains("only element-wise operators"), "{regrouped}");

    let unwatermarked = refused(&["clicks"], &|ssc| {
        ssc.kafka_stream()
            .map(move |record| Timed { time_ms: record.timestamp, late: false, item: user(record) })
            .repartition("by-user")
            .reduce_by_key_and_event_window(Duration::from_secs(1), Duration::from_secs(1), |a, b| a + b)
            .foreach_batch(|_, _| Ok(()));
    })
    .await;
    assert!(
        unwatermarked.contains("on a stream without a watermark: apply with_watermark before it"),
        "{unwatermarked}"
    );

    let repartitioned = |ssc: &StreamingContext, name: &str| {
        ssc.kafka_stream().map(user).repartition(name).update_state_by_key(totals).foreach_batch(|_, _| Ok(()));
    };
    let twice = refused(&["clicks"], &|ssc| {
        repartitioned(ssc, "by-user");
        repartitioned(ssc, "by-user");
    })
    .await;
    assert!(twice.contains("two repartitions named \"by-user\""), "{twice}");
    let bad_name = refused(&["clicks"], &|ssc| repartitioned(ssc, "by user")).await;
    assert!(bad_name.contains("must be at most 249 letters, digits"), "{bad_name}");
}

/// What a run's last batch repartitions is read in the batches after it: a trigger that ends
/// the run after a batch (Once, AvailableNow) is refused with a repartition.
#[tokio::test]
async fn a_repartition_with_a_trigger_that_ends_the_run_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StreamConfig::new(["127.0.0.1:1"], ["clicks"], Duration::from_millis(200), dir.path());
    config.scheduler.scale = Some(ScaleConfig::new("refused"));
    config.scheduler.trigger = sluice_scheduler::Trigger::AvailableNow;
    let ssc = StreamingContext::new(config);
    ssc.kafka_stream()
        .map(|record| (record.key_str().unwrap_or_default().to_owned(), 1u64))
        .repartition("by-user")
        .reduce_by_key(|a, b| a + b)
        .foreach_batch(|_, _| Ok(()));
    match ssc.run(|_| {}).await {
        Err(StreamError::Invalid(problems)) => {
            assert!(problems.join("; ").contains("needs a processing-time trigger"), "{problems:?}");
        }
        other => panic!("not refused: {other:?}"),
    }
}

/// Two co-partitioned source topics, clicks and views, both keyed by user on the user's
/// partition: a task is a partition number, so partition `p` of both goes to one process, which
/// keeps the state of the users of both (Kafka Streams' co-partitioned sources). While both
/// receive events, a and b start, c joins, b crashes (dropped mid-run) and comes back on its
/// checkpoint. Every user's running counts over clicks and views together are 1, 2, 3, ...
/// with none lost and none twice: had the group assigned the two topics' partitions on their
/// own, two processes would each have counted part of a user's events. A views topic of
/// another partition count is refused, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn co_partitioned_sources_share_their_tasks_and_state() {
    let Some(ScaleJob { broker, client, input, output, group, producer }) =
        common::scale_job(STATE_NEEDS, "copart", PARTITIONS).await
    else {
        return;
    };
    let views = format!("{input}-views");
    client.create_topic(&views, PARTITIONS, 1).await.unwrap();
    let totals = Totals::default();
    let start = |dir: &Path| {
        let mut config = scale_config(&broker.addr, dir, &input, &group);
        config.scheduler.topics = vec![input.clone(), views.clone()];
        running_counts(StreamingContext::new(config), &broker.addr, &output, &totals)
    };
    let both = |clicks: std::ops::Range<u32>| {
        let (producer, input, views) = (&producer, &input, &views);
        async move {
            click(producer, input, clicks.clone()).await;
            click(producer, views, clicks).await;
        }
    };
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let started = Instant::now();
    let step = |what: &str| eprintln!("[{:5.1} s] {what}", started.elapsed().as_secs_f64());

    both(0..1_200).await;
    let a = start(dirs[0].path());
    let b = start(dirs[1].path());
    step("a and b started");
    both(1_200..2_400).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let c = start(dirs[2].path());
    step("c joined");
    both(2_400..3_600).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    b.run.abort();
    let _ = b.run.await;
    step("b crashed");
    both(3_600..4_800).await;
    let b = start(dirs[1].path());
    step("b restarted");
    both(4_800..6_000).await;
    for topic in [&input, &views] {
        common::wait_for_group_at_end(&client, &group, topic, PARTITIONS, Duration::from_secs(120), || {}).await;
    }
    step("caught up on both topics");
    let mut restored = Vec::new();
    for (name, process) in [("a", a), ("b again", b), ("c", c)] {
        process.stop.cancel();
        process.run.await.unwrap().unwrap();
        restored.push((name, read(&process.restored.tasks), read(&process.restored.records)));
    }
    eprintln!("restored (process, tasks, changelog records): {restored:?}");
    // c took tasks over that a and b had built.
    assert!(restored.iter().any(|(name, tasks, records)| *name == "c" && *tasks > 0 && *records > 0), "{restored:?}");
    // Every user's clicks and views (6,000 of each), each counted once, in order.
    check_counts_and_totals(&broker.addr, &output, &totals, 12_000);
    step("every user's running counts over both topics are 1, 2, 3, ...");

    // Topics that are not co-partitioned: refused as the process joins.
    let (other_group, fewer) = (unique("copart-job"), unique("copart-views"));
    client.create_topic(&fewer, PARTITIONS - 2, 1).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = scale_config(&broker.addr, dir.path(), &input, &other_group);
    config.scheduler.topics = vec![input.clone(), fewer.clone()];
    let refused = running_counts(StreamingContext::new(config), &broker.addr, &output, &Totals::default());
    let error = tokio::time::timeout(Duration::from_secs(60), refused.run).await.unwrap().unwrap().unwrap_err();
    let error = format!("{error:#}");
    let counts = format!("{input}: {PARTITIONS}, {fewer}: {}", PARTITIONS - 2);
    assert!(error.contains("must have as many partitions") && error.contains(&counts), "{error}");
}

/// State in a changelog with no offsets in the group for its partition (they expired, or were
/// reset) was built from records the partition would be read from again: the job refuses to
/// count them twice and says what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_without_the_groups_offsets_is_refused() {
    let broker = common::shared();
    if broker.kind == Kind::Tansu {
        eprintln!(
            "SKIPPED on Tansu: keyed state in scale-out mode needs the consumer group protocol (docs/brokers.md)"
        );
        return;
    }
    let client = Client::connect(ClientConfig::new([broker.addr.as_str()])).await.unwrap();
    let (input, output, group) = (unique("stale-in"), unique("stale-out"), unique("stale-job"));
    client.create_topic(&input, 2, 1).await.unwrap();
    client.create_topic(&output, 1, 1).await.unwrap();
    // The changelog of the job's first stateful operator holds a count for user-1 in partition
    // 1, as a run whose offsets are gone left it.
    let changelog = format!("{group}-map_with_state-0-changelog");
    client.create_topic_with_configs(&changelog, 2, 1, &[("cleanup.policy", "compact")]).await.unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig::default()).await.unwrap();
    let key = sluice_checkpoint::encode_value(&"user-1".to_owned()).unwrap();
    let value = sluice_checkpoint::encode_value(&(7u64, 0u64)).unwrap();
    let record = ProducerRecord { partition: Some(1), ..ProducerRecord::new(&changelog, value).key(key) };
    producer.send(record).await.unwrap().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let process = start(&broker.addr, dir.path(), (&input, &output, &group), &Totals::default());
    let error = tokio::time::timeout(Duration::from_secs(60), process.run).await.unwrap().unwrap().unwrap_err();
    let error = format!("{error:#}");
    assert!(error.contains("holds no offset") && error.contains("Delete the job's changelog topics"), "{error}");
}

/// Processes of one job coming and going while 12,000 clicks arrive: a and b start, c joins, b
/// crashes (dropped mid-run, its transaction left to the broker), a stops (it commits its
/// batch and leaves), and b comes back on its checkpoint (same transactional id, state from the
/// changelogs). Returns once the group's offsets reach the end of the input, with the last two
/// stopped: what they restored (process, tasks, changelog records).
async fn come_and_go(
    client: &Client,
    producer: &Producer,
    (input, group): (&str, &str),
    start: impl Fn(&Path) -> Process,
) -> Vec<(&'static str, u64, u64)> {
    come_and_go_through(client, producer, (input, group), &[], start).await
}

/// [`come_and_go`] for a job with repartition topics: caught up once the group's offsets reach
/// the end of the input, then of each of `internal` (what the input's last batches wrote there).
async fn come_and_go_through(
    client: &Client,
    producer: &Producer,
    (input, group): (&str, &str),
    internal: &[String],
    start: impl Fn(&Path) -> Process,
) -> Vec<(&'static str, u64, u64)> {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let started = Instant::now();
    let step = |what: &str| eprintln!("[{:5.1} s] {what}", started.elapsed().as_secs_f64());

    click(producer, input, 0..2_000).await;
    let a = start(dirs[0].path());
    let b = start(dirs[1].path());
    step("a and b started");
    click(producer, input, 2_000..4_000).await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let c = start(dirs[2].path());
    step("c joined");
    click(producer, input, 4_000..6_000).await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // b crashes: dropped mid-run, its transaction (if one is open) left to the broker.
    b.run.abort();
    let _ = b.run.await;
    step("b crashed");
    click(producer, input, 6_000..8_000).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // a stops: it finishes its batch, commits, and leaves the group; its partitions move.
    a.stop.cancel();
    a.run.await.unwrap().unwrap();
    step("a stopped");
    click(producer, input, 8_000..10_000).await;

    // b comes back on its checkpoint: same transactional id, state from the changelogs.
    let b = start(dirs[1].path());
    step("b restarted");
    click(producer, input, 10_000..12_000).await;

    common::wait_for_group_at_end(client, group, input, PARTITIONS, Duration::from_secs(120), || {}).await;
    for topic in internal {
        common::wait_for_group_at_end(client, group, topic, PARTITIONS, Duration::from_secs(60), || {}).await;
    }
    step("caught up");
    let mut restored = Vec::new();
    for (name, process) in [("b again", b), ("c", c)] {
        process.stop.cancel();
        process.run.await.unwrap().unwrap();
        restored.push((name, read(&process.restored.tasks), read(&process.restored.records)));
    }
    eprintln!("restored (process, tasks, changelog records): {restored:?}");
    restored
}

/// A source topic that gains partitions while a job with state runs: the process given the new
/// partition refuses it at once, saying why (its changelogs have no such partition, and the
/// keys' tasks would move), instead of retrying a restore that cannot succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_topic_that_gains_partitions_under_state_is_refused_saying_why() {
    let Some(ScaleJob { broker, client, input, output, group, producer }) =
        common::scale_job(STATE_NEEDS, "grown", 2).await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let process = start(&broker.addr, dir.path(), (&input, &output, &group), &Totals::default());
    let error = grow_under(process, (&client, &producer), (&input, &group)).await;
    assert!(
        error.contains(&format!("the source topic {input} gained partitions")) && error.contains("its partition 2"),
        "{error}"
    );

    // A job with a repartition topic: the new source partition has no repartition partition to
    // go with it.
    let (input, group) = (unique("grown-repartition-in"), unique("grown-repartition-job"));
    client.create_topic(&input, 2, 1).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ssc = context(&broker.addr, dir.path(), &input, &group);
    ssc.kafka_stream()
        .map(|record| (record.value_str().unwrap_or_default().to_owned(), 1u64))
        .repartition("by-value")
        .map_with_state(None, count_up)
        .to_sink(KafkaSink::json(ClientConfig::new([broker.addr.as_str()]), &output, "grown-counts"));
    let error = grow_under(run(ssc), (&client, &producer), (&input, &group)).await;
    let repartition = format!("{group}-by-value-repartition has 2 partitions");
    assert!(error.contains(&format!("partition 2 of {input} was given")) && error.contains(&repartition), "{error}");
}

/// Gives `process`'s job (on `input`, two partitions) a click and waits until its group has
/// consumed it, then grows `input` to three partitions: the error the run ends with.
async fn grow_under(
    process: Process,
    (client, producer): (&Client, &Producer),
    (input, group): (&str, &str),
) -> String {
    let click = ProducerRecord { partition: Some(1), ..ProducerRecord::new(input, "1").key("user-a".to_owned()) };
    producer.send(click).await.unwrap().await.unwrap();
    common::wait_for_group_at_end(client, group, input, 2, Duration::from_secs(60), || {}).await;
    client.create_partitions(input, 3).await.unwrap();
    let error = tokio::time::timeout(Duration::from_secs(90), process.run).await.unwrap().unwrap().unwrap_err();
    format!("{error:#}")
}
