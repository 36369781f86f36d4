//! Event time: windows by a time carried in the records rather than by batch, closed by a
//! watermark, as in Spark's Structured Streaming (`withWatermark`, `window`).
//!
//! [`DStream::with_watermark`] stamps each item with its event time and tracks the greatest
//! event time seen per source partition. The watermark is the least of those over the
//! partitions that are not idle, minus the allowed lateness; it only moves forward, and a batch
//! is judged by the watermark the batches before it left. An item older than that is late:
//! dropped and counted, or kept and marked so that it can be sent elsewhere (a side output).
//! [`DStream::reduce_by_key_and_event_window`] gathers items into tumbling or sliding windows
//! and gives each window once, when the watermark passes its end (Spark's append mode).
//!
//! Batch time, not the wall clock, decides when a partition is idle, and all of it is saved with
//! each batch's commit: a re-run batch gives what its first run gave.

use std::collections::{BTreeMap, BTreeSet};

use crate::hash::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::graph::{lock, BatchInput, Parts};
use crate::keyed::{part_tasks, StateKey, NOT_SOURCE_PARTS};
use crate::state::{decode, encode, lock_state, Stateful, TaskChange};
use crate::stream::{
    greatest, least_watermark, merge, task_parts, task_watermark, DStream, GivenTasks, WatermarkCell, WatermarkValue,
};

/// An item with its event time (ms since the epoch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timed<T> {
    /// The item's event time.
    pub time_ms: i64,
    /// Whether the item came after the watermark had passed its time (only seen with
    /// [`Watermark::keep_late`]).
    pub late: bool,
    /// The item.
    pub item: T,
}

impl<T> Timed<T> {
    /// The same event time and lateness, with the item mapped.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Timed<U> {
        Timed { time_ms: self.time_ms, late: self.late, item: f(self.item) }
    }
}

/// How a stream's watermark is kept: Spark's `withWatermark(column, delay)`, per source
/// partition, with idle partitions left out.
#[derive(Debug, Clone)]
pub struct Watermark {
    allowed_lateness_ms: i64,
    idle_after_ms: Option<u64>,
    keep_late: bool,
    late_records: Arc<AtomicU64>,
}

impl Watermark {
    /// The watermark trails the greatest event time by `allowed_lateness`.
    pub fn new(allowed_lateness: Duration) -> Self {
        Self {
            allowed_lateness_ms: i64::try_from(allowed_lateness.as_millis()).unwrap_or(i64::MAX),
            idle_after_ms: None,
            keep_late: false,
            late_records: Arc::default(),
        }
    }

