//! The batch protocol: which record may follow which, and what recovery hands the engine.
//!
//! One state machine, [`Ledger`], serves both sides: the writer checks every append against it
//! (an invalid append is refused before anything is written) and recovery replays the log
//! through it (a record that breaks it is [`Error::Inconsistent`]). The rules:
//!
//! * an intent's batch id is above the last committed one and not below any pending intent
//!   (writing the same id again re-plans that batch and supersedes the earlier intent);
//! * a commit completes the oldest pending intent;
//! * a snapshot captures the state of the last committed batch; one too large for a record is
//!   written as parts `0..parts` in a row, and counts once its last part is in the log (parts
//!   left unfinished by a crash are ignored; anything else appended ends them). Replaying a
//!   compacted log, the first parts of an older snapshot may be gone; the rest are ignored.
//!
//! The ledger also knows what compaction may delete: nothing the latest durable snapshot or the
//! last `retain_batches` committed batches still need.

use std::collections::{BTreeMap, VecDeque};

use crate::error::{Error, Result};
use crate::format::{segment_file_name, RecordKind};
use crate::payload::{batch_id_of, decode_commit, decode_intent, decode_snapshot, decode_snapshot_part};
use crate::payload::{BatchCommit, BatchIntent, Snapshot};
use crate::recover::{RecordView, Recovery, StopPoint};

/// An append, as the ledger sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BatchOp {
    Intent(u64),
    Commit(u64),
    Snapshot(u64),
    /// Part `part` of the `parts` records of a snapshot of `batch`.
    SnapshotPart {
        batch: u64,
        part: u32,
        parts: u32,
    },
}

