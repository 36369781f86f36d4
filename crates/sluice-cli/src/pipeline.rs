//! A job file's pipeline built from sluice-stream's operators: parse, filter, aggregate per key
//! (per batch, over processing-time windows, or over event-time windows with a watermark),
//! rank, and write to the sinks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sluice_client::ClientConfig;
use sluice_stream::{BatchInfo, DStream, JsonLinesFiles, KafkaRecord, KafkaSink, Sink, Timed, Watermark, Windowed};

use crate::job::{Aggregate, Filter, FormatKind, Function, Job, Op, SinkKind, TimeKind};

/// One parsed record, kept compact: the record itself (its key and value share the fetched
/// bytes) and where each CSV column lies in the value, rather than a map of owned strings.
#[derive(Debug, Clone)]
pub struct Row {
    record: KafkaRecord,
    fields: Fields,
}

/// A row's fields, by format.
#[derive(Debug, Clone)]
enum Fields {
    /// CSV: each column as a byte range of the value, or (quoted, with escapes) its text.
    Csv(Box<[Cell]>),
    /// JSON: the object.
    Json(Box<Map<String, Value>>),
    /// Raw: the value is the field `value`.
    Raw,
}

/// A CSV column.
#[derive(Debug, Clone)]
enum Cell {
    /// Bytes `start..end` of the value.
    Span(u32, u32),
    /// A quoted column's text.
    Text(Box<str>),
}

/// A field of the job file, resolved against the format once, when the job is built.
#[derive(Debug, Clone)]
enum Field {
    Key,
    Topic,
    Partition,
    Offset,
    Timestamp,
    /// A CSV column, by position.
    Column(usize),
    /// A JSON object's field, or `value` of a raw record.
    Named(String),
}

impl Field {
    fn resolve(name: &str, columns: &[String]) -> Self {
        match name {
            "_key" => Self::Key,
            "_topic" => Self::Topic,
            "_partition" => Self::Partition,
            "_offset" => Self::Offset,
            "_timestamp" => Self::Timestamp,
            _ => columns.iter().position(|c| c == name).map_or_else(|| Self::Named(name.to_owned()), Self::Column),
        }
    }
}

/// A field's value as a row holds it.
#[derive(Debug, Clone, Copy)]
enum Val<'a> {
    Null,
    Text(&'a str),
    Json(&'a Value),
    Int(i64),
}

impl Val<'_> {
    /// The value as a number: JSON numbers, and text that reads as one (CSV fields are text).
    fn number(self) -> Option<f64> {
        match self {
            Self::Json(value) => number(value),
            // Text such as `nan` or `inf` is not a number a sum or a mean can use.
            Self::Text(s) => s.trim().parse().ok().filter(|n: &f64| n.is_finite()),
            Self::Int(n) => Some(n as f64),
            Self::Null => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Self::Text(s) => Some(s),
            Self::Json(Value::String(s)) => Some(s),
            _ => None,
        }
    }

    fn as_bool(self) -> Option<bool> {
        match self {
            Self::Json(value) => value.as_bool(),
            _ => None,
        }
    }

    /// The value as a grouping key: text as it is, anything else as its JSON.
    fn key_text(self) -> String {
        match self {
            Self::Text(s) => s.to_owned(),
            Self::Json(Value::String(s)) => s.clone(),
            Self::Json(other) => other.to_string(),
            Self::Int(n) => n.to_string(),
            Self::Null => Value::Null.to_string(),
        }
    }
}

