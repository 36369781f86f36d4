//! A job against a real broker: clicks `user,item,timestamp` counted per item with the
//! counts checked against the input, written as JSON-lines files that appear whole per batch.

use sluice_testkit as common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::unique;
use sluice_client::{Client, ClientConfig, Producer, ProducerConfig, ProducerRecord};
use sluice_scheduler::{ManualClock, RateLimits, Trigger};
use sluice_stream::{BatchInfo, JsonLinesFiles, KafkaRecord, Sink, StreamConfig, StreamingContext};

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
    producer.flush().await.unwrap();
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

/// What [`piece_outputs`] collected: each output's items of each batch.
#[derive(Debug, Default, PartialEq)]
struct Outputs {
    counts: Vec<(String, u64)>,
    windows: Vec<(i64, String, u64)>,
    totals: Vec<u64>,
    one_user: Vec<(i64, String)>,
    sessions: Vec<(String, usize)>,
    /// Lines of the JSON-lines files sink (a map-only output), sorted: a sink that takes a
    /// batch in pieces writes them in the order the pieces come.
    file_lines: Vec<String>,
    /// Writes a sink that takes pieces got, and the items it got.
    piece_writes: Vec<(usize, bool, u64, usize)>,
}

/// A sink that takes batches in pieces and records each write: (piece, last, items before,
/// items).
struct PieceLog(Shared);

impl Sink<String> for PieceLog {
    async fn write(&mut self, batch: &BatchInfo, items: Vec<String>) -> Result<(), sluice_stream::BoxError> {
        self.0.lock().unwrap().piece_writes.push((batch.piece, batch.last_piece, batch.items_before, items.len()));
        Ok(())
    }

    fn takes_pieces(&self) -> bool {
        true
    }
}

type Shared = std::sync::Arc<std::sync::Mutex<Outputs>>;

