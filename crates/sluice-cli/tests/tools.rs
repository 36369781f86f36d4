//! The everyday tools against a real broker: `topics`, `produce`, `consume`, `offsets`, and the
//! errors of bad flags.

#![allow(clippy::unwrap_used)]

use sluice_testkit as common;

mod cli;

use std::io::Write as _;
use std::process::{Command, Stdio};

use cli::{lines, ok, sluice, sluice_env};
use common::unique;

#[test]
fn topics_create_list_describe_delete() {
    let b = common::shared().addr.as_str();
    let orders = unique("orders");
    assert_eq!(
        ok(&sluice(b, &["topics", "create", orders.as_str(), "--partitions", "3"], "")),
        format!("created topic {orders} with 3 partitions\n")
    );
    let listed = ok(&sluice(b, &["topics", "list"], ""));
    assert!(lines(&listed).contains(&format!("{orders}\t3 partitions").as_str()), "{listed}");
    let json = ok(&sluice(b, &["topics", "list", "-J"], ""));
    assert!(json.contains(&format!(r#"{{"topic":"{orders}","partitions":3,"internal":false}}"#)), "{json}");
    let described = ok(&sluice(b, &["topics", "describe", orders.as_str()], ""));
    let rows = lines(&described);
    assert_eq!(rows[0], format!("topic {orders}: 3 partitions"));
    assert_eq!(rows.len(), 2 + 3, "{described}");
    assert!(rows[2].starts_with("0\t") && rows[2].ends_with("\t0\t0"), "an empty partition: {}", rows[2]);
    ok(&sluice(b, &["topics", "delete", orders.as_str()], ""));
    let after = ok(&sluice(b, &["topics", "list"], ""));
    assert!(!after.contains(orders.as_str()), "{after}");
    let missing = sluice(b, &["topics", "describe", orders.as_str()], "");
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains(&format!("topic {orders} does not exist")));
}

#[test]
fn produce_then_consume_in_every_format() {
    let b = common::shared().addr.as_str();
    let topic = unique("lines");
    ok(&sluice(b, &["topics", "create", topic.as_str(), "--partitions", "2"], ""));
    // Keyed lines with a header, zstd-compressed, all to partition 1; then plain lines to 0.
    let keyed: String = (0..50).map(|i| format!("k{i}:value {i}\n")).collect();
    ok(&sluice(b, &["produce", "-t", topic.as_str(), "-K", ":", "-H", "source=test", "-z", "zstd", "-p", "1"], &keyed));
    let plain: String = (0..30).map(|i| format!("plain {i}\n")).collect();
    ok(&sluice(b, &["produce", "-t", topic.as_str(), "-p", "0", "-z", "gzip"], &plain));

    let all = ok(&sluice(
        b,
        &["consume", "-t", topic.as_str(), "-o", "beginning", "-e", "-f", "%p|%o|%k|%s|%h|%K|%S\\n"],
        "",
    ));
    let all = lines(&all);
    assert_eq!(all.len(), 80);
    let p0: Vec<&str> = all.iter().copied().filter(|l| l.starts_with("0|")).collect();
    let p1: Vec<&str> = all.iter().copied().filter(|l| l.starts_with("1|")).collect();
    assert_eq!(p0, (0..30).map(|i| format!("0|{i}||plain {i}||-1|{}", format!("plain {i}").len())).collect::<Vec<_>>());
    let expected: Vec<String> = (0..50)
        .map(|i| format!("1|{i}|k{i}|value {i}|source=test|{}|{}", format!("k{i}").len(), format!("value {i}").len()))
        .collect();
    assert_eq!(p1, expected);

    // The default format is the value; -o -N takes the last N of each partition; -p one partition.
    let last = ok(&sluice(b, &["consume", "-t", topic.as_str(), "-o", "-2", "-p", "0", "-e"], ""));
    assert_eq!(last, "plain 28\nplain 29\n");
    let from = ok(&sluice(b, &["consume", "-t", topic.as_str(), "-o", "48", "-p", "1", "-e", "-f", "%k\\n"], ""));
    assert_eq!(from, "k48\nk49\n");
    // -c stops after that many records.
    let counted = ok(&sluice(b, &["consume", "-t", topic.as_str(), "-o", "beginning", "-p", "1", "-c", "3"], ""));
    assert_eq!(counted, "value 0\nvalue 1\nvalue 2\n");
    // JSON lines in kcat's shape.
    let json = ok(&sluice(b, &["consume", "-t", topic.as_str(), "-o", "beginning", "-p", "1", "-c", "1", "-J"], ""));
    let record: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(record["topic"], topic.as_str());
    assert_eq!(record["partition"], 1);
    assert_eq!(record["offset"], 0);
    assert_eq!(record["key"], "k0");
    assert_eq!(record["payload"], "value 0");
    assert_eq!(record["headers"], serde_json::json!(["source", "test"]));
    // A timestamp before every record starts at the beginning.
    let by_time = ok(&sluice(b, &["consume", "-t", topic.as_str(), "-o", "@0", "-p", "0", "-e"], ""));
    assert_eq!(lines(&by_time).len(), 30);
}

#[test]
fn group_consume_commits_and_offsets_show_lag() {
    let b = common::shared().addr.as_str();
    let events = unique("events");
    let readers = unique("readers");
    ok(&sluice(b, &["topics", "create", events.as_str(), "--partitions", "2"], ""));
    let input: String = (0..40).map(|i| format!("e{i}\n")).collect();
    ok(&sluice(b, &["produce", "-t", events.as_str()], &input));
    let before = ok(&sluice(b, &["offsets", "-t", events.as_str()], ""));
    let rows = lines(&before);
    assert_eq!(rows[0], "partition\tearliest\tlatest");
    let total: i64 = rows[1..].iter().map(|r| r.split('\t').nth(2).unwrap().parse::<i64>().unwrap()).sum();
    assert_eq!(total, 40, "{before}");

    let consumed =
        ok(&sluice(b, &["consume", "-t", events.as_str(), "-G", readers.as_str(), "-o", "beginning", "-e"], ""));
    let mut got: Vec<&str> = lines(&consumed);
    got.sort_unstable();
    let mut want: Vec<String> = (0..40).map(|i| format!("e{i}")).collect();
    want.sort_unstable();
    assert_eq!(got, want);

    ok(&sluice(b, &["produce", "-t", events.as_str()], "late 1\nlate 2\nlate 3\n"));
    // -c stops the group's read early: what was fetched but not printed stays for the group.
    let one = ok(&sluice(b, &["consume", "-t", events.as_str(), "-G", readers.as_str(), "-c", "1"], ""));
    assert_eq!(one.lines().count(), 1);
    let lag = ok(&sluice(b, &["offsets", "-t", events.as_str(), "-G", readers.as_str()], ""));
    assert!(lag.ends_with("total lag: 2\n"), "{lag}");
    let json = ok(&sluice(b, &["offsets", "-t", events.as_str(), "-G", readers.as_str(), "-J"], ""));
    let lags: i64 = lines(&json)
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["lag"].as_i64().unwrap())
        .sum();
    assert_eq!(lags, 2);
    // Without a topic: every partition the group committed, each line naming its topic.
    let all = ok(&sluice(b, &["offsets", "-G", readers.as_str()], ""));
    let rows = lines(&all);
    assert_eq!(rows[0], "topic\tpartition\tearliest\tlatest\tcommitted\tlag", "{all}");
    assert!(rows[1..3].iter().all(|r| r.starts_with(&format!("{events}\t"))), "{all}");
    assert!(all.ends_with("total lag: 2\n"), "{all}");
    let none = sluice(b, &["offsets", "-G", unique("nobody").as_str()], "");
    assert_eq!(none.status.code(), Some(1), "{none:?}");
    assert!(String::from_utf8_lossy(&none.stderr).contains("has committed no offsets"), "{none:?}");
    // The group resumes where it committed.
    let rest = ok(&sluice(b, &["consume", "-t", events.as_str(), "-G", readers.as_str(), "-e"], ""));
    let mut rest: Vec<&str> = lines(&rest);
    rest.push(one.trim_end());
    rest.sort_unstable();
    assert_eq!(rest, ["late 1", "late 2", "late 3"]);

    // -v tells of the member joining its group on stderr; RUST_LOG does as -v does; without
    // either, warnings only.
    let group = ["consume", "-t", events.as_str(), "-G", readers.as_str(), "-e"];
    let stderr = |output: &std::process::Output| String::from_utf8_lossy(&output.stderr).into_owned();
    let verbose = sluice(b, &[&["-v"][..], &group[..]].concat(), "");
    ok(&verbose);
    let joined = format!("joined group={readers}");
    assert!(stderr(&verbose).contains(&joined), "{}", stderr(&verbose));
    let logged = sluice_env(&group, &[("SLUICE_BROKERS", b), ("RUST_LOG", "sluice_client=info")], "");
    ok(&logged);
    assert!(stderr(&logged).contains(&joined), "{}", stderr(&logged));
    let quiet = sluice(b, &group, "");
    ok(&quiet);
    assert!(!stderr(&quiet).contains("joined"), "{}", stderr(&quiet));
}

#[test]
fn produce_shows_progress_and_generate_makes_clicks() {
    let b = common::shared().addr.as_str();
    let p = unique("p");
    let clicks = unique("clicks");
    ok(&sluice(b, &["topics", "create", p.as_str(), "--partitions", "1"], ""));
    let input: String = (0..1000).map(|i| format!("{i}\n")).collect();
    let output = sluice(b, &["produce", "-t", p.as_str(), "--progress"], &input);
    ok(&output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.rsplit('\r').next().unwrap();
    assert!(
        last.starts_with("1000 sent, 1000 acknowledged, 0 failed, ") && last.ends_with(" records/s\n"),
        "{stderr:?}"
    );

    // Reading a file, the line has a bar.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lines.txt");
    std::fs::write(&file, &input).unwrap();
    let output = sluice(b, &["produce", "-t", p.as_str(), "--progress", file.to_str().unwrap()], "");
    ok(&output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.rsplit('\r').next().unwrap();
    assert!(last.starts_with("[####################] 100% 1000 sent, 1000 acknowledged"), "{stderr:?}");
    let consumed = ok(&sluice(b, &["consume", "-t", p.as_str(), "-o", "beginning", "-e"], ""));
    assert_eq!(consumed, format!("{input}{input}"));

    // Lines need not be UTF-8.
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["produce", "-t", p.as_str(), "-p", "0"])
        .env("SLUICE_BROKERS", b)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(b"\xff\xfe bytes\nnext\n")?;
            child.wait_with_output()
        })
        .unwrap();
    ok(&output);
    let raw = ok(&sluice(b, &["consume", "-t", p.as_str(), "-o", "-2", "-e", "-f", "%S\n"], ""));
    assert_eq!(raw, "8\n4\n");

    // `generate` creates its topic and writes `user,item,time` lines with event time from now.
    let output = sluice(
        b,
        &["generate", "-t", clicks.as_str(), "--count", "500", "--rate", "0", "--users", "20", "--items", "5"],
        "",
    );
    ok(&output);
    let clicks = ok(&sluice(b, &["consume", "-t", clicks.as_str(), "-o", "beginning", "-e", "-f", "%k %s\n"], ""));
    let clicks: Vec<&str> = lines(&clicks);
    assert_eq!(clicks.len(), 500);
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    for line in clicks {
        let (key, value) = line.split_once(' ').unwrap();
        let fields: Vec<&str> = value.split(',').collect();
        assert_eq!(fields.len(), 3, "{line}");
        assert_eq!(key, fields[0], "keyed by user: {line}");
        let user: u32 = fields[0].strip_prefix("user-").unwrap().parse().unwrap();
        let item: u32 = fields[1].strip_prefix("item-").unwrap().parse().unwrap();
        let time: i64 = fields[2].parse().unwrap();
        assert!(user < 20 && (1..=5).contains(&item), "{line}");
        assert!((now_ms - 60_000..now_ms + 60_000).contains(&time), "event time near now: {line}");
    }
}

