//! `compression::decompress_into` for snappy (xerial framing or one raw block), with a 1 MiB limit:
//! arbitrary bytes must give an error or at most 1 MiB, never a panic, and the buffer must
//! never grow past the limit.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_protocol::compression::{decompress_into, Compression};

const LIMIT_BYTES: usize = 1 << 20;

fuzz_target!(|input: &[u8]| {
    let mut out = Vec::new();
    match decompress_into(Compression::Snappy, input, LIMIT_BYTES, &mut out) {
        Ok(()) => assert!(out.len() <= LIMIT_BYTES),
        Err(_) => assert!(out.is_empty()),
    }
    assert!(out.capacity() <= LIMIT_BYTES + 1);
});
