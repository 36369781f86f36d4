//! Records and record batches: the payload of Produce requests and Fetch responses.
//!
//! Spec: "Record Batch", "Record" and "Old Message Format" in Kafka's `implementation.html`.
//!
//! [`decode_records`] walks a record set (the `records` bytes of a fetched partition) batch by
//! batch. Magic 2 batches are [record batches](batch); magic 0 and 1 entries are [legacy message
//! sets](legacy), read for old topics. Keys, values and header values are [`Bytes`] slices of the
//! input, or of the decompressed buffer for compressed batches: no per-record copies. Batches
//! wholly before [`DecodeOptions::min_offset`] are skipped from their 61-byte header alone, without
//! checking their CRC or decompressing them. A truncated last batch (brokers cut fetch responses at
//! `max_bytes`) is reported in [`DecodedRecords::partial_bytes`], not as an error.

pub mod batch;
pub mod legacy;
mod view;

use bytes::Bytes;

use crate::compression::Compression;
use crate::error::DecodeError;

pub use batch::{encode_batch, set_producer_state, BatchBuilder};
pub use view::{Headers, RecordBatch, RecordRef};

/// Bytes before a batch's magic byte: base offset (8), length (4), leader epoch or CRC (4).
const MAGIC_OFFSET: usize = 16;
/// Bytes before the length field's end: base offset (8) + length (4).
const LOG_OVERHEAD: usize = 12;

/// One record, owned, with its offset and timestamp made absolute: what producers hand to
/// [`encode_batch`], and what [`RecordRef::to_record`] gives back.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// The record's offset in its partition.
    pub offset: i64,
    /// Milliseconds since the epoch: the creation time, or the broker's append time if the batch
    /// says so (see [`BatchHeader::timestamp_type`]).
    pub timestamp: i64,
    /// The key, or `None` for a null key.
    pub key: Option<Bytes>,
    /// The value, or `None` for a null value (a tombstone).
    pub value: Option<Bytes>,
    /// The headers, in order; keys may repeat.
    pub headers: Vec<RecordHeader>,
}

/// A record header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecordHeader {
    /// The header key's UTF-8 bytes (checked on decode).
    pub key: Bytes,
    /// The header value, or `None` for null.
    pub value: Option<Bytes>,
}

impl RecordHeader {
    /// A header from a string key and an optional value.
    pub fn new(key: &str, value: Option<&[u8]>) -> Self {
        Self { key: Bytes::copy_from_slice(key.as_bytes()), value: value.map(Bytes::copy_from_slice) }
    }

    /// The key as a string (always valid UTF-8 for decoded headers).
    pub fn key_str(&self) -> &str {
        std::str::from_utf8(&self.key).unwrap_or("")
    }
}

/// Whether record timestamps are set by the producer or by the broker on append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimestampType {
    /// The producer's creation time.
    #[default]
    CreateTime,
    /// The broker's append time (the topic's `message.timestamp.type=LogAppendTime`).
    LogAppendTime,
}

/// The kind of a control record (the markers transactions write).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlRecordType {
    /// The transaction was aborted.
    Abort,
    /// The transaction was committed.
    Commit,
    /// A type this codec does not know.
    Unknown(i16),
}

/// The header of a record batch (or of a legacy message, presented in the same shape).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record.
    pub base_offset: i64,
    /// The partition leader epoch the batch was written in (-1 if unknown or legacy).
    pub partition_leader_epoch: i32,
    /// Format version: 2 for record batches, 0 or 1 for legacy messages.
    pub magic: i8,
    /// Attribute bits: compression (0-2), timestamp type (3), transactional (4), control (5),
    /// delete horizon (6).
    pub attributes: i16,
    /// Offset of the last record minus the base offset.
    pub last_offset_delta: i32,
    /// Timestamp of the first record (the base for record timestamp deltas).
    pub base_timestamp: i64,
    /// The largest timestamp in the batch.
    pub max_timestamp: i64,
    /// The idempotent/transactional producer id, or -1.
    pub producer_id: i64,
    /// The producer epoch, or -1.
    pub producer_epoch: i16,
    /// Sequence number of the first record, or -1.
    pub base_sequence: i32,
}

impl Default for BatchHeader {
    fn default() -> Self {
        Self {
            base_offset: 0,
            partition_leader_epoch: -1,
            magic: 2,
            attributes: 0,
            last_offset_delta: 0,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
        }
    }
}

