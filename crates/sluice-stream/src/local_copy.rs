//! Scale-out mode: the local checkpoint's copy of the tasks' state, the fast path of a restart.
//!
//! A task's state lives in its changelog partitions, and a process that takes a task on reads
//! them. A process restarted on its checkpoint need not read them from the start: its
//! checkpoint holds a copy of each task it owned, with the changelog positions the copy
//! reflects, and a restore takes the copy and reads only the changelogs after those positions
//! (as it does a standby copy's). Whatever happened since (another process took the task on and
//! wrote to its changelog) is in that tail, so an older copy is never wrong, only slower:
//!
//! - each batch that ends a transaction writes, with its commit in the checkpoint, the
//!   changelog records it sent (per task and operator) and the positions after them (from the
//!   sends' delivery reports); a task taken on or rebuilt since is written whole;
//! - after every `snapshot_every` such batches that changed state, a snapshot holds every owned
//!   task whole (and the copies read at the start that no restore has taken yet); a quiet job
//!   writes nothing;
//! - a crash between the Kafka commit and the checkpoint's leaves the copy before, whose tail
//!   holds the missing transaction.
//!
//! Two things make a copy unusable: a changelog made again (its topic id differs, or it ends
//! before the copy's positions: the restore then reads it from the start), and age. Compaction
//! removes a tombstone `delete.retention.ms` (1 day by default) after it was written, so a copy
//! older than that may hold a key deleted since whose tombstone is gone: such a copy
//! ([`MAX_AGE_MS`]) is not used.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;

use crate::standby::TaskCopy;
use crate::state::TaskChange;

/// What the local checkpoint's state bytes of a scale-out job start with (a job not in
/// scale-out mode frames its state otherwise, and refuses these).
pub(crate) const MAGIC: &[u8] = b"sluice scale-out task copies\0";

/// A copy older than this is not used (read from the changelog instead): well under the
/// changelogs' `delete.retention.ms`, Kafka's default of 1 day, so that no tombstone written
/// after the copy can have been compacted away.
pub(crate) const MAX_AGE_MS: i64 = 20 * 3_600_000;

/// How far ahead of the clock a copy's time may be (clocks of one machine step back a little).
const CLOCK_SLACK_MS: i64 = 60_000;

/// A changelog topic's id (all zeros when the broker gives none).
pub(crate) type TopicId = [u8; 16];

/// A task's copy as the local checkpoint holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LocalCopy {
    /// The changelog topics' ids when the copy was written, in the operators' order.
    topic_ids: Vec<TopicId>,
    /// When its positions were where its changelogs ended for it (wall clock, ms since the epoch).
    at_ms: i64,
    /// Per operator: the changelog offset the copy reflects everything before.
    positions: Vec<i64>,
    /// Per operator: each key's value.
    entries: Vec<HashMap<Bytes, Bytes>>,
    /// Records taken in, tombstones included (a restore counts them as read).
    records: u64,
}

/// One task in a written delta or snapshot.
#[derive(Debug, PartialEq, Eq)]
struct WrittenTask {
    task: i32,
    /// The task's whole state (else changes to the copy before).
    whole: bool,
    at_ms: i64,
    positions: Vec<i64>,
    /// (Operator, key, value; `None`: removed).
    entries: Vec<(u32, Bytes, Option<Bytes>)>,
}

/// The local checkpoint's side of the changelogs: the copies read at the start, and what the
/// owned tasks' copies need next.
#[derive(Debug, Default)]
pub(crate) struct LocalCopies {
    /// The changelog topics' ids now, in the operators' order.
    topic_ids: Vec<TopicId>,
    /// Copies the checkpoint held at the start of tasks not taken on since.
    held: BTreeMap<i32, LocalCopy>,
    /// Owned tasks and their changelog positions (per operator): where their state stands.
    owned: BTreeMap<i32, Vec<i64>>,
    /// Owned tasks to write whole with the next transaction's end (taken on or rebuilt).
    whole: BTreeSet<i32>,
    /// Tasks whose copy in the checkpoint is wrong now (a position went unknown).
    forget: BTreeSet<i32>,
    /// Transactions that wrote changes since the last snapshot: the one after `snapshot_every`
    /// of them writes a snapshot (a quiet job writes none).
    changed_since_snapshot: u64,
}

