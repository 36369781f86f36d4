//! The commands a user runs, against the commands they would run instead: `sluice produce` and
//! `sluice consume` beside kcat (librdkafka 2.16) and Apache Kafka's console producer and
//! consumer (Java, kafka-tools 4.4), on one broker (Apache Kafka 4.4; Tansu with
//! `SLUICE_TEST_BROKER=tansu`, without the Java tools), in one run.
//!
//! The input is one file of 1,000,000 lines of 100 bytes (set `SLUICE_BENCH_RECORDS` to
//! change). Produce: each tool sends the whole file to a fresh topic of its own
//! (`sluice produce -t T FILE`, `kcat -P -t T -l FILE`, `ConsoleProducer --topic T < FILE`), each
//! with its defaults; the topic's log ends are checked to hold every line. Consume: each tool
//! reads the topic sluice produced from its beginning to its end into a file
//! (`sluice consume -t T -o beginning -e`, `kcat -C -t T -o beginning -e -q`,
//! `ConsoleConsumer --topic T --from-beginning --max-messages N`); the file is checked to hold
//! every line. 1 and 8 partitions.
//!
//! Every command is a whole process timed by GNU time, start-up included (the JVM's too: it is
//! what a user waits for): records/s, client CPU (user + system) per record and peak RSS; the
//! broker's CPU over the same interval is read from /proc. Each measurement is made in 3 rounds
//! (set `SLUICE_BENCH_ROUNDS`), the tools' order rotating from one round to the next; the table
//! gives each round and the medians, and sluice's ratios to each tool.
//!
//! Run: `cargo bench -p sluice-cli --bench tools` (needs `scripts/install-peers.sh`).
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)] // a command-line program

use sluice_testkit as common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::timing::{timed_to, Run};
use common::Kind;
use sluice_client::{Client, ClientConfig, Isolation};

const VALUE_BYTES: usize = 100;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|n| n.parse().ok()).unwrap_or(default)
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The command line of `tool` doing `phase` on `topic`.
fn command(tool: &str, phase: &str, broker: &str, topic: &str, input: &Path, n: usize) -> Command {
    let java = |class: &str| {
        let mut command = Command::new("java");
        command.args(["-Xmx512m", "-cp"]).arg(repo().join(".peers/kafka/lib/*")).arg(class);
        command.args(["--bootstrap-server", broker, "--topic", topic]);
        command
    };
    match (tool, phase) {
        ("sluice", "produce") => {
            let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
            command.args(["produce", "-b", broker, "-t", topic, "--no-progress"]).arg(input);
            command
        }
        ("sluice", _) => {
            let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
            command.args(["consume", "-b", broker, "-t", topic, "-o", "beginning", "-e"]);
            command
        }
        ("kcat", "produce") => {
            let mut command = Command::new(repo().join(".peers/bin/kcat"));
            command.args(["-P", "-b", broker, "-t", topic, "-l"]).arg(input);
            command
        }
        ("kcat", _) => {
            let mut command = Command::new(repo().join(".peers/bin/kcat"));
            command.args(["-C", "-b", broker, "-t", topic, "-o", "beginning", "-e", "-q"]);
            command
        }
        ("java", "produce") => java("org.apache.kafka.tools.ConsoleProducer"),
        (_, _) => {
            let mut command = java("org.apache.kafka.tools.consumer.ConsoleConsumer");
            command.args(["--from-beginning", "--max-messages", &n.to_string()]);
            command
        }
    }
}

/// One measured run.
struct Measured {
    round: usize,
    phase: &'static str,
    partitions: i32,
    tool: &'static str,
    run: Run,
}

