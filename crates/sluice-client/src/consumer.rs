//! The consumer with manual assignment: positions per partition, one Fetch per leader per poll
//! (all of that broker's partitions in one request, the brokers in parallel), an offset reset
//! policy for OFFSET_OUT_OF_RANGE, transaction markers skipped, `read_committed` filtering of
//! aborted transactions, and the high watermark, last stable offset and lag of each partition.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use sluice_protocol::error_code::ErrorCode;
use sluice_protocol::messages::fetch_request::FetchPartition;
use sluice_protocol::messages::fetch_response::PartitionData;
use sluice_protocol::messages::{FetchRequest, FetchResponse};
use sluice_protocol::record::{
    decode_records, ControlRecordType, DecodeOptions, RecordBatch, RecordRef, DEFAULT_MAX_DECOMPRESSED_BYTES,
};

use crate::client::{Client, FetchNaming, Isolation, OffsetSpec};
use crate::connection::Connection;
use crate::error::{Error, Result};

/// What to do when a position is outside the partition's log (OFFSET_OUT_OF_RANGE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetReset {
    /// Move to the log start.
    Earliest,
    /// Move to the log end.
    Latest,
    /// Return [`Error::OffsetOutOfRange`] from `poll`.
    Error,
}

/// Where a newly assigned partition starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The log start offset.
    Earliest,
    /// The log end offset: only records produced from now on.
    Latest,
    /// This offset.
    Offset(i64),
}

/// How a [`Consumer`] fetches.
///
/// Fields may be added in later versions (`#[non_exhaustive]`): start from [`Default`] and set the
/// fields you need.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConsumerConfig {
    /// How long a broker may hold a fetch waiting for `min_bytes`.
    pub max_wait: Duration,
    /// Bytes a broker waits for before answering.
    pub min_bytes: i32,
    /// Most bytes per fetch response.
    pub max_bytes: i32,
    /// Most bytes per partition per fetch (a first batch larger than this still comes whole).
    pub partition_max_bytes: i32,
    /// Transaction isolation.
    pub isolation: Isolation,
    /// What OFFSET_OUT_OF_RANGE does.
    pub offset_reset: OffsetReset,
    /// A broker's partitions are fetched with up to this many requests in flight at once, so the
    /// broker can build one response while the client reads and decodes another. Each request
    /// goes on a connection of the consumer's own: brokers serve a connection's requests one at
    /// a time, and a fetch waiting out `max_wait` for partitions at their end must not hold back
    /// another whose partitions have records.
    pub fetch_requests_per_broker: usize,
    /// Prefetch: as `poll` returns, the next fetches are already sent, so the broker works
    /// while the caller processes. Their responses may hold up to this many bytes in all
    /// (split evenly among the leaders); 0 turns prefetching off.
    pub prefetch_max_bytes: usize,
    /// The most bytes the compressed batches of one fetch response may expand to together
    /// (64 MiB): a partition's records stop before the batch that would pass it, and the
    /// partitions after it are not decoded, all read again by the next fetch from where they
    /// stand. A response of many small, highly compressed batches (which anyone who may write
    /// to the topic can make) then costs bounded memory. A partition's first batch may always
    /// expand to the per-batch limit (64 MiB), so reading goes on.
    pub max_decompressed_bytes: usize,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            max_wait: Duration::from_millis(500),
            min_bytes: 1,
            max_bytes: 50 << 20,
            partition_max_bytes: 1 << 20,
            isolation: Isolation::ReadUncommitted,
            offset_reset: OffsetReset::Latest,
            prefetch_max_bytes: 64 << 20,
            fetch_requests_per_broker: 4,
            max_decompressed_bytes: DEFAULT_MAX_DECOMPRESSED_BYTES,
        }
    }
}

