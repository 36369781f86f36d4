#![doc = include_str!("../README.md")]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic))]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod admin;
mod assignor;
mod client;
mod connection;
mod consumer;
mod consumer_group;
mod error;
mod group;
mod partitioner;
mod producer;
mod resolve;
#[cfg(feature = "sasl")]
mod sasl;
#[cfg(feature = "tls")]
mod tls;

pub use admin::{
    ConsumerGroupDescription, ConsumerGroupMemberDescription, GroupDescription, GroupListing, GroupMemberDescription,
};
pub use assignor::{Assignment, Assignor, CooperativeStickyAssignor, GroupMember, RangeAssignor, RoundRobinAssignor};
pub use client::{
    Client, ClientConfig, ClusterMetadata, FetchOptions, FetchedPartition, Isolation, OffsetSpec, PartitionMetadata,
    TopicMetadata,
};
pub use connection::{Connection, ConnectionConfig, InFlight, RequestObserver, VersionRange};
pub use consumer::{
    filter_aborted, Consumer, ConsumerConfig, OffsetReset, PartitionProgress, PartitionRecords, StartAt,
};
pub use consumer_group::{ConsumerGroupConfig, ConsumerGroupMember, GroupProtocol, MemberEvent};
pub use error::{Error, Result};
pub use group::{ConsumerGroupMetadata, GroupConfig, GroupConsumer, GroupEvent};
pub use partitioner::partition_for_key;
pub use producer::{Acks, DeliveryFuture, Producer, ProducerConfig, ProducerRecord, RecordMetadata};
pub use resolve::resolve;
#[cfg(feature = "sasl")]
pub use sasl::{SaslConfig, SaslMechanism};
#[cfg(feature = "tls")]
pub use tls::{Crypto, Identity, TlsConfig, Trust};
