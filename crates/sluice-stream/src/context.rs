//! A streaming job: its source, its streams and outputs, and the loop that runs them on the
//! scheduler.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use sluice_client::{Client, ClientConfig};
use sluice_scheduler::{
    Batch, BatchOutput, BatchProgress, CancellationToken, Clock, PartitionChanges, Processor, RangeRecords,
    RecordPosition, Scheduler, SchedulerConfig, SystemClock, Trigger,
};

use crate::changelog::{Changelogs, RestoreCounters};
use crate::graph::{lock, BatchInput, Graph, Output, Partitions, Parts, SharedGraph, SourceRecords};
use crate::pool::par_map;
use crate::record::KafkaRecord;
use crate::state::JobState;
use crate::stream::{Aligned, DStream};
use crate::BoxError;

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
    /// An output failed a batch (in a `testing::LocalJob`, feature `testing`; under the scheduler this is
    /// [`sluice_scheduler::SchedulerError::Processing`]).
    #[error("batch {batch_id} failed: {source}")]
    Batch {
        /// The batch.
        batch_id: u64,
        /// The output's error, whole.
        source: BoxError,
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
///
/// Fields may be added in later versions (`#[non_exhaustive]`): start from [`StreamConfig::new`]
/// and set the fields you need.
#[derive(Debug, Clone)]
#[non_exhaustive]
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
    /// Scale-out mode with repartitioning: how often a process deletes what the job's group
    /// has consumed from its repartition partitions (Kafka Streams' `repartition.purge.interval.ms`;
    /// 30 s). The topics keep records until then, whatever their age: a job down for days loses
    /// none.
    pub repartition_purge_interval: std::time::Duration,
    /// Scale-out mode with state: how many other processes keep a warm copy of each task's
    /// state (Kafka Streams' `num.standby.replicas`; 0, the default: none). Each task is copied
    /// by the `n` members after its owner in the group (ordered by instance id, or member id),
    /// which tail its changelogs; when the group gives a process a task it copied, its restore
    /// reads only what the changelog holds after the copy. The group's assignor does not know
    /// of the copies: with two processes and 1, or with `n` = processes - 1, every task that
    /// moves lands on a copy. The copies (each key's latest value, as bytes) are held in memory
    /// beside the job's own state, outside `memory_budget`.
    pub standby_replicas: usize,
}

/// The memory budget a job has unless given another: 64 MiB (the clickstream job runs as fast
/// under it as under 256 MiB; see BENCHMARKS.md).
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
            repartition_purge_interval: std::time::Duration::from_secs(30),
            standby_replicas: 0,
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
    restore: RestoreCounters,
}

impl StreamingContext {
    /// A job with `config`; build its streams from [`StreamingContext::kafka_stream`].
    pub fn new(config: StreamConfig) -> Self {
        let interval_ms = u64::try_from(config.scheduler.batch_interval.as_millis()).unwrap_or(u64::MAX);
        let group = config.scheduler.scale.as_ref().map(|scale| scale.group.clone());
        let graph = Arc::new(Mutex::new(Graph { interval_ms, scale: group.is_some(), group, ..Graph::default() }));
        Self { config, graph, stop: CancellationToken::new(), restore: RestoreCounters::default() }
    }

    /// The records of the configured topics, one part per read task: Spark's
    /// `KafkaUtils.createDirectStream`. May be called any number of times; each stream sees
    /// every record of every batch (of the source topics: not the records of the job's
    /// repartition topics, which only the repartitioned streams see).
    pub fn kafka_stream(&self) -> DStream<KafkaRecord> {
        lock(&self.graph).sources += 1;
        // The records of the source topics (a job's repartition topics are read with them, for
        // the streams they repartition).
        DStream::new(Arc::clone(&self.graph), Box::new(|input: &BatchInput| Some(input.records.take_source())))
            .aligned_as(Aligned::Source)
    }

