//! The micro-batch loop. Each batch: plan the offset ranges, write them as the batch's intent
//! to the checkpoint log and make it durable, read the ranges (tasks in parallel, each retried
//! from its partition's current leader through transient faults, for `fault_timeout`), hand the
//! records to the processor, and when it returns, write the
//! batch's commit and make it durable. On open, the log says where to resume: after the last
//! committed batch, re-running an intent that has no commit with exactly its ranges.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use sluice_checkpoint::{BatchCommit, BatchIntent, Log, Options as LogOptions, Snapshot};
use sluice_client::{Client, ClusterMetadata, Connection, ConnectionConfig, FetchOptions, OffsetSpec};
use sluice_protocol::error_code::ErrorCode;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::fetch::{DataLoss, FetchRangeError, RangeReader, RangeRecords, ReadBudget};
use crate::plan::{
    allowed_offsets, cap_offsets, plan_batch, split_ranges, OffsetRange, PartitionPlanInput, RateLimits, TopicPartition,
};
use crate::rate::PidRateEstimator;
use crate::trigger::{Trigger, TriggerState};

/// Where partitions without a committed position start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartingOffsets {
    /// The log start.
    Earliest,
    /// The log end: only records produced after the first batch is planned.
    Latest,
    /// These offsets; partitions not listed start at the earliest offset.
    Offsets(BTreeMap<TopicPartition, i64>),
    /// The first record at or after this time (milliseconds since the epoch), or the log end if
    /// there is none.
    Timestamp(i64),
}

/// The default [`SchedulerConfig::max_batch_bytes`]: 32 MiB, an eighth of a 256 MiB budget for
/// a whole job (the records of the batch and the one read ahead, and what processing makes of
/// them).
pub const DEFAULT_MAX_BATCH_BYTES: usize = 32 << 20;

/// How a [`Scheduler`] runs.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// The topics to read (every partition of each).
    pub topics: Vec<String>,
    /// Also read every topic whose name matches this regular expression (internal topics
    /// excluded), including topics created while the job runs (seen at the next discovery).
    pub topic_pattern: Option<String>,
    /// Also read exactly these partitions (Spark's `assign`), whatever other partitions their
    /// topics have. A partition not (yet) in the cluster is read once it appears.
    pub assign: Vec<TopicPartition>,
    /// When batches run.
    pub trigger: Trigger,
    /// The interval rates are applied over (and the processing-time trigger's, usually).
    pub batch_interval: Duration,
    /// Per-partition rate limits.
    pub limits: RateLimits,
    /// Shrink batches when processing falls behind (Spark's PID estimator).
    pub backpressure: bool,
    /// At least this many read tasks per batch (large ranges are split).
    pub min_partitions: usize,
    /// Read tasks running at once.
    pub max_concurrent_tasks: usize,
    /// Connections of the scheduler's own to each broker that read tasks are spread over.
    pub read_connections_per_broker: usize,
    /// The most record bytes a batch holds in memory at once (the records as fetched,
    /// decompressed): batches are planned to stay within it (from the record bytes per offset
    /// the last batch read, or a first fetch), whatever the rate limits, so that a backlog is
    /// worked through in many bounded batches (Spark's `maxBytesPerTrigger`, on by default).
    /// A batch that still holds more (an intent written ahead under a larger budget, records
    /// larger than the last ones) is read and handed to the processor in pieces of at most
    /// about this many bytes. With the next batch or piece read ahead, the records of at most
    /// two are in memory. 0: no limit (each batch read whole, as large as the rates allow).
    pub max_batch_bytes: usize,
    /// The next batch is planned and read while the current one is processed, when its records
    /// are expected to take at most this many bytes; 0 turns prefetching off.
    pub prefetch_max_bytes: usize,
    /// Attempts per read task before the batch fails, for failures that are not transient
    /// (a corrupt answer, say; transient faults are retried for `fault_timeout`).
    pub task_attempts: u32,
    /// How long planning a batch, or a read task, may keep failing on transient faults (a
    /// leader moving, a broker restarting, a connection cut or frozen, a new leader's high
    /// watermark catching up) before the batch fails. Until then it is retried with backoff,
    /// from the leader fresh metadata names, a read going on from where it stopped.
    pub fault_timeout: Duration,
    /// Offsets deleted from the log before the job read them fail the batch (true, the
    /// default), or are skipped and counted in the progress records (Spark's `failOnDataLoss`).
    pub fail_on_data_loss: bool,
    /// Where partitions without a committed position start.
    pub starting_offsets: StartingOffsets,
    /// A bounded run: stop once every partition reaches these offsets (or its end, for
    /// partitions not listed).
    pub ending_offsets: Option<BTreeMap<TopicPartition, i64>>,
    /// How ranges are fetched.
    pub fetch: FetchOptions,
    /// Progress records kept in memory.
    pub progress_history: usize,
    /// Also append each batch's progress as a JSON line to this file (`-` for stdout).
    pub progress_path: Option<std::path::PathBuf>,
    /// How often the topics' partitions are looked up again, to pick up new ones.
    pub partition_discovery_interval: Duration,
    /// After each batch, commit its end offsets to this consumer group, so that lag tools see
    /// the job's progress (the checkpoint log stays the source of truth).
    pub commit_to_group: Option<String>,
    /// How the checkpoint log is kept (segment size, batches retained for inspection).
    pub checkpoint: LogOptions,
}

impl SchedulerConfig {
    /// Reads `topics` every `batch_interval`, from the earliest offsets, without limits.
    pub fn new<S: Into<String>>(topics: impl IntoIterator<Item = S>, batch_interval: Duration) -> Self {
        Self {
            topics: topics.into_iter().map(Into::into).collect(),
            topic_pattern: None,
            assign: Vec::new(),
            trigger: Trigger::ProcessingTime(batch_interval),
            batch_interval,
            limits: RateLimits::default(),
            backpressure: false,
            min_partitions: 0,
            max_concurrent_tasks: 8,
            read_connections_per_broker: 2,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            prefetch_max_bytes: 256 << 20,
            task_attempts: 3,
            fault_timeout: Duration::from_secs(300),
            fail_on_data_loss: true,
            starting_offsets: StartingOffsets::Earliest,
            ending_offsets: None,
            fetch: FetchOptions { max_wait: Duration::from_millis(100), ..FetchOptions::default() },
            progress_history: 100,
            progress_path: None,
            partition_discovery_interval: Duration::from_secs(5),
            commit_to_group: None,
            // Intents and commits are small: 8 MiB segments are quick to create and sync.
            checkpoint: LogOptions { segment_size_bytes: 8 << 20, ..LogOptions::default() },
        }
    }
}