impl BatchOp {
    fn of_record(kind: RecordKind, payload: &[u8]) -> Result<Self, String> {
        Ok(match kind {
            RecordKind::Intent => Self::Intent(batch_id_of(payload)?),
            RecordKind::Commit => Self::Commit(batch_id_of(payload)?),
            RecordKind::Snapshot => Self::Snapshot(batch_id_of(payload)?),
            RecordKind::SnapshotPart => {
                let part = decode_snapshot_part(payload)?;
                Self::SnapshotPart { batch: part.batch_id, part: part.part, parts: part.parts }
            }
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct CommittedMark {
    intent_seq: Option<u64>,
    commit_seq: u64,
}

/// The parts of a snapshot written so far.
#[derive(Debug, Clone, Copy)]
struct PartialSnapshot {
    batch: u64,
    parts: u32,
    next_part: u32,
    first_seq: u64,
    /// False when the log starts after its first part (compaction deleted it, keeping a later
    /// snapshot): the parts are ignored.
    whole: bool,
}

#[derive(Debug, Clone, Copy)]
struct SnapshotMark {
    /// Oldest record the snapshot does not replace: itself, or an intent still pending when it
    /// was written (its commit comes later and needs it).
    keep_from: u64,
}

/// Batch protocol state; see the module docs.
#[derive(Debug, Clone)]
pub(crate) struct Ledger {
    /// False while replaying a compacted log, whose oldest commits may have lost their intents.
    require_intents: bool,
    compacted: bool,
    retain_batches: usize,
    last_committed: Option<u64>,
    /// Pending batch id -> sequence number of its latest intent.
    pending: BTreeMap<u64, u64>,
    recent: VecDeque<CommittedMark>,
    snapshot: Option<SnapshotMark>,
    partial: Option<PartialSnapshot>,
}

impl Ledger {
    pub(crate) fn new(retain_batches: usize, compacted: bool) -> Self {
        Self {
            require_intents: !compacted,
            compacted,
            retain_batches: retain_batches.max(1),
            last_committed: None,
            pending: BTreeMap::new(),
            recent: VecDeque::new(),
            snapshot: None,
            partial: None,
        }
    }

    /// From now on every commit needs its intent (set once replay is over).
    pub(crate) fn require_intents(&mut self) {
        self.require_intents = true;
    }

    /// Whether `op` may be appended now; the error says why not.
    pub(crate) fn check(&self, op: BatchOp) -> Result<(), String> {
        match op {
            BatchOp::Intent(batch) => self.check_intent(batch),
            BatchOp::Commit(batch) => self.check_commit(batch),
            BatchOp::Snapshot(batch) => self.check_snapshot(batch),
            BatchOp::SnapshotPart { batch, part, parts } => self.check_snapshot_part(batch, part, parts),
        }
    }

    fn check_intent(&self, batch: u64) -> Result<(), String> {
        self.check_not_committed(batch)?;
        match self.pending.last_key_value() {
            Some((&newest, _)) if newest > batch => {
                Err(format!("batch {batch} is older than the pending batch {newest}; plan batches in id order"))
            }
            _ => Ok(()),
        }
    }

    fn check_commit(&self, batch: u64) -> Result<(), String> {
        self.check_not_committed(batch)?;
        match self.pending.first_key_value() {
            Some((&oldest, _)) if oldest == batch => Ok(()),
            // Replaying a compacted log: a batch older than every pending one had its intent
            // in a deleted segment (compaction keeps the intents of the retained batches and of
            // the batches pending at the snapshot, but with pipelined intents it may delete an
            // older batch's intent while keeping its commit).
            Some((&oldest, _)) if !self.require_intents && batch < oldest => Ok(()),
            Some((&oldest, _)) => Err(format!("batch {batch} cannot commit before the older pending batch {oldest}")),
            None if !self.require_intents => Ok(()),
            None => Err(format!("batch {batch} has no intent; append its intent first")),
        }
    }

    fn check_snapshot(&self, batch: u64) -> Result<(), String> {
        match self.last_committed {
            Some(last) if last == batch => Ok(()),
            None if self.compacted => Ok(()),
            last => Err(format!(
                "a snapshot must hold the state of the last committed batch ({}), not of batch {batch}",
                last.map_or_else(|| "none yet".to_string(), |l| l.to_string())
            )),
        }
    }

    fn check_snapshot_part(&self, batch: u64, part: u32, parts: u32) -> Result<(), String> {
        self.check_snapshot(batch)?;
        match self.partial {
            _ if part == 0 => Ok(()),
            Some(p) if p.batch == batch && p.parts == parts && p.next_part == part => Ok(()),
            None if !self.require_intents => Ok(()),
            Some(p) => Err(format!(
                "snapshot part {part} of {parts} of batch {batch} does not follow the parts written so far \
                 (part {} of {} of batch {} is next)",
                p.next_part, p.parts, p.batch
            )),
            None => {
                Err(format!("snapshot part {part} of {parts} of batch {batch} does not follow its part {}", part - 1))
            }
        }
    }

    fn check_not_committed(&self, batch: u64) -> Result<(), String> {
        match self.last_committed {
            Some(last) if last >= batch => Err(format!("batch {batch} is not after the last committed batch {last}")),
            _ => Ok(()),
        }
    }

    /// Records an op that passed [`Ledger::check`] as record `seq`. True when it made a
    /// snapshot whole (a snapshot record, or a snapshot's last part after all the others).
    pub(crate) fn apply(&mut self, op: BatchOp, seq: u64) -> bool {
        let partial = self.partial.take();
        match op {
            BatchOp::Intent(batch) => {
                self.pending.insert(batch, seq);
            }
            BatchOp::Commit(batch) => {
                let intent_seq = self.pending.remove(&batch);
                self.last_committed = Some(batch);
                self.recent.push_back(CommittedMark { intent_seq, commit_seq: seq });
                while self.recent.len() > self.retain_batches {
                    self.recent.pop_front();
                }
            }
            BatchOp::Snapshot(_) => {
                self.snapshot_complete(seq);
                return true;
            }
            BatchOp::SnapshotPart { batch, part, parts } => {
                let partial = partial.filter(|_| part > 0);
                let first_seq = partial.map_or(seq, |p| p.first_seq);
                let whole = partial.map_or(part == 0, |p| p.whole);
                if part + 1 < parts {
                    self.partial = Some(PartialSnapshot { batch, parts, next_part: part + 1, first_seq, whole });
                } else if whole {
                    self.snapshot_complete(first_seq);
                    return true;
                }
            }
        }
        false
    }

    /// A snapshot whose first record is `first_seq` is whole.
    fn snapshot_complete(&mut self, first_seq: u64) {
        let oldest_pending = self.pending.values().copied().min().unwrap_or(first_seq);
        self.snapshot = Some(SnapshotMark { keep_from: oldest_pending.min(first_seq) });
    }

    /// Records before this sequence number are no longer needed once every record applied so
    /// far is durable. `None` while nothing may be deleted.
    ///
    /// It must be taken together with the durable point it relies on: records applied later
    /// (and not yet durable) must not move it.
    pub(crate) fn compaction_floor(&self) -> Option<u64> {
        let snapshot = self.snapshot?;
        if self.recent.len() < self.retain_batches {
            return None;
        }
        let oldest = self.recent.front()?;
        let retained_from = oldest.intent_seq.unwrap_or(oldest.commit_seq);
        Some(snapshot.keep_from.min(retained_from))
    }
}

/// A committed batch: its plan and its result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedBatch {
    /// The batch's intent (offset ranges and metadata).
    pub intent: BatchIntent,
    /// The batch's commit (state delta and sink markers).
    pub commit: BatchCommit,
}

/// What the engine needs to resume, rebuilt from the log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Recovered {
    /// The last batch whose commit is in the log; the next batch starts at its end offsets.
    pub last_committed: Option<CommittedBatch>,
    /// Intents written after the last commit, oldest first: batches to run again.
    pub pending: Vec<BatchIntent>,
    /// The latest state snapshot.
    pub snapshot: Option<Snapshot>,
    /// Commits after the latest snapshot, oldest first; state = snapshot + these deltas.
    pub deltas: Vec<BatchCommit>,
    /// Intents of the retained committed batches, oldest first, for inspection.
    pub history: Vec<BatchIntent>,
    /// Sequence number of the oldest record still in the log.
    pub start_seq: u64,
    /// Sequence number the next record gets.
    pub next_seq: u64,
    /// The torn tail that recovery cut away (appends never acknowledged by `commit()`).
    pub torn: Option<StopPoint>,
    /// Damage that [`crate::RecoveryMode::TruncateAtDamage`] truncated at; records from here on
    /// were discarded even if they had been committed.
    pub damage: Option<StopPoint>,
    /// Segments deleted by recovery (torn creations, or everything after damage).
    pub removed_segments: Vec<u64>,
}

/// Replays recovered records through the batch protocol into what the engine needs.
///
/// `history_len` is how many committed batches to list in [`Recovered::history`].
pub fn replay(recovery: &Recovery<'_>, history_len: usize) -> Result<Recovered> {
    Ok(replay_with_ledger(recovery, history_len)?.0)
}

/// Records picked in one pass, decoded afterwards so only what is kept gets copied.
#[derive(Default)]
struct Picks<'r, 'a> {
    pending: BTreeMap<u64, &'r RecordView<'a>>,
    last_commit: Option<(&'r RecordView<'a>, Option<&'r RecordView<'a>>)>,
    /// The latest whole snapshot: one record, or its parts in order.
    snapshot: Option<Vec<&'r RecordView<'a>>>,
    /// Parts of a snapshot not yet whole.
    partial: Vec<&'r RecordView<'a>>,
    deltas: Vec<&'r RecordView<'a>>,
    history: VecDeque<Option<&'r RecordView<'a>>>,
}

pub(crate) fn replay_with_ledger(recovery: &Recovery<'_>, history_len: usize) -> Result<(Recovered, Ledger)> {
    let compacted = recovery.start_seq > 0;
    let mut ledger = Ledger::new(history_len, compacted);
    let mut picks = Picks::default();
    for record in &recovery.records {
        let op = BatchOp::of_record(record.kind, record.payload).map_err(|p| inconsistent(record, p))?;
        ledger.check(op).map_err(|p| inconsistent(record, p))?;
        let snapshot_whole = ledger.apply(op, record.seq);
        picks.record(op, record, history_len, snapshot_whole);
    }
    ledger.require_intents();
    if compacted && picks.snapshot.is_none() {
        return Err(missing_snapshot(recovery));
    }
    let recovered = picks.decode(recovery)?;
    Ok((recovered, ledger))
}

impl<'r, 'a> Picks<'r, 'a> {
    /// Picks `record`; `snapshot_whole` is the ledger's word that it made a snapshot whole.
    fn record(&mut self, op: BatchOp, record: &'r RecordView<'a>, history_len: usize, snapshot_whole: bool) {
        match op {
            BatchOp::Intent(batch) => {
                self.pending.insert(batch, record);
            }
            BatchOp::Commit(batch) => {
                let intent = self.pending.remove(&batch);
                self.last_commit = Some((record, intent));
                self.deltas.push(record);
                self.history.push_back(intent);
                while self.history.len() > history_len {
                    self.history.pop_front();
                }
            }
            BatchOp::Snapshot(_) => self.partial.clear(),
            BatchOp::SnapshotPart { part, .. } => {
                if part == 0 {
                    self.partial.clear();
                }
                self.partial.push(record);
            }
        }
        if snapshot_whole {
            let mut records = std::mem::take(&mut self.partial);
            if records.is_empty() {
                records.push(record);
            }
            self.snapshot = Some(records);
            self.deltas.clear();
        }
    }

    fn decode(self, recovery: &Recovery<'_>) -> Result<Recovered> {
        let last_committed = match self.last_commit {
            None => None,
            Some((commit, Some(intent))) => Some(CommittedBatch {
                intent: decode_record(intent, decode_intent)?,
                commit: decode_record(commit, decode_commit)?,
            }),
            Some((commit, None)) => {
                let problem = "the last committed batch has no intent in the log".to_string();
                return Err(inconsistent(commit, problem));
            }
        };
        Ok(Recovered {
            last_committed,
            pending: decode_all(self.pending.into_values(), decode_intent)?,
            snapshot: self.snapshot.map(|records| decode_snapshot_records(&records)).transpose()?,
            deltas: decode_all(self.deltas.into_iter(), decode_commit)?,
            history: decode_all(self.history.into_iter().flatten(), decode_intent)?,
            start_seq: recovery.start_seq,
            next_seq: recovery.next_seq,
            torn: recovery.torn.clone(),
            damage: recovery.damage.clone(),
            removed_segments: recovery.removed.clone(),
        })
    }
}

fn decode_record<T>(record: &RecordView<'_>, decode: fn(&[u8]) -> Result<T, String>) -> Result<T> {
    decode(record.payload).map_err(|p| inconsistent(record, format!("payload does not decode: {p}")))
}

/// A snapshot from its one record, or from its parts joined in order.
fn decode_snapshot_records(records: &[&RecordView<'_>]) -> Result<Snapshot> {
    match records {
        [single] if single.kind == RecordKind::Snapshot => decode_record(single, decode_snapshot),
        parts => {
            let mut snapshot = Snapshot::default();
            snapshot.state.reserve(parts.iter().map(|part| part.payload.len()).sum());
            for part in parts {
                let decoded = decode_snapshot_part(part.payload).map_err(|p| inconsistent(part, p))?;
                snapshot.batch_id = decoded.batch_id;
                snapshot.state.extend_from_slice(decoded.piece);
            }
            Ok(snapshot)
        }
    }
}

fn decode_all<'r, 'a: 'r, T>(
    records: impl Iterator<Item = &'r RecordView<'a>>,
    decode: fn(&[u8]) -> Result<T, String>,
) -> Result<Vec<T>> {
    records.map(|record| decode_record(record, decode)).collect()
}

fn inconsistent(record: &RecordView<'_>, problem: String) -> Error {
    Error::Inconsistent {
        segment_id: record.segment_id,
        file: segment_file_name(record.segment_id),
        offset: record.offset,
        seq: record.seq,
        problem,
    }
}

fn missing_snapshot(recovery: &Recovery<'_>) -> Error {
    let segment_id = recovery.segments.first().map(|s| s.id).unwrap_or_default();
    Error::Corrupt {
        segment_id,
        file: segment_file_name(segment_id),
        offset: 0,
        problem: format!(
            "the log starts at record {} (older segments were deleted) but holds no snapshot \
             to rebuild the state from; segments were removed by something other than compaction",
            recovery.start_seq
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_follow_intents_in_order() {
        let mut ledger = Ledger::new(3, false);
        assert!(ledger.check(BatchOp::Commit(1)).unwrap_err().contains("no intent"));
        ledger.apply(BatchOp::Intent(1), 0);
        ledger.apply(BatchOp::Intent(2), 1);
        assert!(ledger.check(BatchOp::Intent(0)).is_err());
        assert!(ledger.check(BatchOp::Commit(2)).unwrap_err().contains("older pending batch 1"));
        ledger.apply(BatchOp::Commit(1), 2);
        assert!(ledger.check(BatchOp::Intent(1)).unwrap_err().contains("last committed"));
        assert!(ledger.check(BatchOp::Snapshot(2)).is_err());
        assert!(ledger.check(BatchOp::Snapshot(1)).is_ok());
        assert!(ledger.check(BatchOp::Intent(2)).is_ok(), "re-planning a pending batch is allowed");
    }

    #[test]
    fn compaction_keeps_pending_intents_and_retained_batches() {
        let mut ledger = Ledger::new(1, false);
        ledger.apply(BatchOp::Intent(1), 0);
        ledger.apply(BatchOp::Commit(1), 1);
        ledger.apply(BatchOp::Intent(2), 2);
        assert_eq!(ledger.compaction_floor(), None, "no snapshot yet");
        ledger.apply(BatchOp::Snapshot(1), 3);
        // Batch 1 is retained (its intent is record 0), so nothing goes yet.
        assert_eq!(ledger.compaction_floor(), Some(0));
        ledger.apply(BatchOp::Commit(2), 4);
        // Pending intent 2 (record 2) was still needed by the snapshot; retention keeps batch 2.
        assert_eq!(ledger.compaction_floor(), Some(2));
    }

    fn part(batch: u64, part: u32, parts: u32) -> BatchOp {
        BatchOp::SnapshotPart { batch, part, parts }
    }

    #[test]
    fn a_snapshot_in_parts_counts_once_whole_and_keeps_its_first_part() {
        let mut ledger = Ledger::new(1, false);
        ledger.apply(BatchOp::Intent(1), 0);
        ledger.apply(BatchOp::Commit(1), 1);
        assert!(ledger.check(part(1, 1, 3)).unwrap_err().contains("does not follow its part 0"));
        assert!(ledger.check(part(2, 0, 3)).is_err(), "not the last committed batch");
        ledger.apply(part(1, 0, 3), 2);
        assert!(ledger.check(part(1, 2, 3)).unwrap_err().contains("part 1 of 3 of batch 1 is next"));
        assert!(ledger.check(part(1, 1, 4)).is_err(), "a different count");
        ledger.apply(part(1, 1, 3), 3);
        assert_eq!(ledger.compaction_floor(), None, "not whole yet");
        ledger.apply(part(1, 2, 3), 4);
        assert_eq!(ledger.compaction_floor(), Some(0), "whole; batch 1 is retained from its intent");
        ledger.apply(BatchOp::Intent(2), 5);
        ledger.apply(BatchOp::Commit(2), 6);
        assert_eq!(ledger.compaction_floor(), Some(2), "the snapshot needs its first part");
    }

    #[test]
    fn parts_left_unfinished_are_ended_by_the_next_record_and_ignored() {
        let mut ledger = Ledger::new(1, false);
        ledger.apply(BatchOp::Intent(1), 0);
        ledger.apply(BatchOp::Commit(1), 1);
        ledger.apply(part(1, 0, 3), 2);
        ledger.apply(part(1, 1, 3), 3);
        // The writer crashed; after restart it goes on with the next batch.
        ledger.apply(BatchOp::Intent(2), 4);
        assert!(ledger.check(part(1, 2, 3)).is_err(), "the unfinished parts cannot be resumed");
        assert!(ledger.check(part(1, 0, 2)).is_ok(), "a new snapshot of batch 1 may start");
        assert_eq!(ledger.compaction_floor(), None);
    }

    #[test]
    fn a_compacted_replay_ignores_parts_whose_first_part_was_deleted() {
        let mut ledger = Ledger::new(1, true);
        assert!(ledger.check(part(1, 1, 3)).is_ok());
        ledger.apply(part(1, 1, 3), 7);
        ledger.apply(part(1, 2, 3), 8);
        assert_eq!(ledger.snapshot.map(|s| s.keep_from), None, "no snapshot from a part of one");
        ledger.apply(BatchOp::Intent(2), 9);
        ledger.require_intents();
        assert!(ledger.check(part(2, 1, 3)).is_err(), "a live writer writes parts from the first");
    }

    #[test]
    fn compacted_replay_accepts_a_commit_whose_intent_was_deleted_behind_a_pending_one() {
        // The log starts at intent(2): intent(1) was compacted away, commit(1) was kept.
        let mut ledger = Ledger::new(1, true);
        ledger.apply(BatchOp::Intent(2), 3);
        assert!(ledger.check(BatchOp::Commit(1)).is_ok());
        ledger.apply(BatchOp::Commit(1), 4);
        assert!(ledger.check(BatchOp::Commit(2)).is_ok());
        ledger.apply(BatchOp::Commit(2), 5);
        // A live writer (or an uncompacted log) still needs every commit in order.
        let mut live = Ledger::new(1, false);
        live.apply(BatchOp::Intent(1), 0);
        live.apply(BatchOp::Intent(2), 1);
        assert!(live.check(BatchOp::Commit(0)).is_err());
        ledger.require_intents();
        ledger.apply(BatchOp::Intent(4), 6);
        assert!(ledger.check(BatchOp::Commit(3)).is_err());
    }
}
