//! Golden bytes from real peers (librdkafka 2.16 against Tansu 0.6.0; see `fixtures/README.md`):
//! every captured frame decodes, re-encodes to the same bytes, and carries the content the
//! capture script produced (records, keys, headers, timestamps, offsets, group assignments).

use std::path::PathBuf;

use base64::Engine;
use bytes::{Bytes, BytesMut};
use serde_json::Value;
use sluice_protocol::consumer::{decode_assignment, decode_subscription};
use sluice_protocol::frame::FrameDecoder;
use sluice_protocol::header::{decode_request_header, decode_response, response_header_version};
use sluice_protocol::messages::*;
use sluice_protocol::record::{decode_records, DecodeOptions, RecordRef};

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn manifest() -> Vec<Value> {
    let text = std::fs::read_to_string(fixtures_dir().join("manifest.json")).expect("fixtures/manifest.json");
    let manifest: Value = serde_json::from_str(&text).unwrap();
    manifest["fixtures"].as_array().unwrap().clone()
}

fn fixture(name: &str) -> Value {
    manifest().into_iter().find(|f| f["file"] == name).unwrap_or_else(|| panic!("no fixture {name}"))
}

/// The frame body (without the size prefix) of a fixture file.
fn body(file: &str) -> Bytes {
    let raw = std::fs::read(fixtures_dir().join(file)).unwrap();
    let mut buf = BytesMut::from(&raw[..]);
    let frame = FrameDecoder::default().decode(&mut buf).unwrap().expect("a whole frame");
    assert!(buf.is_empty(), "{file}: bytes after the frame");
    frame
}

fn version(f: &Value) -> i16 {
    f["api_version"].as_i64().unwrap() as i16
}

