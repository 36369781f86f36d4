//! Reading planned ranges from a real Tansu broker: exactly the offsets of the range, across
//! batch boundaries, and a clear error for offsets the log does not hold.

#[path = "../../sluice-client/tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::Tansu;
use sluice_client::{Client, ClientConfig, FetchOptions, Producer, ProducerConfig, ProducerRecord};
use sluice_scheduler::{fetch_range, fetch_range_on, DataLoss, FetchRangeError, OffsetRange};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_yields_exactly_its_offsets_whatever_the_batch_boundaries() {
    let tansu = Tansu::start();
    let client = Client::connect(ClientConfig::new([tansu.addr.as_str()])).await.unwrap();
    client.create_topic("ranges", 1, 1).await.unwrap();
    // Small batches of uneven sizes, so ranges start and end inside batches.
    let config =
        ProducerConfig { batch_size_bytes: 700, linger: Duration::from_millis(1), ..ProducerConfig::default() };
    let producer = Producer::new(client.clone(), config).await.unwrap();
    let mut deliveries = Vec::new();
    for i in 0..1_000 {
        let value = format!("{i}-{}", "x".repeat(i % 37));
        deliveries.push(
            producer.send(ProducerRecord { partition: Some(0), ..ProducerRecord::new("ranges", value) }).await.unwrap(),
        );
    }
    for delivery in deliveries {
        delivery.await.unwrap();
    }
    // Small fetches too, so a range takes several.
    let options = FetchOptions { max_bytes: 2_000, max_wait: Duration::from_millis(100), ..FetchOptions::default() };
    for (from, until) in [(0, 1_000), (123, 789), (500, 501), (999, 1_000), (42, 42)] {
        let range = OffsetRange { topic: "ranges".into(), partition: 0, from, until };
        let read = fetch_range(&client, &range, &options).await.unwrap();
        let offsets: Vec<i64> = read.records().map(|r| r.offset()).collect();
        assert_eq!(offsets, (from..until).collect::<Vec<_>>(), "{from}..{until}");
        assert_eq!(read.record_count(), offsets.len(), "{from}..{until}: the count matches the records");
        for record in read.records() {
            let value = String::from_utf8(record.value().unwrap().to_vec()).unwrap();
            assert!(value.starts_with(&format!("{}-", record.offset())), "{value}");
        }
    }

    let past_the_end = OffsetRange { topic: "ranges".into(), partition: 0, from: 990, until: 1_010 };
    let error = fetch_range(&client, &past_the_end, &options).await.unwrap_err();
    match &error {
        FetchRangeError::Unavailable { missing_from, high_watermark, .. } => {
            assert_eq!((*missing_from, *high_watermark), (1_000, 1_000), "{error}");
        }
        other => panic!("expected Unavailable, got {other}"),
    }

    // Beyond the log's end altogether (the job's position from a topic since re-created): the
    // error says so, or under Skip the range reads as lost.
    let beyond = OffsetRange { topic: "ranges".into(), partition: 0, from: 1_500, until: 1_600 };
    let error = fetch_range(&client, &beyond, &options).await.unwrap_err();
    assert!(matches!(error, FetchRangeError::Truncated { position: 1_500, log_end: 1_000, .. }), "{error}");
    assert!(error.to_string().contains("re-created"), "{error}");
    let connection = sluice_client::Connection::connect(&tansu.addr, Default::default()).await.unwrap();
    let skipped = fetch_range_on(&client, &connection, &beyond, &options, DataLoss::Skip).await.unwrap();
    assert_eq!((skipped.record_count(), skipped.lost_offsets, skipped.high_watermark), (0, 100, 1_000));
}
