//! Scale-out mode: standby replicas ([`StreamConfig::standby_replicas`](crate::StreamConfig),
//! Kafka Streams' `num.standby.replicas`). A process keeps warm copies of tasks other processes
//! own: in the background it tails their changelog partitions, `read_committed`, and keeps each
//! key's latest value, as the changelog holds it once compacted. When the group gives it one of
//! those tasks, the restore puts the copy's keys into the state and reads the changelog only
//! after the copy's position, instead of the partition's whole history.
//!
//! Which tasks a process copies: the group's members are ordered by instance id (or member id,
//! for dynamic members), and a task owned by one member is copied by the `n` members after it,
//! wrapping around. The group's assignor knows nothing of the copies, so a copy helps only when
//! the task lands on its holder: always with two processes and one replica, or with
//! `n` = members - 1 (every process then copies every task it does not own).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use sluice_client::{Client, Consumer, ConsumerConfig, Error, Isolation, OffsetReset, StartAt};
use sluice_protocol::error_code::ErrorCode;

use crate::BoxError;

/// How often a process asks the group who owns what, and so which tasks it copies.
const PLACE_EVERY: Duration = Duration::from_secs(2);

/// The copies a process keeps, shared by the tailing task and the restores.
#[derive(Debug)]
pub(crate) struct Standbys {
    shared: Arc<Mutex<Shared>>,
    tailer: tokio::task::JoinHandle<()>,
}

/// A warm copy of one task's state: per stateful operator (changelog topic, in the operators'
/// order), each key's latest value and the offset after the last record taken in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TaskCopy {
    /// Each key's latest value (a tombstone removes the key).
    pub(crate) entries: Vec<HashMap<Bytes, Bytes>>,
    /// Where the copy goes on from in each changelog partition (0 until anything was read:
    /// the changelog's start).
    pub(crate) positions: Vec<i64>,
    /// Records taken in, tombstones included (a restore counts them as read).
    pub(crate) records: u64,
    /// Tells one copy of a task from a later one (the tailing task must not go on reading
    /// into a new copy from where an old one stood).
    generation: u64,
}

impl TaskCopy {
    /// A copy from the local checkpoint ([`crate::local_copy`]), which no tailing task reads into.
    pub(crate) fn from_local(entries: Vec<HashMap<Bytes, Bytes>>, positions: Vec<i64>, records: u64) -> Self {
        Self { entries, positions, records, generation: 0 }
    }
}

#[derive(Debug, Default)]
struct Shared {
    copies: BTreeMap<i32, TaskCopy>,
    /// Tasks this process owns: never copied.
    owned: BTreeSet<i32>,
    /// This process's member id in the group, once known.
    member: Option<String>,
    next_generation: u64,
}

/// One member of the group as the placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member {
    /// What members are ordered by: the instance id, or the member id of a dynamic member.
    pub(crate) order: String,
    pub(crate) member_id: String,
    /// The partitions of the source it owns.
    pub(crate) tasks: Vec<i32>,
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Standbys {
    /// Starts keeping copies of the tasks `replicas` of the group's other members own, from
    /// the changelog `topics` (one per stateful operator) of the job of `group` reading
    /// `source`.
    pub(crate) fn start(client: Client, (group, source): (&str, &str), topics: Vec<String>, replicas: usize) -> Self {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let tail = Tail {
            client,
            group: group.to_owned(),
            source: source.to_owned(),
            topics,
            replicas,
            shared: Arc::clone(&shared),
            classic: false,
        };
        let tailer = tokio::spawn(tail.run());
        Self { shared, tailer }
    }

    /// Tells the placement which member this process is (it may change when the process joins
    /// the group again).
    pub(crate) fn set_member(&self, member_id: &str) {
        let mut shared = lock(&self.shared);
        if shared.member.as_deref() != Some(member_id) {
            shared.member = Some(member_id.to_owned());
        }
    }

    /// Takes in a change of the tasks this process owns: no copy is kept of those it owns; the
    /// copies of those `gained` are handed over for their restore.
    pub(crate) fn take_on(&self, gained: &BTreeSet<i32>, lost: &BTreeSet<i32>) -> BTreeMap<i32, TaskCopy> {
        let mut shared = lock(&self.shared);
        shared.owned.retain(|task| !lost.contains(task));
        shared.owned.extend(gained);
        gained.iter().filter_map(|task| shared.copies.remove(task).map(|copy| (*task, copy))).collect()
    }
}

impl Drop for Standbys {
    fn drop(&mut self) {
        self.tailer.abort();
    }
}

