//! Watermark markers: how event time crosses a repartition in scale-out mode.
//!
//! After a repartition, a task reads items that every task upstream sent, each on its own
//! process and batch. Its watermark must not pass a time some upstream task may still send
//! items of, so with each batch that moved their watermarks, the upstream tasks' owner appends
//! to the repartition topic a marker record (no key, header `sluice-wm`): the watermark of each
//! upstream task it owns, written in the batch's transaction after the batch's items. A marker
//! therefore comes after every item its watermark covers, in each partition it goes to.
//!
//! The reading side keeps, per task, the greatest watermark each upstream task reported (a
//! [`MarkerTable`], which moves with the task through its changelog). The task's watermark is
//! the least of them once every upstream task has reported (the source's partitions, known when
//! the repartition topics are made): the minimum over partitions Spark's and Flink's watermarks
//! take, here across processes.
//!
//! With [`Watermark::idle_after`](crate::Watermark::idle_after), a marker also names the
//! upstream tasks that are idle (no records for that long, or none since their owner took them
//! on); they count as reported and do not hold the watermark back (when all are, the greatest
//! sets it), as idle partitions do in one process. A task's watermark never goes back: one
//! given is kept (changelogged with the task), so an upstream task back from idleness behind it
//! sends late items, as a partition back from idleness does in one process.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sluice_client::ProducerRecord;
use sluice_protocol::record::RecordHeader;

use crate::record::KafkaRecord;
use crate::state::{decode, encode, lock_state, TaskChange};
use crate::stream::{idle_tasks, task_watermarks, Watermarks};

/// The header that makes a record of a repartition topic a watermark marker.
pub(crate) const MARKER_HEADER: &str = "sluice-wm";

/// What the job's repartitions share about its tasks: how many there are (the source's
/// partitions, set when the repartition topics are made) and a count of the changes of this
/// process's partitions (after one, markers are sent again: the batch that sent the last ones
/// may not have committed).
#[derive(Debug, Default, Clone)]
pub(crate) struct TaskCount {
    pub(crate) tasks: Arc<AtomicI32>,
    pub(crate) changes: Arc<AtomicU64>,
}

impl TaskCount {
    /// The number of tasks, once known.
    pub(crate) fn tasks(&self) -> Option<i32> {
        let tasks = self.tasks.load(Ordering::Relaxed);
        (tasks > 0).then_some(tasks)
    }
}

/// Which partitions of its topic a sender's markers go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MarkerTargets {
    /// Every partition (items go to each by key).
    Every,
    /// Every partition, naming no idle task: a top-k merge (each window's merge is one task's)
    /// waits for every task's windows, and an idle task's close by its own watermark alone.
    Merge,
}

/// The upstream side: at a batch's last piece, the markers of the watermarks that moved.
pub(crate) struct MarkerSender {
    watermarks: Watermarks,
    count: TaskCount,
    targets: MarkerTargets,
    /// What the last markers reported, and the count of partition changes then.
    sent: Option<(Report, u64)>,
    /// The count of partition changes at the batch under way, and whether it is the first batch
    /// since they changed (see `settled_watermarks`).
    settled_at: Option<u64>,
    unsettled: bool,
}

impl MarkerSender {
    pub(crate) fn new(watermarks: Watermarks, count: TaskCount, targets: MarkerTargets) -> Self {
        Self { watermarks, count, targets, sent: None, settled_at: None, unsettled: true }
    }

    /// For combining items before they are sent (read before a run is computed): the upstream
    /// tasks' watermarks as earlier batches left them. In the first batch after this process's
    /// partitions changed only if every watermark is a `with_watermark` step's, rewritten as
    /// its tasks were dropped and restored: another step's is rewritten only at that batch's
    /// last piece, and may hold what this process saw before it lost a task (then none).
    pub(crate) fn settled_watermarks(&mut self, piece: usize) -> Settled {
        let changes = self.count.changes.load(Ordering::Relaxed);
        if piece == 0 {
            self.unsettled = self.settled_at != Some(changes);
            self.settled_at = Some(changes);
        }
        let restored_at: Vec<Option<u64>> = self.watermarks.iter().map(|cell| lock_state(cell).restored_at).collect();
        let sources = restored_at.iter().all(Option::is_some);
        if self.unsettled && !(sources && restored_at.iter().all(|at| *at == Some(changes))) {
            return Settled::default();
        }
        Settled { watermarks: task_watermarks(&self.watermarks), complete: sources }
    }

