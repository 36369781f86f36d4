//! A consumer-group member that takes part in the group only (it fetches nothing), on the
//! consumer protocol of KIP-848 (Kafka 4) where the coordinator offers it, else on the classic
//! protocol with cooperative rebalancing (KIP-429, the `classic` module): the same
//! [`MemberEvent`]s either way, so a user sees one kind of member ([`GroupProtocol`] chooses).
//!
//! On the consumer protocol the coordinator assigns the partitions itself, and each member
//! learns its share by heartbeating (ConsumerGroupHeartbeat).
//!
//! A member joins with epoch 0 and its subscription, then heartbeats at the interval the
//! coordinator gives. A heartbeat's answer may carry the member's target assignment (partitions by
//! topic id) and a new member epoch. The member reconciles towards the target as the Java client
//! does: the partitions it must give up come first, as [`MemberEvent::Revoked`]; it keeps them, and
//! says so in its heartbeats, until its user calls [`ConsumerGroupMember::released`]. Only then are
//! the partitions it gains reported ([`MemberEvent::Assigned`]) and acknowledged. The coordinator
//! gives a partition to a new owner only once the old one has acknowledged giving it up (or has
//! been fenced), so no partition is ever held by two live members.
//!
//! A member fenced by the coordinator (its session expired, or its epoch fell behind:
//! FENCED_MEMBER_EPOCH, UNKNOWN_MEMBER_ID) loses everything at once ([`MemberEvent::Lost`]: the
//! partitions may already be another member's) and joins again under the same member id.
//! Sessions are the broker's (`group.consumer.session.timeout.ms`, 45 s by default), not the
//! member's. Leaving sends epoch -1 (-2 for a static member, whose partitions then wait for it
//! until its session ends).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sluice_protocol::error_code::ErrorCode;
use sluice_protocol::messages::consumer_group_heartbeat_request::TopicPartitions;
use sluice_protocol::messages::{ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse};
use sluice_protocol::primitives::Uuid;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use crate::client::Client;
use crate::connection::{check_error_message, Connection};
use crate::error::{Error, Result};
use crate::group::{coordinator_moved, find_coordinator, ConsumerGroupMetadata};

mod classic;

/// How long to wait before heartbeating again after a retriable failure, at first and at most.
const RETRY_BACKOFF: Duration = Duration::from_millis(100);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// The heartbeat interval until the coordinator names one.
const FIRST_INTERVAL: Duration = Duration::from_millis(500);
/// Epochs with a meaning of their own in a heartbeat.
const LEAVE_EPOCH: i32 = -1;
const STATIC_LEAVE_EPOCH: i32 = -2;

/// How a [`ConsumerGroupMember`] joins its group.
///
/// Fields may be added in later versions (`#[non_exhaustive]`): start from
/// [`ConsumerGroupConfig::new`] and set the fields you need.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConsumerGroupConfig {
    /// The group.
    pub group_id: String,
    /// The topics whose partitions the group shares.
    pub topics: Vec<String>,
    /// A static member's instance id (KIP-345): a member that comes back under it within its
    /// session gets its partitions back.
    pub group_instance_id: Option<String>,
    /// How long the coordinator waits for the member to release revoked partitions before it
    /// fences the member.
    pub rebalance_timeout: Duration,
    /// The coordinator's assignor to use (`uniform` or `range` on Kafka 4); `None` for the
    /// group's default. `range` gives a member the same partition numbers of every topic when
    /// the topics have as many partitions. Consumer protocol only.
    pub server_assignor: Option<String>,
    /// Which group protocol to use.
    pub protocol: GroupProtocol,
    /// Classic protocol only: without a heartbeat for this long the coordinator drops the member
    /// (the consumer protocol's session is the broker's `group.consumer.session.timeout.ms`).
    pub session_timeout: Duration,
    /// Classic protocol only: time between heartbeats (the consumer protocol's is the
    /// coordinator's).
    pub heartbeat_interval: Duration,
}

/// The group protocol a [`ConsumerGroupMember`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum GroupProtocol {
    /// The consumer protocol where the coordinator offers it, the classic one otherwise.
    #[default]
    Auto,
    /// The consumer protocol of KIP-848 (ConsumerGroupHeartbeat; Kafka 4): the coordinator
    /// assigns.
    Consumer,
    /// The classic protocol (JoinGroup, SyncGroup) with cooperative rebalancing (KIP-429): the
    /// group's leader assigns with the `cooperative-sticky` assignor.
    Classic,
}

impl ConsumerGroupConfig {
    /// A member of `group_id` sharing the partitions of `topics`, with the defaults: dynamic, the
    /// consumer protocol where the coordinator offers it, a rebalance timeout of 60 s, the
    /// group's assignor; on the classic protocol a session of 45 s and heartbeats every 3 s (the
    /// Java client's).
    pub fn new<S: Into<String>>(group_id: impl Into<String>, topics: impl IntoIterator<Item = S>) -> Self {
        Self {
            group_id: group_id.into(),
            topics: topics.into_iter().map(Into::into).collect(),
            group_instance_id: None,
            rebalance_timeout: Duration::from_secs(60),
            server_assignor: None,
            protocol: GroupProtocol::Auto,
            session_timeout: classic::SESSION_TIMEOUT,
            heartbeat_interval: classic::HEARTBEAT_INTERVAL,
        }
    }
}

