//! Reading planned ranges from a real broker: exactly the offsets of the range, across
//! batch boundaries, and a clear error for offsets the log does not hold.

use sluice_testkit as common;

use std::time::Duration;

use common::{unique, Broker};
use sluice_client::{Client, ClientConfig, FetchOptions, Producer, ProducerConfig, ProducerRecord};
use sluice_scheduler::{fetch_range, fetch_range_on, DataLoss, FetchRangeError, OffsetRange};

/// Produces 1,000 records to partition 0 of `topic`, in batches of at most `batch_size_bytes`;
/// record `i`'s value is `value(i)`.
async fn produce(client: &Client, topic: &str, batch_size_bytes: usize, value: impl Fn(usize) -> String) {
    let mut config = ProducerConfig::default();
    config.batch_size_bytes = batch_size_bytes;
    config.linger = Duration::from_millis(1);
    let producer = Producer::new(client.clone(), config).await.unwrap();
    let mut deliveries = Vec::new();
    for i in 0..1_000 {
        let record = ProducerRecord { partition: Some(0), ..ProducerRecord::new(topic, value(i)) };
        deliveries.push(producer.send(record).await.unwrap());
    }
    for delivery in deliveries {
        delivery.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_yields_exactly_its_offsets_whatever_the_batch_boundaries() {
    let broker = common::shared();
    let client = Client::connect(ClientConfig::new([broker.addr.as_str()])).await.unwrap();
    let ranges = unique("ranges");
    client.create_topic(&ranges, 1, 1).await.unwrap();
    // Small batches of uneven sizes, so ranges start and end inside batches.
    produce(&client, &ranges, 700, |i| format!("{i}-{}", "x".repeat(i % 37))).await;
    // Small fetches too, so a range takes several.
    let mut options = FetchOptions::default();
    options.max_bytes = 2_000;
    options.max_wait = Duration::from_millis(100);
    for (from, until) in [(0, 1_000), (123, 789), (500, 501), (999, 1_000), (42, 42)] {
        let range = OffsetRange { topic: ranges.clone(), partition: 0, from, until };
        let read = fetch_range(&client, &range, &options).await.unwrap();
        let offsets: Vec<i64> = read.records().map(|r| r.offset()).collect();
        assert_eq!(offsets, (from..until).collect::<Vec<_>>(), "{from}..{until}");
        assert_eq!(read.record_count(), offsets.len(), "{from}..{until}: the count matches the records");
        for record in read.records() {
            let value = String::from_utf8(record.value().unwrap().to_vec()).unwrap();
            assert!(value.starts_with(&format!("{}-", record.offset())), "{value}");
        }
    }

    let past_the_end = OffsetRange { topic: ranges.clone(), partition: 0, from: 990, until: 1_010 };
    let error = fetch_range(&client, &past_the_end, &options).await.unwrap_err();
    match &error {
        FetchRangeError::Unavailable { missing_from, high_watermark, .. } => {
            assert_eq!((*missing_from, *high_watermark), (1_000, 1_000), "{error}");
        }
        other => panic!("expected Unavailable, got {other}"),
    }

    // Beyond the log's end altogether (the job's position from a topic since re-created): the
    // error says so, or under Skip the range reads as lost.
    let beyond = OffsetRange { topic: ranges.clone(), partition: 0, from: 1_500, until: 1_600 };
    let error = fetch_range(&client, &beyond, &options).await.unwrap_err();
    assert!(matches!(error, FetchRangeError::Truncated { position: 1_500, log_end: 1_000, .. }), "{error}");
    assert!(error.to_string().contains("re-created"), "{error}");
    let connection = sluice_client::Connection::connect(&broker.addr, Default::default()).await.unwrap();
    let skipped = fetch_range_on(&client, &connection, &beyond, &options, DataLoss::Skip, None).await.unwrap();
    assert_eq!((skipped.record_count(), skipped.lost_offsets, skipped.high_watermark), (0, 100, 1_000));
}

/// With the bytes per offset known from earlier reads, even a range's first fetch asks for
/// little more than the range, not for `max_bytes`: a broker sends whole batches up to the
/// limit, and those past the range's end are wasted on both sides (in the clickstream
/// benchmark they cost Tansu 50 ms of CPU a 100 ms batch). Shown by a proxy that cuts a
/// connection once it has carried 100 KB of responses: the range's 10 KB comes through with
/// the hint, while without it the broker sends the log's 200 KB and the cut ends the read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_record_size_keeps_a_ranges_first_fetch_near_the_range() {
    let (_broker, proxy) = Broker::start_behind_proxy();
    let client = Client::connect(ClientConfig::new([proxy.addr.as_str()])).await.unwrap();
    let sized = unique("sized");
    client.create_topic(&sized, 1, 1).await.unwrap();
    produce(&client, &sized, 2_000, |i| format!("{i:04}-{}", "x".repeat(195))).await;
    proxy.faults.cut_after_response_bytes.store(100_000, std::sync::atomic::Ordering::SeqCst);
    let mut options = FetchOptions::default();
    options.max_bytes = 1 << 20;
    options.max_wait = Duration::from_millis(100);
    let range = OffsetRange { topic: sized.clone(), partition: 0, from: 0, until: 50 };

    let connection = sluice_client::Connection::connect(&proxy.addr, Default::default()).await.unwrap();
    let read = fetch_range_on(&client, &connection, &range, &options, DataLoss::Fail, Some(220.0)).await.unwrap();
    assert_eq!(read.records().map(|r| r.offset()).collect::<Vec<_>>(), (0..50).collect::<Vec<_>>());
    assert_eq!(proxy.faults.cuts.load(std::sync::atomic::Ordering::SeqCst), 0, "the fetch stayed near the range");

    let connection = sluice_client::Connection::connect(&proxy.addr, Default::default()).await.unwrap();
    let unhinted = fetch_range_on(&client, &connection, &range, &options, DataLoss::Fail, None).await;
    assert!(unhinted.is_err(), "without the hint the broker sends the whole log: {unhinted:?}");
    assert_eq!(proxy.faults.cuts.load(std::sync::atomic::Ordering::SeqCst), 1);
}