    /// The last markers made were not sent (their transaction aborted): the next are made even
    /// if nothing changed.
    pub(crate) fn forget_sent(&mut self) {
        self.sent = None;
    }

    /// The markers to send to `topic` after this batch's items: none when no upstream task of
    /// this process has a watermark or is idle yet, or nothing changed since the last ones.
    pub(crate) fn markers(&mut self, topic: &str) -> Result<Vec<ProducerRecord>, String> {
        // Idle tasks do not hold back the watermark after a repartition; a top-k merge waits for
        // every task's windows, and an idle task's close by its own watermark alone.
        let idle = match self.targets {
            MarkerTargets::Every => idle_tasks(&self.watermarks),
            MarkerTargets::Merge => BTreeSet::new(),
        };
        let report = Report { watermarks: task_watermarks(&self.watermarks), idle };
        let changes = self.count.changes.load(Ordering::Relaxed);
        if report.is_empty() || self.sent.as_ref().is_some_and(|(sent, at)| *sent == report && *at == changes) {
            return Ok(Vec::new());
        }
        let partitions = self.count.tasks().ok_or("the number of the job's tasks is not known yet")?;
        let value = Bytes::from(report.encode()?);
        let records = (0..partitions)
            .map(|partition| ProducerRecord {
                topic: topic.to_owned(),
                partition: Some(partition),
                key: None,
                value: Some(value.clone()),
                headers: vec![RecordHeader::new(MARKER_HEADER, None)],
                timestamp: None,
            })
            .collect();
        self.sent = Some((report, changes));
        Ok(records)
    }
}

/// The upstream tasks' watermarks as earlier batches left them (see
/// `MarkerSender::settled_watermarks`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Settled {
    /// Each task's that has one.
    pub(crate) watermarks: BTreeMap<i32, i64>,
    /// Whether a task this process owns without a watermark here never had one: no owner ever
    /// reported it, so no task after the repartition has a watermark yet (each waits for every
    /// upstream task's report), and none of its items can be late there. Known for the
    /// watermarks of `with_watermark` steps, whose values follow their state.
    pub(crate) complete: bool,
}

/// What a marker reports: the watermark of each upstream task its sender owns (that has one),
/// and which of them are idle. Encoded as the watermarks' `(task, watermark)` pairs followed by
/// the idle tasks, so that a marker without idle tasks reads as one of the pairs alone.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Report {
    pub(crate) watermarks: BTreeMap<i32, i64>,
    pub(crate) idle: BTreeSet<i32>,
}

impl Report {
    fn is_empty(&self) -> bool {
        self.watermarks.is_empty() && self.idle.is_empty()
    }

    fn encode(&self) -> Result<Vec<u8>, String> {
        let pairs: Vec<(i32, i64)> = self.watermarks.iter().map(|(t, w)| (*t, *w)).collect();
        let idle: Vec<i32> = self.idle.iter().copied().collect();
        encode(&(pairs, idle))
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        let (pairs, idle): (Vec<(i32, i64)>, Vec<i32>) = match decode(bytes) {
            Ok(both) => both,
            // Written without idle tasks: the pairs alone.
            Err(_) => (decode(bytes)?, Vec::new()),
        };
        Ok(Self { watermarks: pairs.into_iter().collect(), idle: idle.into_iter().collect() })
    }
}

/// Whether `record` is a watermark marker.
pub(crate) fn is_marker(record: &KafkaRecord) -> bool {
    record.key.is_none() && record.headers.iter().any(|(key, _)| key == MARKER_HEADER)
}

/// What a marker reports.
pub(crate) fn marker_report(record: &KafkaRecord) -> Result<Report, String> {
    let value = record.value.as_ref().ok_or("a watermark marker without a value")?;
    Report::decode(value).map_err(|e| format!("a watermark marker: {e}"))
}

