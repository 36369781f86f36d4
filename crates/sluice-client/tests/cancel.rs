//! Cancel safety against a real broker: `Consumer::poll`, `GroupConsumer::poll` and
//! `Producer::send` dropped at every await point in turn (as a caller's `select!` or timeout
//! drops them), and the next call goes on: nothing lost, nothing returned or sent twice, and the
//! group member keeps its assignment.

use sluice_testkit as common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::cancel::drop_after;
use common::unique;
use sluice_client::{
    Client, Consumer, ConsumerConfig, GroupConfig, GroupConsumer, GroupEvent, OffsetReset, PartitionRecords, Producer,
    ProducerConfig, ProducerRecord, StartAt,
};

const PARTITIONS: i32 = 4;
const RECORDS: usize = 4_000;

/// A new topic of 4 partitions holding `RECORDS` records valued `0`, `1`, ... round the partitions.
async fn setup(name: &str) -> (Client, String) {
    let (_, client, topic) = common::new_topic(name, PARTITIONS).await;
    // Small batches, so that the records take many fetches.
    let mut config = ProducerConfig::default();
    config.batch_size_bytes = 512;
    let producer = Producer::new(client.clone(), config).await.unwrap();
    let mut deliveries = Vec::new();
    for i in 0..RECORDS {
        let record = ProducerRecord {
            partition: Some((i % PARTITIONS as usize) as i32),
            ..ProducerRecord::new(&topic, format!("{i}"))
        };
        deliveries.push(producer.send(record).await.unwrap());
    }
    for delivery in deliveries {
        delivery.await.unwrap();
    }
    (client, topic)
}

/// Values per partition, in the order received.
type Received = BTreeMap<i32, Vec<usize>>;

fn receive(received: &mut Received, parts: Vec<PartitionRecords>) {
    for part in parts {
        let values = part.records().map(|r| std::str::from_utf8(r.value().unwrap()).unwrap().parse::<usize>().unwrap());
        received.entry(part.partition).or_default().extend(values);
    }
}

fn count(received: &Received) -> usize {
    received.values().map(Vec::len).sum()
}

/// Every record once, in order within its partition.
fn assert_every_record_once(received: &Received) {
    for partition in 0..PARTITIONS {
        let expected: Vec<usize> = (0..RECORDS).filter(|i| i % PARTITIONS as usize == partition as usize).collect();
        assert_eq!(received.get(&partition), Some(&expected), "partition {partition}: every record once, in order");
    }
}

