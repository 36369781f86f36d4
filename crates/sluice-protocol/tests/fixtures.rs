//! Golden bytes from real peers (librdkafka 2.16 against Tansu 0.6.0, `fixtures/README.md`; the
//! Java client 4.4 against Apache Kafka 4.4, `fixtures/kafka-4.4/README.md`): every captured
//! frame decodes, re-encodes to the same bytes, and carries the content the capture script
//! produced (records, keys, headers, timestamps, offsets, group assignments).

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

/// The librdkafka/Tansu set's manifest entries.
fn manifest() -> Vec<Value> {
    manifest_of("")
}

/// The Java client/Apache Kafka 4.4 set's manifest entries (their `file` relative to `fixtures/`).
fn kafka_manifest() -> Vec<Value> {
    manifest_of("kafka-4.4")
}

fn manifest_of(set: &str) -> Vec<Value> {
    let path = fixtures_dir().join(set).join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let manifest: Value = serde_json::from_str(&text).unwrap();
    let mut entries = manifest["fixtures"].as_array().unwrap().clone();
    if !set.is_empty() {
        for entry in &mut entries {
            let file = format!("{set}/{}", entry["file"].as_str().unwrap());
            entry["file"] = Value::String(file);
        }
    }
    entries
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
    let (tansu, kafka) = (manifest(), kafka_manifest());
    assert!(tansu.len() >= 40, "expected the full librdkafka/Tansu set, found {}", tansu.len());
    assert!(kafka.len() >= 50, "expected the full Java/Kafka 4.4 set, found {}", kafka.len());
    for f in tansu.iter().chain(&kafka) {
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
        let mut options = DecodeOptions::default();
        options.min_offset = 7;
        let from_seven = decode_records(&records, &options).unwrap();
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

#[test]
fn java_produce_requests_and_kafka_fetch_responses_carry_the_records_for_every_codec() {
    let all = kafka_manifest();
    let find = |prefix: String| all.iter().find(|f| f["file"].as_str().unwrap().starts_with(&prefix)).unwrap();
    for (codec, bits) in CODECS {
        // Produce v13 names the topic by id (KIP-516), as the Java client 4.4 sends it.
        let f = find(format!("kafka-4.4/produce-{codec}-v"));
        let file = f["file"].as_str().unwrap();
        assert_eq!(version(f), 13, "{file}");
        let request: ProduceRequest = check_request(f);
        let topic = &request.topic_data[0];
        assert!(topic.name.is_empty() && topic.topic_id != sluice_protocol::primitives::Uuid::ZERO, "{file}");
        let records = topic.partition_data[0].records.clone().expect("records");
        let decoded = decode_records(&records, &DecodeOptions::default()).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(decoded.batches.len(), 1, "{file}");
        assert_eq!(decoded.batches[0].header.attributes & 7, bits, "{file}: codec bits");
        let all_records: Vec<RecordRef<'_>> = decoded.records().collect();
        assert_records_match(file, &all_records, f["records"].as_array().unwrap());

        // The broker's answer to the Java consumer's Fetch v18: the same records, the same id.
        let f = find(format!("kafka-4.4/fetch-{codec}-v"));
        let file = f["file"].as_str().unwrap();
        let response: FetchResponse = check_response::<FetchRequest>(f);
        assert_eq!(response.responses[0].topic_id, topic.topic_id, "{file}: the topic id the producer used");
        let partition = &response.responses[0].partitions[0];
        assert_eq!((partition.error_code, partition.high_watermark), (0, 10), "{file}");
        let records = partition.records.clone().expect("records");
        let decoded = decode_records(&records, &DecodeOptions::default()).unwrap_or_else(|e| panic!("{file}: {e}"));
        let all_records: Vec<RecordRef<'_>> = decoded.records().collect();
        assert_records_match(file, &all_records, f["records"].as_array().unwrap());
    }
}

#[test]
fn kafka_4_4_answers_the_java_client_at_its_newest_versions() {
    let all = kafka_manifest();
    let f = |name: &str| all.iter().find(|f| f["file"] == format!("kafka-4.4/{name}")).unwrap();
    let versions: ApiVersionsResponse = check_response::<ApiVersionsRequest>(f("apiversions-response-v5.bin"));
    let range = |key: i16| versions.api_keys.iter().find(|k| k.api_key == key).map(|k| (k.min_version, k.max_version));
    assert_eq!(range(ProduceRequest::API_KEY), Some((0, 13)));
    assert_eq!(range(FetchRequest::API_KEY), Some((4, 18)), "Kafka 4 removed Fetch v0-3 (KIP-896)");
    assert_eq!(range(MetadataRequest::API_KEY), Some((0, 13)));
    assert_eq!(range(ListOffsetsRequest::API_KEY), Some((1, 11)));
    // The transaction protocol the broker offers (KIP-890): the finalized transaction.version.
    let tv = versions.finalized_features.iter().find(|f| f.name == "transaction.version").map(|f| f.max_version_level);
    assert_eq!(tv, Some(2), "{:?}", versions.finalized_features);

    let metadata: MetadataResponse = check_response::<MetadataRequest>(f("metadata-response-v13.bin"));
    assert_eq!(metadata.error_code, 0);
    let end: EndTxnResponse = check_response::<EndTxnRequest>(f("txn-endtxn-response-v5.bin"));
    let init: InitProducerIdResponse = check_response::<InitProducerIdRequest>(f("txn-initproducerid-response-v5.bin"));
    assert_eq!(end.producer_id, init.producer_id, "EndTxn v5 answers with the producer id");
    assert_eq!(end.producer_epoch, init.producer_epoch + 1, "and the epoch it bumped at the end (transactions v2)");
}
