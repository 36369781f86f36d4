//! Typed streams of micro-batches and their operators, in the manner of Spark Streaming's
//! DStreams: each batch, a stream computes its items from its parents', split in parts (one per
//! read task of the source, like an RDD's partitions) until an operator gathers them by key.

use std::cmp::Ordering;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::graph::{lock, BatchInfo, BatchInput, Compute, Gather, Parts, SharedGraph};
use crate::hash::HashMap;
use crate::pool::{par_map, PARALLEL_FROM_ITEMS};
use crate::sink::SinkOutput;
use crate::state::{decode, encode, lock_state, Stateful};

/// A stream of micro-batches of `T`. Operators consume the stream and return a new one; an
/// output operation (`foreach_batch`, a sink) registers it with the job. A stream's items are
/// computed only for the outputs that use it; to use one stream twice, build it twice from the
/// source (a source stream can be asked for any number of times).
///
/// Batches without output (a window between two slides) give `None` in a stream and reach no
/// output.
pub struct DStream<T> {
    compute: Compute<T>,
    graph: SharedGraph,
    /// The watermarks of the `with_watermark` steps upstream (the stream's watermark is the
    /// least of them), each set when its step computes a batch.
    watermarks: Watermarks,
    /// Whether the stream's parts are still the read tasks of the topics it comes from, in
    /// order, so that each item's partition is known: so for a source stream, a repartitioned
    /// one and after element-wise operators; not once an operator gathers, combines or
    /// regroups them.
    aligned: Aligned,
    /// Scale-out mode: set when the stream's parts are those an operator that keeps state per
    /// task gave, each one task's (see [`GivenTasks`]).
    given: Option<GivenTasks>,
}

/// Scale-out mode: the task of each part an operator that keeps state per task gave for the
/// batch piece it computed last, for the sinks downstream that write per task (files).
/// Element-wise operators keep the parts, and with them the cell; an operator that gathers or
/// regroups them does not.
#[derive(Debug, Clone, Default)]
pub(crate) struct GivenTasks(Arc<Mutex<Option<Given>>>);

/// The batch and piece (its id and index) whose parts are of the tasks given.
type Given = ((u64, usize), Vec<i32>);

impl GivenTasks {
    /// Notes the task of each part given for `input`'s piece.
    pub(crate) fn give(&self, input: &BatchInput, tasks: Vec<i32>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(((input.batch_id, input.piece), tasks));
    }

    /// The task of each of the `parts` parts given for `input`'s piece, if they were noted.
    fn of(&self, input: &BatchInput, parts: usize) -> Option<Vec<i32>> {
        let given = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let (at, tasks) = given.as_ref()?;
        (*at == (input.batch_id, input.piece) && tasks.len() == parts).then(|| tasks.clone())
    }
}

/// Scale-out mode: how a sink knows the task of each part of its stream's batches.
#[derive(Debug, Clone, Default)]
pub(crate) enum PartTasks {
    /// Not known: the parts were gathered, combined or regrouped.
    #[default]
    Unknown,
    /// The parts are the batch's read tasks.
    Read,
    /// The parts are those an operator keeping state per task gave.
    Given(GivenTasks),
}

impl PartTasks {
    /// The task of each run of the items of `parts` (consecutive parts of one task are one
    /// run; empty parts have none): (task, items). `None` outside scale-out mode, or where
    /// the tasks are not known.
    pub(crate) fn runs<T>(&self, input: &BatchInput, parts: &Parts<T>) -> Option<Vec<(i32, usize)>> {
        input.group.as_ref()?;
        let tasks = match self {
            Self::Unknown => return None,
            Self::Read => crate::keyed::part_tasks(input, parts.len(), true)?,
            Self::Given(given) => given.of(input, parts.len())?,
        };
        let mut runs: Vec<(i32, usize)> = Vec::new();
        for (task, part) in tasks.into_iter().zip(parts).filter(|(_, part)| !part.is_empty()) {
            match runs.last_mut() {
                Some((last, items)) if *last == task => *items += part.len(),
                _ => runs.push((task, part.len())),
            }
        }
        Some(runs)
    }
}

/// Items with their tasks, in the order given, as parts: one per run of items of one task; with
/// the task of each part (see [`GivenTasks`]).
pub(crate) fn task_parts<T>(items: impl IntoIterator<Item = (i32, T)>) -> (Vec<i32>, Parts<T>) {
    let (mut tasks, mut parts): (Vec<i32>, Parts<T>) = (Vec::new(), Vec::new());
    for (task, item) in items {
        match (tasks.last(), parts.last_mut()) {
            (Some(last), Some(part)) if *last == task => part.push(item),
            _ => {
                tasks.push(task);
                parts.push(vec![item]);
            }
        }
    }
    (tasks, parts)
}

