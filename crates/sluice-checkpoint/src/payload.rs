//! The record payloads and their binary encoding.
//!
//! The log knows batch ids and Kafka offset ranges, because recovery must pair intents with
//! commits; everything else (metadata, state deltas, sink markers, snapshots) is opaque bytes
//! that the engine fills with its own serde types through [`crate::encode_value`].
//!
//! Encoding is hand-written little-endian so the README can describe it byte by byte and so
//! the format does not change when a serializer does. Large opaque fields are borrowed into the
//! frame as separate parts, so an append copies them once, straight into the mapped segment.

use serde::{Deserialize, Serialize};

/// Half-open range `[start_offset, end_offset)` of one topic-partition read by a batch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OffsetRange {
    /// Kafka topic name (at most 65,535 bytes of UTF-8; Kafka allows 249).
    pub topic: String,
    /// Partition index.
    pub partition: i32,
    /// First offset the batch reads.
    pub start_offset: i64,
    /// Offset after the last one the batch reads; the next batch starts here.
    pub end_offset: i64,
}

/// What a micro-batch is about to do, written before it runs (Spark's `offsets/` entry).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BatchIntent {
    /// Id of the batch; commits must follow intents in id order.
    pub batch_id: u64,
    /// Offsets the batch reads, per topic-partition.
    pub ranges: Vec<OffsetRange>,
    /// Opaque engine metadata (watermarks, configuration hash, ...).
    pub metadata: Vec<u8>,
}

/// What a finished micro-batch changed, written after its sinks succeeded (Spark's `commits/`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BatchCommit {
    /// Id of the batch; must be the oldest batch with an intent and no commit.
    pub batch_id: u64,
    /// Opaque change to the keyed state made by this batch.
    pub state_delta: Vec<u8>,
    /// Opaque per-sink markers (transaction ids, file names) for idempotent re-runs.
    pub sink_markers: Vec<u8>,
}

/// The full keyed state as of a committed batch (Spark's `state/` snapshot files).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Snapshot {
    /// The batch whose state this is; must be the last committed batch when written.
    pub batch_id: u64,
    /// Opaque state.
    pub state: Vec<u8>,
}

/// Bytes of the fixed fields of one encoded offset range, not counting the topic name.
const RANGE_FIXED_LEN: usize = 2 + 4 + 8 + 8;

/// A payload ready to be framed: small owned prefix pieces and borrowed opaque blobs.
#[derive(Debug)]
pub(crate) struct Encoded<'a> {
    parts: Vec<Part<'a>>,
}

#[derive(Debug)]
enum Part<'a> {
    Owned(Vec<u8>),
    Borrowed(&'a [u8]),
}

impl<'a> Encoded<'a> {
    /// The pieces in order; their concatenation is the payload.
    pub(crate) fn parts(&self) -> Vec<&[u8]> {
        self.parts
            .iter()
            .map(|part| match part {
                Part::Owned(bytes) => bytes.as_slice(),
                Part::Borrowed(bytes) => bytes,
            })
            .collect()
    }

    /// Total payload length.
    pub(crate) fn len(&self) -> u64 {
        self.parts().iter().map(|p| p.len() as u64).sum()
    }
}

/// Encodes an intent; fails only if a field does not fit its length prefix.
pub(crate) fn encode_intent(intent: &BatchIntent) -> Result<Encoded<'_>, String> {
    let mut head = Vec::with_capacity(16 + intent.ranges.len() * 40);
    head.extend_from_slice(&intent.batch_id.to_le_bytes());
    head.extend_from_slice(&len_u32(intent.ranges.len(), "offset ranges")?.to_le_bytes());
    for range in &intent.ranges {
        let topic_len = u16::try_from(range.topic.len())
            .map_err(|_| format!("topic name of {} bytes is longer than 65,535 bytes", range.topic.len()))?;
        head.extend_from_slice(&topic_len.to_le_bytes());
        head.extend_from_slice(range.topic.as_bytes());
        head.extend_from_slice(&range.partition.to_le_bytes());
        head.extend_from_slice(&range.start_offset.to_le_bytes());
        head.extend_from_slice(&range.end_offset.to_le_bytes());
    }
    head.extend_from_slice(&len_u32(intent.metadata.len(), "intent metadata")?.to_le_bytes());
    Ok(Encoded { parts: vec![Part::Owned(head), Part::Borrowed(&intent.metadata)] })
}

pub(crate) fn encode_commit(commit: &BatchCommit) -> Result<Encoded<'_>, String> {
    let mut head = Vec::with_capacity(12);
    head.extend_from_slice(&commit.batch_id.to_le_bytes());
    head.extend_from_slice(&len_u32(commit.state_delta.len(), "state delta")?.to_le_bytes());
    let middle = len_u32(commit.sink_markers.len(), "sink markers")?.to_le_bytes().to_vec();
    Ok(Encoded {
        parts: vec![
            Part::Owned(head),
            Part::Borrowed(&commit.state_delta),
            Part::Owned(middle),
            Part::Borrowed(&commit.sink_markers),
        ],
    })
}

