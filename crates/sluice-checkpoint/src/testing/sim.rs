//! A deterministic simulator: a model engine drives the real [`Log`] over a [`MemStorage`],
//! with power failures, process kills and failing syncs, and every restart is checked.
//!
//! After each crash the simulator checks, against a model of everything appended:
//! * the pure recovery succeeds in strict mode (a crash is never reported as damage);
//! * every recovered record is byte-for-byte the one appended with that sequence number;
//! * every record acknowledged by `commit()` is recovered (unless compaction deleted it);
//! * recovery, applied and run again, finds the same records and nothing to repair;
//! * the state rebuilt from the latest snapshot and the deltas after it equals the model's
//!   state for the last committed batch.
//!
//! It also checks that a failed sync poisons the log and that protocol violations are refused
//! without poisoning it.

use std::collections::BTreeMap;
use std::fmt;

use super::fuzz::apply_repairs;
use super::memory::{DiskImage, MemStorage};
use crate::error::Error;
use crate::format::RecordKind;
use crate::ledger::Recovered;
use crate::log::{Log, Options};
use crate::payload::{encode_commit, encode_intent, encode_snapshot, encode_snapshot_part, snapshot_parts};
use crate::payload::{BatchCommit, BatchIntent, OffsetRange, Snapshot};
use crate::recover::{recover, RecoveryMode, SegmentImage};
use crate::rng::SplitMix64;

/// One step of a simulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimOp {
    /// Plan the next batch (or re-plan the newest pending one).
    Intent {
        /// Number of offset ranges.
        ranges: u8,
        /// Metadata size.
        metadata_bytes: u16,
    },
    /// Plan another batch while the pending ones are still running (pipelined intents).
    IntentNext {
        /// Number of offset ranges.
        ranges: u8,
        /// Metadata size.
        metadata_bytes: u16,
    },
    /// Commit the oldest pending batch; without one, the log must refuse it.
    Commit {
        /// State delta size.
        delta_bytes: u16,
        /// Sink marker size.
        marker_bytes: u8,
    },
    /// Snapshot the state of the last committed batch; without one, the log must refuse it.
    Snapshot {
        /// Extra bytes of state beyond the 8-byte state hash.
        padding_bytes: u16,
    },
    /// `commit()`: make everything durable.
    Sync,
    /// Power fails just before the storage operation this many operations from now.
    ArmCrash {
        /// Operations until the crash (0 means the very next one).
        after_ops: u16,
        /// Seeds the crash's choices of kept, dropped and torn pages.
        seed: u64,
    },
    /// Power fails now.
    PowerLoss {
        /// Seeds the crash's choices.
        seed: u64,
    },
    /// The process is killed now; the page cache survives, and what was not synced stays
    /// unsynced (a later power loss can still lose it unless the next open syncs it).
    Kill,
    /// The sync this many syncs from now fails.
    FailSync {
        /// Syncs until the failing one (0 means the next one).
        after_syncs: u8,
        /// Seeds which of the failed sync's pages reach the disk anyway.
        seed: u64,
    },
}

/// A model violation, with everything needed to replay it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimFailure {
    /// The seed of [`run_seed`], if the run came from one.
    pub seed: Option<u64>,
    /// Index of the step that failed.
    pub step: usize,
    /// What went wrong.
    pub message: String,
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.seed {
            Some(seed) => write!(
                f,
                "simulation seed {seed} failed at step {}: {} (replay: sluice_checkpoint::testing::run_seed({seed}, ..))",
                self.step, self.message
            ),
            None => write!(f, "simulation failed at step {}: {}", self.step, self.message),
        }
    }
}

impl std::error::Error for SimFailure {}

/// Counters of a finished simulation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimReport {
    /// Restarts after a crash or kill, each one checked.
    pub restarts: u64,
    /// Restarts that followed a power failure at an armed operation or an explicit power loss.
    pub power_losses: u64,
    /// Calls to `commit()` that returned Ok.
    pub acknowledged_commits: u64,
    /// Records appended.
    pub appends: u64,
    /// Restarts that found a compacted log (older segments deleted after a snapshot).
    pub compacted_restarts: u64,
    /// Snapshots appended as several records (larger than `Options::max_record_bytes`).
    pub snapshots_in_parts: u64,
}

type Step<T = ()> = Result<T, String>;

/// The model engine and the log under test.
pub struct Sim {
    options: Options,
    storage: MemStorage,
    log: Option<Log<MemStorage>>,
    model: Model,
    report: SimReport,
    step: usize,
}

