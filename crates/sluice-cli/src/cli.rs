//! The command line: every command, its flags, and its help with examples.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// sluice: Kafka streaming jobs and Kafka tools in one static binary.
#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "Kafka streaming jobs and everyday Kafka tools in one static binary (pure Rust, no JVM)",
    after_help = const_format_help(),
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Report more of what happens on stderr: -v reconnects, retries and rebalances, -vv each
    /// request, -vvv everything. Without it, warnings only (or what RUST_LOG says, e.g.
    /// RUST_LOG=sluice_client=debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

const fn const_format_help() -> &'static str {
    "Examples:
  sluice run jobs/clickstream.toml --metrics-addr 127.0.0.1:9100
  seq 1 100 | sluice produce -b localhost:9092 -t numbers
  sluice consume -b localhost:9092 -t numbers -o beginning -e -f '%p:%o %s\\n'
  sluice topics -b localhost:9092 create clicks --partitions 8
  sluice offsets -b localhost:9092 -t clicks --group my-job
  sluice checkpoint inspect /var/lib/sluice/clickstream

Exit codes:
  0  success (also a job stopped by SIGTERM or Ctrl-C after its batch committed)
  1  failure while working: broker unreachable, a request refused, a batch failed, I/O
  2  bad command line (unknown flag, missing or malformed value)
  3  the job file cannot be read or is not valid (the message names the line, the field and
     what is allowed)
  4  `checkpoint inspect` found damage in the log
  130  a second SIGTERM or Ctrl-C ended `run` at once (the next run redoes the batch under way)"
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a streaming job described by a job file.
    #[command(after_help = "Examples:
  sluice run jobs/clickstream.toml
  sluice run job.toml --metrics-addr 127.0.0.1:9100   # Prometheus metrics at /metrics (loopback only)
  sluice run job.toml --brokers kafka-1:9092 --quiet  # override the job's brokers, no progress lines

Prints one progress line per batch on stderr (rows, rate, lag, latency). SIGTERM or Ctrl-C stops
the job once the batch under way has committed; a second signal exits at once (the next run
resumes from the checkpoint). See the README for the job file reference.")]
    Run(RunArgs),
    /// Produce lines from stdin or files to a topic, one record per line.
    #[command(after_help = "Examples:
  seq 1 1000 | sluice produce -t numbers
  sluice produce -t clicks -K : clicks.txt            # `key:value` lines
  sluice produce -t logs -H source=web -z zstd app.log
  sluice produce -t events -p 0 -k tenant-7 < events.jsonl")]
    Produce(ProduceArgs),
    /// Consume records from a topic and print them.
    #[command(after_help = "Examples:
  sluice consume -t numbers -o beginning -e              # everything so far, then exit
  sluice consume -t clicks -o -10 -e                     # the last 10 of each partition
  sluice consume -t clicks -f 'p%p @%o key=%k %s\\n'      # kcat-style format
  sluice consume -t clicks -J -c 5                       # five records as JSON lines
  sluice consume -t clicks -G dashboards                 # as a member of a consumer group

Format tokens (-f): %t topic, %p partition, %o offset, %k key, %s value, %K key length,
%S value length, %T timestamp (ms), %h headers (name=value,...), %% a percent sign;
\\n newline, \\t tab, \\\\ backslash. Null keys and values print as empty.")]
    Consume(ConsumeArgs),
    /// List, create, delete or describe topics.
    #[command(after_help = "Examples:
  sluice topics list
  sluice topics create clicks --partitions 8
  sluice topics describe clicks
  sluice topics delete clicks")]
    Topics(TopicsArgs),
    /// Show each partition's earliest and latest offsets, and a group's committed offsets and lag.
    #[command(after_help = "Examples:
  sluice offsets -t clicks
  sluice offsets -t clicks --group dashboards
  sluice offsets -G clickstream-job           # every partition the group committed (a scale-out job's)
  sluice offsets -t clicks -J                 # JSON lines")]
    Offsets(OffsetsArgs),
    /// Work with a job's checkpoint log.
    #[command(after_help = "Examples:
  sluice checkpoint inspect /var/lib/sluice/clickstream
  sluice checkpoint inspect ckpt --batches 50 -J")]
    Checkpoint(CheckpointArgs),
    /// Produce a synthetic clickstream (`user,item,time` CSV lines) for trying jobs out.
    #[command(after_help = "Examples:
  sluice generate -t clicks --rate 2000 --duration 30s
  sluice generate -t clicks --count 100000 --rate 0     # as fast as possible")]
    Generate(GenerateArgs),
}

