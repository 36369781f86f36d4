//! `sluice run` with `[scale]` on a three-node Apache Kafka cluster: one stateless job (raw
//! records copied to a Kafka topic) run by several processes sharing its 12 partitions through
//! a consumer group, each batch one Kafka transaction. While a producer keeps writing, three
//! processes start, one is killed with SIGKILL, a fourth starts, two stop with SIGTERM, and the
//! killed one comes back on its checkpoint: the read_committed output holds every input record
//! exactly once.
//!
//! A per-batch aggregate with `[scale]` (clicks keyed by user counted per item, through the
//! job's repartition topic) run by two processes, one killed and started again: every click is
//! in exactly one batch's count of its item.
//!
//! Each step waits for what it needs (a process's first committed batch, the next slice of
//! input) rather than for a fixed time, so that a slow machine changes how long the test takes,
//! not what it shows.

#![allow(clippy::unwrap_used)]

use sluice_testkit as common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{java, unique, ScaleJob};
use sluice_client::{Producer, ProducerConfig, ProducerRecord};

const PARTITIONS: i32 = 12;

/// Held by each test on a three-node cluster of its own, so that this binary's tests do not run
/// two clusters (six brokers and their processes) side by side on a small machine.
static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// Records per slice of the input.
const SLICE: u32 = 1_000;

/// A `[scale]` job file named `name` reading `input` from `brokers` (a TOML list's items) into
/// the Kafka topic `output`, with `sections` (format, aggregate) between its source and its
/// checkpoint.
fn job_file(
    name: &str,
    brokers: &str,
    (input, output, group): (&str, &str, &str),
    sections: &str,
    checkpoint: &Path,
) -> String {
    format!(
        r#"name = "{name}"

[source]
brokers = [{brokers}]
topics = ["{input}"]
start = "earliest"
batch_interval = "200ms"
{sections}
[checkpoint]
dir = "{checkpoint}"

[scale]
group = "{group}"

[[sink]]
type = "kafka"
topic = "{output}"
"#,
        checkpoint = checkpoint.display(),
    )
}

/// One `sluice run` process on a checkpoint of its own.
struct Process {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Process {
    fn start(name: &'static str, dir: &Path, job: &str) -> Self {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, job).unwrap();
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("run")
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self { name, child, log }
    }

    fn signal(&self, signal: &str) {
        assert!(Command::new("kill").args([signal, &self.child.id().to_string()]).status().unwrap().success());
    }

    /// SIGTERM, and a clean exit (the batch under way committed, the group left).
    fn stop(mut self) {
        self.signal("-TERM");
        let status = self.child.wait().unwrap();
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        assert!(status.success(), "{} after SIGTERM: {status}\n{log}", self.name);
    }

    fn kill(mut self) -> PathBuf {
        self.signal("-KILL");
        let _ = self.child.wait();
        self.log
    }

    /// Rows of the batches it reported committed (its progress lines).
    fn rows(&self) -> u64 {
        rows_in(&self.log)
    }