    /// Counters of the state restored from changelogs (scale-out mode with keyed state): each
    /// task this process takes on is restored before the batch that reads it.
    pub fn restore_counters(&self) -> RestoreCounters {
        self.restore.clone()
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
    pub async fn run_with_clock<C: Clock + 'static>(
        self,
        clock: C,
        on_progress: impl FnMut(&BatchProgress),
    ) -> Result<u64, StreamError> {
        let (outputs, mut errors, sources, state, failures, internal_topics, task_count) = {
            let mut graph = lock(&self.graph);
            let graph = &mut *graph;
            (
                std::mem::take(&mut graph.outputs),
                std::mem::take(&mut graph.errors),
                graph.sources,
                std::mem::take(&mut graph.state),
                Arc::clone(&graph.failures),
                graph.internal_topics.clone(),
                graph.task_count.clone(),
            )
        };
        if !internal_topics.is_empty() && !matches!(self.config.scheduler.trigger, Trigger::ProcessingTime(_)) {
            errors.push(
                "repartition in scale-out mode needs a processing-time trigger: what a run's last batch repartitions is read in the batches after it, which Once and AvailableNow would leave to the next run"
                    .into(),
            );
        }
        if !errors.is_empty() {
            return Err(StreamError::Invalid(errors));
        }
        if outputs.is_empty() {
            return Err(StreamError::Invalid(vec![
                "no output: give a stream a sink (foreach_batch, to_sink) so that the job does something".into(),
            ]));
        }
        let mut scheduler_config = self.config.scheduler.clone();
        let group = scheduler_config.scale.as_mut().map(|scale| {
            // A keyed state's function may change it in a batch without records; the change
            // goes to the changelog in the batch's transaction.
            scale.transaction_every_batch |= !state.is_empty();
            scale.internal_topics.clone_from(&internal_topics);
            // A task is a partition number, which a key's state, a repartition partition and a
            // changelog partition belong to: several source topics must be co-partitioned, as
            // Kafka Streams' joined sources are (the scheduler checks their partition counts).
            scale.co_partitioned |= !(state.is_empty() && internal_topics.is_empty());
            scale.group.clone()
        });
        let stateful_scale = group.is_some() && !state.is_empty();
        if stateful_scale {
            check_scale_state(&state)?;
        }
        let client = Client::connect(self.config.client.clone()).await?;
        // The repartition topics and the changelogs are made (or found) side by side.
        let repartition_topics = async {
            let (false, Some(source)) = (internal_topics.is_empty(), scheduler_config.topics.first()) else {
                return Ok(());
            };
            // Kept until consumed (purged then), as Kafka Streams keeps them.
            // Small segments, so that purged records free their disk soon (Kafka Streams').
            let configs = [
                ("cleanup.policy", "delete"),
                ("retention.ms", "-1"),
                ("segment.bytes", "52428800"),
                ("segment.ms", "600000"),
            ];
            let tasks = crate::changelog::create_internal_topics(&client, source, &internal_topics, &configs)
                .await
                .map_err(|e| StreamError::State(format!("creating the repartition topics: {e}")))?;
            task_count.tasks.store(tasks, std::sync::atomic::Ordering::Relaxed);
            Ok::<_, StreamError>(())
        };
        let changelogs = async {
            match (&group, scheduler_config.topics.first()) {
                (Some(group), Some(source)) if stateful_scale => Changelogs::open(
                    client.clone(),
                    (group, source),
                    &state,
                    (self.restore.clone(), self.config.standby_replicas),
                )
                .await
                .map(Some)
                .map_err(|e| StreamError::State(format!("opening the changelog topics: {e}"))),
                _ => Ok(None),
            }
        };
        let ((), changelogs) = tokio::try_join!(repartition_topics, changelogs)?;
        let purge = (!internal_topics.is_empty()).then(|| Purge {
            client: client.clone(),
            interval: self.config.repartition_purge_interval,
            last: std::time::Instant::now(),
            running: None,
        });
        let interval_ms = lock(&self.graph).interval_ms;
        // Opening the log reads and recovers it (and syncs, when it is new), and restoring the
        // state decodes it: on the blocking pool, not an async worker.
        let (dir, config) = (self.config.checkpoint_dir.clone(), scheduler_config);
        let mut changelogs = changelogs;
        let opened = tokio::task::spawn_blocking(move || {
            let mut scheduler = Scheduler::open(client, dir, config, clock)?;
            let recovered = scheduler.take_recovered_state();
            match &mut changelogs {
                // In scale-out mode a task's state comes from its changelog when the group
                // gives the task to this process, after the checkpoint's copy of it if it has
                // one.
                Some(changelogs) => changelogs.hold_local_copies(recovered.snapshot.as_ref(), &recovered.deltas),
                None => state.restore(recovered.snapshot.as_ref(), &recovered.deltas).map_err(StreamError::State)?,
            }
            Ok::<_, StreamError>((scheduler, state, changelogs))
        })
        .await;
        let (mut scheduler, state, changelogs) =
            opened.map_err(|e| StreamError::State(format!("opening the checkpoint stopped: {e}")))??;
        scheduler.set_stop_handle(self.stop.clone());
        let snapshot_every = self.config.snapshot_every;
        let concurrent_outputs = self.config.concurrent_outputs;
        let records_per_run = self.config.records_per_run();
        let checkpoint_id = scheduler.checkpoint_id();
        let mut engine = Engine {
            outputs,
            interval_ms,
            sources,
            internal: internal_topics.iter().map(|topic| Arc::from(topic.as_str())).collect(),
            state,
            snapshot_every,
            concurrent_outputs,
            records_per_run,
            checkpoint_id,
            changelogs,
            failures,
            purge,
            task_count,
            group: group.as_deref().map(Arc::from),
        };
        Ok(scheduler.run(&mut engine, on_progress).await?)
    }
}

