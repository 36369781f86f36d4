//! `sluice run` on the clickstream job file (`jobs/clickstream.toml`, default settings: 1 s
//! batches, no rate limit, the default memory budget) over a backlog of 10,000,000 clicks
//! (`SLUICE_BENCH_RECORDS`) on 4 partitions, made by `sluice generate`, against a broker started
//! here (Apache Kafka 4.4). Each run is the whole `sluice` process under GNU time:
//!
//! - **Backlog:** the job from the earliest offset until every click is processed: clicks/s and
//!   peak RSS (goal: at most 256 MiB).
//! - **Another budget:** the backlog again with `[memory] budget = "256MiB"` in the job file.
//! - **Steady state:** the same job in 100 ms batches capped at 1,000,000 clicks/s (250,000 per
//!   partition), for 8 s: peak RSS (goal: at most 128 MiB).
//! - **Against Kafka Streams:** the same query as a Kafka Streams 4.4 application
//!   (`scripts/peers/java/ClickstreamStreams.java`) over the same backlog: clicks/s and peak RSS,
//!   and the ratios (`SLUICE_BENCH_SKIP_STREAMS=1` leaves it out).
//!
//! `SLUICE_BENCH_BASELINE=PATH` also runs another `sluice` binary (an older build, say) on the
//! same input, for before/after figures.
//!
//! `cargo bench -p sluice-cli --bench run`

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use sluice_testkit as common;

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::streams::kafka_streams;
use common::Broker;
use sluice_client::{Client, ClientConfig};

const PARTITIONS: i32 = 4;

fn records() -> u64 {
    std::env::var("SLUICE_BENCH_RECORDS").ok().and_then(|n| n.parse().ok()).unwrap_or(10_000_000)
}

/// What GNU time and the progress lines said of one `sluice run`.
struct Run {
    clicks: u64,
    wall_s: f64,
    cpu_s: f64,
    peak_rss_mib: f64,
    batches: u64,
    largest_batch: u64,
}

/// The other memory budget the backlog is also run under (the default is 64 MiB).
const OTHER_BUDGET: &str = "256MiB";

/// The clickstream job file reading `topic`, in batches of `interval`, at most `rate` clicks per
/// second per partition if given, within a memory budget if given; its Kafka sink writes to
/// `output`.
fn job_file(
    dir: &Path,
    topic: &str,
    output: &str,
    interval: &str,
    rate: Option<u64>,
    budget: Option<&str>,
) -> std::path::PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(manifest.join("jobs/clickstream.toml")).unwrap();
    let mut source = format!("topics = [\"{topic}\"]");
    if let Some(rate) = rate {
        source.push_str(&format!("\nmax_rate_per_partition = {rate}"));
    }
    let mut text = text
        .replace("topics = [\"clicks\"]", &source)
        .replace("batch_interval = \"1s\"", &format!("batch_interval = \"{interval}\""))
        .replace("topic = \"top-items\"", &format!("topic = \"{output}\""));
    if let Some(budget) = budget {
        text.push_str(&format!("\n[memory]\nbudget = \"{budget}\"\n"));
    }
    let path = dir.join(format!("job-{interval}-{}.toml", budget.unwrap_or("default")));
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `binary run JOB` under GNU time until `clicks` were processed (or `for_s` seconds have
/// passed), then stops it with SIGTERM.
fn run(binary: &Path, broker: &str, job: &Path, clicks: u64, for_s: Option<f64>) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("time");
    let checkpoint = dir.path().join("checkpoint");
    let started = Instant::now();
    let mut child = Command::new("/usr/bin/time")
        .args(["-f", "%e %U %S %M", "-o"])
        .arg(&report)
        .arg(binary)
        .args(["run", "--progress-json", "-b", broker, "--checkpoint-dir"])
        .arg(&checkpoint)
        .arg(job)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("/usr/bin/time");
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (mut seen, mut batches, mut largest, mut done_at) = (0u64, 0u64, 0u64, None);
    for line in stderr.lines().map_while(Result::ok) {
        let Ok(progress) = serde_json::from_str::<serde_json::Value>(&line) else {
            if !line.starts_with("stopp") {
                println!("  sluice: {line}");
            }
            continue;
        };
        let rows = progress["num_input_rows"].as_u64().unwrap_or(0);
        seen += rows;
        batches += 1;
        largest = largest.max(rows);
        let enough = seen >= clicks || for_s.is_some_and(|s| started.elapsed().as_secs_f64() >= s);
        if enough && done_at.is_none() {
            done_at = Some(started.elapsed().as_secs_f64());
            // GNU time's child, the sluice process, stopped gracefully.
            let _ = Command::new("pkill").args(["-TERM", "-P", &child.id().to_string()]).status();
        }
    }
    child.wait().unwrap();
    let time = std::fs::read_to_string(&report).unwrap_or_default();
    let fields: Vec<f64> =
        time.lines().last().unwrap_or("").split_whitespace().filter_map(|f| f.parse().ok()).collect();
    Run {
        clicks: seen,
        wall_s: done_at.unwrap_or_else(|| started.elapsed().as_secs_f64()),
        cpu_s: fields.get(1).copied().unwrap_or(0.0) + fields.get(2).copied().unwrap_or(0.0),
        peak_rss_mib: fields.get(3).copied().unwrap_or(0.0) / 1024.0,
        batches,
        largest_batch: largest,
    }
}

