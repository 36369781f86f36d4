//! `sluice offsets`: each partition's earliest and latest offsets, and a group's lag: of one
//! topic, or of every partition the group committed (a scale-out job's group, say).

use serde_json::json;
use sluice_client::{Isolation, OffsetSpec};

use crate::cli::OffsetsArgs;
use crate::error::{CliError, CliResult};
use crate::topics::partitions_of;
use crate::{connect, out};

pub async fn offsets(args: OffsetsArgs) -> CliResult {
    let client = connect(&args.broker).await?;
    let keys: Vec<(String, i32)> = match (&args.topic, &args.group) {
        (Some(topic), _) => partitions_of(&client, topic).await?.iter().map(|p| (topic.clone(), p.partition)).collect(),
        (None, Some(group)) => client.group_offsets(group).await?.into_keys().collect(),
        (None, None) => return Err(CliError::Usage("give a topic (-t), a group (-G), or both".into())),
    };
    // Every partition the group committed may span topics: each line then names its topic.
    let by_group = args.topic.is_none();
    if by_group && keys.is_empty() {
        let group = args.group.as_deref().unwrap_or_default();
        return Err(CliError::Failed(format!("the group {group} has committed no offsets")));
    }
    let earliest = client.list_offsets(&keys, OffsetSpec::Earliest).await?;
    let latest = client.log_ends(&keys, Isolation::ReadUncommitted).await?;
    let committed = match &args.group {
        Some(group) => Some(client.stable_group_offsets(group, &keys).await?),
        None => None,
    };
    let mut text = String::new();
    if !args.json {
        if by_group {
            text.push_str("topic\t");
        }
        text.push_str(match committed {
            Some(_) => "partition\tearliest\tlatest\tcommitted\tlag\n",
            None => "partition\tearliest\tlatest\n",
        });
    }
    let (mut total_lag, mut lag_known) = (0i64, false);
    for key in &keys {
        let first = earliest.get(key).copied().unwrap_or(-1);
        let end = latest.get(key).copied().unwrap_or(-1);
        let position = committed.as_ref().map(|c| c.get(key).copied().flatten());
        // Lag counts from the committed offset, or from the log start for a partition the
        // group has not committed yet (where a consumer starting from the beginning would be).
        let lag = position.map(|p| (end - p.unwrap_or(first)).max(0));
        if let Some(lag) = lag {
            total_lag += lag;
            lag_known = true;
        }
        if args.json {
            let topic = &key.0;
            let line = match (&args.group, position) {
                (Some(group), Some(position)) => json!({
                    "topic": topic, "partition": key.1, "earliest": first, "latest": end,
                    "group": group, "committed": position, "lag": lag,
                }),
                _ => json!({"topic": topic, "partition": key.1, "earliest": first, "latest": end}),
            };
            text.push_str(&format!("{line}\n"));
        } else {
            if by_group {
                text.push_str(&format!("{}\t", key.0));
            }
            text.push_str(&format!("{}\t{first}\t{end}", key.1));
            if let Some(position) = position {
                let shown = position.map_or_else(|| "-".to_owned(), |p| p.to_string());
                text.push_str(&format!("\t{shown}\t{}", lag.unwrap_or(0)));
            }
            text.push('\n');
        }
    }
    if lag_known && !args.json {
        text.push_str(&format!("total lag: {total_lag}\n"));
    }
    out(&text)
}
