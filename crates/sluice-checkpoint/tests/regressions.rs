//! Regressions from review: compaction against concurrent appends, pipelined intents and
//! compaction, open-time syncs of an inherited segment, arithmetic at the end of the id spaces.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use sluice_checkpoint::format::SegmentHeader;
use sluice_checkpoint::storage::Storage;
use sluice_checkpoint::testing::{DiskImage, MemStorage};
use sluice_checkpoint::{BatchCommit, BatchIntent, Error, Log, Options, Snapshot};

fn intent(batch_id: u64, metadata_bytes: usize) -> BatchIntent {
    BatchIntent { batch_id, ranges: vec![], metadata: vec![7; metadata_bytes] }
}

fn commit(batch_id: u64) -> BatchCommit {
    BatchCommit { batch_id, state_delta: vec![batch_id as u8; 4], sink_markers: vec![] }
}

fn small(retain_batches: usize) -> Options {
    let mut options = Options::default();
    options.segment_size_bytes = 1024;
    options.retain_batches = retain_batches;
    options
}

/// Power loss with several seeds; each image must reopen with batch `expected` committed.
fn assert_survives_power_loss(storage: &MemStorage, options: &Options, expected: u64) {
    for seed in 0..64 {
        let image = storage.power_loss(seed);
        let reopened = MemStorage::from_image(&image);
        let (_, recovered) = Log::open_with(reopened, options.clone())
            .unwrap_or_else(|e| panic!("seed {seed}: reopening after power loss failed: {e}"));
        let last = recovered.last_committed.as_ref().map(|b| b.commit.batch_id);
        assert!(last >= Some(expected), "seed {seed}: acknowledged batch {expected} lost, recovered {last:?}");
    }
}

/// Finding 1.1: records appended by other threads during the leader's msync are not durable,
/// so they must not count for retention when the leader compacts.
#[test]
fn compaction_ignores_commits_appended_during_the_sync() {
    let options = small(1);
    let storage = MemStorage::new();
    let (log, _) = Log::open_with(storage.clone(), options.clone()).unwrap();
    let log = Arc::new(log);
    for batch in 0..=5 {
        log.append_intent(&intent(batch, 0)).unwrap();
        log.append_commit(&commit(batch)).unwrap();
        log.commit().unwrap();
    }
    // A snapshot bigger than a segment gets a segment of its own (one page, which it fills):
    // the records of batch 5 are in an older segment that compaction could delete, and batch 6
    // will go to a third segment that the snapshot's msync does not cover.
    log.append_snapshot(&Snapshot { batch_id: 5, state: vec![5; 4000] }).unwrap();
    assert_eq!(log.stats().unwrap().segments, 2);
    // While the leader's msync is in flight, another appender plans and finishes batch 6.
    let slot: Arc<OnceLock<Arc<Log<MemStorage>>>> = Arc::new(OnceLock::new());
    let armed = Arc::new(AtomicBool::new(true));
    {
        let (slot, armed) = (Arc::clone(&slot), Arc::clone(&armed));
        storage.set_sync_hook(Some(Arc::new(move || {
            if armed.swap(false, Ordering::SeqCst) {
                let log = slot.get().expect("log installed");
                log.append_intent(&intent(6, 0)).unwrap();
                log.append_commit(&commit(6)).unwrap();
            }
        })));
    }
    assert!(slot.set(Arc::clone(&log)).is_ok());
    log.commit().unwrap();
    assert!(!armed.load(Ordering::SeqCst), "the hook ran during the commit's msync");
    assert_eq!(log.stats().unwrap().durable_seq, 13, "batch 6 (records 13, 14) is not durable");
    storage.set_sync_hook(None);
    // Batch 5 was acknowledged; batch 6 was not. Power fails now.
    assert_survives_power_loss(&storage, &options, 5);
}

/// Finding 1.2: with two batches pending, compaction may delete the intent of the older one
/// while keeping its commit; the log must still open.
#[test]
fn pipelined_intents_then_compaction_leave_an_openable_log() {
    let options = small(1);
    let storage = MemStorage::new();
    {
        let (log, _) = Log::open_with(storage.clone(), options.clone()).unwrap();
        log.append_intent(&intent(0, 0)).unwrap();
        log.append_commit(&BatchCommit { batch_id: 0, state_delta: vec![], sink_markers: vec![] }).unwrap();
        log.commit().unwrap();
        // Fills segment 0, so that the intent of batch 2 opens segment 1.
        log.append_intent(&intent(1, 800)).unwrap();
        assert_eq!(log.stats().unwrap().segments, 1);
        log.append_intent(&intent(2, 0)).unwrap();
        assert_eq!(log.stats().unwrap().segments, 2, "the test needs intent 2 in a new segment");
        log.append_commit(&commit(1)).unwrap();
        log.append_commit(&commit(2)).unwrap();
        log.append_snapshot(&Snapshot { batch_id: 2, state: vec![2; 8] }).unwrap();
        log.commit().unwrap();
        assert_eq!(log.stats().unwrap().segments, 1, "compaction deleted segment 0");
    }
    let reopened = MemStorage::from_image(&storage.kill());
    let (log, recovered) = Log::open_with(reopened, options).expect("a compacted log opens");
    let last = recovered.last_committed.expect("batch 2 was committed");
    assert_eq!(last.intent, intent(2, 0));
    assert_eq!(last.commit, commit(2));
    assert_eq!(recovered.snapshot.map(|s| s.batch_id), Some(2));
    log.append_intent(&intent(3, 0)).expect("the reopened log accepts the next batch");
}

