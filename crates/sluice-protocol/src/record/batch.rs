//! Record batches, magic 2 (Kafka 0.11 and later).
//!
//! ```text
//! baseOffset: int64   batchLength: int32   partitionLeaderEpoch: int32   magic: int8 (2)
//! crc: uint32 (CRC-32C of attributes..end)   attributes: int16   lastOffsetDelta: int32
//! baseTimestamp: int64   maxTimestamp: int64   producerId: int64   producerEpoch: int16
//! baseSequence: int32   recordsCount: int32   records (possibly compressed)
//!
//! record: length: varint  attributes: int8  timestampDelta: varlong  offsetDelta: varint
//!         keyLength: varint  key  valueLength: varint  value  headersCount: varint
//!         header: keyLength: varint  key  valueLength: varint  value
//! ```

use bytes::{BufMut, Bytes, BytesMut};

use super::view::{Entry, Span};
use super::{be_i16, be_i32, be_i64, BatchHeader, DecodeOptions, Record, RecordBatch, ATTR_LOG_APPEND_TIME};
use crate::compression::{compress, decompress, Compression};
use crate::error::{DecodeError, EncodeError};
use crate::primitives::{put_varint, put_varlong, varint_from_slice, varint_len, varlong_from_slice, varlong_len};

/// Length of the fixed batch header, up to and including the records count.
pub const BATCH_HEADER_LEN: usize = 61;
const CRC_OFFSET: usize = 17;
const ATTRIBUTES_OFFSET: usize = 21;
/// The smallest possible record: seven one-byte fields.
const MIN_RECORD_LEN: usize = 7;

/// Decodes one whole magic-2 batch from `entry` (exactly the batch's bytes), appending it to `out`
/// unless all its records are before `options.min_offset`. Returns the offset after the batch.
pub(crate) fn decode_batch(
    entry: &Bytes,
    options: &DecodeOptions,
    out: &mut Vec<RecordBatch>,
) -> Result<i64, DecodeError> {
    let header = decode_header(entry)?;
    let next_offset = header.last_offset().saturating_add(1);
    if header.last_offset() < options.min_offset {
        return Ok(next_offset);
    }
    let batch = decode_body(entry, header, options)
        .map_err(|e| DecodeError::InBatch { base_offset: header.base_offset, source: Box::new(e) })?;
    if !batch.is_empty() {
        out.push(batch);
    }
    Ok(next_offset)
}

fn decode_header(entry: &[u8]) -> Result<BatchHeader, DecodeError> {
    let field = |value: Option<i64>| {
        value.ok_or(DecodeError::UnexpectedEof {
            what: "record batch header",
            needed: BATCH_HEADER_LEN,
            remaining: entry.len(),
        })
    };
    let i16_at = |at| field(be_i16(entry, at).map(i64::from));
    let i32_at = |at| field(be_i32(entry, at).map(i64::from));
    let i64_at = |at| field(be_i64(entry, at));
    // Every field below was read through a checked getter; the casts narrow values that were
    // just widened from the same width.
    Ok(BatchHeader {
        base_offset: i64_at(0)?,
        partition_leader_epoch: i32_at(12)? as i32,
        magic: 2,
        attributes: i16_at(ATTRIBUTES_OFFSET)? as i16,
        last_offset_delta: i32_at(23)? as i32,
        base_timestamp: i64_at(27)?,
        max_timestamp: i64_at(35)?,
        producer_id: i64_at(43)?,
        producer_epoch: i16_at(51)? as i16,
        base_sequence: i32_at(53)? as i32,
    })
}

fn decode_body(entry: &Bytes, header: BatchHeader, options: &DecodeOptions) -> Result<RecordBatch, DecodeError> {
    if options.verify_crc {
        check_crc(entry, header.base_offset)?;
    }
    let count = be_i32(entry, 57).unwrap_or(0);
    let count = usize::try_from(count).map_err(|_| DecodeError::InvalidLength {
        what: "records count",
        length: i64::from(count),
        reason: "negative",
    })?;
    let compression = Compression::from_attributes(header.attributes)?;
    let body = entry.get(BATCH_HEADER_LEN..).map(|b| entry.slice_ref(b)).unwrap_or_default();
    let data = match compression {
        Compression::None => body,
        codec => Bytes::from(decompress(codec, &body, options.max_decompressed_bytes)?),
    };
    if u32::try_from(data.len()).is_err() {
        return Err(DecodeError::InvalidLength {
            what: "record batch",
            length: data.len() as i64,
            reason: "over 4 GiB of records",
        });
    }
    let context = RecordContext {
        base_offset: header.base_offset,
        base_timestamp: header.base_timestamp,
        log_append_time: (header.attributes & ATTR_LOG_APPEND_TIME != 0).then_some(header.max_timestamp),
        min_offset: options.min_offset,
    };
    let entries = decode_entries(&data, count, &context)?;
    Ok(RecordBatch::new(header, data, entries))
}

