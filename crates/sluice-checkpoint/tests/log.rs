//! The log's API over real files and over memory: resume, locking, protocol checks, compaction
//! and retention, group commit, damage handling, typed payloads.

use std::sync::{Arc, Barrier, Condvar, Mutex};

use sluice_checkpoint::format::segment_file_name;
use sluice_checkpoint::testing::MemStorage;
use sluice_checkpoint::{
    decode_value, encode_value, BatchCommit, BatchIntent, Error, Log, OffsetRange, Options, RecoveryMode, Snapshot,
};

fn intent(batch_id: u64) -> BatchIntent {
    BatchIntent {
        batch_id,
        ranges: vec![
            OffsetRange {
                topic: "orders".into(),
                partition: 0,
                start_offset: batch_id as i64 * 10,
                end_offset: batch_id as i64 * 10 + 10,
            },
            OffsetRange { topic: "payments".into(), partition: 3, start_offset: 5, end_offset: 7 },
        ],
        metadata: format!("plan {batch_id}").into_bytes(),
    }
}

fn commit(batch_id: u64, delta_bytes: usize) -> BatchCommit {
    BatchCommit { batch_id, state_delta: vec![batch_id as u8; delta_bytes], sink_markers: vec![9, batch_id as u8] }
}

fn run_batch<S: sluice_checkpoint::storage::Storage>(log: &Log<S>, batch_id: u64, delta_bytes: usize) {
    log.append_intent(&intent(batch_id)).unwrap();
    log.append_commit(&commit(batch_id, delta_bytes)).unwrap();
    log.commit().unwrap();
}

fn segment_files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".ckpt"))
        .collect();
    names.sort();
    names
}

#[test]
fn reopening_returns_last_commit_pending_intent_snapshot_and_later_deltas() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (log, recovered) = Log::open(dir.path(), Options::default()).unwrap();
        assert_eq!(recovered.last_committed, None);
        for batch in 0..=2 {
            run_batch(&log, batch, 10);
        }
        log.append_snapshot(&Snapshot { batch_id: 2, state: b"state@2".to_vec() }).unwrap();
        run_batch(&log, 3, 10);
        run_batch(&log, 4, 10);
        log.append_intent(&intent(5)).unwrap();
        log.commit().unwrap();
        // Appended but never committed: may or may not survive, so the test does not look.
        log.append_commit(&commit(5, 10)).unwrap();
    }
    let (_log, recovered) = Log::open(dir.path(), Options::default()).unwrap();
    let last = recovered.last_committed.as_ref().unwrap();
    match last.commit.batch_id {
        5 => assert!(recovered.pending.is_empty()),
        4 => assert_eq!(recovered.pending, vec![intent(5)]),
        other => panic!("unexpected last batch {other}"),
    }
    assert_eq!(last.intent, intent(last.commit.batch_id));
    assert_eq!(recovered.snapshot, Some(Snapshot { batch_id: 2, state: b"state@2".to_vec() }));
    let delta_ids: Vec<u64> = recovered.deltas.iter().map(|d| d.batch_id).collect();
    assert_eq!(delta_ids[..2], [3, 4]);
    assert_eq!(recovered.deltas[0], commit(3, 10));
    assert!(recovered.torn.is_none() && recovered.damage.is_none());
}

#[test]
fn a_prepared_segment_takes_the_first_records_and_survives_a_reopen_before_any() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (log, _) = Log::open(dir.path(), Options::default()).unwrap();
        log.prepare().unwrap();
        log.prepare().unwrap();
        assert_eq!(segment_files(dir.path()).len(), 1, "preparing twice makes one segment");
    }
    // Reopened with a prepared segment and no record in it: nothing recovered, appends go there.
    let (log, recovered) = Log::open(dir.path(), Options::default()).unwrap();
    assert_eq!(recovered.last_committed, None);
    assert!(recovered.pending.is_empty());
    run_batch(&log, 0, 10);
    log.prepare().unwrap();
    run_batch(&log, 1, 10);
    assert_eq!(segment_files(dir.path()).len(), 1, "the prepared segment took the records");
    drop(log);
    let (_, recovered) = Log::open(dir.path(), Options::default()).unwrap();
    assert_eq!(recovered.last_committed.map(|c| c.intent.batch_id), Some(1));
}

