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

#[test]
fn every_target_has_a_check_here() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/fuzz_targets");
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().path().file_stem().unwrap().to_string_lossy().into_owned();
        let here = TARGETS.iter().any(|(target, _)| *target == name);
        assert!(here || name.starts_with("checkpoint_"), "fuzz target {name} has no regression replay");
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
