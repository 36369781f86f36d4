//! The client's error type: which broker, which request, what went wrong, and what to do.

use std::sync::Arc;
use std::time::Duration;

use sluice_protocol::error_code::ErrorCode;
use sluice_protocol::{DecodeError, EncodeError};

/// Result of a client operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong talking to a Kafka cluster. Cloneable, so that one failure can be reported to
/// every record of a batch.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The TCP connection could not be made.
    #[error("broker {broker} refused the connection or could not be reached (is it running, and is the address right?): {source}")]
    Connect {
        /// The broker address.
        broker: String,
        /// The underlying I/O error.
        source: Arc<std::io::Error>,
    },
    /// A broker address is not `host:port` (or `[ipv6]:port`). Retrying cannot help.
    #[error("broker address {address:?} is not host:port: {reason}")]
    InvalidAddress {
        /// The address as given.
        address: String,
        /// What is wrong with it, and how to write it.
        reason: String,
    },
    /// A broker's host name could not be turned into addresses: neither `/etc/hosts` nor DNS
    /// knows it, or no nameserver answered (see [`crate::resolve`]).
    #[error("cannot find the address of broker host {host}: {reason}")]
    Resolve {
        /// The host name.
        host: String,
        /// What went wrong, and what to check.
        reason: String,
    },
    /// The TLS handshake with a broker failed (its certificate is not trusted, does not name the
    /// host, or the two sides share no protocol version or cipher suite).
    #[error("TLS handshake with broker {broker} failed: {reason}")]
    Tls {
        /// The broker address.
        broker: String,
        /// What went wrong (the certificate's issuer unknown, its names not the one expected,
        /// ...) and what to check.
        reason: String,
    },
    /// SASL authentication with a broker failed.
    #[error("broker {broker} did not accept SASL {mechanism} authentication: {reason} (check the user name, password and mechanism)")]
    Authentication {
        /// The broker address.
        broker: String,
        /// The mechanism tried.
        mechanism: &'static str,
        /// What the broker or the exchange said.
        reason: String,
    },
    /// The TLS settings could not be used (an unreadable CA file or client key, a bad name).
    #[error("TLS configuration: {reason}")]
    TlsConfig {
        /// What was wrong.
        reason: String,
    },
    /// The connection could not be made within the connect timeout.
    #[error("connecting to broker {broker} took longer than {timeout:?} (is the address reachable?)")]
    ConnectTimeout {
        /// The broker address.
        broker: String,
        /// The configured connect timeout.
        timeout: Duration,
    },
    /// The connection broke while requests were in flight or being sent; they may or may not
    /// have reached the broker.
    #[error("connection to broker {broker} was lost ({reason}); the client reconnects on the next request")]
    Disconnected {
        /// The broker address.
        broker: String,
        /// Why, as far as the client knows.
        reason: String,
    },
    /// The broker sent a response larger than the configured maximum frame size. Retrying the
    /// same request would get the same answer.
    #[error("broker {broker} sent a {size}-byte response, over max_frame_bytes ({max}); raise it or ask for less (e.g. a smaller fetch max_bytes)")]
    ResponseTooLarge {
        /// The broker address.
        broker: String,
        /// The frame's declared size.
        size: i64,
        /// The configured maximum.
        max: usize,
    },
    /// No response arrived within the request timeout.
    #[error("broker {broker} did not answer {api} v{version} within {timeout:?} (raise request_timeout if the broker is slow)")]
    RequestTimeout {
        /// The broker address.
        broker: String,
        /// The request's API name.
        api: &'static str,
        /// The request's version.
        version: i16,
        /// The configured request timeout.
        timeout: Duration,
    },
    /// The broker's bytes could not be decoded.
    #[error("broker {broker} sent a {api} v{version} response sluice cannot decode: {source}")]
    Decode {
        /// The broker address.
        broker: String,
        /// The response's API name.
        api: &'static str,
        /// The response's version.
        version: i16,
        /// What was wrong with the bytes.
        source: DecodeError,
    },
    /// A request could not be encoded (a value too long for the wire, or a field the negotiated
    /// version cannot carry).
    #[error("cannot encode {api} v{version} for broker {broker}: {source}")]
    Encode {
        /// The broker address.
        broker: String,
        /// The request's API name.
        api: &'static str,
        /// The version.
        version: i16,
        /// What could not be encoded.
        source: EncodeError,
    },
    /// The broker does not implement any version of the API this client can speak.
    #[error("broker {broker} supports {api} versions {broker_min}..={broker_max}, sluice supports {client_min}..={client_max}: no common version (upgrade the broker or the client)")]
    UnsupportedVersion {
        /// The broker address.
        broker: String,
        /// The API name.
        api: &'static str,
        /// The broker's lowest version (-1 if it does not offer the API at all).
        broker_min: i16,
        /// The broker's highest version (-1 if it does not offer the API at all).
        broker_max: i16,
        /// The client's lowest version.
        client_min: i16,
        /// The client's highest version.
        client_max: i16,
    },
    /// The record is larger than the producer's batch size or buffer memory.
    #[error("a record of {size} bytes is larger than the producer allows ({max} bytes; raise batch_size_bytes and buffer_memory_bytes)")]
    RecordTooLarge {
        /// The record's encoded size, about.
        size: usize,
        /// The limit it exceeds.
        max: usize,
    },
    /// A record was not acknowledged within the delivery timeout (retries included).
    #[error("{topic}/{partition}: not delivered within {timeout:?} ({last_error})")]
    DeliveryTimeout {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The configured delivery timeout.
        timeout: Duration,
        /// The last error seen before giving up.
        last_error: String,
    },
    /// A batch already encoded could not take the producer's new id and sequence when the
    /// producer was reset (KIP-360); its records were not sent.
    #[error("{topic}/{partition}: a batch could not be renumbered for the producer's new id: {source}")]
    Renumber {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// Why the batch could not be rewritten.
        source: EncodeError,
    },
    /// A consumer's position is outside the partition's log and the reset policy is `Error`.
    #[error("{topic}/{partition}: offset {offset} is out of range (the log was truncated or the offset is wrong; seek, or use an Earliest/Latest reset policy)")]
    OffsetOutOfRange {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The position that was out of range.
        offset: i64,
    },
    /// A group member was assigned a partition the group has no committed offset for, and the
    /// reset policy is `Error`.
    #[error("group {group} has no committed offset for {topic}/{partition} (commit one, or use an Earliest/Latest reset policy)")]
    NoCommittedOffset {
        /// The group.
        group: String,
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
    },
    /// A transactional producer was used out of order, or its transaction cannot commit.
    #[error("transactional producer {transactional_id:?}: {reason}")]
    Transaction {
        /// The transactional id.
        transactional_id: String,
        /// What was wrong and what to do.
        reason: String,
    },
    /// The producer was closed before the record was sent.
    #[error("the producer is closed")]
    ProducerClosed,
    /// Records sent since the last flush were not delivered ([`crate::Producer::flush`]).
    #[error("{records} records were not delivered; the first failure: {source}")]
    Undelivered {
        /// How many.
        records: u64,
        /// The first failure.
        source: Box<Error>,
    },
    /// A topic the producer was asked to write to does not exist.
    #[error("topic {topic} does not exist (create it first, or check the name)")]
    UnknownTopic {
        /// The topic.
        topic: String,
    },
    /// The broker answered with an error code.
    #[error("broker {broker} answered {api} with {code}")]
    Broker {
        /// The broker address.
        broker: String,
        /// The API name.
        api: &'static str,
        /// The error code.
        code: ErrorCode,
    },
    /// The broker answered with an error code and a message saying why (DescribeGroups v6+).
    #[error("broker {broker} answered {api} with {code}: {message}")]
    BrokerMessage {
        /// The broker address.
        broker: String,
        /// The API name.
        api: &'static str,
        /// The error code.
        code: ErrorCode,
        /// The broker's explanation.
        message: String,
    },
}

