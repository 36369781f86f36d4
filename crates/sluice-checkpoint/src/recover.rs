//! Recovery: a pure function from segment bytes to the records they hold.
//!
//! The policy, following RocksDB's WAL recovery modes and Kafka's `LogSegment.recover`:
//!
//! * A **torn tail** (the end of the newest segment holding a partial record, zeros, or bytes
//!   of records that were never committed) is cut away. It can only contain appends that no
//!   `commit()` acknowledged.
//! * **Damage before the tail** is a hard [`Error::Corrupt`] naming the segment and byte
//!   offset, unless the caller asks for [`RecoveryMode::TruncateAtDamage`].
//!
//! Telling the two apart needs proof that the bytes at the failure point had been durable.
//! The log writes that proof as it goes: every record header carries `durable_seq` (all
//! records before it had been synced when it was appended) and every segment header carries
//! `first_seq` (the previous segment was fully synced before this one was created). A failure
//! at record `n` followed by a valid record claiming `durable_seq > n`, or by a segment that
//! starts after `n`, is damage; anything else is a tear.
//!
//! Running recovery, applying its [`Cut`] and removals, and running it again gives the same
//! records and a clean result (tested).

use crate::error::{Error, Result};
use crate::format::{
    align_up, check_header_fields, read_frame, segment_file_name, FrameProblem, HeaderFields, RecordKind,
    SegmentHeader, RECORD_ALIGN, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};

/// The bytes of one segment file, as recovery sees them.
#[derive(Debug, Clone, Copy)]
pub struct SegmentImage<'a> {
    /// Segment id, from the file name.
    pub id: u64,
    /// The whole file.
    pub bytes: &'a [u8],
}

/// What recovery does with damage before the tail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RecoveryMode {
    /// Damage before the tail is an [`Error::Corrupt`]. The default.
    #[default]
    Strict,
    /// Keep the records before the first damaged one and discard everything after it,
    /// including committed batches (RocksDB's point-in-time recovery). The discarded range is
    /// reported in [`Recovery::damage`]. Use it to salvage a log, never as a routine setting.
    TruncateAtDamage,
}

/// One valid record, borrowed from its segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// Position in the log.
    pub seq: u64,
    /// Kind of payload.
    pub kind: RecordKind,
    /// The payload bytes.
    pub payload: &'a [u8],
    /// Segment holding the record.
    pub segment_id: u64,
    /// Byte offset of the record header inside the segment.
    pub offset: u64,
}

impl RecordView<'_> {
    /// Offset one past the record's last byte inside its segment.
    pub fn end(&self) -> u64 {
        self.offset + RECORD_HEADER_LEN as u64 + self.payload.len() as u64
    }
}

/// A segment that recovery keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentExtent {
    /// Segment id.
    pub id: u64,
    /// Sequence number of its first record (from the header).
    pub first_seq: u64,
    /// Where the next record would go: aligned end of the last valid record.
    pub end: u64,
    /// File length.
    pub len: u64,
}

/// Bytes to overwrite with zeros in the newest kept segment before appending again, so that
/// leftovers of a torn write can never be read back as records later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    /// The segment.
    pub segment_id: u64,
    /// First byte to zero (the append position).
    pub offset: u64,
    /// One past the last non-zero byte.
    pub zero_until: u64,
}

/// Where and why the log stopped being readable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopPoint {
    /// Segment id.
    pub segment_id: u64,
    /// Byte offset inside the segment.
    pub offset: u64,
    /// What was found there.
    pub problem: String,
}

/// The result of [`recover`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery<'a> {
    /// Every valid record, in sequence order, contiguous from `start_seq`.
    pub records: Vec<RecordView<'a>>,
    /// Sequence number of the oldest record the log holds (non-zero after compaction).
    pub start_seq: u64,
    /// Sequence number the next append gets.
    pub next_seq: u64,
    /// Segments kept, oldest first.
    pub segments: Vec<SegmentExtent>,
    /// Leftover bytes to zero in the newest kept segment, if any.
    pub cut: Option<Cut>,
    /// Segments to delete: torn creations at the end, and everything after damage in
    /// [`RecoveryMode::TruncateAtDamage`].
    pub removed: Vec<u64>,
    /// The torn tail that was cut away, if there was one.
    pub torn: Option<StopPoint>,
    /// Damage that [`RecoveryMode::TruncateAtDamage`] truncated at (always `None` in strict mode,
    /// which returns an error instead).
    pub damage: Option<StopPoint>,
}