/// Which read tasks a stream's parts are (see `DStream::aligned`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum Aligned {
    /// Not read tasks any more.
    #[default]
    No,
    /// The source topics'.
    Source,
    /// The repartition topic's.
    Repartition(Arc<str>),
}

/// A `with_watermark` step's watermark as of the last batch it computed: the stream's, and in
/// scale-out mode each task's own (its source partition's greatest event time minus the
/// allowed lateness).
#[derive(Debug, Default, Clone)]
pub(crate) struct WatermarkValue {
    pub(crate) least: Option<i64>,
    pub(crate) tasks: std::collections::BTreeMap<i32, i64>,
    /// Scale-out mode with `Watermark::idle_after`: the tasks of this process idle that long.
    pub(crate) idle: std::collections::BTreeSet<i32>,
    /// The step's watermark (lateness, and where late items are counted), for the operators
    /// downstream that judge items again (after a repartition).
    pub(crate) spec: Option<crate::event_time::Watermark>,
    /// Scale-out mode: a repartition of the step's items follows, which judges them by every
    /// source partition's watermark (the step's own partition's would drop items a single
    /// process keeps).
    pub(crate) judged_after_repartition: bool,
    /// Scale-out mode, a `with_watermark` step's: the count of the process's partition changes
    /// (`TaskCount::changes`) when `tasks` was last rewritten from the state as its tasks were
    /// dropped and restored (so that it is exact before the first batch after the change), and
    /// `None` for other steps' (their values are rewritten only at a batch's last piece).
    pub(crate) restored_at: Option<u64>,
}

/// A `with_watermark` step's watermark, shared with the operators downstream.
pub(crate) type WatermarkCell = Arc<Mutex<WatermarkValue>>;

/// The watermarks a stream carries.
pub(crate) type Watermarks = Vec<WatermarkCell>;

/// The least of `watermarks` that have a value (`None` if none has): a stream that has had no
/// items yet does not hold the others back.
pub(crate) fn least_watermark(watermarks: &[WatermarkCell]) -> Option<i64> {
    watermarks.iter().filter_map(|cell| cell.lock().unwrap_or_else(PoisonError::into_inner).least).min()
}

/// Scale-out mode: the least of `watermarks` for `task` (`None` if none has one for it).
pub(crate) fn task_watermark(watermarks: &[WatermarkCell], task: i32) -> Option<i64> {
    watermarks
        .iter()
        .filter_map(|cell| cell.lock().unwrap_or_else(PoisonError::into_inner).tasks.get(&task).copied())
        .min()
}

/// Scale-out mode: each task's least watermark over `watermarks`.
pub(crate) fn task_watermarks(watermarks: &[WatermarkCell]) -> std::collections::BTreeMap<i32, i64> {
    let mut tasks = std::collections::BTreeMap::new();
    for cell in watermarks {
        for (task, watermark) in &cell.lock().unwrap_or_else(PoisonError::into_inner).tasks {
            let least: &mut i64 = tasks.entry(*task).or_insert(*watermark);
            *least = (*least).min(*watermark);
        }
    }
    tasks
}

/// Scale-out mode: the tasks idle in `watermarks` (in one of them, and not busy in another).
pub(crate) fn idle_tasks(watermarks: &[WatermarkCell]) -> std::collections::BTreeSet<i32> {
    let (mut idle, mut busy) = (std::collections::BTreeSet::new(), std::collections::BTreeSet::new());
    for cell in watermarks {
        let value = cell.lock().unwrap_or_else(PoisonError::into_inner);
        idle.extend(value.idle.iter().copied());
        busy.extend(value.tasks.keys().filter(|task| !value.idle.contains(task)).copied());
    }
    idle.retain(|task| !busy.contains(task));
    idle
}

/// The first watermark spec among `watermarks`.
pub(crate) fn watermark_spec(watermarks: &[WatermarkCell]) -> Option<crate::event_time::Watermark> {
    watermarks.iter().find_map(|cell| cell.lock().unwrap_or_else(PoisonError::into_inner).spec.clone())
}

impl<T> std::fmt::Debug for DStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DStream").field("item", &std::any::type_name::<T>()).finish_non_exhaustive()
    }
}