/// What a process does with its copies after a description of the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Placement {
    /// The tasks it should copy: those of each member it is one of the `replicas` members
    /// after, with the members ordered by [`Member::order`] (never its own).
    pub(crate) wanted: BTreeSet<i32>,
    /// Of the copies it holds, those to keep: the wanted ones, and those whose task no member
    /// owns now (it is moving, or its owner was dropped: it may land here) or that the group
    /// already gave this process (the restore takes the copy once the process takes the task on).
    pub(crate) keep: BTreeSet<i32>,
}

/// Where `me` stands with the copies it `held`, or `None` if the description does not list
/// `me` (it is joining again): nothing is decided then.
pub(crate) fn placement(members: &[Member], me: &str, replicas: usize, held: &BTreeSet<i32>) -> Option<Placement> {
    let mut order: Vec<&Member> = members.iter().collect();
    order.sort_by(|a, b| (&a.order, &a.member_id).cmp(&(&b.order, &b.member_id)));
    let mine = order.iter().position(|m| m.member_id == me)?;
    let count = order.len();
    let mut wanted = BTreeSet::new();
    for (index, member) in order.iter().enumerate() {
        let after = (mine + count - index) % count;
        if after >= 1 && after <= replicas {
            wanted.extend(member.tasks.iter().copied());
        }
    }
    // (A task moving may be listed for two members at once.)
    let owned: BTreeSet<i32> = order.iter().flat_map(|m| m.tasks.iter().copied()).collect();
    let own: BTreeSet<i32> = order.get(mine).map(|m| m.tasks.iter().copied().collect()).unwrap_or_default();
    wanted.retain(|task| !own.contains(task));
    let keep = held
        .iter()
        .filter(|task| wanted.contains(task) || own.contains(task) || !owned.contains(task))
        .copied()
        .collect();
    Some(Placement { wanted, keep })
}

/// The tailing task: places the copies every [`PLACE_EVERY`] and reads their changelogs.
struct Tail {
    client: Client,
    group: String,
    source: String,
    topics: Vec<String>,
    replicas: usize,
    shared: Arc<Mutex<Shared>>,
    /// Whether the group is a classic one (ConsumerGroupDescribe did not describe it): then
    /// only DescribeGroups is asked.
    classic: bool,
}

impl Tail {
    async fn run(mut self) {
        let mut config = ConsumerConfig::default();
        config.isolation = Isolation::ReadCommitted;
        config.offset_reset = OffsetReset::Earliest;
        config.max_wait = Duration::from_millis(500);
        // Copies trail by seconds of changes: small fetches, little read ahead.
        config.max_bytes = 4 << 20;
        config.partition_max_bytes = 1 << 20;
        config.prefetch_max_bytes = 4 << 20;
        let mut consumer = Consumer::new(self.client.clone(), config);
        // The copies the consumer reads for, by task: their generation.
        let mut reading: BTreeMap<i32, u64> = BTreeMap::new();
        let mut placed = tokio::time::Instant::now() - PLACE_EVERY;
        loop {
            if placed.elapsed() >= PLACE_EVERY {
                placed = tokio::time::Instant::now();
                self.place().await;
            }
            let polled = match self.follow(&mut consumer, &mut reading).await {
                Ok(()) if reading.is_empty() => {
                    tokio::time::sleep(PLACE_EVERY).await;
                    continue;
                }
                Ok(()) => consumer.poll().await.map_err(BoxError::from),
                Err(error) => Err(error),
            };
            match polled {
                Ok(polled) => self.take_in(&consumer, &reading, polled),
                Err(error) => {
                    // Read again from the copies' positions, with a new consumer: a poll that
                    // failed may have moved a partition back to its start (an offset out of
                    // range) without the copy seeing it.
                    tracing::warn!(%error, "standby replicas: reading the changelogs failed; trying again");
                    reading.clear();
                    consumer = Consumer::new(self.client.clone(), consumer.config().clone());
                    tokio::time::sleep(PLACE_EVERY).await;
                }
            }
        }
    }