/// What a transaction's end leaves the local checkpoint: the changes, and maybe a snapshot.
pub(crate) struct Written {
    pub(crate) delta: Vec<u8>,
    pub(crate) snapshot: Option<Vec<u8>>,
}

impl LocalCopies {
    /// No copies yet, for changelogs with `topic_ids` (in the operators' order).
    pub(crate) fn new(topic_ids: Vec<TopicId>) -> Self {
        Self { topic_ids, ..Self::default() }
    }

    /// Holds the copies of the checkpoint's `snapshot` and `deltas` (as the scheduler recovered
    /// them) that are usable at `now_ms`. Bytes that are not a scale-out job's copies, or are
    /// damaged, leave no copies (the tasks are read from their changelogs), said in the log.
    pub(crate) fn hold(&mut self, snapshot: Option<&(u64, Vec<u8>)>, deltas: &[(u64, Vec<u8>)], now_ms: i64) {
        let held = match fold(snapshot, deltas) {
            Ok(held) => held,
            Err(problem) => {
                tracing::warn!(%problem, "the checkpoint's copies of the tasks' state are not usable; the tasks are restored from their changelogs");
                BTreeMap::new()
            }
        };
        let held: BTreeMap<i32, LocalCopy> = held.into_iter().filter(|(_, copy)| self.usable(copy, now_ms)).collect();
        if !held.is_empty() {
            tracing::info!(tasks = ?held.keys().collect::<Vec<_>>(), "the checkpoint holds copies of tasks' state");
        }
        self.held = held;
    }

    /// Whether a copy may be used now: its changelogs are the ones it was written from (the same
    /// ids; a broker that gives none leaves only the restore's check that a changelog does not
    /// end before the copy's positions), and it is not older than [`MAX_AGE_MS`] (nor from more
    /// than [`CLOCK_SLACK_MS`] ahead: a clock that went back would make it look younger).
    fn usable(&self, copy: &LocalCopy, now_ms: i64) -> bool {
        let age = now_ms.saturating_sub(copy.at_ms);
        copy.topic_ids == self.topic_ids && age < MAX_AGE_MS && age > -CLOCK_SLACK_MS
    }

    /// The copies of `gained` tasks still usable at `now_ms`, as a restore takes them; no longer held.
    pub(crate) fn take_for(&mut self, gained: &BTreeSet<i32>, now_ms: i64) -> BTreeMap<i32, TaskCopy> {
        let mut taken = BTreeMap::new();
        for task in gained {
            if let Some(copy) = self.held.remove(task).filter(|copy| self.usable(copy, now_ms)) {
                taken.insert(*task, TaskCopy::from_local(copy.entries, copy.positions, copy.records));
            }
        }
        taken
    }

    /// Takes in a change of the owned tasks: those `lost` are no longer written (the checkpoint
    /// keeps its older copy of them until the next snapshot); those restored stand at
    /// `positions` and are written whole with the next transaction's end.
    pub(crate) fn tasks_changed(&mut self, lost: &BTreeSet<i32>, restored: BTreeMap<i32, Vec<i64>>) {
        self.owned.retain(|task, _| !lost.contains(task));
        self.whole.retain(|task| !lost.contains(task));
        for (task, positions) in restored {
            self.held.remove(&task);
            self.forget.remove(&task);
            self.whole.insert(task);
            self.owned.insert(task, positions);
        }
    }

    /// Takes in where the records a transaction sent landed: per (operator, task), the offset of
    /// its last record, or `None` when a delivery report gave none (the copy of that task is
    /// then forgotten until it is restored again).
    pub(crate) fn sent(&mut self, landed: &BTreeMap<(usize, i32), Option<i64>>) {
        for ((operator, task), offset) in landed {
            let Some(positions) = self.owned.get_mut(task) else { continue };
            match (offset, positions.get_mut(*operator)) {
                (Some(offset), Some(position)) => *position = (*position).max(offset + 1),
                _ => {
                    self.owned.remove(task);
                    self.whole.remove(task);
                    self.forget.insert(*task);
                }
            }
        }
    }