impl Recovery<'_> {
    /// True if recovery found nothing to repair: no cut, no removals, no damage.
    pub fn is_clean(&self) -> bool {
        self.cut.is_none() && self.removed.is_empty() && self.damage.is_none()
    }
}

/// Recovers the records of a log from the bytes of its segment files, in any order.
///
/// Pure and deterministic: it reads nothing but `segments`, and never panics or allocates
/// based on unchecked lengths, whatever the bytes.
///
/// ```
/// use sluice_checkpoint::{recover, RecoveryMode, SegmentImage};
///
/// // An empty log, and a segment whose creation was torn (all zeros), both recover to nothing.
/// let zeros = vec![0u8; 4096];
/// let recovery = recover(&[SegmentImage { id: 0, bytes: &zeros }], RecoveryMode::Strict)?;
/// assert!(recovery.records.is_empty());
/// assert_eq!(recovery.removed, vec![0]);
/// # Ok::<(), sluice_checkpoint::Error>(())
/// ```
pub fn recover<'a>(segments: &[SegmentImage<'a>], mode: RecoveryMode) -> Result<Recovery<'a>> {
    let mut sorted = segments.to_vec();
    sorted.sort_by_key(|s| s.id);
    if let Some(pair) = sorted.windows(2).find(|w| w.first().map(|s| s.id) == w.get(1).map(|s| s.id)) {
        let id = pair.first().map(|s| s.id).unwrap_or_default();
        return Err(corrupt(id, 0, "two images were given for the same segment id".into()));
    }
    let kept = kept_prefix_len(&sorted);
    let (kept_segments, torn_creations) = sorted.split_at(kept);
    let mut scan = Scan::new(mode, kept_segments);
    // Newest first throughout, so that a crash part-way through removal never leaves a gap.
    scan.out.removed.extend(torn_creations.iter().rev().map(|s| s.id));
    scan.run()?;
    Ok(scan.finish())
}

/// Number of segments to keep: trailing segments whose header is invalid and whose body is all
/// zero are creations that a crash interrupted (a segment is synced before it gets records).
fn kept_prefix_len(sorted: &[SegmentImage<'_>]) -> usize {
    let mut kept = sorted.len();
    while let Some(last) = kept.checked_sub(1).and_then(|i| sorted.get(i)) {
        let header_ok = SegmentHeader::decode(last.bytes).is_ok();
        let body_zero = last_nonzero_end(last.bytes, SEGMENT_HEADER_LEN) <= SEGMENT_HEADER_LEN;
        if header_ok || !body_zero {
            break;
        }
        kept -= 1;
    }
    kept
}

enum Flow {
    Continue,
    Stop,
}

struct Scan<'s, 'a> {
    mode: RecoveryMode,
    segments: &'s [SegmentImage<'a>],
    out: Recovery<'a>,
    expected: u64,
}

