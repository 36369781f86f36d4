//! Running a job's streams without a broker, on batches given in advance (Spark's
//! `queueStream`): for unit tests of operators and of a job's logic.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::context::StreamError;
use crate::graph::{lock, BatchInfo, BatchInput, Graph, Parts, SharedGraph, SourceRecords};
use crate::sink::ForEach;
use sluice_scheduler::RecoveredState;

use crate::stream::{Aligned, DStream};

/// A job run in memory, batch by batch. Its state is saved as a job under the scheduler saves
/// it (each batch's changes, and a snapshot every few batches), so a test can stop it after
/// any batch and resume another job of the same streams from there, as after a crash.
#[derive(Debug)]
pub struct LocalJob {
    graph: SharedGraph,
    interval_ms: u64,
    snapshot_every: u64,
    next_batch: Mutex<u64>,
    /// `(batch_id, delta)` of every batch run, and `(batch_id, snapshot)` of every snapshot.
    saved: Mutex<(Saved, Saved)>,
}

/// `(batch_id, bytes)` saved per batch.
type Saved = Vec<(u64, Vec<u8>)>;

/// What a stream gave, batch by batch (batches without output are absent).
pub type Collected<T> = Arc<Mutex<Vec<(BatchInfo, Vec<T>)>>>;

impl LocalJob {
    /// A job whose batches are `batch_interval` apart.
    pub fn new(batch_interval: Duration) -> Self {
        let interval_ms = u64::try_from(batch_interval.as_millis()).unwrap_or(u64::MAX);
        Self {
            graph: Arc::new(Mutex::new(Graph { interval_ms, ..Graph::default() })),
            interval_ms,
            snapshot_every: 3,
            next_batch: Mutex::new(0),
            saved: Mutex::default(),
        }
    }

    /// Takes a snapshot of the state after every `every` batches (3 unless set).
    pub fn snapshot_every(mut self, every: u64) -> Self {
        self.snapshot_every = every.max(1);
        self
    }

    /// What a checkpoint log would hold after batch `batch_id`: the latest snapshot up to it
    /// and the changes of the batches after that snapshot.
    pub fn checkpoint_after(&self, batch_id: u64) -> RecoveredState {
        let saved = self.saved.lock().unwrap_or_else(PoisonError::into_inner);
        let snapshot = saved.1.iter().rev().find(|(id, _)| *id <= batch_id).cloned();
        let from = snapshot.as_ref().map_or(0, |(id, _)| id + 1);
        let deltas = saved.0.iter().filter(|(id, _)| (from..=batch_id).contains(id)).cloned().collect();
        RecoveredState { snapshot, deltas }
    }

    /// Restores the state `checkpoint` holds (from [`LocalJob::checkpoint_after`] of a job with
    /// the same streams); the next batch run is the one after the checkpoint's last.
    pub fn resume(&self, checkpoint: &RecoveredState) -> Result<(), StreamError> {
        let state = std::mem::take(&mut lock(&self.graph).state);
        let restored = state.restore(checkpoint.snapshot.as_ref(), &checkpoint.deltas).map_err(StreamError::State);
        lock(&self.graph).state = state;
        restored?;
        let last = checkpoint.deltas.last().map(|(id, _)| *id).or(checkpoint.snapshot.as_ref().map(|(id, _)| *id));
        *self.next_batch.lock().unwrap_or_else(PoisonError::into_inner) = last.map_or(0, |id| id + 1);
        Ok(())
    }

    /// A stream whose batch `i` holds `batches[i]` (in one part), and nothing after the last.
    pub fn queue_stream<T: Clone + Send + 'static>(&self, batches: Vec<Vec<T>>) -> DStream<T> {
        self.queue_stream_parts(batches.into_iter().map(|batch| vec![batch]).collect())
    }

    /// A stream whose batch `i` holds the parts `batches[i]` (as if read from one partition
    /// each: part `p` counts as partition `p` for watermarks), and after the last as many
    /// parts as the last had, empty.
    pub fn queue_stream_parts<T: Clone + Send + 'static>(&self, batches: Vec<Parts<T>>) -> DStream<T> {
        let parts = batches.last().map_or(1, Vec::len);
        DStream::new(
            Arc::clone(&self.graph),
            Box::new(move |input: &BatchInput| {
                let batch = usize::try_from(input.batch_id).ok().and_then(|i| batches.get(i)).cloned();
                Some(batch.unwrap_or_else(|| (0..parts).map(|_| Vec::new()).collect()))
            }),
        )
        .aligned_as(Aligned::Source)
    }

    /// Collects what `stream` gives.
    pub fn collect<T: Send + 'static>(&self, stream: DStream<T>) -> Collected<T> {
        let collected: Collected<T> = Arc::default();
        let into = Arc::clone(&collected);
        stream.to_sink(ForEach(move |info: &BatchInfo, items: Vec<T>| {
            into.lock().unwrap_or_else(PoisonError::into_inner).push((info.clone(), items));
            Ok(())
        }));
        collected
    }

    /// Runs the next `count` batches (from batch 0, or from where [`LocalJob::resume`] left
    /// it) through every output, one after the other in the order they were made, saving the
    /// state as it goes.
    pub fn run(&self, count: u64) -> Result<(), StreamError> {
        let (mut outputs, errors, state) = {
            let mut graph = lock(&self.graph);
            let graph = &mut *graph;
            (std::mem::take(&mut graph.outputs), std::mem::take(&mut graph.errors), std::mem::take(&mut graph.state))
        };
        let result = self.run_batches(&mut outputs, &errors, &state, count);
        let mut graph = lock(&self.graph);
        graph.outputs = outputs;
        graph.errors = errors;
        graph.state = state;
        result
    }

    fn run_batches(
        &self,
        outputs: &mut [Box<dyn crate::graph::Output>],
        errors: &[String],
        state: &crate::state::JobState,
        count: u64,
    ) -> Result<(), StreamError> {
        if !errors.is_empty() {
            return Err(StreamError::Invalid(errors.to_vec()));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| StreamError::Invalid(vec![format!("starting a runtime: {e}")]))?;
        let mut next = self.next_batch.lock().unwrap_or_else(PoisonError::into_inner);
        for _ in 0..count {
            let batch_id = *next;
            let input = BatchInput::new(batch_id, self.interval_ms, false, SourceRecords::default(), None);
            for output in outputs.iter_mut() {
                output.compute(&input);
                runtime.block_on(output.write()).map_err(|source| StreamError::Batch { batch_id, source })?;
            }
            let (delta, snapshot) = state
                .end_batch(batch_id, self.snapshot_every)
                .map_err(|reason| StreamError::Batch { batch_id, source: reason.into() })?;
            let mut saved = self.saved.lock().unwrap_or_else(PoisonError::into_inner);
            saved.0.push((batch_id, delta));
            saved.1.extend(snapshot.map(|snapshot| (batch_id, snapshot)));
            *next = batch_id + 1;
        }
        Ok(())
    }
}

/// Fuzzing (`fuzz/fuzz_targets/task_copies.rs`): reads `data` as a scale-out job's copies of its
/// tasks in the local checkpoint (after the format's magic), as a restart does. Never panics on
/// any bytes, and what reads writes back the same bytes (it panics if not: that is the finding).
#[doc(hidden)]
pub fn fuzz_task_copies(data: &[u8]) {
    crate::local_copy::fuzz(data);
}
