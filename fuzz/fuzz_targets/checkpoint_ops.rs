//! Structured sequences of appends, commits, snapshots, power failures (armed at any storage
//! operation), process kills and failing syncs, run against the real log over the
//! fault-injecting memory storage and checked after every restart against a model: nothing
//! acknowledged is lost, nothing recovered differs from what was appended, the rebuilt state
//! matches, recovery is idempotent, and a failed sync poisons the log.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sluice_checkpoint::testing::{Sim, SimOp};
use sluice_checkpoint::Options;

#[derive(Arbitrary, Debug)]
enum Op {
    Intent { ranges: u8, metadata_bytes: u16 },
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
struct Input {
    segment_kib: u8,
    retain_batches: u8,
    final_seed: u64,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    let options = Options {
        segment_size_bytes: 1024 * (1 + u64::from(input.segment_kib % 64)),
        retain_batches: 1 + usize::from(input.retain_batches % 8),
        ..Options::default()
    };
    let mut sim = Sim::new(options).unwrap_or_else(|failure| panic!("{failure}"));
    for op in input.ops.iter().take(512) {
        sim.step(op.into()).unwrap_or_else(|failure| panic!("{failure}"));
    }
    sim.finish(input.final_seed).unwrap_or_else(|failure| panic!("{failure}"));
});