/// Scale-out mode with state: each operator keeps its state per task (a partition number of the
/// co-partitioned source topics), which moves between processes through its changelog.
fn check_scale_state(state: &JobState) -> Result<(), StreamError> {
    let not_split = state.not_split_by_task();
    if not_split.is_empty() {
        return Ok(());
    }
    Err(StreamError::Invalid(vec![format!(
        "scale-out mode keeps state per source partition, which these operators cannot yet: {} (update_state_by_key, map_with_state, with_watermark and reduce_by_key_and_event_window can)",
        not_split.join(", ")
    )]))
}

/// The wall clock, in ms since the Unix epoch.
pub(crate) fn wall_ms() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

/// The end of the batch interval the wall clock is in, in ms since the Unix epoch.
fn wall_clock_batch_time(interval_ms: u64) -> u64 {
    let now = u64::try_from(wall_ms()).unwrap_or_default();
    let interval = interval_ms.max(1);
    (now / interval).saturating_add(1).saturating_mul(interval)
}

/// The least records of one read task in a run.
const MIN_RECORDS_PER_TASK_RUN: usize = 256;

/// Runs a job's outputs on each batch.
struct Engine {
    outputs: Vec<Box<dyn Output>>,
    interval_ms: u64,
    /// Source streams in the job (`kafka_stream`s).
    sources: usize,
    /// The job's repartition topics (each read by its repartitioned stream).
    internal: BTreeSet<Arc<str>>,
    state: JobState,
    snapshot_every: u64,
    concurrent_outputs: bool,
    /// Records of a piece run through the job at once, over all its read tasks.
    records_per_run: usize,
    checkpoint_id: u64,
    /// Scale-out mode with state: the operators' changelogs (the local checkpoint then keeps
    /// copies of the tasks' state, for a restart).
    changelogs: Option<Changelogs>,
    /// What streams found wrong in a run (see `Graph::failures`).
    failures: Arc<Mutex<Vec<String>>>,
    /// Scale-out mode with repartitioning: the purge of consumed repartition records.
    purge: Option<Purge>,
    /// The job's task count and partition changes (watermark markers).
    task_count: crate::markers::TaskCount,
    /// Scale-out mode: the job's group.
    group: Option<Arc<str>>,
}

