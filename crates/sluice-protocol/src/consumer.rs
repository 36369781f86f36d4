//! The consumer protocol's embedded payloads: the subscription a member sends in JoinGroup's
//! protocol metadata, and the assignment the leader hands out in SyncGroup. Both are opaque bytes
//! to the broker; inside, each starts with an INT16 version followed by the versioned struct.
//!
//! Spec: `ConsumerProtocolSubscription.json` and `ConsumerProtocolAssignment.json` (KIP-429 added
//! owned partitions in v1, KIP-792 the generation in v2, KIP-881 the rack in v3).

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::messages::{decode_exact, ConsumerProtocolAssignment, ConsumerProtocolSubscription, Message};
use crate::primitives::get_i16;

/// The protocol type consumer groups use in JoinGroup.
pub const PROTOCOL_TYPE: &str = "consumer";

/// Encodes a subscription as JoinGroup protocol metadata, in `version`.
pub fn encode_subscription(subscription: &ConsumerProtocolSubscription, version: i16) -> Result<Bytes, EncodeError> {
    encode_versioned(subscription, version)
}

/// Decodes JoinGroup protocol metadata. Versions newer than this codec knows are read as the
/// newest known one, as the Java client does: newer versions only append fields.
pub fn decode_subscription(bytes: Bytes) -> Result<(i16, ConsumerProtocolSubscription), DecodeError> {
    decode_versioned(bytes)
}

/// Encodes an assignment as SyncGroup assignment bytes, in `version`.
pub fn encode_assignment(assignment: &ConsumerProtocolAssignment, version: i16) -> Result<Bytes, EncodeError> {
    encode_versioned(assignment, version)
}

/// Decodes SyncGroup assignment bytes; an empty buffer (a member given nothing) is an empty
/// assignment.
pub fn decode_assignment(bytes: Bytes) -> Result<(i16, ConsumerProtocolAssignment), DecodeError> {
    if bytes.is_empty() {
        return Ok((0, ConsumerProtocolAssignment::default()));
    }
    decode_versioned(bytes)
}

fn encode_versioned<M: Message>(value: &M, version: i16) -> Result<Bytes, EncodeError> {
    let mut buf = BytesMut::new();
    buf.put_i16(version);
    value.encode(&mut buf, version)?;
    Ok(buf.freeze())
}

fn decode_versioned<M: Message>(mut bytes: Bytes) -> Result<(i16, M), DecodeError> {
    let version = get_i16(&mut bytes).map_err(|e| e.in_field(M::NAME, "version"))?;
    if version < M::MIN_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            api: M::NAME,
            version,
            min: M::MIN_VERSION,
            max: M::MAX_VERSION,
        });
    }
    if version > M::MAX_VERSION {
        // Newer versions append fields: read what we know and ignore the rest.
        let mut rest = bytes;
        let value = M::decode(&mut rest, M::MAX_VERSION)?;
        return Ok((version, value));
    }
    Ok((version, decode_exact(bytes, version)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::consumer_protocol_assignment::TopicPartition;

    #[test]
    fn assignments_round_trip_and_empty_means_nothing_assigned() {
        let assignment = ConsumerProtocolAssignment {
            assigned_partitions: vec![TopicPartition { topic: "clicks".into(), partitions: vec![0, 2] }],
            user_data: None,
        };
        for version in 0..=ConsumerProtocolAssignment::MAX_VERSION {
            let bytes = encode_assignment(&assignment, version).unwrap();
            assert_eq!(decode_assignment(bytes).unwrap(), (version, assignment.clone()));
        }
        assert_eq!(decode_assignment(Bytes::new()).unwrap().1, ConsumerProtocolAssignment::default());
    }

    #[test]
    fn a_newer_subscription_version_reads_the_known_prefix() {
        let subscription = ConsumerProtocolSubscription { topics: vec!["a".into()], ..Default::default() };
        let mut bytes = BytesMut::from(&encode_subscription(&subscription, 3).unwrap()[..]);
        bytes[1] = 9; // claim version 9
        bytes.put_slice(b"future fields");
        let (version, decoded) = decode_subscription(bytes.freeze()).unwrap();
        assert_eq!((version, decoded.topics), (9, vec!["a".to_string()]));
    }
}