fn check_crc(entry: &[u8], base_offset: i64) -> Result<(), DecodeError> {
    let stored = be_i32(entry, CRC_OFFSET).unwrap_or(0) as u32;
    let computed = crc32c::crc32c(entry.get(ATTRIBUTES_OFFSET..).unwrap_or_default());
    if stored != computed {
        return Err(DecodeError::CrcMismatch { base_offset, stored, computed });
    }
    Ok(())
}

/// What every record of a batch needs from its header.
struct RecordContext {
    base_offset: i64,
    base_timestamp: i64,
    log_append_time: Option<i64>,
    min_offset: i64,
}

/// Validates `count` records in `data` (whose length fits a u32) and indexes them.
fn decode_entries(data: &[u8], count: usize, context: &RecordContext) -> Result<Vec<Entry>, DecodeError> {
    // The count comes from the wire: bound the allocation by what the bytes can actually hold.
    let mut entries = Vec::with_capacity(count.min(data.len() / MIN_RECORD_LEN));
    let mut reader = SliceReader { data, position: 0, end: data.len() };
    for index in 0..count {
        let entry = reader.record(context).map_err(|e| DecodeError::InField {
            structure: "RecordBatch",
            field: "records",
            source: Box::new(DecodeError::InvalidValue {
                what: "record",
                detail: format!("record {index} of {count}: {e}"),
            }),
        })?;
        if entry.offset >= context.min_offset {
            entries.push(entry);
        }
    }
    if reader.position != data.len() {
        return Err(DecodeError::TrailingBytes {
            what: "record batch records",
            remaining: data.len() - reader.position,
        });
    }
    Ok(entries)
}

/// A cursor over a batch's record bytes. Reads never go past `end` (the end of the current
/// record, or of the data), and `position <= end <= data.len() <= u32::MAX`.
struct SliceReader<'a> {
    data: &'a [u8],
    position: usize,
    end: usize,
}

impl SliceReader<'_> {
    fn rest(&self) -> &[u8] {
        self.data.get(self.position..self.end).unwrap_or_default()
    }

    fn varint(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        let (value, used) = varint_from_slice(self.rest(), what)?;
        self.position += used;
        Ok(value)
    }

    fn varlong(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        let (value, used) = varlong_from_slice(self.rest(), what)?;
        self.position += used;
        Ok(value)
    }

    /// A length-prefixed byte string; a length of -1 is null.
    fn span(&mut self, what: &'static str) -> Result<Span, DecodeError> {
        let len = self.varint(what)?;
        if len == -1 {
            return Ok(Span::NULL);
        }
        let size = usize::try_from(len).map_err(|_| DecodeError::InvalidLength {
            what,
            length: i64::from(len),
            reason: "negative",
        })?;
        let remaining = self.end - self.position;
        if size > remaining {
            return Err(DecodeError::UnexpectedEof { what, needed: size, remaining });
        }
        // position < data.len() <= u32::MAX, checked when the batch was decompressed.
        let span = Span { start: self.position as u32, len };
        self.position += size;
        Ok(span)
    }

    fn record(&mut self, context: &RecordContext) -> Result<Entry, DecodeError> {
        let length = self.varint("record length")?;
        let length = usize::try_from(length).map_err(|_| DecodeError::InvalidLength {
            what: "record",
            length: i64::from(length),
            reason: "negative",
        })?;
        let remaining = self.data.len() - self.position;
        if length > remaining {
            return Err(DecodeError::UnexpectedEof { what: "record", needed: length, remaining });
        }
        let end = self.position + length;
        self.end = end;
        let fields = self.record_fields(context);
        self.end = self.data.len();
        let entry = fields?;
        if self.position != end {
            return Err(DecodeError::InvalidLength {
                what: "record",
                length: length as i64,
                reason: "the record's fields do not add up to its declared length",
            });
        }
        Ok(entry)
    }

    /// The fields of one record, read within `self.end`.
    fn record_fields(&mut self, context: &RecordContext) -> Result<Entry, DecodeError> {
        if self.position >= self.end {
            return Err(DecodeError::UnexpectedEof { what: "record attributes", needed: 1, remaining: 0 });
        }
        self.position += 1; // record attributes: unused since magic 2
        let timestamp_delta = self.varlong("timestamp delta")?;
        let offset_delta = self.varint("offset delta")?;
        let key = self.span("key")?;
        let value = self.span("value")?;
        let (headers_start, header_count) = self.headers()?;
        Ok(Entry {
            offset: context.base_offset.wrapping_add(i64::from(offset_delta)),
            timestamp: context.log_append_time.unwrap_or(context.base_timestamp.wrapping_add(timestamp_delta)),
            key,
            value,
            headers_start,
            header_count,
        })
    }

    /// Validates the headers (non-null UTF-8 keys, lengths in range) and returns where they
    /// start and how many there are.
    fn headers(&mut self) -> Result<(u32, u32), DecodeError> {
        let count = self.varint("headers count")?;
        let count = u32::try_from(count).map_err(|_| DecodeError::InvalidLength {
            what: "headers",
            length: i64::from(count),
            reason: "negative",
        })?;
        let start = self.position as u32;
        for _ in 0..count {
            let key = self.span("header key")?;
            let key = key.get_in(self.data).ok_or(DecodeError::InvalidLength {
                what: "header key",
                length: -1,
                reason: "header keys cannot be null",
            })?;
            if let Err(e) = std::str::from_utf8(key) {
                return Err(DecodeError::InvalidUtf8 { what: "header key", valid_up_to: e.valid_up_to() });
            }
            self.span("header value")?;
        }
        Ok((start, count))
    }
}

