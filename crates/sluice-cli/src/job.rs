//! The job file: a declarative streaming job in TOML (the README has the reference).
//!
//! Parsing is TOML's own, into structs that refuse unknown fields, so a misspelt field, a
//! value of the wrong type or a word outside a list of allowed ones is reported with the line
//! it is on and what is allowed. Checks that span fields (a CSV column that does not exist,
//! `sum` without a field, a window without an aggregate) run after, and name the line and the
//! field the same way.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use toml::Spanned;

/// A duration written as `500ms`, `10s`, `1m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let duration = crate::duration::parse(&text).map_err(serde::de::Error::custom)?;
        if duration.subsec_nanos() % 1_000_000 != 0 {
            return Err(serde::de::Error::custom(format!("`{text}`: durations here are whole milliseconds")));
        }
        Ok(Dur(duration))
    }
}

/// A size in bytes written as `256MiB`, `1GiB`, `512KiB`, `64MB`, or a number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub usize);

impl Size {
    fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        let digits = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(digits);
        let unit_bytes: usize = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            other => {
                return Err(format!(
                    "`{text}`: unknown unit `{other}`; sizes are a number and B, KiB, MiB, GiB, KB, MB or GB"
                ))
            }
        };
        let number: usize =
            number.parse().map_err(|_| format!("`{text}`: a size is a whole number and a unit, e.g. `256MiB`"))?;
        number.checked_mul(unit_bytes).map(Size).ok_or_else(|| format!("`{text}` is too large"))
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Bytes(u64),
            Text(String),
        }
        match Written::deserialize(deserializer)? {
            Written::Bytes(bytes) => usize::try_from(bytes).map(Size).map_err(serde::de::Error::custom),
            Written::Text(text) => Size::parse(&text).map_err(serde::de::Error::custom),
        }
    }
}

/// The whole job file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    /// Names the job (its Kafka sinks' marker groups and transactional ids derive from it).
    pub name: Option<Spanned<String>>,
    /// What to read.
    pub source: Spanned<Source>,
    /// How records are parsed (raw when absent).
    pub format: Option<Spanned<FormatSpec>>,
    /// Rows kept: all filters must hold.
    #[serde(default, rename = "filter")]
    pub filters: Vec<Spanned<Filter>>,
    /// Group and aggregate.
    pub aggregate: Option<Spanned<Aggregate>>,
    /// Over windows.
    pub window: Option<Spanned<Window>>,
    /// Only the greatest aggregates.
    pub top: Option<Spanned<Top>>,
    /// Where progress and state are kept.
    pub checkpoint: Spanned<Checkpoint>,
    /// How much memory the job's records may take.
    pub memory: Option<Spanned<Memory>>,
    /// TLS and SASL for every connection to the brokers.
    pub security: Option<crate::security::SecuritySpec>,
    /// Where results go.
    #[serde(default, rename = "sink")]
    pub sinks: Vec<Spanned<SinkSpec>>,
    /// Run on several processes, sharing the partitions through a consumer group.
    pub scale: Option<Spanned<Scale>>,
}

/// `[scale]`: every process started with this job and `group` shares its partitions (the
/// scheduler's scale-out mode), each batch committing as one Kafka transaction.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scale {
    /// The consumer group the job's processes share.
    pub group: Spanned<String>,
    /// This process's stable name (static member, transactional id); default: the checkpoint's id.
    pub instance: Option<Spanned<String>>,
    /// `auto` (the default), `consumer` (KIP-848) or `classic` (cooperative).
    #[serde(default)]
    pub protocol: ProtocolSpec,
    /// Classic protocol: the member's session (default 45 s).
    pub session_timeout: Option<Dur>,
    /// How long a dead process's open transaction holds up readers (default 10 s).
    pub transaction_timeout: Option<Dur>,
    /// While a process catches up, how long one transaction spans its batches (default 2 s;
    /// "0s": every batch commits).
    pub commit_interval: Option<Dur>,
    /// How many other processes keep a warm copy of each task's state (default 0).
    #[serde(default)]
    pub standby_replicas: usize,
}