/// What one poll returned for one partition.
#[derive(Debug, Clone)]
pub struct PartitionRecords {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// Data batches, in order, holding only records at or after the position the fetch started
    /// from (transaction markers and, under `read_committed`, aborted batches removed).
    pub batches: Vec<RecordBatch>,
    /// The partition's high watermark when fetched.
    pub high_watermark: i64,
}

impl PartitionRecords {
    /// The records, in offset order.
    pub fn records(&self) -> impl Iterator<Item = RecordRef<'_>> {
        self.batches.iter().flat_map(RecordBatch::records)
    }
}

/// Where an assigned partition stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionProgress {
    /// The offset of the next record to return.
    pub position: i64,
    /// The high watermark at the last fetch (-1 before any).
    pub high_watermark: i64,
    /// The last stable offset at the last fetch (-1 before any, or if the broker gave none).
    pub last_stable_offset: i64,
}

impl PartitionProgress {
    /// Records between the position and the high watermark (0 before the first fetch).
    pub fn lag(&self) -> i64 {
        (self.high_watermark - self.position).max(0)
    }
}

type TopicPartition = (String, i32);

/// Fetches in flight, each answering for its group of partitions.
/// A fetch's answer: the connection it went on, how it named topics, the response.
type Fetched = (Arc<Connection>, FetchNaming, FetchResponse);
type FetchTasks = tokio::task::JoinSet<(Vec<TopicPartition>, Result<Fetched>)>;

/// Consumes assigned partitions.
#[derive(Debug)]
pub struct Consumer {
    client: Client,
    config: ConsumerConfig,
    assigned: BTreeMap<TopicPartition, PartitionProgress>,
    /// Bumped whenever positions change other than by `poll` (assign, unassign, seek, reset),
    /// so that a poll sees when answers in hand have gone stale.
    epoch: u64,
    /// Fetches in flight from the current positions (sent ahead, or not answered by the last
    /// poll); dropped (aborted) when the positions move.
    prefetch: Option<FetchTasks>,
    /// Without prefetching: the groups of partitions the last poll got answers for, whose next
    /// fetch the next poll sends (on the same connection) beside those still in flight.
    answered: Vec<(Arc<Connection>, Vec<TopicPartition>)>,
    /// Connections of this consumer's own for fetching, per broker and slot.
    fetch_connections: HashMap<(String, usize), Arc<Connection>>,
    /// An error met by a poll that returned other partitions' records; the next poll reports it.
    deferred: Option<Error>,
    /// Records whose positions have moved, not yet returned: kept here, not in the poll's
    /// future, so that a poll dropped part way loses none (the next poll returns them).
    undelivered: Vec<PartitionRecords>,
    /// Responses absorbed so far: each starts its decompression allowance at a partition one
    /// further on, so that partitions late in the answers are not always the ones left over.
    responses_absorbed: usize,
}

impl Consumer {
    /// A consumer with nothing assigned yet.
    pub fn new(client: Client, config: ConsumerConfig) -> Self {
        Self {
            client,
            config,
            assigned: BTreeMap::new(),
            epoch: 0,
            prefetch: None,
            answered: Vec::new(),
            fetch_connections: HashMap::new(),
            deferred: None,
            undelivered: Vec::new(),
            responses_absorbed: 0,
        }
    }

    /// Positions changed other than by `poll`: fetches sent ahead are stale.
    fn positions_moved(&mut self) {
        self.epoch += 1;
        self.prefetch = None;
        self.answered.clear();
    }

    /// How this consumer fetches.
    pub fn config(&self) -> &ConsumerConfig {
        &self.config
    }

    /// Starts consuming `topic`/`partition` from `start`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the partition is assigned only once its start is known; dropped before,
    /// nothing changed.
    pub async fn assign(&mut self, topic: &str, partition: i32, start: StartAt) -> Result<()> {
        let position = match start {
            StartAt::Offset(offset) => offset,
            StartAt::Earliest => self.client.list_offset(topic, partition, OffsetSpec::Earliest).await?,
            StartAt::Latest => self.log_end(topic, partition).await?,
        };
        let progress = PartitionProgress { position, high_watermark: -1, last_stable_offset: -1 };
        self.forget_undelivered(topic, partition);
        self.assigned.insert((topic.to_owned(), partition), progress);
        self.positions_moved();
        Ok(())
    }

