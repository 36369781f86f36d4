//! The clickstream example against a real broker, on a fixed generated input:
//! - its top items per window and its user sessions equal what this test computes from the
//!   input on its own;
//! - killed with SIGKILL at random moments (20 times; `SLUICE_STREAM_KILLS` for more) and
//!   restarted each time on the same checkpoint, it leaves output byte-identical to a run
//!   without crashes;
//! - killed 10 times (`SLUICE_STREAM_KILLS`) while writing to Kafka, it loses no record: with
//!   the idempotent sink the duplicates are counted, with the transactional sink each record is
//!   committed once, as a `read_committed` reader (sluice's consumer, and the Java client's on
//!   Apache Kafka) sees it.
//!
//! - on a three-node Apache Kafka cluster, run through a leader killed and brought back and a
//!   rolling restart of every node, and through a proxy that cuts and freezes its connections,
//!   it never stops: its files are byte-identical to a run without faults, and its
//!   transactional sink's output holds every record once.
//!
//! The job runs in a child process: this test binary again, with `CHILD_ENV` set. Kill delays
//! come from a seed printed at the start (`SLUICE_KILL_SEED` replays it).

// The test prints its seed and what the runs did.
#![allow(clippy::print_stdout)]

use sluice_testkit as common;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{cluster, unique, Kind, Rng};
use sluice_client::{Client, ClientConfig, FetchOptions, Producer, ProducerConfig, ProducerRecord};
use sluice_protocol::record::ControlRecordType;
use sluice_scheduler::{Clock, ManualClock, RateLimits, SystemClock};
use sluice_stream::clickstream::{
    self, Click, ClickGenerator, ClickstreamConfig, GeneratorConfig, TopItem, UserSession,
};
use sluice_stream::{JsonLinesFiles, KafkaSink, StreamConfig, StreamingContext};

const PARTITIONS: i32 = 4;
const CLICKS: usize = 12_000;
const CHILD_ENV: &str = "SLUICE_CLICKSTREAM_CHILD";

/// 12,000 clicks by 2,000 users on 200 items (Zipf-skewed), 20 per second of event time: ten
/// minutes, so that some fifty windows close.
fn input() -> Vec<Click> {
    let mut generator = GeneratorConfig::default();
    generator.seed = 7;
    generator.users = 2_000;
    generator.items = 200;
    generator.clicks_per_second = 20.0;
    ClickGenerator::new(generator).take(CLICKS).collect()
}

/// Each user's clicks go to one partition (user number mod 4), in order.
fn partition_of(click: &Click) -> i32 {
    let number: i32 = click.user.trim_start_matches("user-").parse().unwrap();
    number % PARTITIONS
}

fn job_config() -> ClickstreamConfig {
    let mut config = ClickstreamConfig::default();
    // Batch time runs at 20 ms a batch here: idle after 10 batches, sessions end after 15.
    config.idle_after = Duration::from_millis(200);
    config.session_timeout = Duration::from_millis(300);
    config
}

/// The topics of one test's job (the broker may be shared): `PREFIX-clicks`, `PREFIX-top-items`
/// and `PREFIX-sessions`.
#[derive(Debug, Clone)]
struct Topics {
    prefix: String,
}

impl Topics {
    fn clicks(&self) -> String {
        format!("{}-clicks", self.prefix)
    }

    fn output(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }
}

/// The shared broker's address and new topics, the input holding the clicks (and one record that
/// is not a click); returns each partition's record count too.
fn broker_with_clicks() -> (String, Topics, BTreeMap<i32, i64>) {
    let broker = common::shared();
    let (topics, counts) = clicks_on(&broker.addr, 1);
    (broker.addr.clone(), topics, counts)
}

