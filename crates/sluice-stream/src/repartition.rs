//! Repartitioning in scale-out mode, as Kafka Streams does it: when the key a stateful operator
//! groups by is not how the source is partitioned (clicks keyed by user, counted per item), the
//! stream's items go through an internal topic, `<group>-<name>-repartition`, with as many
//! partitions as the source, each item on the partition of its key (Kafka's default
//! partitioner: murmur2 of the encoded key). Its partition `p` goes with the source's partition
//! `p`: the process that owns that task reads it (the scheduler's internal topics), so all of a
//! key's items come to one task, whichever process read them from the source.
//!
//! The items are written in the batch's transaction, so they are there (for `read_committed`
//! readers) exactly when the batch's source offsets are committed; the owner of their partition
//! reads them in one of its next batches, and commits how far it read with its own offsets.
//! A repartitioned item is thus counted a batch or more after its source record is read.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sluice_client::{Producer, ProducerRecord};

use crate::event_time::{top_per_window, Timed, Watermark, Windowed};
use crate::graph::{lock, BatchInput, Compute, Output, Parts, SharedGraph};
use crate::hash::HashMap;
use crate::markers::{is_marker, marker_report, MarkerSender, MarkerTable, MarkerTargets, Settled, TaskCount};
use crate::record::KafkaRecord;
use crate::state::{decode, encode, lock_state, only_in_changelogs, Stateful, TaskChange};
use crate::stream::{
    greatest, merge, task_parts, watermark_spec, Aligned, DStream, GivenTasks, WatermarkCell, WatermarkValue,
};
use crate::BoxError;

/// An item as a record of a repartition topic: its partition (`None`: by the key's hash), key
/// and value.
type Encoded = (Option<i32>, Vec<u8>, Vec<u8>);

/// A repartition's combining step, which keeps what it combined until the batch's
/// transaction ends (see [`SlideCombiner`]).
trait Combine<T>: Send {
    /// Takes a run's parts, given the upstream tasks' watermarks as earlier batches left them:
    /// the items to send as they are, the others kept combined.
    fn add(&mut self, parts: Parts<T>, input: &BatchInput, before: &Settled) -> Vec<T>;
    /// The combined items kept, taken.
    fn drain(&mut self) -> Vec<T>;
    /// How many combined items are kept.
    fn kept(&self) -> usize;
}

/// At most this many combined items are kept for a transaction's end (they are outside the
/// memory budget, which bounds what a batch reads): past it they go at once, still before the
/// transaction's watermark markers.
const MAX_KEPT_COMBINED: usize = 200_000;

/// A repartition's combining step, boxed.
type Combiner<T> = Box<dyn Combine<T>>;

/// Writes a stream's items to its repartition topic, in the batch's transaction, with the
/// watermark markers of the stream's watermarks after them when it has any. Combined items,
/// and the markers after them, go when the transaction ends: nothing of it is visible before,
/// and a key's items of all of its batches go as one.
struct RepartitionOutput<T> {
    compute: Compute<T>,
    /// Combines the transaction's items into fewer before they are sent, given each upstream
    /// task's watermark as earlier batches left it.
    combine: Option<Combiner<T>>,
    to_record: Box<dyn Fn(T) -> Result<Encoded, String> + Send>,
    topic: String,
    markers: Option<MarkerSender>,
    /// With `combine`: the last markers made, sent after the combined items.
    held_markers: Vec<ProducerRecord>,
    /// The run's records, made by `compute` and sent by `write`.
    records: Vec<ProducerRecord>,
    transaction: Option<Arc<Producer>>,
    failure: Option<String>,
}

impl<T> RepartitionOutput<T> {
    fn push_items(&mut self, items: Vec<T>) {
        for item in items {
            match (self.to_record)(item) {
                Ok((partition, key, value)) => self.records.push(ProducerRecord {
                    topic: self.topic.clone(),
                    partition,
                    key: Some(Bytes::from(key)),
                    value: Some(Bytes::from(value)),
                    ..ProducerRecord::default()
                }),
                Err(error) => {
                    self.failure.get_or_insert_with(|| format!("encoding an item for {}: {error}", self.topic));
                }
            }
        }
    }
}

impl<T: Send + 'static> Output for RepartitionOutput<T> {
    fn compute(&mut self, input: &BatchInput) {
        self.transaction.clone_from(&input.transaction);
        if input.piece == 0 && !input.continues_transaction {
            // What an earlier transaction left kept is of one that did not commit.
            if let Some(combine) = &mut self.combine {
                drop(combine.drain());
            }
            if !self.held_markers.is_empty() {
                self.held_markers.clear();
                // Never sent: made again, even if the watermarks did not move since.
                if let Some(markers) = &mut self.markers {
                    markers.forget_sent();
                }
            }
        }
        // The upstream watermarks as earlier batches left them: computing the batch's last
        // piece moves them.
        let before = match (&self.combine, &mut self.markers) {
            (Some(_), Some(markers)) => markers.settled_watermarks(input.piece),
            _ => Settled::default(),
        };
        let parts = (self.compute)(input).unwrap_or_default();
        let items = match &mut self.combine {
            Some(combine) => {
                let mut items = combine.add(parts, input, &before);
                if combine.kept() > MAX_KEPT_COMBINED {
                    items.extend(combine.drain());
                }
                items
            }
            None => parts.into_iter().flatten().collect(),
        };
        self.push_items(items);
        // After the batch's items, the watermarks they leave (with combining, after the
        // transaction's combined items).
        if let (true, Some(markers)) = (input.last_piece, &mut self.markers) {
            match markers.markers(&self.topic) {
                Ok(markers) if self.combine.is_none() => self.records.extend(markers),
                Ok(markers) if !markers.is_empty() => self.held_markers = markers,
                Ok(_) => {}
                Err(error) => {
                    self.failure.get_or_insert_with(|| format!("watermark markers for {}: {error}", self.topic));
                }
            }
        }
    }

    fn end_transaction(&mut self) -> bool {
        let Some(combine) = &mut self.combine else { return false };
        let items = combine.drain();
        self.push_items(items);
        self.records.append(&mut self.held_markers);
        !self.records.is_empty() || self.failure.is_some()
    }

    fn write(&mut self) -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + '_>> {
        Box::pin(async move {
            let records = std::mem::take(&mut self.records);
            if let Some(failure) = self.failure.take() {
                return Err(failure.into());
            }
            if records.is_empty() {
                return Ok(());
            }
            let producer = self.transaction.clone().ok_or_else(|| {
                format!(
                    "items for {} in a batch without a transaction (repartitioning is for scale-out mode)",
                    self.topic
                )
            })?;
            // One timestamp for the run's records, not a clock read per record.
            let timestamp = Some(crate::context::wall_ms());
            // The transaction's commit waits for every send and fails if one did.
            drop(producer.send_all(records.into_iter().map(|record| ProducerRecord { timestamp, ..record })).await?);
            Ok(())
        })
    }
}

