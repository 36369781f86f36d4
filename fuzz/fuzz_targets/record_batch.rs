//! Record-set decoding over arbitrary bytes, with the CRC gate on (what a client does).
#![no_main]
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sluice_protocol::record::{decode_records, DecodeOptions};

fuzz_target!(|data: &[u8]| {
    let options = DecodeOptions { max_decompressed_bytes: 1 << 20, ..DecodeOptions::default() };
    let _ = decode_records(&Bytes::copy_from_slice(data), &options);
});
