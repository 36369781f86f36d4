//! `sluice consume`: records of a topic printed in a kcat-style format or as JSON lines.

use sluice_client::{
    Client, Consumer, ConsumerConfig, GroupConfig, GroupConsumer, GroupEvent, Isolation, OffsetReset, OffsetSpec,
    PartitionRecords, StartAt,
};

use crate::cli::ConsumeArgs;
use crate::connect;
use crate::error::{CliError, CliResult};
use crate::format::{json_line, Format};
use crate::topics::partitions_of;

/// Where `-o` says to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    Beginning,
    End,
    Offset(i64),
    FromEnd(i64),
    Time(i64),
}

fn parse_start(text: &str) -> CliResult<Start> {
    let bad = || {
        CliError::Usage(format!(
            "-o {text}: use `beginning`, `end`, an offset, `-N` (N before the end) or `@MS` (a timestamp)"
        ))
    };
    Ok(match text {
        "beginning" | "earliest" => Start::Beginning,
        "end" | "latest" => Start::End,
        _ => match (text.strip_prefix('-'), text.strip_prefix('@')) {
            (Some(n), _) => Start::FromEnd(n.parse().map_err(|_| bad())?),
            (_, Some(ms)) => Start::Time(ms.parse().map_err(|_| bad())?),
            _ => Start::Offset(text.parse().map_err(|_| bad())?),
        },
    })
}

/// How each record is printed.
enum Printer {
    Format(Format),
    Json,
}

impl Printer {
    fn print(&self, text: &mut Vec<u8>, part: &PartitionRecords, record: &sluice_protocol::record::RecordRef<'_>) {
        match self {
            Self::Format(format) => format.write(text, &part.topic, part.partition, record),
            Self::Json => json_line(text, &part.topic, part.partition, record),
        }
    }
}

pub async fn consume(args: ConsumeArgs) -> CliResult {
    let printer = if args.json {
        Printer::Json
    } else {
        Printer::Format(Format::parse(args.format.as_deref().unwrap_or("%s\\n")).map_err(CliError::Usage)?)
    };
    let start = parse_start(&args.offset)?;
    let client = connect(&args.broker).await?;
    let isolation = if args.read_committed { Isolation::ReadCommitted } else { Isolation::ReadUncommitted };
    let mut config = ConsumerConfig::default();
    config.isolation = isolation;
    config.offset_reset = if start == Start::Beginning { OffsetReset::Earliest } else { OffsetReset::Latest };
    let mut limit = Limit { left: args.count, exit_at_end: args.exit_at_end, buffer: Vec::new() };
    match &args.group {
        Some(group) => {
            if !matches!(start, Start::Beginning | Start::End) {
                return Err(CliError::Usage(format!(
                    "-o {} with --group: a group starts from its committed offsets; -o only says where partitions without one start (`beginning` or `end`)",
                    args.offset
                )));
            }
            by_group(client, group, &args.topic, args.session_timeout, config, &printer, &mut limit).await
        }
        None => by_assignment(client, &args, start, config, &printer, &mut limit).await,
    }
}

/// When to stop.
struct Limit {
    left: Option<u64>,
    exit_at_end: bool,
    /// The output of a poll, written at once (kept for the next poll's).
    buffer: Vec<u8>,
}

/// What one `Limit::print` did.
struct Printed {
    /// The count is reached.
    done: bool,
    /// Per partition with records left unprinted, the offset of the first of them.
    unprinted: Vec<(String, i32, i64)>,
}

impl Limit {
    /// Prints `parts`, up to the count.
    fn print(&mut self, printer: &Printer, parts: &[PartitionRecords]) -> CliResult<Printed> {
        let mut text = std::mem::take(&mut self.buffer);
        text.clear();
        let mut unprinted = Vec::new();
        for part in parts {
            for record in part.records() {
                if self.left == Some(0) {
                    unprinted.push((part.topic.clone(), part.partition, record.offset()));
                    break;
                }
                printer.print(&mut text, part, &record);
                if let Some(left) = &mut self.left {
                    *left -= 1;
                }
            }
        }
        let written = crate::out_bytes(&text);
        self.buffer = text;
        written?;
        Ok(Printed { done: self.left == Some(0), unprinted })
    }
}

