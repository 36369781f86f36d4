#![doc = include_str!("../README.md")]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic))]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod clock;
mod fetch;
mod plan;
mod rate;
mod scheduler;
mod trigger;

pub use clock::{Clock, ManualClock, SystemClock};
pub use fetch::{
    fetch_range, fetch_range_on, DataLoss, FetchRangeError, RangeReader, RangeRecords, ReadBudget, RecordPosition,
};
pub use plan::{cap_offsets, plan_batch, split_ranges, OffsetRange, PartitionPlanInput, RateLimits, TopicPartition};
pub use rate::PidRateEstimator;
pub use scheduler::{
    Batch, BatchOutput, BatchProgress, Durations, PartitionChanges, PartitionProgress, Piece, Processor,
    RecoveredState, ScaleConfig, Scheduler, SchedulerConfig, SchedulerError, StartingOffsets, CHECKPOINT_ID_FILE,
    DEFAULT_MAX_BATCH_BYTES,
};
/// How a run is stopped: see [`Scheduler::stop_handle`].
pub use tokio_util::sync::CancellationToken;
pub use trigger::{Trigger, TriggerState};

/// Any error, kept whole: what a [`Processor`] fails a batch with (the source of
/// [`SchedulerError::Processing`]).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
