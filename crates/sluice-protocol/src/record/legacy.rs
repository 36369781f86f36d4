//! Legacy message sets, magic 0 (Kafka 0.8-0.9) and magic 1 (0.10), read so that old topics stay
//! readable. Each message is presented as a [`RecordBatch`] with `magic` 0 or 1.
//!
//! ```text
//! offset: int64  messageSize: int32  crc: uint32 (CRC-32 of magic..end)  magic: int8
//! attributes: int8 (bits 0-2 compression, bit 3 timestamp type in magic 1)
//! timestamp: int64 (magic 1 only)  key: bytes (int32 length, -1 null)  value: bytes
//! ```
//!
//! A compressed message (a "wrapper") carries a whole inner message set, compressed, as its
//! value. In magic 1 the inner offsets are relative (0, 1, ...) and the wrapper's offset is that
//! of the last inner message; in magic 0 the inner offsets are absolute.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{be_i32, be_i64, DecodeOptions, Record, RecordBatch, ATTR_LOG_APPEND_TIME, LOG_OVERHEAD};
use crate::compression::{compress, decompress, Compression};
use crate::error::{DecodeError, EncodeError};
use crate::primitives::{get_i64, get_i8, get_nullable_bytes};

const CRC_OFFSET: usize = 12;
const MAGIC_OFFSET: usize = 16;
/// The compression bits of a legacy message's attributes.
const ATTR_COMPRESSION_MASK: i8 = 0x07;

/// Decodes one whole legacy message (`entry` is exactly its bytes), appending a batch to `out`
/// unless every record in it is before `options.min_offset`. Returns the offset after it.
pub(crate) fn decode_message(
    entry: &Bytes,
    magic: i8,
    options: &DecodeOptions,
    out: &mut Vec<RecordBatch>,
) -> Result<i64, DecodeError> {
    let message = parse(entry, options.verify_crc)?;
    let next_offset = message.offset.saturating_add(1);
    // A wrapper's offset is its last inner message's, so this skips whole wrappers unread.
    if message.offset < options.min_offset {
        return Ok(next_offset);
    }
    let attributes = message.attributes;
    let timestamp_type_bit = if magic == 1 { i16::from(attributes) & ATTR_LOG_APPEND_TIME } else { 0 };
    let records = match message.compression()? {
        Compression::None => vec![message.into_record(None)],
        codec => decode_wrapper(&message, codec, options)
            .map_err(|e| DecodeError::InBatch { base_offset: message.offset, source: Box::new(e) })?,
    };
    let records: Vec<Record> = records.into_iter().filter(|r| r.offset >= options.min_offset).collect();
    let (Some(first), Some(last)) = (records.first(), records.last()) else {
        return Ok(next_offset);
    };
    out.push(RecordBatch {
        base_offset: first.offset,
        magic,
        attributes: i16::from(attributes & ATTR_COMPRESSION_MASK) | timestamp_type_bit,
        last_offset_delta: i32::try_from(last.offset.saturating_sub(first.offset)).unwrap_or(i32::MAX),
        base_timestamp: first.timestamp,
        max_timestamp: records.iter().map(|r| r.timestamp).max().unwrap_or(-1),
        records,
        ..RecordBatch::default()
    });
    Ok(next_offset)
}

/// One parsed legacy message.
struct Message {
    offset: i64,
    magic: i8,
    attributes: i8,
    timestamp: i64,
    key: Option<Bytes>,
    value: Option<Bytes>,
}

impl Message {
    fn compression(&self) -> Result<Compression, DecodeError> {
        Compression::from_attributes(i16::from(self.attributes & ATTR_COMPRESSION_MASK))
    }

    fn into_record(self, timestamp_override: Option<i64>) -> Record {
        Record {
            offset: self.offset,
            timestamp: timestamp_override.unwrap_or(self.timestamp),
            key: self.key,
            value: self.value,
            headers: Vec::new(),
        }
    }
}

fn parse(entry: &Bytes, verify_crc: bool) -> Result<Message, DecodeError> {
    let offset = be_i64(entry, 0).unwrap_or(-1);
    if verify_crc {
        let stored = be_i32(entry, CRC_OFFSET).unwrap_or(0) as u32;
        let computed = crc32fast::hash(entry.get(MAGIC_OFFSET..).unwrap_or_default());
        if stored != computed {
            return Err(DecodeError::CrcMismatch { base_offset: offset, stored, computed });
        }
    }
    let mut body = entry.slice_ref(entry.get(MAGIC_OFFSET..).unwrap_or_default());
    let magic = get_i8(&mut body)?;
    let attributes = get_i8(&mut body)?;
    let timestamp = if magic >= 1 { get_i64(&mut body)? } else { -1 };
    let key = get_nullable_bytes(&mut body, false).map_err(|e| e.in_field("Message", "key"))?;
    let value = get_nullable_bytes(&mut body, false).map_err(|e| e.in_field("Message", "value"))?;
    if body.has_remaining() {
        return Err(DecodeError::TrailingBytes { what: "legacy message", remaining: body.remaining() });
    }
    Ok(Message { offset, magic, attributes, timestamp, key, value })
}

