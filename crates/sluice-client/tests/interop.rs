//! Interop both ways with librdkafka 2.16 (kcat on the librdkafka inside the confluent-kafka
//! wheel; see docs/brokers.md), for every codec: what librdkafka produces, sluice reads identically to
//! how librdkafka itself reads it back; what sluice produces, librdkafka reads exactly as written.

use sluice_testkit as common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::unique;
use serde_json::Value;
use sluice_client::{Client, ClientConfig, Connection};
use sluice_protocol::compression::Compression;
use sluice_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use sluice_protocol::messages::FetchRequest;
use sluice_protocol::record::{decode_records, BatchHeader, DecodeOptions, Record, RecordHeader};

const CODECS: [Compression; 5] =
    [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd];
const RECORDS: usize = 50;

fn kcat() -> Command {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.peers/bin/kcat");
    assert!(path.exists(), "no kcat wrapper at {} (run scripts/install-peers.sh)", path.display());
    Command::new(path)
}

/// What kcat's `-J` consumer prints, reduced to comparable fields:
/// (offset, timestamp, key, value, headers).
type Seen = (i64, i64, Option<String>, Option<String>, Vec<(String, Option<String>)>);

fn kcat_consume(addr: &str, topic: &str, count: usize) -> Vec<Seen> {
    let output = kcat()
        .args(["-C", "-b", addr, "-t", topic, "-p", "0", "-o", "beginning", "-e", "-J", "-c", &count.to_string()])
        .output()
        .unwrap();
    assert!(output.status.success(), "kcat consume failed: {}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).unwrap();
    text.lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            let headers = v["headers"].as_array().cloned().unwrap_or_default();
            let headers = headers
                .chunks(2)
                .map(|pair| (pair[0].as_str().unwrap().to_owned(), pair[1].as_str().map(str::to_owned)))
                .collect();
            let text = |field: &str| v[field].as_str().map(str::to_owned);
            (v["offset"].as_i64().unwrap(), v["ts"].as_i64().unwrap(), text("key"), text("payload"), headers)
        })
        .collect()
}

