//! Faults between the client and the broker, through a TCP proxy: writes sliced into tiny
//! pieces, connections cut mid-response over and over, connections frozen (open, but carrying
//! nothing, as half-open ones do). No acknowledged record is lost, none is written twice
//! (idempotence), consumers and groups read on, and the client recovers by itself.

use sluice_testkit as common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::riding::{self, Riders};
use common::{unique, Broker, Kind};
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
    let sliced = unique("sliced");
    let (_broker, proxy) = Broker::start_behind_proxy();
    proxy.faults.slice_bytes.store(3, Ordering::Relaxed);
    let client = Client::connect(config(&proxy.addr)).await.unwrap();
    client.create_topic(&sliced, 1, 1).await.unwrap();
    let mut producer_config = ProducerConfig::default();
    producer_config.compression = Compression::Lz4;
    let producer = Producer::new(client.clone(), producer_config).await.unwrap();
    let mut deliveries = Vec::new();
    for i in 0..300 {
        deliveries.push(producer.send(ProducerRecord::new(&sliced, format!("value-{i}"))).await.unwrap());
    }
    for (i, delivery) in deliveries.into_iter().enumerate() {
        assert_eq!(delivery.await.unwrap().offset, i as i64);
    }
    let values: Vec<String> = read_partition(&client, &sliced, 0).await.into_iter().map(|(_, v)| v).collect();
    assert_eq!(values, (0..300).map(|i| format!("value-{i}")).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_producer_loses_and_duplicates_nothing_while_connections_keep_being_cut() {
    let cut = unique("cut");
    let (_broker, proxy) = Broker::start_behind_proxy();
    let client = Client::connect(config(&proxy.addr)).await.unwrap();
    client.create_topic(&cut, 4, 1).await.unwrap();
    let mut producer_config = ProducerConfig::default();
    producer_config.linger = Duration::from_millis(2);
    producer_config.batch_size_bytes = 512;
    producer_config.retry_backoff = Duration::from_millis(10);
    producer_config.delivery_timeout = Duration::from_secs(60);
    let producer = Producer::new(client.clone(), producer_config).await.unwrap();
    // From now on every connection dies after 1200 response bytes, often in the middle of a
    // produce response: the batch may or may not have been written, and is sent again.
    proxy.faults.cut_after_response_bytes.store(1_200, Ordering::Relaxed);
    let mut deliveries = Vec::new();
    for i in 0..2_000 {
        let record = ProducerRecord::new(&cut, format!("record-{i}")).key(format!("key-{}", i % 50));
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
        let log = read_partition(&client, &cut, partition).await;
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

/// A connection that goes silent without closing (the proxy swallows its bytes, as a half-open
/// connection does) is given up when a request on it times out, and the next attempt opens a new
/// one: records sent after the freeze are all delivered, once, within their delivery timeout.
/// Before, the timed-out connection stayed in the pool and every retry went to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_connection_is_replaced_after_a_request_on_it_times_out() {
    let frozen = unique("frozen");
    let (_broker, proxy) = Broker::start_behind_proxy();
    let mut client_config = config(&proxy.addr);
    client_config.connection.request_timeout = Duration::from_secs(1);
    let client = Client::connect(client_config).await.unwrap();
    client.create_topic(&frozen, 1, 1).await.unwrap();
    let mut producer_config = ProducerConfig::default();
    producer_config.retry_backoff = Duration::from_millis(10);
    producer_config.delivery_timeout = Duration::from_secs(15);
    let producer = Producer::new(client.clone(), producer_config).await.unwrap();
    producer.send(ProducerRecord::new(&frozen, "record-0")).await.unwrap().await.unwrap();

    proxy.freeze_all();
    let started = std::time::Instant::now();
    for i in 1..=5 {
        let delivery = producer.send(ProducerRecord::new(&frozen, format!("record-{i}"))).await.unwrap();
        delivery.await.unwrap_or_else(|e| panic!("record-{i} was not delivered after the freeze: {e}"));
    }
    eprintln!("five records delivered {:?} after the connections froze", started.elapsed());
    // The client's other requests get through too (metadata, fetch) on new connections.
    let values: Vec<String> = read_partition(&client, &frozen, 0).await.into_iter().map(|(_, v)| v).collect();
    assert_eq!(values, (0..=5).map(|i| format!("record-{i}")).collect::<Vec<_>>());
}

/// kill -9 of the broker with records in flight, then the broker started again on the same
/// address: the producer delivers everything by itself. On Kafka every record acknowledged
/// (acks=all) before the kill is still in the log after the restart, and nothing is written twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_producer_recovers_by_itself_when_the_broker_is_killed_and_restarted_mid_produce() {
    let broker = Broker::start();
    let addr = broker.addr.clone();
    let topic = unique("restart");
    let client = Client::connect(config(&addr)).await.unwrap();
    client.create_topic(&topic, 1, 1).await.unwrap();
    let mut producer_config = ProducerConfig::default();
    producer_config.linger = Duration::from_millis(2);
    producer_config.batch_size_bytes = 2_048;
    producer_config.retry_backoff = Duration::from_millis(20);
    producer_config.delivery_timeout = Duration::from_secs(60);
    let producer = Producer::new(client.clone(), producer_config).await.unwrap();
    let started = std::time::Instant::now();
    let mut resolved = Vec::new();
    let acknowledged = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut send = |i: usize, delivery: sluice_client::DeliveryFuture| {
        let acknowledged = std::sync::Arc::clone(&acknowledged);
        resolved.push(tokio::spawn(async move {
            let outcome = delivery.await;
            acknowledged.fetch_add(usize::from(outcome.is_ok()), std::sync::atomic::Ordering::SeqCst);
            (i, outcome, started.elapsed())
        }));
    };
    for i in 0..500 {
        send(i, producer.send(ProducerRecord::new(&topic, format!("record-{i}"))).await.unwrap());
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // kill -9 the broker with records in flight (once some have been acknowledged), and start it
    // again on the same address.
    while acknowledged.load(std::sync::atomic::Ordering::SeqCst) < 100 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    broker.kill(1);
    let killed_at = started.elapsed();
    for i in 500..600 {
        send(i, producer.send(ProducerRecord::new(&topic, format!("record-{i}"))).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // From the moment the broker is launched again: `restart` returns only once its probe (every
    // 0.2 s) sees the broker serve, and the producer, retrying every 20 ms, may be served first.
    let restarted_at = started.elapsed();
    tokio::task::block_in_place(|| broker.restart(1));
    let admin = Client::connect(config(&addr)).await.unwrap();
    if broker.kind == Kind::Tansu {
        // Tansu keeps its log in memory: it starts empty, and the topic is made again.
        admin.create_topic(&topic, 1, 1).await.unwrap();
    }
    for i in 600..1_000 {
        send(i, producer.send(ProducerRecord::new(&topic, format!("record-{i}"))).await.unwrap());
    }

    let mut before_kill: Vec<(i64, String)> = Vec::new();
    let mut after_restart: Vec<(i64, String)> = Vec::new();
    for task in resolved {
        let (i, outcome, at) = task.await.unwrap();
        match outcome {
            // An answer the broker sent just before it died may be read a moment after the kill.
            Ok(metadata) if at < killed_at + Duration::from_millis(200) => {
                before_kill.push((metadata.offset, format!("record-{i}")));
            }
            Ok(metadata) => {
                assert!(at >= restarted_at, "record-{i} acknowledged while no broker ran");
                after_restart.push((metadata.offset, format!("record-{i}")));
            }
            Err(e) => panic!("record-{i} was not delivered though the broker came back: {e}"),
        }
    }
    let log = read_partition(&admin, &topic, 0).await;
    let distinct: HashSet<&String> = log.iter().map(|(_, v)| v).collect();
    let duplicated = log.len() - distinct.len();
    assert_eq!(duplicated, 0, "a record was written twice");
    let in_log = |offset: i64, value: &String| log.iter().any(|(o, v)| v == value && (offset == -1 || *o == offset));
    for (offset, value) in &after_restart {
        assert!(
            in_log(*offset, value),
            "{value} was acknowledged at {offset} by the restarted broker but is not in its log"
        );
    }
    assert!(after_restart.len() >= 400, "every record sent after the restart is delivered");
    let lost = before_kill.iter().filter(|(offset, value)| !in_log(*offset, value)).count();
    match broker.kind {
        Kind::Kafka => {
            assert!(before_kill.len() >= 100, "the kill came after records were acknowledged");
            assert_eq!(lost, 0, "records acknowledged (acks=all) before the kill are gone after the restart");
            assert_eq!(log.len(), 1_000, "every record sent, once");
            let values: Vec<String> = log.iter().map(|(_, v)| v.clone()).collect();
            let expected: Vec<String> = (0..1_000).map(|i| format!("record-{i}")).collect();
            assert_eq!(values, expected, "in send order (idempotent producer, one partition)");
        }
        Kind::Tansu => eprintln!(
            "note: {lost} records acknowledged before the kill are gone with Tansu's memory storage (its durable \
             storage needs a 25-minute build)"
        ),
    }
    eprintln!(
        "broker SIGKILL mid-produce: {} acknowledged before the kill, {lost} of them lost, {duplicated} duplicated, \
         {} acknowledged after the restart, {} in the log",
        before_kill.len(),
        after_restart.len(),
        log.len()
    );
}

/// An idempotent producer, a consumer and a consumer group of two members, each with a client of
/// its own, through the proxy while every connection is cut three times, then connections are
/// cut mid-response over and over for two seconds, then every connection freezes (the requests
/// on them time out after 5 s and new connections are made). Nobody's calls fail; every
/// acknowledged record is in the log once, the consumer reads every offset once and the group
/// every offset at least once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_consumer_and_group_ride_through_cut_and_frozen_connections() {
    const PARTITIONS: i32 = 4;
    let topic = unique("riding");
    let (_broker, proxy) = Broker::start_behind_proxy();
    let config = config(&proxy.addr);
    let client = Client::connect(config.clone()).await.unwrap();
    client.create_topic(&topic, PARTITIONS, 1).await.unwrap();

    let riders = Riders::start(&config, &topic, PARTITIONS, 50_000).await;
    let progress = |what: &'static str| {
        let (consumed, grouped) = (riders.consumed.clone(), riders.grouped.clone());
        async move {
            let (read, grouped_so_far) = (consumed.lock().unwrap().len(), grouped.lock().unwrap().len());
            riding::wait_for(what, &consumed, read + 2_000).await;
            riding::wait_for(what, &grouped, grouped_so_far + 2_000).await;
        }
    };

    progress("before the faults").await;
    eprintln!("[fault: every connection cut, three times]");
    for _ in 0..3 {
        proxy.cut_all();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    progress("after the cuts").await;
    eprintln!("[fault: connections cut after 256 KiB of answers, for 2 s]");
    proxy.faults.cut_after_response_bytes.store(256 << 10, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.faults.cut_after_response_bytes.store(0, Ordering::Relaxed);
    progress("after the cuts mid-answer").await;
    eprintln!("[fault: every connection frozen]");
    let frozen = std::time::Instant::now();
    proxy.freeze_all();
    progress("after the freeze").await;
    eprintln!("[both readers went on {:.1} s after the freeze]", frozen.elapsed().as_secs_f64());
    let cuts = proxy.faults.cuts.load(Ordering::Relaxed);
    assert!(cuts >= 3, "the faults must actually happen (only {cuts} cuts)");
    riders.finish(&client).await;
}
