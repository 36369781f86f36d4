//! Faults on a three-node Apache Kafka cluster ([`Broker::start_cluster`]), for the tests that
//! show sluice riding through them: a leader killed and brought back, a rolling restart.
//! Each fault waits until the cluster has healed (every partition of the topics named has a
//! leader and all its replicas in sync) before it returns, so that the next one cannot take
//! the partitions below `min.insync.replicas`.

use std::time::{Duration, Instant};

use sluice_client::Client;

use super::Broker;

/// Waits (90 s at most) until every partition of `topics` has a leader and `replicas` replicas
/// in sync, as a fresh metadata answer says.
pub async fn wait_in_sync(client: &Client, topics: &[&str], replicas: usize) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let healed = match client.refresh_metadata(Some(topics)).await {
            Ok(metadata) => topics.iter().all(|topic| {
                metadata.topics.get(*topic).is_some_and(|t| {
                    !t.partitions.is_empty() && t.partitions.iter().all(|p| p.leader >= 0 && p.isr.len() >= replicas)
                })
            }),
            Err(_) => false,
        };
        if healed {
            return;
        }
        assert!(Instant::now() < deadline, "{topics:?} did not get {replicas} replicas in sync within 90 s");
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
/// and waits until `topics` are in sync again. Returns the node killed.
pub async fn kill_leader(cluster: &Broker, client: &Client, topics: &[&str], down: Duration) -> u32 {
    let node = leader_of(client, topics[0], 0).await;
    eprintln!("[fault: SIGKILL node {node}, the leader of {}/0]", topics[0]);
    tokio::task::block_in_place(|| cluster.kill(node));
    tokio::time::sleep(down).await;
    tokio::task::block_in_place(|| cluster.restart(node));
    wait_in_sync(client, topics, 3).await;
    node
}

/// Stops each node in turn cleanly (its leaderships move first) and starts it again, waiting
/// until `topics` are in sync before the next, as an operator's rolling restart does.
pub async fn rolling_restart(cluster: &Broker, client: &Client, topics: &[&str]) {
    for node in 1..=3 {
        eprintln!("[fault: rolling restart, node {node}]");
        tokio::task::block_in_place(|| cluster.stop_node(node));
        tokio::task::block_in_place(|| cluster.restart(node));
        wait_in_sync(client, topics, 3).await;
    }
}