/// What the model knows: every record appended, what was acknowledged, the engine's state.
#[derive(Default)]
struct Model {
    appended: BTreeMap<u64, (RecordKind, Vec<u8>)>,
    acked_seq: u64,
    next_seq: u64,
    last_committed: Option<u64>,
    /// Pending batches, oldest first.
    pending: Vec<u64>,
    /// State hash after each committed batch.
    states: BTreeMap<u64, u64>,
    state: u64,
}

/// State hash before any batch.
const INITIAL_STATE: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a over the delta, chained from the previous state: order and content both matter.
fn fold_state(state: u64, delta: &[u8]) -> u64 {
    delta.iter().fold(state, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

impl fmt::Debug for Sim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sim").field("step", &self.step).field("report", &self.report).finish()
    }
}

impl Sim {
    /// Opens an empty log over a fresh memory disk.
    pub fn new(options: Options) -> Result<Self, SimFailure> {
        let storage = MemStorage::new();
        let mut sim = Self {
            options,
            storage: storage.clone(),
            log: None,
            model: Model { state: INITIAL_STATE, ..Model::default() },
            report: SimReport::default(),
            step: 0,
        };
        let opened = Log::open_with(storage, sim.options.clone()).map_err(|e| sim.fail(format!("open: {e}")))?;
        sim.log = Some(opened.0);
        Ok(sim)
    }

    /// Runs one step and checks everything it can.
    pub fn step(&mut self, op: SimOp) -> Result<(), SimFailure> {
        self.step += 1;
        self.apply(op).map_err(|message| self.fail(format!("{op:?}: {message}")))
    }

    /// Ends with a power loss and a checked restart; returns the counters.
    pub fn finish(mut self, seed: u64) -> Result<SimReport, SimFailure> {
        self.step(SimOp::PowerLoss { seed })?;
        Ok(self.report)
    }

    fn fail(&self, message: String) -> SimFailure {
        SimFailure { seed: None, step: self.step, message }
    }

    fn apply(&mut self, op: SimOp) -> Step {
        match op {
            SimOp::Intent { ranges, metadata_bytes } => self.intent(ranges, metadata_bytes, false),
            SimOp::IntentNext { ranges, metadata_bytes } => self.intent(ranges, metadata_bytes, true),
            SimOp::Commit { delta_bytes, marker_bytes } => self.commit_batch(delta_bytes, marker_bytes),
            SimOp::Snapshot { padding_bytes } => self.snapshot(padding_bytes),
            SimOp::Sync => self.sync(),
            SimOp::ArmCrash { after_ops, seed } => {
                let mut faults = self.storage.pending_faults();
                faults.crash_at_op = Some(u64::from(after_ops) + 1);
                faults.seed = seed;
                self.storage.set_faults(faults);
                Ok(())
            }
            SimOp::PowerLoss { seed } => self.restart(self.storage.power_loss(seed), true),
            SimOp::Kill if self.storage.has_crashed() => self.restart(self.storage.kill(), false),
            SimOp::Kill => {
                let survivor = self.storage.survivor();
                self.restart_from(self.storage.kill(), Some(survivor), false)
            }
            SimOp::FailSync { after_syncs, seed } => {
                let mut faults = self.storage.pending_faults();
                faults.fail_sync = Some(u64::from(after_syncs) + 1);
                faults.seed = seed;
                self.storage.set_faults(faults);
                Ok(())
            }
        }
    }

    fn log(&self) -> Step<&Log<MemStorage>> {
        self.log.as_ref().ok_or_else(|| "no open log".to_string())
    }

    fn next_batch(&self) -> u64 {
        let newest = self.model.pending.last().copied().or(self.model.last_committed);
        newest.map_or(0, |b| b + 1)
    }

    fn intent(&mut self, ranges: u8, metadata_bytes: u16, pipelined: bool) -> Step {
        let batch_id = match self.model.pending.last() {
            Some(&newest) if !pipelined => newest,
            _ => self.next_batch(),
        };
        let seq = self.model.next_seq;
        let intent = BatchIntent {
            batch_id,
            ranges: (0..ranges)
                .map(|p| OffsetRange {
                    topic: format!("topic-{}", p % 3),
                    partition: i32::from(p),
                    start_offset: (batch_id * 100) as i64,
                    end_offset: (batch_id * 100 + 100) as i64,
                })
                .collect(),
            metadata: pattern(seq, usize::from(metadata_bytes)),
        };
        let bytes = encode_intent(&intent)?.parts().concat();
        let result = self.log()?.append_intent(&intent);
        if self.too_large(&bytes) {
            return self.expect_too_large(result);
        }
        if self.appended(result, RecordKind::Intent, bytes)? && self.model.pending.last() != Some(&batch_id) {
            self.model.pending.push(batch_id);
        }
        Ok(())
    }

