//! A batch as the processor sees it: the [`Processor`] trait, the [`Batch`] it is given, taken
//! in [`Piece`]s, and the [`BatchOutput`] it returns. A batch larger than the memory budget is
//! read in pieces ([`Pieces`], cut by [`cut_piece`]), and what they held is summed for the
//! batch's progress record ([`Tally`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::read::{ReadContext, Reading, TaskReader};
use super::SchedulerError;
use crate::fetch::RangeRecords;
use crate::plan::{OffsetRange, TopicPartition};

/// One batch handed to the processor: its id, its planned ranges (one per partition), and its
/// records, in one piece or (when they hold more than
/// [`SchedulerConfig::max_batch_bytes`](super::SchedulerConfig::max_batch_bytes)) in several,
/// taken with [`Batch::next_piece`] until it gives `None`.
#[derive(Debug)]
pub struct Batch {
    /// The batch id (consecutive from 0).
    pub batch_id: u64,
    /// The planned range of every partition, empty ones included.
    pub ranges: Vec<OffsetRange>,
    /// Whether this batch is the re-run of an intent found open in the log.
    pub rerun: bool,
    pub(super) pieces: Pieces,
    /// Scale-out mode: the batch's transaction, begun (see [`Batch::transaction`]).
    pub(super) transaction: Option<Arc<sluice_client::Producer>>,
    /// Scale-out mode: this process's member id in the job's group.
    pub(super) member_id: Option<String>,
    /// See [`Batch::ends_transaction`].
    pub(super) end: super::scale::TransactionEnd,
    /// See [`Batch::begins_transaction`].
    pub(super) begins_transaction: bool,
}

/// Records of a batch, from its read tasks: all of them, or the next bounded piece. Each
/// task's piece covers the consecutive offsets after its previous piece's.
#[derive(Debug)]
pub struct Piece {
    /// The piece's records, one entry per read task of the batch, in the same order in every
    /// piece (a task whose range was done in an earlier piece has an empty one).
    pub tasks: Vec<RangeRecords>,
    /// The piece's place in the batch, from 0.
    pub index: usize,
    /// Whether it is the batch's last piece (a batch of one piece: its first and last).
    pub last: bool,
}

impl Piece {
    /// Records in the piece.
    pub fn record_count(&self) -> usize {
        self.tasks.iter().map(RangeRecords::record_count).sum()
    }
}

/// A batch's pieces: the first, read before the batch was handed over, and the read of the
/// next, which starts as soon as the one before is taken (so at most two are held).
#[derive(Debug)]
pub(super) struct Pieces {
    /// Each read task's range.
    task_ranges: Vec<OffsetRange>,
    first: Option<Vec<RangeRecords>>,
    /// The next piece's read (none after the first piece when that is the last).
    reading: Option<Reading>,
    context: ReadContext,
    given: usize,
    pub(super) tally: Arc<Mutex<Tally>>,
}

/// What a batch's pieces held, for its progress record, summed as they are taken.
#[derive(Debug, Default)]
pub(super) struct Tally {
    pub(super) records: usize,
    pub(super) bytes: usize,
    /// Offsets the record batches read span (more than the ranges when a record batch reaches
    /// past a range's end): `bytes` over these is the log's record bytes per offset.
    pub(super) batch_offsets: i64,
    pub(super) pieces: usize,
    pub(super) high_watermarks: BTreeMap<TopicPartition, i64>,
    pub(super) lost: BTreeMap<TopicPartition, i64>,
    /// The last piece was taken.
    pub(super) done: bool,
    /// Reading a later piece failed (reported as the batch's failure, whatever the processor
    /// made of it).
    pub(super) error: Option<SchedulerError>,
}

impl Tally {
    fn add(&mut self, tasks: &[RangeRecords]) {
        self.pieces += 1;
        for task in tasks {
            self.records += task.record_count();
            self.bytes += task.data_bytes();
            self.batch_offsets +=
                task.batches.iter().map(|b| b.header.last_offset() - b.header.base_offset + 1).sum::<i64>();
            let key = (task.range.topic.clone(), task.range.partition);
            let known = self.high_watermarks.entry(key.clone()).or_insert(-1);
            *known = (*known).max(task.high_watermark);
            *self.lost.entry(key).or_default() += task.lost_offsets;
        }
    }
}

/// The records each reader brought since its last piece, one entry per task of the batch
/// (`task_ranges`; empty for the tasks done before), and the readers whose range is not done.
pub(super) fn cut_piece(
    task_ranges: &[OffsetRange],
    mut readers: Vec<TaskReader>,
) -> (Vec<RangeRecords>, Vec<TaskReader>) {
    let mut tasks: Vec<RangeRecords> = task_ranges
        .iter()
        .map(|range| RangeRecords {
            range: OffsetRange { from: range.until, ..range.clone() },
            batches: Vec::new(),
            high_watermark: -1,
            lost_offsets: 0,
        })
        .collect();
    for (index, reader) in &mut readers {
        if let Some(task) = tasks.get_mut(*index) {
            *task = reader.take_piece();
        }
    }
    readers.retain(|(_, reader)| !reader.is_done());
    (tasks, readers)
}

impl Batch {
    /// Scale-out mode ([`SchedulerConfig::scale`](super::SchedulerConfig::scale)): the
    /// transactional producer whose transaction this batch is. Records sent through it commit
    /// together with the batch's source offsets, or not at all; do not begin, commit or abort
    /// it. `None` outside scale-out mode, and for a batch with no ranges.
    pub fn transaction(&self) -> Option<&Arc<sluice_client::Producer>> {
        self.transaction.as_ref()
    }

