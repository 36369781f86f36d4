//! `sluice checkpoint inspect DIR`: what a job's checkpoint log holds, without changing it.
//!
//! Reads every segment file into memory and runs the log's own recovery over the bytes (a pure
//! function), in the mode that stops at damage instead of failing, so the report can show what
//! is readable and where the damage starts. Nothing is written: a torn tail is reported, and cut
//! only when the job next opens the log.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde_json::json;
use sluice_checkpoint::format::{parse_segment_file_name, RecordKind};
use sluice_checkpoint::{recover, replay, BatchIntent, RecoveryMode, SegmentImage};

use crate::cli::{CheckpointAction, CheckpointArgs};
use crate::error::{CliError, CliResult};
use crate::out;

pub fn checkpoint(args: CheckpointArgs) -> CliResult {
    match args.action {
        CheckpointAction::Inspect { dir, batches, json } => inspect(&dir, batches, json),
    }
}

/// Count and bytes of one kind of record.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    records: u64,
    bytes: u64,
}

fn read_segments(dir: &Path) -> CliResult<Vec<(u64, Vec<u8>)>> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| CliError::Failed(format!("reading checkpoint directory {}: {e}", dir.display())))?;
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| CliError::Failed(format!("listing {}: {e}", dir.display())))?;
        let Some(id) = entry.file_name().to_str().and_then(parse_segment_file_name) else { continue };
        let bytes = std::fs::read(entry.path())
            .map_err(|e| CliError::Failed(format!("reading {}: {e}", entry.path().display())))?;
        segments.push((id, bytes));
    }
    segments.sort_by_key(|(id, _)| *id);
    if segments.is_empty() {
        return Err(CliError::Failed(format!(
            "{} holds no checkpoint segments (files named like 00000000000000000000.ckpt)",
            dir.display()
        )));
    }
    Ok(segments)
}

fn ranges_text(intent: &BatchIntent) -> String {
    let rows: i64 = intent.ranges.iter().map(|r| r.end_offset - r.start_offset).sum();
    let ranges: Vec<String> = intent
        .ranges
        .iter()
        .filter(|r| r.end_offset > r.start_offset)
        .map(|r| format!("{}/{} [{}, {})", r.topic, r.partition, r.start_offset, r.end_offset))
        .collect();
    format!("{rows} records: {}", if ranges.is_empty() { "(none)".to_owned() } else { ranges.join(" ") })
}

/// The partitions the latest batch that read any read, by topic: the partitions a job reads
/// (in scale-out mode, the tasks this process owned then, with their repartition partitions).
/// A scale-out batch that did not commit is closed with no ranges, so it does not count.
fn last_partitions<'a>(batches: impl Iterator<Item = &'a BatchIntent>) -> BTreeMap<String, Vec<i32>> {
    let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    let latest = batches.filter(|intent| !intent.ranges.is_empty()).max_by_key(|intent| intent.batch_id);
    for range in latest.map(|intent| intent.ranges.as_slice()).unwrap_or_default() {
        by_topic.entry(range.topic.clone()).or_default().push(range.partition);
    }
    for partitions in by_topic.values_mut() {
        partitions.sort_unstable();
        partitions.dedup();
    }
    by_topic
}

fn intent_json(intent: &BatchIntent) -> serde_json::Value {
    json!({
        "batch_id": intent.batch_id,
        "ranges": intent.ranges.iter().map(|r| json!({
            "topic": r.topic, "partition": r.partition, "start_offset": r.start_offset, "end_offset": r.end_offset,
        })).collect::<Vec<_>>(),
    })
}

