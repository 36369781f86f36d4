//! Faults between the client and the broker, through a TCP proxy: writes sliced into tiny
//! pieces, and connections cut mid-response over and over while producing. No acknowledged record
//! is lost, none is written twice (idempotence), and the client recovers by itself.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::Tansu;
use sluice_client::{Client, ClientConfig, FetchOptions, Producer, ProducerConfig, ProducerRecord};
use sluice_protocol::compression::Compression;

fn config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new([bootstrap]);
    config.reconnect_backoff = Duration::from_millis(10);
    config.reconnect_backoff_max = Duration::from_millis(100);
    config.connection.request_timeout = Duration::from_secs(5);
    config
}

/// Every value in a partition, read from the start to the high watermark.
async fn read_partition(client: &Client, topic: &str, partition: i32) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let fetched = client.fetch_partition(topic, partition, offset, &FetchOptions::default()).await.unwrap();
        for record in fetched.records.records() {
            out.push((record.offset(), String::from_utf8(record.value().unwrap().to_vec()).unwrap()));
        }
        offset = fetched.records.next_offset.unwrap_or(offset);
        if offset >= fetched.high_watermark {
            return out;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_works_when_every_write_is_sliced_into_tiny_pieces() {
    let (_tansu, proxy) = Tansu::start_behind_proxy();
    proxy.faults.slice_bytes.store(3, Ordering::Relaxed);
    let client = Client::connect(config(&proxy.addr)).await.unwrap();
    client.create_topic("sliced", 1, 1).await.unwrap();
    let producer_config = ProducerConfig { compression: Compression::Lz4, ..ProducerConfig::default() };
    let producer = Producer::new(client.clone(), producer_config).await.unwrap();
    let mut deliveries = Vec::new();
    for i in 0..300 {
        deliveries.push(producer.send(ProducerRecord::new("sliced", format!("value-{i}"))).await.unwrap());
    }
    for (i, delivery) in deliveries.into_iter().enumerate() {
        assert_eq!(delivery.await.unwrap().offset, i as i64);
    }
    let values: Vec<String> = read_partition(&client, "sliced", 0).await.into_iter().map(|(_, v)| v).collect();
    assert_eq!(values, (0..300).map(|i| format!("value-{i}")).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_producer_loses_and_duplicates_nothing_while_connections_keep_being_cut() {
    let (_tansu, proxy) = Tansu::start_behind_proxy();
    let client = Client::connect(config(&proxy.addr)).await.unwrap();
    client.create_topic("cut", 4, 1).await.unwrap();
    let producer_config = ProducerConfig {
        linger: Duration::from_millis(2),
        batch_size_bytes: 512,
        retry_backoff: Duration::from_millis(10),
        delivery_timeout: Duration::from_secs(60),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client.clone(), producer_config).await.unwrap();
    // From now on every connection dies after 1200 response bytes, often in the middle of a
    // produce response: the batch may or may not have been written, and is sent again.
    proxy.faults.cut_after_response_bytes.store(1_200, Ordering::Relaxed);
    let mut deliveries = Vec::new();
    for i in 0..2_000 {
        let record = ProducerRecord::new("cut", format!("record-{i}")).key(format!("key-{}", i % 50));
        deliveries.push(producer.send(record).await.unwrap());
    }
    let mut acknowledged: HashMap<i32, Vec<(i64, String)>> = HashMap::new();
    for (i, delivery) in deliveries.into_iter().enumerate() {
        let metadata = delivery.await.unwrap_or_else(|e| panic!("record {i} was not delivered: {e}"));
        acknowledged.entry(metadata.partition).or_default().push((metadata.offset, format!("record-{i}")));
    }
    let cuts = proxy.faults.cuts.load(Ordering::Relaxed);
    assert!(cuts >= 5, "the faults must actually happen (only {cuts} cuts)");

    proxy.faults.cut_after_response_bytes.store(0, Ordering::Relaxed);
    let mut total = 0;
    for partition in 0..4 {
        let log = read_partition(&client, "cut", partition).await;
        let distinct: HashSet<&String> = log.iter().map(|(_, v)| v).collect();
        assert_eq!(distinct.len(), log.len(), "partition {partition}: a record was written twice");
        let expected = acknowledged.get(&partition).cloned().unwrap_or_default();
        let written: Vec<&String> = log.iter().map(|(_, v)| v).collect();
        let sent: Vec<&String> = expected.iter().map(|(_, v)| v).collect();
        assert_eq!(written, sent, "partition {partition}: every acknowledged record, once, in send order");
        // Offsets the futures reported are where the records are, except for batches whose
        // acknowledgement was lost and whose resend the broker answered as a duplicate (-1).
        for ((offset, value), (logged, _)) in expected.iter().zip(&log) {
            assert!(*offset == -1 || offset == logged, "{value}: reported {offset}, stored at {logged}");
        }
        total += log.len();
    }
    assert_eq!(total, 2_000);
}
