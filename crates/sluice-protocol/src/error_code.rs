//! Kafka's wire error codes: the `error_code` INT16 that responses carry per request, topic,
//! partition or group.
//!
//! Spec: the "Error Codes" table of Kafka's `protocol.html`
//! (<https://kafka.apache.org/protocol.html#protocol_error_codes>). The table is generated from
//! Kafka's `Errors.java`; the rows here are those of the Kafka 3.9 table (codes -1..=127, the
//! protocol snapshot this crate implements), followed by the codes Kafka 4.x added (128..=133),
//! taken from `Errors.java` and the exception classes it names (the Retriable column is whether
//! the exception extends `RetriableException`).
//!
//! A code missing from the table (a newer broker) decodes to [`ErrorCode::Unknown`], which keeps
//! the number, so nothing is lost and nothing panics.
//!
//! ```
//! use sluice_protocol::error_code::ErrorCode;
//!
//! let error = ErrorCode::from_code(6);
//! assert_eq!(error, ErrorCode::NotLeaderOrFollower);
//! assert_eq!(error.name(), "NOT_LEADER_OR_FOLLOWER");
//! assert!(error.is_retriable());
//! assert_eq!(ErrorCode::from_code(0).into_result(), Ok(()));
//! assert_eq!(ErrorCode::from_code(30_000), ErrorCode::Unknown(30_000));
//! ```

use std::fmt;

/// Declares [`ErrorCode`] and its lookups from one table, so that each code's number, variant,
/// wire name, retriability and message are written exactly once.
macro_rules! error_codes {
    ($($code:literal $variant:ident $name:literal $retriable:ident $message:literal;)*) => {
        /// A Kafka protocol error code.
        ///
        /// Every code of the spec's table has a variant (named after its wire name in CamelCase);
        /// any other value is kept in [`ErrorCode::Unknown`]. Convert with
        /// [`ErrorCode::from_code`] and [`ErrorCode::code`] (or `From`), which round-trip every
        /// `i16`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $(
                #[doc = concat!("`", $name, "` (", stringify!($code), "): ", $message)]
                $variant,
            )*
            /// A code that is not in this crate's table, probably from a newer broker. The value
            /// is kept as received.
            Unknown(i16),
        }

        impl ErrorCode {
            /// Every code of the table, in table order (without [`ErrorCode::Unknown`]).
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The error for a wire value; 0 is [`ErrorCode::None`], values not in the table are
            /// [`ErrorCode::Unknown`].
            #[must_use]
            pub const fn from_code(code: i16) -> Self {
                match code {
                    $($code => Self::$variant,)*
                    other => Self::Unknown(other),
                }
            }

            /// The wire value.
            #[must_use]
            pub const fn code(self) -> i16 {
                match self {
                    $(Self::$variant => $code,)*
                    Self::Unknown(code) => code,
                }
            }

            /// The spec's name, e.g. `"OFFSET_OUT_OF_RANGE"`; `"UNKNOWN"` for
            /// [`ErrorCode::Unknown`].
            #[must_use]
            pub const fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)*
                    Self::Unknown(_) => "UNKNOWN",
                }
            }

            /// The spec's description of the error (empty for [`ErrorCode::None`]).
            #[must_use]
            pub const fn message(self) -> &'static str {
                match self {
                    $(Self::$variant => $message,)*
                    Self::Unknown(_) => "This error code is not in the table this client was \
                        built with; the broker is probably newer. Treat it as a non-retriable error.",
                }
            }

            /// Whether the spec marks the error retriable: the same request may succeed if sent
            /// again (usually after refreshing metadata or waiting). Unknown codes are not.
            #[must_use]
            pub const fn is_retriable(self) -> bool {
                match self {
                    $(Self::$variant => error_codes!(@bool $retriable),)*
                    Self::Unknown(_) => false,
                }
            }
        }
    };
    (@bool retriable) => { true };
    (@bool not_retriable) => { false };
}

