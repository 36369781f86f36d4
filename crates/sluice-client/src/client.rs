//! The cluster view: bootstrap, the metadata cache, one connection per broker (reconnected with
//! capped exponential backoff and jitter), and leader lookup (the admin calls built on them are in `admin`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sluice_protocol::error_code::ErrorCode;
use sluice_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use sluice_protocol::messages::fetch_response::FetchableTopicResponse;
use sluice_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use sluice_protocol::messages::metadata_request::MetadataRequestTopic;
use sluice_protocol::messages::{FetchRequest, ListOffsetsRequest, MetadataRequest, MetadataResponse};
use sluice_protocol::primitives::Uuid;
use sluice_protocol::record::{decode_records, DecodeOptions, DecodedRecords};

use crate::connection::{Connection, ConnectionConfig};
use crate::error::{Error, Result};

/// How a [`Client`] finds and talks to the cluster.
///
/// Fields may be added in later versions (`#[non_exhaustive]`): start from [`ClientConfig::new`]
/// and set the fields you need.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Brokers to ask for the cluster's metadata first, as `host:port`; tried in order.
    pub bootstrap: Vec<String>,
    /// Settings for every broker connection.
    pub connection: ConnectionConfig,
    /// Wait before the first reconnect to a broker that failed; doubles per failure.
    pub reconnect_backoff: Duration,
    /// The longest wait between reconnects.
    pub reconnect_backoff_max: Duration,
    /// Metadata older than this is refreshed before a leader is looked up in it (Java's
    /// `metadata.max.age.ms`).
    pub metadata_max_age: Duration,
    /// The shortest wait between two refreshes of metadata found out of date (a leader that
    /// moved, a broker that cannot be reached; Java's `retry.backoff.ms`): an election takes a
    /// moment to reach every broker's metadata, and asking again at once only adds load.
    pub metadata_refresh_backoff: Duration,
}

impl ClientConfig {
    /// A configuration with these bootstrap brokers and defaults for everything else.
    pub fn new<S: Into<String>>(bootstrap: impl IntoIterator<Item = S>) -> Self {
        Self {
            bootstrap: bootstrap.into_iter().map(Into::into).collect(),
            connection: ConnectionConfig::default(),
            reconnect_backoff: Duration::from_millis(50),
            reconnect_backoff_max: Duration::from_secs(1),
            metadata_max_age: Duration::from_secs(300),
            metadata_refresh_backoff: Duration::from_millis(100),
        }
    }
}

/// What the cluster said about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterMetadata {
    /// The cluster id, if the broker reports one.
    pub cluster_id: Option<String>,
    /// The controller's node id (-1 if unknown).
    pub controller_id: i32,
    /// Broker node ids and their `host:port`.
    pub brokers: BTreeMap<i32, String>,
    /// Topics by name.
    pub topics: BTreeMap<String, TopicMetadata>,
}

/// One topic's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMetadata {
    /// The topic's id (zero if the broker does not report ids).
    pub topic_id: Uuid,
    /// The topic-level error, if any (e.g. `UnknownTopicOrPartition`).
    pub error: ErrorCode,
    /// Whether this is an internal topic.
    pub is_internal: bool,
    /// The partitions, by index.
    pub partitions: Vec<PartitionMetadata>,
}

/// One partition's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMetadata {
    /// The partition index.
    pub partition: i32,
    /// The leader's node id (-1 if leaderless).
    pub leader: i32,
    /// The leader epoch.
    pub leader_epoch: i32,
    /// Replica node ids.
    pub replicas: Vec<i32>,
    /// In-sync replica node ids.
    pub isr: Vec<i32>,
    /// The partition-level error, if any.
    pub error: ErrorCode,
}

impl ClusterMetadata {
    fn from_response(response: MetadataResponse) -> Self {
        let brokers = response.brokers.into_iter().map(|b| (b.node_id, broker_address(&b.host, b.port))).collect();
        let topics = response
            .topics
            .into_iter()
            .filter_map(|t| {
                let partitions = t
                    .partitions
                    .into_iter()
                    .map(|p| PartitionMetadata {
                        partition: p.partition_index,
                        leader: p.leader_id,
                        leader_epoch: p.leader_epoch,
                        replicas: p.replica_nodes,
                        isr: p.isr_nodes,
                        error: ErrorCode::from_code(p.error_code),
                    })
                    .collect();
                let metadata = TopicMetadata {
                    topic_id: t.topic_id,
                    error: ErrorCode::from_code(t.error_code),
                    is_internal: t.is_internal,
                    partitions,
                };
                Some((t.name?, metadata))
            })
            .collect();
        Self { cluster_id: response.cluster_id, controller_id: response.controller_id, brokers, topics }
    }