    /// A partition without records for `idle_after` of batch time does not hold the watermark
    /// back (when every partition is idle, the greatest of them sets it, so windows still close
    /// when input stops). Without this, a partition that stops holds it where it is.
    ///
    /// In scale-out mode it is the watermark after a repartition that idle partitions do not
    /// hold back (batch time is the wall clock's there): their owners report them idle in the
    /// watermark markers, as well as partitions they have had no records of since they took
    /// them on. A partition back from idleness behind the watermark sends late items, as in one
    /// process; its items are therefore not combined before the repartition
    /// ([`DStream::repartition_combined`] sends each). A task's own watermark, before a
    /// repartition, is held back by no other partition, so there it changes nothing.
    pub fn idle_after(mut self, idle_after: Duration) -> Self {
        self.idle_after_ms = Some(u64::try_from(idle_after.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// Late items stay in the stream marked [`Timed::late`] (event-time windows skip them;
    /// filter them out of a second stream built from the same source for a side output)
    /// instead of being dropped.
    pub fn keep_late(mut self) -> Self {
        self.keep_late = true;
        self
    }

    /// How many late items this process has seen (dropped, or kept and marked).
    pub fn late_records(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.late_records)
    }

    /// Whether idle partitions are left out.
    pub(crate) fn leaves_idle_out(&self) -> bool {
        self.idle_after_ms.is_some()
    }

    /// Counts a late item; whether it stays in the stream (marked).
    pub(crate) fn count_late(&self) -> bool {
        self.late_records.fetch_add(1, Ordering::Relaxed);
        self.keep_late
    }
}

/// Where a part's items come from: its source partition; ("", -1) for a stream whose parts are
/// no longer the source's (the whole stream); ("", i) for part i of batches given in a test.
type PartKey = (String, i32);

/// A watermark's state: each partition's greatest event time and the batch time it last had
/// records, and the watermark.
#[derive(Default, Serialize, Deserialize)]
struct WatermarkState {
    partitions: BTreeMap<PartKey, (i64, u64)>,
    watermark: Option<i64>,
    #[serde(skip)]
    changed: bool,
    /// Scale-out mode: each partition is a task with a watermark of its own (its greatest event
    /// time minus the allowed lateness), kept in the changelog.
    #[serde(skip)]
    per_task: bool,
    /// Scale-out mode: partitions changed since the last changes were taken.
    #[serde(skip)]
    dirty: BTreeSet<PartKey>,
    /// Scale-out mode: the batch's greatest event time per partition so far, taken into
    /// `partitions` at its last piece (so that a batch's items are judged by what earlier
    /// batches left, however the batch is cut into runs).
    #[serde(skip)]
    pending: BTreeMap<PartKey, i64>,
    /// Scale-out mode with `idle_after`: the batch time since which this process has had each
    /// of its source partitions without records since it took them on.
    #[serde(skip)]
    unseen_since: BTreeMap<PartKey, u64>,
    /// Scale-out mode: the step's published value, its watermark, and the job's count of
    /// partition changes: the tasks' watermarks are published again whenever tasks are dropped
    /// or restored.
    #[serde(skip)]
    publish: Option<(WatermarkCell, Watermark, Arc<AtomicU64>)>,
}

impl Stateful for WatermarkState {
    fn kind(&self) -> &'static str {
        "watermark"
    }

    fn take_delta(&mut self) -> Result<Option<Vec<u8>>, String> {
        // Small (one entry per partition): the delta is the whole state.
        if !std::mem::take(&mut self.changed) {
            return Ok(None);
        }
        self.snapshot().map(Some)
    }

    fn snapshot(&mut self) -> Result<Vec<u8>, String> {
        encode(self)
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        *self = decode(snapshot)?;
        Ok(())
    }

    fn apply_delta(&mut self, delta: &[u8]) -> Result<(), String> {
        self.restore(delta)
    }

    fn splits_by_task(&self) -> bool {
        true
    }

    /// One record per partition that moved: key its topic, value its greatest event time and
    /// the batch time it last had records.
    fn take_task_changes(&mut self) -> Result<Vec<TaskChange>, String> {
        let mut changes = Vec::new();
        for key in std::mem::take(&mut self.dirty) {
            if let Some(seen) = self.partitions.get(&key) {
                changes.push(TaskChange::new(key.1, encode(&key.0)?, Some(encode(seen)?)));
            }
        }
        Ok(changes)
    }

    fn restore_task_entry(&mut self, task: i32, key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
        let topic: String = decode(key).map_err(|e| format!("a watermark record's key: {e}"))?;
        match value {
            Some(value) => {
                let seen = decode(value).map_err(|e| format!("a watermark record's value: {e}"))?;
                self.partitions.insert((topic, task), seen);
            }
            None => {
                self.partitions.remove(&(topic, task));
            }
        }
        self.republish();
        Ok(())
    }

    fn task_entries(&mut self, tasks: &BTreeSet<i32>) -> Result<Vec<TaskChange>, String> {
        let held = self.partitions.iter().filter(|((_, partition), _)| tasks.contains(partition));
        held.map(|((topic, partition), seen)| Ok(TaskChange::new(*partition, encode(topic)?, Some(encode(seen)?))))
            .collect()
    }

    fn drop_tasks(&mut self, tasks: &BTreeSet<i32>) {
        self.partitions.retain(|(_, partition), _| !tasks.contains(partition));
        self.dirty.retain(|(_, partition)| !tasks.contains(partition));
        self.pending.retain(|(_, partition), _| !tasks.contains(partition));
        self.unseen_since.retain(|(_, partition), _| !tasks.contains(partition));
        self.republish();
    }
}

impl WatermarkState {
    /// Scale-out mode: publishes the tasks' watermarks as the state holds them now (tasks
    /// dropped or restored), noting the count of partition changes they are exact for.
    fn republish(&self) {
        let Some((cell, spec, changes)) = &self.publish else { return };
        let tasks = self.task_watermarks(spec);
        let mut published = lock_state(cell);
        published.tasks = tasks;
        published.restored_at = Some(changes.load(Ordering::Relaxed));
    }

    /// Scale-out mode: a partition's own watermark, as earlier batches left it.
    fn task_watermark(&self, key: &PartKey, spec: &Watermark) -> Option<i64> {
        self.partitions.get(key).map(|(max, _)| max.saturating_sub(spec.allowed_lateness_ms))
    }

    /// Scale-out mode: every partition's own watermark, by task.
    fn task_watermarks(&self, spec: &Watermark) -> BTreeMap<i32, i64> {
        self.partitions
            .iter()
            .map(|((_, task), (max, _))| (*task, max.saturating_sub(spec.allowed_lateness_ms)))
            .collect()
    }

    /// Scale-out mode: the tasks idle at `now` (batch time) among `owned`, the partitions this
    /// process owns of the topics the step reads: each of the task's partitions (one per topic)
    /// without records for longer than `idle_after_ms`, or none since it took them on that long
    /// ago.
    fn idle_tasks(&mut self, owned: &[(Arc<str>, i32)], idle_after_ms: u64, now: u64) -> BTreeSet<i32> {
        let owned: BTreeSet<PartKey> = owned.iter().map(|(topic, partition)| (topic.to_string(), *partition)).collect();
        self.unseen_since.retain(|key, _| owned.contains(key) && !self.partitions.contains_key(key));
        let (mut idle, mut busy) = (BTreeSet::new(), BTreeSet::new());
        for key in owned {
            let since = match self.partitions.get(&key) {
                Some((_, seen)) => *seen,
                None => *self.unseen_since.entry(key.clone()).or_insert(now),
            };
            if now.saturating_sub(since) > idle_after_ms {
                idle.insert(key.1);
            } else {
                busy.insert(key.1);
            }
        }
        idle.retain(|task| !busy.contains(task));
        idle
    }