    /// Stops consuming `topic`/`partition`.
    pub fn unassign(&mut self, topic: &str, partition: i32) {
        self.assigned.remove(&(topic.to_owned(), partition));
        self.forget_undelivered(topic, partition);
        self.positions_moved();
    }

    /// Moves the position of an assigned partition.
    pub fn seek(&mut self, topic: &str, partition: i32, offset: i64) {
        if let Some(progress) = self.assigned.get_mut(&(topic.to_owned(), partition)) {
            progress.position = offset;
            self.forget_undelivered(topic, partition);
            self.positions_moved();
        }
    }

    /// Records of `topic`/`partition` a dropped poll left are not returned once the partition
    /// is assigned again, unassigned or sought: the caller has said where it goes on from.
    fn forget_undelivered(&mut self, topic: &str, partition: i32) {
        self.undelivered.retain(|r| r.topic != topic || r.partition != partition);
    }

    /// The assigned partitions and where each stands.
    pub fn progress(&self) -> impl Iterator<Item = (&str, i32, PartitionProgress)> {
        self.assigned
            .iter()
            .map(|((topic, partition), p)| (topic.as_str(), *partition, self.returned(topic, *partition, *p)))
    }

    /// `progress` with its position at the first record kept for the next poll, if a dropped
    /// poll left any: a position is always the offset after the last record returned, so that
    /// committing it never skips a record nobody received.
    fn returned(&self, topic: &str, partition: i32, mut progress: PartitionProgress) -> PartitionProgress {
        let kept = self
            .undelivered
            .iter()
            .filter(|r| r.topic == topic && r.partition == partition)
            .filter_map(|r| r.records().next().map(|record| record.offset()))
            .min();
        if let Some(offset) = kept {
            progress.position = progress.position.min(offset);
        }
        progress
    }

    /// Where `topic`/`partition` stands, if assigned.
    pub fn partition_progress(&self, topic: &str, partition: i32) -> Option<PartitionProgress> {
        self.assigned.get(&(topic.to_owned(), partition)).map(|p| self.returned(topic, partition, *p))
    }

    async fn log_end(&self, topic: &str, partition: i32) -> Result<i64> {
        self.client.log_end(topic, partition, self.config.isolation).await
    }