    /// Asks the group who owns what and keeps copies of the tasks this process should (copies of
    /// others are dropped). Failing, the copies stay as they are until the next try.
    async fn place(&mut self) {
        let Some(me) = lock(&self.shared).member.clone() else { return };
        let members = match self.members().await {
            Ok(members) => members,
            Err(error) => {
                tracing::debug!(%error, "standby replicas: describing the group failed");
                return;
            }
        };
        let mut shared = lock(&self.shared);
        let shared = &mut *shared;
        let held: BTreeSet<i32> = shared.copies.keys().copied().collect();
        let Some(Placement { wanted, keep }) = placement(&members, &me, self.replicas, &held) else { return };
        let owned = &shared.owned;
        shared.copies.retain(|task, _| keep.contains(task) && !owned.contains(task));
        for task in wanted {
            if !shared.owned.contains(&task) && !shared.copies.contains_key(&task) {
                shared.next_generation += 1;
                let copy = TaskCopy {
                    entries: vec![HashMap::new(); self.topics.len()],
                    positions: vec![0; self.topics.len()],
                    records: 0,
                    generation: shared.next_generation,
                };
                shared.copies.insert(task, copy);
            }
        }
    }

    /// The group's members and the source partitions each owns: from ConsumerGroupDescribe
    /// (the consumer protocol), or DescribeGroups for a classic group.
    async fn members(&mut self) -> Result<Vec<Member>, Error> {
        let of_source = |assignment: Vec<(String, i32)>| -> Vec<i32> {
            assignment.into_iter().filter(|(topic, _)| *topic == self.source).map(|(_, p)| p).collect()
        };
        let consumer_group = if self.classic {
            None
        } else {
            match self.client.describe_consumer_group(&self.group).await {
                // (Tansu describes a classic group as one without members.)
                Ok(group) if !group.members.is_empty() => Some(group),
                Ok(_) => None,
                Err(error) => {
                    // GROUP_ID_NOT_FOUND: a classic group; UnsupportedVersion: no consumer
                    // protocol at all. Anything else is tried again next time.
                    self.classic = matches!(
                        &error,
                        Error::UnsupportedVersion { .. }
                            | Error::Broker { code: ErrorCode::GroupIdNotFound, .. }
                            | Error::BrokerMessage { code: ErrorCode::GroupIdNotFound, .. }
                    );
                    None
                }
            }
        };
        let listed: Vec<Listed> = match consumer_group {
            Some(group) => group.members.into_iter().map(|m| (m.instance_id, m.member_id, m.assignment)).collect(),
            None => match self.client.describe_group(&self.group).await {
                Ok(group) => {
                    group.members.into_iter().map(|m| (m.group_instance_id, m.member_id, m.assignment)).collect()
                }
                Err(error) => {
                    // Not a classic group after all (a GROUP_ID_NOT_FOUND of a moment):
                    // ConsumerGroupDescribe is asked again next time.
                    self.classic = false;
                    return Err(error);
                }
            },
        };
        Ok(listed
            .into_iter()
            .map(|(instance, member_id, assignment)| Member {
                order: instance.unwrap_or_else(|| member_id.clone()),
                member_id,
                tasks: of_source(assignment),
            })
            .collect())
    }

    /// Makes the consumer read the changelogs of the copies kept now, each from its copy's
    /// positions.
    async fn follow(&self, consumer: &mut Consumer, reading: &mut BTreeMap<i32, u64>) -> Result<(), BoxError> {
        let copies: BTreeMap<i32, (u64, Vec<i64>)> = lock(&self.shared)
            .copies
            .iter()
            .map(|(task, copy)| (*task, (copy.generation, copy.positions.clone())))
            .collect();
        let stale: Vec<i32> = reading
            .iter()
            .filter(|(task, generation)| copies.get(task).is_none_or(|(now, _)| now != *generation))
            .map(|(task, _)| *task)
            .collect();
        for task in stale {
            reading.remove(&task);
            for topic in &self.topics {
                consumer.unassign(topic, task);
            }
        }
        for (task, (generation, positions)) in copies {
            if reading.contains_key(&task) {
                continue;
            }
            for (topic, position) in self.topics.iter().zip(positions) {
                consumer.assign(topic, task, StartAt::Offset(position)).await?;
            }
            reading.insert(task, generation);
        }
        Ok(())
    }