/// Decodes a request fixture, checks its header, re-encodes the body and compares bytes.
fn check_request<R: Request>(f: &Value) -> R {
    let file = f["file"].as_str().unwrap();
    let mut frame = body(file);
    let header = decode_request_header(&mut frame).unwrap_or_else(|e| panic!("{file}: {e}"));
    assert_eq!(i64::from(header.request_api_key), f["api_key"].as_i64().unwrap(), "{file}");
    assert_eq!(i64::from(header.correlation_id), f["correlation_id"].as_i64().unwrap(), "{file}");
    assert_eq!(header.client_id.as_deref(), f["client_id"].as_str(), "{file}");
    let request: R = decode_exact(frame.clone(), version(f)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let again = encode_to_bytes(&request, version(f)).unwrap();
    assert_eq!(again, frame, "{file}: re-encoding differs");
    request
}

/// Decodes a response fixture (as the answer to `R`), re-encodes it and compares bytes.
fn check_response<R: Request>(f: &Value) -> R::Response {
    let file = f["file"].as_str().unwrap();
    let frame = body(file);
    let (header, response) = decode_response::<R>(frame.clone(), version(f)).unwrap_or_else(|e| panic!("{file}: {e}"));
    assert_eq!(i64::from(header.correlation_id), f["correlation_id"].as_i64().unwrap(), "{file}");
    let mut again = BytesMut::new();
    header.encode(&mut again, response_header_version(R::API_KEY, version(f))).unwrap();
    response.encode(&mut again, version(f)).unwrap();
    let again = again.freeze();
    if again != frame {
        // Tansu writes some tagged fields at their default values (ApiVersions v3's four, Fetch
        // v16's empty node endpoints); sluice, like the Java client, omits tagged fields that hold
        // their defaults. Then the re-encoding is shorter and must read back as the same message.
        assert!(<R::Response as Message>::is_flexible(version(f)), "{file}: re-encoding differs");
        assert!(again.len() < frame.len(), "{file}: re-encoding differs and is not shorter");
        let (_, reread) = decode_response::<R>(again, version(f)).unwrap();
        assert_eq!(reread, response, "{file}: the re-encoding reads back differently");
    }
    response
}

macro_rules! check_by_key {
    ($f:expr; $($req:ty),* $(,)?) => {{
        let key = $f["api_key"].as_i64().unwrap() as i16;
        let request = $f["direction"] == "request";
        match key {
            $(k if k == <$req>::API_KEY => {
                if request { let _ = check_request::<$req>($f); } else { let _ = check_response::<$req>($f); }
            })*
            other => panic!("{}: no codec for API key {other}", $f["file"]),
        }
    }};
}

#[test]
fn every_fixture_decodes_and_re_encodes_byte_for_byte() {
    let all = manifest();
    assert!(all.len() >= 40, "expected the full fixture set, found {}", all.len());
    for f in &all {
        check_by_key!(f;
            ProduceRequest, FetchRequest, ListOffsetsRequest, MetadataRequest, OffsetCommitRequest,
            OffsetFetchRequest, FindCoordinatorRequest, JoinGroupRequest, HeartbeatRequest,
            LeaveGroupRequest, SyncGroupRequest, ApiVersionsRequest, CreateTopicsRequest,
            InitProducerIdRequest, AddPartitionsToTxnRequest, AddOffsetsToTxnRequest, EndTxnRequest,
            TxnOffsetCommitRequest,
        );
    }
}

fn expected_bytes(record: &Value, field: &str) -> Option<Bytes> {
    let value = record[field].as_str()?;
    if record[format!("{field}_base64")].as_bool().unwrap_or(false) {
        Some(Bytes::from(base64::engine::general_purpose::STANDARD.decode(value).unwrap()))
    } else {
        Some(Bytes::copy_from_slice(value.as_bytes()))
    }
}

fn assert_records_match(file: &str, records: &[RecordRef<'_>], expected: &[Value]) {
    assert_eq!(records.len(), expected.len(), "{file}: record count");
    for (record, want) in records.iter().zip(expected) {
        let what = format!("{file} offset {}", want["offset"]);
        assert_eq!(record.offset(), want["offset"].as_i64().unwrap(), "{what}");
        assert_eq!(record.timestamp(), want["timestamp_ms"].as_i64().unwrap(), "{what}");
        assert_eq!(record.key_bytes(), expected_bytes(want, "key"), "{what}: key");
        assert_eq!(record.value_bytes(), expected_bytes(want, "value"), "{what}: value");
        let headers: Vec<(String, Option<String>)> = record
            .headers()
            .map(|(key, value)| (key.to_owned(), value.map(|v| String::from_utf8(v.to_vec()).unwrap())))
            .collect();
        let want_headers: Vec<(String, Option<String>)> = want["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| (h[0].as_str().unwrap().to_owned(), h[1].as_str().map(str::to_owned)))
            .collect();
        assert_eq!(headers, want_headers, "{what}: headers");
    }
}

const CODECS: [(&str, i16); 5] = [("none", 0), ("gzip", 1), ("snappy", 2), ("lz4", 3), ("zstd", 4)];

#[test]
fn librdkafka_produce_requests_carry_the_produced_records_for_every_codec() {
    for (codec, bits) in CODECS {
        let f = manifest()
            .into_iter()
            .find(|f| f["file"].as_str().unwrap().starts_with(&format!("produce-{codec}-v")))
            .unwrap();
        let file = f["file"].as_str().unwrap();
        let request: ProduceRequest = check_request(&f);
        let topic = &request.topic_data[0];
        assert_eq!(topic.name, f["topic"].as_str().unwrap(), "{file}");
        let partition = &topic.partition_data[0];
        let records = partition.records.clone().expect("records");
        let decoded = decode_records(&records, &DecodeOptions::default()).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(decoded.partial_bytes, 0);
        assert_eq!(decoded.batches.len(), 1, "{file}");
        assert_eq!(decoded.batches[0].header.attributes & 7, bits, "{file}: codec bits");
        let all: Vec<RecordRef<'_>> = decoded.records().collect();
        assert_records_match(file, &all, f["records"].as_array().unwrap());
        // Re-encoding the decoded batch must give librdkafka's exact bytes when uncompressed; and
        // for every codec, bytes that decode to the same records.
        let mut again = BytesMut::new();
        let batch = &decoded.batches[0];
        sluice_protocol::record::encode_batch(&batch.header, &batch.to_records(), &mut again).unwrap();
        if codec == "none" {
            assert_eq!(&again[..], &records[..], "{file}: uncompressed batch re-encodes byte for byte");
        }
        let redecoded = decode_records(&again.freeze(), &DecodeOptions::default()).unwrap();
        assert_eq!(redecoded.batches, decoded.batches, "{file}: our encoding decodes to the same batch");
    }
}

#[test]
fn tansu_fetch_responses_carry_the_records_with_offsets_for_every_codec() {
    for (codec, bits) in CODECS {
        let f = manifest()
            .into_iter()
            .find(|f| f["file"].as_str().unwrap().starts_with(&format!("fetch-{codec}-v")))
            .unwrap();
        let file = f["file"].as_str().unwrap();
        let response: FetchResponse = check_response::<FetchRequest>(&f);
        assert_eq!(response.error_code, 0, "{file}");
        let partition = &response.responses[0].partitions[0];
        assert_eq!(partition.error_code, 0, "{file}");
        assert_eq!(partition.high_watermark, 10, "{file}");
        let records = partition.records.clone().expect("records");
        let decoded = decode_records(&records, &DecodeOptions::default()).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(decoded.batches[0].header.attributes & 7, bits, "{file}");
        assert_eq!(decoded.next_offset, Some(10), "{file}");
        let all: Vec<RecordRef<'_>> = decoded.records().collect();
        assert_records_match(file, &all, f["records"].as_array().unwrap());
        // Starting mid-batch drops the earlier records but keeps the rest.
        let from_seven =
            decode_records(&records, &DecodeOptions { min_offset: 7, ..DecodeOptions::default() }).unwrap();
        assert_eq!(from_seven.records().map(|r| r.offset()).collect::<Vec<_>>(), vec![7, 8, 9], "{file}");
    }
}

#[test]
fn a_fetch_response_cut_inside_its_last_batch_reports_a_partial_batch() {
    let f = fixture("fetch-none-v16.bin");
    let response: FetchResponse = check_response::<FetchRequest>(&f);
    let records = response.responses[0].partitions[0].records.clone().unwrap();
    for cut in [1, 11, 12, 60, 61, records.len() / 2, records.len() - 1] {
        let decoded = decode_records(&records.slice(..cut), &DecodeOptions::default()).unwrap();
        assert!(decoded.batches.is_empty(), "cut {cut}");
        assert_eq!(decoded.partial_bytes, cut, "cut {cut}");
        assert_eq!(decoded.next_offset, None);
    }
}

#[test]
fn tansu_apiversions_v3_response_with_tagged_fields() {
    let f = fixture("apiversions-response-v3.bin");
    let response: ApiVersionsResponse = check_response::<ApiVersionsRequest>(&f);
    assert_eq!(response.error_code, 0);
    // Its four tagged fields, all at their defaults, are read as known fields, not kept as unknown.
    let tansu_tagged: &[u8] = &[4, 0, 1, 1, 1, 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 1, 1, 3, 1, 0];
    assert!(body(f["file"].as_str().unwrap()).ends_with(tansu_tagged));
    assert!(response.unknown_tagged_fields.is_empty());
    assert_eq!((response.finalized_features_epoch, response.zk_migration_ready), (-1, false));
    let max = |key: i16| response.api_keys.iter().find(|k| k.api_key == key).map(|k| k.max_version);
    assert_eq!(max(ProduceRequest::API_KEY), Some(11));
    assert_eq!(max(FetchRequest::API_KEY), Some(17));
    assert_eq!(max(MetadataRequest::API_KEY), Some(12));
    assert_eq!(max(ApiVersionsRequest::API_KEY), Some(4));
    let request: ApiVersionsRequest = check_request(&fixture("apiversions-request-v3.bin"));
    assert_eq!(request.client_software_name, "confluent-kafka-python");
    assert!(request.client_software_version.starts_with("2.16.1"), "{}", request.client_software_version);
}

#[test]
fn join_and_sync_group_carry_the_consumer_protocol_subscription_and_assignment() {
    let join: JoinGroupRequest = check_request(&fixture("joingroup-request-v5.bin"));
    assert_eq!(join.protocol_type, "consumer");
    assert!(!join.protocols.is_empty());
    let (_, subscription) = decode_subscription(join.protocols[0].metadata.clone()).unwrap();
    assert!(!subscription.topics.is_empty(), "subscription names the subscribed topic");

    let joined: JoinGroupResponse = check_response::<JoinGroupRequest>(&fixture("joingroup-response-v5.bin"));
    assert_eq!(joined.error_code, 0);
    assert_eq!(joined.leader, joined.member_id, "a single member leads its group");

    let sync: SyncGroupRequest = check_request(&fixture("syncgroup-request-v3.bin"));
    let (_, planned) = decode_assignment(sync.assignments[0].assignment.clone()).unwrap();
    let synced: SyncGroupResponse = check_response::<SyncGroupRequest>(&fixture("syncgroup-response-v3.bin"));
    assert_eq!(synced.error_code, 0);
    let (_, assignment) = decode_assignment(synced.assignment.clone()).unwrap();
    assert_eq!(assignment, planned, "the broker hands back what the leader planned");
    let partitions: Vec<i32> = assignment.assigned_partitions.iter().flat_map(|t| t.partitions.clone()).collect();
    assert_eq!(partitions.len(), 3, "one member owns all three partitions");
}
