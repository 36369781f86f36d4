//! Recovery over arbitrary bytes: never panics, and recovering, repairing and recovering again
//! changes nothing (in both recovery modes).
//!
//! Input: byte 0 picks the number of segments (1 to 4) and, with its top bit, whether the
//! segment and record CRCs are recomputed first. Without that the checksums hide the record
//! and payload decoders from the fuzzer; with it they are reached on every input. The rest of
//! the input is split evenly into the segments. A good seed corpus is a few real segment files
//! (see the crate README).
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use sluice_checkpoint::testing::{check_recovery, fix_checksums};

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let count = usize::from(control & 0x3) + 1;
    let chunk = rest.len().div_ceil(count).max(1);
    let mut segments: BTreeMap<u64, Vec<u8>> =
        rest.chunks(chunk).enumerate().map(|(i, bytes)| (i as u64, bytes.to_vec())).collect();
    if control & 0x80 != 0 {
        segments.values_mut().for_each(|bytes| fix_checksums(bytes));
    }
    if let Err(problem) = check_recovery(&segments) {
        panic!("{problem}");
    }
});
