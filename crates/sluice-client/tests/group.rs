//! Consumer groups against a real broker: members split partitions, a leaving member's
//! partitions move to the others without loss or duplicates, committed offsets survive the
//! group, and static members keep their partitions across a restart.

use sluice_testkit as common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{unique, Broker, Kind};
use sluice_client::{
    Client, ClientConfig, ConsumerConfig, Error, GroupConfig, GroupConsumer, GroupEvent, OffsetReset, Producer,
    ProducerConfig, ProducerRecord,
};
use sluice_protocol::error_code::ErrorCode;

const PARTITIONS: i32 = 3;

async fn produce(client: &Client, topic: &str, from: usize, count: usize) {
    let producer = Producer::new(client.clone(), ProducerConfig::default()).await.unwrap();
    let mut deliveries = Vec::new();
    for i in from..from + count {
        let record = ProducerRecord {
            partition: Some((i % PARTITIONS as usize) as i32),
            ..ProducerRecord::new(topic, format!("{i}"))
        };
        deliveries.push(producer.send(record).await.unwrap());
    }
    for delivery in deliveries {
        delivery.await.unwrap();
    }
}

fn group_config(topic: &str, group: &str, instance: Option<&str>) -> GroupConfig {
    let mut config = GroupConfig::new(group, [topic]);
    config.session_timeout = Duration::from_secs(10);
    config.rebalance_timeout = Duration::from_secs(15);
    config.heartbeat_interval = Duration::from_millis(200);
    config.group_instance_id = instance.map(Into::into);
    // The members below commit after each batch they process, and when partitions are revoked.
    config.auto_commit_interval = None;
    config
}

/// What the members of a test saw.
#[derive(Default)]
struct Seen {
    /// Every value consumed, with the member that consumed it.
    consumed: Mutex<Vec<(String, String)>>,
    /// Each member's current partitions.
    assignments: Mutex<BTreeMap<String, Vec<i32>>>,
    /// How many times each member had partitions revoked.
    revocations: Mutex<BTreeMap<String, usize>>,
}

impl Seen {
    fn consumed_count(&self) -> usize {
        self.consumed.lock().unwrap().len()
    }

    fn assignment(&self, member: &str) -> Vec<i32> {
        self.assignments.lock().unwrap().get(member).cloned().unwrap_or_default()
    }

    fn revocations(&self, member: &str) -> usize {
        self.revocations.lock().unwrap().get(member).copied().unwrap_or(0)
    }
}

/// A member running in its own task as an application would: poll, process, commit after
/// each batch and on revocation; on `stop`, close (commit and leave).
fn spawn_member(
    addr: &str,
    name: &str,
    config: GroupConfig,
    seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let (addr, name) = (addr.to_owned(), name.to_owned());
    tokio::spawn(async move {
        let client = Client::connect(ClientConfig::new([addr.as_str()])).await.unwrap();
        let mut consumer = ConsumerConfig::default();
        consumer.offset_reset = OffsetReset::Earliest;
        consumer.max_wait = Duration::from_millis(100);
        let mut member = GroupConsumer::new(client, config, consumer);
        while !stop.load(Ordering::SeqCst) {
            match member.poll().await.unwrap() {
                GroupEvent::Revoked(_) => {
                    *seen.revocations.lock().unwrap().entry(name.clone()).or_default() += 1;
                    member.commit().await.unwrap();
                    seen.assignments.lock().unwrap().remove(&name);
                }
                GroupEvent::Assigned(partitions) => {
                    let partitions = partitions.iter().map(|(_, p)| *p).collect();
                    seen.assignments.lock().unwrap().insert(name.clone(), partitions);
                }
                GroupEvent::Records(parts) => {
                    let values = parts
                        .iter()
                        .flat_map(|p| p.records())
                        .map(|r| (name.clone(), String::from_utf8(r.value().unwrap().to_vec()).unwrap()));
                    seen.consumed.lock().unwrap().extend(values);
                    if !parts.is_empty() {
                        member.commit().await.unwrap();
                    }
                }
            }
        }
        seen.assignments.lock().unwrap().remove(&name);
        member.close().await.unwrap();
    })
}

