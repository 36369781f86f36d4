//! `cargo bench -p sluice-checkpoint`: commit latency beside a plain write + fdatasync of the
//! same bytes, and recovery throughput beside memcpy, in one run, printed as ratios.
//!
//! Environment:
//! * `SLUICE_BENCH_RECOVERY_MB` — size of the log for the recovery scan (default 1024);
//! * `SLUICE_BENCH_SAMPLES` — commits per size (default 400; 1 MiB uses a quarter);
//! * `SLUICE_BENCH_DIR` — where to put the files (default: the system temp directory; use the
//!   disk you care about).
//!
//! Samples of sluice and of the baseline alternate, so both see the same disk and the same
//! background load. Segments are made large enough that no roll-over falls inside the timed
//! loop; the cost of one roll-over (preallocating a default 64 MiB segment) is printed apart.

#![allow(clippy::print_stdout)]

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use sluice_checkpoint::storage::{FileStorage, SegmentFile, Storage};
use sluice_checkpoint::{
    recover, replay, BatchCommit, BatchIntent, Log, Options, RecoveryMode, SegmentImage, Snapshot,
};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("SLUICE_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir).expect("SLUICE_BENCH_DIR must be a writable directory"),
        None => tempfile::tempdir().expect("temp dir"),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// One checkpoint: an intent and a commit carrying `size` bytes of state delta, then commit().
struct SluiceWriter {
    log: Log,
    batch: u64,
    delta: Vec<u8>,
}

impl SluiceWriter {
    fn new(dir: &Path, size: usize, samples: usize) -> Self {
        // Big enough that the timed loop never rolls over (roll-over is measured apart).
        let segment_size_bytes = ((size + 256) * (samples + 16) + MIB) as u64;
        let mut options = Options::default();
        options.segment_size_bytes = segment_size_bytes;
        let (log, _) = Log::open(dir, options).expect("open log");
        Self { log, batch: 0, delta: vec![0x5a; size] }
    }

    fn checkpoint(&mut self) -> Duration {
        let started = Instant::now();
        let intent = BatchIntent { batch_id: self.batch, ranges: vec![], metadata: vec![] };
        self.log.append_intent(&intent).expect("intent");
        let commit =
            BatchCommit { batch_id: self.batch, state_delta: std::mem::take(&mut self.delta), sink_markers: vec![] };
        self.log.append_commit(&commit).expect("commit record");
        self.log.commit().expect("commit");
        self.delta = commit.state_delta;
        self.batch += 1;
        started.elapsed()
    }
}

/// The peer: append the same bytes to a file and fdatasync.
struct PlainAppend {
    file: File,
    bytes: Vec<u8>,
}

impl PlainAppend {
    fn new(dir: &Path, size: usize) -> Self {
        let file = OpenOptions::new().create(true).append(true).open(dir.join("plain-append")).expect("open");
        Self { file, bytes: vec![0x5a; size] }
    }

    fn checkpoint(&mut self) -> Duration {
        let started = Instant::now();
        self.file.write_all(&self.bytes).expect("write");
        self.file.sync_data().expect("fdatasync");
        started.elapsed()
    }
}

/// A second peer: overwrite preallocated (zero-written) space and fdatasync, i.e. without the
/// file growing; the best case for a write-based log.
struct PlainOverwrite {
    file: File,
    bytes: Vec<u8>,
    at: u64,
}

impl PlainOverwrite {
    fn new(dir: &Path, size: usize, samples: usize) -> Self {
        let file =
            OpenOptions::new().create_new(true).read(true).write(true).open(dir.join("plain-overwrite")).expect("open");
        // Same preallocation as sluice's segments (64 KiB writes; see storage/file.rs).
        let zeros = vec![0u8; 64 * KIB];
        let total = (size * (samples + 16)) as u64;
        let mut at = 0;
        while at < total {
            file.write_all_at(&zeros, at).expect("preallocate");
            at += zeros.len() as u64;
        }
        file.sync_all().expect("fsync");
        Self { file, bytes: vec![0x5a; size], at: 0 }
    }

    fn checkpoint(&mut self) -> Duration {
        let started = Instant::now();
        self.file.write_all_at(&self.bytes, self.at).expect("write");
        self.file.sync_data().expect("fdatasync");
        self.at += self.bytes.len() as u64;
        started.elapsed()
    }
}

struct Latencies {
    p50: Duration,
    p99: Duration,
}

fn summarize(mut samples: Vec<Duration>) -> Latencies {
    samples.sort();
    Latencies { p50: percentile(&samples, 0.5), p99: percentile(&samples, 0.99) }
}

fn bench_commit(size: usize, samples: usize) {
    let dir = bench_dir();
    let mut sluice = SluiceWriter::new(dir.path(), size, samples);
    let mut append = PlainAppend::new(dir.path(), size);
    let mut overwrite = PlainOverwrite::new(dir.path(), size, samples);
    for _ in 0..8 {
        sluice.checkpoint();
        append.checkpoint();
        overwrite.checkpoint();
    }
    let (mut s, mut a, mut o) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..samples {
        s.push(sluice.checkpoint());
        a.push(append.checkpoint());
        o.push(overwrite.checkpoint());
    }
    let (s, a, o) = (summarize(s), summarize(a), summarize(o));
    let ratio = |x: Duration, y: Duration| x.as_secs_f64() / y.as_secs_f64();
    println!(
        "{:>8} | {:>9.0} {:>9.0} | {:>9.0} {:>9.0} | {:>6.2} {:>6.2} | {:>9.0} {:>9.0} | {:>6.2} {:>6.2}",
        label(size),
        micros(s.p50),
        micros(s.p99),
        micros(a.p50),
        micros(a.p99),
        ratio(s.p50, a.p50),
        ratio(s.p99, a.p99),
        micros(o.p50),
        micros(o.p99),
        ratio(s.p50, o.p50),
        ratio(s.p99, o.p99),
    );
}

fn label(size: usize) -> String {
    if size >= MIB {
        format!("{} MiB", size / MIB)
    } else {
        format!("{} KiB", size / KIB)
    }
}

fn bench_roll_over() {
    let dir = bench_dir();
    let options = Options::default();
    let segment = options.segment_size_bytes;
    let (log, _) = Log::open(dir.path(), options).expect("open");
    let started = Instant::now();
    log.append_intent(&BatchIntent::default()).expect("first append creates a segment");
    let elapsed = started.elapsed();
    println!(
        "segment roll-over (create, preallocate {} MiB, fsync file and directory): {:.1} ms",
        segment >> 20,
        elapsed.as_secs_f64() * 1e3
    );
}

/// Writes a log of about `total_mib` MiB: 64 KiB deltas, a snapshot every 64 batches, and
/// retention high enough that compaction deletes nothing.
fn build_recovery_log(dir: &Path, total_mib: usize) {
    let mut options = Options::default();
    options.retain_batches = usize::MAX;
    let (log, _) = Log::open(dir, options).expect("open");
    let delta = vec![0xa5u8; 64 * KIB];
    let batches = total_mib * MIB / (64 * KIB + 128);
    for batch in 0..batches as u64 {
        log.append_intent(&BatchIntent { batch_id: batch, ranges: vec![], metadata: vec![] }).expect("intent");
        let commit = BatchCommit { batch_id: batch, state_delta: delta.clone(), sink_markers: vec![] };
        log.append_commit(&commit).expect("commit record");
        if batch % 64 == 63 {
            log.append_snapshot(&Snapshot { batch_id: batch, state: vec![1; 4 * KIB] }).expect("snapshot");
        }
    }
    log.commit().expect("commit");
}

fn bench_recovery(total_mib: usize) {
    let dir = bench_dir();
    let build = Instant::now();
    build_recovery_log(dir.path(), total_mib);
    let build = build.elapsed();
    let storage = FileStorage::open(dir.path()).expect("open dir");
    let mut ids = storage.list_segments().expect("list");
    ids.sort_unstable();
    let mut segments: Vec<_> = ids.iter().map(|&id| storage.open_segment(id).expect("map")).collect();
    let images: Vec<SegmentImage<'_>> =
        ids.iter().zip(segments.iter_mut()).map(|(&id, s)| SegmentImage { id, bytes: s.bytes() }).collect();
    let bytes: usize = images.iter().map(|i| i.bytes.len()).sum();

    let best = |f: &mut dyn FnMut()| {
        (0..5)
            .map(|_| {
                let started = Instant::now();
                f();
                started.elapsed()
            })
            .min()
            .expect("runs")
    };
    let mut records = 0;
    let scan = best(&mut || {
        let recovery = recover(&images, RecoveryMode::Strict).expect("recover");
        records = recovery.records.len();
    });
    let full = best(&mut || {
        let recovery = recover(&images, RecoveryMode::Strict).expect("recover");
        let recovered = replay(&recovery, 100).expect("replay");
        assert!(recovered.last_committed.is_some());
    });
    let mut copy = vec![0u8; images.iter().map(|i| i.bytes.len()).max().unwrap_or(0)];
    let memcpy = best(&mut || {
        for image in &images {
            copy[..image.bytes.len()].copy_from_slice(image.bytes);
            std::hint::black_box(&copy);
        }
    });
    let gbps = |d: Duration| bytes as f64 / d.as_secs_f64() / 1e9;
    println!(
        "\nrecovery of a {} MiB log ({} segments, {records} records; written in {:.1} s):",
        bytes / MIB,
        images.len(),
        build.as_secs_f64()
    );
    println!("  recover() scan          {:>7.2} GB/s", gbps(scan));
    println!("  recover() + replay()    {:>7.2} GB/s", gbps(full));
    println!("  memcpy of the same bytes {:>6.2} GB/s", gbps(memcpy));
    println!(
        "  ratio to memcpy: scan {:.2}, scan + replay {:.2}   (target: at least 2 GB/s)",
        gbps(scan) / gbps(memcpy),
        gbps(full) / gbps(memcpy)
    );
}

fn main() {
    // `cargo bench` passes `--bench`; anything else (like `cargo test --benches`) runs a smoke test.
    let full_run = std::env::args().any(|a| a == "--bench");
    let samples = if full_run { env_number("SLUICE_BENCH_SAMPLES", 400) } else { 10 };
    let recovery_mib = if full_run { env_number("SLUICE_BENCH_RECOVERY_MB", 1024) } else { 8 };
    println!("commit latency in microseconds: append intent + commit record, then commit() (sluice)");
    println!("beside write + fdatasync of the same bytes, appended (peer) and into preallocated space");
    println!(
        "{:>8} | {:>9} {:>9} | {:>9} {:>9} | {:>6} {:>6} | {:>9} {:>9} | {:>6} {:>6}",
        "size",
        "sluice50",
        "sluice99",
        "append50",
        "append99",
        "x p50",
        "x p99",
        "prealc50",
        "prealc99",
        "x p50",
        "x p99"
    );
    for (size, samples) in [(KIB, samples), (64 * KIB, samples), (MIB, samples / 4)] {
        bench_commit(size, samples.max(10));
    }
    println!("(x = sluice / peer; target: at most 1.2 at p50 against the appending peer)");
    bench_roll_over();
    bench_recovery(recovery_mib);
}
