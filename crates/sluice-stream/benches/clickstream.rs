//! The clickstream job on 1,000,000 clicks over 8 partitions (`SLUICE_BENCH_RECORDS`), against
//! Tansu started here, beside a hand-written loop over a plain sluice-client consumer that
//! computes the same results (what a user would write without the engine: split on commas,
//! count per window and item in hash maps, keep sessions in a hash map), in the same run.
//!
//! - **Throughput:** the whole backlog as fast as the job goes (rate cap 5 M/s), in 100 ms and
//!   1 s batches: records/s, the ratio to the hand-written loop, client CPU per record, peak RSS,
//!   checkpoint bytes per batch (target: at least 1,000,000 clicks/s).
//! - **Latency:** the same input read at 1,000,000 clicks/s (the rate cap) in 100 ms and 1 s
//!   batches, and at 500,000 clicks/s in 100 ms batches: each batch's latency from when it was
//!   due to its commit, p50 and p99 after the first batch (target: p99 under the interval +
//!   50 ms).
//!
//! `cargo bench -p sluice-stream --bench clickstream` (`SLUICE_BENCH_VERBOSE=1` prints each batch's
//! progress record; `SLUICE_BENCH_ENGINE_ONLY=RATE` runs only the job, at RATE clicks/s, for
//! profiling)

#![allow(clippy::print_stdout, clippy::unwrap_used)]

#[path = "../../sluice-client/tests/common/mod.rs"]
mod common;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use common::{cpu_s, percentile, Tansu};
use sluice_client::{
    Client, ClientConfig, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord, StartAt,
};
use sluice_scheduler::{BatchProgress, RateLimits};
use sluice_stream::clickstream::{self, ClickGenerator, ClickstreamConfig, GeneratorConfig, TopItem, UserSession};
use sluice_stream::{BatchInfo, ForEach, StreamConfig, StreamingContext};

const PARTITIONS: i32 = 8;
const TOPIC: &str = "clicks";

fn records() -> usize {
    std::env::var("SLUICE_BENCH_RECORDS").ok().and_then(|n| n.parse().ok()).unwrap_or(1_000_000)
}

/// Resets the peak resident set size (Linux 4.0+).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident set size since the last reset, MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// 100,000 users and 10,000 items; 10,000 clicks per second of event time (100 s for 1 M).
async fn produce(client: &Client, n: usize) {
    let generator =
        GeneratorConfig { users: 100_000, items: 10_000, clicks_per_second: 10_000.0, ..GeneratorConfig::default() };
    let producer = Producer::new(client.clone(), ProducerConfig::default()).await.unwrap();
    for click in ClickGenerator::new(generator).take(n) {
        let user: i32 = click.user.trim_start_matches("user-").parse().unwrap();
        let record = ProducerRecord { partition: Some(user % PARTITIONS), ..click.to_record(TOPIC) };
        drop(producer.send(record).await.unwrap());
    }
    producer.flush().await;
}