/// Decompresses a wrapper's inner message set and returns its messages as records with absolute
/// offsets.
fn decode_wrapper(wrapper: &Message, codec: Compression, options: &DecodeOptions) -> Result<Vec<Record>, DecodeError> {
    let Some(value) = &wrapper.value else {
        return Err(DecodeError::InvalidValue { what: "compressed message", detail: "null value".into() });
    };
    let inner = Bytes::from(decompress(codec, value, options.max_decompressed_bytes)?);
    let mut messages = Vec::new();
    let mut position = 0;
    while let Some(rest) = inner.get(position..).filter(|r| !r.is_empty()) {
        let size = be_i32(rest, 8).and_then(|s| usize::try_from(s).ok()).ok_or(DecodeError::UnexpectedEof {
            what: "inner message",
            needed: LOG_OVERHEAD,
            remaining: rest.len(),
        })?;
        let total = LOG_OVERHEAD.saturating_add(size);
        let entry = rest.get(..total).ok_or(DecodeError::UnexpectedEof {
            what: "inner message",
            needed: total,
            remaining: rest.len(),
        })?;
        let message = parse(&inner.slice_ref(entry), options.verify_crc)?;
        if message.compression()? != Compression::None {
            return Err(DecodeError::InvalidValue { what: "inner message", detail: "nested compression".into() });
        }
        messages.push(message);
        position += total;
    }
    let log_append_time =
        (wrapper.magic == 1 && i16::from(wrapper.attributes) & ATTR_LOG_APPEND_TIME != 0).then_some(wrapper.timestamp);
    // Magic 1 inner offsets are relative; the wrapper holds the last message's absolute offset.
    let shift = match (wrapper.magic, messages.last()) {
        (1, Some(last)) => wrapper.offset.wrapping_sub(last.offset),
        _ => 0,
    };
    Ok(messages
        .into_iter()
        .map(|mut m| {
            m.offset = m.offset.wrapping_add(shift);
            m.into_record(log_append_time)
        })
        .collect())
}

/// Appends one legacy message to `out`. Used to build old-format test data and fuzz seeds;
/// sluice never produces legacy messages to a broker.
pub fn encode_message(
    out: &mut BytesMut,
    magic: i8,
    offset: i64,
    attributes: i8,
    timestamp: i64,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> Result<(), EncodeError> {
    let start = out.len();
    out.put_i64(offset);
    out.put_i32(0);
    out.put_u32(0);
    out.put_i8(magic);
    out.put_i8(attributes);
    if magic >= 1 {
        out.put_i64(timestamp);
    }
    for field in [key, value] {
        match field {
            Some(bytes) => {
                let len = i32::try_from(bytes.len()).map_err(|_| EncodeError::TooLong {
                    what: "legacy message field",
                    length: bytes.len(),
                    max: i32::MAX as usize,
                })?;
                out.put_i32(len);
                out.put_slice(bytes);
            }
            None => out.put_i32(-1),
        }
    }
    let size = i32::try_from(out.len() - start - LOG_OVERHEAD).map_err(|_| EncodeError::TooLong {
        what: "legacy message",
        length: out.len() - start,
        max: i32::MAX as usize,
    })?;
    if let Some(field) = out.get_mut(start + 8..start + 12) {
        field.copy_from_slice(&size.to_be_bytes());
    }
    let crc = crc32fast::hash(out.get(start + MAGIC_OFFSET..).unwrap_or_default());
    if let Some(field) = out.get_mut(start + CRC_OFFSET..start + MAGIC_OFFSET) {
        field.copy_from_slice(&crc.to_be_bytes());
    }
    Ok(())
}

/// Appends a compressed wrapper message holding `inner` (an encoded legacy message set) to `out`.
pub fn encode_wrapper(
    out: &mut BytesMut,
    magic: i8,
    offset: i64,
    timestamp: i64,
    codec: Compression,
    inner: &[u8],
) -> Result<(), EncodeError> {
    let mut packed = Vec::new();
    compress(codec, inner, &mut packed)?;
    let attributes = (codec.attribute_bits() as i8) & ATTR_COMPRESSION_MASK;
    encode_message(out, magic, offset, attributes, timestamp, None, Some(&packed))
}