/// New topics with `replicas` replicas on the cluster `bootstrap` (addresses separated by
/// commas), the input holding the clicks (and one record that is not a click); returns each
/// partition's record count too.
fn clicks_on(bootstrap: &str, replicas: i16) -> (Topics, BTreeMap<i32, i64>) {
    let topics = Topics { prefix: unique("clickstream") };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let counts = runtime.block_on(async {
        let client = Client::connect(ClientConfig::new(bootstrap.split(','))).await.unwrap();
        client.create_topic(&topics.clicks(), PARTITIONS, replicas).await.unwrap();
        for output in ["top-items", "sessions"] {
            client.create_topic(&topics.output(output), 1, replicas).await.unwrap();
        }
        let producer = Producer::new(client.clone(), ProducerConfig::default()).await.unwrap();
        let mut counts: BTreeMap<i32, i64> = (0..PARTITIONS).map(|p| (p, 0)).collect();
        for click in input() {
            let partition = partition_of(&click);
            *counts.get_mut(&partition).unwrap() += 1;
            let record = ProducerRecord { partition: Some(partition), ..click.to_record(&topics.clicks()) };
            drop(producer.send(record).await.unwrap());
        }
        let garbage = ProducerRecord { partition: Some(0), ..ProducerRecord::new(topics.clicks(), "not a click") };
        drop(producer.send(garbage).await.unwrap());
        *counts.get_mut(&0).unwrap() += 1;
        producer.flush().await.unwrap();
        counts
    });
    (topics, counts)
}

/// Where the job writes: JSON-lines files under `out/`, or the topics `top-items` and
/// `sessions` (idempotent, or transactional).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    Files,
    Kafka,
    KafkaTransactions,
}

impl Output {
    fn name(self) -> &'static str {
        match self {
            Output::Files => "files",
            Output::Kafka => "kafka",
            Output::KafkaTransactions => "kafka-transactions",
        }
    }

    fn parse(name: &str) -> Self {
        [Output::Files, Output::Kafka, Output::KafkaTransactions].into_iter().find(|o| o.name() == name).unwrap()
    }
}

fn kafka_sink<T: serde::Serialize>(client: &ClientConfig, topic: &str, output: Output) -> KafkaSink<T> {
    let sink = KafkaSink::json(client.clone(), topic, format!("clickstream-{topic}"));
    if output == Output::KafkaTransactions {
        sink.transactional()
    } else {
        sink
    }
}

/// The usual rate: 30 records per partition in each 20 ms batch.
const RATE: f64 = 1_500.0;

/// The client of a job on the brokers `bootstrap` names, separated by commas.
fn client_of(bootstrap: &str) -> ClientConfig {
    ClientConfig::new(bootstrap.split(','))
}

/// Runs the job to the end of the input (its source and its Kafka sinks with `client`): batches
/// of 20 ms, each taking `rate` × 20 ms records of each partition.
async fn run_job<C: Clock + 'static>(
    client: &ClientConfig,
    topics: &Topics,
    dir: &Path,
    counts: &BTreeMap<i32, i64>,
    clock: C,
    output: Output,
    rate: f64,
) -> (u64, u64, u64) {
    let clicks = topics.clicks();
    let mut config = StreamConfig::new(
        client.bootstrap.iter().map(String::as_str),
        [clicks.as_str()],
        Duration::from_millis(20),
        dir.join("checkpoint"),
    );
    config.client = client.clone();
    config.scheduler.limits = RateLimits { max_per_partition: Some(rate), min_per_partition: 0.0 };
    config.scheduler.ending_offsets = Some(counts.iter().map(|(p, n)| ((clicks.clone(), *p), *n)).collect());
    config.snapshot_every = 7;
    let ctx = StreamingContext::new(config);
    let counters = match output {
        Output::Files => clickstream::build(
            ctx.kafka_stream(),
            &job_config(),
            JsonLinesFiles::new(dir.join("out/top-items")),
            JsonLinesFiles::new(dir.join("out/sessions")),
        ),
        Output::Kafka | Output::KafkaTransactions => clickstream::build(
            ctx.kafka_stream(),
            &job_config(),
            kafka_sink::<TopItem>(client, &topics.output("top-items"), output),
            kafka_sink::<UserSession>(client, &topics.output("sessions"), output),
        ),
    };
    let batches = ctx.run_with_clock(clock, |_| {}).await.unwrap();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::SeqCst);
    (batches, load(&counters.unparsable), load(&counters.late))
}

