//! Prometheus metrics of a running job, served at `/metrics` on `--metrics-addr` in the
//! Prometheus text format, by the `prometheus-client` library: counters and gauges read at each
//! scrape, and histograms (in seconds, Prometheus's base unit) of batch durations by phase and
//! of the client's request latencies by API and broker.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use sluice_scheduler::BatchProgress;
use sluice_stream::RestoreCounters;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use crate::pipeline::Counters;

/// Labels of one sample: name and value pairs.
type Labels = Vec<(&'static str, String)>;

/// What the job reports, updated after each batch and by the client's requests.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    state: Arc<Mutex<State>>,
    batch_seconds: Family<Labels, Histogram>,
}

/// Totals and the last batch, read at each scrape.
#[derive(Debug, Default)]
struct State {
    batches: u64,
    input_rows: u64,
    checkpoint_bytes: u64,
    /// Offsets each partition's committed batches consumed (in scale-out mode, what this
    /// process did of each task while it owned it).
    partition_offsets: std::collections::BTreeMap<(String, i32), u64>,
    /// Scale-out mode: the same for the batches of the transaction still open, counted once it
    /// commits.
    in_open_transaction: std::collections::BTreeMap<(String, i32), u64>,
    last: Option<BatchProgress>,
}

/// Histograms from 1 ms to about 65 s, doubling.
fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// The client's request latencies, by API and broker.
#[derive(Debug)]
pub struct RequestLatencies(Family<Labels, Histogram>);

impl Default for RequestLatencies {
    fn default() -> Self {
        Self(Family::new_with_constructor(seconds_histogram as fn() -> Histogram))
    }
}

impl sluice_client::RequestObserver for RequestLatencies {
    fn request_done(&self, broker: &str, api: &'static str, elapsed: Duration, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        let labels = vec![("api", api.to_owned()), ("broker", broker.to_owned()), ("outcome", outcome.to_owned())];
        self.0.get_or_create(&labels).observe(elapsed.as_secs_f64());
    }
}

impl Metrics {
    /// The metrics of the job `job`, whose pipeline counts into `counters`, whose scale-out
    /// restores count into `restored`, and whose connections tell `requests` of their requests.
    pub fn new(job: &str, (counters, restored): (Counters, RestoreCounters), requests: Arc<RequestLatencies>) -> Self {
        let labels = [(Cow::Borrowed("job"), Cow::Owned(job.to_owned()))];
        let mut registry = Registry::with_prefix_and_labels("sluice", labels.into_iter());
        let state = Arc::new(Mutex::new(State::default()));
        registry.register_collector(Box::new(Scrape { state: Arc::clone(&state), counters, restored }));
        let batch_seconds = Family::<Labels, Histogram>::new_with_constructor(seconds_histogram as fn() -> Histogram);
        registry.register(
            "batch_duration_seconds",
            "Committed batches' durations, by phase (planning, intent, fetching, processing, committing, total)",
            batch_seconds.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Kafka requests' latencies, from queued to answered, by API, broker and outcome",
            requests.0.clone(),
        );
        Self { registry, state, batch_seconds }
    }

    /// Counts a committed batch.
    pub fn record(&self, progress: &BatchProgress) {
        let d = &progress.durations;
        for (phase, ms) in phases(d) {
            self.batch_seconds.get_or_create(&vec![("phase", phase.to_owned())]).observe(ms as f64 / 1000.0);
        }
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.batches += 1;
        state.input_rows += progress.num_input_rows;
        state.checkpoint_bytes += progress.checkpoint_bytes;
        for source in &progress.sources {
            let consumed = u64::try_from(source.end_offset - source.start_offset).unwrap_or(0);
            *state.in_open_transaction.entry((source.topic.clone(), source.partition)).or_default() += consumed;
        }
        if !progress.transaction_open {
            let consumed = std::mem::take(&mut state.in_open_transaction);
            if !progress.aborted {
                for (partition, offsets) in consumed {
                    *state.partition_offsets.entry(partition).or_default() += offsets;
                }
            }
        }
        state.last = Some(progress.clone());
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }
}

