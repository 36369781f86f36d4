#![doc = include_str!("../README.md")]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic))]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod assignor;
pub mod client;
pub mod connection;
pub mod consumer;
pub mod error;
pub mod group;
pub mod partitioner;
pub mod producer;
pub mod resolve;
pub mod sasl;
pub mod tls;

pub use assignor::{Assignor, GroupMember, RangeAssignor, RoundRobinAssignor};
pub use client::{
    Client, ClientConfig, ClusterMetadata, FetchOptions, FetchedPartition, Isolation, OffsetSpec, PartitionMetadata,
    TopicMetadata,
};
pub use connection::{Connection, ConnectionConfig, InFlight, RequestObserver, VersionRange};
pub use consumer::{
    filter_aborted, Consumer, ConsumerConfig, OffsetReset, PartitionProgress, PartitionRecords, StartAt,
};
pub use error::{Error, Result};
pub use group::{
    ConsumerGroupMetadata, GroupConfig, GroupConsumer, GroupDescription, GroupEvent, GroupListing,
    GroupMemberDescription,
};
pub use producer::{Acks, DeliveryFuture, Producer, ProducerConfig, ProducerRecord, RecordMetadata};
pub use sasl::{SaslConfig, SaslMechanism};
pub use tls::{Crypto, Identity, TlsConfig, Trust};
