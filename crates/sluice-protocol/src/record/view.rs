//! Decoded batches as a compact index over the batch's bytes.
//!
//! Decoding validates every record and stores, per record, only its absolute offset and
//! timestamp and where its key, value and headers lie (40 bytes), next to one shared [`Bytes`]
//! holding the batch's (decompressed) record data. Reading a record borrows from that buffer
//! (`&[u8]`, no copy, no reference-count traffic); [`RecordRef::value_bytes`] and friends hand
//! out owned zero-copy `Bytes` slices when a record must outlive the batch.

use std::fmt;

use bytes::Bytes;

use super::{be_i16, BatchHeader, ControlRecordType, Record, RecordHeader};
use crate::primitives::varint_from_slice;

/// Where a key or value lies in the batch data; a negative length is null.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) start: u32,
    pub(crate) len: i32,
}

impl Span {
    pub(crate) const NULL: Self = Self { start: 0, len: -1 };

    fn range(self) -> Option<std::ops::Range<usize>> {
        let len = usize::try_from(self.len).ok()?;
        let start = self.start as usize;
        Some(start..start + len)
    }

    pub(crate) fn get_in(self, data: &[u8]) -> Option<&[u8]> {
        data.get(self.range()?)
    }

    fn bytes(self, data: &Bytes) -> Option<Bytes> {
        let range = self.range()?;
        // Spans are validated against the data when decoding; the check keeps this panic-free.
        (range.end <= data.len()).then(|| data.slice(range))
    }
}

/// One record's place in the batch data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) offset: i64,
    pub(crate) timestamp: i64,
    pub(crate) key: Span,
    pub(crate) value: Span,
    /// Where the first header starts; `header_count` headers follow it.
    pub(crate) headers_start: u32,
    pub(crate) header_count: u32,
}

/// A decoded batch: its header and its records, in offset order (records before the requested
/// start offset already dropped).
#[derive(Clone)]
pub struct RecordBatch {
    /// The batch header.
    pub header: BatchHeader,
    data: Bytes,
    entries: Vec<Entry>,
}

impl RecordBatch {
    pub(crate) fn new(header: BatchHeader, data: Bytes, entries: Vec<Entry>) -> Self {
        Self { header, data, entries }
    }

    /// Bytes of (decompressed) record data the batch holds on to.
    pub fn data_len(&self) -> usize {
        self.data.len()
    }

    /// How many records the batch holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the batch holds no records.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The records, in order.
    pub fn records(&self) -> impl ExactSizeIterator<Item = RecordRef<'_>> + DoubleEndedIterator {
        self.entries.iter().map(|entry| RecordRef { data: &self.data, entry })
    }

    /// The record at `index`.
    pub fn record(&self, index: usize) -> Option<RecordRef<'_>> {
        self.entries.get(index).map(|entry| RecordRef { data: &self.data, entry })
    }

    /// The records as owned values (keys, values and headers still zero-copy slices).
    pub fn to_records(&self) -> Vec<Record> {
        self.records().map(|r| r.to_record()).collect()
    }

    /// For a control batch, the marker type of its (single) control record: its key is
    /// version (INT16) then type (INT16, 0 abort, 1 commit).
    pub fn control_type(&self) -> Option<ControlRecordType> {
        if !self.header.is_control() {
            return None;
        }
        let key = self.record(0)?.key()?;
        Some(match be_i16(key, 2)? {
            0 => ControlRecordType::Abort,
            1 => ControlRecordType::Commit,
            other => ControlRecordType::Unknown(other),
        })
    }
}

impl PartialEq for RecordBatch {
    fn eq(&self, other: &Self) -> bool {
        self.header == other.header && self.records().eq(other.records())
    }
}

impl Eq for RecordBatch {}

impl fmt::Debug for RecordBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordBatch")
            .field("header", &self.header)
            .field("records", &self.records().collect::<Vec<_>>())
            .finish()
    }
}

/// A record inside a [`RecordBatch`], borrowed.
#[derive(Clone, Copy)]
pub struct RecordRef<'a> {
    data: &'a Bytes,
    entry: &'a Entry,
}

impl<'a> RecordRef<'a> {
    /// The record's offset in its partition.
    pub fn offset(&self) -> i64 {
        self.entry.offset
    }

    /// Milliseconds since the epoch (creation or log-append time, per the batch header).
    pub fn timestamp(&self) -> i64 {
        self.entry.timestamp
    }

    /// The key, or `None` if null.
    pub fn key(&self) -> Option<&'a [u8]> {
        self.entry.key.get_in(self.data)
    }

    /// The value, or `None` if null (a tombstone).
    pub fn value(&self) -> Option<&'a [u8]> {
        self.entry.value.get_in(self.data)
    }

    /// The key as an owned zero-copy slice of the fetched buffer.
    pub fn key_bytes(&self) -> Option<Bytes> {
        self.entry.key.bytes(self.data)
    }

    /// The value as an owned zero-copy slice of the fetched buffer.
    pub fn value_bytes(&self) -> Option<Bytes> {
        self.entry.value.bytes(self.data)
    }

    /// The headers, in order (keys may repeat).
    pub fn headers(&self) -> Headers<'a> {
        let rest = self.data.get(self.entry.headers_start as usize..).unwrap_or_default();
        Headers { rest, remaining: self.entry.header_count }
    }

    /// The record as an owned value; its byte fields are zero-copy slices.
    pub fn to_record(&self) -> Record {
        Record {
            offset: self.offset(),
            timestamp: self.timestamp(),
            key: self.key_bytes(),
            value: self.value_bytes(),
            headers: self
                .headers()
                .map(|(key, value)| RecordHeader {
                    key: self.data.slice_ref(key.as_bytes()),
                    value: value.map(|v| self.data.slice_ref(v)),
                })
                .collect(),
        }
    }
}

impl PartialEq for RecordRef<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.offset() == other.offset()
            && self.timestamp() == other.timestamp()
            && self.key() == other.key()
            && self.value() == other.value()
            && self.headers().eq(other.headers())
    }
}

impl fmt::Debug for RecordRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("offset", &self.offset())
            .field("timestamp", &self.timestamp())
            .field("key", &self.key().map(Bytes::copy_from_slice))
            .field("value", &self.value().map(Bytes::copy_from_slice))
            .field("headers", &self.headers().collect::<Vec<_>>())
            .finish()
    }
}

/// The headers of a record: `(key, value)` pairs, the value `None` when null.
#[derive(Debug, Clone)]
pub struct Headers<'a> {
    rest: &'a [u8],
    remaining: u32,
}

impl<'a> Headers<'a> {
    fn field(&mut self) -> Option<Option<&'a [u8]>> {
        let (len, used) = varint_from_slice(self.rest, "header").ok()?;
        let rest = self.rest.get(used..)?;
        let Ok(len) = usize::try_from(len) else {
            self.rest = rest;
            return Some(None);
        };
        self.rest = rest.get(len..)?;
        Some(Some(rest.get(..len)?))
    }
}

impl<'a> Iterator for Headers<'a> {
    type Item = (&'a str, Option<&'a [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        // The decoder validated every header (lengths in range, keys non-null UTF-8), so the
        // `None`s below only end iteration early if that invariant were ever broken.
        self.remaining = self.remaining.checked_sub(1)?;
        let key = std::str::from_utf8(self.field()??).ok()?;
        let value = self.field()?;
        Some((key, value))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.remaining as usize))
    }
}