/// Where the brokers are.
#[derive(Debug, Clone, Args)]
pub struct BrokerArgs {
    /// Bootstrap brokers, `host:port`, comma-separated.
    #[arg(
        short = 'b',
        long = "brokers",
        env = "SLUICE_BROKERS",
        default_value = "localhost:9092",
        value_delimiter = ','
    )]
    pub brokers: Vec<String>,
    #[command(flatten)]
    pub security: crate::security::SecurityArgs,
}

/// `sluice run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The job file (TOML).
    pub job: PathBuf,
    /// Serve Prometheus metrics on this address (`host:port`), at `/metrics`.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<String>,
    /// Brokers to use instead of the job file's `source.brokers`, comma-separated.
    #[arg(short = 'b', long, value_delimiter = ',')]
    pub brokers: Option<Vec<String>>,
    /// Checkpoint directory to use instead of the job file's `checkpoint.dir`.
    #[arg(long, value_name = "DIR")]
    pub checkpoint_dir: Option<PathBuf>,
    /// Stop after this many batches.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_batches: Option<u64>,
    /// No progress lines.
    #[arg(short, long)]
    pub quiet: bool,
    /// Progress as JSON lines (the scheduler's progress records) instead of text.
    #[arg(long)]
    pub progress_json: bool,
    /// Only check the job file and print what the job does.
    #[arg(long)]
    pub check: bool,
    /// TLS and SASL (over the job file's `[security]`).
    #[command(flatten)]
    pub security: crate::security::SecurityArgs,
}

/// A compression codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Codec {
    /// No compression.
    None,
    /// gzip.
    Gzip,
    /// snappy.
    Snappy,
    /// LZ4.
    Lz4,
    /// Zstandard.
    Zstd,
}

/// `sluice produce`.
#[derive(Debug, Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// The topic.
    #[arg(short, long)]
    pub topic: String,
    /// Files to read lines from (stdin when none, or `-`).
    pub files: Vec<PathBuf>,
    /// Split each line at the first DELIM into key and value (kcat's -K).
    #[arg(short = 'K', long, value_name = "DELIM", conflicts_with = "key")]
    pub key_delimiter: Option<std::ffi::OsString>,
    /// The same key for every record.
    #[arg(short, long)]
    pub key: Option<std::ffi::OsString>,
    /// A header for every record, `name=value` (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME=VALUE")]
    pub headers: Vec<std::ffi::OsString>,
    /// Send every record to this partition (default: by key; records without one fill a batch
    /// of one partition, then of the next, as kcat's and the Java client's sticky partitioners).
    #[arg(short, long)]
    pub partition: Option<i32>,
    /// Compression codec.
    #[arg(short = 'z', long, value_enum, default_value = "none")]
    pub compression: Codec,
    /// Acknowledgements to wait for: all, 1 (the leader) or 0 (none).
    #[arg(long, default_value = "all", value_parser = ["all", "1", "0", "-1"])]
    pub acks: String,
    /// Show a progress line with the rate (default: when stderr is a terminal).
    #[arg(long, overrides_with = "no_progress")]
    pub progress: bool,
    /// Never show the progress line.
    #[arg(long)]
    pub no_progress: bool,
}

