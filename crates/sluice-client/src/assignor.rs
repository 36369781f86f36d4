//! Partition assignors: how a consumer group's leader splits the subscribed topics' partitions
//! among the members. Both built-in assignors give the same answer as the Java client's
//! `RangeAssignor` and `RoundRobinAssignor` (so a sluice leader and a Java or librdkafka leader
//! agree), ordering members as Java does: static members (KIP-345) first by group instance id,
//! then dynamic members by member id.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

/// One member of the group as the leader sees it in JoinGroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    /// The member id the coordinator gave it.
    pub member_id: String,
    /// Its static group instance id, if it has one.
    pub group_instance_id: Option<String>,
    /// The topics it subscribes to.
    pub topics: Vec<String>,
    /// The partitions it owned before this rebalance (consumer protocol v1+), for sticky assignors.
    pub owned: Vec<(String, i32)>,
}

impl GroupMember {
    /// Java's member order: static members first, by instance id; then the rest by member id.
    fn java_order(&self, other: &Self) -> Ordering {
        match (&self.group_instance_id, &other.group_instance_id) {
            (Some(a), Some(b)) => a.cmp(b),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => self.member_id.cmp(&other.member_id),
        }
    }
}

/// Partitions assigned to each member, by member id.
pub type Assignment = BTreeMap<String, Vec<(String, i32)>>;

/// A partition assignment strategy, named in JoinGroup so that every member agrees on one.
pub trait Assignor: Debug + Send + Sync {
    /// The protocol name members advertise (`range`, `roundrobin`, ...).
    fn name(&self) -> &str;

    /// Splits `partitions` (number of partitions per topic) among `members`. Every member gets an
    /// entry, empty if it gets nothing; topics no member subscribes to are left out.
    fn assign(&self, partitions: &BTreeMap<String, i32>, members: &[GroupMember]) -> Assignment;
}

fn empty_assignment(members: &[GroupMember]) -> Assignment {
    members.iter().map(|m| (m.member_id.clone(), Vec::new())).collect()
}

fn sorted(members: &[GroupMember]) -> Vec<&GroupMember> {
    let mut sorted: Vec<&GroupMember> = members.iter().collect();
    sorted.sort_by(|a, b| a.java_order(b));
    sorted
}

/// Per topic, consecutive ranges of partitions: with P partitions and C subscribers each gets
/// P / C, and the first P % C one more. Java's default (`range`).
#[derive(Debug, Clone, Copy, Default)]
pub struct RangeAssignor;

impl Assignor for RangeAssignor {
    fn name(&self) -> &str {
        "range"
    }

    fn assign(&self, partitions: &BTreeMap<String, i32>, members: &[GroupMember]) -> Assignment {
        let mut assignment = empty_assignment(members);
        let members = sorted(members);
        for (topic, count) in partitions {
            let subscribers: Vec<&&GroupMember> = members.iter().filter(|m| m.topics.contains(topic)).collect();
            let Ok(consumers) = i32::try_from(subscribers.len()) else { continue };
            if consumers == 0 {
                continue;
            }
            let (each, extra) = (count / consumers, count % consumers);
            let mut next = 0;
            for (index, member) in (0..).zip(subscribers) {
                let take = each + i32::from(index < extra);
                let owned = assignment.entry(member.member_id.clone()).or_default();
                owned.extend((next..next + take).map(|p| (topic.clone(), p)));
                next += take;
            }
        }
        assignment
    }
}

/// All partitions of all subscribed topics, sorted by topic then partition, dealt out to the
/// members in turn, skipping members not subscribed to a partition's topic (`roundrobin`).
#[derive(Debug, Clone, Copy, Default)]
pub struct RoundRobinAssignor;

impl Assignor for RoundRobinAssignor {
    fn name(&self) -> &str {
        "roundrobin"
    }

    fn assign(&self, partitions: &BTreeMap<String, i32>, members: &[GroupMember]) -> Assignment {
        let mut assignment = empty_assignment(members);
        let members = sorted(members);
        let subscribed: BTreeSet<&String> = members.iter().flat_map(|m| m.topics.iter()).collect();
        let mut turn = 0usize;
        for (topic, count) in partitions.iter().filter(|(t, _)| subscribed.contains(t)) {
            for partition in 0..*count {
                // Someone subscribes to this topic, so this ends within one round.
                for _ in 0..members.len() {
                    let Some(member) = members.get(turn % members.len()) else { break };
                    turn = turn.wrapping_add(1);
                    if member.topics.contains(topic) {
                        assignment.entry(member.member_id.clone()).or_default().push((topic.clone(), partition));
                        break;
                    }
                }
            }
        }
        assignment
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, instance: Option<&str>, topics: &[&str]) -> GroupMember {
        GroupMember {
            member_id: id.into(),
            group_instance_id: instance.map(Into::into),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            owned: Vec::new(),
        }
    }