/// `scale.protocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProtocolSpec {
    /// The consumer protocol where the brokers offer it, classic otherwise.
    #[default]
    Auto,
    /// The consumer protocol (KIP-848).
    Consumer,
    /// The classic protocol, cooperative.
    Classic,
}

/// `[source]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// Bootstrap brokers.
    #[serde(default = "default_brokers")]
    pub brokers: Vec<String>,
    /// Topics read (every partition).
    pub topics: Spanned<Vec<String>>,
    /// Where partitions start on the job's first run.
    #[serde(default)]
    pub start: StartSpec,
    /// Instead of `start`: the first record at or after this time (ms since the epoch).
    pub start_time_ms: Option<Spanned<i64>>,
    /// Batch interval.
    #[serde(default = "default_interval")]
    pub batch_interval: Spanned<Dur>,
    /// At most this many records per partition per second.
    pub max_rate_per_partition: Option<Spanned<f64>>,
    /// Shrink batches when processing falls behind.
    #[serde(default)]
    pub backpressure: bool,
    /// Also commit each batch's end offsets to this consumer group (for lag tools).
    pub commit_to_group: Option<String>,
}

fn default_brokers() -> Vec<String> {
    vec!["localhost:9092".into()]
}

fn default_interval() -> Spanned<Dur> {
    Spanned::new(0..0, Dur(Duration::from_secs(1)))
}

/// `source.start`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartSpec {
    /// The log start.
    Earliest,
    /// Records produced from the job's first batch on.
    #[default]
    Latest,
}

/// `[format]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FormatSpec {
    /// The kind.
    #[serde(rename = "type")]
    pub kind: FormatKind,
    /// CSV column names, in order.
    pub columns: Option<Spanned<Vec<String>>>,
}

/// `format.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FormatKind {
    /// Comma-separated values with named columns.
    Csv,
    /// One JSON object per record.
    Json,
    /// The value as text, in the field `value`.
    Raw,
}

/// `[[filter]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// The field compared.
    pub field: Spanned<String>,
    /// The comparison.
    pub op: Op,
    /// What it is compared with.
    pub value: Spanned<toml::Value>,
}

/// `filter.op`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Op {
    /// Equal.
    #[serde(rename = "==")]
    Eq,
    /// Not equal.
    #[serde(rename = "!=")]
    Ne,
    /// Less.
    #[serde(rename = "<")]
    Lt,
    /// Less or equal.
    #[serde(rename = "<=")]
    Le,
    /// Greater.
    #[serde(rename = ">")]
    Gt,
    /// Greater or equal.
    #[serde(rename = ">=")]
    Ge,
    /// The text contains the value.
    #[serde(rename = "contains")]
    Contains,
}

/// `[aggregate]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Aggregate {
    /// Group by this field (one group when absent).
    pub key: Option<Spanned<String>>,
    /// The aggregation.
    pub function: Function,
    /// The field aggregated (not for `count`).
    pub field: Option<Spanned<String>>,
    /// The output field's name.
    #[serde(rename = "as")]
    pub output: Option<String>,
}

/// `aggregate.function`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Function {
    /// Rows.
    Count,
    /// Sum of the field.
    Sum,
    /// Least value.
    Min,
    /// Greatest value.
    Max,
    /// Mean.
    Avg,
}

impl Function {
    /// The name used in output fields.
    pub fn name(self) -> &'static str {
        match self {
            Self::Count => "count",
            Self::Sum => "sum",
            Self::Min => "min",
            Self::Max => "max",
            Self::Avg => "avg",
        }
    }
}

/// `[window]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Window length.
    pub length: Spanned<Dur>,
    /// How often a window starts (tumbling when absent).
    pub slide: Option<Spanned<Dur>>,
    /// Processing time (batch time) or event time (a field of the row).
    #[serde(default)]
    pub time: TimeKind,
    /// Event time: the field holding ms since the epoch (`_timestamp` is the record's).
    pub time_field: Option<Spanned<String>>,
    /// Event time: how far the watermark trails the greatest time seen.
    pub watermark: Option<Dur>,
    /// Event time: a partition quiet this long no longer holds the watermark back.
    pub idle_after: Option<Dur>,
}

