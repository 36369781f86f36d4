//! Consumer groups, the classic protocol: the coordinator found with FindCoordinator; members
//! join with JoinGroup, the leader assigns partitions with an [`Assignor`] and hands the result
//! out through SyncGroup; a background task heartbeats (KIP-62) so that slow processing does not
//! cost the membership; committed offsets live in the coordinator (OffsetCommit / OffsetFetch).
//! Static membership (KIP-345): a member with a `group_instance_id` keeps its partitions across
//! a restart within the session timeout, and does not leave the group when closed.
//!
//! Rebalances are eager, as in the Java client's `range` and `roundrobin` strategies: when the
//! group rebalances, [`GroupConsumer::poll`] first returns [`GroupEvent::Revoked`] with every
//! partition the member owns (positions still readable, so the caller can commit what it has
//! processed), and the next `poll` rejoins and returns [`GroupEvent::Assigned`]. Records are
//! only fetched for the current assignment, so a caller that handles each event before polling
//! again never processes a partition another member owns.
//!
//! Spec: `JoinGroupRequest.json`, `SyncGroupRequest.json`, `HeartbeatRequest.json`,
//! `LeaveGroupRequest.json`, `OffsetCommitRequest.json`, `OffsetFetchRequest.json`, and the
//! consumer protocol payloads (`ConsumerProtocolSubscription.json`, `...Assignment.json`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sluice_protocol::consumer::{
    decode_assignment, decode_subscription, encode_assignment, encode_subscription, PROTOCOL_TYPE,
};
use sluice_protocol::error_code::ErrorCode;
use sluice_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedTopic;
use sluice_protocol::messages::consumer_protocol_subscription::TopicPartition as OwnedTopic;
use sluice_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use sluice_protocol::messages::join_group_response::JoinGroupResponseMember;
use sluice_protocol::messages::leave_group_request::MemberIdentity;
use sluice_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
use sluice_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use sluice_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use sluice_protocol::messages::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, FindCoordinatorRequest, HeartbeatRequest,
    JoinGroupRequest, LeaveGroupRequest, Message, OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest,
    SyncGroupRequest,
};
use tokio::task::JoinHandle;

use crate::assignor::{Assignor, GroupMember, RangeAssignor, RoundRobinAssignor};
use crate::client::{broker_address, Client};
use crate::connection::{check_error, Connection};
use crate::consumer::{Consumer, ConsumerConfig, OffsetReset, PartitionRecords, StartAt};
use crate::error::{Error, Result};

/// OffsetFetch v8+ batches several groups; one group per request is all this client asks.
const OFFSET_FETCH_SINGLE_GROUP_MAX_VERSION: i16 = 7;
/// The last OffsetCommit version that names topics; v10 (KIP-848) names them by topic id.
const OFFSET_COMMIT_BY_NAME_MAX_VERSION: i16 = 9;

/// How a [`GroupConsumer`] takes part in its group.
///
/// Fields may be added in later versions (`#[non_exhaustive]`): start from [`GroupConfig::new`] and
/// set the fields you need.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GroupConfig {
    /// The group's id.
    pub group_id: String,
    /// The topics to consume.
    pub topics: Vec<String>,
    /// Without a heartbeat for this long the coordinator removes the member (Java's
    /// `session.timeout.ms`; the broker bounds it, by default to 6 s ..= 30 min).
    pub session_timeout: Duration,
    /// How long the coordinator waits for every member to rejoin during a rebalance; a member
    /// that does not call `poll` within this time is removed (Java's `max.poll.interval.ms`).
    pub rebalance_timeout: Duration,
    /// Time between heartbeats; a third of the session timeout or less.
    pub heartbeat_interval: Duration,
    /// A static member id (KIP-345): the member keeps its partitions across restarts within the
    /// session timeout, and closing it does not trigger a rebalance.
    pub group_instance_id: Option<String>,
    /// Assignment strategies this member supports, preferred first.
    pub assignors: Vec<Arc<dyn Assignor>>,
    /// Commit the positions of returned records this often (at the next `poll`), before a
    /// rebalance and on close; `None` leaves committing to the caller.
    pub auto_commit_interval: Option<Duration>,
    /// Wait between attempts when the coordinator is busy or moving.
    pub retry_backoff: Duration,
    /// How often the subscribed topics' partition counts are looked up: partitions added to a
    /// topic (CreatePartitions) make the member rejoin, so that the group shares them out.
    /// A partition that appeared after the member first saw its topic, with no committed
    /// offset, starts at its earliest offset (its records are all new), whatever
    /// `offset_reset` says.
    pub partition_discovery_interval: Duration,
}

impl GroupConfig {
    /// A configuration for `group_id` consuming `topics`, with the Java client's defaults.
    pub fn new<S: Into<String>>(group_id: impl Into<String>, topics: impl IntoIterator<Item = S>) -> Self {
        Self {
            group_id: group_id.into(),
            topics: topics.into_iter().map(Into::into).collect(),
            session_timeout: Duration::from_secs(45),
            rebalance_timeout: Duration::from_secs(300),
            heartbeat_interval: Duration::from_secs(3),
            group_instance_id: None,
            assignors: vec![Arc::new(RangeAssignor), Arc::new(RoundRobinAssignor)],
            auto_commit_interval: Some(Duration::from_secs(5)),
            retry_backoff: Duration::from_millis(100),
            partition_discovery_interval: Duration::from_secs(30),
        }
    }
}

