//! The job's graph, shared by its streams and its outputs: what every stream sees of a batch
//! ([`BatchInput`]) and a sink is told of it ([`BatchInfo`]), a stream's compute step and the
//! gathering of a batch's pieces ([`Compute`], [`Gather`]), and the job's outputs ([`Output`])
//! in the [`Graph`] the streams of one job build.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use sluice_client::Producer;

use crate::record::KafkaRecord;
use crate::state::JobState;
use crate::BoxError;

/// A batch's items, in parts.
pub type Parts<T> = Vec<Vec<T>>;

/// What every stream of a job sees of one batch.
#[derive(Debug)]
pub struct BatchInput {
    /// The batch (ids are consecutive from 0 over the job's whole life, restarts included).
    pub batch_id: u64,
    /// The batch's time: the end of its interval, counted from the job's first batch
    /// (`(batch_id + 1) × interval`, in ms). Deterministic, so a re-run sees the same. In
    /// scale-out mode with state, the end of the interval the wall clock was in when the batch
    /// started, in ms since the Unix epoch: the processes share it (a batch is not re-run
    /// there).
    pub time_ms: u64,
    /// Whether the batch is the re-run of one begun before a crash or failure.
    pub rerun: bool,
    /// The source records, one part per read task.
    pub(crate) records: SourceRecords,
    /// The partition each part of the source came from; `None` when each part stands for a
    /// partition of its own (batches given in a test).
    pub(crate) part_sources: Option<Vec<(Arc<str>, i32)>>,
    /// Scale-out mode: the partitions this process owns in the batch, those without records in
    /// it included: of the source topics, and of the repartition topics.
    pub(crate) owned_sources: Partitions,
    pub(crate) owned_internal: Partitions,
    /// Which piece of the batch this is (from 0): a batch larger than the memory budget comes
    /// in pieces, each with one part per read task of the batch (the same tasks in each).
    pub(crate) piece: usize,
    /// Whether it is the batch's last piece. Element-wise operators work through each piece
    /// as it comes; reductions fold each piece in; operators that need the whole batch gather
    /// the pieces and run on the last.
    pub(crate) last_piece: bool,
    /// The checkpoint's identity (0 in tests without one).
    pub(crate) checkpoint_id: u64,
    /// Scale-out mode: the batch's Kafka transaction (see [`BatchInfo::transaction`]).
    pub(crate) transaction: Option<Arc<Producer>>,
    /// Scale-out mode: the transaction began with an earlier batch (see
    /// [`BatchInfo::continues_transaction`]).
    pub(crate) continues_transaction: bool,
    /// Scale-out mode: the job's group.
    pub(crate) group: Option<Arc<str>>,
}

/// Topic partitions, shared.
pub(crate) type Partitions = Arc<[(Arc<str>, i32)]>;

/// A batch's source records, handed to the source streams of the job: a source topic's parts
/// to every `kafka_stream`, a repartition topic's to its repartitioned stream alone; of each
/// part, copies to all its takers but the last, which takes it (a part with one taker is never
/// copied).
#[derive(Debug, Default)]
pub(crate) struct SourceRecords {
    parts: Mutex<Vec<SourcePart>>,
}

#[derive(Debug)]
struct SourcePart {
    records: Vec<KafkaRecord>,
    /// Whether the part is of one of the job's repartition topics.
    internal: bool,
    /// Takers still to take it.
    takers: usize,
}

impl SourceRecords {
    /// Records of the source topics only, for `takers` source streams.
    #[cfg(test)]
    pub(crate) fn new(parts: Parts<KafkaRecord>, takers: usize) -> Self {
        Self::split(parts, |_| false, takers)
    }

    /// Records whose part `i` is of a repartition topic if `internal(i)` (for its repartitioned
    /// stream), and otherwise of a source topic (for each of `sources` source streams).
    pub(crate) fn split(parts: Parts<KafkaRecord>, internal: impl Fn(usize) -> bool, sources: usize) -> Self {
        let parts = parts
            .into_iter()
            .enumerate()
            .map(|(index, records)| {
                let internal = internal(index);
                SourcePart { records, internal, takers: if internal { 1 } else { sources } }
            })
            .collect();
        Self { parts: Mutex::new(parts) }
    }