// -------------------------------------------------------------------------------------------------
// Encoding
// -------------------------------------------------------------------------------------------------

/// Appends a magic-2 record batch of `records` to `out`, compressed with the codec in the
/// header's attributes.
///
/// The header fields are written as given, except those the records determine, which are derived
/// from them when there are any: the base timestamp (the first record's), the max timestamp, and
/// the last offset delta. Record offsets must be at or after the base offset and within `i32` of
/// it.
pub fn encode_batch(batch: &BatchHeader, records: &[Record], out: &mut BytesMut) -> Result<(), EncodeError> {
    let compression = Compression::from_attributes(batch.attributes)
        .map_err(|e| EncodeError::InvalidValue { what: "record batch attributes", detail: e.to_string() })?;
    let header = derived_header(batch, records)?;
    let start = out.len();
    let result = put_batch(out, batch, records, &header, compression).and_then(|()| finish_batch(out, start));
    if result.is_err() {
        // Leave no half-written batch behind: callers append several batches to one buffer.
        out.truncate(start);
    }
    result
}

fn put_batch(
    out: &mut BytesMut,
    batch: &BatchHeader,
    records: &[Record],
    header: &DerivedHeader,
    compression: Compression,
) -> Result<(), EncodeError> {
    put_header(out, batch, header);
    match compression {
        Compression::None => put_records(out, batch.base_offset, records, header)?,
        codec => {
            let mut plain = Vec::with_capacity(estimate_records_len(records));
            put_records(&mut plain, batch.base_offset, records, header)?;
            let mut packed = Vec::with_capacity(plain.len() / 2 + 64);
            compress(codec, &plain, &mut packed)?;
            out.put_slice(&packed);
        }
    }
    Ok(())
}

/// Header fields derived from the records.
struct DerivedHeader {
    base_timestamp: i64,
    max_timestamp: i64,
    last_offset_delta: i32,
    count: i32,
}

fn derived_header(batch: &BatchHeader, records: &[Record]) -> Result<DerivedHeader, EncodeError> {
    let count = i32::try_from(records.len()).map_err(|_| EncodeError::TooLong {
        what: "record batch",
        length: records.len(),
        max: i32::MAX as usize,
    })?;
    let Some(first) = records.first() else {
        return Ok(DerivedHeader {
            base_timestamp: batch.base_timestamp,
            max_timestamp: batch.max_timestamp,
            last_offset_delta: batch.last_offset_delta,
            count,
        });
    };
    let mut last_offset_delta = batch.last_offset_delta;
    let mut max_timestamp = i64::MIN;
    for record in records {
        last_offset_delta = last_offset_delta.max(offset_delta(batch.base_offset, record.offset)?);
        max_timestamp = max_timestamp.max(record.timestamp);
    }
    Ok(DerivedHeader { base_timestamp: first.timestamp, max_timestamp, last_offset_delta, count })
}

