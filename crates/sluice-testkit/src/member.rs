//! A peer client's consumer-group member running as a child process (the Java client's
//! `JavaPeer group-member`, or a confluent-kafka script), and what it reports: one JSON object
//! per line on stdout (`{"value": ...}`, `{"assigned": [partitions]}`, `{"revoked": ...}`,
//! `{"closed": ...}`); it leaves the group when it reads `stop` on stdin.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::Value;

/// What the members of a group test saw, by member name.
#[derive(Default)]
pub struct Seen {
    /// (member, value) of every record consumed, in the order reported.
    pub consumed: Mutex<Vec<(String, String)>>,
    /// Each member's current assignment.
    pub assignments: Mutex<BTreeMap<String, Vec<i32>>>,
}

impl Seen {
    pub fn count(&self) -> usize {
        self.consumed.lock().unwrap().len()
    }

    pub fn assignment(&self, member: &str) -> Vec<i32> {
        self.assignments.lock().unwrap().get(member).cloned().unwrap_or_default()
    }
}

/// A member process and the thread reading what it prints into a [`Seen`].
pub struct PeerMember {
    child: Child,
    stdin: ChildStdin,
    reader: std::thread::JoinHandle<()>,
    what: &'static str,
}

impl PeerMember {
    /// Starts `command` as the member called `name` (`what` names the client in failures).
    pub fn start(mut command: Command, what: &'static str, name: &str, seen: &Arc<Seen>) -> Self {
        let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (seen, name) = (Arc::clone(seen), name.to_owned());
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let v: Value = serde_json::from_str(&line.unwrap()).unwrap();
                if let Some(value) = v["value"].as_str() {
                    seen.consumed.lock().unwrap().push((name.clone(), value.to_owned()));
                } else if let Some(partitions) = v["assigned"].as_array() {
                    let partitions = partitions.iter().map(|p| p.as_i64().unwrap() as i32).collect();
                    seen.assignments.lock().unwrap().insert(name.clone(), partitions);
                } else if v.get("revoked").is_some() || v.get("closed").is_some() {
                    seen.assignments.lock().unwrap().remove(&name);
                }
            }
        });
        Self { child, stdin, reader, what }
    }

    /// Asks the member to leave the group and waits until it has exited.
    pub fn stop(mut self) {
        writeln!(self.stdin, "stop").unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the {} member failed: {status}", self.what);
        self.reader.join().unwrap();
    }
}