#[test]
fn bad_flags_and_values_exit_2_with_the_reason() {
    // None of these reach a broker.
    let b = "127.0.0.1:1";
    for (args, says) in [
        (vec!["consume", "-t", "x", "--bogus"], "unexpected argument '--bogus'"),
        (vec!["consume"], "--topic <TOPIC>"),
        (vec!["consume", "-t", "x", "-o", "soon"], "-o soon: use `beginning`, `end`"),
        (vec!["consume", "-t", "x", "-f", "%x"], "`%x` after `%` is not a token"),
        (vec!["produce", "-t", "x", "-z", "brotli"], "invalid value 'brotli'"),
        (vec!["produce", "-t", "x", "-H", "novalue"], "-H novalue: write a header as NAME=VALUE"),
        (vec!["generate", "--duration", "10 days"], "`days` is not a unit"),
        (vec!["topics", "create"], "<NAME>"),
    ] {
        let output = sluice(b, &args, "");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?} should say {says:?}: {stderr}");
    }
    // A broker that is not there is a failure (1) that says so.
    let output = sluice(b, &["topics", "list"], "");
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("are the brokers 127.0.0.1:1 right and running?"));
}

#[test]
fn every_command_has_help_with_examples() {
    let top = ok(&sluice("", &["--help"], ""));
    assert!(top.contains("Exit codes:") && top.contains("Examples:"), "{top}");
    for command in ["run", "produce", "consume", "topics", "offsets", "checkpoint", "generate"] {
        let help = ok(&sluice("", &[command, "--help"], ""));
        let examples = help.split_once("Examples:\n").map(|(_, e)| e).unwrap_or_default();
        assert!(
            examples.lines().count() >= 2 && examples.contains("sluice "),
            "{command} --help has no examples:\n{help}"
        );
    }
}