// The columns are: code, variant, wire name, `retriable` or `not_retriable`, and the spec's description.
error_codes! {
    -1 UnknownServerError "UNKNOWN_SERVER_ERROR" not_retriable
        "The server experienced an unexpected error when processing the request.";
    0 None "NONE" not_retriable "";
    1 OffsetOutOfRange "OFFSET_OUT_OF_RANGE" not_retriable
        "The requested offset is not within the range of offsets maintained by the server.";
    2 CorruptMessage "CORRUPT_MESSAGE" retriable
        "This message has failed its CRC checksum, exceeds the valid size, has a null key for a \
        compacted topic, or is otherwise corrupt.";
    3 UnknownTopicOrPartition "UNKNOWN_TOPIC_OR_PARTITION" retriable
        "This server does not host this topic-partition.";
    4 InvalidFetchSize "INVALID_FETCH_SIZE" not_retriable "The requested fetch size is invalid.";
    5 LeaderNotAvailable "LEADER_NOT_AVAILABLE" retriable
        "There is no leader for this topic-partition as we are in the middle of a leadership \
        election.";
    6 NotLeaderOrFollower "NOT_LEADER_OR_FOLLOWER" retriable
        "For requests intended only for the leader, this error indicates that the broker is not \
        the current leader. For requests intended for any replica, this error indicates that the \
        broker is not a replica of the topic partition.";
    7 RequestTimedOut "REQUEST_TIMED_OUT" retriable "The request timed out.";
    8 BrokerNotAvailable "BROKER_NOT_AVAILABLE" not_retriable "The broker is not available.";
    9 ReplicaNotAvailable "REPLICA_NOT_AVAILABLE" retriable
        "The replica is not available for the requested topic-partition. Produce/Fetch requests \
        and other requests intended only for the leader or follower return NOT_LEADER_OR_FOLLOWER \
        if the broker is not a replica of the topic-partition.";
    10 MessageTooLarge "MESSAGE_TOO_LARGE" not_retriable
        "The request included a message larger than the max message size the server will accept.";
    11 StaleControllerEpoch "STALE_CONTROLLER_EPOCH" not_retriable
        "The controller moved to another broker.";
    12 OffsetMetadataTooLarge "OFFSET_METADATA_TOO_LARGE" not_retriable
        "The metadata field of the offset request was too large.";
    13 NetworkException "NETWORK_EXCEPTION" retriable
        "The server disconnected before a response was received.";
    14 CoordinatorLoadInProgress "COORDINATOR_LOAD_IN_PROGRESS" retriable
        "The coordinator is loading and hence can't process requests.";
    15 CoordinatorNotAvailable "COORDINATOR_NOT_AVAILABLE" retriable
        "The coordinator is not available.";
    16 NotCoordinator "NOT_COORDINATOR" retriable "This is not the correct coordinator.";
    17 InvalidTopicException "INVALID_TOPIC_EXCEPTION" not_retriable
        "The request attempted to perform an operation on an invalid topic.";
    18 RecordListTooLarge "RECORD_LIST_TOO_LARGE" not_retriable
        "The request included message batch larger than the configured segment size on the \
        server.";
    19 NotEnoughReplicas "NOT_ENOUGH_REPLICAS" retriable
        "Messages are rejected since there are fewer in-sync replicas than required.";
    20 NotEnoughReplicasAfterAppend "NOT_ENOUGH_REPLICAS_AFTER_APPEND" retriable
        "Messages are written to the log, but to fewer in-sync replicas than required.";
    21 InvalidRequiredAcks "INVALID_REQUIRED_ACKS" not_retriable
        "Produce request specified an invalid value for required acks.";
    22 IllegalGeneration "ILLEGAL_GENERATION" not_retriable "Specified group generation id is not valid.";
    23 InconsistentGroupProtocol "INCONSISTENT_GROUP_PROTOCOL" not_retriable
        "The group member's supported protocols are incompatible with those of existing members \
        or first group member tried to join with empty protocol type or empty protocol list.";
    24 InvalidGroupId "INVALID_GROUP_ID" not_retriable "The configured groupId is invalid.";
    25 UnknownMemberId "UNKNOWN_MEMBER_ID" not_retriable "The coordinator is not aware of this member.";
    26 InvalidSessionTimeout "INVALID_SESSION_TIMEOUT" not_retriable
        "The session timeout is not within the range allowed by the broker (as configured by \
        group.min.session.timeout.ms and group.max.session.timeout.ms).";
    27 RebalanceInProgress "REBALANCE_IN_PROGRESS" not_retriable
        "The group is rebalancing, so a rejoin is needed.";
    28 InvalidCommitOffsetSize "INVALID_COMMIT_OFFSET_SIZE" not_retriable
        "The committing offset data size is not valid.";
    29 TopicAuthorizationFailed "TOPIC_AUTHORIZATION_FAILED" not_retriable "Topic authorization failed.";
    30 GroupAuthorizationFailed "GROUP_AUTHORIZATION_FAILED" not_retriable "Group authorization failed.";
    31 ClusterAuthorizationFailed "CLUSTER_AUTHORIZATION_FAILED" not_retriable
        "Cluster authorization failed.";
    32 InvalidTimestamp "INVALID_TIMESTAMP" not_retriable
        "The timestamp of the message is out of acceptable range.";
    33 UnsupportedSaslMechanism "UNSUPPORTED_SASL_MECHANISM" not_retriable
        "The broker does not support the requested SASL mechanism.";
    34 IllegalSaslState "ILLEGAL_SASL_STATE" not_retriable
        "Request is not valid given the current SASL state.";
    35 UnsupportedVersion "UNSUPPORTED_VERSION" not_retriable "The version of API is not supported.";
    36 TopicAlreadyExists "TOPIC_ALREADY_EXISTS" not_retriable "Topic with this name already exists.";
    37 InvalidPartitions "INVALID_PARTITIONS" not_retriable "Number of partitions is below 1.";
    38 InvalidReplicationFactor "INVALID_REPLICATION_FACTOR" not_retriable
        "Replication factor is below 1 or larger than the number of available brokers.";
    39 InvalidReplicaAssignment "INVALID_REPLICA_ASSIGNMENT" not_retriable
        "Replica assignment is invalid.";
    40 InvalidConfig "INVALID_CONFIG" not_retriable "Configuration is invalid.";
    41 NotController "NOT_CONTROLLER" retriable
        "This is not the correct controller for this cluster.";
    42 InvalidRequest "INVALID_REQUEST" not_retriable
        "This most likely occurs because of a request being malformed by the client library or \
        the message was sent to an incompatible broker. See the broker logs for more details.";
    43 UnsupportedForMessageFormat "UNSUPPORTED_FOR_MESSAGE_FORMAT" not_retriable
        "The message format version on the broker does not support the request.";
    44 PolicyViolation "POLICY_VIOLATION" not_retriable
        "Request parameters do not satisfy the configured policy.";
    45 OutOfOrderSequenceNumber "OUT_OF_ORDER_SEQUENCE_NUMBER" not_retriable
        "The broker received an out of order sequence number.";
    46 DuplicateSequenceNumber "DUPLICATE_SEQUENCE_NUMBER" not_retriable
        "The broker received a duplicate sequence number.";
    47 InvalidProducerEpoch "INVALID_PRODUCER_EPOCH" not_retriable
        "Producer attempted to produce with an old epoch.";
    48 InvalidTxnState "INVALID_TXN_STATE" not_retriable
        "The producer attempted a transactional operation in an invalid state.";
    49 InvalidProducerIdMapping "INVALID_PRODUCER_ID_MAPPING" not_retriable
        "The producer attempted to use a producer id which is not currently assigned to its \
        transactional id.";
    50 InvalidTransactionTimeout "INVALID_TRANSACTION_TIMEOUT" not_retriable
        "The transaction timeout is larger than the maximum value allowed by the broker (as \
        configured by transaction.max.timeout.ms).";
    51 ConcurrentTransactions "CONCURRENT_TRANSACTIONS" retriable
        "The producer attempted to update a transaction while another concurrent operation on the \
        same transaction was ongoing.";
    52 TransactionCoordinatorFenced "TRANSACTION_COORDINATOR_FENCED" not_retriable
        "Indicates that the transaction coordinator sending a WriteTxnMarker is no longer the \
        current coordinator for a given producer.";
    53 TransactionalIdAuthorizationFailed "TRANSACTIONAL_ID_AUTHORIZATION_FAILED" not_retriable
        "Transactional Id authorization failed.";
    54 SecurityDisabled "SECURITY_DISABLED" not_retriable "Security features are disabled.";
    55 OperationNotAttempted "OPERATION_NOT_ATTEMPTED" not_retriable
        "The broker did not attempt to execute this operation. This may happen for batched RPCs \
        where some operations in the batch failed, causing the broker to respond without trying \
        the rest.";
    56 KafkaStorageError "KAFKA_STORAGE_ERROR" retriable
        "Disk error when trying to access log file on the disk.";
    57 LogDirNotFound "LOG_DIR_NOT_FOUND" not_retriable
        "The user-specified log directory is not found in the broker config.";
    58 SaslAuthenticationFailed "SASL_AUTHENTICATION_FAILED" not_retriable "SASL Authentication failed.";
    59 UnknownProducerId "UNKNOWN_PRODUCER_ID" not_retriable
        "This exception is raised by the broker if it could not locate the producer metadata \
        associated with the producerId in question. This could happen if, for instance, the \
        producer's records were deleted because their retention time had elapsed. Once the last \
        records of the producerId are removed, the producer's metadata is removed from the \
        broker, and future appends by the producer will return this exception.";
    60 ReassignmentInProgress "REASSIGNMENT_IN_PROGRESS" not_retriable
        "A partition reassignment is in progress.";
    61 DelegationTokenAuthDisabled "DELEGATION_TOKEN_AUTH_DISABLED" not_retriable
        "Delegation Token feature is not enabled.";
    62 DelegationTokenNotFound "DELEGATION_TOKEN_NOT_FOUND" not_retriable
        "Delegation Token is not found on server.";
    63 DelegationTokenOwnerMismatch "DELEGATION_TOKEN_OWNER_MISMATCH" not_retriable
        "Specified Principal is not valid Owner/Renewer.";
    64 DelegationTokenRequestNotAllowed "DELEGATION_TOKEN_REQUEST_NOT_ALLOWED" not_retriable
        "Delegation Token requests are not allowed on PLAINTEXT/1-way SSL channels and on \
        delegation token authenticated channels.";
    65 DelegationTokenAuthorizationFailed "DELEGATION_TOKEN_AUTHORIZATION_FAILED" not_retriable
        "Delegation Token authorization failed.";
    66 DelegationTokenExpired "DELEGATION_TOKEN_EXPIRED" not_retriable "Delegation Token is expired.";
    67 InvalidPrincipalType "INVALID_PRINCIPAL_TYPE" not_retriable
        "Supplied principalType is not supported.";
    68 NonEmptyGroup "NON_EMPTY_GROUP" not_retriable "The group is not empty.";
    69 GroupIdNotFound "GROUP_ID_NOT_FOUND" not_retriable "The group id does not exist.";
    70 FetchSessionIdNotFound "FETCH_SESSION_ID_NOT_FOUND" retriable
        "The fetch session ID was not found.";
    71 InvalidFetchSessionEpoch "INVALID_FETCH_SESSION_EPOCH" retriable
        "The fetch session epoch is invalid.";
    72 ListenerNotFound "LISTENER_NOT_FOUND" retriable
        "There is no listener on the leader broker that matches the listener on which metadata \
        request was processed.";
    73 TopicDeletionDisabled "TOPIC_DELETION_DISABLED" not_retriable "Topic deletion is disabled.";
    74 FencedLeaderEpoch "FENCED_LEADER_EPOCH" retriable
        "The leader epoch in the request is older than the epoch on the broker.";
    75 UnknownLeaderEpoch "UNKNOWN_LEADER_EPOCH" retriable
        "The leader epoch in the request is newer than the epoch on the broker.";
    76 UnsupportedCompressionType "UNSUPPORTED_COMPRESSION_TYPE" not_retriable
        "The requesting client does not support the compression type of given partition.";
    77 StaleBrokerEpoch "STALE_BROKER_EPOCH" not_retriable "Broker epoch has changed.";
    78 OffsetNotAvailable "OFFSET_NOT_AVAILABLE" retriable
        "The leader high watermark has not caught up from a recent leader election so the offsets \
        cannot be guaranteed to be monotonically increasing.";
    79 MemberIdRequired "MEMBER_ID_REQUIRED" not_retriable
        "The group member needs to have a valid member id before actually entering a consumer \
        group.";
    80 PreferredLeaderNotAvailable "PREFERRED_LEADER_NOT_AVAILABLE" retriable
        "The preferred leader was not available.";
    81 GroupMaxSizeReached "GROUP_MAX_SIZE_REACHED" not_retriable
        "The consumer group has reached its max size.";
    82 FencedInstanceId "FENCED_INSTANCE_ID" not_retriable
        "The broker rejected this static consumer since another consumer with the same \
        group.instance.id has registered with a different member.id.";
    83 EligibleLeadersNotAvailable "ELIGIBLE_LEADERS_NOT_AVAILABLE" retriable
        "Eligible topic partition leaders are not available.";
    84 ElectionNotNeeded "ELECTION_NOT_NEEDED" retriable
        "Leader election not needed for topic partition.";
    85 NoReassignmentInProgress "NO_REASSIGNMENT_IN_PROGRESS" not_retriable
        "No partition reassignment is in progress.";
    86 GroupSubscribedToTopic "GROUP_SUBSCRIBED_TO_TOPIC" not_retriable
        "Deleting offsets of a topic is forbidden while the consumer group is actively subscribed \
        to it.";
    87 InvalidRecord "INVALID_RECORD" not_retriable
        "This record has failed the validation on broker and hence will be rejected.";
    88 UnstableOffsetCommit "UNSTABLE_OFFSET_COMMIT" retriable
        "There are unstable offsets that need to be cleared.";
    89 ThrottlingQuotaExceeded "THROTTLING_QUOTA_EXCEEDED" retriable
        "The throttling quota has been exceeded.";
    90 ProducerFenced "PRODUCER_FENCED" not_retriable
        "There is a newer producer with the same transactionalId which fences the current one.";
    91 ResourceNotFound "RESOURCE_NOT_FOUND" not_retriable
        "A request illegally referred to a resource that does not exist.";
    92 DuplicateResource "DUPLICATE_RESOURCE" not_retriable
        "A request illegally referred to the same resource twice.";
    93 UnacceptableCredential "UNACCEPTABLE_CREDENTIAL" not_retriable
        "Requested credential would not meet criteria for acceptability.";
    94 InconsistentVoterSet "INCONSISTENT_VOTER_SET" not_retriable
        "Indicates that the either the sender or recipient of a voter-only request is not one of \
        the expected voters.";
    95 InvalidUpdateVersion "INVALID_UPDATE_VERSION" not_retriable "The given update version was invalid.";
    96 FeatureUpdateFailed "FEATURE_UPDATE_FAILED" not_retriable
        "Unable to update finalized features due to an unexpected server error.";
    97 PrincipalDeserializationFailure "PRINCIPAL_DESERIALIZATION_FAILURE" not_retriable
        "Request principal deserialization failed during forwarding. This indicates an internal \
        error on the broker cluster security setup.";
    98 SnapshotNotFound "SNAPSHOT_NOT_FOUND" not_retriable "Requested snapshot was not found.";
    99 PositionOutOfRange "POSITION_OUT_OF_RANGE" not_retriable
        "Requested position is not greater than or equal to zero, and less than the size of the \
        snapshot.";
    100 UnknownTopicId "UNKNOWN_TOPIC_ID" retriable "This server does not host this topic ID.";
    101 DuplicateBrokerRegistration "DUPLICATE_BROKER_REGISTRATION" not_retriable
        "This broker ID is already in use.";
    102 BrokerIdNotRegistered "BROKER_ID_NOT_REGISTERED" not_retriable
        "The given broker ID was not registered.";
    103 InconsistentTopicId "INCONSISTENT_TOPIC_ID" retriable
        "The log's topic ID did not match the topic ID in the request.";
    104 InconsistentClusterId "INCONSISTENT_CLUSTER_ID" not_retriable
        "The clusterId in the request does not match that found on the server.";
    105 TransactionalIdNotFound "TRANSACTIONAL_ID_NOT_FOUND" not_retriable
        "The transactionalId could not be found.";
    106 FetchSessionTopicIdError "FETCH_SESSION_TOPIC_ID_ERROR" retriable
        "The fetch session encountered inconsistent topic ID usage.";
    107 IneligibleReplica "INELIGIBLE_REPLICA" not_retriable
        "The new ISR contains at least one ineligible replica.";
    108 NewLeaderElected "NEW_LEADER_ELECTED" not_retriable
        "The AlterPartition request successfully updated the partition state but the leader has \
        changed.";
    109 OffsetMovedToTieredStorage "OFFSET_MOVED_TO_TIERED_STORAGE" not_retriable
        "The requested offset is moved to tiered storage.";
    110 FencedMemberEpoch "FENCED_MEMBER_EPOCH" not_retriable
        "The member epoch is fenced by the group coordinator. The member must abandon all its \
        partitions and rejoin.";
    111 UnreleasedInstanceId "UNRELEASED_INSTANCE_ID" not_retriable
        "The instance ID is still used by another member in the consumer group. That member must \
        leave first.";
    112 UnsupportedAssignor "UNSUPPORTED_ASSIGNOR" not_retriable
        "The assignor or its version range is not supported by the consumer group.";
    113 StaleMemberEpoch "STALE_MEMBER_EPOCH" not_retriable
        "The member epoch is stale. The member must retry after receiving its updated member \
        epoch via the ConsumerGroupHeartbeat API.";
    114 MismatchedEndpointType "MISMATCHED_ENDPOINT_TYPE" not_retriable
        "The request was sent to an endpoint of the wrong type.";
    115 UnsupportedEndpointType "UNSUPPORTED_ENDPOINT_TYPE" not_retriable
        "This endpoint type is not supported yet.";
    116 UnknownControllerId "UNKNOWN_CONTROLLER_ID" not_retriable "This controller ID is not known.";
    117 UnknownSubscriptionId "UNKNOWN_SUBSCRIPTION_ID" not_retriable
        "Client sent a push telemetry request with an invalid or outdated subscription ID.";
    118 TelemetryTooLarge "TELEMETRY_TOO_LARGE" not_retriable
        "Client sent a push telemetry request larger than the maximum size the broker will \
        accept.";
    119 InvalidRegistration "INVALID_REGISTRATION" not_retriable
        "The controller has considered the broker registration to be invalid.";
    120 TransactionAbortable "TRANSACTION_ABORTABLE" not_retriable
        "The server encountered an error with the transaction. The client can abort the \
        transaction to continue using this transactional ID.";
    121 InvalidRecordState "INVALID_RECORD_STATE" not_retriable
        "The record state is invalid. The acknowledgement of delivery could not be completed.";
    122 ShareSessionNotFound "SHARE_SESSION_NOT_FOUND" retriable
        "The share session was not found.";
    123 InvalidShareSessionEpoch "INVALID_SHARE_SESSION_EPOCH" retriable
        "The share session epoch is invalid.";
    124 FencedStateEpoch "FENCED_STATE_EPOCH" not_retriable
        "The share coordinator rejected the request because the share-group state epoch did not \
        match.";
    125 InvalidVoterKey "INVALID_VOTER_KEY" not_retriable
        "The voter key doesn't match the receiving replica's key.";
    126 DuplicateVoter "DUPLICATE_VOTER" not_retriable "The voter is already part of the set of voters.";
    127 VoterNotFound "VOTER_NOT_FOUND" not_retriable "The voter is not part of the set of voters.";
    // Added by Kafka 4.x, after the protocol snapshot (see the module docs).
    128 InvalidRegularExpression "INVALID_REGULAR_EXPRESSION" not_retriable
        "The regular expression is not valid.";
    129 RebootstrapRequired "REBOOTSTRAP_REQUIRED" not_retriable
        "Client metadata is stale. The client should rebootstrap to obtain new metadata.";
    130 StreamsInvalidTopology "STREAMS_INVALID_TOPOLOGY" not_retriable
        "The supplied topology is invalid.";
    131 StreamsInvalidTopologyEpoch "STREAMS_INVALID_TOPOLOGY_EPOCH" not_retriable
        "The supplied topology epoch is invalid.";
    132 StreamsTopologyFenced "STREAMS_TOPOLOGY_FENCED" not_retriable
        "The supplied topology epoch is outdated.";
    133 ShareSessionLimitReached "SHARE_SESSION_LIMIT_REACHED" retriable
        "The limit of share sessions has been reached.";
}

