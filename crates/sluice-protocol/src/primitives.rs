//! Kafka's primitive types: fixed-width integers, varints, strings, byte arrays, arrays, UUIDs and
//! tagged fields, in both the classic and the compact (KIP-482, "flexible version") encodings.
//!
//! Spec: the "Protocol Primitive Types" section of Kafka's `protocol.html`.
//!
//! Reading takes a `&mut Bytes` and advances it; byte arrays come back as [`Bytes`] slices of the
//! input (no copy). Every length prefix is checked against the bytes that remain before anything is
//! allocated, so a forged length can never make the decoder reserve more memory than the input has.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};

/// Result of a decoding step.
pub type DecodeResult<T> = Result<T, DecodeError>;
/// Result of an encoding step.
pub type EncodeResult<T = ()> = Result<T, EncodeError>;

/// A 128-bit UUID as Kafka sends it (topic ids, member ids), 16 bytes big-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    /// The all-zero UUID, Kafka's "no topic id".
    pub const ZERO: Self = Self([0; 16]);
}

impl std::fmt::Display for Uuid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// A tagged field the decoder did not recognise, kept so it can be re-encoded unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RawTaggedField {
    /// The field's tag.
    pub tag: u32,
    /// The field's raw bytes.
    pub data: Bytes,
}

#[inline]
fn need(buf: &Bytes, what: &'static str, needed: usize) -> DecodeResult<()> {
    if buf.len() < needed {
        return Err(DecodeError::UnexpectedEof { what, needed, remaining: buf.len() });
    }
    Ok(())
}

