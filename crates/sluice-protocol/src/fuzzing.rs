//! The checks the fuzz targets run, shared with the regression tests that replay every input a
//! fuzzer once crashed on (`fuzz/regressions/<target>/`). Each panics when the property fails.
#![allow(clippy::panic, clippy::expect_used)] // a failed property must abort the fuzz run

use bytes::{Bytes, BytesMut};

use crate::compression::{decompress_into, Compression};
use crate::messages::{decode_exact, encode_to_bytes, Message};
use crate::record::{decode_records, encode_batch, DecodeOptions};

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