/// Whether `topic` is a legal topic name (Kafka's: at most 249 ASCII letters, digits, `.`, `_`
/// and `-`).
fn legal_topic(topic: &str) -> bool {
    (1..=249).contains(&topic.len())
        && topic.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Adds the repartition topic `<group>-<name>-repartition` to the job (an error noted if the
/// name makes no legal topic or is taken); returns the topic.
fn add_topic(graph: &SharedGraph, group: &str, name: &str) -> String {
    let topic = format!("{group}-{name}-repartition");
    let mut graph = lock(graph);
    if name.is_empty() || !legal_topic(&topic) {
        graph.errors.push(format!(
            "repartition {name:?} of group {group:?}: the topic {topic:?} must be at most 249 letters, digits, '.', '_' and '-'"
        ));
    }
    if graph.internal_topics.contains(&topic) {
        graph.errors.push(format!("two repartitions named {name:?}: each needs its own topic"));
    } else {
        graph.internal_topics.push(topic.clone());
    }
    topic
}

/// The items of the repartition topic's records in a batch's parts (the source's parts empty),
/// each record given to `item`; a record it cannot read fails the batch (noted in `failures`).
fn read_parts<T>(
    parts: Parts<KafkaRecord>,
    failures: &Mutex<Vec<String>>,
    mut item: impl FnMut(&KafkaRecord) -> Result<Option<T>, String>,
) -> Parts<T> {
    let mut failed = None;
    let parts = parts
        .into_iter()
        .map(|part| {
            part.into_iter()
                .filter_map(|record| match item(&record) {
                    Ok(item) => item,
                    Err(error) => {
                        failed.get_or_insert_with(|| {
                            format!("{}/{} offset {}: {error}", record.topic, record.partition, record.offset)
                        });
                        None
                    }
                })
                .collect()
        })
        .collect();
    if let Some(failed) = failed {
        failures.lock().unwrap_or_else(PoisonError::into_inner).push(format!(
            "a record of the repartition topic is not an item of this job (written by another program, or by a job whose types changed): {failed}"
        ));
    }
    parts
}

/// [`read_parts`] for items without event time.
fn decode_parts<K: DeserializeOwned, V: DeserializeOwned>(
    parts: Parts<KafkaRecord>,
    failures: &Mutex<Vec<String>>,
) -> Parts<(K, V)> {
    read_parts(parts, failures, |record| decode_item(record).map(Some))
}

fn decode_item<K: DeserializeOwned, V: DeserializeOwned>(record: &KafkaRecord) -> Result<(K, V), String> {
    let key = record.key.as_ref().ok_or("no key")?;
    let value = record.value.as_ref().ok_or("no value")?;
    Ok((decode(key).map_err(|e| format!("key: {e}"))?, decode(value).map_err(|e| format!("value: {e}"))?))
}

/// Repartitioning a stream of key-value pairs.
impl<K, V> DStream<(K, V)>
where
    K: Serialize + DeserializeOwned + Send + 'static,
    V: Serialize + DeserializeOwned + Send + 'static,
{
    /// In scale-out mode, the stream's items regrouped by their key, through the internal topic
    /// `<group>-<name>-repartition` (Kafka Streams' `repartition`): each key's items then come
    /// to one task (the partition of the key's murmur2 hash, as Kafka's default partitioner
    /// places it), so the keyed operators after it keep each key's state in one place, however
    /// the source is partitioned. Give each repartition of a job its own `name` (letters,
    /// digits, `.`, `_`, `-`), the same in every run: the topic holds items between batches.
    ///
    /// The items are written in the batch's transaction and read by their task's owner in its
    /// next batches (with its offsets in the job's group), so the operators after it see them a
    /// batch or more later. For event time, repartition the stream of [`Timed`] items that
    /// `with_watermark` gives: its watermark crosses with it. Outside scale-out mode a single
    /// process has every key: the stream as it is.
    pub fn repartition(self, name: &str) -> DStream<(K, V)> {
        let Some(group) = self.group() else { return self };
        let (compute, graph, _) = self.into_parts();
        let topic = add_topic(&graph, &group, name);
        let failures = Arc::clone(&lock(&graph).failures);
        let to_record = |(key, value): (K, V)| Ok((None, encode(&key)?, encode(&value)?));
        let output = RepartitionOutput {
            compute,
            combine: None,
            to_record: Box::new(to_record),
            topic: topic.clone(),
            markers: None,
            held_markers: Vec::new(),
            records: Vec::new(),
            transaction: None,
            failure: None,
        };
        lock(&graph).outputs.push(Box::new(output));
        let aligned = Aligned::Repartition(Arc::from(topic.as_str()));
        let topics = [topic];
        let take = move |input: &BatchInput| {
            let parts = input.records.take_where(|part| input.part_of(part, &topics));
            Some(decode_parts(parts, &failures))
        };
        DStream::new(graph, Box::new(take)).aligned_as(aligned)
    }
}

/// The reading side of a repartition of timed items: per task, the watermarks its markers
/// reported.
#[derive(Default)]
struct RepartitionWatermark {
    table: MarkerTable,
}

impl Stateful for RepartitionWatermark {
    fn kind(&self) -> &'static str {
        "repartition_watermark"
    }

    fn take_delta(&mut self) -> Result<Option<Vec<u8>>, String> {
        Err(only_in_changelogs(self.kind()))
    }

    fn snapshot(&mut self) -> Result<Vec<u8>, String> {
        Err(only_in_changelogs(self.kind()))
    }

    fn restore(&mut self, _: &[u8]) -> Result<(), String> {
        Err(only_in_changelogs(self.kind()))
    }

    fn apply_delta(&mut self, _: &[u8]) -> Result<(), String> {
        Err(only_in_changelogs(self.kind()))
    }

    fn splits_by_task(&self) -> bool {
        true
    }

    /// One record per (task, upstream task) whose watermark moved: key the upstream task.
    fn take_task_changes(&mut self) -> Result<Vec<TaskChange>, String> {
        self.table.take_changes(|upstream| encode(&upstream))
    }

    fn restore_task_entry(&mut self, task: i32, key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
        let upstream: i32 = decode(key).map_err(|e| format!("a marker entry's key: {e}"))?;
        self.table.restore(task, upstream, value)
    }

    fn drop_tasks(&mut self, tasks: &BTreeSet<i32>) {
        self.table.drop_tasks(tasks);
    }

    fn task_entries(&mut self, tasks: &BTreeSet<i32>) -> Result<Vec<TaskChange>, String> {
        self.table.entries(tasks, |upstream| encode(&upstream))
    }
}

/// Repartitioning a stream of timed key-value pairs, its watermark with it.
impl<K, V> DStream<Timed<(K, V)>>
where
    K: Serialize + DeserializeOwned + Send + 'static,
    V: Serialize + DeserializeOwned + Send + 'static,
{
    /// [`DStream::repartition`] for timed items (those of `with_watermark`), with their event
    /// time and watermark: with each batch that moved the watermarks of the source partitions
    /// this process owns, it appends a watermark marker to every partition of the topic. Each
    /// task after it takes the least watermark the source's partitions reported (once every one
    /// has: a partition without records holds it back, unless [`Watermark::idle_after`] has its
    /// owner report it idle), so its windows close only when no source partition that is not
    /// idle, on whichever process, can still send their items. An item older than
    /// that watermark when it is read is late (counted and dropped, or kept and marked, as the
    /// `Watermark` says). Outside scale-out mode: the stream as it is.
    pub fn repartition(self, name: &str) -> DStream<Timed<(K, V)>> {
        self.timed_repartition(name, None)
    }

    /// [`DStream::repartition`] of timed items with `combine` before they are sent.
    fn timed_repartition(self, name: &str, combine: Option<Combiner<Timed<(K, V)>>>) -> DStream<Timed<(K, V)>> {
        let Some(group) = self.group() else { return self };
        let (compute, graph, watermarks) = self.into_parts();
        let topic = add_topic(&graph, &group, name);
        let (failures, count) = {
            let graph = lock(&graph);
            (Arc::clone(&graph.failures), graph.task_count.clone())
        };
        let spec = watermark_spec(&watermarks);
        for cell in &watermarks {
            lock_state(cell).judged_after_repartition = true;
        }
        if spec.is_none() {
            lock(&graph).errors.push(format!(
                "repartition {name:?} of timed items on a stream without a watermark: apply with_watermark before it"
            ));
        }
        // A partition back from idleness may be behind the watermark after the repartition:
        // some of its items late there, others not, which a combined item cannot be.
        let combine = combine.filter(|_| !spec.as_ref().is_some_and(Watermark::leaves_idle_out));
        let to_record = |timed: Timed<(K, V)>| {
            let (key, value) = timed.item;
            Ok((None, encode(&key)?, encode(&(timed.time_ms, timed.late, value))?))
        };
        let output = RepartitionOutput {
            compute,
            combine,
            to_record: Box::new(to_record),
            topic: topic.clone(),
            markers: Some(MarkerSender::new(watermarks, count.clone(), MarkerTargets::Every)),
            held_markers: Vec::new(),
            records: Vec::new(),
            transaction: None,
            failure: None,
        };
        lock(&graph).outputs.push(Box::new(output));
        let state = Arc::new(Mutex::new(RepartitionWatermark::default()));
        lock(&graph).state.register(Arc::clone(&state) as Arc<Mutex<dyn Stateful>>);
        let cell: WatermarkCell =
            Arc::new(Mutex::new(WatermarkValue { spec: spec.clone(), ..WatermarkValue::default() }));
        let publish = Arc::clone(&cell);
        let aligned = Aligned::Repartition(Arc::from(topic.as_str()));
        let topics = [topic];
        let take = move |input: &BatchInput| {
            let parts = input.records.take_where(|part| input.part_of(part, &topics));
            let mut state = lock_state(&state);
            let upstream = count.tasks();
            // Each task's watermark as earlier batches left it, found once per task.
            let mut before: BTreeMap<i32, Option<i64>> = BTreeMap::new();
            let parts = read_parts(parts, &failures, |record| {
                if is_marker(record) {
                    state.table.note(record.partition, &marker_report(record)?);
                    return Ok(None);
                }
                let (key, (time_ms, late, value)): (K, (i64, bool, V)) = decode_item(record)?;
                let watermark = *before
                    .entry(record.partition)
                    .or_insert_with(|| state.table.watermark(record.partition, upstream));
                let late_now = watermark.is_some_and(|w| time_ms < w);
                if late_now && !late && !spec.as_ref().is_some_and(|spec| spec.count_late()) {
                    return Ok(None);
                }
                Ok(Some(Timed { time_ms, late: late || late_now, item: (key, value) }))
            });
            if input.last_piece {
                state.table.take_pending(upstream);
                let tasks = state.table.watermarks(upstream);
                let mut published = lock_state(&publish);
                published.least = tasks.values().min().copied();
                published.tasks = tasks;
            }
            Some(parts)
        };
        DStream::new(graph, Box::new(take)).aligned_as(aligned).with_watermarks(vec![cell])
    }
}

impl<K, V> DStream<Timed<(K, V)>>
where
    K: Hash + Eq + Serialize + DeserializeOwned + Send + 'static,
    V: Serialize + DeserializeOwned + Send + 'static,
{
    /// [`DStream::repartition`] of timed items for event-time windows sliding every `slide`
    /// (the windows' slide, or a divisor of it) that reduce by `reduce` (the same as the
    /// window's, associative and commutative): before they are sent, the items of one key and
    /// slide that a transaction's batches read from this process's source partitions are
    /// reduced into one (Spark's map-side combine), so that far fewer records cross the broker;
    /// they go when the transaction ends, before the watermark markers. Only items at or
    /// after their own partition's watermark are combined: they cannot be late after the
    /// repartition, whose watermark is never ahead of any partition's (nor is the earliest time
    /// of a combined item behind it), so the result is that of sending each item (up to the order in which
    /// `reduce` takes the values: floating-point sums may round differently). The items of a
    /// partition that never had a watermark (no process has reported one for it) are all
    /// combined: no task after the repartition has a watermark before every source partition
    /// has reported one. Outside scale-out
    /// mode: the stream as it is.
    pub fn repartition_combined(
        self,
        name: &str,
        slide: Duration,
        reduce: impl Fn(V, V) -> V + Send + 'static,
    ) -> DStream<Timed<(K, V)>> {
        let slide_ms = i64::try_from(slide.as_millis()).unwrap_or(i64::MAX).max(1);
        let combiner = SlideCombiner { slide_ms, reduce: Box::new(reduce), groups: HashMap::default() };
        self.timed_repartition(name, Some(Box::new(combiner)))
    }
}

/// Items of one key and slide reduced into one, at the earliest time among them, whichever of
/// this process's partitions and whichever batch of the transaction they come from.
struct SlideCombiner<K, V> {
    slide_ms: i64,
    reduce: Box<dyn Fn(V, V) -> V + Send>,
    /// Per key and slide start: the earliest time and the reduced value.
    groups: HashMap<(K, i64), (i64, V)>,
}

impl<K: Hash + Eq + Send, V: Send> Combine<Timed<(K, V)>> for SlideCombiner<K, V> {
    /// Of a run's parts (each a source partition's, as `input` names them), the items at or
    /// after their own partition's watermark in `before` (all of a partition's when `before` is
    /// complete and has none for it) are reduced into the kept ones per key and slide, at the
    /// earliest time among them; the others are returned as they are.
    fn add(&mut self, parts: Parts<Timed<(K, V)>>, input: &BatchInput, before: &Settled) -> Vec<Timed<(K, V)>> {
        let (slide_ms, reduce) = (self.slide_ms, &*self.reduce);
        let sources = input.part_sources.as_ref().filter(|sources| sources.len() == parts.len());
        let mut out = Vec::new();
        for (index, part) in parts.into_iter().enumerate() {
            let watermark =
                sources.and_then(|s| s.get(index)).and_then(|(_, partition)| match before.watermarks.get(partition) {
                    Some(watermark) => Some(*watermark),
                    None => before.complete.then_some(i64::MIN),
                });
            let Some(watermark) = watermark else {
                out.extend(part);
                continue;
            };
            for timed in part {
                if timed.late || timed.time_ms < watermark {
                    out.push(timed);
                    continue;
                }
                let (key, value) = timed.item;
                let slide_start = timed.time_ms.div_euclid(slide_ms).saturating_mul(slide_ms);
                let time_ms = timed.time_ms;
                merge(&mut self.groups, (key, slide_start), (time_ms, value), &|(a_time, a), (b_time, b)| {
                    (a_time.min(b_time), reduce(a, b))
                });
            }
        }
        out
    }

    fn kept(&self) -> usize {
        self.groups.len()
    }

    fn drain(&mut self) -> Vec<Timed<(K, V)>> {
        self.groups
            .drain()
            .map(|((key, _), (time_ms, value))| Timed { time_ms, late: false, item: (key, value) })
            .collect()
    }
}

/// The merges of a scale-out top-k: each window's merge is one task's (its topic's partition
/// of the window's key), which gathers the window's local top items from every task until
/// every task's watermark passed the window's end.
struct TopMerge<T> {
    table: MarkerTable,
    /// The windows not given yet, by merge task.
    windows: BTreeMap<(i32, i64, i64), Vec<T>>,
    /// Each merge task's windows ending at or before this were given.
    given_until: BTreeMap<i32, i64>,
    /// Windows changed, and given (tombstoned), and the tasks whose end moved, since the last
    /// changes.
    changed: BTreeSet<(i32, i64, i64)>,
    given: Vec<(i32, i64, i64)>,
    given_changed: BTreeSet<i32>,
    /// The number of tasks, which tells each window's merge task.
    tasks: TaskCount,
}

/// The task that merges `window` among `tasks`: the partition of its key that the producer's
/// partitioner picks (murmur2, as the Java client's).
fn merge_task(window: (i64, i64), tasks: i32) -> Result<i32, String> {
    Ok(sluice_client::partition_for_key(&encode(&window)?, tasks))
}

/// Fails for a window's local top items found on another task than the one that merges it:
/// kept by a version that merged every window on task 0.
fn merged_elsewhere(window: (i64, i64), task: i32, tasks: i32) -> Result<(), String> {
    let merger = merge_task(window, tasks)?;
    if merger == task {
        return Ok(());
    }
    Err(format!(
        "the top-k merge of window [{}, {}) is on task {task}, where this version merges it on task {merger}: a version before 2026-12-07 merged every window on task 0. Upgrade once the job has given its open windows (stop its input until the last windows are published), or delete the job's top-k repartition and top_k_per_window changelog topics to start its rankings over",
        window.0, window.1
    ))
}

/// The key of a top-k merge's changelog record: an upstream task's watermark (value as the
/// marker table keeps it; `Upstream(-1)` the watermark given), a
/// window's local top items so far (value `Vec<T>`; a tombstone once given), or where the given
/// windows end (value `Option<i64>`).
#[derive(Serialize, Deserialize)]
enum MergeEntry {
    Upstream(i32),
    Window(i64, i64),
    GivenUntil,
}

impl<T> Default for TopMerge<T> {
    fn default() -> Self {
        Self {
            table: MarkerTable::default(),
            windows: BTreeMap::new(),
            given_until: BTreeMap::new(),
            changed: BTreeSet::new(),
            given: Vec::new(),
            given_changed: BTreeSet::new(),
            tasks: TaskCount::default(),
        }
    }
}

impl<T: Serialize + DeserializeOwned + Send> Stateful for TopMerge<T> {
    fn kind(&self) -> &'static str {
        "top_k_per_window"
    }

    fn take_delta(&mut self) -> Result<Option<Vec<u8>>, String> {
        Err(only_in_changelogs(self.kind()))
    }

    fn snapshot(&mut self) -> Result<Vec<u8>, String> {
        Err(only_in_changelogs(self.kind()))
    }

    fn restore(&mut self, _: &[u8]) -> Result<(), String> {
        Err(only_in_changelogs(self.kind()))
    }

    fn apply_delta(&mut self, _: &[u8]) -> Result<(), String> {
        Err(only_in_changelogs(self.kind()))
    }

    fn splits_by_task(&self) -> bool {
        true
    }

    fn take_task_changes(&mut self) -> Result<Vec<TaskChange>, String> {
        let mut changes = self.table.take_changes(|upstream| encode(&MergeEntry::Upstream(upstream)))?;
        for (task, start, end) in std::mem::take(&mut self.given) {
            changes.push(TaskChange::new(task, encode(&MergeEntry::Window(start, end))?, None));
        }
        for window in std::mem::take(&mut self.changed) {
            let Some(items) = self.windows.get(&window) else { continue };
            let (task, start, end) = window;
            changes.push(TaskChange::new(task, encode(&MergeEntry::Window(start, end))?, Some(encode(items)?)));
        }
        for task in std::mem::take(&mut self.given_changed) {
            let given = self.given_until.get(&task).copied();
            changes.push(TaskChange::new(task, encode(&MergeEntry::GivenUntil)?, Some(encode(&given)?)));
        }
        Ok(changes)
    }

    fn restore_task_entry(&mut self, task: i32, key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
        let entry: MergeEntry = decode(key).map_err(|e| format!("a top-k record's key: {e}"))?;
        match (entry, value) {
            (MergeEntry::Upstream(upstream), value) => self.table.restore(task, upstream, value)?,
            (MergeEntry::Window(start, end), Some(value)) => {
                if let Some(tasks) = self.tasks.tasks() {
                    merged_elsewhere((start, end), task, tasks)?;
                }
                let items = decode(value).map_err(|e| format!("a top-k record's items: {e}"))?;
                self.windows.insert((task, start, end), items);
            }
            (MergeEntry::Window(start, end), None) => {
                self.windows.remove(&(task, start, end));
            }
            (MergeEntry::GivenUntil, value) => {
                let given: Option<Option<i64>> =
                    value.map(decode).transpose().map_err(|e| format!("a top-k record's end: {e}"))?;
                match given.flatten() {
                    Some(given) => self.given_until.insert(task, given),
                    None => self.given_until.remove(&task),
                };
            }
        }
        Ok(())
    }

    fn drop_tasks(&mut self, tasks: &BTreeSet<i32>) {
        self.table.drop_tasks(tasks);
        self.windows.retain(|(task, _, _), _| !tasks.contains(task));
        self.given_until.retain(|task, _| !tasks.contains(task));
        self.changed.retain(|(task, _, _)| !tasks.contains(task));
        self.given.retain(|(task, _, _)| !tasks.contains(task));
        self.given_changed.retain(|task| !tasks.contains(task));
    }

    fn task_entries(&mut self, tasks: &BTreeSet<i32>) -> Result<Vec<TaskChange>, String> {
        let mut entries = self.table.entries(tasks, |upstream| encode(&MergeEntry::Upstream(upstream)))?;
        for ((task, start, end), items) in self.windows.iter().filter(|((task, _, _), _)| tasks.contains(task)) {
            entries.push(TaskChange::new(*task, encode(&MergeEntry::Window(*start, *end))?, Some(encode(items)?)));
        }
        for (task, given) in self.given_until.iter().filter(|(task, _)| tasks.contains(task)) {
            entries.push(TaskChange::new(*task, encode(&MergeEntry::GivenUntil)?, Some(encode(&Some(*given))?)));
        }
        Ok(entries)
    }
}