    /// The id of every one of `topics`, or `None` if there are none or any id is unknown
    /// (missing, or zero: brokers before Metadata v10 report no ids): for requests that name
    /// topics by id (KIP-516), which name all of theirs that way or none.
    pub(crate) fn topic_ids<'a>(&self, topics: impl IntoIterator<Item = &'a str>) -> Option<HashMap<String, Uuid>> {
        let ids: Option<HashMap<String, Uuid>> = topics
            .into_iter()
            .map(|topic| {
                let id = self.topics.get(topic).map(|t| t.topic_id).filter(|id| *id != Uuid::ZERO)?;
                Some((topic.to_owned(), id))
            })
            .collect();
        ids.filter(|ids| !ids.is_empty())
    }

    /// The leader of `topic`/`partition`, if known.
    pub fn leader(&self, topic: &str, partition: i32) -> Option<i32> {
        self.partition(topic, partition).map(|p| p.leader).filter(|l| *l >= 0)
    }

    /// The leader epoch of `topic`/`partition`, -1 if unknown (sent with fetches, so that a
    /// broker that is no longer, or not yet, the leader of that epoch refuses them, KIP-320).
    pub fn leader_epoch(&self, topic: &str, partition: i32) -> i32 {
        self.partition(topic, partition).map_or(-1, |p| p.leader_epoch)
    }

    fn partition(&self, topic: &str, partition: i32) -> Option<&PartitionMetadata> {
        self.topics.get(topic)?.partitions.iter().find(|p| p.partition == partition)
    }

    /// Keeps the cached entry of every partition of `cached` for which `self` (a newer answer,
    /// from a broker that may lag behind the controller) names an older leader epoch, as the
    /// Java client does (KIP-320): metadata never moves a partition back to a former leader.
    /// A topic whose id changed was made anew, and its epochs start over.
    fn keep_newer_leaders(&mut self, cached: &ClusterMetadata) {
        for (name, topic) in &mut self.topics {
            let Some(old) = cached.topics.get(name).filter(|old| old.topic_id == topic.topic_id) else { continue };
            for partition in &mut topic.partitions {
                let newer = old
                    .partitions
                    .iter()
                    .find(|p| p.partition == partition.partition && p.leader_epoch > partition.leader_epoch);
                if let Some(newer) = newer.filter(|_| partition.leader_epoch >= 0) {
                    *partition = newer.clone();
                }
            }
        }
    }
}

/// A client for one cluster. Cheap to clone; clones share connections and metadata.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: ClientConfig,
    state: Mutex<State>,
    /// Held while metadata found out of date is refreshed: callers that find it so at the same
    /// time wait for one refresh rather than each make their own.
    refreshing: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct State {
    metadata: Arc<ClusterMetadata>,
    /// When the last full refresh was sent.
    refreshed_at: Option<Instant>,
    /// When the last refresh (of any topics) was sent, for `metadata_refresh_backoff`.
    asked_at: Option<Instant>,
    /// Since when the metadata is known to be out of date (a connection failed, a leader moved);
    /// cleared by a full refresh sent after it.
    stale_since: Option<Instant>,
    connections: HashMap<String, Arc<Connection>>,
    /// Per address: consecutive failures and when the next attempt is allowed.
    backoff: HashMap<String, (u32, Instant)>,
    jitter_seed: u64,
}

