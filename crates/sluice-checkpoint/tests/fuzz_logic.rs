//! The fuzz targets' checks, run on seeded inputs so the suite covers them without a fuzzer
//! (`fuzz/fuzz_targets/checkpoint_recover.rs` and `checkpoint_ops.rs`).

mod common;

use std::collections::BTreeMap;

use common::build_log;
use sluice_checkpoint::rng::SplitMix64;
use sluice_checkpoint::testing::{check_recovery, fix_checksums, Sim, SimOp};
use sluice_checkpoint::Options;

/// Random damage of a real log: overwritten runs, cut files, swapped or dropped segments, with
/// and without checksums recomputed afterwards (which lets damage reach the payload decoders).
fn mutate(segments: &mut BTreeMap<u64, Vec<u8>>, rng: &mut SplitMix64) {
    let ids: Vec<u64> = segments.keys().copied().collect();
    let id = ids[rng.below(ids.len() as u64) as usize];
    match rng.below(4) {
        0 => {
            let bytes = segments.get_mut(&id).unwrap();
            let at = rng.below(bytes.len() as u64) as usize;
            let len = (rng.below(64) as usize).min(bytes.len() - at);
            rng.fill(&mut bytes[at..at + len]);
        }
        1 => {
            let bytes = segments.get_mut(&id).unwrap();
            bytes.truncate(rng.below(bytes.len() as u64 + 1) as usize);
        }
        2 => {
            segments.remove(&id);
        }
        _ => {
            let bytes = segments.get_mut(&id).unwrap();
            let at = rng.below(bytes.len() as u64) as usize;
            bytes[at] = bytes[at].wrapping_add(1 + rng.below(255) as u8);
        }
    }
    if rng.chance(50) {
        segments.values_mut().for_each(|bytes| fix_checksums(bytes));
    }
}

#[test]
fn recovery_of_randomly_damaged_logs_never_panics_and_is_idempotent() {
    let log = build_log(24 * 1024, 4096, 400, 9);
    let original: BTreeMap<u64, Vec<u8>> = log.segments.into_iter().collect();
    assert_eq!(check_recovery(&original), Ok(()));
    let mut rng = SplitMix64::new(0xf022);
    for case in 0..3000 {
        let mut segments = original.clone();
        for _ in 0..1 + rng.below(3) {
            mutate(&mut segments, &mut rng);
        }
        check_recovery(&segments).unwrap_or_else(|problem| panic!("case {case}: {problem}"));
    }
}

#[test]
fn fixing_checksums_of_an_intact_log_changes_nothing() {
    let log = build_log(8 * 1024, 4096, 200, 10);
    for (_, bytes) in &log.segments {
        let mut fixed = bytes.clone();
        fix_checksums(&mut fixed);
        assert_eq!(&fixed, bytes);
    }
}

#[test]
fn odd_operation_sequences_are_handled_like_the_fuzzer_would_send_them() {
    let sequences: Vec<Vec<SimOp>> = vec![
        vec![SimOp::Sync, SimOp::Kill, SimOp::Kill, SimOp::PowerLoss { seed: 1 }],
        vec![SimOp::FailSync { after_syncs: 0, seed: 2 }, SimOp::Intent { ranges: 2, metadata_bytes: 10 }, SimOp::Sync],
        vec![SimOp::ArmCrash { after_ops: 0, seed: 3 }, SimOp::Intent { ranges: 0, metadata_bytes: 0 }],
        vec![SimOp::Commit { delta_bytes: 5, marker_bytes: 0 }, SimOp::Snapshot { padding_bytes: 3 }],
        vec![
            SimOp::Intent { ranges: 1, metadata_bytes: 0 },
            SimOp::Commit { delta_bytes: 60_000, marker_bytes: 255 },
            SimOp::Snapshot { padding_bytes: 60_000 },
            SimOp::FailSync { after_syncs: 1, seed: 4 },
            SimOp::ArmCrash { after_ops: 3, seed: 5 },
            SimOp::Sync,
            SimOp::Intent { ranges: 7, metadata_bytes: 7 },
            SimOp::Sync,
        ],
    ];
    for (index, ops) in sequences.into_iter().enumerate() {
        let mut options = Options::default();
        options.segment_size_bytes = 1024;
        options.retain_batches = 1;
        let mut sim = Sim::new(options).unwrap();
        for op in ops {
            sim.step(op).unwrap_or_else(|f| panic!("sequence {index}: {f}"));
        }
        sim.finish(index as u64).unwrap_or_else(|f| panic!("sequence {index}: {f}"));
    }
}
