//! The checks the fuzz targets run, shared with the regression tests that replay every input a
//! fuzzer once crashed on (`fuzz/regressions/<target>/`). Each panics when the property fails.
#![allow(clippy::panic, clippy::expect_used)] // a failed property must abort the fuzz run

use arbitrary::{Arbitrary, Unstructured};
use bytes::{Bytes, BytesMut};

use crate::compression::{decompress_into, Compression};
use crate::frame::FrameDecoder;
use crate::messages::{decode_exact, encode_to_bytes, Message};
use crate::primitives::*;
use crate::record::{decode_records, encode_batch, DecodeOptions};

/// `frame_decode`: (step, bytes). The frame decoder over arbitrary bytes fed in pieces of `step`
/// bytes never panics and returns the same frames however the input is split.
pub fn frame_decode(raw: &[u8]) {
    let Ok((step, data)) = <(u8, &[u8])>::arbitrary_take_rest(Unstructured::new(raw)) else { return };
    let decoder = FrameDecoder::new(1 << 16);
    let whole = {
        let mut buf = BytesMut::from(data);
        let mut frames = Vec::new();
        while let Ok(Some(frame)) = decoder.decode(&mut buf) {
            frames.push(frame);
        }
        frames
    };
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    'outer: for chunk in data.chunks(usize::from(step).max(1)) {
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(_) => break 'outer,
            }
        }
    }
    assert_eq!(frames, whole);
}

/// `primitives`: (program, bytes). Each program byte picks a primitive reader (its top bit: the
/// compact encoding), run over the bytes until one fails; none may panic or over-allocate.
pub fn primitives(raw: &[u8]) {
    let Ok((program, data)) = <(Vec<u8>, &[u8])>::arbitrary_take_rest(Unstructured::new(raw)) else { return };
    let mut buf = Bytes::copy_from_slice(data);
    let mut unknown = Vec::new();
    for op in program {
        let compact = op & 0x80 != 0;
        let ok = match op & 0x0f {
            0 => get_i8(&mut buf).is_ok(),
            1 => get_i16(&mut buf).is_ok(),
            2 => get_i32(&mut buf).is_ok(),
            3 => get_i64(&mut buf).is_ok(),
            4 => get_uvarint(&mut buf).is_ok(),
            5 => get_varint(&mut buf).is_ok(),
            6 => get_varlong(&mut buf).is_ok(),
            7 => get_string(&mut buf, compact).is_ok(),
            8 => get_nullable_string(&mut buf, compact).is_ok(),
            9 => get_bytes(&mut buf, compact).is_ok(),
            10 => get_nullable_bytes(&mut buf, compact).is_ok(),
            11 => get_nullable_array_len(&mut buf, compact, 1).is_ok_and(|n| n.is_none_or(|n| n <= buf.len())),
            12 => get_uuid(&mut buf).is_ok(),
            13 => get_tagged_fields(&mut buf, &mut unknown, |tag, _| Ok(tag % 2 == 0)).is_ok(),
            14 => get_f64(&mut buf).is_ok(),
            _ => get_bool(&mut buf).is_ok(),
        };
        if !ok {
            break;
        }
    }
}

/// `record_batch`: record-set decoding over arbitrary bytes with the CRC gate on (what a client
/// does) never panics.
pub fn record_batch(data: &[u8]) {
    let options = DecodeOptions {
        max_decompressed_bytes: 1 << 20,
        max_total_decompressed_bytes: 4 << 20,
        ..DecodeOptions::default()
    };
    let _ = decode_records(&Bytes::copy_from_slice(data), &options);
}

fn round_trip_valid<M: Message>(
    u: &mut Unstructured<'_>,
    make: fn(&mut Unstructured<'_>, i16) -> arbitrary::Result<M>,
) {
    let Ok(version) = u.int_in_range(M::MIN_VERSION..=M::MAX_VERSION) else { return };
    let Ok(value) = make(u, version) else { return };
    let bytes = encode_to_bytes(&value, version).expect("a valid message encodes");
    let decoded: M = decode_exact(bytes, version).expect("an encoded message decodes");
    assert_eq!(decoded, value);
}

/// `message_roundtrip`: a random message valid for a random version (picked by the first byte
/// and the following ones) encodes, and decodes back to the same value.
pub fn message_roundtrip(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(pick) = u.arbitrary::<u8>() else { return };
    let mut index = 0u8;
    macro_rules! dispatch {
        ($req:ty, $resp:ty) => {
            if pick / 2 == index {
                if pick % 2 == 0 {
                    round_trip_valid::<$req>(&mut u, <$req>::arbitrary_for_version);
                } else {
                    round_trip_valid::<$resp>(&mut u, <$resp>::arbitrary_for_version);
                }
            }
            index += 1;
        };
    }
    crate::for_each_api!(dispatch);
    let _ = index;
}

fn message_round_trip<M: Message>(version: i16, body: &[u8]) {
    if !(M::MIN_VERSION..=M::MAX_VERSION).contains(&version) {
        return;
    }
    let Ok(value) = decode_exact::<M>(Bytes::copy_from_slice(body), version) else { return };
    let bytes = encode_to_bytes(&value, version).expect("a decoded message re-encodes");
    let again: M = decode_exact(bytes, version).expect("a re-encoded message decodes");
    assert_eq!(again, value);
}

/// `message_decode`: the first byte picks the API key, the second the version, the third's low
/// bit request (0) or response (1); the rest is the body. Whatever decodes must re-encode and
/// decode again to the same value.
pub fn message_decode(data: &[u8]) {
    let [key, version, flags, body @ ..] = data else { return };
    let (key, version, response) = (i16::from(*key), i16::from(*version), flags & 1 == 1);
    macro_rules! dispatch {
        ($req:ty, $resp:ty) => {
            if <$req as Message>::API_KEY == key {
                if response {
                    message_round_trip::<$resp>(version, body)
                } else {
                    message_round_trip::<$req>(version, body)
                }
            }
        };
    }
    crate::for_each_api!(dispatch);
}

/// `record_batch_nocrc`: a record set decoded without the CRC gate; whatever decodes must
/// re-encode and decode back to the same records.
pub fn record_batch_nocrc(data: &[u8]) {
    let options = DecodeOptions { verify_crc: false, max_decompressed_bytes: 1 << 20, ..DecodeOptions::default() };
    let Ok(decoded) = decode_records(&Bytes::copy_from_slice(data), &options) else { return };
    for batch in decoded.batches.iter().filter(|b| b.header.magic == 2) {
        let records = batch.to_records();
        let mut out = BytesMut::new();
        if encode_batch(&batch.header, &records, &mut out).is_err() {
            continue; // e.g. offsets that overflow the deltas a fuzzed header allows
        }
        let again = decode_records(&out.freeze(), &options).expect("a re-encoded batch decodes");
        assert_eq!(again.batches.first().map(|b| b.to_records()), Some(records));
    }
}

/// `decompress_<codec>`: arbitrary bytes through the decompressor with a 1 MiB limit give an
/// error or at most 1 MiB, never a panic; the buffer never grows past the limit, and an error
/// leaves it empty.
pub fn decompress(codec: Compression, input: &[u8]) {
    const LIMIT_BYTES: usize = 1 << 20;
    let mut out = Vec::new();
    match decompress_into(codec, input, LIMIT_BYTES, &mut out) {
        Ok(()) => assert!(out.len() <= LIMIT_BYTES),
        Err(_) => assert!(out.is_empty()),
    }
    assert!(out.capacity() <= LIMIT_BYTES + 1);
}
