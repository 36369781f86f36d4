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

async fn produce(client: &Client, topic: &str, n: usize) {
    let producer = Producer::new(client.clone(), ProducerConfig::default()).await.unwrap();
    let value = vec![b'x'; 100];
    for i in 0..n {
        let partition = Some((i % PARTITIONS as usize) as i32);
        drop(producer.send(ProducerRecord { partition, ..ProducerRecord::new(topic, value.clone()) }).await.unwrap());
    }
    producer.flush().await.unwrap();
}

/// One run of the copy job over the whole input; wall s and CPU s.
async fn copy(client: &Client, input: &str, n: usize, mode: Mode) -> (f64, f64) {
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
    scheduler
        .run(&mut processor, |progress| {
            if !progress.aborted {
                read += progress.num_input_rows;
            }
            if read as usize >= n {
                stop.cancel();
            }
        })
        .await
        .unwrap();
    assert_eq!(processor.copied, n, "every record copied once");
    (start.elapsed().as_secs_f64(), cpu_s() - cpu)
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
        produce(&client, &input, n).await;
        println!("scale-out cost, one process, {n} records of 100 bytes copied from {PARTITIONS} partitions to {PARTITIONS}, 1 s batches, Apache Kafka on {}", broker.addr);
        println!("\n| run | records/s | client CPU us/record |");
        println!("| --- | --- | --- |");
        let mut rates = Vec::new();
        for mode in [Mode::Idempotent, Mode::Transactional, Mode::ScaleOut] {
            let (wall, cpu) = copy(&client, &input, n, mode).await;
            let rate = n as f64 / wall;
            rates.push(rate);
            println!("| {} | {rate:.0} | {:.3} |", mode.name(), cpu * 1e6 / n as f64);
        }
        println!(
            "\nscale-out vs one process: {:.2}x of the transactional run, {:.2}x of the idempotent one (goal: at least 0.75x)",
            rates[2] / rates[1],
            rates[2] / rates[0]
        );
    });
}