impl<'s, 'a> Scan<'s, 'a> {
    fn new(mode: RecoveryMode, segments: &'s [SegmentImage<'a>]) -> Self {
        let out = Recovery {
            records: Vec::new(),
            start_seq: 0,
            next_seq: 0,
            segments: Vec::new(),
            cut: None,
            removed: Vec::new(),
            torn: None,
            damage: None,
        };
        Self { mode, segments, out, expected: 0 }
    }

    fn run(&mut self) -> Result<()> {
        for index in 0..self.segments.len() {
            if let Flow::Stop = self.segment(index)? {
                break;
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Recovery<'a> {
        self.out.next_seq = self.expected;
        if let Some(last) = self.out.segments.last() {
            let bytes = self.bytes_of(last.id);
            let end = usize::try_from(last.end).unwrap_or(usize::MAX);
            let nonzero_end = last_nonzero_end(bytes, end);
            if nonzero_end > end {
                self.out.cut = Some(Cut { segment_id: last.id, offset: last.end, zero_until: nonzero_end as u64 });
            }
        }
        self.out
    }

    fn bytes_of(&self, id: u64) -> &'a [u8] {
        self.segments.iter().find(|s| s.id == id).map(|s| s.bytes).unwrap_or_default()
    }

    /// Validates segment `index`'s header, reads its records, and decides how it ends.
    fn segment(&mut self, index: usize) -> Result<Flow> {
        let Some(&image) = self.segments.get(index) else {
            return Ok(Flow::Stop);
        };
        let header = match self.check_header(index, image) {
            Ok(header) => header,
            Err(problem) => return self.damage(index, 0, problem),
        };
        if index == 0 {
            self.out.start_seq = header.first_seq;
            self.expected = header.first_seq;
        }
        let (stop, problem) = self.read_records(image);
        self.out.segments.push(SegmentExtent {
            id: image.id,
            first_seq: header.first_seq,
            end: stop,
            len: image.bytes.len() as u64,
        });
        match self.segments.get(index + 1) {
            Some(next) => self.segment_boundary(index, stop, &problem, next),
            None => self.tail(index, stop, problem),
        }
    }

    fn check_header(&self, index: usize, image: SegmentImage<'_>) -> Result<SegmentHeader, String> {
        let header = SegmentHeader::decode(image.bytes)?;
        if header.segment_id != image.id {
            return Err(format!("the header names segment {} but the file is segment {}", header.segment_id, image.id));
        }
        let previous = index.checked_sub(1).and_then(|i| self.segments.get(i));
        if let Some(previous) = previous {
            if previous.id.checked_add(1) != Some(image.id) {
                return Err(format!(
                    "segment files {} through {} are missing",
                    segment_file_name(previous.id.saturating_add(1)),
                    segment_file_name(image.id.saturating_sub(1))
                ));
            }
        }
        Ok(header)
    }

    /// Appends every valid record in sequence; returns where reading stopped and why.
    fn read_records(&mut self, image: SegmentImage<'a>) -> (u64, String) {
        let len = image.bytes.len() as u64;
        let mut at = SEGMENT_HEADER_LEN as u64;
        loop {
            let frame = match read_frame(image.bytes, at) {
                Ok(frame) => frame,
                Err(FrameProblem::End) => return (at, "end of records".into()),
                Err(FrameProblem::Invalid(problem)) => return (at, problem),
            };
            if frame.meta.seq != self.expected {
                let problem = format!("a record with sequence {} where {} was expected", frame.meta.seq, self.expected);
                return (at, problem);
            }
            // The writer never gives out u64::MAX (the sequence after it would not exist).
            let Some(next_expected) = self.expected.checked_add(1) else {
                return (at, format!("a record with sequence {}, past the last usable one", frame.meta.seq));
            };
            self.out.records.push(RecordView {
                seq: frame.meta.seq,
                kind: frame.meta.kind,
                payload: frame.payload,
                segment_id: image.id,
                offset: at,
            });
            self.expected = next_expected;
            at = align_up(frame.end).map_or(len, |next| next.min(len));
        }
    }

    /// A segment with a successor must end exactly where the successor's header says it starts.
    fn segment_boundary(&mut self, index: usize, stop: u64, problem: &str, next: &SegmentImage<'_>) -> Result<Flow> {
        let Ok(next_header) = SegmentHeader::decode(next.bytes) else {
            // The next segment's own check reports its header.
            return Ok(Flow::Continue);
        };
        match next_header.first_seq.cmp(&self.expected) {
            std::cmp::Ordering::Equal => Ok(Flow::Continue),
            std::cmp::Ordering::Greater => {
                let problem = format!(
                    "{problem}; records {} to {} are missing (the next segment starts at {}, \
                     and it was only created after this one was synced)",
                    self.expected,
                    next_header.first_seq - 1,
                    next_header.first_seq
                );
                self.damage(index, stop, problem)
            }
            std::cmp::Ordering::Less => {
                let problem = format!(
                    "the segment starts at record {} but the previous segment holds records up to {}",
                    next_header.first_seq,
                    self.expected.saturating_sub(1)
                );
                self.damage(index + 1, 0, problem)
            }
        }
    }

    /// The newest segment ends at `stop`: a clean end, a torn tail, or provable damage.
    fn tail(&mut self, index: usize, stop: u64, problem: String) -> Result<Flow> {
        let Some(image) = self.segments.get(index) else {
            return Ok(Flow::Stop);
        };
        let stop_usize = usize::try_from(stop).unwrap_or(usize::MAX);
        if last_nonzero_end(image.bytes, stop_usize) <= stop_usize {
            return Ok(Flow::Stop);
        }
        match find_commit_proof(image.bytes, stop, self.expected) {
            Proof::Found { offset, seq } => {
                let problem = format!(
                    "{problem}; the valid record {seq} at byte {offset}, written later, shows that \
                     record {} had already been synced",
                    self.expected
                );
                self.damage(index, stop, problem)
            }
            Proof::TooManyCandidates => {
                let problem = format!(
                    "{problem}; the bytes after it hold more record-like headers than any torn \
                     write leaves behind"
                );
                self.damage(index, stop, problem)
            }
            Proof::None => {
                self.out.torn = Some(StopPoint { segment_id: image.id, offset: stop, problem });
                Ok(Flow::Stop)
            }
        }
    }

    /// Damage before the tail: an error, or in tolerant mode the end of the log.
    fn damage(&mut self, index: usize, offset: u64, problem: String) -> Result<Flow> {
        let id = self.segments.get(index).map(|s| s.id).unwrap_or_default();
        if self.mode == RecoveryMode::Strict {
            return Err(corrupt(id, offset, problem));
        }
        // A damaged header loses the whole segment; damaged records lose what follows them.
        let first_removed = if offset == 0 { index } else { index + 1 };
        if offset == 0 {
            self.out.segments.retain(|s| s.id != id);
        } else if let Some(extent) = self.out.segments.last_mut() {
            extent.end = offset;
        }
        let removed = self.segments.get(first_removed..).unwrap_or_default();
        self.out.removed.extend(removed.iter().rev().map(|s| s.id));
        self.out.damage = Some(StopPoint { segment_id: id, offset, problem });
        Ok(Flow::Stop)
    }
}