impl<T> TopMerge<T> {
    /// Takes in one task's local top items of a window whose merge is `task`'s (a window given
    /// already is done with: its items were counted in it).
    fn add(&mut self, task: i32, (start, end): (i64, i64), items: Vec<T>) {
        if self.given_until.get(&task).is_some_and(|given| end <= *given) {
            return;
        }
        self.windows.entry((task, start, end)).or_default().extend(items);
        self.changed.insert((task, start, end));
    }

    /// `task`'s windows every task's watermark passed, each with all its items, in start order.
    fn close(&mut self, task: i32, watermark: i64) -> Vec<((i64, i64), Vec<T>)> {
        let due: Vec<(i32, i64, i64)> = self
            .windows
            .range((task, i64::MIN, i64::MIN)..=(task, i64::MAX, i64::MAX))
            .filter(|((_, _, end), _)| *end <= watermark)
            .map(|(window, _)| *window)
            .collect();
        let mut out = Vec::with_capacity(due.len());
        for window in due {
            if let Some(items) = self.windows.remove(&window) {
                self.changed.remove(&window);
                self.given.push(window);
                out.push(((window.1, window.2), items));
            }
        }
        if self.given_until.get(&task).is_none_or(|given| watermark > *given) {
            self.given_until.insert(task, watermark);
            self.given_changed.insert(task);
        }
        out
    }
}

