//! Scale-out mode: each stateful operator keeps its state per task (a partition of the source
//! topic) and writes its changes to a compacted changelog topic,
//! `<group>-<operator>-changelog`, partitioned like the source: one record per changed key, on
//! the partition of the key's task, in the batch's transaction (so a change is in the changelog
//! exactly when the batch's offsets are committed). A transaction spanning batches (while the
//! process catches up) gets them in the batch that ends it, each key's last value once. A task this process takes on is restored
//! from its changelog partition before the batch that reads it, read `read_committed` up to the
//! partition's high watermark as it was when the restore began: a previous owner's transaction
//! still open is waited out, as Kafka Streams does.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_client::{Client, Consumer, ConsumerConfig, Error, Isolation, OffsetReset, ProducerRecord, StartAt};
use sluice_protocol::error_code::ErrorCode;
use sluice_scheduler::PartitionChanges;

use crate::context::{off_workers, wall_ms};
use crate::local_copy::{LocalCopies, TopicId};
use crate::standby::{Standbys, TaskCopy};
use crate::state::{JobState, TaskChange};
use crate::BoxError;

/// How long a restore may go without reading anything before the run fails: a previous
/// owner's open transaction holds it for up to its transaction timeout (plus the broker's abort
/// sweep), and transient faults are retried meanwhile. A restore that reads goes on however long
/// its changelog takes.
const RESTORE_STALL_TIMEOUT: Duration = Duration::from_secs(300);

/// How long a process waits for an internal topic (a changelog or repartition topic) another
/// process has just created to appear in the cluster's metadata.
const TOPIC_APPEARS_TIMEOUT: Duration = Duration::from_secs(30);

/// The job's changelog topics, one per stateful operator.
#[derive(Debug)]
pub(crate) struct Changelogs {
    client: Client,
    /// The source topic: a task is one of its partitions.
    source: String,
    /// Its partitions when the job started, and each changelog's: a task past them has none.
    partitions: i32,
    /// Each stateful operator's changelog topic, in the operators' order.
    topics: Arc<[String]>,
    counters: RestoreCounters,
    /// Warm copies of other processes' tasks ([`StreamConfig::standby_replicas`](crate::StreamConfig)).
    standbys: Option<Standbys>,
    /// The local checkpoint's copies of the tasks (a restarted process's fast path).
    local: LocalCopies,
}

/// What a restore read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Restored {
    /// Changelog records read.
    pub(crate) records: u64,
    /// Their keys' and values' bytes.
    pub(crate) bytes: u64,
    /// Keys taken from standby copies.
    pub(crate) from_copies: u64,
    /// Tasks restored from a standby copy.
    pub(crate) copies: u64,
    /// Keys taken from the local checkpoint's copies.
    pub(crate) from_local: u64,
    /// Tasks restored from the local checkpoint's copy.
    pub(crate) local: u64,
}

/// Counters of the state this process restored from changelogs in scale-out mode
/// ([`StreamingContext::restore_counters`](crate::StreamingContext::restore_counters)).
#[derive(Debug, Clone, Default)]
pub struct RestoreCounters {
    /// Tasks restored: taken on, or rebuilt after a batch that did not commit.
    pub tasks: Arc<AtomicU64>,
    /// Changelog records read.
    pub records: Arc<AtomicU64>,
    /// Their keys' and values' bytes.
    pub bytes: Arc<AtomicU64>,
    /// Time spent restoring, in microseconds (the next batch waits for it).
    pub micros: Arc<AtomicU64>,
    /// Keys taken from standby copies instead of read from the changelogs (`records` then
    /// counts only what the changelogs held after the copies).
    pub standby_records: Arc<AtomicU64>,
    /// Tasks restored from a standby copy (counted in `tasks` too).
    pub standby_tasks: Arc<AtomicU64>,
    /// Keys taken from the copies in this process's own checkpoint, written before it
    /// restarted (`records` then counts only what the changelogs held after them).
    pub local_records: Arc<AtomicU64>,
    /// Tasks restored from a copy in this process's own checkpoint (counted in `tasks` too).
    pub local_tasks: Arc<AtomicU64>,
}

