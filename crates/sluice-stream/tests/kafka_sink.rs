//! The Kafka sink against a real broker, batch by batch: a re-run batch its first run
//! wrote whole is not written again (both modes); a transaction a crashed run left open is
//! aborted by the next run's start; items that cannot be made records fail their batch; a
//! batch in pieces is written as one (one transaction, one marker), and one abandoned part way
//! is aborted when it starts again.

use sluice_testkit as common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::unique;
use sluice_client::{Client, ClientConfig, FetchOptions, Isolation, Producer, ProducerConfig, ProducerRecord};
use sluice_protocol::record::ControlRecordType;
use sluice_stream::{BatchInfo, KafkaSink, KafkaSinkError, Sink};

/// A test's output topic and sink id (the broker may be shared), and a client.
struct Setup {
    broker: String,
    client: Client,
    topic: String,
    id: String,
}

async fn setup() -> Setup {
    let broker = common::shared().addr.clone();
    let client = Client::connect(ClientConfig::new([broker.as_str()])).await.unwrap();
    let topic = unique("out");
    client.create_topic(&topic, 1, 1).await.unwrap();
    Setup { broker, client, topic, id: unique("test") }
}

impl Setup {
    fn sink(&self) -> KafkaSink<u32> {
        KafkaSink::json(ClientConfig::new([self.broker.as_str()]), &self.topic, &self.id)
    }

    /// The log of the topic's partition 0: data values and markers, once no transaction is open
    /// (Kafka writes a transaction's markers after EndTxn has answered).
    async fn log(&self) -> Vec<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut options = FetchOptions::default();
            options.max_wait = Duration::from_millis(20);
            options.isolation = Isolation::ReadCommitted;
            let fetched = self.client.fetch_partition(&self.topic, 0, 0, &options).await.unwrap();
            if fetched.last_stable_offset == fetched.high_watermark {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "a transaction is still open after 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        log(&self.client, &self.topic).await
    }
}

fn batch(batch_id: u64, rerun: bool) -> BatchInfo {
    BatchInfo::new(batch_id, (batch_id + 1) * 100, rerun)
}