/// Small fetches, so that the records take many polls.
fn small_fetches() -> ConsumerConfig {
    let mut config = ConsumerConfig::default();
    config.partition_max_bytes = 2_048;
    config.max_bytes = 4_096;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_poll_dropped_at_any_await_returns_every_record_once() {
    let (client, topic) = setup("cancel-consumer").await;
    // Without fetches sent ahead, so that every poll waits for an answer.
    let mut config = small_fetches();
    config.prefetch_max_bytes = 0;
    let mut consumer = Consumer::new(client, config);
    for partition in 0..PARTITIONS {
        consumer.assign(&topic, partition, StartAt::Earliest).await.unwrap();
    }
    let mut received = Received::new();
    let (mut dropped, mut pendings) = (0, 0);
    // Each poll is dropped at its first await, then (the next one) at its second, and so on
    // until one returns; then again from the first.
    while count(&received) < RECORDS {
        match drop_after(pendings, consumer.poll()).await {
            Some(parts) => {
                let parts = parts.unwrap();
                // Nothing yet is no step forward: the next poll is let further.
                pendings = if parts.is_empty() { pendings + 1 } else { 0 };
                receive(&mut received, parts);
            }
            None => {
                dropped += 1;
                pendings += 1;
            }
        }
        assert!(dropped < 100_000, "{} of {RECORDS} records after {dropped} dropped polls", count(&received));
    }
    // Nothing more comes: what is in flight or kept is past the end.
    for _ in 0..3 {
        receive(&mut received, consumer.poll().await.unwrap());
    }
    assert_every_record_once(&received);
    assert!(dropped > 10, "only {dropped} polls were dropped");
}

/// A fetch answer bringing one partition's records and another's OFFSET_OUT_OF_RANGE: the
/// records are taken (their position moves) before the reset looks up where the other starts
/// now, and a poll dropped during that lookup must still hand them over, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_taken_before_an_offset_reset_survive_a_poll_dropped_during_the_reset() {
    let (client, topic) = setup("cancel-reset").await;
    // Partition 1 loses its first 500 records: a consumer at 0 is out of range.
    client.delete_records(&topic, 1, 500).await.unwrap();
    for pendings in 0..12 {
        // One fetch request for all partitions, so that the records and the error come together.
        let mut config = ConsumerConfig::default();
        config.offset_reset = OffsetReset::Earliest;
        config.fetch_requests_per_broker = 1;
        config.prefetch_max_bytes = 0;
        let mut consumer = Consumer::new(client.clone(), config);
        consumer.assign(&topic, 0, StartAt::Offset(0)).await.unwrap();
        consumer.assign(&topic, 1, StartAt::Offset(0)).await.unwrap();
        let mut received = Received::new();
        // The first poll dropped at its `pendings`th wait; then polls run whole.
        match drop_after(pendings, consumer.poll()).await {
            Some(parts) => receive(&mut received, parts.unwrap()),
            // Nothing was returned, so nothing is past: committing the position skips no record.
            None => assert_eq!(consumer.partition_progress(&topic, 0).unwrap().position, 0, "dropped at {pendings}"),
        }
        let expected = RECORDS / PARTITIONS as usize;
        for _ in 0..100 {
            if received.get(&0).map_or(0, Vec::len) >= expected
                && received.get(&1).map_or(0, Vec::len) >= expected - 500
            {
                break;
            }
            receive(&mut received, consumer.poll().await.unwrap());
        }
        let zero: Vec<usize> = (0..RECORDS).filter(|i| i % PARTITIONS as usize == 0).collect();
        let one: Vec<usize> = (0..RECORDS).filter(|i| i % PARTITIONS as usize == 1).skip(500).collect();
        assert_eq!(received.get(&0), Some(&zero), "partition 0, first poll dropped at wait {pendings}");
        assert_eq!(
            received.get(&1),
            Some(&one),
            "partition 1 from its new start, first poll dropped at wait {pendings}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_poll_dropped_at_any_await_keeps_the_assignment_and_returns_every_record_once() {
    let (client, topic) = setup("cancel-group").await;
    let mut config = GroupConfig::new(unique("cancel-members"), [topic.as_str()]);
    config.session_timeout = Duration::from_secs(10);
    config.rebalance_timeout = Duration::from_secs(15);
    config.heartbeat_interval = Duration::from_millis(200);
    config.auto_commit_interval = Some(Duration::from_millis(50));
    let mut consumer = small_fetches();
    consumer.offset_reset = OffsetReset::Earliest;
    let mut member = GroupConsumer::new(client, config, consumer);
    let mut received = Received::new();
    let (mut dropped, mut pendings) = (0, 0);
    let mut generation = None;
    let mut assigned = Vec::new();
    // Dropped at every await in turn, the join included.
    while count(&received) < RECORDS {
        match drop_after(pendings, member.poll()).await {
            Some(event) => {
                match event.unwrap() {
                    GroupEvent::Assigned(partitions) => {
                        assert!(generation.is_none(), "assigned again after {partitions:?}: the member lost its place");
                        generation = Some(member.generation());
                        assigned = partitions;
                    }
                    GroupEvent::Revoked(partitions) => panic!("{partitions:?} revoked: nobody else is in the group"),
                    // Nothing yet: no step forward, so the next poll is let further.
                    GroupEvent::Records(parts) if parts.is_empty() => {
                        pendings += 1;
                        continue;
                    }
                    GroupEvent::Records(parts) => receive(&mut received, parts),
                }
                pendings = 0;
            }
            None => {
                dropped += 1;
                pendings += 1;
            }
        }
        assert!(dropped < 100_000, "{} of {RECORDS} records after {dropped} dropped polls", count(&received));
    }
    let all: Vec<(String, i32)> = (0..PARTITIONS).map(|p| (topic.clone(), p)).collect();
    assert_eq!(assigned, all);
    assert_eq!(member.assignment(), all.as_slice(), "the member keeps its assignment");
    assert_eq!(Some(member.generation()), generation, "no rebalance since");
    assert_every_record_once(&received);
    assert!(dropped > 10, "only {dropped} polls were dropped");
    member.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_dropped_at_any_await_sends_nothing_and_sending_again_sends_once() {
    let (_, client, topic) = common::new_topic("cancel-producer", PARTITIONS).await;
    // A small buffer, so that sends wait for room; keyless records, so that the first looks
    // up the topic's partitions.
    let mut config = ProducerConfig::default();
    config.buffer_memory_bytes = 2_048;
    config.batch_size_bytes = 1_024;
    let producer = Producer::new(client.clone(), config).await.unwrap();
    let (mut dropped, mut pendings) = (0, 0);
    let mut deliveries = Vec::new();
    let mut i = 0;
    while i < RECORDS {
        let record = ProducerRecord {
            partition: Some((i % PARTITIONS as usize) as i32),
            ..ProducerRecord::new(&topic, format!("{i}"))
        };
        let record = if i == 0 { ProducerRecord { partition: None, ..record } } else { record };
        match drop_after(pendings, producer.send(record)).await {
            Some(delivery) => {
                deliveries.push(delivery.unwrap());
                i += 1;
                pendings = 0;
            }
            None => {
                dropped += 1;
                pendings += 1;
            }
        }
        assert!(dropped < 100_000, "{i} of {RECORDS} sent after {dropped} dropped sends");
    }
    for delivery in deliveries {
        delivery.await.unwrap();
    }
    assert!(dropped > 10, "only {dropped} sends were dropped");
    // Record 0 went where the producer chose; the others where they were sent.
    let mut consumer = Consumer::new(client, ConsumerConfig::default());
    for partition in 0..PARTITIONS {
        consumer.assign(&topic, partition, StartAt::Earliest).await.unwrap();
    }
    let mut received = Received::new();
    for _ in 0..200 {
        receive(&mut received, consumer.poll().await.unwrap());
        if count(&received) >= RECORDS {
            break;
        }
    }
    let first = received.iter().find(|(_, values)| values.first() == Some(&0)).map(|(p, _)| *p).unwrap();
    received.get_mut(&first).unwrap().remove(0);
    received.entry(0).or_default().insert(0, 0);
    assert_every_record_once(&received);
}
