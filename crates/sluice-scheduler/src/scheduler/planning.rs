//! Planning a batch: its offset range per partition, from the job's positions and each
//! partition's latest offset, under the rate limits, backpressure and the memory budget; logs
//! found to end before the job's position; planning retried through transient faults.

use std::collections::BTreeMap;

use sluice_client::OffsetSpec;

use super::prefetch::ASSUMED_BYTES_PER_OFFSET;
use super::read::{FIRST_FAULT_BACKOFF, MAX_FAULT_BACKOFF};
use super::{millis, Scheduler, SchedulerError};
use crate::clock::Clock;
use crate::plan::{allowed_offsets, cap_offsets, plan_batch, OffsetRange, PartitionPlanInput, TopicPartition};
use crate::rate::PidRateEstimator;
use crate::trigger::Trigger;

/// A planned batch: its ranges, the latest offset of each partition, and the partitions whose
/// truncated log made the plan start them over (with the position they had).
#[derive(Debug, Default)]
pub(super) struct Plan {
    pub(super) ranges: Vec<OffsetRange>,
    pub(super) latest: Vec<i64>,
    pub(super) resets: BTreeMap<TopicPartition, i64>,
    /// The memory budget cut the plan short: the share it kept of what the rate limit allowed
    /// (0 without a rate limit); the next batch is due that share of an interval later.
    pub(super) cut_by_budget: Option<f64>,
}

impl<C: Clock> Scheduler<C> {
    /// [`Scheduler::plan`], retried with backoff while it fails on transient faults (a leader
    /// moving, a broker restarting), for `fault_timeout` at most.
    pub(super) async fn plan_through_faults(&mut self, batch_id: u64) -> Result<Plan, SchedulerError> {
        let deadline = std::time::Instant::now() + self.config.fault_timeout;
        let mut backoff = FIRST_FAULT_BACKOFF;
        loop {
            match self.plan(batch_id).await {
                Err(SchedulerError::Planning { source, .. })
                    if source.is_retriable()
                        && std::time::Instant::now() + backoff < deadline
                        && !self.stop.is_cancelled() =>
                {
                    tracing::warn!(batch_id, error = %source, retry_in = ?backoff, "planning failed on a transient fault");
                    self.client.note_error(&source);
                    // The partitions are looked up again too: one may be gone.
                    self.discovered_at_ms = None;
                    // A stop ends the wait; the planning after it is the last try.
                    tokio::select! {
                        biased;
                        () = self.stop.cancelled() => {}
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_FAULT_BACKOFF);
                }
                planned => return planned,
            }
        }
    }

    async fn plan(&mut self, batch_id: u64) -> Result<Plan, SchedulerError> {
        // In scale-out mode the group says which partitions are this process's.
        if self.config.scale.is_none() {
            self.discover(batch_id).await?;
        }
        let positions = self.positions.clone();
        self.plan_from(batch_id, &positions).await
    }

    /// Plans batch `batch_id` as if the partitions stood at `positions`.
    pub(super) async fn plan_from(
        &mut self,
        batch_id: u64,
        positions: &BTreeMap<TopicPartition, i64>,
    ) -> Result<Plan, SchedulerError> {
        // One ListOffsets per leader, and the high watermarks fetches reported fill in where a
        // broker answers short; a partition no fetch has reported on yet is probed once with a
        // fetch (which asks ListOffsets itself).
        let (unknown, known): (Vec<TopicPartition>, Vec<TopicPartition>) =
            positions.keys().cloned().partition(|key| !self.known_high_watermarks.contains_key(key));
        let (listed, probed) = tokio::try_join!(
            // Under read_committed (scale-out mode), the last stable offsets: a range planned
            // past a transaction still open would wait on it.
            self.client.list_offsets_as(&known, OffsetSpec::Latest, self.config.fetch.isolation),
            self.client.log_ends(&unknown, self.config.fetch.isolation),
        )
        .map_err(|source| SchedulerError::Planning { batch_id, source })?;
        let truncated = self.truncated_logs(batch_id, positions, &listed, &probed).await?;
        self.known_high_watermarks.extend(probed);
        let mut positions = positions.clone();
        let mut resets = BTreeMap::new();
        if !truncated.is_empty() {
            let keys: Vec<TopicPartition> = truncated.keys().cloned().collect();
            let starts = self
                .client
                .list_offsets(&keys, OffsetSpec::Earliest)
                .await
                .map_err(|source| SchedulerError::Planning { batch_id, source })?;
            for (key, (from, end)) in truncated {
                if self.config.fail_on_data_loss {
                    let (topic, partition) = key;
                    return Err(SchedulerError::DataLoss { batch_id, topic, partition, position: from, log_end: end });
                }
                // Skipped: the log as it is now is read from its start, all of it new to the job.
                tracing::warn!(batch_id, topic = %key.0, partition = key.1, position = from, log_end = end, "log now ends before the job's position; read again from its start (fail_on_data_loss is off)");
                self.known_high_watermarks.insert(key.clone(), end);
                let start = starts.get(&key).copied().unwrap_or(0).min(end);
                positions.insert(key.clone(), start);
                resets.insert(key, from);
            }
        }
        let mut inputs = Vec::with_capacity(positions.len());
        let mut latest_offsets = Vec::with_capacity(positions.len());
        for (key, from) in &positions {
            let (topic, partition) = key;
            let listed = listed.get(key).copied().unwrap_or(*from);
            let latest = listed.max(self.known_high_watermarks.get(key).copied().unwrap_or(-1));
            latest_offsets.push(latest);
            let end = self
                .config
                .ending_offsets
                .as_ref()
                .and_then(|e| e.get(&(topic.clone(), *partition)).copied())
                .unwrap_or(latest);
            inputs.push(PartitionPlanInput {
                topic: topic.clone(),
                partition: *partition,
                from: *from,
                latest: latest.min(end),
            });
        }
        let rate = self.estimator.as_ref().and_then(PidRateEstimator::rate);
        let mut ranges = plan_batch(&inputs, &self.config.limits, millis(self.config.batch_interval), rate);
        // One batch of everything under `Trigger::Once` (read in pieces if larger than the
        // budget), as Spark's `Once` ignores `maxOffsetsPerTrigger`.
        let capped = self.config.max_batch_bytes > 0 && self.config.trigger != Trigger::Once;
        let mut cut_by_budget = None;
        if capped && ranges.iter().any(|r| !r.is_empty()) {
            let per_offset = match self.bytes_per_offset {
                Some(per_offset) => per_offset,
                None => self.probe_bytes_per_offset(&ranges).await,
            };
            // A tenth under the budget: record sizes vary around the estimate.
            let max_offsets = self.config.max_batch_bytes as f64 * 0.9 / per_offset.max(1.0);
            let planned: i64 = ranges.iter().map(OffsetRange::len).sum();
            ranges = cap_offsets(ranges, max_offsets as i64);
            let kept: i64 = ranges.iter().map(OffsetRange::len).sum();
            if kept < planned {
                // The share of what the limits allow, not of what the partitions held: a backlog
                // smaller than the limits' worth is not paced as if it were that worth (it
                // was, and a 1 s job read its backlog at a quarter of the speed of a 100 ms one).
                let allowed = allowed_offsets(&inputs, &self.config.limits, millis(self.config.batch_interval), rate);
                cut_by_budget = Some(allowed.map_or(0.0, |allowed| (kept as f64 / allowed).min(1.0)));
            }
        }
        Ok(Plan { ranges, latest: latest_offsets, resets, cut_by_budget })
    }

