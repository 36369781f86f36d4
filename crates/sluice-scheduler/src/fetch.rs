//! Reading exactly one planned range: the records of `[from, until)` of a partition, no more, no
//! fewer, whatever batch boundaries the broker's log has. A task of a batch reads its range this
//! way, so that a batch re-run after a crash sees the same records.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use sluice_client::{Client, Connection, Error as ClientError, FetchOptions};
use sluice_protocol::error_code::ErrorCode;
use sluice_protocol::record::{RecordBatch, RecordRef};

use crate::plan::OffsetRange;

/// Why a range could not be read.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum FetchRangeError {
    /// The broker could not be asked, or answered with an error.
    #[error("reading {topic}/{partition} offsets {from}..{until}: {source}")]
    Client {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The range's first offset.
        from: i64,
        /// The range's end.
        until: i64,
        /// The client's error.
        source: ClientError,
    },
    /// Offsets of the range are no longer (or not yet) in the log: the log was truncated by
    /// retention, or the range was planned past the end.
    #[error("{topic}/{partition}: offsets from {missing_from} up to {until} are not in the log (log start {log_start}, high watermark {high_watermark}); records were lost to retention, or the plan is wrong")]
    Unavailable {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The first offset that could not be read.
        missing_from: i64,
        /// The range's end.
        until: i64,
        /// The log start offset the broker reported.
        log_start: i64,
        /// The high watermark the broker reported.
        high_watermark: i64,
    },
    /// The partition's log now ends before the range's offsets: the topic was deleted and
    /// re-created, or the log truncated (an unclean leader election).
    #[error("{topic}/{partition}: the log now ends at offset {log_end}, before offset {position} of the range {from}..{until}; the topic was deleted and re-created or its log truncated")]
    Truncated {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The range's first offset.
        from: i64,
        /// The range's end.
        until: i64,
        /// The offset that could not be read.
        position: i64,
        /// The log end the broker reported.
        log_end: i64,
    },
}

/// The records of one range, as fetched batches trimmed to the range when iterated.
#[derive(Debug, Clone)]
pub struct RangeRecords {
    /// The range.
    pub range: OffsetRange,
    /// The data batches holding it (the first and last may extend beyond it).
    pub batches: Vec<RecordBatch>,
    /// The partition's high watermark as the last fetch reported it (-1 if nothing was fetched);
    /// read_committed, its last stable offset.
    pub high_watermark: i64,
    /// Offsets of the range the log no longer held (deleted by retention), skipped under
    /// [`DataLoss::Skip`].
    pub lost_offsets: i64,
}

/// What to do when offsets of a range are no longer in the log (deleted by retention before
/// the job read them), like Spark's `failOnDataLoss`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DataLoss {
    /// Fail the read with [`FetchRangeError::Unavailable`], naming the missing offsets.
    #[default]
    Fail,
    /// Go on from the log start and count the offsets lost.
    Skip,
}

impl RangeRecords {
    /// Bytes of record data held (the batches' decompressed data).
    pub fn data_bytes(&self) -> usize {
        self.batches.iter().map(RecordBatch::data_len).sum()
    }

    /// How many records [`RangeRecords::records`] gives, without visiting those of batches that
    /// lie wholly inside the range.
    pub fn record_count(&self) -> usize {
        let (from, until) = (self.range.from, self.range.until);
        let inside = |offset: Option<i64>| offset.is_some_and(|o| o >= from && o < until);
        self.batches
            .iter()
            .filter(|b| !b.header.is_control())
            .map(|b| {
                let (first, last) =
                    (b.records().next().map(|r| r.offset()), b.records().next_back().map(|r| r.offset()));
                if inside(first) && inside(last) {
                    b.len()
                } else {
                    b.records().filter(|r| inside(Some(r.offset()))).count()
                }
            })
            .sum()
    }

