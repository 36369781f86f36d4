//! The micro-batch loop. Each batch: plan the offset ranges, write them as the batch's intent
//! to the checkpoint log and make it durable, read the ranges (tasks in parallel, each retried
//! from its partition's current leader through transient faults, for `fault_timeout`), hand the
//! records to the processor, and when it returns, write the
//! batch's commit and make it durable. On open, the log says where to resume: after the last
//! committed batch, re-running an intent that has no commit with exactly its ranges.
//!
//! This file holds the [`Scheduler`]: opening it on its checkpoint log, and the loop of `run`.
//! The rest, by concern:
//!
//! - `config`, `error`: how it runs ([`SchedulerConfig`]) and what goes wrong ([`SchedulerError`]);
//! - `batch`: a batch as the processor sees it, read in pieces;
//! - `run_batch`: one batch, start to end, step by step;
//! - `discovery`: the partitions to read, new ones and gone ones;
//! - `planning`: a batch's offset ranges;
//! - `read`: the read tasks and their connections;
//! - `prefetch`: the next batch read while the current one is processed;
//! - `checkpoint`: the intents and commits written to the log, and the checkpoint's identity;
//! - `snapshot`: state snapshots written in the background;
//! - `progress`: progress records, lag, and offsets committed to a consumer group;
//! - `scale`: scale-out mode, the partitions a consumer group shares out and a Kafka transaction
//!   per batch.

mod batch;
mod checkpoint;
mod config;
mod discovery;
mod error;
mod planning;
mod prefetch;
mod progress;
mod read;
mod run_batch;
mod scale;
mod snapshot;

pub use batch::{Batch, BatchOutput, Piece, Processor};
pub use checkpoint::CHECKPOINT_ID_FILE;
pub use config::{ScaleConfig, SchedulerConfig, StartingOffsets, DEFAULT_MAX_BATCH_BYTES};
pub use error::SchedulerError;
pub use progress::{BatchProgress, Durations, PartitionProgress};
pub use scale::PartitionChanges;

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sluice_checkpoint::{BatchIntent, Log, Snapshot};
use sluice_client::Client;
use tokio_util::sync::CancellationToken;

use self::checkpoint::{checkpoint_id, LogWrite};
use self::prefetch::Prefetched;
use self::read::ReadPool;
use crate::clock::Clock;
use crate::plan::TopicPartition;
use crate::rate::PidRateEstimator;
use crate::trigger::TriggerState;

