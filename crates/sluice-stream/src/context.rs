//! A streaming job: its source, its streams and outputs, and the loop that runs them on the
//! scheduler.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use sluice_client::{Client, ClientConfig};
use sluice_scheduler::{
    Batch, BatchOutput, BatchProgress, CancellationToken, Clock, Processor, RangeRecords, Scheduler, SchedulerConfig,
    SystemClock,
};

use crate::record::KafkaRecord;
use crate::sink::Output;
use crate::state::JobState;
use crate::stream::{lock, BatchInput, DStream, Graph, Parts, SharedGraph, SourceRecords};

/// Why a job could not run or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The job's streams were built wrong (each problem listed).
    #[error("the job is not valid: {}", .0.join("; "))]
    Invalid(Vec<String>),
    /// The brokers could not be reached.
    #[error("connecting to the brokers: {0}")]
    Connect(#[from] sluice_client::Error),
    /// An output failed a batch (in a [`crate::testing::LocalJob`]; under the scheduler this is
    /// [`sluice_scheduler::SchedulerError::Processing`]).
    #[error("batch {batch_id} failed: {reason}")]
    Batch {
        /// The batch.
        batch_id: u64,
        /// What the output said.
        reason: String,
    },
    /// The scheduler failed (planning, reading, an output, or the checkpoint log).
    #[error(transparent)]
    Scheduler(#[from] sluice_scheduler::SchedulerError),
    /// The state in the checkpoint could not be restored into this job.
    #[error("restoring the job's state: {0}")]
    State(String),
}

/// What a job needs: where the brokers are, what to read and how (the scheduler's
/// configuration: topics, batch interval, rates, trigger, starting offsets), and where its
/// checkpoint log lives.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// The client's configuration (bootstrap brokers, timeouts, TLS, SASL).
    pub client: ClientConfig,
    /// The scheduler's configuration.
    pub scheduler: SchedulerConfig,
    /// The checkpoint directory (one job per directory).
    pub checkpoint_dir: PathBuf,
    /// Every this many batches the whole state is written to the checkpoint log as a snapshot
    /// (between snapshots each batch writes its changes). A restart replays the changes since
    /// the latest snapshot, and the log drops what a snapshot replaces.
    pub snapshot_every: u64,
    /// Whether a batch's outputs run side by side, each on a thread of its own (the default),
    /// or one after the other in the order they were made (Spark's default, for outputs whose
    /// order matters: data, then a marker that it is complete). Either way the batch commits
    /// after all of them.
    pub concurrent_outputs: bool,
    /// The memory the job's records may take, fetched and as the job makes them into items (0:
    /// no limit). Set with [`StreamConfig::with_memory_budget`], which also bounds the
    /// scheduler's batches by it; [`DEFAULT_MEMORY_BUDGET`] unless set.
    pub memory_budget: usize,
}

/// The memory budget a job has unless given another: 64 MiB (the clickstream job runs as fast
/// under it as under 256 MiB; see the sluice-cli README).
pub const DEFAULT_MEMORY_BUDGET: usize = 64 << 20;

/// Records run through the job at once per byte of the memory budget: 1/4096, 16,384 records
/// at 64 MiB (each record, with the rows and keys a job makes of it, takes a few hundred bytes,
/// and a few stages of a run may be held at once).
const BUDGET_BYTES_PER_RUN_RECORD: usize = 4096;

impl StreamConfig {
    /// Reads `topics` from `brokers` in batches of `batch_interval`, checkpointing in
    /// `checkpoint_dir`; everything else as the defaults.
    pub fn new<S: Into<String>>(
        brokers: impl IntoIterator<Item = S>,
        topics: impl IntoIterator<Item = S>,
        batch_interval: std::time::Duration,
        checkpoint_dir: impl Into<PathBuf>,
    ) -> Self {
        let brokers: Vec<String> = brokers.into_iter().map(Into::into).collect();
        Self {
            client: ClientConfig::new(brokers),
            scheduler: SchedulerConfig::new(topics, batch_interval),
            checkpoint_dir: checkpoint_dir.into(),
            snapshot_every: 10,
            concurrent_outputs: true,
            memory_budget: 0,
        }
        .with_memory_budget(DEFAULT_MEMORY_BUDGET)
    }