    /// The records with offsets in the range, in order.
    pub fn records(&self) -> impl Iterator<Item = RecordRef<'_>> {
        self.records_from(RecordPosition::default()).map(|(_, record)| record)
    }

    /// [`RangeRecords::records`] from `position` on, each with the position just after it: a
    /// reader that takes the records a run at a time goes on where it stopped without reading
    /// the record batches before it again.
    pub fn records_from(&self, position: RecordPosition) -> impl Iterator<Item = (RecordPosition, RecordRef<'_>)> {
        let (from, until) = (self.range.from, self.range.until);
        self.batches
            .iter()
            .enumerate()
            .skip(position.batch)
            .filter(|(_, b)| !b.header.is_control())
            .flat_map(move |(batch, b)| {
                let skip = if batch == position.batch { position.record } else { 0 };
                b.records()
                    .enumerate()
                    .skip(skip)
                    .map(move |(record, r)| (RecordPosition { batch, record: record + 1 }, r))
            })
            .filter(move |(_, r)| r.offset() >= from && r.offset() < until)
    }
}

/// A place in a range's records (see [`RangeRecords::records_from`]); the default is the start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordPosition {
    /// The record batch.
    batch: usize,
    /// Records of it already read.
    record: usize,
}

/// The most bytes to ask for when `remaining` offsets of the range are left: the configured
/// maximum, or less once the bytes per offset are known, so that the last fetch of a range does
/// not bring a whole `max_bytes` of records past its end (which the next batch fetches again).
/// A little over the estimate, as records vary; a broker returns at least one whole batch
/// whatever the limit, so asking too little costs one more round trip, never a stall.
fn fetch_size(max_bytes: i32, per_offset: Option<f64>, remaining: i64) -> i32 {
    const SLACK_BYTES: f64 = 16.0 * 1024.0;
    match per_offset {
        Some(per_offset) => {
            let wanted = remaining as f64 * per_offset * 1.1 + SLACK_BYTES;
            // `as` saturates; the estimate is only ever lowered by it.
            max_bytes.min(wanted as i32).max(1)
        }
        None => max_bytes,
    }
}

/// The record bytes the read tasks of one piece of a batch may bring between them. Before each
/// fetch a task reserves its share of what is left (at least 64 KiB), and stops, its range not
/// done, once nothing is left; after it, what the fetch brought replaces the reservation. A
/// broker sends no more than asked for except when the first record batch alone is larger, so
/// the tasks bring at most the budget, 64 KiB, and the first record batch of each fetch.
/// Reading goes on from there in the next piece.
#[derive(Debug)]
pub struct ReadBudget {
    limit: usize,
    sharers: usize,
    used: AtomicUsize,
}

impl ReadBudget {
    /// A budget of `limit` record bytes (at least one) for `sharers` tasks reading at once.
    pub fn new(limit: usize, sharers: usize) -> Self {
        Self { limit: limit.max(1), sharers: sharers.max(1), used: AtomicUsize::new(0) }
    }

    /// Record bytes brought so far.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Reserves what one fetch may ask for now: a share of what is left (0: nothing is left).
    fn reserve(&self) -> usize {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let Some(left) = self.limit.checked_sub(used).filter(|left| *left > 0) else { return 0 };
            let share = (left / self.sharers).max(MIN_BUDGETED_FETCH);
            match self.used.compare_exchange_weak(used, used + share, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return share,
                Err(now) => used = now,
            }
        }
    }

    /// A fetch that reserved `reserved` brought `brought` bytes.
    fn settle(&self, reserved: usize, brought: usize) {
        if brought >= reserved {
            self.used.fetch_add(brought - reserved, Ordering::Relaxed);
        } else {
            self.used.fetch_sub(reserved - brought, Ordering::Relaxed);
        }
    }
}

/// The least a fetch under a [`ReadBudget`] asks for, however little is left of it.
const MIN_BUDGETED_FETCH: usize = 64 * 1024;

/// Fetches in a row that may bring nothing new while the broker says there is more (an open
/// transaction in the way, a leader whose log is still being read) before the range's next
/// offsets are called unavailable.
const MAX_STALLED_FETCHES: u32 = 20;

impl FetchRangeError {
    /// Whether reading again a moment later, from the leader fresh metadata names, may succeed:
    /// the leader could not be reached, moved, or answered with a retriable error; or the
    /// offsets are not in its log *yet* (a new leader's high watermark lags behind the old
    /// one's for a moment after an election). Offsets deleted from the log, a log that ends
    /// before the range, or a corrupt answer are not transient.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Client { source, .. } => source.is_retriable(),
            Self::Unavailable { missing_from, log_start, .. } => *log_start <= *missing_from,
            Self::Truncated { .. } => false,
        }
    }
}