    /// The watermark after a batch at `now` (batch time).
    fn advance(&mut self, spec: &Watermark, now: u64) -> Option<i64> {
        let active = self
            .partitions
            .values()
            .filter(|(_, seen)| spec.idle_after_ms.is_none_or(|idle| now.saturating_sub(*seen) <= idle));
        let held_by = match active.map(|(max, _)| *max).min() {
            Some(least) => Some(least),
            None => self.partitions.values().map(|(max, _)| *max).max(),
        };
        if let Some(held_by) = held_by {
            let candidate = held_by.saturating_sub(spec.allowed_lateness_ms);
            if self.watermark.is_none_or(|w| candidate > w) {
                self.watermark = Some(candidate);
                self.changed = true;
            }
        }
        self.watermark
    }
}

impl<T: Send + 'static> DStream<T> {
    /// Stamps each item with its event time (`event_time_ms`) and keeps a watermark, per source
    /// partition: apply it to the source's parts (after element-wise operators, before those
    /// that gather, union or join them; there the whole stream counts as one partition). Items
    /// older than the watermark left by earlier batches are late: dropped and counted, or with
    /// [`Watermark::keep_late`] kept and marked. In scale-out mode each partition is a task with
    /// a watermark of its own (its greatest event time minus the allowed lateness), which
    /// judges its items and closes its windows, unless the items are repartitioned next: then
    /// the tasks after the repartition judge them by every source partition's watermark, as
    /// one process would (and [`Watermark::idle_after`] leaves idle partitions out there).
    pub fn with_watermark(
        self,
        spec: Watermark,
        event_time_ms: impl Fn(&T) -> i64 + Send + 'static,
    ) -> DStream<Timed<T>> {
        let cell: WatermarkCell =
            Arc::new(Mutex::new(WatermarkValue { spec: Some(spec.clone()), ..WatermarkValue::default() }));
        let publish = Arc::clone(&cell);
        let per_task = self.scales_out();
        let aligned = self.alignment().clone();
        if per_task && !self.is_aligned() {
            self.record_error(
                "with_watermark in scale-out mode keeps each source partition's watermark in its task, so only element-wise operators (map, flat_map, filter, key_by, map_partitions) may come between the source (or a repartition) and it".into(),
            );
        }
        let republish = per_task.then(|| {
            let changes = Arc::clone(&self.task_count().changes);
            lock_state(&cell).restored_at = Some(changes.load(Ordering::Relaxed));
            (Arc::clone(&cell), spec.clone(), changes)
        });
        let state = WatermarkState { per_task, publish: republish, ..WatermarkState::default() };
        // Each piece of a batch as it comes, against the watermark earlier batches left; the
        // watermark moves once the batch's last piece is in.
        self.stateful_per_piece(state, move |state, input, parts| {
            let stream_before = state.watermark;
            let judged_later = lock_state(&publish).judged_after_repartition;
            let now = input.time_ms;
            // The parts are the source's read tasks (one partition each) unless an operator
            // upstream gathered or combined them: then the stream is taken as one whole.
            let sources = match &input.part_sources {
                Some(sources) if sources.len() == parts.len() => Some(sources.as_slice()),
                Some(_) => None,
                None => Some(&[][..]),
            };
            let mut out: Parts<Timed<T>> = Vec::with_capacity(parts.len());
            for (index, part) in parts.into_iter().enumerate() {
                let key: PartKey = match sources {
                    Some(sources) => match sources.get(index) {
                        Some((topic, partition)) => (topic.to_string(), *partition),
                        // Batches given in a test: each part is a partition.
                        None => (String::new(), i32::try_from(index).unwrap_or(i32::MAX)),
                    },
                    None => (String::new(), -1),
                };
                // In scale-out mode each partition is judged by its own watermark, unless a
                // repartition follows: there every partition's counts, as in one process.
                let before = match (state.per_task, judged_later) {
                    (true, true) => None,
                    (true, false) => state.task_watermark(&key, &spec),
                    (false, _) => stream_before,
                };
                let mut timed = Vec::with_capacity(part.len());
                let mut greatest: Option<i64> = None;
                for item in part {
                    let time_ms = event_time_ms(&item);
                    greatest = Some(greatest.map_or(time_ms, |g| g.max(time_ms)));
                    let late = before.is_some_and(|w| time_ms < w);
                    if late {
                        spec.late_records.fetch_add(1, Ordering::Relaxed);
                        if !spec.keep_late {
                            continue;
                        }
                    }
                    timed.push(Timed { time_ms, late, item });
                }
                match greatest {
                    Some(greatest) if state.per_task => {
                        let pending = state.pending.entry(key).or_insert(greatest);
                        *pending = (*pending).max(greatest);
                    }
                    Some(greatest) => {
                        let entry = state.partitions.entry(key).or_insert((greatest, now));
                        *entry = (entry.0.max(greatest), now);
                        state.changed = true;
                    }
                    None => {}
                }
                out.push(timed);
            }
            if input.last_piece {
                for (key, greatest) in std::mem::take(&mut state.pending) {
                    let entry = state.partitions.entry(key.clone()).or_insert((greatest, now));
                    *entry = (entry.0.max(greatest), now);
                    state.dirty.insert(key);
                    state.changed = true;
                }
                let least = state.advance(&spec, now);
                let tasks = if state.per_task { state.task_watermarks(&spec) } else { BTreeMap::new() };
                let idle = match (state.per_task, spec.idle_after_ms) {
                    (true, Some(idle_after_ms)) => state.idle_tasks(&input.owned(&aligned), idle_after_ms, now),
                    _ => BTreeSet::new(),
                };
                let mut published = lock_state(&publish);
                published.least = least;
                published.tasks = tasks;
                published.idle = idle;
            }
            Some(out)
        })
        .with_watermarks(vec![cell])
    }
}

/// An item of an event-time window `[start_ms, end_ms)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Windowed<T> {
    /// The window's start (inclusive), ms since the epoch.
    pub start_ms: i64,
    /// The window's end (exclusive).
    pub end_ms: i64,
    /// The item.
    pub item: T,
}