/// The key under which a [`MarkerTable`]'s changelog keeps a task's given watermark (upstream
/// tasks are numbered from 0).
const GIVEN: i32 = -1;

/// What an upstream task reported to a task: its greatest watermark, and whether it was idle at
/// its last marker.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Reported {
    watermark: Option<i64>,
    idle: bool,
}

/// The reading side: per task, what each upstream task reported, and the watermark given.
#[derive(Debug, Default)]
pub(crate) struct MarkerTable {
    tasks: BTreeMap<i32, BTreeMap<i32, Reported>>,
    /// Each task's watermark as given so far (it never goes back).
    given: BTreeMap<i32, i64>,
    /// Reported in the batch so far, taken in at its last piece (so that a batch's items are
    /// judged by the watermark earlier batches left, however the batch is cut into runs).
    pending: BTreeMap<(i32, i32), Reported>,
    /// (Task, upstream task or `GIVEN`) entries changed since the last changes were taken.
    dirty: BTreeSet<(i32, i32)>,
}

impl MarkerTable {
    /// Notes a marker read by `task`: each upstream task it names is idle or not as it says,
    /// and its watermark the greatest reported.
    pub(crate) fn note(&mut self, task: i32, report: &Report) {
        let named = report.watermarks.keys().chain(&report.idle).copied().collect::<BTreeSet<i32>>();
        for upstream in named {
            let watermark = report.watermarks.get(&upstream).copied();
            let pending = self.pending.entry((task, upstream)).or_default();
            pending.watermark = pending.watermark.max(watermark);
            pending.idle = report.idle.contains(&upstream);
        }
    }

    /// Takes in the batch's markers (at its last piece), and moves each task's given watermark
    /// (of `0..upstream` upstream tasks).
    pub(crate) fn take_pending(&mut self, upstream: Option<i32>) {
        for ((task, from), reported) in std::mem::take(&mut self.pending) {
            let entry = self.tasks.entry(task).or_default().entry(from).or_default();
            let updated = Reported { watermark: entry.watermark.max(reported.watermark), idle: reported.idle };
            if updated != *entry {
                *entry = updated;
                self.dirty.insert((task, from));
            }
        }
        let tasks: Vec<i32> = self.tasks.keys().copied().collect();
        for task in tasks {
            if let Some(watermark) = self.watermark(task, upstream) {
                if self.given.get(&task).is_none_or(|given| watermark > *given) {
                    self.given.insert(task, watermark);
                    // With no upstream task idle, the entries give this watermark back (each only
                    // grows); only one given past an idle task's must be kept.
                    if self.tasks.get(&task).is_some_and(|reported| reported.values().any(|r| r.idle)) {
                        self.dirty.insert((task, GIVEN));
                    }
                }
            }
        }
    }

    /// `task`'s watermark: once every upstream task `0..upstream` has reported (a marker naming
    /// another task, which no process of the job sends, counts for nothing), the least of those
    /// not idle (the greatest when all are), never behind the one given before.
    pub(crate) fn watermark(&self, task: i32, upstream: Option<i32>) -> Option<i64> {
        let given = self.given.get(&task).copied();
        let (Some(reported), Some(upstream)) = (self.tasks.get(&task), upstream) else { return given };
        let known = reported.range(0..upstream);
        if usize::try_from(upstream).is_ok_and(|n| known.clone().count() != n) {
            return given;
        }
        let active = known.clone().filter(|(_, r)| !r.idle).filter_map(|(_, r)| r.watermark).min();
        let now = match known.clone().any(|(_, r)| !r.idle) {
            true => active,
            false => known.filter_map(|(_, r)| r.watermark).max(),
        };
        now.max(given)
    }

    /// Every task's watermark (of those that have one).
    pub(crate) fn watermarks(&self, upstream: Option<i32>) -> BTreeMap<i32, i64> {
        self.tasks.keys().filter_map(|task| Some((*task, self.watermark(*task, upstream)?))).collect()
    }