fn offset_delta(base_offset: i64, offset: i64) -> Result<i32, EncodeError> {
    offset.checked_sub(base_offset).and_then(|d| i32::try_from(d).ok()).filter(|d| *d >= 0).ok_or_else(|| {
        EncodeError::InvalidValue {
            what: "record offset",
            detail: format!("offset {offset} is not within 0..=i32::MAX of the batch's base offset {base_offset}"),
        }
    })
}

fn put_header(out: &mut BytesMut, batch: &BatchHeader, header: &DerivedHeader) {
    out.put_i64(batch.base_offset);
    out.put_i32(0); // batch length, filled in by finish_batch
    out.put_i32(batch.partition_leader_epoch);
    out.put_i8(2);
    out.put_u32(0); // CRC, filled in by finish_batch
    out.put_i16(batch.attributes);
    out.put_i32(header.last_offset_delta);
    out.put_i64(header.base_timestamp);
    out.put_i64(header.max_timestamp);
    out.put_i64(batch.producer_id);
    out.put_i16(batch.producer_epoch);
    out.put_i32(batch.base_sequence);
    out.put_i32(header.count);
}

fn estimate_records_len(records: &[Record]) -> usize {
    records.iter().map(|r| 16 + r.key.as_ref().map_or(0, Bytes::len) + r.value.as_ref().map_or(0, Bytes::len)).sum()
}

fn put_records(
    out: &mut impl BufMut,
    base_offset: i64,
    records: &[Record],
    header: &DerivedHeader,
) -> Result<(), EncodeError> {
    for record in records {
        let offset_delta = offset_delta(base_offset, record.offset)?;
        let timestamp_delta = record.timestamp.wrapping_sub(header.base_timestamp);
        let body_len = record_body_len(record, timestamp_delta, offset_delta)?;
        put_varint(out, body_len);
        out.put_i8(0);
        put_varlong(out, timestamp_delta);
        put_varint(out, offset_delta);
        put_nullable(out, record.key.as_deref());
        put_nullable(out, record.value.as_deref());
        put_varint(out, record.headers.len() as i32); // bounded by record_body_len
        for h in &record.headers {
            put_nullable(out, Some(&h.key));
            put_nullable(out, h.value.as_deref());
        }
    }
    Ok(())
}

fn put_nullable(out: &mut impl BufMut, value: Option<&[u8]>) {
    match value {
        // Lengths were checked to fit an i32 by record_body_len.
        Some(bytes) => {
            put_varint(out, bytes.len() as i32);
            out.put_slice(bytes);
        }
        None => put_varint(out, -1),
    }
}

fn nullable_len(value: Option<&[u8]>) -> Result<usize, EncodeError> {
    match value {
        None => Ok(1),
        Some(bytes) => {
            let len = i32::try_from(bytes.len()).map_err(|_| EncodeError::TooLong {
                what: "record field",
                length: bytes.len(),
                max: i32::MAX as usize,
            })?;
            Ok(varint_len(len) + bytes.len())
        }
    }
}

fn record_body_len(record: &Record, timestamp_delta: i64, offset_delta: i32) -> Result<i32, EncodeError> {
    let headers = i32::try_from(record.headers.len()).map_err(|_| EncodeError::TooLong {
        what: "record headers",
        length: record.headers.len(),
        max: i32::MAX as usize,
    })?;
    let mut len = 1 + varlong_len(timestamp_delta) + varint_len(offset_delta) + varint_len(headers);
    len += nullable_len(record.key.as_deref())? + nullable_len(record.value.as_deref())?;
    for h in &record.headers {
        len += nullable_len(Some(&h.key))? + nullable_len(h.value.as_deref())?;
    }
    i32::try_from(len).map_err(|_| EncodeError::TooLong { what: "record", length: len, max: i32::MAX as usize })
}

/// Fills in the batch length and CRC of the batch that starts at `start`.
fn finish_batch(out: &mut BytesMut, start: usize) -> Result<(), EncodeError> {
    let total = out.len() - start;
    let length = i32::try_from(total - 12).map_err(|_| EncodeError::TooLong {
        what: "record batch",
        length: total,
        max: i32::MAX as usize,
    })?;
    if let Some(field) = out.get_mut(start + 8..start + 12) {
        field.copy_from_slice(&length.to_be_bytes());
    }
    let crc = crc32c::crc32c(out.get(start + ATTRIBUTES_OFFSET..).unwrap_or_default());
    if let Some(field) = out.get_mut(start + CRC_OFFSET..start + ATTRIBUTES_OFFSET) {
        field.copy_from_slice(&crc.to_be_bytes());
    }
    Ok(())
}
