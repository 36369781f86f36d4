//! The `task_copies` fuzz target's check under plain `cargo test`: every input a fuzzer once
//! crashed on (`fuzz/regressions/task_copies`, kept by `scripts/fuzz.sh`), and hand-made hostile
//! inputs: counts far past the bytes, a length of -2, a whole flag of 2, cuts of a valid delta.

use std::path::PathBuf;

use sluice_stream::testing::fuzz_task_copies;

fn regressions(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions").join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    entries.map(|e| e.unwrap().path()).map(|p| (p.display().to_string(), std::fs::read(&p).unwrap())).collect()
}

/// A valid delta's bytes after the format's magic: one operator, no forgotten task, one task
/// (5, whole, at time 7, position 9) with one entry (operator 0, key "k", value "v").
fn valid() -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&1u32.to_le_bytes());
    bytes.extend_from_slice(&[3; 16]);
    bytes.extend_from_slice(&0u32.to_le_bytes());
    bytes.extend_from_slice(&1u32.to_le_bytes());
    bytes.extend_from_slice(&5i32.to_le_bytes());
    bytes.push(1);
    bytes.extend_from_slice(&7i64.to_le_bytes());
    bytes.extend_from_slice(&9i64.to_le_bytes());
    bytes.extend_from_slice(&1u64.to_le_bytes());
    bytes.extend_from_slice(&0u32.to_le_bytes());
    bytes.extend_from_slice(&1u32.to_le_bytes());
    bytes.push(b'k');
    bytes.extend_from_slice(&1i64.to_le_bytes());
    bytes.push(b'v');
    bytes
}

#[test]
fn committed_fuzz_regressions_and_hostile_inputs_pass() {
    for (name, data) in regressions("task_copies") {
        eprintln!("replaying {name}");
        fuzz_task_copies(&data);
    }
    let valid = valid();
    // The valid delta reads and writes back the same (the target asserts it), and so does every
    // cut of it (each an error).
    for cut in 0..=valid.len() {
        fuzz_task_copies(&valid[..cut]);
    }
    let mut hostile = Vec::new();
    // An operator count of u32::MAX, a task count of u32::MAX.
    hostile.push(u32::MAX.to_le_bytes().to_vec());
    let mut tasks = valid.clone();
    tasks[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
    hostile.push(tasks);
    // A whole flag of 2; an entry count of i64::MIN; a value length of -2.
    let mut flag = valid.clone();
    flag[32] = 2;
    hostile.push(flag);
    let mut entries = valid.clone();
    entries[49..57].copy_from_slice(&i64::MIN.to_le_bytes());
    hostile.push(entries);
    let mut length = valid.clone();
    let at = length.len() - 9;
    length[at..at + 8].copy_from_slice(&(-2i64).to_le_bytes());
    hostile.push(length);
    for bytes in hostile {
        fuzz_task_copies(&bytes);
    }
}