impl<T: Send + 'static> DStream<T> {
    pub(crate) fn new(graph: SharedGraph, compute: Compute<T>) -> Self {
        Self { compute, graph, watermarks: Vec::new(), aligned: Aligned::No, given: None }
    }

    /// The same stream, its parts read tasks or not (see `aligned`).
    pub(crate) fn aligned_as(mut self, aligned: Aligned) -> Self {
        self.aligned = aligned;
        self
    }

    /// The same stream, its parts those an operator keeping state per task gave (`None`: not).
    pub(crate) fn giving_tasks(mut self, given: Option<GivenTasks>) -> Self {
        self.given = given;
        self
    }

    /// How a sink knows the task of each of the stream's parts.
    fn part_tasks(&self) -> PartTasks {
        match (&self.aligned, &self.given) {
            (Aligned::Source | Aligned::Repartition(_), _) => PartTasks::Read,
            (Aligned::No, Some(given)) => PartTasks::Given(given.clone()),
            (Aligned::No, None) => PartTasks::Unknown,
        }
    }

    /// Whether the stream's parts are read tasks, in order.
    pub(crate) fn is_aligned(&self) -> bool {
        self.aligned != Aligned::No
    }

    /// Which read tasks the stream's parts are.
    pub(crate) fn alignment(&self) -> &Aligned {
        &self.aligned
    }

    /// Whether the job runs in scale-out mode.
    pub(crate) fn scales_out(&self) -> bool {
        lock(&self.graph).scale
    }

    /// The job's group, in scale-out mode.
    pub(crate) fn group(&self) -> Option<String> {
        lock(&self.graph).group.clone()
    }

    /// The job's task count and partition changes.
    pub(crate) fn task_count(&self) -> crate::markers::TaskCount {
        lock(&self.graph).task_count.clone()
    }

    /// The same stream carrying `watermarks`.
    pub(crate) fn with_watermarks(mut self, watermarks: Watermarks) -> Self {
        self.watermarks = watermarks;
        self
    }

    /// The watermarks the stream carries.
    pub(crate) fn watermarks(&self) -> Watermarks {
        self.watermarks.clone()
    }

    /// The stream's compute step, job and watermarks, to build an operator around.
    pub(crate) fn into_parts(self) -> (Compute<T>, SharedGraph, Watermarks) {
        (self.compute, self.graph, self.watermarks)
    }

    /// A step on the whole batch: its pieces gathered, `step` run on the last.
    pub(crate) fn derive<U: Send + 'static>(
        self,
        mut step: impl FnMut(&BatchInput, Parts<T>) -> Option<Parts<U>> + Send + 'static,
    ) -> DStream<U> {
        let mut parent = self.compute;
        let mut gather = Gather::default();
        DStream::new(
            self.graph,
            Box::new(move |input| gather.add(input, parent(input)).flatten().and_then(|parts| step(input, parts))),
        )
        .with_watermarks(self.watermarks)
    }

    /// A step on each piece of a batch as it comes (element-wise operators).
    fn derive_per_piece<U: Send + 'static>(
        self,
        mut step: impl FnMut(&BatchInput, Parts<T>) -> Option<Parts<U>> + Send + 'static,
    ) -> DStream<U> {
        let mut parent = self.compute;
        DStream::new(self.graph, Box::new(move |input| parent(input).and_then(|parts| step(input, parts))))
            .with_watermarks(self.watermarks)
            .aligned_as(self.aligned)
            .giving_tasks(self.given)
    }

    /// A reduction: `fold` takes in each piece's parts as it comes, `finish` gives the batch's
    /// result on the last piece (`None` folded in if no piece had output upstream, and then
    /// no output unless `every_batch`, for stateful steps that must see every batch).
    pub(crate) fn fold_pieces<A: Send + 'static, U: Send + 'static>(
        self,
        every_batch: bool,
        mut fold: impl FnMut(&mut Option<A>, Parts<T>) + Send + 'static,
        mut finish: impl FnMut(&BatchInput, Option<A>) -> Option<Parts<U>> + Send + 'static,
    ) -> DStream<U> {
        let mut parent = self.compute;
        let mut folded: Option<A> = None;
        DStream::new(
            self.graph,
            Box::new(move |input| {
                if input.piece == 0 {
                    folded = None;
                }
                if let Some(parts) = parent(input) {
                    fold(&mut folded, parts);
                }
                if !input.last_piece {
                    return None;
                }
                let folded = folded.take();
                if folded.is_none() && !every_batch {
                    return None;
                }
                finish(input, folded)
            }),
        )
        .with_watermarks(self.watermarks)
    }

    /// Like `derive`, for stateful steps that must see every batch: a batch without output
    /// upstream comes to them empty.
    fn derive_every_batch<U: Send + 'static>(
        self,
        mut step: impl FnMut(&BatchInput, Parts<T>) -> Option<Parts<U>> + Send + 'static,
    ) -> DStream<U> {
        let mut parent = self.compute;
        let mut gather = Gather::default();
        DStream::new(
            self.graph,
            Box::new(move |input| {
                gather.add(input, parent(input)).and_then(|parts| step(input, parts.unwrap_or_default()))
            }),
        )
        .with_watermarks(self.watermarks)
    }

    /// A stateful step: `state` is saved with each batch's commit and restored on restart
    /// (as a delta per batch and in snapshots); the step sees every batch, whole.
    pub(crate) fn stateful<U: Send + 'static, S: Stateful + 'static>(
        self,
        state: S,
        mut step: impl FnMut(&mut S, &BatchInput, Parts<T>) -> Option<Parts<U>> + Send + 'static,
    ) -> DStream<U> {
        let state = self.register(state);
        self.derive_every_batch(move |input, parts| step(&mut lock_state(&state), input, parts))
    }

    /// A stateful step that sees every piece of every batch as it comes (a batch without
    /// output upstream comes to it as one empty piece); it knows the last by
    /// `input.last_piece`.
    pub(crate) fn stateful_per_piece<U: Send + 'static, S: Stateful + 'static>(
        self,
        state: S,
        mut step: impl FnMut(&mut S, &BatchInput, Parts<T>) -> Option<Parts<U>> + Send + 'static,
    ) -> DStream<U> {
        let state = self.register(state);
        let mut parent = self.compute;
        DStream::new(
            self.graph,
            Box::new(move |input| step(&mut lock_state(&state), input, parent(input).unwrap_or_default())),
        )
        .with_watermarks(self.watermarks)
        .aligned_as(self.aligned)
        .giving_tasks(self.given)
    }

    /// `state` registered with the job, to be saved and restored.
    fn register<S: Stateful + 'static>(&self, state: S) -> Arc<Mutex<S>> {
        let state = Arc::new(Mutex::new(state));
        lock(&self.graph).state.register(Arc::clone(&state) as Arc<Mutex<dyn Stateful>>);
        state
    }

    pub(crate) fn record_error(&self, error: String) {
        lock(&self.graph).errors.push(error);
    }

    pub(crate) fn interval_ms(&self) -> u64 {
        lock(&self.graph).interval_ms
    }

    /// Each item mapped by `f`. Like every element-wise operator, `f` runs on a batch's parts
    /// in parallel when the batch is large, so it is `Fn + Sync` (Spark's functions are too).
    pub fn map<U: Send + 'static>(self, f: impl Fn(T) -> U + Send + Sync + 'static) -> DStream<U> {
        self.derive_parts(move |part| part.into_iter().map(&f).collect())
    }

    /// Each item mapped to any number of items.
    pub fn flat_map<U: Send + 'static, I: IntoIterator<Item = U>>(
        self,
        f: impl Fn(T) -> I + Send + Sync + 'static,
    ) -> DStream<U> {
        self.derive_parts(move |part| {
            // Most flat maps give about one item per item (parse or drop).
            let mut out = Vec::with_capacity(part.len());
            out.extend(part.into_iter().flat_map(&f));
            out
        })
    }

    /// The items for which `f` holds.
    pub fn filter(self, f: impl Fn(&T) -> bool + Send + Sync + 'static) -> DStream<T> {
        self.derive_parts(move |mut part| {
            part.retain(&f);
            part
        })
    }

    /// Each part (a read task's records, in offset order, or a gathered batch) mapped whole
    /// (in a batch that comes in pieces, once the last piece is in). In scale-out mode the
    /// output of an operator that keeps state per task (`update_state_by_key`,
    /// `map_with_state`, event-time windows, `top_k_per_window`) comes in parts by task, so `f`
    /// sees each task's part on its own (and is not called when there is no output); a whole
    /// batch of one process is not a meaningful unit there anyway, as other processes have the
    /// other tasks.
    pub fn map_partitions<U: Send + 'static>(self, f: impl Fn(Vec<T>) -> Vec<U> + Send + Sync + 'static) -> DStream<U> {
        let (aligned, given) = (self.aligned.clone(), self.given.clone());
        self.derive(move |_, parts| Some(par_parts(parts, &f))).aligned_as(aligned).giving_tasks(given)
    }

    /// Each item paired with a key.
    pub fn key_by<K: Send + 'static>(self, f: impl Fn(&T) -> K + Send + Sync + 'static) -> DStream<(K, T)> {
        self.map(move |item| (f(&item), item))
    }

    /// Each part of each piece mapped by `f`, in parallel for large pieces.
    fn derive_parts<U: Send + 'static>(self, f: impl Fn(Vec<T>) -> Vec<U> + Send + Sync + 'static) -> DStream<U> {
        self.derive_per_piece(move |_, parts| Some(par_parts(parts, &f)))
    }

    /// The items of both streams (this one's parts first). A batch has output if either has.
    pub fn union(self, other: DStream<T>) -> DStream<T> {
        let mut left = self.compute;
        let mut right = other.compute;
        let watermarks = self.watermarks.into_iter().chain(other.watermarks).collect();
        DStream::new(
            self.graph,
            Box::new(move |input| match (left(input), right(input)) {
                (None, None) => None,
                (l, r) => Some(l.unwrap_or_default().into_iter().chain(r.unwrap_or_default()).collect()),
            }),
        )
        .with_watermarks(watermarks)
    }

    /// Two streams of this one's items, computed once per batch and copied for the second:
    /// for a stream that feeds two outputs (a parsed source used for two results, say).
    pub fn tee(self) -> (DStream<T>, DStream<T>)
    where
        T: Clone,
    {
        let shared = Arc::new(Mutex::new(Tee { parent: self.compute, kept: None }));
        let side = |me: usize| -> Compute<T> {
            let shared = Arc::clone(&shared);
            Box::new(move |input: &BatchInput| {
                let mut tee = shared.lock().unwrap_or_else(PoisonError::into_inner);
                match tee.kept.take() {
                    // The other side computed this batch and kept this side's copy.
                    Some((at, side, parts)) if at == (input.batch_id, input.piece) && side == me => parts,
                    _ => {
                        let parts = (tee.parent)(input);
                        tee.kept = Some(((input.batch_id, input.piece), 1 - me, parts.clone()));
                        parts
                    }
                }
            })
        };
        let (first, second) = (side(0), side(1));
        let (watermarks, aligned, given) = (self.watermarks, self.aligned, self.given);
        (
            DStream::new(Arc::clone(&self.graph), first)
                .with_watermarks(watermarks.clone())
                .aligned_as(aligned.clone())
                .giving_tasks(given.clone()),
            DStream::new(self.graph, second).with_watermarks(watermarks).aligned_as(aligned).giving_tasks(given),
        )
    }

    /// How many items each batch has (one item per batch with output).
    pub fn count(self) -> DStream<u64> {
        self.fold_pieces(
            false,
            |count: &mut Option<u64>, parts| {
                *count.get_or_insert(0) += parts.iter().map(|p| p.len() as u64).sum::<u64>();
            },
            |_, count| Some(vec![vec![count.unwrap_or(0)]]),
        )
    }

    /// The `k` greatest items of each batch by `compare`, greatest first, in one part. With a
    /// total order the result is the same whatever the order items arrived in.
    pub fn top_k(self, k: usize, compare: impl Fn(&T, &T) -> Ordering + Send + 'static) -> DStream<T> {
        self.derive(move |_, parts| Some(vec![greatest(parts.into_iter().flatten().collect(), k, &compare)]))
    }

    /// Each item with how many times it occurs in the batch, in item order, in one part.
    pub fn count_by_value(self) -> DStream<(T, u64)>
    where
        T: Hash + Eq + Ord + Clone,
    {
        self.map(|item| (item, 1u64)).reduce_by_key(|a, b| a + b)
    }

    /// Every batch's items over the last `length` of batches, every `slide` (both multiples
    /// of the batch interval), like Spark's `window`. Batches in between have no output. The
    /// window's batches are saved with each commit, so a restarted job's windows hold what
    /// they held before.
    pub fn window(self, length: std::time::Duration, slide: std::time::Duration) -> DStream<T>
    where
        T: Clone + Serialize + DeserializeOwned,
    {
        let Some((length, slide)) = self.window_batches(length, slide) else { return self.nothing() };
        let state = WindowState { length, kept: std::collections::VecDeque::new(), added: false };
        self.stateful(state, move |state, input, parts| {
            state.push(parts);
            state.added = true;
            ((input.batch_id + 1) % slide == 0).then(|| state.kept.iter().flatten().cloned().collect())
        })
    }

    /// The window's length and slide in batches, or a configuration error recorded.
    pub(crate) fn window_batches(
        &self,
        length: std::time::Duration,
        slide: std::time::Duration,
    ) -> Option<(usize, u64)> {
        let interval = self.interval_ms();
        let (length_ms, slide_ms) = (length.as_millis(), slide.as_millis());
        let whole = |ms: u128| interval > 0 && ms > 0 && ms.is_multiple_of(u128::from(interval));
        if !whole(length_ms) || !whole(slide_ms) {
            self.record_error(format!(
                "a window of {length_ms} ms sliding every {slide_ms} ms: both must be positive multiples of the batch interval ({interval} ms)"
            ));
            return None;
        }
        let batches = |ms: u128| ms / u128::from(interval);
        Some((usize::try_from(batches(length_ms)).ok()?, u64::try_from(batches(slide_ms)).ok()?))
    }

    pub(crate) fn nothing<U: Send + 'static>(self) -> DStream<U> {
        DStream::new(self.graph, Box::new(|_| None))
    }

    /// Calls `f` with each batch's items (all parts, in order) — Spark's `foreachRDD`. An error
    /// fails the batch, which is then re-run (after a restart, with the same records).
    pub fn foreach_batch(self, f: impl FnMut(&BatchInfo, Vec<T>) -> Result<(), crate::BoxError> + Send + 'static) {
        self.to_sink(crate::sink::ForEach(f));
    }

    /// Writes each batch's items to `sink`.
    pub fn to_sink<S: crate::sink::Sink<T> + 'static>(self, sink: S) {
        let tasks = self.part_tasks();
        let output = SinkOutput::new(self.compute, sink, tasks);
        lock(&self.graph).outputs.push(Box::new(output));
    }
}

