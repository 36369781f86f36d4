//! Round-trip property tests: for every message (requests, responses, headers and the consumer
//! protocol's embedded data) at every supported version, random values valid for that version
//! survive encode -> decode unchanged, and re-encoding gives the same bytes.
//!
//! Cases are drawn from a seeded RNG; a failure prints the message, version and seed to replay.

use arbitrary::Unstructured;
use bytes::Bytes;
use rand::{rngs::StdRng, Rng, SeedableRng};
use sluice_protocol::messages::{decode_exact, encode_to_bytes, Message};

const CASES_PER_VERSION: u64 = 64;

fn check_version<M>(version: i16, make: fn(&mut Unstructured<'_>, i16) -> arbitrary::Result<M>)
where
    M: Message,
{
    for seed in 0..CASES_PER_VERSION {
        let mut rng = StdRng::seed_from_u64(seed ^ ((M::API_KEY as u64) << 32) ^ ((version as u64) << 48));
        let len = rng.gen_range(0..2048);
        let raw: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        let mut u = Unstructured::new(&raw);
        let Ok(value) = make(&mut u, version) else {
            continue;
        };
        let bytes = encode_to_bytes(&value, version)
            .unwrap_or_else(|e| panic!("{} v{version} seed {seed}: encode failed: {e}", M::NAME));
        let decoded: M = decode_exact(bytes.clone(), version)
            .unwrap_or_else(|e| panic!("{} v{version} seed {seed}: decode failed: {e}\nvalue: {value:?}", M::NAME));
        assert_eq!(decoded, value, "{} v{version} seed {seed}", M::NAME);
        let again = encode_to_bytes(&decoded, version).unwrap();
        assert_eq!(again, bytes, "{} v{version} seed {seed}: re-encoding differs", M::NAME);
        check_truncations_fail_cleanly::<M>(&bytes, version);
    }
}

/// Every strict prefix of a valid encoding must fail to decode with an error (never a panic, never
/// a "successful" shorter value), because every message ends with a field that needs bytes.
fn check_truncations_fail_cleanly<M: Message>(bytes: &Bytes, version: i16) {
    for cut in [0, bytes.len() / 2, bytes.len().saturating_sub(1)] {
        if cut < bytes.len() {
            assert!(
                decode_exact::<M>(bytes.slice(..cut), version).is_err(),
                "{} v{version}: a {cut}-byte prefix decoded",
                M::NAME
            );
        }
    }
}

fn check_all_versions<M: Message>(make: fn(&mut Unstructured<'_>, i16) -> arbitrary::Result<M>) {
    for version in M::MIN_VERSION..=M::MAX_VERSION {
        check_version::<M>(version, make);
    }
}

macro_rules! roundtrip_pair {
    ($req:ty, $resp:ty) => {
        check_all_versions::<$req>(<$req>::arbitrary_for_version);
        check_all_versions::<$resp>(<$resp>::arbitrary_for_version);
    };
}

#[test]
fn every_request_and_response_round_trips_at_every_version() {
    sluice_protocol::for_each_api!(roundtrip_pair);
}

#[test]
fn headers_and_consumer_protocol_round_trip_at_every_version() {
    use sluice_protocol::messages::*;
    check_all_versions::<RequestHeader>(RequestHeader::arbitrary_for_version);
    check_all_versions::<ResponseHeader>(ResponseHeader::arbitrary_for_version);
    check_all_versions::<ConsumerProtocolSubscription>(ConsumerProtocolSubscription::arbitrary_for_version);
    check_all_versions::<ConsumerProtocolAssignment>(ConsumerProtocolAssignment::arbitrary_for_version);
}

#[test]
fn versions_outside_the_range_are_refused_both_ways() {
    use sluice_protocol::messages::FetchRequest;
    use sluice_protocol::{DecodeError, EncodeError};
    let err = encode_to_bytes(&FetchRequest::default(), FetchRequest::MAX_VERSION + 1).unwrap_err();
    assert!(matches!(err, EncodeError::UnsupportedVersion { .. }), "{err}");
    let err = decode_exact::<FetchRequest>(Bytes::new(), -1).unwrap_err();
    assert!(matches!(err.root_cause(), DecodeError::UnsupportedVersion { .. }), "{err}");
}

#[test]
fn a_field_the_version_cannot_carry_is_an_encode_error_unless_the_schema_marks_it_ignorable() {
    use sluice_protocol::messages::fetch_request::{FetchRequest, FetchTopic};
    use sluice_protocol::messages::FetchResponse;
    use sluice_protocol::primitives::Uuid;
    use sluice_protocol::EncodeError;
    // Fetch sessions start at v7 and the schema says the session id is not ignorable.
    let response = FetchResponse { session_id: 5, ..FetchResponse::default() };
    let err = encode_to_bytes(&response, 6).unwrap_err();
    assert!(matches!(err, EncodeError::FieldNotInVersion { field: "session_id", .. }), "{err}");
    assert!(encode_to_bytes(&response, 7).is_ok());
    // Topic ids (v13+) are marked ignorable: older versions drop them, as the Java client does.
    let request = FetchRequest {
        topics: vec![FetchTopic { topic_id: Uuid([7; 16]), ..FetchTopic::default() }],
        ..FetchRequest::default()
    };
    assert!(encode_to_bytes(&request, 12).is_ok());
}

#[test]
fn decode_errors_name_the_field_and_position() {
    use sluice_protocol::messages::MetadataResponse;
    // Metadata v1: throttle (absent in v1)... brokers array claiming 1000 entries in 8 bytes.
    let bytes = Bytes::from_static(&[0, 0, 0x03, 0xe8, 0, 0, 0, 0]);
    let err = decode_exact::<MetadataResponse>(bytes, 1).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("MetadataResponse.brokers"), "{text}");
    assert!(text.contains("at byte"), "{text}");
}

#[test]
fn the_versions_kafka_4_4_added_change_only_what_their_schemas_say() {
    use sluice_protocol::messages::describe_groups_response::DescribedGroup;
    use sluice_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use sluice_protocol::messages::produce_request::TopicProduceData;
    use sluice_protocol::messages::*;
    use sluice_protocol::primitives::Uuid;
    use sluice_protocol::EncodeError;

    // Fetch v18 carries a follower's high watermark in a tagged field, written only when set: a
    // consumer's v18 request is byte for byte its v17 request.
    let topic =
        FetchTopic { topic_id: Uuid([7; 16]), partitions: vec![FetchPartition::default()], ..FetchTopic::default() };
    let fetch = FetchRequest { topics: vec![topic], ..FetchRequest::default() };
    assert_eq!(encode_to_bytes(&fetch, 18).unwrap(), encode_to_bytes(&fetch, 17).unwrap());

    // Produce v13 names topics by id only; both name and id are ignorable, so each version
    // drops the one it cannot carry.
    let topic = TopicProduceData { name: "clicks".into(), topic_id: Uuid([7; 16]), ..TopicProduceData::default() };
    let produce = ProduceRequest { topic_data: vec![topic], ..ProduceRequest::default() };
    let v13: ProduceRequest = decode_exact(encode_to_bytes(&produce, 13).unwrap(), 13).unwrap();
    assert_eq!((v13.topic_data[0].name.as_str(), v13.topic_data[0].topic_id), ("", Uuid([7; 16])));
    let v12: ProduceRequest = decode_exact(encode_to_bytes(&produce, 12).unwrap(), 12).unwrap();
    assert_eq!((v12.topic_data[0].name.as_str(), v12.topic_data[0].topic_id), ("clicks", Uuid::ZERO));

    // Metadata v13 ends with a request-level error code (ignorable before).
    let metadata = MetadataResponse { error_code: 129, ..MetadataResponse::default() };
    let v13: MetadataResponse = decode_exact(encode_to_bytes(&metadata, 13).unwrap(), 13).unwrap();
    assert_eq!(v13.error_code, 129);
    let v12: MetadataResponse = decode_exact(encode_to_bytes(&metadata, 12).unwrap(), 12).unwrap();
    assert_eq!(v12.error_code, 0);

    // DescribeGroups v6's per-group message is not ignorable: v5 cannot carry it.
    let group =
        DescribedGroup { error_code: 69, error_message: Some("no such group".into()), ..DescribedGroup::default() };
    let described = DescribeGroupsResponse { groups: vec![group], ..DescribeGroupsResponse::default() };
    let v6: DescribeGroupsResponse = decode_exact(encode_to_bytes(&described, 6).unwrap(), 6).unwrap();
    assert_eq!(v6.groups[0].error_message.as_deref(), Some("no such group"));
    let err = encode_to_bytes(&described, 5).unwrap_err();
    assert!(matches!(err, EncodeError::FieldNotInVersion { field: "error_message", .. }), "{err}");
}
