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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use sluice_client::ProducerRecord;
use sluice_protocol::record::RecordHeader;

use crate::record::KafkaRecord;
use crate::state::{decode, encode, TaskChange};
use crate::stream::{task_watermarks, Watermarks};

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
    /// Partition 0 (every item goes there).
    First,
}

/// The upstream side: at a batch's last piece, the markers of the watermarks that moved.
pub(crate) struct MarkerSender {
    watermarks: Watermarks,
    count: TaskCount,
    targets: MarkerTargets,
    /// The watermarks last sent, and the count of partition changes then.
    sent: Option<(BTreeMap<i32, i64>, u64)>,
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
    /// tasks' watermarks as earlier batches left them. None in the first batch after this
    /// process's partitions changed: the cell of a task taken on (again) is rewritten only at
    /// that batch's last piece, and may hold what this process saw before it lost the task.
    pub(crate) fn settled_watermarks(&mut self, piece: usize) -> BTreeMap<i32, i64> {
        let changes = self.count.changes.load(Ordering::Relaxed);
        if piece == 0 {
            self.unsettled = self.settled_at != Some(changes);
            self.settled_at = Some(changes);
        }
        if self.unsettled {
            return BTreeMap::new();
        }
        task_watermarks(&self.watermarks)
    }

    /// The markers to send to `topic` after this batch's items: none when no upstream task of
    /// this process has a watermark yet, or nothing moved since the last ones.
    pub(crate) fn markers(&mut self, topic: &str) -> Result<Vec<ProducerRecord>, String> {
        let tasks = task_watermarks(&self.watermarks);
        let changes = self.count.changes.load(Ordering::Relaxed);
        if tasks.is_empty() || self.sent.as_ref().is_some_and(|(sent, at)| *sent == tasks && *at == changes) {
            return Ok(Vec::new());
        }
        let partitions = match self.targets {
            MarkerTargets::First => 1,
            MarkerTargets::Every => self.count.tasks().ok_or("the number of the job's tasks is not known yet")?,
        };
        let value = Bytes::from(encode(&tasks.iter().map(|(t, w)| (*t, *w)).collect::<Vec<(i32, i64)>>())?);
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
        self.sent = Some((tasks, changes));
        Ok(records)
    }
}

/// Whether `record` is a watermark marker.
pub(crate) fn is_marker(record: &KafkaRecord) -> bool {
    record.key.is_none() && record.headers.iter().any(|(key, _)| key == MARKER_HEADER)
}

/// A marker's watermarks, by upstream task.
pub(crate) fn marker_watermarks(record: &KafkaRecord) -> Result<Vec<(i32, i64)>, String> {
    let value = record.value.as_ref().ok_or("a watermark marker without a value")?;
    decode(value).map_err(|e| format!("a watermark marker: {e}"))
}

/// The reading side: per task, the greatest watermark each upstream task reported.
#[derive(Debug, Default)]
pub(crate) struct MarkerTable {
    tasks: BTreeMap<i32, BTreeMap<i32, i64>>,
    /// Reported in the batch so far, taken in at its last piece (so that a batch's items are
    /// judged by the watermark earlier batches left, however the batch is cut into runs).
    pending: BTreeMap<(i32, i32), i64>,
    /// (Task, upstream task) entries changed since the last changes were taken.
    dirty: BTreeSet<(i32, i32)>,
}

impl MarkerTable {
    /// Notes a marker read by `task`.
    pub(crate) fn note(&mut self, task: i32, reported: &[(i32, i64)]) {
        for (upstream, watermark) in reported {
            let pending = self.pending.entry((task, *upstream)).or_insert(*watermark);
            *pending = (*pending).max(*watermark);
        }
    }

    /// Takes in the batch's markers (at its last piece).
    pub(crate) fn take_pending(&mut self) {
        for ((task, upstream), watermark) in std::mem::take(&mut self.pending) {
            let entry = self.tasks.entry(task).or_default().entry(upstream).or_insert(watermark);
            if watermark >= *entry {
                *entry = watermark;
                self.dirty.insert((task, upstream));
            }
        }
    }