impl Row {
    /// The value of `field` (`Null` when the row does not have it).
    fn get(&self, field: &Field) -> Val<'_> {
        let record = &self.record;
        match (field, &self.fields) {
            (Field::Key, _) => record.key_str().map_or(Val::Null, Val::Text),
            (Field::Topic, _) => Val::Text(&record.topic),
            (Field::Partition, _) => Val::Int(i64::from(record.partition)),
            (Field::Offset, _) => Val::Int(record.offset),
            (Field::Timestamp, _) => Val::Int(record.timestamp),
            (Field::Column(index), Fields::Csv(cells)) => match cells.get(*index) {
                Some(Cell::Span(start, end)) => record
                    .value_str()
                    .and_then(|text| text.get(*start as usize..*end as usize))
                    .map_or(Val::Null, Val::Text),
                Some(Cell::Text(text)) => Val::Text(text),
                None => Val::Null,
            },
            (Field::Named(name), Fields::Json(fields)) => fields.get(name).map_or(Val::Null, Val::Json),
            (Field::Named(name), Fields::Raw) if name == "value" => record.value_str().map_or(Val::Null, Val::Text),
            _ => Val::Null,
        }
    }

    /// The row as a JSON object of its fields (CSV columns by name).
    fn into_json(self, columns: &[String]) -> Value {
        match self.fields {
            Fields::Json(fields) => Value::Object(*fields),
            Fields::Raw => {
                let mut fields = Map::new();
                let value = self.record.value_str().map_or(Value::Null, |t| Value::String(t.to_owned()));
                fields.insert("value".into(), value);
                Value::Object(fields)
            }
            Fields::Csv(_) => Value::Object(
                columns
                    .iter()
                    .enumerate()
                    .map(|(index, name)| {
                        let value = self
                            .get(&Field::Column(index))
                            .as_str()
                            .map_or(Value::Null, |t| Value::String(t.to_owned()));
                        (name.clone(), value)
                    })
                    .collect(),
            ),
        }
    }
}

/// A JSON value as a number (JSON numbers, and strings that read as one).
fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => Val::Text(s).number(),
        Value::Bool(_) | Value::Null | Value::Array(_) | Value::Object(_) => None,
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

/// A CSV line's columns: byte ranges of the line unless a column is quoted (then the columns
/// as `split_csv` reads them); `None` if the line does not have `count` columns.
fn csv_cells(line: &str, count: usize) -> Option<Box<[Cell]>> {
    let cells: Box<[Cell]> = if line.contains('"') {
        sluice_stream::split_csv(line).ok()?.into_iter().map(|text| Cell::Text(text.into_boxed_str())).collect()
    } else {
        let mut start = 0;
        line.split(',')
            .map(|column| {
                let cell = Cell::Span(u32::try_from(start).ok()?, u32::try_from(start + column.len()).ok()?);
                start += column.len() + 1;
                Some(cell)
            })
            .collect::<Option<_>>()?
    };
    (cells.len() == count).then_some(cells)
}

fn parse_record(record: KafkaRecord, format: FormatKind, columns: &[String]) -> Option<Row> {
    let fields = match format {
        FormatKind::Raw => Fields::Raw,
        FormatKind::Json => match serde_json::from_str::<Value>(record.value_str()?) {
            Ok(Value::Object(fields)) => Fields::Json(Box::new(fields)),
            _ => return None,
        },
        FormatKind::Csv => Fields::Csv(csv_cells(record.value_str()?, columns.len())?),
    };
    Some(Row { record, fields })
}

/// A filter with its field resolved.
#[derive(Debug, Clone)]
struct Compare {
    filter: Filter,
    field: Field,
}