/// What went wrong running batches.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchedulerError {
    /// The checkpoint log failed (the batch did not become durable).
    #[error("checkpoint log: {0}")]
    Checkpoint(#[from] sluice_checkpoint::Error),
    /// The cluster could not be asked for partitions or offsets.
    #[error("planning batch {batch_id}: {source}")]
    Planning {
        /// The batch being planned.
        batch_id: u64,
        /// The client's error.
        source: sluice_client::Error,
    },
    /// A read task kept failing.
    #[error("batch {batch_id}: a read task gave up after {attempts} attempts, last: {source}")]
    Task {
        /// The batch.
        batch_id: u64,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        source: Box<FetchRangeError>,
    },
    /// The processor failed the batch (or the scheduler's own work on it did); its intent
    /// stays open and is re-run on restart.
    #[error("batch {batch_id} failed in processing: {source}")]
    Processing {
        /// The batch.
        batch_id: u64,
        /// The processor's error, whole (downcast it to the type the processor gave).
        source: crate::BoxError,
    },
    /// `topic_pattern` is not a regular expression.
    #[error("topic_pattern {pattern:?} is not a valid regular expression: {source}")]
    TopicPattern {
        /// The pattern.
        pattern: String,
        /// What is wrong with it.
        source: crate::BoxError,
    },
    /// The checkpoint's identity could not be read or made.
    #[error("the checkpoint id in {path}: {reason}")]
    CheckpointId {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The progress file could not be written.
    #[error("writing progress to {path}: {source}")]
    Progress {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A partition's log ends before the offset the job reached: its records from there on
    /// are gone (the topic was deleted and re-created, or the log truncated), and
    /// `fail_on_data_loss` is on.
    #[error("planning batch {batch_id}: {topic}/{partition} now ends at offset {log_end}, before offset {position} this job had reached; the topic was deleted and re-created or its log truncated, so records may have been lost (turn fail_on_data_loss off to go on from the log start)")]
    DataLoss {
        /// The batch being planned.
        batch_id: u64,
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The job's position.
        position: i64,
        /// The partition's log end now.
        log_end: i64,
    },
    /// A partition the job has read is no longer in the cluster (its topic was deleted, or made
    /// again with fewer partitions), and `fail_on_data_loss` is on.
    #[error("planning batch {batch_id}: {topic}/{partition}, which this job had read up to offset {position}, is no longer in the cluster (the topic was deleted, or re-created with fewer partitions), so records may have been lost (turn fail_on_data_loss off to drop it and go on)")]
    PartitionGone {
        /// The batch being planned.
        batch_id: u64,
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The job's position in it.
        position: i64,
    },
    /// The log holds an intent whose ranges this scheduler cannot use.
    #[error("checkpoint: {0}")]
    Inconsistent(String),
}

/// One batch handed to the processor: its id, its planned ranges (one per partition), and its
/// records, in one piece or (when they hold more than [`SchedulerConfig::max_batch_bytes`]) in
/// several, taken with [`Batch::next_piece`] until it gives `None`.
#[derive(Debug)]
pub struct Batch {
    /// The batch id (consecutive from 0).
    pub batch_id: u64,
    /// The planned range of every partition, empty ones included.
    pub ranges: Vec<OffsetRange>,
    /// Whether this batch is the re-run of an intent found open in the log.
    pub rerun: bool,
    pieces: Pieces,
}

/// Records of a batch, from its read tasks: all of them, or the next bounded piece. Each
/// task's piece covers the consecutive offsets after its previous piece's.
#[derive(Debug)]
pub struct Piece {
    /// The piece's records, one entry per read task of the batch, in the same order in every
    /// piece (a task whose range was done in an earlier piece has an empty one).
    pub tasks: Vec<RangeRecords>,
    /// The piece's place in the batch, from 0.
    pub index: usize,
    /// Whether it is the batch's last piece (a batch of one piece: its first and last).
    pub last: bool,
}

impl Piece {
    /// Records in the piece.
    pub fn record_count(&self) -> usize {
        self.tasks.iter().map(RangeRecords::record_count).sum()
    }
}

/// A batch's pieces: the first, read before the batch was handed over, and the read of the
/// next, which starts as soon as the one before is taken (so at most two are held).
#[derive(Debug)]
struct Pieces {
    /// Each read task's range.
    task_ranges: Vec<OffsetRange>,
    first: Option<Vec<RangeRecords>>,
    /// The next piece's read (none after the first piece when that is the last).
    reading: Option<Reading>,
    context: ReadContext,
    given: usize,
    tally: Arc<Mutex<Tally>>,
}

/// What a batch's pieces held, for its progress record, summed as they are taken.
#[derive(Debug, Default)]
struct Tally {
    records: usize,
    bytes: usize,
    /// Offsets the record batches read span (more than the ranges when a record batch reaches
    /// past a range's end): `bytes` over these is the log's record bytes per offset.
    batch_offsets: i64,
    pieces: usize,
    high_watermarks: BTreeMap<TopicPartition, i64>,
    lost: BTreeMap<TopicPartition, i64>,
    /// The last piece was taken.
    done: bool,
    /// Reading a later piece failed (reported as the batch's failure, whatever the processor
    /// made of it).
    error: Option<SchedulerError>,
}

impl Tally {
    fn add(&mut self, tasks: &[RangeRecords]) {
        self.pieces += 1;
        for task in tasks {
            self.records += task.record_count();
            self.bytes += task.data_bytes();
            self.batch_offsets +=
                task.batches.iter().map(|b| b.header.last_offset() - b.header.base_offset + 1).sum::<i64>();
            let key = (task.range.topic.clone(), task.range.partition);
            let known = self.high_watermarks.entry(key.clone()).or_insert(-1);
            *known = (*known).max(task.high_watermark);
            *self.lost.entry(key).or_default() += task.lost_offsets;
        }
    }
}

/// The records each reader brought since its last piece, one entry per task of the batch
/// (`task_ranges`; empty for the tasks done before), and the readers whose range is not done.
fn cut_piece(task_ranges: &[OffsetRange], mut readers: Vec<TaskReader>) -> (Vec<RangeRecords>, Vec<TaskReader>) {
    let mut tasks: Vec<RangeRecords> = task_ranges
        .iter()
        .map(|range| RangeRecords {
            range: OffsetRange { from: range.until, ..range.clone() },
            batches: Vec::new(),
            high_watermark: -1,
            lost_offsets: 0,
        })
        .collect();
    for (index, reader) in &mut readers {
        if let Some(task) = tasks.get_mut(*index) {
            *task = reader.take_piece();
        }
    }
    readers.retain(|(_, reader)| !reader.is_done());
    (tasks, readers)
}

impl Batch {
    /// The batch's next piece of records (the first call gives the first), or `None` once all
    /// were given. A processor takes every piece before it returns (the batch fails
    /// otherwise); with the default budget most batches come in one piece.
    pub async fn next_piece(&mut self) -> Result<Option<Piece>, SchedulerError> {
        let pieces = &mut self.pieces;
        let (tasks, last) = if let Some(tasks) = pieces.first.take() {
            (tasks, pieces.reading.is_none())
        } else if let Some(mut reading) = pieces.reading.take() {
            let read = reading.finish().await;
            let readers = match read {
                Ok(readers) => readers,
                Err(e) => {
                    let reason = e.to_string();
                    pieces.tally().error = Some(e);
                    return Err(SchedulerError::Processing { batch_id: self.batch_id, source: reason.into() });
                }
            };
            let (tasks, rest) = cut_piece(&pieces.task_ranges, readers);
            pieces.tally().add(&tasks);
            let last = rest.is_empty();
            if !last {
                pieces.reading = Some(pieces.context.start(self.batch_id, rest));
            }
            (tasks, last)
        } else {
            return Ok(None);
        };
        if last {
            pieces.tally().done = true;
        } else if pieces.reading.is_none() {
            return Err(SchedulerError::Processing {
                batch_id: self.batch_id,
                source: "the batch's next piece is not being read".into(),
            });
        }
        let index = pieces.given;
        pieces.given += 1;
        Ok(Some(Piece { tasks, index, last }))
    }
}

impl Pieces {
    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What the processor returns for a batch, stored in its commit record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutput {
    /// The change to the keyed state (opaque to the scheduler).
    pub state_delta: Vec<u8>,
    /// Markers the sinks need to recognise the batch when re-run (opaque).
    pub sink_markers: Vec<u8>,
    /// The whole state after this batch, to be written after its commit as a snapshot
    /// (recovery then starts from it instead of replaying every delta before it, and the log
    /// can drop what it replaces).
    pub snapshot: Option<Vec<u8>>,
}

/// The state a job had at its last committed batch, as the checkpoint log holds it: the latest
/// snapshot and the deltas of the batches committed after it, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveredState {
    /// The latest snapshot: the batch it was taken after, and its bytes.
    pub snapshot: Option<(u64, Vec<u8>)>,
    /// `(batch_id, state_delta)` of each batch committed after the snapshot.
    pub deltas: Vec<(u64, Vec<u8>)>,
}

/// The work done on each batch. `process` may run again for the same batch after a crash (with
/// the same ranges and records): sinks must make that harmless.
pub trait Processor: Send {
    /// Processes one batch, taking its records with [`Batch::next_piece`] until it gives `None`
    /// (in one piece, or in bounded pieces when the batch is larger than the memory budget);
    /// an error leaves the batch uncommitted.
    fn process(
        &mut self,
        batch: Batch,
    ) -> impl std::future::Future<Output = Result<BatchOutput, crate::BoxError>> + Send;
}

/// One partition in a progress record.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PartitionProgress {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The batch's first offset.
    pub start_offset: i64,
    /// The offset after the batch's last.
    pub end_offset: i64,
    /// The latest offset known when the batch was planned.
    pub latest_offset: i64,
    /// Records between the batch's end and the latest offset.
    pub lag: i64,
    /// Offsets of the range the log no longer held (skipped when `fail_on_data_loss` is off).
    pub lost_offsets: i64,
    /// Set when the partition's log was found to end before the job's position (the topic was
    /// re-created, or the log truncated) and `fail_on_data_loss` is off: the position the job
    /// had; the batch reads the log from its start instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reset_from: Option<i64>,
}

/// Durations of a batch's phases, in milliseconds.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Default)]
pub struct Durations {
    /// Deciding the ranges (asking for the latest offsets).
    pub planning_ms: u64,
    /// Writing and syncing the intent.
    pub intent_ms: u64,
    /// Reading the ranges.
    pub fetching_ms: u64,
    /// The processor.
    pub processing_ms: u64,
    /// Writing and syncing the commit (after the snapshot of the batch before, if one is still
    /// being written).
    pub committing_ms: u64,
    /// The whole batch.
    pub total_ms: u64,
}

/// A batch's progress, in the shape of Spark's `StreamingQueryProgress`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BatchProgress {
    /// The batch id.
    pub batch_id: u64,
    /// When the batch started, on the scheduler's clock (ms).
    pub timestamp_ms: u64,
    /// Records in the batch.
    pub num_input_rows: u64,
    /// Record bytes the batch read (decompressed, whole record batches as fetched): what
    /// [`SchedulerConfig::max_batch_bytes`] bounds.
    pub num_input_bytes: u64,
    /// How many pieces the batch was read and processed in (1 unless it held more than
    /// `max_batch_bytes`).
    pub pieces: usize,
    /// Records per second arriving: this batch's records over the time since the previous
    /// batch started.
    pub input_rows_per_second: f64,
    /// Records per second processed: this batch's records over its duration.
    pub processed_rows_per_second: f64,
    /// Phase durations.
    pub durations: Durations,
    /// Per partition: offsets and lag.
    pub sources: Vec<PartitionProgress>,
    /// Whether the batch re-ran an intent found open in the log.
    pub rerun: bool,
    /// Bytes the batch wrote to the checkpoint log: its intent, its commit with the state's
    /// changes, and the snapshot of the batch before if that batch took one (a snapshot is
    /// written in the background while the next batch runs).
    pub checkpoint_bytes: u64,
}

