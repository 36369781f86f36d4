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
