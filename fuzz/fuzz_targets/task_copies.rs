//! A scale-out job's copies of its tasks in the local checkpoint, read from arbitrary bytes; see
//! `sluice_stream::testing::fuzz_task_copies` for the property.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sluice_stream::testing::fuzz_task_copies(data));