fn kcat() -> Command {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.peers/bin/kcat");
    assert!(path.exists(), "no kcat wrapper at {} (run scripts/install-peers.sh)", path.display());
    Command::new(path)
}

/// Runs `command` with `stdin` piped in; its stdout (it must succeed).
fn run_ok(mut command: Command, stdin: &[u8]) -> Vec<u8> {
    let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{command:?}: {}", String::from_utf8_lossy(&output.stderr));
    output.stdout
}

/// Keys, values and headers that are not UTF-8, written by kcat and by `sluice produce`, read
/// back by `sluice consume -f` byte for byte as kcat reads them; `-J` gives them as base64.
#[test]
fn consume_prints_the_exact_bytes_kcat_prints() {
    use std::os::unix::ffi::OsStrExt as _;
    let b = common::shared().addr.as_str();
    let topic = unique("raw-bytes");
    ok(&sluice(b, &["topics", "create", topic.as_str()], ""));
    let raw_header = std::ffi::OsStr::from_bytes(b"h1=v\xff");
    let mut by_kcat = kcat();
    by_kcat.args(["-P", "-b", b, "-t", &topic, "-K", ":", "-H"]).arg(raw_header).args(["-H", "h2=plain"]);
    run_ok(by_kcat, b"k\xff:v\xfe\xff\x80-end\nplain:value\n:empty key\n");
    let mut by_sluice = Command::new(env!("CARGO_BIN_EXE_sluice"));
    by_sluice.args(["produce", "-b", b, "-t", &topic, "-K", ":", "-H"]).arg(raw_header);
    run_ok(by_sluice, b"k2\xff:v2\xfe\nx:y\n");

    let format = "%t|%p|%o|%k|%s|%K|%S|%h\\n";
    let mut read_by_kcat = kcat();
    read_by_kcat.args(["-C", "-b", b, "-t", &topic, "-o", "beginning", "-e", "-q", "-f", format]);
    let kcat_bytes = run_ok(read_by_kcat, b"");
    let sluice_bytes = sluice(b, &["consume", "-t", topic.as_str(), "-o", "beginning", "-e", "-f", format], "");
    assert!(sluice_bytes.status.success(), "{}", String::from_utf8_lossy(&sluice_bytes.stderr));
    assert_eq!(sluice_bytes.stdout, kcat_bytes, "\nsluice: {:?}\nkcat:   {:?}", sluice_bytes.stdout, kcat_bytes);
    assert!(kcat_bytes.windows(11).any(|w| w == b"k\xff|v\xfe\xff\x80-end"), "{kcat_bytes:?}");

    let json = ok(&sluice(b, &["consume", "-t", topic.as_str(), "-o", "beginning", "-c", "1", "-J"], ""));
    let first: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(first["key"], serde_json::json!({"base64": "a/8="}));
    assert_eq!(first["payload"], serde_json::json!({"base64": "dv7/gC1lbmQ="}));
    assert_eq!(first["headers"], serde_json::json!(["h1", {"base64": "dv8="}, "h2", "plain"]));
}