/// A change of what a [`ConsumerGroupMember`] owns.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemberEvent {
    /// Partitions given to this member (topic, partition): it owns them from now on.
    Assigned(Vec<(String, i32)>),
    /// Partitions to give up: finish what is under way with them, then call
    /// [`ConsumerGroupMember::released`]. The member owns them until then.
    Revoked(Vec<(String, i32)>),
    /// Partitions lost without a revocation: the coordinator fenced this member (its session
    /// expired or its epoch fell behind), and another may own them already. Nothing done with
    /// them since may be committed. The member joins again.
    Lost(Vec<(String, i32)>),
}

/// A member of a consumer group, on the KIP-848 protocol or the classic one (see the module
/// docs). It only takes part in the group: what to read from the partitions it owns is its
/// user's business.
#[derive(Debug)]
pub struct ConsumerGroupMember {
    engine: Engine,
    events: mpsc::UnboundedReceiver<MemberEvent>,
}

/// The protocol a member speaks, and its machinery.
#[derive(Debug)]
enum Engine {
    /// KIP-848: the heartbeat task reconciles.
    Consumer { shared: Arc<Shared>, heartbeat: JoinHandle<()> },
    /// Classic, cooperative.
    Classic(classic::ClassicMember),
}

#[derive(Debug)]
struct Shared {
    client: Client,
    config: ConsumerGroupConfig,
    /// The id this member made for itself (sent from ConsumerGroupHeartbeat v1 on).
    own_id: String,
    state: Mutex<State>,
    /// Wakes the heartbeat task early: partitions were released.
    wake: Notify,
    /// This member's own coordinator connection, so that no other request delays a heartbeat.
    coordinator: tokio::sync::Mutex<Option<Arc<Connection>>>,
    /// Why the member stopped, once the coordinator refused it for good.
    fatal: Mutex<Option<Error>>,
}

/// Partitions by topic id.
type Partitions = BTreeSet<(Uuid, i32)>;

/// Where the member stands.
#[derive(Debug, Default)]
struct State {
    member_id: String,
    epoch: i32,
    /// The partitions the member holds and has reported as its own (revoked ones included until
    /// released).
    owned: BTreeSet<(Uuid, i32)>,
    /// Owned partitions reported as revoked and not released yet.
    revoking: BTreeSet<(Uuid, i32)>,
    /// The coordinator's latest target assignment, until the member has reached it.
    target: Option<BTreeSet<(Uuid, i32)>>,
    /// The owned partitions changed since the last heartbeat: the next one reports them at once.
    owned_changed: bool,
    /// The next heartbeat sends every field, as when joining (after a failure the coordinator
    /// may have missed the last one).
    send_all: bool,
    /// Topic names by id, for the assignments.
    names: HashMap<Uuid, String>,
    /// Times the member lost what it owned (see [`ConsumerGroupMember::losses`]).
    losses: u64,
}

impl State {
    /// The next heartbeat: every field when joining or after a failure, otherwise the epoch and
    /// what changed (the owned partitions, once reconciled).
    fn heartbeat(&mut self, config: &ConsumerGroupConfig) -> ConsumerGroupHeartbeatRequest {
        let mut request = ConsumerGroupHeartbeatRequest {
            group_id: config.group_id.clone(),
            member_id: self.member_id.clone(),
            member_epoch: self.epoch,
            ..ConsumerGroupHeartbeatRequest::default()
        };
        if self.send_all || self.epoch == 0 {
            request.instance_id = config.group_instance_id.clone();
            request.rebalance_timeout_ms = millis(config.rebalance_timeout);
            request.subscribed_topic_names = Some(config.topics.clone());
            request.server_assignor = config.server_assignor.clone();
            self.owned_changed = true;
        }
        if self.owned_changed {
            request.topic_partitions = Some(by_topic(&self.owned));
        }
        request
    }

    /// Takes in a heartbeat's answer; returns when to heartbeat next.
    fn answered(&mut self, sent: &ConsumerGroupHeartbeatRequest, response: ConsumerGroupHeartbeatResponse) -> Duration {
        self.send_all = false;
        // Reported, unless the owned partitions changed again while the heartbeat was out.
        if sent.topic_partitions.as_ref().is_some_and(|sent| *sent == by_topic(&self.owned)) {
            self.owned_changed = false;
        }
        if let Some(member_id) = response.member_id.filter(|id| !id.is_empty()) {
            self.member_id = member_id;
        }
        self.epoch = response.member_epoch;
        if let Some(assignment) = response.assignment {
            let target = assignment
                .topic_partitions
                .into_iter()
                .flat_map(|t| t.partitions.into_iter().map(move |p| (t.topic_id, p)))
                .collect();
            self.target = Some(target);
        }
        u64::try_from(response.heartbeat_interval_ms)
            .ok()
            .filter(|ms| *ms > 0)
            .map_or(FIRST_INTERVAL, Duration::from_millis)
    }

