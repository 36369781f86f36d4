//! Partition discovery: the partitions of the configured topics, of the topics matching
//! `topic_pattern`, and the assigned ones, looked up again every `partition_discovery_interval`;
//! where each new one starts, and the positions of partitions gone from the cluster dropped.

use std::collections::BTreeMap;

use sluice_client::{ClusterMetadata, OffsetSpec};
use sluice_protocol::error_code::ErrorCode;

use super::{millis, Scheduler, SchedulerError, StartingOffsets};
use crate::clock::Clock;
use crate::plan::TopicPartition;

impl<C: Clock> Scheduler<C> {
    /// The partitions of the configured topics, with where each starts if it has no position.
    pub(super) async fn discover(&mut self, batch_id: u64) -> Result<(), SchedulerError> {
        let now = self.clock.now_ms();
        let interval = millis(self.config.partition_discovery_interval);
        if self.discovered_at_ms.is_some_and(|at| now.saturating_sub(at) < interval) {
            return Ok(());
        }
        let planning = |source| SchedulerError::Planning { batch_id, source };
        let metadata = match &self.pattern {
            // A pattern needs every topic's name.
            Some(_) => self.client.refresh_metadata(None).await.map_err(planning)?,
            None => {
                let mut topics: Vec<&str> = self.config.topics.iter().map(String::as_str).collect();
                topics.extend(self.config.assign.iter().map(|(topic, _)| topic.as_str()));
                // And the topics the job has positions in (from its checkpoint), to see them gone.
                topics.extend(self.positions.keys().map(|(topic, _)| topic.as_str()));
                topics.sort_unstable();
                topics.dedup();
                self.client.refresh_metadata(Some(&topics)).await.map_err(planning)?
            }
        };
        self.prune_gone(batch_id, &metadata)?;
        let mut topics = self.config.topics.clone();
        if let Some(pattern) = &self.pattern {
            let matching = metadata.topics.iter().filter(|(name, t)| !t.is_internal && pattern.is_match(name));
            topics.extend(matching.map(|(name, _)| name.clone()).filter(|name| !self.config.topics.contains(name)));
        }
        // Partitions that appear after the first batch start at their beginning: their records
        // are all new to this job (as Spark does).
        let first = self.next_batch_id == 0 && self.last_start_ms.is_none();
        let whole_topics = topics.iter().filter_map(|topic| metadata.topics.get(topic).map(|t| (topic, t)));
        let mut found: Vec<TopicPartition> =
            whole_topics.flat_map(|(topic, t)| t.partitions.iter().map(|p| (topic.clone(), p.partition))).collect();
        found.extend(
            self.config
                .assign
                .iter()
                .filter(|(topic, partition)| {
                    metadata.topics.get(topic).is_some_and(|t| t.partitions.iter().any(|p| p.partition == *partition))
                })
                .cloned(),
        );
        found.sort();
        found.dedup();
        found.retain(|key| !self.positions.contains_key(key));
        match self.starting_positions(&found, first).await {
            Ok(positions) => self.positions.extend(positions),
            // A partition that has just appeared is listed a moment before its leader serves it
            // (Kafka answers NOT_LEADER_OR_FOLLOWER meanwhile): the partitions found after the
            // first batch are taken up at a later discovery, the next batch's.
            Err(e) if !first && e.is_retriable() => return Ok(()),
            Err(e) => return Err(planning(e)),
        }
        self.discovered_at_ms = Some(now);
        Ok(())
    }

    /// Where `keys`, which have no position, start: by `starting_offsets` if `first` (the
    /// job's first sight of them), else at their earliest offset (partitions that appeared while
    /// the job ran hold only records new to it).
    pub(super) async fn starting_positions(
        &self,
        keys: &[TopicPartition],
        first: bool,
    ) -> Result<BTreeMap<TopicPartition, i64>, sluice_client::Error> {
        let mut positions = BTreeMap::new();
        let (mut earliest, mut latest, mut by_time) = (Vec::new(), Vec::new(), Vec::new());
        for key in keys {
            match &self.config.starting_offsets {
                StartingOffsets::Offsets(offsets) if offsets.contains_key(key) => {
                    positions.insert(key.clone(), offsets.get(key).copied().unwrap_or_default());
                }
                StartingOffsets::Latest if first => latest.push(key.clone()),
                StartingOffsets::Timestamp(_) if first => by_time.push(key.clone()),
                _ => earliest.push(key.clone()),
            }
        }
        let isolation = self.config.fetch.isolation;
        let (earliest, latest, by_time) = tokio::try_join!(
            self.client.list_offsets(&earliest, OffsetSpec::Earliest),
            self.client.log_ends(&latest, isolation),
            async {
                match self.config.starting_offsets {
                    StartingOffsets::Timestamp(ms) if !by_time.is_empty() => {
                        self.client.list_offsets(&by_time, OffsetSpec::Timestamp(ms)).await
                    }
                    _ => Ok(BTreeMap::new()),
                }
            },
        )?;
        // -1: no record that late; such a partition starts at its end.
        let (found, after_all): (BTreeMap<_, _>, BTreeMap<_, _>) =
            by_time.into_iter().partition(|(_, offset)| *offset >= 0);
        let keys: Vec<TopicPartition> = after_all.into_keys().collect();
        let ends = self.client.log_ends(&keys, isolation).await?;
        positions.extend(earliest.into_iter().chain(latest).chain(found).chain(ends));
        Ok(positions)
    }

    /// Drops the positions of partitions no longer in the cluster (the topic deleted, or made
    /// again with fewer partitions), as Spark does: their records from the job's position on
    /// are gone, which fails the batch under `fail_on_data_loss`. Without this, planning would
    /// ask for the offsets of a partition that does not exist, forever.
    fn prune_gone(&mut self, batch_id: u64, metadata: &ClusterMetadata) -> Result<(), SchedulerError> {
        let gone: Vec<TopicPartition> = self
            .positions
            .keys()
            .filter(|(topic, partition)| match metadata.topics.get(topic) {
                None => true,
                Some(t) if t.error == ErrorCode::UnknownTopicOrPartition => true,
                Some(t) if t.error == ErrorCode::None => !t.partitions.iter().any(|p| p.partition == *partition),
                // Another topic-level error (an election under way): not a verdict.
                Some(_) => false,
            })
            .cloned()
            .collect();
        for key in gone {
            let position = self.positions.get(&key).copied().unwrap_or_default();
            if self.config.fail_on_data_loss {
                let (topic, partition) = key;
                return Err(SchedulerError::PartitionGone { batch_id, topic, partition, position });
            }
            tracing::warn!(batch_id, topic = %key.0, partition = key.1, position, "partition gone from the cluster; dropped from the job (fail_on_data_loss is off)");
            self.positions.remove(&key);
            self.known_high_watermarks.remove(&key);
        }
        Ok(())
    }
}