/// An event-time window operator's state, kept per slide rather than per window: every window
/// is a run of whole slides, so each item is reduced into one slide's values, and a window's
/// values are its slides' reduced together when it is given. A batch then changes one or two
/// slides, not every window holding them (a sliding window of six slides would otherwise take
/// each item six times, and write six windows to the checkpoint). In scale-out mode each task
/// (source partition) has windows of its own, closed by its own watermark; otherwise there is
/// one, task 0.
struct EventWindows<K, V> {
    reduce: Box<dyn Fn(V, V) -> V + Send>,
    tasks: BTreeMap<i32, TaskWindows<K, V>>,
    /// Scale-out mode: windows per task, their changes written to the changelog.
    per_task: bool,
    /// Scale-out mode: why the windows cannot be kept per task, reported with the changes.
    problem: Option<String>,
}

/// One task's windows.
struct TaskWindows<K, V> {
    /// Each slide's values by key, for the slides a window still to be given holds.
    slides: BTreeMap<i64, HashMap<K, V>>,
    /// Windows ending at or before this were given (the watermark they were given at).
    given_until: Option<i64>,
    /// Slides changed since the last delta.
    changed: BTreeSet<i64>,
    /// Slides dropped since the last delta (every window holding them given).
    dropped: Vec<i64>,
    /// Scale-out mode: the keys of the slides dropped since the last changes (each removed from
    /// the changelog with a tombstone).
    dropped_keys: Vec<(i64, Vec<K>)>,
    /// Scale-out mode: the keys whose values changed since the last changes, by slide (only
    /// they are written to the changelog).
    changed_keys: BTreeMap<i64, HashSet<K>>,
    /// Whether `given_until` moved since the last delta.
    given_changed: bool,
}

impl<K, V> Default for TaskWindows<K, V> {
    fn default() -> Self {
        Self {
            slides: BTreeMap::new(),
            given_until: None,
            changed: BTreeSet::new(),
            dropped: Vec::new(),
            dropped_keys: Vec::new(),
            changed_keys: BTreeMap::new(),
            given_changed: false,
        }
    }
}

/// Slides' values, by slide start, as encoded.
type EncodedSlides<K, V> = Vec<(i64, Vec<(K, V)>)>;

/// A slide's values, borrowed for encoding (in no particular order: a slide restored from them
/// is the same).
fn slide_contents<K, V>(slide: &HashMap<K, V>) -> Vec<(&K, &V)> {
    slide.iter().collect()
}

/// A batch's changes: the whole contents of each slide it changed, the slides it dropped, and
/// where the given windows end.
#[derive(Serialize, Deserialize)]
struct SlideChanges<K, V> {
    slides: EncodedSlides<K, V>,
    dropped: Vec<i64>,
    given_until: Option<i64>,
}

/// The key of a window operator's changelog record (scale-out mode): where the task's given
/// windows end (value: `Option<i64>`), or one key's value in one slide (value: `V`; a
/// tombstone once the slide is dropped).
#[derive(Serialize, Deserialize)]
enum WindowEntry<K> {
    GivenUntil,
    Slide(i64, K),
}

impl<K, V> EventWindows<K, V> {
    /// The one task of a job not in scale-out mode.
    fn whole(&mut self) -> &mut TaskWindows<K, V> {
        self.tasks.entry(0).or_default()
    }
}

