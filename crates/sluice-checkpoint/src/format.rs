//! The on-disk format: segment headers and record frames.
//!
//! The README documents the same layout byte by byte; the two must change together (and
//! [`FORMAT_VERSION`] with them).
//!
//! Decoding never indexes: every read goes through `get(..)` and checked arithmetic, and a
//! length is compared with the bytes that remain before anything is used.

use crc32fast::Hasher;

/// First eight bytes of every segment. Non-zero, so zero-filled space never looks like a header.
pub const SEGMENT_MAGIC: [u8; 8] = *b"SLUICECK";
/// Version of the segment and record layout that this build writes.
///
/// Version 2 added snapshot parts (record kind 4); a version 1 segment is read as it is, a
/// newer one is refused.
pub const FORMAT_VERSION: u32 = 2;
/// Oldest version this build reads.
pub const MIN_READ_VERSION: u32 = 1;
/// Size of the segment header; the first record starts right after it.
pub const SEGMENT_HEADER_LEN: usize = 40;
/// Size of a record header; the payload follows it.
pub const RECORD_HEADER_LEN: usize = 32;
/// Records start at multiples of this many bytes (so a scan for records has few candidates).
pub const RECORD_ALIGN: usize = 8;
/// Largest payload the frame can describe.
pub const MAX_PAYLOAD_LEN: u64 = u32::MAX as u64;
/// Suffix of segment file names.
pub const SEGMENT_SUFFIX: &str = ".ckpt";

/// File name of segment `id`: the id in 20 decimal digits, so names sort like ids.
pub fn segment_file_name(id: u64) -> String {
    format!("{id:020}{SEGMENT_SUFFIX}")
}

/// Parses a name produced by [`segment_file_name`]; anything else is not a segment.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Rounds `n` up to the record alignment, or `None` on overflow.
pub fn align_up(n: u64) -> Option<u64> {
    let mask = RECORD_ALIGN as u64 - 1;
    n.checked_add(mask).map(|v| v & !mask)
}

/// What kind of record a frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RecordKind {
    /// A micro-batch's plan: batch id, offset ranges, metadata.
    Intent,
    /// A micro-batch's completion: batch id, state delta, sink markers.
    Commit,
    /// Full keyed state as of a committed batch.
    Snapshot,
    /// One piece of a snapshot too large for one record; the snapshot is whole once its
    /// last piece is in the log (format version 2).
    SnapshotPart,
}

impl RecordKind {
    /// The byte stored in the frame.
    pub fn code(self) -> u8 {
        match self {
            Self::Intent => 1,
            Self::Commit => 2,
            Self::Snapshot => 3,
            Self::SnapshotPart => 4,
        }
    }

    /// The first format version with this kind of record.
    pub fn since_version(self) -> u32 {
        match self {
            Self::Intent | Self::Commit | Self::Snapshot => 1,
            Self::SnapshotPart => 2,
        }
    }

    /// Inverse of [`RecordKind::code`]; zero and unknown codes are `None`.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Intent),
            2 => Some(Self::Commit),
            3 => Some(Self::Snapshot),
            4 => Some(Self::SnapshotPart),
            _ => None,
        }
    }
}

/// The decoded fixed part of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Id of the segment; must match the file name.
    pub segment_id: u64,
    /// Sequence number of the segment's first record. Every record before it was durable when
    /// this header was written, which recovery uses as proof.
    pub first_seq: u64,
}