impl Error {
    /// Whether retrying the same operation may succeed (after reconnecting or refreshing
    /// metadata): connection problems (a host name that does not resolve among them, as the name
    /// may appear in DNS later), timeouts, and retriable broker error codes. REBOOTSTRAP_REQUIRED
    /// (KIP-1102) counts too: the broker says the client's view of the cluster is stale, and the
    /// client has dropped that broker's connection (see [`crate::Client::refresh_metadata`]), so
    /// the next attempt starts over from another broker or a new connection.
    pub fn is_retriable(&self) -> bool {
        match self {
            _ if self.is_transport() => true,
            Self::Broker { code: ErrorCode::RebootstrapRequired, .. } => true,
            Self::Broker { code, .. } | Self::BrokerMessage { code, .. } => code.is_retriable(),
            _ => false,
        }
    }

    /// Whether the error says the client's metadata may be out of date: the broker could not be
    /// reached or stopped answering (it may have left the cluster, its partitions moved), or it
    /// is not (or no longer) the leader the metadata named, or knows the topic by another id.
    pub fn suggests_stale_metadata(&self) -> bool {
        match self {
            _ if self.is_transport() => true,
            Self::Broker { code, .. } | Self::BrokerMessage { code, .. } => code.means_stale_metadata(),
            _ => false,
        }
    }

    /// Whether the broker could not be reached or stopped answering (resolving, connecting,
    /// the connection lost, a request timed out).
    fn is_transport(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. }
                | Self::Resolve { .. }
                | Self::ConnectTimeout { .. }
                | Self::Disconnected { .. }
                | Self::RequestTimeout { .. }
        )
    }
}