fn read_lines<T: serde::de::DeserializeOwned>(dir: &Path) -> Vec<T> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
    files.sort();
    files
        .iter()
        .flat_map(|file| {
            std::fs::read_to_string(file).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect::<Vec<T>>()
        })
        .collect()
}

/// Checks the job's output against the input, computed here independently.
fn check_output(out: &Path) {
    let clicks = input();
    let config = job_config();
    let (length, slide, lateness) = (60_000i64, 10_000i64, 5_000i64);
    assert_eq!(config.window.as_millis() as i64, length);
    assert_eq!(config.slide.as_millis() as i64, slide);
    assert_eq!(config.allowed_lateness.as_millis() as i64, lateness);

    // Clicks per item per window.
    let mut windows: BTreeMap<i64, BTreeMap<&str, u64>> = BTreeMap::new();
    for click in &clicks {
        let mut start = click.time_ms - click.time_ms.rem_euclid(slide);
        while start > click.time_ms - length {
            *windows.entry(start).or_default().entry(click.item.as_str()).or_default() += 1;
            start -= slide;
        }
    }
    let top_of = |start: i64| -> Vec<TopItem> {
        let mut items: Vec<(&str, u64)> = windows[&start].iter().map(|(i, c)| (*i, *c)).collect();
        items.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        items
            .iter()
            .take(config.top)
            .enumerate()
            .map(|(rank, (item, clicks))| TopItem {
                window_start_ms: start,
                window_end_ms: start + length,
                rank: rank as u32 + 1,
                item: (*item).to_owned(),
                clicks: *clicks,
            })
            .collect()
    };
    // Every window the slowest partition's last click closes must be out; none past the fastest's.
    let mut last_per_partition: BTreeMap<i32, i64> = BTreeMap::new();
    for click in &clicks {
        last_per_partition.insert(partition_of(click), click.time_ms);
    }
    let must_close = last_per_partition.values().min().unwrap() - lateness;
    let may_close = last_per_partition.values().max().unwrap() - lateness;

    let top: Vec<TopItem> = read_lines(&out.join("top-items"));
    let mut by_window: BTreeMap<i64, Vec<TopItem>> = BTreeMap::new();
    for item in top {
        by_window.entry(item.window_start_ms).or_default().push(item);
    }
    let required: Vec<i64> = windows.keys().copied().filter(|s| s + length <= must_close).collect();
    assert!(required.len() > 40, "the input closes many windows: {}", required.len());
    for start in &required {
        assert!(by_window.contains_key(start), "window at {start} closed but was not published");
    }
    for (start, items) in &by_window {
        assert!(start + length <= may_close, "window at {start} published before the watermark passed it");
        assert_eq!(items, &top_of(*start), "top items of the window at {start}");
    }

    // Sessions: each user's sessions, in the order they ended, split the user's clicks in order.
    let sessions: Vec<UserSession> = read_lines(&out.join("sessions"));
    assert!(sessions.len() > 100, "sessions ended: {}", sessions.len());
    let mut per_user: BTreeMap<&str, VecDeque<&Click>> = BTreeMap::new();
    for click in &clicks {
        per_user.entry(click.user.as_str()).or_default().push_back(click);
    }
    for session in &sessions {
        let remaining = per_user.get_mut(session.user.as_str()).unwrap();
        assert!(session.clicks as usize <= remaining.len(), "{session:?} has more clicks than the user made");
        let segment: Vec<&Click> = remaining.drain(..session.clicks as usize).collect();
        assert_eq!(segment.last().unwrap().time_ms, session.last_click_ms, "{session:?}");
        let mut recent: Vec<String> = Vec::new();
        for click in segment {
            recent.retain(|i| *i != click.item);
            recent.push(click.item.to_string());
        }
        let keep = recent.len().saturating_sub(config.recent_items);
        assert_eq!(session.recent_items, recent[keep..].to_vec(), "{session:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_publishes_the_top_items_and_sessions_computed_independently_from_its_input() {
    let (broker, topics, counts) = tokio::task::spawn_blocking(broker_with_clicks).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (batches, unparsable, late) =
        run_job(&client_of(&broker), &topics, dir.path(), &counts, ManualClock::new(0), Output::Files, RATE).await;
    println!("clickstream: {batches} batches");
    assert!(batches > 90, "rate-limited into many batches: {batches}");
    assert_eq!(unparsable, 1, "the record that is not a click");
    assert_eq!(late, 0, "each partition's clicks come in time order, so none is late");
    check_output(&dir.path().join("out"));
}

/// What a child job reads: the broker, the topics, each input partition's record count.
struct Job {
    broker: String,
    topics: Topics,
    counts: BTreeMap<i32, i64>,
}

impl Job {
    fn new() -> Self {
        let (broker, topics, counts) = broker_with_clicks();
        Self { broker, topics, counts }
    }
}

/// Runs the job in a child process (the test `test`) on `dir`; kills it after `kill_after`
/// unless it finishes first. Returns whether it finished.
fn child(test: &str, output: Output, dir: &Path, job: &Job, kill_after: Option<Duration>) -> bool {
    let counts: Vec<String> = job.counts.values().map(i64::to_string).collect();
    let spec = format!("{}|{}|{}|{}|{}", dir.display(), job.broker, counts.join(","), output.name(), job.topics.prefix);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, spec)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    match kill_after {
        Some(after) => {
            let deadline = std::time::Instant::now() + after;
            while std::time::Instant::now() < deadline {
                if let Some(status) = child.try_wait().unwrap() {
                    assert!(status.success(), "a child failed on its own: {status}");
                    return true;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
            false
        }
        None => {
            assert!(child.wait().unwrap().success(), "the last run must finish the job");
            true
        }
    }
}

/// In a child process: runs the job as `spec` says, then exits.
fn run_child_if_asked() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let fields: Vec<&str> = spec.split('|').collect();
    let (dir, broker, counts, output) = (fields[0], fields[1], fields[2], Output::parse(fields[3]));
    let topics = Topics { prefix: fields[4].to_owned() };
    let counts: BTreeMap<i32, i64> =
        counts.split(',').enumerate().map(|(p, n)| (p as i32, n.parse().unwrap())).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(run_job(&client_of(broker), &topics, Path::new(dir), &counts, SystemClock::new(), output, RATE));
    std::process::exit(0);
}

/// Every file under `dir`, relative path to bytes.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for sub in ["top-items", "sessions"] {
        for entry in std::fs::read_dir(dir.join(sub)).unwrap() {
            let path = entry.unwrap().path();
            out.insert(path.strip_prefix(dir).unwrap().to_owned(), std::fs::read(&path).unwrap());
        }
    }
    out
}