impl SegmentHeader {
    /// Encodes the header, CRC included.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut out = [0u8; SEGMENT_HEADER_LEN];
        let fields = [
            (0, &SEGMENT_MAGIC[..]),
            (8, &FORMAT_VERSION.to_le_bytes()[..]),
            (16, &self.segment_id.to_le_bytes()[..]),
            (24, &self.first_seq.to_le_bytes()[..]),
        ];
        for (at, bytes) in fields {
            put(&mut out, at, bytes);
        }
        let crc = crc32fast::hash(out.get(..36).unwrap_or_default());
        put(&mut out, 36, &crc.to_le_bytes());
        out
    }

    /// Decodes and verifies a header from the start of a segment.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let Some(header) = bytes.get(..SEGMENT_HEADER_LEN) else {
            return Err(format!(
                "the file is {} bytes, shorter than the {SEGMENT_HEADER_LEN}-byte segment header",
                bytes.len()
            ));
        };
        if header.get(..8) != Some(&SEGMENT_MAGIC[..]) {
            return Err("the segment header does not start with the magic SLUICECK".into());
        }
        let stored = read_u32(header, 36);
        let computed = crc32fast::hash(header.get(..36).unwrap_or_default());
        if stored != Some(computed) {
            return Err(format!(
                "segment header CRC mismatch (stored {:#010x}, computed {computed:#010x})",
                stored.unwrap_or_default()
            ));
        }
        let version = read_u32(header, 8).unwrap_or_default();
        if !(MIN_READ_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(format!(
                "format version {version} is not supported (this build reads versions \
                 {MIN_READ_VERSION} to {FORMAT_VERSION}); open the log with the sluice release that wrote it"
            ));
        }
        if read_u32(header, 12) != Some(0) || read_u32(header, 32) != Some(0) {
            return Err("reserved segment header bytes are not zero".into());
        }
        Ok(Self {
            segment_id: read_u64(header, 16).unwrap_or_default(),
            first_seq: read_u64(header, 24).unwrap_or_default(),
        })
    }
}

/// The fields of a record header other than length and CRC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMeta {
    /// What the payload is.
    pub kind: RecordKind,
    /// Position of the record in the log, counting from 0 and never reused.
    pub seq: u64,
    /// Every record with a smaller sequence number was durable when this one was appended.
    pub durable_seq: u64,
}

/// Builds the 32-byte header of a record whose payload is the concatenation of `parts`.
///
/// The CRC covers the length, kind, reserved bytes, both sequence numbers and the payload.
pub fn encode_record_header(meta: RecordMeta, parts: &[&[u8]]) -> Option<[u8; RECORD_HEADER_LEN]> {
    let payload_len: usize = parts.iter().map(|p| p.len()).sum();
    let payload_len = u32::try_from(payload_len).ok()?;
    let mut out = [0u8; RECORD_HEADER_LEN];
    put(&mut out, 0, &payload_len.to_le_bytes());
    put(&mut out, 8, &[meta.kind.code()]);
    put(&mut out, 16, &meta.seq.to_le_bytes());
    put(&mut out, 24, &meta.durable_seq.to_le_bytes());
    let mut hasher = header_hasher(&out);
    for part in parts {
        hasher.update(part);
    }
    put(&mut out, 4, &hasher.finalize().to_le_bytes());
    Some(out)
}

/// A record frame that passed every check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Header fields.
    pub meta: RecordMeta,
    /// The payload, borrowed from the segment.
    pub payload: &'a [u8],
    /// Offset just past the payload (not aligned).
    pub end: u64,
}

/// Why the bytes at an offset are not a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameProblem {
    /// Fewer than a record header's bytes remain, or the header is all zero: the end of the
    /// written part of the segment (or a torn write that left zeros).
    End,
    /// Something is there but it is not a valid record.
    Invalid(String),
}

/// Reads the record at `offset`, verifying every field and the CRC.
pub fn read_frame(segment: &[u8], offset: u64) -> Result<Frame<'_>, FrameProblem> {
    let start = usize::try_from(offset).map_err(|_| FrameProblem::End)?;
    let header =
        start.checked_add(RECORD_HEADER_LEN).and_then(|end| segment.get(start..end)).ok_or(FrameProblem::End)?;
    if header.iter().all(|&b| b == 0) {
        return Err(FrameProblem::End);
    }
    let fields = check_header_fields(header).map_err(FrameProblem::Invalid)?;
    let payload = payload_slice(segment, start, fields.payload_len)?;
    let stored = read_u32(header, 4).unwrap_or_default();
    let mut hasher = header_hasher(header);
    hasher.update(payload);
    let computed = hasher.finalize();
    if stored != computed {
        return Err(FrameProblem::Invalid(format!(
            "record CRC mismatch (stored {stored:#010x}, computed {computed:#010x})"
        )));
    }
    let end = offset.checked_add(RECORD_HEADER_LEN as u64 + u64::from(fields.payload_len)).ok_or(FrameProblem::End)?;
    Ok(Frame { meta: fields.meta, payload, end })
}