/// Operators of streams of key-value pairs.
impl<K, V> DStream<(K, V)>
where
    K: Hash + Eq + Ord + Clone + Send + 'static,
    V: Send + 'static,
{
    /// One item per key of the batch, its values combined by `f`, in key order, in one part.
    /// `f` must be associative and commutative (as Spark's): a batch that comes in pieces is
    /// reduced piece by piece as they come.
    pub fn reduce_by_key(self, f: impl Fn(V, V) -> V + Send + 'static) -> DStream<(K, V)> {
        self.fold_pieces(
            false,
            move |reduced: &mut Option<HashMap<K, V>>, parts| {
                reduce_into(reduced.get_or_insert_with(HashMap::default), parts, &f)
            },
            |_, reduced| reduced.map(|reduced| vec![sorted(reduced)]),
        )
    }

    /// How many items each key has in the batch, in key order.
    pub fn count_by_key(self) -> DStream<(K, u64)> {
        self.map(|(key, _)| (key, 1u64)).reduce_by_key(|a, b| a + b)
    }

    /// The pairs of this stream and `other` with equal keys (an inner join within each batch),
    /// in key order, then in the order they came. Use on windowed streams to join over windows.
    pub fn join<W: Clone + Send + 'static>(self, other: DStream<(K, W)>) -> DStream<(K, (V, W))>
    where
        V: Clone,
    {
        let mut left = self.compute;
        let mut right = other.compute;
        let (mut left_pieces, mut right_pieces) = (Gather::default(), Gather::default());
        let watermarks = self.watermarks.into_iter().chain(other.watermarks).collect();
        DStream::new(
            self.graph,
            Box::new(move |input| {
                // Both sides compute every piece of every batch (a windowed side must see each
                // one); the join is made on the last.
                let (l, r) = (left_pieces.add(input, left(input)), right_pieces.add(input, right(input)));
                let (l, r) = (l??, r??);
                let mut by_key: HashMap<K, Vec<W>> = HashMap::default();
                for (key, w) in r.into_iter().flatten() {
                    by_key.entry(key).or_default().push(w);
                }
                let mut joined: Vec<(K, (V, W))> = Vec::new();
                for (key, v) in l.into_iter().flatten() {
                    if let Some(ws) = by_key.get(&key) {
                        joined.extend(ws.iter().map(|w| (key.clone(), (v.clone(), w.clone()))));
                    }
                }
                joined.sort_by(|a, b| a.0.cmp(&b.0));
                Some(vec![joined])
            }),
        )
        .with_watermarks(watermarks)
    }

    /// [`DStream::reduce_by_key`] over a sliding window (length and slide multiples of the
    /// batch interval), like Spark's `reduceByKeyAndWindow`. With `inverse` (which undoes
    /// `reduce`: `inverse(reduce(a, b), b) == a`), each slide adds the batches that entered and
    /// takes out those that left instead of combining the whole window again; a key leaves the
    /// result when no batch of the window has it.
    pub fn reduce_by_key_and_window(
        self,
        reduce: impl Fn(V, V) -> V + Send + 'static,
        inverse: Option<Box<dyn Fn(V, V) -> V + Send>>,
        length: std::time::Duration,
        slide: std::time::Duration,
    ) -> DStream<(K, V)>
    where
        K: Serialize + DeserializeOwned,
        V: Clone + Serialize + DeserializeOwned,
    {
        let Some((length, slide)) = self.window_batches(length, slide) else { return self.nothing() };
        let state = ReduceWindow {
            reduce: Box::new(reduce),
            inverse,
            length,
            batches: std::collections::VecDeque::new(),
            running: HashMap::default(),
            added: false,
        };
        let state = self.register(state);
        let fold_state = Arc::clone(&state);
        self.fold_pieces(
            true,
            move |reduced: &mut Option<HashMap<K, V>>, parts| {
                let reduce = &lock_state(&fold_state).reduce;
                reduce_into(reduced.get_or_insert_with(HashMap::default), parts, reduce);
            },
            move |input, reduced| {
                let mut state = lock_state(&state);
                state.push(reduced.unwrap_or_default().into_iter().collect());
                state.added = true;
                ((input.batch_id + 1) % slide == 0).then(|| vec![state.window()])
            },
        )
    }
}