/// Attribute bit: LogAppendTime timestamps.
pub const ATTR_LOG_APPEND_TIME: i16 = 1 << 3;
/// Attribute bit: part of a transaction.
pub const ATTR_TRANSACTIONAL: i16 = 1 << 4;
/// Attribute bit: a control batch (transaction markers).
pub const ATTR_CONTROL: i16 = 1 << 5;
/// Attribute bit: the base timestamp is a delete horizon (KIP-534).
pub const ATTR_DELETE_HORIZON: i16 = 1 << 6;

impl BatchHeader {
    /// A header for a new batch compressed with `codec` (the rest at defaults).
    pub fn with_compression(codec: Compression) -> Self {
        Self { attributes: codec.attribute_bits(), ..Self::default() }
    }

    /// The batch's compression codec (unknown bits read as an error at decode time).
    pub fn compression(&self) -> Compression {
        Compression::from_attributes(self.attributes).unwrap_or_default()
    }

    /// Creation time or log-append time.
    pub fn timestamp_type(&self) -> TimestampType {
        if self.attributes & ATTR_LOG_APPEND_TIME != 0 {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        }
    }

    /// Whether the batch belongs to a transaction.
    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTR_TRANSACTIONAL != 0
    }

    /// Whether the batch holds control records (transaction markers) rather than data.
    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }

    /// The offset of the batch's last record (records may have been compacted away, so this can
    /// be past the last record present).
    pub fn last_offset(&self) -> i64 {
        self.base_offset.saturating_add(i64::from(self.last_offset_delta))
    }
}

/// How to decode a record set.
///
/// Fields may be added in later versions (`#[non_exhaustive]`): start from [`Default`] and set the
/// fields you need.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct DecodeOptions {
    /// Check each batch's CRC (CRC-32C for v2, CRC-32 for legacy). On by default; turning it off
    /// is only for fuzzing the structures the checksum would otherwise hide.
    pub verify_crc: bool,
    /// The most bytes one compressed batch may expand to.
    pub max_decompressed_bytes: usize,
    /// The most bytes the compressed batches of the record set may expand to together: decoding
    /// stops before a batch that would take them past it, and the set ends there (its
    /// `next_offset` is where to fetch again), so a small fetch of many highly compressed
    /// batches cannot expand without bound. The first batch may always expand to
    /// `max_decompressed_bytes`, so that decoding goes on however low this is.
    pub max_total_decompressed_bytes: usize,
    /// Records before this offset are dropped, and batches wholly before it are skipped unread.
    pub min_offset: i64,
}

/// The default decompression limit: 64 MiB per batch (Kafka's default `max.message.bytes` is
/// 1 MiB, so this is generous).
pub const DEFAULT_MAX_DECOMPRESSED_BYTES: usize = 64 * 1024 * 1024;

impl Default for DecodeOptions {
    fn default() -> Self {
        Self {
            verify_crc: true,
            max_decompressed_bytes: DEFAULT_MAX_DECOMPRESSED_BYTES,
            max_total_decompressed_bytes: DEFAULT_MAX_DECOMPRESSED_BYTES,
            min_offset: i64::MIN,
        }
    }
}

/// The batches of a record set.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DecodedRecords {
    /// Whole batches, in order. Batches skipped by `min_offset` or left empty after dropping
    /// records before it are not included.
    pub batches: Vec<RecordBatch>,
    /// Bytes of a truncated batch at the end (0 if the set ended on a batch boundary). Kafka
    /// truncates the last batch of a fetch at the size limit; fetch again from the next offset,
    /// or with a larger limit if no whole batch fit.
    pub partial_bytes: usize,
    /// The offset after the last batch read or skipped, where the next fetch should start; `None`
    /// if the set held no whole batch.
    pub next_offset: Option<i64>,
    /// Bytes the set's compressed batches expanded to (what
    /// [`DecodeOptions::max_total_decompressed_bytes`] bounds).
    pub decompressed_bytes: usize,
}

impl DecodedRecords {
    /// The data records of all batches, in order. Control batches (transaction markers) are
    /// skipped, as Kafka consumers skip them; they stay in [`DecodedRecords::batches`] for callers
    /// that track transactions.
    pub fn records(&self) -> impl Iterator<Item = RecordRef<'_>> {
        self.batches.iter().filter(|b| !b.header.is_control()).flat_map(RecordBatch::records)
    }
}

