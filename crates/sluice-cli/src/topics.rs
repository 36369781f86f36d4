//! `sluice topics`: list, create, delete, describe.

use serde_json::json;
use sluice_client::{Client, Isolation, OffsetSpec};
use sluice_protocol::error_code::ErrorCode;

use crate::cli::{TopicsAction, TopicsArgs};
use crate::error::{CliError, CliResult};
use crate::{connect, out};

pub async fn topics(args: TopicsArgs) -> CliResult {
    let client = connect(&args.broker).await?;
    match args.action {
        TopicsAction::List { json, all } => list(&client, json, all).await,
        TopicsAction::Create { name, partitions, replication_factor } => {
            client
                .create_topic(&name, partitions, replication_factor)
                .await
                .map_err(|e| CliError::Failed(format!("creating topic {name}: {e}")))?;
            out(&format!("created topic {name} with {partitions} partitions\n"))
        }
        TopicsAction::Delete { name } => {
            client.delete_topic(&name).await.map_err(|e| CliError::Failed(format!("deleting topic {name}: {e}")))?;
            out(&format!("deleted topic {name}\n"))
        }
        TopicsAction::Describe { name, json } => describe(&client, &name, json).await,
    }
}

async fn list(client: &Client, as_json: bool, all: bool) -> CliResult {
    let metadata = client.refresh_metadata(None).await?;
    let mut text = String::new();
    for (name, topic) in metadata.topics.iter().filter(|(_, t)| all || !t.is_internal) {
        if as_json {
            let line = json!({"topic": name, "partitions": topic.partitions.len(), "internal": topic.is_internal});
            text.push_str(&format!("{line}\n"));
        } else {
            text.push_str(&format!("{name}\t{} partitions\n", topic.partitions.len()));
        }
    }
    out(&text)
}

/// A topic's metadata, or a clear error when the cluster does not have it.
pub async fn partitions_of(client: &Client, topic: &str) -> CliResult<Vec<sluice_client::PartitionMetadata>> {
    let metadata = client.refresh_metadata(Some(&[topic])).await?;
    let missing = || CliError::Failed(format!("topic {topic} does not exist (`sluice topics list` shows what does)"));
    match metadata.topics.get(topic) {
        Some(t) if t.error == ErrorCode::UnknownTopicOrPartition => Err(missing()),
        Some(t) if t.error.is_error() => Err(CliError::Failed(format!("topic {topic}: the broker says {:?}", t.error))),
        Some(t) if !t.partitions.is_empty() => Ok(t.partitions.clone()),
        _ => Err(missing()),
    }
}

async fn describe(client: &Client, topic: &str, as_json: bool) -> CliResult {
    let partitions = partitions_of(client, topic).await?;
    let keys: Vec<(String, i32)> = partitions.iter().map(|p| (topic.to_owned(), p.partition)).collect();
    let earliest = client.list_offsets(&keys, OffsetSpec::Earliest).await?;
    let latest = client.log_ends(&keys, Isolation::ReadUncommitted).await?;
    let mut text = if as_json { String::new() } else { format!("topic {topic}: {} partitions\n", partitions.len()) };
    if !as_json {
        text.push_str("partition\tleader\treplicas\tisr\tearliest\tlatest\n");
    }
    for p in &partitions {
        let key = (topic.to_owned(), p.partition);
        let (first, end) = (earliest.get(&key).copied().unwrap_or(-1), latest.get(&key).copied().unwrap_or(-1));
        if as_json {
            let line = json!({
                "topic": topic, "partition": p.partition, "leader": p.leader, "replicas": p.replicas,
                "isr": p.isr, "earliest": first, "latest": end,
            });
            text.push_str(&format!("{line}\n"));
        } else {
            text.push_str(&format!(
                "{}\t{}\t{}\t{}\t{first}\t{end}\n",
                p.partition,
                p.leader,
                join(&p.replicas),
                join(&p.isr)
            ));
        }
    }
    out(&text)
}

fn join(ids: &[i32]) -> String {
    ids.iter().map(i32::to_string).collect::<Vec<_>>().join(",")
}
