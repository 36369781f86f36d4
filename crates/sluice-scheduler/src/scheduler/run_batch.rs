//! One batch, start to end: its plan (the open intent's, the one prefetched, or a new one), its
//! intent made durable while its reads start, its first piece read, the processor (the next
//! batch prefetched meanwhile), its commit made durable, and its progress record.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::batch::{cut_piece, Pieces, Tally};
use super::checkpoint::from_log_range;
use super::planning::Plan;
use super::progress::{partition_progress, PhaseTimes};
use super::read::Reading;
use super::scale::NOT_COMMITTED;
use super::{Batch, BatchOutput, BatchProgress, Processor, Scheduler, SchedulerError};
use crate::clock::Clock;
use crate::plan::{split_ranges, OffsetRange};

impl<C: Clock> Scheduler<C> {
    /// Plans (or takes the open intent), writes the intent, reads, processes, commits.
    pub(super) async fn run_batch<P: Processor>(
        &mut self,
        processor: &mut P,
    ) -> Result<(BatchProgress, bool), SchedulerError> {
        // A write a dropped run left under way comes first: it may open or commit a batch.
        self.log_written().await?;
        let batch_id = self.next_batch_id;
        if self.config.scale.is_some() {
            self.take_group_changes(batch_id).await?;
            let changes = self.take_partition_changes();
            if !changes.is_empty() {
                processor
                    .partitions_changed(&changes)
                    .await
                    .map_err(|source| SchedulerError::Processing { batch_id, source })?;
            }
        }
        let (started, started_at) = (self.clock.now_ms(), std::time::Instant::now());
        let (Plan { ranges, latest, resets, cut_by_budget }, rerun, reading) = self.take_plan(batch_id).await?;
        self.cut_by_budget = cut_by_budget;
        let planned = self.clock.now_ms();
        // Reading has no effect anywhere, so it starts at once, while the intent is made
        // durable; nothing is processed before the intent is.
        let mut reading = match reading {
            Some(reading) => reading,
            None => self.start_read(batch_id, &ranges),
        };
        let appended_before = self.log.stats().map_or(0, |s| s.appended_bytes);
        self.write_intent(batch_id, &ranges, rerun).await?;
        // The batch before's snapshot is written while this one runs; its sync would otherwise
        // have held up that batch's commit, or this one's intent.
        self.start_snapshot_write();
        let intent_written = self.clock.now_ms();
        // Scale-out: the transaction begins (and starts taking in the group's offsets) while
        // the batch is read, or goes on from the batch before, which left it open.
        let begins_transaction = !self.transaction_open();
        let transaction = self.begin_batch_transaction(&ranges).await?;
        let in_transaction = transaction.is_some();
        // Whether it ends with this batch is decided once the batch has taken its time.
        let end = self.transaction_end(&ranges, &latest, started_at);
        // The first piece (in most batches, all of it).
        let task_ranges = split_ranges(&ranges, self.config.min_partitions);
        let first = match reading.finish().await {
            Ok(first) => first,
            Err(error) => {
                if in_transaction {
                    self.abort_after_failure(batch_id).await;
                }
                return Err(error);
            }
        };
        let (first, rest) = cut_piece(&task_ranges, first);
        let fetched = self.clock.now_ms();
        let first_is_last = rest.is_empty();
        let pieces = Pieces::new(batch_id, task_ranges, first, rest, self.read_context());
        let tally = Arc::clone(&pieces.tally);
        self.learn(&pieces.tally());
        let member_id = self.scale.as_ref().map(|scale| scale.member_id());
        let batch = Batch {
            batch_id,
            ranges: ranges.clone(),
            rerun,
            pieces,
            transaction,
            member_id,
            end: end.clone(),
            begins_transaction,
        };
        let (output, tally) = match self.process(processor, batch, &ranges, &tally, first_is_last).await {
            Ok(processed) => processed,
            Err(error) => {
                if in_transaction {
                    self.abort_after_failure(batch_id).await;
                }
                return Err(error);
            }
        };
        let latest = if rerun { self.rerun_latest(&ranges) } else { latest };
        let (rows, lost) = (tally.records as u64, tally.lost);
        for ((topic, partition), offsets) in lost.iter().filter(|(_, n)| **n > 0) {
            tracing::warn!(batch_id, topic = %topic, partition, offsets, "offsets gone before they were read (retention or deletion); skipped (fail_on_data_loss is off)");
        }
        let (input_bytes, pieces) = (tally.bytes as u64, tally.pieces);
        let processed = self.clock.now_ms();
        self.snapshot_written().await?;
        // Scale-out: the batch counts once its transaction commits in Kafka; refused (the group
        // moved on), it is closed here as not committed and its partitions go on from the group.
        // A batch that leaves its transaction open for the next counts as done here: if that
        // transaction aborts, where all of its batches' partitions go on is read again.
        let ends_transaction = end.decide(true);
        let in_kafka = if ends_transaction { self.commit_batch_transaction(batch_id).await? } else { true };
        let (commit_ranges, output) = if in_kafka {
            (ranges.clone(), output)
        } else {
            (Vec::new(), BatchOutput { sink_markers: NOT_COMMITTED.to_vec(), ..BatchOutput::default() })
        };
        self.write_commit(batch_id, &commit_ranges, output).await?;
        if in_transaction && in_kafka && ends_transaction {
            processor.committed(batch_id).await.map_err(|source| SchedulerError::Processing { batch_id, source })?;
        }
        let checkpoint_bytes = self.log.stats().map_or(0, |s| s.appended_bytes.saturating_sub(appended_before));
        self.commit_to_group(batch_id, &ranges).await;
        let committed = self.clock.now_ms();
        let times = PhaseTimes { started, planned, intent_written, fetched, processed, committed };
        self.update_rate_estimate(rows, &times);
        let since_previous = self.last_start_ms.map_or(0, |s| started.saturating_sub(s));
        self.last_start_ms = Some(started);
        let per_second = |ms: u64| if ms > 0 { rows as f64 * 1000.0 / ms as f64 } else { 0.0 };
        let reached_end = self.reached_end(&ranges, &latest);
        let progress = BatchProgress {
            batch_id,
            timestamp_ms: started,
            num_input_rows: rows,
            num_input_bytes: input_bytes,
            pieces,
            input_rows_per_second: per_second(since_previous),
            processed_rows_per_second: per_second(times.total_ms()),
            durations: times.durations(),
            sources: partition_progress(&ranges, &latest, &lost, &resets),
            rerun,
            checkpoint_bytes,
            aborted: !in_kafka,
            transaction_open: self.transaction_open(),
        };
        Ok((progress, reached_end))
    }