/// `window.time`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeKind {
    /// Batch time.
    #[default]
    Processing,
    /// A time in the rows.
    Event,
}

/// `[top]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Top {
    /// How many.
    pub k: Spanned<i64>,
}

/// `[checkpoint]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// The directory (one job per directory).
    pub dir: PathBuf,
    /// A snapshot of the state every this many batches.
    pub snapshot_every: Option<Spanned<i64>>,
}

/// `[memory]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Memory {
    /// The budget for the job's records, fetched and as rows (default 64 MiB; `0` for no
    /// limit): batches hold at most an eighth of it, and a backlog is worked through in as many
    /// as it takes.
    pub budget: Spanned<Size>,
}

/// `[[sink]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSpec {
    /// The kind.
    #[serde(rename = "type")]
    pub kind: SinkKind,
    /// Kafka: the topic.
    pub topic: Option<String>,
    /// Kafka: write each batch in a transaction.
    #[serde(default)]
    pub transactional: bool,
    /// Kafka: the sink's id, naming its marker group and transactional id (default
    /// `<job name>-<topic>`). It must stay the same across runs of the job and differ between
    /// jobs: a changed id loses the sink's exactly-once re-runs, a shared one mixes two jobs'.
    pub id: Option<String>,
    /// Files: the directory.
    pub dir: Option<PathBuf>,
}

/// `sink.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// JSON lines on stdout.
    Stdout,
    /// JSON records to a Kafka topic.
    Kafka,
    /// One JSON-lines file per batch.
    Files,
}

/// Record fields every format has.
pub const RECORD_FIELDS: [&str; 5] = ["_key", "_topic", "_partition", "_offset", "_timestamp"];

/// A job file, read and checked.
#[derive(Debug)]
pub struct Job {
    /// The job's name.
    pub name: String,
    /// The file as written.
    pub file: JobFile,
}

impl Job {
    /// The record format (raw when not given).
    pub fn format(&self) -> FormatKind {
        self.file.format.as_ref().map_or(FormatKind::Raw, |f| f.get_ref().kind)
    }

    /// A Kafka sink's id: its `id`, else `<job name>-<topic>`.
    pub fn kafka_sink_id(&self, sink: &SinkSpec) -> String {
        sink.id.clone().unwrap_or_else(|| format!("{}-{}", self.name, sink.topic.as_deref().unwrap_or_default()))
    }

    /// CSV columns (empty for other formats).
    pub fn columns(&self) -> Vec<String> {
        self.file
            .format
            .as_ref()
            .and_then(|f| f.get_ref().columns.as_ref())
            .map_or_else(Vec::new, |c| c.get_ref().clone())
    }
}

/// Reads and checks the job file at `path`; the error names the line and field.
pub fn load(path: &Path) -> Result<Job, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading the job file {}: {e}", path.display()))?;
    parse(&text, path)
}

/// [`load`] on text (`path` names it in messages).
pub fn parse(text: &str, path: &Path) -> Result<Job, String> {
    let file: JobFile = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start));
        let mut message = e.message().trim_end().to_owned();
        // TOML's message names no key for a duplicate; the span covers it.
        if let Some(key) = e.span().and_then(|s| text.get(s)).filter(|_| message == "duplicate key") {
            message = format!("duplicate key `{key}`: each key may appear once per table");
        }
        match line {
            Some(line) => format!("{}:{line}: {message}", path.display()),
            None => format!("{}: {message}", path.display()),
        }
    })?;
    let name = match &file.name {
        Some(name) => name.get_ref().clone(),
        None => path.file_stem().map_or_else(|| "job".to_owned(), |s| s.to_string_lossy().into_owned()),
    };
    let job = Job { name, file };
    check(&job).map_err(|(at, message)| format!("{}:{}: {message}", path.display(), line_of(text, at)))?;
    Ok(job)
}

/// 1-based line of byte `at`.
fn line_of(text: &str, at: usize) -> usize {
    text.get(..at).map_or(1, |before| before.matches('\n').count() + 1)
}

