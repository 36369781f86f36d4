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
/// it. On error `out` is left as it was.
pub fn encode_batch(batch: &BatchHeader, records: &[Record], out: &mut BytesMut) -> Result<(), EncodeError> {
    let mut builder = BatchBuilder::new();
    for record in records {
        let headers: Vec<(&[u8], Option<&[u8]>)> =
            record.headers.iter().map(|h| (&h.key[..], h.value.as_deref())).collect();
        builder.append_at(
            offset_delta(batch.base_offset, record.offset)?,
            record.timestamp,
            record.key.as_deref(),
            record.value.as_deref(),
            &headers,
        )?;
    }
    builder.finish(batch, out)
}

/// Builds a record batch one record at a time, encoding each record as it is appended, so that
/// a producer keeps only the encoded bytes of what it buffers.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    /// Room for the batch header, then the records, encoded, uncompressed: an uncompressed batch
    /// is finished in place ([`BatchBuilder::finish_bytes`]).
    records: Vec<u8>,
    count: i32,
    /// The first record's timestamp: the base the others' deltas are taken from.
    base_timestamp: Option<i64>,
    max_timestamp: i64,
    last_offset_delta: i32,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl BatchBuilder {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty batch with room for `bytes` of encoded records before it grows.
    pub fn with_capacity(bytes: usize) -> Self {
        let mut records = Vec::with_capacity(BATCH_HEADER_LEN.saturating_add(bytes));
        records.resize(BATCH_HEADER_LEN, 0);
        Self { records, count: 0, base_timestamp: None, max_timestamp: 0, last_offset_delta: 0 }
    }

    /// How many records were appended.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether nothing was appended.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of encoded records so far (before compression and the 61-byte header).
    pub fn size_bytes(&self) -> usize {
        self.records.len().saturating_sub(BATCH_HEADER_LEN)
    }

    /// The encoded records, without the header room.
    fn body(&self) -> &[u8] {
        self.records.get(BATCH_HEADER_LEN..).unwrap_or_default()
    }

    /// Appends a record at the next offset (offset delta = records appended so far).
    pub fn append(
        &mut self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&[u8], Option<&[u8]>)],
    ) -> Result<(), EncodeError> {
        self.append_at(self.count, timestamp, key, value, headers)
    }

    /// Appends a record with an explicit offset delta (compacted batches leave gaps).
    pub fn append_at(
        &mut self,
        offset_delta: i32,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&[u8], Option<&[u8]>)],
    ) -> Result<(), EncodeError> {
        let count = self.count.checked_add(1).ok_or(EncodeError::TooLong {
            what: "record batch",
            length: self.count as usize,
            max: i32::MAX as usize,
        })?;
        let base_timestamp = *self.base_timestamp.get_or_insert(timestamp);
        let timestamp_delta = timestamp.wrapping_sub(base_timestamp);
        let body_len = record_body_len(key, value, headers, timestamp_delta, offset_delta)?;
        let out = &mut self.records;
        put_varint(out, body_len);
        out.put_i8(0);
        put_varlong(out, timestamp_delta);
        put_varint(out, offset_delta);
        put_nullable(out, key);
        put_nullable(out, value);
        put_varint(out, headers.len() as i32); // bounded by record_body_len
        for (header_key, header_value) in headers {
            put_nullable(out, Some(header_key));
            put_nullable(out, *header_value);
        }
        self.max_timestamp = if self.count == 0 { timestamp } else { self.max_timestamp.max(timestamp) };
        self.last_offset_delta = if self.count == 0 { offset_delta } else { self.last_offset_delta.max(offset_delta) };
        self.count = count;
        Ok(())
    }

    /// Appends the finished batch to `out`: `header`'s fields, except those the records
    /// determine (base and max timestamp, last offset delta, count) when there are any,
    /// compressed with the codec in its attributes. On error `out` is left as it was.
    pub fn finish(self, header: &BatchHeader, out: &mut BytesMut) -> Result<(), EncodeError> {
        let compression = Compression::from_attributes(header.attributes)
            .map_err(|e| EncodeError::InvalidValue { what: "record batch attributes", detail: e.to_string() })?;
        let derived = self.derived(header);
        let start = out.len();
        put_header(out, header, &derived);
        let body = match compression {
            Compression::None => Ok(()),
            codec => {
                let mut packed = Vec::with_capacity(self.size_bytes() / 2 + 64);
                compress(codec, self.body(), &mut packed).map(|()| out.put_slice(&packed))
            }
        };
        if compression == Compression::None {
            out.put_slice(self.body());
        }
        let result = body.and_then(|()| finish_batch(out, start));
        if result.is_err() {
            // Leave no half-written batch behind: callers append several batches to one buffer.
            out.truncate(start);
        }
        result
    }

    /// The finished batch as one buffer, like [`BatchBuilder::finish`]; an uncompressed batch is
    /// finished in place, without copying its records.
    pub fn finish_bytes(mut self, header: &BatchHeader) -> Result<Bytes, EncodeError> {
        let compression = Compression::from_attributes(header.attributes)
            .map_err(|e| EncodeError::InvalidValue { what: "record batch attributes", detail: e.to_string() })?;
        if compression != Compression::None {
            let mut out = BytesMut::with_capacity(self.size_bytes() / 2 + BATCH_HEADER_LEN + 64);
            self.finish(header, &mut out)?;
            return Ok(out.freeze());
        }
        let derived = self.derived(header);
        let mut head = BytesMut::with_capacity(BATCH_HEADER_LEN);
        put_header(&mut head, header, &derived);
        if let Some(room) = self.records.get_mut(..BATCH_HEADER_LEN) {
            room.copy_from_slice(&head);
        }
        seal_batch(&mut self.records)?;
        Ok(Bytes::from(self.records))
    }

    fn derived(&self, header: &BatchHeader) -> DerivedHeader {
        match self.base_timestamp {
            Some(base_timestamp) => DerivedHeader {
                base_timestamp,
                max_timestamp: self.max_timestamp,
                last_offset_delta: header.last_offset_delta.max(self.last_offset_delta),
                count: self.count,
            },
            None => DerivedHeader {
                base_timestamp: header.base_timestamp,
                max_timestamp: header.max_timestamp,
                last_offset_delta: header.last_offset_delta,
                count: 0,
            },
        }
    }
}