/// What [`GroupConsumer::poll`] returns.
#[derive(Debug, Clone)]
pub enum GroupEvent {
    /// The group is rebalancing and these partitions are about to be taken away. Their
    /// positions are still there: commit what has been processed now (with auto-commit on,
    /// that has been done). The next `poll` rejoins.
    Revoked(Vec<(String, i32)>),
    /// The member now owns these partitions, starting from their committed offsets (or the reset
    /// policy where none is committed).
    Assigned(Vec<(String, i32)>),
    /// Records of owned partitions (possibly none).
    Records(Vec<PartitionRecords>),
}

/// A group member's identity, for committing offsets inside a producer's transaction
/// ([`crate::Producer::send_offsets_to_transaction`]): the coordinator refuses commits from a
/// member of an older generation, which fences zombie instances (KIP-447).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerGroupMetadata {
    /// The group.
    pub group_id: String,
    /// The member's generation (-1: not checked).
    pub generation_id: i32,
    /// The member id (empty: not checked).
    pub member_id: String,
    /// The static instance id, if any.
    pub group_instance_id: Option<String>,
}

impl ConsumerGroupMetadata {
    /// Identity for a group without a member, e.g. a job that assigns partitions itself.
    pub fn new(group_id: impl Into<String>) -> Self {
        Self { group_id: group_id.into(), generation_id: -1, member_id: String::new(), group_instance_id: None }
    }
}

/// Where the member stands in the group, shared with the heartbeat task.
#[derive(Debug)]
struct Membership {
    member_id: String,
    generation: i32,
    /// Joined and synced: heartbeats are due.
    stable: bool,
    /// The member id and generation of the last join that completed (synced): the member's
    /// identity for transactions, kept when the member is forgotten or its generation reset, so
    /// that what it hands out is refused rather than taken for a commit outside any group.
    synced: Option<(String, i32)>,
}

/// A classic member's standing, shared by its heartbeat task and whoever drives its joins (a
/// [`GroupConsumer`]'s `poll`, or the cooperative member's own task).
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) client: Client,
    group_id: String,
    group_instance_id: Option<String>,
    membership: Mutex<Membership>,
    /// A connection of this member's own to the coordinator, so that a long fetch or another
    /// member's JoinGroup on a pooled connection never delays a heartbeat.
    coordinator: tokio::sync::Mutex<Option<Arc<Connection>>>,
    pub(crate) rejoin: AtomicBool,
    /// Notified whenever a rejoin is asked for or an error becomes fatal.
    pub(crate) changed: tokio::sync::Notify,
    /// An error the heartbeat task met that `poll` must report (e.g. a fenced static member).
    pub(crate) fatal: Mutex<Option<Error>>,
}

impl Shared {
    /// A member of `config`'s group that has not joined yet.
    pub(crate) fn new(client: Client, config: &GroupConfig) -> Arc<Self> {
        Arc::new(Self {
            client,
            group_id: config.group_id.clone(),
            group_instance_id: config.group_instance_id.clone(),
            membership: Mutex::new(Membership {
                member_id: String::new(),
                generation: -1,
                stable: false,
                synced: None,
            }),
            coordinator: tokio::sync::Mutex::new(None),
            rejoin: AtomicBool::new(true),
            changed: tokio::sync::Notify::new(),
            fatal: Mutex::new(None),
        })
    }

    fn membership(&self) -> std::sync::MutexGuard<'_, Membership> {
        self.membership.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The member id, the generation, and whether the member is in (joined and synced).
    pub(crate) fn snapshot(&self) -> (String, i32, bool) {
        let m = self.membership();
        (m.member_id.clone(), m.generation, m.stable)
    }

    /// The member's identity for a transaction's offsets, as it stands now.
    pub(crate) fn group_metadata(&self) -> ConsumerGroupMetadata {
        let (member_id, generation_id) = {
            let m = self.membership();
            m.synced.clone().unwrap_or_else(|| (m.member_id.clone(), m.generation))
        };
        ConsumerGroupMetadata {
            group_id: self.group_id.clone(),
            generation_id,
            member_id,
            group_instance_id: self.group_instance_id.clone(),
        }
    }

    /// Asks for a rejoin unless the group has moved on since `generation` was current.
    fn request_rejoin(&self, generation: i32) {
        let mut m = self.membership();
        if m.generation == generation && m.stable {
            m.stable = false;
            self.rejoin.store(true, Ordering::SeqCst);
            self.changed.notify_one();
        }
    }

    /// The coordinator no longer takes `generation` (ILLEGAL_GENERATION): the member rejoins with
    /// no generation, as one that owns nothing (what it owned may be another member's already).
    fn reset_generation(&self, generation: i32) {
        let mut m = self.membership();
        if m.generation == generation {
            m.generation = -1;
            m.stable = false;
            self.rejoin.store(true, Ordering::SeqCst);
            self.changed.notify_one();
        }
    }

    fn forget_member_id(&self) {
        let mut m = self.membership();
        m.member_id.clear();
        m.generation = -1;
        m.stable = false;
        self.rejoin.store(true, Ordering::SeqCst);
        self.changed.notify_one();
    }

    /// Stops the member for good: `error` is reported to its user.
    pub(crate) fn fail(&self, error: Error) {
        *self.fatal.lock().unwrap_or_else(PoisonError::into_inner) = Some(error);
        self.changed.notify_one();
    }

    /// The coordinator connection, looked up first if there is none or it has closed.
    pub(crate) async fn coordinator(&self) -> Result<Arc<Connection>> {
        let mut slot = self.coordinator.lock().await;
        if let Some(connection) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(Arc::clone(connection));
        }
        let address = find_coordinator(&self.client, &self.group_id).await?;
        let connection = Arc::new(Connection::connect(&address, self.client.config().connection.clone()).await?);
        *slot = Some(Arc::clone(&connection));
        Ok(connection)
    }

    pub(crate) async fn forget_coordinator(&self) {
        *self.coordinator.lock().await = None;
    }
}