impl BatchProgress {
    /// One JSON line.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Bytes per offset assumed for the first prefetch, before a batch has measured them.
const ASSUMED_BYTES_PER_OFFSET: f64 = 256.0;

/// A read task's reader and the task's place in its batch.
type TaskReader = (usize, RangeReader);

/// Read tasks running in the background; aborted if dropped unfinished.
#[derive(Debug)]
struct Reading {
    handle: Option<tokio::task::JoinHandle<Result<Vec<TaskReader>, SchedulerError>>>,
    batch_id: u64,
}

impl Reading {
    /// The readers with their task's index, each done or stopped by the read budget.
    async fn finish(&mut self) -> Result<Vec<TaskReader>, SchedulerError> {
        let batch_id = self.batch_id;
        match self.handle.take() {
            Some(handle) => handle.await.unwrap_or_else(|e| {
                Err(SchedulerError::Processing { batch_id, source: format!("the read tasks stopped: {e}").into() })
            }),
            None => Err(SchedulerError::Processing { batch_id, source: "the read tasks were already taken".into() }),
        }
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        if let Some(handle) = &self.handle {
            handle.abort();
        }
    }
}

/// The next batch, planned and being read while the current one is processed.
#[derive(Debug)]
struct Prefetched {
    plan: Plan,
    reading: Reading,
}

/// A planned batch: its ranges, the latest offset of each partition, and the partitions whose
/// truncated log made the plan start them over (with the position they had).
#[derive(Debug, Default)]
struct Plan {
    ranges: Vec<OffsetRange>,
    latest: Vec<i64>,
    resets: BTreeMap<TopicPartition, i64>,
    /// The memory budget cut the plan short: the share it kept of what the rate limit allowed
    /// (0 without a rate limit); the next batch is due that share of an interval later.
    cut_by_budget: Option<f64>,
}

/// The scheduler's own read connections, per broker and slot (reads long enough to hold up a
/// shared connection, and a broker serves one connection's requests in order). Shared with the
/// read tasks, which look up their partition's leader each time they (re)try.
#[derive(Debug)]
struct ReadPool {
    config: ConnectionConfig,
    connections: std::sync::Mutex<BTreeMap<(String, usize), Arc<Connection>>>,
}

impl ReadPool {
    fn new(config: ConnectionConfig) -> Self {
        Self { config, connections: std::sync::Mutex::default() }
    }

    fn connections(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, usize), Arc<Connection>>> {
        self.connections.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Connection number `slot` to the current leader of `topic`/`partition`, made if needed.
    async fn to_leader(
        &self,
        client: &Client,
        topic: &str,
        partition: i32,
        slot: usize,
    ) -> Result<Arc<Connection>, sluice_client::Error> {
        let broker = client.leader_address(topic, partition).await?;
        let key = (broker, slot);
        if let Some(connection) = self.connections().get(&key).filter(|c| !c.is_closed()) {
            return Ok(Arc::clone(connection));
        }
        let connection =
            Connection::connect(&key.0, self.config.clone()).await.inspect_err(|e| client.note_error(e))?;
        let connection = Arc::new(connection);
        let mut connections = self.connections();
        let pooled = connections.entry(key).or_insert_with(|| Arc::clone(&connection));
        if pooled.is_closed() {
            *pooled = Arc::clone(&connection);
        }
        Ok(Arc::clone(pooled))
    }
}

/// The first wait before a transient fault is retried; doubled per retry up to
/// [`MAX_FAULT_BACKOFF`].
const FIRST_FAULT_BACKOFF: Duration = Duration::from_millis(100);
const MAX_FAULT_BACKOFF: Duration = Duration::from_secs(2);

/// How read tasks run: what the scheduler gives each batch, which reads its later pieces with it.
#[derive(Debug, Clone)]
struct ReadContext {
    client: Client,
    pool: Arc<ReadPool>,
    options: FetchOptions,
    attempts: u32,
    fault_timeout: Duration,
    max_concurrent_tasks: usize,
    slots: usize,
    /// Record bytes per piece (0: no limit).
    piece_bytes: usize,
}

impl ReadContext {
    /// Starts `readers` in the background, each as a read task, until their ranges are done or
    /// they brought a piece's worth of bytes between them.
    fn start(&self, batch_id: u64, readers: Vec<TaskReader>) -> Reading {
        let limit = Arc::new(tokio::sync::Semaphore::new(self.max_concurrent_tasks.max(1)));
        let sharers = readers.len().min(self.max_concurrent_tasks.max(1));
        let budget = (self.piece_bytes > 0).then(|| Arc::new(ReadBudget::new(self.piece_bytes, sharers)));
        let mut running = tokio::task::JoinSet::new();
        for (index, mut reader) in readers {
            reader.set_budget(budget.clone());
            let (context, limit) = (self.clone(), Arc::clone(&limit));
            running.spawn(async move {
                let _slot = limit.acquire_owned().await;
                context.read_task(index % context.slots.max(1), reader).await.map(|reader| (index, reader))
            });
        }
        let collect = async move {
            let mut read = Vec::new();
            while let Some(joined) = running.join_next().await {
                match joined {
                    Ok(Ok(done)) => read.push(done),
                    Ok(Err((attempts, source))) => {
                        return Err(SchedulerError::Task { batch_id, attempts, source: Box::new(source) })
                    }
                    Err(e) => {
                        let reason = format!("a read task panicked: {e}");
                        return Err(SchedulerError::Processing { batch_id, source: reason.into() });
                    }
                }
            }
            read.sort_by_key(|(index, _)| *index);
            Ok(read)
        };
        Reading { handle: Some(tokio::spawn(collect)), batch_id }
    }