    /// The tasks whose whole state the next [`LocalCopies::end_transaction`] needs: those to
    /// write whole, or every owned one when a snapshot is due (`snapshot_every` transactions
    /// changed state since the last).
    pub(crate) fn wanted_whole(&self, snapshot_every: u64) -> BTreeSet<i32> {
        if self.snapshot_due(snapshot_every) {
            self.owned.keys().copied().collect()
        } else {
            self.whole.clone()
        }
    }

    fn snapshot_due(&self, snapshot_every: u64) -> bool {
        self.changed_since_snapshot >= snapshot_every.max(1)
    }

    /// What a transaction's end writes to the local checkpoint: the `changes` it sent (with
    /// their operators) for the owned tasks, `whole` the entries of the tasks
    /// [`LocalCopies::wanted_whole`] gave, and a snapshot when one is due.
    pub(crate) fn end_transaction(
        &mut self,
        changes: &[(usize, TaskChange)],
        whole: &[(usize, TaskChange)],
        (now_ms, snapshot_every): (i64, u64),
    ) -> Written {
        let snapshot_due = self.snapshot_due(snapshot_every);
        // The delta: the tasks taken on or rebuilt since, whole; the others' changes.
        let mut delta: BTreeMap<i32, WrittenTask> = BTreeMap::new();
        for task in &self.whole {
            self.start(&mut delta, *task, true, now_ms);
        }
        for (operator, change) in whole.iter().filter(|(_, change)| self.whole.contains(&change.task)) {
            add(&mut delta, *operator, change);
        }
        for (operator, change) in changes.iter().filter(|(_, change)| !self.whole.contains(&change.task)) {
            self.start(&mut delta, change.task, false, now_ms);
            add(&mut delta, *operator, change);
        }
        let forget: Vec<i32> = std::mem::take(&mut self.forget).into_iter().collect();
        self.whole.clear();
        // Nothing changed: nothing to write.
        let changed = !delta.is_empty() || !forget.is_empty();
        self.changed_since_snapshot = match (snapshot_due, changed) {
            (true, _) => 0,
            (false, true) => self.changed_since_snapshot + 1,
            (false, false) => self.changed_since_snapshot,
        };
        let delta = if changed { encode(&self.topic_ids, &forget, delta.values()) } else { Vec::new() };
        // The snapshot: every owned task whole, and the copies no restore has taken yet that
        // are still usable.
        let snapshot = snapshot_due.then(|| {
            let held = std::mem::take(&mut self.held);
            self.held = held.into_iter().filter(|(_, copy)| self.usable(copy, now_ms)).collect();
            let mut all: BTreeMap<i32, WrittenTask> = BTreeMap::new();
            for task in self.owned.keys() {
                self.start(&mut all, *task, true, now_ms);
            }
            for (operator, change) in whole {
                add(&mut all, *operator, change);
            }
            for (task, copy) in &self.held {
                all.entry(*task).or_insert_with(|| copy.written(*task));
            }
            encode(&self.topic_ids, &[], all.values())
        });
        Written { delta, snapshot }
    }

    /// Starts `task`'s part of what is written, at its positions now, if it is owned.
    fn start(&self, written: &mut BTreeMap<i32, WrittenTask>, task: i32, whole: bool, now_ms: i64) {
        let Some(positions) = self.owned.get(&task) else { return };
        written.entry(task).or_insert_with(|| WrittenTask {
            task,
            whole,
            at_ms: now_ms,
            positions: positions.clone(),
            entries: Vec::new(),
        });
    }
}

/// Adds a change to its task's part of what is written, if that part was started.
fn add(written: &mut BTreeMap<i32, WrittenTask>, operator: usize, change: &TaskChange) {
    if let (Some(written), Ok(operator)) = (written.get_mut(&change.task), u32::try_from(operator)) {
        written.entries.push((operator, change.key.clone(), change.value.clone()));
    }
}

impl LocalCopy {
    fn written(&self, task: i32) -> WrittenTask {
        let entries = self.entries.iter().enumerate().flat_map(|(operator, entries)| {
            let operator = u32::try_from(operator).unwrap_or(u32::MAX);
            entries.iter().map(move |(key, value)| (operator, key.clone(), Some(value.clone())))
        });
        WrittenTask {
            task,
            whole: true,
            at_ms: self.at_ms,
            positions: self.positions.clone(),
            entries: entries.collect(),
        }
    }
}