/// Cheap pre-CRC checks, used on their own by the proof scan to skip most candidates.
pub fn check_header_fields(header: &[u8]) -> Result<HeaderFields, String> {
    let kind_code = header.get(8).copied().unwrap_or_default();
    let Some(kind) = RecordKind::from_code(kind_code) else {
        return Err(format!("unknown record kind {kind_code}"));
    };
    if header.get(9..16).is_none_or(|reserved| reserved.iter().any(|&b| b != 0)) {
        return Err("reserved record header bytes are not zero".into());
    }
    let seq = read_u64(header, 16).unwrap_or_default();
    let durable_seq = read_u64(header, 24).unwrap_or_default();
    if durable_seq > seq {
        return Err(format!("durable sequence {durable_seq} is beyond the record's own sequence {seq}"));
    }
    Ok(HeaderFields {
        payload_len: read_u32(header, 0).unwrap_or_default(),
        meta: RecordMeta { kind, seq, durable_seq },
    })
}

/// Header fields that passed [`check_header_fields`].
#[derive(Debug, Clone, Copy)]
pub struct HeaderFields {
    /// Payload length from the header.
    pub payload_len: u32,
    /// Kind and sequence numbers.
    pub meta: RecordMeta,
}

fn payload_slice(segment: &[u8], start: usize, payload_len: u32) -> Result<&[u8], FrameProblem> {
    let payload_start = start.saturating_add(RECORD_HEADER_LEN);
    let remaining = segment.len().saturating_sub(payload_start);
    let len = usize::try_from(payload_len).unwrap_or(usize::MAX);
    if len > remaining {
        return Err(FrameProblem::Invalid(format!(
            "record length {payload_len} exceeds the {remaining} bytes left in the segment"
        )));
    }
    segment.get(payload_start..payload_start.saturating_add(len)).ok_or(FrameProblem::End)
}

/// CRC state after the header's covered fields: length (bytes 0..4) and bytes 8..32.
fn header_hasher(header: &[u8]) -> Hasher {
    let mut hasher = Hasher::new();
    hasher.update(header.get(0..4).unwrap_or_default());
    hasher.update(header.get(8..RECORD_HEADER_LEN).unwrap_or_default());
    hasher
}

fn put(out: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(dst) = out.get_mut(at..at.saturating_add(bytes.len())) {
        dst.copy_from_slice(bytes);
    }
}

/// Little-endian u32 at `at`, if the bytes are there.
pub(crate) fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let raw = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(raw.try_into().ok()?))
}

/// Little-endian u64 at `at`, if the bytes are there.
pub(crate) fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let raw = bytes.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(raw.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_header_round_trips_and_rejects_every_single_bit_flip() {
        let header = SegmentHeader { segment_id: 7, first_seq: 1234 };
        let bytes = header.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(header));
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes;
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(SegmentHeader::decode(&flipped).is_err(), "bit {bit} went unnoticed");
        }
    }

    #[test]
    fn zero_filled_space_is_the_end_not_a_record() {
        let zeros = [0u8; 64];
        assert_eq!(read_frame(&zeros, 0), Err(FrameProblem::End));
        assert!(SegmentHeader::decode(&zeros).is_err());
    }

    #[test]
    fn record_round_trips_from_parts() {
        let meta = RecordMeta { kind: RecordKind::Commit, seq: 9, durable_seq: 4 };
        let parts: [&[u8]; 2] = [b"abc", b"defg"];
        let header = encode_record_header(meta, &parts).unwrap();
        let mut segment = header.to_vec();
        segment.extend_from_slice(b"abcdefg");
        let frame = read_frame(&segment, 0).unwrap();
        assert_eq!(frame.meta, meta);
        assert_eq!(frame.payload, b"abcdefg");
        assert_eq!(frame.end, 39);
    }

    #[test]
    fn a_length_beyond_the_segment_is_refused_before_use() {
        let meta = RecordMeta { kind: RecordKind::Intent, seq: 0, durable_seq: 0 };
        let header = encode_record_header(meta, &[&[1u8; 100]]).unwrap();
        let problem = read_frame(&header, 0).unwrap_err();
        assert!(matches!(problem, FrameProblem::Invalid(p) if p.contains("exceeds")));
    }

    #[test]
    fn file_names_sort_like_ids_and_parse_back() {
        assert_eq!(segment_file_name(42), "00000000000000000042.ckpt");
        assert_eq!(parse_segment_file_name(&segment_file_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_segment_file_name("LOCK"), None);
        assert_eq!(parse_segment_file_name("42.ckpt"), None);
    }
}