async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The shared broker, a client, and a new topic of three partitions.
async fn setup() -> (&'static Broker, Client, String) {
    let broker = common::shared();
    let client = Client::connect(ClientConfig::new([broker.addr.as_str()])).await.unwrap();
    let topic = unique("grouped");
    client.create_topic(&topic, PARTITIONS, 1).await.unwrap();
    (broker, client, topic)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_split_partitions_and_take_over_a_leaving_members_without_loss_or_duplicates() {
    let (broker, client, topic) = setup().await;
    let g1 = unique("g1");
    produce(&client, &topic, 0, 300).await;
    let seen = Arc::new(Seen::default());
    let (stop_a, stop_b) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));

    let a = spawn_member(&broker.addr, "a", group_config(&topic, &g1, None), Arc::clone(&seen), Arc::clone(&stop_a));
    wait_until("a owns every partition", Duration::from_secs(20), || seen.assignment("a").len() == 3).await;

    let b = spawn_member(&broker.addr, "b", group_config(&topic, &g1, None), Arc::clone(&seen), Arc::clone(&stop_b));
    wait_until("a and b split the partitions", Duration::from_secs(30), || {
        let (in_a, in_b) = (seen.assignment("a"), seen.assignment("b"));
        let all: BTreeSet<i32> = in_a.iter().chain(&in_b).copied().collect();
        !in_a.is_empty() && !in_b.is_empty() && in_a.len() + in_b.len() == 3 && all.len() == 3
    })
    .await;
    assert!(seen.revocations("a") >= 1, "a gave up its partitions for the rebalance");
    eprintln!("split: a {:?}, b {:?}", seen.assignment("a"), seen.assignment("b"));

    // The admin view agrees: two members of a stable consumer group, owning the three partitions.
    let described = client.describe_group(&g1).await.unwrap();
    assert_eq!((described.state.as_str(), described.protocol_type.as_str()), ("Stable", "consumer"));
    assert_eq!(described.members.len(), 2);
    let mut owned: Vec<(String, i32)> = described.members.iter().flat_map(|m| m.assignment.clone()).collect();
    owned.sort();
    match broker.kind {
        Kind::Kafka => {
            assert_eq!(described.protocol, "range");
            assert_eq!(owned, (0..PARTITIONS).map(|p| (topic.clone(), p)).collect::<Vec<_>>());
        }
        Kind::Tansu => {
            // Tansu 0.6 leaves DescribeGroups' protocol (the chosen assignor) and the members'
            // assignments empty.
            assert!(described.protocol.is_empty() && owned.is_empty());
            eprintln!("note: Tansu 0.6 leaves DescribeGroups' protocol and member assignments empty; Kafka fills both");
        }
    }
    let listed = client.list_groups().await.unwrap();
    assert!(listed.iter().any(|g| g.group_id == g1 && g.protocol_type == "consumer"), "{listed:?}");

    produce(&client, &topic, 300, 300).await;
    wait_until("600 records consumed", Duration::from_secs(30), || seen.consumed_count() >= 600).await;
    {
        let consumed = seen.consumed.lock().unwrap();
        let members: BTreeSet<&str> = consumed.iter().skip(300).map(|(m, _)| m.as_str()).collect();
        assert_eq!(members, BTreeSet::from(["a", "b"]), "after the split both members consume");
    }

    // a leaves; b takes over a's partitions from a's committed offsets.
    stop_a.store(true, Ordering::SeqCst);
    a.await.unwrap();
    wait_until("b owns every partition", Duration::from_secs(30), || seen.assignment("b").len() == 3).await;
    produce(&client, &topic, 600, 300).await;
    wait_until("900 records consumed", Duration::from_secs(30), || seen.consumed_count() >= 900).await;
    stop_b.store(true, Ordering::SeqCst);
    b.await.unwrap();

    let mut values: Vec<usize> = seen.consumed.lock().unwrap().iter().map(|(_, v)| v.parse().unwrap()).collect();
    values.sort_unstable();
    let expected: Vec<usize> = (0..900).collect();
    assert_eq!(values.len(), 900, "no record consumed twice (commits on every batch and on revocation)");
    assert_eq!(values, expected, "every record consumed exactly once");

    // The group's committed offsets are at the end of every partition.
    let committed = client.group_offsets(&g1).await.unwrap();
    for partition in 0..PARTITIONS {
        assert_eq!(committed.get(&(topic.clone(), partition)), Some(&300), "partition {partition}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_member_resumes_from_committed_offsets() {
    let (_broker, client, topic) = setup().await;
    let g2 = unique("g2");
    produce(&client, &topic, 0, 90).await;
    let mut consumer = ConsumerConfig::default();
    consumer.offset_reset = OffsetReset::Earliest;
    let mut config = group_config(&topic, &g2, None);
    config.auto_commit_interval = Some(Duration::from_secs(3600));

    // The first member reads everything and closes: close commits (auto-commit is on).
    let mut first = GroupConsumer::new(client.clone(), config.clone(), consumer.clone());
    let mut count = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while count < 90 {
        assert!(Instant::now() < deadline, "first member read {count} of 90 records");
        if let GroupEvent::Records(parts) = first.poll().await.unwrap() {
            count += parts.iter().map(|p| p.records().count()).sum::<usize>();
        }
    }
    assert_eq!(count, 90);
    first.close().await.unwrap();
    let committed = client.group_offsets(&g2).await.unwrap();
    assert_eq!(committed.values().copied().collect::<Vec<_>>(), vec![30; 3], "close committed the positions");

    produce(&client, &topic, 90, 30).await;
    let mut second = GroupConsumer::new(client.clone(), config, consumer);
    let mut values = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while values.len() < 30 {
        assert!(Instant::now() < deadline, "second member read {} of 30 new records", values.len());
        match second.poll().await.unwrap() {
            GroupEvent::Assigned(partitions) => assert_eq!(partitions.len(), 3),
            GroupEvent::Records(parts) => {
                values.extend(parts.iter().flat_map(|p| p.records().map(|r| r.value().unwrap().to_vec())));
            }
            GroupEvent::Revoked(_) => panic!("a lone member was never asked to give up partitions"),
        }
    }
    let mut values: Vec<usize> = values.iter().map(|v| std::str::from_utf8(v).unwrap().parse().unwrap()).collect();
    values.sort_unstable();
    assert_eq!(values, (90..120).collect::<Vec<_>>(), "the second member starts where the first committed");
    second.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_member_restarting_within_the_session_keeps_its_partitions() {
    let (broker, client, topic) = setup().await;
    let g3 = unique("g3");
    produce(&client, &topic, 0, 30).await;
    let seen = Arc::new(Seen::default());
    let stop_a = Arc::new(AtomicBool::new(false));
    let stop_b = Arc::new(AtomicBool::new(false));
    let a =
        spawn_member(&broker.addr, "a", group_config(&topic, &g3, Some("a")), Arc::clone(&seen), Arc::clone(&stop_a));
    let b =
        spawn_member(&broker.addr, "b", group_config(&topic, &g3, Some("b")), Arc::clone(&seen), Arc::clone(&stop_b));
    wait_until("a and b split the partitions", Duration::from_secs(30), || {
        seen.assignment("a").len() + seen.assignment("b").len() == 3
            && !seen.assignment("a").is_empty()
            && !seen.assignment("b").is_empty()
    })
    .await;
    let (before_a, revocations_b) = (seen.assignment("a"), seen.revocations("b"));

    // a stops (a static member does not leave) and comes back with the same instance id.
    stop_a.store(true, Ordering::SeqCst);
    a.await.unwrap();
    let stop_a = Arc::new(AtomicBool::new(false));
    let a =
        spawn_member(&broker.addr, "a", group_config(&topic, &g3, Some("a")), Arc::clone(&seen), Arc::clone(&stop_a));
    wait_until("a is back", Duration::from_secs(30), || !seen.assignment("a").is_empty()).await;
    // Give a rebalance, if one were triggered, time to reach b.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(seen.assignment("a"), before_a, "the static member got its partitions back");
    assert_eq!(seen.revocations("b"), revocations_b, "the other member was not disturbed by the restart");

    for stop in [&stop_a, &stop_b] {
        stop.store(true, Ordering::SeqCst);
    }
    a.await.unwrap();
    b.await.unwrap();
    drop(client);
}

/// Kafka 4 answers DescribeGroups v6 for a group it does not know with GROUP_ID_NOT_FOUND and a
/// message, which the error carries; brokers before v6 describe such a group as `Dead`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describing_a_group_nobody_made_says_it_is_not_there() {
    let broker = common::shared();
    let client = Client::connect(ClientConfig::new([broker.addr.as_str()])).await.unwrap();
    let nobody = unique("nobody");
    let described = client.describe_group(&nobody).await;
    match broker.kind {
        Kind::Kafka => {
            let err = described.unwrap_err();
            let Error::BrokerMessage { code: ErrorCode::GroupIdNotFound, message, .. } = &err else {
                panic!("expected GROUP_ID_NOT_FOUND with a message: {err}");
            };
            assert!(!message.is_empty() && err.to_string().contains(message.as_str()), "{err}");
        }
        Kind::Tansu => match described {
            Ok(group) => assert!(group.members.is_empty(), "{group:?}"),
            Err(err) => eprintln!("note: Tansu 0.6 answers DescribeGroups for an unknown group with {err}"),
        },
    }
}
