//! The writer: appends into a mapped segment, group commit, roll-over, compaction, poisoning.
//!
//! Locks: `writer` guards the append position and the batch ledger; `sync` guards the
//! group-commit state. The order is always `writer` then `sync`, and a sync never runs while
//! `writer` is held (except roll-over, which must finish the old segment before the new one
//! exists), so appenders keep appending while a commit's msync is in flight.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, TryLockError};

use crate::error::{Error, Result, StorageOp};
use crate::format::{
    align_up, encode_record_header, read_u32, segment_file_name, RecordKind, RecordMeta, SegmentHeader, FORMAT_VERSION,
    MAX_PAYLOAD_LEN, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use crate::ledger::{replay_with_ledger, BatchOp, Ledger, Recovered};
use crate::payload::{encode_commit, encode_intent, encode_snapshot, encode_snapshot_part, snapshot_parts, Encoded};
use crate::payload::{BatchCommit, BatchIntent, Snapshot};
use crate::recover::{recover, Cut, RecoveryMode, SegmentExtent, SegmentImage};
use crate::storage::{FileStorage, SegmentFile, SegmentSync, Storage};

/// Smallest allowed [`Options::segment_size_bytes`].
pub const MIN_SEGMENT_BYTES: u64 = 1024;

/// Largest allowed [`Options::segment_size_bytes`] (a segment is mapped whole).
pub const MAX_SEGMENT_BYTES: u64 = 1 << 40;

/// Zeros are written in pieces of this size when cutting a torn tail.
const ZERO_PIECE: usize = 64 * 1024;

/// How a log is opened.
///
/// Fields may be added in later versions (`#[non_exhaustive]`): start from [`Default`] and set the
/// fields you need.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Options {
    /// Size of a new segment file, preallocated at creation. A record that does not fit the rest
    /// of the current segment starts a new one (a record larger than this gets a segment of its
    /// own). Default 64 MiB.
    pub segment_size_bytes: u64,
    /// How many committed batches to keep for inspection when a snapshot lets older segments go.
    /// At least 1: the last committed batch's intent is needed to resume. Default 100, like
    /// Spark's `minBatchesToRetain`.
    pub retain_batches: usize,
    /// What to do with damage before the tail. Default [`RecoveryMode::Strict`].
    pub recovery_mode: RecoveryMode,
    /// Largest record payload accepted by the append methods. Default 256 MiB. A snapshot
    /// larger than this is written as several records of at most this size.
    pub max_record_bytes: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            segment_size_bytes: 64 << 20,
            retain_batches: 100,
            recovery_mode: RecoveryMode::Strict,
            max_record_bytes: 256 << 20,
        }
    }
}

impl Options {
    fn validate(&self) -> Result<()> {
        let problem = if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&self.segment_size_bytes) {
            format!(
                "segment_size_bytes is {}, it must be between {MIN_SEGMENT_BYTES} and {MAX_SEGMENT_BYTES}",
                self.segment_size_bytes
            )
        } else if self.retain_batches == 0 {
            "retain_batches is 0; at least the last committed batch must be kept to resume".into()
        } else if !(1..=MAX_PAYLOAD_LEN).contains(&self.max_record_bytes) {
            format!("max_record_bytes is {}, it must be between 1 and {MAX_PAYLOAD_LEN}", self.max_record_bytes)
        } else {
            return Ok(());
        };
        Err(Error::InvalidOptions { problem })
    }
}

/// Counters describing a live log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogStats {
    /// Sequence number the next append gets.
    pub next_seq: u64,
    /// Every record before this one is durable.
    pub durable_seq: u64,
    /// Group-commit syncs performed by `commit()` since open.
    pub commit_syncs: u64,
    /// Segment files in the log.
    pub segments: usize,
    /// Segment removals by compaction that failed (the segment stays and is tried again at a
    /// later commit; a failed removal does not poison the log).
    pub compaction_failures: u64,
    /// Bytes of records appended since open (headers and payloads).
    pub appended_bytes: u64,
}