fn main() {
    let n = env_number("SLUICE_BENCH_RECORDS", 1_000_000);
    let rounds = env_number("SLUICE_BENCH_ROUNDS", 3).max(1);
    let broker = common::Broker::start_for_benchmark();
    let tools: Vec<&'static str> =
        if broker.kind == Kind::Kafka { vec!["sluice", "kcat", "java"] } else { vec!["sluice", "kcat"] };
    let pid = broker.pid();
    println!(
        "commands against {} on {}: {n} lines of {VALUE_BYTES} bytes, {rounds} round(s), tools {}",
        broker.kind.name(),
        broker.addr,
        tools.join(", ")
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = runtime.block_on(Client::connect(ClientConfig::new([broker.addr.as_str()]))).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let input = scratch.path().join("lines.txt");
    let output = scratch.path().join("consumed.txt");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
    for i in 0..n {
        let mut line = format!("{i:010}-");
        line.extend(std::iter::repeat_n('x', VALUE_BYTES - line.len()));
        writeln!(file, "{line}").unwrap();
    }
    drop(file);

    // Produces with `tool` to a fresh topic and checks it holds every line.
    let produce = |tool: &str, partitions: i32| -> (String, Run) {
        let topic = common::unique(&format!("tools-{tool}-{partitions}"));
        runtime.block_on(client.create_topic(&topic, partitions, 1)).unwrap();
        let stdin = (tool == "java").then_some(input.as_path());
        let run = timed_to(pid, command(tool, "produce", &broker.addr, &topic, &input, n), stdin, None);
        let keys: Vec<(String, i32)> = (0..partitions).map(|p| (topic.clone(), p)).collect();
        let ends = runtime.block_on(client.log_ends(&keys, Isolation::ReadUncommitted)).unwrap();
        assert_eq!(ends.values().sum::<i64>(), n as i64, "{tool} produced {ends:?}");
        (topic, run)
    };
    let consume = |tool: &str, topic: &str| -> Run {
        let run = timed_to(pid, command(tool, "consume", &broker.addr, topic, &input, n), None, Some(&output));
        let lines = std::fs::read(&output).unwrap().iter().filter(|&&b| b == b'\n').count();
        assert_eq!(lines, n, "{tool} consumed {lines} lines");
        run
    };

    // The broker's JVM compiles its hot paths as it runs: every tool's work once on 1 and on 8
    // partitions, unmeasured.
    for partitions in [1, 8] {
        for &tool in &tools {
            let (topic, _) = produce(tool, partitions);
            consume(tool, &topic);
        }
    }
    let mut measured = Vec::new();
    for round in 0..rounds {
        let mut order = tools.clone();
        order.rotate_left(round % tools.len());
        for partitions in [1, 8] {
            let mut sluice_topic = String::new();
            for &tool in &order {
                let (topic, run) = produce(tool, partitions);
                if tool == "sluice" {
                    sluice_topic = topic;
                }
                measured.push(Measured { round, phase: "produce", partitions, tool, run });
            }
            for &tool in &order {
                let run = consume(tool, &sluice_topic);
                measured.push(Measured { round, phase: "consume", partitions, tool, run });
            }
        }
    }
    print_tables(&measured, &tools, rounds, n);
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn print_tables(measured: &[Measured], tools: &[&str], rounds: usize, n: usize) {
    let per_record_us = |seconds: f64| seconds * 1e6 / n as f64;
    println!("\nevery run:\n");
    println!("| round | phase | partitions | tool | records/s | client CPU us/record | peak RSS MiB | broker CPU us/record |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for m in measured {
        println!(
            "| {} | {} | {} | {} | {:.0} | {:.3} | {:.0} | {:.3} |",
            m.round + 1,
            m.phase,
            m.partitions,
            m.tool,
            n as f64 / m.run.wall_s,
            per_record_us(m.run.cpu_s),
            m.run.peak_rss_kb as f64 / 1024.0,
            per_record_us(m.run.broker_cpu_s)
        );
    }
    println!("\nmedians of {rounds} round(s):\n");
    println!("| phase | partitions | tool | records/s | client CPU us/record | peak RSS MiB | sluice speed ratio | sluice CPU ratio |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for phase in ["produce", "consume"] {
        for partitions in [1, 8] {
            let of = |tool: &str, value: fn(&Run) -> f64| {
                median(
                    measured
                        .iter()
                        .filter(|m| m.phase == phase && m.partitions == partitions && m.tool == tool)
                        .map(|m| value(&m.run))
                        .collect(),
                )
            };
            let sluice_wall = of("sluice", |r| r.wall_s);
            let sluice_cpu = of("sluice", |r| r.cpu_s);
            for &tool in tools {
                let (wall, cpu, rss) =
                    (of(tool, |r| r.wall_s), of(tool, |r| r.cpu_s), of(tool, |r| r.peak_rss_kb as f64));
                let (speed, cpu_ratio) = if tool == "sluice" {
                    ("-".to_owned(), "-".to_owned())
                } else {
                    (format!("{:.2}x", wall / sluice_wall), format!("{:.2}x", cpu / sluice_cpu))
                };
                println!(
                    "| {phase} | {partitions} | {tool} | {:.0} | {:.3} | {:.0} | {speed} | {cpu_ratio} |",
                    n as f64 / wall,
                    per_record_us(cpu),
                    rss / 1024.0
                );
            }
        }
    }
    println!(
        "\nspeed ratio = the tool's wall time / sluice's; CPU ratio = the tool's client CPU / sluice's (above 1: sluice better)"
    );
    println!("every time is a whole process, start-up included (the Java tools' JVM start-up too)");
}
