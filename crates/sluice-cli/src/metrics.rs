//! Prometheus metrics of a running job, served as text at `/metrics` on `--metrics-addr`.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use sluice_scheduler::BatchProgress;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use crate::pipeline::Counters;

/// What the metrics report, updated after each batch.
#[derive(Debug, Default)]
pub struct Metrics {
    batches: u64,
    input_rows: u64,
    checkpoint_bytes: u64,
    last: Option<BatchProgress>,
}

/// Metrics shared between the job and the server.
pub type SharedMetrics = Arc<Mutex<Metrics>>;

impl Metrics {
    /// Counts a committed batch.
    pub fn record(&mut self, progress: &BatchProgress) {
        self.batches += 1;
        self.input_rows += progress.num_input_rows;
        self.checkpoint_bytes += progress.checkpoint_bytes;
        self.last = Some(progress.clone());
    }

    /// The Prometheus text exposition.
    pub fn render(&self, job: &str, counters: &Counters) -> String {
        let mut text = String::new();
        let job = job.replace('\\', "\\\\").replace('"', "\\\"");
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
            let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(text, "{name}{{job=\"{job}\"{labels}}} {value}");
            }
        };
        let one = |v: f64| vec![(String::new(), v)];
        metric("sluice_batches_total", "counter", "Batches committed by this process.", &one(self.batches as f64));
        metric(
            "sluice_input_rows_total",
            "counter",
            "Records read by committed batches.",
            &one(self.input_rows as f64),
        );
        metric(
            "sluice_checkpoint_bytes_total",
            "counter",
            "Bytes written to the checkpoint log.",
            &one(self.checkpoint_bytes as f64),
        );
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed) as f64;
        metric(
            "sluice_unparsable_records_total",
            "counter",
            "Records not in the job's format.",
            &one(load(&counters.unparsable)),
        );
        metric(
            "sluice_unusable_rows_total",
            "counter",
            "Rows without a usable aggregated field or event time.",
            &one(load(&counters.unusable)),
        );
        metric("sluice_late_rows_total", "counter", "Rows behind the watermark, dropped.", &one(load(&counters.late)));
        if let Some(last) = &self.last {
            metric("sluice_last_batch_id", "gauge", "Id of the last committed batch.", &one(last.batch_id as f64));
            metric("sluice_last_batch_rows", "gauge", "Records in the last batch.", &one(last.num_input_rows as f64));
            metric(
                "sluice_input_rows_per_second",
                "gauge",
                "Records per second arriving, at the last batch.",
                &one(last.input_rows_per_second),
            );
            let d = &last.durations;
            let phases: Vec<(String, f64)> = [
                ("planning", d.planning_ms),
                ("intent", d.intent_ms),
                ("fetching", d.fetching_ms),
                ("processing", d.processing_ms),
                ("committing", d.committing_ms),
                ("total", d.total_ms),
            ]
            .iter()
            .map(|(phase, ms)| (format!(",phase=\"{phase}\""), *ms as f64))
            .collect();
            metric("sluice_last_batch_duration_ms", "gauge", "The last batch's phases, ms.", &phases);
            let lags: Vec<(String, f64)> = last
                .sources
                .iter()
                .map(|p| (format!(",topic=\"{}\",partition=\"{}\"", p.topic, p.partition), p.lag as f64))
                .collect();
            metric("sluice_partition_lag_records", "gauge", "Records after the last batch's end.", &lags);
        }
        text
    }
}

/// Connections served at once. Further ones wait in the kernel's listen queue, where they hold
/// no file descriptor of the job's: however many connect, the job keeps the descriptors its
/// checkpoint and brokers need.
pub const MAX_CONNECTIONS: usize = 16;

/// Largest request head read; a longer one is answered as not found.
const MAX_REQUEST_BYTES: usize = 8192;

/// How long a connection may take to send its request and take the answer.
const CONNECTION_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves `render()` at `GET /metrics` on `listener` until the process ends, to at most
/// [`MAX_CONNECTIONS`] connections at once, each for at most 5 s.
pub async fn serve(listener: TcpListener, metrics: SharedMetrics, job: String, counters: Counters) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else { return };
        let Ok((mut socket, _)) = listener.accept().await else {
            // Out of file descriptors, say: wait rather than spin.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let body = {
            let metrics = metrics.lock().unwrap_or_else(PoisonError::into_inner);
            metrics.render(&job, &counters)
        };
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(CONNECTION_DEADLINE, answer(&mut socket, &body)).await;
        });
    }
}

/// Reads one request's head and answers it.
async fn answer(socket: &mut tokio::net::TcpStream, body: &str) {
    // One request per connection; the request line is all that matters, but the whole head is
    // read so that closing does not reset the connection under the client.
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_BYTES {
        match socket.read(&mut chunk).await {
            Ok(n) if n > 0 => head.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head);
    let response = if head.starts_with("GET /metrics ") || head.starts_with("GET / ") {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    } else {
        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
    };
    let _ = socket.write_all(response.as_bytes()).await;
    let _ = socket.shutdown().await;
}