/// A checkpoint log open for writing.
///
/// All methods take `&self`; share the log between threads with an `Arc`. See the crate docs
/// for an example.
pub struct Log<S: Storage = FileStorage> {
    storage: S,
    options: Options,
    writer: Mutex<Writer<S::Segment>>,
    sync: Mutex<SyncState>,
    synced: Condvar,
    /// Mirror of `SyncState::durable_seq`, read without a lock to stamp record headers.
    durable_seq: AtomicU64,
    /// Held while deleting segments, so removals stay oldest first across threads.
    compaction: Mutex<()>,
    compaction_failures: AtomicU64,
    appended_bytes: AtomicU64,
    poison: OnceLock<Poison>,
}

struct Writer<G: SegmentFile> {
    active: Option<Active<G>>,
    /// Every segment of the log, oldest first, the active one last.
    segments: VecDeque<SegmentMeta>,
    next_seq: u64,
    ledger: Ledger,
}

struct Active<G> {
    id: u64,
    /// Format version in the segment's header.
    version: u32,
    segment: G,
    write_pos: u64,
    synced_pos: u64,
}

#[derive(Debug, Clone, Copy)]
struct SegmentMeta {
    id: u64,
    first_seq: u64,
}

struct SyncState {
    durable_seq: u64,
    leader: bool,
    syncs: u64,
}

#[derive(Debug)]
struct Poison {
    op: StorageOp,
    target: String,
    cause: String,
}

impl Log<FileStorage> {
    /// Opens (creating if needed) the log in `dir`, takes its writer lock, and recovers it.
    ///
    /// Returns the log and what the engine needs to resume.
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<(Self, Recovered)> {
        Self::open_with(FileStorage::open(dir)?, options)
    }
}

impl<S: Storage> Log<S> {
    /// Opens the log held by `storage`: recovers it, cuts a torn tail, removes segments whose
    /// creation was torn, and makes what it recovered durable before returning.
    pub fn open_with(storage: S, options: Options) -> Result<(Self, Recovered)> {
        options.validate()?;
        let mut ids = storage
            .list_segments()
            .map_err(|source| storage_error(StorageOp::ListSegments, storage.location(), source))?;
        ids.sort_unstable();
        let mut handles = Vec::with_capacity(ids.len());
        for &id in &ids {
            let handle = storage
                .open_segment(id)
                .map_err(|source| storage_error(StorageOp::OpenSegment, target(&storage, id), source))?;
            handles.push((id, handle));
        }
        let (recovered, ledger, plan) = recover_handles(&storage, &mut handles, &options)?;
        let writer = apply_plan(&storage, plan, handles, ledger)?;
        let durable = writer.next_seq;
        let log = Self {
            storage,
            options,
            writer: Mutex::new(writer),
            sync: Mutex::new(SyncState { durable_seq: durable, leader: false, syncs: 0 }),
            synced: Condvar::new(),
            durable_seq: AtomicU64::new(durable),
            compaction: Mutex::new(()),
            compaction_failures: AtomicU64::new(0),
            appended_bytes: AtomicU64::new(0),
            poison: OnceLock::new(),
        };
        Ok((log, recovered))
    }

    /// Appends a batch intent (not durable until [`Log::commit`]). Returns its sequence number.
    ///
    /// The batch id must be above the last committed one and not below any pending intent.
    pub fn append_intent(&self, intent: &BatchIntent) -> Result<u64> {
        let encoded = encode_intent(intent);
        self.append(BatchOp::Intent(intent.batch_id), RecordKind::Intent, encoded)
    }

    /// Appends a batch commit (not durable until [`Log::commit`]). Returns its sequence number.
    ///
    /// The batch must be the oldest one with an intent and no commit.
    pub fn append_commit(&self, commit: &BatchCommit) -> Result<u64> {
        let encoded = encode_commit(commit);
        self.append(BatchOp::Commit(commit.batch_id), RecordKind::Commit, encoded)
    }

