//! `sluice produce`: lines from stdin or files, one record per line, as `kcat -P` takes them:
//! a line is what comes before each `\n` (a `\r` before it is kept, as kcat keeps it), the last
//! line of a file needs no `\n`, and empty lines are skipped (kcat sends nothing for them).
//!
//! Built for throughput: the input is read in 1 MiB blocks on a blocking thread, each record's
//! value (and key) is a slice of its block rather than a copy, and deliveries are tracked per
//! batch (a batch is acknowledged or fails whole), not per record. The producer's own buffer
//! limit holds the reading back when the brokers fall behind.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::future::Future as _;
use std::io::{IsTerminal as _, Read as _, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sluice_client::{Acks, DeliveryFuture, Producer, ProducerConfig, ProducerRecord};
use sluice_protocol::compression::Compression;
use sluice_protocol::record::RecordHeader;
use tokio::sync::mpsc;

use crate::cli::{Codec, ProduceArgs};
use crate::connect;
use crate::error::{CliError, CliResult};

/// Bytes read from the input at a time (at most).
const BLOCK_BYTES: usize = 1 << 20;

/// A read into less room than this gets a new block.
const MIN_READ_BYTES: usize = 64 << 10;

/// Blocks read ahead of the sending.
const BLOCKS_AHEAD: usize = 4;

/// How each line becomes a record.
struct Shape {
    topic: String,
    partition: Option<i32>,
    /// Records without a key or a partition go to one partition until about a batch of them
    /// went there, then to the next (as the Java client's and librdkafka's sticky partitioners
    /// do): full batches, and no partition to choose per record.
    sticky: Sticky,
    key: Option<Bytes>,
    key_delimiter: Option<memchr::memmem::Finder<'static>>,
    headers: Vec<RecordHeader>,
}

/// The sticky partition of records without a key.
struct Sticky {
    partitions: i32,
    current: i32,
    bytes: usize,
}

impl Sticky {
    /// Bytes of values sent to a partition before moving on: the producer's batch size.
    const BATCH_BYTES: usize = 1 << 20;

    /// Starting at a partition picked by the clock, so that short runs do not all begin at 0.
    fn new(partitions: i32) -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let current = i32::try_from(nanos % partitions.max(1).unsigned_abs()).unwrap_or(0);
        Self { partitions, current, bytes: 0 }
    }

    fn partition(&mut self, value_bytes: usize) -> i32 {
        self.bytes += value_bytes;
        if self.bytes > Self::BATCH_BYTES {
            self.bytes = value_bytes;
            self.current = (self.current + 1) % self.partitions.max(1);
        }
        self.current
    }
}

impl Shape {
    /// The record of `line`, created at `timestamp` (ms since the epoch).
    fn record(&mut self, line: Bytes, timestamp: i64) -> ProducerRecord {
        let (key, value) = match &self.key_delimiter {
            Some(delimiter) => match delimiter.find(&line) {
                Some(at) => (Some(line.slice(..at)), line.slice(at + delimiter.needle().len()..)),
                None => (None, line),
            },
            None => (self.key.clone(), line),
        };
        let partition = match (self.partition, &key) {
            (Some(partition), _) => Some(partition),
            (None, Some(_)) => None,
            (None, None) => Some(self.sticky.partition(value.len())),
        };
        ProducerRecord {
            topic: self.topic.clone(),
            partition,
            key,
            value: Some(value),
            headers: self.headers.clone(),
            timestamp: Some(timestamp),
        }
    }
}

