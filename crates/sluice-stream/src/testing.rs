//! Running a job's streams without a broker, on batches given in advance (Spark's
//! `queueStream`): for unit tests of operators and of a job's logic.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::context::StreamError;
use crate::sink::{BatchInfo, ForEach};
use crate::stream::{lock, BatchInput, DStream, Graph, SharedGraph, SourceRecords};

/// A job run in memory, batch by batch.
#[derive(Debug)]
pub struct LocalJob {
    graph: SharedGraph,
}

/// What a stream gave, batch by batch (batches without output are absent).
pub type Collected<T> = Arc<Mutex<Vec<(BatchInfo, Vec<T>)>>>;

impl LocalJob {
    /// A job whose batches are `batch_interval` apart.
    pub fn new(batch_interval: Duration) -> Self {
        let interval_ms = u64::try_from(batch_interval.as_millis()).unwrap_or(u64::MAX);
        Self { graph: Arc::new(Mutex::new(Graph { interval_ms, ..Graph::default() })) }
    }

    /// A stream whose batch `i` holds `batches[i]` (in one part), and nothing after the last.
    pub fn queue_stream<T: Clone + Send + 'static>(&self, batches: Vec<Vec<T>>) -> DStream<T> {
        DStream::new(
            Arc::clone(&self.graph),
            Box::new(move |input: &BatchInput| {
                let batch = usize::try_from(input.batch_id).ok().and_then(|i| batches.get(i)).cloned();
                Some(vec![batch.unwrap_or_default()])
            }),
        )
    }

    /// Collects what `stream` gives.
    pub fn collect<T: Send + 'static>(&self, stream: DStream<T>) -> Collected<T> {
        let collected: Collected<T> = Arc::default();
        let into = Arc::clone(&collected);
        stream.to_sink(ForEach(move |info: &BatchInfo, items: Vec<T>| {
            into.lock().unwrap_or_else(PoisonError::into_inner).push((*info, items));
            Ok(())
        }));
        collected
    }

    /// Runs batches `0..count` through every output, in order.
    pub fn run(&self, count: u64) -> Result<(), StreamError> {
        let (mut outputs, errors, interval_ms) = {
            let mut graph = lock(&self.graph);
            (std::mem::take(&mut graph.outputs), std::mem::take(&mut graph.errors), graph.interval_ms)
        };
        if !errors.is_empty() {
            return Err(StreamError::Invalid(errors));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| StreamError::Invalid(vec![format!("starting a runtime: {e}")]))?;
        for batch_id in 0..count {
            let input = BatchInput {
                batch_id,
                time_ms: (batch_id + 1).saturating_mul(interval_ms),
                rerun: false,
                records: SourceRecords::default(),
            };
            for output in &mut outputs {
                runtime.block_on(output.run(&input)).map_err(|reason| StreamError::Batch { batch_id, reason })?;
            }
        }
        lock(&self.graph).outputs = outputs;
        Ok(())
    }
}