    /// Appends a state snapshot of the last committed batch (not durable until
    /// [`Log::commit`]). Once it is durable, segments it makes unnecessary are deleted, keeping
    /// [`Options::retain_batches`] committed batches.
    ///
    /// A snapshot larger than [`Options::max_record_bytes`] is written as several records in a
    /// row, so state of any size can be snapshotted and compaction keeps working; recovery
    /// counts it only once every part is in the log. Returns the sequence number of its last
    /// record.
    pub fn append_snapshot(&self, snapshot: &Snapshot) -> Result<u64> {
        let parts = snapshot_parts(snapshot, self.options.max_record_bytes)
            .map_err(|problem| Error::InvalidOperation { problem })?;
        let Some(parts) = parts else {
            let encoded = encode_snapshot(snapshot);
            return self.append(BatchOp::Snapshot(snapshot.batch_id), RecordKind::Snapshot, encoded);
        };
        self.check_poison()?;
        // One hold of the lock for every part: nothing else gets between them.
        let mut writer = self.lock_writer()?;
        let mut last = None;
        for part in &parts {
            let op = BatchOp::SnapshotPart { batch: part.batch_id, part: part.part, parts: part.parts };
            let encoded = encode_snapshot_part(part).map_err(|problem| Error::InvalidOperation { problem })?;
            last = Some(self.append_locked(&mut writer, op, RecordKind::SnapshotPart, &encoded)?);
        }
        last.ok_or_else(|| Error::InvalidOperation { problem: "a snapshot split into no parts".into() })
    }

    /// Creates the segment the next record goes to if there is none yet (a new log), so that
    /// the first append does not pay for it: a preallocated file, a file and a directory sync.
    /// Can run on another thread while the caller works out that first record.
    pub fn prepare(&self) -> Result<()> {
        self.check_poison()?;
        let mut writer = self.lock_writer()?;
        self.check_poison()?;
        if writer.active.is_none() {
            self.roll(&mut writer, RECORD_HEADER_LEN as u64)?;
        }
        Ok(())
    }

    /// Makes every record appended before this call durable, and returns only then.
    ///
    /// Concurrent callers share syncs (group commit): one thread syncs everything appended so
    /// far while the others wait for it, and appends go on meanwhile. A failed sync poisons the
    /// log; this call then returns [`Error::Storage`] and every later call [`Error::Poisoned`].
    ///
    /// The thread that synced then deletes the segments a durable snapshot made unnecessary,
    /// after the waiting callers were released. A failed deletion is counted in
    /// [`LogStats::compaction_failures`] and retried at a later commit; a failed directory
    /// fsync after a deletion poisons the log (the records this call waited for are durable
    /// even then).
    pub fn commit(&self) -> Result<()> {
        self.check_poison()?;
        let target = self.lock_writer()?.next_seq;
        loop {
            if !self.become_leader(target)? {
                return Ok(());
            }
            let outcome = self.lead();
            {
                let mut state = self.lock_sync()?;
                state.leader = false;
                state.syncs += 1;
                if let Ok((durable, _)) = outcome {
                    self.advance_durable(&mut state, durable);
                }
            }
            self.synced.notify_all();
            if let (_, Some(floor)) = outcome? {
                self.compact(floor)?;
            }
        }
    }

    /// Current counters.
    pub fn stats(&self) -> Result<LogStats> {
        let (next_seq, segments) = {
            let writer = self.lock_writer()?;
            (writer.next_seq, writer.segments.len())
        };
        let state = self.lock_sync()?;
        Ok(LogStats {
            next_seq,
            durable_seq: state.durable_seq,
            commit_syncs: state.syncs,
            segments,
            compaction_failures: self.compaction_failures.load(Ordering::Relaxed),
            appended_bytes: self.appended_bytes.load(Ordering::Relaxed),
        })
    }