    /// The source topics' records (the repartition topics' parts empty).
    pub(crate) fn take_source(&self) -> Parts<KafkaRecord> {
        self.take_parts(|_, part| !part.internal)
    }

    /// The records of the parts `keep` keeps (by their place), the others empty.
    pub(crate) fn take_where(&self, keep: impl Fn(usize) -> bool) -> Parts<KafkaRecord> {
        self.take_parts(|index, _| keep(index))
    }

    /// The records of the parts `keep` keeps, the others empty: of each, a copy, or for its last
    /// taker the records themselves (a taker beyond the count finds them gone).
    fn take_parts(&self, keep: impl Fn(usize, &SourcePart) -> bool) -> Parts<KafkaRecord> {
        let mut parts = self.parts.lock().unwrap_or_else(PoisonError::into_inner);
        parts
            .iter_mut()
            .enumerate()
            .map(|(index, part)| {
                if !keep(index, part) || part.takers == 0 {
                    return Vec::new();
                }
                part.takers -= 1;
                if part.takers == 0 {
                    std::mem::take(&mut part.records)
                } else {
                    part.records.clone()
                }
            })
            .collect()
    }
}

impl BatchInput {
    /// Whether part `index` of the batch is of one of `topics` (a batch given in a test, whose
    /// parts are not named, has none of them).
    pub(crate) fn part_of(&self, index: usize, topics: &[String]) -> bool {
        let named = self.part_sources.as_ref().and_then(|sources| sources.get(index));
        named.is_some_and(|(topic, _)| topics.iter().any(|t| **t == **topic))
    }

    /// A batch's input.
    pub(crate) fn new(
        batch_id: u64,
        interval_ms: u64,
        rerun: bool,
        records: SourceRecords,
        part_sources: Option<Vec<(Arc<str>, i32)>>,
    ) -> Self {
        let time_ms = batch_id.saturating_add(1).saturating_mul(interval_ms);
        Self {
            batch_id,
            time_ms,
            rerun,
            records,
            part_sources,
            owned_sources: Arc::from(Vec::new()),
            owned_internal: Arc::from(Vec::new()),
            piece: 0,
            last_piece: true,
            checkpoint_id: 0,
            transaction: None,
            continues_transaction: false,
            group: None,
        }
    }

    /// The input of a batch of the scale-out job of `group`.
    pub(crate) fn of_group(mut self, group: Option<Arc<str>>) -> Self {
        self.group = group;
        self
    }

    /// The input of a batch of a process owning the partitions `sources` of the source topics
    /// and `internal` of the repartition topics.
    pub(crate) fn owning(mut self, (sources, internal): (Partitions, Partitions)) -> Self {
        self.owned_sources = sources;
        self.owned_internal = internal;
        self
    }

    /// The partitions this process owns in the batch of the topics whose read tasks a stream
    /// aligned as `aligned` has as its parts.
    pub(crate) fn owned(&self, aligned: &crate::stream::Aligned) -> Vec<(Arc<str>, i32)> {
        match aligned {
            crate::stream::Aligned::No => Vec::new(),
            crate::stream::Aligned::Source => self.owned_sources.to_vec(),
            crate::stream::Aligned::Repartition(topic) => {
                self.owned_internal.iter().filter(|(owned, _)| owned == topic).cloned().collect()
            }
        }
    }

    /// The input with the batch time `time_ms`, if given (scale-out mode).
    pub(crate) fn at_time(mut self, time_ms: Option<u64>) -> Self {
        if let Some(time_ms) = time_ms {
            self.time_ms = time_ms;
        }
        self
    }

    /// The input of a batch written in the scale-out transaction `transaction`.
    pub(crate) fn in_transaction(mut self, transaction: Option<Arc<Producer>>, continues: bool) -> Self {
        self.transaction = transaction;
        self.continues_transaction = continues;
        self
    }