fn corrupt(segment_id: u64, offset: u64, problem: String) -> Error {
    Error::Corrupt { segment_id, file: segment_file_name(segment_id), offset, problem }
}

/// Outcome of the search for a record that proves a failure point was durable.
enum Proof {
    Found {
        offset: u64,
        seq: u64,
    },
    None,
    /// Checking every candidate would cost more CRC work than a legitimate tail can need.
    TooManyCandidates,
}

/// Looks after `stop` for a valid record proving that record `expected` had been synced.
///
/// Records start at aligned offsets, so only those are tried; the kind byte and the reserved
/// bytes reject almost every candidate before the CRC is computed. A real tail holds whole,
/// non-overlapping old records, so checksumming a few times the segment's length is enough;
/// a crafted file of overlapping record-like headers would otherwise cost quadratic time.
fn find_commit_proof(bytes: &[u8], stop: u64, expected: u64) -> Proof {
    let mut crc_budget = (bytes.len() as u64).saturating_mul(4);
    let mut candidate = stop.saturating_add(1).div_ceil(RECORD_ALIGN as u64) * RECORD_ALIGN as u64;
    let limit = (bytes.len() as u64).saturating_sub(RECORD_HEADER_LEN as u64);
    while candidate <= limit && bytes.len() >= RECORD_HEADER_LEN {
        if let Some(fields) = plausible_proof(bytes, candidate, expected) {
            let cost = RECORD_HEADER_LEN as u64 + u64::from(fields.payload_len);
            let Some(left) = crc_budget.checked_sub(cost) else {
                return Proof::TooManyCandidates;
            };
            crc_budget = left;
            if read_frame(bytes, candidate).is_ok() {
                return Proof::Found { offset: candidate, seq: fields.meta.seq };
            }
        }
        candidate += RECORD_ALIGN as u64;
    }
    Proof::None
}