    fn commit_batch(&mut self, delta_bytes: u16, marker_bytes: u8) -> Step {
        let seq = self.model.next_seq;
        let batch_id = self.model.pending.first().copied().unwrap_or_else(|| self.next_batch());
        let commit = BatchCommit {
            batch_id,
            state_delta: pattern(seq, usize::from(delta_bytes)),
            sink_markers: pattern(seq ^ 0xff, usize::from(marker_bytes)),
        };
        let result = self.log()?.append_commit(&commit);
        // The size is checked first, then the batch protocol.
        let bytes = encode_commit(&commit)?.parts().concat();
        if self.too_large(&bytes) {
            return self.expect_too_large(result);
        }
        if self.model.pending.is_empty() {
            return self.expect_refusal(result.map(|_| ()));
        }
        // Booked before knowing whether the append worked: a failed append can still land, and
        // if it does not, committing this batch id again overwrites the entry.
        let state = fold_state(self.model.state, &commit.state_delta);
        self.model.states.insert(batch_id, state);
        if self.appended(result, RecordKind::Commit, bytes)? {
            self.model.state = state;
            self.model.last_committed = Some(batch_id);
            self.model.pending.remove(0);
        }
        Ok(())
    }

    fn snapshot(&mut self, padding_bytes: u16) -> Step {
        let seq = self.model.next_seq;
        let mut state = self.model.state.to_le_bytes().to_vec();
        state.extend(pattern(seq, usize::from(padding_bytes)));
        let snapshot = Snapshot { batch_id: self.model.last_committed.unwrap_or(0), state };
        let result = self.log()?.append_snapshot(&snapshot);
        if self.model.last_committed.is_none() {
            return self.expect_refusal(result.map(|_| ()));
        }
        // A snapshot too large for one record is written as parts, one record each.
        let records = match snapshot_parts(&snapshot, self.options.max_record_bytes)? {
            None => vec![(RecordKind::Snapshot, encode_snapshot(&snapshot)?.parts().concat())],
            Some(parts) => parts
                .iter()
                .map(|part| Ok((RecordKind::SnapshotPart, encode_snapshot_part(part)?.parts().concat())))
                .collect::<Step<Vec<_>>>()?,
        };
        let last = records.len() as u64 - 1;
        let result = result.and_then(|seq| match seq.checked_sub(last) {
            Some(first) if first == self.model.next_seq => Ok(first),
            _ => Err(Error::InvalidOperation { problem: format!("snapshot's last record is {seq}") }),
        });
        if let Err(Error::InvalidOperation { problem }) = &result {
            return Err(format!("{} records of a snapshot were not appended as expected: {problem}", records.len()));
        }
        // On a storage failure, the parts before the failing one were appended and it may have
        // landed: every part is booked at the sequence number it would have.
        let mut records = records.into_iter();
        let first = records.next().ok_or("a snapshot of no records")?;
        for (i, (kind, bytes)) in records.enumerate() {
            self.model.appended.insert(self.model.next_seq + 1 + i as u64, (kind, bytes));
        }
        if self.appended(result, first.0, first.1)? {
            self.model.next_seq += last;
            self.report.appends += last;
            self.report.snapshots_in_parts += u64::from(last > 0);
        }
        Ok(())
    }

    fn too_large(&self, payload: &[u8]) -> bool {
        payload.len() as u64 > self.options.max_record_bytes
    }

    fn expect_too_large(&self, result: crate::Result<u64>) -> Step {
        match result {
            Err(Error::RecordTooLarge { .. }) => Ok(()),
            other => Err(format!("a record over max_record_bytes gave {other:?}, not RecordTooLarge")),
        }
    }

    fn sync(&mut self) -> Step {
        let target = self.model.next_seq;
        match self.log()?.commit() {
            Ok(()) => {
                self.model.acked_seq = target;
                self.report.acknowledged_commits += 1;
                Ok(())
            }
            Err(error) => self.storage_failed(error),
        }
    }

