//! How a [`Scheduler`](super::Scheduler) runs: [`SchedulerConfig`], where partitions without a
//! position start ([`StartingOffsets`]), and the default memory budget of a batch.

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_checkpoint::Options as LogOptions;
use sluice_client::FetchOptions;

use crate::plan::{RateLimits, TopicPartition};
use crate::trigger::Trigger;

/// Where partitions without a committed position start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartingOffsets {
    /// The log start.
    Earliest,
    /// The log end: only records produced after the first batch is planned.
    Latest,
    /// These offsets; partitions not listed start at the earliest offset.
    Offsets(BTreeMap<TopicPartition, i64>),
    /// The first record at or after this time (milliseconds since the epoch), or the log end if
    /// there is none.
    Timestamp(i64),
}

/// The default [`SchedulerConfig::max_batch_bytes`]: 32 MiB, an eighth of a 256 MiB budget for
/// a whole job (the records of the batch and the one read ahead, and what processing makes of
/// them).
pub const DEFAULT_MAX_BATCH_BYTES: usize = 32 << 20;

/// How a [`Scheduler`](super::Scheduler) runs.
///
/// Fields may be added in later versions (`#[non_exhaustive]`): start from [`SchedulerConfig::new`]
/// and set the fields you need.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SchedulerConfig {
    /// The topics to read (every partition of each).
    pub topics: Vec<String>,
    /// Also read every topic whose name matches this regular expression (internal topics
    /// excluded), including topics created while the job runs (seen at the next discovery).
    pub topic_pattern: Option<String>,
    /// Also read exactly these partitions (Spark's `assign`), whatever other partitions their
    /// topics have. A partition not (yet) in the cluster is read once it appears.
    pub assign: Vec<TopicPartition>,
    /// When batches run.
    pub trigger: Trigger,
    /// The interval rates are applied over (and the processing-time trigger's, usually).
    pub batch_interval: Duration,
    /// Per-partition rate limits.
    pub limits: RateLimits,
    /// Shrink batches when processing falls behind (Spark's PID estimator).
    pub backpressure: bool,
    /// At least this many read tasks per batch (large ranges are split).
    pub min_partitions: usize,
    /// Read tasks running at once.
    pub max_concurrent_tasks: usize,
    /// Connections of the scheduler's own to each broker that read tasks are spread over.
    pub read_connections_per_broker: usize,
    /// The most record bytes a batch holds in memory at once (the records as fetched,
    /// decompressed): batches are planned to stay within it (from the record bytes per offset
    /// the last batch read, or a first fetch), whatever the rate limits, so that a backlog is
    /// worked through in many bounded batches (Spark's `maxBytesPerTrigger`, on by default).
    /// A batch that still holds more (an intent written ahead under a larger budget, records
    /// larger than the last ones) is read and handed to the processor in pieces of at most
    /// about this many bytes. With the next batch or piece read ahead, the records of at most
    /// two are in memory. 0: no limit (each batch read whole, as large as the rates allow).
    pub max_batch_bytes: usize,
    /// The next batch is planned and read while the current one is processed, when its records
    /// are expected to take at most this many bytes; 0 turns prefetching off.
    pub prefetch_max_bytes: usize,
    /// Attempts per read task before the batch fails, for failures that are not transient
    /// (a corrupt answer, say; transient faults are retried for `fault_timeout`).
    pub task_attempts: u32,
    /// How long planning a batch, or a read task, may keep failing on transient faults (a
    /// leader moving, a broker restarting, a connection cut or frozen, a new leader's high
    /// watermark catching up) before the batch fails. Until then it is retried with backoff,
    /// from the leader fresh metadata names, a read going on from where it stopped.
    pub fault_timeout: Duration,
    /// Offsets deleted from the log before the job read them fail the batch (true, the
    /// default), or are skipped and counted in the progress records (Spark's `failOnDataLoss`).
    pub fail_on_data_loss: bool,
    /// Where partitions without a committed position start.
    pub starting_offsets: StartingOffsets,
    /// A bounded run: stop once every partition reaches these offsets (or its end, for
    /// partitions not listed).
    pub ending_offsets: Option<BTreeMap<TopicPartition, i64>>,
    /// How ranges are fetched.
    pub fetch: FetchOptions,
    /// Progress records kept in memory.
    pub progress_history: usize,
    /// Also append each batch's progress as a JSON line to this file (`-` for stdout).
    pub progress_path: Option<std::path::PathBuf>,
    /// How often the topics' partitions are looked up again, to pick up new ones.
    pub partition_discovery_interval: Duration,
    /// After each batch, commit its end offsets to this consumer group, so that lag tools see
    /// the job's progress (the checkpoint log stays the source of truth).
    pub commit_to_group: Option<String>,
    /// How the checkpoint log is kept (segment size, batches retained for inspection).
    pub checkpoint: LogOptions,
    /// Scale-out: share the partitions of `topics` with every other process of the job through
    /// a consumer group, and commit each batch (or, catching up, each run of batches) as one
    /// Kafka transaction (see [`ScaleConfig`]).
    pub scale: Option<ScaleConfig>,
}