/// `-H NAME=VALUE` headers: the name is text (Kafka's header keys are strings), the value any
/// bytes, as the shell passed them.
fn headers(specs: &[OsString]) -> CliResult<Vec<RecordHeader>> {
    specs
        .iter()
        .map(|spec| {
            let bytes = spec.as_bytes();
            let at = memchr::memchr(b'=', bytes).ok_or_else(|| {
                CliError::Usage(format!("-H {}: write a header as NAME=VALUE", spec.to_string_lossy()))
            })?;
            let (name, value) = (bytes.get(..at).unwrap_or_default(), bytes.get(at + 1..).unwrap_or_default());
            if std::str::from_utf8(name).is_err() {
                return Err(CliError::Usage(format!(
                    "-H {}: a header's name must be UTF-8 text (its value may be any bytes)",
                    spec.to_string_lossy()
                )));
            }
            Ok(RecordHeader { key: Bytes::copy_from_slice(name), value: Some(Bytes::copy_from_slice(value)) })
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
    /// Counts the outcome of a batch of `records`.
    fn settle(&mut self, delivered: sluice_client::Result<sluice_client::RecordMetadata>, records: u64) {
        match delivered {
            Ok(_) => self.acknowledged += records,
            Err(e) => {
                self.failed += records;
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

/// Deliveries not yet settled: one future per batch, with the records of the batch it stands
/// for (the sends of one batch come one after another).
#[derive(Default)]
struct Pending(VecDeque<(DeliveryFuture, u64)>);

impl Pending {
    fn add(&mut self, delivery: DeliveryFuture) {
        match self.0.back_mut() {
            Some((last, records)) if last.same_batch(&delivery) => *records += 1,
            _ => self.0.push_back((delivery, 1)),
        }
    }

    /// Settles the batches already decided, oldest first, without waiting.
    fn settle_ready(&mut self, progress: &mut Progress) {
        let mut cx = Context::from_waker(Waker::noop());
        while let Some((front, records)) = self.0.front_mut() {
            match Pin::new(front).poll(&mut cx) {
                Poll::Ready(delivered) => {
                    let records = *records;
                    self.0.pop_front();
                    progress.settle(delivered, records);
                }
                Poll::Pending => return,
            }
        }
    }

    /// Waits for every batch.
    async fn settle_all(&mut self, progress: &mut Progress) {
        while let Some((delivery, records)) = self.0.pop_front() {
            progress.settle(delivery.await, records);
        }
    }
}

/// A block of input, and whether it ends its file.
struct Block {
    bytes: Bytes,
    end_of_file: bool,
}

/// Reads `files` (`-` for stdin) in blocks, on the calling (blocking) thread, until they end,
/// an error, or the receiver is gone.
fn read_blocks(files: &[PathBuf], blocks: &mpsc::Sender<Result<Block, String>>) {
    for file in files {
        let mut input: Box<dyn std::io::Read> = if file.as_os_str() == "-" {
            Box::new(std::io::stdin().lock())
        } else {
            match std::fs::File::open(file) {
                Ok(opened) => Box::new(opened),
                Err(e) => {
                    let _ = blocks.blocking_send(Err(format!("reading {}: {e}", file.display())));
                    return;
                }
            }
        };
        // Reads go into the unused end of one zeroed allocation until little of it is left.
        let mut spare = BytesMut::new();
        loop {
            if spare.len() < MIN_READ_BYTES {
                spare = BytesMut::zeroed(BLOCK_BYTES);
            }
            // What one read gives is sent at once: a whole block from a file, what has arrived
            // from a pipe (lines typed or tailed go out as they come).
            let (filled, end_of_file) = loop {
                match input.read(&mut spare) {
                    Ok(0) => break (0, true),
                    Ok(n) => break (n, false),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = blocks.blocking_send(Err(format!("reading {}: {e}", file.display())));
                        return;
                    }
                }
            };
            let block = spare.split_to(filled);
            if blocks.blocking_send(Ok(Block { bytes: block.freeze(), end_of_file })).is_err() {
                return;
            }
            if end_of_file {
                break;
            }
        }
    }
}

/// Splits blocks into lines; a line cut by a block's end is carried into the next.
#[derive(Default)]
struct Lines {
    carry: BytesMut,
}

impl Lines {
    /// Calls `line` for each complete line of `block` (each a slice of it, or of the carry).
    fn split(&mut self, block: &Block, mut line: impl FnMut(Bytes)) {
        let bytes = &block.bytes;
        let mut start = 0;
        if !self.carry.is_empty() {
            match memchr::memchr(b'\n', bytes) {
                Some(at) => {
                    self.carry.extend_from_slice(bytes.get(..at).unwrap_or_default());
                    line(self.carry.split().freeze());
                    start = at + 1;
                }
                None => {
                    self.carry.extend_from_slice(bytes);
                    if block.end_of_file {
                        line(self.carry.split().freeze());
                    }
                    return;
                }
            }
        }
        let base = start;
        for at in memchr::memchr_iter(b'\n', bytes.get(base..).unwrap_or_default()) {
            line(bytes.slice(start..base + at));
            start = base + at + 1;
        }
        // `start` only moved past newlines found, so it is within the block.
        if start < bytes.len() {
            if block.end_of_file {
                line(bytes.slice(start..));
            } else {
                self.carry.extend_from_slice(bytes.get(start..).unwrap_or_default());
            }
        }
    }
}

pub async fn produce(args: ProduceArgs) -> CliResult {
    // Bad flags are refused before any connection.
    let headers = headers(&args.headers)?;
    let client = connect(&args.broker).await?;
    let partitions = crate::topics::partitions_of(&client, &args.topic).await?.len();
    let mut shape = Shape {
        topic: args.topic.clone(),
        partition: args.partition,
        sticky: Sticky::new(i32::try_from(partitions).unwrap_or(i32::MAX)),
        key: args.key.as_ref().map(|k| Bytes::copy_from_slice(k.as_bytes())),
        key_delimiter: args
            .key_delimiter
            .as_ref()
            .filter(|d| !d.is_empty())
            .map(|d| memchr::memmem::Finder::new(d.as_bytes()).into_owned()),
        headers,
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
    let mut config = ProducerConfig::default();
    config.acks = acks;
    config.compression = compression;
    config.idempotent = acks == Acks::All;
    let producer = Producer::new(client, config).await?;
    let show = args.progress || (!args.no_progress && std::io::stderr().is_terminal());
    let now = Instant::now();
    let files = if args.files.is_empty() { vec![PathBuf::from("-")] } else { args.files.clone() };
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
    let (sender, mut blocks) = mpsc::channel(BLOCKS_AHEAD);
    let reader = tokio::task::spawn_blocking(move || read_blocks(&files, &sender));
    let mut pending = Pending::default();
    let mut lines = Lines::default();
    let mut read_error = None;
    // SIGINT or SIGTERM: stop reading, deliver what was sent, and say so.
    let mut stopped = false;
    let stop = crate::signals::stop();
    tokio::pin!(stop);
    loop {
        let block = tokio::select! {
            block = blocks.recv() => block,
            () = &mut stop => {
                stopped = true;
                break;
            }
        };
        let block = match block {
            None => break,
            Some(Err(e)) => {
                read_error = Some(e);
                break;
            }
            Some(Ok(block)) => block,
        };
        progress.read_bytes += block.bytes.len() as u64;
        // The lines of a block are read in the same instant: one clock reading for them all.
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let mut records = Vec::new();
        lines.split(&block, |line| {
            if !line.is_empty() {
                records.push(shape.record(line, timestamp));
            }
        });
        for record in records {
            match producer.send(record).await {
                Ok(delivery) => pending.add(delivery),
                Err(e) => {
                    progress.failed += 1;
                    progress.first_error.get_or_insert_with(|| e.to_string());
                }
            }
            progress.sent += 1;
        }
        pending.settle_ready(&mut progress);
        progress.tick(false);
    }
    drop(blocks);
    // A reader blocked on stdin is left to the process's end.
    if read_error.is_none() && !stopped {
        let _ = reader.await;
    }
    // Whatever was sent is delivered and counted, even when reading stopped early.
    let flushed = producer.flush().await;
    pending.settle_all(&mut progress).await;
    // Each delivery counted its failure; the flush's error stands only if none did.
    if let (Err(error), None) = (flushed, &progress.first_error) {
        progress.first_error = Some(error.to_string());
    }
    progress.tick(true);
    if stopped {
        let _ = writeln!(
            std::io::stderr(),
            "sluice: stopped by a signal: {} records sent, {} acknowledged",
            progress.sent,
            progress.acknowledged
        );
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(blocks: &[(&str, bool)]) -> Vec<String> {
        let mut lines = Lines::default();
        let mut out = Vec::new();
        for (text, end_of_file) in blocks {
            let block = Block { bytes: Bytes::copy_from_slice(text.as_bytes()), end_of_file: *end_of_file };
            lines.split(&block, |line| out.push(String::from_utf8(line.to_vec()).unwrap()));
        }
        out
    }

    #[test]
    fn lines_cut_by_blocks_are_carried_and_a_file_s_last_line_needs_no_newline() {
        assert_eq!(
            split_all(&[("a\nbb", false), ("b\ncc", false), ("c", false), ("\nd", true)]),
            ["a", "bbb", "ccc", "d"]
        );
        assert_eq!(split_all(&[("x\r\n\ny", false), ("", true)]), ["x\r", "", "y"]);
        assert_eq!(split_all(&[("no newline", true), ("next file\n", true)]), ["no newline", "next file"]);
    }
}
