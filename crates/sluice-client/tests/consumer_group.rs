//! Group members (`ConsumerGroupMember`) against Apache Kafka 4.4, on the consumer protocol of
//! KIP-848 and on the classic protocol with cooperative rebalancing: members split the
//! partitions, a partition moves to a new member only after its owner released it, a member that
//! leaves or dies hands its partitions over, a sluice member shares a group with the Java client's,
//! `Auto` speaks classic where the consumer protocol is off, and a member dropped from its group
//! cannot commit its transaction's offsets (KIP-447). Tansu has no consumer protocol: those tests
//! skip there and say so; the classic ones run there too.

use sluice_testkit as common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::member::{PeerMember, Seen};
use common::{java, unique, Broker, Kind};
use sluice_client::{
    Client, ClientConfig, ConsumerGroupConfig, ConsumerGroupMember, Error, GroupProtocol, MemberEvent, Producer,
    ProducerConfig, ProducerRecord,
};
use sluice_protocol::error_code::ErrorCode;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Which member owns each partition, as the members report it, and how many revocations each
/// member was asked for.
#[derive(Debug, Default)]
struct Book {
    owners: BTreeMap<i32, String>,
    revocations: BTreeMap<&'static str, usize>,
}

type Ledger = Arc<Mutex<Book>>;

/// Whether the broker speaks the consumer protocol; prints why a test skips when it does not.
fn consumer_protocol_or_skip(kind: Kind, test: &str) -> bool {
    if kind == Kind::Tansu {
        eprintln!("SKIPPED on Tansu: {test}: Tansu 0.6 has no consumer group protocol (KIP-848); see docs/brokers.md");
        return false;
    }
    true
}

/// Takes `member`'s events until `stop` turns true, then hands the member back. Each change
/// goes into `ledger`, where a partition given to a member while another still owns it fails
/// the test; revoked partitions are released at once.
fn run_member(
    name: &'static str,
    mut member: ConsumerGroupMember,
    ledger: &Ledger,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<ConsumerGroupMember> {
    let ledger = Arc::clone(ledger);
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                event = member.next_event() => Some(event.unwrap()),
                _ = stop.wait_for(|stop| *stop) => None,
            };
            let Some(event) = event else { return member };
            match event {
                MemberEvent::Assigned(partitions) => {
                    let mut book = ledger.lock().unwrap();
                    for (_, partition) in partitions {
                        if let Some(other) = book.owners.insert(partition, name.to_owned()) {
                            panic!("partition {partition} given to {name} while {other} owns it");
                        }
                    }
                }
                MemberEvent::Revoked(partitions) => {
                    {
                        let mut book = ledger.lock().unwrap();
                        *book.revocations.entry(name).or_default() += 1;
                        for (_, partition) in &partitions {
                            let owner = book.owners.remove(partition);
                            assert_eq!(owner.as_deref(), Some(name), "{name} gave up {partition}");
                        }
                    }
                    member.released(&partitions);
                }
                MemberEvent::Lost(partitions) => panic!("{name} lost {partitions:?} in a test without faults"),
                other => panic!("{name}: unexpected {other:?}"),
            }
        }
    })
}

/// Waits (up to 60 s) until `ledger` satisfies `done`, naming `what` if it never does.
async fn wait_for(ledger: &Ledger, what: &str, done: impl Fn(&BTreeMap<i32, String>) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let owners = ledger.lock().unwrap().owners.clone();
        if done(&owners) {
            return;
        }
        assert!(Instant::now() < deadline, "never {what}: owners {owners:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn counts(owners: &BTreeMap<i32, String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for owner in owners.values() {
        *counts.entry(owner.clone()).or_insert(0) += 1;
    }
    counts
}

/// A member of `group` on `protocol`; on the classic protocol with a 6 s session, as the test
/// brokers give consumer-protocol members.
fn config(group: &str, topic: &str, protocol: GroupProtocol) -> ConsumerGroupConfig {
    let mut config = ConsumerGroupConfig::new(group, [topic]);
    config.protocol = protocol;
    config.session_timeout = Duration::from_secs(6);
    config.heartbeat_interval = Duration::from_millis(500);
    config
}

