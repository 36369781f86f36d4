#![doc = include_str!("../README.md")]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic))]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod clickstream;
pub mod context;
mod csv_fields;
mod event_time;
mod hash;
mod kafka_sink;
mod keyed;
pub mod record;
pub mod sink;
mod state;
pub mod stream;
pub mod testing;

pub use context::{StreamConfig, StreamError, StreamingContext, DEFAULT_MEMORY_BUDGET};
pub use event_time::{Timed, Watermark, Windowed};
pub use kafka_sink::{KafkaSink, KafkaSinkCounters};
pub use keyed::{KeyState, StateKey};
pub use record::{split_csv, KafkaRecord, ParseError};
pub use sink::{BatchInfo, ForEach, JsonLinesFiles, Sink, Stdout};
/// How a running job is stopped: see [`StreamingContext::stop_handle`].
pub use sluice_scheduler::CancellationToken;
pub use stream::{BatchInput, DStream, Parts};

/// The workspace README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct WorkspaceReadme;
