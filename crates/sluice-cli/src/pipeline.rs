//! A job file's pipeline built from sluice-stream's operators: parse, filter, aggregate per key
//! (per batch, over processing-time windows, or over event-time windows with a watermark),
//! rank, and write to the sinks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sluice_client::ClientConfig;
use sluice_stream::{
    BatchInfo, DStream, ForEach, JsonLinesFiles, KafkaRecord, KafkaSink, Sink, Timed, Watermark, Windowed,
};

use crate::job::{Aggregate, Filter, FormatKind, Function, Job, Op, SinkKind, TimeKind};

/// One parsed record: its fields, and the record's own (`_key`, `_topic`, ...).
#[derive(Debug, Clone)]
pub struct Row {
    fields: Map<String, Value>,
    record: Arc<KafkaRecordMeta>,
}

/// The record fields of a row, shared by its copies.
#[derive(Debug)]
struct KafkaRecordMeta {
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    timestamp: i64,
    key: Option<String>,
}

impl Row {
    /// The value of `field` (`Null` when the row does not have it).
    fn get(&self, field: &str) -> Value {
        match field {
            "_key" => self.record.key.clone().map_or(Value::Null, Value::String),
            "_topic" => Value::String(self.record.topic.to_string()),
            "_partition" => json!(self.record.partition),
            "_offset" => json!(self.record.offset),
            "_timestamp" => json!(self.record.timestamp),
            _ => self.fields.get(field).cloned().unwrap_or(Value::Null),
        }
    }
}

/// A value as a number: JSON numbers, and text that reads as one (CSV fields are text).
fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        // Text such as `nan` or `inf` is not a number a sum or a mean can use.
        Value::String(s) => s.trim().parse().ok().filter(|n: &f64| n.is_finite()),
        Value::Bool(_) | Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// A value as a grouping key: text as it is, anything else as its JSON.
fn key_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Counts of rows the job could not use, for the progress line and metrics.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Records that were not in the job's format.
    pub unparsable: Arc<AtomicU64>,
    /// Rows without a usable aggregated field or event time.
    pub unusable: Arc<AtomicU64>,
    /// Rows after the watermark (event-time windows).
    pub late: Arc<AtomicU64>,
}

fn parse_record(record: &KafkaRecord, format: FormatKind, columns: &[String]) -> Option<Row> {
    let text = record.value_str();
    let fields = match format {
        FormatKind::Raw => {
            let mut fields = Map::new();
            fields.insert("value".into(), text.map_or(Value::Null, |t| Value::String(t.to_owned())));
            fields
        }
        FormatKind::Json => match serde_json::from_str::<Value>(text?) {
            Ok(Value::Object(fields)) => fields,
            _ => return None,
        },
        FormatKind::Csv => {
            let values = sluice_stream::split_csv(text?).ok()?;
            if values.len() != columns.len() {
                return None;
            }
            columns.iter().cloned().zip(values.into_iter().map(Value::String)).collect()
        }
    };
    let meta = KafkaRecordMeta {
        topic: Arc::clone(&record.topic),
        partition: record.partition,
        offset: record.offset,
        timestamp: record.timestamp,
        key: record.key_str().map(str::to_owned),
    };
    Some(Row { fields, record: Arc::new(meta) })
}

fn compare(filter: &Filter, row: &Row) -> bool {
    let value = row.get(filter.field.get_ref());
    if filter.op == Op::Contains {
        let toml::Value::String(needle) = filter.value.get_ref() else { return false };
        return value.as_str().is_some_and(|text| text.contains(needle.as_str()));
    }
    let ordering = match filter.value.get_ref() {
        toml::Value::Integer(n) => number(&value).and_then(|v| v.partial_cmp(&(*n as f64))),
        toml::Value::Float(f) => number(&value).and_then(|v| v.partial_cmp(f)),
        toml::Value::String(s) => value.as_str().map(|v| v.cmp(s.as_str())).or_else(|| {
            // A JSON number compared with text written as a number.
            number(&value).zip(s.parse::<f64>().ok()).and_then(|(a, b)| a.partial_cmp(&b))
        }),
        toml::Value::Boolean(b) => value.as_bool().map(|v| v.cmp(b)),
        _ => None,
    };
    let Some(ordering) = ordering else { return filter.op == Op::Ne };
    match filter.op {
        Op::Eq => ordering.is_eq(),
        Op::Ne => ordering.is_ne(),
        Op::Lt => ordering.is_lt(),
        Op::Le => ordering.is_le(),
        Op::Gt => ordering.is_gt(),
        Op::Ge => ordering.is_ge(),
        Op::Contains => false,
    }
}

/// A running aggregate: every function is read off the same four numbers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Agg {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

impl Agg {
    fn of(value: f64) -> Self {
        Self { count: 1, sum: value, min: value, max: value }
    }