    /// Puts a poll's records into the copies they were read for, and moves the copies'
    /// positions to the consumer's (past aborted records and transaction markers too).
    fn take_in(&self, consumer: &Consumer, reading: &BTreeMap<i32, u64>, polled: Vec<sluice_client::PartitionRecords>) {
        let mut shared = lock(&self.shared);
        for partition in polled {
            let Some(operator) = self.topics.iter().position(|topic| *topic == partition.topic) else { continue };
            let Some(copy) = shared.copies.get_mut(&partition.partition) else { continue };
            if reading.get(&partition.partition) != Some(&copy.generation) {
                continue;
            }
            let Some(entries) = copy.entries.get_mut(operator) else { continue };
            for record in partition.records() {
                copy.records += 1;
                // Copied out, so that a key kept for long does not keep its whole fetch alive.
                let Some(key) = record.key() else { continue };
                match record.value() {
                    Some(value) => {
                        entries.insert(Bytes::copy_from_slice(key), Bytes::copy_from_slice(value));
                    }
                    None => {
                        entries.remove(key);
                    }
                }
            }
        }
        for (task, generation) in reading {
            let Some(copy) = shared.copies.get_mut(task).filter(|copy| copy.generation == *generation) else {
                continue;
            };
            let mut went_back = false;
            for (position, topic) in copy.positions.iter_mut().zip(&self.topics) {
                if let Some(progress) = consumer.partition_progress(topic, *task) {
                    went_back |= progress.position < *position;
                    *position = progress.position;
                }
            }
            // A changelog read from before the copy's position is another log (the topic was
            // made again, and the consumer started over at its start): the copy holds keys of
            // the old one. It is dropped, and placed again from the start.
            if went_back {
                tracing::warn!(task, "standby replicas: a copied task's changelog went back; copying it again");
                shared.copies.remove(task);
            }
        }
    }
}

/// A member as a description lists it: instance id, member id, partitions.
type Listed = (Option<String>, String, Vec<(String, i32)>);

#[cfg(test)]
mod tests {
    use super::*;

    fn member(order: &str, id: &str, tasks: &[i32]) -> Member {
        Member { order: order.into(), member_id: id.into(), tasks: tasks.to_vec() }
    }

    fn wanted(members: &[Member], me: &str, replicas: usize) -> BTreeSet<i32> {
        placement(members, me, replicas, &BTreeSet::new()).unwrap().wanted
    }

    #[test]
    fn each_task_is_copied_by_the_members_after_its_owner() {
        // Ordered by instance id: a, b, c.
        let members = [member("c", "m3", &[4, 5]), member("a", "m1", &[0, 1]), member("b", "m2", &[2, 3])];
        assert_eq!(wanted(&members, "m2", 1), BTreeSet::from([0, 1]));
        assert_eq!(wanted(&members, "m1", 1), BTreeSet::from([4, 5]));
        assert_eq!(wanted(&members, "m3", 1), BTreeSet::from([2, 3]));
        // Two replicas of three members: every task a member does not own.
        assert_eq!(wanted(&members, "m1", 2), BTreeSet::from([2, 3, 4, 5]));
        assert_eq!(wanted(&members, "m1", 5), BTreeSet::from([2, 3, 4, 5]));
        assert_eq!(wanted(&members, "m1", 0), BTreeSet::new());
        // Alone: nothing to copy. Not (yet) listed: nothing decided.
        assert_eq!(wanted(&members[..1], "m3", 1), BTreeSet::new());
        assert_eq!(placement(&members, "m4", 1, &BTreeSet::from([0])), None);
        // Dynamic members are ordered by member id; a task listed twice while it moves is
        // never copied by its owner.
        let moving = [member("x", "x", &[0, 1]), member("y", "y", &[1, 2])];
        assert_eq!(wanted(&moving, "y", 1), BTreeSet::from([0]));
        assert_eq!(wanted(&moving, "x", 1), BTreeSet::from([2]));
    }

    #[test]
    fn a_copy_is_kept_while_its_task_may_still_land_here() {
        let held = BTreeSet::from([0, 1, 2, 3]);
        // b (owner of 0 and 1, copied by a) was dropped: a owns everything in the group's
        // eyes before it has taken the tasks on, and keeps the copies for the restore.
        let alone = [member("a", "a", &[0, 1, 2, 3, 4, 5])];
        let kept = placement(&alone, "a", 1, &held).unwrap();
        assert_eq!((kept.wanted, kept.keep), (BTreeSet::new(), held.clone()));
        // While they move, no member owns them: kept too.
        let moving = [member("a", "a", &[4, 5])];
        assert_eq!(placement(&moving, "a", 1, &held).unwrap().keep, held);
        // Owned by another member whose follower a is not: dropped. b now owns 2 and 3, which
        // c copies; a copies c's tasks (after c, wrapping around), 0 and 1 among them.
        let moved = [member("a", "a", &[4]), member("b", "b", &[2, 3]), member("c", "c", &[0, 1, 5])];
        let placed = placement(&moved, "a", 1, &held).unwrap();
        assert_eq!(placed.wanted, BTreeSet::from([0, 1, 5]));
        assert_eq!(placed.keep, BTreeSet::from([0, 1]));
    }
}
