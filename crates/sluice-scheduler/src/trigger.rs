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
    /// followed at once by the next, until the batches are back on the grid. A batch the memory
    /// budget cut short of its plan is followed sooner (the grid moves with it): at once when no
    /// rate limit applies, so that a backlog is worked through as fast as the job goes; under a
    /// rate limit, after the share of the interval it read of what the limit allowed, so that
    /// the limit is reached but not passed.
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
    /// How far batches cut short have moved the grid back.
    moved_back_ms: u64,
    /// When the batch under way started.
    last_start_ms: u64,
    batches: u64,
    caught_up: bool,
}

impl TriggerState {
    /// The state before the first batch.
    pub fn new(trigger: Trigger) -> Self {
        Self { trigger, first_start_ms: None, moved_back_ms: 0, last_start_ms: 0, batches: 0, caught_up: false }
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

    /// The batch under way read `share` (0 to 1) of what its plan allowed before the memory
    /// budget cut it short: the next is due that share of an interval after it started (if that
    /// is sooner than the grid says), moving the grid with it (the batches after it are due an
    /// interval apart from it).
    pub fn cut_short(&mut self, share: f64) {
        let Trigger::ProcessingTime(interval) = self.trigger else { return };
        let Some(due) = self.due_ms() else { return };
        let interval = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        let sooner = self.last_start_ms.saturating_add((share.clamp(0.0, 1.0) * interval as f64) as u64);
        self.moved_back_ms = self.moved_back_ms.saturating_add(due.saturating_sub(sooner));
    }

    /// A batch starts at `now_ms`.
    pub fn batch_started(&mut self, now_ms: u64) {
        self.first_start_ms.get_or_insert(now_ms);
        self.last_start_ms = now_ms;
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
    fn a_batch_cut_short_moves_the_grid_by_the_share_it_did_not_read() {
        let clock = ManualClock::new(0);
        let mut state = TriggerState::new(Trigger::ProcessingTime(Duration::from_secs(1)));
        state.batch_started(clock.now_ms());
        clock.advance(Duration::from_millis(300));
        state.cut_short(0.0); // no rate limit: at once
        assert_eq!(state.wait_ms(clock.now_ms()), Some(0));
        state.batch_started(clock.now_ms());
        clock.advance(Duration::from_millis(200));
        assert_eq!(state.due_ms(), Some(1_000), "an interval after it was due (it started late)");
        state.cut_short(0.25); // a quarter of what the rate limit allowed
        assert_eq!(state.due_ms(), Some(550));
        assert_eq!(state.wait_ms(clock.now_ms()), Some(50));
        clock.advance(Duration::from_millis(50));
        state.batch_started(clock.now_ms());
        clock.advance(Duration::from_millis(900)); // 1,450 ms: this one overran
        state.cut_short(0.5);
        assert_eq!(state.wait_ms(clock.now_ms()), Some(0), "due at 1,050: at once");
        state.batch_started(clock.now_ms());
        state.cut_short(1.0); // read all it was allowed: the grid stays
        assert_eq!(state.due_ms(), Some(2_050));
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