/// `sluice consume`.
#[derive(Debug, Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// The topic.
    #[arg(short, long)]
    pub topic: String,
    /// Only these partitions (repeatable; default all). Not with --group.
    #[arg(short, long = "partition", conflicts_with = "group")]
    pub partitions: Vec<i32>,
    /// Where to start: `beginning`, `end`, an offset, `-N` (N before the end), or `@MS` (the
    /// first record at or after a timestamp). With --group: where partitions without a
    /// committed offset start (`beginning` or `end`).
    #[arg(short, long, default_value = "end", allow_hyphen_values = true)]
    pub offset: String,
    /// Consume as a member of this consumer group (offsets committed as it goes).
    #[arg(short = 'G', long)]
    pub group: Option<String>,
    /// With --group: the group session timeout (`10s`, the broker's minimum is usually 6 s). A
    /// broker may hold a new member's join for part of it (Tansu 0.6 holds it for half).
    #[arg(long, value_parser = crate::duration::parse_arg, default_value = "10s", requires = "group")]
    pub session_timeout: std::time::Duration,
    /// Output format (see below); default `%s\n`.
    #[arg(short, long, conflicts_with = "json")]
    pub format: Option<String>,
    /// Each record as a JSON line.
    #[arg(short = 'J', long)]
    pub json: bool,
    /// Exit once every partition is read to its end.
    #[arg(short = 'e', long)]
    pub exit_at_end: bool,
    /// Exit after this many records.
    #[arg(short = 'c', long)]
    pub count: Option<u64>,
    /// Skip records of aborted transactions (read_committed).
    #[arg(long)]
    pub read_committed: bool,
}

/// `sluice topics`.
#[derive(Debug, Args)]
pub struct TopicsArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// What to do with topics.
    #[command(subcommand)]
    pub action: TopicsAction,
}

/// `sluice topics ...`.
#[derive(Debug, Subcommand)]
pub enum TopicsAction {
    /// Every topic with its partition count.
    List {
        /// JSON lines.
        #[arg(short = 'J', long)]
        json: bool,
        /// Include internal topics.
        #[arg(long)]
        all: bool,
    },
    /// Create a topic.
    Create {
        /// Its name.
        name: String,
        /// Partitions.
        #[arg(short, long, default_value_t = 1)]
        partitions: i32,
        /// Replicas of each partition.
        #[arg(short, long, default_value_t = 1)]
        replication_factor: i16,
    },
    /// Delete a topic.
    Delete {
        /// Its name.
        name: String,
    },
    /// A topic's partitions: leader, replicas, in-sync replicas, offsets.
    Describe {
        /// Its name.
        name: String,
        /// JSON lines.
        #[arg(short = 'J', long)]
        json: bool,
    },
}

/// `sluice offsets`.
#[derive(Debug, Args)]
pub struct OffsetsArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// The topic (without it, every partition the group committed, of any topic).
    #[arg(short, long, required_unless_present = "group")]
    pub topic: Option<String>,
    /// Also this group's committed offsets and lag.
    #[arg(short = 'G', long)]
    pub group: Option<String>,
    /// JSON lines.
    #[arg(short = 'J', long)]
    pub json: bool,
}

/// `sluice checkpoint`.
#[derive(Debug, Args)]
pub struct CheckpointArgs {
    /// What to do with the checkpoint.
    #[command(subcommand)]
    pub action: CheckpointAction,
}

/// `sluice checkpoint ...`.
#[derive(Debug, Subcommand)]
pub enum CheckpointAction {
    /// What a checkpoint log holds, read-only: batches, offset ranges, state sizes, damage.
    Inspect {
        /// The checkpoint directory.
        dir: PathBuf,
        /// The most recent batches to list.
        #[arg(long, default_value_t = 10)]
        batches: usize,
        /// One JSON document.
        #[arg(short = 'J', long)]
        json: bool,
    },
}

/// `sluice generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// The topic (created with 4 partitions when missing).
    #[arg(short, long, default_value = "clicks")]
    pub topic: String,
    /// Clicks per second, their event times that far apart (0: as fast as possible, event
    /// times 1 ms apart, ending now when `--count` is given).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Stop after this many clicks.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this long (`30s`, `2m`, `500ms`).
    #[arg(long, value_parser = crate::duration::parse_arg)]
    pub duration: Option<std::time::Duration>,
    /// Distinct users.
    #[arg(long, default_value_t = 10_000)]
    pub users: u32,
    /// Distinct items (their popularity follows Zipf's law).
    #[arg(long, default_value_t = 1_000)]
    pub items: u32,
    /// Seed of the pseudo-random choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}