/// A stream computed for two (`tee`): the parent, and the batch piece the side that computed
/// it kept for the other side.
struct Tee<T> {
    parent: Compute<T>,
    kept: Option<(PieceId, usize, Option<Parts<T>>)>,
}

/// A batch and one of its pieces.
type PieceId = (u64, usize);

/// A window's batches (`window`).
struct WindowState<T> {
    length: usize,
    kept: std::collections::VecDeque<Parts<T>>,
    /// Whether the newest batch (`kept`'s last) is not yet taken as a delta.
    added: bool,
}

impl<T> WindowState<T> {
    fn push(&mut self, parts: Parts<T>) {
        self.kept.push_back(parts);
        while self.kept.len() > self.length {
            self.kept.pop_front();
        }
    }
}

impl<T: Serialize + DeserializeOwned + Send> Stateful for WindowState<T> {
    fn kind(&self) -> &'static str {
        "window"
    }

    fn take_delta(&mut self) -> Result<Option<Vec<u8>>, String> {
        newest_delta(&mut self.added, self.kept.back())
    }

    fn snapshot(&mut self) -> Result<Vec<u8>, String> {
        encode(&self.kept)
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.kept = decode(snapshot)?;
        Ok(())
    }

    fn apply_delta(&mut self, delta: &[u8]) -> Result<(), String> {
        self.push(decode(delta)?);
        Ok(())
    }
}

