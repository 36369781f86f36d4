//! Consumer groups on the consumer protocol of KIP-848 (Kafka 4): the coordinator assigns the
//! partitions itself, and each member learns its share by heartbeating (ConsumerGroupHeartbeat).
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
use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::group::{find_coordinator, ConsumerGroupMetadata};

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
    /// the topics have as many partitions.
    pub server_assignor: Option<String>,
}

impl ConsumerGroupConfig {
    /// A member of `group_id` sharing the partitions of `topics`, with the defaults: dynamic,
    /// a rebalance timeout of 60 s, the group's assignor.
    pub fn new<S: Into<String>>(group_id: impl Into<String>, topics: impl IntoIterator<Item = S>) -> Self {
        Self {
            group_id: group_id.into(),
            topics: topics.into_iter().map(Into::into).collect(),
            group_instance_id: None,
            rebalance_timeout: Duration::from_secs(60),
            server_assignor: None,
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

/// A member of a consumer group on the KIP-848 protocol. It only takes part in the group: what
/// to read from the partitions it owns is its user's business.
#[derive(Debug)]
pub struct ConsumerGroupMember {
    shared: Arc<Shared>,
    events: mpsc::UnboundedReceiver<MemberEvent>,
    heartbeat: JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    client: Client,
    config: ConsumerGroupConfig,
    state: Mutex<State>,
    /// Wakes the heartbeat task early: partitions were released.
    wake: Notify,
    /// This member's own coordinator connection, so that no other request delays a heartbeat.
    coordinator: tokio::sync::Mutex<Option<Arc<Connection>>>,
    /// Why the member stopped, once the coordinator refused it for good.
    fatal: Mutex<Option<Error>>,
}

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

    /// The next heartbeat: every field when joining or after a failure, otherwise the epoch and
    /// what changed (the owned partitions, once reconciled).
    fn heartbeat(&self) -> ConsumerGroupHeartbeatRequest {
        let mut state = self.state();
        let mut request = ConsumerGroupHeartbeatRequest {
            group_id: self.config.group_id.clone(),
            member_id: state.member_id.clone(),
            member_epoch: state.epoch,
            ..ConsumerGroupHeartbeatRequest::default()
        };
        if state.send_all || state.epoch == 0 {
            request.instance_id = self.config.group_instance_id.clone();
            request.rebalance_timeout_ms = millis(self.config.rebalance_timeout);
            request.subscribed_topic_names = Some(self.config.topics.clone());
            request.server_assignor = self.config.server_assignor.clone();
            state.owned_changed = true;
        }
        if state.owned_changed {
            request.topic_partitions = Some(by_topic(&state.owned));
        }
        request
    }

    /// Takes in a heartbeat's answer; returns when to heartbeat next.
    fn answered(&self, sent: &ConsumerGroupHeartbeatRequest, response: ConsumerGroupHeartbeatResponse) -> Duration {
        let mut state = self.state();
        state.send_all = false;
        if sent.topic_partitions.is_some()
            && by_topic(&state.owned) == sent.topic_partitions.clone().unwrap_or_default()
        {
            state.owned_changed = false;
        }
        if let Some(member_id) = response.member_id.filter(|id| !id.is_empty()) {
            state.member_id = member_id;
        }
        state.epoch = response.member_epoch;
        if let Some(assignment) = response.assignment {
            let target = assignment
                .topic_partitions
                .into_iter()
                .flat_map(|t| t.partitions.into_iter().map(move |p| (t.topic_id, p)))
                .collect();
            state.target = Some(target);
        }
        u64::try_from(response.heartbeat_interval_ms)
            .ok()
            .filter(|ms| *ms > 0)
            .map_or(FIRST_INTERVAL, Duration::from_millis)
    }

    /// Moves towards the target assignment: reports the partitions to give up, or once none
    /// is left to give up, takes the partitions gained. `Err` when a gained topic's name is not
    /// known yet (the metadata is refreshed and this is tried again).
    fn reconcile(&self, events: &mpsc::UnboundedSender<MemberEvent>) -> std::result::Result<(), Uuid> {
        let mut state = self.state();
        let Some(target) = state.target.clone() else { return Ok(()) };
        let revoked: BTreeSet<(Uuid, i32)> =
            state.owned.difference(&target).filter(|p| !state.revoking.contains(p)).copied().collect();
        if !revoked.is_empty() {
            let named = named(&state.names, &revoked).map_err(|(id, _)| id)?;
            state.revoking.extend(revoked);
            send(events, MemberEvent::Revoked(named));
        }
        if !state.revoking.is_empty() {
            return Ok(());
        }
        let gained: BTreeSet<(Uuid, i32)> = target.difference(&state.owned).copied().collect();
        if !gained.is_empty() {
            let named = named(&state.names, &gained).map_err(|(id, _)| id)?;
            state.owned.extend(gained);
            state.owned_changed = true;
            send(events, MemberEvent::Assigned(named));
        }
        state.target = None;
        Ok(())
    }

    /// A fenced member: everything it owned is lost, and it joins again as new (same id).
    fn fenced(&self, events: &mpsc::UnboundedSender<MemberEvent>) {
        let mut state = self.state();
        let lost = std::mem::take(&mut state.owned);
        state.revoking.clear();
        state.target = None;
        state.epoch = 0;
        state.send_all = true;
        if !lost.is_empty() {
            let names = &state.names;
            let named = lost.iter().map(|(id, p)| (names.get(id).cloned().unwrap_or_else(|| id.to_string()), *p));
            send(events, MemberEvent::Lost(named.collect()));
        }
    }

    /// Ends the member: the coordinator refused it for good.
    fn stop(&self, error: Error) {
        tracing::warn!(group = %self.config.group_id, %error, "the coordinator refused the member");
        *self.fatal.lock().unwrap_or_else(PoisonError::into_inner) = Some(error);
    }

    /// Learns the names of the subscribed topics (and `missing`) from fresh metadata.
    async fn learn_names(&self, missing: Option<Uuid>) -> Result<()> {
        let topics: Vec<&str> = self.config.topics.iter().map(String::as_str).collect();
        let metadata = self.client.refresh_metadata(Some(&topics)).await?;
        let mut state = self.state();
        for (name, topic) in &metadata.topics {
            state.names.insert(topic.topic_id, name.clone());
        }
        if let Some(id) = missing.filter(|id| !state.names.contains_key(id)) {
            tracing::debug!(group = %self.config.group_id, topic_id = %id, "assigned a topic the metadata does not name yet");
        }
        Ok(())
    }
}

impl ConsumerGroupMember {
    /// Joins `config.group_id` with the consumer protocol: sends the first heartbeat (so a
    /// broker without the protocol, or a group it refuses, fails here), then heartbeats in the
    /// background. The assignment arrives as [`MemberEvent`]s from [`next_event`](Self::next_event).
    ///
    /// Fails with [`Error::UnsupportedVersion`] when the coordinator does not offer
    /// ConsumerGroupHeartbeat (a broker before Kafka 4, or one whose
    /// `group.coordinator.rebalance.protocols` leaves out `consumer`).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropped before it returns, the member has at most joined; the coordinator
    /// drops it when its session ends.
    pub async fn join(client: Client, config: ConsumerGroupConfig) -> Result<Self> {
        let state = State { member_id: new_member_id(), send_all: true, ..State::default() };
        let shared = Arc::new(Shared {
            client,
            config,
            state: Mutex::new(state),
            wake: Notify::new(),
            coordinator: tokio::sync::Mutex::new(None),
            fatal: Mutex::new(None),
        });
        // The names come again with the first assignment if a topic is not there yet.
        if let Err(error) = shared.learn_names(None).await {
            tracing::debug!(group = %shared.config.group_id, %error, "cannot look the topics up yet");
        }
        // A coordinator that moved or is still loading the group (a cluster's first group
        // creates __consumer_offsets) is asked again, for up to the request timeout.
        let deadline = tokio::time::Instant::now() + shared.client.config().connection.request_timeout;
        let mut backoff = RETRY_BACKOFF;
        let (request, response) = loop {
            let coordinator = shared.coordinator().await?;
            let version = coordinator.version_for::<ConsumerGroupHeartbeatRequest>(None)?;
            if version == 0 {
                // Before KIP-1082 the coordinator names the member.
                shared.state().member_id.clear();
            }
            let request = shared.heartbeat();
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
            let again = match &error {
                Error::Broker { code, .. } | Error::BrokerMessage { code, .. } => matches!(
                    code,
                    ErrorCode::NotCoordinator
                        | ErrorCode::CoordinatorNotAvailable
                        | ErrorCode::CoordinatorLoadInProgress
                ),
                other => other.is_retriable(),
            };
            if !again || tokio::time::Instant::now() + backoff >= deadline {
                return Err(error);
            }
            shared.forget_coordinator().await;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
        };
        let interval = shared.answered(&request, response);
        let (sender, events) = mpsc::unbounded_channel();
        let heartbeat = tokio::spawn(heartbeat_loop(Arc::clone(&shared), sender, interval));
        Ok(Self { shared, events, heartbeat })
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
            // The task stops only after a refusal for good (it is aborted only with `self`).
            None => {
                Err(self.shared.fatal.lock().unwrap_or_else(PoisonError::into_inner).clone().unwrap_or_else(|| {
                    Error::Disconnected {
                        broker: self.shared.config.group_id.clone(),
                        reason: "the member stopped".into(),
                    }
                }))
            }
        }
    }

    /// Takes the next change if there is one, without waiting.
    pub fn try_event(&mut self) -> Option<MemberEvent> {
        self.events.try_recv().ok()
    }

    /// Gives up revoked partitions: nothing more is done with them. The next heartbeat tells the
    /// coordinator, which may then give them to another member. Partitions not owned are ignored.
    pub fn released(&self, partitions: &[(String, i32)]) {
        {
            let mut state = self.shared.state();
            let ids: HashMap<String, Uuid> = state.names.iter().map(|(id, name)| (name.clone(), *id)).collect();
            for (topic, partition) in partitions {
                let Some(id) = ids.get(topic) else { continue };
                let key = (*id, *partition);
                state.revoking.remove(&key);
                if state.owned.remove(&key) {
                    state.owned_changed = true;
                }
            }
        }
        self.shared.wake.notify_one();
    }

    /// The partitions this member owns (topic, partition), revoked ones not yet released included.
    pub fn owned(&self) -> Vec<(String, i32)> {
        let state = self.shared.state();
        let named =
            state.owned.iter().map(|(id, p)| (state.names.get(id).cloned().unwrap_or_else(|| id.to_string()), *p));
        let mut owned: Vec<(String, i32)> = named.collect();
        owned.sort();
        owned
    }

    /// The member's epoch: 0 before it has joined, then the coordinator's latest.
    pub fn epoch(&self) -> i32 {
        self.shared.state().epoch
    }

    /// The member's id.
    pub fn member_id(&self) -> String {
        self.shared.state().member_id.clone()
    }

    /// This member's identity for [`crate::Producer::send_offsets_to_transaction`]: the member id
    /// and its current epoch (KIP-447), read now; the epoch moves with every assignment change.
    pub fn group_metadata(&self) -> ConsumerGroupMetadata {
        let state = self.shared.state();
        ConsumerGroupMetadata {
            group_id: self.shared.config.group_id.clone(),
            generation_id: state.epoch,
            member_id: state.member_id.clone(),
            group_instance_id: self.shared.config.group_instance_id.clone(),
        }
    }

    /// Leaves the group (epoch -1; -2 for a static member, whose partitions wait for it until
    /// its session ends). The partitions it owned go to the others at once.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the heartbeats have stopped either way; a leave not sent is a session that
    /// ends.
    pub async fn leave(self) -> Result<()> {
        self.heartbeat.abort();
        let (member_id, epoch) = {
            let state = self.shared.state();
            (state.member_id.clone(), state.epoch)
        };
        let leave_epoch = if self.shared.config.group_instance_id.is_some() { STATIC_LEAVE_EPOCH } else { LEAVE_EPOCH };
        if epoch == 0 && member_id.is_empty() {
            return Ok(());
        }
        let request = ConsumerGroupHeartbeatRequest {
            group_id: self.shared.config.group_id.clone(),
            member_id,
            member_epoch: leave_epoch,
            instance_id: self.shared.config.group_instance_id.clone(),
            ..ConsumerGroupHeartbeatRequest::default()
        };
        let coordinator = self.shared.coordinator().await?;
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
        self.heartbeat.abort();
    }
}

/// Heartbeats until the member is dropped or refused for good, reconciling after each answer.
async fn heartbeat_loop(shared: Arc<Shared>, events: mpsc::UnboundedSender<MemberEvent>, first: Duration) {
    let mut interval = first;
    let mut backoff = RETRY_BACKOFF;
    loop {
        // Reach the target as far as the user allows; an unknown topic id waits for metadata.
        if let Err(missing) = shared.reconcile(&events) {
            if let Err(error) = shared.learn_names(Some(missing)).await {
                tracing::debug!(group = %shared.config.group_id, %error, "cannot refresh the metadata");
            }
            tokio::time::sleep(backoff).await;
            continue;
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
        let request = shared.heartbeat();
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
            Err(error) => return shared.stop(error),
        };
        let code = ErrorCode::from_code(response.error_code);
        match code {
            ErrorCode::None => {
                backoff = RETRY_BACKOFF;
                interval = shared.answered(&request, response);
            }
            ErrorCode::FencedMemberEpoch | ErrorCode::UnknownMemberId => {
                tracing::warn!(group = %shared.config.group_id, error = %code, "fenced by the coordinator: joining again");
                shared.fenced(&events);
            }
            ErrorCode::NotCoordinator | ErrorCode::CoordinatorNotAvailable | ErrorCode::CoordinatorLoadInProgress => {
                if code != ErrorCode::CoordinatorLoadInProgress {
                    shared.forget_coordinator().await;
                }
                shared.state().send_all = true;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
            }
            // A static member's earlier incarnation still holds the id until its session ends.
            ErrorCode::UnreleasedInstanceId => {
                tracing::info!(group = %shared.config.group_id, "the instance id is still held: waiting for it");
                shared.state().send_all = true;
                tokio::time::sleep(RETRY_BACKOFF_MAX).await;
            }
            _ => {
                let message = response.error_message.as_deref();
                if let Some(error) = broker_error(coordinator.broker(), response.error_code, message) {
                    return shared.stop(error);
                }
            }
        }
    }
}

/// The broker's error with its message, or `None` for NONE.
fn broker_error(broker: &str, code: i16, message: Option<&str>) -> Option<Error> {
    let code = ErrorCode::from_code(code);
    let (broker, api) = (broker.to_owned(), "ConsumerGroupHeartbeat");
    match message {
        _ if code == ErrorCode::None => None,
        Some(message) => Some(Error::BrokerMessage { broker, api, code, message: message.to_owned() }),
        None => Some(Error::Broker { broker, api, code }),
    }
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

/// `partitions` named, sorted; the first topic id without a name if any lacks one.
fn named(
    names: &HashMap<Uuid, String>,
    partitions: &BTreeSet<(Uuid, i32)>,
) -> std::result::Result<Vec<(String, i32)>, (Uuid, i32)> {
    let mut named = partitions
        .iter()
        .map(|(id, p)| names.get(id).map(|name| (name.clone(), *p)).ok_or((*id, *p)))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    named.sort();
    Ok(named)
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
