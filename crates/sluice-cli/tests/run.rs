//! `sluice run` against a real broker: a job file's results checked against an independent
//! computation, the progress lines, Prometheus metrics, a graceful SIGTERM, `checkpoint
//! inspect` (and the damage it finds), and the errors of bad job files.

#![allow(clippy::unwrap_used)]

use sluice_testkit as common;

mod cli;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cli::{ok, sluice};
use common::{unique, Rng};

/// Orders as CSV `customer,region,amount,time`: event time 0..60 s, then one order far later
/// that closes every window before it.
fn orders() -> Vec<(String, String, i64, i64)> {
    let mut rng = Rng::new(7);
    let regions = ["north", "south", "east", "west", "test"];
    let mut orders: Vec<(String, String, i64, i64)> = (0..3000)
        .map(|i| {
            let customer = format!("c{}", rng.below(50));
            let region = regions[rng.below(5) as usize].to_owned();
            (customer, region, 1 + rng.below(100) as i64, i * 20)
        })
        .collect();
    orders.push(("c0".into(), "north".into(), 50, 1_000_000));
    orders
}

/// A test's topics (the broker may be shared): the orders it reads and the revenue it publishes.
struct Topics {
    orders: String,
    revenue: String,
}

impl Topics {
    fn new() -> Self {
        Self { orders: unique("orders"), revenue: unique("revenue") }
    }
}

/// The job's window section (`job_file`'s).
const EVENT_WINDOW: &str = "[window]\ntime = \"event\"\ntime_field = \"time\"\nlength = \"10s\"\nwatermark = \"0s\"\n";

/// The job under test: orders outside region `test` with an amount of at least 10, summed per
/// region over 10 s tumbling event-time windows, the top 3 regions of each.
fn job_file(dir: &Path, broker: &str, topics: &Topics) -> String {
    format!(
        r#"name = "orders-by-region"

[source]
brokers = ["{broker}"]
topics = ["{orders}"]
start = "earliest"
batch_interval = "200ms"

[format]
type = "csv"
columns = ["customer", "region", "amount", "time"]

[[filter]]
field = "region"
op = "!="
value = "test"

[[filter]]
field = "amount"
op = ">="
value = 10

[aggregate]
key = "region"
function = "sum"
field = "amount"
as = "revenue"

{EVENT_WINDOW}
[top]
k = 3

[checkpoint]
dir = "{checkpoint}"

[[sink]]
type = "files"
dir = "{files}"

[[sink]]
type = "stdout"

[[sink]]
type = "kafka"
topic = "{revenue}"
"#,
        checkpoint = dir.join("checkpoint").display(),
        files = dir.join("out").display(),
        orders = topics.orders,
        revenue = topics.revenue,
    )
}

/// What the job must publish, computed here on its own.
fn expected(orders: &[(String, String, i64, i64)]) -> Vec<serde_json::Value> {
    let closed_before = orders.iter().map(|o| o.3).max().unwrap();
    let mut windows: BTreeMap<i64, HashMap<&str, i64>> = BTreeMap::new();
    for (_, region, amount, time) in orders {
        if region != "test" && *amount >= 10 {
            *windows.entry(time - time % 10_000).or_default().entry(region.as_str()).or_default() += amount;
        }
    }
    let mut out = Vec::new();
    for (start, sums) in windows.into_iter().filter(|(start, _)| start + 10_000 <= closed_before) {
        let mut sums: Vec<(&str, i64)> = sums.into_iter().collect();
        sums.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        for (rank, (region, sum)) in sums.into_iter().take(3).enumerate() {
            out.push(serde_json::json!({
                "window_start": start, "window_end": start + 10_000, "rank": rank + 1,
                "region": region, "revenue": sum as f64,
            }));
        }
    }
    out
}

