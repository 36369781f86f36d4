//! Partition assignors: how a consumer group's leader splits the subscribed topics' partitions
//! among the members. [`RangeAssignor`] and [`RoundRobinAssignor`] give the same answer as the Java
//! client's `RangeAssignor` and `RoundRobinAssignor` (so a sluice leader and a Java or librdkafka
//! leader agree), ordering members as Java does: static members (KIP-345) first by group instance
//! id, then dynamic members by member id. [`CooperativeStickyAssignor`] speaks the Java client's
//! `cooperative-sticky` protocol, incremental cooperative rebalancing
//! ([KIP-429](https://cwiki.apache.org/confluence/display/KAFKA/KIP-429%3A+Kafka+Consumer+Incremental+Rebalance+Protocol)):
//! members keep what they own as far as balance allows, and a partition changes hands over two
//! rebalances instead of every member stopping everything in each.

use std::cmp::{Ordering, Reverse};
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

/// Incremental cooperative rebalancing, KIP-429 (`cooperative-sticky`): members keep the
/// partitions they own as far as balance allows, and a partition that changes hands does so over
/// two rebalances, so the rest of the group keeps consuming throughout.
///
/// The protocol name is the Java client's `CooperativeStickyAssignor`'s, so sluice and Java members
/// of the classic group protocol can share a group; the assignment algorithm is sluice's own (a
/// Java leader may split partitions differently, which every member accepts), and it reads a
/// member's previous partitions from the `owned` field of the subscription (consumer protocol v1+):
///
/// 1. A claimed partition counts as the member's own only if the member still subscribes to its
///    topic and the partition exists; a partition two members claim belongs to neither.
/// 2. Partitions nobody owns go, one at a time, to the subscriber holding the fewest (ties in
///    Java's member order); then partitions move from the most loaded member to the least loaded
///    subscriber of their topic while the two counts differ by two or more. With every member on
///    the same topics the result is balanced (counts differ by at most one) and moves as few owned
///    partitions as that allows.
/// 3. A partition whose new holder is not its owner is given to nobody in this generation.
///
/// What a member must do with its assignment: keep consuming what it still has, revoke (commit
/// and stop fetching) every partition it owned that is missing, and, if it revoked anything,
/// rejoin at once. In that next rebalance nobody owns the revoked partitions and they go straight
/// to their new holders, so the group settles after at most two rebalances.
#[derive(Debug, Clone, Copy, Default)]
pub struct CooperativeStickyAssignor;

impl Assignor for CooperativeStickyAssignor {
    fn name(&self) -> &str {
        "cooperative-sticky"
    }

    fn assign(&self, partitions: &BTreeMap<String, i32>, members: &[GroupMember]) -> Assignment {
        let mut assignment = empty_assignment(members);
        let members = sorted(members);
        let mut plan = StickyPlan::new(partitions, &members);
        plan.place_unowned(partitions);
        plan.balance();
        let mut withheld = 0usize;
        for (member, holding) in members.iter().zip(&plan.holdings) {
            let list = assignment.entry(member.member_id.clone()).or_default();
            for (topic, kept) in &holding.kept {
                list.extend(kept.iter().map(|p| ((*topic).to_owned(), *p)));
            }
            for (topic, fresh) in &holding.fresh {
                for partition in fresh {
                    // Owned by another member: it is theirs until they revoke it.
                    if plan.owners.contains_key(&(*topic, *partition)) {
                        withheld += 1;
                    } else {
                        list.push(((*topic).to_owned(), *partition));
                    }
                }
            }
            list.sort();
        }
        if withheld > 0 {
            tracing::debug!(withheld, "cooperative-sticky: partitions withheld until their owners revoke them");
        }
        assignment
    }
}

/// Partitions of one member, by topic, while the cooperative-sticky assignor works.
#[derive(Debug, Default)]
struct Holding<'a> {
    /// What it validly owned and still holds.
    kept: BTreeMap<&'a str, BTreeSet<i32>>,
    /// What it holds that it did not own: unowned partitions, or ones moved from another member.
    fresh: BTreeMap<&'a str, BTreeSet<i32>>,
    count: usize,
}