pub(crate) fn encode_snapshot(snapshot: &Snapshot) -> Result<Encoded<'_>, String> {
    let mut head = Vec::with_capacity(12);
    head.extend_from_slice(&snapshot.batch_id.to_le_bytes());
    head.extend_from_slice(&len_u32(snapshot.state.len(), "snapshot state")?.to_le_bytes());
    Ok(Encoded { parts: vec![Part::Owned(head), Part::Borrowed(&snapshot.state)] })
}

/// Bytes a snapshot part's payload has besides its piece of state: batch id, part, parts, and
/// the piece's length.
pub(crate) const SNAPSHOT_PART_OVERHEAD: u64 = 8 + 4 + 4 + 4;

/// One piece of a snapshot written as several records: the `part`-th of `parts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SnapshotPart<'a> {
    pub(crate) batch_id: u64,
    pub(crate) part: u32,
    pub(crate) parts: u32,
    pub(crate) piece: &'a [u8],
}

/// Splits a snapshot into parts whose payloads are at most `max_payload` bytes each, or
/// `None` if it fits one snapshot record. Fails if even one byte of state per part does not
/// fit, or if there would be more than `u32::MAX` parts.
pub(crate) fn snapshot_parts(snapshot: &Snapshot, max_payload: u64) -> Result<Option<Vec<SnapshotPart<'_>>>, String> {
    let whole = 12 + snapshot.state.len() as u64;
    if whole <= max_payload {
        return Ok(None);
    }
    let piece_len = max_payload.saturating_sub(SNAPSHOT_PART_OVERHEAD).min(u64::from(u32::MAX));
    let piece_len = usize::try_from(piece_len).unwrap_or(usize::MAX);
    if piece_len == 0 {
        return Err(format!(
            "a snapshot of {} bytes does not fit one record of at most {max_payload} bytes, and parts of it \
             need more than {SNAPSHOT_PART_OVERHEAD} bytes each",
            snapshot.state.len()
        ));
    }
    let pieces: Vec<&[u8]> = snapshot.state.chunks(piece_len).collect();
    let parts = u32::try_from(pieces.len())
        .map_err(|_| format!("a snapshot of {} bytes needs more than 2^32 parts", snapshot.state.len()))?;
    Ok(Some(
        (0u32..)
            .zip(pieces)
            .map(|(part, piece)| SnapshotPart { batch_id: snapshot.batch_id, part, parts, piece })
            .collect(),
    ))
}

pub(crate) fn encode_snapshot_part<'a>(part: &SnapshotPart<'a>) -> Result<Encoded<'a>, String> {
    let mut head = Vec::with_capacity(20);
    head.extend_from_slice(&part.batch_id.to_le_bytes());
    head.extend_from_slice(&part.part.to_le_bytes());
    head.extend_from_slice(&part.parts.to_le_bytes());
    head.extend_from_slice(&len_u32(part.piece.len(), "snapshot part")?.to_le_bytes());
    Ok(Encoded { parts: vec![Part::Owned(head), Part::Borrowed(part.piece)] })
}

fn len_u32(len: usize, what: &str) -> Result<u32, String> {
    u32::try_from(len).map_err(|_| format!("{what} of {len} bytes do not fit a 32-bit length"))
}

/// Batch id of any payload: its first eight bytes.
pub(crate) fn batch_id_of(payload: &[u8]) -> Result<u64, String> {
    Reader::new(payload).u64("batch id")
}

pub(crate) fn decode_intent(payload: &[u8]) -> Result<BatchIntent, String> {
    let mut r = Reader::new(payload);
    let batch_id = r.u64("batch id")?;
    let count = r.u32("range count")? as usize;
    // Never trust a count for an allocation: each range needs at least RANGE_FIXED_LEN bytes.
    let mut ranges = Vec::with_capacity(count.min(r.remaining() / RANGE_FIXED_LEN));
    for _ in 0..count {
        ranges.push(decode_range(&mut r)?);
    }
    let metadata = r.blob_u32("metadata")?.to_vec();
    r.finish()?;
    Ok(BatchIntent { batch_id, ranges, metadata })
}

fn decode_range(r: &mut Reader<'_>) -> Result<OffsetRange, String> {
    let topic_len = usize::from(r.u16("topic length")?);
    let topic = std::str::from_utf8(r.bytes(topic_len, "topic")?)
        .map_err(|_| "topic name is not UTF-8".to_string())?
        .to_string();
    Ok(OffsetRange {
        topic,
        partition: r.u32("partition")? as i32,
        start_offset: r.u64("start offset")? as i64,
        end_offset: r.u64("end offset")? as i64,
    })
}

pub(crate) fn decode_commit(payload: &[u8]) -> Result<BatchCommit, String> {
    let mut r = Reader::new(payload);
    let batch_id = r.u64("batch id")?;
    let state_delta = r.blob_u32("state delta")?.to_vec();
    let sink_markers = r.blob_u32("sink markers")?.to_vec();
    r.finish()?;
    Ok(BatchCommit { batch_id, state_delta, sink_markers })
}

