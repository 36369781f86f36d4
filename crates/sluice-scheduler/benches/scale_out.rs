//! What scale-out mode costs one process: the same copy job (every record of an 8-partition
//! topic written to an output topic) run by one scheduler in one run, three ways, on a broker
//! started here (Apache Kafka 4.4; scale-out needs transactions and consumer groups):
//!
//! - **idempotent**: no scale-out, the output written with an idempotent producer (at least once);
//! - **transactional**: no scale-out, each batch's output in a transaction of the job's own,
//!   committed with a marker offset (what a transactional Kafka sink does: exactly once, one
//!   process);
//! - **scale-out**: `SchedulerConfig::scale`, a group of one member, each batch's output and
//!   source offsets in the batch's transaction, read_committed.
//!
//! It prints records/s for each and the ratio of scale-out to the others (goal: at least 0.75x of
//! the single-process run).
//!
//! Then failover: two scale-out processes share a topic that keeps receiving records, and one is
//! dropped mid-run (a crash: no leave, its transaction left open). It prints how long until the
//! survivor has taken the dead process's partitions (the group's session timeout, then the wait
//! for the dead process's open transaction to be aborted) and until it has committed a batch of
//! their records (there is no state to restore yet).
//!
//! `cargo bench -p sluice-scheduler --bench scale_out` (`SLUICE_BENCH_RECORDS`, default 500,000)

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use sluice_testkit as common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{cpu_s, unique, Broker, Kind};
use sluice_client::{Client, ClientConfig, ConsumerGroupMetadata, Producer, ProducerConfig, ProducerRecord};
use sluice_scheduler::{
    Batch, BatchOutput, Processor, RateLimits, ScaleConfig, Scheduler, SchedulerConfig, SystemClock,
};

const PARTITIONS: i32 = 8;

fn records() -> usize {
    std::env::var("SLUICE_BENCH_RECORDS").ok().and_then(|n| n.parse().ok()).unwrap_or(500_000)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Idempotent,
    Transactional,
    ScaleOut,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Idempotent => "one process, idempotent output (at least once)",
            Mode::Transactional => "one process, a transaction per batch (exactly once)",
            Mode::ScaleOut => "scale-out, a group of one (exactly once)",
        }
    }
}

/// Copies every record to `output`: through the batch's transaction (scale-out), or a producer
/// of its own.
struct Copy {
    output: String,
    own: Option<Arc<Producer>>,
    transactional: bool,
    copied: usize,
}

impl Processor for Copy {
    async fn process(&mut self, mut batch: Batch) -> Result<BatchOutput, sluice_scheduler::BoxError> {
        let producer = match (batch.transaction(), &self.own) {
            (Some(transaction), _) => Arc::clone(transaction),
            (None, Some(own)) => Arc::clone(own),
            // Scale-out gives a batch with nothing to read no transaction.
            (None, None) => {
                while let Some(piece) = batch.next_piece().await? {
                    if piece.record_count() > 0 {
                        return Err("records in a scale-out batch without a transaction".into());
                    }
                }
                return Ok(BatchOutput::default());
            }
        };
        let own_transaction = self.transactional && batch.transaction().is_none();
        if own_transaction {
            producer.begin_transaction().await?;
        }
        let mut last = None;
        while let Some(piece) = batch.next_piece().await? {
            for task in &piece.tasks {
                for record in task.records() {
                    let value = record.value().map(<[u8]>::to_vec).unwrap_or_default();
                    let record = ProducerRecord {
                        partition: Some(task.range.partition),
                        ..ProducerRecord::new(&self.output, value)
                    };
                    last = Some(producer.send(record).await?);
                    self.copied += 1;
                }
            }
        }
        if own_transaction {
            let marker = [(self.output.clone(), 0, i64::try_from(batch.batch_id + 1)?)];
            producer.send_offsets_to_transaction(&marker, &ConsumerGroupMetadata::new("bench-markers")).await?;
            producer.commit_transaction().await?;
        } else if batch.transaction().is_none() {
            // Acknowledged before the batch commits (batches are acknowledged whole, in order
            // per partition: the last is enough for a bench).
            producer.flush().await?;
            drop(last);
        }
        Ok(BatchOutput::default())
    }
}

