//! Prefetch: the next batch planned and read while the current one is processed, when its
//! records are expected to fit in `prefetch_max_bytes`.

use super::planning::Plan;
use super::read::Reading;
use super::Scheduler;
use crate::clock::Clock;
use crate::plan::OffsetRange;
use crate::trigger::Trigger;

/// Bytes per offset assumed for the first prefetch, before a batch has measured them.
pub(super) const ASSUMED_BYTES_PER_OFFSET: f64 = 256.0;

/// The next batch, planned and being read while the current one is processed.
#[derive(Debug)]
pub(super) struct Prefetched {
    pub(super) plan: Plan,
    pub(super) reading: Reading,
}

impl<C: Clock> Scheduler<C> {
    /// Plans the next batch from where this one ends and starts reading it, so its data arrives
    /// while this one is processed; only when its records are expected to fit in
    /// `prefetch_max_bytes` (judged by this batch's bytes per offset). Its intent is written
    /// when it starts, as usual: until then the reads have no effect anywhere.
    pub(super) async fn prefetch_next(&mut self, batch_id: u64, ranges: &[OffsetRange]) {
        // An empty batch says new data is not flowing: planning ahead would only cost a round trip.
        let empty = ranges.iter().all(OffsetRange::is_empty);
        if empty
            || self.config.prefetch_max_bytes == 0
            || self.config.trigger == Trigger::Once
            || self.stop.is_cancelled()
        {
            return;
        }
        let mut next_positions = self.positions.clone();
        for range in ranges {
            next_positions.insert((range.topic.clone(), range.partition), range.until);
        }
        let done = self
            .config
            .ending_offsets
            .as_ref()
            .is_some_and(|ending| ending.iter().all(|(tp, end)| next_positions.get(tp).is_some_and(|p| p >= end)));
        if done {
            return;
        }
        let Ok(plan) = self.plan_from(batch_id + 1, &next_positions).await else { return };
        let next_offsets: i64 = plan.ranges.iter().map(OffsetRange::len).sum();
        let per_offset = self.bytes_per_offset.unwrap_or(ASSUMED_BYTES_PER_OFFSET);
        let estimate = per_offset * next_offsets as f64;
        if next_offsets == 0 || estimate > self.config.prefetch_max_bytes as f64 {
            return;
        }
        let reading = self.start_read(batch_id + 1, &plan.ranges);
        self.prefetched = Some(Prefetched { plan, reading });
    }
}