    /// The batch's plan, whether it is a re-run, and its reads if they are under way: the open
    /// intent's ranges (a re-run), the batch prefetched, or a new plan.
    async fn take_plan(&mut self, batch_id: u64) -> Result<(Plan, bool, Option<Reading>), SchedulerError> {
        match self.pending.take() {
            Some(intent) => {
                let ranges: Vec<OffsetRange> = intent.ranges.iter().map(from_log_range).collect();
                let latest = ranges.iter().map(|r| r.until).collect();
                Ok((Plan { ranges, latest, resets: BTreeMap::new(), cut_by_budget: None }, true, None))
            }
            None => match self.prefetched.take().filter(|p| p.reading.batch_id == batch_id) {
                Some(prefetched) => Ok((prefetched.plan, false, Some(prefetched.reading))),
                None => self.plan_new(batch_id).await.map(|plan| (plan, false, None)),
            },
        }
    }

    /// Plans a new batch. A new log creates its first segment (file syncs) while the batch is
    /// planned.
    async fn plan_new(&mut self, batch_id: u64) -> Result<Plan, SchedulerError> {
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
        planned
    }

    /// Hands the batch to the processor and, meanwhile, plans the next batch and starts reading
    /// it; then what the processor returned and what the batch's pieces held (`tally`, shared
    /// with the batch). Fails if reading a later piece failed, the processor failed, or it
    /// returned before taking every piece.
    async fn process<P: Processor>(
        &mut self,
        processor: &mut P,
        batch: Batch,
        ranges: &[OffsetRange],
        tally: &Mutex<Tally>,
        first_is_last: bool,
    ) -> Result<(BatchOutput, Tally), SchedulerError> {
        let batch_id = batch.batch_id;
        // The next batch is planned and starts reading while this one is processed, planned with
        // the high watermarks and record sizes this one just saw; not while the later pieces of
        // a batch larger than the budget are read (that would hold three pieces' records).
        let prefetch = async {
            if first_is_last {
                self.prefetch_next(batch_id, ranges).await;
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
            self.learn(&tally);
        }
        Ok((output, tally))
    }

    /// Keeps what a batch's reads saw for planning the next: the high watermarks, and the
    /// record bytes per offset.
    fn learn(&mut self, tally: &Tally) {
        for (key, high_watermark) in &tally.high_watermarks {
            let known = self.known_high_watermarks.entry(key.clone()).or_insert(-1);
            *known = (*known).max(*high_watermark);
        }
        // Over the offsets the record batches span, not the ranges': a range smaller than
        // one record batch still brings all of it.
        if tally.batch_offsets > 0 {
            self.bytes_per_offset = Some(tally.bytes as f64 / tally.batch_offsets as f64);
        }
    }

    /// Tells the backpressure rate estimator, if any, how the batch went.
    fn update_rate_estimate(&mut self, rows: u64, times: &PhaseTimes) {
        let processing_ms =
            times.fetched.saturating_sub(times.intent_written) + times.processed.saturating_sub(times.fetched);
        if let Some(estimator) = &mut self.estimator {
            // Spark's scheduling delay: how long after it was due the batch started.
            let delay = times.started.saturating_sub(self.due_ms.unwrap_or(times.started));
            estimator.update(times.committed, rows, processing_ms, delay);
        }
    }
}
