//! Simulated power loss: seeded crash points over the fault-injecting memory storage.
//!
//! Each seed runs a random engine workload (intents, commits, snapshots, syncs, kills, failing
//! syncs) against the real log, with a power failure armed at a random storage operation, and
//! ends with a final power loss; every restart is checked against a model (see
//! `sluice_checkpoint::testing::Sim`). A failure prints its seed; `run_seed(seed, STEPS)`
//! replays it exactly.

// Tests print their seeds and counts: that output is how a failure is replayed.
#![allow(clippy::print_stdout)]

use sluice_checkpoint::testing::{run_seed, SimReport};

/// Steps of each seeded workload.
const STEPS: usize = 150;

fn run_seeds(seeds: std::ops::Range<u64>) -> SimReport {
    let mut total = SimReport::default();
    for seed in seeds {
        let report = run_seed(seed, STEPS).unwrap_or_else(|failure| panic!("{failure}"));
        total.restarts += report.restarts;
        total.power_losses += report.power_losses;
        total.acknowledged_commits += report.acknowledged_commits;
        total.appends += report.appends;
        total.compacted_restarts += report.compacted_restarts;
        total.snapshots_in_parts += report.snapshots_in_parts;
    }
    total
}

/// Splits the seeds over two threads (the CI machine has two cores).
fn run_parallel(count: u64) -> SimReport {
    let half = count / 2;
    let (a, b) = std::thread::scope(|scope| {
        let first = scope.spawn(|| run_seeds(0..half));
        let second = scope.spawn(|| run_seeds(half..count));
        (first.join().unwrap(), second.join().unwrap())
    });
    SimReport {
        restarts: a.restarts + b.restarts,
        power_losses: a.power_losses + b.power_losses,
        acknowledged_commits: a.acknowledged_commits + b.acknowledged_commits,
        appends: a.appends + b.appends,
        compacted_restarts: a.compacted_restarts + b.compacted_restarts,
        snapshots_in_parts: a.snapshots_in_parts + b.snapshots_in_parts,
    }
}

#[test]
fn ten_thousand_seeded_crash_points_lose_no_acknowledged_commit() {
    let report = run_parallel(10_000);
    println!("{report:?}");
    // Every seed ends in at least one power loss; most also crash at their armed operation.
    assert!(report.power_losses >= 10_000, "{report:?}");
    assert!(report.acknowledged_commits > 10_000, "the workload must commit: {report:?}");
    assert!(report.compacted_restarts > 1_000, "compaction must be exercised: {report:?}");
    assert!(report.snapshots_in_parts > 1_000, "snapshots in parts must be exercised: {report:?}");
}

/// More crash points: `SLUICE_TORTURE_CRASHES=1000000 cargo test --release -p
/// sluice-checkpoint --test power_loss -- --ignored` (or `scripts/checkpoint-torture.sh`).
#[test]
#[ignore = "long campaign; run through scripts/checkpoint-torture.sh"]
fn many_seeded_crash_points_from_env() {
    let count = std::env::var("SLUICE_TORTURE_CRASHES").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000u64);
    let report = run_parallel(count);
    println!("{count} seeds: {report:?}");
    assert!(report.power_losses >= count);
}