/// One run of the copy job over the whole input: wall s (from opening the scheduler: joining the
/// group included), wall s after the first batch with records (steady state: records/s over the
/// rest), the records of that batch, and CPU s.
async fn copy(client: &Client, input: &str, n: usize, mode: Mode) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let output = unique("copy-out");
    client.create_topic(&output, PARTITIONS, 1).await.unwrap();
    let mut config = SchedulerConfig::new([input], Duration::from_secs(1));
    config.limits = RateLimits { max_per_partition: Some(625_000.0), min_per_partition: 0.0 };
    config.min_partitions = 8;
    let own = match mode {
        Mode::ScaleOut => {
            let mut scale = ScaleConfig::new(unique("copy-group"));
            scale.protocol = sluice_client::GroupProtocol::Consumer;
            config.scale = Some(scale);
            None
        }
        Mode::Idempotent | Mode::Transactional => {
            let per_partition = (n / PARTITIONS as usize) as i64;
            config.ending_offsets = Some((0..PARTITIONS).map(|p| ((input.to_owned(), p), per_partition)).collect());
            let mut producer = ProducerConfig::default();
            if mode == Mode::Transactional {
                producer.transactional_id = Some(unique("copy-txn"));
            }
            Some(Arc::new(Producer::new(client.clone(), producer).await.unwrap()))
        }
    };
    let (start, cpu) = (Instant::now(), cpu_s());
    let mut scheduler = Scheduler::open(client.clone(), dir.path(), config, SystemClock::new()).unwrap();
    let stop = scheduler.stop_handle();
    let mut processor = Copy { output, own, transactional: mode == Mode::Transactional, copied: 0 };
    // Scale-out runs unbounded (ending offsets are refused with it): stopped once every record
    // has gone through a committed batch.
    let mut read = 0u64;
    let mut first: Option<(Instant, u64)> = None;
    // A transaction spanning batches counts once the batch that ends it commits.
    let mut in_open_transaction = 0u64;
    scheduler
        .run(&mut processor, |progress| {
            in_open_transaction += progress.num_input_rows;
            let rows = if progress.transaction_open { 0 } else { std::mem::take(&mut in_open_transaction) };
            if !progress.transaction_open && !progress.aborted {
                read += rows;
            }
            // The steady rate is over the batches after the first that read records, whether or
            // not that one ended its transaction.
            if progress.num_input_rows > 0 && first.is_none() {
                first = Some((Instant::now(), progress.num_input_rows));
            }
            if read as usize >= n {
                stop.cancel();
            }
        })
        .await
        .unwrap();
    assert_eq!(processor.copied, n, "every record copied once");
    let (first_at, first_rows) = first.unwrap_or((start, 0));
    Run {
        wall: start.elapsed().as_secs_f64(),
        steady: first_at.elapsed().as_secs_f64(),
        steady_records: n - first_rows as usize,
        cpu: cpu_s() - cpu,
    }
}

struct Run {
    wall: f64,
    steady: f64,
    steady_records: usize,
    cpu: f64,
}

/// A scale-out process for the failover run: its task, and the partitions each of its batches
/// planned and read, with when.
struct Member {
    run: tokio::task::JoinHandle<()>,
    seen: Seen,
}

/// When each committed batch ended, and the records it read per partition.
type Seen = Arc<std::sync::Mutex<Vec<(Instant, Vec<(i32, i64)>)>>>;

fn member(client: &Client, (input, output): (&str, &str), group: &str, dir: &std::path::Path) -> Member {
    let output = output.to_owned();
    let mut config = SchedulerConfig::new([input], Duration::from_millis(200));
    let mut scale = ScaleConfig::new(group);
    scale.protocol = sluice_client::GroupProtocol::Consumer;
    config.scale = Some(scale);
    let mut scheduler = Scheduler::open(client.clone(), dir, config, SystemClock::new()).unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let noted = Arc::clone(&seen);
    let run = tokio::spawn(async move {
        let mut processor = Copy { output, own: None, transactional: false, copied: 0 };
        // A transaction spanning batches is noted once the batch that ends it commits.
        let mut in_open_transaction: Vec<(i32, i64)> = Vec::new();
        let note = move |progress: &sluice_scheduler::BatchProgress| {
            in_open_transaction.extend(progress.sources.iter().map(|s| (s.partition, s.end_offset - s.start_offset)));
            if progress.transaction_open {
                return;
            }
            let read = std::mem::take(&mut in_open_transaction);
            if !progress.aborted {
                noted.lock().unwrap().push((Instant::now(), read));
            }
        };
        scheduler.run(&mut processor, note).await.unwrap();
    });
    Member { run, seen }
}

