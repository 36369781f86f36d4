//! The LZ4 frame decompressor over arbitrary bytes, with a 1 MiB limit; see
//! `sluice_protocol::fuzzing::decompress`.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_protocol::compression::Compression;

fuzz_target!(|input: &[u8]| sluice_protocol::fuzzing::decompress(Compression::Lz4, input));
