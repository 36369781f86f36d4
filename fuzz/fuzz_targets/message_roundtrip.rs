//! See `sluice_protocol::fuzzing::message_roundtrip` for the input layout and the property.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sluice_protocol::fuzzing::message_roundtrip(data));