    /// Bounds the memory the job's records take to about `bytes` (0: no limit), whatever the
    /// rates and however large the backlog: each batch holds at most an eighth of it in records
    /// as fetched (the scheduler's `max_batch_bytes`; with the next batch read ahead, two
    /// eighths), and the records are run through the job in runs of `bytes / 4096` (what the
    /// job makes of each run, rows and keys, is dropped or folded in before the next). What an
    /// operator keeps over a batch (keyed state, windows, the items a sink writes) comes on top.
    pub fn with_memory_budget(mut self, bytes: usize) -> Self {
        self.memory_budget = bytes;
        self.scheduler.max_batch_bytes = bytes / 8;
        if bytes > 0 {
            self.scheduler.prefetch_max_bytes = bytes / 8;
        }
        self
    }

    /// Records run through the job at once.
    fn records_per_run(&self) -> usize {
        match self.memory_budget {
            0 => usize::MAX,
            bytes => (bytes / BUDGET_BYTES_PER_RUN_RECORD).max(1),
        }
    }
}

/// A streaming job being built, then run: Spark's `StreamingContext`.
#[derive(Debug)]
pub struct StreamingContext {
    config: StreamConfig,
    graph: SharedGraph,
    stop: CancellationToken,
}

impl StreamingContext {
    /// A job with `config`; build its streams from [`StreamingContext::kafka_stream`].
    pub fn new(config: StreamConfig) -> Self {
        let interval_ms = u64::try_from(config.scheduler.batch_interval.as_millis()).unwrap_or(u64::MAX);
        let graph = Arc::new(Mutex::new(Graph { interval_ms, ..Graph::default() }));
        Self { config, graph, stop: CancellationToken::new() }
    }

    /// The records of the configured topics, one part per read task: Spark's
    /// `KafkaUtils.createDirectStream`. May be called any number of times; each stream sees
    /// every record of every batch.
    pub fn kafka_stream(&self) -> DStream<KafkaRecord> {
        lock(&self.graph).sources += 1;
        DStream::new(Arc::clone(&self.graph), Box::new(|input: &BatchInput| Some(input.records.take())))
    }

