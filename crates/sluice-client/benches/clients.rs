//! Produce and consume throughput of sluice, the Java client (kafka-clients 4.4, the reference),
//! rskafka and kcat (librdkafka 2.16) against one broker (Apache Kafka 4.4 by default, Tansu with
//! `SLUICE_TEST_BROKER=tansu`), on the same topics in one run: 1,000,000 x 100-byte records (set
//! `SLUICE_BENCH_RECORDS` to change), 1 and 8 partitions.
//!
//! Each client runs as its own process under GNU time, so its wall time, CPU time (user + system)
//! and peak RSS are its own; the broker's CPU is read from /proc before and after. The Java
//! client (`JavaPeer perf-produce` / `perf-consume`) times itself from its first send or poll to
//! the last record, so the JVM's start-up is left out of its records/s and CPU. Printed:
//! records/s, client and broker CPU microseconds per record, peak RSS, and sluice's ratios to the
//! others.
//! Run: `cargo bench -p sluice-client --bench clients` (needs `scripts/install-peers.sh`).
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)] // a command-line program

use sluice_testkit as common;

use std::io::Write;
use std::process::Command;

use common::timing::{timed, timed_to, Run};

use sluice_client::{
    Client, ClientConfig, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord, StartAt,
};

const VALUE_BYTES: usize = 100;

fn records() -> usize {
    std::env::var("SLUICE_BENCH_RECORDS").ok().and_then(|n| n.parse().ok()).unwrap_or(1_000_000)
}

/// The i-th record's value, built in one allocation (the same for every client measured).
fn value(i: usize) -> Vec<u8> {
    use std::io::Write as _;
    let mut v = Vec::with_capacity(VALUE_BYTES);
    write!(v, "{i:010}-").unwrap();
    v.resize(VALUE_BYTES, b'x');
    v
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--child") {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        return runtime.block_on(child(&args[pos + 1..]));
    }
    let broker = common::Broker::start_for_benchmark();
    let pid = broker.pid();
    let n = records();
    println!("clients against {} on {}, {n} records of {VALUE_BYTES} bytes", broker.kind.name(), broker.addr);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = runtime.block_on(Client::connect(ClientConfig::new([broker.addr.as_str()]))).unwrap();
    let input = std::env::temp_dir().join(format!("sluice-bench-{}.txt", std::process::id()));
    let mut file = std::fs::File::create(&input).unwrap();
    for i in 0..n {
        file.write_all(&value(i)).unwrap();
        file.write_all(b"\n").unwrap();
    }
    drop(file);
    // A JVM broker compiles its hot paths as it runs: warm it up with the whole workload once
    // (not measured), so that the clients measured first do not pay for it.
    for partitions in [1, 8] {
        let warm_up = common::unique(&format!("warm-up-{partitions}"));
        runtime.block_on(client.create_topic(&warm_up, partitions, 1)).unwrap();
        for mode in ["produce-sluice", "consume-sluice"] {
            timed(pid, myself(&[mode, &broker.addr, &warm_up, &partitions.to_string()]), None);
        }
    }
    let mut table = Vec::new();
    let mut sluice_topic = String::new();
    for partitions in [1, 8] {
        for who in CLIENTS {
            let topic = common::unique(&format!("produce-{who}-{partitions}"));
            runtime.block_on(client.create_topic(&topic, partitions, 1)).unwrap();
            let run = match who {
                "kcat" => {
                    timed(pid, kcat(&["-P", "-b", &broker.addr, "-t", &topic, "-X", "linger.ms=5"]), Some(&input))
                }
                "java" => java(pid, &["perf-produce", &broker.addr, &topic, &n.to_string(), &VALUE_BYTES.to_string()]),
                _ => timed(
                    pid,
                    myself(&[&format!("produce-{who}"), &broker.addr, &topic, &partitions.to_string()]),
                    None,
                ),
            };
            if who == "sluice" {
                sluice_topic = topic;
            }
            table.push(("produce", partitions, who, run));
        }
        // Every consumer reads the same records: those sluice produced.
        let topic = sluice_topic.clone();
        for who in CLIENTS {
            let run = match who {
                "java" => java(pid, &["perf-consume", &broker.addr, &topic, &n.to_string()]),
                "kcat" => timed(
                    pid,
                    kcat(&[
                        "-C",
                        "-b",
                        &broker.addr,
                        "-t",
                        &topic,
                        "-o",
                        "beginning",
                        "-e",
                        "-q",
                        "-c",
                        &n.to_string(),
                    ]),
                    None,
                ),
                _ => timed(
                    pid,
                    myself(&[&format!("consume-{who}"), &broker.addr, &topic, &partitions.to_string()]),
                    None,
                ),
            };
            table.push(("consume", partitions, who, run));
        }
    }
    let _ = std::fs::remove_file(&input);
    print_table(&table, n);
}

/// The clients measured, sluice first.
const CLIENTS: [&str; 4] = ["sluice", "java", "rskafka", "kcat"];

/// Runs the Java peer (`JavaPeer ARGS`) under GNU time; its records/s and CPU are the ones it
/// measured itself, from its first send or poll to its last record (the JVM's start-up left out).
fn java(broker_pid: u32, args: &[&str]) -> Run {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.peers/bin/java-peer");
    let mut command = Command::new(path);
    command.env("JAVA_PEER_OPTS", "-Xmx1g").arg("JavaPeer").args(args);
    let report = std::env::temp_dir().join(format!("sluice-bench-java-{}", std::process::id()));
    let mut run = timed_to(broker_pid, command, None, Some(&report));
    let line = std::fs::read_to_string(&report).unwrap();
    let measured: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    run.wall_s = measured["seconds"].as_f64().unwrap();
    run.cpu_s = measured["cpu_seconds"].as_f64().unwrap();
    run
}