impl Changelogs {
    /// Creates the changelog topics of `state`'s operators for the job of `group` reading
    /// `source` (compacted, as many partitions as the source, replicated on up to three
    /// brokers), or finds them from an earlier run; a topic with another partition count is an
    /// error (the source grew: its tasks no longer match). With `standby_replicas`, starts
    /// keeping copies of other processes' tasks.
    pub(crate) async fn open(
        client: Client,
        (group, source): (&str, &str),
        state: &JobState,
        (counters, standby_replicas): (RestoreCounters, usize),
    ) -> Result<Self, BoxError> {
        let topics: Vec<String> =
            state.operator_names().into_iter().map(|name| format!("{group}-{name}-changelog")).collect();
        let partitions = create_internal_topics(&client, source, &topics, &[("cleanup.policy", "compact")]).await?;
        // Their ids tell a copy in the local checkpoint whether its changelogs were made again.
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let metadata = client.refresh_metadata(Some(&names)).await?;
        let topic_ids: Vec<TopicId> =
            topics.iter().map(|topic| metadata.topics.get(topic).map_or([0; 16], |t| t.topic_id.0)).collect();
        let standbys = (standby_replicas > 0)
            .then(|| Standbys::start(client.clone(), (group, source), topics.clone(), standby_replicas));
        let local = LocalCopies::new(topic_ids);
        Ok(Self { client, source: source.to_owned(), partitions, topics: topics.into(), counters, standbys, local })
    }

    /// Holds the copies of the tasks the local checkpoint recovered (its `snapshot` and the
    /// `deltas` after it), for the restores of the tasks the group gives this process.
    pub(crate) fn hold_local_copies(&mut self, snapshot: Option<&(u64, Vec<u8>)>, deltas: &[(u64, Vec<u8>)]) {
        self.local.hold(snapshot, deltas, wall_ms());
    }

    /// Tells the standby placement which member of the group this process is.
    pub(crate) fn set_member(&self, member_id: Option<&str>) {
        if let (Some(standbys), Some(member_id)) = (&self.standbys, member_id) {
            standbys.set_member(member_id);
        }
    }

    /// Ends a transaction: sends the state changes since the last one, as changelog records,
    /// in `transaction`, and waits for them to land; returns what the local checkpoint keeps
    /// with the batch's commit (the changes and where they landed) and, every `snapshot_every`
    /// transactions, the snapshot of the tasks' copies. Encoding many keys' states is CPU work:
    /// off the async workers (keyed state spreads it over the compute pool). The whole state of
    /// the tasks the local copy needs whole (taken on since, or all at a snapshot) is encoded
    /// while the changes are sent and the cluster writes them.
    pub(crate) async fn end_transaction(
        &mut self,
        state: &JobState,
        transaction: Option<&sluice_client::Producer>,
        snapshot_every: u64,
    ) -> Result<(Vec<u8>, Option<Vec<u8>>), BoxError> {
        let (taking, topics) = (state.clone(), Arc::clone(&self.topics));
        // One timestamp for the batch's changes, not a clock read per record.
        let now = wall_ms();
        let (changes, records) = off_workers(move || {
            let changes = taking.take_task_changes()?;
            let records = changes
                .iter()
                .map(|(operator, TaskChange { task, key, value })| {
                    let topic = topics
                        .get(*operator)
                        .ok_or_else(|| format!("no changelog for stateful operator {operator}"))?;
                    Ok(ProducerRecord {
                        topic: topic.clone(),
                        partition: Some(*task),
                        key: Some(key.clone()),
                        value: value.clone(),
                        timestamp: Some(now),
                        ..ProducerRecord::default()
                    })
                })
                .collect::<Result<Vec<_>, BoxError>>()?;
            Ok::<_, BoxError>((changes, records))
        })
        .await??;
        // After the changes were taken (the whole state holds no removed key), and while they
        // are sent.
        let (entries, wanted) = (state.clone(), self.local.wanted_whole(snapshot_every));
        let whole = off_workers(move || if wanted.is_empty() { Ok(Vec::new()) } else { entries.task_entries(&wanted) });
        // Where each task's last record of each operator landed (the commit waits for every
        // send anyway).
        let mut landed: BTreeMap<(usize, i32), Option<i64>> = BTreeMap::new();
        let sent = async {
            if !records.is_empty() {
                let producer = transaction.ok_or("the batch changed state but has no transaction")?;
                let deliveries = producer.send_all(records).await?;
                for ((operator, change), delivery) in changes.iter().zip(deliveries) {
                    let offset = Some(delivery.await?.offset).filter(|offset| *offset >= 0);
                    let at = landed.entry((*operator, change.task)).or_insert(offset);
                    *at = at.zip(offset).map(|(a, b)| a.max(b));
                }
            }
            Ok::<_, BoxError>(())
        };
        let (sent, whole) = tokio::join!(sent, whole);
        sent?;
        let whole = whole??;
        self.local.sent(&landed);
        let mut local = std::mem::take(&mut self.local);
        let (local, written) = off_workers(move || {
            let written = local.end_transaction(&changes, &whole, (now, snapshot_every));
            (local, written)
        })
        .await?;
        self.local = local;
        Ok((written.delta, written.snapshot))
    }

