//! The checkpoint log's intents and commits, and the checkpoint's identity. A batch is opened by
//! its intent and closed by its commit, each appended and synced on the blocking pool
//! ([`LogWrite`]); what it makes true ([`Durable`]) takes effect in the scheduler once it is
//! durable. The checkpoint's identity is kept in a file beside the log ([`CHECKPOINT_ID_FILE`]).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sluice_checkpoint::{BatchCommit, BatchIntent, Log, Snapshot};

use super::{BatchOutput, Scheduler, SchedulerError};
use crate::clock::Clock;
use crate::plan::OffsetRange;

/// A record being appended to the checkpoint log and synced, on the blocking pool.
#[derive(Debug)]
pub(super) struct LogWrite {
    durable: Durable,
    /// How long the sync took.
    writing: tokio::task::JoinHandle<Result<Duration, sluice_checkpoint::Error>>,
}

/// What a log write makes true once it is durable.
#[derive(Debug)]
enum Durable {
    /// The batch is open: until its commit is durable, a later run re-runs it.
    Intent(BatchIntent),
    /// The batch is done: its partitions go on from its ranges' ends.
    Commit { batch_id: u64, ranges: Vec<OffsetRange>, snapshot: Option<Vec<u8>> },
}

impl Durable {
    fn batch_id(&self) -> u64 {
        match self {
            Self::Intent(intent) => intent.batch_id,
            Self::Commit { batch_id, .. } => *batch_id,
        }
    }
}

fn to_log_range(range: &OffsetRange) -> sluice_checkpoint::OffsetRange {
    sluice_checkpoint::OffsetRange {
        topic: range.topic.clone(),
        partition: range.partition,
        start_offset: range.from,
        end_offset: range.until,
    }
}

pub(super) fn from_log_range(range: &sluice_checkpoint::OffsetRange) -> OffsetRange {
    OffsetRange {
        topic: range.topic.clone(),
        partition: range.partition,
        from: range.start_offset,
        until: range.end_offset,
    }
}

/// A checkpoint sync that takes this long is reported.
const SLOW_SYNC: Duration = Duration::from_secs(1);

impl<C: Clock> Scheduler<C> {
    /// Opens batch `batch_id` with `ranges`: writes its intent and makes it durable, or for a
    /// re-run, whose intent the log holds already, holds that intent open again.
    pub(super) async fn write_intent(
        &mut self,
        batch_id: u64,
        ranges: &[OffsetRange],
        rerun: bool,
    ) -> Result<(), SchedulerError> {
        let intent = BatchIntent { batch_id, ranges: ranges.iter().map(to_log_range).collect(), metadata: Vec::new() };
        if rerun {
            self.pending = Some(intent);
            Ok(())
        } else {
            let durable = Durable::Intent(intent.clone());
            self.write_log(durable, move |log| log.append_intent(&intent)).await
        }
    }

    /// Commits batch `batch_id` with what the processor returned: writes its commit and makes
    /// it durable.
    pub(super) async fn write_commit(
        &mut self,
        batch_id: u64,
        ranges: &[OffsetRange],
        output: BatchOutput,
    ) -> Result<(), SchedulerError> {
        let commit = BatchCommit { batch_id, state_delta: output.state_delta, sink_markers: output.sink_markers };
        // Once durable, the batch is done: what it changes in the scheduler changes then,
        // before any other await, so that a run dropped later neither repeats nor forgets it.
        let durable = Durable::Commit { batch_id, ranges: ranges.to_vec(), snapshot: output.snapshot };
        self.write_log(durable, move |log| log.append_commit(&commit)).await
    }

    /// Appends a batch's intent or commit to the log and syncs it, on the blocking pool (a sync
    /// takes milliseconds, seconds on a slow disk, and must not hold an async worker); a sync
    /// slower than [`SLOW_SYNC`] is reported. Once durable, the batch is open or committed.
    async fn write_log(
        &mut self,
        durable: Durable,
        append: impl FnOnce(&Log) -> Result<u64, sluice_checkpoint::Error> + Send + 'static,
    ) -> Result<(), SchedulerError> {
        self.log_written().await?;
        let log = Arc::clone(&self.log);
        let writing = tokio::task::spawn_blocking(move || {
            append(&log)?;
            let syncing = std::time::Instant::now();
            log.commit()?;
            Ok(syncing.elapsed())
        });
        self.log_writing = Some(LogWrite { durable, writing });
        self.log_written().await
    }