    /// Books a successful append in the model; on a storage failure, handles the crash and
    /// returns false.
    fn appended(&mut self, result: crate::Result<u64>, kind: RecordKind, bytes: Vec<u8>) -> Step<bool> {
        match result {
            Ok(seq) if seq == self.model.next_seq => {
                self.model.appended.insert(seq, (kind, bytes));
                self.model.next_seq += 1;
                self.report.appends += 1;
                Ok(true)
            }
            Ok(seq) => Err(format!("append returned sequence {seq}, expected {}", self.model.next_seq)),
            Err(error) => {
                // A failed append may still have reached the disk whole: it can be recovered,
                // so it is what that sequence number may hold.
                self.model.appended.insert(self.model.next_seq, (kind, bytes));
                self.storage_failed(error).map(|()| false)
            }
        }
    }

    fn expect_refusal(&self, result: crate::Result<()>) -> Step {
        match result {
            Err(Error::InvalidOperation { .. }) => self.log()?.stats().map(|_| ()).map_err(|e| e.to_string()),
            Err(error) => Err(format!("expected InvalidOperation, got {error}")),
            Ok(()) => Err("an append that breaks the batch protocol was accepted".into()),
        }
    }

    /// A call failed: it must be the injected fault, the log must now be poisoned, and the
    /// engine restarts (after a failed sync, as after a reboot: the page cache is not trusted).
    fn storage_failed(&mut self, error: Error) -> Step {
        let crashed = self.storage.has_crashed();
        let sync_failed = self.storage.sync_failures() > 0;
        if !crashed && !sync_failed {
            return Err(format!("unexpected error without an injected fault: {error}"));
        }
        if !matches!(error, Error::Storage { .. } | Error::Poisoned { .. }) {
            return Err(format!("a storage fault surfaced as {error}"));
        }
        if !crashed {
            self.check_poisoned()?;
        }
        let seed = self.model.next_seq ^ 0x5eed;
        self.restart(self.storage.power_loss(seed), true)
    }

    fn check_poisoned(&self) -> Step {
        let log = self.log()?;
        let intent = BatchIntent { batch_id: u64::MAX, ..BatchIntent::default() };
        let calls = [log.commit(), log.append_intent(&intent).map(|_| ())];
        for call in calls {
            if !matches!(call, Err(Error::Poisoned { .. })) {
                return Err(format!("after a failed sync a call returned {call:?}, not Poisoned"));
            }
        }
        Ok(())
    }

    /// Restarts from a crash image, checking recovery against the model. Faults armed but not
    /// yet fired carry over, so a crash or a failed sync can also hit `open` itself.
    fn restart(&mut self, image: DiskImage, power_loss: bool) -> Step {
        self.restart_from(image, None, power_loss)
    }

    /// Restarts over `survivor` (a killed process's disk, durable state and all) if given,
    /// else over `image` with everything durable (a reboot).
    fn restart_from(&mut self, image: DiskImage, survivor: Option<MemStorage>, power_loss: bool) -> Step {
        let mut survivor = survivor;
        self.log = None;
        self.report.restarts += 1;
        if power_loss {
            self.report.power_losses += 1;
        }
        let mut image = image;
        let mut faults = self.storage.pending_faults();
        for attempt in 0..4u64 {
            self.check_recovery(&image)?;
            self.storage = survivor.take().unwrap_or_else(|| MemStorage::from_image(&image));
            self.storage.set_faults(std::mem::take(&mut faults));
            match Log::open_with(self.storage.clone(), self.options.clone()) {
                Ok((log, recovered)) => {
                    self.check_recovered(&recovered)?;
                    self.log = Some(log);
                    return Ok(());
                }
                Err(_) if self.storage.has_crashed() || self.storage.sync_failures() > 0 => {
                    self.report.restarts += 1;
                    image = self.storage.power_loss(self.model.next_seq ^ attempt);
                }
                Err(error) => return Err(format!("open after a crash failed: {error}")),
            }
        }
        Err("open kept failing after four restarts".into())
    }

