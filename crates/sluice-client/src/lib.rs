//! # sluice-client
//!
//! An async Kafka client on [`sluice_protocol`], for tokio. This first layer is the
//! [`Connection`]: one broker, many requests in flight matched by correlation id, API versions
//! negotiated on connect, request timeouts, and errors that name the broker and say what to do.
//! On top, the [`Client`]: bootstrap, the metadata cache, one connection per broker reconnected
//! with capped exponential backoff and jitter, leader lookup, and topic administration; and the
//! [`Producer`]: per-partition batching with linger and bounded memory, any codec, acks 0/1/all,
//! idempotent by default, retries that keep per-partition order; and the [`Consumer`] for
//! assigned partitions: one fetch per leader per poll, offset reset, `read_committed` filtering,
//! watermarks and lag. Consumer groups build on these.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic))]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod connection;
pub mod consumer;
pub mod error;
pub mod partitioner;
pub mod producer;

pub use client::{
    Client, ClientConfig, ClusterMetadata, FetchOptions, FetchedPartition, Isolation, OffsetSpec, PartitionMetadata,
    TopicMetadata,
};
pub use connection::{Connection, ConnectionConfig, InFlight, VersionRange};
pub use consumer::{Consumer, ConsumerConfig, OffsetReset, PartitionProgress, PartitionRecords, StartAt};
pub use error::{Error, Result};
pub use producer::{Acks, DeliveryFuture, Producer, ProducerConfig, ProducerRecord, RecordMetadata};