    /// Takes in the change of the process's partitions: drops the state of tasks lost and of
    /// those to rebuild, then restores the gained tasks from their changelog partitions. A
    /// gained partition the group held no offset for must have no state: it starts over from
    /// `starting_offsets`, and state kept for it was built from records it would read again.
    pub(crate) async fn apply(&mut self, state: &JobState, changes: &PartitionChanges) -> Result<Restored, BoxError> {
        let of_source = |partitions: &[(String, i32)]| -> BTreeSet<i32> {
            partitions.iter().filter(|(topic, _)| *topic == self.source).map(|(_, p)| *p).collect()
        };
        let gained = of_source(&changes.gained);
        let lost = of_source(&changes.lost);
        if let Some(task) = gained.iter().find(|task| **task >= self.partitions) {
            return Err(grown(&self.source, *task, self.partitions).into());
        }
        let dropped: BTreeSet<i32> = lost.union(&gained).copied().collect();
        state.drop_tasks(&dropped);
        let mut copies = self.standbys.as_ref().map(|s| s.take_on(&gained, &lost)).unwrap_or_default();
        // The local checkpoint's copy of a task, unless a standby copy is further on.
        let mut local_tasks = BTreeSet::new();
        for (task, copy) in self.local.take_for(&gained, wall_ms()) {
            let further = |copy: &TaskCopy| copy.positions.iter().sum::<i64>();
            if copies.get(&task).is_none_or(|standby| further(standby) < further(&copy)) {
                copies.insert(task, copy);
                local_tasks.insert(task);
            }
        }
        if gained.is_empty() {
            self.local.tasks_changed(&lost, BTreeMap::new());
            return Ok(Restored::default());
        }
        let started = Instant::now();
        let (mut restored, by_task, done) = self.restore_through_faults(state, &gained, &copies).await?;
        // Of the copies used, the local ones' counts.
        for task in done.copied.intersection(&local_tasks) {
            let keys = copies.get(task).map_or(0, |copy| copy.entries.iter().map(|e| e.len() as u64).sum());
            restored.local += 1;
            restored.from_local += keys;
            restored.copies -= 1;
            restored.from_copies -= keys;
        }
        self.local.tasks_changed(&lost, done.positions);
        // Any source topic's partition (co-partitioned ones go with the first's) started afresh.
        let fresh: BTreeSet<i32> = changes.fresh.iter().map(|(_, p)| *p).collect();
        let stale: Vec<(i32, u64)> =
            by_task.into_iter().filter(|(task, records)| fresh.contains(task) && *records > 0).collect();
        if !stale.is_empty() {
            let without: Vec<String> = changes
                .fresh
                .iter()
                .filter(|(_, p)| stale.iter().any(|(task, _)| task == p))
                .map(|(topic, p)| format!("{topic}-{p}"))
                .collect();
            return Err(format!(
                "the group holds no offset for {} while the changelogs of their tasks hold state (task, records): {stale:?}; that state was built from records these partitions would be read from again (their offsets expired or were reset, or a source topic was added to a job with state). Delete the job's changelog topics ({}) to start its state over, or give the group its offsets back",
                without.join(", "),
                self.topics.join(", ")
            )
            .into());
        }
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.counters.tasks.fetch_add(gained.len() as u64, Ordering::Relaxed);
        self.counters.records.fetch_add(restored.records, Ordering::Relaxed);
        self.counters.bytes.fetch_add(restored.bytes, Ordering::Relaxed);
        self.counters.micros.fetch_add(micros, Ordering::Relaxed);
        self.counters.standby_records.fetch_add(restored.from_copies, Ordering::Relaxed);
        self.counters.standby_tasks.fetch_add(restored.copies, Ordering::Relaxed);
        self.counters.local_records.fetch_add(restored.from_local, Ordering::Relaxed);
        self.counters.local_tasks.fetch_add(restored.local, Ordering::Relaxed);
        tracing::info!(
            tasks = ?gained,
            records = restored.records,
            bytes = restored.bytes,
            standby_tasks = restored.copies,
            from_standby_copies = restored.from_copies,
            local_tasks = restored.local,
            from_local_copies = restored.from_local,
            ms = started.elapsed().as_millis() as u64,
            "restored the state of the tasks taken on from their changelogs"
        );
        Ok(restored)
    }

