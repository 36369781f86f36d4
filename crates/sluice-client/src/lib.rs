//! # sluice-client
//!
//! An async Kafka client on [`sluice_protocol`], for tokio. This first layer is the
//! [`Connection`]: one broker, many requests in flight matched by correlation id, API versions
//! negotiated on connect, request timeouts, and errors that name the broker and say what to do.
//! Metadata, the producer, the fetcher, consumer groups and admin build on it.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic))]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod connection;
pub mod error;

pub use connection::{Connection, ConnectionConfig, VersionRange};
pub use error::{Error, Result};