/// Fetches `range` from its partition's leader, as many fetches as it takes.
///
/// # Cancel safety
///
/// Cancel safe: it only reads; what was read so far is dropped with the future, and calling again
/// starts the range over. A fetch already sent is still answered by the broker, and its answer is
/// discarded.
pub async fn fetch_range(
    client: &Client,
    range: &OffsetRange,
    options: &FetchOptions,
) -> Result<RangeRecords, FetchRangeError> {
    let mut reader = RangeReader::new(range.clone(), DataLoss::Fail, None);
    reader.read(client, None, options).await?;
    Ok(reader.finish())
}

/// [`fetch_range`] over `connection`, a connection of the caller's own to the leader, with a
/// policy for offsets the log no longer holds, and the record bytes per offset earlier reads
/// saw, if known: then even the range's first fetch asks for little more than the range
/// rather than `options.max_bytes` (a broker sends whole batches up to the limit, all of them
/// past the range's end wasted on both sides).
///
/// # Cancel safety
///
/// Cancel safe: it only reads; what was read so far is dropped with the future, and calling again
/// starts the range over. A fetch already sent is still answered, and later requests on
/// `connection` may wait up to `options.max_wait` behind it.
pub async fn fetch_range_on(
    client: &Client,
    connection: &Connection,
    range: &OffsetRange,
    options: &FetchOptions,
    on_loss: DataLoss,
    bytes_per_offset: Option<f64>,
) -> Result<RangeRecords, FetchRangeError> {
    let mut reader = RangeReader::new(range.clone(), on_loss, bytes_per_offset);
    reader.read(client, Some(connection), options).await?;
    Ok(reader.finish())
}

/// A range being read. What was read is kept when a read fails, so that a read interrupted by
/// a transient fault ([`FetchRangeError::is_transient`]) goes on from where it stopped, on a
/// connection to the partition's leader as it is then.
#[derive(Debug)]
pub struct RangeReader {
    range: OffsetRange,
    on_loss: DataLoss,
    /// Record bytes per offset, from earlier reads and then from this range's fetches, to ask
    /// for little more than the rest of the range.
    per_offset: Option<f64>,
    batches: Vec<RecordBatch>,
    position: i64,
    high_watermark: i64,
    lost: i64,
    /// Where the records not yet taken by [`RangeReader::take_piece`] start.
    piece_from: i64,
    budget: Option<Arc<ReadBudget>>,
}

impl RangeReader {
    /// A reader of `range` from its start, with a policy for offsets the log no longer holds
    /// and the record bytes per offset earlier reads saw, if known.
    pub fn new(range: OffsetRange, on_loss: DataLoss, bytes_per_offset: Option<f64>) -> Self {
        let position = range.from;
        Self {
            range,
            on_loss,
            per_offset: bytes_per_offset,
            batches: Vec::new(),
            position,
            high_watermark: -1,
            lost: 0,
            piece_from: position,
            budget: None,
        }
    }

    /// Reads from now on stop once `budget` is spent (by this reader and the others sharing
    /// it), the range not done; `None` reads the whole range.
    pub fn set_budget(&mut self, budget: Option<Arc<ReadBudget>>) {
        self.budget = budget;
    }

    /// The records read since the last piece was taken, as the range they cover (from where
    /// that piece ended up to the position reached); reading goes on from the position.
    pub fn take_piece(&mut self) -> RangeRecords {
        let until = self.position.min(self.range.until);
        let range = OffsetRange { from: self.piece_from, until, ..self.range.clone() };
        self.piece_from = until;
        RangeRecords {
            range,
            batches: std::mem::take(&mut self.batches),
            high_watermark: self.high_watermark,
            lost_offsets: std::mem::take(&mut self.lost),
        }
    }

    /// The range.
    pub fn range(&self) -> &OffsetRange {
        &self.range
    }

    /// The next offset to read.
    pub fn position(&self) -> i64 {
        self.position
    }

