//! Operator state that survives a crash: each stateful operator (windows, keyed state,
//! watermarks) gives its changes after every batch, written with the batch's commit, and its
//! whole state now and then, written as a snapshot. On restart the job's state is the latest
//! snapshot with the later batches' changes applied, so a re-run batch sees exactly the state
//! its first run saw.
//!
//! Each operator encodes its own state and changes with postcard
//! ([`sluice_checkpoint::encode_value`]: compact, pure Rust); the job frames them together with
//! each operator's index and kind, which a restore checks against the job's operators.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};

/// One stateful operator's state, as the engine saves and restores it.
pub(crate) trait Stateful: Send {
    /// What the operator is; a checkpoint restores only into a job with the same stateful
    /// operators, made in the same order.
    fn kind(&self) -> &'static str;
    /// The changes since the last call (the last batch's), or `None` if there were none.
    fn take_delta(&mut self) -> Result<Option<Vec<u8>>, String>;
    /// The whole state.
    fn snapshot(&mut self) -> Result<Vec<u8>, String>;
    /// Replaces the state with a snapshot's.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String>;
    /// Applies one batch's changes, as `take_delta` gave them.
    fn apply_delta(&mut self, delta: &[u8]) -> Result<(), String>;

    /// Scale-out mode: whether the state is kept per task (source partition), so that a task's
    /// part can move to another process through a changelog. Operators that are not refuse the
    /// methods below.
    fn splits_by_task(&self) -> bool {
        false
    }

    /// Scale-out mode (in place of `take_delta`): the changes since the last call, each a
    /// changelog record of its key's task.
    fn take_task_changes(&mut self) -> Result<Vec<TaskChange>, String> {
        Err(format!("{} keeps no state per source partition", self.kind()))
    }

    /// Scale-out mode: puts one changelog record of `task` back (a `None` value removes the key).
    fn restore_task_entry(&mut self, task: i32, key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
        let _ = (task, key, value);
        Err(format!("{} keeps no state per source partition", self.kind()))
    }

    /// Scale-out mode: drops the state of these tasks (another process's now, or to be restored).
    fn drop_tasks(&mut self, tasks: &BTreeSet<i32>) {
        let _ = tasks;
    }

    /// Scale-out mode: the whole state of these tasks, as the changelog records that would
    /// restore it (no tombstones), for the local checkpoint's copy of them.
    fn task_entries(&mut self, tasks: &BTreeSet<i32>) -> Result<Vec<TaskChange>, String> {
        let _ = tasks;
        Err(format!("{} keeps no state per source partition", self.kind()))
    }
}

/// Why an operator made only in scale-out mode refuses the local checkpoint's methods: its
/// state is kept per task, in its changelog, and the local checkpoint keeps no state there.
pub(crate) fn only_in_changelogs(kind: &str) -> String {
    format!(
        "{kind} exists only in scale-out mode, where its state is kept in its changelog, not in the local checkpoint"
    )
}

/// One key's change in scale-out mode, as its operator's changelog record: on the partition of
/// the key's task, the key and its state encoded (`None`: the key was removed, a tombstone that
/// compaction drops).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TaskChange {
    pub(crate) task: i32,
    pub(crate) key: Bytes,
    pub(crate) value: Option<Bytes>,
}

impl TaskChange {
    /// A change of `task`'s key (encoded) to `value` (encoded; `None`: removed).
    pub(crate) fn new(task: i32, key: Vec<u8>, value: Option<Vec<u8>>) -> Self {
        Self { task, key: key.into(), value: value.map(Bytes::from) }
    }
}

/// A stateful operator's state, shared by its compute step and the job.
pub(crate) type SharedState = Arc<Mutex<dyn Stateful>>;

pub(crate) fn lock_state<S: ?Sized>(state: &Mutex<S>) -> std::sync::MutexGuard<'_, S> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Room a value's encoding starts with: most of the values and keys a batch writes (a key's
/// state, a changelog key) fit without the buffer growing on the way.
const ENCODE_ROOM: usize = 64;

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    encode_into(value, Vec::with_capacity(ENCODE_ROOM))
}

/// [`encode`] appended to `out` (made with room for the value, so that it does not grow).
pub(crate) fn encode_into<T: Serialize>(value: &T, out: Vec<u8>) -> Result<Vec<u8>, String> {
    sluice_checkpoint::encode_value_into(value, out).map_err(|e| e.to_string())
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    sluice_checkpoint::decode_value(bytes).map_err(|e| e.to_string())
}

/// One operator's part of a batch's changes or of a snapshot: its index among the job's
/// stateful operators, its kind, and its bytes.
type Entry<'a> = (u32, &'a str, &'a [u8]);

