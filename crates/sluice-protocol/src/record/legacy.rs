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

use bytes::{BufMut, Bytes, BytesMut};

use super::view::{Entry, Span};
use super::{be_i32, be_i64, BatchHeader, DecodeOptions, RecordBatch, ATTR_LOG_APPEND_TIME, LOG_OVERHEAD};
use crate::compression::{compress, decompress, Compression};
use crate::error::{DecodeError, EncodeError};

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
    let message = parse(entry, 0, entry.len(), options.verify_crc)?;
    let next_offset = message.offset.saturating_add(1);
    // A wrapper's offset is its last inner message's, so this skips whole wrappers unread.
    if message.offset < options.min_offset {
        return Ok(next_offset);
    }
    let (data, entries) = match message.compression()? {
        Compression::None => (entry.clone(), vec![message.entry(None)]),
        codec => decode_wrapper(entry, &message, codec, options)
            .map_err(|e| DecodeError::InBatch { base_offset: message.offset, source: Box::new(e) })?,
    };
    let entries: Vec<Entry> = entries.into_iter().filter(|e| e.offset >= options.min_offset).collect();
    let (Some(first), Some(last)) = (entries.first(), entries.last()) else { return Ok(next_offset) };
    let timestamp_type_bit = if magic == 1 { i16::from(message.attributes) & ATTR_LOG_APPEND_TIME } else { 0 };
    let header = BatchHeader {
        base_offset: first.offset,
        magic,
        attributes: i16::from(message.attributes & ATTR_COMPRESSION_MASK) | timestamp_type_bit,
        last_offset_delta: i32::try_from(last.offset.saturating_sub(first.offset)).unwrap_or(i32::MAX),
        base_timestamp: first.timestamp,
        max_timestamp: entries.iter().map(|e| e.timestamp).max().unwrap_or(-1),
        ..BatchHeader::default()
    };
    out.push(RecordBatch::new(header, data, entries));
    Ok(next_offset)
}

/// One parsed legacy message; key and value are spans of the buffer it was parsed from.
struct Message {
    offset: i64,
    magic: i8,
    attributes: i8,
    timestamp: i64,
    key: Span,
    value: Span,
}

impl Message {
    fn compression(&self) -> Result<Compression, DecodeError> {
        Compression::from_attributes(i16::from(self.attributes & ATTR_COMPRESSION_MASK))
    }

    fn entry(&self, timestamp_override: Option<i64>) -> Entry {
        Entry {
            offset: self.offset,
            timestamp: timestamp_override.unwrap_or(self.timestamp),
            key: self.key,
            value: self.value,
            headers_start: 0,
            header_count: 0,
        }
    }
}

/// Parses the message at `data[at..at + len]`.
fn parse(data: &[u8], at: usize, len: usize, verify_crc: bool) -> Result<Message, DecodeError> {
    if u32::try_from(data.len()).is_err() {
        return Err(DecodeError::InvalidLength {
            what: "legacy message set",
            length: data.len() as i64,
            reason: "over 4 GiB",
        });
    }
    let entry = data.get(at..at.saturating_add(len)).ok_or(DecodeError::UnexpectedEof {
        what: "legacy message",
        needed: len,
        remaining: data.len().saturating_sub(at),
    })?;
    let offset = be_i64(entry, 0).unwrap_or(-1);
    if verify_crc {
        let stored = be_i32(entry, CRC_OFFSET).unwrap_or(0) as u32;
        let computed = crc32fast::hash(entry.get(MAGIC_OFFSET..).unwrap_or_default());
        if stored != computed {
            return Err(DecodeError::CrcMismatch { base_offset: offset, stored, computed });
        }
    }
    let eof = |needed| DecodeError::UnexpectedEof { what: "legacy message", needed, remaining: entry.len() };
    let magic = *entry.get(MAGIC_OFFSET).ok_or(eof(MAGIC_OFFSET + 1))? as i8;
    let attributes = *entry.get(MAGIC_OFFSET + 1).ok_or(eof(MAGIC_OFFSET + 2))? as i8;
    let (timestamp, mut position) = match magic {
        0 => (-1, MAGIC_OFFSET + 2),
        1 => (be_i64(entry, MAGIC_OFFSET + 2).ok_or(eof(MAGIC_OFFSET + 10))?, MAGIC_OFFSET + 10),
        other => {
            return Err(DecodeError::InvalidValue {
                what: "legacy message magic",
                detail: format!("{other} is not 0 or 1"),
            });
        }
    };
    let mut field = |what: &'static str| -> Result<Span, DecodeError> {
        let field_len = be_i32(entry, position).ok_or(eof(position + 4))?;
        position += 4;
        if field_len == -1 {
            return Ok(Span::NULL);
        }
        let size = usize::try_from(field_len).map_err(|_| DecodeError::InvalidLength {
            what,
            length: i64::from(field_len),
            reason: "negative",
        })?;
        if size > entry.len() - position {
            return Err(DecodeError::UnexpectedEof { what, needed: size, remaining: entry.len() - position });
        }
        // at + position <= data.len() <= u32::MAX, checked above.
        let span = Span { start: (at + position) as u32, len: field_len };
        position += size;
        Ok(span)
    };
    let key = field("key")?;
    let value = field("value")?;
    if position != entry.len() {
        return Err(DecodeError::TrailingBytes { what: "legacy message", remaining: entry.len() - position });
    }
    Ok(Message { offset, magic, attributes, timestamp, key, value })
}

/// Decompresses a wrapper's inner message set, returning it and its messages' entries with
/// absolute offsets.
fn decode_wrapper(
    entry: &Bytes,
    wrapper: &Message,
    codec: Compression,
    options: &DecodeOptions,
) -> Result<(Bytes, Vec<Entry>), DecodeError> {
    let Some(value) = wrapper.value.get_in(entry) else {
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
        let message = parse(&inner, position, total, options.verify_crc)?;
        if message.compression()? != Compression::None {
            return Err(DecodeError::InvalidValue { what: "inner message", detail: "nested compression".into() });
        }
        if message.magic != wrapper.magic {
            return Err(DecodeError::InvalidValue {
                what: "inner message",
                detail: format!("magic {} inside a wrapper of magic {}", message.magic, wrapper.magic),
            });
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
    let entries =
        messages.iter().map(|m| Entry { offset: m.offset.wrapping_add(shift), ..m.entry(log_append_time) }).collect();
    Ok((inner, entries))
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
