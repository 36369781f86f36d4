//! Background snapshots: the state snapshot a batch's processor gives is written and synced on
//! the blocking pool while the next batch runs, once that batch's intent is durable, and awaited
//! before that batch commits (a snapshot must be of the last committed batch) and at the end of
//! a run. Until it is durable the commits' deltas hold the state.

use std::sync::Arc;

use super::{Scheduler, SchedulerError};
use crate::clock::Clock;

impl<C: Clock> Scheduler<C> {
    /// Starts writing the last committed batch's snapshot, if it has one not yet written.
    pub(super) fn start_snapshot_write(&mut self) {
        if let Some(snapshot) = self.snapshot_to_write.take() {
            let log = Arc::clone(&self.log);
            self.snapshot_writing = Some(tokio::task::spawn_blocking(move || {
                log.append_snapshot(&snapshot)?;
                log.commit()
            }));
        }
    }

    /// Waits for the snapshot being written, if any.
    pub(super) async fn snapshot_written(&mut self) -> Result<(), SchedulerError> {
        // Taken only once done: a run dropped while it waits leaves the write to be awaited
        // by the next one, never running beside a later commit.
        let Some(writing) = self.snapshot_writing.as_mut() else { return Ok(()) };
        let written = writing.await;
        self.snapshot_writing = None;
        let batch_id = self.next_batch_id;
        written.map_err(|e| SchedulerError::Processing {
            batch_id,
            source: format!("writing the state snapshot stopped: {e}").into(),
        })??;
        Ok(())
    }

    /// Writes the last committed batch's snapshot, if not yet written, and waits for it.
    pub(super) async fn write_snapshot_now(&mut self) -> Result<(), SchedulerError> {
        self.snapshot_written().await?;
        self.start_snapshot_write();
        self.snapshot_written().await
    }
}