    /// The input of a batch of the checkpoint `id`.
    pub(crate) fn of_checkpoint(mut self, id: u64) -> Self {
        self.checkpoint_id = id;
        self
    }

    /// The input as piece `index` of its batch, the last or not.
    pub(crate) fn in_piece(mut self, index: usize, last: bool) -> Self {
        self.piece = index;
        self.last_piece = last;
        self
    }

    pub(crate) fn info(&self) -> BatchInfo {
        let mut info = BatchInfo::new(self.batch_id, self.time_ms, self.rerun)
            .with_piece(self.piece, self.last_piece, 0)
            .with_checkpoint_id(self.checkpoint_id);
        info.transaction.clone_from(&self.transaction);
        info.continues_transaction = self.continues_transaction;
        info.group.clone_from(&self.group);
        info
    }
}

pub(crate) type Compute<T> = Box<dyn FnMut(&BatchInput) -> Option<Parts<T>> + Send>;

/// A batch's parts gathered over its pieces, for an operator that needs the whole batch: the
/// same parts, in the same order, as had the batch come in one piece.
pub(crate) struct Gather<T> {
    parts: Option<Parts<T>>,
}

impl<T> Default for Gather<T> {
    fn default() -> Self {
        Self { parts: None }
    }
}

impl<T> Gather<T> {
    /// Adds a piece's parts (`None`: the piece had no output upstream). Gives `None` until
    /// the last piece, then the batch's parts (`None` if no piece had output).
    pub(crate) fn add(&mut self, input: &BatchInput, parts: Option<Parts<T>>) -> Option<Option<Parts<T>>> {
        if input.piece == 0 {
            // A batch begins (a batch that failed part way left its pieces here).
            self.parts = None;
        }
        match (&mut self.parts, parts) {
            (_, None) => {}
            (None, Some(parts)) => self.parts = Some(parts),
            (Some(all), Some(parts)) if all.len() == parts.len() => {
                for (into, part) in all.iter_mut().zip(parts) {
                    into.extend(part);
                }
            }
            (Some(all), Some(parts)) => all.extend(parts),
        }
        input.last_piece.then(|| self.parts.take())
    }
}

/// The batch a sink is writing, and which piece of it for a sink that takes batches in pieces
/// ([`Sink::takes_pieces`](crate::Sink::takes_pieces)).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BatchInfo {
    /// The batch id (consecutive over the job's life).
    pub batch_id: u64,
    /// The batch's time (end of its interval from the job's first batch, in ms; in scale-out
    /// mode with state, on the wall clock: see [`BatchInput::time_ms`]).
    pub time_ms: u64,
    /// Whether this is a re-run of a batch begun before a crash or failure: a sink that is not
    /// idempotent may find part of this batch's output already written.
    pub rerun: bool,
    /// Which piece of the batch this is, from 0 (always 0 for a sink given batches whole).
    pub piece: usize,
    /// Whether it is the batch's last piece (always true for a sink given batches whole).
    pub last_piece: bool,
    /// Items of this batch given to the sink in its earlier pieces.
    pub items_before: u64,
    /// The identity of the checkpoint the batch belongs to (random, made with the checkpoint;
    /// 0 when there is none, as in tests): batch ids start again at 0 on a new checkpoint, so a
    /// sink that remembers which batches it wrote keys them by this too.
    pub checkpoint_id: u64,
    /// Scale-out mode (`SchedulerConfig::scale`): the Kafka transaction the batch commits in,
    /// with its source offsets. A sink writing to Kafka sends its records through it (and does
    /// not begin, commit or abort it); `None` otherwise.
    pub transaction: Option<Arc<Producer>>,
    /// Scale-out mode: the transaction began with an earlier batch, which left it open for
    /// this one (a transaction spans batches while the process catches up): output held until
    /// the commit ([`Sink::committed`](crate::Sink::committed)) waits for the batch that ends it.
    pub continues_transaction: bool,
    /// Scale-out mode: the job's group (its processes' internal topics are named after it).
    pub group: Option<Arc<str>>,
    /// Scale-out mode: which task each of the items given belongs to, as runs in their order:
    /// (task, items), the runs together covering every item. A task is a partition number:
    /// of the source topics (the same partition of each source shares a task, as
    /// co-partitioned sources do), or of the repartition topic, for a stream after a
    /// repartition. `None` where the items' tasks are not known: outside
    /// scale-out mode, and after an operator that gathers or combines the tasks' items (`count`,
    /// `reduce_by_key`, `union`, processing-time windows); the items of element-wise operators
    /// on the source and of the operators that keep state per task (`update_state_by_key`,
    /// `map_with_state`, event-time windows, `top_k_per_window`) have theirs.
    pub task_runs: Option<Arc<[(i32, usize)]>>,
}

