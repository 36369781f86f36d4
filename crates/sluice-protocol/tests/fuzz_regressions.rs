//! Every input a fuzzer ever crashed on (`fuzz/regressions/<target>/`, kept by `scripts/fuzz.sh`)
//! replayed through the same check the target runs, under plain `cargo test`.

use std::path::PathBuf;

use sluice_protocol::compression::Compression;
use sluice_protocol::fuzzing;

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions").join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    entries.map(|e| e.unwrap().path()).map(|path| (path.display().to_string(), std::fs::read(&path).unwrap())).collect()
}

/// A fuzz target's check.
type Check = fn(&[u8]);

/// Every sluice-protocol fuzz target, by name, and the check it runs.
const TARGETS: [(&str, Check); 10] = [
    ("frame_decode", fuzzing::frame_decode),
    ("message_decode", fuzzing::message_decode),
    ("message_roundtrip", fuzzing::message_roundtrip),
    ("primitives", fuzzing::primitives),
    ("record_batch", fuzzing::record_batch),
    ("record_batch_nocrc", fuzzing::record_batch_nocrc),
    ("decompress_gzip", |data| fuzzing::decompress(Compression::Gzip, data)),
    ("decompress_snappy", |data| fuzzing::decompress(Compression::Snappy, data)),
    ("decompress_lz4", |data| fuzzing::decompress(Compression::Lz4, data)),
    ("decompress_zstd", |data| fuzzing::decompress(Compression::Zstd, data)),
];

/// Every fuzz target's regressions are replayed: here (this crate's targets), or by another
/// crate's `tests/fuzz_regressions.rs`, which names the target (the checkpoint's, the stream's).
#[test]
fn every_target_has_a_check_here() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut replays = String::new();
    for krate in std::fs::read_dir(root.join("crates")).unwrap() {
        let file = krate.unwrap().path().join("tests/fuzz_regressions.rs");
        replays.push_str(&std::fs::read_to_string(file).unwrap_or_default());
    }
    for entry in std::fs::read_dir(root.join("fuzz/fuzz_targets")).unwrap() {
        let name = entry.unwrap().path().file_stem().unwrap().to_string_lossy().into_owned();
        let here = TARGETS.iter().any(|(target, _)| *target == name);
        let elsewhere = replays.contains(&format!("regressions(\"{name}\")"));
        assert!(here || elsewhere, "fuzz target {name} has no regression replay");
    }
}

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