    /// The storage the log runs on.
    pub fn storage(&self) -> &S {
        &self.storage
    }

    fn append(&self, op: BatchOp, kind: RecordKind, encoded: Result<Encoded<'_>, String>) -> Result<u64> {
        self.check_poison()?;
        let encoded = encoded.map_err(|problem| Error::InvalidOperation { problem })?;
        let mut writer = self.lock_writer()?;
        self.append_locked(&mut writer, op, kind, &encoded)
    }

    fn append_locked(
        &self,
        writer: &mut MutexGuard<'_, Writer<S::Segment>>,
        op: BatchOp,
        kind: RecordKind,
        encoded: &Encoded<'_>,
    ) -> Result<u64> {
        let payload_len = encoded.len();
        if payload_len > self.options.max_record_bytes {
            let limit = self.options.max_record_bytes;
            return Err(Error::RecordTooLarge { bytes: payload_len, limit });
        }
        let parts = encoded.parts();
        // Again under the lock: a commit on another thread may have failed meanwhile.
        self.check_poison()?;
        writer.ledger.check(op).map_err(|problem| Error::InvalidOperation { problem })?;
        let Some(after) = writer.next_seq.checked_add(1) else {
            let problem = "the log's sequence numbers are exhausted (the next one would pass u64::MAX)".into();
            return Err(Error::InvalidOperation { problem });
        };
        let frame_len = RECORD_HEADER_LEN as u64 + payload_len;
        if writer.needs_roll(frame_len, kind) {
            self.roll(writer, frame_len)?;
        }
        let seq = writer.next_seq;
        let durable_seq = self.durable_seq.load(Ordering::Acquire).min(seq);
        let meta = RecordMeta { kind, seq, durable_seq };
        let header = encode_record_header(meta, &parts)
            .ok_or(Error::RecordTooLarge { bytes: payload_len, limit: MAX_PAYLOAD_LEN })?;
        self.write_frame(writer, &header, &parts, frame_len)?;
        self.appended_bytes.fetch_add(frame_len, Ordering::Relaxed);
        writer.ledger.apply(op, seq);
        writer.next_seq = after;
        Ok(seq)
    }

    fn write_frame(
        &self,
        writer: &mut Writer<S::Segment>,
        header: &[u8],
        parts: &[&[u8]],
        frame_len: u64,
    ) -> Result<()> {
        let Some(active) = writer.active.as_mut() else {
            return Err(Error::InvalidOperation { problem: "no active segment after roll-over".into() });
        };
        let start = active.write_pos;
        let mut at = start;
        for piece in std::iter::once(header).chain(parts.iter().copied()).filter(|p| !p.is_empty()) {
            active
                .segment
                .write(at, piece)
                .map_err(|source| self.poison(StorageOp::Write, target(&self.storage, active.id), source))?;
            at += piece.len() as u64;
        }
        let end = start + frame_len;
        active.write_pos = align_up(end).map_or(end, |aligned| aligned.min(active.segment.len()));
        Ok(())
    }