/// The copies a snapshot and the deltas after it leave, oldest first.
fn fold(snapshot: Option<&(u64, Vec<u8>)>, deltas: &[(u64, Vec<u8>)]) -> Result<BTreeMap<i32, LocalCopy>, String> {
    let mut copies: BTreeMap<i32, LocalCopy> = BTreeMap::new();
    for (what, batch_id, bytes) in snapshot
        .map(|(batch_id, bytes)| ("the snapshot after batch", *batch_id, bytes))
        .into_iter()
        .chain(deltas.iter().map(|(batch_id, bytes)| ("the changes of batch", *batch_id, bytes)))
    {
        // A batch that changed nothing (or went on with its transaction) wrote nothing.
        if bytes.is_empty() {
            continue;
        }
        let (topic_ids, forget, tasks) = decode(bytes).map_err(|e| format!("{what} {batch_id}: {e}"))?;
        for task in forget {
            copies.remove(&task);
        }
        for written in tasks {
            let task = written.task;
            let operators = topic_ids.len();
            if written.positions.len() != operators || written.entries.iter().any(|(op, ..)| *op as usize >= operators)
            {
                return Err(format!("{what} {batch_id}: task {task} names operators past the {operators} it has"));
            }
            if written.whole {
                copies.insert(
                    task,
                    LocalCopy {
                        topic_ids: topic_ids.clone(),
                        at_ms: written.at_ms,
                        positions: written.positions.clone(),
                        entries: vec![HashMap::new(); operators],
                        records: 0,
                    },
                );
            }
            // Changes apply to a copy of the same changelogs only (else the task has none).
            let Some(copy) = copies.get_mut(&task).filter(|copy| copy.topic_ids == topic_ids) else {
                copies.remove(&task);
                continue;
            };
            copy.at_ms = written.at_ms;
            copy.positions = written.positions;
            for (operator, key, value) in written.entries {
                copy.records += 1;
                let Some(entries) = copy.entries.get_mut(operator as usize) else { continue };
                match value {
                    Some(value) => entries.insert(key, value),
                    None => entries.remove(&key),
                };
            }
        }
    }
    Ok(copies)
}

/// The bytes of a delta or snapshot: [`MAGIC`], then little-endian: the operator count (u32)
/// and each changelog's topic id (16 bytes), the tasks forgotten (u32 count, i32 each), and
/// the tasks (u32 count), each its number (i32), whether whole (u8), its time (i64), a position
/// per operator (i64), and its entries (u64 count), each its operator (u32), key (u32 length
/// and bytes) and value (i64 length, -1 for a removal, and bytes).
fn encode<'a>(topic_ids: &[TopicId], forget: &[i32], tasks: impl Iterator<Item = &'a WrittenTask>) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    let len32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    out.extend_from_slice(&len32(topic_ids.len()));
    for id in topic_ids {
        out.extend_from_slice(id);
    }
    out.extend_from_slice(&len32(forget.len()));
    for task in forget {
        out.extend_from_slice(&task.to_le_bytes());
    }
    let tasks: Vec<&WrittenTask> = tasks.collect();
    out.extend_from_slice(&len32(tasks.len()));
    for written in tasks {
        out.extend_from_slice(&written.task.to_le_bytes());
        out.push(u8::from(written.whole));
        out.extend_from_slice(&written.at_ms.to_le_bytes());
        for position in &written.positions {
            out.extend_from_slice(&position.to_le_bytes());
        }
        out.extend_from_slice(&(written.entries.len() as u64).to_le_bytes());
        for (operator, key, value) in &written.entries {
            out.extend_from_slice(&operator.to_le_bytes());
            out.extend_from_slice(&len32(key.len()));
            out.extend_from_slice(key);
            match value {
                Some(value) => {
                    out.extend_from_slice(&i64::try_from(value.len()).unwrap_or(i64::MAX).to_le_bytes());
                    out.extend_from_slice(value);
                }
                None => out.extend_from_slice(&(-1i64).to_le_bytes()),
            }
        }
    }
    out
}

