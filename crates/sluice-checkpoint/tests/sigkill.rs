//! Real crashes: a child process appends and commits batches in a loop over real files and is
//! killed with SIGKILL at random moments; the reopened log must hold every batch the child
//! acknowledged (printed only after `commit()` returned), and the state rebuilt from snapshot
//! and deltas must be exactly the fold of all committed batches.
//!
//! The child is this test binary itself, re-run with `CHILD_DIR_ENV` set. The kill delays come
//! from a seed printed at the start (set `SLUICE_KILL_SEED` to replay).

// Tests print their seeds and counts: that output is how a failure is replayed.
#![allow(clippy::print_stdout)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use sluice_checkpoint::rng::SplitMix64;
use sluice_checkpoint::{BatchCommit, BatchIntent, Log, OffsetRange, Options, Recovered, Snapshot};

const CHILD_DIR_ENV: &str = "SLUICE_CKPT_KILL_CHILD_DIR";
const TEST_NAME: &str = "every_acknowledged_commit_survives_sigkill";

fn options() -> Options {
    // Small segments so that roll-over, snapshots and compaction all happen under fire, and
    // snapshots (SNAPSHOT_BYTES) larger than a record, written in parts across segments.
    let mut options = Options::default();
    options.segment_size_bytes = 64 * 1024;
    options.retain_batches = 3;
    options.max_record_bytes = 8 * 1024;
    options
}

/// A snapshot: the 8-byte state, then padding to this size.
const SNAPSHOT_BYTES: usize = 20_000;

fn snapshot_state(state: u64) -> Vec<u8> {
    let mut bytes = state.to_le_bytes().to_vec();
    bytes.resize(SNAPSHOT_BYTES, 0xab);
    bytes
}

/// State after a batch: FNV-1a chained over each batch's delta.
fn fold(state: u64, delta: &[u8]) -> u64 {
    delta.iter().fold(state, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

const INITIAL_STATE: u64 = 0xcbf2_9ce4_8422_2325;

fn delta_of(batch: u64) -> Vec<u8> {
    let mut delta = vec![0u8; (batch % 7) as usize * 300];
    SplitMix64::new(batch).fill(&mut delta);
    delta
}

/// State rebuilt from what recovery handed back.
fn rebuilt_state(recovered: &Recovered) -> u64 {
    let base = recovered.snapshot.as_ref().map_or(INITIAL_STATE, |s| {
        let state = u64::from_le_bytes(s.state[..8].try_into().unwrap());
        assert_eq!(s.state, snapshot_state(state), "a snapshot recovered whole");
        state
    });
    recovered.deltas.iter().fold(base, |state, d| fold(state, &d.state_delta))
}

fn expected_state(last: Option<u64>) -> u64 {
    last.map_or(INITIAL_STATE, |last| (0..=last).fold(INITIAL_STATE, |s, b| fold(s, &delta_of(b))))
}

/// The child: resume from recovery, then plan, run and commit batches until killed.
fn run_child(dir: &Path) -> ! {
    let (log, recovered) = Log::open(dir, options()).expect("child open");
    let mut state = rebuilt_state(&recovered);
    let mut batch = recovered.last_committed.as_ref().map_or(0, |b| b.commit.batch_id + 1);
    loop {
        let intent = BatchIntent {
            batch_id: batch,
            ranges: vec![OffsetRange {
                topic: "t".into(),
                partition: 0,
                start_offset: batch as i64,
                end_offset: batch as i64 + 1,
            }],
            metadata: vec![],
        };
        log.append_intent(&intent).expect("intent");
        log.commit().expect("commit intent");
        let delta = delta_of(batch);
        state = fold(state, &delta);
        log.append_commit(&BatchCommit { batch_id: batch, state_delta: delta, sink_markers: vec![] })
            .expect("commit record");
        if batch % 16 == 15 {
            log.append_snapshot(&Snapshot { batch_id: batch, state: snapshot_state(state) }).expect("snapshot");
        }
        log.commit().expect("commit");
        println!("ACK {batch}");
        batch += 1;
    }
}

fn spawn_child(dir: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1", "-q"])
        .env(CHILD_DIR_ENV, dir)
        .stdout(Stdio::piped())
        // Inherited: a child that fails (rather than being killed) shows why.
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child")
}

/// Sends the id of every complete `ACK` line; a line cut by the kill has no newline and is not
/// an acknowledgement the parent could have seen.
fn read_acks(child: &mut Child) -> (mpsc::Receiver<u64>, std::thread::JoinHandle<()>) {
    let stdout = child.stdout.take().unwrap();
    let (sender, receiver) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
            if let Some(id) = line.strip_prefix(b"ACK ").and_then(|rest| rest.strip_suffix(b"\n")) {
                let _ = sender.send(std::str::from_utf8(id).unwrap().parse().unwrap());
            }
            line.clear();
        }
    });
    (receiver, reader)
}

/// Half the kills land at a random moment after spawn (often during start-up and recovery),
/// half at a random moment after the first acknowledgement (mid-loop).
fn wait_before_kill(rng: &mut SplitMix64, acks: &mpsc::Receiver<u64>) -> Option<u64> {
    if rng.chance(50) {
        std::thread::sleep(Duration::from_micros(rng.below(10_000)));
        return None;
    }
    let first = acks.recv_timeout(Duration::from_secs(10)).ok();
    std::thread::sleep(Duration::from_micros(rng.below(20_000)));
    first
}

fn kill_count() -> u64 {
    std::env::var("SLUICE_TORTURE_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(200)
}

#[test]
fn every_acknowledged_commit_survives_sigkill() {
    if let Some(dir) = std::env::var_os(CHILD_DIR_ENV) {
        run_child(Path::new(&dir));
    }
    let seed = std::env::var("SLUICE_KILL_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    println!("SIGKILL test seed {seed} (replay with SLUICE_KILL_SEED={seed})");
    let mut rng = SplitMix64::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let acked_max: Arc<Mutex<Option<u64>>> = Arc::default();
    let kills = kill_count();
    let mut total_acks = 0;
    for round in 0..kills {
        let mut child = spawn_child(dir.path());
        let (acks, reader) = read_acks(&mut child);
        let first = wait_before_kill(&mut rng, &acks);
        child.kill().unwrap();
        child.wait().unwrap();
        reader.join().unwrap();
        let acks: Vec<u64> = first.into_iter().chain(acks.try_iter()).collect();
        total_acks += acks.len();
        let mut max = acked_max.lock().unwrap();
        if let Some(&last) = acks.iter().max() {
            *max = Some(max.map_or(last, |m| m.max(last)));
        }
        let (log, recovered) = Log::open(dir.path(), options())
            .unwrap_or_else(|e| panic!("seed {seed}, round {round}: reopen failed: {e}"));
        let last = recovered.last_committed.as_ref().map(|b| b.commit.batch_id);
        assert!(last >= *max, "seed {seed}, round {round}: acknowledged batch {max:?} lost, log ends at {last:?}");
        assert_eq!(rebuilt_state(&recovered), expected_state(last), "seed {seed}, round {round}: state differs");
        drop(log);
    }
    println!("{kills} kills, {total_acks} acknowledged commits, last batch {:?}", acked_max.lock().unwrap());
    assert!(total_acks > 0, "the child never got to commit; the kills came too early");
}