/// Finding 1.3: a segment created by a process that died before syncing it (file and directory)
/// must be made durable by the next open before anything is acknowledged in it.
#[test]
fn open_makes_an_inherited_unsynced_segment_durable() {
    let options = small(1);
    let storage = MemStorage::new();
    // A writer was killed right after creating segment 0: neither the file nor the directory
    // was fsynced.
    let header = SegmentHeader { segment_id: 0, first_seq: 0 }.encode();
    drop(storage.create_segment(0, 1024, &header).unwrap());
    let (log, _) = Log::open_with(storage.clone(), options.clone()).unwrap();
    log.append_intent(&intent(0, 0)).unwrap();
    log.append_commit(&commit(0)).unwrap();
    log.commit().unwrap();
    drop(log);
    assert_survives_power_loss(&storage, &options, 0);
}

/// Finding 4: a failed segment removal must neither fail a commit whose records are durable
/// nor poison the log; the removal is retried at a later commit.
#[test]
fn a_failed_compaction_removal_does_not_fail_the_commit_or_poison() {
    let options = small(1);
    let storage = MemStorage::new();
    let (log, _) = Log::open_with(storage.clone(), options.clone()).unwrap();
    for batch in 0..12 {
        log.append_intent(&intent(batch, 100)).unwrap();
        log.append_commit(&commit(batch)).unwrap();
        log.commit().unwrap();
    }
    let before = log.stats().unwrap().segments;
    assert!(before > 2, "the test needs several segments, has {before}");
    storage.set_fail_removals(true);
    log.append_snapshot(&Snapshot { batch_id: 11, state: vec![1; 8] }).unwrap();
    log.commit().expect("the snapshot is durable; a failed removal must not fail the commit");
    let stats = log.stats().unwrap();
    assert_eq!(stats.segments, before, "nothing was removed");
    assert!(stats.compaction_failures >= 1, "{stats:?}");
    assert_eq!(stats.durable_seq, stats.next_seq);
    storage.set_fail_removals(false);
    log.append_intent(&intent(12, 0)).expect("the log is not poisoned");
    log.commit().unwrap();
    assert!(log.stats().unwrap().segments < before, "the removal was retried");
    drop(log);
    let (_, recovered) = Log::open_with(MemStorage::from_image(&storage.kill()), options).unwrap();
    assert_eq!(recovered.last_committed.map(|b| b.commit.batch_id), Some(11));
}

/// Finding 3.1: sequence numbers and segment ids at u64::MAX are refused cleanly, never
/// overflowing.
#[test]
fn sequence_numbers_and_segment_ids_at_the_end_of_u64_are_refused_cleanly() {
    use sluice_checkpoint::format::{encode_record_header, RecordKind, RecordMeta};
    use sluice_checkpoint::{recover, RecoveryMode, SegmentImage};

    // A segment starting at `first_seq` holding one snapshot record with sequence `seq`.
    let segment = |first_seq: u64, seq: u64| {
        let mut bytes = SegmentHeader { segment_id: 0, first_seq }.encode().to_vec();
        let mut payload = 9u64.to_le_bytes().to_vec();
        payload.extend(0u32.to_le_bytes());
        let meta = RecordMeta { kind: RecordKind::Snapshot, seq, durable_seq: 0 };
        bytes.extend(encode_record_header(meta, &[&payload]).unwrap());
        bytes.extend(&payload);
        bytes.resize(4096, 0);
        bytes
    };
    // Record u64::MAX is never valid (the sequence after it would not exist).
    let bytes = segment(u64::MAX, u64::MAX);
    let recovery = recover(&[SegmentImage { id: 0, bytes: &bytes }], RecoveryMode::Strict).unwrap();
    assert!(recovery.records.is_empty());
    assert_eq!(recovery.next_seq, u64::MAX);
    let image = DiskImage { files: [(0, bytes)].into() };
    let error = Log::open_with(MemStorage::from_image(&image), small(1)).unwrap_err();
    assert!(matches!(error, Error::Corrupt { .. }), "{error}");

    // A log whose last record is u64::MAX - 1 opens; appending says the numbers are exhausted.
    let image = DiskImage { files: [(0, segment(u64::MAX - 1, u64::MAX - 1))].into() };
    let (log, recovered) = Log::open_with(MemStorage::from_image(&image), small(1)).unwrap();
    assert_eq!(recovered.next_seq, u64::MAX);
    let error = log.append_intent(&intent(10, 0)).unwrap_err();
    assert!(matches!(&error, Error::InvalidOperation { problem } if problem.contains("exhausted")), "{error}");
    log.commit().expect("a refused append does not poison the log");

    // The last possible segment id: opening works, a roll-over is refused with a clear error.
    let storage = MemStorage::new();
    let header = SegmentHeader { segment_id: u64::MAX, first_seq: 0 }.encode();
    drop(storage.create_segment(u64::MAX, 1024, &header).unwrap());
    let (log, _) = Log::open_with(storage, small(1)).unwrap();
    log.append_intent(&intent(0, 0)).unwrap();
    let error = log.append_intent(&intent(0, 2000)).unwrap_err();
    assert!(error.to_string().contains("segment ids are exhausted"), "{error}");
    log.commit().expect("a refused roll-over does not poison the log");
}
