//! The client on a three-node Apache Kafka cluster (replication factor 3, `min.insync.replicas`
//! 2) that changes under it as clusters do: the leader of the partitions killed with SIGKILL and
//! brought back, a rolling restart of every node, partitions added. Through all of it an
//! idempotent acks=all producer loses and duplicates nothing it acknowledged, a consumer
//! reads every offset once, and a consumer group of two members reads every record at least
//! once with no gap, the added partitions from their start. Nobody's calls fail.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::riding::{self, Seen};
use common::{cluster, unique};
use sluice_client::{Client, Isolation};

const PARTITIONS: i32 = 4;
const ADDED: i32 = 2;
/// At least this many records are produced (through every fault).
const RECORDS: usize = 200_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_consumer_and_group_ride_through_a_leader_kill_a_rolling_restart_and_added_partitions() {
    let Some((cluster, client)) = cluster::start_or_skip().await else { return };
    let config = client.config().clone();
    let topic = unique("riding");
    client.create_topic(&topic, PARTITIONS, 3).await.unwrap();
    cluster::wait_in_sync(&client).await;

    // Each party has a client of its own, as separate applications would.
    let stop_producing = Arc::new(AtomicBool::new(false));
    let partitions = Arc::new(AtomicUsize::new(PARTITIONS as usize));
    let producing = tokio::spawn(riding::produce(
        Client::connect(config.clone()).await.unwrap(),
        topic.clone(),
        Arc::clone(&partitions),
        Arc::clone(&stop_producing),
        RECORDS,
    ));
    let stop_consuming = Arc::new(AtomicBool::new(false));
    let consumed = Seen::default();
    let consuming = tokio::spawn(riding::consumer(
        Client::connect(config.clone()).await.unwrap(),
        topic.clone(),
        Arc::clone(&partitions),
        consumed.clone(),
        stop_consuming.clone(),
    ));
    let group = unique("riders");
    let grouped = Seen::default();
    let mut members = Vec::new();
    for _ in 0..2 {
        let client = Client::connect(config.clone()).await.unwrap();
        let args = (topic.clone(), group.clone(), grouped.clone(), stop_consuming.clone());
        members.push(tokio::spawn(riding::member(client, args.0, args.1, args.2, args.3)));
    }

    riding::wait_for("the consumer, before the faults", &consumed, 5_000).await;
    cluster::kill_leader(&cluster, &client, &topic, Duration::from_secs(3)).await;
    let so_far = consumed.lock().unwrap().len();
    riding::wait_for("the consumer, after the leader kill", &consumed, so_far + 5_000).await;
    cluster::rolling_restart(&cluster, &client).await;
    eprintln!("[fault: {ADDED} partitions added]");
    client.create_partitions(&topic, PARTITIONS + ADDED).await.unwrap();
    partitions.store((PARTITIONS + ADDED) as usize, Ordering::SeqCst);
    stop_producing.store(true, Ordering::SeqCst);
    let acknowledged = producing.await.unwrap();

    let keys: Vec<(String, i32)> = (0..PARTITIONS + ADDED).map(|p| (topic.clone(), p)).collect();
    let ends = client.log_ends(&keys, Isolation::ReadUncommitted).await.unwrap();
    let total = usize::try_from(ends.values().sum::<i64>()).unwrap();
    riding::wait_for("the consumer", &consumed, total).await;
    riding::wait_to_cover("the group", &grouped, total).await;
    stop_consuming.store(true, Ordering::SeqCst);
    consuming.await.unwrap();
    for member in members {
        member.await.unwrap();
    }

    riding::check(&ends, &acknowledged, &consumed, &grouped);
}