/// Header fields at `at` if they could be a record proving `expected` durable (CRC unchecked).
fn plausible_proof(bytes: &[u8], at: u64, expected: u64) -> Option<HeaderFields> {
    let at = usize::try_from(at).ok()?;
    let header = bytes.get(at..at.checked_add(RECORD_HEADER_LEN)?)?;
    RecordKind::from_code(*header.get(8)?)?;
    let fields = check_header_fields(header).ok()?;
    let proves = fields.meta.seq > expected && fields.meta.durable_seq > expected;
    let room = bytes.len().saturating_sub(at).saturating_sub(RECORD_HEADER_LEN) as u64;
    let fits = u64::from(fields.payload_len) <= room;
    (proves && fits).then_some(fields)
}

/// Offset one past the last non-zero byte at or after `from`, or `from` if there is none.
pub(crate) fn last_nonzero_end(bytes: &[u8], from: usize) -> usize {
    let tail = bytes.get(from..).unwrap_or_default();
    // Whole 64-byte blocks are OR-ed together, which the compiler vectorizes; zero-filled
    // preallocated space is the common case and can be megabytes long.
    let mut end = tail.len();
    for block in tail.rchunks(64) {
        if block.iter().fold(0u8, |acc, &b| acc | b) != 0 {
            let inside = block.iter().rposition(|&b| b != 0).unwrap_or_default();
            return from + end - block.len() + inside + 1;
        }
        end -= block.len();
    }
    from
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_nonzero_end_finds_the_last_byte_in_every_position() {
        for len in 0..200 {
            for pos in 0..len {
                let mut bytes = vec![0u8; len];
                bytes[pos] = 1;
                assert_eq!(last_nonzero_end(&bytes, 0), pos + 1);
                assert_eq!(last_nonzero_end(&bytes, pos + 1), pos + 1);
            }
            assert_eq!(last_nonzero_end(&vec![0u8; len], 0), 0);
        }
    }

    #[test]
    fn nothing_recovers_to_an_empty_clean_log() {
        let recovery = recover(&[], RecoveryMode::Strict).unwrap();
        assert!(recovery.records.is_empty());
        assert!(recovery.is_clean());
        assert_eq!(recovery.next_seq, 0);
    }

    #[test]
    fn a_forest_of_record_like_headers_costs_linear_time_and_is_damage() {
        use crate::format::{encode_record_header, RecordMeta};
        let mut segment = SegmentHeader { segment_id: 0, first_seq: 0 }.encode().to_vec();
        segment.resize(1 << 20, 0);
        // A torn record at the first record position, then a fake header every 32 bytes, each
        // claiming a payload that runs to the end of the segment (and a wrong CRC).
        segment[SEGMENT_HEADER_LEN] = 0xff;
        let mut at = 64;
        while at + RECORD_HEADER_LEN <= segment.len() {
            let meta = RecordMeta { kind: RecordKind::Commit, seq: 9, durable_seq: 5 };
            let mut header = encode_record_header(meta, &[]).unwrap();
            let len = (segment.len() - at - RECORD_HEADER_LEN) as u32;
            header[..4].copy_from_slice(&len.to_le_bytes());
            segment[at..at + RECORD_HEADER_LEN].copy_from_slice(&header);
            at += RECORD_HEADER_LEN;
        }
        // The CRC budget (a work count, not a clock) must run out: "record-like" is the
        // TooManyCandidates outcome, reached after at most 4x the segment's bytes checksummed.
        let err = recover(&[SegmentImage { id: 0, bytes: &segment }], RecoveryMode::Strict).unwrap_err();
        assert!(matches!(&err, Error::Corrupt { problem, .. } if problem.contains("record-like")), "{err}");
    }

    #[test]
    fn a_missing_middle_segment_is_damage() {
        let a = SegmentHeader { segment_id: 0, first_seq: 0 }.encode();
        let c = SegmentHeader { segment_id: 2, first_seq: 0 }.encode();
        let images = [SegmentImage { id: 0, bytes: &a }, SegmentImage { id: 2, bytes: &c }];
        let err = recover(&images, RecoveryMode::Strict).unwrap_err();
        assert!(
            matches!(&err, Error::Corrupt { segment_id: 2, offset: 0, problem, .. } if problem.contains("missing")),
            "{err}"
        );
        let tolerant = recover(&images, RecoveryMode::TruncateAtDamage).unwrap();
        assert_eq!(tolerant.removed, vec![2]);
        assert_eq!(tolerant.segments.len(), 1);
    }
}
