//! Changelog restore rate in scale-out mode: a job keeping `update_state_by_key` state whose
//! changelog already holds 1,000,000 keys (`SLUICE_BENCH_RECORDS`) over 8 partitions, each
//! state 100 bytes, starts and takes every partition on: it restores each task's state from
//! the changelog (`read_committed`, up to its high watermark) before its first batch. Beside
//! it, in the same run on the same broker and changelog, two readers that only read: rskafka
//! (the pure-Rust client sluice is measured against) and a plain sluice-client consumer. The
//! restore's rate is printed in MB/s of keys and values, and as a ratio to each reader
//! (goal: at least 100 MB/s).
//!
//! Then failover with state: two processes share a job keeping each of 200,000 keys' last
//! 100-byte value (`SLUICE_BENCH_FAILOVER_KEYS`), every key written 3 times
//! (`SLUICE_BENCH_FAILOVER_ROUNDS`), each round worked through before the next; then one is
//! dropped (a crash: no leave, its transaction left to the broker). The time until the
//! survivor has restored the dead process's tasks is printed split in two: the wait for the
//! group to give them over (the consumer protocol's session, 6 s on the test brokers) and the
//! restore. It runs twice: without standby replicas (the restore reads the changelog from its
//! start) and with one (the survivor kept a copy of the other's tasks, and reads only the
//! changelog after it).
//!
//! Then a restart with state: one process keeps the same job, is dropped, and starts again on
//! its checkpoint: it restores its tasks from its checkpoint's copy and reads only the
//! changelog after it. Beside it, a process on a new checkpoint takes the same tasks on, reading
//! the changelog from its start (what a restart cost before the checkpoint kept copies), and
//! the ratio of the two restores is printed.
//!
//! `cargo bench -p sluice-stream --bench restore`

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use sluice_testkit as common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{unique, Broker, Kind};
use sluice_client::{
    Client, ClientConfig, Consumer, ConsumerConfig, GroupProtocol, Isolation, OffsetReset, Producer, ProducerConfig,
    ProducerRecord, StartAt,
};
use sluice_scheduler::ScaleConfig;
use sluice_stream::{StreamConfig, StreamingContext};

const PARTITIONS: i32 = 8;
const STATE_BYTES: usize = 100;

fn records() -> usize {
    std::env::var("SLUICE_BENCH_RECORDS").ok().and_then(|n| n.parse().ok()).unwrap_or(1_000_000)
}

/// Writes `n` keys' states to the changelog, key `i` on partition `i % PARTITIONS`; returns
/// their keys' and values' bytes.
async fn fill_changelog(client: &Client, changelog: &str, n: usize) -> u64 {
    let producer = Producer::new(client.clone(), ProducerConfig::default()).await.unwrap();
    let mut bytes = 0u64;
    let mut deliveries = Vec::new();
    for i in 0..n {
        let key = sluice_checkpoint::encode_value(&format!("user-{i:08}")).unwrap();
        let state: String = format!("{i:0>width$}", width = STATE_BYTES);
        let value = sluice_checkpoint::encode_value(&state).unwrap();
        bytes += (key.len() + value.len()) as u64;
        let record = ProducerRecord {
            topic: changelog.to_owned(),
            partition: Some((i % PARTITIONS as usize) as i32),
            key: Some(Bytes::from(key)),
            value: Some(Bytes::from(value)),
            ..ProducerRecord::default()
        };
        deliveries.push(producer.send(record).await.unwrap());
        if deliveries.len() >= 100_000 {
            for delivery in deliveries.drain(..) {
                delivery.await.unwrap();
            }
        }
    }
    for delivery in deliveries {
        delivery.await.unwrap();
    }
    bytes
}

/// The job takes every partition on and restores its state; returns the restore's time, and
/// the records and bytes it read.
async fn restore(broker: &str, source: &str, group: &str) -> (Duration, u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StreamConfig::new([broker], [source], Duration::from_millis(200), dir.path());
    let mut scale = ScaleConfig::new(group);
    scale.protocol = GroupProtocol::Consumer;
    config.scheduler.scale = Some(scale);
    let ssc = StreamingContext::new(config);
    ssc.kafka_stream()
        .map(|record| (record.key_str().unwrap_or_default().to_owned(), ()))
        .update_state_by_key(|_: Vec<()>, state: Option<String>| state)
        .foreach_batch(|_, _| Ok(()));
    let (stop, counters) = (ssc.stop_handle(), ssc.restore_counters());
    // The first batch runs once every task taken on is restored.
    let restored = counters.clone();
    ssc.run(move |_| {
        if restored.tasks.load(Ordering::Relaxed) >= PARTITIONS as u64 {
            stop.cancel();
        }
    })
    .await
    .unwrap();
    let micros = counters.micros.load(Ordering::Relaxed);
    (Duration::from_micros(micros), counters.records.load(Ordering::Relaxed), counters.bytes.load(Ordering::Relaxed))
}