    /// Moves towards the target assignment: reports the partitions to give up, or once none is
    /// left to give up, takes the partitions gained whose topics it can name. Returns a topic id
    /// it cannot name yet, whose partitions wait for fresh metadata.
    fn reconcile(&mut self, events: &mpsc::UnboundedSender<MemberEvent>) -> Option<Uuid> {
        let target = self.target.clone()?;
        let revoked: BTreeSet<(Uuid, i32)> =
            self.owned.difference(&target).filter(|p| !self.revoking.contains(p)).copied().collect();
        if !revoked.is_empty() {
            send(events, MemberEvent::Revoked(self.named(&revoked)));
            self.revoking.extend(revoked);
        }
        if !self.revoking.is_empty() {
            return None;
        }
        let (gained, unnamed): (Partitions, Partitions) =
            target.difference(&self.owned).partition(|(id, _)| self.names.contains_key(id));
        if !gained.is_empty() {
            send(events, MemberEvent::Assigned(self.named(&gained)));
            self.owned.extend(gained);
            self.owned_changed = true;
        }
        match unnamed.first() {
            Some((id, _)) => Some(*id),
            None => {
                self.target = None;
                None
            }
        }
    }

    /// Releases revoked partitions (the user is done with them). Only partitions under
    /// revocation count: a release from before the member was fenced (which forgets every
    /// revocation) cannot give up a partition assigned since.
    fn release(&mut self, partitions: &[(String, i32)]) {
        let released: Vec<(Uuid, i32)> = self
            .revoking
            .iter()
            .filter(|(id, p)| {
                let name = self.names.get(id).map(String::as_str);
                partitions.iter().any(|(topic, partition)| Some(topic.as_str()) == name && partition == p)
            })
            .copied()
            .collect();
        for key in released {
            self.revoking.remove(&key);
            self.owned.remove(&key);
            self.owned_changed = true;
        }
    }

    /// Everything owned is lost (the member was fenced, or refused for good).
    fn lose_all(&mut self, events: &mpsc::UnboundedSender<MemberEvent>) {
        let lost = std::mem::take(&mut self.owned);
        self.revoking.clear();
        self.target = None;
        if !lost.is_empty() {
            self.losses += 1;
            send(events, MemberEvent::Lost(self.named(&lost)));
        }
    }

    /// Learns topic names from metadata: each topic's current id (a topic made again gets a new
    /// one; the old id stays only while partitions of it are owned).
    fn learn(&mut self, metadata: &crate::client::ClusterMetadata) {
        for (name, topic) in &metadata.topics {
            if topic.topic_id == Uuid::ZERO || topic.error != ErrorCode::None {
                continue;
            }
            let owned = &self.owned;
            self.names.retain(|id, known| known != name || *id == topic.topic_id || owned.iter().any(|(o, _)| o == id));
            self.names.insert(topic.topic_id, name.clone());
        }
    }

    /// `partitions` by topic name, sorted (an id without a name as the id itself).
    fn named(&self, partitions: &BTreeSet<(Uuid, i32)>) -> Vec<(String, i32)> {
        let mut named: Vec<(String, i32)> = partitions
            .iter()
            .map(|(id, p)| (self.names.get(id).cloned().unwrap_or_else(|| id.to_string()), *p))
            .collect();
        named.sort();
        named
    }
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The coordinator connection, looked up first if there is none or it has closed.
    async fn coordinator(&self) -> Result<Arc<Connection>> {
        let mut slot = self.coordinator.lock().await;
        if let Some(connection) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(Arc::clone(connection));
        }
        let address = find_coordinator(&self.client, &self.config.group_id).await?;
        let connection = Arc::new(Connection::connect(&address, self.client.config().connection.clone()).await?);
        *slot = Some(Arc::clone(&connection));
        Ok(connection)
    }

    async fn forget_coordinator(&self) {
        *self.coordinator.lock().await = None;
    }

    /// Ends the member: the coordinator refused it for good. What it owned is lost.
    fn stop(&self, error: Error, events: &mpsc::UnboundedSender<MemberEvent>) {
        tracing::warn!(group = %self.config.group_id, %error, "the coordinator refused the member");
        self.state().lose_all(events);
        *self.fatal.lock().unwrap_or_else(PoisonError::into_inner) = Some(error);
    }

    /// Why the member stopped.
    fn fatal(&self) -> Error {
        // The task ends only after a refusal for good (it is aborted only with the member).
        stopped(&self.config.group_id, &self.fatal)
    }

    /// Learns the names of the subscribed topics from fresh metadata.
    async fn learn_names(&self) -> Result<()> {
        let topics: Vec<&str> = self.config.topics.iter().map(String::as_str).collect();
        let metadata = self.client.refresh_metadata(Some(&topics)).await?;
        self.state().learn(&metadata);
        Ok(())
    }
}

