//! The Kafka Streams peer (`scripts/peers/java/ClickstreamStreams.java`, run by
//! `.peers/bin/java-peer`): the clickstream query as a Kafka user would write it, run under GNU
//! time beside sluice in the benchmarks.

use std::time::Duration;

use sluice_client::{Client, ClientConfig};

/// What a Kafka Streams run printed, and what GNU time said of its process.
pub struct StreamsRun {
    pub clicks_per_s: f64,
    pub cpu_s: f64,
    pub peak_rss_mib: f64,
    /// Each published window's end and the wall-clock ms it was published at.
    pub published: Vec<(i64, i64)>,
}

/// Runs `ClickstreamStreams` on `input` under GNU time, with `args` after the four positional
/// ones; with `stop_after`, sends it SIGTERM then (a live run without an end).
pub fn kafka_streams(broker: &str, input: &str, args: &[&str], stop_after: Option<Duration>) -> StreamsRun {
    let java = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.peers/bin/java-peer");
    let output = crate::unique("top-items-streams");
    let app = crate::unique("clickstream-streams");
    let runtime = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| {
        runtime.block_on(async {
            let client = Client::connect(ClientConfig::new([broker])).await.unwrap();
            client.create_topic(&output, 1, 1).await.unwrap();
        })
    });
    let report = std::env::temp_dir().join(format!("sluice-bench-streams-{}", std::process::id()));
    let mut child = std::process::Command::new("/usr/bin/time")
        .args(["-f", "%e %U %S %M", "-o"])
        .arg(&report)
        .arg(java)
        .env("JAVA_PEER_OPTS", "-Xmx1g")
        .args(["ClickstreamStreams", broker, input, &output, &app])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("/usr/bin/time and .peers/bin/java-peer (scripts/install-peers.sh)");
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead as _;
        std::io::BufReader::new(stdout).lines().map_while(Result::ok).collect::<Vec<String>>()
    });
    if let Some(after) = stop_after {
        std::thread::sleep(after);
        // /usr/bin/time passes SIGTERM on to the JVM, which closes the application.
        let _ = std::process::Command::new("pkill").args(["-TERM", "-f", &app]).status();
    }
    let status = child.wait().unwrap();
    assert!(stop_after.is_some() || status.success(), "Kafka Streams failed: {status}");
    let lines = reader.join().unwrap();
    let values: Vec<serde_json::Value> = lines.iter().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let time = std::fs::read_to_string(&report).unwrap_or_default();
    let fields: Vec<f64> =
        time.lines().last().unwrap_or("").split_whitespace().filter_map(|f| f.parse().ok()).collect();
    let processed = values.iter().find(|v| v.get("processed").is_some());
    StreamsRun {
        clicks_per_s: processed.map_or(0.0, |p| p["processed"].as_f64().unwrap() / p["seconds"].as_f64().unwrap()),
        cpu_s: fields.get(1).copied().unwrap_or(0.0) + fields.get(2).copied().unwrap_or(0.0),
        peak_rss_mib: fields.get(3).copied().unwrap_or(0.0) / 1024.0,
        published: values
            .iter()
            .filter_map(|v| Some((v.get("window_end")?.as_i64()?, v.get("emitted_ms")?.as_i64()?)))
            .collect(),
    }
}