#[test]
fn a_second_writer_on_the_same_directory_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (first, _) = Log::open(dir.path(), Options::default()).unwrap();
    let error = Log::open(dir.path(), Options::default()).unwrap_err();
    assert!(matches!(error, Error::Locked { .. }), "{error}");
    assert!(error.to_string().contains("already open for writing"), "{error}");
    drop(first);
    Log::open(dir.path(), Options::default()).expect("the lock is released on drop");
}

#[test]
fn protocol_violations_are_refused_without_poisoning() {
    let (log, _) = Log::open_with(MemStorage::new(), Options::default()).unwrap();
    let refused =
        |result: Result<u64, Error>| assert!(matches!(result, Err(Error::InvalidOperation { .. })), "{result:?}");
    refused(log.append_commit(&commit(0, 1)));
    refused(log.append_snapshot(&Snapshot { batch_id: 0, state: vec![] }));
    log.append_intent(&intent(0)).unwrap();
    log.append_intent(&intent(1)).unwrap();
    refused(log.append_commit(&commit(1, 1)));
    refused(log.append_intent(&intent(0))); // older than the pending batch 1
    log.append_commit(&commit(0, 1)).unwrap();
    refused(log.append_intent(&intent(0)));
    refused(log.append_snapshot(&Snapshot { batch_id: 1, state: vec![] }));
    log.append_snapshot(&Snapshot { batch_id: 0, state: vec![] }).unwrap();
    log.commit().unwrap();
}

#[test]
fn oversized_records_and_bad_options_are_refused() {
    let mut options = Options::default();
    options.max_record_bytes = 100;
    let (log, _) = Log::open_with(MemStorage::new(), options).unwrap();
    let big = BatchIntent { batch_id: 0, ranges: vec![], metadata: vec![0; 200] };
    let error = log.append_intent(&big).unwrap_err();
    assert!(matches!(error, Error::RecordTooLarge { limit: 100, .. }), "{error}");
    log.append_intent(&intent(0)).expect("the log stays usable");

    let options_with = |set: fn(&mut Options)| {
        let mut options = Options::default();
        set(&mut options);
        options
    };
    for bad in [
        options_with(|o| o.segment_size_bytes = 10),
        options_with(|o| o.retain_batches = 0),
        options_with(|o| o.max_record_bytes = 0),
    ] {
        let error = Log::open_with(MemStorage::new(), bad).unwrap_err();
        assert!(matches!(error, Error::InvalidOptions { .. }), "{error}");
    }
}

#[test]
fn a_record_larger_than_a_segment_gets_a_segment_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = Options::default();
    options.segment_size_bytes = 4096;
    {
        let (log, _) = Log::open(dir.path(), options.clone()).unwrap();
        run_batch(&log, 0, 100_000);
        run_batch(&log, 1, 10);
    }
    let (_, recovered) = Log::open(dir.path(), options).unwrap();
    assert_eq!(recovered.deltas.len(), 2);
    assert_eq!(recovered.deltas[0].state_delta.len(), 100_000);
}

#[test]
fn a_durable_snapshot_deletes_old_segments_but_keeps_retained_batches() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = Options::default();
    options.segment_size_bytes = 4096;
    options.retain_batches = 3;
    let (log, _) = Log::open(dir.path(), options.clone()).unwrap();
    for batch in 0..40 {
        run_batch(&log, batch, 500);
    }
    let before = segment_files(dir.path());
    assert!(before.len() > 5, "{before:?}");
    log.append_snapshot(&Snapshot { batch_id: 39, state: b"all".to_vec() }).unwrap();
    assert_eq!(segment_files(dir.path()), before, "nothing goes before the snapshot is durable");
    log.commit().unwrap();
    let after = segment_files(dir.path());
    assert!(after.len() < before.len() && after.len() <= 3, "{after:?}");
    assert_eq!(log.stats().unwrap().segments, after.len());
    drop(log);

    let (_, recovered) = Log::open(dir.path(), options).unwrap();
    assert!(recovered.start_seq > 0, "the log was compacted");
    assert_eq!(recovered.snapshot.as_ref().map(|s| s.batch_id), Some(39));
    assert!(recovered.deltas.is_empty());
    let history: Vec<u64> = recovered.history.iter().map(|i| i.batch_id).collect();
    assert_eq!(history, vec![37, 38, 39], "retention keeps the last three batches for inspection");
}