/// Deletes the records of the job's repartition partitions this process owns that the group
/// has consumed: those before where a batch starts reading them (the offsets the batch before
/// committed; a batch planned before that commit is dropped if it fails). In the background,
/// one purge at a time; a failure is only logged (the next one asks again).
struct Purge {
    client: Client,
    interval: std::time::Duration,
    last: std::time::Instant,
    running: Option<tokio::task::JoinHandle<()>>,
}

impl Purge {
    /// Starts a purge up to the starts of `ranges` of the `internal` topics, if one is due.
    fn at_batch_start(&mut self, ranges: &[sluice_scheduler::OffsetRange], internal: &BTreeSet<Arc<str>>) {
        if self.last.elapsed() < self.interval || self.running.as_ref().is_some_and(|r| !r.is_finished()) {
            return;
        }
        let mut consumed: std::collections::BTreeMap<(String, i32), i64> = std::collections::BTreeMap::new();
        for range in ranges.iter().filter(|r| internal.contains(r.topic.as_str())) {
            let from = consumed.entry((range.topic.clone(), range.partition)).or_insert(range.from);
            *from = (*from).min(range.from);
        }
        consumed.retain(|_, from| *from > 0);
        if consumed.is_empty() {
            return;
        }
        self.last = std::time::Instant::now();
        let client = self.client.clone();
        self.running = Some(tokio::spawn(async move {
            for ((topic, partition), before) in consumed {
                match client.delete_records(&topic, partition, before).await {
                    Ok(start) => tracing::debug!(%topic, partition, start, "purged consumed repartition records"),
                    Err(error) => {
                        tracing::warn!(%topic, partition, before, %error, "purging consumed repartition records failed")
                    }
                }
            }
        }));
    }
}

impl Engine {
    /// Runs every output on one run of a batch's records: each computes its items off the
    /// async workers, then writes them; the outputs side by side (each a task of the batch's),
    /// or one after the other in the order they were made.
    async fn run_outputs(&mut self, input: Arc<BatchInput>) -> Result<(), BoxError> {
        self.run_each_output(input).await?;
        let failures = std::mem::take(&mut *self.failures.lock().unwrap_or_else(PoisonError::into_inner));
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("; ").into())
        }
    }

    /// [`Engine::run_outputs`] but for what streams found wrong.
    async fn run_each_output(&mut self, input: Arc<BatchInput>) -> Result<(), BoxError> {
        let outputs = std::mem::take(&mut self.outputs);
        if !self.concurrent_outputs {
            for output in outputs {
                self.outputs.push(run_output(output, Arc::clone(&input)).await?);
            }
            return Ok(());
        }
        // Tasks of this batch: dropped with it (a run dropped part way), they stop at their next
        // await and write nothing more.
        let mut running = tokio::task::JoinSet::new();
        for (index, output) in outputs.into_iter().enumerate() {
            let input = Arc::clone(&input);
            running.spawn(async move { (index, run_output(output, input).await) });
        }
        let mut done = Vec::new();
        let mut failed: Option<BoxError> = None;
        while let Some(joined) = running.join_next().await {
            match joined {
                Ok((index, Ok(output))) => done.push((index, output)),
                Ok((_, Err(e))) => {
                    failed.get_or_insert(e);
                }
                Err(e) => {
                    failed.get_or_insert_with(|| format!("an output stopped: {e}").into());
                }
            }
        }
        if let Some(error) = failed {
            return Err(error);
        }
        done.sort_by_key(|(index, _)| *index);
        self.outputs = done.into_iter().map(|(_, output)| output).collect();
        Ok(())
    }
}

/// One output on one run of records: its items computed on the blocking pool (where its
/// operators spread large batches over the compute pool), then written.
async fn run_output(mut output: Box<dyn Output>, input: Arc<BatchInput>) -> Result<Box<dyn Output>, BoxError> {
    let mut output = off_workers(move || {
        output.compute(&input);
        output
    })
    .await?;
    output.write().await?;
    Ok(output)
}

