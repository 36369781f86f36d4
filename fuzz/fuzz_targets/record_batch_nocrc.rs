//! Record-set decoding with the CRC gate off, so the fuzzer reaches the batch and record
//! structures a checksum would otherwise hide. Whatever decodes must re-encode and decode back to
//! the same batches.
#![no_main]
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use sluice_protocol::record::{decode_records, encode_batch, DecodeOptions};

fuzz_target!(|data: &[u8]| {
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
});