/// rskafka reads every partition of the changelog from its start to its end.
async fn read_rskafka(broker: &str, changelog: &str, ends: &[i64]) -> (Duration, u64) {
    use rskafka::client::partition::UnknownTopicHandling;
    let client = rskafka::client::ClientBuilder::new(vec![broker.to_owned()]).build().await.unwrap();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (partition, end) in (0..PARTITIONS).zip(ends.iter().copied()) {
        let partition_client =
            client.partition_client(changelog, partition, UnknownTopicHandling::Retry).await.unwrap();
        tasks.spawn(async move {
            let (mut offset, mut bytes) = (0, 0u64);
            while offset < end {
                let (records, _) = partition_client.fetch_records(offset, 1..(8 << 20), 100).await.unwrap();
                for record in &records {
                    let key = record.record.key.as_ref().map_or(0, Vec::len);
                    bytes += (key + record.record.value.as_ref().map_or(0, Vec::len)) as u64;
                }
                offset = records.last().map_or(offset, |r| r.offset + 1);
            }
            bytes
        });
    }
    let mut bytes = 0;
    while let Some(read) = tasks.join_next().await {
        bytes += read.unwrap();
    }
    (started.elapsed(), bytes)
}

/// A plain sluice-client consumer reads every partition of the changelog, `read_committed`,
/// from its start to its end.
async fn read_sluice(client: &Client, changelog: &str, ends: &[i64]) -> (Duration, u64) {
    let mut config = ConsumerConfig::default();
    config.isolation = Isolation::ReadCommitted;
    config.offset_reset = OffsetReset::Earliest;
    config.partition_max_bytes = 8 << 20;
    let mut consumer = Consumer::new(client.clone(), config);
    let started = Instant::now();
    for partition in 0..PARTITIONS {
        consumer.assign(changelog, partition, StartAt::Earliest).await.unwrap();
    }
    let mut bytes = 0u64;
    let done = |consumer: &Consumer| {
        (0..PARTITIONS).zip(ends).all(|(p, end)| consumer.partition_progress(changelog, p).unwrap().position >= *end)
    };
    while !done(&consumer) {
        for polled in consumer.poll().await.unwrap() {
            for record in polled.records() {
                bytes += (record.key().map_or(0, <[u8]>::len) + record.value().map_or(0, <[u8]>::len)) as u64;
            }
        }
    }
    (started.elapsed(), bytes)
}

fn failover_keys() -> usize {
    std::env::var("SLUICE_BENCH_FAILOVER_KEYS").ok().and_then(|n| n.parse().ok()).unwrap_or(200_000)
}

/// One process of the failover job, run in a task.
struct Member {
    run: tokio::task::JoinHandle<Result<u64, sluice_stream::StreamError>>,
    restored: sluice_stream::RestoreCounters,
    stop: sluice_scheduler::CancellationToken,
}

/// Times each key's value is written in the failover part: once per round, each round
/// worked through before the next, so that the changelog holds that many changes of each key
/// (as a job's changelog holds changes since its active segment rolled).
fn failover_rounds() -> usize {
    std::env::var("SLUICE_BENCH_FAILOVER_ROUNDS").ok().and_then(|n| n.parse().ok()).unwrap_or(3)
}

/// A process of the job keeping each key's last value, with `standby` replicas.
fn member(broker: &str, (source, group): (&str, &str), dir: &std::path::Path, standby: usize) -> Member {
    let mut config = StreamConfig::new([broker], [source], Duration::from_millis(200), dir);
    let mut scale = ScaleConfig::new(group);
    scale.protocol = GroupProtocol::Consumer;
    config.scheduler.scale = Some(scale);
    config.standby_replicas = standby;
    let ssc = StreamingContext::new(config);
    ssc.kafka_stream()
        .map(|record| {
            (record.key_str().unwrap_or_default().to_owned(), record.value_str().unwrap_or_default().to_owned())
        })
        .update_state_by_key(|values: Vec<String>, state: Option<String>| values.into_iter().last().or(state))
        .foreach_batch(|_, _| Ok(()));
    let (restored, stop) = (ssc.restore_counters(), ssc.stop_handle());
    Member { run: tokio::spawn(ssc.run(|_| {})), restored, stop }
}