/// Reads [`encode`]'s bytes; the error says what is wrong and at which byte.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let piece = self.at.checked_add(n).and_then(|end| self.bytes.get(self.at..end));
        let piece = piece
            .ok_or_else(|| format!("{what} at byte {} runs past the end ({} bytes)", self.at, self.bytes.len()))?;
        self.at += n;
        Ok(piece)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let piece = self.take(N, what)?;
        let mut array = [0u8; N];
        array.copy_from_slice(piece);
        Ok(array)
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn i64(&mut self, what: &str) -> Result<i64, String> {
        self.array(what).map(i64::from_le_bytes)
    }

    /// A count of items at least `each` bytes long, checked against what is left (so that a
    /// damaged count does not reserve memory for items that are not there).
    fn count(&mut self, count: u64, each: usize, what: &str) -> Result<usize, String> {
        let left = self.bytes.len() - self.at;
        usize::try_from(count)
            .ok()
            .filter(|count| count.saturating_mul(each) <= left)
            .ok_or_else(|| format!("{what} at byte {} says {count}, more than the {left} bytes left hold", self.at))
    }
}

type Decoded = (Vec<TopicId>, Vec<i32>, Vec<WrittenTask>);

fn decode(bytes: &[u8]) -> Result<Decoded, String> {
    let Some(body) = bytes.strip_prefix(MAGIC) else {
        return Err(
            "it is not a scale-out job's copy of its tasks (was the checkpoint made by a job not in scale-out mode?)"
                .into(),
        );
    };
    let mut reader = Reader { bytes: body, at: 0 };
    let operators = reader.u32("the operator count")?;
    let operators = reader.count(u64::from(operators), 16, "the operator count")?;
    let topic_ids = (0..operators).map(|_| reader.array("a topic id")).collect::<Result<Vec<_>, _>>()?;
    let forgotten = reader.u32("the forgotten task count")?;
    let forgotten = reader.count(u64::from(forgotten), 4, "the forgotten task count")?;
    let forget =
        (0..forgotten).map(|_| reader.array("a forgotten task").map(i32::from_le_bytes)).collect::<Result<_, _>>()?;
    let count = reader.u32("the task count")?;
    let count = reader.count(u64::from(count), 21, "the task count")?;
    let mut tasks = Vec::with_capacity(count);
    for _ in 0..count {
        let task = i32::from_le_bytes(reader.array("a task")?);
        let whole = match reader.take(1, "whether the task is whole")? {
            [0] => false,
            [1] => true,
            other => return Err(format!("task {task}'s whole flag at byte {} is {other:?}", reader.at - 1)),
        };
        let at_ms = reader.i64("a task's time")?;
        let positions = (0..operators).map(|_| reader.i64("a position")).collect::<Result<Vec<_>, _>>()?;
        let entries = reader.i64("an entry count").map(|n| n as u64)?;
        let entries = reader.count(entries, 16, "an entry count")?;
        let mut read = Vec::with_capacity(entries);
        for _ in 0..entries {
            let operator = reader.u32("an entry's operator")?;
            let key_len = reader.u32("a key's length")? as usize;
            let key = Bytes::copy_from_slice(reader.take(key_len, "a key")?);
            let value = match reader.i64("a value's length")? {
                -1 => None,
                len => {
                    let len = usize::try_from(len)
                        .map_err(|_| format!("a value's length {len} at byte {}", reader.at - 8))?;
                    Some(Bytes::copy_from_slice(reader.take(len, "a value")?))
                }
            };
            read.push((operator, key, value));
        }
        tasks.push(WrittenTask { task, whole, at_ms, positions, entries: read });
    }
    if reader.at != body.len() {
        return Err(format!("{} bytes follow the last task", body.len() - reader.at));
    }
    Ok((topic_ids, forget, tasks))
}