fn inspect(dir: &Path, batches: usize, as_json: bool) -> CliResult {
    let segments = read_segments(dir)?;
    let images: Vec<SegmentImage<'_>> = segments.iter().map(|(id, bytes)| SegmentImage { id: *id, bytes }).collect();
    let recovery = recover(&images, RecoveryMode::TruncateAtDamage)
        .map_err(|e| CliError::Failed(format!("reading the checkpoint in {}: {e}", dir.display())))?;
    let recovered = match replay(&recovery, batches.max(1)) {
        Ok(recovered) => recovered,
        Err(e) => {
            // The records are intact but do not make a valid history (a commit without its
            // intent, a payload that does not decode): damage too.
            out(&format!(
                "checkpoint {}: {} segment(s), {} valid records\nDAMAGE: the records do not make a valid batch history: {e}\n",
                dir.display(),
                segments.len(),
                recovery.records.len()
            ))?;
            return Err(CliError::Damaged);
        }
    };
    let mut tallies: BTreeMap<&str, Tally> = BTreeMap::new();
    for record in &recovery.records {
        let kind = match record.kind {
            RecordKind::Intent => "intents",
            RecordKind::Commit => "commits",
            RecordKind::Snapshot => "snapshots",
            RecordKind::SnapshotPart => "snapshot parts (of snapshots too large for one record)",
            _ => "other",
        };
        let tally = tallies.entry(kind).or_default();
        tally.records += 1;
        tally.bytes += record.payload.len() as u64;
    }
    let disk_bytes: u64 = segments.iter().map(|(_, b)| b.len() as u64).sum();
    let snapshot = recovered.snapshot.as_ref().map(|s| (s.batch_id, s.state.len()));
    let delta_bytes: usize = recovered.deltas.iter().map(|d| d.state_delta.len()).sum();
    let stop =
        |p: &sluice_checkpoint::StopPoint| json!({"segment": p.segment_id, "offset": p.offset, "problem": p.problem});
    let damaged = recovered.damage.is_some();
    let partitions = last_partitions(recovered.last_committed.iter().map(|b| &b.intent).chain(&recovered.history));
    // Made by the scheduler beside the segments; what the Kafka sinks' marker groups carry.
    let id = std::fs::read_to_string(dir.join(sluice_scheduler::CHECKPOINT_ID_FILE)).ok().map(|t| t.trim().to_owned());
    let text = if as_json {
        let document = json!({
            "dir": dir.display().to_string(),
            "id": id,
            "segments": segments.len(),
            "disk_bytes": disk_bytes,
            "records": tallies.iter().map(|(k, t)| (k.to_string(), json!({"count": t.records, "bytes": t.bytes}))).collect::<serde_json::Map<_, _>>(),
            "last_committed": recovered.last_committed.as_ref().map(|b| intent_json(&b.intent)),
            "partitions": partitions,
            "pending": recovered.pending.iter().map(intent_json).collect::<Vec<_>>(),
            "snapshot": snapshot.map(|(batch_id, bytes)| json!({"batch_id": batch_id, "bytes": bytes})),
            "deltas_since_snapshot": {"count": recovered.deltas.len(), "bytes": delta_bytes},
            "recent_batches": recovered.history.iter().map(intent_json).collect::<Vec<_>>(),
            "torn_tail": recovered.torn.as_ref().map(stop),
            "damage": recovered.damage.as_ref().map(stop),
        });
        format!("{document}\n")
    } else {
        let mut text = format!(
            "checkpoint {} (id {}): {} segment(s), {} on disk\n",
            dir.display(),
            id.as_deref().unwrap_or("none"),
            segments.len(),
            human_bytes(disk_bytes as usize)
        );
        for (kind, tally) in &tallies {
            let _ = writeln!(text, "  {kind}: {} ({})", tally.records, human_bytes(tally.bytes as usize));
        }
        match &recovered.last_committed {
            Some(batch) => {
                let _ =
                    writeln!(text, "last committed batch: {} ({})", batch.intent.batch_id, ranges_text(&batch.intent));
            }
            None => text.push_str("last committed batch: none (the job has not finished a batch)\n"),
        }
        if !partitions.is_empty() {
            let listed: Vec<String> = partitions.iter().map(|(topic, p)| format!("{topic} {p:?}")).collect();
            let _ = writeln!(
                text,
                "partitions of the last batch that read (scale-out: the tasks this process owned): {}",
                listed.join(", ")
            );
        }
        for intent in &recovered.pending {
            let _ = writeln!(
                text,
                "pending batch {} (planned, not committed; runs again on the next start): {}",
                intent.batch_id,
                ranges_text(intent)
            );
        }
        match snapshot {
            Some((batch_id, bytes)) => {
                let _ = writeln!(text, "state: snapshot of batch {batch_id}, {}", human_bytes(bytes));
            }
            None => text.push_str("state: no snapshot\n"),
        }
        let _ =
            writeln!(text, "state changes since: {} batch(es), {}", recovered.deltas.len(), human_bytes(delta_bytes));
        if !recovered.history.is_empty() {
            let _ = writeln!(text, "recent batches (last {}):", recovered.history.len());
            for intent in &recovered.history {
                let _ = writeln!(text, "  batch {}: {}", intent.batch_id, ranges_text(intent));
            }
        }
        match &recovered.torn {
            Some(p) => {
                let _ = writeln!(
                    text,
                    "torn tail: segment {} byte {}: {} (an unfinished write from a crash; cut when the job next starts, nothing committed is lost)",
                    p.segment_id, p.offset, p.problem
                );
            }
            None => text.push_str("torn tail: none\n"),
        }
        match &recovered.damage {
            Some(p) => {
                let _ = writeln!(
                    text,
                    "DAMAGE: segment {} byte {}: {}; records from here on cannot be read, and the job refuses to start on this log",
                    p.segment_id, p.offset, p.problem
                );
            }
            None => text.push_str("damage: none\n"),
        }
        text
    };
    out(&text)?;
    if damaged {
        return Err(CliError::Damaged);
    }
    Ok(())
}

fn human_bytes(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / f64::from(1u32 << 30)),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / f64::from(1u32 << 20)),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}