    /// Record bytes per offset, from one small fetch at the start of the longest range, for
    /// the first batch a run plans (later ones use what the batch before read); the assumed
    /// figure if the fetch fails or brings nothing. Kept as the estimate until a batch is read.
    async fn probe_bytes_per_offset(&mut self, ranges: &[OffsetRange]) -> f64 {
        let Some(range) = ranges.iter().max_by_key(|r| r.len()) else { return ASSUMED_BYTES_PER_OFFSET };
        let mut options = self.config.fetch;
        options.max_bytes = 64 * 1024;
        let fetched = self.client.fetch_partition(&range.topic, range.partition, range.from, &options).await;
        let Ok(fetched) = fetched else { return ASSUMED_BYTES_PER_OFFSET };
        let (Some(first), Some(next)) =
            (fetched.records.batches.first().map(|b| b.header.base_offset), fetched.records.next_offset)
        else {
            return ASSUMED_BYTES_PER_OFFSET;
        };
        let bytes: usize = fetched.records.batches.iter().map(sluice_protocol::record::RecordBatch::data_len).sum();
        if next <= first || bytes == 0 {
            return ASSUMED_BYTES_PER_OFFSET;
        }
        let per_offset = bytes as f64 / (next - first) as f64;
        self.bytes_per_offset = Some(per_offset);
        per_offset
    }

    /// The partitions whose log now ends before the position the job reached (the topic was
    /// deleted and re-created, or the log truncated by an unclean leader election), with that
    /// position and the log end. ListOffsets may answer short of the end (Tansu), and under
    /// read_committed the ends planned from are the last stable offsets, so a fetch's high
    /// watermark decides before a partition is called truncated.
    async fn truncated_logs(
        &self,
        batch_id: u64,
        positions: &BTreeMap<TopicPartition, i64>,
        listed: &BTreeMap<TopicPartition, i64>,
        probed: &BTreeMap<TopicPartition, i64>,
    ) -> Result<BTreeMap<TopicPartition, (i64, i64)>, SchedulerError> {
        let below = |answers: &BTreeMap<TopicPartition, i64>| -> Vec<TopicPartition> {
            answers
                .iter()
                .filter(|(key, end)| positions.get(*key).is_some_and(|from| **end < *from))
                .map(|(key, _)| key.clone())
                .collect()
        };
        let mut truncated = BTreeMap::new();
        let mut suspects = below(listed);
        suspects.extend(below(probed));
        if suspects.is_empty() {
            return Ok(truncated);
        }
        // Under read_committed the ends above are the last stable offsets; whether the log
        // itself ends before the position is the high watermark's to say.
        let confirmed = self
            .client
            .log_ends(&suspects, sluice_client::Isolation::ReadUncommitted)
            .await
            .map_err(|source| SchedulerError::Planning { batch_id, source })?;
        for key in below(&confirmed) {
            let end = confirmed.get(&key).copied().unwrap_or_default();
            let from = positions.get(&key).copied().unwrap_or_default();
            truncated.insert(key, (from, end));
        }
        Ok(truncated)
    }
}