impl ConsumerGroupMember {
    /// Joins `config.group_id` with the consumer protocol: sends the first heartbeat (so a
    /// broker without the protocol, or a group it refuses, fails here), then heartbeats in the
    /// background. The assignment arrives as [`MemberEvent`]s from [`next_event`](Self::next_event).
    ///
    /// With [`GroupProtocol::Classic`], or [`GroupProtocol::Auto`] where the coordinator lacks the
    /// consumer protocol, the member joins with the classic protocol in the background instead,
    /// and a refusal comes from `next_event`.
    ///
    /// With [`GroupProtocol::Consumer`], fails where the coordinator lacks the consumer
    /// protocol: with [`Error::UnsupportedVersion`] on a broker before Kafka 4 (no
    /// ConsumerGroupHeartbeat), with the coordinator's UNSUPPORTED_VERSION on one whose
    /// `group.coordinator.rebalance.protocols` leaves out `consumer`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropped before it returns, the member has at most joined; the coordinator
    /// drops it when its session ends.
    pub async fn join(client: Client, config: ConsumerGroupConfig) -> Result<Self> {
        match config.protocol {
            GroupProtocol::Consumer => Self::join_consumer(client, config).await,
            GroupProtocol::Classic => Ok(Self::join_classic(client, &config)),
            GroupProtocol::Auto => match Self::join_consumer(client.clone(), config.clone()).await {
                Err(error) if lacks_consumer_protocol(&error) => {
                    tracing::info!(group = %config.group_id, %error, "no consumer protocol here: joining with the classic one");
                    Ok(Self::join_classic(client, &config))
                }
                joined => joined,
            },
        }
    }

    /// Starts a classic, cooperative member: it joins in the background.
    fn join_classic(client: Client, config: &ConsumerGroupConfig) -> Self {
        let (sender, events) = mpsc::unbounded_channel();
        Self { engine: Engine::Classic(classic::ClassicMember::join(client, config, sender)), events }
    }

    /// Joins with the consumer protocol: the first heartbeat is answered before this returns.
    async fn join_consumer(client: Client, config: ConsumerGroupConfig) -> Result<Self> {
        let own_id = new_member_id();
        let state = State { send_all: true, ..State::default() };
        let shared = Arc::new(Shared {
            client,
            config,
            own_id,
            state: Mutex::new(state),
            wake: Notify::new(),
            coordinator: tokio::sync::Mutex::new(None),
            fatal: Mutex::new(None),
        });
        // The names come again with the first assignment if a topic is not there yet.
        if let Err(error) = shared.learn_names().await {
            tracing::debug!(group = %shared.config.group_id, %error, "cannot look the topics up yet");
        }
        // A coordinator that moved or is still loading the group (a cluster's first group
        // creates __consumer_offsets) is asked again, for up to the request timeout.
        let deadline = tokio::time::Instant::now() + shared.client.config().connection.request_timeout;
        let mut backoff = RETRY_BACKOFF;
        let (request, response) = loop {
            let coordinator = shared.coordinator().await?;
            let version = coordinator.version_for::<ConsumerGroupHeartbeatRequest>(None)?;
            let request = {
                let mut state = shared.state();
                // Before KIP-1082 (v0) the coordinator names the member.
                state.member_id = if version == 0 { String::new() } else { shared.own_id.clone() };
                state.heartbeat(&shared.config)
            };
            let error = match coordinator.send_version(&request, version).await {
                Ok(response) => {
                    let message = response.error_message.as_deref();
                    match broker_error(coordinator.broker(), response.error_code, message) {
                        None => break (request, response),
                        Some(error) => error,
                    }
                }
                Err(error) => error,
            };
            // A static member's earlier incarnation holds its id until its session ends.
            let unreleased = matches!(
                &error,
                Error::Broker { code: ErrorCode::UnreleasedInstanceId, .. }
                    | Error::BrokerMessage { code: ErrorCode::UnreleasedInstanceId, .. }
            );
            let again = unreleased || coordinator_moved(&error);
            if !again || tokio::time::Instant::now() + backoff >= deadline {
                return Err(error);
            }
            shared.forget_coordinator().await;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
        };
        let interval = shared.state().answered(&request, response);
        let (sender, events) = mpsc::unbounded_channel();
        let heartbeat = tokio::spawn(heartbeat_loop(Arc::clone(&shared), sender, interval));
        Ok(Self { engine: Engine::Consumer { shared, heartbeat }, events })
    }

    /// The protocol the member speaks (never `Auto`).
    pub fn protocol(&self) -> GroupProtocol {
        match &self.engine {
            Engine::Consumer { .. } => GroupProtocol::Consumer,
            Engine::Classic(_) => GroupProtocol::Classic,
        }
    }

    /// Why the member stopped.
    fn fatal(&self) -> Error {
        match &self.engine {
            Engine::Consumer { shared, .. } => shared.fatal(),
            Engine::Classic(member) => member.fatal(),
        }
    }

    /// The next change of what this member owns. Fails when the member cannot stay in the
    /// group (the coordinator refuses it for good: authorization, an unknown assignor, a full
    /// group); a member fenced or cut off for a while joins again by itself.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: events wait in a queue until taken.
    pub async fn next_event(&mut self) -> Result<MemberEvent> {
        match self.events.recv().await {
            Some(event) => Ok(event),
            None => Err(self.fatal()),
        }
    }