    /// Whether every offset of the range was read (or, under [`DataLoss::Skip`], found lost).
    pub fn is_done(&self) -> bool {
        self.position >= self.range.until
    }

    /// The records read and not yet taken as a piece.
    pub fn finish(mut self) -> RangeRecords {
        self.take_piece()
    }

    pub(crate) fn client_error(&self, source: ClientError) -> FetchRangeError {
        let range = &self.range;
        FetchRangeError::Client {
            topic: range.topic.clone(),
            partition: range.partition,
            from: range.from,
            until: range.until,
            source,
        }
    }

    fn unavailable(&self, high_watermark: i64, log_start: i64) -> FetchRangeError {
        FetchRangeError::Unavailable {
            topic: self.range.topic.clone(),
            partition: self.range.partition,
            missing_from: self.position,
            until: self.range.until,
            log_start,
            high_watermark,
        }
    }

    /// Reads the rest of the range over `connection` (the client's shared connection to the
    /// leader if `None`), as many fetches as it takes, or until its [`ReadBudget`] is spent
    /// (then [`RangeReader::is_done`] says whether the range was finished). On an error, what
    /// was read so far is kept; reading again goes on from there.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe with a [`ReadBudget`]: a fetch's reservation is settled only when the fetch
    /// returns, so dropping the future during a fetch leaves that share counted as used, and the
    /// readers sharing the budget stop sooner. Otherwise cancel safe: the position and the records
    /// kept change only after a fetch has returned, so calling again goes on from where it was.
    pub async fn read(
        &mut self,
        client: &Client,
        connection: Option<&Connection>,
        options: &FetchOptions,
    ) -> Result<(), FetchRangeError> {
        let range = self.range.clone();
        let mut stalled = 0;
        while self.position < range.until {
            let position = self.position;
            let mut max_bytes = fetch_size(options.max_bytes, self.per_offset, range.until - position);
            let reserved = match &self.budget {
                Some(budget) => match budget.reserve() {
                    0 => return Ok(()),
                    share => {
                        max_bytes = max_bytes.min(i32::try_from(share).unwrap_or(i32::MAX));
                        Some((Arc::clone(budget), share))
                    }
                },
                None => None,
            };
            let mut sized = *options;
            sized.max_bytes = max_bytes;
            let options = &sized;
            let fetched = match connection {
                Some(connection) => {
                    client.fetch_partition_on(connection, &range.topic, range.partition, position, options).await
                }
                None => client.fetch_partition(&range.topic, range.partition, position, options).await,
            };
            // What the fetch brought and is kept replaces its reservation (nothing, on an
            // error or when nothing new came).
            let kept = |fetched: &sluice_client::FetchedPartition| -> usize {
                let next = fetched.records.next_offset.unwrap_or(position);
                if fetched.error != ErrorCode::None || next <= position {
                    return 0;
                }
                fetched.records.batches.iter().map(RecordBatch::data_len).sum()
            };
            if let Some((budget, share)) = reserved {
                budget.settle(share, fetched.as_ref().map_or(0, kept));
            }
            let fetched = fetched.map_err(|e| self.client_error(e))?;
            if stalled >= MAX_STALLED_FETCHES {
                return Err(self.unavailable(fetched.high_watermark, fetched.log_start_offset));
            }
            // OFFSET_OUT_OF_RANGE may come without the log's bounds (Kafka sends -1): ask for them.
            let mut log_start = fetched.log_start_offset;
            let mut log_end = fetched.high_watermark;
            if fetched.error == ErrorCode::OffsetOutOfRange && (log_start < 0 || log_end < 0) {
                let key = [(range.topic.clone(), range.partition)];
                let (starts, ends) = tokio::try_join!(
                    client.list_offsets(&key, sluice_client::OffsetSpec::Earliest),
                    // The log's own end (under read_committed, log_ends gives the stable one).
                    client.log_ends(&key, sluice_client::Isolation::ReadUncommitted),
                )
                .map_err(|e| self.client_error(e))?;
                log_start = starts.get(&key[0]).copied().unwrap_or(-1);
                log_end = ends.get(&key[0]).copied().unwrap_or(-1);
            }
            // The log now ends before the position: the topic was re-created or its log
            // truncated. What the range still wanted is gone; under Skip the next plan starts
            // the partition over from its log start.
            let outrun = matches!(fetched.error, ErrorCode::None | ErrorCode::OffsetOutOfRange)
                && log_end >= 0
                && log_end < position;
            if outrun {
                if self.on_loss == DataLoss::Fail {
                    return Err(FetchRangeError::Truncated {
                        topic: range.topic.clone(),
                        partition: range.partition,
                        from: range.from,
                        until: range.until,
                        position,
                        log_end,
                    });
                }
                self.lost += range.until - position;
                self.high_watermark = log_end;
                self.position = range.until;
                break;
            }
            // The log no longer starts at or before the position: records were deleted
            // (retention, DeleteRecords). Whether the broker says OFFSET_OUT_OF_RANGE or (Tansu)
            // answers from the log start, this is data loss.
            let deleted =
                matches!(fetched.error, ErrorCode::None | ErrorCode::OffsetOutOfRange) && log_start > position;
            if deleted {
                match self.on_loss {
                    DataLoss::Fail => return Err(self.unavailable(log_end, log_start)),
                    DataLoss::Skip => {
                        let resume = log_start.min(range.until);
                        self.lost += resume - position;
                        self.position = resume;
                        continue;
                    }
                }
            }
            match fetched.error {
                ErrorCode::None => {}
                ErrorCode::OffsetOutOfRange => {
                    return Err(self.unavailable(fetched.high_watermark, fetched.log_start_offset))
                }
                // A leader that moved, an election under way: the caller reads again from the
                // leader fresh metadata names (the client has marked its metadata out of date).
                code => {
                    let broker = connection.map_or("(leader)", Connection::broker).to_owned();
                    return Err(self.client_error(ClientError::Broker { broker, api: "Fetch", code }));
                }
            }
            // The end the next plan may reach: under read_committed the last stable offset.
            self.high_watermark = self.high_watermark.max(fetched.readable_end(options.isolation));
            let next = fetched.records.next_offset.unwrap_or(position);
            if next <= position {
                // Nothing new: the range reaches past what the log holds, for now at least (a
                // new leader's high watermark lags a moment behind the old one's).
                if fetched.high_watermark <= position {
                    return Err(self.unavailable(fetched.high_watermark, fetched.log_start_offset));
                }
                stalled += 1;
                continue;
            }
            stalled = 0;
            let bytes: usize = fetched.records.batches.iter().map(RecordBatch::data_len).sum();
            self.per_offset = Some(bytes as f64 / (next - position) as f64);
            self.position = next;
            let batches = match options.isolation {
                // The batches of aborted transactions (and the markers) are left out, as Kafka's
                // read_committed consumers leave them, by the aborted transactions the answer lists.
                sluice_client::Isolation::ReadCommitted => {
                    sluice_client::filter_aborted(fetched.records.batches, &fetched.aborted_transactions)
                }
                sluice_client::Isolation::ReadUncommitted => fetched.records.batches,
            };
            self.batches.extend(batches.into_iter().filter(|b| b.header.base_offset < range.until));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::fetch_size;

    #[test]
    fn a_fetch_asks_for_a_little_more_than_the_rest_of_its_range_once_record_sizes_are_known() {
        // Nothing known yet: the configured maximum.
        assert_eq!(fetch_size(4 << 20, None, 1_000_000), 4 << 20);
        // 100 bytes per offset, 1,000 offsets left: 110,000 + 16 KiB of slack.
        assert_eq!(fetch_size(4 << 20, Some(100.0), 1_000), 110_000 + 16 * 1024);
        // Never above the maximum, never below one byte, whatever the estimate.
        assert_eq!(fetch_size(4 << 20, Some(100.0), i64::MAX), 4 << 20);
        assert_eq!(fetch_size(4 << 20, Some(f64::INFINITY), 10), 4 << 20);
        assert_eq!(fetch_size(4 << 20, Some(f64::NAN), 10), 1);
        assert_eq!(fetch_size(4 << 20, Some(0.0), 10), 16 * 1024);
    }
}
