//! Injected failure at each sync site poisons the log, and nothing is retried.
//!
//! A workload that rolls segments, snapshots and compacts is run once to count its syncs; then
//! once per sync with exactly that sync failing. The failing call must report the sync site,
//! every later call must return `Poisoned`, no further sync may be attempted, and a restart
//! must recover every acknowledged batch.

use std::collections::BTreeSet;

use sluice_checkpoint::testing::{Faults, MemStorage};
use sluice_checkpoint::{BatchCommit, BatchIntent, Error, Log, Options, Snapshot, StorageOp};

fn options() -> Options {
    let mut options = Options::default();
    options.segment_size_bytes = 1024;
    options.retain_batches = 2;
    options
}

/// Runs batches until an error; returns the last batch whose `commit()` returned Ok.
fn workload(log: &Log<MemStorage>) -> (Option<u64>, Option<Error>) {
    let mut acked = None;
    for batch in 0..40u64 {
        let step = || -> Result<(), Error> {
            log.append_intent(&BatchIntent { batch_id: batch, ranges: vec![], metadata: vec![7; 100] })?;
            log.append_commit(&BatchCommit {
                batch_id: batch,
                state_delta: vec![batch as u8; 300],
                sink_markers: vec![],
            })?;
            if batch % 5 == 4 {
                log.append_snapshot(&Snapshot { batch_id: batch, state: vec![1; 50] })?;
            }
            log.commit()
        };
        match step() {
            Ok(()) => acked = Some(batch),
            Err(error) => return (acked, Some(error)),
        }
    }
    (acked, None)
}

fn assert_poisoned(log: &Log<MemStorage>, storage: &MemStorage, context: &str) {
    let syncs_before = storage.syncs();
    let intent = BatchIntent { batch_id: 1000, ..BatchIntent::default() };
    assert!(matches!(log.commit(), Err(Error::Poisoned { .. })), "{context}: commit after failure");
    assert!(matches!(log.append_intent(&intent), Err(Error::Poisoned { .. })), "{context}: append after failure");
    assert!(matches!(log.commit(), Err(Error::Poisoned { .. })), "{context}: second commit after failure");
    assert_eq!(storage.syncs(), syncs_before, "{context}: a sync was retried after a failure");
}

#[test]
fn a_failure_at_every_sync_poisons_the_log_and_is_never_retried() {
    let dry = MemStorage::new();
    let (log, _) = Log::open_with(dry.clone(), options()).unwrap();
    dry.set_faults(Faults::default());
    assert!(workload(&log).1.is_none());
    let total_syncs = dry.syncs();
    assert!(total_syncs > 40, "the workload must sync a lot: {total_syncs}");

    let mut sites = BTreeSet::new();
    for failing in 1..=total_syncs {
        let storage = MemStorage::new();
        let (log, _) = Log::open_with(storage.clone(), options()).unwrap();
        storage.set_faults(Faults { fail_sync: Some(failing), crash_at_op: None, seed: failing });
        let (acked, error) = workload(&log);
        let context = format!("sync {failing} of {total_syncs}");
        let Some(Error::Storage { op, .. }) = error else {
            panic!("{context}: expected a storage error, got {error:?}");
        };
        assert!(op.is_sync(), "{context}: failure reported at {op}");
        sites.insert(format!("{op:?}"));
        assert_poisoned(&log, &storage, &context);
        drop(log);
        // A restart after power loss still has every acknowledged batch.
        let reopened = MemStorage::from_image(&storage.power_loss(failing));
        let (_, recovered) = Log::open_with(reopened, options()).unwrap_or_else(|e| panic!("{context}: reopen: {e}"));
        let last = recovered.last_committed.map(|b| b.commit.batch_id);
        assert!(last >= acked, "{context}: acknowledged batch {acked:?} lost (log ends at {last:?})");
    }
    let expected: BTreeSet<String> =
        ["CommitSync", "RollSync", "FileSync", "DirSync"].iter().map(|s| s.to_string()).collect();
    assert_eq!(sites, expected, "every sync site of the write path must have been failed");
}

#[test]
fn a_failed_sync_at_open_is_reported_and_opening_again_works() {
    let storage = MemStorage::new();
    let (log, _) = Log::open_with(storage.clone(), options()).unwrap();
    assert!(workload(&log).1.is_none());
    drop(log);
    let image = storage.kill();
    let failing = MemStorage::from_image(&image);
    failing.set_faults(Faults { fail_sync: Some(1), crash_at_op: None, seed: 1 });
    let error = Log::open_with(failing, options()).unwrap_err();
    assert!(matches!(error, Error::Storage { op: StorageOp::OpenSync, .. }), "{error}");
    assert!(error.to_string().contains("msync at open"), "{error}");
    let (_, recovered) = Log::open_with(MemStorage::from_image(&image), options()).unwrap();
    assert_eq!(recovered.last_committed.map(|b| b.commit.batch_id), Some(39));
}