fn produce_orders(broker: &str, topics: &Topics) -> Vec<(String, String, i64, i64)> {
    let orders = orders();
    ok(&sluice(broker, &["topics", "create", &topics.orders, "--partitions", "1"], ""));
    ok(&sluice(broker, &["topics", "create", &topics.revenue, "--partitions", "1"], ""));
    let lines: String = orders.iter().map(|(c, r, a, t)| format!("{c},{r},{a},{t}\n")).collect();
    ok(&sluice(broker, &["produce", "-t", &topics.orders], &lines));
    orders
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn a_job_file_gives_what_an_independent_computation_gives() {
    let broker = common::shared().addr.as_str();
    let topics = Topics::new();
    let orders = produce_orders(broker, &topics);
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("orders.toml");
    std::fs::write(&job, job_file(dir.path(), broker, &topics)).unwrap();

    let checked = ok(&sluice(broker, &["run", job.to_str().unwrap(), "--check"], ""));
    assert!(checked.starts_with(&format!("job orders-by-region: reads {}", topics.orders)), "{checked}");

    let output = sluice(broker, &["run", job.to_str().unwrap(), "--max-batches", "4"], "");
    let stdout = ok(&output);
    let want = expected(&orders);
    assert_eq!(want.len(), 6 * 3, "six closed windows of three regions");
    assert_eq!(json_lines(&stdout), want);
    // The files sink wrote the same rows, one file per batch with output.
    let mut files: Vec<_> = std::fs::read_dir(dir.path().join("out")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let from_files: Vec<serde_json::Value> =
        files.iter().flat_map(|f| json_lines(&std::fs::read_to_string(f).unwrap())).collect();
    assert_eq!(from_files, want);
    // And the Kafka sink published them.
    let published = ok(&sluice(broker, &["consume", "-t", &topics.revenue, "-o", "beginning", "-e"], ""));
    assert_eq!(json_lines(&published), want);
    // One progress line per batch: rows, rate, lag, latency.
    let stderr = String::from_utf8_lossy(&output.stderr);
    let progress: Vec<&str> = stderr.lines().filter(|l| l.starts_with("batch ")).collect();
    assert_eq!(progress.len(), 4, "{stderr}");
    assert!(
        progress[0].contains(" rows, ") && progress[0].contains(" rows/s, lag ") && progress[0].contains(", latency ")
    );
    let rows: u64 = progress.iter().map(|l| l.split(' ').nth(2).unwrap().parse::<u64>().unwrap()).sum();
    assert_eq!(rows, orders.len() as u64);
    assert!(stderr.ends_with("stopped after 4 batch(es)\n"), "{stderr}");

    // Run again on the same checkpoint: nothing new to read, nothing published twice.
    let again = ok(&sluice(broker, &["run", job.to_str().unwrap(), "--max-batches", "2"], ""));
    assert_eq!(again, "");

    // checkpoint inspect: what the log holds.
    let checkpoint = dir.path().join("checkpoint");
    let report = ok(&sluice(broker, &["checkpoint", "inspect", checkpoint.to_str().unwrap()], ""));
    assert!(report.contains("last committed batch: 5 (0 records"), "{report}");
    assert!(
        report.contains(&format!("  batch 0: {} records: {}/0 [0, {})", orders.len(), topics.orders, orders.len())),
        "{report}"
    );
    assert!(report.contains("damage: none"), "{report}");
    let json = ok(&sluice(broker, &["checkpoint", "inspect", checkpoint.to_str().unwrap(), "-J"], ""));
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["last_committed"]["batch_id"], 5);
    assert!(json["records"]["commits"]["count"].as_u64().unwrap() >= 6);

    // A flipped byte in the first record is damage: reported, exit code 4.
    let segment = std::fs::read_dir(&checkpoint).unwrap().map(|e| e.unwrap().path()).min().unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let at = sluice_checkpoint::format::SEGMENT_HEADER_LEN + sluice_checkpoint::format::RECORD_HEADER_LEN + 1;
    bytes[at] ^= 0x40;
    std::fs::write(&segment, bytes).unwrap();
    let damaged = sluice(broker, &["checkpoint", "inspect", checkpoint.to_str().unwrap()], "");
    assert_eq!(damaged.status.code(), Some(4));
    let report = String::from_utf8_lossy(&damaged.stdout);
    assert!(report.contains("DAMAGE: segment 0 byte 40"), "{report}");
    // The job refuses the damaged log rather than starting over.
    let refused = sluice(broker, &["run", job.to_str().unwrap(), "--max-batches", "1"], "");
    assert_eq!(refused.status.code(), Some(1), "{}", String::from_utf8_lossy(&refused.stderr));
}

#[test]
fn under_a_small_memory_budget_a_job_file_works_through_its_backlog_in_many_batches_with_the_same_results() {
    let broker = common::shared().addr.as_str();
    let topics = Topics::new();
    let orders = produce_orders(broker, &topics);
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("orders.toml");
    // 64 KiB: batches planned at 8 KiB of records (each still brings the one record batch of
    // about 75 KB the orders were produced in), run through the job 16 records at a time.
    let text =
        job_file(dir.path(), broker, &topics).replace("[checkpoint]", "[memory]\nbudget = \"64KiB\"\n\n[checkpoint]");
    std::fs::write(&job, text).unwrap();
    let output = sluice(broker, &["run", job.to_str().unwrap(), "--max-batches", "30", "--progress-json"], "");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(json_lines(&ok(&output)), expected(&orders), "{stderr}");
    let progress: Vec<serde_json::Value> = stderr.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let rows: Vec<u64> = progress.iter().map(|p| p["num_input_rows"].as_u64().unwrap()).collect();
    assert_eq!(rows.iter().sum::<u64>(), orders.len() as u64, "{rows:?}");
    let batches = rows.iter().filter(|r| **r > 0).count();
    assert!((5..=25).contains(&batches), "the backlog in several batches of about 300: {rows:?}");
    for p in &progress {
        assert!(p["num_input_bytes"].as_u64().unwrap() <= (8 << 10) + (80 << 10), "{p}");
    }
}

#[test]
fn metrics_are_served_and_sigterm_stops_after_a_commit() {
    let broker = common::shared().addr.as_str();
    let topics = Topics::new();
    produce_orders(broker, &topics);
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("orders.toml");
    std::fs::write(&job, job_file(dir.path(), broker, &topics)).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let (mut child, mut stderr) = spawn_run(&job, &["--metrics-addr", &addr]);
    let mut seen = String::new();
    read_until(&mut stderr, &mut seen, "batch 2:");
    // Far more idle connections than the server serves at once: it keeps at most its cap of
    // them open (the rest wait in the listen queue), and the job keeps committing.
    let descriptors = || std::fs::read_dir(format!("/proc/{}/fd", child.id())).unwrap().count();
    let before = descriptors();
    let idle: Vec<_> = (0..64).map(|_| std::net::TcpStream::connect(&addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let during = descriptors();
    assert!(during <= before + 16 + 2, "{before} descriptors before 64 idle connections, {during} with them");
    read_until(&mut stderr, &mut seen, "batch 5:");
    drop(idle);
    let metrics = http_get(&addr, "/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200 OK"), "{metrics}");
    let lag = format!(
        "sluice_partition_lag_records{{job=\"orders-by-region\",topic=\"{}\",partition=\"0\"}} 0",
        topics.orders
    );
    for name in [
        "sluice_batches_total{job=\"orders-by-region\"} ",
        "sluice_input_rows_total{job=\"orders-by-region\"} 3001",
        &lag,
        "sluice_last_batch_duration_seconds{job=\"orders-by-region\",phase=\"processing\"} ",
        "# TYPE sluice_late_rows_total counter",
        "# TYPE sluice_batch_duration_seconds histogram",
        "sluice_batch_duration_seconds_bucket{job=\"orders-by-region\",phase=\"total\",le=\"+Inf\"} ",
        "# TYPE sluice_request_duration_seconds histogram",
        "sluice_request_duration_seconds_count{job=\"orders-by-region\",api=\"Fetch\",broker=",
        ",api=\"Produce\",",
    ] {
        assert!(metrics.contains(name), "no {name} in\n{metrics}");
    }
    assert!(http_get(&addr, "/other").starts_with("HTTP/1.1 404"));

    let started = Instant::now();
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(status.success(), "SIGTERM is a clean stop: {status}\n{rest}");
    assert!(rest.contains("stopping once the batch under way commits"), "{rest}");
    assert!(rest.trim_end().ends_with("batch(es)"), "{rest}");
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// `sluice run JOB ARGS...` started, its stderr piped.
fn spawn_run(job: &Path, args: &[&str]) -> (std::process::Child, BufReader<std::process::ChildStderr>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("run")
        .arg(job)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    (child, stderr)
}

/// Reads `stderr` into `seen` until it holds `wanted`.
fn read_until(stderr: &mut BufReader<std::process::ChildStderr>, seen: &mut String, wanted: &str) {
    while !seen.contains(wanted) {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "the job ended early: {seen}");
        seen.push_str(&line);
    }
}

/// SIGTERM while the job waits out a long batch interval ends the wait: the job stops at once,
/// not at the next batch.
#[test]
fn sigterm_during_a_ten_second_interval_stops_the_job_at_once() {
    let broker = common::shared().addr.as_str();
    let topics = Topics::new();
    produce_orders(broker, &topics);
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("orders.toml");
    let text = job_file(dir.path(), broker, &topics).replace("batch_interval = \"200ms\"", "batch_interval = \"10s\"");
    assert!(text.contains("batch_interval = \"10s\""));
    std::fs::write(&job, text).unwrap();
    let (mut child, mut stderr) = spawn_run(&job, &[]);
    let mut seen = String::new();
    // The first batch runs at once; the second is 10 s away.
    read_until(&mut stderr, &mut seen, "batch 0:");
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    let stopped_in = started.elapsed();
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(status.success(), "SIGTERM is a clean stop: {status}\n{rest}");
    assert!(rest.trim_end().ends_with("stopped after 1 batch(es)"), "{seen}{rest}");
    // Generous (a loaded machine), and still far below the 9.5 s left of the interval.
    assert!(stopped_in < Duration::from_secs(5), "stopped {stopped_in:?} after SIGTERM");
}

fn http_get(addr: &str, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn bad_job_files_name_the_line_the_field_and_what_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let good = job_file(dir.path(), "127.0.0.1:1", &Topics { orders: "orders".into(), revenue: "revenue".into() });
    let line_of = |text: &str, needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let cases: Vec<(String, String, &str)> = vec![
        // (job text, the line the error must name, words it must say)
        (
            good.replace("op = \"!=\"", "op = \"<>\""),
            "op = \"<>\"".into(),
            "unknown variant `<>`, expected one of `==`, `!=`",
        ),
        (
            good.replace("function = \"sum\"", "function = \"median\""),
            "function = \"median\"".into(),
            "expected one of `count`, `sum`, `min`, `max`, `avg`",
        ),
        (
            good.replace("length = \"10s\"", "length = \"10 sec\""),
            "length = \"10 sec\"".into(),
            "`sec` is not a unit of time",
        ),
        (
            good.replace("batch_interval", "batch_intervall"),
            "batch_intervall".into(),
            "unknown field `batch_intervall`, expected one of",
        ),
        (
            good.replace("key = \"region\"", "key = \"regoin\""),
            "key = \"regoin\"".into(),
            "`aggregate.key`: there is no field `regoin`; the fields are `customer`, `region`",
        ),
        (
            good.replace("field = \"amount\"\nas", "as"),
            "[aggregate]".into(),
            "`aggregate.field` is missing: `sum` needs the field",
        ),
        (good.replace("k = 3", "k = 0"), "k = 0".into(), "`top.k`: at least 1"),
        (
            format!(
                "{}\n[scale]\ngroup = \"orders\"\n",
                good.replace("batch_interval", "commit_to_group = \"lag\"\nbatch_interval")
            ),
            "[scale]".into(),
            "`source.commit_to_group` with `[scale]`: the job's group holds its offsets",
        ),
        (
            format!("{}\n[scale]\ngroup = \"orders\"\n", good.replace(EVENT_WINDOW, "[window]\nlength = \"10s\"\n")),
            "[window]".into(),
            "a processing-time `[window]` with `[scale]`: its batches' aggregates live in one process",
        ),
        (
            format!("{}\n[scale]\ngroup = \"orders\"\n", good.replace(EVENT_WINDOW, "")),
            "[top]".into(),
            "`[top]` with `[scale]` ranks event-time windows",
        ),
        (
            format!("{good}\n[scale]\ngroup = \"orders\"\nprotocol = \"eager\"\n"),
            "protocol = \"eager\"".into(),
            "expected one of `auto`, `consumer`, `classic`",
        ),
        (good.replace("time_field = \"time\"\n", ""), "[window]".into(), "`window.time_field` is missing"),
        (
            good.replace("type = \"files\"", "type = \"kafka\"")
                .replace(&format!("dir = \"{}\"", dir.path().join("out").display()), ""),
            "type = \"kafka\"".into(),
            "`sink.topic` is missing",
        ),
        (
            good.replace("topics = [\"orders\"]", "topics = []"),
            "topics = []".into(),
            "`source.topics`: name at least one topic",
        ),
        (
            good.replace("columns = [\"customer\", \"region\", \"amount\", \"time\"]\n", ""),
            "[format]".into(),
            "`format.columns` is missing",
        ),
        (
            good.replace("length = \"10s\"", "length = \"10s\"\nslide = \"3s\""),
            "slide = \"3s\"".into(),
            "must be a multiple of the slide",
        ),
        (
            good.replace("value = 10", "value = [10]"),
            "value = [10]".into(),
            "`filter.value`: use a string, a number or a boolean",
        ),
        (
            good.replace("name = \"orders-by-region\"\n", ""),
            "type = \"kafka\"".into(),
            "a Kafka sink needs the job's `name` (or its own `id`)",
        ),
        (
            good.replace("batch_interval = \"200ms\"", "batch_interval = \"0.5ms\""),
            "batch_interval = \"0.5ms\"".into(),
            "durations here are whole milliseconds",
        ),
        (
            good.replace("start = \"earliest\"", "start_time_ms = -5"),
            "start_time_ms = -5".into(),
            "`source.start_time_ms`: ms since the epoch, 0 or more",
        ),
        (
            good.replace("time = \"event\"", "time = \"event\"\nwatermark = \"1s\""),
            "watermark = \"0s\"".into(),
            "duplicate key `watermark`",
        ),
    ];
    for (text, line_text, says) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, &text).unwrap();
        let output = sluice("127.0.0.1:1", &["run", path.to_str().unwrap()], "");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(3), "{says}: {stderr}");
        let line = if line_text.starts_with('[') {
            // Errors about a whole section may point at its first line or its header.
            text.lines().position(|l| l == line_text).unwrap() + 1
        } else {
            line_of(&text, &line_text)
        };
        let near = (line.saturating_sub(2)..=line + 1).any(|l| stderr.contains(&format!("bad.toml:{l}: ")));
        assert!(near, "should name line {line} ({line_text}): {stderr}");
        assert!(stderr.contains(says), "should say {says:?}: {stderr}");
    }
    let missing = sluice("127.0.0.1:1", &["run", "/nonexistent/job.toml"], "");
    assert_eq!(missing.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("reading the job file /nonexistent/job.toml"));
}

#[test]
fn the_clickstream_job_file_is_valid() {
    let job = concat!(env!("CARGO_MANIFEST_DIR"), "/jobs/clickstream.toml");
    let checked = ok(&sluice("127.0.0.1:1", &["run", job, "--check"], ""));
    assert_eq!(
        checked,
        "job clickstream-top-items: reads clicks from localhost:9092 every 1s (plaintext), 0 filter(s), count by item, 60s event-time windows, top 10, 2 sink(s), checkpoint sluice-state/clickstream-top-items\n  Kafka sink to top-items (idempotent), id clickstream-top-items-top-items\n"
    );
}