/// Scale-out mode: the batch ends its transaction; the outputs make and write what they kept
/// for its end (a repartition's combined items, and its watermark markers after them).
async fn end_outputs_transaction(outputs: &mut Vec<Box<dyn Output>>) -> Result<(), BoxError> {
    let taken = std::mem::take(outputs);
    let (mut taken, kept) = off_workers(move || {
        let mut taken = taken;
        let kept: Vec<bool> = taken.iter_mut().map(|output| output.end_transaction()).collect();
        (taken, kept)
    })
    .await?;
    let mut written = Ok(());
    for (output, _) in taken.iter_mut().zip(kept).filter(|(_, kept)| *kept) {
        written = output.write().await;
        if written.is_err() {
            break;
        }
    }
    *outputs = taken;
    written
}

/// Runs CPU work on tokio's blocking pool (reused threads, never an async worker) and waits
/// for it; a panic in `work` is an error here. Not on the compute pool itself: outputs fed by
/// one `tee` wait on each other's lock, which a compute pool thread must never do while other
/// work queues behind it.
pub(crate) async fn off_workers<R: Send + 'static>(work: impl FnOnce() -> R + Send + 'static) -> Result<R, BoxError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| format!("the job's computation stopped: {e}").into())
}

/// Up to `n` records of `task` from `at` on (at most `count` in all), moving `at` past them.
fn take_records(
    task: &RangeRecords,
    at: &mut RecordPosition,
    (n, count): (usize, usize),
    topic: &Arc<str>,
    partition: i32,
) -> Vec<KafkaRecord> {
    let mut taken = Vec::with_capacity(n.min(count));
    for (next, record) in task.records_from(*at).take(n) {
        *at = next;
        taken.push(KafkaRecord::from_ref(topic, partition, &record));
    }
    taken
}

