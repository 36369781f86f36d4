//! The on-disk format, pinned: bytes built by hand from the README's tables must be what the
//! writer produces, and what recovery reads back. A change here is a format change (bump
//! `FORMAT_VERSION` and the README together).

use sluice_checkpoint::testing::{DiskImage, MemStorage};
use sluice_checkpoint::{
    recover, replay, BatchCommit, BatchIntent, Log, OffsetRange, Options, RecoveryMode, SegmentImage, Snapshot,
};

fn segment_header(version: u32, id: u64, first_seq: u64) -> Vec<u8> {
    let mut h = b"SLUICECK".to_vec();
    h.extend(version.to_le_bytes());
    h.extend(0u32.to_le_bytes()); // reserved
    h.extend(id.to_le_bytes());
    h.extend(first_seq.to_le_bytes());
    h.extend(0u32.to_le_bytes()); // reserved
    let crc = crc32fast::hash(&h);
    h.extend(crc.to_le_bytes());
    h
}

fn record(kind: u8, seq: u64, durable_seq: u64, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_le_bytes();
    let mut rest = vec![kind, 0, 0, 0, 0, 0, 0, 0];
    rest.extend(seq.to_le_bytes());
    rest.extend(durable_seq.to_le_bytes());
    let crc = crc32fast::hash(&[&len[..], &rest, payload].concat());
    let mut r = [&len[..], &crc.to_le_bytes(), &rest, payload].concat();
    r.resize(r.len().div_ceil(8) * 8, 0);
    r
}

fn bytes_field(b: &[u8]) -> Vec<u8> {
    [&(b.len() as u32).to_le_bytes()[..], b].concat()
}

fn golden_segment(version: u32) -> Vec<u8> {
    let mut intent = 0u64.to_le_bytes().to_vec(); // batch id
    intent.extend(1u32.to_le_bytes()); // one range
    intent.extend(6u16.to_le_bytes());
    intent.extend(b"orders");
    intent.extend(2i32.to_le_bytes());
    intent.extend(100i64.to_le_bytes());
    intent.extend(150i64.to_le_bytes());
    intent.extend(bytes_field(b"meta"));
    let commit = [&0u64.to_le_bytes()[..], &bytes_field(b"delta"), &bytes_field(b"sink")].concat();
    let snapshot = [&0u64.to_le_bytes()[..], &bytes_field(b"state")].concat();
    let mut segment = segment_header(version, 0, 0);
    segment.extend(record(1, 0, 0, &intent));
    segment.extend(record(2, 1, 1, &commit)); // appended after commit() made record 0 durable
    segment.extend(record(3, 2, 1, &snapshot));
    segment.resize(1024, 0); // preallocated zeros
    segment
}

#[test]
fn the_writer_produces_the_documented_bytes() {
    let storage = MemStorage::new();
    let mut options = Options::default();
    options.segment_size_bytes = 1024;
    let (log, _) = Log::open_with(storage.clone(), options).unwrap();
    log.append_intent(&BatchIntent {
        batch_id: 0,
        ranges: vec![OffsetRange { topic: "orders".into(), partition: 2, start_offset: 100, end_offset: 150 }],
        metadata: b"meta".to_vec(),
    })
    .unwrap();
    log.commit().unwrap();
    log.append_commit(&BatchCommit { batch_id: 0, state_delta: b"delta".to_vec(), sink_markers: b"sink".to_vec() })
        .unwrap();
    log.append_snapshot(&Snapshot { batch_id: 0, state: b"state".to_vec() }).unwrap();
    log.commit().unwrap();
    let image = storage.kill();
    assert_eq!(image.files.keys().copied().collect::<Vec<_>>(), vec![0]);
    let (written, golden) = (&image.files[&0], golden_segment(2));
    assert_eq!(written.len(), golden.len(), "segment length");
    let first_difference = written.iter().zip(&golden).position(|(a, b)| a != b);
    assert_eq!(first_difference, None, "first differing byte");
}

#[test]
fn recovery_reads_the_documented_bytes_of_both_versions() {
    for version in [1, 2] {
        recovery_reads(version);
    }
}

fn recovery_reads(version: u32) {
    let segment = golden_segment(version);
    let recovery = recover(&[SegmentImage { id: 0, bytes: &segment }], RecoveryMode::Strict).unwrap();
    assert!(recovery.is_clean());
    let recovered = replay(&recovery, 10).unwrap();
    let last = recovered.last_committed.unwrap();
    assert_eq!(last.intent.ranges[0].end_offset, 150);
    assert_eq!(last.commit.sink_markers, b"sink");
    assert_eq!(recovered.snapshot.unwrap().state, b"state");
    assert!(recovered.deltas.is_empty());
}