/// A batch's changes (the operators that changed) or a snapshot (every operator), framed:
/// a u32 count, then per operator its index (u32), kind (u16 length, UTF-8) and bytes (u64
/// length), little-endian. Framed by hand so that each operator's bytes are copied once, not
/// serialized byte by byte.
fn frame(entries: &[Entry<'_>]) -> Vec<u8> {
    let size: usize = entries.iter().map(|(_, kind, bytes)| 14 + kind.len() + bytes.len()).sum();
    let mut out = Vec::with_capacity(4 + size);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for (index, kind, bytes) in entries {
        out.extend_from_slice(&index.to_le_bytes());
        out.extend_from_slice(&(kind.len() as u16).to_le_bytes());
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

/// The entries of `frame`'s bytes; the error says what is wrong and at which byte.
fn unframe(bytes: &[u8]) -> Result<Vec<Entry<'_>>, String> {
    let mut at = 0usize;
    let mut take = |n: usize, what: &str| -> Result<&[u8], String> {
        let piece = at.checked_add(n).and_then(|end| bytes.get(at..end));
        let piece = piece.ok_or_else(|| format!("{what} at byte {at} runs past the end ({} bytes)", bytes.len()))?;
        at += n;
        Ok(piece)
    };
    let number = |piece: &[u8]| piece.iter().rev().fold(0u64, |n, b| (n << 8) | u64::from(*b));
    let count = number(take(4, "the operator count")?);
    let mut entries = Vec::new();
    for _ in 0..count {
        let index = u32::try_from(number(take(4, "an operator index")?)).map_err(|e| e.to_string())?;
        let kind_len = usize::try_from(number(take(2, "an operator kind's length")?)).map_err(|e| e.to_string())?;
        let kind = std::str::from_utf8(take(kind_len, "an operator kind")?)
            .map_err(|e| format!("operator {index}'s kind is not UTF-8: {e}"))?;
        let len = usize::try_from(number(take(8, "an operator state's length")?)).map_err(|e| e.to_string())?;
        entries.push((index, kind, take(len, "an operator's state")?));
    }
    if at != bytes.len() {
        return Err(format!("{} bytes follow the last operator's state", bytes.len() - at));
    }
    Ok(entries)
}

/// The stateful operators of one job (a clone shares them).
#[derive(Default, Clone)]
pub(crate) struct JobState {
    operators: Vec<SharedState>,
}

impl std::fmt::Debug for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobState").field("operators", &self.kinds()).finish()
    }
}

impl JobState {
    pub(crate) fn register(&mut self, state: SharedState) {
        self.operators.push(state);
    }

    /// Whether the job keeps no state.
    pub(crate) fn is_empty(&self) -> bool {
        self.operators.is_empty()
    }