impl Processor for Engine {
    async fn process(&mut self, mut batch: Batch) -> Result<BatchOutput, BoxError> {
        // Piece by piece (a batch within the memory budget is one piece from the scheduler),
        // and each in runs of at most `records_per_run` records, so that what the job makes of
        // the records (rows, keys) is held for one run at a time, not the batch: each run goes
        // through the outputs as it comes, and they gather what they need whole until the last.
        let mut run = 0;
        // A batch that failed part way may have left its problems.
        self.failures.lock().unwrap_or_else(PoisonError::into_inner).clear();
        // Where a batch that goes on with an earlier batch's transaction starts is not
        // committed yet: the purge waits for one that begins a transaction.
        if let (Some(purge), true) = (&mut self.purge, batch.begins_transaction()) {
            purge.at_batch_start(&batch.ranges, &self.internal);
        }
        if let Some(changelogs) = &self.changelogs {
            changelogs.set_member(batch.member_id());
        }
        // In scale-out mode a batch's time is the wall clock's (on the interval's grid), which
        // the processes share: a key's timeout means the same whichever process has its task.
        let wall_time = self.changelogs.is_some().then(|| wall_clock_batch_time(self.interval_ms));
        let (internal, sources): (Vec<_>, Vec<_>) = batch
            .ranges
            .iter()
            .map(|range| (Arc::<str>::from(range.topic.as_str()), range.partition))
            .partition(|(topic, _)| self.internal.contains(topic));
        let owned: (Partitions, Partitions) = (sources.into(), internal.into());
        while let Some(piece) = batch.next_piece().await? {
            let piece = Arc::new(piece);
            let part_sources: Arc<Vec<(Arc<str>, i32)>> = Arc::new(
                piece.tasks.iter().map(|task| (Arc::from(task.range.topic.as_str()), task.range.partition)).collect(),
            );
            let counts: Vec<usize> = piece.tasks.iter().map(RangeRecords::record_count).collect();
            let per_task = (self.records_per_run / counts.len().max(1)).max(MIN_RECORDS_PER_TASK_RUN);
            let runs = counts.iter().map(|n| n.div_ceil(per_task)).max().unwrap_or(0).max(1);
            let large = counts.iter().map(|n| (*n).min(per_task)).sum::<usize>() >= crate::pool::PARALLEL_FROM_ITEMS;
            let mut cursors = vec![RecordPosition::default(); piece.tasks.len()];
            for index in 0..runs {
                // The next records of each task, the tasks side by side when there are many.
                let (tasks, sources, sizes) = (Arc::clone(&piece), Arc::clone(&part_sources), counts.clone());
                let (parts, moved) = off_workers(move || {
                    let taken: Vec<_> =
                        tasks.tasks.iter().zip(cursors.iter_mut()).zip(sources.iter().zip(sizes)).collect();
                    let parts: Parts<KafkaRecord> =
                        par_map(taken, large, &|((task, at), ((topic, partition), count))| {
                            take_records(task, at, (per_task, count), topic, *partition)
                        });
                    (parts, cursors)
                })
                .await?;
                cursors = moved;
                // A source topic's parts go to every source stream, a repartition topic's to
                // its repartitioned stream.
                let internal =
                    |part: usize| part_sources.get(part).is_some_and(|(topic, _)| self.internal.contains(topic));
                let records = SourceRecords::split(parts, internal, self.sources);
                let last = piece.last && index + 1 == runs;
                let input = BatchInput::new(
                    batch.batch_id,
                    self.interval_ms,
                    batch.rerun,
                    records,
                    Some(part_sources.as_ref().clone()),
                )
                .at_time(wall_time)
                .owning((Arc::clone(&owned.0), Arc::clone(&owned.1)))
                .in_piece(run, last)
                .of_checkpoint(self.checkpoint_id)
                .in_transaction(batch.transaction().cloned(), !batch.begins_transaction())
                .of_group(self.group.clone());
                self.run_outputs(Arc::new(input)).await?;
                run += 1;
            }
        }
        // Scale-out: what the outputs kept for the transaction's end goes with the batch that
        // ends it, as do the state changes of a transaction spanning batches, each key's last.
        let ends_transaction = batch.ends_transaction();
        let outputs_end = ends_transaction && batch.transaction().is_some();
        if let Some(changelogs) = &mut self.changelogs {
            if !ends_transaction {
                return Ok(BatchOutput::default());
            }
            // The local checkpoint keeps a copy of the tasks' state for a restart: with the
            // batch's commit (written only if its transaction commits), and as snapshots. The
            // outputs' sends and the state's go out side by side (the outputs' end changes no
            // state).
            let outputs = async {
                if outputs_end {
                    end_outputs_transaction(&mut self.outputs).await?;
                }
                Ok::<_, BoxError>(())
            };
            let state_end =
                changelogs.end_transaction(&self.state, batch.transaction().map(|t| &**t), self.snapshot_every);
            let (outputs, state_end) = tokio::join!(outputs, state_end);
            outputs?;
            let (state_delta, snapshot) = state_end?;
            return Ok(BatchOutput { state_delta, snapshot, ..BatchOutput::default() });
        }
        if outputs_end {
            end_outputs_transaction(&mut self.outputs).await?;
        }
        let (state_delta, snapshot) = self.state.end_batch(batch.batch_id, self.snapshot_every)?;
        Ok(BatchOutput { state_delta, snapshot, ..BatchOutput::default() })
    }

    async fn committed(&mut self, _batch_id: u64) -> Result<(), BoxError> {
        for output in &mut self.outputs {
            output.committed().await?;
        }
        Ok(())
    }

    async fn partitions_changed(&mut self, changes: &PartitionChanges) -> Result<(), BoxError> {
        // Watermark markers go out again: the batch that sent the last ones may not have
        // committed, and the tasks they speak for changed.
        self.task_count.changes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(changelogs) = &mut self.changelogs {
            changelogs.apply(&self.state, changes).await?;
        }
        Ok(())
    }
}