    /// Waits for the log write under way, if any, and makes its effect. Cancel safe: a run
    /// dropped while it waits leaves the write here, and the next run waits for it (and takes
    /// its effect) before anything else, so that a batch durable in the log is never planned
    /// again nor forgotten.
    pub(super) async fn log_written(&mut self) -> Result<(), SchedulerError> {
        let Some(write) = self.log_writing.as_mut() else { return Ok(()) };
        let written = (&mut write.writing).await;
        let Some(LogWrite { durable, .. }) = self.log_writing.take() else { return Ok(()) };
        let batch_id = durable.batch_id();
        let record = if matches!(durable, Durable::Intent(_)) { "intent" } else { "commit" };
        let took = written.map_err(|e| SchedulerError::Processing {
            batch_id,
            source: format!("writing the batch's {record} to the checkpoint log stopped: {e}").into(),
        })??;
        if took >= SLOW_SYNC {
            tracing::warn!(batch_id, record, ?took, "slow checkpoint sync");
        }
        match durable {
            // Until the commit is durable this batch is open: if anything after fails, a later
            // run (in this process or after a restart) re-runs it with the same ranges.
            Durable::Intent(intent) => self.pending = Some(intent),
            Durable::Commit { batch_id, ranges, snapshot } => {
                self.pending = None;
                for range in &ranges {
                    self.positions.insert((range.topic.clone(), range.partition), range.until);
                }
                self.next_batch_id = batch_id + 1;
                // Written once the next batch's intent is durable (or at the end of the run):
                // the commit's delta holds this batch's changes until then.
                self.snapshot_to_write = snapshot.map(|state| Snapshot { batch_id, state });
            }
        }
        Ok(())
    }
}

/// The file beside the checkpoint log's segments that holds the checkpoint's identity.
pub const CHECKPOINT_ID_FILE: &str = "checkpoint-id";

/// The checkpoint's identity: a random number made when its log is new (and for a log from
/// before identities, when first opened), kept in [`CHECKPOINT_ID_FILE`] (16 hex digits).
/// Outputs that remember which batches they hold (a Kafka sink's markers) key them by it, so
/// that a new checkpoint, whose batch ids start again at 0, never takes an old batch's output
/// for its own.
pub(super) fn checkpoint_id(dir: &Path, fresh: bool) -> Result<u64, SchedulerError> {
    let path = dir.join(CHECKPOINT_ID_FILE);
    let failed = |reason: String| SchedulerError::CheckpointId { path: path.display().to_string(), reason };
    if !fresh {
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                return u64::from_str_radix(text.trim(), 16)
                    .map_err(|_| failed(format!("it holds {text:?}, not 16 hexadecimal digits")));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(failed(format!("reading it: {e}"))),
        }
    }
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes).map_err(|e| failed(format!("no randomness to make one: {e}")))?;
    let id = u64::from_le_bytes(bytes);
    // Whole or not at all: a temporary file, synced, renamed over the name, the directory synced.
    let temporary = dir.join(format!("{CHECKPOINT_ID_FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temporary)?;
        std::io::Write::write_all(&mut file, format!("{id:016x}\n").as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, &path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| failed(format!("writing it: {e}")))?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_keeps_its_id_and_a_new_one_gets_another() {
        let dir = tempfile::tempdir().unwrap();
        let first = checkpoint_id(dir.path(), true).unwrap();
        assert_eq!(checkpoint_id(dir.path(), false).unwrap(), first, "the same checkpoint, reopened");
        let stored = std::fs::read_to_string(dir.path().join(CHECKPOINT_ID_FILE)).unwrap();
        assert_eq!(stored, format!("{first:016x}\n"));
        // A log with nothing begun is a new checkpoint, whatever a leftover file says.
        assert_ne!(checkpoint_id(dir.path(), true).unwrap(), first);
        // A log from before checkpoint ids gets one when first opened, and keeps it.
        std::fs::remove_file(dir.path().join(CHECKPOINT_ID_FILE)).unwrap();
        let upgraded = checkpoint_id(dir.path(), false).unwrap();
        assert_eq!(checkpoint_id(dir.path(), false).unwrap(), upgraded);
    }

    #[test]
    fn a_damaged_checkpoint_id_is_an_error_that_says_what_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CHECKPOINT_ID_FILE), "not hex\n").unwrap();
        let error = checkpoint_id(dir.path(), false).unwrap_err().to_string();
        assert!(error.contains("\"not hex\\n\", not 16 hexadecimal digits"), "{error}");
    }
}