/// Writes each of `keys` keys' value for `round`, and waits until the job of `group` (run by
/// `members`) has worked through them.
async fn write_round(
    (client, producer): (&Client, &Producer),
    (source, group): (&str, &str),
    (keys, round): (usize, usize),
    members: &[&Member],
) {
    let mut deliveries = Vec::new();
    for i in 0..keys {
        let record = ProducerRecord {
            partition: Some((i % PARTITIONS as usize) as i32),
            ..ProducerRecord::new(source, format!("{round}-{i:0>width$}", width = STATE_BYTES - 2))
                .key(format!("user-{i:08}"))
        };
        deliveries.push(producer.send(record).await.unwrap());
    }
    for delivery in deliveries {
        delivery.await.unwrap();
    }
    common::wait_for_group_at_end(client, group, source, PARTITIONS, Duration::from_secs(300), || {
        for member in members {
            assert!(!member.run.is_finished(), "a process of the job ended");
        }
    })
    .await;
}

/// What a process starting on a checkpoint restored before its first batch.
struct Start {
    /// The restore's time.
    restore: Duration,
    /// Changelog bytes read.
    bytes: u64,
    /// Keys taken from the checkpoint's copies.
    from_local: u64,
}

/// Waits until `member` has restored its tasks (it took every partition on), and tells what it
/// restored.
async fn restored(member: &Member) -> Start {
    let read = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    let started = Instant::now();
    while read(&member.restored.tasks) < PARTITIONS as u64 {
        assert!(started.elapsed() < Duration::from_secs(120), "the process never took every partition on");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Start {
        restore: Duration::from_micros(read(&member.restored.micros)),
        bytes: read(&member.restored.bytes),
        from_local: read(&member.restored.local_records),
    }
}

/// One process keeps the job while every key is written `rounds` times, is dropped (a crash),
/// and starts again on its checkpoint; once stopped, a process on a new checkpoint takes the
/// same tasks on. What each restored.
async fn restart(broker: &str, client: &Client, (keys, rounds): (usize, usize)) -> (Start, Start) {
    let (source, group) = (unique("restart-in"), unique("restart-job"));
    client.create_topic(&source, PARTITIONS, 1).await.unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig::default()).await.unwrap();
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let first = member(broker, (&source, &group), dirs[0].path(), 0);
    for round in 0..rounds {
        write_round((client, &producer), (&source, &group), (keys, round), &[&first]).await;
    }
    first.run.abort();
    let _ = first.run.await;
    let again = member(broker, (&source, &group), dirs[0].path(), 0);
    let from_checkpoint = restored(&again).await;
    again.stop.cancel();
    again.run.await.unwrap().unwrap();
    let fresh = member(broker, (&source, &group), dirs[1].path(), 0);
    let from_changelog = restored(&fresh).await;
    fresh.stop.cancel();
    fresh.run.await.unwrap().unwrap();
    (from_checkpoint, from_changelog)
}

/// What the survivor of a failover restored.
struct Takeover {
    /// From the drop to the restore's end.
    total: Duration,
    /// The restore's part of it.
    restore: Duration,
    /// Changelog bytes read.
    bytes: u64,
    /// Keys taken from standby copies.
    from_copies: u64,
}

