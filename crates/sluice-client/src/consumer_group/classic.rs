//! The classic group protocol (JoinGroup, SyncGroup, Heartbeat) with cooperative rebalancing
//! (KIP-429), for brokers without the consumer protocol: the same [`MemberEvent`]s as KIP-848.
//!
//! The group's leader assigns with the [`CooperativeStickyAssignor`]: members keep what they own
//! through a rebalance, and a partition that moves is first left out of every assignment. Its
//! owner sees it missing, reports it [`MemberEvent::Revoked`], and once its user has released it,
//! rejoins; the next rebalance, in which nobody owns it, hands it to its new owner. A member the
//! group dropped (ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID: its session expired, or it was too slow
//! to rejoin) loses everything at once ([`MemberEvent::Lost`]) and joins again owning nothing.
//!
//! The member's own task drives its joins; the classic consumer's heartbeat task
//! ([`group::heartbeat_loop`]) keeps its session and asks for rejoins.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sluice_protocol::error_code::ErrorCode;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{send, ConsumerGroupConfig, MemberEvent, RETRY_BACKOFF, RETRY_BACKOFF_MAX};
use crate::assignor::CooperativeStickyAssignor;
use crate::client::Client;
use crate::error::{Error, Result};
use crate::group::{self, coordinator_moved, ConsumerGroupMetadata, GroupConfig};

type Partitions = BTreeSet<(String, i32)>;

/// A classic, cooperative member: its join task, its heartbeat task, and what it owns.
#[derive(Debug)]
pub(super) struct ClassicMember {
    shared: Arc<group::Shared>,
    config: GroupConfig,
    owned: Arc<Mutex<Owned>>,
    driver: JoinHandle<()>,
    heartbeat: JoinHandle<()>,
}

/// What the member holds.
#[derive(Debug, Default)]
struct Owned {
    /// Every partition the member holds, revoked ones not yet released included: what it claims
    /// when it joins.
    owned: Partitions,
    /// Owned partitions reported as revoked and not released yet.
    revoking: Partitions,
    /// Times everything owned was lost.
    losses: u64,
}

impl Owned {
    /// Takes in a rebalance's assignment: reports the partitions missing from it as revoked,
    /// then takes and reports the new ones (the leader hands out only partitions nobody owns).
    fn assigned(&mut self, assigned: Vec<(String, i32)>, events: &mpsc::UnboundedSender<MemberEvent>) {
        let assigned: Partitions = assigned.into_iter().collect();
        let revoked: Vec<(String, i32)> =
            self.owned.difference(&assigned).filter(|p| !self.revoking.contains(*p)).cloned().collect();
        if !revoked.is_empty() {
            self.revoking.extend(revoked.iter().cloned());
            send(events, MemberEvent::Revoked(revoked));
        }
        let gained: Vec<(String, i32)> = assigned.difference(&self.owned).cloned().collect();
        if !gained.is_empty() {
            self.owned.extend(gained.iter().cloned());
            send(events, MemberEvent::Assigned(gained));
        }
    }

    /// Gives up revoked partitions; true if any was under revocation.
    fn release(&mut self, partitions: &[(String, i32)]) -> bool {
        let mut released = false;
        for partition in partitions {
            if self.revoking.remove(partition) {
                self.owned.remove(partition);
                released = true;
            }
        }
        released
    }

    /// Everything owned is lost.
    fn lose_all(&mut self, events: &mpsc::UnboundedSender<MemberEvent>) {
        self.revoking.clear();
        let lost: Vec<(String, i32)> = std::mem::take(&mut self.owned).into_iter().collect();
        if !lost.is_empty() {
            self.losses += 1;
            send(events, MemberEvent::Lost(lost));
        }
    }
}

