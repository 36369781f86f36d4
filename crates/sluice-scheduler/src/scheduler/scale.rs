//! Scale-out mode ([`ScaleConfig`](super::ScaleConfig)): the partitions come from a consumer
//! group shared with the job's other processes, and each batch commits as one Kafka transaction
//! (while the process catches up, a run of batches does: see
//! [`ScaleConfig::commit_interval`](super::ScaleConfig::commit_interval)).
//!
//! At the boundaries between transactions the member's changes are taken in: revoked and lost
//! partitions are dropped (and revoked ones released, so the group can hand them on: a
//! revocation that arrives while a transaction is open waits for its commit, and makes the next
//! batch end it), gained partitions start at the group's committed offset, read as stable (a
//! previous owner's open transaction is waited out). A batch with ranges runs in a transaction
//! begun before the processor gets it (or left open for it by the batch before): its output,
//! sent through [`Batch::transaction`](super::Batch::transaction), and the end offsets of the
//! transaction's batches' ranges, sent with the member's group metadata as each of its batches
//! that moves an offset begins (again at the commit if it moved since, or if none was sent),
//! commit together. A commit the group
//! refuses (the member was dropped, or moved to a newer epoch while it lost partitions of the
//! transaction's batches) aborts the transaction: the positions of all its batches' partitions
//! are read again from the group, and the checkpoint log closes the batch that ended it with
//! empty ranges (the earlier ones were closed with theirs as they ended).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use sluice_client::{
    ConsumerGroupConfig, ConsumerGroupMember, ConsumerGroupMetadata, Error, MemberEvent, OffsetSpec, Producer,
    ProducerConfig,
};
use sluice_protocol::error_code::ErrorCode;

use super::read::{FIRST_FAULT_BACKOFF, MAX_FAULT_BACKOFF};
use super::{BatchOutput, Scheduler, SchedulerError};
use crate::clock::Clock;
use crate::plan::{OffsetRange, TopicPartition};

/// The commit record's marker of a batch that did not commit in Kafka (aborted, or left open
/// by the previous run and closed at start): its ranges were not consumed.
pub(super) const NOT_COMMITTED: &[u8] = b"scale-out: not committed";

/// A process's place in the job's group.
#[derive(Debug)]
pub(super) struct Scale {
    member: ConsumerGroupMember,
    producer: Arc<Producer>,
    /// Partitions owned whose positions are not known (yet): gained, or their batch did not
    /// commit; looked up from the group at the next boundary (again after a fault).
    gained: Vec<TopicPartition>,
    /// The member's loss count when the group's changes were last taken in (the positions the
    /// next batch is planned from are from then).
    losses_at_plan: u64,
    /// The transaction under way, once begun (it may span batches: see
    /// [`ScaleConfig::commit_interval`](super::ScaleConfig::commit_interval)).
    open: Option<OpenTransaction>,
    /// A change of the group came while a transaction spanning batches was open: the next batch
    /// ends it, and the change is taken in at the boundary after it.
    end_next: bool,
    /// Owned partitions whose position came from `starting_offsets` (for an internal topic's,
    /// its earliest offset), not from the group: the next batch commits their offsets even if it
    /// reads nothing from them, so that a later owner starts where this one did.
    uncommitted: std::collections::BTreeSet<TopicPartition>,
    /// Batches in a row whose transaction did not commit.
    not_committed_in_a_row: u32,
    /// What the processor has not been told yet (see [`PartitionChanges`]).
    changes: PartitionChanges,
    /// The topics whose partition `p` goes with the group's partition `p` of the first source
    /// topic: the other source topics when they are
    /// [`co_partitioned`](super::ScaleConfig::co_partitioned), then the internal topics.
    followers: Vec<String>,
    /// [`ScaleConfig::internal_topics`](super::ScaleConfig::internal_topics) (read from their
    /// start where the group holds no offset).
    internal_topics: Vec<String>,
    /// When the last transaction committed (or the process joined): the followers' offsets are
    /// committed again at least every [`OFFSETS_REFRESH`].
    last_commit: Instant,
    /// The batch's transaction taking in the batch's end offsets while the batch runs; awaited
    /// before it ends. Gives the group metadata the offsets were sent with, if they were.
    preparing: Option<tokio::task::JoinHandle<Option<ConsumerGroupMetadata>>>,
}

/// A transaction begun, and the batches in it so far.
#[derive(Debug)]
struct OpenTransaction {
    /// The member's loss count when the positions of its first batch were taken: it must not
    /// commit once its member has lost partitions since (even if it got them back).
    losses_at_begin: u64,
    began: Instant,
    /// Where each partition its batches read ends: the offsets it commits.
    ends: BTreeMap<TopicPartition, i64>,
}

impl OpenTransaction {
    fn new(losses_at_begin: u64) -> Self {
        Self { losses_at_begin, began: Instant::now(), ends: BTreeMap::new() }
    }