    /// Waits until it has committed a batch with rows (up to 90 s), failing if it ends.
    async fn wait_for_rows(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while self.rows() == 0 {
            self.check_running();
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                panic!("{} committed no rows in 90 s:\n{log}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn check_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            panic!("{} ended early ({status}):\n{log}", self.name);
        }
    }
}

/// The rows of the progress lines (`batch N: R rows, ...`) in a process's log.
fn rows_in(log: &Path) -> u64 {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|line| line.split_once("batch ")?.1.split_once(": ")?.1.split_once(" rows")?.0.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_killed_started_and_stopped_copy_every_record_exactly_once() {
    let _cluster = ONE_CLUSTER_AT_A_TIME.lock().await;
    let Some((cluster, client)) = common::cluster::start_or_skip().await else { return };
    let bootstrap = cluster.bootstrap.iter().map(|b| format!("{b:?}")).collect::<Vec<_>>().join(", ");
    let (input, output, group) = (unique("scale-in"), unique("scale-out"), unique("scale-job"));
    client.create_topic(&input, PARTITIONS, 3).await.unwrap();
    client.create_topic(&output, 1, 3).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let job = |name: &str| job_file("copy", &bootstrap, (&input, &output, &group), "", &dir.path().join(name));
    let started = Instant::now();
    let step = |what: &str| eprintln!("[{:5.1} s] {what}", started.elapsed().as_secs_f64());

    // The producer writes all along, in slices of 1,000 records, while processes come and go:
    // until one, two and three have each committed a batch, on while four and two's new
    // incarnation join and one and three stop, and ten slices more after that (so that four and
    // two again have work of their own however fast the others were). It returns how many
    // records it wrote.
    let (phase, phases) = tokio::sync::watch::channel(0u32);
    let writer = {
        let (client, input, phases) = (client.clone(), input.clone(), phases.clone());
        tokio::spawn(async move {
            let producer = Producer::new(client, ProducerConfig::default()).await.unwrap();
            let mut last_slices = 10;
            let mut slice = 0u32;
            while last_slices > 0 {
                if *phases.borrow() >= 2 {
                    last_slices -= 1;
                }
                let mut deliveries = Vec::new();
                for value in slice * SLICE..(slice + 1) * SLICE {
                    let partition = (value % PARTITIONS as u32) as i32;
                    let record =
                        ProducerRecord { partition: Some(partition), ..ProducerRecord::new(&input, value.to_string()) };
                    deliveries.push(producer.send(record).await.unwrap());
                }
                for delivery in deliveries {
                    delivery.await.unwrap();
                }
                slice += 1;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            slice * SLICE
        })
    };
    drop(phases);

    let mut one = Process::start("one", dir.path(), &job("one"));
    let mut two = Process::start("two", dir.path(), &job("two"));
    let mut three = Process::start("three", dir.path(), &job("three"));
    step("three processes started");
    for process in [&mut one, &mut two, &mut three] {
        process.wait_for_rows().await;
    }
    step("each of them has committed a batch");
    let two_log = two.kill();
    step("two killed (SIGKILL)");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut four = Process::start("four", dir.path(), &job("four"));
    step("four started");
    // Two comes back on its checkpoint: its transactional id fences what it left open, and its
    // open intent is closed, not re-run.
    let mut two_again = Process::start("two-again", dir.path(), &job("two"));
    step("two restarted on its checkpoint");
    phase.send_replace(1);
    tokio::time::sleep(Duration::from_secs(3)).await;
    one.check_running();
    three.check_running();
    let (one_rows, three_rows) = (one.rows(), three.rows());
    one.stop();
    three.stop();
    step("one and three stopped (SIGTERM)");
    phase.send_replace(2);
    let records = writer.await.unwrap();
    step(&format!("all {records} records written"));

    // Four and two work through the rest, the dead incarnation's partitions included once its
    // session has run out.
    let ends = common::wait_for_group_at_end(&client, &group, &input, PARTITIONS, Duration::from_secs(120), || {
        four.check_running();
        two_again.check_running();
    })
    .await;
    assert_eq!(ends.values().sum::<i64>(), i64::from(records));
    step("the group's offsets reached the end of the input");
    let (four_rows, two_again_rows) = (four.rows(), two_again.rows());
    four.stop();
    two_again.stop();
    let rows = [
        ("one", one_rows),
        ("two", rows_in(&two_log)),
        ("three", three_rows),
        ("four", four_rows),
        ("two again", two_again_rows),
    ];
    eprintln!("rows in committed batches, by process: {rows:?}");
    for (name, read) in rows {
        assert!(read > 0, "{name} processed nothing: was the work shared? {rows:?}");
    }

    let mut values: Vec<u32> = java::consume_values(&cluster.addr, &output, true)
        .iter()
        .map(|row| {
            let row: serde_json::Value = serde_json::from_str(row).unwrap();
            row["value"].as_str().unwrap().parse().unwrap()
        })
        .collect();
    values.sort_unstable();
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    for value in &values {
        *counts.entry(*value).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(10).collect();
    let missing: Vec<u32> = (0..records).filter(|v| !counts.contains_key(v)).take(10).collect();
    assert!(
        twice.is_empty() && missing.is_empty() && values.len() == records as usize,
        "{} rows read; twice (first 10): {twice:?}; missing (first 10): {missing:?}",
        values.len()
    );
    step("every record exactly once in the read_committed output");
}

/// Partitions of the aggregate test's input; clicks of `USERS` users on `ITEMS` items.
const AGG_PARTITIONS: i32 = 6;
const USERS: u32 = 60;
const ITEMS: u32 = 25;

/// Counts per item of CSV clicks `user,item`, per batch.
const PER_ITEM: &str = r#"
[format]
type = "csv"
columns = ["user", "item"]

[aggregate]
key = "item"
function = "count"
as = "clicks"
"#;

/// Clicks `from..to` (slices of a multiple of `ITEMS`) as CSV rows `user,item`, keyed by user
/// and on the user's partition: click `i` is user `i % USERS`'s, on item `i % ITEMS`.
async fn click(producer: &Producer, input: &str, clicks: std::ops::Range<u32>) {
    let mut deliveries = Vec::new();
    for i in clicks {
        let (user, item) = (i % USERS, i % ITEMS);
        let record = ProducerRecord {
            partition: Some((user % AGG_PARTITIONS as u32) as i32),
            ..ProducerRecord::new(input, format!("user-{user},item-{item}")).key(format!("user-{user}"))
        };
        deliveries.push(producer.send(record).await.unwrap());
    }
    for delivery in deliveries {
        delivery.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_batch_aggregate_goes_through_its_repartition_topic_and_counts_every_click_once() {
    let why = "scale-out needs transactions' group checks and aborted-record filtering (docs/brokers.md)";
    let Some(ScaleJob { broker, client, input, output, group, producer }) =
        common::scale_job(why, "per-item", AGG_PARTITIONS).await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let brokers = format!("{:?}", broker.addr);
    let job =
        |name: &str| job_file("clicks-per-item", &brokers, (&input, &output, &group), PER_ITEM, &dir.path().join(name));
    let started = Instant::now();
    let step = |what: &str| eprintln!("[{:5.1} s] {what}", started.elapsed().as_secs_f64());

    // Clicks come all along, 500 every 300 ms, until told to stop: then 5 slices more. The
    // writer returns how many it wrote.
    let (stop_writing, stopped) = tokio::sync::watch::channel(false);
    let writer = {
        let input = input.clone();
        tokio::spawn(async move {
            let (mut slice, mut last_slices) = (0u32, 5);
            while last_slices > 0 {
                if *stopped.borrow() {
                    last_slices -= 1;
                }
                click(&producer, &input, slice * 500..(slice + 1) * 500).await;
                slice += 1;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            slice * 500
        })
    };
    let mut one = Process::start("one", dir.path(), &job("one"));
    let mut two = Process::start("two", dir.path(), &job("two"));
    for process in [&mut one, &mut two] {
        process.wait_for_rows().await;
    }
    step("one and two have each committed a batch with rows");
    one.kill();
    step("one killed (SIGKILL)");
    tokio::time::sleep(Duration::from_secs(2)).await;
    // One comes back on its checkpoint: its transactional id fences what it left open.
    let mut one_again = Process::start("one-again", dir.path(), &job("one"));
    one_again.wait_for_rows().await;
    step("one restarted and has committed a batch with rows");
    stop_writing.send_replace(true);
    let clicks_written = writer.await.unwrap();
    step(&format!("{clicks_written} clicks written"));

    let repartition = format!("{group}-aggregate-repartition");
    for topic in [&input, &repartition] {
        common::wait_for_group_at_end(&client, &group, topic, AGG_PARTITIONS, Duration::from_secs(120), || {
            one_again.check_running();
            two.check_running();
        })
        .await;
    }
    step("the group's offsets reached the end of the input, then of the repartition topic");
    one_again.stop();
    two.stop();
    // Each checkpoint says which tasks its process owned: partitions of the input, with the
    // same partitions of the repartition topic.
    for name in ["one", "two"] {
        let inspect = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["checkpoint", "inspect", "--json"])
            .arg(dir.path().join(name))
            .output()
            .unwrap();
        let document: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
        let owned = &document["partitions"];
        assert!(owned[&input].as_array().is_some_and(|p| !p.is_empty()), "{name}: {document}");
        assert_eq!(owned[&input], owned[&repartition], "{name}: {document}");
    }

    // Each click is in one batch's row of its item: the rows of an item sum to its clicks.
    let mut clicks: BTreeMap<String, u64> = BTreeMap::new();
    let mut rows = 0;
    for row in java::consume_values(&broker.addr, &output, true) {
        let row: serde_json::Value = serde_json::from_str(&row).unwrap();
        *clicks.entry(row["item"].as_str().unwrap().to_owned()).or_default() += row["clicks"].as_u64().unwrap();
        rows += 1;
    }
    let expected: BTreeMap<String, u64> =
        (0..ITEMS).map(|item| (format!("item-{item}"), u64::from(clicks_written / ITEMS))).collect();
    assert_eq!(clicks, expected, "clicks per item over {rows} rows");
    step(&format!("{rows} rows; every item's counts sum to its clicks"));
}

/// The clickstream test's input: `CLICKS` clicks of `CLICK_USERS` users, keyed by user, each
/// `CLICK_STEP_MS` of event time after the one before.
const CLICKS: u32 = 1_000_000;
const CLICK_USERS: u32 = 1_000;
const CLICK_STEP_MS: i64 = 3;
const CLICK_EPOCH_MS: i64 = 1_800_000_000_000;
/// Clicks per slice the writer sends.
const CLICK_SLICE: u32 = 10_000;

/// The clickstream job's sections: clicks `user,item,time` counted per item over 20 s
/// event-time windows sliding every 10 s (5 s allowed lateness), the top 5 items of each.
const TOP_ITEMS: &str = r#"
[format]
type = "csv"
columns = ["user", "item", "time"]

[aggregate]
key = "item"
function = "count"
as = "clicks"

[window]
time = "event"
time_field = "time"
length = "20s"
slide = "10s"
watermark = "5s"

[top]
k = 5
"#;

/// Click `i`: its user, partition (the user's), item (item-0 the most clicked, then fewer and
/// fewer: a mixed hash of `i` squared into 100 items) and event time.
fn clickstream_click(i: u32) -> (u32, i32, String, i64) {
    let user = i % CLICK_USERS;
    let hash = u64::from(i).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) % 1_000;
    let item = hash * hash / 10_000;
    (user, (user % PARTITIONS as u32) as i32, format!("item-{item}"), CLICK_EPOCH_MS + i64::from(i) * CLICK_STEP_MS)
}

/// What a single process gives for clicks `0..CLICKS`: for each window every partition's
/// watermark passed, its top 5 items (most clicks first, ties to the lesser name), as
/// (window start, rank, item, clicks).
fn clickstream_expected() -> Vec<(i64, u64, String, u64)> {
    let (length, slide, lateness) = (20_000i64, 10_000i64, 5_000i64);
    let mut latest = [i64::MIN; PARTITIONS as usize];
    let mut counts: BTreeMap<i64, BTreeMap<String, u64>> = BTreeMap::new();
    for i in 0..CLICKS {
        let (_, partition, item, time) = clickstream_click(i);
        latest[partition as usize] = latest[partition as usize].max(time);
        let last = time.div_euclid(slide) * slide;
        for start in (last - length + slide..=last).step_by(slide as usize) {
            *counts.entry(start).or_default().entry(item.clone()).or_default() += 1;
        }
    }
    let watermark = latest.iter().min().unwrap() - lateness;
    let mut rows = Vec::new();
    for (start, items) in counts.into_iter().filter(|(start, _)| start + length <= watermark) {
        let mut items: Vec<(String, u64)> = items.into_iter().collect();
        items.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        rows.extend(items.into_iter().take(5).zip(1..).map(|((item, clicks), rank)| (start, rank, item, clicks)));
    }
    rows
}

/// A window job's read_committed rows in `topic`, as (window start, rank, item, clicks), sorted.
fn window_rows(broker: &str, topic: &str) -> Vec<(i64, u64, String, u64)> {
    let mut rows: Vec<_> = java::consume_values(broker, topic, true).iter().map(|row| window_row(row)).collect();
    rows.sort();
    rows
}

/// A window job's row as (window start, rank, item, clicks).
fn window_row(row: &str) -> (i64, u64, String, u64) {
    let row: serde_json::Value = serde_json::from_str(row).unwrap();
    let field = |name: &str| row[name].as_u64().unwrap_or_else(|| panic!("{name} in {row}"));
    (row["window_start"].as_i64().unwrap(), field("rank"), row["item"].as_str().unwrap().to_owned(), field("clicks"))
}

/// The rows in the JSON-lines files of `dir` as (window start, rank, item, clicks), sorted, and
/// how many temporary files are there. The files are per task (`...-task-<task>.jsonl`): each
/// window's rows are in the files of one task (its merge's), whichever processes gave them, and
/// the windows are spread over several tasks.
fn files_rows(dir: &Path) -> (Vec<(i64, u64, String, u64)>, usize) {
    let mut rows = Vec::new();
    let mut temporary = 0;
    let mut tasks_of_windows: BTreeMap<i64, std::collections::BTreeSet<String>> = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with('.') {
            temporary += 1;
            continue;
        }
        let task = name.rsplit_once("-task-").and_then(|(_, task)| task.strip_suffix(".jsonl"));
        let task = task.unwrap_or_else(|| panic!("{name} is not a task's file"));
        for row in std::fs::read_to_string(&path).unwrap().lines().map(window_row) {
            tasks_of_windows.entry(row.0).or_default().insert(task.to_owned());
            rows.push(row);
        }
    }
    let split: Vec<_> = tasks_of_windows.iter().filter(|(_, tasks)| tasks.len() > 1).take(3).collect();
    assert!(split.is_empty(), "windows with rows in the files of more than one task: {split:?}");
    let tasks: std::collections::BTreeSet<_> = tasks_of_windows.values().flatten().collect();
    assert!(tasks.len() > 1, "the windows' files are all of tasks {tasks:?}");
    rows.sort();
    (rows, temporary)
}

/// A clickstream run on a three-node cluster: its topics, its processes' directory, and the
/// writer sending the clicks in slices, 100 ms apart, telling how many it has sent.
struct Clickstream {
    cluster: common::Broker,
    client: sluice_client::Client,
    bootstrap: String,
    input: String,
    output: String,
    group: String,
    dir: tempfile::TempDir,
    started: Instant,
    writer: Option<tokio::task::JoinHandle<()>>,
    slices: tokio::sync::watch::Receiver<u32>,
    /// Last, so that the cluster is stopped before the next test may start one.
    _one_at_a_time: tokio::sync::MutexGuard<'static, ()>,
}

impl Clickstream {
    /// Starts the cluster (or skips, saying why), makes the topics and starts the writer.
    async fn start() -> Option<Self> {
        let one_at_a_time = ONE_CLUSTER_AT_A_TIME.lock().await;
        let (cluster, client) = common::cluster::start_or_skip().await?;
        let bootstrap = cluster.bootstrap.iter().map(|b| format!("{b:?}")).collect::<Vec<_>>().join(", ");
        let (input, output, group) = (unique("clicks"), unique("top-items"), unique("clickstream"));
        client.create_topic(&input, PARTITIONS, 3).await.unwrap();
        client.create_topic(&output, 1, 3).await.unwrap();
        let (sent, slices) = tokio::sync::watch::channel(0u32);
        let writer = {
            let (client, input) = (client.clone(), input.clone());
            tokio::spawn(async move {
                let producer = Producer::new(client, ProducerConfig::default()).await.unwrap();
                for slice in 0..CLICKS / CLICK_SLICE {
                    let mut deliveries = Vec::new();
                    for i in slice * CLICK_SLICE..(slice + 1) * CLICK_SLICE {
                        let (user, partition, item, time) = clickstream_click(i);
                        let record = ProducerRecord {
                            partition: Some(partition),
                            ..ProducerRecord::new(&input, format!("user-{user},{item},{time}"))
                                .key(format!("user-{user}"))
                        };
                        deliveries.push(producer.send(record).await.unwrap());
                    }
                    for delivery in deliveries {
                        delivery.await.unwrap();
                    }
                    sent.send_replace(slice + 1);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        let dir = tempfile::tempdir().unwrap();
        Some(Self {
            _one_at_a_time: one_at_a_time,
            cluster,
            client,
            bootstrap,
            input,
            output,
            group,
            dir,
            started: Instant::now(),
            writer: Some(writer),
            slices,
        })
    }

    /// The job file of the process whose checkpoint is `name`: its top items also go to files,
    /// every process's in one directory; each task's state has a standby copy on the next
    /// process, so tasks that move restore from copies or from their changelogs, depending on
    /// where they land.
    fn job(&self, name: &str) -> String {
        let sections = format!("{TOP_ITEMS}\n[[sink]]\ntype = \"files\"\ndir = \"{}\"\n", self.files().display());
        let topics = (self.input.as_str(), self.output.as_str(), self.group.as_str());
        let scale = format!("[scale]\ngroup = \"{}\"\n", self.group);
        job_file("clickstream", &self.bootstrap, topics, &sections, &self.dir.path().join(name))
            .replace(&scale, &format!("{scale}standby_replicas = 1\n"))
    }

    /// The files sink's directory.
    fn files(&self) -> PathBuf {
        self.dir.path().join("files")
    }

    fn process(&self, name: &'static str, checkpoint: &str) -> Process {
        Process::start(name, self.dir.path(), &self.job(checkpoint))
    }

    fn step(&self, what: &str) {
        eprintln!("[{:5.1} s] {what}", self.started.elapsed().as_secs_f64());
    }

    /// The offsets the job's changelogs hold, over all their partitions.
    async fn changelog_offsets(&self) -> u64 {
        let metadata = self.client.refresh_metadata(None).await.unwrap();
        let partitions: Vec<(String, i32)> = metadata
            .topics
            .iter()
            .filter(|(name, _)| name.starts_with(&self.group) && name.ends_with("-changelog"))
            .flat_map(|(name, topic)| (0..topic.partitions.len() as i32).map(move |p| (name.clone(), p)))
            .collect();
        assert!(!partitions.is_empty(), "no changelogs of {}", self.group);
        let ends = self.client.log_ends(&partitions, sluice_client::Isolation::ReadUncommitted).await.unwrap();
        u64::try_from(ends.values().sum::<i64>()).unwrap()
    }

    /// Waits until the writer has sent `count` slices.
    async fn sent_at_least(&self, count: u32) {
        self.slices.clone().wait_for(|sent| *sent >= count).await.unwrap();
    }

    /// Once every click is written: waits for the `running` processes to work through them,
    /// stops them (SIGTERM), runs a single process (no `[scale]`) over the same clicks, and
    /// checks that both published the top items the clicks give.
    async fn finish(mut self, mut running: Vec<Process>) {
        self.writer.take().unwrap().await.unwrap();
        self.step("all clicks written");
        // Caught up once the group's offsets reach the end of the input, then of the
        // repartition topic (its last items and markers), then of the top-k topic (the last
        // windows' local tops).
        let group = &self.group;
        let topics =
            [self.input.clone(), format!("{group}-aggregate-repartition"), format!("{group}-top-k-0-repartition")];
        for topic in &topics {
            common::wait_for_group_at_end(&self.client, group, topic, PARTITIONS, Duration::from_secs(300), || {
                for process in &mut running {
                    process.check_running();
                }
            })
            .await;
        }
        self.step("the group's offsets reached the end of the input, the repartition and the top-k topics");
        for process in running {
            process.stop();
        }

        // A single process on the same input, without `[scale]`, until its offsets (committed
        // to a group of its own for this) reach the end.
        let (single_group, single_output) = (unique("clickstream-single"), unique("top-items-single"));
        self.client.create_topic(&single_output, 1, 3).await.unwrap();
        let single = job_file(
            "clickstream-single",
            &self.bootstrap,
            (&self.input, &single_output, group),
            TOP_ITEMS,
            &self.dir.path().join("single"),
        )
        .replace(&format!("[scale]\ngroup = \"{group}\"\n"), "")
        .replace(
            "batch_interval = \"200ms\"",
            &format!("batch_interval = \"200ms\"\ncommit_to_group = \"{single_group}\""),
        );
        let mut single = Process::start("single", self.dir.path(), &single);
        common::wait_for_group_at_end(
            &self.client,
            &single_group,
            &self.input,
            PARTITIONS,
            Duration::from_secs(300),
            || {
                single.check_running();
            },
        )
        .await;
        single.stop();
        self.step("a single process ran through the same clicks");

        let expected = clickstream_expected();
        let single_rows = window_rows(&self.cluster.addr, &single_output);
        let scaled_rows = window_rows(&self.cluster.addr, &self.output);
        let differ = |rows: &[(i64, u64, String, u64)]| -> Vec<String> {
            let (got, want): (std::collections::BTreeSet<_>, std::collections::BTreeSet<_>) =
                (rows.iter().collect(), expected.iter().collect());
            let missing = want.difference(&got).take(5).map(|r| format!("missing {r:?}"));
            let extra = got.difference(&want).take(5).map(|r| format!("extra {r:?}"));
            missing.chain(extra).collect()
        };
        assert!(
            differ(&single_rows).is_empty() && single_rows.len() == expected.len(),
            "single process: {:?}",
            differ(&single_rows)
        );
        assert_eq!(scaled_rows.len(), expected.len(), "rows of the scale-out run: {:?}", differ(&scaled_rows));
        assert_eq!(scaled_rows, single_rows, "scale-out against the single process: {:?}", differ(&scaled_rows));
        // The files: every row once, in the files of committed batches (a file a killed process
        // left at its temporary name is renamed or removed when it runs again).
        let (file_rows, left) = files_rows(&self.files());
        assert_eq!(
            file_rows,
            single_rows,
            "the files sink's rows against the single process: {:?}",
            differ(&file_rows)
        );
        self.step(&format!("the files sink holds every row once ({left} temporary file(s) of killed processes left)"));
        self.step(&format!(
            "the top 5 items of {} windows over {CLICKS} clicks: the processes' equal the single process's",
            expected.len() / 5
        ));
        let (copies, keys, records) = restores_in(self.dir.path());
        self.step(&format!(
            "the processes restored {copies} task(s) from standby copies ({keys} keys) and read {records} changelog records"
        ));
    }
}

/// What the processes whose logs are in `dir` restored: tasks from standby copies, their keys,
/// and changelog records read (from the restores' log lines).
fn restores_in(dir: &Path) -> (u64, u64, u64) {
    let mut sums = (0, 0, 0);
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if entry.path().extension().is_some_and(|e| e == "log") {
            let [tasks, keys, records] =
                restored_in(&entry.path(), ["standby_tasks", "from_standby_copies", "records"]);
            sums = (sums.0 + tasks, sums.1 + keys, sums.2 + records);
        }
    }
    sums
}

/// The sums of the `fields` of the restores' log lines in the process log `log`.
fn restored_in<const N: usize>(log: &Path, fields: [&str; N]) -> [u64; N] {
    let field = |line: &str, name: &str| -> u64 {
        line.split_once(&format!(" {name}="))
            .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
            .unwrap_or(0)
    };
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut sums = [0; N];
    for line in text.lines().filter(|l| l.contains("restored the state of the tasks")) {
        for (sum, name) in sums.iter_mut().zip(fields) {
            *sum += field(line, name);
        }
    }
    sums
}

/// The clickstream job of the README (clicks keyed by user, counted per item: through a
/// repartition topic, with every source partition's watermark; the top items of each window
/// merged from every task's) on a three-node cluster, run by three processes while a million
/// clicks arrive: one is killed with SIGKILL, a fourth starts, the killed one comes back on
/// its checkpoint, and two stop with SIGTERM. The read_committed top items equal those of a
/// single process (no `[scale]`) run on the same input afterwards, and what the test computes
/// from the clicks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clickstream_top_items_of_processes_coming_and_going_equal_a_single_processs() {
    let Some(run) = Clickstream::start().await else { return };
    let mut one = run.process("one", "one");
    let mut two = run.process("two", "two");
    let mut three = run.process("three", "three");
    run.step("three processes started");
    for process in [&mut one, &mut two, &mut three] {
        process.wait_for_rows().await;
    }
    run.step("each of them has committed a batch with rows");
    run.sent_at_least(30).await;
    two.kill();
    run.step("two killed (SIGKILL) after 300,000 clicks");
    let four = run.process("four", "four");
    run.step("four started");
    let two_again = run.process("two-again", "two");
    run.step("two restarted on its checkpoint");
    run.sent_at_least(60).await;
    one.check_running();
    three.check_running();
    one.stop();
    three.stop();
    run.step("one and three stopped (SIGTERM) after 600,000 clicks");
    run.finish(vec![four, two_again]).await;
}

/// The local fast path on the clickstream job: a lone process killed (SIGKILL) while clicks
/// arrive comes back on its checkpoint. It restores every task from its checkpoint's copy and
/// reads only the changelogs' tail after it (at most what the kill kept from the checkpoint),
/// not their history, and its top items equal a single process's (no `[scale]`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_process_killed_comes_back_from_its_checkpoints_copy_and_equals_a_single_process() {
    let Some(run) = Clickstream::start().await else { return };
    let mut one = run.process("one", "one");
    one.wait_for_rows().await;
    run.sent_at_least(40).await;
    one.kill();
    run.step("one killed (SIGKILL) after 400,000 clicks");
    let mut again = run.process("one-again", "one");
    again.wait_for_rows().await;
    let held = run.changelog_offsets().await;
    // (Its tasks are restored before its first batch.)
    let [local_tasks, keys, records] = restored_in(&again.log, ["local_tasks", "from_local_copies", "records"]);
    run.step(&format!(
        "one restarted on its checkpoint: {local_tasks} tasks from its checkpoint's copies ({keys} keys), {records} changelog records read; the changelogs held {held} offsets"
    ));
    run.finish(vec![again]).await;
    assert_eq!(local_tasks, PARTITIONS as u64, "every task from the checkpoint's copy");
    assert!(keys > 0, "the copies hold the tasks' keys");
    assert!(records * 4 < held, "{records} changelog records read of {held}: the tail, not the history");
}

/// SplitMix64: the campaign's random choices, replayed from its seed.
struct SplitMix64(u64);

impl SplitMix64 {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % n as u64) as usize
    }
}

/// The clickstream job while processes are killed (SIGKILL), started (afresh or on a dead one's
/// checkpoint) and stopped (SIGTERM) at random, `SLUICE_SCALE_FAULTS` times (20 by default;
/// `scripts/crash-test.sh COUNT scaleout` runs more) spread over the million clicks, one to four
/// running at a time: its top items still equal a single process's. Prints the seed that
/// replays the choices (`SLUICE_KILL_SEED`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kills_starts_and_stops_leave_the_clickstream_top_items_as_a_single_processs() {
    let faults: u32 = std::env::var("SLUICE_SCALE_FAULTS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let seed = std::env::var("SLUICE_KILL_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("scale-out campaign seed {seed} (replay with SLUICE_KILL_SEED={seed}), {faults} faults");
    let Some(run) = Clickstream::start().await else { return };
    let mut rng = SplitMix64(seed);
    // Six checkpoints; a process started on one that ran before is that process come back.
    const NAMES: [&str; 6] = ["p0", "p1", "p2", "p3", "p4", "p5"];
    let mut running: Vec<(usize, Process)> = (0..3).map(|slot| (slot, run.process(NAMES[slot], NAMES[slot]))).collect();
    run.step("p0, p1 and p2 started");
    let slices = CLICKS / CLICK_SLICE;
    for fault in 0..faults {
        run.sent_at_least((fault + 1) * slices / (faults + 1)).await;
        // Now and then a moment for what was started to get going.
        tokio::time::sleep(Duration::from_millis(rng.below(1_000) as u64)).await;
        for (_, process) in &mut running {
            process.check_running();
        }
        let action = match running.len() {
            0 | 1 => 0,
            4.. => 1 + rng.below(2),
            _ => rng.below(3),
        };
        match action {
            0 => {
                let idle: Vec<usize> = (0..NAMES.len()).filter(|slot| running.iter().all(|(s, _)| s != slot)).collect();
                let slot = idle[rng.below(idle.len())];
                running.push((slot, run.process(NAMES[slot], NAMES[slot])));
                run.step(&format!("fault {fault}: {} started", NAMES[slot]));
            }
            1 => {
                let (slot, process) = running.swap_remove(rng.below(running.len()));
                process.kill();
                run.step(&format!("fault {fault}: {} killed (SIGKILL)", NAMES[slot]));
            }
            _ => {
                let (slot, mut process) = running.swap_remove(rng.below(running.len()));
                // Stopped once it runs batches (a process still starting has no handler yet).
                process.wait_for_rows().await;
                process.stop();
                run.step(&format!("fault {fault}: {} stopped (SIGTERM)", NAMES[slot]));
            }
        }
    }
    run.finish(running.into_iter().map(|(_, process)| process).collect()).await;
}