impl ClassicMember {
    /// Starts a member of `config.group_id`: it joins in the background, and its assignment
    /// arrives as events on `events`.
    pub(super) fn join(
        client: Client,
        config: &ConsumerGroupConfig,
        events: mpsc::UnboundedSender<MemberEvent>,
    ) -> Self {
        let mut group = GroupConfig::new(config.group_id.clone(), config.topics.clone());
        group.group_instance_id.clone_from(&config.group_instance_id);
        group.rebalance_timeout = config.rebalance_timeout;
        group.session_timeout = config.session_timeout;
        group.heartbeat_interval = config.heartbeat_interval;
        group.assignors = vec![Arc::new(CooperativeStickyAssignor)];
        group.auto_commit_interval = None;
        let shared = group::Shared::new(client, &group);
        let owned = Arc::new(Mutex::new(Owned::default()));
        let heartbeat = tokio::spawn(group::heartbeat_loop(Arc::clone(&shared), group.heartbeat_interval));
        let driver = tokio::spawn(drive(Arc::clone(&shared), group.clone(), Arc::clone(&owned), events));
        Self { shared, config: group, owned, driver, heartbeat }
    }

    fn owned_state(&self) -> std::sync::MutexGuard<'_, Owned> {
        self.owned.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn released(&self, partitions: &[(String, i32)]) {
        if self.owned_state().release(partitions) {
            // Rejoin, so that the group hands the released partitions to their new owners.
            self.shared.rejoin.store(true, Ordering::SeqCst);
            self.shared.changed.notify_one();
        }
    }

    pub(super) fn owned(&self) -> Vec<(String, i32)> {
        self.owned_state().owned.iter().cloned().collect()
    }

    pub(super) fn losses(&self) -> u64 {
        self.owned_state().losses
    }

    pub(super) fn generation(&self) -> i32 {
        self.shared.snapshot().1
    }

    pub(super) fn member_id(&self) -> String {
        self.shared.snapshot().0
    }

    pub(super) fn group_metadata(&self) -> ConsumerGroupMetadata {
        self.shared.group_metadata()
    }

    /// Why the member stopped.
    pub(super) fn fatal(&self) -> Error {
        super::stopped(&self.config.group_id, &self.shared.fatal)
    }

    /// Stops both tasks and leaves with LeaveGroup (a static member stays until its session
    /// ends).
    pub(super) async fn leave(&mut self) -> Result<()> {
        self.stop();
        for task in [&mut self.driver, &mut self.heartbeat] {
            if let Err(stopped) = task.await {
                if stopped.is_panic() {
                    std::panic::resume_unwind(stopped.into_panic());
                }
            }
        }
        self.shared.leave().await
    }

    pub(super) fn stop(&self) {
        self.driver.abort();
        self.heartbeat.abort();
    }
}

/// Joins whenever the group asks for it (the heartbeat task sets `rejoin`) or released
/// partitions are to be handed on, and reports what each rebalance changed; stops at a refusal
/// for good.
async fn drive(
    shared: Arc<group::Shared>,
    config: GroupConfig,
    owned: Arc<Mutex<Owned>>,
    events: mpsc::UnboundedSender<MemberEvent>,
) {
    let lock = || owned.lock().unwrap_or_else(PoisonError::into_inner);
    let mut backoff = RETRY_BACKOFF;
    // The subscribed topics' partition counts the group last shared out: a change (partitions
    // added, a topic made or deleted) makes the member rejoin, so that the leader shares out the
    // partitions as they are now (the consumer protocol's coordinator does this by itself).
    let mut counts: Option<BTreeMap<String, usize>> = None;
    let mut next_count = tokio::time::Instant::now() + config.partition_discovery_interval;
    loop {
        if shared.fatal.lock().unwrap_or_else(PoisonError::into_inner).is_some() {
            lock().lose_all(&events);
            // Dropping `events` tells the user the member stopped.
            return;
        }
        // Dropped from the group: what it owned may be another member's already.
        if shared.snapshot().1 < 0 {
            lock().lose_all(&events);
        }
        if !shared.rejoin.swap(false, Ordering::SeqCst) {
            tokio::select! {
                () = shared.changed.notified() => {}
                () = tokio::time::sleep_until(next_count) => {
                    next_count = tokio::time::Instant::now() + config.partition_discovery_interval;
                    let now = partition_counts(&shared, &config).await;
                    if counts.is_some() && now.is_some() && now != counts {
                        tracing::info!(group = %config.group_id, before = ?counts, now = ?now, "the subscribed topics' partitions changed: rejoining");
                        shared.rejoin.store(true, Ordering::SeqCst);
                    }
                }
            }
            continue;
        }
        let claimed: Vec<(String, i32)> = lock().owned.iter().cloned().collect();
        match shared.join_and_sync(&config, &claimed).await {
            Ok(Some(assigned)) => {
                backoff = RETRY_BACKOFF;
                let (member, generation, _) = shared.snapshot();
                tracing::info!(group = %config.group_id, %member, generation, partitions = ?assigned, "joined (cooperative)");
                lock().assigned(assigned, &events);
                counts = partition_counts(&shared, &config).await.or(counts);
            }
            // Another round: the coordinator gave a member id, or the group moved on meanwhile.
            Ok(None) => shared.rejoin.store(true, Ordering::SeqCst),
            Err(error) if coordinator_moved(&error) => {
                tracing::info!(group = %config.group_id, %error, retry_in = ?backoff, "join failed; trying again");
                shared.forget_coordinator().await;
                shared.rejoin.store(true, Ordering::SeqCst);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
            }
            Err(error) => {
                tracing::warn!(group = %config.group_id, %error, "the coordinator refused the member");
                shared.fail(error);
            }
        }
    }
}