    /// The changed entries, each a changelog record of its task keyed by `key` of the upstream
    /// task (or of -1 for the task's given watermark).
    pub(crate) fn take_changes(
        &mut self,
        key: impl Fn(i32) -> Result<Vec<u8>, String>,
    ) -> Result<Vec<TaskChange>, String> {
        let mut changes = Vec::new();
        for (task, upstream) in std::mem::take(&mut self.dirty) {
            let value = match upstream {
                GIVEN => self.given.get(&task).map(|given| Reported { watermark: Some(*given), idle: false }),
                _ => self.tasks.get(&task).and_then(|t| t.get(&upstream)).copied(),
            };
            if let Some(value) = value {
                changes.push(TaskChange::new(task, key(upstream)?, Some(encode(&value)?)));
            }
        }
        Ok(changes)
    }

    /// Puts one changelog entry back.
    pub(crate) fn restore(&mut self, task: i32, upstream: i32, value: Option<&[u8]>) -> Result<(), String> {
        match value {
            Some(value) => {
                let reported: Reported = match decode(value) {
                    Ok(reported) => reported,
                    // Written before idle tasks were reported: the watermark alone.
                    Err(e) => Reported {
                        watermark: Some(decode(value).map_err(|_| format!("a watermark marker entry: {e}"))?),
                        idle: false,
                    },
                };
                if upstream == GIVEN {
                    if let Some(given) = reported.watermark {
                        self.given.insert(task, given);
                    }
                } else {
                    self.tasks.entry(task).or_default().insert(upstream, reported);
                }
            }
            None if upstream == GIVEN => {
                self.given.remove(&task);
            }
            None => {
                if let Some(reported) = self.tasks.get_mut(&task) {
                    reported.remove(&upstream);
                }
            }
        }
        Ok(())
    }

    /// Every entry of these tasks, as [`MarkerTable::take_changes`] gives the changed ones.
    pub(crate) fn entries(
        &self,
        tasks: &BTreeSet<i32>,
        key: impl Fn(i32) -> Result<Vec<u8>, String>,
    ) -> Result<Vec<TaskChange>, String> {
        let mut entries = Vec::new();
        for (task, given) in self.given.iter().filter(|(task, _)| tasks.contains(task)) {
            let value = Reported { watermark: Some(*given), idle: false };
            entries.push(TaskChange::new(*task, key(GIVEN)?, Some(encode(&value)?)));
        }
        for (task, reported) in self.tasks.iter().filter(|(task, _)| tasks.contains(task)) {
            for (upstream, value) in reported {
                entries.push(TaskChange::new(*task, key(*upstream)?, Some(encode(value)?)));
            }
        }
        Ok(entries)
    }