    /// Takes the next change if there is one, without waiting: `None` when there is none, the
    /// error when the member has stopped.
    pub fn try_event(&mut self) -> Option<Result<MemberEvent>> {
        match self.events.try_recv() {
            Ok(event) => Some(Ok(event)),
            Err(mpsc::error::TryRecvError::Empty) => None,
            Err(mpsc::error::TryRecvError::Disconnected) => Some(Err(self.fatal())),
        }
    }

    /// Whether an event waits to be taken with [`ConsumerGroupMember::try_event`] (a failure of
    /// the member's task included).
    pub fn has_event(&self) -> bool {
        !self.events.is_empty() || self.events.is_closed()
    }

    /// Gives up revoked partitions: nothing more is done with them. The next heartbeat tells the
    /// coordinator, which may then give them to another member. Partitions not under revocation
    /// are ignored (a revocation ends when the member is fenced: the partitions were lost).
    pub fn released(&self, partitions: &[(String, i32)]) {
        match &self.engine {
            Engine::Consumer { shared, .. } => {
                shared.state().release(partitions);
                shared.wake.notify_one();
            }
            Engine::Classic(member) => member.released(partitions),
        }
    }

    /// The partitions this member owns (topic, partition), revoked ones not yet released included.
    pub fn owned(&self) -> Vec<(String, i32)> {
        match &self.engine {
            Engine::Consumer { shared, .. } => {
                let state = shared.state();
                state.named(&state.owned)
            }
            Engine::Classic(member) => member.owned(),
        }
    }

    /// The member's epoch: 0 before it has joined, then the coordinator's latest. On the classic
    /// protocol, the group's generation (-1 before it has joined).
    pub fn epoch(&self) -> i32 {
        match &self.engine {
            Engine::Consumer { shared, .. } => shared.state().epoch,
            Engine::Classic(member) => member.generation(),
        }
    }

    /// How many times the member has lost its partitions (fenced or dropped by the group, which
    /// it then joins again), counted the moment it happens, before the [`MemberEvent::Lost`] is
    /// taken. Work begun while the count was n must not commit once it has moved: after the
    /// rejoin, [`group_metadata`](Self::group_metadata) is valid again, and the coordinator
    /// checks only the member's identity, not which partitions it owned when the work began.
    /// Read the metadata first and the count after, so that metadata from after a loss is never
    /// taken for metadata from before it.
    pub fn losses(&self) -> u64 {
        match &self.engine {
            Engine::Consumer { shared, .. } => shared.state().losses,
            Engine::Classic(member) => member.losses(),
        }
    }

    /// The member's id.
    pub fn member_id(&self) -> String {
        match &self.engine {
            Engine::Consumer { shared, .. } => shared.state().member_id.clone(),
            Engine::Classic(member) => member.member_id(),
        }
    }

    /// This member's identity for [`crate::Producer::send_offsets_to_transaction`]: the member id
    /// and its current epoch or generation (KIP-447), read now; a KIP-848 epoch moves with every
    /// assignment change. The coordinator refuses a transaction's offsets from a member it has
    /// fenced or dropped, which keeps a zombie's output from being committed.
    pub fn group_metadata(&self) -> ConsumerGroupMetadata {
        match &self.engine {
            Engine::Consumer { shared, .. } => {
                let state = shared.state();
                ConsumerGroupMetadata {
                    group_id: shared.config.group_id.clone(),
                    generation_id: state.epoch,
                    member_id: state.member_id.clone(),
                    group_instance_id: shared.config.group_instance_id.clone(),
                }
            }
            Engine::Classic(member) => member.group_metadata(),
        }
    }

    /// Leaves the group (epoch -1; -2 for a static member, whose partitions wait for it until
    /// its session ends). The partitions it owned go to the others at once, with no `Revoked`
    /// first: finish and commit what is under way with them before calling it.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the heartbeats have stopped either way; a leave not sent is a session that
    /// ends.
    pub async fn leave(mut self) -> Result<()> {
        let (shared, heartbeat) = match &mut self.engine {
            Engine::Consumer { shared, heartbeat } => (Arc::clone(shared), heartbeat),
            Engine::Classic(member) => return member.leave().await,
        };
        // Stopped for sure before the leave goes out: a heartbeat after it would join again.
        heartbeat.abort();
        if let Err(stopped) = heartbeat.await {
            if stopped.is_panic() {
                std::panic::resume_unwind(stopped.into_panic());
            }
        }
        let (member_id, epoch) = {
            let state = shared.state();
            (state.member_id.clone(), state.epoch)
        };
        let leave_epoch = if shared.config.group_instance_id.is_some() { STATIC_LEAVE_EPOCH } else { LEAVE_EPOCH };
        if epoch == 0 && member_id.is_empty() {
            return Ok(());
        }
        let request = ConsumerGroupHeartbeatRequest {
            group_id: shared.config.group_id.clone(),
            member_id,
            member_epoch: leave_epoch,
            instance_id: shared.config.group_instance_id.clone(),
            ..ConsumerGroupHeartbeatRequest::default()
        };
        let coordinator = shared.coordinator().await?;
        let version = coordinator.version_for::<ConsumerGroupHeartbeatRequest>(None)?;
        let response = coordinator.send_version(&request, version).await?;
        match ErrorCode::from_code(response.error_code) {
            // Already gone: its session ended, or it was fenced.
            ErrorCode::UnknownMemberId | ErrorCode::FencedMemberEpoch => Ok(()),
            _ => match broker_error(coordinator.broker(), response.error_code, response.error_message.as_deref()) {
                Some(error) => Err(error),
                None => Ok(()),
            },
        }
    }
}