/// One partition moving from one member to another (indexes in Java's member order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Move<'a> {
    /// Sorts moves of partitions the giver does not own first: those cost no revocation.
    from_kept: bool,
    to_count: usize,
    to: usize,
    topic: &'a str,
    partition: i32,
    from: usize,
}

/// The cooperative-sticky assignor's working state; members are indexes in Java's member order.
#[derive(Debug)]
struct StickyPlan<'a> {
    /// Each existing topic's subscribers.
    subscribers: BTreeMap<&'a str, Vec<usize>>,
    /// The valid owner of each partition that has one.
    owners: BTreeMap<(&'a str, i32), usize>,
    holdings: Vec<Holding<'a>>,
}

impl<'a> StickyPlan<'a> {
    /// Every member starts with the partitions it validly owns.
    fn new(partitions: &'a BTreeMap<String, i32>, members: &[&GroupMember]) -> Self {
        let subscribers: BTreeMap<&'a str, Vec<usize>> = partitions
            .keys()
            .map(|topic| (topic.as_str(), (0..members.len()).filter(|&m| subscribes(members, m, topic)).collect()))
            .filter(|(_, subscribers): &(&str, Vec<usize>)| !subscribers.is_empty())
            .collect();
        let owners = valid_owners(partitions, members);
        let mut plan = Self { subscribers, owners, holdings: members.iter().map(|_| Holding::default()).collect() };
        let owned: Vec<((&'a str, i32), usize)> = plan.owners.iter().map(|(p, m)| (*p, *m)).collect();
        for ((topic, partition), member) in owned {
            plan.add(member, topic, partition);
        }
        plan
    }

    fn count(&self, member: usize) -> usize {
        self.holdings.get(member).map_or(0, |h| h.count)
    }

    /// Gives the partition to `member`: as kept if it is the valid owner, else as fresh.
    fn add(&mut self, member: usize, topic: &'a str, partition: i32) {
        let owner = self.owners.get(&(topic, partition)).copied();
        let Some(holding) = self.holdings.get_mut(member) else { return };
        let by_topic = if owner == Some(member) { &mut holding.kept } else { &mut holding.fresh };
        if by_topic.entry(topic).or_default().insert(partition) {
            holding.count += 1;
        }
    }

    fn remove(&mut self, member: usize, topic: &'a str, partition: i32) {
        let Some(holding) = self.holdings.get_mut(member) else { return };
        for by_topic in [&mut holding.kept, &mut holding.fresh] {
            if let Some(set) = by_topic.get_mut(topic) {
                if set.remove(&partition) {
                    holding.count -= 1;
                    if set.is_empty() {
                        by_topic.remove(topic);
                    }
                    return;
                }
            }
        }
    }

    /// Each partition nobody owns goes to its topic's subscriber holding the fewest partitions.
    fn place_unowned(&mut self, partitions: &'a BTreeMap<String, i32>) {
        let topics: Vec<(&'a str, Vec<usize>)> = self.subscribers.iter().map(|(t, s)| (*t, s.clone())).collect();
        for (topic, subscribers) in topics {
            let count = partitions.get(topic).copied().unwrap_or(0);
            for partition in 0..count {
                if self.owners.contains_key(&(topic, partition)) {
                    continue;
                }
                if let Some(to) = subscribers.iter().copied().min_by_key(|&m| (self.count(m), m)) {
                    self.add(to, topic, partition);
                }
            }
        }
    }

    /// Moves partitions from the most loaded members to less loaded ones while that narrows the
    /// gap. Each move lowers the sum of the squared counts by at least two, so the loop ends
    /// within half the starting sum; the bound only makes that plain.
    fn balance(&mut self) {
        let squares = self.holdings.iter().map(|h| h.count.saturating_mul(h.count)).fold(0, usize::saturating_add);
        for _ in 0..squares / 2 {
            let Some(step) = self.next_move() else { return };
            debug_assert!(step.to_count + 1 < self.count(step.from), "a move must narrow the gap");
            self.remove(step.from, step.topic, step.partition);
            self.add(step.to, step.topic, step.partition);
        }
    }

    /// The best move away from the most loaded member that has one.
    fn next_move(&self) -> Option<Move<'a>> {
        let mut givers: Vec<usize> = (0..self.holdings.len()).collect();
        givers.sort_by_key(|&m| (Reverse(self.count(m)), m));
        givers.into_iter().find_map(|giver| self.best_move_from(giver))
    }

    /// Per topic the giver holds, its lowest partition (fresh before kept) to the least loaded
    /// other subscriber with at least two fewer partitions; the best of those.
    fn best_move_from(&self, from: usize) -> Option<Move<'a>> {
        let holding = self.holdings.get(from)?;
        let candidates = [(false, &holding.fresh), (true, &holding.kept)];
        let moves = candidates.into_iter().flat_map(|(from_kept, by_topic)| {
            by_topic.iter().filter_map(move |(topic, set)| {
                let partition = *set.first()?;
                let to = self
                    .subscribers
                    .get(topic)?
                    .iter()
                    .copied()
                    .filter(|&m| m != from && self.count(m) + 1 < holding.count)
                    .min_by_key(|&m| (self.count(m), m))?;
                Some(Move { from_kept, to_count: self.count(to), to, topic, partition, from })
            })
        });
        moves.min()
    }
}

fn subscribes(members: &[&GroupMember], member: usize, topic: &str) -> bool {
    members.get(member).is_some_and(|m| m.topics.iter().any(|t| t == topic))
}

/// Each partition's valid owner: the one member that claims it, subscribes to its topic, and
/// names a partition that exists. A partition claimed by two members has none.
fn valid_owners<'a>(
    partitions: &'a BTreeMap<String, i32>,
    members: &[&GroupMember],
) -> BTreeMap<(&'a str, i32), usize> {
    let mut claims: BTreeMap<(&'a str, i32), Option<usize>> = BTreeMap::new();
    for (index, member) in members.iter().enumerate() {
        for (topic, partition) in &member.owned {
            let Some((topic, count)) = partitions.get_key_value(topic) else { continue };
            if !(0..*count).contains(partition) || !subscribes(members, index, topic) {
                continue;
            }
            claims
                .entry((topic.as_str(), *partition))
                .and_modify(|owner| {
                    if *owner != Some(index) {
                        *owner = None;
                    }
                })
                .or_insert(Some(index));
        }
    }
    claims.into_iter().filter_map(|(partition, owner)| Some((partition, owner?))).collect()
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

    fn owning(mut member: GroupMember, owned: &[(&str, i32)]) -> GroupMember {
        member.owned = parts(owned);
        member
    }

    /// Every partition assigned, in (topic, partition) order, with its member.
    fn holders(assignment: &Assignment) -> Vec<((String, i32), String)> {
        let mut all: Vec<((String, i32), String)> =
            assignment.iter().flat_map(|(m, ps)| ps.iter().map(move |p| (p.clone(), m.clone()))).collect();
        all.sort();
        all
    }

    fn spread(assignment: &Assignment) -> usize {
        let sizes = assignment.values().map(Vec::len);
        sizes.clone().max().unwrap_or(0) - sizes.min().unwrap_or(0)
    }

    /// Each member's `owned` becomes what `assignment` gave it, as after a round of revocations.
    fn feed_back(members: &mut [GroupMember], assignment: &Assignment) {
        for m in members {
            m.owned = assignment[&m.member_id].clone();
        }
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

    #[test]
    fn cooperative_sticky_balances_a_fresh_group() {
        let members: Vec<GroupMember> = (0..3).map(|i| member(&format!("m{i}"), None, &["a", "b"])).collect();
        let got = CooperativeStickyAssignor.assign(&topics(&[("a", 3), ("b", 4), ("nobody", 2)]), &members);
        assert_eq!(got.len(), 3);
        let all: Vec<(String, i32)> = holders(&got).into_iter().map(|(p, _)| p).collect();
        let expected: Vec<(String, i32)> =
            (0..3).map(|p| ("a".to_owned(), p)).chain((0..4).map(|p| ("b".to_owned(), p))).collect();
        assert_eq!(all, expected);
        assert!(spread(&got) <= 1, "{got:?}");
        assert!(got.values().all(|ps| ps.windows(2).all(|w| w[0] < w[1])), "{got:?}");
    }

    /// C joins A and B, which own three partitions each: the first rebalance takes one from
    /// each and gives it to nobody; after A and B revoke them, the second gives both to C.
    #[test]
    fn cooperative_sticky_moves_partitions_to_a_newcomer_over_two_rounds() {
        let mut members = vec![
            owning(member("A", None, &["t"]), &[("t", 0), ("t", 1), ("t", 2)]),
            owning(member("B", None, &["t"]), &[("t", 3), ("t", 4), ("t", 5)]),
            member("C", None, &["t"]),
        ];
        let partitions = topics(&[("t", 6)]);
        let first = CooperativeStickyAssignor.assign(&partitions, &members);
        assert_eq!(first["A"].len(), 2, "{first:?}");
        assert_eq!(first["B"].len(), 2, "{first:?}");
        assert!(first["A"].iter().all(|p| members[0].owned.contains(p)), "{first:?}");
        assert!(first["B"].iter().all(|p| members[1].owned.contains(p)), "{first:?}");
        assert!(first["C"].is_empty(), "nothing moves directly: {first:?}");
        let withheld: Vec<(String, i32)> =
            (0..6).map(|p| ("t".to_owned(), p)).filter(|p| first.values().all(|ps| !ps.contains(p))).collect();
        assert_eq!(withheld.len(), 2);

        feed_back(&mut members, &first);
        let second = CooperativeStickyAssignor.assign(&partitions, &members);
        assert_eq!(second["A"], first["A"]);
        assert_eq!(second["B"], first["B"]);
        assert_eq!(second["C"], withheld);
        assert_eq!(spread(&second), 0);
    }

    #[test]
    fn cooperative_sticky_hands_a_departed_members_partitions_over_at_once() {
        // C owned t4 and t5 and has left; its partitions are unowned now.
        let members = [
            owning(member("A", None, &["t"]), &[("t", 0), ("t", 1)]),
            owning(member("B", None, &["t"]), &[("t", 2), ("t", 3)]),
        ];
        let got = CooperativeStickyAssignor.assign(&topics(&[("t", 6)]), &members);
        assert_eq!(got["A"], parts(&[("t", 0), ("t", 1), ("t", 4)]));
        assert_eq!(got["B"], parts(&[("t", 2), ("t", 3), ("t", 5)]));
    }

    #[test]
    fn cooperative_sticky_ignores_conflicting_and_invalid_claims() {
        let members = [
            // t0 is claimed twice; A does not subscribe to u.
            owning(member("A", None, &["t"]), &[("t", 0), ("t", 1), ("u", 0)]),
            // Out of range, negative, and a topic that does not exist.
            owning(member("B", None, &["t"]), &[("t", 0), ("t", 9), ("t", -1), ("gone", 0)]),
            member("C", None, &["u"]),
        ];
        let got = CooperativeStickyAssignor.assign(&topics(&[("t", 4), ("u", 2)]), &members);
        // Only A's t1 is validly owned; everything else is unowned, so all of it is assigned now.
        assert_eq!(got["A"], parts(&[("t", 1), ("t", 2)]));
        assert_eq!(got["B"], parts(&[("t", 0), ("t", 3)]));
        assert_eq!(got["C"], parts(&[("u", 0), ("u", 1)]));
    }

    /// The valid owner of each partition, computed apart from the assignor.
    fn expected_owners(partitions: &BTreeMap<String, i32>, members: &[GroupMember]) -> BTreeMap<(String, i32), String> {
        let mut claims: BTreeMap<(String, i32), BTreeSet<String>> = BTreeMap::new();
        for m in members {
            for (t, p) in &m.owned {
                if m.topics.contains(t) && partitions.get(t).is_some_and(|count| (0..*count).contains(p)) {
                    claims.entry((t.clone(), *p)).or_default().insert(m.member_id.clone());
                }
            }
        }
        claims.into_iter().filter(|(_, c)| c.len() == 1).map(|(p, c)| (p, c.into_iter().next().unwrap())).collect()
    }

    /// A random group: up to 3 topics, up to 6 members (some static), subscriptions to all
    /// topics or random ones, and random claims including conflicting and invalid ones.
    fn random_group(rng: &mut sluice_testkit::Rng) -> (BTreeMap<String, i32>, Vec<GroupMember>, bool) {
        let partitions: BTreeMap<String, i32> =
            (0..1 + rng.below(3)).map(|t| (format!("t{t}"), rng.below(9) as i32)).collect();
        let names: Vec<&String> = partitions.keys().collect();
        let uniform = rng.chance(50);
        let mut members: Vec<GroupMember> = (0..rng.below(7))
            .map(|i| {
                let instance = rng.chance(30).then(|| format!("i{}", rng.below(100)));
                let topics: Vec<String> = if uniform {
                    names.iter().map(|t| (*t).clone()).collect()
                } else {
                    names.iter().filter(|_| rng.chance(60)).map(|t| (*t).clone()).collect()
                };
                GroupMember { member_id: format!("m{i}"), group_instance_id: instance, topics, owned: Vec::new() }
            })
            .collect();
        if !members.is_empty() {
            for (topic, count) in partitions.iter().chain([(&"ghost".to_owned(), &3)]) {
                for p in -1..count + 2 {
                    for _ in 0..rng.below(3) {
                        let claimer = rng.below(members.len() as u64) as usize;
                        members[claimer].owned.push((topic.clone(), p));
                    }
                }
            }
        }
        (partitions, members, uniform)
    }

    /// The most validly owned partitions a balanced assignment of `total` partitions can leave
    /// in place, all members subscribing to everything: q or q + 1 each, the q + 1 slots to the
    /// members owning more than q.
    fn most_kept(owned_counts: &[usize], total: usize) -> usize {
        let Some(q) = total.checked_div(owned_counts.len()) else { return 0 };
        let r = total % owned_counts.len();
        owned_counts.iter().map(|o| (*o).min(q)).sum::<usize>() + r.min(owned_counts.iter().filter(|o| **o > q).count())
    }

    #[test]
    fn cooperative_sticky_properties_hold_for_random_groups() {
        for seed in 0..400u64 {
            let mut rng = sluice_testkit::Rng::new(seed);
            let (partitions, mut members, uniform) = random_group(&mut rng);
            let subscribed: Vec<(String, i32)> = partitions
                .iter()
                .filter(|(t, _)| members.iter().any(|m| m.topics.contains(t)))
                .flat_map(|(t, n)| (0..*n).map(move |p| (t.clone(), p)))
                .collect();
            let mut previous: Option<Assignment> = None;
            for round in 1..=4 {
                let owners = expected_owners(&partitions, &members);
                let got = CooperativeStickyAssignor.assign(&partitions, &members);
                let context = format!("seed {seed}, round {round}: {members:?} -> {got:?}");
                assert_eq!(got.len(), members.len(), "{context}");
                let held = holders(&got);
                assert!(held.windows(2).all(|w| w[0].0 != w[1].0), "assigned twice: {context}");
                for ((topic, partition), holder) in &held {
                    let m = members.iter().find(|m| &m.member_id == holder).unwrap();
                    assert!(m.topics.contains(topic), "{context}");
                    assert!((0..partitions[topic]).contains(partition), "{context}");
                    let owner = owners.get(&(topic.clone(), *partition));
                    assert!(owner.is_none_or(|o| o == holder), "taken from its owner: {context}");
                }
                assert!(got.values().all(|ps| ps.windows(2).all(|w| w[0] < w[1])), "{context}");
                if round == 1 && uniform {
                    let kept = held.iter().filter(|(p, m)| owners.get(p) == Some(m)).count();
                    let counts: Vec<usize> =
                        members.iter().map(|m| owners.values().filter(|o| **o == m.member_id).count()).collect();
                    assert_eq!(kept, most_kept(&counts, subscribed.len()), "not sticky enough: {context}");
                }
                if round >= 3 {
                    let all: Vec<(String, i32)> = held.iter().map(|(p, _)| p.clone()).collect();
                    assert_eq!(all, subscribed, "not settled: {context}");
                    assert!(!uniform || spread(&got) <= 1, "unbalanced: {context}");
                }
                if round == 4 {
                    assert_eq!(Some(&got), previous.as_ref(), "no fixpoint: {context}");
                }
                feed_back(&mut members, &got);
                previous = Some(got);
            }
        }
    }
}