/// A problem: where (a byte offset) and what.
type Problem = (usize, String);

/// Checks that a field named at `job.<what>` exists.
type FieldCheck<'a> = dyn Fn(&Spanned<String>, &str) -> Result<(), Problem> + 'a;

fn check(job: &Job) -> Result<(), Problem> {
    let file = &job.file;
    check_source(&file.source)?;
    if let Some(name) = &file.name {
        let ok = !name.get_ref().is_empty()
            && name.get_ref().chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            return Err((name.span().start, "`name`: use letters, digits, `-`, `_` and `.` only".into()));
        }
    }
    let fields = known_fields(job)?;
    let known = |field: &Spanned<String>, what: &str| -> Result<(), Problem> {
        match &fields {
            Some(names) if !names.contains(field.get_ref()) => Err((
                field.span().start,
                format!("`{what}`: there is no field `{}`; the fields are {}", field.get_ref(), list(names)),
            )),
            _ => Ok(()),
        }
    };
    for filter in &file.filters {
        let f = filter.get_ref();
        known(&f.field, "filter.field")?;
        if !matches!(
            f.value.get_ref(),
            toml::Value::String(_) | toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_)
        ) {
            return Err((f.value.span().start, "`filter.value`: use a string, a number or a boolean".into()));
        }
        if f.op == Op::Contains && !matches!(f.value.get_ref(), toml::Value::String(_)) {
            return Err((f.value.span().start, "`filter.value`: `contains` needs a string".into()));
        }
    }
    if let Some(aggregate) = &file.aggregate {
        let a = aggregate.get_ref();
        if let Some(key) = &a.key {
            known(key, "aggregate.key")?;
        }
        match (&a.field, a.function) {
            (Some(field), Function::Count) => {
                return Err((field.span().start, "`aggregate.field`: `count` counts rows; remove `field`".into()))
            }
            (Some(field), _) => known(field, "aggregate.field")?,
            (None, Function::Count) => {}
            (None, function) => {
                return Err((
                    aggregate.span().start,
                    format!("`aggregate.field` is missing: `{}` needs the field it aggregates", function.name()),
                ))
            }
        }
    }
    if let Some(window) = &file.window {
        check_window(window, file, &known)?;
    }
    if let Some(top) = &file.top {
        if file.aggregate.is_none() {
            return Err((top.span().start, "`[top]` ranks aggregates: add an `[aggregate]` section".into()));
        }
        if *top.get_ref().k.get_ref() < 1 {
            return Err((top.get_ref().k.span().start, "`top.k`: at least 1".into()));
        }
    }
    if let Some(every) = &file.checkpoint.get_ref().snapshot_every {
        if *every.get_ref() < 1 {
            return Err((every.span().start, "`checkpoint.snapshot_every`: at least 1 (batches)".into()));
        }
    }
    check_sinks(file)?;
    check_sink_ids(job)?;
    check_scale(file)
}

/// Scale-out runs filters, per-batch aggregates and event-time windows (through a repartition
/// topic) and rankings of event-time windows; processing-time windows are refused.
fn check_scale(file: &JobFile) -> Result<(), Problem> {
    let Some(scale) = &file.scale else { return Ok(()) };
    let s = scale.get_ref();
    if s.group.get_ref().is_empty() {
        return Err((s.group.span().start, "`scale.group`: name the consumer group the job's processes share".into()));
    }
    if let Some(instance) = s.instance.as_ref().filter(|i| i.get_ref().is_empty()) {
        return Err((instance.span().start, "`scale.instance`: leave it out, or give a name".into()));
    }
    // An aggregate goes through a repartition topic to its key's task, and event-time windows
    // with it (their watermark too); a ranking needs the windows' every key, which their
    // watermark tells it has come. Batch windows live in one process.
    let window = file.window.as_ref().map(|w| (w.span().start, w.get_ref()));
    let refused = match window {
        Some((at, w)) if w.time == TimeKind::Processing => Some((at, "a processing-time `[window]` with `[scale]`: its batches' aggregates live in one process and cannot move; use an event-time window (`time = \"event\"`)")),
        Some(_) => None,
        None => file.top.as_ref().map(|t| (t.span().start, "`[top]` with `[scale]` ranks event-time windows, whose watermark tells when every process has given its part; a per-batch ranking over every key cannot know that: add an event-time `[window]` or leave `[top]` out")),
    };
    if let Some((at, why)) = refused {
        return Err((at, why.into()));
    }
    if file.source.get_ref().commit_to_group.is_some() {
        return Err((
            scale.span().start,
            "`source.commit_to_group` with `[scale]`: the job's group holds its offsets; remove `commit_to_group`"
                .into(),
        ));
    }
    Ok(())
}

