//! The clickstream job on 1,000,000 clicks over 8 partitions (`SLUICE_BENCH_RECORDS`), against
//! a broker started here (Apache Kafka 4.4, or Tansu with `SLUICE_TEST_BROKER=tansu`), beside a
//! hand-written loop over a plain sluice-client consumer that computes the same results (what a
//! user would write without the engine: split on commas, count per window and item in hash maps,
//! keep sessions in a hash map), and beside the engine a Kafka user would pick instead: the same
//! query as a Kafka Streams 4.4 application (`scripts/peers/java/ClickstreamStreams.java`), on the
//! same broker and input, in the same run.
//!
//! - **Throughput:** the whole backlog as fast as the job goes (rate cap 5 M/s), in 100 ms and
//!   1 s batches: records/s, the ratio to the hand-written loop, client CPU per record, peak RSS,
//!   checkpoint bytes per batch (target: at least 1,000,000 clicks/s).
//! - **Latency:** the same input read at 1,000,000 clicks/s (the rate cap) in 100 ms and 1 s
//!   batches, and at 500,000 clicks/s in 100 ms batches: each batch's latency from when it was
//!   due to its commit, p50 and p99 after the first batch (target: p99 under the interval +
//!   50 ms).
//!
//! - **Against Kafka Streams:** the backlog read by each (clicks/s, CPU, peak RSS of the whole
//!   process), then live input at 10,000 clicks/s with event time = wall time for 100 s, each
//!   window's top items published how long after the window closed (window end + 5 s lateness).
//!   Goals: at least 5x its clicks/s, at most 1/10 of its peak RSS, its latency or better.
//!   (`SLUICE_BENCH_SKIP_STREAMS=1` leaves this part out.)
//! - **Scale-out mode** (Apache Kafka): the backlog in 1 s batches by one process with and
//!   without `[scale]` (a group of one: transactions, changelogs, the repartition by item and
//!   the two-stage top-k), and the ratios (goal: at least 0.75x) over the batches reading the
//!   clicks, over every batch's own time to the last window (the busy time: in scale-out mode
//!   the repartition and top-k records are read after the clicks), and end to end.
//!
//! `cargo bench -p sluice-stream --bench clickstream` (`SLUICE_BENCH_VERBOSE=1` prints each batch's
//! progress record; `SLUICE_BENCH_ENGINE_ONLY=RATE` runs only the job, at RATE clicks/s, for
//! profiling; `SLUICE_BENCH_MEMORY_BUDGET=BYTES` sets the job's memory budget, 0 for none;
//! `SLUICE_BENCH_SCALE_ONLY=1` runs only the scale-out comparison)

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use sluice_testkit as common;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use common::streams::kafka_streams;
use common::{cpu_s, percentile, Broker};
use sluice_client::{
    Client, ClientConfig, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord, StartAt,
};
use sluice_scheduler::{BatchProgress, RateLimits, ScaleConfig};
use sluice_stream::clickstream::{
    self, Click, ClickGenerator, ClickstreamConfig, GeneratorConfig, TopItem, UserSession,
};
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

/// The clicks: 100,000 users and 10,000 items; 10,000 clicks per second of event time (100 s
/// for 1 M).
fn generator() -> ClickGenerator {
    let mut config = GeneratorConfig::default();
    config.users = 100_000;
    config.items = 10_000;
    config.clicks_per_second = 10_000.0;
    ClickGenerator::new(config)
}

/// A user's clicks go to one partition.
fn partition_of(click: &Click) -> i32 {
    click.user.trim_start_matches("user-").parse::<i32>().unwrap() % PARTITIONS
}

/// Writes the `n` clicks to `topic`; with `flush`, then one click per partition ten minutes of
/// event time later, which closes every window (Kafka Streams publishes a window only once a
/// later event time comes).
async fn produce(client: &Client, topic: &str, n: usize, flush: bool) {
    let producer = Producer::new(client.clone(), ProducerConfig::default()).await.unwrap();
    let mut last = 0;
    for click in generator().take(n) {
        last = click.time_ms;
        let record = ProducerRecord { partition: Some(partition_of(&click)), ..click.to_record(topic) };
        drop(producer.send(record).await.unwrap());
    }
    if flush {
        for partition in 0..PARTITIONS {
            let click = Click { user: "flush".into(), item: "flush".into(), time_ms: last + 600_000 };
            drop(producer.send(ProducerRecord { partition: Some(partition), ..click.to_record(topic) }).await.unwrap());
        }
    }
    producer.flush().await.unwrap();
}