    /// Takes in a batch's ranges.
    fn add(&mut self, ranges: &[OffsetRange]) {
        for range in ranges {
            self.ends.insert((range.topic.clone(), range.partition), range.until);
        }
    }

    fn offsets(&self) -> Vec<(String, i32, i64)> {
        self.ends.iter().map(|((topic, partition), end)| (topic.clone(), *partition, *end)).collect()
    }

    fn partitions(&self) -> Vec<TopicPartition> {
        self.ends.keys().cloned().collect()
    }
}

/// Whether a batch ends its transaction ([`Batch::ends_transaction`](super::Batch::ends_transaction)),
/// decided once and shared by the batch and the scheduler: when the processor first asks, or
/// when the batch is done if it never does. A batch that can go on with its transaction
/// ([`GoOn`]) is measured then: asked once its records are taken, the batch knows how long it
/// took (the first of a run, with no batch before to go by, too).
#[derive(Debug, Clone)]
pub(super) struct TransactionEnd(Arc<EndState>);

#[derive(Debug)]
struct EndState {
    decided: std::sync::OnceLock<bool>,
    /// `None`: the batch ends its transaction (or has none).
    rule: Option<GoOn>,
}

/// When a batch leaves its transaction open: nobody asked for a stop, and the next batch is
/// expected to end within the commit interval of the transaction's start. The next batch starts
/// when the trigger says (`next_due` after this one started) or when this one ends (now: a batch
/// that goes on sends nothing more), whichever is later, and is taken to last as long as this
/// one did, or as the batch before if that took longer.
#[derive(Debug)]
pub(super) struct GoOn {
    stop: tokio_util::sync::CancellationToken,
    interval: std::time::Duration,
    began: Instant,
    started: Instant,
    next_due: std::time::Duration,
    /// The batch before's time, if it read records.
    last: Option<std::time::Duration>,
}

impl TransactionEnd {
    /// A batch that ends its transaction, or has none.
    pub(super) fn ends() -> Self {
        Self(Arc::new(EndState { decided: std::sync::OnceLock::from(true), rule: None }))
    }

    fn deciding(rule: GoOn) -> Self {
        Self(Arc::new(EndState { decided: std::sync::OnceLock::new(), rule: Some(rule) }))
    }

    /// Whether the batch ends its transaction, decided at the first call; `records_taken`:
    /// whether the batch's last piece has been taken.
    pub(super) fn decide(&self, records_taken: bool) -> bool {
        *self.0.decided.get_or_init(|| self.0.rule.as_ref().is_none_or(|rule| !rule.goes_on(records_taken)))
    }
}

impl GoOn {
    fn goes_on(&self, records_taken: bool) -> bool {
        if self.stop.is_cancelled() {
            return false;
        }
        let now = Instant::now();
        let so_far = now.saturating_duration_since(self.started);
        // Before its records are taken a batch's time so far says little; with no batch before
        // to go by either, it ends.
        let per_batch = match (self.last, records_taken) {
            (Some(last), _) => last.max(so_far),
            (None, true) => so_far,
            (None, false) => return false,
        };
        let next_end =
            self.started.checked_add(self.next_due).map(|due| due.max(now)).and_then(|s| s.checked_add(per_batch));
        next_end.is_some_and(|end| end.saturating_duration_since(self.began) < self.interval)
    }
}

impl Scale {
    /// Waits for the transaction's preparation, if under way: its requests come before the
    /// batch's last ones. Returns the group metadata the batch's offsets went with, if they
    /// did (a failed preparation is only logged: the commit sends them).
    async fn prepared(&mut self) -> Option<ConsumerGroupMetadata> {
        match self.preparing.take()?.await {
            Ok(sent) => sent,
            Err(error) => {
                tracing::debug!(%error, "preparing the batch's transaction stopped");
                None
            }
        }
    }
}

/// Scale-out mode: how the partitions a process works on changed, told to the processor at a
/// batch boundary before the batch is planned
/// ([`Processor::partitions_changed`](super::Processor::partitions_changed)). The partitions of
/// internal topics ([`ScaleConfig::internal_topics`](super::ScaleConfig::internal_topics)), and
/// of [co-partitioned](super::ScaleConfig::co_partitioned) source topics, come and go with the
/// first source topic's of the same number, and are listed with them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartitionChanges {
    /// Partitions given up (revoked) or lost (the group dropped the process): what the
    /// processor keeps for them is another process's now.
    pub lost: Vec<TopicPartition>,
    /// Partitions whose batches go on from what Kafka holds: taken on from the group, or owned
    /// but with a batch that did not commit (the processor's state for them holds changes that
    /// never happened). The processor drops what it keeps for them and rebuilds it from Kafka
    /// (a changelog) before the next batch reads them.
    pub gained: Vec<TopicPartition>,
    /// Those of `gained` of the source the group held no offset for: they start at
    /// `starting_offsets` (or their earliest offset), so state kept for them elsewhere does not
    /// match where they start (their offsets expired, or were reset). An internal topic's
    /// partition without an offset is read from its start, and is not listed here.
    pub fresh: Vec<TopicPartition>,
}