impl Client {
    /// Connects to the first reachable bootstrap broker and loads the cluster's metadata.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the client being built is dropped with the future, and its connections are
    /// closed. Calling again starts over.
    pub async fn connect(config: ClientConfig) -> Result<Self> {
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        let state = State { jitter_seed: seed | 1, ..State::default() };
        let inner = Inner { config, state: Mutex::new(state), refreshing: tokio::sync::Mutex::new(()) };
        let client = Self { inner: Arc::new(inner) };
        client.refresh_metadata(None).await?;
        Ok(client)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The configuration this client was connected with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The cached metadata (refreshed by [`Client::refresh_metadata`] and when stale).
    pub fn metadata(&self) -> Arc<ClusterMetadata> {
        Arc::clone(&self.state().metadata)
    }

    /// Asks a broker for the metadata of `topics` (all topics if `None`) and updates the cache.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the cache changes only once an answer has arrived, so a dropped call leaves it as
    /// it was; a connection it opened stays pooled, and it counts as the last refresh for
    /// `metadata_refresh_backoff`. Calling again is fine.
    pub async fn refresh_metadata(&self, topics: Option<&[&str]>) -> Result<Arc<ClusterMetadata>> {
        let request = MetadataRequest {
            topics: topics.map(|names| {
                names
                    .iter()
                    .map(|n| MetadataRequestTopic { name: Some((*n).to_owned()), ..Default::default() })
                    .collect()
            }),
            allow_auto_topic_creation: false,
            ..MetadataRequest::default()
        };
        let asked_at = Instant::now();
        self.state().asked_at = Some(asked_at);
        let connection = self.any_broker().await?;
        let response = connection.send(&request).await.inspect_err(|_| self.forget_connection(&connection))?;
        // Metadata v13 has a request-level error code, for REBOOTSTRAP_REQUIRED (KIP-1102): the
        // broker holds this client's view of the cluster to be stale. (Kafka 4.4 sends that code
        // only to ApiVersions v5, which sluice does not use.) The connection is dropped, so the
        // next attempt asks another broker or connects anew, and the error is retriable
        // (`Error::is_retriable`), so callers that retry refresh again. Any other code is an error.
        let code = ErrorCode::from_code(response.error_code);
        if code != ErrorCode::None {
            if code == ErrorCode::RebootstrapRequired {
                self.forget_connection(&connection);
            }
            return Err(Error::Broker { broker: connection.broker().to_owned(), api: "Metadata", code });
        }
        let mut fresh = ClusterMetadata::from_response(response);
        let mut state = self.state();
        fresh.keep_newer_leaders(&state.metadata);
        if topics.is_some() {
            // A partial answer updates those topics and keeps the rest.
            let mut merged = (*state.metadata).clone();
            merged.topics.append(&mut fresh.topics);
            fresh.topics = merged.topics;
        }
        state.metadata = Arc::new(fresh);
        if topics.is_none() {
            // Only a full answer makes the whole cache fresh.
            state.refreshed_at = Some(asked_at);
            if state.stale_since.is_some_and(|since| since <= asked_at) {
                state.stale_since = None;
            }
        }
        Ok(Arc::clone(&state.metadata))
    }

    /// The metadata, refreshed first if it is older than `metadata_max_age` or was found out of
    /// date ([`Client::invalidate_metadata`]).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future releases the refresh lock, so another caller can refresh,
    /// and leaves the cache as [`Client::refresh_metadata`] does. Calling again is fine.
    pub async fn fresh_metadata(&self) -> Result<Arc<ClusterMetadata>> {
        self.refresh_if_due().await?;
        Ok(self.metadata())
    }

    /// Marks the cached metadata out of date: the next leader lookup asks the cluster again
    /// (no sooner than `metadata_refresh_backoff` after the last refresh). The client does this
    /// itself when a connection fails or a broker answers that it is not the leader; callers
    /// that read on connections of their own do it on such errors of theirs
    /// ([`Client::note_error`]).
    pub fn invalidate_metadata(&self) {
        let mut state = self.state();
        state.stale_since.get_or_insert_with(Instant::now);
    }

    /// Marks the metadata out of date if `error` says it may be: the broker could not be
    /// reached or stopped answering, or it is not (or no longer) the partition's leader.
    pub fn note_error(&self, error: &Error) {
        if error.suggests_stale_metadata() {
            self.invalidate_metadata();
        }
    }

    /// Refreshes the metadata (of every topic) if it is out of date or older than
    /// `metadata_max_age`; one refresh for all callers that find it so at once.
    async fn refresh_if_due(&self) -> Result<()> {
        let config = &self.inner.config;
        let due = |state: &State| {
            state.stale_since.is_some() || state.refreshed_at.is_none_or(|at| at.elapsed() > config.metadata_max_age)
        };
        if !due(&self.state()) {
            return Ok(());
        }
        let _refreshing = self.inner.refreshing.lock().await;
        let wait = {
            let state = self.state();
            if !due(&state) {
                // Refreshed by another caller meanwhile.
                return Ok(());
            }
            state.asked_at.map(|at| (at + config.metadata_refresh_backoff).saturating_duration_since(Instant::now()))
        };
        if let Some(wait) = wait.filter(|w| !w.is_zero()) {
            tokio::time::sleep(wait).await;
        }
        self.refresh_metadata(None).await.map(drop)
    }

    /// A connection to any broker: a live pooled one, else the known brokers and then the
    /// bootstrap list, in order.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a connection still being made is closed when the future is dropped; one already
    /// made stays pooled. Calling again is fine.
    pub async fn any_broker(&self) -> Result<Arc<Connection>> {
        let candidates: Vec<String> = {
            let state = self.state();
            if let Some(live) = state.connections.values().find(|c| !c.is_closed()) {
                return Ok(Arc::clone(live));
            }
            state.metadata.brokers.values().cloned().chain(self.inner.config.bootstrap.iter().cloned()).collect()
        };
        let mut last_error = None;
        for address in candidates {
            match self.connection_to(&address).await {
                Ok(connection) => return Ok(connection),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| Error::Disconnected {
            broker: "(none)".into(),
            reason: "no bootstrap brokers configured (set ClientConfig::bootstrap)".into(),
        }))
    }

    /// A connection to broker `node_id`, as the cached metadata places it.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: metadata already refreshed is kept, and a connection still being made is closed
    /// when the future is dropped; one already made stays pooled. Calling again is fine.
    pub async fn broker(&self, node_id: i32) -> Result<Arc<Connection>> {
        let address = self.metadata().brokers.get(&node_id).cloned();
        let address = match address {
            Some(address) => address,
            None => self.refresh_metadata(None).await?.brokers.get(&node_id).cloned().ok_or_else(|| {
                Error::Disconnected {
                    broker: format!("node {node_id}"),
                    reason: "the cluster does not list this broker".into(),
                }
            })?,
        };
        self.connection_to(&address).await
    }

    /// A connection to the leader of `topic`/`partition`, refreshing metadata first if the
    /// leader is unknown, or the metadata out of date or older than `metadata_max_age`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: metadata already refreshed is kept, and a connection still being made is closed
    /// when the future is dropped; one already made stays pooled. Calling again is fine.
    pub async fn leader(&self, topic: &str, partition: i32) -> Result<Arc<Connection>> {
        let address = self.leader_address(topic, partition).await?;
        self.connection_to(&address).await
    }

    /// The `host:port` of the leader of `topic`/`partition` (for callers that keep connections
    /// of their own), refreshing metadata as [`Client::leader`] does.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it sends only Metadata requests, and metadata already refreshed is kept.
    /// Calling again is fine.
    pub async fn leader_address(&self, topic: &str, partition: i32) -> Result<String> {
        self.refresh_if_due().await?;
        let leader = match self.metadata().leader(topic, partition) {
            Some(leader) => leader,
            None => self.refresh_metadata(Some(&[topic])).await?.leader(topic, partition).ok_or_else(|| {
                Error::Broker { broker: "(metadata)".into(), api: "Metadata", code: ErrorCode::LeaderNotAvailable }
            })?,
        };
        if let Some(address) = self.metadata().brokers.get(&leader) {
            return Ok(address.clone());
        }
        self.refresh_metadata(None).await?.brokers.get(&leader).cloned().ok_or_else(|| Error::Disconnected {
            broker: format!("node {leader}"),
            reason: "the cluster does not list this broker".into(),
        })
    }

    /// The pooled connection to `address`, or a new one; after a failure, waits out the
    /// address's backoff first (capped exponential, with jitter).
    pub(crate) async fn connection_to(&self, address: &str) -> Result<Arc<Connection>> {
        let wait = {
            let state = self.state();
            if let Some(live) = state.connections.get(address).filter(|c| !c.is_closed()) {
                return Ok(Arc::clone(live));
            }
            state.backoff.get(address).map(|(_, at)| at.saturating_duration_since(Instant::now()))
        };
        if let Some(wait) = wait.filter(|w| !w.is_zero()) {
            tokio::time::sleep(wait).await;
        }
        match Connection::connect(address, self.inner.config.connection.clone()).await {
            Ok(connection) => {
                let connection = Arc::new(connection);
                let mut state = self.state();
                if let Some((failures, _)) = state.backoff.remove(address) {
                    tracing::info!(broker = address, failures, "reconnected");
                }
                // Another task may have connected meanwhile: keep one, drop the other.
                let pooled = state.connections.entry(address.to_owned()).or_insert_with(|| Arc::clone(&connection));
                if pooled.is_closed() {
                    *pooled = Arc::clone(&connection);
                }
                Ok(Arc::clone(pooled))
            }
            Err(e) => {
                let (failures, wait) = self.note_failure(address);
                // A broker restarting misses a try or two; more is worth a warning.
                if failures >= 3 {
                    tracing::warn!(broker = address, failures, retry_in = ?wait, error = %e, "cannot connect");
                } else {
                    tracing::info!(broker = address, failures, retry_in = ?wait, error = %e, "cannot connect");
                }
                Err(e)
            }
        }
    }

    /// Takes `connection` out of the pool (requests already holding it finish on it).
    fn forget_connection(&self, connection: &Arc<Connection>) {
        let mut state = self.state();
        if state.connections.get(connection.broker()).is_some_and(|pooled| Arc::ptr_eq(pooled, connection)) {
            state.connections.remove(connection.broker());
        }
    }

    /// How long the broker may take over an admin request: half the client's request timeout,
    /// so that the broker's own answer (even a timeout) arrives before the client gives up.
    pub(crate) fn broker_timeout_ms(&self) -> i32 {
        i32::try_from((self.inner.config.connection.request_timeout / 2).as_millis()).unwrap_or(i32::MAX)
    }

    /// Takes a deleted topic out of the cached metadata.
    pub(crate) fn forget_topic(&self, name: &str) {
        let mut state = self.state();
        let mut metadata = (*state.metadata).clone();
        metadata.topics.remove(name);
        state.metadata = Arc::new(metadata);
    }

    /// Counts a failure to connect to `address`: how many in a row, and the wait before the next try.
    fn note_failure(&self, address: &str) -> (u32, Duration) {
        let config = &self.inner.config;
        let mut state = self.state();
        // The broker may have left the cluster, or its partitions moved to others.
        state.stale_since.get_or_insert_with(Instant::now);
        // xorshift64: jitter needs no cryptographic quality.
        state.jitter_seed ^= state.jitter_seed << 13;
        state.jitter_seed ^= state.jitter_seed >> 7;
        state.jitter_seed ^= state.jitter_seed << 17;
        let jitter_permille = 800 + (state.jitter_seed % 401) as u32; // 0.8 ..= 1.2
        let failures = state.backoff.get(address).map_or(0, |(n, _)| *n).saturating_add(1);
        let base = config.reconnect_backoff.saturating_mul(1 << failures.min(16).saturating_sub(1));
        let wait = (base.saturating_mul(jitter_permille) / 1000).min(config.reconnect_backoff_max);
        let now = Instant::now();
        state.backoff.insert(address.to_owned(), (failures, now.checked_add(wait).unwrap_or(now)));
        (failures, wait)
    }
}

/// A partition to probe: topic, partition, offset to fetch at.
type Probe = (String, i32, i64);

/// ListOffsets partitions of one request, by topic.
type OffsetsByTopic<'a> = BTreeMap<&'a str, Vec<ListOffsetsPartition>>;

/// Which offset [`Client::list_offset`] looks up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The log start offset.
    Earliest,
    /// The log end offset (the offset the next record will get).
    Latest,
    /// The first offset whose timestamp is at or after these milliseconds since the epoch.
    Timestamp(i64),
}

