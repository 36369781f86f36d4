#![doc = include_str!("../README.md")]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic))]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod compression;
pub mod consumer;
pub mod error;
pub mod error_code;
pub mod frame;
#[cfg(feature = "arbitrary")]
pub mod fuzzing;
pub mod header;
pub mod messages;
pub mod primitives;
pub mod record;

pub use error::{DecodeError, EncodeError};
