//! Planning one micro-batch: for each partition, the offset range `[from, until)` it processes.
//!
//! As Spark's `DirectKafkaInputDStream`: without backpressure each partition may advance by its
//! maximum rate times the batch interval (unlimited if none is set); with a backpressure rate,
//! that rate is shared among the partitions in proportion to their lag, capped by the maximum
//! rate; a minimum rate keeps every lagging partition moving; no range goes past the latest
//! available offset.

use serde::{Deserialize, Serialize};

/// A topic and partition.
pub type TopicPartition = (String, i32);

/// The offsets `[from, until)` of one partition that one batch (or task) processes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OffsetRange {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The first offset.
    pub from: i64,
    /// The offset after the last.
    pub until: i64,
}

impl OffsetRange {
    /// How many offsets the range spans.
    pub fn len(&self) -> i64 {
        (self.until - self.from).max(0)
    }

    /// Whether the range spans no offsets.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where one partition stands when a batch is planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionPlanInput {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The next offset to process (where the previous batch ended).
    pub from: i64,
    /// The latest offset available (the high watermark).
    pub latest: i64,
}

/// Limits on how fast partitions advance, in records per second per partition.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RateLimits {
    /// The most records per second one partition advances (`None`: no limit).
    pub max_per_partition: Option<f64>,
    /// Under a limit, a lagging partition still advances at least this many records per second
    /// (at least one record per batch).
    pub min_per_partition: f64,
}

/// The ranges of the next batch, one per input partition and in the same order. `backpressure_rate`
/// (records per second for the whole job, from [`crate::PidRateEstimator`]) shrinks the batch when
/// processing falls behind.
pub fn plan_batch(
    inputs: &[PartitionPlanInput],
    limits: &RateLimits,
    interval_ms: u64,
    backpressure_rate: Option<f64>,
) -> Vec<OffsetRange> {
    let rates = partition_rates(inputs, limits, backpressure_rate);
    let limited = rates.iter().flatten().sum::<f64>() > 0.0;
    let seconds = interval_ms as f64 / 1000.0;
    inputs
        .iter()
        .zip(rates)
        .map(|(p, rate)| {
            let until = match rate.filter(|_| limited) {
                Some(rate) => {
                    let floor = (limits.min_per_partition * seconds).max(1.0);
                    let most = (rate * seconds).max(floor) as i64;
                    p.latest.min(p.from.saturating_add(most))
                }
                None => p.latest,
            };
            OffsetRange { topic: p.topic.clone(), partition: p.partition, from: p.from, until: until.max(p.from) }
        })
        .collect()
}

/// Each partition's rate in records per second under `limits` and the backpressure rate
/// (shared by lag), `None` where nothing limits it.
fn partition_rates(
    inputs: &[PartitionPlanInput],
    limits: &RateLimits,
    backpressure_rate: Option<f64>,
) -> Vec<Option<f64>> {
    let lag = |p: &PartitionPlanInput| (p.latest - p.from).max(0);
    let total_lag: i64 = inputs.iter().map(lag).sum();
    inputs
        .iter()
        .map(|p| match backpressure_rate.filter(|r| *r > 0.0) {
            Some(rate) => {
                let share = if total_lag > 0 { lag(p) as f64 / total_lag as f64 * rate } else { 0.0 };
                Some(limits.max_per_partition.map_or(share, |max| share.min(max)))
            }
            None => limits.max_per_partition,
        })
        .collect()
}

/// How many offsets the limits allow a batch of `interval_ms` in all, however much the
/// partitions hold (`None` when nothing limits the rate): what a batch cut short by the memory
/// budget measures the share it kept against.
pub(crate) fn allowed_offsets(
    inputs: &[PartitionPlanInput],
    limits: &RateLimits,
    interval_ms: u64,
    backpressure_rate: Option<f64>,
) -> Option<f64> {
    let per_second: f64 = partition_rates(inputs, limits, backpressure_rate).iter().flatten().sum();
    (per_second > 0.0).then(|| per_second * interval_ms as f64 / 1000.0)
}

