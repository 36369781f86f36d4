//! When batches run (Spark's triggers): every fixed processing-time interval, catching up
//! without waiting when a batch overran; once; or available-now (everything present when the
//! query starts, in as many rate-limited batches as it takes, then stop).
//!
//! Processing-time batches are due on a fixed grid, as Spark Streaming's batch times are: batch
//! `n` of a run is due `n` intervals after the first started. A batch that overruns delays the
//! next ones, which then start at once, back to back, until they are on the grid again; an
//! overrun does not shift every later batch.

use std::time::Duration;

/// How batches are triggered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A batch every interval, on a fixed grid from the first; a batch that overruns is
    /// followed at once by the next, until the batches are back on the grid. So is a batch the
    /// memory budget cut short of a backlog when no rate limit applies (the grid moves with it):
    /// a backlog is worked through as fast as the job goes, in batches within the budget.
    ProcessingTime(Duration),
    /// One batch, then stop.
    Once,
    /// Batches until the offsets available at the start are processed, then stop.
    AvailableNow,
}

/// A trigger's progress through a run.
#[derive(Debug, Clone)]
pub struct TriggerState {
    trigger: Trigger,
    /// When the run's first batch started: batch `n` is due `n` intervals later.
    first_start_ms: Option<u64>,
    /// How far batches started early have moved the grid back.
    moved_back_ms: u64,
    batches: u64,
    caught_up: bool,
}

impl TriggerState {
    /// The state before the first batch.
    pub fn new(trigger: Trigger) -> Self {
        Self { trigger, first_start_ms: None, moved_back_ms: 0, batches: 0, caught_up: false }
    }

    /// How long to wait from `now_ms` before the next batch (`Some(0)`: start it now), or `None`
    /// when the run is over.
    pub fn wait_ms(&self, now_ms: u64) -> Option<u64> {
        match self.trigger {
            Trigger::Once if self.batches > 0 => None,
            Trigger::AvailableNow if self.caught_up => None,
            Trigger::Once | Trigger::AvailableNow => Some(0),
            Trigger::ProcessingTime(_) => Some(self.due_ms().map_or(0, |due| due.saturating_sub(now_ms))),
        }
    }

    /// When the next batch is due on the processing-time grid (`None` before the first batch,
    /// and for the other triggers).
    pub fn due_ms(&self) -> Option<u64> {
        let Trigger::ProcessingTime(interval) = self.trigger else { return None };
        let interval = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        Some(
            self.first_start_ms?
                .saturating_add(interval.saturating_mul(self.batches))
                .saturating_sub(self.moved_back_ms),
        )
    }

    /// Makes the next batch due at `now_ms` if it was due later, moving the grid with it (the
    /// batches after it are due an interval apart from it).
    pub fn start_next_now(&mut self, now_ms: u64) {
        if let Some(due) = self.due_ms().filter(|due| *due > now_ms) {
            self.moved_back_ms = self.moved_back_ms.saturating_add(due - now_ms);
        }
    }

    /// A batch starts at `now_ms`.
    pub fn batch_started(&mut self, now_ms: u64) {
        self.first_start_ms.get_or_insert(now_ms);
        self.batches += 1;
    }

    /// A batch finished; `reached_end` says whether it reached the end offsets fixed at the start
    /// (for available-now).
    pub fn batch_finished(&mut self, reached_end: bool) {
        self.caught_up |= reached_end;
    }

    /// Batches started so far.
    pub fn batches(&self) -> u64 {
        self.batches
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};

    #[test]
    fn processing_time_runs_on_the_interval_and_catches_up_when_behind() {
        let clock = ManualClock::new(0);
        let mut state = TriggerState::new(Trigger::ProcessingTime(Duration::from_secs(1)));
        assert_eq!(state.wait_ms(clock.now_ms()), Some(0), "the first batch starts at once");
        state.batch_started(clock.now_ms());
        clock.advance(Duration::from_millis(300)); // the batch took 300 ms
        assert_eq!(state.wait_ms(clock.now_ms()), Some(700));
        clock.advance(Duration::from_millis(700));
        state.batch_started(clock.now_ms());
        clock.advance(Duration::from_millis(2_500)); // this one overran, to 3.5 s
        assert_eq!(state.wait_ms(clock.now_ms()), Some(0), "behind: no waiting");
        assert_eq!(state.due_ms(), Some(2_000));
        state.batch_started(clock.now_ms());
        clock.advance(Duration::from_millis(200)); // 3.7 s: batch 3 was due at 3 s
        assert_eq!(state.wait_ms(clock.now_ms()), Some(0), "still behind");
        state.batch_started(clock.now_ms());
        clock.advance(Duration::from_millis(200)); // 3.9 s: batch 4 is due at 4 s
        assert_eq!(state.wait_ms(clock.now_ms()), Some(100), "back on the grid, not 1 s after the last start");
        assert_eq!(state.batches(), 4);
    }

    #[test]
    fn a_batch_started_early_moves_the_grid() {
        let clock = ManualClock::new(0);
        let mut state = TriggerState::new(Trigger::ProcessingTime(Duration::from_secs(1)));
        state.batch_started(clock.now_ms());
        clock.advance(Duration::from_millis(300));
        state.start_next_now(clock.now_ms());
        assert_eq!(state.wait_ms(clock.now_ms()), Some(0));
        state.batch_started(clock.now_ms());
        clock.advance(Duration::from_millis(200));
        assert_eq!(state.wait_ms(clock.now_ms()), Some(800), "an interval after the early batch");
        clock.advance(Duration::from_millis(2_000)); // behind: starting now changes nothing
        state.start_next_now(clock.now_ms());
        assert_eq!(state.due_ms(), Some(1_300));
    }

    #[test]
    fn once_runs_one_batch() {
        let mut state = TriggerState::new(Trigger::Once);
        assert_eq!(state.wait_ms(5), Some(0));
        state.batch_started(5);
        state.batch_finished(false);
        assert_eq!(state.wait_ms(6), None);
    }

    #[test]
    fn available_now_runs_until_the_start_offsets_are_reached() {
        let mut state = TriggerState::new(Trigger::AvailableNow);
        for _ in 0..3 {
            assert_eq!(state.wait_ms(0), Some(0));
            state.batch_started(0);
            state.batch_finished(false);
        }
        state.batch_started(0);
        state.batch_finished(true);
        assert_eq!(state.wait_ms(0), None);
        assert_eq!(state.batches(), 4);
    }
}