/// Whether a commit's error is the group changing under the member (a rebalance, a new
/// generation, the coordinator moving) or a transient fault: the member rejoins or commits
/// again later, and its positions are still there.
fn group_in_flux(error: &Error) -> bool {
    match error {
        Error::Broker { code, .. } | Error::BrokerMessage { code, .. } => {
            matches!(code, ErrorCode::RebalanceInProgress | ErrorCode::IllegalGeneration | ErrorCode::UnknownMemberId)
                || coordinator_moved(error)
        }
        other => other.is_retriable(),
    }
}

/// Whether an error means the coordinator moved or went away: look it up again.
pub(crate) fn coordinator_moved(error: &Error) -> bool {
    match error {
        Error::Broker { code, .. } => {
            matches!(
                code,
                ErrorCode::NotCoordinator | ErrorCode::CoordinatorNotAvailable | ErrorCode::CoordinatorLoadInProgress
            )
        }
        other => other.is_retriable(),
    }
}

/// The address of `group_id`'s coordinator.
pub(crate) async fn find_coordinator(client: &Client, group_id: &str) -> Result<String> {
    find_coordinator_of(client, group_id, KEY_TYPE_GROUP).await
}

/// FindCoordinator's key type for consumer groups.
const KEY_TYPE_GROUP: i8 = 0;

/// The address of the coordinator of `key` (a group id, or with key type 1 a transactional id).
pub(crate) async fn find_coordinator_of(client: &Client, key: &str, key_type: i8) -> Result<String> {
    // A coordinator is "not available" while its internal topic is being created (the first
    // lookup on a new cluster creates __consumer_offsets or __transaction_state) or its partition
    // moves: ask again, for up to the request timeout.
    let deadline = Instant::now() + client.config().connection.request_timeout;
    let mut backoff = Duration::from_millis(20);
    loop {
        match find_coordinator_once(client, key, key_type).await {
            Err(e) if e.is_retriable() && Instant::now() + backoff < deadline => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
            result => return result,
        }
    }
}

async fn find_coordinator_once(client: &Client, key: &str, key_type: i8) -> Result<String> {
    let broker = client.any_broker().await?;
    let version = broker.version_for::<FindCoordinatorRequest>(None)?;
    // v4 (KIP-699) looks up a list of keys; earlier versions one.
    let request = if version >= 4 {
        FindCoordinatorRequest { key_type, coordinator_keys: vec![key.to_owned()], ..FindCoordinatorRequest::default() }
    } else {
        FindCoordinatorRequest { key_type, key: key.to_owned(), ..FindCoordinatorRequest::default() }
    };
    let response = broker.send_version(&request, version).await?;
    let (code, host, port) = if version >= 4 {
        let found = response.coordinators.into_iter().find(|c| c.key == key).ok_or_else(|| Error::Broker {
            broker: broker.broker().to_owned(),
            api: "FindCoordinator",
            code: ErrorCode::CoordinatorNotAvailable,
        })?;
        (found.error_code, found.host, found.port)
    } else {
        (response.error_code, response.host, response.port)
    };
    check_error(broker.broker(), "FindCoordinator", code)?;
    Ok(broker_address(&host, port))
}