    /// Reads one task's range (or its share of a piece), retrying transient faults for
    /// `fault_timeout` (from the leader fresh metadata names, going on from where the read
    /// stopped) and other failures up to `attempts` times in all.
    async fn read_task(&self, slot: usize, reader: RangeReader) -> Result<RangeReader, (u32, FetchRangeError)> {
        let attempts = self.attempts.max(1);
        read_task(&self.client, &self.pool, slot, reader, &self.options, attempts, self.fault_timeout).await
    }
}

/// Reads one task's range, retrying transient faults for `fault_timeout` (from the leader
/// fresh metadata names, going on from where the read stopped) and other failures up to
/// `attempts` times in all.
async fn read_task(
    client: &Client,
    pool: &ReadPool,
    slot: usize,
    mut reader: RangeReader,
    options: &FetchOptions,
    attempts: u32,
    fault_timeout: Duration,
) -> Result<RangeReader, (u32, FetchRangeError)> {
    let deadline = std::time::Instant::now() + fault_timeout;
    let mut backoff = FIRST_FAULT_BACKOFF;
    let mut attempt = 0;
    let (topic, partition) = (reader.range().topic.clone(), reader.range().partition);
    loop {
        attempt += 1;
        let read = match pool.to_leader(client, &topic, partition, slot).await {
            Ok(connection) => reader.read(client, Some(&connection), options).await,
            Err(e) => Err(reader.client_error(e)),
        };
        let error = match read {
            Ok(()) => return Ok(reader),
            Err(error) => error,
        };
        let retry =
            if error.is_transient() { std::time::Instant::now() + backoff < deadline } else { attempt < attempts };
        if !retry {
            return Err((attempt, error));
        }
        if let FetchRangeError::Client { source, .. } = &error {
            client.note_error(source);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_FAULT_BACKOFF);
    }
}

/// Runs micro-batches over Kafka partitions with a write-ahead checkpoint log.
#[derive(Debug)]
pub struct Scheduler<C: Clock> {
    client: Client,
    log: Arc<Log>,
    checkpoint_id: u64,
    /// Whether the log's first segment was made ready beside the first planning.
    log_prepared: bool,
    config: SchedulerConfig,
    clock: C,
    estimator: Option<PidRateEstimator>,
    positions: BTreeMap<TopicPartition, i64>,
    /// An intent found open in the log: the first batch re-runs it.
    pending: Option<BatchIntent>,
    recovered_state: Option<RecoveredState>,
    next_batch_id: u64,
    progress: VecDeque<BatchProgress>,
    stop: CancellationToken,
    last_start_ms: Option<u64>,
    /// When the batch under way was due (the trigger's grid); `None` for a run's first.
    due_ms: Option<u64>,
    /// The batch under way was cut short by the memory budget: see `Plan::cut_by_budget`.
    cut_by_budget: Option<f64>,
    /// High watermarks the range fetches reported: a better "latest" than ListOffsets on brokers
    /// that answer it short (Tansu).
    known_high_watermarks: BTreeMap<TopicPartition, i64>,
    /// When partitions were last looked up (clock ms).
    discovered_at_ms: Option<u64>,
    read_connections: Arc<ReadPool>,
    prefetched: Option<Prefetched>,
    pattern: Option<regex::Regex>,
    /// Record bytes per offset in the last batch read, to judge whether a prefetch fits.
    bytes_per_offset: Option<f64>,
    /// The last committed batch's snapshot, written in the background once the next batch's
    /// intent is durable (the deltas hold the state until then).
    snapshot_to_write: Option<Snapshot>,
    /// That write, awaited before the next commit (a snapshot must be of the last committed
    /// batch) and at the end of a run.
    snapshot_writing: Option<tokio::task::JoinHandle<Result<(), sluice_checkpoint::Error>>>,
    /// A batch's intent or commit being written and synced on the blocking pool; what it
    /// changes in the scheduler changes once it is durable.
    log_writing: Option<LogWrite>,
}

/// A record being appended to the checkpoint log and synced, on the blocking pool.
#[derive(Debug)]
struct LogWrite {
    durable: Durable,
    /// How long the sync took.
    writing: tokio::task::JoinHandle<Result<Duration, sluice_checkpoint::Error>>,
}

/// What a log write makes true once it is durable.
#[derive(Debug)]
enum Durable {
    /// The batch is open: until its commit is durable, a later run re-runs it.
    Intent(BatchIntent),
    /// The batch is done: its partitions go on from its ranges' ends.
    Commit { batch_id: u64, ranges: Vec<OffsetRange>, snapshot: Option<Vec<u8>> },
}

impl Durable {
    fn batch_id(&self) -> u64 {
        match self {
            Self::Intent(intent) => intent.batch_id,
            Self::Commit { batch_id, .. } => *batch_id,
        }
    }
}

fn to_log_range(range: &OffsetRange) -> sluice_checkpoint::OffsetRange {
    sluice_checkpoint::OffsetRange {
        topic: range.topic.clone(),
        partition: range.partition,
        start_offset: range.from,
        end_offset: range.until,
    }
}

fn from_log_range(range: &sluice_checkpoint::OffsetRange) -> OffsetRange {
    OffsetRange {
        topic: range.topic.clone(),
        partition: range.partition,
        from: range.start_offset,
        until: range.end_offset,
    }
}

/// The file beside the checkpoint log's segments that holds the checkpoint's identity.
pub const CHECKPOINT_ID_FILE: &str = "checkpoint-id";

/// The checkpoint's identity: a random number made when its log is new (and for a log from
/// before identities, when first opened), kept in [`CHECKPOINT_ID_FILE`] (16 hex digits).
/// Outputs that remember which batches they hold (a Kafka sink's markers) key them by it, so
/// that a new checkpoint, whose batch ids start again at 0, never takes an old batch's output
/// for its own.
fn checkpoint_id(dir: &Path, fresh: bool) -> Result<u64, SchedulerError> {
    let path = dir.join(CHECKPOINT_ID_FILE);
    let failed = |reason: String| SchedulerError::CheckpointId { path: path.display().to_string(), reason };
    if !fresh {
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                return u64::from_str_radix(text.trim(), 16)
                    .map_err(|_| failed(format!("it holds {text:?}, not 16 hexadecimal digits")));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(failed(format!("reading it: {e}"))),
        }
    }
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes).map_err(|e| failed(format!("no randomness to make one: {e}")))?;
    let id = u64::from_le_bytes(bytes);
    // Whole or not at all: a temporary file, synced, renamed over the name, the directory synced.
    let temporary = dir.join(format!("{CHECKPOINT_ID_FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temporary)?;
        std::io::Write::write_all(&mut file, format!("{id:016x}\n").as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, &path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| failed(format!("writing it: {e}")))?;
    Ok(id)
}

/// A checkpoint sync that takes this long is reported.
const SLOW_SYNC: Duration = Duration::from_secs(1);

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl<C: Clock> Scheduler<C> {
    /// Opens (or creates) the checkpoint log in `checkpoint_dir` and recovers where to resume.
    pub fn open(
        client: Client,
        checkpoint_dir: impl AsRef<Path>,
        config: SchedulerConfig,
        clock: C,
    ) -> Result<Self, SchedulerError> {
        let (log, recovered) = Log::open(checkpoint_dir.as_ref(), config.checkpoint.clone())?;
        let dir = checkpoint_dir.as_ref().display();
        if let Some(torn) = &recovered.torn {
            tracing::warn!(checkpoint = %dir, segment = torn.segment_id, offset = torn.offset, problem = %torn.problem, "recovery cut a torn tail (writes never synced before the last run ended)");
        }
        if let Some(damage) = &recovered.damage {
            tracing::error!(checkpoint = %dir, segment = damage.segment_id, offset = damage.offset, problem = %damage.problem, "recovery truncated the checkpoint at damage; later batches are forgotten");
        }
        if let Some(intent) = recovered.pending.first() {
            tracing::warn!(checkpoint = %dir, batch_id = intent.batch_id, "a batch was begun and not committed when the last run ended; it runs again first, with the same offsets");
        }
        // Nothing was ever begun in this log, so nothing outside it can carry its id yet.
        let fresh = recovered.last_committed.is_none() && recovered.pending.is_empty();
        let checkpoint_id = checkpoint_id(checkpoint_dir.as_ref(), fresh)?;
        let mut positions = BTreeMap::new();
        let mut next_batch_id = 0;
        if let Some(last) = &recovered.last_committed {
            for range in &last.intent.ranges {
                positions.insert((range.topic.clone(), range.partition), range.end_offset);
            }
            next_batch_id = last.intent.batch_id + 1;
        }
        // Only the oldest open intent can be pending: intents are written one batch at a time.
        let pending = recovered.pending.first().cloned();
        if let Some(intent) = &pending {
            if intent.batch_id != next_batch_id {
                return Err(SchedulerError::Inconsistent(format!(
                    "open intent for batch {} but the next batch is {next_batch_id}",
                    intent.batch_id
                )));
            }
        }
        let recovered_state = RecoveredState {
            snapshot: recovered.snapshot.map(|s| (s.batch_id, s.state)),
            deltas: recovered.deltas.into_iter().map(|c| (c.batch_id, c.state_delta)).collect(),
        };
        let pattern = match &config.topic_pattern {
            Some(pattern) => Some(
                regex::Regex::new(pattern)
                    .map_err(|e| SchedulerError::TopicPattern { pattern: pattern.clone(), source: Box::new(e) })?,
            ),
            None => None,
        };
        let interval = millis(config.batch_interval);
        let estimator = config.backpressure.then(|| PidRateEstimator::new(interval));
        Ok(Self {
            read_connections: Arc::new(ReadPool::new(client.config().connection.clone())),
            client,
            log: Arc::new(log),
            checkpoint_id,
            log_prepared: false,
            config,
            clock,
            estimator,
            positions,
            pending,
            recovered_state: Some(recovered_state),
            next_batch_id,
            progress: VecDeque::new(),
            stop: CancellationToken::new(),
            last_start_ms: None,
            due_ms: None,
            cut_by_budget: None,
            known_high_watermarks: BTreeMap::new(),
            discovered_at_ms: None,
            prefetched: None,
            pattern,
            bytes_per_offset: None,
            snapshot_to_write: None,
            snapshot_writing: None,
            log_writing: None,
        })
    }

    /// The state recovered from the checkpoint log when it was opened (given once; later calls
    /// get an empty one). A processor restores it before the first batch: with it, a re-run
    /// batch sees the state its first run saw.
    pub fn take_recovered_state(&mut self) -> RecoveredState {
        self.recovered_state.take().unwrap_or_default()
    }

    /// The checkpoint's identity: random, made with its log (see [`CHECKPOINT_ID_FILE`]). It
    /// stays the same across runs on this checkpoint and differs for a new one.
    pub fn checkpoint_id(&self) -> u64 {
        self.checkpoint_id
    }

    /// A token that stops the run: cancelled, it lets the batch under way finish and commit,
    /// and ends a wait for the next batch at once (e.g. on SIGTERM).
    pub fn stop_handle(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Makes `stop` this scheduler's stop token (one made before the scheduler, e.g. by a
    /// streaming context): cancelling it stops the run as [`Scheduler::stop_handle`]'s does.
    pub fn set_stop_handle(&mut self, stop: CancellationToken) {
        self.stop = stop;
    }

    /// Stops the run gracefully on SIGTERM or SIGINT: the batch under way finishes and commits,
    /// then `run` returns. Call from within a tokio runtime.
    pub fn stop_on_signals(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let stop = self.stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
            stop.cancel();
        });
        Ok(())
    }

    /// The next offset to process per partition (committed positions).
    pub fn positions(&self) -> &BTreeMap<TopicPartition, i64> {
        &self.positions
    }

    /// The id the next batch gets.
    pub fn next_batch_id(&self) -> u64 {
        self.next_batch_id
    }

    /// The progress of the last batches, oldest first.
    pub fn progress(&self) -> impl Iterator<Item = &BatchProgress> {
        self.progress.iter()
    }

    /// Runs batches until the trigger says the run is over, a stop is requested, or a batch
    /// fails. `on_progress` sees each batch's progress record.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropped at any await, it loses and repeats nothing. An intent or commit
    /// being written when the run is dropped is finished on the blocking pool and taken into
    /// account by the next `run` before anything else (until then [`Scheduler::positions`] may
    /// not show it). A batch whose commit is durable counts as done (its positions have moved; only its progress record and its
    /// informational group commit may be missing); a batch whose intent is durable but not its
    /// commit is re-run by the next `run` with the same ranges and `rerun` set, as after a
    /// crash, so a processor must give a re-run batch the output its first run would have.
    pub async fn run<P: Processor>(
        &mut self,
        processor: &mut P,
        mut on_progress: impl FnMut(&BatchProgress),
    ) -> Result<u64, SchedulerError> {
        self.log_written().await?;
        let mut trigger = TriggerState::new(self.config.trigger);
        let mut ran = 0;
        while !self.stop.is_cancelled() && !self.bounded_run_done() {
            if let Some(share) = self.cut_by_budget.take() {
                trigger.cut_short(share);
            }
            let Some(wait) = trigger.wait_ms(self.clock.now_ms()) else { break };
            if wait > 0 {
                tokio::select! {
                    biased;
                    () = self.stop.cancelled() => break,
                    () = self.clock.sleep(wait) => {}
                }
            }
            self.due_ms = trigger.due_ms();
            trigger.batch_started(self.clock.now_ms());
            let span = tracing::info_span!("batch", id = self.next_batch_id);
            let (progress, reached_end) = match tracing::Instrument::instrument(self.run_batch(processor), span).await {
                // Stopped while planning waited out a fault: nothing was begun, a clean stop.
                Err(SchedulerError::Planning { .. }) if self.stop.is_cancelled() && self.pending.is_none() => break,
                ran => ran?,
            };
            ran += 1;
            self.write_progress(&progress)?;
            on_progress(&progress);
            if self.progress.len() >= self.config.progress_history.max(1) {
                self.progress.pop_front();
            }
            self.progress.push_back(progress);
            trigger.batch_finished(reached_end);
            if reached_end && self.config.ending_offsets.is_some() {
                break;
            }
        }
        self.write_snapshot_now().await?;
        Ok(ran)
    }

    /// Appends a batch's intent or commit to the log and syncs it, on the blocking pool (a sync
    /// takes milliseconds, seconds on a slow disk, and must not hold an async worker); a sync
    /// slower than [`SLOW_SYNC`] is reported. Once durable, the batch is open or committed.
    async fn write_log(
        &mut self,
        durable: Durable,
        append: impl FnOnce(&Log) -> Result<u64, sluice_checkpoint::Error> + Send + 'static,
    ) -> Result<(), SchedulerError> {
        self.log_written().await?;
        let log = Arc::clone(&self.log);
        let writing = tokio::task::spawn_blocking(move || {
            append(&log)?;
            let syncing = std::time::Instant::now();
            log.commit()?;
            Ok(syncing.elapsed())
        });
        self.log_writing = Some(LogWrite { durable, writing });
        self.log_written().await
    }

    /// Waits for the log write under way, if any, and makes its effect. Cancel safe: a run
    /// dropped while it waits leaves the write here, and the next run waits for it (and takes
    /// its effect) before anything else, so that a batch durable in the log is never planned
    /// again nor forgotten.
    async fn log_written(&mut self) -> Result<(), SchedulerError> {
        let Some(write) = self.log_writing.as_mut() else { return Ok(()) };
        let written = (&mut write.writing).await;
        let Some(LogWrite { durable, .. }) = self.log_writing.take() else { return Ok(()) };
        let batch_id = durable.batch_id();
        let record = if matches!(durable, Durable::Intent(_)) { "intent" } else { "commit" };
        let took = written.map_err(|e| SchedulerError::Processing {
            batch_id,
            source: format!("writing the batch's {record} to the checkpoint log stopped: {e}").into(),
        })??;
        if took >= SLOW_SYNC {
            tracing::warn!(batch_id, record, ?took, "slow checkpoint sync");
        }
        match durable {
            // Until the commit is durable this batch is open: if anything after fails, a later
            // run (in this process or after a restart) re-runs it with the same ranges.
            Durable::Intent(intent) => self.pending = Some(intent),
            Durable::Commit { batch_id, ranges, snapshot } => {
                self.pending = None;
                for range in &ranges {
                    self.positions.insert((range.topic.clone(), range.partition), range.until);
                }
                self.next_batch_id = batch_id + 1;
                // Written once the next batch's intent is durable (or at the end of the run):
                // the commit's delta holds this batch's changes until then.
                self.snapshot_to_write = snapshot.map(|state| Snapshot { batch_id, state });
            }
        }
        Ok(())
    }

    /// Starts writing the last committed batch's snapshot, if it has one not yet written.
    fn start_snapshot_write(&mut self) {
        if let Some(snapshot) = self.snapshot_to_write.take() {
            let log = Arc::clone(&self.log);
            self.snapshot_writing = Some(tokio::task::spawn_blocking(move || {
                log.append_snapshot(&snapshot)?;
                log.commit()
            }));
        }
    }

    /// Waits for the snapshot being written, if any.
    async fn snapshot_written(&mut self) -> Result<(), SchedulerError> {
        // Taken only once done: a run dropped while it waits leaves the write to be awaited
        // by the next one, never running beside a later commit.
        let Some(writing) = self.snapshot_writing.as_mut() else { return Ok(()) };
        let written = writing.await;
        self.snapshot_writing = None;
        let batch_id = self.next_batch_id;
        written.map_err(|e| SchedulerError::Processing {
            batch_id,
            source: format!("writing the state snapshot stopped: {e}").into(),
        })??;
        Ok(())
    }

    /// Writes the last committed batch's snapshot, if not yet written, and waits for it.
    async fn write_snapshot_now(&mut self) -> Result<(), SchedulerError> {
        self.snapshot_written().await?;
        self.start_snapshot_write();
        self.snapshot_written().await
    }

    fn write_progress(&self, progress: &BatchProgress) -> Result<(), SchedulerError> {
        use std::io::Write as _;
        let Some(path) = &self.config.progress_path else { return Ok(()) };
        let line = format!("{}\n", progress.to_json());
        let error = |source| SchedulerError::Progress { path: path.display().to_string(), source };
        if path.as_os_str() == "-" {
            return std::io::stdout().lock().write_all(line.as_bytes()).map_err(error);
        }
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(error)?;
        file.write_all(line.as_bytes()).map_err(error)
    }

    /// Whether a bounded run already reached every ending offset (a finished job run again does
    /// nothing, rather than commit an empty batch).
    fn bounded_run_done(&self) -> bool {
        self.pending.is_none()
            && self.config.ending_offsets.as_ref().is_some_and(|ending| {
                !ending.is_empty() && ending.iter().all(|(tp, end)| self.positions.get(tp).is_some_and(|p| p >= end))
            })
    }

    /// The partitions of the configured topics, with where each starts if it has no position.
    async fn discover(&mut self, batch_id: u64) -> Result<(), SchedulerError> {
        let now = self.clock.now_ms();
        let interval = millis(self.config.partition_discovery_interval);
        if self.discovered_at_ms.is_some_and(|at| now.saturating_sub(at) < interval) {
            return Ok(());
        }
        let planning = |source| SchedulerError::Planning { batch_id, source };
        let metadata = match &self.pattern {
            // A pattern needs every topic's name.
            Some(_) => self.client.refresh_metadata(None).await.map_err(planning)?,
            None => {
                let mut topics: Vec<&str> = self.config.topics.iter().map(String::as_str).collect();
                topics.extend(self.config.assign.iter().map(|(topic, _)| topic.as_str()));
                // And the topics the job has positions in (from its checkpoint), to see them gone.
                topics.extend(self.positions.keys().map(|(topic, _)| topic.as_str()));
                topics.sort_unstable();
                topics.dedup();
                self.client.refresh_metadata(Some(&topics)).await.map_err(planning)?
            }
        };
        self.prune_gone(batch_id, &metadata)?;
        let mut topics = self.config.topics.clone();
        if let Some(pattern) = &self.pattern {
            let matching = metadata.topics.iter().filter(|(name, t)| !t.is_internal && pattern.is_match(name));
            topics.extend(matching.map(|(name, _)| name.clone()).filter(|name| !self.config.topics.contains(name)));
        }
        // Partitions that appear after the first batch start at their beginning: their records
        // are all new to this job (as Spark does).
        let first = self.next_batch_id == 0 && self.last_start_ms.is_none();
        let (mut earliest, mut latest, mut by_time) = (Vec::new(), Vec::new(), Vec::new());
        let whole_topics = topics.iter().filter_map(|topic| metadata.topics.get(topic).map(|t| (topic, t)));
        let mut found: Vec<TopicPartition> =
            whole_topics.flat_map(|(topic, t)| t.partitions.iter().map(|p| (topic.clone(), p.partition))).collect();
        found.extend(
            self.config
                .assign
                .iter()
                .filter(|(topic, partition)| {
                    metadata.topics.get(topic).is_some_and(|t| t.partitions.iter().any(|p| p.partition == *partition))
                })
                .cloned(),
        );
        found.sort();
        found.dedup();
        for key in found {
            if self.positions.contains_key(&key) {
                continue;
            }
            match &self.config.starting_offsets {
                StartingOffsets::Offsets(offsets) if offsets.contains_key(&key) => {
                    let offset = offsets.get(&key).copied().unwrap_or_default();
                    self.positions.insert(key, offset);
                }
                StartingOffsets::Latest if first => latest.push(key),
                StartingOffsets::Timestamp(_) if first => by_time.push(key),
                _ => earliest.push(key),
            }
        }
        let isolation = self.config.fetch.isolation;
        let looked_up = tokio::try_join!(
            self.client.list_offsets(&earliest, OffsetSpec::Earliest),
            self.client.log_ends(&latest, isolation),
            async {
                match self.config.starting_offsets {
                    StartingOffsets::Timestamp(ms) if !by_time.is_empty() => {
                        self.client.list_offsets(&by_time, OffsetSpec::Timestamp(ms)).await
                    }
                    _ => Ok(BTreeMap::new()),
                }
            },
        );
        let (earliest, latest, by_time) = match looked_up {
            Ok(found) => found,
            // A partition that has just appeared is listed a moment before its leader serves it
            // (Kafka answers NOT_LEADER_OR_FOLLOWER meanwhile): the partitions found after the
            // first batch are taken up at a later discovery, the next batch's.
            Err(e) if !first && e.is_retriable() => return Ok(()),
            Err(e) => return Err(planning(e)),
        };
        // -1: no record that late; such a partition starts at its end.
        let (found, after_all): (BTreeMap<_, _>, BTreeMap<_, _>) =
            by_time.into_iter().partition(|(_, offset)| *offset >= 0);
        let keys: Vec<TopicPartition> = after_all.into_keys().collect();
        let ends = self.client.log_ends(&keys, isolation).await.map_err(planning)?;
        self.positions.extend(earliest.into_iter().chain(latest).chain(found).chain(ends));
        self.discovered_at_ms = Some(now);
        Ok(())
    }

    /// [`Scheduler::plan`], retried with backoff while it fails on transient faults (a leader
    /// moving, a broker restarting), for `fault_timeout` at most.
    async fn plan_through_faults(&mut self, batch_id: u64) -> Result<Plan, SchedulerError> {
        let deadline = std::time::Instant::now() + self.config.fault_timeout;
        let mut backoff = FIRST_FAULT_BACKOFF;
        loop {
            match self.plan(batch_id).await {
                Err(SchedulerError::Planning { source, .. })
                    if source.is_retriable()
                        && std::time::Instant::now() + backoff < deadline
                        && !self.stop.is_cancelled() =>
                {
                    tracing::warn!(batch_id, error = %source, retry_in = ?backoff, "planning failed on a transient fault");
                    self.client.note_error(&source);
                    // The partitions are looked up again too: one may be gone.
                    self.discovered_at_ms = None;
                    // A stop ends the wait; the planning after it is the last try.
                    tokio::select! {
                        biased;
                        () = self.stop.cancelled() => {}
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_FAULT_BACKOFF);
                }
                planned => return planned,
            }
        }
    }

    /// Drops the positions of partitions no longer in the cluster (the topic deleted, or made
    /// again with fewer partitions), as Spark does: their records from the job's position on
    /// are gone, which fails the batch under `fail_on_data_loss`. Without this, planning would
    /// ask for the offsets of a partition that does not exist, forever.
    fn prune_gone(&mut self, batch_id: u64, metadata: &ClusterMetadata) -> Result<(), SchedulerError> {
        let gone: Vec<TopicPartition> = self
            .positions
            .keys()
            .filter(|(topic, partition)| match metadata.topics.get(topic) {
                None => true,
                Some(t) if t.error == ErrorCode::UnknownTopicOrPartition => true,
                Some(t) if t.error == ErrorCode::None => !t.partitions.iter().any(|p| p.partition == *partition),
                // Another topic-level error (an election under way): not a verdict.
                Some(_) => false,
            })
            .cloned()
            .collect();
        for key in gone {
            let position = self.positions.get(&key).copied().unwrap_or_default();
            if self.config.fail_on_data_loss {
                let (topic, partition) = key;
                return Err(SchedulerError::PartitionGone { batch_id, topic, partition, position });
            }
            tracing::warn!(batch_id, topic = %key.0, partition = key.1, position, "partition gone from the cluster; dropped from the job (fail_on_data_loss is off)");
            self.positions.remove(&key);
            self.known_high_watermarks.remove(&key);
        }
        Ok(())
    }

    async fn plan(&mut self, batch_id: u64) -> Result<Plan, SchedulerError> {
        self.discover(batch_id).await?;
        let positions = self.positions.clone();
        self.plan_from(batch_id, &positions).await
    }

    /// Plans batch `batch_id` as if the partitions stood at `positions`.
    async fn plan_from(
        &mut self,
        batch_id: u64,
        positions: &BTreeMap<TopicPartition, i64>,
    ) -> Result<Plan, SchedulerError> {
        // One ListOffsets per leader, and the high watermarks fetches reported fill in where a
        // broker answers short; a partition no fetch has reported on yet is probed once with a
        // fetch (which asks ListOffsets itself).
        let (unknown, known): (Vec<TopicPartition>, Vec<TopicPartition>) =
            positions.keys().cloned().partition(|key| !self.known_high_watermarks.contains_key(key));
        let (listed, probed) = tokio::try_join!(
            self.client.list_offsets(&known, OffsetSpec::Latest),
            self.client.log_ends(&unknown, self.config.fetch.isolation),
        )
        .map_err(|source| SchedulerError::Planning { batch_id, source })?;
        let truncated = self.truncated_logs(batch_id, positions, &listed, &probed).await?;
        self.known_high_watermarks.extend(probed);
        let mut positions = positions.clone();
        let mut resets = BTreeMap::new();
        if !truncated.is_empty() {
            let keys: Vec<TopicPartition> = truncated.keys().cloned().collect();
            let starts = self
                .client
                .list_offsets(&keys, OffsetSpec::Earliest)
                .await
                .map_err(|source| SchedulerError::Planning { batch_id, source })?;
            for (key, (from, end)) in truncated {
                if self.config.fail_on_data_loss {
                    let (topic, partition) = key;
                    return Err(SchedulerError::DataLoss { batch_id, topic, partition, position: from, log_end: end });
                }
                // Skipped: the log as it is now is read from its start, all of it new to the job.
                tracing::warn!(batch_id, topic = %key.0, partition = key.1, position = from, log_end = end, "log now ends before the job's position; read again from its start (fail_on_data_loss is off)");
                self.known_high_watermarks.insert(key.clone(), end);
                let start = starts.get(&key).copied().unwrap_or(0).min(end);
                positions.insert(key.clone(), start);
                resets.insert(key, from);
            }
        }
        let mut inputs = Vec::with_capacity(positions.len());
        let mut latest_offsets = Vec::with_capacity(positions.len());
        for (key, from) in &positions {
            let (topic, partition) = key;
            let listed = listed.get(key).copied().unwrap_or(*from);
            let latest = listed.max(self.known_high_watermarks.get(key).copied().unwrap_or(-1));
            latest_offsets.push(latest);
            let end = self
                .config
                .ending_offsets
                .as_ref()
                .and_then(|e| e.get(&(topic.clone(), *partition)).copied())
                .unwrap_or(latest);
            inputs.push(PartitionPlanInput {
                topic: topic.clone(),
                partition: *partition,
                from: *from,
                latest: latest.min(end),
            });
        }
        let rate = self.estimator.as_ref().and_then(PidRateEstimator::rate);
        let mut ranges = plan_batch(&inputs, &self.config.limits, millis(self.config.batch_interval), rate);
        // One batch of everything under `Trigger::Once` (read in pieces if larger than the
        // budget), as Spark's `Once` ignores `maxOffsetsPerTrigger`.
        let capped = self.config.max_batch_bytes > 0 && self.config.trigger != Trigger::Once;
        let mut cut_by_budget = None;
        if capped && ranges.iter().any(|r| !r.is_empty()) {
            let per_offset = match self.bytes_per_offset {
                Some(per_offset) => per_offset,
                None => self.probe_bytes_per_offset(&ranges).await,
            };
            // A tenth under the budget: record sizes vary around the estimate.
            let max_offsets = self.config.max_batch_bytes as f64 * 0.9 / per_offset.max(1.0);
            let planned: i64 = ranges.iter().map(OffsetRange::len).sum();
            ranges = cap_offsets(ranges, max_offsets as i64);
            let kept: i64 = ranges.iter().map(OffsetRange::len).sum();
            if kept < planned {
                // The share of what the limits allow, not of what the partitions held: a backlog
                // smaller than the limits' worth is not paced as if it were that worth (it
                // was, and a 1 s job read its backlog at a quarter of the speed of a 100 ms one).
                let allowed = allowed_offsets(&inputs, &self.config.limits, millis(self.config.batch_interval), rate);
                cut_by_budget = Some(allowed.map_or(0.0, |allowed| (kept as f64 / allowed).min(1.0)));
            }
        }
        Ok(Plan { ranges, latest: latest_offsets, resets, cut_by_budget })
    }

    /// Record bytes per offset, from one small fetch at the start of the longest range, for
    /// the first batch a run plans (later ones use what the batch before read); the assumed
    /// figure if the fetch fails or brings nothing. Kept as the estimate until a batch is read.
    async fn probe_bytes_per_offset(&mut self, ranges: &[OffsetRange]) -> f64 {
        let Some(range) = ranges.iter().max_by_key(|r| r.len()) else { return ASSUMED_BYTES_PER_OFFSET };
        let options = FetchOptions { max_bytes: 64 * 1024, ..self.config.fetch };
        let fetched = self.client.fetch_partition(&range.topic, range.partition, range.from, &options).await;
        let Ok(fetched) = fetched else { return ASSUMED_BYTES_PER_OFFSET };
        let (Some(first), Some(next)) =
            (fetched.records.batches.first().map(|b| b.header.base_offset), fetched.records.next_offset)
        else {
            return ASSUMED_BYTES_PER_OFFSET;
        };
        let bytes: usize = fetched.records.batches.iter().map(sluice_protocol::record::RecordBatch::data_len).sum();
        if next <= first || bytes == 0 {
            return ASSUMED_BYTES_PER_OFFSET;
        }
        let per_offset = bytes as f64 / (next - first) as f64;
        self.bytes_per_offset = Some(per_offset);
        per_offset
    }

    /// The partitions whose log now ends before the position the job reached (the topic was
    /// deleted and re-created, or the log truncated by an unclean leader election), with that
    /// position and the log end. ListOffsets may answer short of the end (Tansu), so a fetch's
    /// high watermark decides before a partition is called truncated.
    async fn truncated_logs(
        &self,
        batch_id: u64,
        positions: &BTreeMap<TopicPartition, i64>,
        listed: &BTreeMap<TopicPartition, i64>,
        probed: &BTreeMap<TopicPartition, i64>,
    ) -> Result<BTreeMap<TopicPartition, (i64, i64)>, SchedulerError> {
        let below = |answers: &BTreeMap<TopicPartition, i64>| -> Vec<TopicPartition> {
            answers
                .iter()
                .filter(|(key, end)| positions.get(*key).is_some_and(|from| **end < *from))
                .map(|(key, _)| key.clone())
                .collect()
        };
        let mut truncated = BTreeMap::new();
        let suspects = below(listed);
        let confirmed = self
            .client
            .log_ends(&suspects, self.config.fetch.isolation)
            .await
            .map_err(|source| SchedulerError::Planning { batch_id, source })?;
        for key in below(&confirmed).into_iter().chain(below(probed)) {
            let end = confirmed.get(&key).or_else(|| probed.get(&key)).copied().unwrap_or_default();
            let from = positions.get(&key).copied().unwrap_or_default();
            truncated.insert(key, (from, end));
        }
        Ok(truncated)
    }

    /// How this scheduler's read tasks run.
    fn read_context(&self) -> ReadContext {
        ReadContext {
            client: self.client.clone(),
            pool: Arc::clone(&self.read_connections),
            options: self.config.fetch,
            attempts: self.config.task_attempts,
            fault_timeout: self.config.fault_timeout,
            max_concurrent_tasks: self.config.max_concurrent_tasks,
            slots: self.config.read_connections_per_broker,
            piece_bytes: self.config.max_batch_bytes,
        }
    }

    /// Starts the read tasks of a batch's first piece in the background.
    fn start_read(&self, batch_id: u64, ranges: &[OffsetRange]) -> Reading {
        let on_loss = if self.config.fail_on_data_loss { DataLoss::Fail } else { DataLoss::Skip };
        let readers = split_ranges(ranges, self.config.min_partitions)
            .into_iter()
            .map(|task| RangeReader::new(task, on_loss, self.bytes_per_offset))
            .enumerate()
            .collect();
        self.read_context().start(batch_id, readers)
    }

    /// Plans the next batch from where this one ends and starts reading it, so its data arrives
    /// while this one is processed; only when its records are expected to fit in
    /// `prefetch_max_bytes` (judged by this batch's bytes per offset). Its intent is written
    /// when it starts, as usual: until then the reads have no effect anywhere.
    async fn prefetch_next(&mut self, batch_id: u64, ranges: &[OffsetRange]) {
        // An empty batch says new data is not flowing: planning ahead would only cost a round trip.
        let empty = ranges.iter().all(OffsetRange::is_empty);
        if empty
            || self.config.prefetch_max_bytes == 0
            || self.config.trigger == Trigger::Once
            || self.stop.is_cancelled()
        {
            return;
        }
        let mut next_positions = self.positions.clone();
        for range in ranges {
            next_positions.insert((range.topic.clone(), range.partition), range.until);
        }
        let done = self
            .config
            .ending_offsets
            .as_ref()
            .is_some_and(|ending| ending.iter().all(|(tp, end)| next_positions.get(tp).is_some_and(|p| p >= end)));
        if done {
            return;
        }
        let Ok(plan) = self.plan_from(batch_id + 1, &next_positions).await else { return };
        let next_offsets: i64 = plan.ranges.iter().map(OffsetRange::len).sum();
        let per_offset = self.bytes_per_offset.unwrap_or(ASSUMED_BYTES_PER_OFFSET);
        let estimate = per_offset * next_offsets as f64;
        if next_offsets == 0 || estimate > self.config.prefetch_max_bytes as f64 {
            return;
        }
        let reading = self.start_read(batch_id + 1, &plan.ranges);
        self.prefetched = Some(Prefetched { plan, reading });
    }

    /// Plans (or takes the open intent), writes the intent, reads, processes, commits.
    async fn run_batch<P: Processor>(&mut self, processor: &mut P) -> Result<(BatchProgress, bool), SchedulerError> {
        // A write a dropped run left under way comes first: it may open or commit a batch.
        self.log_written().await?;
        let batch_id = self.next_batch_id;
        let started = self.clock.now_ms();
        let mut reading = None;
        let (Plan { ranges, mut latest, resets, cut_by_budget }, rerun) = match self.pending.take() {
            Some(intent) => {
                let ranges: Vec<OffsetRange> = intent.ranges.iter().map(from_log_range).collect();
                let latest = ranges.iter().map(|r| r.until).collect();
                (Plan { ranges, latest, resets: BTreeMap::new(), cut_by_budget: None }, true)
            }
            None => match self.prefetched.take().filter(|p| p.reading.batch_id == batch_id) {
                Some(prefetched) => {
                    reading = Some(prefetched.reading);
                    (prefetched.plan, false)
                }
                None => {
                    // A new log creates its first segment (file syncs) while the batch is planned.
                    let preparing = (!self.log_prepared).then(|| {
                        let log = Arc::clone(&self.log);
                        tokio::task::spawn_blocking(move || log.prepare())
                    });
                    let planned = self.plan_through_faults(batch_id).await;
                    if let Some(preparing) = preparing {
                        preparing.await.map_err(|e| SchedulerError::Processing {
                            batch_id,
                            source: format!("preparing the checkpoint log stopped: {e}").into(),
                        })??;
                        self.log_prepared = true;
                    }
                    (planned?, false)
                }
            },
        };
        self.cut_by_budget = cut_by_budget;
        let planned = self.clock.now_ms();
        // Reading has no effect anywhere, so it starts at once, while the intent is made
        // durable; nothing is processed before the intent is.
        let mut reading = match reading.take() {
            Some(reading) => reading,
            None => self.start_read(batch_id, &ranges),
        };
        let intent = BatchIntent { batch_id, ranges: ranges.iter().map(to_log_range).collect(), metadata: Vec::new() };
        let appended_before = self.log.stats().map_or(0, |s| s.appended_bytes);
        if rerun {
            self.pending = Some(intent);
        } else {
            let durable = Durable::Intent(intent.clone());
            self.write_log(durable, move |log| log.append_intent(&intent)).await?;
        }
        // The batch before's snapshot is written while this one runs; its sync would otherwise
        // have held up that batch's commit, or this one's intent.
        self.start_snapshot_write();
        let intent_written = self.clock.now_ms();
        // The first piece (in most batches, all of it).
        let task_ranges = split_ranges(&ranges, self.config.min_partitions);
        let (first, rest) = cut_piece(&task_ranges, reading.finish().await?);
        let fetched = self.clock.now_ms();
        let tally = Arc::new(Mutex::new(Tally::default()));
        let first_is_last = rest.is_empty();
        let mut pieces = Pieces {
            task_ranges,
            first: None,
            reading: None,
            context: self.read_context(),
            given: 0,
            tally: Arc::clone(&tally),
        };
        pieces.tally().add(&first);
        pieces.first = Some(first);
        if !first_is_last {
            pieces.reading = Some(pieces.context.start(batch_id, rest));
        }
        let learn = |scheduler: &mut Self, tally: &Tally| {
            for (key, high_watermark) in &tally.high_watermarks {
                let known = scheduler.known_high_watermarks.entry(key.clone()).or_insert(-1);
                *known = (*known).max(*high_watermark);
            }
            // Over the offsets the record batches span, not the ranges': a range smaller than
            // one record batch still brings all of it.
            if tally.batch_offsets > 0 {
                scheduler.bytes_per_offset = Some(tally.bytes as f64 / tally.batch_offsets as f64);
            }
        };
        learn(self, &pieces.tally());
        let batch = Batch { batch_id, ranges: ranges.clone(), rerun, pieces };
        // The next batch is planned and starts reading while this one is processed, planned with
        // the high watermarks and record sizes this one just saw; not while the later pieces of
        // a batch larger than the budget are read (that would hold three pieces' records).
        let prefetch = async {
            if first_is_last {
                self.prefetch_next(batch_id, &ranges).await;
            }
        };
        let (_, output) = tokio::join!(prefetch, processor.process(batch));
        let mut tally = std::mem::take(&mut *tally.lock().unwrap_or_else(PoisonError::into_inner));
        if let Some(error) = tally.error.take() {
            return Err(error);
        }
        let output = output.map_err(|source| SchedulerError::Processing { batch_id, source })?;
        if !tally.done {
            let reason = "the processor returned before taking all of the batch's records (Batch::next_piece until it gives None)".to_owned();
            return Err(SchedulerError::Processing { batch_id, source: reason.into() });
        }
        if !first_is_last {
            learn(self, &tally);
        }
        if rerun {
            // A re-run's plan is its intent's ranges: where its partitions end now comes from
            // what the reads just saw, so that its progress shows the input left, not lag 0.
            latest = ranges
                .iter()
                .map(|r| {
                    self.known_high_watermarks
                        .get(&(r.topic.clone(), r.partition))
                        .map_or(r.until, |hw| (*hw).max(r.until))
                })
                .collect();
        }
        let (rows, lost) = (tally.records as u64, tally.lost);
        for ((topic, partition), offsets) in lost.iter().filter(|(_, n)| **n > 0) {
            tracing::warn!(batch_id, topic = %topic, partition, offsets, "offsets gone before they were read (retention or deletion); skipped (fail_on_data_loss is off)");
        }
        let (input_bytes, pieces) = (tally.bytes as u64, tally.pieces);
        let processed = self.clock.now_ms();
        let snapshot = output.snapshot;
        self.snapshot_written().await?;
        let commit = BatchCommit { batch_id, state_delta: output.state_delta, sink_markers: output.sink_markers };
        // Once durable, the batch is done: what it changes in the scheduler changes then,
        // before any other await, so that a run dropped later neither repeats nor forgets it.
        let durable = Durable::Commit { batch_id, ranges: ranges.clone(), snapshot };
        self.write_log(durable, move |log| log.append_commit(&commit)).await?;
        let checkpoint_bytes = self.log.stats().map_or(0, |s| s.appended_bytes.saturating_sub(appended_before));
        if let Some(group) = &self.config.commit_to_group {
            let offsets: Vec<(String, i32, i64)> =
                ranges.iter().map(|r| (r.topic.clone(), r.partition, r.until)).collect();
            // Informational: a failure here does not undo the batch.
            if let Err(e) = self.client.commit_group_offsets(group, &offsets).await {
                tracing::warn!(batch_id, group = %group, error = %e, "committing the batch's offsets to the group failed (lag tools see older offsets)");
            }
        }
        let committed = self.clock.now_ms();
        let processing_ms = fetched.saturating_sub(intent_written) + processed.saturating_sub(fetched);
        if let Some(estimator) = &mut self.estimator {
            // Spark's scheduling delay: how long after it was due the batch started.
            let delay = started.saturating_sub(self.due_ms.unwrap_or(started));
            estimator.update(committed, rows, processing_ms, delay);
        }
        let since_previous = self.last_start_ms.map_or(0, |s| started.saturating_sub(s));
        self.last_start_ms = Some(started);
        let total = committed.saturating_sub(started);
        let per_second = |ms: u64| if ms > 0 { rows as f64 * 1000.0 / ms as f64 } else { 0.0 };
        let reached_end = match &self.config.ending_offsets {
            Some(ending) => ranges
                .iter()
                .zip(&latest)
                .all(|(r, latest)| r.until >= ending.get(&(r.topic.clone(), r.partition)).copied().unwrap_or(*latest)),
            None => ranges.iter().zip(&latest).all(|(r, latest)| r.until >= *latest),
        };
        let progress = BatchProgress {
            batch_id,
            timestamp_ms: started,
            num_input_rows: rows,
            num_input_bytes: input_bytes,
            pieces,
            input_rows_per_second: per_second(since_previous),
            processed_rows_per_second: per_second(total),
            durations: Durations {
                planning_ms: planned.saturating_sub(started),
                intent_ms: intent_written.saturating_sub(planned),
                fetching_ms: fetched.saturating_sub(intent_written),
                processing_ms: processed.saturating_sub(fetched),
                committing_ms: committed.saturating_sub(processed),
                total_ms: total,
            },
            sources: ranges
                .iter()
                .zip(&latest)
                .map(|(r, latest)| PartitionProgress {
                    topic: r.topic.clone(),
                    partition: r.partition,
                    start_offset: r.from,
                    end_offset: r.until,
                    latest_offset: *latest,
                    lag: (latest - r.until).max(0),
                    lost_offsets: lost.get(&(r.topic.clone(), r.partition)).copied().unwrap_or(0),
                    reset_from: resets.get(&(r.topic.clone(), r.partition)).copied(),
                })
                .collect(),
            rerun,
            checkpoint_bytes,
        };
        Ok((progress, reached_end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_keeps_its_id_and_a_new_one_gets_another() {
        let dir = tempfile::tempdir().unwrap();
        let first = checkpoint_id(dir.path(), true).unwrap();
        assert_eq!(checkpoint_id(dir.path(), false).unwrap(), first, "the same checkpoint, reopened");
        let stored = std::fs::read_to_string(dir.path().join(CHECKPOINT_ID_FILE)).unwrap();
        assert_eq!(stored, format!("{first:016x}\n"));
        // A log with nothing begun is a new checkpoint, whatever a leftover file says.
        assert_ne!(checkpoint_id(dir.path(), true).unwrap(), first);
        // A log from before checkpoint ids gets one when first opened, and keeps it.
        std::fs::remove_file(dir.path().join(CHECKPOINT_ID_FILE)).unwrap();
        let upgraded = checkpoint_id(dir.path(), false).unwrap();
        assert_eq!(checkpoint_id(dir.path(), false).unwrap(), upgraded);
    }

    #[test]
    fn a_damaged_checkpoint_id_is_an_error_that_says_what_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CHECKPOINT_ID_FILE), "not hex\n").unwrap();
        let error = checkpoint_id(dir.path(), false).unwrap_err().to_string();
        assert!(error.contains("\"not hex\\n\", not 16 hexadecimal digits"), "{error}");
    }
}
