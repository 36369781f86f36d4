#![doc = include_str!("../README.md")]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic))]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod changelog;
#[cfg(feature = "demo")]
pub mod clickstream;
mod context;
mod csv_fields;
mod event_time;
mod graph;
mod hash;
mod kafka_sink;
mod keyed;
mod local_copy;
mod markers;
mod pool;
mod record;
mod repartition;
mod sink;
mod standby;
mod state;
mod stream;
#[cfg(feature = "testing")]
pub mod testing;

pub use changelog::RestoreCounters;
pub use context::{StreamConfig, StreamError, StreamingContext, DEFAULT_MEMORY_BUDGET};
pub use event_time::{Timed, Watermark, Windowed};
pub use graph::{BatchInfo, BatchInput, Parts};
pub use kafka_sink::{KafkaSink, KafkaSinkCounters, KafkaSinkError};
pub use keyed::{KeyState, StateKey};
pub use record::{split_csv, KafkaRecord, ParseError};
pub use sink::{ForEach, JsonLinesFiles, Sink, Stdout};
/// The error a sink, a `foreach_batch` closure or a stateful operator gives: any error, kept
/// whole as the source of the batch's failure.
pub use sluice_scheduler::BoxError;
/// How a running job is stopped: see [`StreamingContext::stop_handle`].
pub use sluice_scheduler::CancellationToken;
pub use stream::DStream;

/// The workspace README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct WorkspaceReadme;