/// Scale-out mode: every process started with the same job and the same `group` splits the
/// source partitions through that consumer group (the KIP-848 consumer protocol where the broker
/// offers it, the classic protocol with cooperative rebalancing otherwise), and each batch's
/// output and source offsets commit together in one Kafka transaction, with the member's group
/// metadata (KIP-447); while the process catches up one transaction spans several batches
/// (`commit_interval`). A transaction whose member lost any of its partitions while it ran
/// (dropped by the group, or fenced for holding a revocation past `rebalance_timeout`) does not
/// commit.
///
/// In this mode Kafka is the source of truth: a partition gained starts at the group's committed
/// offset (waiting out a previous owner's open transaction), or at `starting_offsets` when the
/// group has none; every read is `read_committed`; the checkpoint log records the batches this
/// process ran, and an intent found open at start is closed, not re-run (its transaction was
/// aborted, or committed, by Kafka). The processor writes its output through the batch's
/// transaction ([`Batch::transaction`](super::Batch::transaction)).
///
/// Fields may be added in later versions (`#[non_exhaustive]`): start from [`ScaleConfig::new`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ScaleConfig {
    /// The consumer group the job's processes share (it also holds the committed offsets).
    pub group: String,
    /// This process's stable name in the group: the static member id (KIP-345) and the suffix
    /// of its transactional id. `None`: a dynamic member, and the checkpoint's id as the suffix,
    /// so a process restarted on the same checkpoint directory still fences its previous
    /// incarnation's producer at once.
    pub instance: Option<String>,
    /// Which group protocol to speak.
    pub protocol: sluice_client::GroupProtocol,
    /// How long the group waits for a member to give up revoked partitions.
    pub rebalance_timeout: Duration,
    /// Classic protocol only: the member's session (the consumer protocol's is the broker's).
    pub session_timeout: Duration,
    /// Classic protocol only: time between heartbeats.
    pub heartbeat_interval: Duration,
    /// A transaction left open this long by a process that died is aborted by the broker; until
    /// then `read_committed` readers of its output wait (Kafka Streams' default: 10 s).
    pub transaction_timeout: Duration,
    /// Whether every batch of a process that owns partitions runs in a transaction, records or
    /// not (otherwise a batch that reads nothing has none). A processor whose state may change
    /// without input (Spark's `updateStateByKey` calls its function every batch) writes those
    /// changes through it.
    pub transaction_every_batch: bool,
    /// Whether the source topics are co-partitioned, as Kafka Streams' joined sources are: a
    /// task is a partition number, and partition `p` of every topic goes with partition `p` of
    /// the first. The group assigns the first topic's partitions; the process that owns one
    /// also reads the same partition of the others, and commits their offsets in the group with
    /// it, in the batch's transaction. Where the group holds no offset for one of them, it
    /// starts where `starting_offsets` says, as the first topic's would. Every topic must have
    /// as many partitions as the first (checked as the process joins). Otherwise (the default)
    /// the group assigns every topic's partitions on their own, which spreads a stateless job
    /// more evenly. A job with state, or with internal topics, on several topics needs this.
    pub co_partitioned: bool,
    /// Topics partitioned like the source (its first topic), each partition going with the
    /// source's partition of the same number: the process that owns source partition `p` also
    /// reads partition `p` of each, and commits its offsets in the group with the source's, in
    /// the batch's transaction. A job's repartition topics: records another task wrote for this
    /// one. Where the group holds no offset for one of their partitions, it is read from its
    /// start (whatever `starting_offsets` says: everything in it is the job's own).
    pub internal_topics: Vec<String>,
    /// While the process is behind (a batch leaves records of its partitions to read: a
    /// backlog, read at the rate limits or within the memory budget), one transaction spans its
    /// batches for up to this long, so that what they change is sent to the changelogs once (a
    /// key changed in many batches, once) and the commit's round trips are paid once: Kafka
    /// Streams' `commit.interval.ms` for a catch-up. Whether a batch goes on is decided once it
    /// has taken its time ([`Batch::ends_transaction`](super::Batch::ends_transaction)): if the
    /// next batch, taking as long, would end within the interval. A batch that reaches the end
    /// of what its partitions hold commits at its end, as does one after a change of the group,
    /// and the transaction of a run that is stopped ends with one more batch (unless planning
    /// it fails: then it is aborted, and its batches are done again by the partitions' next
    /// owner). Their output is visible to `read_committed` readers at the commit. Zero: every
    /// batch commits. At most half of `transaction_timeout` is used. Default 2 s.
    pub commit_interval: Duration,
}

