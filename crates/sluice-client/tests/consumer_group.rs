//! Consumer groups on the consumer protocol of KIP-848, against Apache Kafka 4.4: members split
//! the partitions, a partition moves to a new member only after its owner released it, a member
//! that leaves or dies hands its partitions over, and a sluice member shares a group with the
//! Java client's consumer-protocol member. Tansu has no consumer protocol: these tests skip there
//! and say so.

use sluice_testkit as common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::member::{PeerMember, Seen};
use common::{java, unique, Kind};
use sluice_client::{Client, ConsumerGroupConfig, ConsumerGroupMember, Error, MemberEvent};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Which member owns each partition, as the members report it.
type Ledger = Arc<Mutex<BTreeMap<i32, String>>>;

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
                    let mut owners = ledger.lock().unwrap();
                    for (_, partition) in partitions {
                        if let Some(other) = owners.insert(partition, name.to_owned()) {
                            panic!("partition {partition} given to {name} while {other} owns it");
                        }
                    }
                }
                MemberEvent::Revoked(partitions) => {
                    {
                        let mut owners = ledger.lock().unwrap();
                        for (_, partition) in &partitions {
                            assert_eq!(owners.remove(partition).as_deref(), Some(name), "{name} gave up {partition}");
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
        let owners = ledger.lock().unwrap().clone();
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

async fn join(client: &Client, group: &str, topic: &str) -> ConsumerGroupMember {
    ConsumerGroupMember::join(client.clone(), ConsumerGroupConfig::new(group, [topic])).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_split_the_partitions_and_hand_them_over_only_once_released() {
    let (broker, client, topic) = common::new_topic("kip848", 6).await;
    if !consumer_protocol_or_skip(broker.kind, "members_split_the_partitions_and_hand_them_over_only_once_released") {
        return;
    }
    let group = unique("kip848");
    let ledger = Ledger::default();
    let (stop, stopped) = watch::channel(false);
    let (stop_b, stopped_b) = watch::channel(false);

    let a = run_member("a", join(&client, &group, &topic).await, &ledger, stopped.clone());
    wait_for(&ledger, "a owns all 6", |o| o.len() == 6 && o.values().all(|m| m == "a")).await;

    // A second and a third member: each partition moves only after its owner released it (the
    // ledger fails the test otherwise), and the six end up split evenly.
    let b = run_member("b", join(&client, &group, &topic).await, &ledger, stopped_b);
    wait_for(&ledger, "a and b split the 6", |o| o.len() == 6 && counts(o).values().all(|n| *n == 3)).await;
    let c = run_member("c", join(&client, &group, &topic).await, &ledger, stopped.clone());
    wait_for(&ledger, "three members with 2 each", |o| {
        o.len() == 6 && counts(o).len() == 3 && counts(o).values().all(|n| *n == 2)
    })
    .await;

    // b leaves: its partitions go to the others at once (well before b's 6 s session would end).
    stop_b.send(true).unwrap();
    let b = b.await.unwrap();
    assert!(b.epoch() > 0);
    ledger.lock().unwrap().retain(|_, owner| owner != "b");
    let left = Instant::now();
    b.leave().await.unwrap();
    wait_for(&ledger, "a and c split the 6 after b left", |o| o.len() == 6 && counts(o).values().all(|n| *n == 3))
        .await;
    let handover = left.elapsed();
    assert!(handover < Duration::from_secs(4), "b's partitions moved only after {handover:?}: was the leave sent?");

    stop.send(true).unwrap();
    let (a, c) = (a.await.unwrap(), c.await.unwrap());
    for member in [&a, &c] {
        let metadata = member.group_metadata();
        assert_eq!((metadata.group_id.as_str(), metadata.member_id.len()), (group.as_str(), 36));
        assert_eq!(metadata.member_id, member.member_id());
        assert!(metadata.generation_id > 0, "{metadata:?}");
        assert_eq!(member.owned().len(), 3, "{:?}", member.owned());
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
    let group = unique("kip848-dies");
    let ledger = Ledger::default();
    let (stop, stopped) = watch::channel(false);
    let (stop_dying, stopped_dying) = watch::channel(false);
    let survivor = run_member("survivor", join(&client, &group, &topic).await, &ledger, stopped);
    let dying = run_member("dying", join(&client, &group, &topic).await, &ledger, stopped_dying);
    wait_for(&ledger, "two members with 2 each", |o| o.len() == 4 && counts(o).values().all(|n| *n == 2)).await;

    // Dropped without leaving: its heartbeats stop, and the coordinator fences it when its
    // session ends (6 s on the test brokers).
    stop_dying.send(true).unwrap();
    drop(dying.await.unwrap());
    let died = Instant::now();
    ledger.lock().unwrap().retain(|_, owner| owner != "dying");
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
    let group = unique("kip848-java");
    let ledger = Ledger::default();
    let (stop, stopped) = watch::channel(false);
    let sluice = run_member("sluice", join(&client, &group, &topic).await, &ledger, stopped);
    wait_for(&ledger, "sluice owns all 4", |o| o.len() == 4).await;

    let seen = Arc::new(Seen::default());
    let mut command = java::java_peer();
    command.args(["group-member", &broker.addr, &topic, &group, "--protocol", "consumer"]).stderr(Stdio::null());
    let java_member = PeerMember::start(command, "Java", "java", &seen);
    // The coordinator splits the four between the two; sluice gave up what Java now owns.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (java_owns, sluice_owns) = (seen.assignment("java"), ledger.lock().unwrap().clone());
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
    let mut config = ConsumerGroupConfig::new(unique("kip848-refused"), [topic]);
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
            assert_eq!(code, sluice_protocol::error_code::ErrorCode::UnsupportedAssignor, "{error}");
        }
    }
}
