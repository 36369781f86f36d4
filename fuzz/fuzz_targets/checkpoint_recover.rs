//! Recovery over arbitrary bytes; see `sluice_checkpoint::testing::targets::recover` for the
//! input layout and the property.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sluice_checkpoint::testing::targets::recover(data));
