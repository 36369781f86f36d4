//! Progress reporting: each batch's [`BatchProgress`] record, in the shape of Spark's
//! `StreamingQueryProgress` (per partition its offsets, latest offset and lag; the phases'
//! durations), appended to `progress_path` if set; and the batch's end offsets committed to a
//! consumer group for lag tools.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Scheduler, SchedulerError};
use crate::clock::Clock;
use crate::plan::{OffsetRange, TopicPartition};

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
    /// [`SchedulerConfig::max_batch_bytes`](super::SchedulerConfig::max_batch_bytes) bounds.
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
    /// Scale-out mode: the batch's transaction did not commit (the group had moved on, or the
    /// commit failed): its records count as not consumed, and its partitions go on from the
    /// group's committed offsets. So do those of the batches before it that left that
    /// transaction open (`transaction_open`).
    pub aborted: bool,
    /// Scale-out mode: the batch left its transaction open for the next (a transaction spans
    /// batches while the process catches up: `ScaleConfig::commit_interval`); whether its records
    /// were consumed is told by the batch that ends the transaction (`aborted`).
    pub transaction_open: bool,
}

impl BatchProgress {
    /// One JSON line.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// When each phase of a batch ended, on the scheduler's clock (ms).
#[derive(Debug)]
pub(super) struct PhaseTimes {
    pub(super) started: u64,
    pub(super) planned: u64,
    pub(super) intent_written: u64,
    pub(super) fetched: u64,
    pub(super) processed: u64,
    pub(super) committed: u64,
}

impl PhaseTimes {
    /// The whole batch.
    pub(super) fn total_ms(&self) -> u64 {
        self.committed.saturating_sub(self.started)
    }

    pub(super) fn durations(&self) -> Durations {
        Durations {
            planning_ms: self.planned.saturating_sub(self.started),
            intent_ms: self.intent_written.saturating_sub(self.planned),
            fetching_ms: self.fetched.saturating_sub(self.intent_written),
            processing_ms: self.processed.saturating_sub(self.fetched),
            committing_ms: self.committed.saturating_sub(self.processed),
            total_ms: self.total_ms(),
        }
    }
}

/// Each partition of a batch in its progress record: its range, the latest offset known
/// (`latest`, in the same order as `ranges`) and the lag behind it, the offsets the log no
/// longer held, and the position a truncated log made the batch start over from.
pub(super) fn partition_progress(
    ranges: &[OffsetRange],
    latest: &[i64],
    lost: &BTreeMap<TopicPartition, i64>,
    resets: &BTreeMap<TopicPartition, i64>,
) -> Vec<PartitionProgress> {
    ranges
        .iter()
        .zip(latest)
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
        .collect()
}

impl<C: Clock> Scheduler<C> {
    /// Appends a batch's progress record as a JSON line to `progress_path`, if set.
    pub(super) fn write_progress(&self, progress: &BatchProgress) -> Result<(), SchedulerError> {
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

    /// The latest offsets of a re-run's partitions. A re-run's plan is its intent's ranges:
    /// where its partitions end now comes from what the reads just saw, so that its progress
    /// shows the input left, not lag 0.
    pub(super) fn rerun_latest(&self, ranges: &[OffsetRange]) -> Vec<i64> {
        ranges
            .iter()
            .map(|r| {
                self.known_high_watermarks.get(&(r.topic.clone(), r.partition)).map_or(r.until, |hw| (*hw).max(r.until))
            })
            .collect()
    }

    /// Whether a batch's ranges reach the ending offsets of a bounded run (a partition not
    /// listed: its latest offset), or without ending offsets, the latest offsets (`latest`, in
    /// the same order as `ranges`).
    pub(super) fn reached_end(&self, ranges: &[OffsetRange], latest: &[i64]) -> bool {
        match &self.config.ending_offsets {
            Some(ending) => ranges
                .iter()
                .zip(latest)
                .all(|(r, latest)| r.until >= ending.get(&(r.topic.clone(), r.partition)).copied().unwrap_or(*latest)),
            None => ranges.iter().zip(latest).all(|(r, latest)| r.until >= *latest),
        }
    }

    /// Commits a batch's end offsets to `commit_to_group`, if set, so that lag tools see the
    /// job's progress. Informational: a failure is reported and does not undo the batch.
    pub(super) async fn commit_to_group(&self, batch_id: u64, ranges: &[OffsetRange]) {
        if let Some(group) = &self.config.commit_to_group {
            let offsets: Vec<(String, i32, i64)> =
                ranges.iter().map(|r| (r.topic.clone(), r.partition, r.until)).collect();
            // Informational: a failure here does not undo the batch.
            if let Err(e) = self.client.commit_group_offsets(group, &offsets).await {
                tracing::warn!(batch_id, group = %group, error = %e, "committing the batch's offsets to the group failed (lag tools see older offsets)");
            }
        }
    }
}