impl ErrorCode {
    /// Whether this is an error at all, i.e. anything but [`ErrorCode::None`] (code 0).
    #[must_use]
    pub const fn is_error(self) -> bool {
        self.code() != 0
    }

    /// Whether the code says the sender's cluster metadata is out of date: the broker is not
    /// (or no longer, or not yet) the leader of the partition, there is no leader at the
    /// moment, the leader's log directory failed, or the topic is not the one the sender's
    /// metadata names (deleted, or made again under the same name). The Java client refreshes
    /// its metadata on these.
    #[must_use]
    pub const fn means_stale_metadata(self) -> bool {
        matches!(
            self,
            Self::NotLeaderOrFollower
                | Self::LeaderNotAvailable
                | Self::ReplicaNotAvailable
                | Self::UnknownTopicOrPartition
                | Self::KafkaStorageError
                | Self::FencedLeaderEpoch
                | Self::UnknownLeaderEpoch
                | Self::NotController
                | Self::UnknownTopicId
                | Self::InconsistentTopicId
        )
    }

    /// `Ok(())` for [`ErrorCode::None`], `Err(self)` for every error, so a response field can be
    /// checked with `?`.
    pub const fn into_result(self) -> Result<(), Self> {
        if self.is_error() {
            Err(self)
        } else {
            Ok(())
        }
    }
}

