//! Faults on a three-node Apache Kafka cluster ([`Broker::start_cluster`]), for the tests that
//! show sluice riding through them: a leader killed and brought back, a rolling restart.
//! Each fault waits until the cluster has healed (every partition has a leader and all its
//! replicas in sync) before it returns, so that the next one cannot take
//! the partitions below `min.insync.replicas`.

use std::time::{Duration, Instant};

use sluice_client::{Client, ClientConfig};

use super::{Broker, Kind};

/// A three-node Kafka cluster of the test's own and a client of it; `None` on Tansu, which has
/// no clusters (the test's output says it skipped, and why).
pub async fn start_or_skip() -> Option<(Broker, Client)> {
    if !kafka_or_say_why_not() {
        return None;
    }
    let cluster = Broker::start_cluster(3);
    let client = Client::connect(ClientConfig::new(cluster.bootstrap.clone())).await.unwrap();
    Some((cluster, client))
}

/// Whether the tests run on Apache Kafka; if not, says that the cluster test skips, and why.
fn kafka_or_say_why_not() -> bool {
    let kafka = super::kind() == Kind::Kafka;
    if !kafka {
        eprintln!("SKIPPED: leader kills and rolling restarts need a three-node cluster, and Tansu has none");
    }
    kafka
}

/// As [`start_or_skip`], each node behind a fault proxy of its own
/// ([`Broker::start_cluster_behind_proxies`]); the client goes straight to the nodes.
pub async fn start_behind_proxies_or_skip() -> Option<(Broker, Client, Vec<super::proxy::Proxy>)> {
    if !kafka_or_say_why_not() {
        return None;
    }
    let (cluster, proxies) = Broker::start_cluster_behind_proxies(3);
    let client = Client::connect(ClientConfig::new(cluster.bootstrap.clone())).await.unwrap();
    Some((cluster, client, proxies))
}

/// Waits (90 s at most) until no partition in the cluster is leaderless or under-replicated
/// (every replica in sync), as a fresh metadata answer says: what an operator waits for between
/// two steps of a rolling restart.
pub async fn wait_in_sync(client: &Client) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let lagging: Vec<String> = match client.refresh_metadata(None).await {
            Ok(metadata) => metadata
                .topics
                .iter()
                .flat_map(|(name, t)| {
                    t.partitions
                        .iter()
                        .filter(|p| p.leader < 0 || p.isr.len() < p.replicas.len())
                        .map(move |p| format!("{name}/{}", p.partition))
                })
                .collect(),
            Err(e) => vec![format!("(metadata: {e})")],
        };
        if lagging.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "still under-replicated after 90 s: {lagging:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The node leading `topic`/`partition` now.
pub async fn leader_of(client: &Client, topic: &str, partition: i32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(metadata) = client.refresh_metadata(Some(&[topic])).await {
            if let Some(leader) = metadata.leader(topic, partition) {
                return u32::try_from(leader).expect("node ids are positive");
            }
        }
        assert!(Instant::now() < deadline, "{topic}/{partition} has had no leader for 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SIGKILLs the leader of `topic`/0, leaves the cluster without it for `down`, starts it again
/// and waits until every partition is in sync again. Returns the node killed.
pub async fn kill_leader(cluster: &Broker, client: &Client, topic: &str, down: Duration) -> u32 {
    let node = leader_of(client, topic, 0).await;
    eprintln!("[fault: SIGKILL node {node}, the leader of {topic}/0]");
    tokio::task::block_in_place(|| cluster.kill(node));
    tokio::time::sleep(down).await;
    tokio::task::block_in_place(|| cluster.restart(node));
    wait_in_sync(client).await;
    node
}

/// Stops each node in turn cleanly (its leaderships move first) and starts it again, waiting
/// until every partition is in sync before the next, as an operator's rolling restart does.
pub async fn rolling_restart(cluster: &Broker, client: &Client) {
    for node in 1..=3 {
        eprintln!("[fault: rolling restart, node {node}]");
        tokio::task::block_in_place(|| cluster.stop_node(node));
        tokio::task::block_in_place(|| cluster.restart(node));
        wait_in_sync(client).await;
    }
}