/// The fuzz target's property ([`crate::testing::fuzz_task_copies`]): the bytes of a delta (the
/// format's magic, then `data`) never panic a read, and what reads writes back the same bytes.
#[cfg(feature = "testing")]
pub(crate) fn fuzz(data: &[u8]) {
    let bytes = [MAGIC, data].concat();
    if let Ok((topic_ids, forget, tasks)) = decode(&bytes) {
        assert!(encode(&topic_ids, &forget, tasks.iter()) == bytes, "read bytes write back the same");
    }
    let _ = fold(Some(&(0, bytes.clone())), &[(1, bytes)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;
    const IDS: [TopicId; 2] = [[1; 16], [2; 16]];

    fn change(task: i32, key: &str, value: Option<&str>) -> TaskChange {
        TaskChange::new(task, key.as_bytes().to_vec(), value.map(|v| v.as_bytes().to_vec()))
    }

    fn entries(copy: &TaskCopy, operator: usize) -> BTreeMap<String, String> {
        copy.entries[operator]
            .iter()
            .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), String::from_utf8_lossy(v).into_owned()))
            .collect()
    }

    /// Two tasks restored, then transactions that change them, a snapshot on the way: the
    /// checkpoint's bytes give back each task's last entries at the positions after them.
    #[test]
    fn deltas_and_snapshots_give_back_each_tasks_entries_at_its_positions() {
        let mut local = LocalCopies::new(IDS.to_vec());
        local.tasks_changed(&BTreeSet::new(), BTreeMap::from([(0, vec![10, 20]), (1, vec![0, 0])]));
        let mut written = Vec::new();
        // Batch 0: both tasks written whole (task 0 restored with a key), a change of task 1.
        assert_eq!(local.wanted_whole(2), BTreeSet::from([0, 1]));
        let whole = vec![(0, change(0, "a", Some("1"))), (1, change(1, "b", Some("1")))];
        local.sent(&BTreeMap::from([((1, 1), Some(5))]));
        let w = local.end_transaction(&[(1, change(1, "b", Some("1")))], &whole, (NOW, 2));
        assert!(w.snapshot.is_none());
        written.push((0u64, w.delta));
        // Batch 1: task 0's key a changes and c comes; task 1's b is removed.
        assert!(local.wanted_whole(2).is_empty());
        local.sent(&BTreeMap::from([((0, 0), Some(11)), ((1, 1), Some(6))]));
        let changes = vec![(0, change(0, "a", Some("2"))), (0, change(0, "c", Some("1"))), (1, change(1, "b", None))];
        let w = local.end_transaction(&changes, &[], (NOW + 1, 2));
        assert!(w.snapshot.is_none());
        written.push((1, w.delta));
        let copies = fold(None, &written).unwrap();
        assert_eq!(copies[&0].positions, vec![12, 20]);
        assert_eq!(copies[&1].positions, vec![0, 7]);
        let mut recovered = LocalCopies::new(IDS.to_vec());
        recovered.hold(None, &written, NOW + 2);
        let taken = recovered.take_for(&BTreeSet::from([0, 1]), NOW + 2);
        assert_eq!(entries(&taken[&0], 0), BTreeMap::from([("a".into(), "2".into()), ("c".into(), "1".into())]));
        assert!(entries(&taken[&1], 1).is_empty(), "b removed");
        assert_eq!(taken[&1].positions, vec![0, 7]);

        // Batch 2: a snapshot (after two transactions that changed state), which holds both
        // tasks whole; deltas before it are not needed. It changed nothing itself: no delta.
        assert_eq!(local.wanted_whole(2), BTreeSet::from([0, 1]));
        let whole = vec![(0, change(0, "a", Some("2"))), (0, change(0, "c", Some("1")))];
        let w = local.end_transaction(&[], &whole, (NOW + 3, 2));
        assert!(w.delta.is_empty(), "nothing changed");
        let snapshot = (2u64, w.snapshot.expect("a snapshot after two transactions that changed state"));
        // Quiet transactions after it write nothing, and no snapshot comes.
        for _ in 0..4 {
            assert!(local.wanted_whole(2).is_empty());
            let w = local.end_transaction(&[], &[], (NOW + 3, 2));
            assert!(w.delta.is_empty() && w.snapshot.is_none());
        }
        let mut recovered = LocalCopies::new(IDS.to_vec());
        recovered.hold(Some(&snapshot), &[], NOW + 4);
        let taken = recovered.take_for(&BTreeSet::from([0, 1, 2]), NOW + 4);
        assert_eq!(taken.len(), 2);
        assert_eq!(entries(&taken[&0], 0).len(), 2);
        assert_eq!(taken[&0].positions, vec![12, 20]);
    }

    #[test]
    fn a_copy_of_other_changelogs_or_too_old_is_not_used_and_a_lost_position_forgets_it() {
        let mut local = LocalCopies::new(IDS.to_vec());
        local.tasks_changed(&BTreeSet::new(), BTreeMap::from([(0, vec![0, 0]), (1, vec![0, 0])]));
        let whole = vec![(0, change(0, "a", Some("1"))), (0, change(1, "b", Some("1")))];
        let first = (0u64, local.end_transaction(&[], &whole, (NOW, 100)).delta);
        let recovered = |ids: Vec<TopicId>, now: i64, deltas: &[(u64, Vec<u8>)]| {
            let mut local = LocalCopies::new(ids);
            local.hold(None, deltas, now);
            local.take_for(&BTreeSet::from([0, 1]), now).len()
        };
        assert_eq!(recovered(IDS.to_vec(), NOW, std::slice::from_ref(&first)), 2);
        assert_eq!(recovered(vec![[1; 16], [3; 16]], NOW, std::slice::from_ref(&first)), 0, "a changelog made again");
        assert_eq!(recovered(vec![[0; 16], [2; 16]], NOW, std::slice::from_ref(&first)), 0, "no id now");
        assert_eq!(recovered(IDS.to_vec(), NOW + MAX_AGE_MS, std::slice::from_ref(&first)), 0, "too old");
        assert_eq!(recovered(IDS.to_vec(), NOW - 2 * CLOCK_SLACK_MS, std::slice::from_ref(&first)), 0, "from ahead");
        assert_eq!(recovered(IDS.to_vec(), NOW - CLOCK_SLACK_MS / 2, std::slice::from_ref(&first)), 2, "a step back");
        // A delivery without an offset: task 1's copy is forgotten, task 0's kept.
        local.sent(&BTreeMap::from([((0, 1), None), ((0, 0), Some(3))]));
        let second = (1u64, local.end_transaction(&[(0, change(0, "a", Some("2")))], &[], (NOW, 100)).delta);
        let mut both = LocalCopies::new(IDS.to_vec());
        both.hold(None, &[first, second], NOW);
        let taken = both.take_for(&BTreeSet::from([0, 1]), NOW);
        assert_eq!(taken.keys().copied().collect::<Vec<_>>(), vec![0]);
        assert_eq!(entries(&taken[&0], 0)["a"], "2");
    }

    /// Damaged bytes, and those of a job not in scale-out mode, leave no copies and never
    /// panic; every cut of good bytes names what runs past the end.
    #[test]
    fn damaged_bytes_are_refused_with_where() {
        let mut local = LocalCopies::new(IDS.to_vec());
        local.tasks_changed(&BTreeSet::new(), BTreeMap::from([(0, vec![1, 2])]));
        let bytes = local.end_transaction(&[], &[(1, change(0, "k", Some("v")))], (NOW, 100)).delta;
        assert!(decode(&bytes).is_ok());
        for cut in MAGIC.len()..bytes.len() {
            let error = decode(&bytes[..cut]).err().unwrap_or_else(|| panic!("cut at {cut} decoded"));
            assert!(error.contains("runs past the end") || error.contains("more than"), "{error}");
        }
        let mut flipped = bytes.clone();
        for at in MAGIC.len()..flipped.len() {
            flipped[at] ^= 0xff;
            let _ = fold(None, &[(0, flipped.clone())]);
            flipped[at] ^= 0xff;
        }
        // Random damage, several bytes at once and cuts (SplitMix64 from a fixed seed).
        let mut seed = 0x5eed_u64;
        let mut next = move || {
            seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)) as usize
        };
        for _ in 0..5_000 {
            let mut damaged = bytes.clone();
            for _ in 0..1 + next() % 4 {
                let at = MAGIC.len() + next() % (damaged.len() - MAGIC.len());
                damaged[at] = next() as u8;
            }
            damaged.truncate(MAGIC.len() + next() % (bytes.len() + 8 - MAGIC.len()));
            let _ = fold(None, &[(0, damaged)]);
        }
        assert!(decode(&[0, 0, 0, 0]).unwrap_err().contains("not a scale-out job's copy"));
        let mut recovered = LocalCopies::new(IDS.to_vec());
        recovered.hold(None, &[(0, vec![1, 2, 3])], NOW);
        assert!(recovered.held.is_empty());
    }
}