fn phases(d: &sluice_scheduler::Durations) -> [(&'static str, u64); 6] {
    [
        ("planning", d.planning_ms),
        ("intent", d.intent_ms),
        ("fetching", d.fetching_ms),
        ("processing", d.processing_ms),
        ("committing", d.committing_ms),
        ("total", d.total_ms),
    ]
}

/// The counters and gauges read at a scrape.
#[derive(Debug)]
struct Scrape {
    state: Arc<Mutex<State>>,
    counters: Counters,
    restored: RestoreCounters,
}

fn counter<N>(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: N) -> std::fmt::Result
where
    ConstCounter<N>: EncodeMetric,
{
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn counters(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: &[(Labels, u64)],
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
    for (labels, value) in samples {
        ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauges(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, samples: &[(Labels, f64)]) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, ConstGauge::new(0.0).metric_type())?;
    for (labels, value) in samples {
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let e = &mut encoder;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        counter(e, "batches", "Batches committed by this process.", state.batches)?;
        counter(e, "input_rows", "Records read by committed batches.", state.input_rows)?;
        counter(e, "checkpoint_bytes", "Bytes written to the checkpoint log.", state.checkpoint_bytes)?;
        counter(e, "unparsable_records", "Records not in the job's format.", load(&self.counters.unparsable))?;
        let unusable = load(&self.counters.unusable);
        counter(e, "unusable_rows", "Rows without a usable aggregated field or event time.", unusable)?;
        counter(e, "late_rows", "Rows behind the watermark, dropped.", load(&self.counters.late))?;
        let r = &self.restored;
        let help =
            "Scale-out: tasks whose state was restored (taken on, or rebuilt after a batch that did not commit).";
        counter(e, "restored_tasks", help, load(&r.tasks))?;
        let help = "Scale-out: changelog records read by restores.";
        counter(e, "restored_records", help, load(&r.records))?;
        let help = "Scale-out: bytes of the keys and values of the changelog records read by restores.";
        counter(e, "restored_bytes", help, load(&r.bytes))?;
        let help = "Scale-out: time spent restoring (the next batch waits for it).";
        counter(e, "restore_seconds", help, load(&r.micros) as f64 / 1e6)?;
        let help = "Scale-out: tasks restored from a standby copy (standby_replicas).";
        counter(e, "standby_restored_tasks", help, load(&r.standby_tasks))?;
        let help = "Scale-out: keys restored from standby copies instead of read from changelogs.";
        counter(e, "standby_restored_keys", help, load(&r.standby_records))?;
        let consumed: Vec<(Labels, u64)> = state
            .partition_offsets
            .iter()
            .map(|((topic, partition), n)| (vec![("topic", topic.clone()), ("partition", partition.to_string())], *n))
            .collect();
        let help = "Offsets of each partition consumed by this process's committed batches (scale-out: per task).";
        counters(e, "partition_offsets", help, &consumed)?;
        let Some(last) = &state.last else { return Ok(()) };
        let help = "Partitions the last batch read (scale-out: the tasks this process owns, and their repartition partitions).";
        gauges(e, "owned_partitions", help, &[(Labels::new(), last.sources.len() as f64)])?;
        let one = |v: f64| [(Labels::new(), v)];
        gauges(e, "last_batch_id", "Id of the last committed batch.", &one(last.batch_id as f64))?;
        gauges(e, "last_batch_rows", "Records in the last batch.", &one(last.num_input_rows as f64))?;
        let rate = last.input_rows_per_second;
        gauges(e, "input_rows_per_second", "Records per second arriving, at the last batch.", &one(rate))?;
        let durations: Vec<(Labels, f64)> = phases(&last.durations)
            .iter()
            .map(|(phase, ms)| (vec![("phase", (*phase).to_owned())], *ms as f64 / 1000.0))
            .collect();
        gauges(e, "last_batch_duration_seconds", "The last batch's phases.", &durations)?;
        let lags: Vec<(Labels, f64)> = last
            .sources
            .iter()
            .map(|p| (vec![("topic", p.topic.clone()), ("partition", p.partition.to_string())], p.lag as f64))
            .collect();
        gauges(e, "partition_lag_records", "Records after the last batch's end.", &lags)
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
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else { return };
        let Ok((mut socket, _)) = listener.accept().await else {
            // Out of file descriptors, say: wait rather than spin.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let body = metrics.render();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_has_counters_gauges_and_histograms_in_seconds() {
        let requests = Arc::<RequestLatencies>::default();
        let restored = RestoreCounters::default();
        restored.tasks.store(3, Ordering::Relaxed);
        restored.micros.store(1_500_000, Ordering::Relaxed);
        restored.standby_tasks.store(2, Ordering::Relaxed);
        let metrics = Metrics::new("clicks \"top\"", (Counters::default(), restored), Arc::clone(&requests));
        let progress = BatchProgress {
            batch_id: 7,
            timestamp_ms: 0,
            num_input_rows: 40,
            num_input_bytes: 4000,
            pieces: 1,
            input_rows_per_second: 400.0,
            processed_rows_per_second: 800.0,
            durations: sluice_scheduler::Durations {
                planning_ms: 2,
                intent_ms: 1,
                fetching_ms: 20,
                processing_ms: 30,
                committing_ms: 3,
                total_ms: 56,
            },
            sources: vec![sluice_scheduler::PartitionProgress {
                topic: "clicks".into(),
                partition: 3,
                start_offset: 10,
                end_offset: 50,
                latest_offset: 60,
                lag: 10,
                lost_offsets: 0,
                reset_from: None,
            }],
            rerun: false,
            checkpoint_bytes: 100,
            aborted: false,
            transaction_open: false,
        };
        metrics.record(&progress);
        // An aborted batch's offsets were not consumed, nor those of the batches that left its
        // transaction open.
        metrics.record(&BatchProgress { transaction_open: true, ..progress.clone() });
        metrics.record(&BatchProgress { aborted: true, ..progress.clone() });
        sluice_client::RequestObserver::request_done(&*requests, "b:9092", "Fetch", Duration::from_millis(3), true);
        let text = metrics.render();
        for line in [
            "# TYPE sluice_batches_total counter",
            r#"sluice_batches_total{job="clicks \"top\""} 3"#,
            r#"sluice_input_rows_total{job="clicks \"top\""} 120"#,
            r#"sluice_partition_offsets_total{job="clicks \"top\"",topic="clicks",partition="3"} 40"#,
            r#"sluice_owned_partitions{job="clicks \"top\""} 1"#,
            r#"sluice_partition_lag_records{job="clicks \"top\"",topic="clicks",partition="3"} 10"#,
            r#"sluice_last_batch_duration_seconds{job="clicks \"top\"",phase="processing"} 0.03"#,
            "# TYPE sluice_batch_duration_seconds histogram",
            r#"sluice_batch_duration_seconds_bucket{job="clicks \"top\"",phase="processing",le="0.032"} 3"#,
            r#"sluice_batch_duration_seconds_count{job="clicks \"top\"",phase="total"} 3"#,
            r#"sluice_request_duration_seconds_count{job="clicks \"top\"",api="Fetch",broker="b:9092",outcome="ok"} 1"#,
            r#"sluice_restored_tasks_total{job="clicks \"top\""} 3"#,
            r#"sluice_restore_seconds_total{job="clicks \"top\""} 1.5"#,
            r#"sluice_standby_restored_tasks_total{job="clicks \"top\""} 2"#,
            r#"sluice_standby_restored_keys_total{job="clicks \"top\""} 0"#,
        ] {
            assert!(text.contains(line), "no {line} in\n{text}");
        }
    }
}