impl Drop for ConsumerGroupMember {
    fn drop(&mut self) {
        // No leave: the coordinator fences the member when its session ends.
        match &self.engine {
            Engine::Consumer { heartbeat, .. } => heartbeat.abort(),
            Engine::Classic(member) => member.stop(),
        }
    }
}

/// Why a member of `group_id` stopped: the refusal stored in `fatal`, or that it stopped.
fn stopped(group_id: &str, fatal: &Mutex<Option<Error>>) -> Error {
    let fatal = fatal.lock().unwrap_or_else(PoisonError::into_inner).clone();
    fatal.unwrap_or_else(|| Error::Disconnected {
        broker: format!("the coordinator of group {group_id}"),
        reason: "the member stopped".into(),
    })
}

/// Whether joining failed because the coordinator does not offer the consumer protocol: a broker
/// before Kafka 4 lacks ConsumerGroupHeartbeat, and one whose
/// `group.coordinator.rebalance.protocols` leaves out `consumer` answers UNSUPPORTED_VERSION.
fn lacks_consumer_protocol(error: &Error) -> bool {
    matches!(
        error,
        Error::UnsupportedVersion { .. }
            | Error::Broker { code: ErrorCode::UnsupportedVersion, .. }
            | Error::BrokerMessage { code: ErrorCode::UnsupportedVersion, .. }
    )
}

/// Heartbeats until the member is dropped or refused for good, reconciling after each answer.
async fn heartbeat_loop(shared: Arc<Shared>, events: mpsc::UnboundedSender<MemberEvent>, first: Duration) {
    let mut interval = first;
    let mut backoff = RETRY_BACKOFF;
    // Assigned topics the metadata does not name yet: looked up again between heartbeats, less
    // and less often, while the heartbeats go on.
    let mut names_backoff = RETRY_BACKOFF;
    let mut names_due = tokio::time::Instant::now();
    loop {
        // Reach the target as far as the user allows.
        let unnamed = shared.state().reconcile(&events);
        if let Some(topic_id) = unnamed.filter(|_| tokio::time::Instant::now() >= names_due) {
            tracing::debug!(group = %shared.config.group_id, %topic_id, "assigned a topic the metadata does not name yet");
            if let Err(error) = shared.learn_names().await {
                tracing::debug!(group = %shared.config.group_id, %error, "cannot refresh the metadata");
            }
            names_due = tokio::time::Instant::now() + names_backoff;
            names_backoff = (names_backoff * 2).min(RETRY_BACKOFF_MAX);
            if shared.state().reconcile(&events).is_none() {
                names_backoff = RETRY_BACKOFF;
            }
        }
        // A change to report, or a rejoin after being fenced, goes out at once.
        let now = {
            let state = shared.state();
            state.owned_changed || state.send_all
        };
        if !now {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = shared.wake.notified() => {}
            }
        }
        let request = shared.state().heartbeat(&shared.config);
        let answer = match shared.coordinator().await {
            Ok(coordinator) => match coordinator.version_for::<ConsumerGroupHeartbeatRequest>(None) {
                Ok(version) => coordinator.send_version(&request, version).await.map(|r| (coordinator, r)),
                Err(error) => Err(error),
            },
            Err(error) => Err(error),
        };
        let (coordinator, response) = match answer {
            Ok(answer) => answer,
            Err(error) if error.is_retriable() => {
                tracing::info!(group = %shared.config.group_id, %error, retry_in = ?backoff, "heartbeat failed");
                shared.forget_coordinator().await;
                shared.state().send_all = true;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                continue;
            }
            Err(error) => return shared.stop(error, &events),
        };
        let code = ErrorCode::from_code(response.error_code);
        match code {
            ErrorCode::None => {
                backoff = RETRY_BACKOFF;
                interval = shared.state().answered(&request, response);
            }
            ErrorCode::FencedMemberEpoch | ErrorCode::UnknownMemberId => {
                tracing::warn!(group = %shared.config.group_id, error = %code, "fenced by the coordinator: joining again");
                {
                    let mut state = shared.state();
                    state.lose_all(&events);
                    state.epoch = 0;
                    state.send_all = true;
                }
                // A rejoin refused too (a coordinator that still holds the member at its old
                // epoch) is tried again after a pause, not at once.
                if request.member_epoch == 0 {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                }
            }
            ErrorCode::NotCoordinator | ErrorCode::CoordinatorNotAvailable | ErrorCode::CoordinatorLoadInProgress => {
                if code != ErrorCode::CoordinatorLoadInProgress {
                    shared.forget_coordinator().await;
                }
                shared.state().send_all = true;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
            }
            // A static member's earlier incarnation holds the id until its session ends (a
            // fenced static member rejoining meets this too): wait for it.
            ErrorCode::UnreleasedInstanceId => {
                tracing::info!(group = %shared.config.group_id, "the instance id is still held: waiting for it");
                shared.state().send_all = true;
                tokio::time::sleep(RETRY_BACKOFF_MAX).await;
            }
            _ => {
                let message = response.error_message.as_deref();
                if let Some(error) = broker_error(coordinator.broker(), response.error_code, message) {
                    return shared.stop(error, &events);
                }
            }
        }
    }
}