impl Shared {
    /// One JoinGroup and SyncGroup round: `Some(assignment)` when the member is in, `None` when
    /// the coordinator asks for another round.
    pub(crate) async fn join_and_sync(
        &self,
        config: &GroupConfig,
        owned: &[(String, i32)],
    ) -> Result<Option<Vec<(String, i32)>>> {
        let coordinator = self.coordinator().await?;
        // No heartbeats while joining (as Java's client): one queued behind the JoinGroup the
        // coordinator holds would time out and take the connection, and the join, with it.
        self.membership().stable = false;
        let (member_id, generation, _) = self.snapshot();
        let subscription = ConsumerProtocolSubscription {
            topics: config.topics.clone(),
            owned_partitions: owned_topics(owned),
            generation_id: generation,
            ..ConsumerProtocolSubscription::default()
        };
        let metadata =
            encode_subscription(&subscription, ConsumerProtocolSubscription::MAX_VERSION).map_err(|source| {
                Error::Encode { broker: coordinator.broker().to_owned(), api: "JoinGroup", version: -1, source }
            })?;
        let request = JoinGroupRequest {
            group_id: config.group_id.clone(),
            session_timeout_ms: millis(config.session_timeout),
            rebalance_timeout_ms: millis(config.rebalance_timeout),
            member_id,
            group_instance_id: config.group_instance_id.clone(),
            protocol_type: PROTOCOL_TYPE.into(),
            protocols: config
                .assignors
                .iter()
                .map(|a| JoinGroupRequestProtocol {
                    name: a.name().to_owned(),
                    metadata: metadata.clone(),
                    ..Default::default()
                })
                .collect(),
            ..JoinGroupRequest::default()
        };
        let version = coordinator.version_for::<JoinGroupRequest>(None)?;
        // The coordinator holds JoinGroup until every member has rejoined.
        let wait = config.rebalance_timeout + self.client.config().connection.request_timeout;
        let joined = coordinator.send_version_within(&request, version, wait).await?;
        match ErrorCode::from_code(joined.error_code) {
            ErrorCode::None => {}
            // KIP-394: the first join only hands out a member id, to be sent back.
            ErrorCode::MemberIdRequired => {
                self.membership().member_id = joined.member_id;
                return Ok(None);
            }
            ErrorCode::UnknownMemberId => {
                self.forget_member_id();
                return Ok(None);
            }
            ErrorCode::RebalanceInProgress | ErrorCode::CoordinatorLoadInProgress | ErrorCode::IllegalGeneration => {
                tokio::time::sleep(config.retry_backoff).await;
                return Ok(None);
            }
            code => return Err(Error::Broker { broker: coordinator.broker().to_owned(), api: "JoinGroup", code }),
        }
        {
            let mut m = self.membership();
            m.member_id.clone_from(&joined.member_id);
            m.generation = joined.generation_id;
        }
        let protocol = joined.protocol_name.clone().unwrap_or_default();
        let assignments = if joined.leader == joined.member_id {
            self.lead(config, &coordinator, &protocol, &joined.members).await?
        } else {
            Vec::new()
        };
        let request = SyncGroupRequest {
            group_id: config.group_id.clone(),
            generation_id: joined.generation_id,
            member_id: joined.member_id.clone(),
            group_instance_id: config.group_instance_id.clone(),
            protocol_type: Some(PROTOCOL_TYPE.into()),
            protocol_name: Some(protocol),
            assignments,
            ..SyncGroupRequest::default()
        };
        let version = coordinator.version_for::<SyncGroupRequest>(None)?;
        let synced = coordinator.send_version_within(&request, version, wait).await?;
        match ErrorCode::from_code(synced.error_code) {
            ErrorCode::None => {}
            ErrorCode::UnknownMemberId => {
                self.forget_member_id();
                return Ok(None);
            }
            ErrorCode::RebalanceInProgress => return Ok(None),
            // The group moved on without this member (it was too slow to sync).
            ErrorCode::IllegalGeneration => {
                self.reset_generation(joined.generation_id);
                return Ok(None);
            }
            code => return Err(Error::Broker { broker: coordinator.broker().to_owned(), api: "SyncGroup", code }),
        }
        let (_, assignment) = decode_assignment(synced.assignment).map_err(|source| Error::Decode {
            broker: coordinator.broker().to_owned(),
            api: "SyncGroup",
            version,
            source,
        })?;
        {
            let mut m = self.membership();
            m.stable = true;
            m.synced = Some((joined.member_id.clone(), joined.generation_id));
        }
        let mut assigned: Vec<(String, i32)> = assignment
            .assigned_partitions
            .into_iter()
            .flat_map(|t| t.partitions.into_iter().map(move |p| (t.topic.clone(), p)))
            .collect();
        assigned.sort();
        Ok(Some(assigned))
    }