    /// `task`'s watermark: the least its upstream tasks `0..upstream` reported, once all have (a
    /// marker naming another task, which no process of the job sends, counts for nothing).
    pub(crate) fn watermark(&self, task: i32, upstream: Option<i32>) -> Option<i64> {
        let (reported, upstream) = (self.tasks.get(&task)?, upstream?);
        let known = reported.range(0..upstream);
        let all = usize::try_from(upstream).is_ok_and(|n| known.clone().count() == n);
        all.then(|| known.map(|(_, watermark)| *watermark).min()).flatten()
    }

    /// Every task's watermark (of those that have one).
    pub(crate) fn watermarks(&self, upstream: Option<i32>) -> BTreeMap<i32, i64> {
        self.tasks.keys().filter_map(|task| Some((*task, self.watermark(*task, upstream)?))).collect()
    }

    /// The changed entries, each a changelog record of its task keyed by the upstream task.
    pub(crate) fn take_changes(
        &mut self,
        key: impl Fn(i32) -> Result<Vec<u8>, String>,
    ) -> Result<Vec<TaskChange>, String> {
        let mut changes = Vec::new();
        for (task, upstream) in std::mem::take(&mut self.dirty) {
            if let Some(watermark) = self.tasks.get(&task).and_then(|t| t.get(&upstream)) {
                changes.push(TaskChange { task, key: key(upstream)?, value: Some(encode(watermark)?) });
            }
        }
        Ok(changes)
    }

    /// Puts one changelog entry back.
    pub(crate) fn restore(&mut self, task: i32, upstream: i32, value: Option<&[u8]>) -> Result<(), String> {
        match value {
            Some(value) => {
                let watermark = decode(value).map_err(|e| format!("a watermark marker entry: {e}"))?;
                self.tasks.entry(task).or_default().insert(upstream, watermark);
            }
            None => {
                if let Some(reported) = self.tasks.get_mut(&task) {
                    reported.remove(&upstream);
                }
            }
        }
        Ok(())
    }

    pub(crate) fn drop_tasks(&mut self, tasks: &BTreeSet<i32>) {
        self.tasks.retain(|task, _| !tasks.contains(task));
        self.pending.retain(|(task, _), _| !tasks.contains(task));
        self.dirty.retain(|(task, _)| !tasks.contains(task));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    use crate::stream::WatermarkValue;

    #[test]
    fn a_tasks_watermark_is_the_least_reported_once_every_upstream_task_has() {
        let mut table = MarkerTable::default();
        table.note(0, &[(0, 5_000), (1, 3_000)]);
        assert_eq!(table.watermark(0, Some(2)), None, "pending until the batch's last piece");
        table.take_pending();
        assert_eq!(table.watermark(0, Some(2)), Some(3_000));
        assert_eq!(table.watermark(0, Some(3)), None, "upstream task 2 has not reported");
        table.note(0, &[(1, 2_000), (2, 9_000)]);
        table.take_pending();
        assert_eq!(table.watermark(0, Some(3)), Some(3_000), "a marker that went back is ignored");
        table.note(0, &[(7, 1_000)]);
        table.take_pending();
        assert_eq!(table.watermark(0, Some(3)), Some(3_000), "a task the job does not have counts for nothing");
        assert_eq!(table.watermark(0, Some(4)), None);
        assert_eq!(table.watermarks(Some(3)), BTreeMap::from([(0, 3_000)]));

        // The task moves: its entries go through the changelog.
        let changes = table.take_changes(|upstream| encode(&upstream)).unwrap();
        assert_eq!(changes.len(), 4, "task 7's entry too");
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
        assert_eq!(marker_watermarks(&record).unwrap(), vec![(1, 1_000)]);
        assert!(sender.markers("t").unwrap().is_empty(), "nothing moved");
        count.changes.fetch_add(1, Ordering::Relaxed);
        assert_eq!(sender.markers("t").unwrap().len(), 3, "sent again after the partitions changed");
        let mut first = MarkerSender::new(vec![cell], count.clone(), MarkerTargets::First);
        assert_eq!(first.markers("t").unwrap().len(), 1);

        // Combining waits a batch after each change of the partitions (and after the start).
        assert!(sender.settled_watermarks(0).is_empty(), "the first batch");
        assert_eq!(sender.settled_watermarks(0), BTreeMap::from([(1, 1_000)]));
        count.changes.fetch_add(1, Ordering::Relaxed);
        assert!(sender.settled_watermarks(0).is_empty() && sender.settled_watermarks(1).is_empty());
        assert_eq!(sender.settled_watermarks(0), BTreeMap::from([(1, 1_000)]));
    }
}