    /// Scale-out mode: whether the batch's transaction commits at the batch's end. While the
    /// process catches up, a transaction spans batches
    /// ([`ScaleConfig::commit_interval`](super::ScaleConfig::commit_interval)): a processor
    /// that holds its state's changes until the commit (a changelog's, each key once) sends
    /// them through [`Batch::transaction`] in the batch that ends it. Decided at the first call
    /// (or when the batch is done, if never called), from how long the batch has taken: ask
    /// once the batch's records are taken and processed, right before sending what only a
    /// transaction's last batch sends (asked before the last piece is taken, a run's first
    /// batch ends its transaction). True outside scale-out mode.
    pub fn ends_transaction(&self) -> bool {
        self.end.decide(self.pieces.tally().done)
    }

    /// Scale-out mode: whether the batch's transaction began with it, so that where its ranges
    /// start is what the group has committed (a batch that goes on with the transaction of the
    /// batch before starts where that one ended, not committed yet). True outside scale-out
    /// mode.
    pub fn begins_transaction(&self) -> bool {
        self.begins_transaction
    }

    /// Scale-out mode: this process's member id in the job's group (as ConsumerGroupDescribe
    /// and DescribeGroups list it) when the batch was planned. `None` outside scale-out mode.
    pub fn member_id(&self) -> Option<&str> {
        self.member_id.as_deref()
    }

    /// The batch's next piece of records (the first call gives the first), or `None` once all
    /// were given. A processor takes every piece before it returns (the batch fails
    /// otherwise); with the default budget most batches come in one piece.
    pub async fn next_piece(&mut self) -> Result<Option<Piece>, SchedulerError> {
        let pieces = &mut self.pieces;
        let (tasks, last) = if let Some(tasks) = pieces.first.take() {
            (tasks, pieces.reading.is_none())
        } else if let Some(mut reading) = pieces.reading.take() {
            let read = reading.finish().await;
            let readers = match read {
                Ok(readers) => readers,
                Err(e) => {
                    let reason = e.to_string();
                    pieces.tally().error = Some(e);
                    return Err(SchedulerError::Processing { batch_id: self.batch_id, source: reason.into() });
                }
            };
            let (tasks, rest) = cut_piece(&pieces.task_ranges, readers);
            pieces.tally().add(&tasks);
            let last = rest.is_empty();
            if !last {
                pieces.reading = Some(pieces.context.start(self.batch_id, rest));
            }
            (tasks, last)
        } else {
            return Ok(None);
        };
        if last {
            pieces.tally().done = true;
        } else if pieces.reading.is_none() {
            return Err(SchedulerError::Processing {
                batch_id: self.batch_id,
                source: "the batch's next piece is not being read".into(),
            });
        }
        let index = pieces.given;
        pieces.given += 1;
        Ok(Some(Piece { tasks, index, last }))
    }
}

impl Pieces {
    /// A batch's pieces, from its first piece (read) and the readers whose range is not done,
    /// which start reading the next piece at once.
    pub(super) fn new(
        batch_id: u64,
        task_ranges: Vec<OffsetRange>,
        first: Vec<RangeRecords>,
        rest: Vec<TaskReader>,
        context: ReadContext,
    ) -> Self {
        let first_is_last = rest.is_empty();
        let mut pieces = Self {
            task_ranges,
            first: None,
            reading: None,
            context,
            given: 0,
            tally: Arc::new(Mutex::new(Tally::default())),
        };
        pieces.tally().add(&first);
        pieces.first = Some(first);
        if !first_is_last {
            pieces.reading = Some(pieces.context.start(batch_id, rest));
        }
        pieces
    }

    pub(super) fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What the processor returns for a batch, stored in its commit record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutput {
    /// The change to the keyed state (opaque to the scheduler).
    pub state_delta: Vec<u8>,
    /// Markers the sinks need to recognise the batch when re-run (opaque).
    pub sink_markers: Vec<u8>,
    /// The whole state after this batch, to be written after its commit as a snapshot
    /// (recovery then starts from it instead of replaying every delta before it, and the log
    /// can drop what it replaces).
    pub snapshot: Option<Vec<u8>>,
}

/// The work done on each batch. `process` may run again for the same batch after a crash (with
/// the same ranges and records): sinks must make that harmless.
pub trait Processor: Send {
    /// Processes one batch, taking its records with [`Batch::next_piece`] until it gives `None`
    /// (in one piece, or in bounded pieces when the batch is larger than the memory budget);
    /// an error leaves the batch uncommitted.
    fn process(
        &mut self,
        batch: Batch,
    ) -> impl std::future::Future<Output = Result<BatchOutput, crate::BoxError>> + Send;

    /// Scale-out mode only: the partitions this process works on changed (taken on, given up,
    /// or to be rebuilt after a batch that did not commit). Called at a batch boundary, before
    /// the next batch is planned; that batch reads the gained partitions only after this
    /// returns. An error fails the run. Does nothing unless implemented (a stateless processor
    /// keeps nothing per partition).
    fn partitions_changed(
        &mut self,
        changes: &super::PartitionChanges,
    ) -> impl std::future::Future<Output = Result<(), crate::BoxError>> + Send {
        let _ = changes;
        async { Ok(()) }
    }

    /// Scale-out mode only: batch `batch_id`'s transaction committed (and the local checkpoint
    /// knows it), and with it every batch since the last call (the batches that left the
    /// transaction open: [`Batch::ends_transaction`]). Output held until the commit (files
    /// renamed into place) is published here. A crash before this returns leaves it to the next
    /// run to find out whether the transaction committed. An error fails the run. Does nothing
    /// unless implemented.
    fn committed(&mut self, batch_id: u64) -> impl std::future::Future<Output = Result<(), crate::BoxError>> + Send {
        let _ = batch_id;
        async { Ok(()) }
    }
}