/// A job with an operator of each kind on the clicks: a reduction (clicks per item), event-time
/// windows behind a watermark ranked per window, a count, an element-wise filter into a sink,
/// and keyed state (`update_state_by_key`, which takes the batch whole).
fn piece_outputs(ctx: &StreamingContext, outputs: &Shared, files: &std::path::Path) {
    let clicks = || ctx.kafka_stream().flat_map(|record: KafkaRecord| record.csv::<(String, String, i64)>().ok());
    let out = std::sync::Arc::clone(outputs);
    clicks().map(|(_, item, _)| (item, 1u64)).reduce_by_key(|a, b| a + b).foreach_batch(move |_, items| {
        out.lock().unwrap().counts.extend(items);
        Ok(())
    });
    let out = std::sync::Arc::clone(outputs);
    clicks()
        .with_watermark(sluice_stream::Watermark::new(Duration::from_secs(1)), |(_, _, time)| *time)
        .map(|timed| timed.map(|(_, item, _)| (item, 1u64)))
        .reduce_by_key_and_event_window(Duration::from_secs(10), Duration::from_secs(5), |a, b| a + b)
        .top_k_per_window(3, |a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
        .foreach_batch(move |_, items| {
            let items = items.into_iter().map(|w| (w.start_ms, w.item.0, w.item.1));
            {
                out.lock().unwrap().windows.extend(items);
                Ok(())
            }
        });
    let out = std::sync::Arc::clone(outputs);
    clicks().count().foreach_batch(move |_, items| {
        out.lock().unwrap().totals.extend(items);
        Ok(())
    });
    let out = std::sync::Arc::clone(outputs);
    clicks().filter(|(user, _, _)| user == "user-3").map(|(_, item, time)| (time, item)).foreach_batch(
        move |_, items| {
            out.lock().unwrap().one_user.extend(items);
            Ok(())
        },
    );
    clicks().filter(|(user, _, _)| user == "user-5").to_sink(JsonLinesFiles::new(files));
    clicks().map(|(_, item, _)| item).to_sink(PieceLog(std::sync::Arc::clone(outputs)));
    let out = std::sync::Arc::clone(outputs);
    clicks()
        .map(|(user, item, _)| (user, item))
        .update_state_by_key(|items: Vec<String>, seen: Option<usize>| Some(seen.unwrap_or(0) + items.len()))
        .foreach_batch(move |_, items| {
            out.lock().unwrap().sessions.extend(items);
            Ok(())
        });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_larger_than_the_memory_budget_gives_in_pieces_the_output_it_gives_whole() {
    let broker = common::shared();
    let client = Client::connect(ClientConfig::new([broker.addr.as_str()])).await.unwrap();
    let topic = unique("clicks");
    client.create_topic(&topic, PARTITIONS, 1).await.unwrap();
    let mut config = ProducerConfig::default();
    config.batch_size_bytes = 16 << 10;
    let producer = Producer::new(client.clone(), config).await.unwrap();
    for i in 0u64..40_000 {
        let line = format!("user-{},item-{},{}", i % 31, (i * i + 7 * i) % 97 % (1 + i % 13), 1_700_000_000_000 + i);
        let partition = Some((i % PARTITIONS as u64) as i32);
        drop(producer.send(ProducerRecord { partition, ..ProducerRecord::new(&topic, line) }).await.unwrap());
    }
    producer.flush().await.unwrap();

    // One batch of everything (Trigger::Once), read and run through the job whole (no memory
    // budget), then under a budget of 1 MiB: read in pieces of 128 KiB, each run through the
    // job 256 records at a time.
    let mut runs = Vec::new();
    for budget in [0, 1 << 20] {
        let dir = tempfile::tempdir().unwrap();
        let mut config =
            StreamConfig::new([broker.addr.as_str()], [topic.as_str()], Duration::from_secs(1), dir.path())
                .with_memory_budget(budget);
        config.scheduler.trigger = Trigger::Once;
        let ctx = StreamingContext::new(config);
        let outputs = Shared::default();
        let files = dir.path().join("files");
        piece_outputs(&ctx, &outputs, &files);
        let mut pieces = Vec::new();
        ctx.run_with_clock(ManualClock::new(0), |p| pieces.push((p.pieces, p.num_input_rows))).await.unwrap();
        let mut outputs = std::mem::take(&mut *outputs.lock().unwrap());
        let file_names: Vec<_> = std::fs::read_dir(&files).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(file_names, ["batch-00000000000000000000.jsonl"], "one file, no temporary one left");
        let text = std::fs::read_to_string(files.join("batch-00000000000000000000.jsonl")).unwrap();
        outputs.file_lines = text.lines().map(str::to_owned).collect();
        outputs.file_lines.sort();
        runs.push((pieces, outputs));
    }
    let (whole, in_pieces) = (&runs[0], &runs[1]);
    assert_eq!(whole.0, vec![(1, 40_000)], "one batch, one piece");
    assert_eq!(in_pieces.0.len(), 1, "one batch");
    assert!(in_pieces.0[0].0 >= 8, "about 2 MB of clicks in pieces of 128 KiB: {:?}", in_pieces.0);
    assert_eq!(in_pieces.0[0].1, 40_000);
    assert_eq!(whole.1.totals, vec![40_000]);
    assert_eq!(whole.1.one_user.len(), 40_000 / 31 + 1);
    assert!(whole.1.windows.len() >= 3 * 3, "windows closed by the batch's watermark: {:?}", whole.1.windows);
    assert_eq!(whole.1.counts.iter().map(|(_, n)| n).sum::<u64>(), 40_000);
    assert_eq!(whole.1.file_lines.len(), 40_000 / 31 + 1);
    assert_eq!(whole.1.piece_writes, vec![(0, true, 0, 40_000)], "the sink that takes pieces, given one");
    // Given the batch piece by piece, never whole.
    let writes = &in_pieces.1.piece_writes;
    assert!(writes.len() >= 8, "{writes:?}");
    assert!(writes.iter().enumerate().all(|(i, w)| w.0 == i && w.1 == (i + 1 == writes.len())), "{writes:?}");
    assert!(writes.windows(2).all(|w| w[1].2 == w[0].2 + w[0].3 as u64), "items before: {writes:?}");
    assert_eq!(writes.iter().map(|w| w.3).sum::<usize>(), 40_000);
    assert!(writes.iter().all(|w| w.3 < 40_000 / 4), "each piece a part: {writes:?}");
    let (mut whole, mut in_pieces) = (std::mem::take(&mut runs[0].1), std::mem::take(&mut runs[1].1));
    (whole.piece_writes, in_pieces.piece_writes) = (vec![], vec![]);
    assert_eq!(in_pieces, whole, "the same output, item for item and in order");
}