async fn sluice_fetch(connection: &Connection, topic: &str) -> (Vec<Seen>, Vec<Compression>) {
    let request = FetchRequest {
        max_wait_ms: 1000,
        min_bytes: 1,
        max_bytes: 8 << 20,
        topics: vec![FetchTopic {
            topic: topic.into(),
            partitions: vec![FetchPartition {
                partition: 0,
                fetch_offset: 0,
                partition_max_bytes: 8 << 20,
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let version = connection.version_for::<FetchRequest>(Some(12)).unwrap();
    let response = connection.send_version(&request, version).await.unwrap();
    let records = response.responses[0].partitions[0].records.clone().unwrap();
    let decoded = decode_records(&records, &DecodeOptions::default()).unwrap();
    let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8(b.to_vec()).unwrap());
    let seen = decoded
        .records()
        .map(|r| {
            let headers = r.headers().map(|(k, v)| (k.to_owned(), text(v))).collect();
            (r.offset(), r.timestamp(), text(r.key()), text(r.value()), headers)
        })
        .collect();
    (seen, decoded.batches.iter().map(|b| b.header.compression()).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_reads_what_librdkafka_produces_with_every_codec() {
    let broker = common::shared();
    let client = Client::connect(ClientConfig::new([broker.addr.as_str()])).await.unwrap();
    for codec in CODECS {
        let topic = unique(&format!("from-librdkafka-{}", codec.name()));
        client.create_topic(&topic, 1, 1).await.unwrap();
        let mut child = kcat()
            .args(["-P", "-b", &broker.addr, "-t", &topic, "-p", "0", "-z", codec.name(), "-K", "\t"])
            .args(["-H", "source=kcat", "-H", "dup=1", "-H", "dup=2", "-X", "linger.ms=200"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = String::new();
        for i in 0..RECORDS {
            input.push_str(&format!("key-{i}\tvalue {i} {}\n", "payload ".repeat(i % 7)));
        }
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "kcat produce failed: {}", String::from_utf8_lossy(&output.stderr));

        let expected = kcat_consume(&broker.addr, &topic, RECORDS);
        assert_eq!(expected.len(), RECORDS, "{codec:?}: librdkafka reads back what it wrote");
        let connection = client.leader(&topic, 0).await.unwrap();
        let (seen, codecs) = sluice_fetch(&connection, &topic).await;
        assert_eq!(seen, expected, "{codec:?}: sluice and librdkafka read the same records");
        assert!(codecs.iter().all(|c| *c == codec), "{codec:?}: librdkafka wrote {codecs:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_reads_what_sluice_produces_with_every_codec() {
    let broker = common::shared();
    let client = Client::connect(ClientConfig::new([broker.addr.as_str()])).await.unwrap();
    for codec in CODECS {
        let topic = unique(&format!("from-sluice-{}", codec.name()));
        client.create_topic(&topic, 1, 1).await.unwrap();
        let records: Vec<Record> = (0..RECORDS as i64)
            .map(|i| Record {
                offset: i,
                timestamp: 1_700_000_000_000 + i * 10,
                key: (i % 10 != 3).then(|| format!("k{i}").into()),
                value: (i % 10 != 5)
                    .then(|| format!("sluice value {i} {}", "lorem ipsum ".repeat(i as usize % 9)).into()),
                headers: vec![
                    RecordHeader::new("trace", Some(format!("t-{i}").as_bytes())),
                    RecordHeader::new("empty", None),
                ],
            })
            .collect();
        let connection = client.leader(&topic, 0).await.unwrap();
        let answer =
            common::produce_batch(&connection, &topic, 0, &BatchHeader::with_compression(codec), &records).await;
        assert_eq!(answer.error_code, 0, "{codec:?}");

        let seen = kcat_consume(&broker.addr, &topic, RECORDS);
        let text = |b: &Option<bytes::Bytes>| b.as_ref().map(|b| String::from_utf8(b.to_vec()).unwrap());
        let expected: Vec<Seen> = records
            .iter()
            .map(|r| {
                let headers = r.headers.iter().map(|h| (h.key_str().to_owned(), text(&h.value))).collect();
                (r.offset, r.timestamp, text(&r.key), text(&r.value), headers)
            })
            .collect();
        assert_eq!(seen, expected, "{codec:?}: librdkafka reads exactly what sluice wrote");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_land_in_the_same_partitions_as_librdkafkas_murmur2_partitioner() {
    let broker = common::shared();
    let client = Client::connect(ClientConfig::new([broker.addr.as_str()])).await.unwrap();
    let partitions = 7;
    let keyed = unique("keyed");
    client.create_topic(&keyed, partitions, 1).await.unwrap();
    let keys: Vec<String> = (0..300).map(|i| format!("user-{i}")).collect();
    let mut child = kcat()
        .args(["-P", "-b", &broker.addr, "-t", &keyed, "-K", ":", "-X", "topic.partitioner=murmur2_random"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input: String = keys.iter().map(|k| format!("{k}:v\n")).collect();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "kcat produce failed: {}", String::from_utf8_lossy(&output.stderr));
    let output = kcat()
        .args(["-C", "-b", &broker.addr, "-t", &keyed, "-o", "beginning", "-e", "-f", "%k %p\\n"])
        .args(["-c", &keys.len().to_string()])
        .output()
        .unwrap();
    let placed = String::from_utf8(output.stdout).unwrap();
    assert_eq!(placed.lines().count(), keys.len());
    for line in placed.lines() {
        let (key, partition) = line.split_once(' ').unwrap();
        let partition: i32 = partition.parse().unwrap();
        assert_eq!(sluice_client::partition_for_key(key.as_bytes(), partitions), partition, "key {key}");
    }
}