/// Decodes a record set: whole batches of any magic, a truncated tail reported as partial; the
/// set ends early where its compressed batches would expand past
/// `options.max_total_decompressed_bytes`.
pub fn decode_records(data: &Bytes, options: &DecodeOptions) -> Result<DecodedRecords, DecodeError> {
    let mut out = DecodedRecords::default();
    let mut position = 0usize;
    while let Some(header) = data.get(position..) {
        let Some(total) = entry_len(header)? else {
            out.partial_bytes = header.len();
            break;
        };
        let Some(entry) = data.get(position..position + total) else {
            out.partial_bytes = header.len();
            break;
        };
        let entry = data.slice_ref(entry);
        let first = out.next_offset.is_none();
        let room = options.max_total_decompressed_bytes.saturating_sub(out.decompressed_bytes);
        let limited = !first && room < options.max_decompressed_bytes;
        let entry_options = match limited {
            true => DecodeOptions { max_decompressed_bytes: room, ..*options },
            false => *options,
        };
        let before = out.batches.len();
        let next = match decode_entry(&entry, &entry_options, &mut out.batches) {
            Ok(next) => next,
            Err(e) if limited && matches!(e.root_cause(), DecodeError::DecompressedTooLarge { .. }) => {
                // Past the total: the set ends before this batch.
                out.batches.truncate(before);
                break;
            }
            Err(e) => return Err(e.at(position, data.len())),
        };
        let new = out.batches.get(before..).unwrap_or_default();
        out.decompressed_bytes += new
            .iter()
            .filter(|b| b.header.compression() != Compression::None)
            .map(RecordBatch::data_len)
            .sum::<usize>();
        out.next_offset = Some(next);
        position += total;
    }
    Ok(out)
}

/// The total length of the entry at the front of `data` (batch or legacy message, with its
/// 12-byte offset and length prefix), or `None` if even that prefix is cut off.
fn entry_len(data: &[u8]) -> Result<Option<usize>, DecodeError> {
    let Some(size) = be_i32(data, 8) else {
        return Ok(None);
    };
    // A legacy message is at least 14 bytes after the length (crc, magic, attributes, key and
    // value lengths); a v2 batch at least 49. Anything shorter can never be valid.
    if size < 14 {
        return Err(DecodeError::InvalidLength {
            what: "record batch",
            length: i64::from(size),
            reason: "shorter than any batch header",
        });
    }
    Ok(Some(LOG_OVERHEAD + size as usize))
}

/// The big-endian INT16 at `at`, if the slice is long enough.
pub(crate) fn be_i16(data: &[u8], at: usize) -> Option<i16> {
    let bytes = data.get(at..)?.first_chunk::<2>()?;
    Some(i16::from_be_bytes(*bytes))
}

/// The big-endian INT32 at `at`, if the slice is long enough.
pub(crate) fn be_i32(data: &[u8], at: usize) -> Option<i32> {
    let bytes = data.get(at..)?.first_chunk::<4>()?;
    Some(i32::from_be_bytes(*bytes))
}

/// The big-endian INT64 at `at`, if the slice is long enough.
pub(crate) fn be_i64(data: &[u8], at: usize) -> Option<i64> {
    let bytes = data.get(at..)?.first_chunk::<8>()?;
    Some(i64::from_be_bytes(*bytes))
}

/// Decodes one whole entry, appending its batch(es); returns the offset after it.
fn decode_entry(entry: &Bytes, options: &DecodeOptions, out: &mut Vec<RecordBatch>) -> Result<i64, DecodeError> {
    match entry.get(MAGIC_OFFSET).copied() {
        Some(2) => batch::decode_batch(entry, options, out),
        Some(magic @ (0 | 1)) => legacy::decode_message(entry, magic as i8, options, out),
        Some(other) => {
            Err(DecodeError::InvalidValue { what: "record batch magic", detail: format!("{other} is not 0, 1 or 2") })
        }
        None => {
            Err(DecodeError::UnexpectedEof { what: "record batch", needed: MAGIC_OFFSET + 1, remaining: entry.len() })
        }
    }
}

#[cfg(test)]
mod tests;