impl OffsetSpec {
    /// The ListOffsets timestamp field: -2 earliest, -1 latest, else the time.
    fn wire(self) -> i64 {
        match self {
            Self::Earliest => -2,
            Self::Latest => -1,
            Self::Timestamp(ms) => ms,
        }
    }
}

/// Whether a fetch sees records of open and aborted transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// Everything up to the high watermark.
    #[default]
    ReadUncommitted,
    /// Only up to the last stable offset (aborted records still need filtering by the caller
    /// with the aborted-transactions list).
    ReadCommitted,
}

/// Limits of one fetch.
///
/// Fields may be added in later versions (`#[non_exhaustive]`): start from [`Default`] and set the
/// fields you need.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct FetchOptions {
    /// How long the broker may wait for `min_bytes` to arrive.
    pub max_wait: Duration,
    /// Bytes the broker waits for before answering.
    pub min_bytes: i32,
    /// Most bytes for the partition (the broker may return one larger batch if it is first).
    pub max_bytes: i32,
    /// Transaction isolation.
    pub isolation: Isolation,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            max_wait: Duration::from_millis(500),
            min_bytes: 1,
            max_bytes: 4 << 20,
            isolation: Isolation::ReadUncommitted,
        }
    }
}

/// What one fetch of one partition returned.
#[derive(Debug, Clone)]
pub struct FetchedPartition {
    /// The partition-level error (`None` on success).
    pub error: ErrorCode,
    /// The offset after the last committed record.
    pub high_watermark: i64,
    /// The offset up to which all transactions are decided (-1 if unknown).
    pub last_stable_offset: i64,
    /// The first offset still in the log (-1 if unknown).
    pub log_start_offset: i64,
    /// Producer ids and first offsets of aborted transactions in the returned range.
    pub aborted_transactions: Vec<(i64, i64)>,
    /// The records, from the requested offset on.
    pub records: DecodedRecords,
}