/// Piece `piece` of a batch of `pieces`, after `before` items.
fn piece(batch_id: u64, rerun: bool, piece: usize, pieces: usize, before: u64) -> BatchInfo {
    batch(batch_id, rerun).with_piece(piece, piece + 1 == pieces, before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transactional_sink_writes_a_batch_in_pieces_as_one_transaction_and_aborts_one_abandoned_part_way() {
    let setup = setup().await;
    let mut sink = setup.sink().transactional();
    sink.write(&piece(0, false, 0, 3, 0), vec![1, 2]).await.unwrap();
    sink.write(&piece(0, false, 1, 3, 2), vec![]).await.unwrap();
    sink.write(&piece(0, false, 2, 3, 2), vec![3]).await.unwrap();
    // Batch 1 fails after its second piece (another output failed); it runs again from piece 0.
    sink.write(&piece(1, false, 0, 3, 0), vec![4]).await.unwrap();
    sink.write(&piece(1, false, 1, 3, 1), vec![5]).await.unwrap();
    sink.write(&piece(1, true, 0, 3, 0), vec![4]).await.unwrap();
    sink.write(&piece(1, true, 1, 3, 1), vec![5]).await.unwrap();
    sink.write(&piece(1, true, 2, 3, 2), vec![6]).await.unwrap();
    assert_eq!(sink.counters().written.load(Ordering::SeqCst), 6);
    assert_eq!(setup.log().await, ["1", "2", "3", "COMMIT", "4", "5", "ABORT", "4", "5", "6", "COMMIT"]);
    // A piece without the pieces before it is refused, not written as if it were a batch.
    let error = setup.sink().transactional().write(&piece(2, false, 1, 3, 0), vec![7]).await.unwrap_err();
    assert!(error.to_string().contains("piece 1 of batch 2 came without the pieces before it"), "{error}");
    assert!(
        matches!(error.downcast_ref(), Some(KafkaSinkError::PieceOutOfOrder { batch_id: 2, piece: 1, .. })),
        "a typed error: {error:?}"
    );
    // A re-run of a batch written whole is skipped in every piece.
    let mut restarted = setup.sink().transactional();
    for p in 0..3 {
        restarted.write(&piece(1, true, p, 3, p as u64), vec![4 + p as u32]).await.unwrap();
    }
    assert_eq!(restarted.counters().batches_skipped.load(Ordering::SeqCst), 1);
    assert_eq!(restarted.counters().written.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_sink_writes_its_marker_after_a_batch_s_last_piece() {
    let setup = setup().await;
    let mut sink = setup.sink();
    sink.write(&piece(0, false, 0, 2, 0), vec![1, 2]).await.unwrap();
    // A restart now: the marker does not name batch 0, so its re-run writes it (at least once).
    let mut restarted = setup.sink();
    restarted.write(&piece(0, true, 0, 2, 0), vec![1, 2]).await.unwrap();
    restarted.write(&piece(0, true, 1, 2, 2), vec![3]).await.unwrap();
    assert_eq!(restarted.counters().batches_skipped.load(Ordering::SeqCst), 0);
    // Now it does: a further re-run is skipped.
    let mut again = setup.sink();
    again.write(&piece(0, true, 0, 2, 0), vec![1, 2]).await.unwrap();
    again.write(&piece(0, true, 1, 2, 2), vec![3]).await.unwrap();
    assert_eq!(again.counters().batches_skipped.load(Ordering::SeqCst), 1);
    assert_eq!(setup.log().await, ["1", "2", "1", "2", "3"]);
}

/// The log of `topic`/0: data values and markers.
async fn log(client: &Client, topic: &str) -> Vec<String> {
    let mut options = FetchOptions::default();
    options.max_wait = Duration::from_millis(50);
    let fetched = client.fetch_partition(topic, 0, 0, &options).await.unwrap();
    let mut entries = Vec::new();
    for batch in &fetched.records.batches {
        match batch.control_type() {
            Some(ControlRecordType::Commit) => entries.push("COMMIT".to_owned()),
            Some(ControlRecordType::Abort) => entries.push("ABORT".to_owned()),
            Some(other) => entries.push(format!("{other:?}")),
            None => entries.extend(batch.records().map(|r| String::from_utf8(r.value().unwrap().to_vec()).unwrap())),
        }
    }
    entries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_sink_does_not_write_again_a_rerun_batch_it_wrote_whole() {
    let setup = setup().await;
    let mut first = setup.sink();
    first.write(&batch(0, false), vec![1, 2]).await.unwrap();
    first.write(&batch(1, false), vec![3]).await.unwrap();
    // A restarted job re-runs batch 1 (its commit did not reach the checkpoint), then goes on.
    let mut second = setup.sink();
    second.write(&batch(1, true), vec![3]).await.unwrap();
    second.write(&batch(2, false), vec![4]).await.unwrap();
    assert_eq!(second.counters().batches_skipped.load(Ordering::SeqCst), 1);
    assert_eq!(second.counters().written.load(Ordering::SeqCst), 1);
    assert_eq!(setup.log().await, ["1", "2", "3", "4"]);
    // A re-run batch the first run did not finish is written.
    let mut third = setup.sink();
    third.write(&batch(3, true), vec![5]).await.unwrap();
    assert_eq!(setup.log().await, ["1", "2", "3", "4", "5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transactional_sink_writes_each_batch_once_and_aborts_what_a_crashed_run_left_open() {
    let setup = setup().await;
    let mut first = setup.sink().transactional();
    first.write(&batch(0, false), vec![1, 2]).await.unwrap();
    // A run that crashed mid-batch: its transaction (same transactional id) holds a record.
    let mut config = ProducerConfig::default();
    config.transactional_id = Some(format!("sluice-sink-{}", setup.id));
    let crashed = Producer::new(setup.client.clone(), config).await.unwrap();
    crashed.begin_transaction().await.unwrap();
    crashed.send(ProducerRecord::new(&setup.topic, "9")).await.unwrap().await.unwrap();
    drop(crashed);
    // The restarted job's sink aborts it, writes the re-run batch 1, and skips batch 0 again.
    let mut second = setup.sink().transactional();
    second.write(&batch(1, true), vec![3]).await.unwrap();
    let mut third = setup.sink().transactional();
    third.write(&batch(1, true), vec![3]).await.unwrap();
    assert_eq!(third.counters().batches_skipped.load(Ordering::SeqCst), 1, "batch 1 committed whole already");
    assert_eq!(setup.log().await, ["1", "2", "COMMIT", "9", "ABORT", "3", "COMMIT"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_that_cannot_be_a_record_fails_its_batch_with_the_reason() {
    let setup = setup().await;
    let mut sink = KafkaSink::new(ClientConfig::new([setup.broker.as_str()]), &setup.topic, &setup.id, |n: &u32| {
        if *n == 13 {
            Err(format!("{n} is unlucky").into())
        } else {
            Ok(ProducerRecord::new("ignored: the sink's topic wins", n.to_string()))
        }
    });
    sink.write(&batch(0, false), vec![1]).await.unwrap();
    let error = sink.write(&batch(1, false), vec![2, 13]).await.unwrap_err();
    assert!(error.to_string().contains("batch 1") && error.to_string().contains("13 is unlucky"), "{error}");
    // The function's own error is the source, whole.
    let Some(KafkaSinkError::Record { batch_id: 1, source, .. }) = error.downcast_ref() else {
        panic!("a typed error: {error:?}")
    };
    assert_eq!(source.to_string(), "13 is unlucky");
    assert_eq!(setup.log().await, ["1"], "nothing of the failed batch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marker_of_an_earlier_checkpoint_does_not_hide_a_new_checkpoint_s_batch() {
    let setup = setup().await;
    // Checkpoint A wrote batch 0 (its marker: 1), then the job started afresh on checkpoint B,
    // whose batch 0 failed before the sink and is re-run: the same batch id, the same marker
    // offset, but another checkpoint's.
    let (a, b) = (0x0a0a_0a0a_0a0a_0a0a, 0x0b0b_0b0b_0b0b_0b0b);
    let mut on_a = setup.sink().transactional();
    on_a.write(&batch(0, false).with_checkpoint_id(a), vec![1]).await.unwrap();
    let mut on_b = setup.sink().transactional();
    on_b.write(&batch(0, true).with_checkpoint_id(b), vec![2]).await.unwrap();
    assert_eq!(on_b.counters().batches_skipped.load(Ordering::SeqCst), 0, "A's marker is not B's");
    // Within B, markers work as ever: its batch 0 re-run again is skipped.
    let mut again = setup.sink().transactional();
    again.write(&batch(0, true).with_checkpoint_id(b), vec![2]).await.unwrap();
    assert_eq!(again.counters().batches_skipped.load(Ordering::SeqCst), 1);
    assert_eq!(setup.log().await, ["1", "COMMIT", "2", "COMMIT"]);
}

/// The whole job: a transactional Kafka sink's job runs on a checkpoint, the checkpoint is
/// reset (its directory removed), and the job runs again; its first batch fails before the sink
/// (an output ahead of it refuses once), so it is re-run. Every batch of the second run is
/// published, none skipped: read_committed sees each input record once per run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_checkpoint_reset_a_job_publishes_its_new_batches_none_skipped() {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    use sluice_scheduler::{ManualClock, Trigger};
    use sluice_stream::{KafkaRecord, StreamConfig, StreamingContext};

    let setup = setup().await;
    let input = unique("reset-input");
    setup.client.create_topic(&input, 1, 1).await.unwrap();
    let producer = Producer::new(setup.client.clone(), ProducerConfig::default()).await.unwrap();
    for i in 0..20 {
        drop(producer.send(ProducerRecord::new(&input, i.to_string())).await.unwrap());
    }
    producer.flush().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("checkpoint");
    let run = |fail_first: bool| {
        let (setup_broker, topic, id, input, checkpoint) =
            (setup.broker.clone(), setup.topic.clone(), setup.id.clone(), input.clone(), checkpoint.clone());
        async move {
            let mut config =
                StreamConfig::new([setup_broker.as_str()], [input.as_str()], Duration::from_millis(100), checkpoint);
            config.scheduler.trigger = Trigger::AvailableNow;
            // In order: the refusing output runs before the sink.
            config.concurrent_outputs = false;
            let ctx = StreamingContext::new(config);
            let (values, to_publish) =
                ctx.kafka_stream().map(|record: KafkaRecord| record.value_str().unwrap_or_default().to_owned()).tee();
            let refused = Arc::new(AtomicBool::new(!fail_first));
            values.foreach_batch(move |_, _| {
                if refused.swap(true, Ordering::SeqCst) {
                    Ok(())
                } else {
                    Err("refusing once".into())
                }
            });
            let sink = KafkaSink::new(ClientConfig::new([setup_broker.as_str()]), topic, id, |v: &String| {
                Ok(ProducerRecord::new("", v.clone()))
            });
            to_publish.to_sink(sink.transactional());
            ctx.run_with_clock(ManualClock::new(0), |_| {}).await
        }
    };
    run(false).await.unwrap();
    let first: Vec<String> = setup.log().await.into_iter().filter(|v| v != "COMMIT").collect();
    assert_eq!(first.len(), 20, "{first:?}");

    std::fs::remove_dir_all(&checkpoint).unwrap();
    let error = run(true).await.unwrap_err();
    assert!(error.to_string().contains("refusing once"), "{error}");
    run(false).await.unwrap();
    let both: Vec<String> = setup.log().await.into_iter().filter(|v| v != "COMMIT").collect();
    let mut expected: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    expected.extend(expected.clone());
    assert_eq!(both, expected, "the second run's batches are all published, once");
}
