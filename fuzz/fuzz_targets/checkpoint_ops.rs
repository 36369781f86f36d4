//! Structured append/commit/crash sequences checked against a model; see
//! `sluice_checkpoint::testing::targets::ops`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sluice_checkpoint::testing::targets::ops(data));
