//! Interop with the reference client, the Java client (kafka-clients 4.4, through
//! `scripts/peers/java/JavaPeer.java`), on the shared broker, field by field:
//! - what the Java producer writes (every codec, idempotent, transactions committed and aborted,
//!   keys, null and binary values, duplicate, empty and null headers, explicit timestamps) sluice
//!   reads exactly, and `read_committed` without the aborted records;
//! - what sluice's producer writes (every codec) the Java consumer reads exactly;
//! - a consumer group of sluice and Java members (classic protocol, range), each side leading
//!   once, consumes 10,000 records exactly once across a member leaving.

use sluice_testkit as common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::java::{self, JavaRecord};
use common::member::{PeerMember, Seen};
use common::unique;
use sluice_client::{
    Client, ClientConfig, Consumer, ConsumerConfig, GroupConfig, GroupConsumer, GroupEvent, Isolation, OffsetReset,
    Producer, ProducerConfig, ProducerRecord, StartAt,
};
use sluice_protocol::compression::Compression;
use sluice_protocol::record::RecordHeader;

const CODECS: [Compression; 5] =
    [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd];

async fn client() -> Client {
    Client::connect(ClientConfig::new([common::shared().addr.as_str()])).await.unwrap()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Every record of `topic`'s `partitions` as sluice's consumer reads them with `isolation`, in
/// offset order per partition, partitions in turn, with each batch's codec.
async fn sluice_read(
    client: &Client,
    topic: &str,
    partitions: i32,
    isolation: Isolation,
) -> (Vec<JavaRecord>, Vec<Compression>) {
    let mut records = Vec::new();
    let mut codecs = Vec::new();
    for partition in 0..partitions {
        let end = client.log_end(topic, partition, isolation).await.unwrap();
        let mut options = sluice_client::FetchOptions::default();
        options.isolation = isolation;
        let mut offset = 0;
        while offset < end {
            let fetched = client.fetch_partition(topic, partition, offset, &options).await.unwrap();
            let (next, high_watermark) = (fetched.records.next_offset, fetched.high_watermark);
            let fetched_any = !fetched.records.batches.is_empty();
            let kept = match isolation {
                Isolation::ReadCommitted => {
                    sluice_client::filter_aborted(fetched.records.batches, &fetched.aborted_transactions)
                }
                Isolation::ReadUncommitted => fetched.records.batches,
            };
            for batch in kept.iter().filter(|b| b.control_type().is_none()) {
                codecs.push(batch.header.compression());
                records.extend(batch.records().filter(|r| r.offset() >= offset).map(|r| JavaRecord {
                    partition,
                    offset: r.offset(),
                    timestamp: r.timestamp(),
                    key: r.key().map(<[u8]>::to_vec),
                    value: r.value().map(<[u8]>::to_vec),
                    headers: r.headers().map(|(k, v)| (k.to_owned(), v.map(<[u8]>::to_vec))).collect(),
                    committed: None,
                    timestamp_type: None,
                }));
            }
            offset = next.unwrap_or(offset).max(offset);
            if !fetched_any && high_watermark <= offset {
                break;
            }
        }
    }
    (records, codecs)
}

/// The produced records with the fields a reader sees (produce-only fields cleared), ordered as
/// [`sluice_read`] gives them.
fn as_read(mut produced: Vec<JavaRecord>) -> Vec<JavaRecord> {
    produced.sort_by_key(|r| (r.partition, r.offset));
    for record in &mut produced {
        record.committed = None;
    }
    produced
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_reads_what_the_java_producer_writes_with_every_codec() {
    let client = client().await;
    let broker = common::shared().addr.clone();
    for codec in CODECS {
        let topic = unique(&format!("from-java-{}", codec.name()));
        client.create_topic(&topic, 3, 1).await.unwrap();
        let base = (now_ms() - 60_000).to_string();
        let args = ["produce", &broker, &topic, "300", "--partitions", "3", "--codec", codec.name(), "--idempotent"];
        let lines = tokio::task::block_in_place(|| java::run(&[&args[..], &["--base-timestamp", &base]].concat()));
        let produced = java::records(&lines);
        assert_eq!(produced.len(), 300);
        let (read, codecs) = sluice_read(&client, &topic, 3, Isolation::ReadUncommitted).await;
        assert_eq!(read, as_read(produced), "{codec:?}: sluice reads every field as the Java client wrote it");
        assert!(codecs.iter().all(|c| *c == codec), "{codec:?}: the Java client wrote {codecs:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_committed_hides_what_the_java_producer_aborted() {
    let client = client().await;
    let broker = common::shared().addr.clone();
    let topic = unique("java-transactions");
    client.create_topic(&topic, 3, 1).await.unwrap();
    let id = unique("java-writer");
    let base = (now_ms() - 60_000).to_string();
    let lines = tokio::task::block_in_place(|| {
        java::run(&[
            "produce",
            &broker,
            &topic,
            "200",
            "--partitions",
            "3",
            "--codec",
            "lz4",
            "--transactional-id",
            &id,
            "--txn-size",
            "10",
            "--abort-every",
            "3",
            "--base-timestamp",
            &base,
        ])
    });
    let produced = java::records(&lines);
    let aborted = produced.iter().filter(|r| r.committed == Some(false)).count();
    assert_eq!(aborted, 60, "transactions 3, 6, ..., 18 of 20 aborted");
    let committed: Vec<JavaRecord> = produced.iter().filter(|r| r.committed == Some(true)).cloned().collect();

    let (uncommitted, _) = sluice_read(&client, &topic, 3, Isolation::ReadUncommitted).await;
    assert_eq!(uncommitted, as_read(produced.clone()), "read_uncommitted sees every record");
    let (read, _) = sluice_read(&client, &topic, 3, Isolation::ReadCommitted).await;
    assert_eq!(read, as_read(committed.clone()), "read_committed sees the committed transactions only");

    // sluice's consumer, as an application uses it, agrees.
    let mut config = ConsumerConfig::default();
    config.isolation = Isolation::ReadCommitted;
    config.max_wait = Duration::from_millis(50);
    let mut consumer = Consumer::new(client.clone(), config);
    for partition in 0..3 {
        consumer.assign(&topic, partition, StartAt::Earliest).await.unwrap();
    }
    let mut values = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while values.len() < committed.len() {
        assert!(Instant::now() < deadline, "read {} of {} committed records", values.len(), committed.len());
        for part in consumer.poll().await.unwrap() {
            values.extend(part.records().map(|r| r.value().map(<[u8]>::to_vec)));
        }
    }
    let mut expected: Vec<Option<Vec<u8>>> = committed.iter().map(|r| r.value.clone()).collect();
    values.sort();
    expected.sort();
    assert_eq!(values, expected);
}

/// Records of every shape: keys (some null, some not UTF-8), values (null, empty, binary),
/// headers (duplicate keys, empty and null values), explicit timestamps.
fn sluice_records(topic: &str, count: usize, base: i64) -> Vec<ProducerRecord> {
    (0..count)
        .map(|i| {
            let mut headers = vec![RecordHeader::new("trace", Some(format!("t-{i}").as_bytes()))];
            if i % 2 == 0 {
                headers.push(RecordHeader::new("dup", Some(&b"a"[..])));
                headers.push(RecordHeader::new("dup", Some(&b"b"[..])));
            }
            if i % 3 == 0 {
                headers.push(RecordHeader::new("empty", Some(&b""[..])));
                headers.push(RecordHeader::new("null", None));
            }
            let value = match i % 10 {
                5 => None,
                6 => Some(Vec::new()),
                7 => Some(vec![0xff, 0x00, 0xfe, b'x']),
                _ => Some(format!("sluice value {i} {}", "lorem ipsum ".repeat(i % 9)).into_bytes()),
            };
            ProducerRecord {
                topic: topic.to_owned(),
                partition: Some((i % 2) as i32),
                key: (i % 10 != 3).then(|| format!("k-{i}-é").into_bytes().into()),
                value: value.map(Into::into),
                headers,
                timestamp: Some(base + i as i64 * 10),
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_java_consumer_reads_what_sluice_writes_with_every_codec() {
    let client = client().await;
    let broker = common::shared().addr.clone();
    for codec in CODECS {
        let topic = unique(&format!("to-java-{}", codec.name()));
        client.create_topic(&topic, 2, 1).await.unwrap();
        let mut config = ProducerConfig::default();
        config.compression = codec;
        let producer = Producer::new(client.clone(), config).await.unwrap();
        let records = sluice_records(&topic, 200, now_ms() - 60_000);
        let mut expected = Vec::new();
        for record in records {
            let sent = record.clone();
            let metadata = producer.send(record).await.unwrap().await.unwrap();
            expected.push(JavaRecord {
                partition: metadata.partition,
                offset: metadata.offset,
                timestamp: sent.timestamp.unwrap(),
                key: sent.key.map(|k| k.to_vec()),
                value: sent.value.map(|v| v.to_vec()),
                headers: sent
                    .headers
                    .iter()
                    .map(|h| (h.key_str().to_owned(), h.value.as_ref().map(|v| v.to_vec())))
                    .collect(),
                committed: None,
                timestamp_type: Some("CreateTime".into()),
            });
        }
        let mut read = tokio::task::block_in_place(|| java::consume(&broker, &topic, false));
        read.sort_by_key(|r| (r.partition, r.offset));
        expected.sort_by_key(|r| (r.partition, r.offset));
        assert_eq!(read, expected, "{codec:?}: the Java consumer reads every field as sluice wrote it");
    }
}

/// A Java group member (classic protocol, range assignor).
fn java_member(broker: &str, topic: &str, group: &str, name: &str, seen: &Arc<Seen>) -> PeerMember {
    let mut command = java::java_peer();
    command
        .args(["group-member", broker, topic, group, "--protocol", "classic", "--assignor", "range"])
        .stderr(Stdio::null());
    PeerMember::start(command, "Java", name, seen)
}

fn spawn_sluice_member(
    topic: &str,
    group: &str,
    seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let (topic, group) = (topic.to_owned(), group.to_owned());
    tokio::spawn(async move {
        let mut config = GroupConfig::new(group, [topic]);
        config.session_timeout = Duration::from_secs(10);
        config.rebalance_timeout = Duration::from_secs(15);
        config.heartbeat_interval = Duration::from_millis(200);
        config.auto_commit_interval = None;
        let mut consumer = ConsumerConfig::default();
        consumer.offset_reset = OffsetReset::Earliest;
        consumer.max_wait = Duration::from_millis(100);
        let mut member = GroupConsumer::new(client().await, config, consumer);
        while !stop.load(Ordering::SeqCst) {
            match member.poll().await.unwrap() {
                GroupEvent::Revoked(_) => {
                    member.commit().await.unwrap();
                    seen.assignments.lock().unwrap().remove("sluice");
                }
                GroupEvent::Assigned(partitions) => {
                    let partitions = partitions.iter().map(|(_, p)| *p).collect();
                    seen.assignments.lock().unwrap().insert("sluice".into(), partitions);
                }
                GroupEvent::Records(parts) => {
                    let values = parts
                        .iter()
                        .flat_map(|p| p.records())
                        .map(|r| ("sluice".to_owned(), String::from_utf8(r.value().unwrap().to_vec()).unwrap()));
                    seen.consumed.lock().unwrap().extend(values);
                    if !parts.is_empty() {
                        member.commit().await.unwrap();
                    }
                }
            }
        }
        member.close().await.unwrap();
    })
}

async fn produce_numbers(client: &Client, topic: &str, numbers: std::ops::Range<usize>) {
    let producer = Producer::new(client.clone(), ProducerConfig::default()).await.unwrap();
    for i in numbers {
        let record = ProducerRecord { partition: Some((i % 4) as i32), ..ProducerRecord::new(topic, i.to_string()) };
        drop(producer.send(record).await.unwrap());
    }
    producer.flush().await.unwrap();
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_and_java_members_share_a_group_each_as_leader() {
    let client = client().await;
    let broker = common::shared().addr.clone();
    let (topic, group) = (unique("java-shared"), unique("java-mixed"));
    client.create_topic(&topic, 4, 1).await.unwrap();
    produce_numbers(&client, &topic, 0..5_000).await;
    let seen = Arc::new(Seen::default());

    // The Java member joins first and leads: its range assignment gives sluice half.
    let first = java_member(&broker, &topic, &group, "java-1", &seen);
    wait_until("the Java member owns every partition", || seen.assignment("java-1").len() == 4).await;
    let stop = Arc::new(AtomicBool::new(false));
    let sluice = spawn_sluice_member(&topic, &group, Arc::clone(&seen), Arc::clone(&stop));
    wait_until("the Java leader's range assignment gives each member two partitions", || {
        seen.assignment("sluice").len() == 2 && seen.assignment("java-1").len() == 2
    })
    .await;
    let halves = [vec![0, 1], vec![2, 3]];
    assert!(halves.contains(&seen.assignment("sluice")), "range hands out halves: {:?}", seen.assignment("sluice"));
    wait_until("the first 5,000 records are consumed", || seen.count() >= 5_000).await;

    // The Java member leaves; sluice takes everything, then leads and assigns a new Java member.
    tokio::task::block_in_place(|| first.stop());
    wait_until("sluice owns every partition", || seen.assignment("sluice").len() == 4).await;
    let second = java_member(&broker, &topic, &group, "java-2", &seen);
    wait_until("sluice's range assignment gives each member two partitions", || {
        seen.assignment("sluice").len() == 2 && seen.assignment("java-2").len() == 2
    })
    .await;
    assert!(halves.contains(&seen.assignment("java-2")), "sluice's range: {:?}", seen.assignment("java-2"));
    produce_numbers(&client, &topic, 5_000..10_000).await;
    wait_until("all 10,000 records are consumed", || seen.count() >= 10_000).await;
    tokio::task::block_in_place(|| second.stop());
    stop.store(true, Ordering::SeqCst);
    sluice.await.unwrap();

    let consumed = seen.consumed.lock().unwrap().clone();
    let by_member: BTreeMap<&str, usize> = consumed.iter().fold(BTreeMap::new(), |mut m, (who, _)| {
        *m.entry(who.as_str()).or_default() += 1;
        m
    });
    eprintln!("records consumed per member: {by_member:?}");
    assert_eq!(by_member.len(), 3, "every member consumed something: {by_member:?}");
    let mut values: Vec<usize> = consumed.iter().map(|(_, v)| v.parse().unwrap()).collect();
    values.sort_unstable();
    assert_eq!(values, (0..10_000).collect::<Vec<_>>(), "every record consumed exactly once across the group");
    let committed = client.group_offsets(&group).await.unwrap();
    assert_eq!(committed.values().copied().collect::<Vec<_>>(), vec![2_500; 4], "committed offsets at the end");
}
