//! Helpers for the fuzz targets (and the tests that run their logic without a fuzzer).

use std::collections::BTreeMap;

use crate::format::{align_up, read_u32, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
use crate::ledger::replay;
use crate::recover::{recover, Recovery, RecoveryMode, SegmentImage};

/// Rewrites the CRC of a segment's header and of every record its length fields lead to, so a
/// fuzzer's mutations reach the record and payload decoders instead of stopping at a checksum.
pub fn fix_checksums(segment: &mut [u8]) {
    if let Some(header) = segment.get_mut(..SEGMENT_HEADER_LEN) {
        let crc = crc32fast::hash(header.get(..36).unwrap_or_default());
        if let Some(slot) = header.get_mut(36..40) {
            slot.copy_from_slice(&crc.to_le_bytes());
        }
    }
    let mut at = SEGMENT_HEADER_LEN;
    while let Some(end) = record_end(segment, at) {
        let mut hasher = crc32fast::Hasher::new();
        for range in [at..at + 4, at + 8..end] {
            hasher.update(segment.get(range).unwrap_or_default());
        }
        if let Some(slot) = segment.get_mut(at + 4..at + 8) {
            slot.copy_from_slice(&hasher.finalize().to_le_bytes());
        }
        at = align_up(end as u64).map_or(usize::MAX, |next| next as usize);
    }
}

/// End of the record at `at` according to its length field, if it has a non-zero header and
/// fits the segment.
fn record_end(segment: &[u8], at: usize) -> Option<usize> {
    let header = segment.get(at..at.checked_add(RECORD_HEADER_LEN)?)?;
    if header.iter().all(|&b| b == 0) {
        return None;
    }
    let len = usize::try_from(read_u32(header, 0)?).ok()?;
    let end = at.checked_add(RECORD_HEADER_LEN)?.checked_add(len)?;
    (end <= segment.len()).then_some(end)
}

/// Recovers `segments` in both modes, replays what was recovered, and checks that applying the
/// recovery's repairs and recovering again changes nothing. Never panics; returns the first
/// property that does not hold.
pub fn check_recovery(segments: &BTreeMap<u64, Vec<u8>>) -> Result<(), String> {
    let images: Vec<SegmentImage<'_>> = segments.iter().map(|(&id, bytes)| SegmentImage { id, bytes }).collect();
    for mode in [RecoveryMode::Strict, RecoveryMode::TruncateAtDamage] {
        let Ok(first) = recover(&images, mode) else {
            if mode == RecoveryMode::TruncateAtDamage {
                return Err("tolerant recovery returned an error".into());
            }
            continue;
        };
        let _ = replay(&first, 8);
        let repaired = apply_repairs(segments, &first)?;
        let images: Vec<SegmentImage<'_>> = repaired.iter().map(|(&id, bytes)| SegmentImage { id, bytes }).collect();
        let second = recover(&images, mode).map_err(|e| format!("{mode:?}: second recovery failed: {e}"))?;
        if second.records != first.records || !second.is_clean() {
            return Err(format!("{mode:?}: recovery run twice gave a different result"));
        }
    }
    Ok(())
}

/// What `Log::open` does to the files: delete the removed segments, zero the cut.
pub fn apply_repairs(
    segments: &BTreeMap<u64, Vec<u8>>,
    recovery: &Recovery<'_>,
) -> Result<BTreeMap<u64, Vec<u8>>, String> {
    let mut repaired = segments.clone();
    for id in &recovery.removed {
        repaired.remove(id);
    }
    if let Some(cut) = recovery.cut {
        let file = repaired.get_mut(&cut.segment_id).ok_or("the cut names a missing segment")?;
        let start = usize::try_from(cut.offset).map_err(|_| "cut offset too large")?;
        let end = usize::try_from(cut.zero_until).map_err(|_| "cut end too large")?;
        file.get_mut(start..end).ok_or("the cut is out of range")?.fill(0);
    }
    Ok(repaired)
}