/// `produce` reads lines as `kcat -P` does: a `\r` before the `\n` stays in the value, empty
/// lines are not sent, and a last line needs no `\n`.
#[test]
fn produce_takes_lines_as_kcat_does() {
    let b = common::shared().addr.as_str();
    let (ours, theirs) = (unique("lines-sluice"), unique("lines-kcat"));
    let input = b"crlf\r\n\nafter an empty line\n\n\nlast without newline";
    for topic in [&ours, &theirs] {
        ok(&sluice(b, &["topics", "create", topic.as_str()], ""));
    }
    let mut by_sluice = Command::new(env!("CARGO_BIN_EXE_sluice"));
    by_sluice.args(["produce", "-b", b, "-t", &ours]);
    run_ok(by_sluice, input);
    let mut by_kcat = kcat();
    by_kcat.args(["-P", "-b", b, "-t", &theirs]);
    run_ok(by_kcat, input);
    let format = ["-o", "beginning", "-e", "-f", "%S:%s\\n"];
    let read = |topic: &str| sluice(b, &[&["consume", "-t", topic][..], &format[..]].concat(), "").stdout;
    assert_eq!(read(&ours), b"5:crlf\r\n19:after an empty line\n20:last without newline\n");
    assert_eq!(read(&ours), read(&theirs));
}

