//! The fuzz targets' bodies, so that the regression tests can replay every input a fuzzer once
//! crashed on (`fuzz/regressions/checkpoint_*`) through exactly the same code. Each takes the raw
//! fuzzer input and panics when the property fails.
#![allow(clippy::panic)] // a failed property must abort the fuzz run

use std::collections::BTreeMap;

use arbitrary::{Arbitrary, Unstructured};

use super::{check_recovery, fix_checksums, Sim, SimOp};
use crate::Options;

/// `checkpoint_recover`: recovery over arbitrary bytes never panics, and recovering, repairing and
/// recovering again changes nothing (in both recovery modes).
///
/// Byte 0 picks the number of segments (1 to 4) and, with its top bit, whether the segment and
/// record CRCs are recomputed first (otherwise the checksums hide the record and payload decoders
/// from the fuzzer). The rest of the input is split evenly into the segments.
pub fn recover(data: &[u8]) {
    let Some((&control, rest)) = data.split_first() else { return };
    let count = usize::from(control & 0x3) + 1;
    let chunk = rest.len().div_ceil(count).max(1);
    let mut segments: BTreeMap<u64, Vec<u8>> =
        rest.chunks(chunk).enumerate().map(|(i, bytes)| (i as u64, bytes.to_vec())).collect();
    if control & 0x80 != 0 {
        segments.values_mut().for_each(|bytes| fix_checksums(bytes));
    }
    if let Err(problem) = check_recovery(&segments) {
        panic!("{problem}");
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Intent { ranges: u8, metadata_bytes: u16 },
    IntentNext { ranges: u8, metadata_bytes: u16 },
    Commit { delta_bytes: u16, marker_bytes: u8 },
    Snapshot { padding_bytes: u16 },
    Sync,
    ArmCrash { after_ops: u16, seed: u64 },
    PowerLoss { seed: u64 },
    Kill,
    FailSync { after_syncs: u8, seed: u64 },
}

impl From<&Op> for SimOp {
    fn from(op: &Op) -> Self {
        match *op {
            Op::Intent { ranges, metadata_bytes } => SimOp::Intent { ranges: ranges % 8, metadata_bytes },
            Op::IntentNext { ranges, metadata_bytes } => SimOp::IntentNext { ranges: ranges % 8, metadata_bytes },
            Op::Commit { delta_bytes, marker_bytes } => SimOp::Commit { delta_bytes, marker_bytes },
            Op::Snapshot { padding_bytes } => SimOp::Snapshot { padding_bytes },
            Op::Sync => SimOp::Sync,
            Op::ArmCrash { after_ops, seed } => SimOp::ArmCrash { after_ops, seed },
            Op::PowerLoss { seed } => SimOp::PowerLoss { seed },
            Op::Kill => SimOp::Kill,
            Op::FailSync { after_syncs, seed } => SimOp::FailSync { after_syncs, seed },
        }
    }
}

#[derive(Arbitrary, Debug)]
struct OpsInput {
    segment_kib: u8,
    retain_batches: u8,
    final_seed: u64,
    ops: Vec<Op>,
}

/// `checkpoint_ops`: a structured sequence of appends, commits, snapshots, power failures, kills
/// and failing syncs, run against the real log over the fault-injecting memory storage and checked
/// after every restart against a model (nothing acknowledged lost, nothing recovered wrong, state
/// rebuilt, recovery idempotent, a failed sync poisons).
pub fn ops(data: &[u8]) {
    let Ok(input) = OpsInput::arbitrary_take_rest(Unstructured::new(data)) else { return };
    let options = Options {
        segment_size_bytes: 1024 * (1 + u64::from(input.segment_kib % 64)),
        retain_batches: 1 + usize::from(input.retain_batches % 8),
        // From 1 KiB (snapshots in parts, some intents and commits refused) to 32 KiB.
        max_record_bytes: 1024 * (1 + u64::from(input.segment_kib >> 6) * 10),
        ..Options::default()
    };
    let mut sim = Sim::new(options).unwrap_or_else(|failure| panic!("{failure}"));
    for op in input.ops.iter().take(512) {
        sim.step(op.into()).unwrap_or_else(|failure| panic!("{failure}"));
    }
    sim.finish(input.final_seed).unwrap_or_else(|failure| panic!("{failure}"));
}