impl<K, V> Stateful for EventWindows<K, V>
where
    K: StateKey,
    V: Clone + Send + Serialize + DeserializeOwned,
{
    fn kind(&self) -> &'static str {
        "reduce_by_key_and_event_window"
    }

    fn take_delta(&mut self) -> Result<Option<Vec<u8>>, String> {
        let windows = self.whole();
        if windows.changed.is_empty() && windows.dropped.is_empty() && !windows.given_changed {
            return Ok(None);
        }
        windows.given_changed = false;
        let slides = std::mem::take(&mut windows.changed)
            .into_iter()
            .filter_map(|start| Some((start, slide_contents(windows.slides.get(&start)?))))
            .collect();
        let dropped = std::mem::take(&mut windows.dropped);
        encode(&SlideChanges { slides, dropped, given_until: windows.given_until }).map(Some)
    }

    fn snapshot(&mut self) -> Result<Vec<u8>, String> {
        let windows = self.whole();
        let slides: Vec<(i64, Vec<(&K, &V)>)> =
            windows.slides.iter().map(|(start, slide)| (*start, slide_contents(slide))).collect();
        encode(&(windows.given_until, slides))
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let (given_until, slides): (Option<i64>, EncodedSlides<K, V>) = decode(snapshot)?;
        let windows = self.whole();
        windows.given_until = given_until;
        windows.slides = slides.into_iter().map(|(start, values)| (start, values.into_iter().collect())).collect();
        Ok(())
    }

    fn apply_delta(&mut self, delta: &[u8]) -> Result<(), String> {
        let changes: SlideChanges<K, V> = decode(delta)?;
        let windows = self.whole();
        for (start, values) in changes.slides {
            windows.slides.insert(start, values.into_iter().collect());
        }
        for start in changes.dropped {
            windows.slides.remove(&start);
        }
        windows.given_until = changes.given_until;
        Ok(())
    }

    fn splits_by_task(&self) -> bool {
        true
    }

    /// Per task: where its given windows end (when it moved), every value of each slide that
    /// changed, and a tombstone for every value of each slide dropped.
    fn take_task_changes(&mut self) -> Result<Vec<TaskChange>, String> {
        if let Some(problem) = self.problem.take() {
            return Err(problem);
        }
        let mut changes = Vec::new();
        for (task, windows) in &mut self.tasks {
            let task = *task;
            if std::mem::take(&mut windows.given_changed) {
                let key = encode(&WindowEntry::<&K>::GivenUntil)?;
                changes.push(TaskChange::new(task, key, Some(encode(&windows.given_until)?)));
            }
            windows.dropped.clear();
            windows.changed.clear();
            for (start, keys) in std::mem::take(&mut windows.dropped_keys) {
                for key in &keys {
                    changes.push(TaskChange::new(task, encode(&WindowEntry::Slide(start, key))?, None));
                }
            }
            for (start, keys) in std::mem::take(&mut windows.changed_keys) {
                let Some(slide) = windows.slides.get(&start) else { continue };
                for key in &keys {
                    let Some(value) = slide.get(key) else { continue };
                    let key = encode(&WindowEntry::Slide(start, key))?;
                    changes.push(TaskChange::new(task, key, Some(encode(value)?)));
                }
            }
        }
        Ok(changes)
    }

    fn restore_task_entry(&mut self, task: i32, key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
        let entry: WindowEntry<K> = decode(key).map_err(|e| format!("a window record's key: {e}"))?;
        let windows = self.tasks.entry(task).or_default();
        match (entry, value) {
            (WindowEntry::GivenUntil, value) => {
                let given: Option<Option<i64>> =
                    value.map(decode).transpose().map_err(|e| format!("a window record's end: {e}"))?;
                windows.given_until = given.flatten();
            }
            (WindowEntry::Slide(start, key), Some(value)) => {
                let value: V = decode(value).map_err(|e| format!("a window record's value: {e}"))?;
                windows.slides.entry(start).or_default().insert(key, value);
            }
            (WindowEntry::Slide(start, key), None) => {
                if let Some(slide) = windows.slides.get_mut(&start) {
                    slide.remove(&key);
                    if slide.is_empty() {
                        windows.slides.remove(&start);
                    }
                }
            }
        }
        Ok(())
    }

    fn drop_tasks(&mut self, tasks: &BTreeSet<i32>) {
        self.tasks.retain(|task, _| !tasks.contains(task));
    }

    /// Per task: where its given windows end, and every value of each slide it keeps.
    fn task_entries(&mut self, tasks: &BTreeSet<i32>) -> Result<Vec<TaskChange>, String> {
        let mut entries = Vec::new();
        for (task, windows) in self.tasks.iter().filter(|(task, _)| tasks.contains(task)) {
            let key = encode(&WindowEntry::<&K>::GivenUntil)?;
            entries.push(TaskChange::new(*task, key, Some(encode(&windows.given_until)?)));
            for (start, slide) in &windows.slides {
                for (key, value) in slide {
                    entries.push(TaskChange::new(
                        *task,
                        encode(&WindowEntry::Slide(*start, key))?,
                        Some(encode(value)?),
                    ));
                }
            }
        }
        Ok(entries)
    }
}

impl<K: StateKey, V: Clone> TaskWindows<K, V> {
    /// Adds a batch's items, each reduced into its slide's values (items too near the ends of
    /// `i64` for a window to hold them are left out).
    fn add(
        &mut self,
        items: impl Iterator<Item = Timed<(K, V)>>,
        (length_ms, slide_ms): (i64, i64),
        reduce: &dyn Fn(V, V) -> V,
        per_task: bool,
    ) {
        // The last item's slide and whether a window holds it: judged (and the slide marked
        // changed) once per run of items in one slide, not per item.
        let mut current: Option<(i64, bool)> = None;
        for timed in items.filter(|t| !t.late) {
            let (key, value) = timed.item;
            let Some(slide_start) = timed.time_ms.div_euclid(slide_ms).checked_mul(slide_ms) else { continue };
            let held = match current {
                Some((start, held)) if start == slide_start => held,
                _ => {
                    let held = window_starts(slide_start, length_ms, slide_ms).next().is_some();
                    if held {
                        self.changed.insert(slide_start);
                    }
                    current = Some((slide_start, held));
                    held
                }
            };
            if held {
                if per_task {
                    self.changed_keys.entry(slide_start).or_default().insert(key.clone());
                }
                merge(self.slides.entry(slide_start).or_default(), key, value, reduce);
            }
        }
    }