/// The broker's error with its message, or `None` for NONE.
fn broker_error(broker: &str, code: i16, message: Option<&str>) -> Option<Error> {
    check_error_message(broker, "ConsumerGroupHeartbeat", code, message).err()
}

fn send(events: &mpsc::UnboundedSender<MemberEvent>, event: MemberEvent) {
    // The receiver is gone only with the member itself, which stops this task.
    if events.send(event).is_err() {
        tracing::debug!("a member event after the member was dropped");
    }
}

/// A new member id (KIP-1082: the member makes its own, from ConsumerGroupHeartbeat v1): random,
/// or without randomness from the OS, the time and process id.
fn new_member_id() -> String {
    let mut bytes = [0u8; 16];
    if let Err(error) = getrandom::getrandom(&mut bytes) {
        tracing::debug!(%error, "no randomness for a member id: made of the time and process id");
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        bytes[..12].copy_from_slice(&nanos.to_le_bytes()[..12]);
        bytes[12..].copy_from_slice(&std::process::id().to_le_bytes());
    }
    Uuid(bytes).to_string()
}

/// The heartbeat's form of a set of partitions.
fn by_topic(partitions: &BTreeSet<(Uuid, i32)>) -> Vec<TopicPartitions> {
    let mut topics: Vec<TopicPartitions> = Vec::new();
    for (id, partition) in partitions {
        match topics.last_mut() {
            Some(last) if last.topic_id == *id => last.partitions.push(*partition),
            _ => topics.push(TopicPartitions {
                topic_id: *id,
                partitions: vec![*partition],
                ..TopicPartitions::default()
            }),
        }
    }
    topics
}