macro_rules! fixed_getters {
    ($($(#[$doc:meta])* $name:ident -> $ty:ty, $get:ident, $size:expr;)*) => {$(
        $(#[$doc])*
        #[inline]
        pub fn $name(buf: &mut Bytes) -> DecodeResult<$ty> {
            need(buf, stringify!($ty), $size)?;
            Ok(buf.$get())
        }
    )*};
}

fixed_getters! {
    /// Reads an INT8.
    get_i8 -> i8, get_i8, 1;
    /// Reads an INT16 (big-endian).
    get_i16 -> i16, get_i16, 2;
    /// Reads an INT32 (big-endian).
    get_i32 -> i32, get_i32, 4;
    /// Reads an INT64 (big-endian).
    get_i64 -> i64, get_i64, 8;
    /// Reads a UINT16 (big-endian).
    get_u16 -> u16, get_u16, 2;
    /// Reads a UINT32 (big-endian).
    get_u32 -> u32, get_u32, 4;
    /// Reads a FLOAT64 (IEEE 754, big-endian).
    get_f64 -> f64, get_f64, 8;
}

/// Reads a BOOLEAN: 0 is false, anything else true (as the Java client reads it).
#[inline]
pub fn get_bool(buf: &mut Bytes) -> DecodeResult<bool> {
    Ok(get_i8(buf)? != 0)
}

/// Reads a UUID.
#[inline]
pub fn get_uuid(buf: &mut Bytes) -> DecodeResult<Uuid> {
    need(buf, "uuid", 16)?;
    let mut out = [0u8; 16];
    buf.copy_to_slice(&mut out);
    Ok(Uuid(out))
}

/// Takes the next `len` bytes as a zero-copy slice.
#[inline]
pub fn take(buf: &mut Bytes, what: &'static str, len: usize) -> DecodeResult<Bytes> {
    need(buf, what, len)?;
    Ok(buf.split_to(len))
}

/// Decodes an unsigned LEB128 varint of at most `max_bytes` bytes from the front of `bytes`,
/// returning the value and the number of bytes it used.
#[inline]
fn uvarint_prefix(bytes: &[u8], what: &'static str, max_bytes: usize) -> DecodeResult<(u64, usize)> {
    let mut value = 0u64;
    for (i, &byte) in bytes.iter().take(max_bytes).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    if bytes.len() < max_bytes {
        return Err(DecodeError::UnexpectedEof { what, needed: bytes.len() + 1, remaining: bytes.len() });
    }
    Err(DecodeError::VarintTooLong { what, max_bytes })
}

/// Reads an UNSIGNED_VARINT (at most 5 bytes, 32 bits).
#[inline]
pub fn get_uvarint(buf: &mut Bytes) -> DecodeResult<u32> {
    let (value, used) = uvarint_prefix(buf.chunk(), "unsigned varint", 5)?;
    let value =
        u32::try_from(value).map_err(|_| DecodeError::VarintTooLong { what: "unsigned varint", max_bytes: 5 })?;
    buf.advance(used);
    Ok(value)
}

/// Reads a zigzag VARINT (32 bits).
#[inline]
pub fn get_varint(buf: &mut Bytes) -> DecodeResult<i32> {
    let (raw, used) = uvarint_prefix(buf.chunk(), "varint", 5)?;
    let raw = u32::try_from(raw).map_err(|_| DecodeError::VarintTooLong { what: "varint", max_bytes: 5 })?;
    buf.advance(used);
    Ok(zigzag_decode_32(raw))
}

/// Reads a zigzag VARLONG (64 bits).
#[inline]
pub fn get_varlong(buf: &mut Bytes) -> DecodeResult<i64> {
    let (raw, used) = uvarint_prefix(buf.chunk(), "varlong", 10)?;
    buf.advance(used);
    Ok(zigzag_decode_64(raw))
}

/// Reads a zigzag varint from a byte slice, returning the value and its encoded length.
/// The record-batch decoder uses this on its hot path.
#[inline]
pub fn varint_from_slice(bytes: &[u8], what: &'static str) -> DecodeResult<(i32, usize)> {
    // Fast path: one-byte varints are by far the most common inside records.
    if let Some(&first) = bytes.first() {
        if first & 0x80 == 0 {
            return Ok((zigzag_decode_32(u32::from(first)), 1));
        }
    }
    let (raw, used) = uvarint_prefix(bytes, what, 5)?;
    let raw = u32::try_from(raw).map_err(|_| DecodeError::VarintTooLong { what, max_bytes: 5 })?;
    Ok((zigzag_decode_32(raw), used))
}

/// Reads a zigzag varlong from a byte slice, returning the value and its encoded length.
#[inline]
pub fn varlong_from_slice(bytes: &[u8], what: &'static str) -> DecodeResult<(i64, usize)> {
    if let Some(&first) = bytes.first() {
        if first & 0x80 == 0 {
            return Ok((zigzag_decode_64(u64::from(first)), 1));
        }
    }
    let (raw, used) = uvarint_prefix(bytes, what, 10)?;
    Ok((zigzag_decode_64(raw), used))
}

#[inline]
fn zigzag_decode_32(raw: u32) -> i32 {
    ((raw >> 1) as i32) ^ -((raw & 1) as i32)
}

#[inline]
fn zigzag_decode_64(raw: u64) -> i64 {
    ((raw >> 1) as i64) ^ -((raw & 1) as i64)
}

fn utf8(bytes: Bytes, what: &'static str) -> DecodeResult<String> {
    match String::from_utf8(Vec::from(bytes)) {
        Ok(s) => Ok(s),
        Err(e) => Err(DecodeError::InvalidUtf8 { what, valid_up_to: e.utf8_error().valid_up_to() }),
    }
}

/// Reads a length that is `-1` for null, either an INT16/INT32 or a compact unsigned varint
/// holding length + 1. Returns `None` for null.
#[inline]
fn get_nullable_len(buf: &mut Bytes, what: &'static str, compact: bool, int16: bool) -> DecodeResult<Option<usize>> {
    let len: i64 = if compact {
        i64::from(get_uvarint(buf)?) - 1
    } else if int16 {
        i64::from(get_i16(buf)?)
    } else {
        i64::from(get_i32(buf)?)
    };
    match len {
        -1 => Ok(None),
        n if n < -1 => Err(DecodeError::InvalidLength { what, length: n, reason: "negative" }),
        // `n` is at most u32::MAX - 1 here, which fits in usize on every platform sluice supports.
        n => Ok(Some(n as usize)),
    }
}

fn non_null(len: Option<usize>, what: &'static str) -> DecodeResult<usize> {
    len.ok_or(DecodeError::InvalidLength { what, length: -1, reason: "null is not allowed here" })
}

/// Reads a STRING (INT16 length) or COMPACT_STRING.
pub fn get_string(buf: &mut Bytes, compact: bool) -> DecodeResult<String> {
    let len = non_null(get_nullable_len(buf, "string", compact, true)?, "string")?;
    utf8(take(buf, "string", len)?, "string")
}

/// Reads a NULLABLE_STRING or COMPACT_NULLABLE_STRING.
pub fn get_nullable_string(buf: &mut Bytes, compact: bool) -> DecodeResult<Option<String>> {
    match get_nullable_len(buf, "string", compact, true)? {
        None => Ok(None),
        Some(len) => Ok(Some(utf8(take(buf, "string", len)?, "string")?)),
    }
}

/// Reads BYTES (INT32 length) or COMPACT_BYTES as a zero-copy slice.
pub fn get_bytes(buf: &mut Bytes, compact: bool) -> DecodeResult<Bytes> {
    let len = non_null(get_nullable_len(buf, "bytes", compact, false)?, "bytes")?;
    take(buf, "bytes", len)
}

/// Reads NULLABLE_BYTES or COMPACT_NULLABLE_BYTES as a zero-copy slice.
pub fn get_nullable_bytes(buf: &mut Bytes, compact: bool) -> DecodeResult<Option<Bytes>> {
    match get_nullable_len(buf, "bytes", compact, false)? {
        None => Ok(None),
        Some(len) => Ok(Some(take(buf, "bytes", len)?)),
    }
}

/// Reads an ARRAY or COMPACT_ARRAY length (`None` for a null array) and checks that the elements,
/// each at least `min_element_bytes` long, can fit in what remains before the caller allocates.
pub fn get_nullable_array_len(buf: &mut Bytes, compact: bool, min_element_bytes: usize) -> DecodeResult<Option<usize>> {
    let len = get_nullable_len(buf, "array", compact, false)?;
    if let Some(n) = len {
        let needed = n.saturating_mul(min_element_bytes.max(1));
        if needed > buf.len() {
            return Err(DecodeError::InvalidLength {
                what: "array",
                length: n as i64,
                reason: "more elements than the remaining bytes can hold",
            });
        }
    }
    Ok(len)
}

/// How many elements to reserve for an array of `n` read from the wire: `n` is already bounded
/// by the bytes left, but an element in memory can be much larger than its smallest encoding,
/// so reserve at most a modest number up front and let the vector grow with the real data.
pub fn bounded_capacity(n: usize) -> usize {
    n.min(1024)
}

/// Reads a non-null ARRAY or COMPACT_ARRAY length; see [`get_nullable_array_len`].
pub fn get_array_len(buf: &mut Bytes, compact: bool, min_element_bytes: usize) -> DecodeResult<usize> {
    non_null(get_nullable_array_len(buf, compact, min_element_bytes)?, "array")
}

/// Reads a tagged-field section, calling `known(tag, body)` for each field; `known` returns
/// `Ok(false)` for a tag it does not recognise, which is then kept in `unknown`.
pub fn get_tagged_fields(
    buf: &mut Bytes,
    unknown: &mut Vec<RawTaggedField>,
    mut known: impl FnMut(u32, &mut Bytes) -> DecodeResult<bool>,
) -> DecodeResult<()> {
    let count = get_uvarint(buf)?;
    // KIP-482 writes tags in ascending order, and every Kafka writer does. Holding readers to it
    // also refuses duplicates, so that whatever decodes can be encoded again.
    let mut previous: Option<u32> = None;
    for _ in 0..count {
        let tag = get_uvarint(buf)?;
        if previous.is_some_and(|p| tag <= p) {
            return Err(DecodeError::InvalidValue {
                what: "tagged fields",
                detail: format!("tag {tag} follows tag {} (tags must be unique and ascending)", previous.unwrap_or(0)),
            });
        }
        previous = Some(tag);
        let size = get_uvarint(buf)? as usize;
        let mut body = take(buf, "tagged field", size)?;
        if !known(tag, &mut body)? {
            unknown.push(RawTaggedField { tag, data: body });
        } else if !body.is_empty() {
            return Err(DecodeError::TrailingBytes { what: "tagged field", remaining: body.len() });
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

/// Writes an UNSIGNED_VARINT.
#[inline]
pub fn put_uvarint(buf: &mut impl BufMut, mut value: u32) {
    while value >= 0x80 {
        buf.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

/// Writes an unsigned 64-bit LEB128 varint.
#[inline]
fn put_uvarlong(buf: &mut impl BufMut, mut value: u64) {
    while value >= 0x80 {
        buf.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

/// Writes a zigzag VARINT.
#[inline]
pub fn put_varint(buf: &mut impl BufMut, value: i32) {
    put_uvarint(buf, ((value << 1) ^ (value >> 31)) as u32);
}

/// Writes a zigzag VARLONG.
#[inline]
pub fn put_varlong(buf: &mut impl BufMut, value: i64) {
    put_uvarlong(buf, ((value << 1) ^ (value >> 63)) as u64);
}

/// The encoded length of a zigzag varint.
#[inline]
pub fn varint_len(value: i32) -> usize {
    uvarint_len(((value << 1) ^ (value >> 31)) as u32)
}

/// The encoded length of a zigzag varlong.
#[inline]
pub fn varlong_len(value: i64) -> usize {
    let raw = ((value << 1) ^ (value >> 63)) as u64;
    (64 - (raw | 1).leading_zeros() as usize).div_ceil(7)
}

/// The encoded length of an unsigned varint.
#[inline]
pub fn uvarint_len(value: u32) -> usize {
    (32 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// Writes a BOOLEAN.
#[inline]
pub fn put_bool(buf: &mut BytesMut, value: bool) {
    buf.put_i8(i8::from(value));
}

/// Writes a UUID.
#[inline]
pub fn put_uuid(buf: &mut BytesMut, value: &Uuid) {
    buf.put_slice(&value.0);
}

fn put_len(buf: &mut BytesMut, what: &'static str, len: Option<usize>, compact: bool, int16: bool) -> EncodeResult {
    let max = if int16 { i16::MAX as usize } else { i32::MAX as usize - 1 };
    match len {
        Some(n) if n > max => Err(EncodeError::TooLong { what, length: n, max }),
        // Lengths are checked against i16::MAX / i32::MAX above, so the casts are lossless.
        Some(n) if compact => {
            put_uvarint(buf, n as u32 + 1);
            Ok(())
        }
        Some(n) if int16 => {
            buf.put_i16(n as i16);
            Ok(())
        }
        Some(n) => {
            buf.put_i32(n as i32);
            Ok(())
        }
        None if compact => {
            put_uvarint(buf, 0);
            Ok(())
        }
        None if int16 => {
            buf.put_i16(-1);
            Ok(())
        }
        None => {
            buf.put_i32(-1);
            Ok(())
        }
    }
}

/// Writes a STRING or COMPACT_STRING.
pub fn put_string(buf: &mut BytesMut, value: &str, compact: bool) -> EncodeResult {
    put_len(buf, "string", Some(value.len()), compact, true)?;
    buf.put_slice(value.as_bytes());
    Ok(())
}

/// Writes a NULLABLE_STRING or COMPACT_NULLABLE_STRING.
pub fn put_nullable_string(buf: &mut BytesMut, value: Option<&str>, compact: bool) -> EncodeResult {
    match value {
        Some(s) => put_string(buf, s, compact),
        None => put_len(buf, "string", None, compact, true),
    }
}

/// Writes BYTES or COMPACT_BYTES.
pub fn put_bytes(buf: &mut BytesMut, value: &[u8], compact: bool) -> EncodeResult {
    put_len(buf, "bytes", Some(value.len()), compact, false)?;
    buf.put_slice(value);
    Ok(())
}

/// Writes NULLABLE_BYTES or COMPACT_NULLABLE_BYTES.
pub fn put_nullable_bytes(buf: &mut BytesMut, value: Option<&[u8]>, compact: bool) -> EncodeResult {
    match value {
        Some(b) => put_bytes(buf, b, compact),
        None => put_len(buf, "bytes", None, compact, false),
    }
}

/// Writes an ARRAY or COMPACT_ARRAY length (`None` for a null array).
pub fn put_array_len(buf: &mut BytesMut, len: Option<usize>, compact: bool) -> EncodeResult {
    put_len(buf, "array", len, compact, false)
}

/// Writes a tagged-field section from `(tag, encoded body)` pairs, which need not be sorted.
pub fn put_tagged_fields(buf: &mut BytesMut, mut fields: Vec<(u32, Bytes)>) -> EncodeResult {
    fields.sort_by_key(|(tag, _)| *tag);
    if let Some(pair) = fields.windows(2).find(|pair| pair.first().map(|f| f.0) == pair.get(1).map(|f| f.0)) {
        let tag = pair.first().map_or(0, |f| f.0);
        return Err(EncodeError::InvalidValue {
            what: "tagged fields",
            detail: format!("tag {tag} appears twice (an unknown tagged field reuses a known tag?)"),
        });
    }
    let count = u32::try_from(fields.len()).map_err(|_| EncodeError::TooLong {
        what: "tagged fields",
        length: fields.len(),
        max: u32::MAX as usize,
    })?;
    put_uvarint(buf, count);
    for (tag, body) in fields {
        put_uvarint(buf, tag);
        let size = u32::try_from(body.len()).map_err(|_| EncodeError::TooLong {
            what: "tagged field",
            length: body.len(),
            max: u32::MAX as usize,
        })?;
        put_uvarint(buf, size);
        buf.put_slice(&body);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zigzag_varints_round_trip_at_the_edges() {
        for v in [0, 1, -1, 63, -64, 64, -65, i32::MAX, i32::MIN, 300, -300] {
            let mut out = BytesMut::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
            let mut bytes = out.freeze();
            assert_eq!(get_varint(&mut bytes).unwrap(), v);
            assert!(bytes.is_empty());
        }
        for v in [0, 1, -1, i64::MAX, i64::MIN, 1 << 40, -(1 << 40)] {
            let mut out = BytesMut::new();
            put_varlong(&mut out, v);
            assert_eq!(out.len(), varlong_len(v), "{v}");
            let mut bytes = out.freeze();
            assert_eq!(get_varlong(&mut bytes).unwrap(), v);
        }
    }

    #[test]
    fn spec_examples_for_zigzag() {
        // protocol.html: 0 -> 0, -1 -> 1, 1 -> 2, -2 -> 3.
        for (value, byte) in [(0, 0u8), (-1, 1), (1, 2), (-2, 3)] {
            let mut out = BytesMut::new();
            put_varint(&mut out, value);
            assert_eq!(&out[..], &[byte]);
        }
    }

    #[test]
    fn overlong_varints_are_refused_not_wrapped() {
        let mut six = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert!(matches!(get_varint(&mut six), Err(DecodeError::VarintTooLong { .. })));
        // Five bytes whose value exceeds 32 bits.
        let mut big = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x7f]);
        assert!(matches!(get_uvarint(&mut big), Err(DecodeError::VarintTooLong { .. })));
        let mut short = Bytes::from_static(&[0x80, 0x80]);
        assert!(matches!(get_uvarint(&mut short), Err(DecodeError::UnexpectedEof { .. })));
    }

    #[test]
    fn lengths_are_checked_before_allocation() {
        // An array claiming 2^31-1 elements in a 10-byte input.
        let mut input = Bytes::from_static(&[0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0]);
        let err = get_array_len(&mut input, false, 4).unwrap_err();
        assert!(matches!(err, DecodeError::InvalidLength { .. }), "{err}");
        let mut input = Bytes::from_static(&[0x7f, 0xff, 0xff, 0xff, 1, 2]);
        assert!(matches!(get_bytes(&mut input, false), Err(DecodeError::UnexpectedEof { .. })));
        let mut input = Bytes::from_static(&[0xff, 0xfe]);
        assert!(matches!(get_nullable_string(&mut input, false), Err(DecodeError::InvalidLength { .. })));
    }

    #[test]
    fn compact_and_classic_strings_round_trip_including_null() {
        for compact in [false, true] {
            let mut out = BytesMut::new();
            put_string(&mut out, "héllo", compact).unwrap();
            put_nullable_string(&mut out, None, compact).unwrap();
            put_nullable_bytes(&mut out, Some(b"\x00\x01"), compact).unwrap();
            put_nullable_bytes(&mut out, None, compact).unwrap();
            let mut input = out.freeze();
            assert_eq!(get_string(&mut input, compact).unwrap(), "héllo");
            assert_eq!(get_nullable_string(&mut input, compact).unwrap(), None);
            assert_eq!(get_nullable_bytes(&mut input, compact).unwrap().as_deref(), Some(&b"\x00\x01"[..]));
            assert_eq!(get_nullable_bytes(&mut input, compact).unwrap(), None);
            assert!(input.is_empty());
        }
    }

    #[test]
    fn unknown_tagged_fields_are_kept_and_known_ones_dispatched() {
        let mut out = BytesMut::new();
        put_tagged_fields(&mut out, vec![(7, Bytes::from_static(b"xyz")), (1, Bytes::from_static(&[0, 0, 0, 5]))])
            .unwrap();
        let mut input = out.freeze();
        let mut unknown = Vec::new();
        let mut seen = None;
        get_tagged_fields(&mut input, &mut unknown, |tag, body| {
            if tag == 1 {
                seen = Some(get_i32(body)?);
                return Ok(true);
            }
            Ok(false)
        })
        .unwrap();
        assert_eq!(seen, Some(5));
        assert_eq!(unknown, vec![RawTaggedField { tag: 7, data: Bytes::from_static(b"xyz") }]);
    }

    #[test]
    fn a_tag_written_twice_is_an_encode_error() {
        let twice = vec![(3, Bytes::from_static(b"a")), (3, Bytes::from_static(b"b"))];
        assert!(matches!(put_tagged_fields(&mut BytesMut::new(), twice), Err(EncodeError::InvalidValue { .. })));
    }

    #[test]
    fn tags_out_of_order_or_repeated_are_refused() {
        for tags in [[5u32, 1], [2, 2]] {
            let mut out = BytesMut::new();
            put_uvarint(&mut out, 2);
            for tag in tags {
                put_uvarint(&mut out, tag);
                put_uvarint(&mut out, 1);
                out.put_u8(0);
            }
            let err = get_tagged_fields(&mut out.freeze(), &mut Vec::new(), |_, _| Ok(false)).unwrap_err();
            assert!(matches!(err, DecodeError::InvalidValue { what: "tagged fields", .. }), "{tags:?}: {err}");
        }
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        let mut input = Bytes::from_static(&[0, 2, 0xc3, 0x28]);
        assert!(matches!(get_string(&mut input, false), Err(DecodeError::InvalidUtf8 { .. })));
    }

    #[test]
    fn uuid_displays_in_canonical_form() {
        let id = Uuid([0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(id.to_string(), "12345678-9abc-def0-0001-020304050607");
    }
}