/// Two processes (with `standby` replicas) share the job while every key is written
/// `rounds` times; one is dropped.
async fn failover(broker: &str, client: &Client, (keys, rounds): (usize, usize), standby: usize) -> Takeover {
    let (source, group) = (unique("failover-in"), unique("failover-job"));
    client.create_topic(&source, PARTITIONS, 1).await.unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig::default()).await.unwrap();
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let survivor = member(broker, (&source, &group), dirs[0].path(), standby);
    let dying = member(broker, (&source, &group), dirs[1].path(), standby);
    for round in 0..rounds {
        write_round((client, &producer), (&source, &group), (keys, round), &[&survivor, &dying]).await;
    }
    // Both settled (and the copies caught up): the survivor's counters from here on are the
    // takeover's.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let read = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    let counters = &survivor.restored;
    let (tasks, micros, bytes, copied) =
        (read(&counters.tasks), read(&counters.micros), read(&counters.bytes), read(&counters.standby_records));
    dying.run.abort();
    let died = Instant::now();
    // The counters move once a restore is done.
    while read(&counters.tasks) == tasks {
        assert!(died.elapsed() < Duration::from_secs(120), "the survivor never took the dead process's partitions");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let takeover = Takeover {
        total: died.elapsed(),
        restore: Duration::from_micros(read(&counters.micros) - micros),
        bytes: read(&counters.bytes) - bytes,
        from_copies: read(&counters.standby_records) - copied,
    };
    survivor.run.abort();
    takeover
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        if common::kind() == Kind::Tansu {
            println!("restore bench: SKIPPED on Tansu (no consumer group protocol, no aborted-record filtering)");
            return;
        }
        let n = records();
        let broker = Broker::start_for_benchmark();
        let client = Client::connect(ClientConfig::new([broker.addr.as_str()])).await.unwrap();
        let (source, group) = (unique("restore-in"), unique("restore-job"));
        client.create_topic(&source, PARTITIONS, 1).await.unwrap();
        // The changelog the job finds at start (it creates it when missing).
        let changelog = format!("{group}-update_state_by_key-0-changelog");
        client.create_topic_with_configs(&changelog, PARTITIONS, 1, &[("cleanup.policy", "compact")]).await.unwrap();
        let bytes = fill_changelog(&client, &changelog, n).await;
        // The group's offsets, as the run that wrote the changelog left them (without them the
        // job refuses a changelog with state).
        let offsets: Vec<(String, i32, i64)> = (0..PARTITIONS).map(|p| (source.clone(), p, 0)).collect();
        client.commit_group_offsets(&group, &offsets).await.unwrap();
        let partitions: Vec<(String, i32)> = (0..PARTITIONS).map(|p| (changelog.clone(), p)).collect();
        let ends_by_partition = client.log_ends(&partitions, Isolation::ReadUncommitted).await.unwrap();
        let ends: Vec<i64> = partitions.iter().map(|p| ends_by_partition[p]).collect();
        let mb = bytes as f64 / 1e6;
        println!(
            "changelog restore, {n} keys with {STATE_BYTES}-byte states over {PARTITIONS} partitions ({mb:.1} MB of keys and values), Apache Kafka on {}",
            broker.addr
        );
        println!("\n| reader | seconds | MB/s | records/s |");
        println!("| --- | --- | --- | --- |");
        let row = |name: &str, took: Duration, records: u64| {
            let s = took.as_secs_f64();
            println!("| {name} | {s:.2} | {:.0} | {:.0} |", mb / s, records as f64 / s);
            s
        };
        // The readers first, so that the broker's fetch path is as warm for the restore.
        let (took, read) = read_rskafka(&broker.addr, &changelog, &ends).await;
        assert_eq!(read, bytes);
        let rskafka = row("rskafka (read only)", took, n as u64);
        let (took, read) = read_sluice(&client, &changelog, &ends).await;
        assert_eq!(read, bytes);
        let consumer = row("sluice-client consumer (read only)", took, n as u64);
        let (took, restored, restored_bytes) = restore(&broker.addr, &source, &group).await;
        assert_eq!((restored, restored_bytes), (n as u64, bytes), "the restore read every record");
        let sluice = row("sluice restore (read, decode, into the state)", took, restored);
        println!(
            "\nrestore rate {:.0} MB/s (goal: at least 100 MB/s); {:.2}x of rskafka's read, {:.2}x of the sluice-client consumer's",
            mb / sluice,
            rskafka / sluice,
            consumer / sluice
        );

        let (keys, rounds) = (failover_keys(), failover_rounds());
        println!(
            "\nfailover with state ({keys} keys with {STATE_BYTES}-byte states over {PARTITIONS} partitions, each written {rounds} times; two processes, one dropped): the dead process's tasks restored on the survivor after\n"
        );
        println!("| standby replicas | total s | waiting for the group (the session: 6 s on the test brokers) s | restoring s | changelog MB read | keys from standby copies |");
        println!("| --- | --- | --- | --- | --- | --- |");
        let mut restores = Vec::new();
        for standby in [0, 1] {
            let t = failover(&broker.addr, &client, (keys, rounds), standby).await;
            println!(
                "| {standby} | {:.2} | {:.2} | {:.3} | {:.1} | {} |",
                t.total.as_secs_f64(),
                (t.total - t.restore).as_secs_f64(),
                t.restore.as_secs_f64(),
                t.bytes as f64 / 1e6,
                t.from_copies
            );
            restores.push(t.restore.as_secs_f64());
        }
        println!(
            "\nrestore with a standby copy: {:.2}x the time of one without",
            restores[1] / restores[0].max(1e-6)
        );

        println!(
            "\nrestart with state (the same job and keys; one process, dropped and started again): its tasks restored\n"
        );
        println!("| started on | restoring s | changelog MB read | keys from the checkpoint's copies |");
        println!("| --- | --- | --- | --- |");
        let (local, fresh) = restart(&broker.addr, &client, (keys, rounds)).await;
        for (name, start) in [("its own checkpoint", &local), ("a new checkpoint", &fresh)] {
            println!(
                "| {name} | {:.3} | {:.1} | {} |",
                start.restore.as_secs_f64(),
                start.bytes as f64 / 1e6,
                start.from_local
            );
        }
        assert_eq!(local.from_local, keys as u64, "the restart took every key from its checkpoint's copy");
        println!(
            "\nrestart on its own checkpoint: {:.2}x the restore time of a new checkpoint's",
            local.restore.as_secs_f64() / fresh.restore.as_secs_f64().max(1e-6)
        );
    });
}