    fn merge(self, other: Self) -> Self {
        Self {
            count: self.count + other.count,
            sum: self.sum + other.sum,
            min: self.min.min(other.min),
            max: self.max.max(other.max),
        }
    }

    /// The aggregate's value (a count as an integer).
    fn value(&self, function: Function) -> Value {
        match function {
            Function::Count => json!(self.count),
            _ => json!(self.number(function)),
        }
    }

    /// The aggregate's value as a number, for ranking.
    fn number(&self, function: Function) -> f64 {
        match function {
            Function::Count => self.count as f64,
            Function::Sum => self.sum,
            Function::Min => self.min,
            Function::Max => self.max,
            Function::Avg => self.sum / self.count.max(1) as f64,
        }
    }
}

/// How the aggregated rows are shaped for output.
#[derive(Debug, Clone)]
struct Shape {
    key_field: String,
    output: String,
    function: Function,
}

impl Shape {
    fn new(aggregate: &Aggregate) -> Self {
        let key_field = aggregate.key.as_ref().map_or_else(|| "key".to_owned(), |k| k.get_ref().clone());
        let output = aggregate.output.clone().unwrap_or_else(|| match &aggregate.field {
            Some(field) => format!("{}_{}", aggregate.function.name(), field.get_ref()),
            None => aggregate.function.name().to_owned(),
        });
        Self { key_field, output, function: aggregate.function }
    }

    fn row(&self, key: String, agg: &Agg, window: Option<(i64, i64)>, rank: Option<usize>) -> Value {
        let mut row = Map::new();
        if let Some((start, end)) = window {
            row.insert("window_start".into(), json!(start));
            row.insert("window_end".into(), json!(end));
        }
        if let Some(rank) = rank {
            row.insert("rank".into(), json!(rank));
        }
        row.insert(self.key_field.clone(), Value::String(key));
        row.insert(self.output.clone(), agg.value(self.function));
        Value::Object(row)
    }

    /// Greatest value first; ties to the key that sorts first.
    fn ranking(function: Function) -> impl Fn(&(String, Agg), &(String, Agg)) -> std::cmp::Ordering + Send + Clone {
        move |a: &(String, Agg), b: &(String, Agg)| {
            a.1.number(function).total_cmp(&b.1.number(function)).then_with(|| b.0.cmp(&a.0))
        }
    }
}

/// Builds the job on `source` and attaches its sinks; returns its counters.
pub fn build(source: DStream<KafkaRecord>, job: &Job, client: &ClientConfig) -> Counters {
    let counters = Counters::default();
    let (format, columns) = (job.format(), job.columns());
    let unparsable = Arc::clone(&counters.unparsable);
    let rows = source.flat_map(move |record: KafkaRecord| {
        let row = parse_record(&record, format, &columns);
        if row.is_none() {
            unparsable.fetch_add(1, Ordering::Relaxed);
        }
        row
    });
    let filters: Vec<Filter> = job.file.filters.iter().map(|f| f.get_ref().clone()).collect();
    let rows = if filters.is_empty() { rows } else { rows.filter(move |row| filters.iter().all(|f| compare(f, row))) };
    let (out, late) = match &job.file.aggregate {
        None => (rows.map(|row: Row| Value::Object(row.fields)), None),
        Some(aggregate) => aggregated(rows, job, aggregate.get_ref(), &counters),
    };
    attach_sinks(out, job, client);
    Counters { late: late.unwrap_or_default(), ..counters }
}

