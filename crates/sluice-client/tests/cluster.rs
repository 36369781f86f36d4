//! The client on a three-node Apache Kafka cluster (replication factor 3, `min.insync.replicas`
//! 2) that changes under it as clusters do: the leader of the partitions killed with SIGKILL and
//! brought back, a rolling restart of every node, partitions added. Through all of it an
//! idempotent acks=all producer loses and duplicates nothing it acknowledged, a consumer
//! reads every offset once, and a consumer group of two members reads every record at least
//! once with no gap, the added partitions from their start. Nobody's calls fail.

use sluice_testkit as common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::riding::{self, Riders};
use common::{cluster, unique};

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

    let riders = Riders::start(&config, &topic, PARTITIONS, RECORDS).await;
    let consumed = &riders.consumed;

    riding::wait_for("the consumer, before the faults", consumed, 5_000).await;
    cluster::kill_leader(&cluster, &client, &topic, Duration::from_secs(3)).await;
    let so_far = consumed.lock().unwrap().len();
    riding::wait_for("the consumer, after the leader kill", consumed, so_far + 5_000).await;
    cluster::rolling_restart(&cluster, &client).await;
    eprintln!("[fault: {ADDED} partitions added]");
    client.create_partitions(&topic, PARTITIONS + ADDED).await.unwrap();
    riders.partitions.store((PARTITIONS + ADDED) as usize, Ordering::SeqCst);
    riders.finish(&client).await;
}