async fn join_on(client: &Client, group: &str, topic: &str, protocol: GroupProtocol) -> ConsumerGroupMember {
    let member = ConsumerGroupMember::join(client.clone(), config(group, topic, protocol)).await.unwrap();
    if protocol != GroupProtocol::Auto {
        assert_eq!(member.protocol(), protocol);
    }
    member
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_split_the_partitions_and_hand_them_over_only_once_released() {
    let (broker, client, topic) = common::new_topic("kip848", 6).await;
    if !consumer_protocol_or_skip(broker.kind, "members_split_the_partitions_and_hand_them_over_only_once_released") {
        return;
    }
    split_and_hand_over(&client, &topic, GroupProtocol::Consumer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_members_split_the_partitions_cooperatively() {
    let (_broker, client, topic) = common::new_topic("cooperative", 6).await;
    split_and_hand_over(&client, &topic, GroupProtocol::Classic).await;
}

/// Three members join one after the other and one leaves: each partition moves only after its
/// owner released it (the ledger fails the test otherwise), the six end up split evenly each
/// time, and the members that gain from the leave give up nothing.
async fn split_and_hand_over(client: &Client, topic: &str, protocol: GroupProtocol) {
    let group = unique("split");
    let ledger = Ledger::default();
    let (stop, stopped) = watch::channel(false);
    let (stop_b, stopped_b) = watch::channel(false);

    let a = run_member("a", join_on(client, &group, topic, protocol).await, &ledger, stopped.clone());
    wait_for(&ledger, "a owns all 6", |o| o.len() == 6 && o.values().all(|m| m == "a")).await;

    let b = run_member("b", join_on(client, &group, topic, protocol).await, &ledger, stopped_b);
    wait_for(&ledger, "a and b split the 6", |o| o.len() == 6 && counts(o).values().all(|n| *n == 3)).await;
    let c = run_member("c", join_on(client, &group, topic, protocol).await, &ledger, stopped.clone());
    wait_for(&ledger, "three members with 2 each", |o| {
        o.len() == 6 && counts(o).len() == 3 && counts(o).values().all(|n| *n == 2)
    })
    .await;

    // b leaves: its partitions go to the others at once (well before b's 6 s session would end).
    stop_b.send(true).unwrap();
    let b = b.await.unwrap();
    assert!(b.epoch() > 0);
    let revocations_before = {
        let mut book = ledger.lock().unwrap();
        book.owners.retain(|_, owner| owner != "b");
        book.revocations.clone()
    };
    let left = Instant::now();
    b.leave().await.unwrap();
    wait_for(&ledger, "a and c split the 6 after b left", |o| o.len() == 6 && counts(o).values().all(|n| *n == 3))
        .await;
    let handover = left.elapsed();
    assert!(handover < Duration::from_secs(4), "b's partitions moved only after {handover:?}: was the leave sent?");
    assert_eq!(ledger.lock().unwrap().revocations, revocations_before, "a and c only gained: nothing was revoked");

    stop.send(true).unwrap();
    let (a, c) = (a.await.unwrap(), c.await.unwrap());
    for member in [&a, &c] {
        let metadata = member.group_metadata();
        assert_eq!(metadata.group_id, group);
        assert_eq!(metadata.member_id, member.member_id());
        match protocol {
            // KIP-1082: the member's own UUID.
            GroupProtocol::Consumer => assert_eq!(metadata.member_id.len(), 36, "{metadata:?}"),
            _ => assert!(!metadata.member_id.is_empty(), "{metadata:?}"),
        }
        assert!(metadata.generation_id > 0, "{metadata:?}");
        assert_eq!(member.owned().len(), 3, "{:?}", member.owned());
    }
    // ConsumerGroupDescribe names each member's partitions (with topic names); a classic group
    // is not one it describes.
    let described = client.describe_consumer_group(&group).await;
    match protocol {
        GroupProtocol::Consumer => {
            let described = described.unwrap();
            let mut owners: BTreeMap<String, Vec<(String, i32)>> =
                described.members.into_iter().map(|m| (m.member_id, m.assignment)).collect();
            for member in [&a, &c] {
                let mut owned = member.owned();
                owned.sort();
                assert_eq!(owners.remove(&member.member_id()), Some(owned));
            }
            assert!(owners.is_empty(), "members neither a nor c: {owners:?}");
        }
        // Tansu describes a classic group as one without members (docs/brokers.md).
        _ if common::shared().kind == Kind::Tansu => {
            let described = described.unwrap();
            assert!(described.members.is_empty(), "{described:?}");
        }
        _ => {
            let error = described.unwrap_err();
            assert!(error.to_string().contains("GROUP_ID_NOT_FOUND"), "{error}");
        }
    }
    a.leave().await.unwrap();
    c.leave().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_dies_is_fenced_and_its_partitions_move() {
    let (broker, client, topic) = common::new_topic("kip848-dies", 4).await;
    if !consumer_protocol_or_skip(broker.kind, "a_member_that_dies_is_fenced_and_its_partitions_move") {
        return;
    }
    dies(&client, &topic, GroupProtocol::Consumer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classic_member_that_dies_is_dropped_and_its_partitions_move() {
    let (_broker, client, topic) = common::new_topic("classic-dies", 4).await;
    dies(&client, &topic, GroupProtocol::Classic).await;
}

/// One of two members is dropped without leaving: its heartbeats stop, and the coordinator
/// fences it when its session ends (6 s here); only then does the survivor get its partitions.
async fn dies(client: &Client, topic: &str, protocol: GroupProtocol) {
    let group = unique("dies");
    let ledger = Ledger::default();
    let (stop, stopped) = watch::channel(false);
    let (stop_dying, stopped_dying) = watch::channel(false);
    let survivor = run_member("survivor", join_on(client, &group, topic, protocol).await, &ledger, stopped);
    let dying = run_member("dying", join_on(client, &group, topic, protocol).await, &ledger, stopped_dying);
    wait_for(&ledger, "two members with 2 each", |o| o.len() == 4 && counts(o).values().all(|n| *n == 2)).await;

    // Dropped without leaving: its heartbeats stop, and the coordinator fences it when its
    // session ends (6 s on the test brokers).
    stop_dying.send(true).unwrap();
    drop(dying.await.unwrap());
    let died = Instant::now();
    ledger.lock().unwrap().owners.retain(|_, owner| owner != "dying");
    wait_for(&ledger, "the survivor owns all 4", |o| o.len() == 4 && o.values().all(|m| m == "survivor")).await;
    let moved = died.elapsed();
    eprintln!("partitions moved {:.1} s after the member died", moved.as_secs_f64());
    // Only when its session ended: a member dropped does not leave.
    assert!(moved > Duration::from_secs(4), "moved after {moved:?}, before the 6 s session could end");

    stop.send(true).unwrap();
    survivor.await.unwrap().leave().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sluice_member_and_a_java_member_share_a_consumer_protocol_group() {
    let (broker, client, topic) = common::new_topic("kip848-java", 4).await;
    if !consumer_protocol_or_skip(broker.kind, "a_sluice_member_and_a_java_member_share_a_consumer_protocol_group") {
        return;
    }
    share_with_java(broker, &client, &topic, GroupProtocol::Consumer, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sluice_member_and_a_java_member_share_a_cooperative_classic_group() {
    let (broker, client, topic) = common::new_topic("cooperative-java", 4).await;
    // Each leads once: the first to join is the classic group's leader, and assigns with its own
    // cooperative-sticky assignor.
    share_with_java(broker, &client, &topic, GroupProtocol::Classic, false).await;
    share_with_java(broker, &client, &topic, GroupProtocol::Classic, true).await;
}

/// A sluice member and the Java client's split four partitions (the first to join owns all four
/// until the other comes), and sluice owns all four again once Java leaves.
async fn share_with_java(broker: &Broker, client: &Client, topic: &str, protocol: GroupProtocol, java_first: bool) {
    let group = unique("with-java");
    let ledger = Ledger::default();
    let (stop, stopped) = watch::channel(false);
    let seen = Arc::new(Seen::default());
    let mut command = java::java_peer();
    command.args(["group-member", &broker.addr, topic, &group]).stderr(Stdio::null());
    match protocol {
        GroupProtocol::Classic => command.args(["--protocol", "classic", "--assignor", "cooperative-sticky"]),
        _ => command.args(["--protocol", "consumer"]),
    };
    let start_java = |command| PeerMember::start(command, "Java", "java", &seen);
    let (java_member, sluice) = if java_first {
        let java_member = start_java(command);
        let deadline = Instant::now() + Duration::from_secs(60);
        while seen.assignment("java").len() != 4 {
            assert!(Instant::now() < deadline, "Java never owned the 4: {:?}", seen.assignment("java"));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (java_member, run_member("sluice", join_on(client, &group, topic, protocol).await, &ledger, stopped))
    } else {
        let sluice = run_member("sluice", join_on(client, &group, topic, protocol).await, &ledger, stopped);
        wait_for(&ledger, "sluice owns all 4", |o| o.len() == 4).await;
        (start_java(command), sluice)
    };
    // The four are split between the two; sluice gave up what Java now owns.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (java_owns, sluice_owns) = (seen.assignment("java"), ledger.lock().unwrap().owners.clone());
        let disjoint = java_owns.iter().all(|p| !sluice_owns.contains_key(p));
        if java_owns.len() == 2 && sluice_owns.len() == 2 && disjoint {
            break;
        }
        assert!(Instant::now() < deadline, "no even split: Java {java_owns:?}, sluice {sluice_owns:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Java leaves: sluice gets its partitions back.
    java_member.stop();
    wait_for(&ledger, "sluice owns all 4 again", |o| o.len() == 4).await;
    stop.send(true).unwrap();
    sluice.await.unwrap().leave().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_the_coordinator_refuses_fails_at_join_saying_why() {
    let (broker, client, topic) = common::new_topic("kip848-refused", 1).await;
    let mut config = config(&unique("kip848-refused"), &topic, GroupProtocol::Consumer);
    config.server_assignor = Some("no-such-assignor".into());
    let joined = ConsumerGroupMember::join(client, config).await;
    match broker.kind {
        // No consumer protocol at all.
        Kind::Tansu => assert!(matches!(joined, Err(Error::UnsupportedVersion { .. })), "{joined:?}"),
        Kind::Kafka => {
            let error = joined.unwrap_err();
            let code = match &error {
                Error::Broker { code, .. } | Error::BrokerMessage { code, .. } => *code,
                other => panic!("not the broker's refusal: {other:?}"),
            };
            assert_eq!(code, ErrorCode::UnsupportedAssignor, "{error}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_speaks_classic_where_the_broker_offers_no_consumer_protocol() {
    if common::kind() == Kind::Tansu {
        eprintln!("SKIPPED on Tansu: auto_speaks_classic_where_the_broker_offers_no_consumer_protocol: it needs a Kafka broker configured without the consumer protocol (Tansu has none at all: the other classic tests cover it)");
        return;
    }
    let broker = Broker::start_kafka_configured(&["group.coordinator.rebalance.protocols=classic"]);
    let client = Client::connect(ClientConfig::new([broker.addr.as_str()])).await.unwrap();
    let topic = unique("classic-only");
    client.create_topic(&topic, 4, 1).await.unwrap();
    let group = unique("classic-only");

    let refused = ConsumerGroupMember::join(client.clone(), config(&group, &topic, GroupProtocol::Consumer)).await;
    let error = refused.expect_err("the consumer protocol is off on this broker");
    eprintln!("the consumer protocol asked for: {error}");

    let ledger = Ledger::default();
    let (stop, stopped) = watch::channel(false);
    let a = run_member("a", join_on(&client, &group, &topic, GroupProtocol::Auto).await, &ledger, stopped.clone());
    let b = run_member("b", join_on(&client, &group, &topic, GroupProtocol::Auto).await, &ledger, stopped);
    wait_for(&ledger, "a and b split the 4", |o| o.len() == 4 && counts(o).values().all(|n| *n == 2)).await;
    stop.send(true).unwrap();
    for member in [a.await.unwrap(), b.await.unwrap()] {
        assert_eq!(member.protocol(), GroupProtocol::Classic);
        member.leave().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_dropped_from_its_group_cannot_commit_its_transaction() {
    let broker = common::shared();
    if broker.kind == Kind::Tansu {
        eprintln!("SKIPPED on Tansu: a_member_dropped_from_its_group_cannot_commit_its_transaction: Tansu does not check a transaction's group metadata (KIP-447)");
        return;
    }
    for protocol in [GroupProtocol::Consumer, GroupProtocol::Classic] {
        zombie_is_fenced(broker, protocol).await;
    }
}

/// KIP-447: member A opens a transaction, then stops heartbeating (a pause, a partition of the
/// network); the group drops it after its session and gives its partitions to B. A's offsets, sent
/// with A's group metadata, are refused, so A's output is never committed; B's commit goes through.
async fn zombie_is_fenced(broker: &Broker, protocol: GroupProtocol) {
    let client = Client::connect(ClientConfig::new([broker.addr.as_str()])).await.unwrap();
    let (input, output) = (unique("zombie-in"), unique("zombie-out"));
    client.create_topic(&input, 2, 1).await.unwrap();
    client.create_topic(&output, 1, 1).await.unwrap();
    let group = unique("zombie");

    let mut a = join_on(&client, &group, &input, protocol).await;
    expect_assigned(&mut a, 2).await;
    let zombie = Producer::new(client.clone(), transactional(&unique("zombie-a"))).await.unwrap();
    zombie.begin_transaction().await.unwrap();
    zombie.send(record(&output, "from the zombie")).await.unwrap().await.unwrap();
    let zombie_metadata = a.group_metadata();
    drop(a);

    let mut b = join_on(&client, &group, &input, protocol).await;
    expect_assigned(&mut b, 2).await;
    let offsets = [(input.clone(), 0, 1), (input.clone(), 1, 1)];
    let refused = zombie.send_offsets_to_transaction(&offsets, &zombie_metadata).await;
    let error = refused.expect_err("the group dropped the zombie: its offsets are refused");
    let code = match &error {
        Error::Broker { code, .. } | Error::BrokerMessage { code, .. } => *code,
        other => panic!("{protocol:?}: not the coordinator's refusal: {other:?}"),
    };
    assert!(
        matches!(
            code,
            ErrorCode::UnknownMemberId
                | ErrorCode::IllegalGeneration
                | ErrorCode::FencedMemberEpoch
                | ErrorCode::StaleMemberEpoch
        ),
        "{protocol:?}: {error}"
    );
    eprintln!("{protocol:?}: the zombie's offsets refused with {code:?}");
    zombie.abort_transaction().await.unwrap();

    let owner = Producer::new(client.clone(), transactional(&unique("zombie-b"))).await.unwrap();
    owner.begin_transaction().await.unwrap();
    owner.send(record(&output, "from the owner")).await.unwrap().await.unwrap();
    owner.send_offsets_to_transaction(&offsets, &b.group_metadata()).await.unwrap();
    owner.commit_transaction().await.unwrap();
    let partitions = [(input.clone(), 0), (input.clone(), 1)];
    let committed = client.stable_group_offsets(&group, &partitions).await.unwrap();
    assert!(partitions.iter().all(|p| committed.get(p) == Some(&Some(1))), "{protocol:?}: {committed:?}");
    assert_eq!(
        java::consume_values(&broker.addr, &output, true),
        ["from the owner"],
        "{protocol:?}: read_committed sees the owner's record only"
    );
    b.leave().await.unwrap();
}

/// Waits (60 s at most) until `member` owns `count` partitions, releasing any revoked.
async fn expect_assigned(member: &mut ConsumerGroupMember, count: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while member.owned().len() != count {
        let event = tokio::time::timeout_at(deadline, member.next_event()).await;
        let event = event.unwrap_or_else(|_| panic!("never {count} partitions: {:?}", member.owned())).unwrap();
        if let MemberEvent::Revoked(partitions) = event {
            member.released(&partitions);
        }
    }
}

fn transactional(id: &str) -> ProducerConfig {
    let mut config = ProducerConfig::default();
    config.transactional_id = Some(id.into());
    config
}

fn record(topic: &str, value: &str) -> ProducerRecord {
    ProducerRecord { partition: Some(0), ..ProducerRecord::new(topic, value.to_owned()) }
}