    /// [`Changelogs::restore`], started again (the tasks' state dropped first) after a transient
    /// fault (a leader moving, a broker restarting), until it has gone `RESTORE_STALL_TIMEOUT`
    /// without reading.
    async fn restore_through_faults(
        &self,
        state: &JobState,
        tasks: &BTreeSet<i32>,
        copies: &BTreeMap<i32, TaskCopy>,
    ) -> Result<(Restored, BTreeMap<i32, u64>, RestoreDone), BoxError> {
        let mut backoff = Duration::from_millis(100);
        let mut last_progress = Instant::now();
        loop {
            let mut progress = Restored::default();
            match self.restore(state, (tasks, copies), &mut progress).await {
                Ok(done) => return Ok(done),
                Err(error) if retriable(&error) && last_progress.elapsed() < RESTORE_STALL_TIMEOUT => {
                    tracing::warn!(%error, retry_in = ?backoff, "restoring the state from the changelogs failed; starting over");
                    if progress.records > 0 {
                        last_progress = Instant::now();
                    }
                    state.drop_tasks(tasks);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Reads the changelog partitions of `tasks` from their start to their high watermarks as
    /// they are now, `read_committed`, into `state`; with the records read per task (keys of
    /// copies included), and where each task's state stands. A task with a copy in `copies` (a
    /// standby's or the local checkpoint's) starts from the copy's keys and reads only after its
    /// positions. `progress` counts what was read, also when it fails part way.
    async fn restore(
        &self,
        state: &JobState,
        (tasks, copies): (&BTreeSet<i32>, &BTreeMap<i32, TaskCopy>),
        progress: &mut Restored,
    ) -> Result<(Restored, BTreeMap<i32, u64>, RestoreDone), BoxError> {
        let partitions: Vec<(String, i32)> =
            self.topics.iter().flat_map(|topic| tasks.iter().map(move |task| (topic.clone(), *task))).collect();
        let ends = self.client.log_ends(&partitions, Isolation::ReadUncommitted).await?;
        let end_of = |topic: &String, task: i32| ends.get(&(topic.clone(), task)).copied().unwrap_or(0);
        let mut by_task: BTreeMap<i32, u64> = BTreeMap::new();
        let mut done = RestoreDone {
            copied: BTreeSet::new(),
            positions: tasks
                .iter()
                .map(|task| (*task, self.topics.iter().map(|topic| end_of(topic, *task)).collect()))
                .collect(),
        };
        // Where a copied task's partitions are read from: after its copy's position (the others
        // from their start).
        let mut starts: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for (task, copy) in copies.iter().filter(|(task, _)| tasks.contains(task)) {
            // A changelog that ends before the copy's position is not the one copied (the
            // topic was made again): the task is read from the start.
            if self.topics.iter().zip(&copy.positions).any(|(topic, position)| end_of(topic, *task) < *position) {
                tracing::warn!(
                    task,
                    "a copy of the task (a standby's or the checkpoint's) is ahead of its changelog's end; restoring the task from the start"
                );
                continue;
            }
            for ((operator, entries), topic) in copy.entries.iter().enumerate().zip(self.topics.iter()) {
                for (key, value) in entries {
                    state
                        .restore_task_entry(operator, *task, key, Some(value))
                        .map_err(|e| format!("restoring task {task} from its standby copy of {topic}: {e}"))?;
                }
                progress.from_copies += entries.len() as u64;
            }
            // As a restore from the start would have counted them (tombstones too).
            *by_task.entry(*task).or_default() += copy.records;
            progress.copies += 1;
            done.copied.insert(*task);
            for (topic, position) in self.topics.iter().zip(&copy.positions) {
                starts.insert((topic.clone(), *task), *position);
            }
        }
        let mut config = ConsumerConfig::default();
        config.isolation = Isolation::ReadCommitted;
        config.offset_reset = OffsetReset::Earliest;
        config.max_wait = Duration::from_millis(100);
        config.partition_max_bytes = 8 << 20;
        let mut consumer = Consumer::new(self.client.clone(), config);
        let mut left: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for (topic, task) in &partitions {
            let end = end_of(topic, *task);
            let start = starts.get(&(topic.clone(), *task)).copied();
            if end > start.unwrap_or(0) {
                consumer.assign(topic, *task, start.map_or(StartAt::Earliest, StartAt::Offset)).await?;
                left.insert((topic.clone(), *task), end);
            }
        }
        let operator_of: BTreeMap<&str, usize> = self.topics.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
        let mut last_read = Instant::now();
        loop {
            // Done with a partition once its position reaches the end it had (markers and
            // aborted records count: the position moves past them).
            left.retain(|(topic, task), end| {
                let done = consumer.partition_progress(topic, *task).is_some_and(|p| p.position >= *end);
                if done {
                    consumer.unassign(topic, *task);
                }
                !done
            });
            if left.is_empty() {
                return Ok((*progress, by_task, done));
            }
            if last_read.elapsed() > RESTORE_STALL_TIMEOUT {
                return Err(format!(
                    "restoring the state from the changelogs read nothing for {} s (an open transaction of a previous owner not ending?); still to read (partition, up to offset): {left:?}",
                    RESTORE_STALL_TIMEOUT.as_secs()
                )
                .into());
            }
            for polled in consumer.poll().await? {
                let Some(operator) = operator_of.get(polled.topic.as_str()).copied() else { continue };
                for record in polled.records() {
                    let Some(key) = record.key() else { continue };
                    let value = record.value();
                    last_read = Instant::now();
                    progress.records += 1;
                    progress.bytes += (key.len() + value.map_or(0, <[u8]>::len)) as u64;
                    *by_task.entry(polled.partition).or_default() += 1;
                    state.restore_task_entry(operator, polled.partition, key, value).map_err(|e| {
                        format!(
                            "restoring from {} partition {} at offset {}: {e}",
                            polled.topic,
                            polled.partition,
                            record.offset()
                        )
                    })?;
                }
            }
        }
    }
}

/// Where a restore left its tasks.
#[derive(Debug)]
pub(crate) struct RestoreDone {
    /// The tasks that started from a copy.
    copied: BTreeSet<i32>,
    /// Per task, per operator: the changelog offset its state reflects everything before (the
    /// partition's end when the restore began).
    positions: BTreeMap<i32, Vec<i64>>,
}

/// Why a task past the partitions the job started with is refused.
fn grown(source: &str, task: i32, partitions: i32) -> String {
    format!(
        "the source topic {source} gained partitions while the job ran: its partition {task} was given to this process, but the job started with {partitions} and its changelog topics have as many. A task is a source partition and each key's state lives in one, so a job with state cannot follow the source growing (its keys would move between tasks). Stop the job's processes and start the job anew under another group, whose internal topics are made with the new count"
    )
}

/// Whether a restore's failure is a transient fault of the cluster (worth starting over).
fn retriable(error: &BoxError) -> bool {
    error.downcast_ref::<Error>().is_some_and(Error::is_retriable)
}

/// Creates a scale-out job's internal `topics` (its changelogs or its repartition topics, with
/// `configs`) with as many partitions as `source` (a task is a source partition), replicated on
/// up to three brokers, or finds them from an earlier run (or another process starting at the
/// same time); one with another partition count is an error. Returns the partition count.
pub(crate) async fn create_internal_topics(
    client: &Client,
    source: &str,
    topics: &[String],
    configs: &[(&str, &str)],
) -> Result<i32, BoxError> {
    let metadata = client.refresh_metadata(Some(&[source])).await?;
    let partitions = metadata
        .topics
        .get(source)
        .filter(|t| t.error == ErrorCode::None && !t.partitions.is_empty())
        .map(|t| t.partitions.len())
        .ok_or_else(|| format!("the source topic {source} is not in the cluster's metadata"))?;
    let partitions = i32::try_from(partitions)?;
    let replication = i16::try_from(metadata.brokers.len().clamp(1, 3))?;
    let min_insync = if replication >= 3 { "2" } else { "1" };
    let configs: Vec<(String, String)> = configs
        .iter()
        .copied()
        .chain([("min.insync.replicas", min_insync)])
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    // Side by side: each waits until the cluster serves it, a few hundred milliseconds.
    let mut creating = tokio::task::JoinSet::new();
    for topic in topics {
        let (client, source, topic, configs) = (client.clone(), source.to_owned(), topic.clone(), configs.clone());
        creating.spawn(async move {
            create_internal_topic(&client, &source, &topic, (partitions, replication), &configs).await
        });
    }
    while let Some(created) = creating.join_next().await {
        created.map_err(|e| format!("creating the job's internal topics stopped: {e}"))??;
    }
    Ok(partitions)
}

/// [`create_internal_topics`] of one topic.
async fn create_internal_topic(
    client: &Client,
    source: &str,
    topic: &str,
    (partitions, replication): (i32, i16),
    configs: &[(String, String)],
) -> Result<(), BoxError> {
    let configs: Vec<(&str, &str)> = configs.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
    match client.create_topic_with_configs(topic, partitions, replication, &configs).await {
        Ok(()) => tracing::info!(%topic, partitions, replication, "created the job's internal topic"),
        Err(
            Error::Broker { code: ErrorCode::TopicAlreadyExists, .. }
            | Error::BrokerMessage { code: ErrorCode::TopicAlreadyExists, .. },
        ) => {
            // Made by an earlier run, or just now by another process starting at the same
            // time: the broker asked may not list it yet.
            let has = listed_partitions(client, topic).await?;
            if has != partitions {
                return Err(format!(
                    "the job's internal topic {topic} has {has} partitions but the source {source} has {partitions}: a task is a source partition, so they must match (did the source grow?)"
                )
                .into());
            }
        }
        Err(error) => return Err(format!("creating the job's internal topic {topic}: {error}").into()),
    }
    Ok(())
}

/// The partitions of `topic` once the cluster's metadata lists it (it may have just been made by
/// another process).
async fn listed_partitions(client: &Client, topic: &str) -> Result<i32, BoxError> {
    let deadline = Instant::now() + TOPIC_APPEARS_TIMEOUT;
    loop {
        let metadata = client.refresh_metadata(Some(&[topic])).await?;
        let listed = metadata.topics.get(topic).filter(|t| t.error == ErrorCode::None && !t.partitions.is_empty());
        if let Some(listed) = listed {
            return Ok(i32::try_from(listed.partitions.len())?);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the job's internal topic {topic} exists but the cluster did not list its partitions within {} s",
                TOPIC_APPEARS_TIMEOUT.as_secs()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
