//! The Java client (kafka-clients 4.4, the reference) as a peer: `scripts/peers/java/JavaPeer.java`,
//! compiled by `scripts/install-peers.sh` and run through `.peers/bin/java-peer`. It prints one
//! JSON object a line, bytes in base64.

use std::path::PathBuf;
use std::process::{Command, Output};

use base64::Engine as _;
use serde_json::Value;

/// One record as the Java client produced or consumed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JavaRecord {
    pub partition: i32,
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// Produced records only: `false` for a record of an aborted transaction.
    pub committed: Option<bool>,
    /// Consumed records only: `CreateTime` or `LogAppendTime`.
    pub timestamp_type: Option<String>,
}

/// `.peers/bin/java-peer JavaPeer`, ready for a command's arguments.
pub fn java_peer() -> Command {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.peers/bin/java-peer");
    assert!(path.exists(), "no Java peer at {} (run scripts/install-peers.sh)", path.display());
    let mut command = Command::new(path);
    command.env("JAVA_PEER_OPTS", "-Xmx256m -XX:TieredStopAtLevel=1").arg("JavaPeer");
    command
}

/// Runs the Java peer with `args` and returns its JSON lines (it must succeed).
pub fn run(args: &[&str]) -> Vec<Value> {
    let output = java_peer().args(args).output().expect("java runs");
    lines(&output, args)
}

fn lines(output: &Output, args: &[&str]) -> Vec<Value> {
    assert!(
        output.status.success(),
        "JavaPeer {} failed ({}):\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn bytes(value: &Value) -> Option<Vec<u8>> {
    value.as_str().map(|b64| base64::engine::general_purpose::STANDARD.decode(b64).unwrap())
}

/// The records among a run's lines (its last line, `{"done":...}`, left out).
pub fn records(lines: &[Value]) -> Vec<JavaRecord> {
    lines
        .iter()
        .filter(|v| v.get("offset").is_some())
        .map(|v| JavaRecord {
            partition: v["partition"].as_i64().unwrap() as i32,
            offset: v["offset"].as_i64().unwrap(),
            timestamp: v["timestamp"].as_i64().unwrap(),
            key: bytes(&v["key"]),
            value: bytes(&v["value"]),
            headers: v["headers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| (h[0].as_str().unwrap().to_owned(), bytes(&h[1])))
                .collect(),
            committed: v.get("committed").and_then(Value::as_bool),
            timestamp_type: v.get("timestamp_type").and_then(Value::as_str).map(str::to_owned),
        })
        .collect()
}

/// Every record of `topic` from the beginning, as the Java consumer reads it (`read_committed`
/// or not), in the order it returned them.
pub fn consume(broker: &str, topic: &str, read_committed: bool) -> Vec<JavaRecord> {
    let mut args = vec!["consume", broker, topic];
    if read_committed {
        args.push("--read-committed");
    }
    records(&run(&args))
}

/// The values of [`consume`], as text, in order.
pub fn consume_values(broker: &str, topic: &str, read_committed: bool) -> Vec<String> {
    consume(broker, topic, read_committed)
        .into_iter()
        .map(|r| String::from_utf8(r.value.unwrap_or_default()).unwrap())
        .collect()
}
