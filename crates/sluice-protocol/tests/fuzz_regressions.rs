//! Every input a fuzzer ever crashed on (`fuzz/regressions/<target>/`, kept by `scripts/fuzz.sh`)
//! replayed through the same check the target runs, under plain `cargo test`.

use std::path::PathBuf;

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions").join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    entries.map(|e| e.unwrap().path()).map(|path| (path.display().to_string(), std::fs::read(&path).unwrap())).collect()
}

/// A fuzz target's check.
type Check = fn(&[u8]);

/// The targets whose checks live in `sluice_protocol::fuzzing`.
const TARGETS: [(&str, Check); 2] = [
    ("message_decode", sluice_protocol::fuzzing::message_decode),
    ("record_batch_nocrc", sluice_protocol::fuzzing::record_batch_nocrc),
];

#[test]
fn every_committed_fuzz_regression_passes() {
    let mut replayed = 0;
    for (target, check) in TARGETS {
        for (name, data) in inputs(target) {
            eprintln!("replaying {name}");
            check(&data);
            replayed += 1;
        }
    }
    // The first crash found (a repeated tagged-field tag that decoded but could not be encoded
    // again) is committed, so this always replays something.
    assert!(replayed >= 1, "no regression inputs found under fuzz/regressions");
}