fn myself(args: &[&str]) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.arg("--child").args(args);
    command
}

fn kcat(args: &[&str]) -> Command {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.peers/bin/kcat");
    let mut command = Command::new(path);
    command.args(args);
    command
}

fn print_table(table: &[(&str, i32, &str, Run)], n: usize) {
    println!();
    println!("| phase | partitions | client | records/s | client CPU us/record | broker CPU us/record | client peak RSS MiB | sluice speed ratio | sluice CPU ratio |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (phase, partitions, who, run) in table {
        let sluice =
            table.iter().find(|(p, q, w, _)| p == phase && q == partitions && *w == "sluice").map(|t| t.3).unwrap();
        let rate = n as f64 / run.wall_s;
        let cpu_us = run.cpu_s * 1e6 / n as f64;
        let ratio = |peer: f64, ours: f64| if ours > 0.0 { format!("{:.2}x", peer / ours) } else { "n/a".to_string() };
        let (speed, cpu) = if *who == "sluice" {
            ("-".to_string(), "-".to_string())
        } else {
            (ratio(run.wall_s, sluice.wall_s), ratio(run.cpu_s, sluice.cpu_s))
        };
        println!(
            "| {phase} | {partitions} | {who} | {:.0} | {cpu_us:.3} | {:.3} | {:.0} | {speed} | {cpu} |",
            rate,
            run.broker_cpu_s * 1e6 / n as f64,
            run.peak_rss_kb as f64 / 1024.0
        );
    }
    println!("\nspeed ratio = the peer's wall time / sluice's; CPU ratio = the peer's client CPU / sluice's (above 1: sluice better)");
    println!("broker CPU per record: the broker process's CPU over the client's run (the Java client's run includes its JVM start-up)");
}

async fn child(args: &[String]) {
    let (mode, broker, topic, partitions) = (&args[0], &args[1], &args[2], args[3].parse::<i32>().unwrap());
    let n = records();
    match mode.as_str() {
        "produce-sluice" => produce_sluice(broker, topic, partitions, n).await,
        "consume-sluice" => consume_sluice(broker, topic, partitions, n).await,
        "produce-rskafka" => produce_rskafka(broker, topic, partitions, n).await,
        "consume-rskafka" => consume_rskafka(broker, topic, partitions, n).await,
        other => panic!("unknown mode {other}"),
    }
}

async fn produce_sluice(broker: &str, topic: &str, partitions: i32, n: usize) {
    let client = Client::connect(ClientConfig::new([broker])).await.unwrap();
    let producer = Producer::new(client, ProducerConfig::default()).await.unwrap();
    let mut last = None;
    for i in 0..n {
        let record = ProducerRecord {
            partition: Some((i % partitions as usize) as i32),
            ..ProducerRecord::new(topic, value(i))
        };
        last = Some(producer.send(record).await.unwrap());
    }
    producer.flush().await.unwrap();
    last.unwrap().await.unwrap();
}

async fn consume_sluice(broker: &str, topic: &str, partitions: i32, n: usize) {
    let client = Client::connect(ClientConfig::new([broker])).await.unwrap();
    let mut config = ConsumerConfig::default();
    config.partition_max_bytes = 4 << 20;
    let mut consumer = Consumer::new(client, config);
    for partition in 0..partitions {
        consumer.assign(topic, partition, StartAt::Offset(0)).await.unwrap();
    }
    let mut seen = 0;
    while seen < n {
        for part in consumer.poll().await.unwrap() {
            seen += part.records().filter(|r| r.value().is_some()).count();
        }
    }
}

async fn produce_rskafka(broker: &str, topic: &str, partitions: i32, n: usize) {
    use rskafka::client::partition::{Compression, UnknownTopicHandling};
    let client = rskafka::client::ClientBuilder::new(vec![broker.to_owned()]).build().await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for partition in 0..partitions {
        let partition_client = client.partition_client(topic, partition, UnknownTopicHandling::Retry).await.unwrap();
        tasks.spawn(async move {
            let mine: Vec<usize> = (0..n).filter(|i| (i % partitions as usize) as i32 == partition).collect();
            for chunk in mine.chunks(1000) {
                let records = chunk
                    .iter()
                    .map(|i| rskafka::record::Record {
                        key: None,
                        value: Some(value(*i)),
                        headers: Default::default(),
                        timestamp: chrono::Utc::now(),
                    })
                    .collect();
                partition_client.produce(records, Compression::NoCompression).await.unwrap();
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

async fn consume_rskafka(broker: &str, topic: &str, partitions: i32, n: usize) {
    use rskafka::client::partition::UnknownTopicHandling;
    let client = rskafka::client::ClientBuilder::new(vec![broker.to_owned()]).build().await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    let per_partition = n / partitions as usize;
    for partition in 0..partitions {
        let partition_client = client.partition_client(topic, partition, UnknownTopicHandling::Retry).await.unwrap();
        let want = per_partition + usize::from((partition as usize) < n % partitions as usize);
        tasks.spawn(async move {
            let (mut offset, mut seen) = (0, 0);
            while seen < want {
                let (records, _) = partition_client.fetch_records(offset, 1..(4 << 20), 500).await.unwrap();
                seen += records.iter().filter(|r| r.record.value.is_some()).count();
                offset = records.last().map_or(offset, |r| r.offset + 1);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}
