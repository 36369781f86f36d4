//! Exhaustive damage tests of the pure recovery function over a real log image.
//!
//! * Truncation at every byte length yields exactly the records whose last byte is within the
//!   length, with the cut-off bytes missing (files shortened, later files absent); and with them
//!   zero-filled (preallocated space that was never written), where a record whose cut-off
//!   bytes were zeros anyway is, correctly, still whole.
//! * Flipping every single bit yields either the records before the damaged one or an
//!   `Error::Corrupt` naming exactly the damaged record's (or header's) segment and offset;
//!   in `TruncateAtDamage` mode always the records before the damaged one.
//!
//! The suite runs a 64 KiB log for truncation and a 16 KiB log for bit flips; the ignored
//! variants take `SLUICE_TORTURE_BYTES` (e.g. `1M`), see `scripts/checkpoint-torture.sh`.

// Tests print their seeds and counts: that output is how a failure is replayed.
#![allow(clippy::print_stdout)]

mod common;

use std::ops::Range;

use common::{build_log, env_size, LogImage, Placed};
use sluice_checkpoint::format::SEGMENT_HEADER_LEN;
use sluice_checkpoint::{recover, Error, RecordView, Recovery, RecoveryMode, SegmentImage};

fn assert_prefix(log: &LogImage, got: &[RecordView<'_>], count: usize, context: &str) {
    assert_eq!(got.len(), count, "{context}: wrong number of records");
    for (record, expected) in got.iter().zip(&log.records) {
        let same = record.seq == expected.seq
            && record.segment_id == expected.segment_id
            && record.offset == expected.offset
            && record.payload == expected.payload.as_slice();
        assert!(same, "{context}: record {} is not the one written", record.seq);
    }
}

/// Segment images over `bytes`, the concatenation of all segments (same lengths as `log`).
fn images_of<'a>(log: &LogImage, bytes: &'a [u8]) -> Vec<SegmentImage<'a>> {
    let mut at = 0;
    log.segments
        .iter()
        .map(|(id, original)| {
            let image = SegmentImage { id: *id, bytes: &bytes[at..at + original.len()] };
            at += original.len();
            image
        })
        .collect()
}

fn records_within(log: &LogImage, len: usize) -> usize {
    log.records.partition_point(|r| r.global_end <= len)
}

/// With zero fill, a record straddling the cut whose cut-off bytes happen to be zeros is still
/// whole: the image is byte for byte the one where it was written completely.
fn records_within_zero_filled(log: &LogImage, full: &[u8], len: usize) -> usize {
    let whole = records_within(log, len);
    match log.records.get(whole) {
        Some(r) if r.global_start < len && full[len..r.global_end].iter().all(|&b| b == 0) => whole + 1,
        _ => whole,
    }
}

fn truncate_missing(log: &LogImage, lengths: Range<usize>) {
    let bases = log.bases();
    for len in lengths {
        let images: Vec<SegmentImage<'_>> = log
            .segments
            .iter()
            .zip(&bases)
            .filter(|(_, &base)| len > base)
            .map(|((id, bytes), &base)| SegmentImage { id: *id, bytes: &bytes[..bytes.len().min(len - base)] })
            .collect();
        let recovery =
            recover(&images, RecoveryMode::Strict).unwrap_or_else(|e| panic!("truncated to {len} bytes: {e}"));
        assert_prefix(log, &recovery.records, records_within(log, len), &format!("truncated to {len}"));
    }
}

fn truncate_zero_filled(log: &LogImage, lengths: Range<usize>) {
    let full = log.concat();
    let mut bytes = vec![0u8; full.len()];
    bytes[..lengths.start].copy_from_slice(&full[..lengths.start]);
    for len in lengths {
        let recovery = recover(&images_of(log, &bytes), RecoveryMode::Strict)
            .unwrap_or_else(|e| panic!("zero-filled from {len}: {e}"));
        let expected = records_within_zero_filled(log, &full, len);
        assert_prefix(log, &recovery.records, expected, &format!("zero-filled from {len}"));
        if let Some(byte) = bytes.get_mut(len) {
            *byte = full[len];
        }
    }
}

fn check_truncations(log: &LogImage) {
    let total = log.total_len();
    let half = total / 2;
    std::thread::scope(|scope| {
        scope.spawn(|| truncate_missing(log, 0..half));
        scope.spawn(|| truncate_missing(log, half..total + 1));
    });
    std::thread::scope(|scope| {
        scope.spawn(|| truncate_zero_filled(log, 0..half));
        scope.spawn(|| truncate_zero_filled(log, half..total + 1));
    });
}

/// What damage at byte `at` of the concatenated image may do.
struct Expectation {
    /// Records that remain readable: those before the damaged record or segment header.
    readable: usize,
    /// Where a strict recovery may report the damage; `None` if the byte is in padding or
    /// unused space, where a flip must change nothing.
    damage_at: Option<(u64, u64)>,
}