/// Kafka sinks need ids that stay put: an explicit job `name` (not the file's name, which a
/// copy or a rename changes), and no two sinks with one id.
fn check_sink_ids(job: &Job) -> Result<(), Problem> {
    let mut seen: Vec<String> = Vec::new();
    for sink in job.file.sinks.iter().filter(|s| s.get_ref().kind == SinkKind::Kafka) {
        if job.file.name.is_none() && sink.get_ref().id.is_none() {
            return Err((
                sink.span().start,
                "a Kafka sink needs the job's `name` (or its own `id`): it names the sink's marker group and transactional id, which must stay the same across runs of the job and differ between jobs".into(),
            ));
        }
        let id = job.kafka_sink_id(sink.get_ref());
        if seen.contains(&id) {
            return Err((sink.span().start, format!("two Kafka sinks have the id `{id}`: give each its own `id`")));
        }
        seen.push(id);
    }
    Ok(())
}

fn check_source(source: &Spanned<Source>) -> Result<(), Problem> {
    let s = source.get_ref();
    if s.topics.get_ref().is_empty() || s.topics.get_ref().iter().any(String::is_empty) {
        return Err((s.topics.span().start, "`source.topics`: name at least one topic".into()));
    }
    if let Some(time) = &s.start_time_ms {
        if *time.get_ref() < 0 {
            return Err((time.span().start, "`source.start_time_ms`: ms since the epoch, 0 or more".into()));
        }
    }
    if s.brokers.is_empty() {
        return Err((source.span().start, "`source.brokers`: name at least one broker (`host:port`)".into()));
    }
    if s.batch_interval.get_ref().0.is_zero() {
        return Err((s.batch_interval.span().start, "`source.batch_interval`: must be longer than 0".into()));
    }
    if let Some(rate) = &s.max_rate_per_partition {
        if !(*rate.get_ref() > 0.0 && rate.get_ref().is_finite()) {
            return Err((rate.span().start, "`source.max_rate_per_partition`: records per second, above 0".into()));
        }
    }
    Ok(())
}

/// The fields a row has, when the format says (CSV); `None` when any name may appear (JSON).
fn known_fields(job: &Job) -> Result<Option<Vec<String>>, Problem> {
    let record_fields = RECORD_FIELDS.iter().map(|s| (*s).to_owned());
    let Some(format) = &job.file.format else { return Ok(Some(record_fields.chain(["value".to_owned()]).collect())) };
    let f = format.get_ref();
    match (f.kind, &f.columns) {
        (FormatKind::Csv, None) => {
            Err((format.span().start, "`format.columns` is missing: CSV needs its column names, in order".into()))
        }
        (FormatKind::Csv, Some(columns)) => {
            let names = columns.get_ref();
            if names.is_empty() {
                return Err((columns.span().start, "`format.columns`: name at least one column".into()));
            }
            if let Some(dup) = names.iter().enumerate().find(|(i, n)| names.iter().skip(i + 1).any(|m| m == *n)) {
                return Err((columns.span().start, format!("`format.columns`: `{}` appears twice", dup.1)));
            }
            Ok(Some(names.iter().cloned().chain(record_fields).collect()))
        }
        (_, Some(columns)) => Err((
            columns.span().start,
            "`format.columns`: only CSV has columns; remove it or use `type = \"csv\"`".into(),
        )),
        (FormatKind::Json, None) => Ok(None),
        (FormatKind::Raw, None) => Ok(Some(record_fields.chain(["value".to_owned()]).collect())),
    }
}

