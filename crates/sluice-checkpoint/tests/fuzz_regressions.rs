//! The checkpoint fuzz targets' checks under plain `cargo test`: every input a fuzzer once crashed
//! on (`fuzz/regressions/checkpoint_*`, kept by `scripts/fuzz.sh`), and a real log's segments,
//! plain and damaged, through `checkpoint_recover`'s check.

use std::path::PathBuf;

use sluice_checkpoint::testing::{targets, MemStorage};
use sluice_checkpoint::{BatchCommit, BatchIntent, Log, OffsetRange, Options, Snapshot};

fn regressions(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions").join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    entries.map(|e| e.unwrap().path()).map(|p| (p.display().to_string(), std::fs::read(&p).unwrap())).collect()
}

#[test]
fn committed_fuzz_regressions_pass() {
    for (name, data) in regressions("checkpoint_recover") {
        eprintln!("replaying {name}");
        targets::recover(&data);
    }
    for (name, data) in regressions("checkpoint_ops") {
        eprintln!("replaying {name}");
        targets::ops(&data);
    }
}

/// The bytes of a small real log: two segments of intents, commits and a snapshot.
fn real_log_bytes() -> Vec<u8> {
    let mut options = Options::default();
    options.segment_size_bytes = 4096;
    let storage = MemStorage::new();
    let (log, _) = Log::open_with(storage.clone(), options).unwrap();
    for batch in 0..40u64 {
        let range = OffsetRange {
            topic: "t".into(),
            partition: 0,
            start_offset: batch as i64 * 10,
            end_offset: batch as i64 * 10 + 10,
        };
        log.append_intent(&BatchIntent { batch_id: batch, ranges: vec![range], metadata: vec![1; 40] }).unwrap();
        log.append_commit(&BatchCommit { batch_id: batch, state_delta: vec![2; 100], sink_markers: vec![] }).unwrap();
        if batch % 5 == 4 {
            log.append_snapshot(&Snapshot { batch_id: batch, state: vec![3; 200] }).unwrap();
        }
        log.commit().unwrap();
    }
    drop(log);
    let files = storage.kill().files;
    assert!(files.len() >= 2, "the log spans segments");
    files.values().flat_map(|s| s.iter().copied()).collect()
}

#[test]
fn recovery_check_holds_on_a_real_log_and_its_damaged_copies() {
    let bytes = real_log_bytes();
    for control in [0u8, 1, 2, 3, 0x80, 0x81, 0x83] {
        let mut input = vec![control];
        input.extend_from_slice(&bytes);
        targets::recover(&input);
        // And with damage in the middle, checksums repaired or not.
        let middle = input.len() / 2;
        input[middle] ^= 0x40;
        targets::recover(&input);
    }
}