fn expectation(log: &LogImage, bases: &[usize], at: usize) -> Expectation {
    let segment = bases.partition_point(|&base| base <= at) - 1;
    let (segment_id, _) = log.segments[segment];
    if at - bases[segment] < SEGMENT_HEADER_LEN {
        let readable = log.records.partition_point(|r| r.segment_index < segment);
        return Expectation { readable, damage_at: Some((segment_id, 0)) };
    }
    let index = log.records.partition_point(|r| r.global_end <= at);
    match log.records.get(index) {
        Some(record @ Placed { global_start, .. }) if *global_start <= at => {
            Expectation { readable: index, damage_at: Some((record.segment_id, record.offset)) }
        }
        _ => Expectation { readable: log.records.len(), damage_at: None },
    }
}

#[derive(Default, Debug)]
struct FlipOutcomes {
    all_records: u64,
    truncated: u64,
    corrupt: u64,
}

fn check_flip(
    log: &LogImage,
    result: Result<Recovery<'_>, Error>,
    expected: &Expectation,
    context: &str,
) -> FlipOutcomes {
    let mut outcome = FlipOutcomes::default();
    match result {
        Ok(recovery) => {
            assert_prefix(log, &recovery.records, expected.readable, context);
            if expected.readable == log.records.len() {
                outcome.all_records += 1;
            } else {
                outcome.truncated += 1;
            }
        }
        Err(Error::Corrupt { segment_id, offset, .. }) => {
            assert_eq!(Some((segment_id, offset)), expected.damage_at, "{context}: damage reported at the wrong place");
            outcome.corrupt += 1;
        }
        Err(other) => panic!("{context}: unexpected error {other}"),
    }
    outcome
}

fn flip_bits(log: &LogImage, range: Range<usize>) -> FlipOutcomes {
    let bases = log.bases();
    let mut bytes = log.concat();
    let mut total = FlipOutcomes::default();
    for at in range {
        let expected = expectation(log, &bases, at);
        for bit in 0..8 {
            bytes[at] ^= 1 << bit;
            let context = format!("bit {bit} of byte {at}");
            let strict = recover(&images_of(log, &bytes), RecoveryMode::Strict);
            let outcome = check_flip(log, strict, &expected, &context);
            total.all_records += outcome.all_records;
            total.truncated += outcome.truncated;
            total.corrupt += outcome.corrupt;
            let tolerant = recover(&images_of(log, &bytes), RecoveryMode::TruncateAtDamage)
                .unwrap_or_else(|e| panic!("{context}: tolerant recovery failed: {e}"));
            assert_prefix(log, &tolerant.records, expected.readable, &format!("{context}, tolerant"));
            bytes[at] ^= 1 << bit;
        }
    }
    total
}

fn check_bit_flips(log: &LogImage) -> FlipOutcomes {
    let total = log.total_len();
    let (a, b) = std::thread::scope(|scope| {
        let first = scope.spawn(|| flip_bits(log, 0..total / 2));
        let second = scope.spawn(|| flip_bits(log, total / 2..total));
        (first.join().unwrap(), second.join().unwrap())
    });
    FlipOutcomes {
        all_records: a.all_records + b.all_records,
        truncated: a.truncated + b.truncated,
        corrupt: a.corrupt + b.corrupt,
    }
}

#[test]
fn truncating_a_64_kib_log_at_every_length_keeps_exactly_the_whole_records() {
    let log = build_log(64 * 1024, 16 * 1024, 700, 1);
    assert!(log.total_len() >= 64 * 1024 && log.segments.len() >= 4, "log too small");
    check_truncations(&log);
}

#[test]
fn flipping_every_bit_of_a_16_kib_log_never_yields_wrong_data() {
    let log = build_log(16 * 1024, 4096, 300, 2);
    assert!(log.total_len() >= 16 * 1024 && log.segments.len() >= 4, "log too small");
    let outcomes = check_bit_flips(&log);
    println!("{outcomes:?}");
    // Both policies must have been exercised: torn-looking damage and provable damage.
    assert!(outcomes.truncated > 0 && outcomes.corrupt > 0, "{outcomes:?}");
}

/// `SLUICE_TORTURE_BYTES=1M cargo test --release -p sluice-checkpoint --test exhaustive --
/// --ignored` (or `scripts/checkpoint-torture.sh 1M`).
#[test]
#[ignore = "long campaign; run through scripts/checkpoint-torture.sh"]
fn truncation_at_every_length_of_a_log_of_env_size() {
    let size = env_size("SLUICE_TORTURE_BYTES", 1024 * 1024);
    let segment = ((size / 8).max(16 * 1024) as u64).next_power_of_two();
    let log = build_log(size, segment, 4000, 3);
    println!("truncating a {}-byte log of {} records", log.total_len(), log.records.len());
    check_truncations(&log);
}

/// See [`truncation_at_every_length_of_a_log_of_env_size`].
#[test]
#[ignore = "long campaign; run through scripts/checkpoint-torture.sh"]
fn bit_flips_of_a_log_of_env_size() {
    let size = env_size("SLUICE_TORTURE_BYTES", 1024 * 1024);
    let segment = ((size / 8).max(16 * 1024) as u64).next_power_of_two();
    let log = build_log(size, segment, 4000, 4);
    println!("flipping {} bits of a log of {} records", log.total_len() * 8, log.records.len());
    let outcomes = check_bit_flips(&log);
    println!("{outcomes:?}");
}