fn check_window(window: &Spanned<Window>, file: &JobFile, known: &FieldCheck<'_>) -> Result<(), Problem> {
    let w = window.get_ref();
    if file.aggregate.is_none() {
        return Err((window.span().start, "`[window]` aggregates over time: add an `[aggregate]` section".into()));
    }
    let length = w.length.get_ref().0;
    let slide = w.slide.as_ref().map_or(length, |s| s.get_ref().0);
    let slide_at = w.slide.as_ref().map_or(w.length.span().start, |s| s.span().start);
    if length.is_zero() || slide.is_zero() {
        return Err((w.length.span().start, "`window.length` and `window.slide`: longer than 0".into()));
    }
    if !length.as_millis().is_multiple_of(slide.as_millis()) {
        return Err((
            slide_at,
            format!("`window.slide`: the length ({length:?}) must be a multiple of the slide ({slide:?})"),
        ));
    }
    match w.time {
        TimeKind::Processing => {
            let interval = file.source.get_ref().batch_interval.get_ref().0.as_millis();
            for (name, d, at) in [("length", length, w.length.span().start), ("slide", slide, slide_at)] {
                if d.as_millis() % interval != 0 {
                    return Err((
                        at,
                        format!("`window.{name}`: a processing-time window's {name} ({d:?}) must be a multiple of the batch interval ({interval} ms)"),
                    ));
                }
            }
            if let Some(field) = &w.time_field {
                return Err((field.span().start, "`window.time_field`: only for `time = \"event\"`".into()));
            }
        }
        TimeKind::Event => match &w.time_field {
            Some(field) => known(field, "window.time_field")?,
            None => {
                return Err((
                    window.span().start,
                    "`window.time_field` is missing: an event-time window needs the field with each row's time (ms since the epoch; `_timestamp` is the record's)".into(),
                ))
            }
        },
    }
    Ok(())
}

fn check_sinks(file: &JobFile) -> Result<(), Problem> {
    if file.sinks.is_empty() {
        return Err((
            file.checkpoint.span().end,
            "no `[[sink]]`: add one (`type = \"stdout\"`, `\"kafka\"` or `\"files\"`)".into(),
        ));
    }
    for sink in &file.sinks {
        let s = sink.get_ref();
        let at = sink.span().start;
        match s.kind {
            SinkKind::Kafka if s.topic.as_deref().is_none_or(str::is_empty) => {
                return Err((at, "`sink.topic` is missing: a Kafka sink needs the topic it writes".into()))
            }
            SinkKind::Files if s.dir.is_none() => {
                return Err((at, "`sink.dir` is missing: a files sink needs its directory".into()))
            }
            SinkKind::Stdout | SinkKind::Files if s.topic.is_some() || s.id.is_some() => {
                return Err((at, "`sink.topic` and `sink.id`: only Kafka sinks have them".into()))
            }
            SinkKind::Stdout | SinkKind::Kafka if s.dir.is_some() => {
                return Err((at, "`sink.dir`: only files sinks have a directory".into()))
            }
            _ if s.transactional && s.kind != SinkKind::Kafka => {
                return Err((at, "`sink.transactional`: only Kafka sinks write transactions".into()))
            }
            _ => {}
        }
    }
    Ok(())
}

fn list(names: &[String]) -> String {
    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::Size;

    #[test]
    fn sizes_are_a_number_and_a_unit() {
        assert_eq!(Size::parse("256MiB"), Ok(Size(256 << 20)));
        assert_eq!(Size::parse("1GiB"), Ok(Size(1 << 30)));
        assert_eq!(Size::parse("64 MB"), Ok(Size(64_000_000)));
        assert_eq!(Size::parse("4096"), Ok(Size(4096)));
        assert_eq!(Size::parse("0"), Ok(Size(0)));
        assert!(Size::parse("256 mb").unwrap_err().contains("unknown unit `mb`"));
        assert!(Size::parse("MiB").unwrap_err().contains("whole number"));
        assert!(Size::parse("99999999999999999999GiB").is_err());
    }
}