/// Rows keyed and aggregated (per batch, or over windows), ranked if asked.
fn aggregated(
    rows: DStream<Row>,
    job: &Job,
    aggregate: &Aggregate,
    counters: &Counters,
) -> (DStream<Value>, Option<Arc<AtomicU64>>) {
    let shape = Shape::new(aggregate);
    let function = aggregate.function;
    let key = aggregate.key.as_ref().map(|k| k.get_ref().clone());
    let field = aggregate.field.as_ref().map(|f| f.get_ref().clone());
    let unusable = Arc::clone(&counters.unusable);
    let keyed = move |row: &Row| -> Option<(String, Agg)> {
        let key = key.as_ref().map_or_else(|| "all".to_owned(), |k| key_text(&row.get(k)));
        let agg = match &field {
            None => Some(Agg::of(1.0)),
            Some(field) => number(&row.get(field)).map(Agg::of),
        };
        if agg.is_none() {
            unusable.fetch_add(1, Ordering::Relaxed);
        }
        agg.map(|agg| (key, agg))
    };
    let top = job.file.top.as_ref().map(|t| usize::try_from(*t.get_ref().k.get_ref()).unwrap_or(1));
    let ranking = Shape::ranking(function);
    match job.file.window.as_ref().map(|w| w.get_ref()) {
        None => {
            let reduced = rows.flat_map(move |row| keyed(&row)).reduce_by_key(Agg::merge);
            (ranked_batch(reduced, top, ranking, shape), None)
        }
        Some(window) if window.time == TimeKind::Processing => {
            let length = window.length.get_ref().0;
            let slide = window.slide.as_ref().map_or(length, |s| s.get_ref().0);
            let reduced =
                rows.flat_map(move |row| keyed(&row)).reduce_by_key_and_window(Agg::merge, None, length, slide);
            (ranked_batch(reduced, top, ranking, shape), None)
        }
        Some(window) => {
            let length = window.length.get_ref().0;
            let slide = window.slide.as_ref().map_or(length, |s| s.get_ref().0);
            let time_field = window.time_field.as_ref().map(|f| f.get_ref().clone()).unwrap_or_default();
            let mut watermark = Watermark::new(window.watermark.map_or(std::time::Duration::ZERO, |d| d.0));
            if let Some(idle) = window.idle_after {
                watermark = watermark.idle_after(idle.0);
            }
            let late = watermark.late_records();
            let unusable = Arc::clone(&counters.unusable);
            let timed = rows
                .flat_map(move |row: Row| {
                    let time = number(&row.get(&time_field)).filter(|t| t.is_finite()).map(|t| t as i64);
                    let keyed = keyed(&row);
                    if time.is_none() {
                        unusable.fetch_add(1, Ordering::Relaxed);
                    }
                    time.zip(keyed)
                })
                .with_watermark(watermark, |(time, _)| *time)
                .map(|timed: Timed<(i64, (String, Agg))>| timed.map(|(_, keyed)| keyed));
            let windows = timed.reduce_by_key_and_event_window(length, slide, Agg::merge);
            let windows = match top {
                Some(k) => windows.top_k_per_window(k, ranking),
                None => windows,
            };
            let ranked = top.is_some();
            let out = windows.map_partitions(move |items: Vec<Windowed<(String, Agg)>>| {
                let mut rank = 0;
                let mut last = None;
                items
                    .into_iter()
                    .map(|w| {
                        rank = if last == Some(w.start_ms) { rank + 1 } else { 1 };
                        last = Some(w.start_ms);
                        let (key, agg) = w.item;
                        shape.row(key, &agg, Some((w.start_ms, w.end_ms)), ranked.then_some(rank))
                    })
                    .collect()
            });
            (out, Some(late))
        }
    }
}

/// A batch's (or processing-time window's) aggregates as rows, the top `k` in rank order when
/// asked, otherwise in key order.
fn ranked_batch(
    reduced: DStream<(String, Agg)>,
    top: Option<usize>,
    ranking: impl Fn(&(String, Agg), &(String, Agg)) -> std::cmp::Ordering + Send + 'static,
    shape: Shape,
) -> DStream<Value> {
    match top {
        Some(k) => reduced.top_k(k, ranking).map_partitions(move |items: Vec<(String, Agg)>| {
            items.into_iter().enumerate().map(|(i, (key, agg))| shape.row(key, &agg, None, Some(i + 1))).collect()
        }),
        None => reduced.map_partitions(move |mut items: Vec<(String, Agg)>| {
            items.sort_by(|a, b| a.0.cmp(&b.0));
            items.into_iter().map(|(key, agg)| shape.row(key, &agg, None, None)).collect()
        }),
    }
}

/// JSON lines on stdout, each batch written at once.
fn stdout_sink() -> impl Sink<Value> {
    ForEach(|_: &BatchInfo, items: Vec<Value>| {
        use std::io::Write as _;
        let mut text = String::new();
        for item in &items {
            text.push_str(&item.to_string());
            text.push('\n');
        }
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()).map_err(|e| format!("writing to stdout: {e}"))
    })
}

fn attach_sinks(out: DStream<Value>, job: &Job, client: &ClientConfig) {
    let mut rest = Some(out);
    let count = job.file.sinks.len();
    for (index, sink) in job.file.sinks.iter().enumerate() {
        let Some(stream) = rest.take() else { return };
        let (this, next) = if index + 1 < count {
            let (a, b) = stream.tee();
            (a, Some(b))
        } else {
            (stream, None)
        };
        rest = next;
        let spec = sink.get_ref();
        match spec.kind {
            SinkKind::Stdout => this.to_sink(stdout_sink()),
            SinkKind::Files => this.to_sink(JsonLinesFiles::new(spec.dir.clone().unwrap_or_default())),
            SinkKind::Kafka => {
                let topic = spec.topic.clone().unwrap_or_default();
                let sink = KafkaSink::json(client.clone(), topic, job.kafka_sink_id(spec));
                this.to_sink(if spec.transactional { sink.transactional() } else { sink });
            }
        }
    }
}