impl FetchedPartition {
    /// How far a reader of `isolation` can read the partition, as the fetch reported it: the
    /// high watermark, or under `ReadCommitted` the last stable offset.
    pub fn readable_end(&self, isolation: Isolation) -> i64 {
        readable_end(isolation, self.high_watermark, self.last_stable_offset)
    }
}

/// The high watermark, or under `ReadCommitted` the last stable offset (a broker whose answer's
/// version has none says -1: the high watermark then).
fn readable_end(isolation: Isolation, high_watermark: i64, last_stable_offset: i64) -> i64 {
    match isolation {
        Isolation::ReadCommitted if last_stable_offset >= 0 => last_stable_offset,
        _ => high_watermark,
    }
}

/// The last Fetch version that names topics; v13+ (KIP-516) names them by topic id.
const FETCH_BY_NAME_MAX_VERSION: i16 = 12;

/// How a fetch names its topics: by id at the newest version both sides speak where the broker
/// has Fetch v13+ and the metadata gives every topic's id (Kafka 3+), else by name at v12 at
/// most. By id, a fetch of a topic deleted and made again under the same name is answered
/// UNKNOWN_TOPIC_ID rather than read from the new topic's log as if it were the old one.
#[derive(Debug, Clone)]
pub(crate) struct FetchNaming {
    /// The Fetch version to send.
    pub version: i16,
    ids: HashMap<String, Uuid>,
    names: HashMap<Uuid, String>,
}

impl FetchNaming {
    /// The naming for a fetch of `topics` from `connection`'s broker, with the ids `metadata`
    /// knows.
    pub(crate) fn new<'a>(
        connection: &Connection,
        metadata: &ClusterMetadata,
        topics: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self> {
        let newest = connection.version_for::<FetchRequest>(None)?;
        let ids = if newest > FETCH_BY_NAME_MAX_VERSION { metadata.topic_ids(topics) } else { None };
        let (version, ids) = match ids {
            Some(ids) => (newest, ids),
            None => (connection.version_for::<FetchRequest>(Some(FETCH_BY_NAME_MAX_VERSION))?, HashMap::new()),
        };
        let names = ids.iter().map(|(name, id)| (*id, name.clone())).collect();
        Ok(Self { version, ids, names })
    }

    /// `topic`'s part of a request, named as this naming says.
    pub(crate) fn topic(&self, topic: &str, partitions: Vec<FetchPartition>) -> FetchTopic {
        let topic_id = self.ids.get(topic).copied().unwrap_or_default();
        FetchTopic { topic: topic.to_owned(), topic_id, partitions, ..Default::default() }
    }