/// Header fields derived from the records.
struct DerivedHeader {
    base_timestamp: i64,
    max_timestamp: i64,
    last_offset_delta: i32,
    count: i32,
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

fn record_body_len(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[(&[u8], Option<&[u8]>)],
    timestamp_delta: i64,
    offset_delta: i32,
) -> Result<i32, EncodeError> {
    let count = i32::try_from(headers.len()).map_err(|_| EncodeError::TooLong {
        what: "record headers",
        length: headers.len(),
        max: i32::MAX as usize,
    })?;
    let mut len = 1 + varlong_len(timestamp_delta) + varint_len(offset_delta) + varint_len(count);
    len += nullable_len(key)? + nullable_len(value)?;
    for (header_key, header_value) in headers {
        len += nullable_len(Some(header_key))? + nullable_len(*header_value)?;
    }
    i32::try_from(len).map_err(|_| EncodeError::TooLong { what: "record", length: len, max: i32::MAX as usize })
}

const PRODUCER_ID_OFFSET: usize = 43;
const MAGIC_OFFSET: usize = 16;

/// Rewrites the producer id, epoch and base sequence of one encoded v2 batch and recomputes its
/// CRC, leaving the records as they are. An idempotent producer renumbers batches it has already
/// encoded this way when the broker has lost its producer state (KIP-360).
pub fn set_producer_state(
    batch: &mut [u8],
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
) -> Result<(), EncodeError> {
    if batch.len() < BATCH_HEADER_LEN {
        return Err(EncodeError::NotABatch { reason: "shorter than a batch header" });
    }
    if batch.get(MAGIC_OFFSET) != Some(&2) {
        return Err(EncodeError::NotABatch { reason: "magic is not 2" });
    }
    let mut state = Vec::with_capacity(14);
    state.extend_from_slice(&producer_id.to_be_bytes());
    state.extend_from_slice(&producer_epoch.to_be_bytes());
    state.extend_from_slice(&base_sequence.to_be_bytes());
    if let Some(field) = batch.get_mut(PRODUCER_ID_OFFSET..PRODUCER_ID_OFFSET + state.len()) {
        field.copy_from_slice(&state);
    }
    let crc = crc32c::crc32c(batch.get(ATTRIBUTES_OFFSET..).unwrap_or_default());
    if let Some(field) = batch.get_mut(CRC_OFFSET..ATTRIBUTES_OFFSET) {
        field.copy_from_slice(&crc.to_be_bytes());
    }
    Ok(())
}

/// Fills in the batch length and CRC of the batch that starts at `start`.
fn finish_batch(out: &mut BytesMut, start: usize) -> Result<(), EncodeError> {
    seal_batch(out.get_mut(start..).unwrap_or_default())
}

/// Fills in the length and CRC of the one batch that `batch` holds.
fn seal_batch(batch: &mut [u8]) -> Result<(), EncodeError> {
    let total = batch.len();
    let length = i32::try_from(total.saturating_sub(12)).map_err(|_| EncodeError::TooLong {
        what: "record batch",
        length: total,
        max: i32::MAX as usize,
    })?;
    if let Some(field) = batch.get_mut(8..12) {
        field.copy_from_slice(&length.to_be_bytes());
    }
    let crc = crc32c::crc32c(batch.get(ATTRIBUTES_OFFSET..).unwrap_or_default());
    if let Some(field) = batch.get_mut(CRC_OFFSET..ATTRIBUTES_OFFSET) {
        field.copy_from_slice(&crc.to_be_bytes());
    }
    Ok(())
}