impl PartialEq for BatchInfo {
    /// Batches are equal when everything but the transaction handle is.
    fn eq(&self, other: &Self) -> bool {
        let fields = |b: &Self| {
            let position = (b.piece, b.last_piece, b.items_before);
            let scale = (b.continues_transaction, b.group.clone(), b.task_runs.clone());
            (b.batch_id, b.time_ms, b.rerun, position, b.checkpoint_id, scale)
        };
        fields(self) == fields(other)
    }
}

impl Eq for BatchInfo {}

impl BatchInfo {
    /// A batch given whole.
    pub fn new(batch_id: u64, time_ms: u64, rerun: bool) -> Self {
        Self {
            batch_id,
            time_ms,
            rerun,
            piece: 0,
            last_piece: true,
            items_before: 0,
            checkpoint_id: 0,
            transaction: None,
            continues_transaction: false,
            group: None,
            task_runs: None,
        }
    }

    /// The same batch, of the checkpoint `id`.
    pub fn with_checkpoint_id(self, id: u64) -> Self {
        Self { checkpoint_id: id, ..self }
    }

    /// The same batch with its items' task runs (see [`BatchInfo::task_runs`]).
    pub fn with_task_runs(self, runs: Option<Vec<(i32, usize)>>) -> Self {
        Self { task_runs: runs.map(Arc::from), ..self }
    }

    /// The same batch's piece `piece`, `items_before` items after its start.
    pub fn with_piece(self, piece: usize, last_piece: bool, items_before: u64) -> Self {
        Self { piece, last_piece, items_before, ..self }
    }
}

/// An output of the job: a stream's computation and where its items go.
pub(crate) trait Output: Send {
    /// Computes the output's items for one run of a batch's records and keeps them for
    /// [`Output::write`] (CPU work: called off the async workers).
    fn compute(&mut self, input: &BatchInput);
    /// Writes what `compute` kept, if anything.
    fn write(&mut self) -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + '_>>;
    /// Scale-out mode: the batch's transaction ends with it (called after its last run, when
    /// it does): makes what the output kept for the end, for [`Output::write`]; whether there is
    /// anything to write (default: nothing kept).
    fn end_transaction(&mut self) -> bool {
        false
    }
    /// Scale-out mode: the batch last written committed.
    fn committed(&mut self) -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + '_>> {
        Box::pin(async { Ok(()) })
    }
}

/// What the streams of one job share: the batch interval, the outputs, and configuration
/// errors found while the job was built (reported when it runs).
#[derive(Default)]
pub(crate) struct Graph {
    pub(crate) interval_ms: u64,
    pub(crate) outputs: Vec<Box<dyn Output>>,
    pub(crate) errors: Vec<String>,
    /// Source streams made (each takes the batch's records once per batch).
    pub(crate) sources: usize,
    /// The stateful operators, in the order they were made.
    pub(crate) state: JobState,
    /// Whether the job runs in scale-out mode (its state is kept per source partition).
    pub(crate) scale: bool,
    /// Scale-out mode: the job's group.
    pub(crate) group: Option<String>,
    /// Scale-out mode: the job's repartition topics, which the scheduler reads with the source
    /// and only their repartitioned streams see.
    pub(crate) internal_topics: Vec<String>,
    /// What went wrong in a run of a batch that a stream cannot give as an item (a record of a
    /// repartition topic that does not decode): the run fails the batch with it.
    pub(crate) failures: Arc<Mutex<Vec<String>>>,
    /// Scale-out mode: the job's task count and partition changes, for watermark markers.
    pub(crate) task_count: crate::markers::TaskCount,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("interval_ms", &self.interval_ms)
            .field("outputs", &self.outputs.len())
            .field("errors", &self.errors)
            .field("state", &self.state)
            .field("group", &self.group)
            .field("internal_topics", &self.internal_topics)
            .finish()
    }
}