    /// Finishes the active segment (synced in full, so a later segment proves it durable) and
    /// creates the next one, durable before any record goes in.
    fn roll(&self, writer: &mut Writer<S::Segment>, frame_len: u64) -> Result<()> {
        let id = match writer.segments.back() {
            None => 0,
            Some(last) => last.id.checked_add(1).ok_or_else(|| Error::InvalidOperation {
                problem: format!("segment ids are exhausted: {} is the last possible one", segment_file_name(last.id)),
            })?,
        };
        if let Some(active) = writer.active.take() {
            if active.write_pos > active.synced_pos {
                let len = active.write_pos - active.synced_pos;
                active
                    .segment
                    .syncer()
                    .sync_range(active.synced_pos, len)
                    .map_err(|source| self.poison(StorageOp::RollSync, target(&self.storage, active.id), source))?;
            }
            let mut state = self.lock_sync()?;
            self.advance_durable(&mut state, writer.next_seq);
        }
        let len = segment_len(self.options.segment_size_bytes, frame_len);
        let header = SegmentHeader { segment_id: id, first_seq: writer.next_seq }.encode();
        let name = target(&self.storage, id);
        let segment = self
            .storage
            .create_segment(id, len, &header)
            .map_err(|source| self.poison(StorageOp::CreateSegment, name.clone(), source))?;
        segment.syncer().sync_file().map_err(|source| self.poison(StorageOp::FileSync, name, source))?;
        self.storage.sync_dir().map_err(|source| self.poison(StorageOp::DirSync, self.storage.location(), source))?;
        let first_seq = writer.next_seq;
        writer.segments.push_back(SegmentMeta { id, first_seq });
        let start = SEGMENT_HEADER_LEN as u64;
        writer.active = Some(Active { id, version: FORMAT_VERSION, segment, write_pos: start, synced_pos: start });
        Ok(())
    }

    /// Waits until `target` is durable (false) or this thread should sync (true).
    fn become_leader(&self, target: u64) -> Result<bool> {
        let mut state = self.lock_sync()?;
        loop {
            self.check_poison()?;
            if state.durable_seq >= target {
                return Ok(false);
            }
            if !state.leader {
                state.leader = true;
                return Ok(true);
            }
            state = self.synced.wait(state).map_err(|_| lock_poisoned())?;
        }
    }

    /// Syncs everything appended so far; returns the new durable sequence number and the
    /// compaction floor as of that point.
    ///
    /// The floor is taken in the same critical section as the durable point: records appended
    /// by other threads during the sync are not durable, so they must not count (a commit that
    /// only they retain would let compaction delete the last durable one).
    fn lead(&self) -> Result<(u64, Option<u64>)> {
        let (syncer, id, from, to, durable, floor) = {
            let writer = self.lock_writer()?;
            let floor = writer.ledger.compaction_floor();
            let Some(active) = &writer.active else {
                return Ok((writer.next_seq, floor));
            };
            let syncer = active.segment.syncer();
            (syncer, active.id, active.synced_pos, active.write_pos, writer.next_seq, floor)
        };
        if to > from {
            syncer
                .sync_range(from, to - from)
                .map_err(|source| self.poison(StorageOp::CommitSync, target(&self.storage, id), source))?;
        }
        {
            let mut writer = self.lock_writer()?;
            if let Some(active) = writer.active.as_mut().filter(|a| a.id == id) {
                active.synced_pos = active.synced_pos.max(to);
            }
        }
        Ok((durable, floor))
    }

    /// Deletes the segments wholly before `floor` (which needs only durable records), oldest
    /// first, each deletion made durable before the next so the log stays contiguous.
    ///
    /// Runs after the commit's waiters were released. If another thread is compacting, this
    /// one leaves it to that thread (or to the next commit). A failed removal leaves the
    /// segment in place and is retried later; a failed directory fsync poisons the log.
    fn compact(&self, floor: u64) -> Result<()> {
        let _compacting = match self.compaction.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::WouldBlock) => return Ok(()),
            Err(TryLockError::Poisoned(_)) => return Err(lock_poisoned()),
        };
        loop {
            self.check_poison()?;
            let Some(id) = self.lock_writer()?.compactable(floor) else {
                return Ok(());
            };
            match self.storage.remove_segment(id) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(_) => {
                    self.compaction_failures.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
            }
            self.storage
                .sync_dir()
                .map_err(|source| self.poison(StorageOp::DirSync, self.storage.location(), source))?;
            let mut writer = self.lock_writer()?;
            if writer.segments.front().is_some_and(|s| s.id == id) {
                writer.segments.pop_front();
            }
        }
    }

    fn advance_durable(&self, state: &mut SyncState, durable: u64) {
        state.durable_seq = state.durable_seq.max(durable);
        self.durable_seq.store(state.durable_seq, Ordering::Release);
    }

    /// Records the first storage failure; from now on every call returns `Poisoned`.
    fn poison(&self, op: StorageOp, target: String, source: io::Error) -> Error {
        // Only the first failure is kept: it is the cause, and a later one only follows from it.
        let _ = self.poison.set(Poison { op, target: target.clone(), cause: source.to_string() });
        Error::Storage { op, target, source }
    }

    fn check_poison(&self) -> Result<()> {
        match self.poison.get() {
            None => Ok(()),
            Some(p) => Err(Error::Poisoned { op: p.op, target: p.target.clone(), cause: p.cause.clone() }),
        }
    }

    fn lock_writer(&self) -> Result<MutexGuard<'_, Writer<S::Segment>>> {
        self.writer.lock().map_err(|_| lock_poisoned())
    }

    fn lock_sync(&self) -> Result<MutexGuard<'_, SyncState>> {
        self.sync.lock().map_err(|_| lock_poisoned())
    }
}

