//! The on-disk format, pinned: bytes built by hand from the README's tables must be what the
//! writer produces, and what recovery reads back. A change here is a format change (bump
//! `FORMAT_VERSION` and the README together).

use sluice_checkpoint::testing::MemStorage;
use sluice_checkpoint::{
    recover, replay, BatchCommit, BatchIntent, Log, OffsetRange, Options, RecoveryMode, SegmentImage, Snapshot,
};

fn segment_header(id: u64, first_seq: u64) -> Vec<u8> {
    let mut h = b"SLUICECK".to_vec();
    h.extend(1u32.to_le_bytes()); // version
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

fn golden_segment() -> Vec<u8> {
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
    let mut segment = segment_header(0, 0);
    segment.extend(record(1, 0, 0, &intent));
    segment.extend(record(2, 1, 1, &commit)); // appended after commit() made record 0 durable
    segment.extend(record(3, 2, 1, &snapshot));
    segment.resize(1024, 0); // preallocated zeros
    segment
}

#[test]
fn the_writer_produces_the_documented_bytes() {
    let storage = MemStorage::new();
    let options = Options { segment_size_bytes: 1024, ..Options::default() };
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
    let (written, golden) = (&image.files[&0], golden_segment());
    assert_eq!(written.len(), golden.len(), "segment length");
    let first_difference = written.iter().zip(&golden).position(|(a, b)| a != b);
    assert_eq!(first_difference, None, "first differing byte");
}

#[test]
fn recovery_reads_the_documented_bytes() {
    let segment = golden_segment();
    let recovery = recover(&[SegmentImage { id: 0, bytes: &segment }], RecoveryMode::Strict).unwrap();
    assert!(recovery.is_clean());
    let recovered = replay(&recovery, 10).unwrap();
    let last = recovered.last_committed.unwrap();
    assert_eq!(last.intent.ranges[0].end_offset, 150);
    assert_eq!(last.commit.sink_markers, b"sink");
    assert_eq!(recovered.snapshot.unwrap().state, b"state");
    assert!(recovered.deltas.is_empty());
}
