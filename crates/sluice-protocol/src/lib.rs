//! # sluice-protocol
//!
//! A sans-IO codec for the Kafka wire protocol, in pure Rust: primitives, framing, request and
//! response headers, the request/response messages the sluice client speaks (generated from
//! Kafka's message schemas, every version), error codes, record batches (v2, and legacy message
//! sets v0/v1 for reading) and the four compression codecs.
//!
//! Nothing here does I/O: bytes in, values out, and back. Decoding never panics on any input; it
//! returns a [`DecodeError`] that says what was wrong and where.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic))]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod error;
pub mod messages;
pub mod primitives;

pub use error::{DecodeError, EncodeError};
