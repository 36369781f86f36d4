//! The consumer with assigned partitions against a real broker.

use sluice_testkit as common;

use std::collections::BTreeMap;

use common::{unique, Kind};
use sluice_client::{
    Client, ClientConfig, Consumer, ConsumerConfig, OffsetReset, Producer, ProducerConfig, ProducerRecord, StartAt,
};
use sluice_protocol::compression::Compression;

async fn produce(client: &Client, topic: &str, partitions: i32, from: usize, count: usize) {
    let mut config = ProducerConfig::default();
    config.compression = Compression::Zstd;
    let producer = Producer::new(client.clone(), config).await.unwrap();
    let mut deliveries = Vec::new();
    for i in from..from + count {
        let record = ProducerRecord {
            partition: Some((i % partitions as usize) as i32),
            ..ProducerRecord::new(topic, format!("{i}"))
        };
        deliveries.push(producer.send(record).await.unwrap());
    }
    for delivery in deliveries {
        delivery.await.unwrap();
    }
}

/// Polls until `expected` records arrived, returning values per partition in order.
async fn consume(consumer: &mut Consumer, expected: usize) -> BTreeMap<i32, Vec<String>> {
    let mut seen: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    for _ in 0..100 {
        for part in consumer.poll().await.unwrap() {
            let values = part.records().map(|r| String::from_utf8(r.value().unwrap().to_vec()).unwrap());
            seen.entry(part.partition).or_default().extend(values);
        }
        if seen.values().map(Vec::len).sum::<usize>() >= expected {
            break;
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumes_assigned_partitions_in_order_and_reports_lag() {
    let consumed = unique("consumed");
    let broker = common::shared();
    let client = Client::connect(ClientConfig::new([broker.addr.as_str()])).await.unwrap();
    client.create_topic(&consumed, 3, 1).await.unwrap();
    produce(&client, &consumed, 3, 0, 900).await;

    let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default());
    for partition in 0..3 {
        consumer.assign(&consumed, partition, StartAt::Earliest).await.unwrap();
    }
    let seen = consume(&mut consumer, 900).await;
    for (partition, values) in &seen {
        let expected: Vec<String> = (0..900).filter(|i| i % 3 == *partition as usize).map(|i| i.to_string()).collect();
        assert_eq!(values, &expected, "partition {partition}: every record, in order, once");
        let progress = consumer.partition_progress(&consumed, *partition).unwrap();
        assert_eq!((progress.position, progress.high_watermark, progress.lag()), (300, 300, 0));
    }

    // Starting at the end sees only what is produced afterwards.
    let mut tail = Consumer::new(client.clone(), ConsumerConfig::default());
    for partition in 0..3 {
        tail.assign(&consumed, partition, StartAt::Latest).await.unwrap();
        assert_eq!(tail.partition_progress(&consumed, partition).unwrap().position, 300);
    }
    produce(&client, &consumed, 3, 900, 30).await;
    let seen = consume(&mut tail, 30).await;
    let mut values: Vec<usize> = seen.values().flatten().map(|v| v.parse().unwrap()).collect();
    values.sort_unstable();
    assert_eq!(values, (900..930).collect::<Vec<_>>());

    // Seeking back re-reads from there. Partitions 1 and 2 have unread records too (the 30
    // produced above): let them go, so that the records read next can only be partition 0's.
    consumer.unassign(&consumed, 1);
    consumer.unassign(&consumed, 2);
    consumer.seek(&consumed, 0, 297);
    let again = consume(&mut consumer, 13).await;
    assert_eq!(
        again[&0],
        vec!["891", "894", "897", "900", "903", "906", "909", "912", "915", "918", "921", "924", "927"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetching_within_a_small_memory_bound_reads_everything_and_a_seek_discards_it() {
    let prefetched = unique("prefetched");
    let broker = common::shared();
    let client = Client::connect(ClientConfig::new([broker.addr.as_str()])).await.unwrap();
    client.create_topic(&prefetched, 2, 1).await.unwrap();
    produce(&client, &prefetched, 2, 0, 4_000).await;

    // 4 KiB for all prefetched responses: each fetch returns about one batch per partition.
    let mut config = ConsumerConfig::default();
    config.prefetch_max_bytes = 4 << 10;
    config.partition_max_bytes = 2 << 10;
    let mut consumer = Consumer::new(client.clone(), config);
    for partition in 0..2 {
        consumer.assign(&prefetched, partition, StartAt::Earliest).await.unwrap();
    }
    let seen = consume(&mut consumer, 1_000).await;
    let taken = seen.values().map(Vec::len).sum::<usize>();
    assert!(taken >= 1_000);
    // A prefetch is now in flight from the current positions; seeking must not return it.
    consumer.seek(&prefetched, 1, 1);
    consumer.seek(&prefetched, 0, 0);
    let mut values: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    for _ in 0..500 {
        for part in consumer.poll().await.unwrap() {
            let new = part.records().map(|r| String::from_utf8(r.value().unwrap().to_vec()).unwrap());
            values.entry(part.partition).or_default().extend(new);
        }
        if values.values().map(Vec::len).sum::<usize>() >= 3_999 {
            break;
        }
    }
    let expected = |partition: usize, skip: usize| -> Vec<String> {
        (0..4_000).filter(|i| i % 2 == partition).skip(skip).map(|i| i.to_string()).collect()
    };
    assert_eq!(values[&0], expected(0, 0), "partition 0 again from offset 0, in order, once");
    assert_eq!(values[&1], expected(1, 1), "partition 1 again from offset 1, in order, once");
}

/// One partition's error must not cost the others their records: partition 3 is read from far
/// past its end (out of range, with no reset allowed) in the same fetch that brings partitions
/// 0-2 their records. The poll returns those records and the next poll reports the error; once
/// partition 3 is put back in range, every record of every partition has been read once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_error_does_not_lose_the_other_partitions_records() {
    let topic = unique("partition-error");
    let broker = common::shared();
    if broker.kind == Kind::Tansu {
        // docs/brokers.md: a fetch past Tansu's log end comes back empty, without an error.
        eprintln!(
            "SKIPPED on Tansu: it answers a fetch past the log end with no records instead of OFFSET_OUT_OF_RANGE"
        );
        return;
    }
    let client = Client::connect(ClientConfig::new([broker.addr.as_str()])).await.unwrap();
    client.create_topic(&topic, 4, 1).await.unwrap();
    produce(&client, &topic, 4, 0, 400).await;

    for prefetch_max_bytes in [0, 64 << 20] {
        let mut config = ConsumerConfig::default();
        config.offset_reset = OffsetReset::Error;
        // One request for all four partitions: their answers come in one response.
        config.fetch_requests_per_broker = 1;
        config.prefetch_max_bytes = prefetch_max_bytes;
        let mut consumer = Consumer::new(client.clone(), config);
        for partition in 0..4 {
            consumer.assign(&topic, partition, StartAt::Earliest).await.unwrap();
        }
        consumer.seek(&topic, 3, 1_000_000);
        let mut seen: BTreeMap<i32, Vec<String>> = BTreeMap::new();
        let mut errors = Vec::new();
        for _ in 0..100 {
            match consumer.poll().await {
                Ok(parts) => {
                    for part in parts {
                        let values = part.records().map(|r| String::from_utf8(r.value().unwrap().to_vec()).unwrap());
                        seen.entry(part.partition).or_default().extend(values);
                    }
                }
                Err(e) => {
                    errors.push(e.to_string());
                    consumer.seek(&topic, 3, 0);
                }
            }
            if seen.values().map(Vec::len).sum::<usize>() >= 400 {
                break;
            }
        }
        assert_eq!(errors.len(), 1, "the out-of-range partition is reported once: {errors:?}");
        assert!(errors[0].contains("1000000"), "the error names the offset: {}", errors[0]);
        for partition in 0..4 {
            let expected: Vec<String> =
                (0..400).filter(|i| i % 4 == partition as usize).map(|i| i.to_string()).collect();
            assert_eq!(
                seen.get(&partition),
                Some(&expected),
                "prefetch {prefetch_max_bytes}: partition {partition} once, in order"
            );
        }
    }
}

/// Partitions at their end have fetches waiting out `max_wait` at the broker; a record produced
/// to another partition meanwhile comes with the next poll, not after them, with prefetching and
/// without. Before, two of the four fetches shared each connection (a broker serves a
/// connection's requests one at a time, so the second waited behind the first's long poll), and
/// without prefetching a poll waited for every fetch: the record came after `max_wait` (20 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_waiting_at_the_end_of_its_partitions_holds_back_no_other_partitions_records() {
    let topic = unique("long-poll");
    let broker = common::shared();
    if broker.kind == Kind::Tansu {
        eprintln!(
            "SKIPPED on Tansu: a fetch waiting for records is not answered when they arrive (records produced during \
             a 20 s wait came 10 s after the fetch), so a held-back fetch cannot be told from a waiting one"
        );
        return;
    }
    let client = Client::connect(ClientConfig::new([broker.addr.as_str()])).await.unwrap();
    client.create_topic(&topic, 4, 1).await.unwrap();
    let max_wait = std::time::Duration::from_secs(20);
    for prefetch_max_bytes in [64 << 20, 0] {
        let mut config = ConsumerConfig::default();
        config.max_wait = max_wait;
        config.prefetch_max_bytes = prefetch_max_bytes;
        let mut consumer = Consumer::new(client.clone(), config);
        for partition in 0..4 {
            consumer.assign(&topic, partition, StartAt::Latest).await.unwrap();
        }
        let producer_client = client.clone();
        let topic_name = topic.clone();
        let produced = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            let producer = Producer::new(producer_client, ProducerConfig::default()).await.unwrap();
            for partition in [2, 3] {
                let record = ProducerRecord { partition: Some(partition), ..ProducerRecord::new(&topic_name, "late") };
                producer.send(record).await.unwrap().await.unwrap();
            }
        });
        let started = std::time::Instant::now();
        let mut seen = Vec::new();
        while seen.len() < 2 && started.elapsed() < max_wait {
            for part in consumer.poll().await.unwrap() {
                seen.extend(part.records().map(|_| part.partition));
            }
        }
        produced.await.unwrap();
        let waited = started.elapsed();
        seen.sort_unstable();
        assert_eq!(seen, [2, 3], "prefetch {prefetch_max_bytes}");
        // Not a timing measurement: the records are there after about a second; with the fault
        // they come only when the long polls of partitions 0 and 1 end, max_wait later.
        assert!(waited < max_wait / 2, "prefetch {prefetch_max_bytes}: the records came after {waited:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_of_highly_compressed_batches_expands_no_further_than_the_limit_and_loses_nothing() {
    let topic = unique("zeros");
    let broker = common::shared();
    let client = Client::connect(ClientConfig::new([broker.addr.as_str()])).await.unwrap();
    client.create_topic(&topic, 2, 1).await.unwrap();
    // 200 records of 256 KiB of zeros, one per zstd batch: 50 MiB that take a few KiB on the wire.
    let mut config = ProducerConfig::default();
    config.compression = Compression::Zstd;
    config.batch_size_bytes = 300 << 10;
    let producer = Producer::new(client.clone(), config).await.unwrap();
    let mut deliveries = Vec::new();
    for i in 0..200u32 {
        let mut value = vec![0u8; 256 << 10];
        value[..4].copy_from_slice(&i.to_be_bytes());
        let record = ProducerRecord { partition: Some((i % 2) as i32), ..ProducerRecord::new(&topic, value) };
        deliveries.push(producer.send(record).await.unwrap());
    }
    for delivery in deliveries {
        delivery.await.unwrap();
    }

    let limit = 2 << 20;
    let mut config = ConsumerConfig::default();
    config.max_decompressed_bytes = limit;
    config.fetch_requests_per_broker = 1;
    config.prefetch_max_bytes = 0;
    let mut consumer = Consumer::new(client.clone(), config);
    for partition in 0..2 {
        consumer.assign(&topic, partition, StartAt::Earliest).await.unwrap();
    }
    let mut seen: BTreeMap<i32, Vec<u32>> = BTreeMap::new();
    let mut polls = 0;
    let mut when_one_was_done = None;
    while seen.values().map(Vec::len).sum::<usize>() < 200 && polls < 1_000 {
        if when_one_was_done.is_none() && seen.values().any(|v| v.len() == 100) {
            when_one_was_done = Some(seen.values().map(Vec::len).min().unwrap_or(0));
        }
        polls += 1;
        let parts = consumer.poll().await.unwrap();
        let expanded: usize = parts.iter().flat_map(|p| &p.batches).map(|b| b.data_len()).sum();
        // The limit, and at most one batch past it (the first of a response always decodes).
        assert!(expanded <= limit + (257 << 10), "a poll expanded to {expanded} bytes");
        for part in parts {
            let values = part.records().map(|r| u32::from_be_bytes(r.value().unwrap()[..4].try_into().unwrap()));
            seen.entry(part.partition).or_default().extend(values);
        }
    }
    for (partition, values) in &seen {
        let expected: Vec<u32> = (0..200).filter(|i| i % 2 == *partition as u32).collect();
        assert_eq!(values, &expected, "partition {partition}: every record, in order, once");
    }
    assert!(polls >= 25, "50 MiB in polls of at most about 2 MiB: {polls}");
    // Each response's allowance starts at another partition: neither waits for the other.
    let behind = when_one_was_done.unwrap_or(100);
    assert!(behind >= 50, "the other partition had {behind} of 100 when the first was read");
}