/// The job's results by hand over a plain consumer: top items of each window closed by the
/// watermark (per partition, least of them), and sessions (timed out by batch count here,
/// which never happens in a run this short, as in the job). Returns (wall s, CPU s, windows).
async fn by_hand(client: &Client, n: usize, config: &ClickstreamConfig) -> (f64, f64, usize) {
    let (start, cpu) = (Instant::now(), cpu_s());
    let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default());
    for partition in 0..PARTITIONS {
        consumer.assign(TOPIC, partition, StartAt::Earliest).await.unwrap();
    }
    let (length, slide) = (config.window.as_millis() as i64, config.slide.as_millis() as i64);
    let lateness = config.allowed_lateness.as_millis() as i64;
    let mut windows: HashMap<i64, HashMap<String, u64>> = HashMap::new();
    let mut sessions: HashMap<String, (u64, VecDeque<String>, i64)> = HashMap::new();
    let mut max_per_partition: HashMap<i32, i64> = HashMap::new();
    let mut published = 0;
    let mut seen = 0;
    while seen < n {
        for part in consumer.poll().await.unwrap() {
            for record in part.records() {
                seen += 1;
                let Some(line) = record.value().and_then(|v| std::str::from_utf8(v).ok()) else { continue };
                let mut fields = line.split(',');
                let (Some(user), Some(item), Some(time)) = (fields.next(), fields.next(), fields.next()) else {
                    continue;
                };
                let Ok(time) = time.parse::<i64>() else { continue };
                let max = max_per_partition.entry(part.partition).or_insert(time);
                *max = (*max).max(time);
                let mut window = time - time.rem_euclid(slide);
                while window > time - length {
                    *windows.entry(window).or_default().entry(item.to_owned()).or_default() += 1;
                    window -= slide;
                }
                let session = sessions.entry(user.to_owned()).or_default();
                session.0 += 1;
                session.1.retain(|i| i != item);
                session.1.push_back(item.to_owned());
                if session.1.len() > config.recent_items {
                    session.1.pop_front();
                }
                session.2 = time;
            }
        }
        if max_per_partition.len() < PARTITIONS as usize {
            continue;
        }
        let watermark = max_per_partition.values().min().copied().unwrap_or(i64::MIN) - lateness;
        let closed: Vec<i64> = windows.keys().copied().filter(|w| w + length <= watermark).collect();
        for window in closed {
            let counts = windows.remove(&window).unwrap();
            let mut items: Vec<(String, u64)> = counts.into_iter().collect();
            items.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            items.truncate(config.top);
            published += 1;
        }
    }
    (start.elapsed().as_secs_f64(), cpu_s() - cpu, published)
}

struct EngineRun {
    wall_s: f64,
    cpu_s: f64,
    peak_rss_mib: f64,
    windows: usize,
    progress: Vec<BatchProgress>,
}

/// The clickstream job over the whole input, reading at most `rate` clicks/s.
async fn engine(broker: &str, n: usize, interval: Duration, rate: f64, config: &ClickstreamConfig) -> EngineRun {
    let dir = tempfile::tempdir().unwrap();
    let mut stream = StreamConfig::new([broker], [TOPIC], interval, dir.path().join("checkpoint"));
    stream.scheduler.limits =
        RateLimits { max_per_partition: Some(rate / f64::from(PARTITIONS)), min_per_partition: 0.0 };
    stream.scheduler.min_partitions = 8;
    let ctx = StreamingContext::new(stream);
    let windows = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&windows);
    clickstream::build(
        ctx.kafka_stream(),
        config,
        ForEach(move |_: &BatchInfo, items: Vec<TopItem>| {
            counted.fetch_add(items.iter().filter(|i| i.rank == 1).count(), std::sync::atomic::Ordering::Relaxed);
            Ok(())
        }),
        ForEach(|_: &BatchInfo, _: Vec<UserSession>| Ok(())),
    );
    let stop = ctx.stop_handle();
    reset_peak_rss();
    let (start, cpu) = (Instant::now(), cpu_s());
    let mut progress = Vec::new();
    let mut rows = 0u64;
    ctx.run(|p| {
        rows += p.num_input_rows;
        progress.push(p.clone());
        if std::env::var_os("SLUICE_BENCH_VERBOSE").is_some() {
            println!("{}", p.to_json());
        }
        if rows >= n as u64 {
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    })
    .await
    .unwrap();
    EngineRun {
        wall_s: start.elapsed().as_secs_f64(),
        cpu_s: cpu_s() - cpu,
        peak_rss_mib: peak_rss_mib(),
        windows: windows.load(std::sync::atomic::Ordering::Relaxed),
        progress,
    }
}

