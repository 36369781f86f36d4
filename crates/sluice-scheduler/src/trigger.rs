//! When batches run (Spark's triggers): every fixed processing-time interval, catching up
//! without waiting when a batch overran; once; or available-now (everything present when the
//! query starts, in as many rate-limited batches as it takes, then stop).

use std::time::Duration;

/// How batches are triggered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A batch every interval; a batch that overruns is followed at once by the next.
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
    last_start_ms: Option<u64>,
    batches: u64,
    caught_up: bool,
}

impl TriggerState {
    /// The state before the first batch.
    pub fn new(trigger: Trigger) -> Self {
        Self { trigger, last_start_ms: None, batches: 0, caught_up: false }
    }

    /// How long to wait from `now_ms` before the next batch (`Some(0)`: start it now), or `None`
    /// when the run is over.
    pub fn wait_ms(&self, now_ms: u64) -> Option<u64> {
        match self.trigger {
            Trigger::Once if self.batches > 0 => None,
            Trigger::AvailableNow if self.caught_up => None,
            Trigger::Once | Trigger::AvailableNow => Some(0),
            Trigger::ProcessingTime(interval) => {
                let interval = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
                Some(self.last_start_ms.map_or(0, |start| start.saturating_add(interval).saturating_sub(now_ms)))
            }
        }
    }

    /// A batch starts at `now_ms`.
    pub fn batch_started(&mut self, now_ms: u64) {
        self.last_start_ms = Some(now_ms);
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
        clock.advance(Duration::from_millis(2_500)); // this one overran
        assert_eq!(state.wait_ms(clock.now_ms()), Some(0), "behind: no waiting");
        assert_eq!(state.batches(), 2);
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