pub(crate) type SharedGraph = Arc<Mutex<Graph>>;

pub(crate) fn lock(graph: &SharedGraph) -> std::sync::MutexGuard<'_, Graph> {
    graph.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_partitions_owned_are_those_of_the_topics_a_stream_reads() {
        let of = |topic: &str, partitions: &[i32]| -> Partitions {
            partitions.iter().map(|p| (Arc::from(topic), *p)).collect()
        };
        let mut internal = of("job-a-repartition", &[0, 2]).to_vec();
        internal.extend(of("job-b-repartition", &[1]).iter().cloned());
        let input = BatchInput::new(0, 1_000, false, SourceRecords::default(), None)
            .owning((of("clicks", &[0, 1]), internal.into()));
        let owned = |aligned: &crate::stream::Aligned| input.owned(aligned);
        assert_eq!(owned(&crate::stream::Aligned::Source), of("clicks", &[0, 1]).to_vec());
        assert_eq!(
            owned(&crate::stream::Aligned::Repartition(Arc::from("job-a-repartition"))),
            of("job-a-repartition", &[0, 2]).to_vec()
        );
        assert!(owned(&crate::stream::Aligned::No).is_empty());
    }

    fn record(offset: i64) -> KafkaRecord {
        KafkaRecord {
            topic: Arc::from("t"),
            partition: 0,
            offset,
            timestamp: 0,
            key: None,
            value: None,
            headers: Vec::new(),
        }
    }

    #[test]
    fn every_source_gets_the_batch_and_the_last_takes_it_without_a_copy() {
        let parts = vec![vec![record(0), record(1)], vec![record(7)]];
        let records = SourceRecords::new(parts.clone(), 2);
        assert_eq!(records.take_source(), parts, "the first of two gets a copy");
        assert_eq!(records.take_source(), parts, "the last gets the records");
        assert!(records.parts.lock().unwrap().iter().all(|part| part.records.is_empty()), "taken, not copied");
        assert_eq!(records.take_source(), vec![Vec::new(), Vec::new()], "a taker beyond the count finds none left");
        let one = SourceRecords::new(parts.clone(), 1);
        assert_eq!(one.take_source(), parts);
    }

    #[test]
    fn a_repartition_topics_parts_go_to_their_stream_alone_and_in_place() {
        let parts = vec![vec![record(0)], vec![record(1)], vec![record(2)]];
        let sources = vec![(Arc::from("clicks"), 0), (Arc::from("job-x-repartition"), 0), (Arc::from("clicks"), 1)];
        let internal = ["job-x-repartition".to_owned()];
        let records = SourceRecords::split(parts, |part| part == 1, 2);
        let input = BatchInput::new(0, 100, false, records, Some(sources));
        assert!(input.part_of(1, &internal) && !input.part_of(0, &internal) && !input.part_of(3, &internal));
        let first = input.records.take_source();
        assert_eq!(first, vec![vec![record(0)], vec![], vec![record(2)]], "a copy of the source's parts");
        let repartitioned = input.records.take_where(|part| input.part_of(part, &internal));
        assert_eq!(repartitioned, vec![vec![], vec![record(1)], vec![]]);
        let second = input.records.take_source();
        assert_eq!(second, first, "the source's parts, to the last of two source streams");
        let parts = input.records.parts.lock().unwrap();
        assert!(parts.iter().all(|part| part.records.is_empty() && part.takers == 0), "none copied for the last");
        drop(parts);
        let unnamed = BatchInput::new(0, 100, false, SourceRecords::new(vec![vec![record(0)]], 1), None);
        assert!(!unnamed.part_of(0, &internal), "a test's batch has no internal topics");
    }
}