/// A sync gate: the first sync blocks until the test opens the gate.
#[derive(Default)]
struct Gate {
    state: Mutex<(bool, bool)>, // (a sync is waiting, gate open)
    changed: Condvar,
}

impl Gate {
    fn pass(&self) {
        let mut state = self.state.lock().unwrap();
        state.0 = true;
        self.changed.notify_all();
        while !state.1 {
            state = self.changed.wait(state).unwrap();
        }
    }

    fn wait_for_sync(&self) {
        let mut state = self.state.lock().unwrap();
        while !state.0 {
            state = self.changed.wait(state).unwrap();
        }
    }

    fn open(&self) {
        self.state.lock().unwrap().1 = true;
        self.changed.notify_all();
    }
}

#[test]
fn committers_waiting_on_a_sync_share_the_next_one_and_appends_go_on_meanwhile() {
    let storage = MemStorage::new();
    let (log, _) = Log::open_with(storage.clone(), Options::default()).unwrap();
    run_batch(&log, 0, 10); // creates the segment, so later syncs are commit msyncs only
    let gate = Arc::new(Gate::default());
    let hook_gate = Arc::clone(&gate);
    storage.set_sync_hook(Some(Arc::new(move || hook_gate.pass())));
    let log = Arc::new(log);
    let syncs_before = log.stats().unwrap().commit_syncs;

    log.append_intent(&intent(1)).unwrap();
    let leader = {
        let log = Arc::clone(&log);
        std::thread::spawn(move || log.commit())
    };
    gate.wait_for_sync();
    // The leader is inside its msync; appends are not blocked by it.
    log.append_commit(&commit(1, 10)).unwrap();
    log.append_intent(&intent(2)).unwrap();
    log.append_commit(&commit(2, 10)).unwrap();
    let start = Arc::new(Barrier::new(4));
    let followers: Vec<_> = (0..3)
        .map(|_| {
            let (log, start) = (Arc::clone(&log), Arc::clone(&start));
            std::thread::spawn(move || {
                start.wait();
                log.commit()
            })
        })
        .collect();
    start.wait();
    gate.open();
    leader.join().unwrap().unwrap();
    for follower in followers {
        follower.join().unwrap().unwrap();
    }
    let stats = log.stats().unwrap();
    assert_eq!(stats.commit_syncs - syncs_before, 2, "three waiting commits share one sync");
    assert_eq!(stats.durable_seq, stats.next_seq);
}