/// SIGTERM, as `kill`, `timeout` and container stops send, ends `consume -G` as Ctrl-C does:
/// what it printed is committed and it leaves the group at once (exit 0).
#[test]
fn sigterm_commits_and_leaves_the_group() {
    use std::io::{BufRead as _, BufReader};
    let b = common::shared().addr.as_str();
    let topic = unique("terminated");
    let group = unique("terminated-readers");
    ok(&sluice(b, &["topics", "create", topic.as_str(), "--partitions", "2"], ""));
    let input: String = (0..100).map(|i| format!("r{i}\n")).collect();
    ok(&sluice(b, &["produce", "-t", topic.as_str()], &input));
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["consume", "-b", b, "-t", &topic, "-G", &group, "-o", "beginning"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    for printed in 0..100 {
        let mut line = String::new();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "consume ended after {printed} records");
    }
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status}");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = runtime.block_on(sluice_client::Client::connect(sluice_client::ClientConfig::new([b]))).unwrap();
    let committed = runtime.block_on(client.group_offsets(&group)).unwrap();
    assert_eq!(committed.values().sum::<i64>(), 100, "{committed:?}");
    let described = runtime.block_on(client.describe_group(&group)).unwrap();
    assert_eq!(described.state, "Empty", "the member left: {described:?}");
}
