//! Timing a client process for benchmarks: wall time, CPU and peak RSS by GNU time, and the
//! broker's CPU over the same interval from /proc.

use std::path::Path;
use std::process::{Command, Stdio};

/// What GNU time reported for one client run.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub wall_s: f64,
    pub cpu_s: f64,
    pub peak_rss_kb: u64,
    pub broker_cpu_s: f64,
}

/// Runs `command` under GNU time (stdin from `input`), returning its wall time, CPU and RSS and
/// the broker's CPU over the same interval.
pub fn timed(broker_pid: u32, command: Command, input: Option<&Path>) -> Run {
    timed_to(broker_pid, command, input, None)
}

/// [`timed`], with the command's stdout written to `stdout` (else dropped).
pub fn timed_to(broker_pid: u32, command: Command, input: Option<&Path>, stdout: Option<&Path>) -> Run {
    let report = std::env::temp_dir().join(format!("sluice-bench-time-{}", std::process::id()));
    let mut timed = Command::new("/usr/bin/time");
    timed.args(["-f", "%e %U %S %M", "-o"]).arg(&report).arg(command.get_program()).args(command.get_args());
    timed.envs(command.get_envs().filter_map(|(k, v)| Some((k, v?))));
    match stdout {
        Some(path) => timed.stdout(std::fs::File::create(path).unwrap()),
        None => timed.stdout(Stdio::null()),
    };
    if let Some(input) = input {
        timed.stdin(std::fs::File::open(input).unwrap());
    }
    let before = process_cpu_s(broker_pid);
    let status = timed.status().expect("/usr/bin/time (Debian package time)");
    let broker_cpu_s = process_cpu_s(broker_pid) - before;
    assert!(status.success(), "{:?} failed", command.get_program());
    let text = std::fs::read_to_string(&report).unwrap();
    let fields: Vec<f64> = text.lines().last().unwrap().split_whitespace().map(|f| f.parse().unwrap()).collect();
    Run { wall_s: fields[0], cpu_s: fields[1] + fields[2], peak_rss_kb: fields[3] as u64, broker_cpu_s }
}

/// User + system CPU seconds of a process, from /proc.
pub fn process_cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the stat line (11 and 12 after the name).
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| f.iter().map(|t| t.parse::<f64>().unwrap_or(0.0)).sum());
    ticks / 100.0
}