impl PartitionChanges {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.lost.is_empty() && self.gained.is_empty()
    }
}

impl Scale {
    /// The process's member id in the group.
    pub(super) fn member_id(&self) -> String {
        self.member.member_id()
    }

    /// `partitions` (the group's) with the partitions of the same numbers of the topics that
    /// go with them (co-partitioned sources, internal topics).
    fn with_followers(&self, partitions: &[TopicPartition]) -> Vec<TopicPartition> {
        let mut all = partitions.to_vec();
        for (_, partition) in partitions {
            all.extend(self.followers.iter().map(|topic| (topic.clone(), *partition)));
        }
        all
    }

    /// The partitions this process owns: the group's and those that go with them.
    fn owned(&self) -> Vec<TopicPartition> {
        self.with_followers(&self.member.owned())
    }

    /// Whether `partition` is of an internal topic.
    fn is_internal(&self, (topic, _): &TopicPartition) -> bool {
        self.internal_topics.contains(topic)
    }

    /// Drops what the scheduler knows of partitions no longer this process's.
    fn forget(
        &mut self,
        partitions: &[TopicPartition],
        positions: &mut BTreeMap<TopicPartition, i64>,
        high_watermarks: &mut BTreeMap<TopicPartition, i64>,
    ) {
        for partition in partitions {
            positions.remove(partition);
            high_watermarks.remove(partition);
            self.gained.retain(|p| p != partition);
            self.uncommitted.remove(partition);
            self.changes.gained.retain(|p| p != partition);
            self.changes.fresh.retain(|p| p != partition);
            if !self.changes.lost.contains(partition) {
                self.changes.lost.push(partition.clone());
            }
        }
    }

    /// The positions of these partitions are read again from the group at the next boundary
    /// (for those still owned): their batch did not commit, or may have.
    fn look_up_again(
        &mut self,
        partitions: impl IntoIterator<Item = TopicPartition>,
        positions: &mut BTreeMap<TopicPartition, i64>,
    ) {
        let owned = self.owned();
        for key in partitions {
            positions.remove(&key);
            if owned.contains(&key) && !self.gained.contains(&key) {
                self.gained.push(key);
            }
        }
    }
}

impl<C: Clock> Scheduler<C> {
    fn group_error(&self, what: &'static str, source: Error) -> SchedulerError {
        let group = self.config.scale.as_ref().map(|s| s.group.clone()).unwrap_or_default();
        SchedulerError::Group { group, what, source: Box::new(source) }
    }

    /// In scale-out mode: joins the group and starts the transactional producer (whose
    /// InitProducerId fences this instance's previous incarnation and aborts its open
    /// transaction), and closes an intent the previous run left open without re-running it.
    pub(super) async fn join_group(&mut self) -> Result<(), SchedulerError> {
        let Some(scale) = self.config.scale.clone() else { return Ok(()) };
        if self.scale.is_some() {
            return Ok(());
        }
        let producer = self.start_producer().await?;
        // Co-partitioned sources: the group assigns the first topic's partitions, and the
        // others' go with them.
        let (subscribed, mut followers) = match self.config.topics.split_first() {
            Some((first, rest)) if scale.co_partitioned => {
                self.check_co_partitioned().await?;
                (vec![first.clone()], rest.to_vec())
            }
            _ => (self.config.topics.clone(), Vec::new()),
        };
        followers.extend(scale.internal_topics.iter().cloned());
        let mut member_config = ConsumerGroupConfig::new(scale.group.clone(), subscribed);
        member_config.group_instance_id.clone_from(&scale.instance);
        member_config.protocol = scale.protocol;
        member_config.rebalance_timeout = scale.rebalance_timeout;
        member_config.session_timeout = scale.session_timeout;
        member_config.heartbeat_interval = scale.heartbeat_interval;
        let member = ConsumerGroupMember::join(self.client.clone(), member_config)
            .await
            .map_err(|e| self.group_error("joining", e))?;
        tracing::info!(group = %scale.group, member = %member.member_id(), protocol = ?member.protocol(), "joined the job's group");
        // What this process owned before comes again from the group, with the group's offsets.
        self.positions.clear();
        self.known_high_watermarks.clear();
        let mut member = member;
        let losses_at_plan = member.losses();
        let assigned = first_assignment(&mut member, scale.rebalance_timeout.min(FIRST_ASSIGNMENT_WAIT)).await;
        self.prefetched = None;
        let mut joined = Scale {
            member,
            producer: Arc::new(producer),
            gained: Vec::new(),
            losses_at_plan,
            open: None,
            end_next: false,
            uncommitted: std::collections::BTreeSet::new(),
            not_committed_in_a_row: 0,
            changes: PartitionChanges::default(),
            followers,
            internal_topics: scale.internal_topics.clone(),
            last_commit: Instant::now(),
            preparing: None,
        };
        joined.gained = joined.with_followers(&assigned);
        self.scale = Some(joined);
        self.close_open_intent().await
    }