/// Each subscribed topic's partition count (0 for a topic that does not exist); `None` if the
/// metadata could not be read, or a topic's answer is a transient error.
async fn partition_counts(shared: &group::Shared, config: &GroupConfig) -> Option<BTreeMap<String, usize>> {
    let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
    let metadata = shared.client.refresh_metadata(Some(&topics)).await.ok()?;
    config
        .topics
        .iter()
        .map(|topic| match metadata.topics.get(topic) {
            None => Some((topic.clone(), 0)),
            Some(t) if t.error == ErrorCode::UnknownTopicOrPartition => Some((topic.clone(), 0)),
            Some(t) if t.error == ErrorCode::None => Some((topic.clone(), t.partitions.len())),
            Some(_) => None,
        })
        .collect()
}

/// The classic protocol's session and heartbeat defaults, as the Java client's.
pub(super) const SESSION_TIMEOUT: Duration = Duration::from_secs(45);
pub(super) const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(3);

#[cfg(test)]
mod tests {
    use super::*;

    fn partitions(list: &[(&str, i32)]) -> Vec<(String, i32)> {
        list.iter().map(|(t, p)| ((*t).to_owned(), *p)).collect()
    }

    #[test]
    fn revokes_what_is_missing_then_takes_what_is_new() {
        let (sender, mut events) = mpsc::unbounded_channel();
        let mut owned = Owned::default();
        owned.assigned(partitions(&[("a", 0), ("a", 1)]), &sender);
        assert_eq!(events.try_recv().ok(), Some(MemberEvent::Assigned(partitions(&[("a", 0), ("a", 1)]))));
        owned.assigned(partitions(&[("a", 0), ("a", 2)]), &sender);
        assert_eq!(events.try_recv().ok(), Some(MemberEvent::Revoked(partitions(&[("a", 1)]))));
        assert_eq!(events.try_recv().ok(), Some(MemberEvent::Assigned(partitions(&[("a", 2)]))));
        // Still claimed until released; revoked only once.
        owned.assigned(partitions(&[("a", 0), ("a", 2)]), &sender);
        assert!(events.try_recv().is_err());
        assert!(owned.owned.contains(&("a".to_owned(), 1)));
        assert!(!owned.release(&partitions(&[("a", 0)])), "a partition not under revocation is not released");
        assert!(owned.release(&partitions(&[("a", 1)])));
        assert_eq!(owned.owned.iter().cloned().collect::<Vec<_>>(), partitions(&[("a", 0), ("a", 2)]));
        owned.lose_all(&sender);
        assert_eq!(events.try_recv().ok(), Some(MemberEvent::Lost(partitions(&[("a", 0), ("a", 2)]))));
        assert!(owned.owned.is_empty() && owned.revoking.is_empty());
    }
}
