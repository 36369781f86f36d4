//! A job against a real broker: clicks `user,item,timestamp` counted per item with the
//! counts checked against the input, written as JSON-lines files that appear whole per batch.

#[path = "../../sluice-client/tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::unique;
use sluice_client::{Client, ClientConfig, Producer, ProducerConfig, ProducerRecord};
use sluice_scheduler::{ManualClock, RateLimits, Trigger};
use sluice_stream::{JsonLinesFiles, KafkaRecord, StreamConfig, StreamingContext};

const PARTITIONS: i32 = 4;

/// 2,000 clicks over 4 partitions, item popularity skewed; returns the clicks per item.
async fn produce_clicks(client: &Client, topic: &str) -> BTreeMap<String, u64> {
    client.create_topic(topic, PARTITIONS, 1).await.unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig::default()).await.unwrap();
    let mut expected = BTreeMap::new();
    for i in 0u64..2_000 {
        let item = format!("item-{}", (i * i + 7 * i) % 97 % (1 + i % 13));
        *expected.entry(item.clone()).or_default() += 1;
        let line = format!("user-{},{item},{}", i % 31, 1_700_000_000_000 + i);
        let partition = Some((i % PARTITIONS as u64) as i32);
        drop(producer.send(ProducerRecord { partition, ..ProducerRecord::new(topic, line) }).await.unwrap());
    }
    // A record that is not a click: counted as unparsable, not as an item.
    drop(producer.send(ProducerRecord { partition: Some(0), ..ProducerRecord::new(topic, "garbage") }).await.unwrap());
    producer.flush().await;
    expected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clicks_per_item_over_a_job_match_the_input_and_each_batch_file_is_whole() {
    let broker = common::shared();
    let client = Client::connect(ClientConfig::new([broker.addr.as_str()])).await.unwrap();
    let clicks = unique("clicks");
    let expected = produce_clicks(&client, &clicks).await;

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("counts");
    let mut config = StreamConfig::new(
        [broker.addr.as_str()],
        [clicks.as_str()],
        Duration::from_millis(100),
        dir.path().join("checkpoint"),
    );
    // 1,000 records/s per partition: 100 per partition per batch, so the job takes several.
    config.scheduler.limits = RateLimits { max_per_partition: Some(1_000.0), min_per_partition: 0.0 };
    config.scheduler.trigger = Trigger::AvailableNow;
    let ctx = StreamingContext::new(config);
    let unparsable = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let bad = std::sync::Arc::clone(&unparsable);
    let topic = clicks.clone();
    ctx.kafka_stream()
        .flat_map(move |record: KafkaRecord| match record.csv::<(String, String, i64)>() {
            Ok(click) => Some(click),
            Err(e) => {
                assert!(e.to_string().contains(&format!("{topic}/0 offset")), "the error says where: {e}");
                bad.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                None
            }
        })
        .map(|(_user, item, _timestamp)| (item, 1u64))
        .reduce_by_key(|a, b| a + b)
        .to_sink(JsonLinesFiles::new(&out));
    let mut batches = 0;
    ctx.run_with_clock(ManualClock::new(0), |_| batches += 1).await.unwrap();
    assert!(batches >= 5, "rate-limited into several batches, ran {batches}");
    assert_eq!(unparsable.load(std::sync::atomic::Ordering::SeqCst), 1);

    // Sum every batch file's counts: exactly the input's.
    let mut counted: BTreeMap<String, u64> = BTreeMap::new();
    let mut files: Vec<_> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(
        files.iter().all(|f| f.file_name().unwrap().to_str().unwrap().starts_with("batch-")),
        "no temporary file left: {files:?}"
    );
    for file in &files {
        for line in std::fs::read_to_string(file).unwrap().lines() {
            let (item, count): (String, u64) = serde_json::from_str(line).unwrap();
            *counted.entry(item).or_default() += count;
        }
    }
    assert_eq!(counted, expected);
}