/// The lines of the files of `sub` (in batch order).
fn file_lines(out: &Path, sub: &str) -> Vec<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(out.join(sub)).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| std::fs::read_to_string(f).unwrap().lines().map(str::to_owned).collect::<Vec<_>>())
        .collect()
}

/// A job killed `kills` times (SIGKILL at random moments) and restarted each time on the same
/// directory, then run to its end; returns the directory.
fn crash_runs(test: &str, output: Output, job: &Job, kills: u64) -> tempfile::TempDir {
    let seed = std::env::var("SLUICE_KILL_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    println!("clickstream SIGKILL test ({}) seed {seed} (replay with SLUICE_KILL_SEED={seed})", output.name());
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut killed = 0;
    let mut finished_early = 0;
    while killed < kills {
        // Often during start-up and recovery, often mid-batch.
        let after = Duration::from_millis(30 + rng.below(250));
        if child(test, output, dir.path(), job, Some(after)) {
            // The job finished before this kill. With files, begin again (a finished job does
            // nothing) until every kill has landed on a run under way; with Kafka, the topics
            // hold the finished job's output, so the kills done are all there will be.
            finished_early += 1;
            if output != Output::Files || finished_early > kills {
                break;
            }
            let _ = std::fs::remove_dir_all(dir.path().join("checkpoint"));
            let _ = std::fs::remove_dir_all(dir.path().join("out"));
            continue;
        }
        killed += 1;
    }
    assert!(child(test, output, dir.path(), job, None));
    println!("{killed} kills, {finished_early} runs finished before their kill");
    assert!(killed >= kills.min(5), "kills landed on running jobs: {killed}");
    dir
}

fn kills(default: u64) -> u64 {
    std::env::var("SLUICE_STREAM_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

const FILES_TEST: &str = "killed_and_restarted_the_job_leaves_output_byte_identical_to_a_run_without_crashes";

#[test]
fn killed_and_restarted_the_job_leaves_output_byte_identical_to_a_run_without_crashes() {
    run_child_if_asked();
    let job = Job::new();
    let clean = tempfile::tempdir().unwrap();
    assert!(child(FILES_TEST, Output::Files, clean.path(), &job, None));
    let expected = files(&clean.path().join("out"));
    check_output(&clean.path().join("out"));

    let kills = kills(20);
    let crashed = crash_runs(FILES_TEST, Output::Files, &job, kills);
    let got = files(&crashed.path().join("out"));
    assert_eq!(got.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>(), "the same files");
    for (path, bytes) in &expected {
        assert!(got[path] == *bytes, "{} differs from the run without crashes", path.display());
    }
}

/// The values in `topic`/0: those outside transactions and those of committed transactions, in
/// log order; and how many records aborted transactions left in the log.
async fn committed_values(client: &Client, topic: &str) -> (Vec<String>, usize) {
    let mut options = FetchOptions::default();
    options.max_wait = Duration::from_millis(50);
    let mut committed = Vec::new();
    let mut open: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    let mut aborted = 0;
    let mut next = 0;
    loop {
        let fetched = client.fetch_partition(topic, 0, next, &options).await.unwrap();
        if next >= fetched.high_watermark {
            break;
        }
        let from = next;
        for batch in fetched.records.batches.iter().filter(|b| b.header.last_offset() >= from) {
            next = batch.header.last_offset() + 1;
            let producer = batch.header.producer_id;
            match batch.control_type() {
                Some(ControlRecordType::Commit) => committed.extend(open.remove(&producer).unwrap_or_default()),
                Some(ControlRecordType::Abort) => aborted += open.remove(&producer).map_or(0, |v| v.len()),
                Some(_) => {}
                None => {
                    let values = batch.records().map(|r| String::from_utf8(r.value().unwrap().to_vec()).unwrap());
                    if batch.header.is_transactional() {
                        open.entry(producer).or_default().extend(values);
                    } else {
                        committed.extend(values);
                    }
                }
            }
        }
    }
    assert!(open.values().all(Vec::is_empty), "no transaction left open: {:?}", open.keys());
    (committed, aborted)
}

/// The Kafka output of a crashed-and-restarted job, against a clean run's files, per output
/// (file name under `out/`, and its topic).
struct KafkaOutput {
    name: &'static str,
    topic: String,
    /// Values outside transactions and those of committed transactions, in log order.
    written: Vec<String>,
    /// What the run without crashes wrote to its files.
    expected: Vec<String>,
    /// Records aborted transactions left in the log.
    aborted: usize,
}

fn kafka_output(test: &str, output: Output, default_kills: u64) -> (Job, Vec<KafkaOutput>) {
    let job = Job::new();
    let clean = tempfile::tempdir().unwrap();
    assert!(child(test, Output::Files, clean.path(), &job, None));
    let _crashed = crash_runs(test, output, &job, kills(default_kills));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let client = runtime.block_on(Client::connect(ClientConfig::new(job.broker.split(',')))).unwrap();
    let outputs = ["top-items", "sessions"]
        .into_iter()
        .map(|name| {
            let topic = job.topics.output(name);
            let (written, aborted) = runtime.block_on(committed_values(&client, &topic));
            KafkaOutput { name, topic, written, expected: file_lines(&clean.path().join("out"), name), aborted }
        })
        .collect();
    (job, outputs)
}

const KAFKA_TEST: &str = "killed_with_the_idempotent_kafka_sink_no_record_is_lost_and_duplicates_are_counted";

#[test]
fn killed_with_the_idempotent_kafka_sink_no_record_is_lost_and_duplicates_are_counted() {
    run_child_if_asked();
    for KafkaOutput { written, expected, .. } in kafka_output(KAFKA_TEST, Output::Kafka, 10).1 {
        let mut remaining: BTreeMap<&str, usize> = BTreeMap::new();
        for line in &written {
            *remaining.entry(line).or_default() += 1;
        }
        for line in &expected {
            let left = remaining.get_mut(line.as_str()).unwrap_or_else(|| panic!("lost: {line}"));
            assert!(*left > 0, "lost: {line}");
            *left -= 1;
        }
        let duplicates: usize = remaining.values().sum();
        println!(
            "idempotent Kafka sink: {} records expected, {} written, {duplicates} duplicates",
            expected.len(),
            written.len()
        );
        assert_eq!(written.len(), expected.len() + duplicates, "nothing but the expected records and their duplicates");
    }
}

const TRANSACTIONS_TEST: &str = "killed_with_the_transactional_kafka_sink_each_record_is_committed_exactly_once";

#[test]
fn killed_with_the_transactional_kafka_sink_each_record_is_committed_exactly_once() {
    run_child_if_asked();
    let (job, outputs) = kafka_output(TRANSACTIONS_TEST, Output::KafkaTransactions, 10);
    for out in outputs {
        println!(
            "transactional Kafka sink ({}): {} records committed, {} in aborted transactions",
            out.name,
            out.written.len(),
            out.aborted
        );
        assert_eq!(out.written, out.expected, "{}: committed once each, in batch order", out.name);
        // What read_committed readers see: sluice's consumer, and on Apache Kafka the Java client's.
        let read = read_committed(&job.broker, &out.topic);
        match common::kind() {
            Kind::Kafka => {
                assert_eq!(read, out.expected, "{}: a read_committed consumer sees each record once", out.name);
                let java = common::java::consume_values(&job.broker, &out.topic, true);
                assert_eq!(java, out.expected, "{}: the Java client's read_committed consumer agrees", out.name);
            }
            Kind::Tansu => {
                assert_eq!(read.len(), out.expected.len() + out.aborted);
                println!(
                    "note: on Tansu a read_committed consumer also sees the {} aborted records (Tansu lists no \
                     aborted transactions in Fetch)",
                    out.aborted
                );
            }
        }
    }
}

/// Every value of `topic`/0 a read_committed sluice consumer sees, in order.
fn read_committed(broker: &str, topic: &str) -> Vec<String> {
    use sluice_client::{Consumer, ConsumerConfig, Isolation, StartAt};
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let client = Client::connect(ClientConfig::new(broker.split(','))).await.unwrap();
        let end = client.log_end(topic, 0, Isolation::ReadCommitted).await.unwrap();
        let mut config = ConsumerConfig::default();
        config.isolation = Isolation::ReadCommitted;
        config.max_wait = Duration::from_millis(50);
        let mut consumer = Consumer::new(client, config);
        consumer.assign(topic, 0, StartAt::Earliest).await.unwrap();
        let mut values = Vec::new();
        for _ in 0..1_000 {
            if consumer.partition_progress(topic, 0).is_some_and(|p| p.position >= end) {
                return values;
            }
            for part in consumer.poll().await.unwrap() {
                values.extend(part.records().map(|r| String::from_utf8(r.value().unwrap().to_vec()).unwrap()));
            }
        }
        panic!("{topic}: the read_committed consumer did not reach offset {end}");
    })
}

/// The job slowed to three records per partition a batch (so that it is under way through
/// faults), run twice at once with the system clock: writing files, and writing to Kafka in
/// transactions.
const SLOW: f64 = 150.0;

struct FaultedRuns {
    files_dir: tempfile::TempDir,
    transactions_dir: tempfile::TempDir,
    files: tokio::task::JoinHandle<(u64, u64, u64)>,
    transactions: tokio::task::JoinHandle<(u64, u64, u64)>,
}

impl FaultedRuns {
    fn start(client: &ClientConfig, topics: &Topics, counts: &BTreeMap<i32, i64>) -> Self {
        let (files_dir, transactions_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let start = |output: Output, dir: PathBuf| {
            let (client, topics, counts) = (client.clone(), topics.clone(), counts.clone());
            tokio::spawn(
                async move { run_job(&client, &topics, &dir, &counts, SystemClock::new(), output, SLOW).await },
            )
        };
        let files = start(Output::Files, files_dir.path().to_owned());
        let transactions = start(Output::KafkaTransactions, transactions_dir.path().to_owned());
        Self { files_dir, transactions_dir, files, transactions }
    }

    /// How many of the two runs are still under way.
    fn running(&self) -> usize {
        [&self.files, &self.transactions].iter().filter(|run| !run.is_finished()).count()
    }

    /// Waits for both runs, then checks: the files are byte-identical to those of the run
    /// without faults in `clean`, and the transactional sink's topics hold every record of that
    /// run once, in order, as a read_committed consumer sees them.
    async fn finish(self, clean: &Path, client: &Client, bootstrap: &str, topics: &Topics) {
        self.files.await.unwrap();
        self.transactions.await.unwrap();
        let expected = files(&clean.join("out"));
        let got = files(&self.files_dir.path().join("out"));
        assert_eq!(got.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>(), "the same files");
        for (path, bytes) in &expected {
            assert!(got[path] == *bytes, "{} differs from the run without faults", path.display());
        }
        for name in ["top-items", "sessions"] {
            let topic = topics.output(name);
            let (written, aborted) = committed_values(client, &topic).await;
            let expected = file_lines(&clean.join("out"), name);
            println!(
                "transactional sink ({name}): {} records committed, {aborted} in aborted transactions",
                written.len()
            );
            assert_eq!(written, expected, "{name}: committed once each, in batch order");
            let bootstrap = bootstrap.to_owned();
            let read = tokio::task::spawn_blocking(move || read_committed(&bootstrap, &topic)).await.unwrap();
            assert_eq!(read, expected, "{name}: a read_committed consumer sees each record once");
        }
        drop(self.transactions_dir);
    }
}

/// On a three-node cluster (replication factor 3, `min.insync.replicas` 2) the job runs, slowed
/// to three records per partition a batch so that it is under way through the faults, while the
/// leader of its input is killed with SIGKILL and brought back, and then every node is restarted
/// in turn. Two runs at once: one writing files, one writing to Kafka in transactions. Neither
/// stops; the files are byte-identical to those of a run without faults, and the transactional
/// sink's topics hold every record once, as a read_committed consumer sees them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_the_job_rides_through_a_leader_kill_and_a_rolling_restart() {
    let began = std::time::Instant::now();
    let Some((cluster, client)) = cluster::start_or_skip().await else { return };
    let bootstrap = cluster.bootstrap.join(",");
    let (topics, counts) = {
        let bootstrap = bootstrap.clone();
        tokio::task::spawn_blocking(move || clicks_on(&bootstrap, 3)).await.unwrap()
    };
    let clean = tempfile::tempdir().unwrap();
    run_job(&client_of(&bootstrap), &topics, clean.path(), &counts, ManualClock::new(0), Output::Files, SLOW).await;
    println!("[the run without faults done at {:.0} s]", began.elapsed().as_secs_f64());

    let runs = FaultedRuns::start(&client_of(&bootstrap), &topics, &counts);
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster::kill_leader(&cluster, &client, &topics.clicks(), Duration::from_secs(3)).await;
    let running = runs.running();
    println!(
        "[{running} of the 2 runs still under way after the leader kill, at {:.0} s]",
        began.elapsed().as_secs_f64()
    );
    assert_eq!(running, 2, "both runs must be under way through the leader kill (slow them down further)");
    cluster::rolling_restart(&cluster, &client).await;
    let running = runs.running();
    println!(
        "[{running} of the 2 runs still under way after the rolling restart, at {:.0} s]",
        began.elapsed().as_secs_f64()
    );
    assert!(running > 0, "a run must be under way through the rolling restart (slow them down further)");
    runs.finish(clean.path(), &client, &bootstrap, &topics).await;
    println!("[both runs done and checked at {:.0} s]", began.elapsed().as_secs_f64());
}

/// Through a TCP proxy in front of one broker (its only advertised listener), the job runs as on
/// the cluster, writing files and writing to Kafka in transactions at once, while every
/// connection is cut three times, then connections are cut mid-answer for two seconds, then
/// every connection freezes (open, carrying nothing; requests on them time out after 5 s).
/// Neither run stops; the files are byte-identical to a run without faults, and the
/// transactional sink's topics hold every record once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_proxy_the_job_rides_through_cut_and_frozen_connections() {
    let began = std::time::Instant::now();
    let (broker, proxy) = common::Broker::start_behind_proxy();
    let mut client_config = client_of(&proxy.addr);
    client_config.connection.request_timeout = Duration::from_secs(5);
    let (topics, counts) = {
        let addr = proxy.addr.clone();
        tokio::task::spawn_blocking(move || clicks_on(&addr, 1)).await.unwrap()
    };
    // The run without faults goes straight to the broker, meanwhile.
    let clean = tempfile::tempdir().unwrap();
    let clean_run = {
        let (direct, topics, counts, dir) =
            (client_of(&broker.addr), topics.clone(), counts.clone(), clean.path().to_owned());
        tokio::spawn(
            async move { run_job(&direct, &topics, &dir, &counts, ManualClock::new(0), Output::Files, SLOW).await },
        )
    };
    let runs = FaultedRuns::start(&client_config, &topics, &counts);
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!("[fault: every connection cut, three times, at {:.0} s]", began.elapsed().as_secs_f64());
    for _ in 0..3 {
        proxy.cut_all();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("[fault: connections cut after 64 KiB of answers, for 2 s]");
    proxy.faults.cut_after_response_bytes.store(64 << 10, std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.faults.cut_after_response_bytes.store(0, std::sync::atomic::Ordering::Relaxed);
    println!("[fault: every connection frozen, at {:.0} s]", began.elapsed().as_secs_f64());
    proxy.freeze_all();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(runs.running(), 2, "both runs must be under way through the faults (slow them down further)");
    clean_run.await.unwrap();
    let client = Client::connect(client_config.clone()).await.unwrap();
    runs.finish(clean.path(), &client, &proxy.addr, &topics).await;
    let cuts = proxy.faults.cuts.load(std::sync::atomic::Ordering::Relaxed);
    println!("[both runs done and checked at {:.0} s; {cuts} connections cut]", began.elapsed().as_secs_f64());
    assert!(cuts >= 3, "the faults must actually happen (only {cuts} cuts)");
}