/// Two processes, one dropped: (to the partitions taken over, to a committed batch of theirs).
async fn failover(client: &Client) -> (Duration, Duration) {
    let (input, output, group) = (unique("failover-in"), unique("failover-out"), unique("failover-group"));
    client.create_topic(&input, PARTITIONS, 1).await.unwrap();
    client.create_topic(&output, PARTITIONS, 1).await.unwrap();
    let flowing = {
        let (client, input) = (client.clone(), input.clone());
        tokio::spawn(async move {
            let producer = Producer::new(client, ProducerConfig::default()).await.unwrap();
            for i in 0u64.. {
                let partition = Some((i % PARTITIONS as u64) as i32);
                drop(
                    producer
                        .send(ProducerRecord { partition, ..ProducerRecord::new(&input, vec![b'x'; 100]) })
                        .await
                        .unwrap(),
                );
                if i % 1_000 == 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        })
    };
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let survivor = member(client, (&input, &output), &group, dirs[0].path());
    let dying = member(client, (&input, &output), &group, dirs[1].path());
    // Both at work: the dying process's last batches name its partitions.
    let deadline = Instant::now() + Duration::from_secs(60);
    let dying_partitions: Vec<i32> = loop {
        let last = dying.seen.lock().unwrap().last().map(|(_, read)| read.iter().map(|(p, _)| *p).collect::<Vec<_>>());
        match last {
            Some(partitions) if !partitions.is_empty() && partitions.len() < PARTITIONS as usize => break partitions,
            _ => {}
        }
        assert!(Instant::now() < deadline, "the two processes never shared the partitions");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    dying.run.abort();
    let died = Instant::now();
    let (mut taken, mut processed) = (None, None);
    let deadline = died + Duration::from_secs(120);
    while processed.is_none() {
        for (at, read) in survivor.seen.lock().unwrap().iter().filter(|(at, _)| *at > died) {
            let theirs: Vec<&(i32, i64)> = read.iter().filter(|(p, _)| dying_partitions.contains(p)).collect();
            if theirs.len() == dying_partitions.len() {
                taken.get_or_insert(*at);
                if theirs.iter().any(|(_, n)| *n > 0) {
                    processed.get_or_insert(*at);
                }
            }
        }
        assert!(Instant::now() < deadline, "the survivor never took the dead process's partitions");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    flowing.abort();
    survivor.run.abort();
    let (taken, processed) = (taken.unwrap_or(died), processed.unwrap_or(died));
    (taken - died, processed - taken)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        if common::kind() == Kind::Tansu {
            println!("scale-out bench: SKIPPED on Tansu (no consumer group protocol, no aborted-record filtering)");
            return;
        }
        let n = records();
        let broker = Broker::start_for_benchmark();
        let client = Client::connect(ClientConfig::new([broker.addr.as_str()])).await.unwrap();
        let input = unique("copy-in");
        client.create_topic(&input, PARTITIONS, 1).await.unwrap();
        common::fill(&client, &input, n, PARTITIONS).await;
        println!("scale-out cost, one process, {n} records of 100 bytes copied from {PARTITIONS} partitions to {PARTITIONS}, 1 s batches, Apache Kafka on {}", broker.addr);
        println!("\n| run | records/s, whole run | records/s after the first batch | client CPU us/record |");
        println!("| --- | --- | --- | --- |");
        let mut rates = Vec::new();
        for mode in [Mode::Idempotent, Mode::Transactional, Mode::ScaleOut] {
            let run = copy(&client, &input, n, mode).await;
            let (whole, steady) = (n as f64 / run.wall, run.steady_records as f64 / run.steady);
            rates.push((whole, steady));
            println!("| {} | {whole:.0} | {steady:.0} | {:.3} |", mode.name(), run.cpu * 1e6 / n as f64);
        }
        println!(
            "\nscale-out vs one process, whole run (joining the group included): {:.2}x of the transactional run, {:.2}x of the idempotent one",
            rates[2].0 / rates[1].0,
            rates[2].0 / rates[0].0
        );
        println!(
            "scale-out vs one process, after the first batch: {:.2}x of the transactional run, {:.2}x of the idempotent one (goal: at least 0.75x)",
            rates[2].1 / rates[1].1,
            rates[2].1 / rates[0].1
        );
        let (taken, processed) = failover(&client).await;
        println!(
            "\nfailover after a process is dropped (the brokers' consumer-protocol session: 6 s on test brokers): its partitions taken over after {:.1} s (its session timeout, and its open transaction, if any, timed out), a batch of their records committed {:.2} s after that (no state to restore yet)",
            taken.as_secs_f64(),
            processed.as_secs_f64()
        );
    });
}
