//! The scheduler's cost, beside a plain sluice-client consume of the same topic in the same run
//! (a broker started here: Apache Kafka 4.4, or Tansu with `SLUICE_TEST_BROKER=tansu`):
//!
//! - per-batch overhead with empty input: planning (ListOffsets), the intent and commit records
//!   each synced to disk, and the bookkeeping, over 8 empty partitions;
//! - an 8-partition pass-through of 1,000,000 × 100-byte records (`SLUICE_BENCH_RECORDS`) at batch
//!   intervals of 100 ms and 1 s, catching up without waiting: records/s, batch p50/p99, client
//!   CPU per record, and the ratio to the plain consume.
//!
//! `cargo bench -p sluice-scheduler --bench scheduler` (`SLUICE_BENCH_VERBOSE=1` also prints each
//! batch's progress record, with the time of each phase)

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use sluice_testkit as common;

use std::time::{Duration, Instant};

use common::{cpu_s, percentile, Broker};
use sluice_client::{Client, ClientConfig, Consumer, ConsumerConfig, StartAt};
use sluice_scheduler::{Batch, BatchOutput, Processor, RateLimits, Scheduler, SchedulerConfig, SystemClock, Trigger};

const PARTITIONS: i32 = 8;

fn records() -> usize {
    std::env::var("SLUICE_BENCH_RECORDS").ok().and_then(|n| n.parse().ok()).unwrap_or(1_000_000)
}

/// Counts records, touching each value as a real job would.
struct Count(u64);

impl Processor for Count {
    async fn process(&mut self, mut batch: Batch) -> Result<BatchOutput, sluice_scheduler::BoxError> {
        while let Some(piece) = batch.next_piece().await? {
            for task in &piece.tasks {
                for record in task.records() {
                    self.0 += u64::from(record.value().is_some_and(|v| !v.is_empty()));
                }
            }
        }
        Ok(BatchOutput::default())
    }
}

async fn plain_consume(client: &Client, topic: &str, n: usize) -> (f64, f64) {
    let (start, cpu) = (Instant::now(), cpu_s());
    let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default());
    for partition in 0..PARTITIONS {
        consumer.assign(topic, partition, StartAt::Earliest).await.unwrap();
    }
    let mut seen = 0;
    while seen < n {
        for part in consumer.poll().await.unwrap() {
            seen += part.records().filter(|r| r.value().is_some_and(|v| !v.is_empty())).count();
        }
    }
    (start.elapsed().as_secs_f64(), cpu_s() - cpu)
}

/// A bounded pass-through run; returns wall s, CPU s and each batch's duration in ms.
async fn pass_through(client: &Client, topic: &str, n: usize, interval: Duration) -> (f64, f64, Vec<f64>) {
    let dir = tempfile::tempdir().unwrap();
    let per_partition = (n / PARTITIONS as usize) as i64;
    let ending = (0..PARTITIONS).map(|p| ((topic.to_owned(), p), per_partition)).collect();
    let mut config = SchedulerConfig::new([topic], interval);
    // 5 M records/s in all: a 100 ms batch holds 500,000 records, a 1 s batch everything.
    config.limits = RateLimits { max_per_partition: Some(625_000.0), min_per_partition: 0.0 };
    config.ending_offsets = Some(ending);
    config.min_partitions = 8;
    let (start, cpu) = (Instant::now(), cpu_s());
    let mut scheduler = Scheduler::open(client.clone(), dir.path(), config, SystemClock::new()).unwrap();
    let mut count = Count(0);
    let mut durations = Vec::new();
    let mut last = Instant::now();
    scheduler
        .run(&mut count, |progress| {
            durations.push(last.elapsed().as_secs_f64() * 1000.0);
            last = Instant::now();
            if std::env::var_os("SLUICE_BENCH_VERBOSE").is_some() {
                println!("{}", progress.to_json());
            }
        })
        .await
        .unwrap();
    assert_eq!(count.0 as usize, n, "every record passed through");
    durations.sort_by(f64::total_cmp);
    (start.elapsed().as_secs_f64(), cpu_s() - cpu, durations)
}

/// Back-to-back batches over empty partitions; returns each batch's duration in ms.
async fn empty_batches(client: &Client, topic: &str, batches: usize) -> Vec<f64> {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SchedulerConfig::new([topic], Duration::from_millis(100));
    config.trigger = Trigger::ProcessingTime(Duration::ZERO);
    let mut scheduler = Scheduler::open(client.clone(), dir.path(), config, SystemClock::new()).unwrap();
    let stop = scheduler.stop_handle();
    let mut durations = Vec::new();
    let mut last = Instant::now();
    scheduler
        .run(&mut Count(0), |_| {
            durations.push(last.elapsed().as_secs_f64() * 1000.0);
            last = Instant::now();
            if durations.len() >= batches {
                stop.cancel();
            }
        })
        .await
        .unwrap();
    // The first batch also opens the log and looks the partitions up.
    durations.remove(0);
    durations.sort_by(f64::total_cmp);
    durations
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let n = records();
        let broker = Broker::start_for_benchmark();
        let client = Client::connect(ClientConfig::new([broker.addr.as_str()])).await.unwrap();
        client.create_topic("empty", PARTITIONS, 1).await.unwrap();
        client.create_topic("flow", PARTITIONS, 1).await.unwrap();
        println!("scheduler against {} on {}, {n} records of 100 bytes, {PARTITIONS} partitions", broker.kind.name(), broker.addr);

        let empty = empty_batches(&client, "empty", 201).await;
        println!(
            "\nempty batches (plan + intent synced + commit synced), {} of them: mean {:.3} ms, p50 {:.3} ms, p99 {:.3} ms",
            empty.len(),
            empty.iter().sum::<f64>() / empty.len() as f64,
            percentile(&empty, 0.5),
            percentile(&empty, 0.99)
        );

        common::fill(&client, "flow", n, PARTITIONS).await;
        let (plain_s, plain_cpu) = plain_consume(&client, "flow", n).await;
        println!("\n| run | records/s | vs plain consume | batches | batch p50 ms | batch p99 ms | client CPU us/record |");
        println!("| --- | --- | --- | --- | --- | --- | --- |");
        println!(
            "| plain sluice-client consume | {:.0} | 1.00x | - | - | - | {:.3} |",
            n as f64 / plain_s,
            plain_cpu * 1e6 / n as f64
        );
        for interval in [Duration::from_millis(100), Duration::from_secs(1)] {
            let (wall, cpu, durations) = pass_through(&client, "flow", n, interval).await;
            println!(
                "| scheduler, {} ms batches | {:.0} | {:.2}x | {} | {:.1} | {:.1} | {:.3} |",
                interval.as_millis(),
                n as f64 / wall,
                plain_s / wall,
                durations.len(),
                percentile(&durations, 0.5),
                percentile(&durations, 0.99),
                cpu * 1e6 / n as f64
            );
        }
        println!("\nvs plain consume = the plain consume's wall time / the scheduler's (target: at least 0.8x)");
    });
}