    /// Co-partitioned source topics must have as many partitions as the first: partition `p` of
    /// each goes with its partition `p`, and a partition without a match would never be read.
    async fn check_co_partitioned(&self) -> Result<(), SchedulerError> {
        let names: Vec<&str> = self.config.topics.iter().map(String::as_str).collect();
        let metadata = self
            .client
            .refresh_metadata(Some(&names))
            .await
            .map_err(|e| self.group_error("reading the co-partitioned source topics' partitions", e))?;
        let counts: Vec<(String, usize)> = self
            .config
            .topics
            .iter()
            .map(|topic| (topic.clone(), metadata.topics.get(topic).map_or(0, |t| t.partitions.len())))
            .collect();
        let first = counts.first().map(|(_, count)| *count);
        if counts.iter().any(|(_, count)| Some(*count) != first) {
            let listed: Vec<String> = counts.iter().map(|(topic, count)| format!("{topic}: {count}")).collect();
            return Err(SchedulerError::Config(format!(
                "co-partitioned source topics must have as many partitions each (partition p of every topic is one task); these have {}",
                listed.join(", ")
            )));
        }
        Ok(())
    }

    /// The process's transactional producer, `sluice-<group>-<instance>`: its InitProducerId
    /// fences an earlier producer of that id and aborts the transaction it left open.
    async fn start_producer(&self) -> Result<Producer, SchedulerError> {
        let Some(scale) = &self.config.scale else {
            return Err(SchedulerError::Config("a transactional producer outside scale-out mode".into()));
        };
        let instance = scale.instance.clone().unwrap_or_else(|| format!("{:016x}", self.checkpoint_id));
        let mut producer_config = ProducerConfig::default();
        producer_config.transactional_id = Some(format!("sluice-{}-{instance}", scale.group));
        producer_config.transaction_timeout = scale.transaction_timeout;
        Producer::new(self.client.clone(), producer_config)
            .await
            .map_err(|e| self.group_error("starting the transactional producer", e))
    }

    /// An intent left open (by the run before, or a batch that failed) is closed as not
    /// committed: its transaction is over (the new producer aborted it, or it committed and the
    /// group's offsets say so), and its partitions may be another process's by now.
    /// In the same process (a run that failed or was dropped part way), its transaction, if
    /// still open, is aborted, and where its partitions go on is read again from the group: the
    /// transaction may have committed before the failure.
    async fn close_open_intent(&mut self) -> Result<(), SchedulerError> {
        let Some(intent) = self.pending.clone() else { return Ok(()) };
        tracing::info!(
            batch_id = intent.batch_id,
            "closing the batch left open: in scale-out mode the group's offsets say where to go on"
        );
        self.prefetched = None;
        if let Some(scale) = self.scale.as_mut() {
            // The earlier batches of its transaction, if it spanned batches, are undone too.
            let spanned = scale.open.take().map(|open| open.partitions()).unwrap_or_default();
            scale.end_next = false;
            scale.prepared().await;
            // Not open (never begun, or ended before the failure) is fine too: that refusal is
            // the producer's own, made without asking the cluster.
            if let Err(error) = scale.producer.abort_transaction().await {
                tracing::debug!(batch_id = intent.batch_id, %error, "aborting the open batch's transaction");
            }
            let keys = intent.ranges.iter().map(|r| (r.topic.clone(), r.partition)).chain(spanned);
            scale.look_up_again(keys, &mut self.positions);
        }
        let output = BatchOutput { sink_markers: NOT_COMMITTED.to_vec(), ..BatchOutput::default() };
        self.write_commit(intent.batch_id, &[], output).await
    }