    /// As the group's leader: decodes every member's subscription, looks up the partitions of
    /// the subscribed topics and runs the chosen assignor.
    async fn lead(
        &self,
        config: &GroupConfig,
        coordinator: &Connection,
        protocol: &str,
        members: &[JoinGroupResponseMember],
    ) -> Result<Vec<SyncGroupRequestAssignment>> {
        let decode_error =
            |source| Error::Decode { broker: coordinator.broker().to_owned(), api: "JoinGroup", version: -1, source };
        let assignor = config.assignors.iter().find(|a| a.name() == protocol).ok_or_else(|| Error::Broker {
            broker: coordinator.broker().to_owned(),
            api: "JoinGroup",
            code: ErrorCode::InconsistentGroupProtocol,
        })?;
        let mut group = Vec::with_capacity(members.len());
        let mut versions = BTreeMap::new();
        let mut generations = Vec::with_capacity(members.len());
        for member in members {
            let (version, subscription) = decode_subscription(member.metadata.clone()).map_err(decode_error)?;
            versions.insert(member.member_id.clone(), version);
            generations.push(subscription.generation_id);
            group.push(GroupMember {
                member_id: member.member_id.clone(),
                group_instance_id: member.group_instance_id.clone(),
                topics: subscription.topics,
                owned: subscription
                    .owned_partitions
                    .into_iter()
                    .flat_map(|t| t.partitions.into_iter().map(move |p| (t.topic.clone(), p)))
                    .collect(),
            });
        }
        drop_stale_claims(&mut group, &generations);
        let mut topics: Vec<&str> = group.iter().flat_map(|m| m.topics.iter().map(String::as_str)).collect();
        topics.sort_unstable();
        topics.dedup();
        let metadata = self.client.refresh_metadata(Some(&topics)).await?;
        let partitions: BTreeMap<String, i32> = topics
            .iter()
            .filter_map(|t| metadata.topics.get(*t).map(|m| ((*t).to_owned(), i32::try_from(m.partitions.len()))))
            .filter_map(|(t, n)| Some((t, n.ok()?)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let assignment = assignor.assign(&partitions, &group);
        assignment
            .into_iter()
            .map(|(member_id, partitions)| {
                let version =
                    versions.get(&member_id).copied().unwrap_or(0).min(ConsumerProtocolAssignment::MAX_VERSION);
                let payload = ConsumerProtocolAssignment {
                    assigned_partitions: assigned_topics(&partitions),
                    ..ConsumerProtocolAssignment::default()
                };
                let assignment = encode_assignment(&payload, version).map_err(|source| Error::Encode {
                    broker: coordinator.broker().to_owned(),
                    api: "SyncGroup",
                    version: -1,
                    source,
                })?;
                Ok(SyncGroupRequestAssignment { member_id, assignment, ..Default::default() })
            })
            .collect()
    }
}

/// A consumer that shares its topics' partitions with the other members of a group.
#[derive(Debug)]
pub struct GroupConsumer {
    config: GroupConfig,
    consumer: Consumer,
    shared: Arc<Shared>,
    heartbeat: JoinHandle<()>,
    assignment: Vec<(String, i32)>,
    /// The current assignment has been reported as revoked; the next poll rejoins.
    revoked: bool,
    last_commit: Instant,
    /// Each subscribed topic's partition count when this member first saw it: partitions
    /// numbered from there on were added while it ran.
    first_counts: BTreeMap<String, usize>,
    /// The partition counts the group last shared out, and when they were last compared with
    /// the cluster's.
    counts: BTreeMap<String, usize>,
    counted_at: Instant,
}

/// Held while a rejoin is under way: dropped before it is `done` (failed, or its future
/// dropped), it asks for another.
struct RejoinUnfinished {
    shared: Arc<Shared>,
    done: bool,
}

impl Drop for RejoinUnfinished {
    fn drop(&mut self) {
        if !self.done {
            self.shared.rejoin.store(true, Ordering::SeqCst);
        }
    }
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

impl GroupConsumer {
    /// A member of `config.group_id`; it joins at the first [`GroupConsumer::poll`]. Where a
    /// partition has no committed offset, `consumer.offset_reset` decides where it starts
    /// (`Error` makes `poll` fail with [`Error::NoCommittedOffset`]).
    pub fn new(client: Client, config: GroupConfig, consumer: ConsumerConfig) -> Self {
        let shared = Shared::new(client.clone(), &config);
        let heartbeat = tokio::spawn(heartbeat_loop(Arc::clone(&shared), config.heartbeat_interval));
        Self {
            config,
            consumer: Consumer::new(client, consumer),
            shared,
            heartbeat,
            assignment: Vec::new(),
            revoked: false,
            last_commit: Instant::now(),
            first_counts: BTreeMap::new(),
            counts: BTreeMap::new(),
            counted_at: Instant::now(),
        }
    }

    /// The partitions this member owns.
    pub fn assignment(&self) -> &[(String, i32)] {
        &self.assignment
    }

    /// The member id the coordinator gave this member (empty before it joined).
    pub fn member_id(&self) -> String {
        self.shared.snapshot().0
    }

    /// The group generation this member last joined (-1 before it joined).
    pub fn generation(&self) -> i32 {
        self.shared.snapshot().1
    }

    /// This member's identity for [`crate::Producer::send_offsets_to_transaction`].
    pub fn group_metadata(&self) -> ConsumerGroupMetadata {
        self.shared.group_metadata()
    }

    /// The underlying consumer: positions, watermarks and lag of the owned partitions, and seek.
    pub fn consumer(&mut self) -> &mut Consumer {
        &mut self.consumer
    }

    /// Takes the next step: reports a pending rebalance, rejoins, or fetches records.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropped at any await, the member loses nothing and the next poll goes on. A rejoin dropped part
    /// way is started again by the next poll (an Assigned event follows as usual; the group may take one more round);
    /// records whose positions moved are returned by the next poll (see Consumer::poll); a commit dropped part way
    /// may still be applied, which is harmless (the same offsets).
    pub async fn poll(&mut self) -> Result<GroupEvent> {
        if let Some(error) = self.shared.fatal.lock().unwrap_or_else(PoisonError::into_inner).take() {
            return Err(error);
        }
        if self.shared.rejoin.load(Ordering::SeqCst) {
            if !self.assignment.is_empty() && !self.revoked {
                if self.config.auto_commit_interval.is_some() {
                    // Best effort: a group already past this generation refuses the commit, and
                    // the records are then consumed again by their next owner.
                    if let Err(e) = self.commit().await {
                        tracing::info!(group = %self.config.group_id, error = %e, "commit before the rebalance refused; the next owner reads from the last commit");
                    }
                }
                self.revoked = true;
                tracing::info!(group = %self.config.group_id, partitions = ?self.assignment, "rebalance: partitions revoked");
                return Ok(GroupEvent::Revoked(self.assignment.clone()));
            }
            return match self.rejoin().await {
                Ok(assigned) => {
                    let (member, generation, _) = self.shared.snapshot();
                    tracing::info!(group = %self.config.group_id, member = %member, generation, partitions = ?assigned, "joined");
                    Ok(GroupEvent::Assigned(assigned))
                }
                // A transient fault (the coordinator moving, a leader lost): the next poll
                // rejoins again.
                Err(e) if group_in_flux(&e) => {
                    tracing::info!(group = %self.config.group_id, error = %e, "rejoin failed; trying again");
                    tokio::time::sleep(self.config.retry_backoff).await;
                    Ok(GroupEvent::Records(Vec::new()))
                }
                Err(e) => Err(e),
            };
        }
        if let Some(interval) = self.config.auto_commit_interval {
            if self.last_commit.elapsed() >= interval {
                match self.commit().await {
                    // The coordinator moving, a rebalance starting: the next poll commits again
                    // (or rejoins); the positions are still there.
                    Err(e) if group_in_flux(&e) => {}
                    other => other?,
                }
            }
        }
        if self.counted_at.elapsed() >= self.config.partition_discovery_interval {
            self.check_partition_counts().await;
        }
        if self.assignment.is_empty() {
            // Nothing to fetch: wait as long as a fetch would, then let the caller look again.
            tokio::time::sleep(self.config.heartbeat_interval.min(Duration::from_millis(500))).await;
            return Ok(GroupEvent::Records(Vec::new()));
        }
        self.consumer.poll().await.map(GroupEvent::Records)
    }

    /// Compares the subscribed topics' partition counts with those the group last shared out;
    /// partitions added make the member rejoin (the group's leader then shares them out too).
    /// A failed lookup is tried again at the next interval.
    async fn check_partition_counts(&mut self) {
        self.counted_at = Instant::now();
        let topics: Vec<&str> = self.config.topics.iter().map(String::as_str).collect();
        let Ok(metadata) = self.shared.client.refresh_metadata(Some(&topics)).await else { return };
        let grown = self.counts.iter().any(|(topic, count)| {
            metadata.topics.get(topic).is_some_and(|t| t.error == ErrorCode::None && t.partitions.len() > *count)
        });
        if grown {
            let (_, generation, _) = self.shared.snapshot();
            self.shared.request_rejoin(generation);
        }
    }

    async fn rejoin(&mut self) -> Result<Vec<(String, i32)>> {
        // Failed or dropped part way (a caller's timeout), the next poll rejoins again, rather
        // than go on owning partitions it fetches nothing of.
        let mut unfinished = RejoinUnfinished { shared: Arc::clone(&self.shared), done: false };
        let result = self.rejoin_once().await;
        unfinished.done = result.is_ok();
        result
    }

    async fn rejoin_once(&mut self) -> Result<Vec<(String, i32)>> {
        self.assignment.clear();
        // Everything the consumer has, including partitions a dropped rejoin had begun to assign.
        let assigned: Vec<(String, i32)> = self.consumer.progress().map(|(t, p, _)| (t.to_owned(), p)).collect();
        for (topic, partition) in assigned {
            self.consumer.unassign(&topic, partition);
        }
        self.revoked = false;
        let deadline = Instant::now() + self.config.rebalance_timeout;
        let assigned = loop {
            self.shared.rejoin.store(false, Ordering::SeqCst);
            match self.shared.join_and_sync(&self.config, &self.assignment).await {
                Ok(Some(assigned)) => break assigned,
                Ok(None) => {}
                Err(e) if coordinator_moved(&e) && Instant::now() < deadline => {
                    self.shared.forget_coordinator().await;
                    tokio::time::sleep(self.config.retry_backoff).await;
                }
                Err(e) => return Err(e),
            }
        };
        self.note_partition_counts().await;
        let committed = loop {
            match self.committed(&assigned).await {
                Err(e) if coordinator_moved(&e) && Instant::now() < deadline => {
                    self.shared.forget_coordinator().await;
                    tokio::time::sleep(self.config.retry_backoff).await;
                }
                committed => break committed?,
            }
        };
        for (topic, partition) in &assigned {
            let added =
                usize::try_from(*partition).is_ok_and(|p| self.first_counts.get(topic).is_some_and(|n| p >= *n));
            let start = match committed.get(&(topic.clone(), *partition)).copied().flatten() {
                Some(offset) => StartAt::Offset(offset),
                // Added while this member ran: every record of it is new.
                None if added => StartAt::Earliest,
                None => match self.consumer.config().offset_reset {
                    OffsetReset::Earliest => StartAt::Earliest,
                    OffsetReset::Latest => StartAt::Latest,
                    OffsetReset::Error => {
                        return Err(Error::NoCommittedOffset {
                            group: self.config.group_id.clone(),
                            topic: topic.clone(),
                            partition: *partition,
                        })
                    }
                },
            };
            self.consumer.assign(topic, *partition, start).await?;
        }
        self.assignment.clone_from(&assigned);
        self.last_commit = Instant::now();
        Ok(assigned)
    }

    /// Takes the subscribed topics' partition counts from the metadata the group was shared out
    /// by (the leader refreshed it; a follower's may be older, and is refreshed if so).
    async fn note_partition_counts(&mut self) {
        let topics: Vec<&str> = self.config.topics.iter().map(String::as_str).collect();
        let Ok(metadata) = self.shared.client.refresh_metadata(Some(&topics)).await else { return };
        for topic in &self.config.topics {
            let Some(count) =
                metadata.topics.get(topic).filter(|t| t.error == ErrorCode::None).map(|t| t.partitions.len())
            else {
                continue;
            };
            self.first_counts.entry(topic.clone()).or_insert(count);
            self.counts.insert(topic.clone(), count);
        }
        self.counted_at = Instant::now();
    }

    fn client_timeout(&self) -> Duration {
        self.shared.client.config().connection.request_timeout
    }

    /// Commits the position of every owned partition: the offset after the last record `poll`
    /// returned. Records returned are taken as processed.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the commit may or may not reach the coordinator; committing again commits the same offsets.
    pub async fn commit(&mut self) -> Result<()> {
        let offsets: Vec<(String, i32, i64)> =
            self.consumer.progress().map(|(topic, partition, p)| (topic.to_owned(), partition, p.position)).collect();
        self.commit_offsets(&offsets).await
    }

    /// Commits these offsets (each the offset of the next record to consume) for this member's
    /// generation. A group that has moved on refuses with `REBALANCE_IN_PROGRESS`,
    /// `ILLEGAL_GENERATION` or `UNKNOWN_MEMBER_ID` (as [`Error::Broker`]), and the member
    /// rejoins at the next `poll`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the commit may or may not reach the coordinator; committing again is harmless.
    pub async fn commit_offsets(&mut self, offsets: &[(String, i32, i64)]) -> Result<()> {
        if offsets.is_empty() {
            self.last_commit = Instant::now();
            return Ok(());
        }
        let (member_id, generation, _) = self.shared.snapshot();
        let request = OffsetCommitRequest {
            group_id: self.config.group_id.clone(),
            generation_id_or_member_epoch: generation,
            member_id,
            group_instance_id: self.config.group_instance_id.clone(),
            topics: commit_topics(offsets),
            ..OffsetCommitRequest::default()
        };
        // As Java's commitSync: a coordinator moving (or being elected) is waited out, for up to
        // the request timeout.
        let deadline = Instant::now() + self.client_timeout();
        loop {
            let result = self.commit_once(&request, generation).await;
            match result {
                Err(e) if coordinator_moved(&e) && Instant::now() + self.config.retry_backoff < deadline => {
                    self.shared.forget_coordinator().await;
                    tokio::time::sleep(self.config.retry_backoff).await;
                }
                other => {
                    if other.is_ok() {
                        self.last_commit = Instant::now();
                    }
                    return other;
                }
            }
        }
    }

    async fn commit_once(&self, request: &OffsetCommitRequest, generation: i32) -> Result<()> {
        let coordinator = self.shared.coordinator().await?;
        let response = send_offset_commit(&coordinator, request).await?;
        for partition in response.topics.iter().flat_map(|t| t.partitions.iter()) {
            let code = ErrorCode::from_code(partition.error_code);
            match code {
                ErrorCode::None => continue,
                ErrorCode::UnknownMemberId => self.shared.forget_member_id(),
                ErrorCode::RebalanceInProgress | ErrorCode::IllegalGeneration => self.shared.request_rejoin(generation),
                _ => {}
            }
            return Err(Error::Broker { broker: coordinator.broker().to_owned(), api: "OffsetCommit", code });
        }
        Ok(())
    }

    /// The group's committed offsets for `partitions` (`None` where nothing is committed).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn committed(&self, partitions: &[(String, i32)]) -> Result<BTreeMap<(String, i32), Option<i64>>> {
        let coordinator = self.shared.coordinator().await?;
        fetch_committed(&coordinator, &self.config.group_id, Some(partitions)).await
    }

    /// Leaves the group: commits positions if auto-commit is on, then sends LeaveGroup so the
    /// others take over at once (a static member does not leave; its partitions wait for it
    /// until the session timeout).
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: the member is gone with the future (the close takes it by value) and its heartbeats have
    /// stopped, but it may not have committed or left; the group then waits for its session to time out before
    /// sharing out its partitions, which are read again from the last committed offsets.
    pub async fn close(mut self) -> Result<()> {
        self.heartbeat.abort();
        let commit = if self.config.auto_commit_interval.is_some() && !self.assignment.is_empty() {
            // A commit the group refuses because this member is no longer in it (its session
            // ran out, say, while its connections were frozen) is not a failure of the close:
            // the partitions are another member's now, read from the last committed offsets
            // (at least once), as Java's consumer treats it on close.
            match self.commit().await {
                Err(Error::Broker {
                    code: ErrorCode::UnknownMemberId | ErrorCode::IllegalGeneration | ErrorCode::RebalanceInProgress,
                    ..
                }) => Ok(()),
                commit => commit,
            }
        } else {
            Ok(())
        };
        self.shared.leave().await?;
        commit
    }
}

impl Shared {
    /// Leaves the group with LeaveGroup, so that the others take over at once; a static member
    /// (KIP-345) stays, and its partitions wait for it until its session ends.
    pub(crate) async fn leave(&self) -> Result<()> {
        let (member_id, _, _) = self.snapshot();
        if self.group_instance_id.is_some() || member_id.is_empty() {
            return Ok(());
        }
        let coordinator = self.coordinator().await?;
        let version = coordinator.version_for::<LeaveGroupRequest>(None)?;
        // v3 (KIP-345) leaves as a list of members.
        let request = if version >= 3 {
            let member = MemberIdentity { member_id, ..Default::default() };
            LeaveGroupRequest { group_id: self.group_id.clone(), members: vec![member], ..Default::default() }
        } else {
            LeaveGroupRequest { group_id: self.group_id.clone(), member_id, ..Default::default() }
        };
        let response = coordinator.send_version(&request, version).await?;
        check_error(coordinator.broker(), "LeaveGroup", response.error_code)
    }
}

/// Sends heartbeats while the member is in the group, and turns the coordinator's answers into
/// a rejoin request (rebalance, unknown member, old generation) or a fatal error (fenced).
pub(crate) async fn heartbeat_loop(shared: Arc<Shared>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let (member_id, generation, stable) = shared.snapshot();
        if !stable {
            continue;
        }
        let request = HeartbeatRequest {
            group_id: shared.group_id.clone(),
            generation_id: generation,
            member_id,
            group_instance_id: shared.group_instance_id.clone(),
            ..HeartbeatRequest::default()
        };
        let answer = match shared.coordinator().await {
            Ok(coordinator) => coordinator.send(&request).await.map(|r| (coordinator, r.error_code)),
            Err(e) => Err(e),
        };
        match answer {
            Ok((coordinator, code)) => match ErrorCode::from_code(code) {
                ErrorCode::None => {}
                ErrorCode::RebalanceInProgress => {
                    tracing::debug!(group = %shared.group_id, generation, "rebalance: rejoin requested");
                    shared.request_rejoin(generation);
                }
                ErrorCode::IllegalGeneration => {
                    tracing::info!(group = %shared.group_id, generation, "the group moved on without this member; joining anew");
                    shared.reset_generation(generation);
                }
                ErrorCode::UnknownMemberId => {
                    tracing::info!(group = %shared.group_id, "the coordinator no longer knows this member; joining anew");
                    shared.forget_member_id();
                }
                ErrorCode::NotCoordinator | ErrorCode::CoordinatorNotAvailable => shared.forget_coordinator().await,
                code => {
                    let error = Error::Broker { broker: coordinator.broker().to_owned(), api: "Heartbeat", code };
                    tracing::error!(group = %shared.group_id, error = %error, "heartbeat refused");
                    shared.fail(error);
                    shared.request_rejoin(generation);
                }
            },
            // The connection broke or timed out: find the coordinator again at the next beat.
            Err(e) => {
                tracing::info!(group = %shared.group_id, error = %e, "heartbeat failed; looking up the coordinator again");
                shared.forget_coordinator().await;
            }
        }
    }
}

/// Sends an OffsetCommit, naming its topics (v9 at most).
pub(crate) async fn send_offset_commit(
    coordinator: &Connection,
    request: &OffsetCommitRequest,
) -> Result<OffsetCommitResponse> {
    let version = coordinator.version_for::<OffsetCommitRequest>(Some(OFFSET_COMMIT_BY_NAME_MAX_VERSION))?;
    coordinator.send_version(request, version).await
}

/// A group's committed offsets, from its coordinator: for `partitions`, or every partition the
/// group has committed if `None`.
pub(crate) async fn fetch_committed(
    coordinator: &Connection,
    group_id: &str,
    partitions: Option<&[(String, i32)]>,
) -> Result<BTreeMap<(String, i32), Option<i64>>> {
    fetch_committed_as(coordinator, group_id, partitions, false).await
}

/// [`fetch_committed`], with `require_stable` (OffsetFetch v7+, KIP-447): the coordinator answers
/// UNSTABLE_OFFSET_COMMIT while a transaction that commits offsets for these partitions is
/// pending, instead of the offsets from before it.
pub(crate) async fn fetch_committed_as(
    coordinator: &Connection,
    group_id: &str,
    partitions: Option<&[(String, i32)]>,
    require_stable: bool,
) -> Result<BTreeMap<(String, i32), Option<i64>>> {
    let topics = partitions.map(|partitions| {
        let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for (topic, partition) in partitions {
            topics.entry(topic).or_default().push(*partition);
        }
        topics
            .into_iter()
            .map(|(name, partition_indexes)| OffsetFetchRequestTopic {
                name: name.to_owned(),
                partition_indexes,
                ..Default::default()
            })
            .collect()
    });
    let request =
        OffsetFetchRequest { group_id: group_id.to_owned(), topics, require_stable, ..OffsetFetchRequest::default() };
    let version = coordinator.version_for::<OffsetFetchRequest>(Some(OFFSET_FETCH_SINGLE_GROUP_MAX_VERSION))?;
    let response = coordinator.send_version(&request, version).await?;
    check_error(coordinator.broker(), "OffsetFetch", response.error_code)?;
    let mut committed = BTreeMap::new();
    for topic in response.topics {
        for partition in topic.partitions {
            check_error(coordinator.broker(), "OffsetFetch", partition.error_code)?;
            let offset = Some(partition.committed_offset).filter(|o| *o >= 0);
            committed.insert((topic.name.clone(), partition.partition_index), offset);
        }
    }
    Ok(committed)
}

impl Client {
    /// A pooled connection to `group_id`'s coordinator.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only looks up (a connection it made may stay in the pool).
    pub async fn group_coordinator(&self, group_id: &str) -> Result<Arc<Connection>> {
        let address = find_coordinator(self, group_id).await?;
        self.connection_to(&address).await
    }
}

/// OffsetCommit's topics for (topic, partition, offset) triples.
pub(crate) fn commit_topics(offsets: &[(String, i32, i64)]) -> Vec<OffsetCommitRequestTopic> {
    let mut topics: BTreeMap<&str, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
    for (topic, partition, offset) in offsets {
        topics.entry(topic).or_default().push(OffsetCommitRequestPartition {
            partition_index: *partition,
            committed_offset: *offset,
            ..Default::default()
        });
    }
    topics
        .into_iter()
        .map(|(name, partitions)| OffsetCommitRequestTopic { name: name.to_owned(), partitions, ..Default::default() })
        .collect()
}

/// Keeps each partition's ownership claim only from the members of the latest generation that
/// claims it (as the Java client's sticky assignors do): a member that was dropped from the group
/// and rejoins still claims what it owned then, which the group has since given to another.
fn drop_stale_claims(group: &mut [GroupMember], generations: &[i32]) {
    let mut latest: BTreeMap<(String, i32), i32> = BTreeMap::new();
    for (member, generation) in group.iter().zip(generations) {
        for partition in &member.owned {
            let entry = latest.entry(partition.clone()).or_insert(*generation);
            *entry = (*entry).max(*generation);
        }
    }
    for (member, generation) in group.iter_mut().zip(generations) {
        member.owned.retain(|partition| latest.get(partition) == Some(generation));
    }
}

fn owned_topics(partitions: &[(String, i32)]) -> Vec<OwnedTopic> {
    group_by_topic(partitions).into_iter().map(|(topic, partitions)| OwnedTopic { topic, partitions }).collect()
}

fn assigned_topics(partitions: &[(String, i32)]) -> Vec<AssignedTopic> {
    group_by_topic(partitions).into_iter().map(|(topic, partitions)| AssignedTopic { topic, partitions }).collect()
}

fn group_by_topic(partitions: &[(String, i32)]) -> BTreeMap<String, Vec<i32>> {
    let mut topics: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for (topic, partition) in partitions {
        topics.entry(topic.clone()).or_default().push(*partition);
    }
    topics
}

fn millis(duration: Duration) -> i32 {
    i32::try_from(duration.as_millis()).unwrap_or(i32::MAX)
}