// Written out because the enum comes from the table macro, whose rows cannot carry `#[default]`.
#[allow(clippy::derivable_impls)]
impl Default for ErrorCode {
    fn default() -> Self {
        Self::None
    }
}

impl From<i16> for ErrorCode {
    fn from(code: i16) -> Self {
        Self::from_code(code)
    }
}

impl From<ErrorCode> for i16 {
    fn from(error: ErrorCode) -> Self {
        error.code()
    }
}

impl fmt::Display for ErrorCode {
    /// `NAME (code, retriable): message`, e.g. `REQUEST_TIMED_OUT (7, retriable): The request
    /// timed out.`; unknown codes show their number.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let retriable = if self.is_retriable() { ", retriable" } else { "" };
        write!(f, "{} ({}{retriable})", self.name(), self.code())?;
        match self.message() {
            "" => Ok(()),
            message => write!(f, ": {message}"),
        }
    }
}

impl std::error::Error for ErrorCode {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips() {
        for &error in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_code(error.code()), error, "{error}");
            assert_eq!(i16::from(error), error.code());
            assert_eq!(ErrorCode::from(error.code()), error);
        }
        // Every i16, known or not, comes back unchanged.
        for code in i16::MIN..=i16::MAX {
            assert_eq!(ErrorCode::from_code(code).code(), code);
        }
    }

    #[test]
    fn table_is_contiguous_and_unique() {
        let codes: Vec<i16> = ErrorCode::ALL.iter().map(|e| e.code()).collect();
        let expected: Vec<i16> = (-1..=133).collect();
        assert_eq!(codes, expected);
        let mut names: Vec<&str> = ErrorCode::ALL.iter().map(|e| e.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len());
        for &error in ErrorCode::ALL {
            assert!(!matches!(error, ErrorCode::Unknown(_)));
            assert!(error.name().bytes().all(|b| b.is_ascii_uppercase() || b == b'_'), "{error:?}");
            assert_eq!(error.message().is_empty(), error == ErrorCode::None);
        }
    }

    #[test]
    fn spot_checks_against_the_spec() {
        let none = ErrorCode::from_code(0);
        assert_eq!(none, ErrorCode::None);
        assert!(!none.is_error());
        assert!(!none.is_retriable());
        assert_eq!(none.name(), "NONE");
        assert_eq!(ErrorCode::default(), ErrorCode::None);

        let unknown_server = ErrorCode::from_code(-1);
        assert_eq!(unknown_server, ErrorCode::UnknownServerError);
        assert_eq!(unknown_server.name(), "UNKNOWN_SERVER_ERROR");
        assert!(!unknown_server.is_retriable());
        assert!(unknown_server.is_error());

        let out_of_range = ErrorCode::from_code(1);
        assert_eq!(out_of_range, ErrorCode::OffsetOutOfRange);
        assert_eq!(out_of_range.name(), "OFFSET_OUT_OF_RANGE");
        assert!(!out_of_range.is_retriable());
        assert_eq!(
            out_of_range.message(),
            "The requested offset is not within the range of offsets maintained by the server."
        );

        let not_leader = ErrorCode::from_code(6);
        assert_eq!(not_leader, ErrorCode::NotLeaderOrFollower);
        assert_eq!(not_leader.name(), "NOT_LEADER_OR_FOLLOWER");
        assert!(not_leader.is_retriable());

        assert!(ErrorCode::CorruptMessage.is_retriable());
        assert!(ErrorCode::UnknownTopicOrPartition.is_retriable());
        assert!(!ErrorCode::BrokerNotAvailable.is_retriable());
        assert!(!ErrorCode::RebalanceInProgress.is_retriable());
        assert!(ErrorCode::UnknownTopicId.is_retriable());
        assert!(!ErrorCode::TransactionAbortable.is_retriable());
        assert_eq!(ErrorCode::from_code(35), ErrorCode::UnsupportedVersion);
        assert_eq!(ErrorCode::from_code(127).name(), "VOTER_NOT_FOUND");
        assert_eq!(ErrorCode::from_code(133), ErrorCode::ShareSessionLimitReached);
        assert!(ErrorCode::ShareSessionLimitReached.is_retriable());
        // 51 is retriable in the spec even though it reads like a conflict.
        assert!(ErrorCode::ConcurrentTransactions.is_retriable());
    }

    #[test]
    fn unknown_code_is_kept() {
        for code in [134, 1000, i16::MAX, -2, i16::MIN] {
            let error = ErrorCode::from_code(code);
            assert_eq!(error, ErrorCode::Unknown(code));
            assert_eq!(error.code(), code);
            assert!(error.is_error());
            assert!(!error.is_retriable());
            assert_eq!(error.name(), "UNKNOWN");
            assert!(error.to_string().contains(&code.to_string()));
            assert_eq!(error.into_result(), Err(error));
        }
    }

    #[test]
    fn display_and_error_trait() {
        assert_eq!(ErrorCode::RequestTimedOut.to_string(), "REQUEST_TIMED_OUT (7, retriable): The request timed out.");
        assert_eq!(
            ErrorCode::TopicAuthorizationFailed.to_string(),
            "TOPIC_AUTHORIZATION_FAILED (29): Topic authorization failed."
        );
        assert_eq!(ErrorCode::None.to_string(), "NONE (0)");
        let boxed: Box<dyn std::error::Error> = Box::new(ErrorCode::NotCoordinator);
        assert!(boxed.to_string().starts_with("NOT_COORDINATOR (16, retriable)"));
        assert_eq!(ErrorCode::None.into_result(), Ok(()));
    }
}