fn row(name: &str, run: &Run) -> String {
    format!(
        "| {name} | {} | {:.0} | {:.3} | {:.0} | {} | {} |",
        run.clicks,
        run.clicks as f64 / run.wall_s,
        run.cpu_s * 1e6 / run.clicks.max(1) as f64,
        run.peak_rss_mib,
        run.batches,
        run.largest_batch
    )
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let n = records();
        let broker = Broker::start_for_benchmark();
        let client = Client::connect(ClientConfig::new([broker.addr.as_str()])).await.unwrap();
        let (topic, output) = (common::unique("clicks"), common::unique("top-items"));
        client.create_topic(&topic, PARTITIONS, 1).await.unwrap();
        client.create_topic(&output, 1, 1).await.unwrap();
        let sluice = Path::new(env!("CARGO_BIN_EXE_sluice"));
        let generated = Command::new(sluice)
            .args(["generate", "-b", &broker.addr, "-t", &topic, "--rate", "0", "--count", &n.to_string()])
            .stderr(Stdio::inherit())
            .status()
            .unwrap();
        assert!(generated.success());
        println!(
            "`sluice run` on the clickstream job file against {} on {}: {n} clicks over {PARTITIONS} partitions\n",
            broker.kind.name(),
            broker.addr
        );
        let dir = tempfile::tempdir().unwrap();
        let backlog_job = job_file(dir.path(), &topic, &output, "1s", None, None);
        let other_job = job_file(dir.path(), &topic, &output, "1s", None, Some(OTHER_BUDGET));
        let steady_job = job_file(dir.path(), &topic, &output, "100ms", Some(250_000), None);
        let baseline = std::env::var_os("SLUICE_BENCH_BASELINE").map(std::path::PathBuf::from);
        let mut binaries = vec![("sluice", sluice.to_path_buf())];
        binaries.extend(baseline.map(|path| ("baseline", path)));

        println!("| run | clicks | clicks/s | CPU us/click | peak RSS MiB | batches | largest batch |");
        println!("| --- | --- | --- | --- | --- | --- | --- |");
        let mut backlog = None;
        for (name, binary) in &binaries {
            let run_backlog = run(binary, &broker.addr, &backlog_job, n, None);
            println!("{}", row(&format!("{name}: backlog, 1 s batches (goal <= 256 MiB)"), &run_backlog));
            let steady = run(binary, &broker.addr, &steady_job, n, Some(8.0));
            println!("{}", row(&format!("{name}: 1 M clicks/s, 100 ms batches, 8 s (goal <= 128 MiB)"), &steady));
            backlog.get_or_insert(run_backlog);
        }
        let other = run(sluice, &broker.addr, &other_job, n, None);
        println!("{}", row(&format!("sluice: backlog, 1 s batches, [memory] budget = \"{OTHER_BUDGET}\""), &other));
        if std::env::var_os("SLUICE_BENCH_SKIP_STREAMS").is_some() {
            return;
        }
        // Kafka Streams on the same backlog (it runs until it has processed every click).
        let streams = kafka_streams(&broker.addr, &topic, &["--expect", &n.to_string(), "--threads", "1"], None);
        let ours = backlog.unwrap();
        println!(
            "| Kafka Streams 4.4: backlog | {n} | {:.0} | {:.3} | {:.0} | - | - |",
            streams.clicks_per_s,
            streams.cpu_s * 1e6 / n as f64,
            streams.peak_rss_mib
        );
        println!();
        for (settings, ours) in [("default settings", &ours), (OTHER_BUDGET, &other)] {
            println!(
                "sluice run ({settings}) / Kafka Streams on the backlog: {:.1}x the clicks/s, {:.3} of the peak RSS",
                ours.clicks as f64 / ours.wall_s / streams.clicks_per_s.max(1.0),
                ours.peak_rss_mib / streams.peak_rss_mib.max(1.0)
            );
        }
    });
}
