//! The cluster client against a real Tansu broker: bootstrap, metadata, leaders, admin,
//! reconnecting after the broker comes back.

mod common;

use std::time::Duration;

use common::Tansu;
use sluice_client::{Client, ClientConfig, Error};
use sluice_protocol::error_code::ErrorCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstraps_past_a_dead_address_and_reads_the_cluster() {
    let tansu = Tansu::start();
    let dead = {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        format!("127.0.0.1:{port}")
    };
    let client = Client::connect(ClientConfig::new([dead, tansu.addr.clone()])).await.unwrap();
    let metadata = client.metadata();
    assert_eq!(metadata.brokers.values().collect::<Vec<_>>(), vec![&tansu.addr], "Tansu advertises its listener");
    assert!(metadata.controller_id >= 0 || metadata.controller_id == -1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_describes_and_deletes_topics() {
    let tansu = Tansu::start();
    let client = Client::connect(ClientConfig::new([tansu.addr.as_str()])).await.unwrap();
    client.create_topic("clicks", 8, 1).await.unwrap();
    let metadata = client.metadata();
    let topic = &metadata.topics["clicks"];
    assert_eq!(topic.error, ErrorCode::None);
    assert_eq!(topic.partitions.iter().map(|p| p.partition).collect::<Vec<_>>(), (0..8).collect::<Vec<_>>());
    for partition in 0..8 {
        let leader = client.leader("clicks", partition).await.unwrap();
        assert_eq!(leader.broker(), tansu.addr);
    }
    // Creating it again is the broker's TOPIC_ALREADY_EXISTS, not retriable.
    let err = client.create_topic("clicks", 8, 1).await.unwrap_err();
    assert!(matches!(err, Error::Broker { code: ErrorCode::TopicAlreadyExists, .. }), "{err}");
    assert!(!err.is_retriable());

    client.delete_topic("clicks").await.unwrap();
    let metadata = client.refresh_metadata(None).await.unwrap();
    assert!(!metadata.topics.contains_key("clicks"), "{:?}", metadata.topics.keys());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_by_itself_when_the_broker_comes_back() {
    let tansu = Tansu::start();
    let addr = tansu.addr.clone();
    let mut config = ClientConfig::new([addr.as_str()]);
    config.reconnect_backoff = Duration::from_millis(20);
    config.reconnect_backoff_max = Duration::from_millis(200);
    let client = Client::connect(config).await.unwrap();
    drop(tansu);
    // While it is down, calls fail with retriable errors that name the broker.
    let err = client.refresh_metadata(None).await.unwrap_err();
    assert!(err.is_retriable(), "{err}");
    assert!(err.to_string().contains(&addr), "{err}");
    // Same port, new broker: the next call reconnects without any help.
    let _back = Tansu::start_on(&addr);
    let mut attempts = 0;
    let metadata = loop {
        attempts += 1;
        match client.refresh_metadata(None).await {
            Ok(metadata) => break metadata,
            Err(e) if e.is_retriable() && attempts < 50 => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("did not reconnect after {attempts} attempts: {e}"),
        }
    };
    assert_eq!(metadata.brokers.values().next(), Some(&addr));
}