    /// The name of an answered topic (`None`: an id this fetch did not ask about).
    pub(crate) fn name_of(&self, answer: &FetchableTopicResponse) -> Option<String> {
        if self.version > FETCH_BY_NAME_MAX_VERSION {
            self.names.get(&answer.topic_id).cloned()
        } else {
            Some(answer.topic.clone())
        }
    }
}

impl Client {
    /// Looks up an offset of `topic`/`partition` on its leader.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads. Dropping the future aborts the ListOffsets tasks it started and
    /// discards their answers. Calling again is fine.
    pub async fn list_offset(&self, topic: &str, partition: i32, spec: OffsetSpec) -> Result<i64> {
        let key = (topic.to_owned(), partition);
        let offsets = self.list_offsets(std::slice::from_ref(&key), spec).await?;
        offsets.get(&key).copied().ok_or_else(|| missing_partition("(leader)", "ListOffsets"))
    }

    /// The log end offset: the larger of what ListOffsets(latest) says and a fetch's high
    /// watermark (some brokers, Tansu among them, answer ListOffsets(latest) short of the log
    /// end: the base offset of the last batch + 1). Under `ReadCommitted`, the end a
    /// read_committed reader can reach: the last stable offset (short of the high watermark
    /// while a transaction is open).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads. Dropping the future aborts the ListOffsets and Fetch tasks it started and
    /// discards their answers. Calling again is fine.
    pub async fn log_end(&self, topic: &str, partition: i32, isolation: Isolation) -> Result<i64> {
        let key = (topic.to_owned(), partition);
        let ends = self.log_ends(std::slice::from_ref(&key), isolation).await?;
        ends.get(&key).copied().ok_or_else(|| missing_partition("(leader)", "ListOffsets"))
    }

    /// [`Client::log_end`] of many partitions: one ListOffsets per leader, then the probing
    /// fetches all at once.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads. Dropping the future aborts the ListOffsets and Fetch tasks it started and
    /// discards their answers. Calling again is fine.
    pub async fn log_ends(
        &self,
        partitions: &[(String, i32)],
        isolation: Isolation,
    ) -> Result<BTreeMap<(String, i32), i64>> {
        let listed = self.list_offsets_as(partitions, OffsetSpec::Latest, isolation).await?;
        // One probing fetch per leader, all its partitions at once (a broker serves a
        // connection's requests one at a time, so one fetch per partition would queue up).
        let mut by_leader: HashMap<String, (Arc<Connection>, Vec<Probe>)> = HashMap::new();
        for ((topic, partition), offset) in &listed {
            let connection = self.leader(topic, *partition).await?;
            let entry = by_leader.entry(connection.broker().to_owned()).or_insert_with(|| (connection, Vec::new()));
            entry.1.push((topic.clone(), *partition, *offset));
        }
        let mut probes = tokio::task::JoinSet::new();
        let metadata = self.metadata();
        for (_, (connection, wanted)) in by_leader {
            let naming = FetchNaming::new(&connection, &metadata, wanted.iter().map(|(t, _, _)| t.as_str()))?;
            probes.spawn(async move {
                // Kafka answers a zero-wait fetch with every partition. Tansu leaves them all
                // out; a short wait gets it to answer.
                let mut found = high_watermarks_on(&connection, &naming, &wanted, isolation, Duration::ZERO).await?;
                let missing: Vec<Probe> =
                    wanted.into_iter().filter(|(t, p, _)| !found.contains_key(&(t.clone(), *p))).collect();
                if !missing.is_empty() {
                    let wait = Duration::from_millis(50);
                    found.extend(high_watermarks_on(&connection, &naming, &missing, isolation, wait).await?);
                }
                Ok::<_, Error>(found)
            });
        }
        let mut ends = listed.clone();
        while let Some(joined) = probes.join_next().await {
            let found = joined
                .map_err(|e| Error::Disconnected {
                    broker: "(leader)".into(),
                    reason: format!("a log end probe stopped: {e}"),
                })?
                .inspect_err(|e| self.note_error(e))?;
            for (key, high_watermark) in found {
                if let Some(end) = ends.get_mut(&key) {
                    *end = (*end).max(high_watermark);
                }
            }
        }
        Ok(ends)
    }

    /// Looks up an offset of many partitions at once: one ListOffsets request per leader, the
    /// leaders asked in parallel.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads. Dropping the future aborts the ListOffsets tasks it started and
    /// discards their answers. Calling again is fine.
    pub async fn list_offsets(
        &self,
        partitions: &[(String, i32)],
        spec: OffsetSpec,
    ) -> Result<BTreeMap<(String, i32), i64>> {
        self.list_offsets_as(partitions, spec, Isolation::ReadUncommitted).await
    }