type Reduce<V> = Box<dyn Fn(V, V) -> V + Send>;

/// A keyed window's batches, each reduced by key, oldest first.
type WindowBatches<K, V> = std::collections::VecDeque<Vec<(K, V)>>;

/// A keyed window's running values, and how many of its batches have each key.
type RunningValues<K, V> = Vec<(K, (V, usize))>;

/// A keyed window's batches, reduced, and with an inverse its running values
/// (`reduce_by_key_and_window`).
struct ReduceWindow<K, V> {
    reduce: Reduce<V>,
    inverse: Option<Reduce<V>>,
    length: usize,
    batches: WindowBatches<K, V>,
    /// With an inverse: the window's running values, and how many of its batches have each key.
    running: HashMap<K, (V, usize)>,
    /// Whether the newest batch (`batches`' last) is not yet taken as a delta.
    added: bool,
}

impl<K: Hash + Eq + Ord + Clone, V: Clone> ReduceWindow<K, V> {
    fn push(&mut self, reduced: Vec<(K, V)>) {
        if self.inverse.is_some() {
            for (key, value) in &reduced {
                match self.running.remove(key) {
                    Some((total, n)) => self.running.insert(key.clone(), ((self.reduce)(total, value.clone()), n + 1)),
                    None => self.running.insert(key.clone(), (value.clone(), 1)),
                };
            }
        }
        self.batches.push_back(reduced);
        while self.batches.len() > self.length {
            let Some(left) = self.batches.pop_front() else { break };
            if let Some(inverse) = &self.inverse {
                for (key, value) in left {
                    if let Some((total, n)) = self.running.remove(&key) {
                        if n > 1 {
                            self.running.insert(key, (inverse(total, value), n - 1));
                        }
                    }
                }
            }
        }
    }