/// The job's results by hand over a plain consumer: top items of each window closed by the
/// watermark (per partition, least of them), and sessions (timed out by batch count here,
/// which never happens in a run this short, as in the job). Returns (wall s, CPU s, windows).
async fn by_hand(client: &Client, topic: &str, n: usize, config: &ClickstreamConfig) -> (f64, f64, usize) {
    let (start, cpu) = (Instant::now(), cpu_s());
    let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default());
    for partition in 0..PARTITIONS {
        consumer.assign(topic, partition, StartAt::Earliest).await.unwrap();
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

/// The clickstream job over the whole input of `topic`, reading at most `rate` clicks/s.
async fn engine(
    broker: &str,
    topic: &str,
    n: usize,
    interval: Duration,
    rate: f64,
    config: &ClickstreamConfig,
) -> EngineRun {
    engine_until(broker, topic, (interval, rate, None), config, |rows, _, _| rows >= n as u64, |_| {}).await
}

/// The clickstream job on `topic` (in batches of `interval`, at most `rate` clicks/s, in
/// scale-out mode with `group`) until `done(rows read, windows published, elapsed)`;
/// `published` sees each window's end as its top items are handed to the sink.
async fn engine_until(
    broker: &str,
    topic: &str,
    (interval, rate, group): (Duration, f64, Option<&str>),
    config: &ClickstreamConfig,
    mut done: impl FnMut(u64, usize, Duration) -> bool,
    published: impl Fn(i64) + Send + Sync + 'static,
) -> EngineRun {
    let dir = tempfile::tempdir().unwrap();
    let mut stream = StreamConfig::new([broker], [topic], interval, dir.path().join("checkpoint"));
    stream.scheduler.scale = group.map(ScaleConfig::new);
    stream.scheduler.limits =
        RateLimits { max_per_partition: Some(rate / f64::from(PARTITIONS)), min_per_partition: 0.0 };
    stream.scheduler.min_partitions = 8;
    if let Some(budget) = std::env::var("SLUICE_BENCH_MEMORY_BUDGET").ok().and_then(|b| b.parse().ok()) {
        stream = stream.with_memory_budget(budget);
    }
    let ctx = StreamingContext::new(stream);
    let windows = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&windows);
    clickstream::build(
        ctx.kafka_stream(),
        config,
        ForEach(move |_: &BatchInfo, items: Vec<TopItem>| {
            for first in items.iter().filter(|i| i.rank == 1) {
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                published(first.window_end_ms);
            }
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
        if done(rows, windows.load(std::sync::atomic::Ordering::Relaxed), start.elapsed()) {
            stop.cancel();
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
        let broker = Broker::start_for_benchmark();
        let client = Client::connect(ClientConfig::new([broker.addr.as_str()])).await.unwrap();
        client.create_topic(TOPIC, PARTITIONS, 1).await.unwrap();
        println!("clickstream job against {} on {}: {n} clicks over {PARTITIONS} partitions", broker.kind.name(), broker.addr);
        produce(&client, TOPIC, n, false).await;
        let config = ClickstreamConfig::default();

        if std::env::var_os("SLUICE_BENCH_SCALE_ONLY").is_some() {
            scale_out_cost(&broker.addr, n, &config).await;
            return;
        }
        if let Some(rate) = std::env::var("SLUICE_BENCH_ENGINE_ONLY").ok().and_then(|r| r.parse::<f64>().ok()) {
            // Profiling aid: the job alone, reading at `rate` clicks/s in 100 ms batches.
            let run = engine(&broker.addr, TOPIC, n, Duration::from_millis(100), rate, &config).await;
            println!("engine only: {:.0} clicks/s, {:.3} us CPU/click", n as f64 / run.wall_s, run.cpu_s * 1e6 / n as f64);
            return;
        }
        reset_peak_rss();
        let (hand_s, hand_cpu, hand_windows) = by_hand(&client, TOPIC, n, &config).await;
        let hand_rss = peak_rss_mib();
        println!("\n## Throughput (backlog, rate cap 5 M/s)\n");
        println!("| run | clicks/s | vs by hand | windows published | batches | client CPU us/click | peak RSS MiB | checkpoint bytes/batch |");
        println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
        println!(
            "| by hand over a plain sluice-client consumer | {:.0} | 1.00x | {hand_windows} | - | {:.3} | {hand_rss:.0} | - |",
            n as f64 / hand_s,
            hand_cpu * 1e6 / n as f64
        );
        let mut backlog_100ms = None;
        for interval in [Duration::from_millis(100), Duration::from_secs(1)] {
            let run = engine(&broker.addr, TOPIC, n, interval, 5_000_000.0, &config).await;
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
            if interval == Duration::from_millis(100) {
                backlog_100ms = Some((n as f64 / run.wall_s, run.cpu_s, run.peak_rss_mib));
            }
        }
        println!("\nvs by hand = the hand-written loop's wall time / the job's (both read the same topic from the same broker on this machine)");

        println!("\n## Latency (the input read at a given rate)\n");
        println!("Each batch's latency runs from when it was due to its commit. The first batch also opens the checkpoint log, looks the partitions up and opens the read connections: it is shown apart, and the percentiles are over the batches after it.\n");
        println!("| rate clicks/s | interval | batches | clicks/batch | first batch ms | latency p50 ms | latency p99 ms | target p99 ms |");
        println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
        for (rate, interval) in [
            (1_000_000.0, Duration::from_millis(100)),
            (500_000.0, Duration::from_millis(100)),
            (1_000_000.0, Duration::from_secs(1)),
        ] {
            let run = engine(&broker.addr, TOPIC, n, interval, rate, &config).await;
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

        if broker.kind == common::Kind::Kafka {
            scale_out_cost(&broker.addr, n, &config).await;
        }
        if broker.kind == common::Kind::Kafka && std::env::var_os("SLUICE_BENCH_SKIP_STREAMS").is_none() {
            against_kafka_streams(&client, &broker.addr, n, &config, backlog_100ms.unwrap()).await;
        }
    });
}

/// The backlog read by one process with and without scale-out mode, in 1 s batches: what the
/// transactions, the changelogs (sessions, watermarks, windows, markers, the top-k merge), the
/// repartition by item and the two-stage top-k cost. Three rates each: over the batches that
/// read the clicks (from the first batch's start to the end of the one that read the last
/// click); over the busy time, every batch's own time added up to the last window published
/// (in scale-out mode the batches after the clicks read the repartition and top-k records, and
/// a transaction spanning the backlog's batches makes them visible only at its end); and end
/// to end (from opening the job, joining the group and the waits between batches included, to
/// the last window published). The scale-out run counts as done once it has published the
/// windows the other did.
async fn scale_out_cost(broker: &str, n: usize, config: &ClickstreamConfig) {
    println!("\n## Scale-out mode, one process (1 s batches, the backlog)\n");
    println!("Round 1 meets a broker that has not yet run transactions, compacted topics or groups (its JIT compiles them as they come); round 2 runs the same again on the broker round 1 warmed.\n");
    println!("| round | run | clicks/s, batches reading the clicks | clicks/s, busy time | clicks/s, end to end | windows published | batches | client CPU us/click | peak RSS MiB |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let interval = Duration::from_secs(1);
    // From the first batch's start to the end of the batch after which no click was left.
    let reading_s = |run: &EngineRun| {
        let first = run.progress.first().map_or(0, |p| p.timestamp_ms);
        let read = run.progress.iter().find(|p| {
            let clicks = p.sources.iter().filter(|s| s.topic == TOPIC);
            p.num_input_rows > 0 && clicks.clone().count() > 0 && clicks.clone().all(|s| s.lag == 0)
        });
        read.map_or(run.wall_s, |p| (p.timestamp_ms + p.durations.total_ms - first) as f64 / 1000.0)
    };
    // Every batch's own time, to the last window published (the batches after the clicks
    // included: in scale-out mode they read the repartition and top-k topics), without the
    // waits between batches.
    let busy_s = |run: &EngineRun| run.progress.iter().map(|p| p.durations.total_ms).sum::<u64>() as f64 / 1000.0;
    let mut ratios = Vec::new();
    for round in 1..=2 {
        let off =
            engine_until(broker, TOPIC, (interval, 5_000_000.0, None), config, |rows, _, _| rows >= n as u64, |_| {})
                .await;
        let group = common::unique("clickstream-scale");
        let (want, limit) = (off.windows, Duration::from_secs_f64((off.wall_s * 10.0).max(60.0)));
        let on = engine_until(
            broker,
            TOPIC,
            (interval, 5_000_000.0, Some(&group)),
            config,
            |_, windows, elapsed| windows >= want || elapsed > limit,
            |_| {},
        )
        .await;
        for (name, run) in [("scale-out off", &off), ("scale-out on (a group of one)", &on)] {
            println!(
                "| {round} | {name} | {:.0} | {:.0} | {:.0} | {} | {} | {:.3} | {:.0} |",
                n as f64 / reading_s(run),
                n as f64 / busy_s(run),
                n as f64 / run.wall_s,
                run.windows,
                run.progress.len(),
                run.cpu_s * 1e6 / n as f64,
                run.peak_rss_mib
            );
        }
        let complete = if on.windows >= want { "" } else { " (INCOMPLETE: stopped after the time limit)" };
        ratios.push(format!(
            "round {round}: {:.2}x the clicks/s over the batches reading them, {:.2}x over the batches' busy time, {:.2}x end to end{complete}",
            reading_s(&off) / reading_s(&on),
            busy_s(&off) / busy_s(&on),
            off.wall_s / on.wall_s
        ));
    }
    println!("\nscale-out on / off (goal: at least 0.75x): {}", ratios.join("; "));
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Produces clicks at `rate` per second for `duration`, each with its wall-clock time as event
/// time, to `topic`.
async fn produce_live(client: &Client, topic: &str, rate: usize, duration: Duration) {
    let producer = Producer::new(client.clone(), ProducerConfig::default()).await.unwrap();
    let mut clicks = generator();
    let start = Instant::now();
    let mut sent = 0usize;
    while start.elapsed() < duration {
        let due = (start.elapsed().as_secs_f64() * rate as f64) as usize;
        let now = wall_ms();
        while sent < due {
            let click = Click { time_ms: now, ..clicks.next().unwrap() };
            let record = ProducerRecord { partition: Some(partition_of(&click)), ..click.to_record(topic) };
            drop(producer.send(record).await.unwrap());
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    producer.flush().await.unwrap();
}

/// How long after each window closed (its end plus the allowed lateness, in wall-clock time)
/// its top items were published: p50 and max, ms, and how many windows.
fn publication_delays(published: &[(i64, i64)], lateness: Duration) -> (f64, f64, usize) {
    let mut delays: Vec<f64> =
        published.iter().map(|(end, at)| (at - end - lateness.as_millis() as i64) as f64).collect();
    delays.sort_by(f64::total_cmp);
    (percentile(&delays, 0.5), delays.last().copied().unwrap_or(0.0), delays.len())
}

async fn against_kafka_streams(
    client: &Client,
    broker: &str,
    n: usize,
    config: &ClickstreamConfig,
    (sluice_rate, sluice_cpu, sluice_rss): (f64, f64, f64),
) {
    println!("\n## Against Kafka Streams 4.4 (the same query, broker and input)\n");
    // The same clicks, and a click per partition ten minutes later that closes every window.
    let input = common::unique("clicks-streams");
    client.create_topic(&input, PARTITIONS, 1).await.unwrap();
    produce(client, &input, n, true).await;
    let expect = (n + PARTITIONS as usize).to_string();
    let streams = kafka_streams(broker, &input, &["--expect", &expect, "--threads", "1"], None);
    println!("| backlog of {n} clicks | clicks/s | CPU us/click | peak RSS MiB |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| sluice-stream, 100 ms batches | {sluice_rate:.0} | {:.3} | {sluice_rss:.0} |",
        sluice_cpu * 1e6 / n as f64
    );
    println!(
        "| Kafka Streams 4.4 (1 thread, at_least_once, JVM -Xmx1g; its own timing, start-up left out) | {:.0} | {:.3} | {:.0} |",
        streams.clicks_per_s,
        streams.cpu_s * 1e6 / n as f64,
        streams.peak_rss_mib
    );
    println!(
        "\nsluice / Kafka Streams: {:.1}x the clicks/s (goal >= 5x), {:.3} of the peak RSS (goal <= 0.1)",
        sluice_rate / streams.clicks_per_s.max(1.0),
        sluice_rss / streams.peak_rss_mib.max(1.0)
    );

    // Live: 10,000 clicks/s for 100 s, event time = wall time; each engine on a topic of its own.
    let (rate, duration) = (10_000, Duration::from_secs(100));
    let lateness = config.allowed_lateness;
    println!(
        "\n| live, {rate} clicks/s for {} s | windows published | published after the window closed, p50 ms | max ms |",
        duration.as_secs()
    );
    println!("| --- | --- | --- | --- |");
    let live = common::unique("clicks-live-sluice");
    client.create_topic(&live, PARTITIONS, 1).await.unwrap();
    let published = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = std::sync::Arc::clone(&published);
    let producing = tokio::spawn({
        let (client, live) = (client.clone(), live.clone());
        async move { produce_live(&client, &live, rate, duration).await }
    });
    let idle = duration + Duration::from_secs(10);
    let mut job_config = config.clone();
    job_config.idle_after = Duration::from_secs(10);
    engine_until(
        broker,
        &live,
        (Duration::from_millis(100), 1e9, None),
        &job_config,
        |_, _, elapsed| elapsed > idle,
        move |end| record.lock().unwrap().push((end, wall_ms())),
    )
    .await;
    producing.await.unwrap();
    let (p50, max, windows) = publication_delays(&published.lock().unwrap(), lateness);
    println!("| sluice-stream, 100 ms batches | {windows} | {p50:.0} | {max:.0} |");

    let live = common::unique("clicks-live-streams");
    client.create_topic(&live, PARTITIONS, 1).await.unwrap();
    let producing = tokio::spawn({
        let (client, live) = (client.clone(), live.clone());
        async move { produce_live(&client, &live, rate, duration).await }
    });
    let streams = kafka_streams(broker, &live, &["--threads", "1"], Some(idle));
    producing.await.unwrap();
    let (p50, max, windows) = publication_delays(&streams.published, lateness);
    println!("| Kafka Streams 4.4 (commit.interval.ms 100) | {windows} | {p50:.0} | {max:.0} |");
}