pub(crate) fn decode_snapshot(payload: &[u8]) -> Result<Snapshot, String> {
    let mut r = Reader::new(payload);
    let batch_id = r.u64("batch id")?;
    let state = r.blob_u32("snapshot state")?.to_vec();
    r.finish()?;
    Ok(Snapshot { batch_id, state })
}

/// A snapshot part, its piece borrowed from the payload. A part is one of at least two (a
/// snapshot that fits one record is written as one).
pub(crate) fn decode_snapshot_part(payload: &[u8]) -> Result<SnapshotPart<'_>, String> {
    let mut r = Reader::new(payload);
    let batch_id = r.u64("batch id")?;
    let part = r.u32("part")?;
    let parts = r.u32("parts")?;
    let piece = r.blob_u32("snapshot part")?;
    r.finish()?;
    if parts < 2 || part >= parts {
        return Err(format!("part {part} of {parts} is not a part of a snapshot in several parts"));
    }
    Ok(SnapshotPart { batch_id, part, parts, piece })
}

/// Checked little-endian reader; every method fails instead of reading past the end.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }

    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.at)
    }

    fn bytes(&mut self, len: usize, what: &str) -> Result<&'a [u8], String> {
        let slice = self.at.checked_add(len).and_then(|end| self.bytes.get(self.at..end));
        let Some(slice) = slice else {
            return Err(format!(
                "{what} needs {len} bytes at payload byte {} but only {} remain",
                self.at,
                self.remaining()
            ));
        };
        self.at += len;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let slice = self.bytes(N, what)?;
        slice.try_into().map_err(|_| format!("{what} is not {N} bytes"))
    }

    fn u16(&mut self, what: &str) -> Result<u16, String> {
        self.array(what).map(u16::from_le_bytes)
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn blob_u32(&mut self, what: &str) -> Result<&'a [u8], String> {
        let len = self.u32(what)? as usize;
        self.bytes(len, what)
    }

    fn finish(self) -> Result<(), String> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(format!("{extra} unexpected bytes after the payload's last field")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn concat(encoded: &Encoded<'_>) -> Vec<u8> {
        encoded.parts().concat()
    }

    fn range_strategy() -> impl Strategy<Value = OffsetRange> {
        ("[a-z.-]{0,40}", any::<i32>(), any::<i64>(), any::<i64>()).prop_map(
            |(topic, partition, start_offset, end_offset)| OffsetRange { topic, partition, start_offset, end_offset },
        )
    }

    proptest! {
        #[test]
        fn intents_round_trip(batch_id: u64, ranges in prop::collection::vec(range_strategy(), 0..8),
                              metadata in prop::collection::vec(any::<u8>(), 0..64)) {
            let intent = BatchIntent { batch_id, ranges, metadata };
            let bytes = concat(&encode_intent(&intent).unwrap());
            prop_assert_eq!(decode_intent(&bytes).unwrap(), intent);
            prop_assert_eq!(batch_id_of(&bytes).unwrap(), batch_id);
        }

        #[test]
        fn commits_round_trip(batch_id: u64, state_delta in prop::collection::vec(any::<u8>(), 0..64),
                              sink_markers in prop::collection::vec(any::<u8>(), 0..64)) {
            let commit = BatchCommit { batch_id, state_delta, sink_markers };
            let bytes = concat(&encode_commit(&commit).unwrap());
            prop_assert_eq!(decode_commit(&bytes).unwrap(), commit);
        }

        #[test]
        fn snapshots_round_trip(batch_id: u64, state in prop::collection::vec(any::<u8>(), 0..64)) {
            let snapshot = Snapshot { batch_id, state };
            let bytes = concat(&encode_snapshot(&snapshot).unwrap());
            prop_assert_eq!(decode_snapshot(&bytes).unwrap(), snapshot);
        }

        #[test]
        fn decoders_never_panic_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_intent(&bytes);
            let _ = decode_commit(&bytes);
            let _ = decode_snapshot(&bytes);
        }
    }

    #[test]
    fn a_huge_range_count_does_not_allocate() {
        let mut bytes = 5u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        let problem = decode_intent(&bytes).unwrap_err();
        assert!(problem.contains("topic length"), "{problem}");
    }

    #[test]
    fn every_truncation_of_a_payload_is_refused() {
        let intent = BatchIntent {
            batch_id: 3,
            ranges: vec![OffsetRange { topic: "orders".into(), partition: 2, start_offset: 10, end_offset: 20 }],
            metadata: b"meta".to_vec(),
        };
        let bytes = concat(&encode_intent(&intent).unwrap());
        for len in 0..bytes.len() {
            assert!(decode_intent(&bytes[..len]).is_err(), "length {len} decoded");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_intent(&longer).unwrap_err().contains("unexpected bytes"));
    }
}
