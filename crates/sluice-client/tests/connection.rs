//! The connection layer against a real broker (Apache Kafka, or Tansu with
//! `SLUICE_TEST_BROKER=tansu`): version negotiation, requests in flight, timeouts, refused and
//! lost connections.

use sluice_testkit as common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::{unique, Broker, Kind};
use sluice_client::{Connection, ConnectionConfig, Error};
use sluice_protocol::compression::Compression;
use sluice_protocol::error_code::ErrorCode;
use sluice_protocol::messages::create_topics_request::CreatableTopic;
use sluice_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use sluice_protocol::messages::metadata_request::MetadataRequestTopic;
use sluice_protocol::messages::*;
use sluice_protocol::record::{decode_records, BatchHeader, DecodeOptions, Record};

/// Fetch v13+ names topics by id; these tests name them, so they cap Fetch at v12.
const FETCH_BY_NAME: i16 = 12;

async fn create_topic(connection: &Connection, name: &str, partitions: i32) {
    let request = CreateTopicsRequest {
        topics: vec![CreatableTopic {
            name: name.into(),
            num_partitions: partitions,
            replication_factor: 1,
            ..Default::default()
        }],
        timeout_ms: 10_000,
        ..Default::default()
    };
    let response = connection.send(&request).await.unwrap();
    assert_eq!(response.topics[0].error_code, 0, "create {name}: {:?}", response.topics[0]);
    common::wait_for_leaders(connection, name, partitions).await;
}