    /// Takes in the group's changes since the last batch; true if the partitions changed.
    pub(super) async fn take_group_changes(&mut self, batch_id: u64) -> Result<bool, SchedulerError> {
        self.close_open_intent().await?;
        let Some(scale) = self.scale.as_mut() else { return Ok(false) };
        if scale.open.is_some() {
            // A transaction spanning batches holds changes of the partitions the group may
            // take away: it ends with the next batch before any change is taken in.
            scale.end_next |= scale.member.has_event();
            return Ok(false);
        }
        // Before the events: a loss counted from here on happened after these positions.
        scale.losses_at_plan = scale.member.losses();
        let mut changed = false;
        let mut failed = None;
        while let Some(event) = scale.member.try_event() {
            changed = true;
            // Before any await: a batch read ahead may hold partitions given up now.
            self.prefetched = None;
            match event {
                Ok(MemberEvent::Assigned(partitions)) => {
                    tracing::info!(batch_id, ?partitions, "partitions assigned");
                    let gained = scale.with_followers(&partitions);
                    scale.gained.extend(gained);
                }
                Ok(MemberEvent::Revoked(partitions)) => {
                    tracing::info!(batch_id, ?partitions, "partitions revoked: released");
                    let gone = scale.with_followers(&partitions);
                    scale.forget(&gone, &mut self.positions, &mut self.known_high_watermarks);
                    scale.member.released(&partitions);
                }
                Ok(MemberEvent::Lost(partitions)) => {
                    tracing::warn!(batch_id, ?partitions, "partitions lost: the group dropped this process");
                    let gone = scale.with_followers(&partitions);
                    scale.forget(&gone, &mut self.positions, &mut self.known_high_watermarks);
                }
                Ok(other) => tracing::debug!(batch_id, ?other, "group event"),
                Err(error) => {
                    failed = Some(error);
                    break;
                }
            }
        }
        if let Some(error) = failed {
            return Err(self.group_error("staying in the group", error));
        }
        let gained = self.scale.as_ref().map(|s| s.gained.clone()).unwrap_or_default();
        if !gained.is_empty() {
            self.check_followers_have(&gained).await?;
            let (positions, fresh) = self.group_positions(batch_id, &gained).await?;
            self.positions.extend(positions);
            if let Some(scale) = self.scale.as_mut() {
                scale.gained.clear();
                // An internal topic's partition without an offset is read from its start, as
                // the source's would be from where the job's starting offsets say: not fresh.
                let fresh_source: Vec<TopicPartition> =
                    fresh.iter().filter(|p| !scale.is_internal(p)).cloned().collect();
                for partition in &fresh_source {
                    if !scale.changes.fresh.contains(partition) {
                        scale.changes.fresh.push(partition.clone());
                    }
                }
                scale.uncommitted.extend(fresh);
                for partition in gained {
                    if !scale.changes.gained.contains(&partition) {
                        scale.changes.gained.push(partition);
                    }
                }
            }
        }
        Ok(changed)
    }

    /// Refuses a gained partition of a topic that goes with the group's (a co-partitioned source,
    /// an internal topic) that the topic does not have: the first source topic gained
    /// partitions while the job ran.
    async fn check_followers_have(&self, gained: &[TopicPartition]) -> Result<(), SchedulerError> {
        let Some(scale) = self.scale.as_ref() else { return Ok(()) };
        let wanted: Vec<&TopicPartition> = gained.iter().filter(|(topic, _)| scale.followers.contains(topic)).collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = scale.followers.iter().map(String::as_str).collect();
        let metadata = self
            .client
            .refresh_metadata(Some(&names))
            .await
            .map_err(|e| self.group_error("reading the partitions of the topics that go with the group's", e))?;
        let first = self.config.topics.first().map(String::as_str).unwrap_or_default();
        for (topic, partition) in wanted {
            // A topic the broker asked does not list yet (an internal topic just made) is not
            // judged: its partitions are looked up later like any other's.
            let listed = metadata.topics.get(topic).filter(|t| t.error == ErrorCode::None && !t.partitions.is_empty());
            let Some(has) = listed.map(|t| t.partitions.len()) else { continue };
            if usize::try_from(*partition).is_ok_and(|p| p < has) {
                continue;
            }
            return Err(SchedulerError::Config(format!(
                "partition {partition} of {first} was given to this process, but {topic} has {has} partitions: {first} gained partitions while the job ran. A job whose topics go together (co-partitioned sources, and a job with state or a repartition, whose internal topics go with its source) keeps partition p of each of them in one task, so its topics cannot grow while it runs (keys would move between tasks): stop the job's processes, and start it anew under another group once its source topics have as many partitions each (its internal topics are then made with the new count)"
            )));
        }
        Ok(())
    }

    /// The changes the processor has not been told of yet (empty outside scale-out mode).
    pub(super) fn take_partition_changes(&mut self) -> PartitionChanges {
        self.scale.as_mut().map(|scale| std::mem::take(&mut scale.changes)).unwrap_or_default()
    }

