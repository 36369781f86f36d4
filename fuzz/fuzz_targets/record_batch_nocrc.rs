//! Record-set decoding with the CRC gate off, so the fuzzer reaches the structures a checksum
//! would otherwise hide; see `sluice_protocol::fuzzing::record_batch_nocrc`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sluice_protocol::fuzzing::record_batch_nocrc(data));