    /// The windows the watermark passed since the last call, each its slides' values reduced
    /// together, in start order, each window's keys in order; then the slides no window still
    /// needs are dropped (their keys kept for the changelog's tombstones when `per_task`).
    fn close(
        &mut self,
        watermark: i64,
        (length_ms, slide_ms): (i64, i64),
        reduce: &dyn Fn(V, V) -> V,
        per_task: bool,
    ) -> Vec<Windowed<(K, V)>> {
        let given_until = self.given_until;
        let due = |start: &i64| {
            let end = start.saturating_add(length_ms);
            end <= watermark && given_until.is_none_or(|given| end > given)
        };
        let starts: BTreeSet<i64> =
            self.slides.keys().flat_map(|slide| window_starts(*slide, length_ms, slide_ms)).filter(due).collect();
        let mut out = Vec::new();
        for start in starts {
            let end = start.saturating_add(length_ms);
            let mut window: HashMap<K, V> = HashMap::default();
            for slide in self.slides.range(start..end).map(|(_, slide)| slide) {
                for (key, value) in slide {
                    merge(&mut window, key.clone(), value.clone(), reduce);
                }
            }
            let mut window: Vec<(K, V)> = window.into_iter().collect();
            window.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            out.extend(window.into_iter().map(|item| Windowed { start_ms: start, end_ms: end, item }));
        }
        if given_until.is_none_or(|given| watermark > given) {
            self.given_until = Some(watermark);
            self.given_changed = true;
        }
        // A slide is needed until the last window holding it (the one it starts) is given.
        while let Some(entry) = self.slides.first_entry() {
            if entry.key().saturating_add(length_ms) > watermark {
                break;
            }
            let start = *entry.key();
            let slide = entry.remove();
            if per_task {
                self.dropped_keys.push((start, slide.into_keys().collect()));
            }
            self.changed.remove(&start);
            self.changed_keys.remove(&start);
            self.dropped.push(start);
        }
        out
    }
}

/// Scale-out mode: notes a key whose items came from two tasks in one run (the source is not
/// partitioned by the windows' key: each task would give a partial value of its window).
fn note_keys_in_two_tasks<K: StateKey, V>(problem: &mut Option<String>, tasks: &[i32], parts: &Parts<Timed<(K, V)>>) {
    if problem.is_some() || parts.iter().filter(|part| !part.is_empty()).count() < 2 {
        return;
    }
    let mut task_of: HashMap<&K, i32> = HashMap::default();
    for (task, part) in tasks.iter().zip(parts) {
        for timed in part {
            let was = *task_of.entry(&timed.item.0).or_insert(*task);
            if was != *task {
                *problem = Some(format!(
                    "a key's items came from source partitions {was} and {task}: in scale-out mode each task gives its own windows, so the source must be partitioned by the windows' key (records of one key in one partition), or the stream repartitioned by it first (DStream::repartition)"
                ));
                return;
            }
        }
    }
}

/// The starts of the windows of `length_ms` every `slide_ms` that hold `time_ms`, earliest
/// first (none for a time so near the ends of `i64` that a window's bounds overflow).
fn window_starts(time_ms: i64, length_ms: i64, slide_ms: i64) -> impl Iterator<Item = i64> {
    let last = time_ms.div_euclid(slide_ms).checked_mul(slide_ms);
    let first = last.and_then(|last| last.checked_sub(length_ms - slide_ms));
    let fits = first.is_some() && last.and_then(|last| last.checked_add(length_ms)).is_some();
    let (first, count) = if fits { (first.unwrap_or(0), length_ms / slide_ms) } else { (0, 0) };
    (0..count).map(move |i| first + i * slide_ms)
}

impl<K, V> DStream<Timed<(K, V)>>
where
    K: StateKey,
    V: Clone + Send + Serialize + DeserializeOwned + 'static,
{
    /// Values combined by `reduce` per key and event-time window of `length`, starting every
    /// `slide` (a tumbling window when they are equal; `length` must be a multiple of `slide`).
    /// A window is given once, when the stream's watermark passes its end, its keys in order;
    /// windows closing in the same batch come in start order (in scale-out mode, each task's,
    /// in a part of its own: see [`BatchInfo::task_runs`](crate::BatchInfo::task_runs)). Late
    /// items are left out.
    /// `reduce` must be associative and commutative (as Spark's is for windowed reductions):
    /// values are reduced per slide first, and a window's slides together when it is given.
    /// In scale-out mode each task (source partition) keeps and gives its own windows, by its
    /// own watermark: the source must be partitioned by the key (or the stream repartitioned).
    pub fn reduce_by_key_and_event_window(
        self,
        length: Duration,
        slide: Duration,
        reduce: impl Fn(V, V) -> V + Send + 'static,
    ) -> DStream<Windowed<(K, V)>> {
        let (length_ms, slide_ms) = (length.as_millis(), slide.as_millis());
        let (Ok(length_ms), Ok(slide_ms)) = (i64::try_from(length_ms), i64::try_from(slide_ms)) else {
            self.record_error(format!("an event-time window of {length_ms} ms every {slide_ms} ms is too long"));
            return self.nothing();
        };
        if slide_ms <= 0 || length_ms <= 0 || length_ms % slide_ms != 0 {
            self.record_error(format!(
                "an event-time window of {length_ms} ms every {slide_ms} ms: both must be positive and the length a multiple of the slide"
            ));
            return self.nothing();
        }
        let per_task = self.scales_out();
        if per_task && !self.is_aligned() {
            self.record_error(
                "reduce_by_key_and_event_window in scale-out mode keeps each task's windows, so only element-wise operators (map, flat_map, filter, key_by, map_partitions, with_watermark) may come between the source (or a repartition) and it".into(),
            );
        }
        let state = Arc::new(Mutex::new(EventWindows::<K, V> {
            reduce: Box::new(reduce),
            tasks: BTreeMap::new(),
            per_task,
            problem: None,
        }));
        let (mut parent, graph, watermarks) = self.into_parts();
        if watermarks.is_empty() {
            lock(&graph).errors.push(
                "reduce_by_key_and_event_window on a stream without a watermark: apply with_watermark upstream".into(),
            );
        }
        lock(&graph).state.register(Arc::clone(&state) as Arc<Mutex<dyn Stateful>>);
        let window_watermarks = watermarks.clone();
        let given = GivenTasks::default();
        let gives = given.clone();
        DStream::new(
            graph,
            Box::new(move |input: &BatchInput| {
                // Each piece is added as it comes; computing the parent's last piece sets its
                // watermarks for this batch, and the windows they close are given then.
                let parts = parent(input).unwrap_or_default();
                let mut state = lock_state(&state);
                let state = &mut *state;
                let shape = (length_ms, slide_ms);
                let tasks = part_tasks(input, parts.len(), state.per_task).unwrap_or_else(|| {
                    state.problem.get_or_insert_with(|| NOT_SOURCE_PARTS.to_owned());
                    vec![0; parts.len()]
                });
                if state.per_task {
                    note_keys_in_two_tasks(&mut state.problem, &tasks, &parts);
                }
                for (task, part) in tasks.into_iter().zip(parts) {
                    if part.is_empty() && state.per_task {
                        continue;
                    }
                    state.tasks.entry(task).or_default().add(part.into_iter(), shape, &state.reduce, state.per_task);
                }
                if !input.last_piece {
                    return None;
                }
                if !state.per_task {
                    let Some(watermark) = least_watermark(&window_watermarks) else { return Some(vec![Vec::new()]) };
                    let whole = state.tasks.entry(0).or_default();
                    return Some(vec![whole.close(watermark, shape, &state.reduce, false)]);
                }
                // Each task's windows close by its own watermark, and are its part: in start
                // order, each window's keys in order.
                let mut out = Vec::new();
                for (task, windows) in &mut state.tasks {
                    if let Some(watermark) = task_watermark(&window_watermarks, *task) {
                        let mut closed = windows.close(watermark, shape, &state.reduce, true);
                        closed
                            .sort_by(|a, b| (a.start_ms, a.end_ms, &a.item.0).cmp(&(b.start_ms, b.end_ms, &b.item.0)));
                        out.extend(closed.into_iter().map(|window| (*task, window)));
                    }
                }
                let (tasks, parts) = task_parts(out);
                gives.give(input, tasks);
                Some(parts)
            }),
        )
        .with_watermarks(watermarks)
        .giving_tasks(per_task.then_some(given))
    }
}