    /// Where `partitions` start: the group's committed offsets, read as stable (a transaction
    /// still deciding them, a previous owner's, is waited out), or `starting_offsets` where the
    /// group has none (those are also returned on their own); retried through transient faults
    /// for `fault_timeout`.
    async fn group_positions(
        &self,
        batch_id: u64,
        partitions: &[TopicPartition],
    ) -> Result<(BTreeMap<TopicPartition, i64>, Vec<TopicPartition>), SchedulerError> {
        let group = self.config.scale.as_ref().map(|s| s.group.as_str()).unwrap_or_default();
        let deadline = Instant::now() + self.config.fault_timeout;
        let mut backoff = FIRST_FAULT_BACKOFF;
        loop {
            let looked_up = async {
                let committed = self.client.stable_group_offsets(group, partitions).await?;
                let (mut positions, fresh): (BTreeMap<TopicPartition, i64>, Vec<TopicPartition>) = (
                    committed.iter().filter_map(|(p, offset)| Some((p.clone(), (*offset)?))).collect(),
                    partitions.iter().filter(|p| !matches!(committed.get(*p), Some(Some(_)))).cloned().collect(),
                );
                let internal = self.config.scale.as_ref().map(|s| s.internal_topics.as_slice()).unwrap_or_default();
                let (fresh_internal, fresh_source): (Vec<TopicPartition>, Vec<TopicPartition>) =
                    fresh.iter().cloned().partition(|(topic, _)| internal.contains(topic));
                if !fresh_source.is_empty() {
                    // `starting_offsets` is where the job starts; once the group has offsets of
                    // its topics, a partition without any (added since, or whose first owner died
                    // before its first commit) holds records new to the job: from its start.
                    let job_started = self
                        .client
                        .group_offsets(group)
                        .await?
                        .keys()
                        .any(|(topic, _)| self.config.topics.contains(topic));
                    positions.extend(self.starting_positions(&fresh_source, !job_started).await?);
                }
                if !fresh_internal.is_empty() {
                    // All the job's own: from the start.
                    positions.extend(self.client.list_offsets(&fresh_internal, OffsetSpec::Earliest).await?);
                }
                Ok::<_, Error>((positions, fresh))
            };
            match looked_up.await {
                Ok(positions) => return Ok(positions),
                Err(error) if error.is_retriable() && Instant::now() + backoff < deadline => {
                    tracing::warn!(batch_id, %error, retry_in = ?backoff, "looking up where gained partitions start failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_FAULT_BACKOFF);
                }
                Err(source) => return Err(SchedulerError::Planning { batch_id, source }),
            }
        }
    }

    /// Whether the batch planned with `ranges` (and `latest`, the partitions' ends), which
    /// `begin_batch_transaction` began or went on with, may leave its transaction open for the
    /// next: only if the process is behind and nothing asks for a commit (a change of the group,
    /// a stop, a bounded run). Whether it does is decided later, from the batch's own time
    /// ([`TransactionEnd`]). `started`: when the batch started.
    pub(super) fn transaction_end(&self, ranges: &[OffsetRange], latest: &[i64], started: Instant) -> TransactionEnd {
        let (Some(scale), Some(config)) = (&self.scale, &self.config.scale) else { return TransactionEnd::ends() };
        let Some(open) = &scale.open else { return TransactionEnd::ends() };
        let interval = config.commit_interval.min(config.transaction_timeout / 2);
        let bounded = self.config.ending_offsets.is_some() || self.config.trigger == crate::trigger::Trigger::Once;
        if interval.is_zero() || bounded || scale.end_next || self.stop.is_cancelled() || scale.member.has_event() {
            return TransactionEnd::ends();
        }
        if self.reached_end(ranges, latest) {
            return TransactionEnd::ends();
        }
        let last = self
            .progress
            .back()
            .filter(|p| p.num_input_rows > 0)
            .map(|p| std::time::Duration::from_millis(p.durations.total_ms));
        let trigger = match self.config.trigger {
            crate::trigger::Trigger::ProcessingTime(interval) => interval,
            _ => std::time::Duration::ZERO,
        };
        let share = self.cut_by_budget.unwrap_or(1.0).clamp(0.0, 1.0);
        TransactionEnd::deciding(GoOn {
            stop: self.stop.clone(),
            interval,
            began: open.began,
            started,
            next_due: std::time::Duration::try_from_secs_f64(trigger.as_secs_f64() * share).unwrap_or(trigger),
            last,
        })
    }

    /// Whether a transaction is under way (it may span batches).
    pub(super) fn transaction_open(&self) -> bool {
        self.scale.as_ref().is_some_and(|scale| scale.open.is_some())
    }

    /// Begins the batch's transaction if the batch has ranges, or goes on with the one the
    /// batch before left open, and sends the offsets it would commit (the ends of its batches'
    /// ranges so far) on a task of its own, while the batch runs (a batch that moves no offset
    /// leaves them to the commit).
    pub(super) async fn begin_batch_transaction(
        &mut self,
        ranges: &[OffsetRange],
    ) -> Result<Option<Arc<Producer>>, SchedulerError> {
        let Some(scale) = &self.scale else { return Ok(None) };
        let producer = Arc::clone(&scale.producer);
        let begins = scale.open.is_none();
        if begins {
            // Nothing to read, nothing to write, no offset that moves (but a partition whose
            // position the group does not hold yet gets it committed, and a processor may ask
            // for a transaction every batch).
            let fresh = ranges.iter().any(|r| scale.uncommitted.contains(&(r.topic.clone(), r.partition)));
            let every_batch = self.config.scale.as_ref().is_some_and(|s| s.transaction_every_batch);
            let idle = if every_batch { ranges.is_empty() } else { ranges.iter().all(OffsetRange::is_empty) };
            // The group's coordinator deletes the offsets of topics the group is not subscribed
            // to (the followers) once they are older than `offsets.retention.minutes`, even
            // while the group is active: an idle process commits them again now and then.
            let refresh = !scale.followers.is_empty() && scale.last_commit.elapsed() >= OFFSETS_REFRESH;
            if idle && !fresh && !refresh {
                return Ok(None);
            }
            let losses = scale.losses_at_plan;
            producer.begin_transaction().await.map_err(|e| self.group_error("beginning the batch's transaction", e))?;
            if let Some(scale) = self.scale.as_mut() {
                scale.open = Some(OpenTransaction::new(losses));
            }
        }
        let Some(scale) = self.scale.as_mut() else { return Ok(None) };
        let Some(open) = scale.open.as_mut() else { return Ok(None) };
        open.add(ranges);
        if ranges.iter().all(OffsetRange::is_empty) {
            // A batch that moves no offset (an idle stateful job runs a transaction every
            // batch) does not send the offsets early: they would be pending in the group for
            // nearly all of the time, so a new owner's stable read of them waits, and a crash
            // leaves them pending until the transaction times out. Only the group's offsets
            // join a transaction it begins; its commit sends them. A batch that goes on with an
            // open transaction keeps what the batches before it sent.
            if begins {
                let (preparing, group_id) = (Arc::clone(&producer), scale.member.group_metadata().group_id);
                scale.preparing = Some(tokio::spawn(async move {
                    if let Err(error) = preparing.prepare_transaction(&[], Some(&group_id)).await {
                        tracing::debug!(%error, "adding the group's offsets to the batch's transaction failed; its commit adds them again");
                    }
                    None
                }));
            }
            return Ok(Some(producer));
        }
        // The coordinator is often still completing the previous transaction: the group's
        // offsets (every transaction commits them) join this one while the batch is read and
        // processed, and the batch's sends find the coordinator done. The offsets go now too,
        // under the member's metadata as it is now (see `commit_batch_transaction` for why
        // that is safe): the group's coordinator takes 20-60 ms to check them with the
        // transaction's, not on the batch's path. Whether this batch ends the transaction is
        // decided later, so each batch of a transaction sends them: the last one's commit.
        let (preparing, metadata) = (Arc::clone(&producer), scale.member.group_metadata());
        let offsets = open.offsets();
        let before = scale.preparing.take();
        scale.preparing = Some(tokio::spawn(async move {
            // What an earlier batch of the transaction sent comes first.
            if let Some(before) = before {
                drop(before.await);
            }
            // Sending the offsets adds the group's offsets (AddOffsetsToTxn) first.
            match preparing.send_offsets_to_transaction(&offsets, &metadata).await {
                Ok(()) => Some(metadata),
                Err(error) => {
                    tracing::debug!(%error, "sending the batch's offsets to its transaction failed; its commit sends them again");
                    None
                }
            }
        }));
        Ok(Some(producer))
    }

    /// Aborts the batch's transaction after a failure (the failure is what is reported; the
    /// run ends, and the next one takes its partitions from the group again).
    pub(super) async fn abort_after_failure(&mut self, batch_id: u64) {
        if let Some(scale) = self.scale.as_mut() {
            scale.open = None;
            scale.end_next = false;
            scale.prepared().await;
            if let Err(error) = scale.producer.abort_transaction().await {
                tracing::warn!(batch_id, %error, "aborting the failed batch's transaction failed too");
            }
        }
    }

    /// Commits the transaction the batch ends with the end offsets of its batches' ranges under
    /// the member's current group metadata. `Ok(false)`: the group refused (or the commit
    /// failed) and the transaction was aborted; the positions of its batches' partitions are
    /// read again from the group.
    pub(super) async fn commit_batch_transaction(&mut self, batch_id: u64) -> Result<bool, SchedulerError> {
        let Some(scale) = self.scale.as_mut() else { return Ok(true) };
        // Kept open until the end is known: a run dropped part way closes the batch's intent at
        // its next start, and must find every partition of the transaction's batches then.
        let Some(open) = scale.open.as_ref() else { return Ok(true) };
        let (losses_at_begin, offsets, partitions) = (open.losses_at_begin, open.offsets(), open.partitions());
        // The offsets went when the batch began, under the metadata the member had then. That
        // is as safe as sending them now: the group's coordinator checks the metadata when the
        // offsets arrive, and from then on a process the group gives the partitions to waits
        // for this transaction to end before it reads where they start (the group's offsets
        // read as stable), so it goes on from what this transaction commits, or from before
        // it if it aborts. A member already dropped when they arrived is refused, as at the
        // commit. They go again below only if the metadata moved since.
        let mut sent = scale.prepared().await;
        let mut retried = false;
        let refused = loop {
            // Read now: a KIP-848 member's epoch moves with every change of its assignment. Then
            // the loss count: metadata from after a loss (the member fenced and back) must not
            // commit a batch begun before it, whose partitions may have had another owner since.
            let metadata = scale.member.group_metadata();
            let kept = scale.member.losses() == losses_at_begin && owns_all(&scale.owned(), &partitions);
            if !kept {
                break Some("the member lost partitions of the transaction's batches while they ran".to_owned());
            }
            let offsets_sent = async {
                match sent.take() {
                    Some(sent) if sent == metadata => Ok(()),
                    _ => scale.producer.send_offsets_to_transaction(&offsets, &metadata).await,
                }
            };
            match offsets_sent.await {
                // The epoch moved while the batch ran (the member gained partitions, say): once
                // more with the new one.
                Err(error) if !retried && epoch_moved(&error) => {
                    tracing::info!(batch_id, %error, "the member's epoch moved during the batch; sending the offsets again");
                    retried = true;
                }
                Ok(()) => break scale.producer.commit_transaction().await.err().map(|e| e.to_string()),
                Err(error) => break Some(error.to_string()),
            }
        };
        scale.end_next = false;
        if refused.is_none() {
            scale.open = None;
        }
        let Some(reason) = refused else {
            scale.not_committed_in_a_row = 0;
            scale.last_commit = Instant::now();
            for partition in &partitions {
                scale.uncommitted.remove(partition);
            }
            return Ok(true);
        };
        scale.not_committed_in_a_row += 1;
        if scale.not_committed_in_a_row >= MAX_NOT_COMMITTED_IN_A_ROW {
            // Not the group moving (that settles within a batch or two) but a failure that comes
            // back: a record the cluster refuses, an authorization, batches that always outlive
            // the transaction timeout.
            if let Err(error) = scale.producer.abort_transaction().await {
                tracing::warn!(batch_id, %error, "aborting the last refused transaction");
            }
            scale.open = None;
            let reason = format!("{MAX_NOT_COMMITTED_IN_A_ROW} batches in a row did not commit; the last: {reason}");
            return Err(SchedulerError::Processing { batch_id, source: reason.into() });
        }
        tracing::warn!(batch_id, %reason, "the batch's transaction did not commit: aborting it; its partitions go on from the group's offsets");
        // Nothing planned from this batch's ends may run.
        self.prefetched = None;
        let Some(scale) = self.scale.as_mut() else { return Ok(false) };
        if let Err(error) = scale.producer.abort_transaction().await {
            // The broker ended the transaction itself (it outlived `transaction_timeout`, and
            // the producer's epoch was bumped): a new producer of the same id starts afresh.
            tracing::warn!(batch_id, %error, "aborting the refused transaction failed: starting the producer again");
            let producer = self.start_producer().await?;
            if let Some(scale) = self.scale.as_mut() {
                scale.producer = Arc::new(producer);
            }
        }
        let Some(scale) = self.scale.as_mut() else { return Ok(false) };
        scale.open = None;
        scale.look_up_again(partitions, &mut self.positions);
        Ok(false)
    }

    /// Leaves the group when a run ends (aborting a transaction a failed batch left open, so that
    /// readers are not held up until it times out) and drops the producer.
    pub(super) async fn leave_group(&mut self) {
        if let Some(mut scale) = self.scale.take() {
            scale.prepared().await;
            if scale.open.is_some() {
                if let Err(error) = scale.producer.abort_transaction().await {
                    tracing::debug!(%error, "aborting the open batch's transaction before leaving");
                }
            }
            if let Err(error) = scale.member.leave().await {
                tracing::warn!(%error, "leaving the job's group failed; the group drops this process when its session ends");
            }
        }
    }
}

/// Batches in a row that may fail to commit before the run fails.
const MAX_NOT_COMMITTED_IN_A_ROW: u32 = 10;

/// How often an idle process commits the offsets of the topics that go with the group's (their
/// offsets expire after `offsets.retention.minutes` of no commit, 7 days by default, as the
/// group is not subscribed to them).
const OFFSETS_REFRESH: std::time::Duration = std::time::Duration::from_secs(3600);

/// How long a process that has just joined waits for its first partitions before its first batch
/// (a batch planned before them would be empty, and the next one a whole interval later).
const FIRST_ASSIGNMENT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The partitions of the member's first assignment, if it comes within `wait` (none when the
/// group gives this member nothing yet: the others have not released any).
async fn first_assignment(member: &mut ConsumerGroupMember, wait: std::time::Duration) -> Vec<TopicPartition> {
    match tokio::time::timeout(wait, member.next_event()).await {
        Ok(Ok(MemberEvent::Assigned(partitions))) => partitions,
        // A member that owns nothing yet loses nothing; a refusal comes again with the next event.
        Ok(Ok(other)) => {
            tracing::debug!(?other, "first group event");
            Vec::new()
        }
        Ok(Err(error)) => {
            tracing::debug!(%error, "the member stopped before its first assignment");
            Vec::new()
        }
        Err(_) => Vec::new(),
    }
}

/// Whether a transaction's offsets were refused for an epoch or generation that is no longer
/// the member's (KIP-848 answers STALE_MEMBER_EPOCH, turned into ILLEGAL_GENERATION for
/// transactions).
fn epoch_moved(error: &Error) -> bool {
    matches!(
        error,
        Error::Broker { code: ErrorCode::IllegalGeneration | ErrorCode::StaleMemberEpoch, .. }
            | Error::BrokerMessage { code: ErrorCode::IllegalGeneration | ErrorCode::StaleMemberEpoch, .. }
    )
}

fn owns_all(owned: &[TopicPartition], partitions: &[TopicPartition]) -> bool {
    partitions.iter().all(|partition| owned.contains(partition))
}