/// The state a job had at its last committed batch, as the checkpoint log holds it: the latest
/// snapshot and the deltas of the batches committed after it, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveredState {
    /// The latest snapshot: the batch it was taken after, and its bytes.
    pub snapshot: Option<(u64, Vec<u8>)>,
    /// `(batch_id, state_delta)` of each batch committed after the snapshot.
    pub deltas: Vec<(u64, Vec<u8>)>,
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
    /// Scale-out mode: the group member and the transactional producer, once joined.
    scale: Option<scale::Scale>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl<C: Clock> Scheduler<C> {
    /// Opens (or creates) the checkpoint log in `checkpoint_dir` and recovers where to resume.
    pub fn open(
        client: Client,
        checkpoint_dir: impl AsRef<Path>,
        mut config: SchedulerConfig,
        clock: C,
    ) -> Result<Self, SchedulerError> {
        if config.scale.is_some() {
            let conflicts = [
                (config.topic_pattern.is_some(), "topic_pattern"),
                (!config.assign.is_empty(), "assign"),
                (config.commit_to_group.is_some(), "commit_to_group (the job's group holds its offsets)"),
                (config.ending_offsets.is_some(), "ending_offsets"),
            ];
            if let Some((_, what)) = conflicts.iter().find(|(set, _)| *set) {
                return Err(SchedulerError::Config(format!("scale-out mode cannot be combined with {what}")));
            }
            let (internal, co_partitioned) =
                config.scale.as_ref().map_or((0, false), |scale| (scale.internal_topics.len(), scale.co_partitioned));
            if internal > 0 && config.topics.len() != 1 && !co_partitioned {
                return Err(SchedulerError::Config(format!(
                    "internal topics go with the partitions of the source, and this job reads {} topics: they must be co_partitioned",
                    config.topics.len()
                )));
            }
            // Other processes' batches are transactions: only what they committed is read.
            config.fetch.isolation = sluice_client::Isolation::ReadCommitted;
        }
        let (log, recovered) = Log::open(checkpoint_dir.as_ref(), config.checkpoint.clone())?;
        let dir = checkpoint_dir.as_ref().display();
        if let Some(torn) = &recovered.torn {
            tracing::warn!(checkpoint = %dir, segment = torn.segment_id, offset = torn.offset, problem = %torn.problem, "recovery cut a torn tail (writes never synced before the last run ended)");
        }
        if let Some(damage) = &recovered.damage {
            tracing::error!(checkpoint = %dir, segment = damage.segment_id, offset = damage.offset, problem = %damage.problem, "recovery truncated the checkpoint at damage; later batches are forgotten");
        }
        if let Some(intent) = recovered.pending.first() {
            if config.scale.is_some() {
                tracing::warn!(checkpoint = %dir, batch_id = intent.batch_id, "a batch was begun and not committed when the last run ended; scale-out: it is closed, and its partitions go on from the group's offsets");
            } else {
                tracing::warn!(checkpoint = %dir, batch_id = intent.batch_id, "a batch was begun and not committed when the last run ended; it runs again first, with the same offsets");
            }
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
            scale: None,
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
    /// (In scale-out mode such a batch is closed instead, its transaction aborted, and its
    /// partitions go on from the group's offsets: see [`ScaleConfig`].)
    pub async fn run<P: Processor>(
        &mut self,
        processor: &mut P,
        mut on_progress: impl FnMut(&BatchProgress),
    ) -> Result<u64, SchedulerError> {
        self.log_written().await?;
        self.join_group().await?;
        let ran = self.run_batches(processor, &mut on_progress).await;
        // Scale-out: whatever ended the run (a stop, a bounded run done, a failure), the member
        // leaves, so that its partitions go to the others at once instead of waiting for its
        // revocations forever (a failed batch's transaction is aborted by the next run or, if
        // the process ends, by the broker after `transaction_timeout`).
        self.leave_group().await;
        ran
    }

    /// The batches of a run, until the trigger, a stop or a failure ends it.
    async fn run_batches<P: Processor>(
        &mut self,
        processor: &mut P,
        on_progress: &mut impl FnMut(&BatchProgress),
    ) -> Result<u64, SchedulerError> {
        let mut trigger = TriggerState::new(self.config.trigger);
        let mut ran = 0;
        // Scale-out: a stop lets a transaction spanning batches end with one more batch (its
        // batches' state changes go with it).
        while (!self.stop.is_cancelled() || self.transaction_open()) && !self.bounded_run_done() {
            if let Some(share) = self.cut_by_budget.take() {
                trigger.cut_short(share);
            }
            let Some(wait) = trigger.wait_ms(self.clock.now_ms()) else { break };
            if wait > 0 && !(self.stop.is_cancelled() && self.transaction_open()) {
                tokio::select! {
                    biased;
                    () = self.stop.cancelled() => {
                        if !self.transaction_open() {
                            break;
                        }
                    }
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

    /// Whether a bounded run already reached every ending offset (a finished job run again does
    /// nothing, rather than commit an empty batch).
    fn bounded_run_done(&self) -> bool {
        self.pending.is_none()
            && self.config.ending_offsets.as_ref().is_some_and(|ending| {
                !ending.is_empty() && ending.iter().all(|(tp, end)| self.positions.get(tp).is_some_and(|p| p >= end))
            })
    }
}