    /// A token that stops the job: cancelled, it lets the batch under way commit, and ends a
    /// wait for the next batch at once.
    pub fn stop_handle(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Runs the job until its trigger or ending offsets say it is over, or it is stopped;
    /// returns how many batches ran.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future is a crash without the process ending: the job's state in memory is
    /// gone with it, and the next run on the same checkpoint directory (a new context) recovers
    /// as after a crash, re-running the batch that had not committed. To stop between batches,
    /// cancel [`StreamingContext::stop_handle`] instead.
    pub async fn run(self, on_progress: impl FnMut(&BatchProgress)) -> Result<u64, StreamError> {
        self.run_with_clock(SystemClock::new(), on_progress).await
    }

    /// [`StreamingContext::run`] on a given clock (tests run on a manual one).
    pub async fn run_with_clock<C: Clock>(
        self,
        clock: C,
        on_progress: impl FnMut(&BatchProgress),
    ) -> Result<u64, StreamError> {
        let (outputs, errors, sources, state) = {
            let mut graph = lock(&self.graph);
            let graph = &mut *graph;
            (
                std::mem::take(&mut graph.outputs),
                std::mem::take(&mut graph.errors),
                graph.sources,
                std::mem::take(&mut graph.state),
            )
        };
        if !errors.is_empty() {
            return Err(StreamError::Invalid(errors));
        }
        if outputs.is_empty() {
            return Err(StreamError::Invalid(vec![
                "no output: give a stream a sink (foreach_batch, to_sink) so that the job does something".into(),
            ]));
        }
        let client = Client::connect(self.config.client.clone()).await?;
        let interval_ms = lock(&self.graph).interval_ms;
        let mut scheduler = Scheduler::open(client, &self.config.checkpoint_dir, self.config.scheduler.clone(), clock)?;
        scheduler.set_stop_handle(self.stop.clone());
        let recovered = scheduler.take_recovered_state();
        state.restore(recovered.snapshot.as_ref(), &recovered.deltas).map_err(StreamError::State)?;
        let snapshot_every = self.config.snapshot_every;
        let concurrent_outputs = self.config.concurrent_outputs;
        let records_per_run = self.config.records_per_run();
        let checkpoint_id = scheduler.checkpoint_id();
        let mut engine = Engine {
            outputs,
            interval_ms,
            sources,
            state,
            snapshot_every,
            concurrent_outputs,
            records_per_run,
            checkpoint_id,
        };
        Ok(scheduler.run(&mut engine, on_progress).await?)
    }
}

/// The least records of one read task in a run.
const MIN_RECORDS_PER_TASK_RUN: usize = 256;

/// Runs a job's outputs on each batch.
struct Engine {
    outputs: Vec<Box<dyn Output>>,
    interval_ms: u64,
    /// Source streams in the job.
    sources: usize,
    state: JobState,
    snapshot_every: u64,
    concurrent_outputs: bool,
    /// Records of a piece run through the job at once, over all its read tasks.
    records_per_run: usize,
    checkpoint_id: u64,
}

impl Engine {
    /// Runs every output on the batch, each on a thread of its own unless outputs are to run in
    /// turn (outputs fed by one `tee` wait for whichever computes the shared part first, then go
    /// on side by side).
    async fn run_outputs(&mut self, input: Arc<BatchInput>) -> Result<(), String> {
        if !self.concurrent_outputs {
            for output in &mut self.outputs {
                output.run(&input).await?;
            }
            return Ok(());
        }
        let mut outputs = std::mem::take(&mut self.outputs);
        let runtime = tokio::runtime::Handle::current();
        let ran = tokio::task::spawn_blocking(move || {
            let results: Vec<Result<(), String>> = match outputs.as_mut_slice() {
                [only] => vec![runtime.block_on(only.run(&input))],
                all => std::thread::scope(|scope| {
                    let running: Vec<_> = all
                        .iter_mut()
                        .map(|output| {
                            let (input, runtime) = (&input, &runtime);
                            scope.spawn(move || runtime.block_on(output.run(input)))
                        })
                        .collect();
                    running
                        .into_iter()
                        .map(|thread| thread.join().unwrap_or_else(|_| Err("an output panicked".to_owned())))
                        .collect()
                }),
            };
            (outputs, results)
        })
        .await;
        let (outputs, results) = ran.map_err(|e| format!("the outputs stopped: {e}"))?;
        self.outputs = outputs;
        results.into_iter().collect()
    }
}

impl Processor for Engine {
    async fn process(&mut self, mut batch: Batch) -> Result<BatchOutput, String> {
        // Piece by piece (a batch within the memory budget is one piece from the scheduler),
        // and each in runs of at most `records_per_run` records, so that what the job makes of
        // the records (rows, keys) is held for one run at a time, not the batch: each run goes
        // through the outputs as it comes, and they gather what they need whole until the last.
        let mut run = 0;
        while let Some(piece) = batch.next_piece().await.map_err(|e| e.to_string())? {
            let part_sources: Vec<(Arc<str>, i32)> =
                piece.tasks.iter().map(|task| (Arc::from(task.range.topic.as_str()), task.range.partition)).collect();
            let counts: Vec<usize> = piece.tasks.iter().map(RangeRecords::record_count).collect();
            let per_task = (self.records_per_run / counts.len().max(1)).max(MIN_RECORDS_PER_TASK_RUN);
            let runs = counts.iter().map(|n| n.div_ceil(per_task)).max().unwrap_or(0).max(1);
            let mut records: Vec<_> = piece.tasks.iter().map(|task| task.records()).collect();
            for index in 0..runs {
                // The next records of each task, the tasks side by side when there are many.
                let large =
                    counts.iter().map(|n| (*n).min(per_task)).sum::<usize>() >= crate::stream::PARALLEL_FROM_ITEMS;
                let taken: Vec<_> = records.iter_mut().zip(&part_sources).collect();
                let parts: Parts<KafkaRecord> =
                    crate::stream::par_map(taken, large, &|(records, (topic, partition))| {
                        records
                            .by_ref()
                            .take(per_task)
                            .map(|record| KafkaRecord::from_ref(topic, *partition, &record))
                            .collect()
                    });
                let records = SourceRecords::new(parts, self.sources);
                let last = piece.last && index + 1 == runs;
                let input =
                    BatchInput::new(batch.batch_id, self.interval_ms, batch.rerun, records, Some(part_sources.clone()))
                        .in_piece(run, last)
                        .of_checkpoint(self.checkpoint_id);
                self.run_outputs(Arc::new(input)).await?;
                run += 1;
            }
        }
        let (state_delta, snapshot) = self.state.end_batch(batch.batch_id, self.snapshot_every)?;
        Ok(BatchOutput { state_delta, snapshot, ..BatchOutput::default() })
    }
}