    fn topics(list: &[(&str, i32)]) -> BTreeMap<String, i32> {
        list.iter().map(|(t, n)| ((*t).to_owned(), *n)).collect()
    }

    fn parts(list: &[(&str, i32)]) -> Vec<(String, i32)> {
        list.iter().map(|(t, p)| ((*t).to_owned(), *p)).collect()
    }

    /// The example from the Java RangeAssignor's documentation: two consumers, two topics of
    /// three partitions: C0 gets t0p0, t0p1, t1p0, t1p1; C1 gets t0p2, t1p2.
    #[test]
    fn range_matches_the_java_documentation() {
        let members = [member("C1", None, &["t0", "t1"]), member("C0", None, &["t0", "t1"])];
        let got = RangeAssignor.assign(&topics(&[("t0", 3), ("t1", 3)]), &members);
        assert_eq!(got["C0"], parts(&[("t0", 0), ("t0", 1), ("t1", 0), ("t1", 1)]));
        assert_eq!(got["C1"], parts(&[("t0", 2), ("t1", 2)]));
    }

    /// The Java RoundRobinAssignor's documentation: C0 gets t0p0, t0p2, t1p1; C1 gets t0p1, t1p0, t1p2.
    #[test]
    fn round_robin_matches_the_java_documentation() {
        let members = [member("C0", None, &["t0", "t1"]), member("C1", None, &["t0", "t1"])];
        let got = RoundRobinAssignor.assign(&topics(&[("t0", 3), ("t1", 3)]), &members);
        assert_eq!(got["C0"], parts(&[("t0", 0), ("t0", 2), ("t1", 1)]));
        assert_eq!(got["C1"], parts(&[("t0", 1), ("t1", 0), ("t1", 2)]));
    }

    /// Java's second round-robin example: C0 subscribes to t0; C1 to t0, t1; C2 to t0, t1, t2
    /// (with 1, 2 and 3 partitions): C0 [t0p0], C1 [t1p0], C2 [t1p1, t2p0, t2p1, t2p2].
    #[test]
    fn round_robin_skips_members_not_subscribed() {
        let members =
            [member("C0", None, &["t0"]), member("C1", None, &["t0", "t1"]), member("C2", None, &["t0", "t1", "t2"])];
        let got = RoundRobinAssignor.assign(&topics(&[("t0", 1), ("t1", 2), ("t2", 3)]), &members);
        assert_eq!(got["C0"], parts(&[("t0", 0)]));
        assert_eq!(got["C1"], parts(&[("t1", 0)]));
        assert_eq!(got["C2"], parts(&[("t1", 1), ("t2", 0), ("t2", 1), ("t2", 2)]));
    }

    #[test]
    fn static_members_come_first_in_instance_id_order() {
        // "a" is dynamic with the smallest member id, but static members sort before it.
        let members = [member("a", None, &["t"]), member("b", Some("z"), &["t"]), member("c", Some("y"), &["t"])];
        let got = RangeAssignor.assign(&topics(&[("t", 3)]), &members);
        assert_eq!(got["c"], parts(&[("t", 0)]));
        assert_eq!(got["b"], parts(&[("t", 1)]));
        assert_eq!(got["a"], parts(&[("t", 2)]));
    }

    #[test]
    fn every_partition_goes_to_exactly_one_subscriber_and_everyone_gets_an_entry() {
        for assignor in [&RangeAssignor as &dyn Assignor, &RoundRobinAssignor] {
            for count in 0..8 {
                let members: Vec<GroupMember> = (0..count)
                    .map(|i| member(&format!("m{i}"), None, if i % 3 == 2 { &["b"] } else { &["a", "b"] }))
                    .collect();
                let partitions = topics(&[("a", 5), ("b", 7), ("unsubscribed", 4)]);
                let got = assignor.assign(&partitions, &members);
                assert_eq!(got.len(), members.len(), "{}", assignor.name());
                let mut all: Vec<(String, i32)> = got.values().flatten().cloned().collect();
                all.sort();
                let expected: Vec<(String, i32)> = if members.is_empty() {
                    Vec::new()
                } else {
                    (0..5).map(|p| ("a".to_owned(), p)).chain((0..7).map(|p| ("b".to_owned(), p))).collect()
                };
                assert_eq!(all, expected, "{} with {count} members", assignor.name());
                for m in &members {
                    assert!(got[&m.member_id].iter().all(|(t, _)| m.topics.contains(t)), "{}", assignor.name());
                }
            }
        }
    }

    #[test]
    fn range_balances_within_one() {
        let members: Vec<GroupMember> = (0..3).map(|i| member(&format!("m{i}"), None, &["t"])).collect();
        let got = RangeAssignor.assign(&topics(&[("t", 8)]), &members);
        let sizes: Vec<usize> = got.values().map(Vec::len).collect();
        assert_eq!(sizes, vec![3, 3, 2]);
    }
}