    /// The window's values by key, in key order.
    fn window(&self) -> Vec<(K, V)> {
        let window: HashMap<K, V> = match &self.inverse {
            Some(_) => self.running.iter().map(|(k, (v, _))| (k.clone(), v.clone())).collect(),
            None => {
                let mut all: HashMap<K, V> = HashMap::default();
                for batch in &self.batches {
                    for (key, value) in batch {
                        merge(&mut all, key.clone(), value.clone(), &self.reduce);
                    }
                }
                all
            }
        };
        sorted(window)
    }
}

impl<K, V> Stateful for ReduceWindow<K, V>
where
    K: Hash + Eq + Ord + Clone + Serialize + DeserializeOwned + Send,
    V: Clone + Serialize + DeserializeOwned + Send,
{
    fn kind(&self) -> &'static str {
        "reduce_by_key_and_window"
    }

    fn take_delta(&mut self) -> Result<Option<Vec<u8>>, String> {
        newest_delta(&mut self.added, self.batches.back())
    }

    fn snapshot(&mut self) -> Result<Vec<u8>, String> {
        encode(&(&self.batches, self.running.iter().collect::<Vec<_>>()))
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let (batches, running): (WindowBatches<K, V>, RunningValues<K, V>) = decode(snapshot)?;
        self.batches = batches;
        self.running = running.into_iter().collect();
        Ok(())
    }

    fn apply_delta(&mut self, delta: &[u8]) -> Result<(), String> {
        self.push(decode(delta)?);
        Ok(())
    }
}