    /// [`Client::list_offsets`] as a reader of `isolation` asks: under `ReadCommitted` the latest
    /// offset is the last stable offset (the first offset of a transaction still open, the high
    /// watermark when none is), as far as a read_committed fetch can read.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: as [`Client::list_offsets`].
    pub async fn list_offsets_as(
        &self,
        partitions: &[(String, i32)],
        spec: OffsetSpec,
        isolation: Isolation,
    ) -> Result<BTreeMap<(String, i32), i64>> {
        let timestamp = spec.wire();
        let mut by_leader: HashMap<String, (Arc<Connection>, OffsetsByTopic<'_>)> = HashMap::new();
        for (topic, partition) in partitions {
            let connection = self.leader(topic, *partition).await?;
            let entry =
                by_leader.entry(connection.broker().to_owned()).or_insert_with(|| (connection, BTreeMap::new()));
            entry.1.entry(topic.as_str()).or_default().push(ListOffsetsPartition {
                partition_index: *partition,
                timestamp,
                ..Default::default()
            });
        }
        let mut asks = tokio::task::JoinSet::new();
        for (_, (connection, topics)) in by_leader {
            let request = ListOffsetsRequest {
                // -1: a consumer's request (a broker id here would ask as a follower, for the
                // log end rather than the high watermark).
                replica_id: -1,
                isolation_level: i8::from(isolation == Isolation::ReadCommitted),
                timeout_ms: self.broker_timeout_ms(),
                topics: topics
                    .into_iter()
                    .map(|(name, partitions)| ListOffsetsTopic {
                        name: name.to_owned(),
                        partitions,
                        ..Default::default()
                    })
                    .collect(),
                ..ListOffsetsRequest::default()
            };
            asks.spawn(async move {
                let response = connection.send(&request).await?;
                let mut found = Vec::new();
                for topic in response.topics {
                    for answer in topic.partitions {
                        crate::connection::check_error(connection.broker(), "ListOffsets", answer.error_code)?;
                        // v0 answers with a list of offsets; later versions with one.
                        let offset = answer.old_style_offsets.first().copied().unwrap_or(answer.offset);
                        found.push(((topic.name.clone(), answer.partition_index), offset));
                    }
                }
                Ok::<_, Error>(found)
            });
        }
        let mut offsets = BTreeMap::new();
        while let Some(joined) = asks.join_next().await {
            let found = joined.map_err(|e| Error::Disconnected {
                broker: "(leader)".into(),
                reason: format!("the ListOffsets task stopped: {e}"),
            })?;
            offsets.extend(found.inspect_err(|e| self.note_error(e))?);
        }
        // A leader that leaves a partition out of its answer is an error, not an offset to skip.
        if partitions.iter().any(|key| !offsets.contains_key(key)) {
            return Err(missing_partition("(leader)", "ListOffsets"));
        }
        Ok(offsets)
    }

    /// Fetches `topic`/`partition` from `offset` on its leader and decodes the records (those
    /// before `offset` in the first batch dropped). A partition error comes back in
    /// [`FetchedPartition::error`]; leadership errors also refresh the metadata.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a fetch only reads, and its late answer is discarded. The broker still answers it
    /// first, so later requests on the same connection may wait up to `options.max_wait` behind it.
    /// Calling again is fine.
    pub async fn fetch_partition(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        options: &FetchOptions,
    ) -> Result<FetchedPartition> {
        let connection = self.leader(topic, partition).await?;
        self.fetch_partition_on(&connection, topic, partition, offset, options).await
    }

    /// [`Client::fetch_partition`] on a given connection to the partition's leader (for callers
    /// that keep connections of their own, so that their fetches do not queue behind other
    /// requests on the shared one).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a fetch only reads, and its late answer is discarded. The broker still answers it
    /// first, so later requests on the same connection may wait up to `options.max_wait` behind it.
    /// Calling again is fine.
    pub async fn fetch_partition_on(
        &self,
        connection: &Connection,
        topic: &str,
        partition: i32,
        offset: i64,
        options: &FetchOptions,
    ) -> Result<FetchedPartition> {
        let metadata = self.metadata();
        let naming = FetchNaming::new(connection, &metadata, [topic])?;
        let epoch = metadata.leader_epoch(topic, partition);
        let request = fetch_request(&naming, topic, partition, offset, epoch, options);
        let version = naming.version;
        let response = connection.send_version(&request, version).await.inspect_err(|e| self.note_error(e))?;
        connection.throttle(response.throttle_time_ms);
        crate::connection::check_error(connection.broker(), "Fetch", response.error_code)
            .inspect_err(|e| self.note_error(e))?;
        let answer = response
            .responses
            .into_iter()
            .filter(|t| naming.name_of(t).as_deref() == Some(topic))
            .flat_map(|t| t.partitions)
            .find(|p| p.partition_index == partition)
            .ok_or_else(|| missing_partition(connection.broker(), "Fetch"))?;
        let error = ErrorCode::from_code(answer.error_code);
        if error.means_stale_metadata() {
            // The next leader lookup asks the cluster again.
            self.invalidate_metadata();
        }
        let mut decode = DecodeOptions::default();
        decode.min_offset = offset;
        let records = match &answer.records {
            Some(bytes) => decode_records(bytes, &decode).map_err(|source| Error::Decode {
                broker: connection.broker().to_owned(),
                api: "Fetch",
                version,
                source,
            })?,
            None => DecodedRecords::default(),
        };
        Ok(FetchedPartition {
            error,
            high_watermark: answer.high_watermark,
            last_stable_offset: answer.last_stable_offset,
            log_start_offset: answer.log_start_offset,
            aborted_transactions: answer
                .aborted_transactions
                .unwrap_or_default()
                .iter()
                .map(|a| (a.producer_id, a.first_offset))
                .collect(),
            records,
        })
    }
}

/// The high watermarks (under `ReadCommitted`, the last stable offsets) `connection`'s broker
/// reports for `partitions` (topic, partition, offset to fetch at), asking for one byte of each
/// and waiting up to `max_wait`; partitions the broker leaves out or answers with an error are
/// not in the result.
async fn high_watermarks_on(
    connection: &Connection,
    naming: &FetchNaming,
    partitions: &[Probe],
    isolation: Isolation,
    max_wait: Duration,
) -> Result<BTreeMap<(String, i32), i64>> {
    let mut topics: BTreeMap<&str, Vec<FetchPartition>> = BTreeMap::new();
    for (topic, partition, offset) in partitions {
        topics.entry(topic).or_default().push(FetchPartition {
            partition: *partition,
            fetch_offset: *offset,
            partition_max_bytes: 1,
            ..Default::default()
        });
    }
    let request = FetchRequest {
        max_wait_ms: i32::try_from(max_wait.as_millis()).unwrap_or(i32::MAX),
        min_bytes: 1,
        max_bytes: 1,
        isolation_level: i8::from(isolation == Isolation::ReadCommitted),
        topics: topics.into_iter().map(|(topic, partitions)| naming.topic(topic, partitions)).collect(),
        ..FetchRequest::default()
    };
    let response = connection.send_version(&request, naming.version).await?;
    crate::connection::check_error(connection.broker(), "Fetch", response.error_code)?;
    Ok(response
        .responses
        .into_iter()
        .filter_map(|t| naming.name_of(&t).map(|name| (name, t.partitions)))
        .flat_map(|(topic, partitions)| {
            partitions.into_iter().filter(|p| p.error_code == 0).map(move |p| {
                ((topic.clone(), p.partition_index), readable_end(isolation, p.high_watermark, p.last_stable_offset))
            })
        })
        .collect())
}

/// A fetch of one partition from `offset`, of the leader of `leader_epoch` (-1: any).
fn fetch_request(
    naming: &FetchNaming,
    topic: &str,
    partition: i32,
    offset: i64,
    leader_epoch: i32,
    options: &FetchOptions,
) -> FetchRequest {
    let wanted = FetchPartition {
        partition,
        current_leader_epoch: leader_epoch,
        fetch_offset: offset,
        partition_max_bytes: options.max_bytes,
        ..Default::default()
    };
    FetchRequest {
        max_wait_ms: i32::try_from(options.max_wait.as_millis()).unwrap_or(i32::MAX),
        min_bytes: options.min_bytes,
        max_bytes: options.max_bytes,
        isolation_level: i8::from(options.isolation == Isolation::ReadCommitted),
        topics: vec![naming.topic(topic, vec![wanted])],
        ..FetchRequest::default()
    }
}

/// `host:port`, with IPv6 hosts in brackets.
pub(crate) fn broker_address(host: &str, port: i32) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

pub(crate) fn missing_partition(broker: &str, api: &'static str) -> Error {
    Error::Broker { broker: broker.to_owned(), api, code: ErrorCode::UnknownTopicOrPartition }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_partition(topic_id: Uuid, leader: i32, leader_epoch: i32) -> ClusterMetadata {
        let partition = PartitionMetadata {
            partition: 0,
            leader,
            leader_epoch,
            replicas: vec![1, 2, 3],
            isr: vec![1, 2, 3],
            error: ErrorCode::None,
        };
        let topic = TopicMetadata { topic_id, error: ErrorCode::None, is_internal: false, partitions: vec![partition] };
        ClusterMetadata { topics: [("t".to_owned(), topic)].into(), ..ClusterMetadata::default() }
    }

    #[test]
    fn metadata_from_a_lagging_broker_never_moves_a_partition_back_to_an_older_leader() {
        let id = Uuid([7; 16]);
        let cached = one_partition(id, 2, 5);
        // A broker that has not yet heard of the election names the former leader.
        let mut lagging = one_partition(id, 1, 4);
        lagging.keep_newer_leaders(&cached);
        assert_eq!((lagging.leader("t", 0), lagging.leader_epoch("t", 0)), (Some(2), 5));
        // A newer epoch is taken.
        let mut newer = one_partition(id, 3, 6);
        newer.keep_newer_leaders(&cached);
        assert_eq!((newer.leader("t", 0), newer.leader_epoch("t", 0)), (Some(3), 6));
        // A topic made anew (another id) starts its epochs over.
        let mut remade = one_partition(Uuid([8; 16]), 1, 0);
        remade.keep_newer_leaders(&cached);
        assert_eq!((remade.leader("t", 0), remade.leader_epoch("t", 0)), (Some(1), 0));
        // A broker that reports no epochs (-1) is taken as it is.
        let mut unversioned = one_partition(id, 1, -1);
        unversioned.keep_newer_leaders(&cached);
        assert_eq!(unversioned.leader("t", 0), Some(1));
    }
}