#[test]
fn concurrent_committers_on_real_files_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = Options::default();
    options.segment_size_bytes = 64 * 1024;
    let (log, _) = Log::open(dir.path(), options.clone()).unwrap();
    let log = Arc::new(log);
    // The batch protocol orders appends, so a lock hands out batch ids; the commits (and their
    // syncs) run concurrently.
    let next_batch = Arc::new(Mutex::new(0u64));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (log, next_batch) = (Arc::clone(&log), Arc::clone(&next_batch));
            std::thread::spawn(move || {
                for _ in 0..50 {
                    {
                        let mut batch = next_batch.lock().unwrap();
                        log.append_intent(&intent(*batch)).unwrap();
                        log.append_commit(&commit(*batch, 700)).unwrap();
                        *batch += 1;
                    }
                    log.commit().unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let syncs = log.stats().unwrap().commit_syncs;
    assert!(syncs <= 200, "{syncs} syncs for 200 commits");
    drop(log);
    let (_, recovered) = Log::open(dir.path(), options).unwrap();
    assert_eq!(recovered.last_committed.unwrap().commit.batch_id, 199);
    assert_eq!(recovered.deltas.len(), 200);
}

#[test]
fn damage_before_the_tail_is_an_error_naming_file_and_offset_unless_tolerated() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = Options::default();
    options.segment_size_bytes = 4096;
    {
        let (log, _) = Log::open(dir.path(), options.clone()).unwrap();
        for batch in 0..20 {
            run_batch(&log, batch, 300);
        }
    }
    // Flip a byte inside the first record of the first segment (its header starts at 40).
    let first = dir.path().join(segment_file_name(0));
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[40 + 20] ^= 0x40;
    std::fs::write(&first, &bytes).unwrap();

    let error = Log::open(dir.path(), options.clone()).unwrap_err();
    let Error::Corrupt { segment_id, offset, ref file, .. } = error else { panic!("{error}") };
    assert_eq!((segment_id, offset), (0, 40));
    assert!(file.contains(&*dir.path().to_string_lossy()), "{file}");
    assert!(error.to_string().contains("TruncateAtDamage"), "the message says what to do: {error}");

    let mut tolerant = options.clone();
    tolerant.recovery_mode = RecoveryMode::TruncateAtDamage;
    let (log, recovered) = Log::open(dir.path(), tolerant).unwrap();
    assert_eq!(recovered.damage.as_ref().map(|d| (d.segment_id, d.offset)), Some((0, 40)));
    assert!(recovered.last_committed.is_none());
    assert!(!recovered.removed_segments.is_empty());
    run_batch(&log, 0, 10);
    drop(log);
    let (_, recovered) = Log::open(dir.path(), options).unwrap();
    assert_eq!(recovered.last_committed.unwrap().commit.batch_id, 0, "the salvaged log is clean");
}

#[test]
fn a_torn_tail_is_cut_and_zeroed_and_appends_continue_after_it() {
    let storage = MemStorage::new();
    let (log, _) = Log::open_with(storage.clone(), Options::default()).unwrap();
    run_batch(&log, 0, 100);
    log.append_intent(&intent(1)).unwrap();
    log.append_commit(&commit(1, 5000)).unwrap();
    drop(log);
    // Keep the page cache, but tear the last record: zero its final bytes.
    let mut image = storage.kill();
    let segment = image.files.get_mut(&0).unwrap();
    let end = segment.iter().rposition(|&b| b != 0).unwrap();
    segment[end - 100..=end].fill(0xAA);
    segment[end - 2000..end - 1000].fill(0);
    let reopened = MemStorage::from_image(&image);
    let (log, recovered) = Log::open_with(reopened.clone(), Options::default()).unwrap();
    let torn = recovered.torn.expect("the torn record is reported");
    assert_eq!(recovered.last_committed.unwrap().commit.batch_id, 0);
    assert_eq!(recovered.pending, vec![intent(1)]);
    assert_eq!(torn.segment_id, 0);
    log.append_commit(&commit(1, 10)).unwrap();
    log.commit().unwrap();
    drop(log);
    let image = reopened.power_loss(7);
    let (_, recovered) = Log::open_with(MemStorage::from_image(&image), Options::default()).unwrap();
    assert_eq!(recovered.last_committed.unwrap().commit, commit(1, 10));
    assert!(recovered.torn.is_none(), "the old tail was zeroed, nothing of it comes back");
}

#[test]
fn typed_engine_values_travel_as_opaque_payloads() {
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Counts {
        per_key: Vec<(String, u64)>,
    }
    let counts = Counts { per_key: vec![("a".into(), 3), ("b".into(), 5)] };
    let (log, _) = Log::open_with(MemStorage::new(), Options::default()).unwrap();
    log.append_intent(&intent(0)).unwrap();
    log.append_commit(&BatchCommit { batch_id: 0, state_delta: encode_value(&counts).unwrap(), sink_markers: vec![] })
        .unwrap();
    log.commit().unwrap();
    let image = log.storage().kill();
    let (_, recovered) = Log::open_with(MemStorage::from_image(&image), Options::default()).unwrap();
    let back: Counts = decode_value(&recovered.deltas[0].state_delta).unwrap();
    assert_eq!(back, counts);
    let error = decode_value::<Counts>(&[0xff; 3]).unwrap_err();
    assert!(matches!(error, Error::Payload { action: "decode", .. }), "{error}");
}