/// Batch 0 committed, then a 100-byte snapshot under a 64-byte record limit: three parts of
/// 44, 44 and 12 bytes of state.
fn golden_parts_segment() -> Vec<u8> {
    let state: Vec<u8> = (0..100).collect();
    let mut intent = 0u64.to_le_bytes().to_vec();
    intent.extend(0u32.to_le_bytes()); // no ranges
    intent.extend(bytes_field(b""));
    let commit = [&0u64.to_le_bytes()[..], &bytes_field(b""), &bytes_field(b"")].concat();
    let mut segment = segment_header(2, 0, 0);
    segment.extend(record(1, 0, 0, &intent));
    segment.extend(record(2, 1, 0, &commit));
    for (part, piece) in state.chunks(44).enumerate() {
        let mut payload = 0u64.to_le_bytes().to_vec(); // batch id
        payload.extend((part as u32).to_le_bytes());
        payload.extend(3u32.to_le_bytes()); // parts
        payload.extend(bytes_field(piece));
        segment.extend(record(4, 2 + part as u64, 0, &payload));
    }
    segment.resize(1024, 0);
    segment
}

#[test]
fn a_snapshot_larger_than_a_record_is_written_in_the_documented_parts_and_read_back_whole() {
    let storage = MemStorage::new();
    let mut options = Options::default();
    options.segment_size_bytes = 1024;
    options.max_record_bytes = 64;
    let (log, _) = Log::open_with(storage.clone(), options.clone()).unwrap();
    log.append_intent(&BatchIntent { batch_id: 0, ..BatchIntent::default() }).unwrap();
    log.append_commit(&BatchCommit { batch_id: 0, ..BatchCommit::default() }).unwrap();
    let state: Vec<u8> = (0..100).collect();
    let last = log.append_snapshot(&Snapshot { batch_id: 0, state: state.clone() }).unwrap();
    assert_eq!(last, 4, "three parts, records 2 to 4");
    log.commit().unwrap();
    let image = storage.kill();
    let (written, golden) = (&image.files[&0], golden_parts_segment());
    let first_difference = written.iter().zip(&golden).position(|(a, b)| a != b);
    assert_eq!((written.len(), first_difference), (golden.len(), None), "length and first differing byte");

    let recovery = recover(&[SegmentImage { id: 0, bytes: &golden }], RecoveryMode::Strict).unwrap();
    let recovered = replay(&recovery, 10).unwrap();
    assert_eq!(recovered.snapshot, Some(Snapshot { batch_id: 0, state }));
    assert!(recovered.deltas.is_empty(), "the snapshot replaces batch 0's delta");

    // Without its last part the snapshot does not count: the delta rebuilds the state.
    let cut = recovery.records.last().unwrap().offset as usize;
    let mut torn = golden;
    torn[cut..].fill(0);
    let recovery = recover(&[SegmentImage { id: 0, bytes: &torn }], RecoveryMode::Strict).unwrap();
    let recovered = replay(&recovery, 10).unwrap();
    assert_eq!(recovered.snapshot, None, "two of three parts are no snapshot");
    assert_eq!(recovered.deltas.len(), 1);
}

#[test]
fn a_log_written_by_version_1_gets_a_version_2_segment_before_its_first_snapshot_part() {
    let image = DiskImage { files: [(0, golden_segment(1))].into() };
    let storage = MemStorage::from_image(&image);
    let mut options = Options::default();
    options.segment_size_bytes = 1024;
    options.max_record_bytes = 64;
    let (log, recovered) = Log::open_with(storage.clone(), options.clone()).unwrap();
    assert_eq!(recovered.snapshot.unwrap().state, b"state");
    log.append_intent(&BatchIntent { batch_id: 1, ..BatchIntent::default() }).unwrap();
    log.append_commit(&BatchCommit { batch_id: 1, ..BatchCommit::default() }).unwrap();
    log.append_snapshot(&Snapshot { batch_id: 1, state: vec![9; 100] }).unwrap();
    log.commit().unwrap();
    let image = storage.kill();
    assert_eq!(image.files.keys().copied().collect::<Vec<_>>(), vec![0, 1]);
    assert_eq!(&image.files[&0][8..12], 1u32.to_le_bytes(), "the old segment keeps its version");
    assert_eq!(&image.files[&1][8..12], 2u32.to_le_bytes());
    drop(log);
    let (_, recovered) = Log::open_with(MemStorage::from_image(&image), options).unwrap();
    assert_eq!(recovered.snapshot, Some(Snapshot { batch_id: 1, state: vec![9; 100] }));
}