    /// The pure recovery of the image must agree with the model.
    fn check_recovery(&self, image: &DiskImage) -> Step {
        let images: Vec<SegmentImage<'_>> = image.files.iter().map(|(&id, bytes)| SegmentImage { id, bytes }).collect();
        let recovery =
            recover(&images, RecoveryMode::Strict).map_err(|e| format!("recovery of a crash image failed: {e}"))?;
        for record in &recovery.records {
            let expected = self.model.appended.get(&record.seq);
            if expected.map(|(k, b)| (*k, b.as_slice())) != Some((record.kind, record.payload)) {
                return Err(format!("record {} does not match what was appended", record.seq));
            }
        }
        if recovery.next_seq < self.model.acked_seq {
            return Err(format!(
                "records {} to {} were acknowledged but not recovered",
                recovery.next_seq, self.model.acked_seq
            ));
        }
        let repaired = apply_repairs(&image.files, &recovery)?;
        let images: Vec<SegmentImage<'_>> = repaired.iter().map(|(&id, bytes)| SegmentImage { id, bytes }).collect();
        let second = recover(&images, RecoveryMode::Strict).map_err(|e| format!("second recovery failed: {e}"))?;
        if second.records != recovery.records || !second.is_clean() {
            return Err("recovery run twice gave a different result".into());
        }
        Ok(())
    }

    /// What `open` hands the engine must match the model; then the model follows the log.
    fn check_recovered(&mut self, recovered: &Recovered) -> Step {
        let last = recovered.last_committed.as_ref().map(|b| b.commit.batch_id);
        let mut state = match &recovered.snapshot {
            Some(snapshot) => {
                u64::from_le_bytes(snapshot.state.get(..8).and_then(|s| s.try_into().ok()).ok_or("snapshot too short")?)
            }
            None if recovered.start_seq == 0 => INITIAL_STATE,
            None => return Err("a compacted log without a snapshot was accepted".into()),
        };
        for delta in &recovered.deltas {
            state = fold_state(state, &delta.state_delta);
        }
        let expected = last.map_or(Some(INITIAL_STATE), |b| self.model.states.get(&b).copied());
        if expected != Some(state) {
            return Err(format!("state rebuilt for batch {last:?} differs from the model"));
        }
        if recovered.start_seq > 0 {
            self.report.compacted_restarts += 1;
        }
        self.model.appended.split_off(&recovered.next_seq);
        self.model.next_seq = recovered.next_seq;
        self.model.acked_seq = recovered.next_seq;
        self.model.last_committed = last;
        self.model.pending = recovered.pending.iter().map(|i| i.batch_id).collect();
        self.model.state = state;
        if let Some(last) = last {
            self.model.states.split_off(&(last + 1));
        } else {
            self.model.states.clear();
        }
        Ok(())
    }
}

/// Deterministic payload bytes for record `seq`.
fn pattern(seq: u64, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    SplitMix64::new(seq.wrapping_mul(0x9E37_79B9)).fill(&mut bytes);
    bytes
}

/// Runs a random simulation of `steps` operations from `seed`, with one power failure armed at
/// a random storage operation, and a final power loss. Every failure names its seed.
pub fn run_seed(seed: u64, steps: usize) -> Result<SimReport, SimFailure> {
    let mut rng = SplitMix64::new(seed);
    let options = Options {
        segment_size_bytes: 1024 << rng.below(5),
        retain_batches: 1 + rng.below(4) as usize,
        max_record_bytes: 2048 + rng.below(4) * 1024,
        ..Options::default()
    };
    let with_seed = |mut failure: SimFailure| {
        failure.seed = Some(seed);
        failure
    };
    let mut sim = Sim::new(options).map_err(with_seed)?;
    let crash_after = rng.below(steps as u64 * 4) as u16;
    sim.step(SimOp::ArmCrash { after_ops: crash_after, seed: rng.next_u64() }).map_err(with_seed)?;
    for _ in 0..steps {
        let op = random_op(&mut rng);
        sim.step(op).map_err(with_seed)?;
    }
    sim.finish(rng.next_u64()).map_err(with_seed)
}

fn random_op(rng: &mut SplitMix64) -> SimOp {
    match rng.below(100) {
        0..=16 => SimOp::Intent { ranges: rng.below(4) as u8, metadata_bytes: rng.below(64) as u16 },
        17..=24 => SimOp::IntentNext { ranges: rng.below(4) as u8, metadata_bytes: rng.below(900) as u16 },
        25..=54 => SimOp::Commit { delta_bytes: rng.below(1500) as u16, marker_bytes: rng.below(32) as u8 },
        55..=62 => SimOp::Snapshot { padding_bytes: rng.below(6000) as u16 },
        63..=91 => SimOp::Sync,
        92..=93 => SimOp::Kill,
        94..=95 => SimOp::PowerLoss { seed: rng.next_u64() },
        96..=97 => SimOp::ArmCrash { after_ops: rng.below(50) as u16, seed: rng.next_u64() },
        _ => SimOp::FailSync { after_syncs: rng.below(4) as u8, seed: rng.next_u64() },
    }
}