impl<G: SegmentFile> Writer<G> {
    /// Whether a record must go to a new segment: it does not fit the active one, or its kind
    /// is newer than the active segment's format version (a log written by an older release).
    fn needs_roll(&self, frame_len: u64, kind: RecordKind) -> bool {
        self.active
            .as_ref()
            .is_none_or(|a| a.write_pos.saturating_add(frame_len) > a.segment.len() || a.version < kind.since_version())
    }

    /// The oldest segment if it lies wholly before `floor`; never the active one.
    fn compactable(&self, floor: u64) -> Option<u64> {
        let active = self.active.as_ref().map(|a| a.id);
        let oldest = self.segments.front()?;
        let next = self.segments.get(1)?;
        (Some(oldest.id) != active && next.first_seq <= floor).then_some(oldest.id)
    }
}

impl<S: Storage> fmt::Debug for Log<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Log")
            .field("location", &self.storage.location())
            .field("options", &self.options)
            .field("stats", &self.stats().ok())
            .field("poisoned", &self.poison.get().is_some())
            .finish()
    }
}

/// What opening must do to the storage, from a recovery that borrowed the segments.
struct Plan {
    segments: Vec<SegmentExtent>,
    cut: Option<Cut>,
    removed: Vec<u64>,
    next_seq: u64,
}

fn recover_handles<S: Storage>(
    storage: &S,
    handles: &mut [(u64, S::Segment)],
    options: &Options,
) -> Result<(Recovered, Ledger, Plan)> {
    let images: Vec<SegmentImage<'_>> =
        handles.iter_mut().map(|(id, handle)| SegmentImage { id: *id, bytes: handle.bytes() }).collect();
    let recovery = recover(&images, options.recovery_mode).map_err(|e| locate(e, storage))?;
    let (recovered, ledger) = replay_with_ledger(&recovery, options.retain_batches).map_err(|e| locate(e, storage))?;
    let plan = Plan {
        segments: recovery.segments.clone(),
        cut: recovery.cut,
        removed: recovery.removed.clone(),
        next_seq: recovery.next_seq,
    };
    Ok((recovered, ledger, plan))
}