    pub(crate) fn drop_tasks(&mut self, tasks: &BTreeSet<i32>) {
        self.tasks.retain(|task, _| !tasks.contains(task));
        self.given.retain(|task, _| !tasks.contains(task));
        self.pending.retain(|(task, _), _| !tasks.contains(task));
        self.dirty.retain(|(task, _)| !tasks.contains(task));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    use crate::stream::WatermarkValue;

    fn report(watermarks: &[(i32, i64)], idle: &[i32]) -> Report {
        Report { watermarks: watermarks.iter().copied().collect(), idle: idle.iter().copied().collect() }
    }

    #[test]
    fn a_tasks_watermark_is_the_least_reported_once_every_upstream_task_has() {
        let mut table = MarkerTable::default();
        table.note(0, &report(&[(0, 5_000), (1, 3_000)], &[]));
        assert_eq!(table.watermark(0, Some(2)), None, "pending until the batch's last piece");
        table.take_pending(Some(2));
        assert_eq!(table.watermark(0, Some(2)), Some(3_000));
        assert_eq!(table.watermark(0, Some(3)), Some(3_000), "upstream task 2 has not reported: the one given");
        table.note(0, &report(&[(1, 2_000), (2, 9_000)], &[]));
        table.take_pending(Some(3));
        assert_eq!(table.watermark(0, Some(3)), Some(3_000), "a marker that went back is ignored");
        table.note(0, &report(&[(7, 1_000)], &[]));
        table.take_pending(Some(3));
        assert_eq!(table.watermark(0, Some(3)), Some(3_000), "a task the job does not have counts for nothing");
        assert_eq!(table.watermark(1, Some(3)), None);
        assert_eq!(table.watermarks(Some(3)), BTreeMap::from([(0, 3_000)]));

        // The task moves: its entries go through the changelog.
        let changes = table.take_changes(|upstream| encode(&upstream)).unwrap();
        assert_eq!(changes.len(), 4, "task 7's entry too; the watermark given, which they give back, not");
        assert!(table.take_changes(|upstream| encode(&upstream)).unwrap().is_empty());
        let mut moved = MarkerTable::default();
        for change in &changes {
            let upstream: i32 = decode(&change.key).unwrap();
            moved.restore(change.task, upstream, change.value.as_deref()).unwrap();
        }
        assert_eq!(moved.watermark(0, Some(3)), Some(3_000));
        moved.drop_tasks(&BTreeSet::from([0]));
        assert_eq!(moved.watermark(0, Some(3)), None);
    }

    #[test]
    fn idle_upstream_tasks_count_as_reported_without_holding_the_watermark_back_and_it_never_goes_back() {
        let mut table = MarkerTable::default();
        // Upstream task 2 never had records; 1 has been quiet.
        table.note(0, &report(&[(0, 9_000), (1, 2_000)], &[1]));
        table.take_pending(Some(3));
        assert_eq!(table.watermark(0, Some(3)), None, "task 2 has not reported");
        table.note(0, &report(&[], &[2]));
        table.take_pending(Some(3));
        assert_eq!(table.watermark(0, Some(3)), Some(9_000), "the least of those not idle");
        table.note(0, &report(&[(0, 9_500), (1, 2_000)], &[0, 1]));
        table.take_pending(Some(3));
        assert_eq!(table.watermark(0, Some(3)), Some(9_500), "all idle: the greatest");
        // Task 1 comes back behind: the watermark stays, through a move too.
        table.note(0, &report(&[(0, 9_500), (1, 4_000)], &[0]));
        table.take_pending(Some(3));
        assert_eq!(table.watermark(0, Some(3)), Some(9_500));
        let mut moved = MarkerTable::default();
        for change in table.take_changes(|upstream| encode(&upstream)).unwrap() {
            moved.restore(change.task, decode(&change.key).unwrap(), change.value.as_deref()).unwrap();
        }
        assert_eq!(moved.watermark(0, Some(3)), Some(9_500));
        moved.note(0, &report(&[(1, 12_000)], &[]));
        moved.take_pending(Some(3));
        assert_eq!(moved.watermark(0, Some(3)), Some(12_000), "0 is idle, 1 at 12 s, 2 idle without one");
        moved.note(0, &report(&[(0, 11_000)], &[]));
        moved.take_pending(Some(3));
        assert_eq!(moved.watermark(0, Some(3)), Some(12_000), "0 back at 11 s");
        moved.note(0, &report(&[(0, 14_000), (1, 13_000)], &[]));
        moved.take_pending(Some(3));
        assert_eq!(moved.watermark(0, Some(3)), Some(13_000));
    }

    #[test]
    fn an_entry_written_before_idle_tasks_were_reported_restores_as_its_watermark() {
        let mut table = MarkerTable::default();
        table.restore(0, 0, Some(&encode(&7_000i64).unwrap())).unwrap();
        table.restore(0, 1, Some(&encode(&Reported { watermark: Some(5_000), idle: false }).unwrap())).unwrap();
        assert_eq!(table.watermark(0, Some(2)), Some(5_000));
        assert!(table.restore(0, 2, Some(&[])).unwrap_err().contains("a watermark marker entry"));
    }

    #[test]
    fn a_marker_without_idle_tasks_reads_as_its_watermarks_alone() {
        let pairs: Vec<(i32, i64)> = vec![(1, 1_000), (3, -5)];
        let old = encode(&pairs).unwrap();
        assert_eq!(Report::decode(&old).unwrap(), report(&[(1, 1_000), (3, -5)], &[]));
        let new = report(&[(1, 1_000)], &[1, 2]);
        assert_eq!(Report::decode(&new.encode().unwrap()).unwrap(), new);
        let read_as_pairs: Vec<(i32, i64)> = decode(&new.encode().unwrap()).unwrap();
        assert_eq!(read_as_pairs, vec![(1, 1_000)], "the pairs come first");
        assert!(Report::decode(&[0xff]).is_err());
    }

    #[test]
    fn markers_go_out_when_a_watermark_moved_or_the_partitions_changed() {
        let cell = Arc::new(Mutex::new(WatermarkValue::default()));
        let count = TaskCount::default();
        count.tasks.store(3, Ordering::Relaxed);
        let mut sender = MarkerSender::new(vec![Arc::clone(&cell)], count.clone(), MarkerTargets::Every);
        assert!(sender.markers("t").unwrap().is_empty(), "no watermark yet");
        cell.lock().unwrap().tasks = BTreeMap::from([(1, 1_000)]);
        let markers = sender.markers("t").unwrap();
        assert_eq!(markers.iter().map(|m| m.partition).collect::<Vec<_>>(), vec![Some(0), Some(1), Some(2)]);
        let record = KafkaRecord {
            topic: Arc::from("t"),
            partition: 2,
            offset: 0,
            timestamp: 0,
            key: None,
            value: markers[2].value.clone(),
            headers: vec![(MARKER_HEADER.to_owned(), None)],
        };
        assert!(is_marker(&record));
        assert_eq!(marker_report(&record).unwrap(), report(&[(1, 1_000)], &[]));
        assert!(sender.markers("t").unwrap().is_empty(), "nothing moved");
        cell.lock().unwrap().idle = BTreeSet::from([1, 2]);
        let markers = sender.markers("t").unwrap();
        let record = KafkaRecord { value: markers[0].value.clone(), ..record };
        assert_eq!(marker_report(&record).unwrap(), report(&[(1, 1_000)], &[1, 2]), "tasks went idle");
        assert!(sender.markers("t").unwrap().is_empty(), "nothing changed");
        count.changes.fetch_add(1, Ordering::Relaxed);
        assert_eq!(sender.markers("t").unwrap().len(), 3, "sent again after the partitions changed");
        let mut merge = MarkerSender::new(vec![cell], count.clone(), MarkerTargets::Merge);
        let to_merge = merge.markers("t").unwrap();
        assert_eq!(to_merge.len(), 3, "every merge task hears of every task's windows");
        let record = KafkaRecord { value: to_merge[0].value.clone(), ..record };
        assert_eq!(marker_report(&record).unwrap(), report(&[(1, 1_000)], &[]), "a top-k merge waits for idle tasks");

        // Combining waits a batch after each change of the partitions (and after the start),
        // unless every watermark was rewritten from its restored state at the change.
        let none = Settled::default();
        let settled = |complete: bool| Settled { watermarks: BTreeMap::from([(1, 1_000)]), complete };
        assert_eq!(sender.settled_watermarks(0), none, "the first batch");
        assert_eq!(sender.settled_watermarks(0), settled(false));
        count.changes.fetch_add(1, Ordering::Relaxed);
        assert_eq!((sender.settled_watermarks(0), sender.settled_watermarks(1)), (none.clone(), none.clone()));
        assert_eq!(sender.settled_watermarks(0), settled(false));
        let changes = count.changes.fetch_add(1, Ordering::Relaxed) + 1;
        sender.watermarks[0].lock().unwrap().restored_at = Some(changes - 1);
        assert_eq!(sender.settled_watermarks(0), none, "rewritten before the last change");
        let changes = count.changes.fetch_add(1, Ordering::Relaxed) + 1;
        sender.watermarks[0].lock().unwrap().restored_at = Some(changes);
        assert_eq!(sender.settled_watermarks(0), settled(true), "rewritten at the change: its first batch combines");
        assert_eq!(sender.settled_watermarks(1), settled(true), "and its later pieces");
        assert_eq!(sender.settled_watermarks(0), settled(true), "and the batches after it");
    }
}