fn millis(duration: Duration) -> i32 {
    i32::try_from(duration.as_millis()).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use sluice_protocol::messages::consumer_group_heartbeat_response::{
        Assignment, TopicPartitions as AssignedPartitions,
    };

    use super::*;

    const CLICKS: Uuid = Uuid([1; 16]);
    const VIEWS: Uuid = Uuid([2; 16]);

    fn config() -> ConsumerGroupConfig {
        ConsumerGroupConfig::new("g", ["clicks", "views"])
    }

    fn state() -> State {
        let names = HashMap::from([(CLICKS, "clicks".to_owned()), (VIEWS, "views".to_owned())]);
        State { member_id: "m".into(), send_all: true, names, ..State::default() }
    }

    fn answer(epoch: i32, assignment: Option<&[(Uuid, &[i32])]>) -> ConsumerGroupHeartbeatResponse {
        ConsumerGroupHeartbeatResponse {
            member_epoch: epoch,
            heartbeat_interval_ms: 500,
            assignment: assignment.map(|topics| Assignment {
                topic_partitions: topics
                    .iter()
                    .map(|(id, partitions)| AssignedPartitions {
                        topic_id: *id,
                        partitions: partitions.to_vec(),
                        ..AssignedPartitions::default()
                    })
                    .collect(),
                ..Assignment::default()
            }),
            ..ConsumerGroupHeartbeatResponse::default()
        }
    }

    fn events() -> (mpsc::UnboundedSender<MemberEvent>, mpsc::UnboundedReceiver<MemberEvent>) {
        mpsc::unbounded_channel()
    }

    fn p(topic: &str, partition: i32) -> (String, i32) {
        (topic.to_owned(), partition)
    }

    #[test]
    fn joining_sends_every_field_and_later_heartbeats_only_what_changed() {
        let mut state = state();
        let join = state.heartbeat(&config());
        assert_eq!((join.member_id.as_str(), join.member_epoch, join.rebalance_timeout_ms), ("m", 0, 60_000));
        assert_eq!(join.subscribed_topic_names, Some(vec!["clicks".to_owned(), "views".to_owned()]));
        assert_eq!(join.topic_partitions, Some(Vec::new()), "joining says it owns nothing (not null)");
        assert_eq!(state.answered(&join, answer(3, None)), Duration::from_millis(500));

        let plain = state.heartbeat(&config());
        assert_eq!(plain.member_epoch, 3);
        assert_eq!(
            (plain.subscribed_topic_names, plain.topic_partitions, plain.rebalance_timeout_ms),
            (None, None, -1)
        );

        // After a failure every field goes again, the owned partitions included.
        state.owned.insert((CLICKS, 0));
        state.send_all = true;
        let again = state.heartbeat(&config());
        assert!(again.subscribed_topic_names.is_some());
        assert_eq!(again.topic_partitions.map(|t| t.len()), Some(1));
    }

    #[test]
    fn revocations_come_first_and_gains_only_once_released() {
        let (sender, mut receiver) = events();
        let mut state = state();
        let join = state.heartbeat(&config());
        state.answered(&join, answer(1, Some(&[(CLICKS, &[0, 1]), (VIEWS, &[0])])));
        assert_eq!(state.reconcile(&sender), None);
        assert_eq!(
            receiver.try_recv().unwrap(),
            MemberEvent::Assigned(vec![p("clicks", 0), p("clicks", 1), p("views", 0)])
        );
        // The acknowledgement carries the owned partitions.
        let ack = state.heartbeat(&config());
        assert_eq!(ack.topic_partitions.as_ref().map(Vec::len), Some(2));
        state.answered(&ack, answer(1, None));
        assert!(!state.owned_changed);

        // The target moves clicks/1 away and adds views/1: the revocation first, alone.
        let beat = state.heartbeat(&config());
        state.answered(&beat, answer(2, Some(&[(CLICKS, &[0]), (VIEWS, &[0, 1])])));
        state.reconcile(&sender);
        assert_eq!(receiver.try_recv().unwrap(), MemberEvent::Revoked(vec![p("clicks", 1)]));
        assert!(receiver.try_recv().is_err(), "nothing gained before the release");
        state.reconcile(&sender);
        assert!(receiver.try_recv().is_err(), "a revocation is reported once");
        assert!(state.heartbeat(&config()).topic_partitions.is_none(), "still owned until released");

        state.release(&[p("clicks", 1), p("views", 0)]);
        assert!(state.owned.contains(&(VIEWS, 0)), "a partition not under revocation is not released");
        let ack = state.heartbeat(&config());
        let reported: Vec<(Uuid, Vec<i32>)> =
            ack.topic_partitions.unwrap().into_iter().map(|t| (t.topic_id, t.partitions)).collect();
        assert_eq!(reported, [(CLICKS, vec![0]), (VIEWS, vec![0])]);
        state.reconcile(&sender);
        assert_eq!(receiver.try_recv().unwrap(), MemberEvent::Assigned(vec![p("views", 1)]));
        assert_eq!(state.target, None);
    }

    #[test]
    fn unnamed_topics_wait_and_named_ones_are_taken() {
        let (sender, mut receiver) = events();
        let mut state = state();
        let unknown = Uuid([9; 16]);
        let join = state.heartbeat(&config());
        state.answered(&join, answer(1, Some(&[(CLICKS, &[0]), (unknown, &[0])])));
        assert_eq!(state.reconcile(&sender), Some(unknown));
        assert_eq!(receiver.try_recv().unwrap(), MemberEvent::Assigned(vec![p("clicks", 0)]));
        state.names.insert(unknown, "orders".into());
        assert_eq!(state.reconcile(&sender), None);
        assert_eq!(receiver.try_recv().unwrap(), MemberEvent::Assigned(vec![p("orders", 0)]));
    }

    #[test]
    fn a_release_from_before_a_fence_cannot_give_up_a_partition_assigned_since() {
        let (sender, mut receiver) = events();
        let mut state = state();
        let join = state.heartbeat(&config());
        state.answered(&join, answer(1, Some(&[(CLICKS, &[0, 1])])));
        state.reconcile(&sender);
        let beat = state.heartbeat(&config());
        state.answered(&beat, answer(2, Some(&[(CLICKS, &[0])])));
        state.reconcile(&sender);
        receiver.try_recv().unwrap();
        assert_eq!(receiver.try_recv().unwrap(), MemberEvent::Revoked(vec![p("clicks", 1)]));

        // Fenced before the user released clicks/1; then clicks/1 comes back.
        state.lose_all(&sender);
        assert_eq!(receiver.try_recv().unwrap(), MemberEvent::Lost(vec![p("clicks", 0), p("clicks", 1)]));
        state.target = Some(BTreeSet::from([(CLICKS, 1)]));
        state.reconcile(&sender);
        assert_eq!(receiver.try_recv().unwrap(), MemberEvent::Assigned(vec![p("clicks", 1)]));
        state.release(&[p("clicks", 1)]);
        assert!(state.owned.contains(&(CLICKS, 1)), "the late release is ignored");
    }

    #[test]
    fn a_topic_made_again_is_known_by_its_new_id() {
        let mut state = State::default();
        let mut metadata = crate::client::ClusterMetadata::default();
        let topic = |topic_id| crate::client::TopicMetadata {
            topic_id,
            error: ErrorCode::None,
            is_internal: false,
            partitions: Vec::new(),
        };
        metadata.topics.insert("clicks".into(), topic(Uuid::ZERO));
        state.learn(&metadata);
        assert!(state.names.is_empty(), "a topic without an id yet is not named");
        metadata.topics.insert("clicks".into(), topic(CLICKS));
        state.learn(&metadata);
        metadata.topics.insert("clicks".into(), topic(VIEWS));
        state.learn(&metadata);
        assert_eq!(state.names, HashMap::from([(VIEWS, "clicks".to_owned())]));
    }
}