    /// Returns the partitions that had records, advancing their positions past what is returned.
    ///
    /// A poll waits for the first answer and takes any others already in; fetches not answered
    /// yet stay in flight for the next poll, so partitions at their end, whose fetches wait out
    /// `max_wait` at the broker, never hold back records that others have. With prefetching,
    /// each answered group of partitions gets its next fetch at once, so the brokers keep
    /// working while the caller processes; without, at the next poll. A seek, assign or offset
    /// reset discards what is in flight.
    ///
    /// A partition's error never costs another partition its records: the poll returns the
    /// records it has (their positions moved past them) and the next poll reports the error, as
    /// the Java consumer does. The failed partition's position stays where it was.
    ///
    /// Transient faults are not errors of the poll: a leader that moved, a broker that cannot
    /// be reached or stopped answering, a partition without a leader for a moment. The
    /// metadata is marked out of date (the next poll fetches from the leaders it then names),
    /// and a poll that got nothing at all waits `metadata_refresh_backoff` before it returns,
    /// so that a caller polling in a loop does not spin while the cluster recovers.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: records are returned once and only once whatever the poll is dropped at.
    /// A poll dropped after some positions moved keeps those records for the next poll, which
    /// returns them at once; fetches in flight are dropped and sent again from the positions.
    pub async fn poll(&mut self) -> Result<Vec<PartitionRecords>> {
        if !self.undelivered.is_empty() {
            return Ok(std::mem::take(&mut self.undelivered));
        }
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        let streaming = self.config.prefetch_max_bytes > 0;
        let epoch = self.epoch;
        let mut failure = None;
        let mut fetches = match self.prefetch.take() {
            Some(mut in_flight) if !in_flight.is_empty() || !self.answered.is_empty() => {
                for (connection, group) in std::mem::take(&mut self.answered) {
                    self.spawn_fetch(&mut in_flight, connection, &group);
                }
                in_flight
            }
            _ => {
                self.answered.clear();
                let (fetches, unsent) = self.send_fetches().await;
                failure = unsent;
                fetches
            }
        };
        let mut lost = false;
        let mut waited = false;
        loop {
            // Wait for the first answer; then take only what has already come.
            let joined = if waited { fetches.try_join_next() } else { fetches.join_next().await };
            waited = true;
            let Some(joined) = joined else { break };
            let Ok((group, fetched)) = joined else {
                lost = true;
                continue;
            };
            match fetched {
                Ok((connection, naming, response)) => {
                    if let Err(e) = self.absorb(&connection, &naming, response).await {
                        failure = failure.or(Some(e));
                    }
                    if streaming && self.epoch == epoch {
                        // This group's next fetch goes out now, while the caller works.
                        self.spawn_fetch(&mut fetches, connection, &group);
                    } else if self.epoch == epoch {
                        self.answered.push((connection, group));
                    }
                }
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        if self.epoch == epoch && failure.is_none() && !lost {
            self.prefetch = Some(fetches);
        } else {
            self.answered.clear();
        }
        let out = std::mem::take(&mut self.undelivered);
        match failure {
            None => Ok(out),
            Some(e) if e.is_retriable() => {
                self.client.note_error(&e);
                if out.is_empty() {
                    tokio::time::sleep(self.client.config().metadata_refresh_backoff).await;
                }
                Ok(out)
            }
            // A failure fails the poll unless records came with it (their positions moved:
            // returning without them would skip them); then the next poll reports it.
            Some(e) if out.is_empty() => Err(e),
            Some(e) => {
                self.deferred = Some(e);
                Ok(out)
            }
        }
    }

    /// Sends the fetches for every assigned partition from its position: per leader, the
    /// partitions split into up to `fetch_requests_per_broker` groups, one request each. A
    /// leader that cannot be reached (or is unknown) holds up only its own partitions: their
    /// fetches are not sent, and the first such error is returned beside the others.
    async fn send_fetches(&mut self) -> (FetchTasks, Option<Error>) {
        let mut failure = None;
        let mut by_leader: HashMap<String, Vec<TopicPartition>> = HashMap::new();
        for (topic, partition) in self.assigned.keys() {
            match self.client.leader(topic, *partition).await {
                Ok(connection) => {
                    by_leader.entry(connection.broker().to_owned()).or_default().push((topic.clone(), *partition))
                }
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        let mut fetches = tokio::task::JoinSet::new();
        for (broker, partitions) in by_leader {
            let requests = self.config.fetch_requests_per_broker.clamp(1, partitions.len().max(1));
            for (index, group) in partitions.chunks(partitions.len().div_ceil(requests).max(1)).enumerate() {
                match self.fetch_connection(&broker, index).await {
                    Ok(connection) => self.spawn_fetch(&mut fetches, connection, group),
                    Err(e) => failure = failure.or(Some(e)),
                }
            }
        }
        (fetches, failure)
    }

    /// The consumer's own fetch connection number `slot` to `broker`, made if needed.
    async fn fetch_connection(&mut self, broker: &str, slot: usize) -> Result<Arc<Connection>> {
        let key = (broker.to_owned(), slot);
        if let Some(connection) = self.fetch_connections.get(&key).filter(|c| !c.is_closed()) {
            return Ok(Arc::clone(connection));
        }
        let connection = Arc::new(Connection::connect(broker, self.client.config().connection.clone()).await?);
        self.fetch_connections.insert(key, Arc::clone(&connection));
        Ok(connection)
    }

    /// Sends one fetch of `group` from the current positions. With prefetching, a request may
    /// bring at most its share of `prefetch_max_bytes` (by its number of partitions), so that
    /// all requests in flight stay within the bound.
    fn spawn_fetch(&self, fetches: &mut FetchTasks, connection: Arc<Connection>, group: &[TopicPartition]) {
        let mut max_bytes = self.config.max_bytes;
        if self.config.prefetch_max_bytes > 0 && !self.assigned.is_empty() {
            let share = self.config.prefetch_max_bytes / self.assigned.len() * group.len();
            max_bytes = max_bytes.min(i32::try_from(share.max(1)).unwrap_or(i32::MAX));
        }
        let naming = FetchNaming::new(&connection, &self.client.metadata(), group.iter().map(|(t, _)| t.as_str()));
        let request = naming.map(|naming| (FetchRequest { max_bytes, ..self.fetch_request(&naming, group) }, naming));
        let group = group.to_vec();
        fetches.spawn(async move {
            let fetched = async {
                let (request, naming) = request?;
                let response = connection.send_version(&request, naming.version).await?;
                Ok::<_, Error>((connection, naming, response))
            };
            (group, fetched.await)
        });
    }

    fn fetch_request(&self, naming: &FetchNaming, partitions: &[TopicPartition]) -> FetchRequest {
        let metadata = self.client.metadata();
        let mut topics: BTreeMap<&str, Vec<FetchPartition>> = BTreeMap::new();
        for (topic, partition) in partitions {
            let position = self.assigned.get(&(topic.clone(), *partition)).map_or(0, |p| p.position);
            topics.entry(topic.as_str()).or_default().push(FetchPartition {
                partition: *partition,
                current_leader_epoch: metadata.leader_epoch(topic, *partition),
                fetch_offset: position,
                partition_max_bytes: self.config.partition_max_bytes,
                ..Default::default()
            });
        }
        FetchRequest {
            max_wait_ms: i32::try_from(self.config.max_wait.as_millis()).unwrap_or(i32::MAX),
            min_bytes: self.config.min_bytes,
            max_bytes: self.config.max_bytes,
            isolation_level: i8::from(self.config.isolation == Isolation::ReadCommitted),
            topics: topics.into_iter().map(|(topic, partitions)| naming.topic(topic, partitions)).collect(),
            ..FetchRequest::default()
        }
    }

    /// Applies one broker's answer: records out, positions and watermarks updated, errors handled.
    /// A partition's error does not stop the others: it is returned once every other partition
    /// of the answer is in `undelivered`, and the failed partition's position does not move.
    async fn absorb(&mut self, connection: &Connection, naming: &FetchNaming, response: FetchResponse) -> Result<()> {
        connection.throttle(response.throttle_time_ms);
        crate::connection::check_error(connection.broker(), "Fetch", response.error_code)?;
        let mut failure = None;
        // What the response's compressed batches may still expand to.
        let mut allowance = self.config.max_decompressed_bytes;
        let mut answers = Vec::new();
        for topic in response.responses {
            let Some(name) = naming.name_of(&topic) else { continue };
            answers.extend(topic.partitions.into_iter().map(|answer| ((name.clone(), answer.partition_index), answer)));
        }
        let count = answers.len();
        if count > 0 {
            answers.rotate_left(self.responses_absorbed % count);
        }
        self.responses_absorbed = self.responses_absorbed.wrapping_add(1);
        for (key, answer) in answers {
            match self.absorb_partition(connection, key, answer, &mut allowance).await {
                Ok(Some(records)) => self.undelivered.push(records),
                Ok(None) => {}
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// Applies one partition's answer: its records (none if it had none, or is not assigned, or
    /// its error was handled here), its position and watermarks moved past them.
    async fn absorb_partition(
        &mut self,
        connection: &Connection,
        key: TopicPartition,
        answer: PartitionData,
        allowance: &mut usize,
    ) -> Result<Option<PartitionRecords>> {
        let Some(progress) = self.assigned.get(&key).copied() else { return Ok(None) };
        match ErrorCode::from_code(answer.error_code) {
            ErrorCode::None => {}
            ErrorCode::OffsetOutOfRange => {
                self.reset(&key, progress.position).await?;
                return Ok(None);
            }
            code if code.means_stale_metadata() => {
                // Leadership moved, or the topic is not the one the metadata names: the next
                // poll looks again (after the refresh backoff) and fetches from the leader
                // named then; fetches in flight to the old one are dropped.
                self.client.invalidate_metadata();
                self.positions_moved();
                return Ok(None);
            }
            code => return Err(Error::Broker { broker: connection.broker().to_owned(), api: "Fetch", code }),
        }
        let has_records = answer.records.as_ref().is_some_and(|records| !records.is_empty());
        if has_records && *allowance == 0 {
            // The response's batches expanded as far as they may: this partition's are read
            // again by the next fetch, from its position.
            return Ok(None);
        }
        let mut decode = DecodeOptions::default();
        decode.min_offset = progress.position;
        decode.max_total_decompressed_bytes = *allowance;
        let decoded = match &answer.records {
            Some(bytes) => decode_records(bytes, &decode).map_err(|source| Error::Decode {
                broker: connection.broker().to_owned(),
                api: "Fetch",
                version: -1,
                source,
            })?,
            None => Default::default(),
        };
        *allowance = allowance.saturating_sub(decoded.decompressed_bytes);
        let aborted: Vec<(i64, i64)> =
            answer.aborted_transactions.unwrap_or_default().iter().map(|a| (a.producer_id, a.first_offset)).collect();
        let batches = match self.config.isolation {
            Isolation::ReadCommitted => filter_aborted(decoded.batches, &aborted),
            Isolation::ReadUncommitted => decoded.batches.into_iter().filter(|b| !b.header.is_control()).collect(),
        };
        if let Some(updated) = self.assigned.get_mut(&key) {
            updated.position = decoded.next_offset.unwrap_or(updated.position).max(updated.position);
            updated.high_watermark = answer.high_watermark;
            updated.last_stable_offset = answer.last_stable_offset;
        }
        if batches.is_empty() {
            return Ok(None);
        }
        Ok(Some(PartitionRecords { topic: key.0, partition: key.1, batches, high_watermark: answer.high_watermark }))
    }

    async fn reset(&mut self, key: &TopicPartition, position: i64) -> Result<()> {
        let (topic, partition) = key;
        let offset = match self.config.offset_reset {
            OffsetReset::Earliest => self.client.list_offset(topic, *partition, OffsetSpec::Earliest).await?,
            OffsetReset::Latest => self.log_end(topic, *partition).await?,
            OffsetReset::Error => {
                return Err(Error::OffsetOutOfRange { topic: topic.clone(), partition: *partition, offset: position })
            }
        };
        if let Some(progress) = self.assigned.get_mut(key) {
            progress.position = offset;
        }
        self.positions_moved();
        Ok(())
    }
}

/// Keeps the data batches a `read_committed` consumer may see: drops transaction markers and
/// the batches of aborted transactions, given the fetch's aborted-transaction list of
/// `(producer id, first offset)` — the same walk the Java consumer does.
pub fn filter_aborted(batches: Vec<RecordBatch>, aborted: &[(i64, i64)]) -> Vec<RecordBatch> {
    let mut pending: Vec<(i64, i64)> = aborted.to_vec();
    pending.sort_by_key(|(_, first_offset)| std::cmp::Reverse(*first_offset));
    let mut aborting: std::collections::HashSet<i64> = std::collections::HashSet::new();
    let mut kept = Vec::with_capacity(batches.len());
    for batch in batches {
        let header = batch.header;
        if header.producer_id >= 0 {
            // Transactions that started at or before this batch's end are open from here on.
            while pending.last().is_some_and(|(_, first)| *first <= header.last_offset()) {
                if let Some((producer, _)) = pending.pop() {
                    aborting.insert(producer);
                }
            }
            if header.is_control() {
                if batch.control_type() == Some(ControlRecordType::Abort) {
                    aborting.remove(&header.producer_id);
                }
                continue;
            }
            if header.is_transactional() && aborting.contains(&header.producer_id) {
                continue;
            }
        }
        if !header.is_control() {
            kept.push(batch);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use bytes::{Bytes, BytesMut};
    use sluice_protocol::record::{encode_batch, BatchHeader, Record, ATTR_CONTROL, ATTR_TRANSACTIONAL};

    use super::*;

    /// A batch at `offset` of `count` records from `producer` (-1: none), with `attributes`.
    fn batch(offset: i64, count: i64, producer: i64, attributes: i16, key: Option<&'static [u8]>) -> RecordBatch {
        let header = BatchHeader {
            base_offset: offset,
            producer_id: producer,
            producer_epoch: 0,
            attributes,
            ..BatchHeader::default()
        };
        let records: Vec<Record> = (0..count)
            .map(|i| Record {
                offset: offset + i,
                key: key.map(Bytes::from_static),
                value: Some("v".into()),
                ..Record::default()
            })
            .collect();
        let mut bytes = BytesMut::new();
        encode_batch(&header, &records, &mut bytes).unwrap();
        decode_records(&bytes.freeze(), &DecodeOptions::default()).unwrap().batches.remove(0)
    }

    const ABORT: Option<&[u8]> = Some(&[0, 0, 0, 0]);
    const COMMIT: Option<&[u8]> = Some(&[0, 0, 0, 1]);
    const TXN: i16 = ATTR_TRANSACTIONAL;
    const MARKER: i16 = ATTR_TRANSACTIONAL | ATTR_CONTROL;

    fn offsets(batches: &[RecordBatch]) -> Vec<i64> {
        batches.iter().flat_map(|b| b.records().map(|r| r.offset())).collect()
    }

    #[test]
    fn read_committed_drops_aborted_transactions_and_markers_only() {
        let log = vec![
            batch(0, 2, 7, TXN, None),      // producer 7's transaction...
            batch(2, 1, 7, MARKER, ABORT),  // ...aborted
            batch(3, 2, 8, TXN, None),      // producer 8's transaction...
            batch(5, 1, 8, MARKER, COMMIT), // ...committed
            batch(6, 1, -1, 0, None),       // not transactional
            batch(7, 2, 7, TXN, None),      // producer 7 again, a new transaction, not aborted
        ];
        let kept = filter_aborted(log.clone(), &[(7, 0)]);
        assert_eq!(offsets(&kept), vec![3, 4, 6, 7, 8]);
        // With no aborted transactions reported everything but the markers stays.
        assert_eq!(offsets(&filter_aborted(log, &[])), vec![0, 1, 3, 4, 6, 7, 8]);
    }

    #[test]
    fn an_aborted_transaction_interleaved_with_a_committed_one_is_dropped_alone() {
        let log = vec![
            batch(0, 1, 1, TXN, None),
            batch(1, 1, 2, TXN, None),
            batch(2, 1, 1, TXN, None),
            batch(3, 1, 2, MARKER, COMMIT),
            batch(4, 1, 1, MARKER, ABORT),
        ];
        assert_eq!(offsets(&filter_aborted(log, &[(1, 0)])), vec![1]);
    }

    #[test]
    fn lag_is_the_distance_to_the_high_watermark() {
        let progress = PartitionProgress { position: 40, high_watermark: 100, last_stable_offset: 100 };
        assert_eq!(progress.lag(), 60);
        assert_eq!(PartitionProgress { high_watermark: -1, ..progress }.lag(), 0);
    }
}
