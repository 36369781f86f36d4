//! The cluster client against a real Tansu broker: bootstrap, metadata, leaders, admin,
//! reconnecting after the broker comes back.

mod common;

use std::time::Duration;

use common::Tansu;
use sluice_client::{Client, ClientConfig, Error};
use sluice_protocol::error_code::ErrorCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstraps_past_a_dead_address_and_reads_the_cluster() {
    let tansu = Tansu::start();
    let dead = {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        format!("127.0.0.1:{port}")
    };
    let client = Client::connect(ClientConfig::new([dead, tansu.addr.clone()])).await.unwrap();
    let metadata = client.metadata();
    assert_eq!(metadata.brokers.values().collect::<Vec<_>>(), vec![&tansu.addr], "Tansu advertises its listener");
    assert!(metadata.brokers.contains_key(&metadata.controller_id), "the controller is a listed broker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_describes_and_deletes_topics() {
    let tansu = Tansu::start();
    let client = Client::connect(ClientConfig::new([tansu.addr.as_str()])).await.unwrap();
    client.create_topic("clicks", 8, 1).await.unwrap();
    let metadata = client.metadata();
    let topic = &metadata.topics["clicks"];
    assert_eq!(topic.error, ErrorCode::None);
    assert_eq!(topic.partitions.iter().map(|p| p.partition).collect::<Vec<_>>(), (0..8).collect::<Vec<_>>());
    for partition in 0..8 {
        let leader = client.leader("clicks", partition).await.unwrap();
        assert_eq!(leader.broker(), tansu.addr);
    }
    // Creating it again is the broker's TOPIC_ALREADY_EXISTS, not retriable.
    let err = client.create_topic("clicks", 8, 1).await.unwrap_err();
    assert!(matches!(err, Error::Broker { code: ErrorCode::TopicAlreadyExists, .. }), "{err}");
    assert!(!err.is_retriable());

    client.delete_topic("clicks").await.unwrap();
    let metadata = client.refresh_metadata(None).await.unwrap();
    assert!(!metadata.topics.contains_key("clicks"), "{:?}", metadata.topics.keys());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_by_itself_when_the_broker_comes_back() {
    let tansu = Tansu::start();
    let addr = tansu.addr.clone();
    let mut config = ClientConfig::new([addr.as_str()]);
    config.reconnect_backoff = Duration::from_millis(20);
    config.reconnect_backoff_max = Duration::from_millis(200);
    let client = Client::connect(config).await.unwrap();
    drop(tansu);
    // While it is down, calls fail with retriable errors that name the broker.
    let err = client.refresh_metadata(None).await.unwrap_err();
    assert!(err.is_retriable(), "{err}");
    assert!(err.to_string().contains(&addr), "{err}");
    // Same port, new broker: the next call reconnects without any help.
    let _back = Tansu::start_on(&addr);
    let mut attempts = 0;
    let metadata = loop {
        attempts += 1;
        match client.refresh_metadata(None).await {
            Ok(metadata) => break metadata,
            Err(e) if e.is_retriable() && attempts < 50 => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("did not reconnect after {attempts} attempts: {e}"),
        }
    };
    assert_eq!(metadata.brokers.values().next(), Some(&addr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_offsets_and_fetches_from_the_middle_of_a_batch() {
    use sluice_client::{FetchOptions, OffsetSpec};
    use sluice_protocol::record::{BatchHeader, Record};

    let tansu = Tansu::start();
    let client = Client::connect(ClientConfig::new([tansu.addr.as_str()])).await.unwrap();
    client.create_topic("offsets", 1, 1).await.unwrap();
    let leader = client.leader("offsets", 0).await.unwrap();
    for batch_start in [0i64, 10, 20] {
        let records: Vec<Record> = (batch_start..batch_start + 10)
            .map(|i| Record { offset: i - batch_start, value: Some(format!("v{i}").into()), ..Record::default() })
            .collect();
        let answer = common::produce_batch(&leader, "offsets", 0, &BatchHeader::default(), &records).await;
        assert_eq!(answer.base_offset, batch_start);
    }
    assert_eq!(client.list_offset("offsets", 0, OffsetSpec::Earliest).await.unwrap(), 0);

    let fetched = client.fetch_partition("offsets", 0, 15, &FetchOptions::default()).await.unwrap();
    assert_eq!(fetched.error, ErrorCode::None);
    assert_eq!((fetched.high_watermark, fetched.log_start_offset), (30, 0));
    let offsets: Vec<i64> = fetched.records.records().map(|r| r.offset()).collect();
    assert_eq!(offsets, (15..30).collect::<Vec<_>>(), "records before the fetch offset are dropped");
    assert_eq!(fetched.records.records().next().unwrap().value(), Some(&b"v15"[..]));
    assert_eq!(fetched.records.next_offset, Some(30));

    // Kafka answers ListOffsets(latest) with the log end offset, 30. Tansu 0.6.0 answers with the
    // base offset of the last batch + 1 (see PEERS.md); the fetch high watermark above is right.
    let latest = client.list_offset("offsets", 0, OffsetSpec::Latest).await.unwrap();
    if latest == 21 {
        eprintln!("note: Tansu's ListOffsets(latest) gave 21, its known deviation; the high watermark says 30");
    } else {
        assert_eq!(latest, 30);
    }

    // Past the end Kafka answers OFFSET_OUT_OF_RANGE, which comes back in the partition result.
    // Tansu 0.6.0 answers with no error and no records instead: say so rather than pass silently.
    let past = client.fetch_partition("offsets", 0, 1_000, &FetchOptions::default()).await.unwrap();
    if past.error == ErrorCode::None && past.records.batches.is_empty() {
        eprintln!("note: Tansu answers a fetch past the log end with no error and no records, not OFFSET_OUT_OF_RANGE; not checked here");
    } else {
        assert_eq!(past.error, ErrorCode::OffsetOutOfRange);
    }
}