impl<T: Serialize + DeserializeOwned + Send + 'static> DStream<Windowed<T>> {
    /// The `k` greatest items of each window by `compare`, greatest first, windows in start
    /// order, in one part (in scale-out mode, one part per merge task, each window in one).
    /// In scale-out mode in two stages: each process's local top `k` of a
    /// window goes through `<group>-top-k-<n>-repartition` (made for the job) to the owner of
    /// the window's partition (its key's, so the windows' merges spread over the tasks), which
    /// gives the window once every task's watermark passed its end: each batch's windows are in
    /// start order, and the windows of different processes interleave in the output (sort by
    /// window for one order). Let `compare` break ties (by key), so that the result does not
    /// depend on which process gave what.
    pub fn top_k_per_window(
        self,
        k: usize,
        compare: impl Fn(&T, &T) -> std::cmp::Ordering + Send + 'static,
    ) -> DStream<Windowed<T>> {
        if self.scales_out() {
            return self.top_k_across_tasks(k, compare);
        }
        self.derive(move |_, parts| Some(vec![top_per_window(parts, k, &compare)]))
    }
}

/// The `k` greatest items of each window among `parts` by `compare`, greatest first, windows in
/// start order.
pub(crate) fn top_per_window<T>(
    parts: Parts<Windowed<T>>,
    k: usize,
    compare: &dyn Fn(&T, &T) -> std::cmp::Ordering,
) -> Vec<Windowed<T>> {
    let mut windows: BTreeMap<(i64, i64), Vec<Windowed<T>>> = BTreeMap::new();
    for item in parts.into_iter().flatten() {
        windows.entry((item.start_ms, item.end_ms)).or_default().push(item);
    }
    windows.into_values().flat_map(|group| greatest(group, k, |a, b| compare(&a.item, &b.item))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows() -> EventWindows<String, u64> {
        EventWindows { reduce: Box::new(|a, b| a + b), tasks: BTreeMap::new(), per_task: true, problem: None }
    }

    fn timed(time_ms: i64, key: &str) -> Timed<(String, u64)> {
        Timed { time_ms, late: false, item: (key.to_owned(), 1) }
    }

    const SHAPE: (i64, i64) = (1_000, 1_000);

    /// Puts a task's changes, in order, into another operator (as a restore reads them).
    fn replay(changes: &[TaskChange], into: &mut EventWindows<String, u64>) {
        for TaskChange { task, key, value } in changes {
            into.restore_task_entry(*task, key, value.as_deref()).unwrap();
        }
    }

    #[test]
    fn each_tasks_windows_close_by_its_watermark_and_move_through_their_changes() {
        let mut state = windows();
        let reduce = |a: u64, b: u64| a + b;
        state.tasks.entry(0).or_default().add([timed(100, "a"), timed(1_500, "a")].into_iter(), SHAPE, &reduce, true);
        state.tasks.entry(1).or_default().add([timed(200, "b")].into_iter(), SHAPE, &reduce, true);
        let mut log = state.take_task_changes().unwrap();
        // Task 0's watermark passes the first window; task 1's does not yet.
        let given = state.tasks.get_mut(&0).unwrap().close(1_000, SHAPE, &reduce, true);
        assert_eq!(given, vec![Windowed { start_ms: 0, end_ms: 1_000, item: ("a".to_owned(), 1) }]);
        let closed = state.take_task_changes().unwrap();
        assert!(closed.iter().any(|c| c.task == 0 && c.value.is_none()), "the dropped slide's key is tombstoned");
        log.extend(closed);

        // Another process takes both tasks on from the changelog.
        let mut moved = windows();
        replay(&log, &mut moved);
        let task0 = moved.tasks.get_mut(&0).unwrap();
        assert_eq!(task0.given_until, Some(1_000));
        assert_eq!(task0.slides.keys().copied().collect::<Vec<_>>(), vec![1_000], "only the open slide is back");
        assert!(task0.close(1_000, SHAPE, &reduce, true).is_empty(), "a window given before is not given again");
        let task1 = moved.tasks.get_mut(&1).unwrap();
        assert_eq!(
            task1.close(1_000, SHAPE, &reduce, true),
            vec![Windowed { start_ms: 0, end_ms: 1_000, item: ("b".to_owned(), 1) }]
        );
        moved.drop_tasks(&BTreeSet::from([1]));
        assert_eq!(moved.tasks.keys().copied().collect::<Vec<_>>(), vec![0]);
    }

    #[test]
    fn only_the_keys_a_batch_changed_are_written_and_a_key_in_two_tasks_is_reported() {
        let mut state = windows();
        let reduce = |a: u64, b: u64| a + b;
        let task = state.tasks.entry(0).or_default();
        task.add([timed(100, "a"), timed(200, "b")].into_iter(), SHAPE, &reduce, true);
        assert_eq!(state.take_task_changes().unwrap().len(), 2);
        let task = state.tasks.entry(0).or_default();
        task.add([timed(300, "a")].into_iter(), SHAPE, &reduce, true);
        let changes = state.take_task_changes().unwrap();
        assert_eq!(changes.len(), 1, "b did not change");
        assert_eq!(changes[0].value, Some(encode(&2u64).unwrap().into()));

        let mut problem = None;
        let parts = vec![vec![timed(100, "a")], vec![timed(100, "b")]];
        note_keys_in_two_tasks(&mut problem, &[0, 1], &parts);
        assert!(problem.is_none());
        let parts = vec![vec![timed(100, "a")], vec![timed(100, "a")]];
        note_keys_in_two_tasks(&mut problem, &[0, 1], &parts);
        assert!(problem.unwrap().contains("partitions 0 and 1"));
    }

    #[test]
    fn a_watermark_moves_per_partition_and_restores_per_task() {
        let spec = Watermark::new(Duration::from_millis(100));
        let mut state = WatermarkState { per_task: true, ..WatermarkState::default() };
        for (partition, max) in [(0, 1_000), (1, 5_000)] {
            let key = ("clicks".to_owned(), partition);
            state.partitions.insert(key.clone(), (max, 7));
            state.dirty.insert(key);
        }
        assert_eq!(state.task_watermarks(&spec), BTreeMap::from([(0, 900), (1, 4_900)]));
        let changes = state.take_task_changes().unwrap();
        assert_eq!(changes.len(), 2);
        assert!(state.take_task_changes().unwrap().is_empty(), "nothing moved since");
        let mut moved = WatermarkState { per_task: true, ..WatermarkState::default() };
        for TaskChange { task, key, value } in changes.iter().filter(|c| c.task == 1) {
            moved.restore_task_entry(*task, key, value.as_deref()).unwrap();
        }
        assert_eq!(moved.task_watermarks(&spec), BTreeMap::from([(1, 4_900)]));
        moved.drop_tasks(&BTreeSet::from([1]));
        assert!(moved.partitions.is_empty());
    }

    #[test]
    fn owned_partitions_without_records_for_long_enough_are_idle() {
        let owned = |partitions: &[i32]| -> Vec<(Arc<str>, i32)> {
            partitions.iter().map(|p| (Arc::from("clicks"), *p)).collect()
        };
        let mut state = WatermarkState { per_task: true, ..WatermarkState::default() };
        // Partition 0 had records at 1 s; 1 had none since the process took it on at 1 s.
        state.partitions.insert(("clicks".to_owned(), 0), (500, 1_000));
        assert!(state.idle_tasks(&owned(&[0, 1]), 2_000, 1_000).is_empty());
        assert!(state.idle_tasks(&owned(&[0, 1]), 2_000, 3_000).is_empty(), "2 s is not more than 2 s");
        assert_eq!(state.idle_tasks(&owned(&[0, 1]), 2_000, 3_200), BTreeSet::from([0, 1]));
        // 1 has records now; 2 is taken on, 0 given up.
        state.partitions.insert(("clicks".to_owned(), 1), (900, 3_400));
        assert_eq!(state.idle_tasks(&owned(&[1, 2]), 2_000, 3_400), BTreeSet::new());
        assert_eq!(state.idle_tasks(&owned(&[1, 2]), 2_000, 5_600), BTreeSet::from([1, 2]));
        // Given up and taken on again: the wait starts again.
        assert!(state.idle_tasks(&owned(&[1]), 2_000, 5_800).contains(&1));
        assert_eq!(state.idle_tasks(&owned(&[1, 2]), 2_000, 6_000), BTreeSet::from([1]));
        // A task of two topics is idle only when both of its partitions are.
        let two = [(Arc::from("clicks"), 1), (Arc::from("views"), 1)];
        assert!(state.idle_tasks(&two, 2_000, 6_000).is_empty(), "views/1 just taken on");
        assert_eq!(state.idle_tasks(&two, 2_000, 8_100), BTreeSet::from([1]));
    }
}