async fn by_assignment(
    client: Client,
    args: &ConsumeArgs,
    start: Start,
    config: ConsumerConfig,
    printer: &Printer,
    limit: &mut Limit,
) -> CliResult {
    let topic = &args.topic;
    let known: Vec<i32> = partitions_of(&client, topic).await?.iter().map(|p| p.partition).collect();
    let partitions = if args.partitions.is_empty() { known.clone() } else { args.partitions.clone() };
    if let Some(missing) = partitions.iter().find(|p| !known.contains(p)) {
        return Err(CliError::Failed(format!("topic {topic} has no partition {missing} (it has {})", known.len())));
    }
    let keys: Vec<(String, i32)> = partitions.iter().map(|p| (topic.clone(), *p)).collect();
    let starts = start_offsets(&client, &keys, start).await?;
    let mut consumer = Consumer::new(client.clone(), config);
    for (topic, partition) in &keys {
        let at = match start {
            Start::Beginning => StartAt::Earliest,
            Start::End => StartAt::Latest,
            _ => starts.get(&(topic.clone(), *partition)).copied().map_or(StartAt::Latest, StartAt::Offset),
        };
        consumer.assign(topic, *partition, at).await?;
    }
    // SIGINT or SIGTERM: what was printed stays printed (each poll's output is written whole).
    let stop = crate::signals::stop();
    tokio::pin!(stop);
    loop {
        let parts = tokio::select! {
            parts = consumer.poll() => parts?,
            () = &mut stop => return Ok(()),
        };
        if limit.print(printer, &parts)?.done {
            return Ok(());
        }
        if limit.exit_at_end && at_end(&consumer) {
            return Ok(());
        }
    }
}

/// Whether every assigned partition has been read to its end at the last fetch: the high
/// watermark, or under read_committed the last stable offset (records after it wait for their
/// transaction to end).
fn at_end(consumer: &Consumer) -> bool {
    let committed = consumer.config().isolation == Isolation::ReadCommitted;
    consumer.progress().all(|(_, _, p)| {
        let end = if committed && p.last_stable_offset >= 0 { p.last_stable_offset } else { p.high_watermark };
        p.high_watermark >= 0 && p.position >= end
    })
}

/// Offsets for `-o OFFSET`, `-o -N` and `-o @MS` (beginning and end are the consumer's own).
async fn start_offsets(
    client: &Client,
    keys: &[(String, i32)],
    start: Start,
) -> CliResult<std::collections::BTreeMap<(String, i32), i64>> {
    Ok(match start {
        Start::Beginning | Start::End => Default::default(),
        Start::Offset(offset) => keys.iter().map(|k| (k.clone(), offset)).collect(),
        Start::Time(ms) => client.list_offsets(keys, OffsetSpec::Timestamp(ms)).await?,
        Start::FromEnd(n) => {
            let earliest = client.list_offsets(keys, OffsetSpec::Earliest).await?;
            let ends = client.log_ends(keys, Isolation::ReadUncommitted).await?;
            ends.into_iter()
                .map(|(key, end)| {
                    let first = earliest.get(&key).copied().unwrap_or(0);
                    (key, end.saturating_sub(n).max(first))
                })
                .collect()
        }
    })
}

async fn by_group(
    client: Client,
    group: &str,
    topic: &str,
    session_timeout: std::time::Duration,
    config: ConsumerConfig,
    printer: &Printer,
    limit: &mut Limit,
) -> CliResult {
    partitions_of(&client, topic).await?;
    let mut group_config = GroupConfig::new(group, [topic]);
    group_config.session_timeout = session_timeout;
    let mut member = GroupConsumer::new(client, group_config, config);
    let mut assigned = false;
    // SIGINT or SIGTERM: commit what was printed and leave the group, as at the end.
    let stop = crate::signals::stop();
    tokio::pin!(stop);
    let result = loop {
        let event = tokio::select! {
            event = member.poll() => event,
            () = &mut stop => break Ok(()),
        };
        match event? {
            GroupEvent::Assigned(_) => assigned = true,
            GroupEvent::Revoked(_) => assigned = false,
            GroupEvent::Records(parts) => {
                let printed = match limit.print(printer, &parts) {
                    Ok(printed) => printed,
                    Err(e) => {
                        // stdout closed (`| head`) or failed: what this poll returned may not
                        // have been read, so the group goes on from its first record.
                        for part in &parts {
                            if let Some(first) = part.records().next() {
                                member.consumer().seek(&part.topic, part.partition, first.offset());
                            }
                        }
                        break Err(e);
                    }
                };
                // Records returned but not printed (the count was reached) stay for the group.
                for (topic, partition, offset) in &printed.unprinted {
                    member.consumer().seek(topic, *partition, *offset);
                }
                if printed.done {
                    break Ok(());
                }
                if limit.exit_at_end && assigned && at_end(member.consumer()) {
                    break Ok(());
                }
            }
        }
    };
    // Commits what was printed and leaves the group at once (no wait for the session timeout).
    member.close().await.map_err(|e| CliError::Failed(format!("leaving group {group}: {e}")))?;
    match result {
        Err(CliError::Closed) => Ok(()),
        other => other,
    }
}