fn fetch_request(topic: &str, offset: i64, max_wait_ms: i32) -> FetchRequest {
    FetchRequest {
        max_wait_ms,
        min_bytes: 1,
        max_bytes: 1 << 20,
        topics: vec![FetchTopic {
            topic: topic.into(),
            partitions: vec![FetchPartition {
                partition: 0,
                fetch_offset: offset,
                partition_max_bytes: 1 << 20,
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiates_api_versions_with_the_broker() {
    let broker = common::shared();
    let connection = Connection::connect(&broker.addr, ConnectionConfig::default()).await.unwrap();
    let produce = connection.broker_versions(ProduceRequest::API_KEY).unwrap();
    assert_eq!(connection.version_for::<FetchRequest>(Some(FETCH_BY_NAME)).unwrap(), 12);
    match broker.kind {
        Kind::Kafka => {
            // Kafka 4.4's newest versions, which sluice speaks too.
            assert_eq!(connection.version_for::<ProduceRequest>(None).unwrap(), 13);
            assert_eq!(connection.version_for::<FetchRequest>(None).unwrap(), 18);
            assert_eq!(connection.version_for::<MetadataRequest>(None).unwrap(), 13);
            assert_eq!(connection.version_for::<ListOffsetsRequest>(None).unwrap(), 11);
            assert_eq!(connection.version_for::<DescribeGroupsRequest>(None).unwrap(), 6);
            // Kafka 4 removed old versions (KIP-896): Fetch starts at v4, ListOffsets at v1,
            // OffsetCommit at v2. What sluice picks is the newest both speak, never below the floor.
            assert!(produce.max >= 12, "Kafka 4.4 speaks Produce up to v13: {produce:?}");
            assert_eq!(connection.broker_versions(FetchRequest::API_KEY).unwrap().min, 4);
            assert_eq!(connection.broker_versions(ListOffsetsRequest::API_KEY).unwrap().min, 1);
            assert_eq!(connection.broker_versions(OffsetCommitRequest::API_KEY).unwrap().min, 2);
            assert!(connection.version_for::<CreatePartitionsRequest>(None).unwrap() >= 3);
            // Asking for a version below the broker's floor is refused before anything is sent.
            let err = connection.version_for::<FetchRequest>(Some(3)).unwrap_err();
            assert!(matches!(err, Error::UnsupportedVersion { .. }), "{err}");
        }
        Kind::Tansu => {
            assert_eq!((produce.min, produce.max), (0, 11), "Tansu 0.6.0 advertises Produce 0..11");
            assert_eq!(connection.version_for::<FetchRequest>(None).unwrap(), 17);
            assert_eq!(connection.version_for::<MetadataRequest>(None).unwrap(), 12);
            // CreatePartitions is not offered by Tansu: no common version, and the error says so.
            let err = connection.version_for::<CreatePartitionsRequest>(None).unwrap_err();
            assert!(matches!(err, Error::UnsupportedVersion { broker_max: -1, .. }), "{err}");
            assert!(err.to_string().contains(&broker.addr));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produces_and_fetches_records_with_every_codec() {
    let broker = common::shared();
    let connection = Connection::connect(&broker.addr, ConnectionConfig::default()).await.unwrap();
    for codec in [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd] {
        let topic = unique(&format!("connection-{}", codec.name()));
        create_topic(&connection, &topic, 1).await;
        let records: Vec<Record> = (0..100)
            .map(|i| Record {
                offset: i,
                timestamp: 1_700_000_000_000 + i,
                key: Some(format!("key-{i}").into()),
                value: Some(format!("value-{i}-{}", "x".repeat(50)).into()),
                ..Record::default()
            })
            .collect();
        let partition =
            common::produce_batch(&connection, &topic, 0, &BatchHeader::with_compression(codec), &records).await;
        assert_eq!((partition.error_code, partition.base_offset), (0, 0), "{codec:?}");

        let version = connection.version_for::<FetchRequest>(Some(FETCH_BY_NAME)).unwrap();
        let fetched = connection.send_version(&fetch_request(&topic, 0, 1000), version).await.unwrap();
        let partition = &fetched.responses[0].partitions[0];
        assert_eq!((partition.error_code, partition.high_watermark), (0, 100), "{codec:?}");
        let decoded = decode_records(partition.records.as_ref().unwrap(), &DecodeOptions::default()).unwrap();
        let got: Vec<Record> = decoded.batches.iter().flat_map(|b| b.to_records()).collect();
        assert_eq!(got, records, "{codec:?}: the broker returns exactly what was produced");
        assert_eq!(decoded.batches[0].header.compression(), codec);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_in_flight_each_get_their_own_response() {
    let broker = common::shared();
    let connection = Arc::new(Connection::connect(&broker.addr, ConnectionConfig::default()).await.unwrap());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let connection = Arc::clone(&connection);
        tasks.spawn(async move {
            let name = format!("no-such-topic-{i}");
            let request = MetadataRequest {
                topics: Some(vec![MetadataRequestTopic { name: Some(name.clone()), ..Default::default() }]),
                allow_auto_topic_creation: false,
                ..Default::default()
            };
            let response = connection.send(&request).await.unwrap();
            (name, response)
        });
    }
    let mut answered = 0;
    while let Some(joined) = tasks.join_next().await {
        let (name, response) = joined.unwrap();
        assert_eq!(response.topics.len(), 1);
        assert_eq!(response.topics[0].name.as_deref(), Some(name.as_str()), "a response went to the wrong request");
        assert_eq!(ErrorCode::from_code(response.topics[0].error_code), ErrorCode::UnknownTopicOrPartition);
        answered += 1;
    }
    assert_eq!(answered, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_outlives_its_timeout_fails_and_closes_its_connection() {
    let broker = common::shared();
    let mut config = ConnectionConfig::default();
    config.request_timeout = Duration::from_millis(300);
    let connection = Connection::connect(&broker.addr, config).await.unwrap();
    let slow = unique("slow");
    create_topic(&connection, &slow, 1).await;
    // An empty topic: the broker holds the fetch for max_wait_ms (2 s), past the 300 ms timeout.
    let version = connection.version_for::<FetchRequest>(Some(FETCH_BY_NAME)).unwrap();
    let err = connection.send_version(&fetch_request(&slow, 0, 2_000), version).await.unwrap_err();
    assert!(matches!(err, Error::RequestTimeout { .. }), "{err}");
    assert!(err.is_retriable());
    // A connection that let a request time out may be half-open (the broker gone without a
    // word): nothing more is sent on it, and the error says why.
    assert!(connection.is_closed());
    let err = connection.send(&MetadataRequest { topics: None, ..Default::default() }).await.unwrap_err();
    assert!(matches!(err, Error::Disconnected { .. }) && err.to_string().contains("no answer to Fetch"), "{err}");
    assert!(err.is_retriable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_names_the_broker_and_what_to_check() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let err = Connection::connect(&addr, ConnectionConfig::default()).await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains(&addr) && text.contains("is it running"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_fail_promptly_when_the_broker_dies() {
    let broker = Broker::start();
    let connection = Arc::new(Connection::connect(&broker.addr, ConnectionConfig::default()).await.unwrap());
    create_topic(&connection, "dying", 1).await;
    let version = connection.version_for::<FetchRequest>(Some(FETCH_BY_NAME)).unwrap();
    let waiting = {
        let connection = Arc::clone(&connection);
        tokio::spawn(async move { connection.send_version(&fetch_request("dying", 0, 10_000), version).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let killed = Instant::now();
    broker.kill(1);
    let err = waiting.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::Disconnected { .. }), "{err}");
    assert!(killed.elapsed() < Duration::from_secs(5), "failed after {:?}, not promptly", killed.elapsed());
    assert!(connection.is_closed());
    let again = connection.send(&MetadataRequest::default()).await.unwrap_err();
    assert!(matches!(again, Error::Disconnected { .. }), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_over_the_frame_limit_is_a_non_retriable_error() {
    let broker = common::shared();
    // Room for ApiVersions and a small Metadata answer, not for a fetch of 100 records.
    let setup = Connection::connect(&broker.addr, ConnectionConfig::default()).await.unwrap();
    let big = unique("big");
    create_topic(&setup, &big, 1).await;
    let records: Vec<Record> =
        (0..100).map(|i| Record { offset: i, value: Some(vec![b'x'; 100].into()), ..Record::default() }).collect();
    common::produce_batch(&setup, &big, 0, &BatchHeader::default(), &records).await;
    let mut config = ConnectionConfig::default();
    config.max_frame_bytes = 2_000;
    let connection = Connection::connect(&broker.addr, config).await.unwrap();
    let version = connection.version_for::<FetchRequest>(Some(FETCH_BY_NAME)).unwrap();
    let err = connection.send_version(&fetch_request(&big, 0, 100), version).await.unwrap_err();
    assert!(matches!(err, Error::ResponseTooLarge { max: 2_000, .. }), "{err}");
    assert!(!err.is_retriable(), "retrying would fetch the same oversized response");
    assert!(err.to_string().contains("max_frame_bytes"), "{err}");
}

/// A broker that only speaks ApiVersions v0-2 answers a v3 request the way Kafka does: an
/// UNSUPPORTED_VERSION response in v0 format listing what it does speak. The client must retry at
/// v0 and then use the versions the broker listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn falls_back_to_apiversions_v0_for_an_older_broker() {
    use sluice_protocol::frame::FrameDecoder;
    use sluice_protocol::header::{decode_request_header, encode_response};
    use sluice_protocol::messages::api_versions_response::ApiVersion;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let broker = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buf = BytesMut::new();
        let mut versions_seen = Vec::new();
        while versions_seen.len() < 2 {
            let mut body = loop {
                if let Some(frame) = FrameDecoder::default().decode(&mut buf).unwrap() {
                    break frame;
                }
                assert!(socket.read_buf(&mut buf).await.unwrap() > 0, "client hung up");
            };
            let header = decode_request_header(&mut body).unwrap();
            assert_eq!(header.request_api_key, ApiVersionsRequest::API_KEY);
            versions_seen.push(header.request_api_version);
            let api_keys = vec![
                ApiVersion {
                    api_key: ApiVersionsRequest::API_KEY,
                    min_version: 0,
                    max_version: 2,
                    ..Default::default()
                },
                ApiVersion { api_key: MetadataRequest::API_KEY, min_version: 0, max_version: 5, ..Default::default() },
            ];
            let error_code = if header.request_api_version > 2 { 35 } else { 0 };
            let response = ApiVersionsResponse { error_code, api_keys, ..Default::default() };
            let mut out = BytesMut::new();
            // An older broker answers in v0 whatever version was asked.
            encode_response(&mut out, ApiVersionsRequest::API_KEY, header.correlation_id, 0, &response).unwrap();
            socket.write_all(&out).await.unwrap();
        }
        versions_seen
    });
    let connection = Connection::connect(&addr, ConnectionConfig::default()).await.unwrap();
    assert_eq!(broker.await.unwrap(), vec![3, 0], "asked v3, then fell back to v0");
    assert_eq!(connection.version_for::<MetadataRequest>(None).unwrap(), 5);
    assert!(connection.version_for::<ProduceRequest>(None).is_err(), "not offered by this broker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_caller_gives_up_is_forgotten_and_its_late_answer_ignored() {
    let broker = common::shared();
    let connection = Connection::connect(&broker.addr, ConnectionConfig::default()).await.unwrap();
    let abandoned = unique("abandoned");
    create_topic(&connection, &abandoned, 1).await;
    let version = connection.version_for::<FetchRequest>(Some(FETCH_BY_NAME)).unwrap();
    // The broker holds this fetch for a second; the caller stops waiting after 100 ms.
    let request = fetch_request(&abandoned, 0, 1_000);
    tokio::select! {
        r = connection.send_version(&request, version) => panic!("the broker should still be waiting: {r:?}"),
        () = tokio::time::sleep(Duration::from_millis(100)) => {}
    }
    assert_eq!(connection.in_flight(), 0, "a dropped request leaves nothing behind");
    // Its answer arrives later, for nobody; the next request is unaffected.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let metadata = connection.send(&MetadataRequest { topics: None, ..Default::default() }).await.unwrap();
    assert!(metadata.topics.iter().any(|t| t.name.as_deref() == Some(abandoned.as_str())));
    assert_eq!(connection.in_flight(), 0);
}

/// TCP keepalive is on by default (probes after 60 s idle), so a connection whose peer vanished
/// is noticed even while no request waits on it; `keepalive: None` leaves it off. Read from the
/// kernel's own table (`/proc/net/tcp`: timer 2 is the keepalive timer, its expiry in 1/100 s).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_keep_alive_unless_told_not_to() {
    for (keepalive, expected) in [(Some(Duration::from_secs(60)), Some(60)), (None, None)] {
        // A listener that accepts and never answers: the connection waits for ApiVersions.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut config = ConnectionConfig::default();
        config.keepalive = keepalive;
        config.request_timeout = Duration::from_secs(3);
        let addr = format!("127.0.0.1:{port}");
        let connecting = tokio::spawn(async move { Connection::connect(&addr, config).await });
        let (_accepted, _) = listener.accept().unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let client_side = table
            .lines()
            .skip(1)
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .find(|f| f[2].ends_with(&format!(":{port:04X}")) && f[3] == "01")
            .expect("the client's socket is in /proc/net/tcp");
        // "tr:tm->when", e.g. "02:00001770": timer kind and when it fires.
        let (timer, when) = client_side[5].split_once(':').unwrap();
        let seconds = u64::from_str_radix(when, 16).unwrap() / 100;
        match expected {
            Some(idle) => {
                assert_eq!(timer, "02", "keepalive timer armed: {client_side:?}");
                assert!((idle - 5..=idle).contains(&seconds), "first probe after ~{idle} s, not {seconds} s");
            }
            None => assert_eq!(timer, "00", "no timer without keepalive: {client_side:?}"),
        }
        connecting.abort();
    }
}

/// A throttle time a broker sends with a response (KIP-219: a client over its quota is answered
/// at once and told how long to hold off) holds the connection's next requests until it has
/// passed: a request queued right after a 300 ms throttle is answered no sooner than 300 ms
/// later (a lower bound, which no machine's speed can break).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_connection_holds_its_next_requests_until_the_throttle_time_has_passed() {
    let broker = common::shared();
    let connection = Connection::connect(&broker.addr, ConnectionConfig::default()).await.unwrap();
    connection.send(&ApiVersionsRequest::default()).await.unwrap();
    connection.throttle(300);
    let asked = Instant::now();
    connection.send(&ApiVersionsRequest::default()).await.unwrap();
    assert!(asked.elapsed() >= Duration::from_millis(300), "answered {:?} after a 300 ms throttle", asked.elapsed());
    // Zero and negative throttle times (brokers before KIP-219 send 0) hold nothing up.
    connection.throttle(0);
    connection.throttle(-5);
    connection.send(&ApiVersionsRequest::default()).await.unwrap();
}

/// What a request observer was told.
#[derive(Debug, Default)]
struct Observed(std::sync::Mutex<Vec<(String, &'static str, Duration, bool)>>);

impl sluice_client::RequestObserver for Observed {
    fn request_done(&self, broker: &str, api: &'static str, elapsed: Duration, ok: bool) {
        self.0.lock().unwrap().push((broker.to_owned(), api, elapsed, ok));
    }
}

/// An observer hears of each request once, with its API, broker and a latency that covers
/// the broker holding a long-poll Fetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_observer_is_told_each_request_s_latency() {
    let broker = common::shared();
    let observed = Arc::new(Observed::default());
    let observer: Arc<dyn sluice_client::RequestObserver> = Arc::clone(&observed) as _;
    let mut config = ConnectionConfig::default();
    config.observer = Some(observer);
    let connection = Connection::connect(&broker.addr, config).await.unwrap();
    let topic = unique("observed");
    create_topic(&connection, &topic, 1).await;
    let before = observed.0.lock().unwrap().len();
    connection.send(&MetadataRequest::default()).await.unwrap();
    connection.send_version(&fetch_request(&topic, 0, 300), FETCH_BY_NAME).await.unwrap();
    let seen = observed.0.lock().unwrap();
    let [metadata, fetch] = &seen[before..] else { panic!("{seen:?}") };
    assert_eq!((metadata.0.as_str(), metadata.1, metadata.3), (broker.addr.as_str(), "Metadata", true));
    assert_eq!((fetch.1, fetch.3), ("Fetch", true));
    assert!(fetch.2 >= Duration::from_millis(250), "the broker held the empty fetch: {:?}", fetch.2);
}
