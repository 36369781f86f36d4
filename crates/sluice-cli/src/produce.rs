//! `sluice produce`: lines from stdin or files, one record per line.

use std::collections::VecDeque;
use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_client::{Acks, DeliveryFuture, Producer, ProducerConfig, ProducerRecord};
use sluice_protocol::compression::Compression;
use sluice_protocol::record::RecordHeader;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};

use crate::cli::{Codec, ProduceArgs};
use crate::connect;
use crate::error::{CliError, CliResult};

/// Deliveries awaited at most at once; older ones are awaited first so memory stays bounded.
const MAX_PENDING: usize = 50_000;

/// How each line becomes a record.
struct Shape {
    topic: String,
    partition: Option<i32>,
    key: Option<Bytes>,
    key_delimiter: Option<String>,
    headers: Vec<RecordHeader>,
}

impl Shape {
    fn record(&self, line: &[u8]) -> ProducerRecord {
        let (key, value) = match &self.key_delimiter {
            Some(delimiter) => match split_once(line, delimiter.as_bytes()) {
                Some((key, value)) => (Some(Bytes::copy_from_slice(key)), value),
                None => (None, line),
            },
            None => (self.key.clone(), line),
        };
        ProducerRecord {
            partition: self.partition,
            key,
            headers: self.headers.clone(),
            ..ProducerRecord::new(self.topic.clone(), Bytes::copy_from_slice(value))
        }
    }
}

/// `line` split at the first `delimiter` (not empty), without it.
fn split_once<'a>(line: &'a [u8], delimiter: &[u8]) -> Option<(&'a [u8], &'a [u8])> {
    if delimiter.is_empty() {
        return None;
    }
    let at = line.windows(delimiter.len()).position(|w| w == delimiter)?;
    Some((line.get(..at)?, line.get(at + delimiter.len()..)?))
}

fn headers(specs: &[String]) -> CliResult<Vec<RecordHeader>> {
    specs
        .iter()
        .map(|spec| match spec.split_once('=') {
            Some((name, value)) => Ok(RecordHeader {
                key: Bytes::copy_from_slice(name.as_bytes()),
                value: Some(Bytes::copy_from_slice(value.as_bytes())),
            }),
            None => Err(CliError::Usage(format!("-H {spec}: write a header as NAME=VALUE"))),
        })
        .collect()
}

/// Sent and acknowledged counts, and the progress line.
struct Progress {
    show: bool,
    started: Instant,
    last_shown: Instant,
    sent: u64,
    acknowledged: u64,
    failed: u64,
    first_error: Option<String>,
    /// Bytes of input read, and in all when the input is files (for the bar).
    read_bytes: u64,
    total_bytes: Option<u64>,
}

impl Progress {
    fn settle(&mut self, delivered: sluice_client::Result<sluice_client::RecordMetadata>) {
        match delivered {
            Ok(_) => self.acknowledged += 1,
            Err(e) => {
                self.failed += 1;
                self.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }

    fn tick(&mut self, last: bool) {
        if !self.show || (!last && self.last_shown.elapsed() < Duration::from_millis(200)) {
            return;
        }
        self.last_shown = Instant::now();
        let rate = self.acknowledged as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
        let end = if last { "\n" } else { "" };
        let bar = match self.total_bytes {
            Some(total) if total > 0 => {
                let done = (self.read_bytes.min(total) * 20 / total) as usize;
                format!(
                    "[{}{}] {:3}% ",
                    "#".repeat(done),
                    ".".repeat(20 - done),
                    self.read_bytes.min(total) * 100 / total
                )
            }
            _ => String::new(),
        };
        let _ = write!(
            std::io::stderr(),
            "\r{bar}{} sent, {} acknowledged, {} failed, {rate:.0} records/s{end}",
            self.sent,
            self.acknowledged,
            self.failed
        );
    }
}

pub async fn produce(args: ProduceArgs) -> CliResult {
    let shape = Shape {
        topic: args.topic.clone(),
        partition: args.partition,
        key: args.key.as_ref().map(|k| Bytes::copy_from_slice(k.as_bytes())),
        key_delimiter: args.key_delimiter.clone(),
        headers: headers(&args.headers)?,
    };
    let acks = match args.acks.as_str() {
        "0" => Acks::None,
        "1" => Acks::Leader,
        _ => Acks::All,
    };
    let compression = match args.compression {
        Codec::None => Compression::None,
        Codec::Gzip => Compression::Gzip,
        Codec::Snappy => Compression::Snappy,
        Codec::Lz4 => Compression::Lz4,
        Codec::Zstd => Compression::Zstd,
    };
    let client = connect(&args.broker).await?;
    crate::topics::partitions_of(&client, &args.topic).await?;
    let config = ProducerConfig { acks, compression, idempotent: acks == Acks::All, ..ProducerConfig::default() };
    let producer = Producer::new(client, config).await?;
    let show = args.progress || (!args.no_progress && std::io::stderr().is_terminal());
    let now = Instant::now();
    let files = if args.files.is_empty() { vec![std::path::PathBuf::from("-")] } else { args.files.clone() };
    // The bar needs the input's size: known for files, not for stdin.
    let total_bytes = files
        .iter()
        .map(|f| if f.as_os_str() == "-" { None } else { std::fs::metadata(f).ok().map(|m| m.len()) })
        .sum::<Option<u64>>();
    let mut progress = Progress {
        show,
        started: now,
        last_shown: now,
        sent: 0,
        acknowledged: 0,
        failed: 0,
        first_error: None,
        read_bytes: 0,
        total_bytes,
    };
    let mut pending = VecDeque::new();
    let mut read_error = None;
    for file in &files {
        let result = if file.as_os_str() == "-" {
            send_lines(BufReader::new(tokio::io::stdin()), &producer, &shape, &mut pending, &mut progress).await
        } else {
            match tokio::fs::File::open(file).await {
                Ok(opened) => send_lines(BufReader::new(opened), &producer, &shape, &mut pending, &mut progress).await,
                Err(e) => Err(e),
            }
        };
        if let Err(e) = result {
            read_error = Some(format!("reading {}: {e}", file.display()));
            break;
        }
    }
    // Whatever was sent is delivered and counted, even when reading stopped early.
    producer.flush().await;
    while let Some(delivery) = pending.pop_front() {
        progress.settle(delivery.await);
    }
    progress.tick(true);
    if let Some(error) = read_error {
        return Err(CliError::Failed(format!(
            "{error}; {} records sent before it, {} acknowledged",
            progress.sent, progress.acknowledged
        )));
    }
    if let Some(error) = progress.first_error {
        return Err(CliError::Failed(format!(
            "{} of {} records were not delivered; the first error: {error}",
            progress.failed, progress.sent
        )));
    }
    Ok(())
}

async fn send_lines(
    mut reader: BufReader<impl AsyncRead + Unpin>,
    producer: &Producer,
    shape: &Shape,
    pending: &mut VecDeque<DeliveryFuture>,
    progress: &mut Progress,
) -> std::io::Result<()> {
    // Lines are bytes, not necessarily UTF-8 (as kcat takes them).
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line).await?;
        if read == 0 {
            return Ok(());
        }
        progress.read_bytes += read as u64;
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        match producer.send(shape.record(text)).await {
            Ok(delivery) => pending.push_back(delivery),
            Err(e) => {
                progress.failed += 1;
                progress.first_error.get_or_insert_with(|| e.to_string());
            }
        }
        progress.sent += 1;
        while pending.len() > MAX_PENDING {
            if let Some(delivery) = pending.pop_front() {
                progress.settle(delivery.await);
            }
        }
        progress.tick(false);
    }
}