/// Shrinks `ranges` so that together they span at most about `max_offsets` offsets (a byte
/// budget over the record bytes per offset), each keeping a share in proportion to its
/// length, at least one offset: a backlog is worked through in batches of bounded size, every
/// partition moving. Ranges within the cap are returned as they are.
pub fn cap_offsets(ranges: Vec<OffsetRange>, max_offsets: i64) -> Vec<OffsetRange> {
    let total: i64 = ranges.iter().map(OffsetRange::len).sum();
    if total <= max_offsets {
        return ranges;
    }
    let scale = max_offsets.max(1) as f64 / total as f64;
    ranges
        .into_iter()
        .map(|range| {
            let len = range.len();
            let share = ((len as f64 * scale) as i64).clamp(len.min(1), len);
            OffsetRange { until: range.from + share, ..range }
        })
        .collect()
}

/// Splits the non-empty ranges into tasks so that there are at least `min_partitions` of them,
/// each range into a number of consecutive pieces proportional to its size (Spark's
/// `minPartitions`); with fewer than `min_partitions` wanted, or enough ranges already, the
/// non-empty ranges are returned as they are.
pub fn split_ranges(ranges: &[OffsetRange], min_partitions: usize) -> Vec<OffsetRange> {
    let non_empty: Vec<&OffsetRange> = ranges.iter().filter(|r| !r.is_empty()).collect();
    if non_empty.len() >= min_partitions {
        return non_empty.into_iter().cloned().collect();
    }
    let total: i64 = non_empty.iter().map(|r| r.len()).sum();
    let mut tasks = Vec::new();
    for range in non_empty {
        let share = range.len() as f64 / total as f64 * min_partitions as f64;
        let parts = (share.round() as i64).clamp(1, range.len());
        for i in 0..parts {
            let from = range.from + range.len() * i / parts;
            let until = range.from + range.len() * (i + 1) / parts;
            if until > from {
                tasks.push(OffsetRange { topic: range.topic.clone(), partition: range.partition, from, until });
            }
        }
    }
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(partition: i32, from: i64, latest: i64) -> PartitionPlanInput {
        PartitionPlanInput { topic: "t".into(), partition, from, latest }
    }

    fn untils(ranges: &[OffsetRange]) -> Vec<i64> {
        ranges.iter().map(|r| r.until).collect()
    }

    #[test]
    fn the_allowance_is_the_limits_over_the_interval_whatever_the_partitions_hold() {
        let inputs = [input(0, 0, 100), input(1, 0, 1_000_000)];
        let per_partition = RateLimits { max_per_partition: Some(1_000.0), min_per_partition: 0.0 };
        assert_eq!(allowed_offsets(&inputs, &per_partition, 500, None), Some(1_000.0));
        assert_eq!(allowed_offsets(&inputs, &RateLimits::default(), 500, None), None, "no limit");
        assert_eq!(allowed_offsets(&inputs, &RateLimits::default(), 500, Some(4_000.0)), Some(2_000.0));
    }

    #[test]
    fn without_limits_a_batch_takes_everything_available() {
        let plan = plan_batch(&[input(0, 10, 500), input(1, 0, 0)], &RateLimits::default(), 1_000, None);
        assert_eq!(plan[0], OffsetRange { topic: "t".into(), partition: 0, from: 10, until: 500 });
        assert!(plan[1].is_empty());
    }

    #[test]
    fn the_maximum_rate_times_the_interval_caps_each_partition() {
        let limits = RateLimits { max_per_partition: Some(100.0), min_per_partition: 0.0 };
        // 100 records/s for 2.5 s: 250 records, unless fewer are available.
        let plan = plan_batch(&[input(0, 0, 1_000), input(1, 900, 1_000)], &limits, 2_500, None);
        assert_eq!(untils(&plan), vec![250, 1_000]);
    }

    #[test]
    fn backpressure_shares_its_rate_by_lag_under_the_maximum() {
        let limits = RateLimits { max_per_partition: Some(300.0), min_per_partition: 0.0 };
        // 1,000 records/s for the job; lags 750 and 250: shares 750 and 250, the first capped at 300.
        let plan = plan_batch(&[input(0, 0, 750), input(1, 0, 250)], &limits, 1_000, Some(1_000.0));
        assert_eq!(untils(&plan), vec![300, 250]);
        // Without a maximum the shares stand.
        let plan = plan_batch(&[input(0, 0, 7_500), input(1, 0, 2_500)], &RateLimits::default(), 1_000, Some(1_000.0));
        assert_eq!(untils(&plan), vec![750, 250]);
    }

    #[test]
    fn the_minimum_rate_keeps_lagging_partitions_moving() {
        let limits = RateLimits { max_per_partition: None, min_per_partition: 50.0 };
        // Backpressure would give partition 1 only 1 record/s (1 in 1 s); the minimum gives it 50.
        let plan = plan_batch(&[input(0, 0, 99_000), input(1, 0, 1_000)], &limits, 1_000, Some(100.0));
        assert_eq!(untils(&plan), vec![99, 50]);
        // And at least one record per batch, however small the interval.
        let limits = RateLimits { max_per_partition: Some(1.0), min_per_partition: 0.0 };
        assert_eq!(untils(&plan_batch(&[input(0, 0, 10)], &limits, 10, None)), vec![1]);
    }

    #[test]
    fn a_partition_behind_its_start_plans_an_empty_range_not_a_negative_one() {
        let plan = plan_batch(&[input(0, 100, 40)], &RateLimits::default(), 1_000, None);
        assert_eq!((plan[0].from, plan[0].until), (100, 100));
    }

    #[test]
    fn a_cap_shares_the_offsets_by_length_and_keeps_every_lagging_partition_moving() {
        let range = |partition, from, until| OffsetRange { topic: "t".into(), partition, from, until };
        let ranges = vec![range(0, 100, 900), range(1, 0, 200), range(2, 5, 6), range(3, 7, 7)];
        // Within the cap: unchanged.
        assert_eq!(cap_offsets(ranges.clone(), 1_001), ranges);
        // 1,001 offsets into 100: 800 -> 79, 200 -> 19, 1 -> 1 (never none), 0 -> 0.
        let capped = cap_offsets(ranges.clone(), 100);
        assert_eq!(untils(&capped), vec![179, 19, 6, 7]);
        assert!(capped.iter().zip(&ranges).all(|(c, r)| c.from == r.from));
        // A cap of nothing still moves each lagging partition by one.
        assert_eq!(untils(&cap_offsets(ranges, 0)), vec![101, 1, 6, 7]);
    }

    #[test]
    fn splitting_covers_each_range_exactly_in_consecutive_pieces() {
        let ranges = vec![
            OffsetRange { topic: "t".into(), partition: 0, from: 0, until: 900 },
            OffsetRange { topic: "t".into(), partition: 1, from: 50, until: 150 },
            OffsetRange { topic: "t".into(), partition: 2, from: 7, until: 7 },
        ];
        let tasks = split_ranges(&ranges, 10);
        assert_eq!(tasks.iter().filter(|t| t.partition == 0).count(), 9);
        assert_eq!(tasks.iter().filter(|t| t.partition == 1).count(), 1);
        for range in &ranges {
            let pieces: Vec<&OffsetRange> = tasks.iter().filter(|t| t.partition == range.partition).collect();
            let covered: i64 = pieces.iter().map(|p| p.len()).sum();
            assert_eq!(covered, range.len());
            for pair in pieces.windows(2) {
                assert_eq!(pair[0].until, pair[1].from, "consecutive, in order");
            }
        }
        // Enough ranges already: returned as they are, without the empty one.
        assert_eq!(split_ranges(&ranges, 2), ranges[..2].to_vec());
        // Never more pieces than offsets.
        let tiny = [OffsetRange { topic: "t".into(), partition: 0, from: 0, until: 3 }];
        assert_eq!(split_ranges(&tiny, 100).len(), 3);
    }
}