/// A window's delta: its newest batch, if not taken yet (the window never drops the batch just
/// pushed, as it holds at least one).
fn newest_delta<B: Serialize>(added: &mut bool, newest: Option<&B>) -> Result<Option<Vec<u8>>, String> {
    if !std::mem::take(added) {
        return Ok(None);
    }
    newest.map(encode).transpose()
}

/// The `k` greatest of `items` by `compare`, greatest first; items comparing equal keep the
/// order they came in (so the result is the same in every run).
pub(crate) fn greatest<T>(items: Vec<T>, k: usize, compare: impl Fn(&T, &T) -> Ordering) -> Vec<T> {
    if k == 0 {
        return Vec::new();
    }
    let mut indexed: Vec<(usize, T)> = items.into_iter().enumerate().collect();
    let order = |a: &(usize, T), b: &(usize, T)| compare(&b.1, &a.1).then(a.0.cmp(&b.0));
    if indexed.len() > k {
        indexed.select_nth_unstable_by(k - 1, order);
        indexed.truncate(k);
    }
    indexed.sort_unstable_by(order);
    indexed.into_iter().map(|(_, item)| item).collect()
}

/// `f` on each part, spread over the compute pool when there are enough items to be worth it;
/// the parts stay in order.
fn par_parts<T: Send, U: Send>(parts: Parts<T>, f: &(impl Fn(Vec<T>) -> Vec<U> + Sync)) -> Parts<U> {
    let items: usize = parts.iter().map(Vec::len).sum();
    par_map(parts, items >= PARALLEL_FROM_ITEMS, f)
}

/// `value` put in `into` under `key`, reduced with the value there if any (one lookup).
pub(crate) fn merge<K: Hash + Eq, V>(into: &mut HashMap<K, V>, key: K, value: V, reduce: &dyn Fn(V, V) -> V) {
    match into.entry(key) {
        hashbrown::hash_map::Entry::Occupied(entry) => {
            entry.replace_entry_with(|_, old| Some(reduce(old, value)));
        }
        hashbrown::hash_map::Entry::Vacant(entry) => {
            entry.insert(value);
        }
    }
}

/// `parts`' values reduced into `into` by key.
pub(crate) fn reduce_into<K: Hash + Eq, V>(into: &mut HashMap<K, V>, parts: Parts<(K, V)>, reduce: &dyn Fn(V, V) -> V) {
    for (key, value) in parts.into_iter().flatten() {
        merge(into, key, value, reduce);
    }
}

pub(crate) fn sorted<K: Ord, V>(map: HashMap<K, V>) -> Vec<(K, V)> {
    let mut items: Vec<(K, V)> = map.into_iter().collect();
    items.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    items
}