/// Carries out a recovery plan and builds the writer. Failures here are returned, not
/// poisoning: there is no log object yet, and opening again redoes the whole plan.
fn apply_plan<S: Storage>(
    storage: &S,
    plan: Plan,
    handles: Vec<(u64, S::Segment)>,
    ledger: Ledger,
) -> Result<Writer<S::Segment>> {
    for &id in &plan.removed {
        storage
            .remove_segment(id)
            .map_err(|source| storage_error(StorageOp::RemoveSegment, target(storage, id), source))?;
        storage.sync_dir().map_err(|source| storage_error(StorageOp::DirSync, storage.location(), source))?;
    }
    let last = plan.segments.last().copied();
    let active = match last {
        None => None,
        Some(extent) => {
            let handle = handles.into_iter().find(|(id, _)| *id == extent.id).map(|(_, h)| h);
            let Some(handle) = handle else {
                let gone = io::Error::new(io::ErrorKind::NotFound, "segment vanished during open");
                return Err(storage_error(StorageOp::OpenSegment, target(storage, extent.id), gone));
            };
            let active = prepare_active(storage, extent, handle, plan.cut)?;
            // The newest segment may have been created by a process that died (or whose sync
            // failed) before its directory entry was made durable.
            storage.sync_dir().map_err(|source| storage_error(StorageOp::DirSync, storage.location(), source))?;
            Some(active)
        }
    };
    Ok(Writer {
        active,
        segments: plan.segments.iter().map(|s| SegmentMeta { id: s.id, first_seq: s.first_seq }).collect(),
        next_seq: plan.next_seq,
        ledger,
    })
}

/// Zeros the torn tail of the newest segment and syncs everything recovered in it, so that
/// every record recovered now counts as durable (new records' `durable_seq` will say so).
///
/// The file is fsynced too: a process killed during roll-over (or whose fsync failed) may have
/// left a segment whose length never reached the disk. The caller fsyncs the directory.
fn prepare_active<S: Storage>(
    storage: &S,
    extent: SegmentExtent,
    mut segment: S::Segment,
    cut: Option<Cut>,
) -> Result<Active<S::Segment>> {
    let name = target(storage, extent.id);
    let mut sync_end = extent.end;
    if let Some(cut) = cut.filter(|c| c.segment_id == extent.id) {
        let zeros = vec![0u8; ZERO_PIECE];
        let mut at = cut.offset;
        while at < cut.zero_until {
            let piece = usize::try_from(cut.zero_until - at).map_or(ZERO_PIECE, |n| n.min(ZERO_PIECE));
            segment
                .write(at, zeros.get(..piece).unwrap_or_default())
                .map_err(|source| storage_error(StorageOp::Write, name.clone(), source))?;
            at += piece as u64;
        }
        sync_end = sync_end.max(cut.zero_until);
    }
    let syncer = segment.syncer();
    syncer.sync_range(0, sync_end).map_err(|source| storage_error(StorageOp::OpenSync, name.clone(), source))?;
    syncer.sync_file().map_err(|source| storage_error(StorageOp::OpenSync, name, source))?;
    let version = read_u32(segment.bytes(), 8).unwrap_or(FORMAT_VERSION);
    Ok(Active { id: extent.id, version, segment, write_pos: extent.end, synced_pos: extent.end })
}

/// The configured size, or a page-rounded size that fits one record too big for it.
fn segment_len(configured: u64, frame_len: u64) -> u64 {
    let needed = (SEGMENT_HEADER_LEN as u64).saturating_add(frame_len);
    if needed <= configured {
        configured
    } else {
        needed.div_ceil(4096).saturating_mul(4096)
    }
}

fn target<S: Storage>(storage: &S, id: u64) -> String {
    format!("{}/{}", storage.location(), segment_file_name(id))
}

/// Puts the log's location in front of the file name in recovery errors.
fn locate<S: Storage>(error: Error, storage: &S) -> Error {
    match error {
        Error::Corrupt { segment_id, offset, problem, .. } => {
            Error::Corrupt { segment_id, file: target(storage, segment_id), offset, problem }
        }
        Error::Inconsistent { segment_id, offset, seq, problem, .. } => {
            Error::Inconsistent { segment_id, file: target(storage, segment_id), offset, seq, problem }
        }
        other => other,
    }
}

fn storage_error(op: StorageOp, target: String, source: io::Error) -> Error {
    Error::Storage { op, target, source }
}

fn lock_poisoned() -> Error {
    Error::Poisoned {
        op: StorageOp::Write,
        target: "the log's in-memory state".into(),
        cause: "a thread panicked while holding the log's lock".into(),
    }
}