impl<T> DStream<Windowed<T>>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    /// Scale-out mode's `top_k_per_window`, in two stages, as the design of a global top-k over
    /// tasks goes: each process takes the local top `k` of each window its tasks gave this
    /// batch and sends them, keyed by window, to `<group>-top-k-<n>-repartition` (a window's
    /// partition is its key's, as a repartition's, so the windows' merges spread over the
    /// tasks) with the markers of its tasks' watermarks to every partition; the owner of a
    /// window's partition gathers its local tops and gives its top `k` once every task's
    /// watermark passed its end. Each key's value of a window comes from one task, once, so
    /// the top of the local tops is the top of the window.
    pub(crate) fn top_k_across_tasks(
        self,
        k: usize,
        compare: impl Fn(&T, &T) -> std::cmp::Ordering + Send + 'static,
    ) -> DStream<Windowed<T>> {
        let Some(group) = self.group() else { return self.nothing() };
        if self.watermarks().is_empty() {
            self.record_error(
                "top_k_per_window in scale-out mode on windows without a watermark: each window is given once every task's watermark has passed it (windows of reduce_by_key_and_event_window after with_watermark have one)".into(),
            );
        }
        // One function for both stages, which may run side by side.
        let compare = Arc::new(Mutex::new(compare));
        let local_compare = Arc::clone(&compare);
        let watermarks = self.watermarks();
        let local = self.derive(move |_, parts| Some(vec![top_per_window(parts, k, &*lock_state(&local_compare))]));
        let (compute, graph, _) = local.into_parts();
        let name = {
            let graph = lock(&graph);
            let prefix = format!("{group}-top-k-");
            format!("top-k-{}", graph.internal_topics.iter().filter(|t| t.starts_with(&prefix)).count())
        };
        let topic = add_topic(&graph, &group, &name);
        let (failures, count) = {
            let graph = lock(&graph);
            (Arc::clone(&graph.failures), graph.task_count.clone())
        };
        // The producer's partitioner (murmur2 of the key) picks the window's merge task.
        let to_record = |item: Windowed<T>| Ok((None, encode(&(item.start_ms, item.end_ms))?, encode(&item.item)?));
        let output = RepartitionOutput {
            compute,
            combine: None,
            to_record: Box::new(to_record),
            topic: topic.clone(),
            markers: Some(MarkerSender::new(watermarks, count.clone(), MarkerTargets::Merge)),
            held_markers: Vec::new(),
            records: Vec::new(),
            transaction: None,
            failure: None,
        };
        lock(&graph).outputs.push(Box::new(output));
        let state = Arc::new(Mutex::new(TopMerge::<T> { tasks: count.clone(), ..TopMerge::default() }));
        let given = GivenTasks::default();
        let gives = given.clone();
        lock(&graph).state.register(Arc::clone(&state) as Arc<Mutex<dyn Stateful>>);
        let topics = [topic];
        let take = move |input: &BatchInput| {
            let parts = input.records.take_where(|part| input.part_of(part, &topics));
            let mut state = lock_state(&state);
            let state = &mut *state;
            let items = read_parts(parts, &failures, |record| {
                if is_marker(record) {
                    state.table.note(record.partition, &marker_report(record)?);
                    return Ok(None);
                }
                let window: (i64, i64) =
                    decode(record.key.as_deref().ok_or("no key")?).map_err(|e| format!("key: {e}"))?;
                let item: T = decode(record.value.as_deref().ok_or("no value")?).map_err(|e| format!("value: {e}"))?;
                if let Some(tasks) = count.tasks() {
                    merged_elsewhere(window, record.partition, tasks)?;
                }
                Ok(Some((record.partition, window, item)))
            });
            for (task, window, item) in items.into_iter().flatten() {
                state.add(task, window, vec![item]);
            }
            if !input.last_piece {
                return None;
            }
            state.table.take_pending(count.tasks());
            let mut out = Vec::new();
            let compare = lock_state(&compare);
            for (task, watermark) in state.table.watermarks(count.tasks()) {
                for ((start_ms, end_ms), items) in state.close(task, watermark) {
                    let top = greatest(items, k, |a, b| (*compare)(a, b));
                    out.extend(top.into_iter().map(|item| (task, Windowed { start_ms, end_ms, item })));
                }
            }
            // The batch's windows in start order over its merge tasks (a stable sort: each
            // window's items stay greatest first), in parts by merge task.
            out.sort_by_key(|(_, window)| (window.start_ms, window.end_ms));
            let (tasks, parts) = task_parts(out);
            gives.give(input, tasks);
            Some(parts)
        };
        DStream::new(graph, Box::new(take)).giving_tasks(Some(given))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_at_or_after_their_partitions_watermark_are_combined_per_key_and_slide() {
        let timed = |time_ms: i64, key: &str| Timed { time_ms, late: false, item: (key.to_owned(), 1u64) };
        let parts = vec![
            vec![timed(500, "a"), timed(1_200, "a"), timed(1_900, "a"), timed(1_300, "b"), timed(2_100, "a")],
            vec![timed(100, "a"), timed(150, "a")],
            vec![timed(1_100, "a"), timed(900, "a"), timed(2_500, "b")],
        ];
        let input = BatchInput::new(
            0,
            1_000,
            false,
            crate::graph::SourceRecords::default(),
            Some(vec![(Arc::from("clicks"), 3), (Arc::from("clicks"), 4), (Arc::from("clicks"), 5)]),
        );
        // Partition 3's watermark is at 1 s, partition 5's at 0.8 s; partition 4 has none yet.
        let watermarks = BTreeMap::from([(3, 1_000), (5, 800)]);
        let combine = |complete: bool| {
            let before = Settled { watermarks: watermarks.clone(), complete };
            let mut combiner =
                SlideCombiner { slide_ms: 1_000, reduce: Box::new(|a, b| a + b), groups: HashMap::default() };
            let mut out = combiner.add(parts.clone(), &input, &before);
            out.extend(combiner.drain());
            out.sort_by(|x, y| (x.time_ms, &x.item.0).cmp(&(y.time_ms, &y.item.0)));
            out.iter().map(|t| (t.time_ms, t.item.0.clone(), t.item.1)).collect::<Vec<(i64, String, u64)>>()
        };
        let got =
            |items: &[(i64, &str, u64)]| items.iter().map(|(t, k, n)| (*t, (*k).to_owned(), *n)).collect::<Vec<_>>();
        assert_eq!(
            combine(false),
            got(&[(100, "a", 1), (150, "a", 1), (500, "a", 1), (900, "a", 1), (1_100, "a", 3), (1_300, "b", 1), (2_100, "a", 1), (2_500, "b", 1)]),
            "behind their partition's watermark, or without one: as they were; the rest one per key and slide across partitions, at the earliest time"
        );
        // Partition 4 never had a watermark anywhere: all of its items are combined, here with
        // partition 5's of slide 0, at the earliest time.
        assert_eq!(
            combine(true),
            got(&[(100, "a", 3), (500, "a", 1), (1_100, "a", 3), (1_300, "b", 1), (2_100, "a", 1), (2_500, "b", 1)]),
            "a partition that never had a watermark combined whole"
        );
    }

    /// A key's items of every batch of a transaction go as one item when it ends, with the last
    /// watermark markers after them; items that cannot be combined go at once; a transaction
    /// that did not end (it aborted) leaves nothing to the next but its markers, made again.
    #[test]
    fn combined_items_and_the_markers_after_them_wait_for_the_transactions_end() {
        type Item = Timed<(String, u64)>;
        let timed = |time_ms: i64, key: &str| Timed { time_ms, late: false, item: (key.to_owned(), 1u64) };
        let cell: WatermarkCell = Arc::new(Mutex::new(WatermarkValue { restored_at: Some(0), ..Default::default() }));
        // Each batch's items, and the watermark its source partition's step leaves.
        type Feed = std::collections::VecDeque<(Vec<Item>, i64)>;
        let feed: Arc<Mutex<Feed>> = Arc::default();
        let (fed, step) = (Arc::clone(&feed), Arc::clone(&cell));
        let count = crate::markers::TaskCount::default();
        count.tasks.store(2, std::sync::atomic::Ordering::Relaxed);
        let mut output = RepartitionOutput::<Item> {
            compute: Box::new(move |_| {
                let (items, watermark) = fed.lock().unwrap().pop_front()?;
                lock_state(&step).tasks = BTreeMap::from([(0, watermark)]);
                Some(vec![items])
            }),
            combine: Some(Box::new(SlideCombiner {
                slide_ms: 1_000,
                reduce: Box::new(|a: u64, b: u64| a + b),
                groups: HashMap::default(),
            })),
            to_record: Box::new(|timed: Item| {
                let (key, value) = timed.item;
                Ok((None, encode(&key)?, encode(&(timed.time_ms, timed.late, value))?))
            }),
            topic: "t".to_owned(),
            markers: Some(MarkerSender::new(vec![cell], count, MarkerTargets::Every)),
            held_markers: Vec::new(),
            records: Vec::new(),
            transaction: None,
            failure: None,
        };
        // One batch of one piece; what went at once.
        let batch = |output: &mut RepartitionOutput<Item>, items: Vec<Item>, watermark: i64, continues: bool| {
            feed.lock().unwrap().push_back((items, watermark));
            let sources = Some(vec![(Arc::from("clicks"), 0)]);
            let input = BatchInput::new(0, 1_000, false, crate::graph::SourceRecords::default(), sources)
                .in_piece(0, true)
                .in_transaction(None, continues);
            output.compute(&input);
            std::mem::take(&mut output.records)
        };
        // Each record as "key time late count", or the partition of a marker.
        let read = |records: Vec<ProducerRecord>| -> Vec<String> {
            records
                .iter()
                .map(|record| {
                    if record.headers.iter().any(|h| h.key.as_ref() == crate::markers::MARKER_HEADER.as_bytes()) {
                        return format!("marker to {:?}", record.partition);
                    }
                    let key: String = decode(record.key.as_deref().unwrap_or_default()).unwrap();
                    let (time, late, n): (i64, bool, u64) =
                        decode(record.value.as_deref().unwrap_or_default()).unwrap();
                    format!("{key} {time} {late} {n}")
                })
                .collect()
        };
        let markers = ["marker to Some(0)", "marker to Some(1)"];
        // No watermark anywhere yet: all combined, and kept with the markers after them.
        let sent = batch(&mut output, vec![timed(100, "a"), timed(200, "a"), timed(1_300, "b")], 50, false);
        assert!(sent.is_empty(), "{:?}", read(sent));
        let sent = batch(&mut output, vec![timed(400, "a"), timed(10, "c")], 350, true);
        assert_eq!(read(sent), vec!["c 10 false 1"], "behind its partition's watermark (50): sent at once");
        assert!(output.end_transaction());
        let mut ended = read(std::mem::take(&mut output.records));
        ended[..2].sort();
        assert_eq!(ended[..2], ["a 100 false 3", "b 1300 false 1"], "a key's items of both batches as one");
        assert_eq!(ended[2..], markers, "then the last markers");
        assert!(!output.end_transaction(), "nothing left");

        // A transaction that did not end, then a new one: only the new one's items, and the
        // markers the first made (never sent) made again.
        assert!(batch(&mut output, vec![timed(2_100, "a")], 400, false).is_empty());
        assert!(batch(&mut output, vec![timed(2_200, "d")], 400, false).is_empty());
        assert!(output.end_transaction());
        let ended = read(std::mem::take(&mut output.records));
        assert_eq!(ended[..1], ["d 2200 false 1"]);
        assert_eq!(ended[1..], markers);

        // More kept than the bound: they go at once, the markers still at the end.
        let many: Vec<Item> = (0..=MAX_KEPT_COMBINED).map(|key| timed(3_000, &key.to_string())).collect();
        let sent = read(batch(&mut output, many, 500, false));
        assert_eq!(sent.len(), MAX_KEPT_COMBINED + 1);
        assert!(sent.iter().all(|record| !record.starts_with("marker")));
        assert!(output.end_transaction());
        assert_eq!(read(std::mem::take(&mut output.records)), markers);
    }

    #[test]
    fn each_windows_merge_is_its_tasks_and_moves_with_it() {
        let report = |watermarks: &[(i32, i64)]| crate::markers::Report {
            watermarks: watermarks.iter().copied().collect(),
            idle: BTreeSet::new(),
        };
        let count = TaskCount::default();
        count.tasks.store(2, std::sync::atomic::Ordering::Relaxed);
        let new = || TopMerge::<u32> { tasks: count.clone(), ..TopMerge::default() };
        // The first second-long window each of two tasks merges; `a`'s ends first.
        let merged_by = |task: i32| {
            (0..).map(|n: i64| (n * 1_000, (n + 1) * 1_000)).find(|w| merge_task(*w, 2).unwrap() == task).unwrap()
        };
        let (mut a, mut b) = ((0, merged_by(0)), (1, merged_by(1)));
        if b.1 .1 < a.1 .1 {
            std::mem::swap(&mut a, &mut b);
        }
        let ((a_task, a_window), (b_task, b_window)) = (a, b);
        let mut merge = new();
        merge.add(a_task, a_window, vec![5, 3]);
        merge.add(a_task, a_window, vec![4]);
        merge.add(b_task, b_window, vec![7]);
        // Both upstream tasks' watermarks passed a's window, not b's.
        let between = a_window.1;
        for task in [0, 1] {
            merge.table.note(task, &report(&[(0, between), (1, b_window.1)]));
        }
        merge.table.take_pending(Some(2));
        let watermarks = merge.table.watermarks(Some(2));
        assert_eq!(watermarks, BTreeMap::from([(0, between), (1, between)]), "the least of the upstream tasks'");
        assert_eq!(merge.close(b_task, between), Vec::new(), "b's window ends after the watermark");
        assert_eq!(merge.close(a_task, between), vec![(a_window, vec![5, 3, 4])], "with every local top item");
        merge.add(a_task, a_window, vec![9]);
        assert!(!merge.windows.contains_key(&(a_task, a_window.0, a_window.1)), "a window given is done with");
        // b's task moves: what it changed goes to its changelog partition, and a process taking
        // it on gets its window back from there.
        let changes = merge.take_task_changes().unwrap();
        let mut moved = new();
        for change in changes.iter().filter(|change| change.task == b_task) {
            moved.restore_task_entry(b_task, &change.key, change.value.as_deref()).unwrap();
        }
        assert_eq!(moved.windows, BTreeMap::from([((b_task, b_window.0, b_window.1), vec![7])]));
        assert_eq!(moved.given_until, BTreeMap::from([(b_task, between)]));
        merge.drop_tasks(&BTreeSet::from([b_task]));
        assert!(merge.windows.is_empty() && !merge.given_until.contains_key(&b_task));
        // What a's task keeps, written whole, reads back the same.
        let mut again = new();
        for change in merge.task_entries(&BTreeSet::from([a_task])).unwrap() {
            again.restore_task_entry(change.task, &change.key, change.value.as_deref()).unwrap();
        }
        assert_eq!(again.given_until, BTreeMap::from([(a_task, between)]));
        assert_eq!(again.table.watermarks(Some(2)), BTreeMap::from([(a_task, between)]));
        // A window kept on another task than its merge's (by a version that merged every window
        // on task 0) is refused, saying what to do.
        let entries = moved.task_entries(&BTreeSet::from([b_task])).unwrap();
        let window = entries.iter().find(|change| change.key.first() == Some(&1)).unwrap();
        let refused = new().restore_task_entry(a_task, &window.key, window.value.as_deref()).unwrap_err();
        assert!(refused.contains("merged every window on task 0") && refused.contains("Upgrade once"), "{refused}");
    }

    #[test]
    fn names_make_legal_topics() {
        assert!(legal_topic("job-by-item_2.v1-repartition"));
        let long = "x".repeat(250);
        for bad in ["", "by item", "by/item", "ítem", long.as_str()] {
            assert!(!legal_topic(bad), "{bad:?}");
        }
    }

    #[test]
    fn records_that_are_not_items_fail_the_batch_with_where_and_why() {
        let record = |offset: i64, key: Option<Vec<u8>>, value: Option<Vec<u8>>| KafkaRecord {
            topic: Arc::from("job-x-repartition"),
            partition: 3,
            offset,
            timestamp: 0,
            key: key.map(Bytes::from),
            value: value.map(Bytes::from),
            headers: Vec::new(),
        };
        let item = |key: &str, value: u64| (Some(encode(&key.to_owned()).unwrap()), Some(encode(&value).unwrap()));
        let (k, v) = item("a", 7);
        let failures = Mutex::new(Vec::new());
        let parts: Parts<(String, u64)> = decode_parts(vec![vec![record(0, k.clone(), v.clone())], vec![]], &failures);
        assert_eq!(parts, vec![vec![("a".to_owned(), 7)], vec![]]);
        assert!(failures.lock().unwrap().is_empty());

        let parts: Parts<(String, u64)> =
            decode_parts(vec![vec![record(5, k, None), record(6, Some(vec![0xff; 3]), v)]], &failures);
        assert_eq!(parts, vec![Vec::new()]);
        let failures = failures.into_inner().unwrap();
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(failures[0].contains("job-x-repartition/3 offset 5: no value"), "{failures:?}");
    }
}
