//! Helpers shared by the integration tests.

#![allow(dead_code)]

use sluice_checkpoint::rng::SplitMix64;
use sluice_checkpoint::testing::MemStorage;
use sluice_checkpoint::{
    recover, BatchCommit, BatchIntent, Log, OffsetRange, Options, RecoveryMode, SegmentImage, Snapshot,
};

/// A log image: its segments in id order, and where each record sits.
pub struct LogImage {
    /// (segment id, bytes), oldest first.
    pub segments: Vec<(u64, Vec<u8>)>,
    /// Every record of the log, in order.
    pub records: Vec<Placed>,
}

/// A record and its place in the concatenation of all segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub seq: u64,
    pub segment_index: usize,
    pub segment_id: u64,
    pub offset: u64,
    /// First byte in the concatenated image.
    pub global_start: usize,
    /// One past the last byte in the concatenated image.
    pub global_end: usize,
    pub payload: Vec<u8>,
}

impl LogImage {
    pub fn total_len(&self) -> usize {
        self.segments.iter().map(|(_, b)| b.len()).sum()
    }

    /// Start of each segment in the concatenated image.
    pub fn bases(&self) -> Vec<usize> {
        let mut base = 0;
        self.segments
            .iter()
            .map(|(_, bytes)| {
                let here = base;
                base += bytes.len();
                here
            })
            .collect()
    }

    pub fn concat(&self) -> Vec<u8> {
        self.segments.iter().flat_map(|(_, b)| b.iter().copied()).collect()
    }
}

/// Writes batches through the real log (in memory) until the image holds at least
/// `min_bytes` of records, committing now and then so later records carry commit proofs.
pub fn build_log(min_bytes: usize, segment_size_bytes: u64, max_payload: u64, seed: u64) -> LogImage {
    let storage = MemStorage::new();
    let mut options = Options::default();
    options.segment_size_bytes = segment_size_bytes;
    options.retain_batches = 1_000_000;
    let (log, _) = Log::open_with(storage.clone(), options).unwrap();
    let mut rng = SplitMix64::new(seed);
    let mut batch = 0u64;
    let mut written = 0usize;
    while written < min_bytes {
        let mut metadata = vec![0u8; rng.below(max_payload / 4 + 1) as usize];
        rng.fill(&mut metadata);
        let intent = BatchIntent {
            batch_id: batch,
            ranges: vec![OffsetRange {
                topic: "events".into(),
                partition: (batch % 4) as i32,
                start_offset: batch as i64 * 10,
                end_offset: batch as i64 * 10 + 10,
            }],
            metadata,
        };
        log.append_intent(&intent).unwrap();
        let mut state_delta = vec![0u8; rng.below(max_payload + 1) as usize];
        rng.fill(&mut state_delta);
        written += 80 + intent.metadata.len() + state_delta.len();
        log.append_commit(&BatchCommit { batch_id: batch, state_delta, sink_markers: vec![1, 2, 3] }).unwrap();
        if rng.chance(20) {
            let mut state = vec![0u8; rng.below(max_payload + 1) as usize];
            rng.fill(&mut state);
            written += 40 + state.len();
            log.append_snapshot(&Snapshot { batch_id: batch, state }).unwrap();
        }
        if rng.chance(50) {
            log.commit().unwrap();
        }
        batch += 1;
    }
    log.commit().unwrap();
    drop(log);
    let image = storage.kill();
    let segments: Vec<(u64, Vec<u8>)> = image.files.into_iter().collect();
    let records = place_records(&segments);
    LogImage { segments, records }
}

fn place_records(segments: &[(u64, Vec<u8>)]) -> Vec<Placed> {
    let images: Vec<SegmentImage<'_>> = segments.iter().map(|(id, bytes)| SegmentImage { id: *id, bytes }).collect();
    let recovery = recover(&images, RecoveryMode::Strict).unwrap();
    assert!(recovery.is_clean(), "a freshly written log needs no repair");
    let mut bases = std::collections::BTreeMap::new();
    let mut base = 0usize;
    for (index, (id, bytes)) in segments.iter().enumerate() {
        bases.insert(*id, (index, base));
        base += bytes.len();
    }
    recovery
        .records
        .iter()
        .map(|r| {
            let (segment_index, base) = bases[&r.segment_id];
            Placed {
                seq: r.seq,
                segment_index,
                segment_id: r.segment_id,
                offset: r.offset,
                global_start: base + r.offset as usize,
                global_end: base + r.end() as usize,
                payload: r.payload.to_vec(),
            }
        })
        .collect()
}

/// Size from an environment variable, accepting `64K`, `1M` or plain bytes.
pub fn env_size(name: &str, default: usize) -> usize {
    let Ok(value) = std::env::var(name) else {
        return default;
    };
    let value = value.trim();
    let (digits, unit) = match value.chars().last() {
        Some('K' | 'k') => (&value[..value.len() - 1], 1024),
        Some('M' | 'm') => (&value[..value.len() - 1], 1024 * 1024),
        _ => (value, 1),
    };
    digits.parse::<usize>().map(|n| n * unit).unwrap_or(default)
}