impl ScaleConfig {
    /// Scale-out through `group`, with the defaults: a dynamic member (transactional id from the
    /// checkpoint's id), the protocol the broker offers, a rebalance timeout of 60 s, a classic session of 45 s with
    /// heartbeats every 3 s, transactions that time out after 10 s, spanning batches for up to
    /// 2 s while the process catches up.
    pub fn new(group: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            instance: None,
            protocol: sluice_client::GroupProtocol::Auto,
            rebalance_timeout: Duration::from_secs(60),
            session_timeout: Duration::from_secs(45),
            heartbeat_interval: Duration::from_secs(3),
            transaction_timeout: Duration::from_secs(10),
            transaction_every_batch: false,
            co_partitioned: false,
            internal_topics: Vec::new(),
            commit_interval: Duration::from_secs(2),
        }
    }
}

impl SchedulerConfig {
    /// Reads `topics` every `batch_interval`, from the earliest offsets, without limits.
    pub fn new<S: Into<String>>(topics: impl IntoIterator<Item = S>, batch_interval: Duration) -> Self {
        let mut fetch = FetchOptions::default();
        fetch.max_wait = Duration::from_millis(100);
        let mut checkpoint = LogOptions::default();
        // Intents and commits are small: 8 MiB segments are quick to create and sync.
        checkpoint.segment_size_bytes = 8 << 20;
        Self {
            topics: topics.into_iter().map(Into::into).collect(),
            topic_pattern: None,
            assign: Vec::new(),
            trigger: Trigger::ProcessingTime(batch_interval),
            batch_interval,
            limits: RateLimits::default(),
            backpressure: false,
            min_partitions: 0,
            max_concurrent_tasks: 8,
            read_connections_per_broker: 2,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            prefetch_max_bytes: 256 << 20,
            task_attempts: 3,
            fault_timeout: Duration::from_secs(300),
            fail_on_data_loss: true,
            starting_offsets: StartingOffsets::Earliest,
            ending_offsets: None,
            fetch,
            progress_history: 100,
            progress_path: None,
            partition_discovery_interval: Duration::from_secs(5),
            commit_to_group: None,
            checkpoint,
            scale: None,
        }
    }
}