fn compare(compare: &Compare, row: &Row) -> bool {
    let filter = &compare.filter;
    let value = row.get(&compare.field);
    if filter.op == Op::Contains {
        let toml::Value::String(needle) = filter.value.get_ref() else { return false };
        return value.as_str().is_some_and(|text| text.contains(needle.as_str()));
    }
    let ordering = match filter.value.get_ref() {
        toml::Value::Integer(n) => value.number().and_then(|v| v.partial_cmp(&(*n as f64))),
        toml::Value::Float(f) => value.number().and_then(|v| v.partial_cmp(f)),
        toml::Value::String(s) => value.as_str().map(|v| v.cmp(s.as_str())).or_else(|| {
            // A JSON number compared with text written as a number.
            value.number().zip(s.parse::<f64>().ok()).and_then(|(a, b)| a.partial_cmp(&b))
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
    let parse_columns = columns.clone();
    let rows = source.flat_map(move |record: KafkaRecord| {
        let row = parse_record(record, format, &parse_columns);
        if row.is_none() {
            unparsable.fetch_add(1, Ordering::Relaxed);
        }
        row
    });
    let filters: Vec<Compare> = job
        .file
        .filters
        .iter()
        .map(|f| Compare { filter: f.get_ref().clone(), field: Field::resolve(f.get_ref().field.get_ref(), &columns) })
        .collect();
    let rows = if filters.is_empty() { rows } else { rows.filter(move |row| filters.iter().all(|f| compare(f, row))) };
    let (out, late) = match &job.file.aggregate {
        None => (rows.map(move |row: Row| row.into_json(&columns)), None),
        Some(aggregate) => aggregated(rows, job, aggregate.get_ref(), &counters),
    };
    attach_sinks(out, job, client);
    Counters { late: late.unwrap_or_default(), ..counters }
}

/// The name of the aggregate's repartition topic in scale-out mode:
/// `<scale.group>-aggregate-repartition`.
const REPARTITION: &str = "aggregate";

/// Rows keyed and aggregated (per batch, or over windows), ranked if asked.
fn aggregated(
    rows: DStream<Row>,
    job: &Job,
    aggregate: &Aggregate,
    counters: &Counters,
) -> (DStream<Value>, Option<Arc<AtomicU64>>) {
    let shape = Shape::new(aggregate);
    let function = aggregate.function;
    let columns = job.columns();
    let key = aggregate.key.as_ref().map(|k| Field::resolve(k.get_ref(), &columns));
    let field = aggregate.field.as_ref().map(|f| Field::resolve(f.get_ref(), &columns));
    let unusable = Arc::clone(&counters.unusable);
    let keyed = move |row: &Row| -> Option<(String, Agg)> {
        let key = key.as_ref().map_or_else(|| "all".to_owned(), |k| row.get(k).key_text());
        let agg = match &field {
            None => Some(Agg::of(1.0)),
            Some(field) => row.get(field).number().map(Agg::of),
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
            // In scale-out mode each key's rows go to its task first (one process; without
            // `[scale]` this is the stream as it is).
            let reduced = rows.flat_map(move |row| keyed(&row)).repartition(REPARTITION).reduce_by_key(Agg::merge);
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
            let time_field = Field::resolve(window.time_field.as_ref().map_or("", |f| f.get_ref().as_str()), &columns);
            let mut watermark = Watermark::new(window.watermark.map_or(std::time::Duration::ZERO, |d| d.0));
            if let Some(idle) = window.idle_after {
                watermark = watermark.idle_after(idle.0);
            }
            let late = watermark.late_records();
            let unusable = Arc::clone(&counters.unusable);
            let timed = rows
                .flat_map(move |row: Row| {
                    let time = row.get(&time_field).number().filter(|t| t.is_finite()).map(|t| t as i64);
                    let keyed = keyed(&row);
                    if time.is_none() {
                        unusable.fetch_add(1, Ordering::Relaxed);
                    }
                    time.zip(keyed)
                })
                .with_watermark(watermark, |(time, _)| *time)
                .map(|timed: Timed<(i64, (String, Agg))>| timed.map(|(_, keyed)| keyed))
                // In scale-out mode each key's rows go to its task, with every source
                // partition's watermark, combined per slide first (one process: the stream
                // as it is).
                .repartition_combined(REPARTITION, slide, Agg::merge);
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

/// JSON lines on stdout, each piece of a batch written at once.
struct JsonStdout;

impl Sink<Value> for JsonStdout {
    async fn write(&mut self, _: &BatchInfo, items: Vec<Value>) -> Result<(), sluice_stream::BoxError> {
        use std::io::Write as _;
        let mut text = String::new();
        for item in &items {
            text.push_str(&item.to_string());
            text.push('\n');
        }
        let mut stdout = std::io::stdout().lock();
        Ok(stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
            .map_err(|e| format!("writing to stdout: {e}"))?)
    }

    fn takes_pieces(&self) -> bool {
        true
    }
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
            SinkKind::Stdout => this.to_sink(JsonStdout),
            SinkKind::Files => this.to_sink(JsonLinesFiles::new(spec.dir.clone().unwrap_or_default())),
            SinkKind::Kafka => {
                let topic = spec.topic.clone().unwrap_or_default();
                let sink = KafkaSink::json(client.clone(), topic, job.kafka_sink_id(spec));
                this.to_sink(if spec.transactional { sink.transactional() } else { sink });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(value: &str) -> KafkaRecord {
        KafkaRecord {
            topic: Arc::from("clicks"),
            partition: 3,
            offset: 42,
            timestamp: 1_700_000_000_000,
            key: Some(bytes::Bytes::from_static(b"k1")),
            value: Some(bytes::Bytes::copy_from_slice(value.as_bytes())),
            headers: Vec::new(),
        }
    }

    #[test]
    fn a_csv_row_keeps_where_its_columns_lie_and_reads_them_as_split_csv_does() {
        let columns: Vec<String> = ["user", "item", "time"].map(String::from).to_vec();
        let field = |name: &str| Field::resolve(name, &columns);
        let row = parse_record(record("u7,item-3,1700000000123"), FormatKind::Csv, &columns).unwrap();
        assert!(matches!(&row.fields, Fields::Csv(cells) if cells.iter().all(|c| matches!(c, Cell::Span(..)))));
        assert_eq!(row.get(&field("item")).as_str(), Some("item-3"));
        assert_eq!(row.get(&field("time")).number(), Some(1_700_000_000_123.0));
        assert_eq!(row.get(&field("_key")).key_text(), "k1");
        assert_eq!(row.get(&field("_partition")).key_text(), "3");
        assert_eq!(row.get(&field("_offset")).number(), Some(42.0));
        assert_eq!(row.get(&field("_topic")).as_str(), Some("clicks"));
        assert_eq!(row.get(&field("missing")).key_text(), "null");
        assert_eq!(row.into_json(&columns), json!({"user": "u7", "item": "item-3", "time": "1700000000123"}));
        // Quoted columns, an empty one, a quote inside: as split_csv reads them.
        let row = parse_record(record(r#""a, b",,"say ""hi""""#), FormatKind::Csv, &columns).unwrap();
        assert_eq!(row.into_json(&columns), json!({"user": "a, b", "item": "", "time": "say \"hi\""}));
        // The wrong number of columns, or a broken quote: not a row.
        assert!(parse_record(record("a,b"), FormatKind::Csv, &columns).is_none());
        assert!(parse_record(record(r#""a,b,c"#), FormatKind::Csv, &columns).is_none());
    }

    #[test]
    fn json_and_raw_rows_give_their_fields() {
        let row = parse_record(record(r#"{"item": "i", "n": 2.5, "ok": true}"#), FormatKind::Json, &[]).unwrap();
        assert_eq!(row.get(&Field::resolve("n", &[])).number(), Some(2.5));
        assert_eq!(row.get(&Field::resolve("ok", &[])).as_bool(), Some(true));
        assert_eq!(row.get(&Field::resolve("n", &[])).key_text(), "2.5");
        assert!(parse_record(record("[1]"), FormatKind::Json, &[]).is_none());
        let row = parse_record(record("hello"), FormatKind::Raw, &[]).unwrap();
        assert_eq!(row.get(&Field::resolve("value", &[])).as_str(), Some("hello"));
        assert_eq!(row.into_json(&[]), json!({"value": "hello"}));
    }
}
