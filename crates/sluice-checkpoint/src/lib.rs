#![doc = include_str!("../README.md")]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic))]
#![warn(missing_docs)]

mod error;
pub mod format;
mod ledger;
mod log;
mod payload;
mod recover;
pub mod rng;
pub mod storage;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::{Error, Result, StorageOp};
pub use ledger::{replay, CommittedBatch, Recovered};
pub use log::{Log, LogStats, Options, MAX_SEGMENT_BYTES, MIN_SEGMENT_BYTES};
pub use payload::{BatchCommit, BatchIntent, OffsetRange, Snapshot};
pub use recover::{recover, Cut, RecordView, Recovery, RecoveryMode, SegmentExtent, SegmentImage, StopPoint};

/// Serializes an engine value into the opaque bytes of a payload field (postcard format).
///
/// ```
/// #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
/// struct Watermark { event_time_ms: i64 }
///
/// let bytes = sluice_checkpoint::encode_value(&Watermark { event_time_ms: 42 })?;
/// let back: Watermark = sluice_checkpoint::decode_value(&bytes)?;
/// assert_eq!(back, Watermark { event_time_ms: 42 });
/// # Ok::<(), sluice_checkpoint::Error>(())
/// ```
pub fn encode_value<T: serde::Serialize>(value: &T) -> Result<Vec<u8>> {
    postcard::to_stdvec(value).map_err(|source| Error::Payload {
        action: "encode",
        type_name: std::any::type_name::<T>(),
        source,
    })
}

/// [`encode_value`] appended to `out`: give it a buffer with room for the value, and a large
/// value is encoded without the buffer growing (and being copied) on the way.
pub fn encode_value_into<T: serde::Serialize>(value: &T, out: Vec<u8>) -> Result<Vec<u8>> {
    postcard::to_extend(value, out).map_err(|source| Error::Payload {
        action: "encode",
        type_name: std::any::type_name::<T>(),
        source,
    })
}

/// Deserializes an engine value written by [`encode_value`].
pub fn decode_value<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|source| Error::Payload {
        action: "decode",
        type_name: std::any::type_name::<T>(),
        source,
    })
}
