//! What went wrong running batches: [`SchedulerError`].

use crate::fetch::FetchRangeError;

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
    /// Scale-out: the group or the batch's transaction failed for good (the coordinator
    /// refused the member, the producer was fenced by another process with the same instance).
    #[error("scale-out group {group}: {what}: {source}")]
    Group {
        /// The group.
        group: String,
        /// What was being done.
        what: &'static str,
        /// The client's error.
        source: Box<sluice_client::Error>,
    },
    /// The configuration cannot run.
    #[error("configuration: {0}")]
    Config(String),
    /// The log holds an intent whose ranges this scheduler cannot use.
    #[error("checkpoint: {0}")]
    Inconsistent(String),
}