/// Each batch's latency, ms, in batch order: from when it was due (the first batch's start plus
/// a whole number of intervals) to its commit.
fn latencies(progress: &[BatchProgress], interval: Duration) -> Vec<f64> {
    let interval = interval.as_millis() as u64;
    let Some(first) = progress.first() else { return Vec::new() };
    progress
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let due = first.timestamp_ms + i as u64 * interval;
            (p.timestamp_ms + p.durations.total_ms).saturating_sub(due) as f64
        })
        .collect()
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let n = records();
        let tansu = Tansu::start();
        let client = Client::connect(ClientConfig::new([tansu.addr.as_str()])).await.unwrap();
        client.create_topic(TOPIC, PARTITIONS, 1).await.unwrap();
        println!("clickstream job against Tansu 0.6.0 on {}: {n} clicks over {PARTITIONS} partitions", tansu.addr);
        produce(&client, n).await;
        let config = ClickstreamConfig::default();

        if let Some(rate) = std::env::var("SLUICE_BENCH_ENGINE_ONLY").ok().and_then(|r| r.parse::<f64>().ok()) {
            // Profiling aid: the job alone, reading at `rate` clicks/s in 100 ms batches.
            let run = engine(&tansu.addr, n, Duration::from_millis(100), rate, &config).await;
            println!("engine only: {:.0} clicks/s, {:.3} us CPU/click", n as f64 / run.wall_s, run.cpu_s * 1e6 / n as f64);
            return;
        }
        reset_peak_rss();
        let (hand_s, hand_cpu, hand_windows) = by_hand(&client, n, &config).await;
        let hand_rss = peak_rss_mib();
        println!("\n## Throughput (backlog, rate cap 5 M/s)\n");
        println!("| run | clicks/s | vs by hand | windows published | batches | client CPU us/click | peak RSS MiB | checkpoint bytes/batch |");
        println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
        println!(
            "| by hand over a plain sluice-client consumer | {:.0} | 1.00x | {hand_windows} | - | {:.3} | {hand_rss:.0} | - |",
            n as f64 / hand_s,
            hand_cpu * 1e6 / n as f64
        );
        for interval in [Duration::from_millis(100), Duration::from_secs(1)] {
            let run = engine(&tansu.addr, n, interval, 5_000_000.0, &config).await;
            let batches = run.progress.len();
            let checkpoint: u64 = run.progress.iter().map(|p| p.checkpoint_bytes).sum();
            println!(
                "| sluice-stream, {} ms batches | {:.0} | {:.2}x | {} | {batches} | {:.3} | {:.0} | {:.0} |",
                interval.as_millis(),
                n as f64 / run.wall_s,
                hand_s / run.wall_s,
                run.windows,
                run.cpu_s * 1e6 / n as f64,
                run.peak_rss_mib,
                checkpoint as f64 / batches.max(1) as f64
            );
        }
        println!("\nvs by hand = the hand-written loop's wall time / the job's (both read the same topic from Tansu on this machine)");

        println!("\n## Latency (the input read at a given rate)\n");
        println!("Each batch's latency runs from when it was due to its commit. The first batch also opens the checkpoint log, looks the partitions up and opens the read connections: it is shown apart, and the percentiles are over the batches after it.\n");
        println!("| rate clicks/s | interval | batches | clicks/batch | first batch ms | latency p50 ms | latency p99 ms | target p99 ms |");
        println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
        for (rate, interval) in [
            (1_000_000.0, Duration::from_millis(100)),
            (500_000.0, Duration::from_millis(100)),
            (1_000_000.0, Duration::from_secs(1)),
        ] {
            let run = engine(&tansu.addr, n, interval, rate, &config).await;
            let latency = latencies(&run.progress, interval);
            let first = latency.first().copied().unwrap_or(0.0);
            let mut after_first: Vec<f64> = latency.iter().skip(1).copied().collect();
            after_first.sort_by(f64::total_cmp);
            let busy: Vec<&BatchProgress> = run.progress.iter().filter(|p| p.num_input_rows > 0).collect();
            let per_batch = busy.iter().map(|p| p.num_input_rows).sum::<u64>() as f64 / busy.len().max(1) as f64;
            println!(
                "| {rate:.0} | {} ms | {} | {per_batch:.0} | {first:.0} | {:.0} | {:.0} | {} |",
                interval.as_millis(),
                run.progress.len(),
                percentile(&after_first, 0.5),
                percentile(&after_first, 0.99),
                interval.as_millis() + 50
            );
        }
    });
}