    /// The stateful operators' kinds, in the order they were made.
    pub(crate) fn kinds(&self) -> Vec<&'static str> {
        self.operators.iter().map(|op| lock_state(op).kind()).collect()
    }

    /// Scale-out mode: the operators that cannot keep their state per task (none may be in a
    /// scale-out job), by kind.
    pub(crate) fn not_split_by_task(&self) -> Vec<&'static str> {
        self.operators.iter().map(|op| lock_state(op)).filter(|op| !op.splits_by_task()).map(|op| op.kind()).collect()
    }

    /// The operators' names, stable while the job is the same (the changelog topics are named
    /// after them): the kind and its place among the stateful operators.
    pub(crate) fn operator_names(&self) -> Vec<String> {
        self.kinds().iter().enumerate().map(|(index, kind)| format!("{kind}-{index}")).collect()
    }

    /// Scale-out mode: the changes since the last batch, each with its operator's index.
    pub(crate) fn take_task_changes(&self) -> Result<Vec<(usize, TaskChange)>, String> {
        let mut changes = Vec::new();
        for (index, op) in self.operators.iter().enumerate() {
            let mut op = lock_state(op);
            let kind = op.kind();
            changes.extend(
                op.take_task_changes().map_err(|e| format!("{kind}: {e}"))?.into_iter().map(|change| (index, change)),
            );
        }
        Ok(changes)
    }

    /// Scale-out mode: puts one changelog record of operator `index` back.
    pub(crate) fn restore_task_entry(
        &self,
        index: usize,
        task: i32,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), String> {
        let op = self.operators.get(index).ok_or_else(|| format!("no stateful operator {index}"))?;
        let mut op = lock_state(op);
        op.restore_task_entry(task, key, value).map_err(|e| format!("{}: {e}", op.kind()))
    }

    /// Scale-out mode: the whole state of these tasks, as changelog records, each with its
    /// operator's index.
    pub(crate) fn task_entries(&self, tasks: &BTreeSet<i32>) -> Result<Vec<(usize, TaskChange)>, String> {
        let mut entries = Vec::new();
        for (index, op) in self.operators.iter().enumerate() {
            let mut op = lock_state(op);
            let kind = op.kind();
            entries.extend(
                op.task_entries(tasks).map_err(|e| format!("{kind}: {e}"))?.into_iter().map(|entry| (index, entry)),
            );
        }
        Ok(entries)
    }

    /// Scale-out mode: drops the state of these tasks in every operator.
    pub(crate) fn drop_tasks(&self, tasks: &BTreeSet<i32>) {
        for op in &self.operators {
            lock_state(op).drop_tasks(tasks);
        }
    }

    /// The last batch's changes, encoded (empty when nothing changed).
    fn take_delta(&self) -> Result<Vec<u8>, String> {
        let mut changed = Vec::new();
        for (index, op) in self.operators.iter().enumerate() {
            let mut op = lock_state(op);
            if let Some(delta) = op.take_delta()? {
                changed.push((u32::try_from(index).map_err(|e| e.to_string())?, op.kind(), delta));
            }
        }
        if changed.is_empty() {
            return Ok(Vec::new());
        }
        let entries: Vec<Entry<'_>> = changed.iter().map(|(i, kind, delta)| (*i, *kind, delta.as_slice())).collect();
        Ok(frame(&entries))
    }

    /// What batch `batch_id` leaves for the checkpoint: its changes, and every
    /// `snapshot_every` batches the whole state.
    pub(crate) fn end_batch(&self, batch_id: u64, snapshot_every: u64) -> Result<(Vec<u8>, Option<Vec<u8>>), String> {
        let delta = self.take_delta()?;
        let snapshot_due = (batch_id + 1).is_multiple_of(snapshot_every.max(1));
        Ok((delta, if snapshot_due { Some(self.snapshot()?) } else { None }))
    }

    /// The whole state, encoded.
    fn snapshot(&self) -> Result<Vec<u8>, String> {
        let states = self
            .operators
            .iter()
            .enumerate()
            .map(|(index, op)| {
                let mut op = lock_state(op);
                Ok((u32::try_from(index).map_err(|e| e.to_string())?, op.kind(), op.snapshot()?))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let entries: Vec<Entry<'_>> = states.iter().map(|(i, kind, state)| (*i, *kind, state.as_slice())).collect();
        Ok(frame(&entries))
    }

    /// Restores a snapshot (if any) and applies the deltas after it, oldest first.
    pub(crate) fn restore(&self, snapshot: Option<&(u64, Vec<u8>)>, deltas: &[(u64, Vec<u8>)]) -> Result<(), String> {
        let scale_out = snapshot.map(|(_, bytes)| bytes).into_iter().chain(deltas.iter().map(|(_, bytes)| bytes));
        if scale_out.into_iter().any(|bytes| bytes.starts_with(crate::local_copy::MAGIC)) {
            return Err("the checkpoint holds a scale-out job's copies of its tasks' state (kept per source partition, beside its changelogs): run the job in scale-out mode, or use a new checkpoint directory".into());
        }
        if let Some((batch_id, bytes)) = snapshot {
            let image = unframe(bytes).map_err(|e| format!("the state snapshot after batch {batch_id}: {e}"))?;
            let written: Vec<&str> = image.iter().map(|(_, kind, _)| *kind).collect();
            if written != self.kinds() {
                return Err(format!(
                    "the checkpoint holds the state of the stateful operators {written:?} but this job has {:?}; a job can only resume from a checkpoint of the same job (use a new checkpoint directory for a changed job)",
                    self.kinds()
                ));
            }
            for (op, (_, kind, state)) in self.operators.iter().zip(&image) {
                lock_state(op).restore(state).map_err(|e| {
                    format!("restoring the state of {kind} from the snapshot after batch {batch_id}: {e}")
                })?;
            }
        }
        for (batch_id, bytes) in deltas {
            if bytes.is_empty() {
                continue;
            }
            let delta = unframe(bytes).map_err(|e| format!("the state changes of batch {batch_id}: {e}"))?;
            for (index, kind, changes) in delta {
                let op = usize::try_from(index).ok().and_then(|i| self.operators.get(i));
                let Some(op) = op.filter(|op| lock_state(op).kind() == kind) else {
                    return Err(format!(
                        "the state changes of batch {batch_id} are for stateful operator {index}, a {kind}, but this job's stateful operators are {:?}; a job can only resume from a checkpoint of the same job (use a new checkpoint directory for a changed job)",
                        self.kinds()
                    ));
                };
                let mut op = lock_state(op);
                op.apply_delta(changes)
                    .map_err(|e| format!("applying the state changes of batch {batch_id} to {}: {e}", op.kind()))?;
            }
        }
        // What was restored is not a change of the next batch.
        for op in &self.operators {
            lock_state(op).take_delta()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_read_back_and_damage_is_named() {
        let entries: Vec<Entry<'_>> = vec![(0, "window", b"abc"), (3, "map_with_state", b"")];
        let bytes = frame(&entries);
        assert_eq!(unframe(&bytes).unwrap(), entries);
        assert_eq!(unframe(&frame(&[])).unwrap(), Vec::<Entry<'_>>::new());
        for cut in 0..bytes.len() {
            let error = unframe(&bytes[..cut]).unwrap_err();
            assert!(error.contains("runs past the end"), "cut at {cut}: {error}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(unframe(&longer).unwrap_err(), "1 bytes follow the last operator's state");
        let mut bad_kind = bytes;
        bad_kind[10] = 0xff;
        assert!(unframe(&bad_kind).unwrap_err().contains("kind is not UTF-8"));
    }
}
