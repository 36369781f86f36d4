//! The producer: records are gathered per partition into batches (up to `batch_size_bytes`, or
//! until `linger` passes), compressed, and sent to each partition's leader, several partitions per
//! request. Buffered bytes are bounded by `buffer_memory_bytes`: [`Producer::send`] waits for room
//! (backpressure). Each record's future resolves to its offset once the broker acknowledges it.
//!
//! Idempotent by default (KIP-98): the producer gets a producer id and epoch (InitProducerId) and
//! numbers each partition's batches, so a batch resent after a lost acknowledgement is written once,
//! and up to `max_in_flight_per_partition` batches (5) can be in flight without reordering. A
//! batch that fails with a retriable error goes back to the front of its partition's queue in
//! sequence order and is resent, byte for byte, until `delivery_timeout` runs out. Without
//! idempotence one batch per partition is in flight, which keeps order across retries.
//!
//! With a `transactional_id` the producer is transactional (KIP-98): see [`Producer::begin_transaction`].

mod txn;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use sluice_protocol::compression::Compression;
use sluice_protocol::error_code::ErrorCode;
use sluice_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use sluice_protocol::messages::produce_response::TopicProduceResponse;
use sluice_protocol::messages::{InitProducerIdRequest, ProduceRequest, ProduceResponse};
use sluice_protocol::primitives::Uuid;
use sluice_protocol::record::{set_producer_state, BatchBuilder, BatchHeader, RecordHeader, ATTR_TRANSACTIONAL};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;

use crate::client::{Client, ClusterMetadata};
use crate::connection::{check_error, Connection};
use crate::error::{Error, Result};
use crate::partitioner::partition_for_key;

/// How many acknowledgements a produce waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// None: the broker does not answer; offsets are unknown (-1) and failures unseen.
    None,
    /// The leader has written the records.
    Leader,
    /// All in-sync replicas have (required for idempotence).
    All,
}

impl Acks {
    fn wire(self) -> i16 {
        match self {
            Self::None => 0,
            Self::Leader => 1,
            Self::All => -1,
        }
    }
}

/// How a [`Producer`] batches and sends.
///
/// Fields may be added in later versions (`#[non_exhaustive]`): start from [`Default`] and set the
/// fields you need.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProducerConfig {
    /// How long a batch waits for more records before it is sent.
    pub linger: Duration,
    /// A batch is sent once its records reach this many bytes (before compression).
    pub batch_size_bytes: usize,
    /// Most bytes of records buffered (queued or in flight); `send` waits beyond this.
    pub buffer_memory_bytes: usize,
    /// The codec batches are compressed with.
    pub compression: Compression,
    /// Acknowledgements to wait for.
    pub acks: Acks,
    /// Idempotent delivery (needs `Acks::All`).
    pub idempotent: bool,
    /// Batches in flight per partition when idempotent (at most 5, as Kafka allows).
    pub max_in_flight_per_partition: usize,
    /// How long a record may take to be acknowledged, retries included.
    pub delivery_timeout: Duration,
    /// Wait before resending a batch that failed.
    pub retry_backoff: Duration,
    /// Makes the producer transactional (and idempotent): records are sent inside transactions
    /// that commit or abort as a whole. A new producer with the same id fences the old one and
    /// finishes its open transaction.
    pub transactional_id: Option<String>,
    /// How long a transaction may stay open before the coordinator aborts it.
    pub transaction_timeout: Duration,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            linger: Duration::from_millis(5),
            batch_size_bytes: 1 << 20,
            buffer_memory_bytes: 64 << 20,
            compression: Compression::None,
            acks: Acks::All,
            idempotent: true,
            max_in_flight_per_partition: 5,
            delivery_timeout: Duration::from_secs(120),
            retry_backoff: Duration::from_millis(100),
            transactional_id: None,
            transaction_timeout: Duration::from_secs(60),
        }
    }
}

/// A record to produce.
#[derive(Debug, Clone, Default)]
pub struct ProducerRecord {
    /// The topic.
    pub topic: String,
    /// The partition; `None` picks one from the key (murmur2, as the Java client) or round-robin
    /// for records without a key.
    pub partition: Option<i32>,
    /// The key.
    pub key: Option<Bytes>,
    /// The value.
    pub value: Option<Bytes>,
    /// Headers.
    pub headers: Vec<RecordHeader>,
    /// Creation time in milliseconds since the epoch; `None` is now.
    pub timestamp: Option<i64>,
}

impl ProducerRecord {
    /// A record with a value, for `topic`.
    pub fn new(topic: impl Into<String>, value: impl Into<Bytes>) -> Self {
        Self { topic: topic.into(), value: Some(value.into()), ..Self::default() }
    }

    /// Sets the key.
    #[must_use]
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }
}

/// Where an acknowledged record was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The offset, or -1 when unknown (acks 0, or a batch the broker had already written).
    pub offset: i64,
    /// The record's timestamp.
    pub timestamp: i64,
}

/// Resolves to a record's [`RecordMetadata`] once the broker acknowledges it.
#[derive(Debug)]
pub struct DeliveryFuture {
    outcome: Arc<BatchOutcome>,
    index: usize,
    timestamp: i64,
}

impl DeliveryFuture {
    /// Whether `other` is the delivery of a record in the same batch as this one's: a batch is
    /// acknowledged or fails whole, so one of its deliveries tells the outcome of all (a caller
    /// producing many records can keep one future per batch).
    pub fn same_batch(&self, other: &DeliveryFuture) -> bool {
        Arc::ptr_eq(&self.outcome, &other.outcome)
    }

    fn metadata(&self, outcome: &Result<i64>) -> Result<RecordMetadata> {
        let offset = match outcome {
            Ok(base) if *base >= 0 => base.saturating_add(self.index as i64),
            Ok(_) => -1,
            Err(e) => return Err(e.clone()),
        };
        Ok(RecordMetadata {
            topic: self.outcome.topic.clone(),
            partition: self.outcome.partition,
            offset,
            timestamp: self.timestamp,
        })
    }
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(outcome) = self.outcome.result.get() {
            return Poll::Ready(self.metadata(outcome));
        }
        {
            let mut wakers = self.outcome.wakers.lock().unwrap_or_else(PoisonError::into_inner);
            if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                wakers.push(cx.waker().clone());
            }
        }
        // The batch may have completed while the waker was being registered.
        match self.outcome.result.get() {
            Some(outcome) => Poll::Ready(self.metadata(outcome)),
            None => Poll::Pending,
        }
    }
}

type TopicPartition = (String, i32);

/// The outcome of one batch (its base offset, or why it failed), shared by its records'
/// futures: one allocation per batch rather than a channel per record.
#[derive(Debug)]
struct BatchOutcome {
    topic: String,
    partition: i32,
    result: OnceLock<Result<i64>>,
    wakers: Mutex<Vec<Waker>>,
}

impl BatchOutcome {
    fn complete(&self, outcome: Result<i64>) {
        if self.result.set(outcome).is_ok() {
            let wakers = std::mem::take(&mut *self.wakers.lock().unwrap_or_else(PoisonError::into_inner));
            wakers.into_iter().for_each(Waker::wake);
        }
    }
}

/// A batch's records' side: the shared outcome, how many records, and their buffer memory
/// (given back when the batch is done). Dropped unresolved (the producer went away), it fails
/// the records with [`Error::ProducerClosed`].
#[derive(Debug)]
struct Completion {
    outcome: Arc<BatchOutcome>,
    records: usize,
    memory: Arc<Semaphore>,
    /// Permits taken from `memory` for this batch's records.
    permits: usize,
}

impl Completion {
    fn new(topic: &str, partition: i32, memory: &Arc<Semaphore>) -> Self {
        let outcome = BatchOutcome {
            topic: topic.to_owned(),
            partition,
            result: OnceLock::new(),
            wakers: Mutex::new(Vec::new()),
        };
        Self { outcome: Arc::new(outcome), records: 0, memory: Arc::clone(memory), permits: 0 }
    }

    /// Takes one more record holding `permits` of buffer memory; returns its index in the batch.
    fn add(&mut self, permits: u32) -> usize {
        self.permits += permits as usize;
        self.records += 1;
        self.records - 1
    }
}

/// Buffer memory taken for records that are not in a batch yet: what is not handed over to a
/// batch is given back when `send` fails before the records are buffered.
struct Reservation<'a> {
    memory: &'a Semaphore,
    permits: u32,
}

impl Reservation<'_> {
    /// Hands `permits` of the reservation over to a batch.
    fn hand_over(&mut self, permits: u32) -> u32 {
        let permits = permits.min(self.permits);
        self.permits -= permits;
        permits
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.memory.add_permits(self.permits as usize);
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        self.outcome.complete(Err(Error::ProducerClosed));
        self.memory.add_permits(self.permits);
    }
}

/// A partition's batch still taking records; records are encoded as they arrive, so only their
/// bytes are kept.
#[derive(Debug)]
struct OpenBatch {
    builder: BatchBuilder,
    completion: Completion,
    opened: Instant,
}

#[derive(Debug)]
struct SealedBatch {
    partition: TopicPartition,
    /// The records, until the batch is first sent (then `payload`).
    builder: Option<BatchBuilder>,
    completion: Completion,
    /// The idempotent base sequence (renumbered when the producer gets a new id).
    sequence: i32,
    /// Per-partition seal order, never renumbered nor wrapped.
    ordinal: u64,
    /// The encoded batch, kept so that a retry resends exactly the same bytes.
    payload: Option<Bytes>,
    deadline: Instant,
    not_before: Instant,
    last_error: Option<Error>,
}

#[derive(Debug, Default)]
struct PartitionQueue {
    open: Option<OpenBatch>,
    ready: VecDeque<SealedBatch>,
    /// The ordinals of the batches sent and not back yet.
    in_flight: BTreeSet<u64>,
    next_sequence: i32,
    next_ordinal: u64,
    /// The sequence the broker is known to expect next: every batch numbered below it has
    /// been acknowledged.
    acked_sequence: i32,
}

#[derive(Debug, Default)]
struct State {
    /// Per topic, per partition; kept for the producer's life, since idempotent sequence numbers
    /// continue. Keyed by topic first so that `send` looks a record up without copying its name.
    queues: FastMap<String, FastMap<i32, PartitionQueue>>,
    flush_requested: bool,
    closed: bool,
    /// The first delivery failure of the open transaction: it cannot commit.
    transaction_failure: Option<Error>,
    /// The broker lost this producer's state (UNKNOWN_PRODUCER_ID, e.g. after a restart without
    /// its log): nothing new is sent until every batch in flight is back, then the producer gets
    /// a new id and renumbers what it has not delivered yet.
    reset_producer: bool,
    /// Records not delivered since the last `flush`, and the first error: `flush` reports them.
    undelivered: Option<(u64, Error)>,
}

impl State {
    fn is_idle(&self) -> bool {
        self.queues
            .values()
            .flat_map(HashMap::values)
            .all(|q| q.open.is_none() && q.ready.is_empty() && q.in_flight.is_empty())
    }

    /// The queue of `topic`/`partition`, created if new; the topic name is copied only then.
    #[allow(clippy::expect_used)] // inserted just above when missing
    fn queue(&mut self, topic: &str, partition: i32) -> &mut PartitionQueue {
        if !self.queues.contains_key(topic) {
            self.queues.insert(topic.to_owned(), FastMap::default());
        }
        self.queues.get_mut(topic).expect("the topic's queues exist").entry(partition).or_default()
    }
}

#[derive(Debug)]
struct Shared {
    client: Client,
    config: ProducerConfig,
    /// The producer id and epoch; replaced when the broker has lost the producer's state.
    ids: Mutex<(i64, i16)>,
    memory: Arc<Semaphore>,
    state: Mutex<State>,
    /// Wakes the sender task: new records, a finished request, a flush.
    wake: Notify,
    /// Wakes flushers when everything buffered has been acknowledged.
    idle: Notify,
    round_robin: AtomicUsize,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn ids(&self) -> (i64, i16) {
        *self.ids.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Produces records to a cluster. Cheap to share behind an `Arc`; `send` takes `&self`.
#[derive(Debug)]
pub struct Producer {
    shared: Arc<Shared>,
    sender: JoinHandle<()>,
    /// The transaction state, for a transactional producer.
    transaction: Option<tokio::sync::Mutex<txn::Transaction>>,
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.sender.abort();
    }
}

/// A map keyed by topic names and partition numbers, looked up once per record: foldhash (the
/// workspace's one hasher, seeded per map) rather than SipHash, which costs more than the
/// lookup's other work.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The most a new batch's buffer reserves up front (it grows beyond when needed).
const MAX_PREALLOCATED_BATCH_BYTES: usize = 1 << 20;

/// Memory a buffered record holds, counted against `buffer_memory_bytes`: its encoded fields
/// plus a fixed share for the record's framing and its pending delivery (the future's channel).
fn record_size(record: &ProducerRecord) -> usize {
    /// Record framing (varints, attributes) plus the delivery's channel and bookkeeping.
    const PER_RECORD_OVERHEAD_BYTES: usize = 160;
    let field = |b: &Option<Bytes>| b.as_ref().map_or(0, Bytes::len);
    let headers: usize = record.headers.iter().map(|h| h.key.len() + field(&h.value) + 4).sum();
    field(&record.key) + field(&record.value) + headers + PER_RECORD_OVERHEAD_BYTES
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Producer {
    /// Starts a producer on `client` (and, when idempotent, gets a producer id).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: nothing is left behind but, for an idempotent or transactional producer, a producer id the broker
    /// handed out (it expires unused; a transactional id's InitProducerId may have fenced its previous producer).
    pub async fn new(client: Client, mut config: ProducerConfig) -> Result<Self> {
        let mut transaction = None;
        if config.transactional_id.is_some() {
            config.idempotent = true;
        }
        let (producer_id, producer_epoch) = if let Some(id) = &config.transactional_id {
            config.acks = Acks::All;
            config.max_in_flight_per_partition = config.max_in_flight_per_partition.clamp(1, 5);
            let (ids, state) =
                txn::Transaction::init(&client, id, config.transaction_timeout, config.delivery_timeout).await?;
            transaction = Some(tokio::sync::Mutex::new(state));
            ids
        } else if config.idempotent {
            config.acks = Acks::All;
            config.max_in_flight_per_partition = config.max_in_flight_per_partition.clamp(1, 5);
            init_producer_id(&client).await?
        } else {
            config.max_in_flight_per_partition = 1;
            (-1, -1)
        };
        let permits = config.buffer_memory_bytes.min(Semaphore::MAX_PERMITS);
        let shared = Arc::new(Shared {
            client,
            memory: Arc::new(Semaphore::new(permits)),
            config,
            ids: Mutex::new((producer_id, producer_epoch)),
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            idle: Notify::new(),
            round_robin: AtomicUsize::new(0),
        });
        let sender = tokio::spawn(run_sender(Arc::clone(&shared)));
        Ok(Self { shared, sender, transaction })
    }

    /// The producer id and epoch (-1, -1 when not idempotent).
    pub fn producer_id(&self) -> (i64, i16) {
        self.shared.ids()
    }

    /// The transactional id, for a transactional producer.
    pub fn transactional_id(&self) -> Option<&str> {
        self.shared.config.transactional_id.as_deref()
    }

    /// The client the producer sends through.
    pub fn client(&self) -> &Client {
        &self.shared.client
    }

    /// Buffers `record` for sending, waiting while the buffer is full, and returns a future of
    /// its acknowledgement.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a send dropped before it returns has not buffered the record (nothing of it is sent) and gives
    /// back the buffer room it waited for; sending the record again is the way on. Once it has returned, the record
    /// goes out whether or not its DeliveryFuture is awaited.
    pub async fn send(&self, record: ProducerRecord) -> Result<DeliveryFuture> {
        let shared = &self.shared;
        let permits = self.permits_for(&record)?;
        let mut reservation = self.reserve(permits).await?;
        let partition = self.partition_for(&record).await?;
        if let Some(transaction) = &self.transaction {
            transaction.lock().await.add_partitions(shared, &[(&record.topic, partition)]).await?;
        }
        let timestamp = record.timestamp.unwrap_or_else(now_ms);
        let mut state = shared.state();
        let (delivery, wake) = append(&mut state, shared, (&record, partition, timestamp), &mut reservation, permits)?;
        drop(state);
        if wake {
            shared.wake.notify_one();
        }
        Ok(delivery)
    }

    /// Buffers `records` for sending, in their order, as [`Producer::send`] would one by one, and
    /// returns the futures of their acknowledgements in the same order. Cheaper per record: a
    /// transactional producer adds the records' new partitions to the transaction in one
    /// AddPartitionsToTxn, and the records go in runs, each with one wait for buffer room and
    /// one lock of the buffers.
    ///
    /// When a record cannot be sent (too large, its topic unknown) the error is returned and
    /// the records after it are not buffered; those before it are, and go out as sent records
    /// do (a flush or the transaction's commit reports how they fared).
    ///
    /// In a transaction, the call must end before the transaction does: it waits for buffer room
    /// between runs, and a commit or abort from another task meanwhile would leave the later
    /// runs outside the transaction their partitions were added to.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropped part way, some of the records are buffered (and go out) and the
    /// rest are not, with no way to tell which. Await it to the end.
    pub async fn send_all(&self, records: impl IntoIterator<Item = ProducerRecord>) -> Result<Vec<DeliveryFuture>> {
        let shared = &self.shared;
        // Each record's partition and room, up to the first record that cannot be sent.
        let mut prepared = Vec::new();
        let mut failure = None;
        for record in records {
            let partition = match self.permits_for(&record) {
                Ok(permits) => self.partition_for(&record).await.map(|partition| (partition, permits)),
                Err(e) => Err(e),
            };
            match partition {
                Ok((partition, permits)) => prepared.push((record, partition, permits)),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        // Every new partition joins the transaction in one request, before any record is
        // buffered (the sender may send a batch as soon as it is).
        if let (Some(transaction), false) = (&self.transaction, prepared.is_empty()) {
            let mut partitions: HashSet<(&str, i32), foldhash::fast::RandomState> = HashSet::default();
            partitions.extend(prepared.iter().map(|(record, partition, _)| (record.topic.as_str(), *partition)));
            let partitions: Vec<(&str, i32)> = partitions.into_iter().collect();
            transaction.lock().await.add_partitions(shared, &partitions).await?;
        }
        // Room a run takes at once: a part of the buffer, so that runs follow each other while
        // the sender sends the earlier ones.
        let capacity = self.buffer_capacity();
        let run_room = (capacity / 4).max(shared.config.batch_size_bytes).min(capacity);
        let mut deliveries = Vec::with_capacity(prepared.len());
        let mut prepared = prepared.into_iter().peekable();
        while prepared.peek().is_some() {
            let mut run = Vec::with_capacity(SEND_ALL_RUN);
            let mut room = 0;
            while let Some(next) = prepared.next_if(|(_, _, permits)| {
                run.is_empty() || (run.len() < SEND_ALL_RUN && room + *permits as usize <= run_room)
            }) {
                room += next.2 as usize;
                run.push(next);
            }
            let mut reservation = self.reserve(u32::try_from(room).unwrap_or(u32::MAX)).await?;
            let now = now_ms();
            let mut wake = false;
            let mut state = shared.state();
            let mut appended = Ok(());
            for (record, partition, permits) in &run {
                let timestamp = record.timestamp.unwrap_or(now);
                match append(&mut state, shared, (record, *partition, timestamp), &mut reservation, *permits) {
                    Ok((delivery, woken)) => {
                        deliveries.push(delivery);
                        wake |= woken;
                    }
                    Err(e) => {
                        appended = Err(e);
                        break;
                    }
                }
            }
            drop(state);
            // The batches the run opened go out even when a record of it failed.
            if wake {
                shared.wake.notify_one();
            }
            appended?;
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(deliveries),
        }
    }

    /// The buffer room `record` takes, or why it can never fit.
    fn permits_for(&self, record: &ProducerRecord) -> Result<u32> {
        let size = record_size(record);
        let max = self.shared.config.batch_size_bytes.max(1).min(self.buffer_capacity());
        u32::try_from(size).ok().filter(|_| size <= max).ok_or(Error::RecordTooLarge { size, max })
    }

    /// The buffer room there is in all, in permits: `buffer_memory_bytes`, at most what the
    /// semaphore and a single acquisition (`u32`) can hold.
    fn buffer_capacity(&self) -> usize {
        self.shared.config.buffer_memory_bytes.min(Semaphore::MAX_PERMITS).min(u32::MAX as usize)
    }

    /// Waits for `permits` of buffer room. The permits travel with the records' batches
    /// (`Completion`), which give them back; what is not handed over goes back when the
    /// reservation is dropped.
    async fn reserve(&self, permits: u32) -> Result<Reservation<'_>> {
        let memory = &self.shared.memory;
        match memory.try_acquire_many(permits) {
            Ok(permit) => permit.forget(),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(Error::ProducerClosed),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                memory.acquire_many(permits).await.map_err(|_| Error::ProducerClosed)?.forget();
            }
        }
        Ok(Reservation { memory, permits })
    }

    /// The record's partition: the one it names, or one chosen by its key (round robin without).
    async fn partition_for(&self, record: &ProducerRecord) -> Result<i32> {
        if let Some(partition) = record.partition {
            return Ok(partition);
        }
        let client = &self.shared.client;
        let known = client.metadata().topics.get(&record.topic).map(|t| t.partitions.len());
        let count = match known {
            Some(count) if count > 0 => count,
            _ => client
                .refresh_metadata(Some(&[record.topic.as_str()]))
                .await?
                .topics
                .get(&record.topic)
                .filter(|t| t.error == ErrorCode::None)
                .map(|t| t.partitions.len())
                .filter(|count| *count > 0)
                .ok_or_else(|| Error::UnknownTopic { topic: record.topic.clone() })?,
        };
        let count = i32::try_from(count).unwrap_or(i32::MAX);
        Ok(match &record.key {
            Some(key) => partition_for_key(key, count),
            None => (self.shared.round_robin.fetch_add(1, Ordering::Relaxed) % count as usize) as i32,
        })
    }

    /// Sends everything buffered now (without waiting for `linger`) and waits until all of it
    /// is acknowledged or has failed. Fails with [`Error::Undelivered`] when records sent since
    /// the last flush were not delivered (each record's [`DeliveryFuture`] says which), so that
    /// a caller that dropped the futures still learns of it.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: what is buffered is sent anyway; flushing again waits for it and reports
    /// the failures the dropped flush did not.
    pub async fn flush(&self) -> Result<()> {
        self.sent_all().await;
        match self.shared.state().undelivered.take() {
            Some((records, first)) => Err(Error::Undelivered { records, source: Box::new(first) }),
            None => Ok(()),
        }
    }

    /// Waits until everything buffered is acknowledged or has failed.
    async fn sent_all(&self) {
        loop {
            let idle = self.shared.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            {
                let mut state = self.shared.state();
                if state.is_idle() {
                    return;
                }
                state.flush_requested = true;
            }
            self.shared.wake.notify_one();
            idle.await;
        }
    }

    /// Flushes, then stops the producer; later sends fail with [`Error::ProducerClosed`]. Fails
    /// as [`Producer::flush`] does (the producer is stopped either way).
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropped, the producer goes with it (its background sender stops), so
    /// records still buffered may never be sent. Await `flush` first where that matters.
    pub async fn close(self) -> Result<()> {
        let flushed = self.flush().await;
        self.shared.state().closed = true;
        self.shared.memory.close();
        flushed
    }
}

/// Gets an idempotent producer's id and epoch from any broker, trying again (for up to the
/// request timeout) while the answer is retriable: a broker that has just started answers
/// COORDINATOR_LOAD_IN_PROGRESS until it has loaded its producer-id state.
async fn init_producer_id(client: &Client) -> Result<(i64, i16)> {
    let request = InitProducerIdRequest {
        transactional_id: None,
        transaction_timeout_ms: 60_000,
        producer_id: -1,
        producer_epoch: -1,
        ..InitProducerIdRequest::default()
    };
    let deadline = Instant::now() + client.config().connection.request_timeout;
    let mut backoff = Duration::from_millis(20);
    loop {
        let answer = async {
            let connection = client.any_broker().await?;
            let response = connection.send(&request).await?;
            check_error(connection.broker(), "InitProducerId", response.error_code)?;
            Ok::<_, Error>((response.producer_id, response.producer_epoch))
        };
        match answer.await {
            Err(e) if e.is_retriable() && Instant::now() + backoff < deadline => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
            result => return result,
        }
    }
}

/// Records [`Producer::send_all`] buffers with one wait for room and one lock of the buffers;
/// the lock is given up between runs, so the sender is not kept waiting long.
const SEND_ALL_RUN: usize = 1024;

/// Appends a record (with its partition and timestamp) to its partition's open batch, sealing
/// the batch first when the record would overflow it, and hands `permits` of `reservation`
/// over to the batch. Also returns whether the sender must wake: a new batch brings a new
/// linger deadline, and a full one is due.
fn append(
    state: &mut State,
    shared: &Shared,
    (record, partition, timestamp): (&ProducerRecord, i32, i64),
    reservation: &mut Reservation<'_>,
    permits: u32,
) -> Result<(DeliveryFuture, bool)> {
    if state.closed {
        return Err(Error::ProducerClosed);
    }
    let config = &shared.config;
    let queue = state.queue(&record.topic, partition);
    let size = permits as usize;
    if queue.open.as_ref().is_some_and(|open| open.builder.size_bytes() + size > config.batch_size_bytes) {
        seal(queue, (record.topic.clone(), partition), config);
    }
    let created = queue.open.is_none();
    let open = queue.open.get_or_insert_with(|| OpenBatch {
        // Room for a full batch at once: growing a large buffer step by step copies it.
        builder: BatchBuilder::with_capacity(config.batch_size_bytes.min(MAX_PREALLOCATED_BATCH_BYTES)),
        completion: Completion::new(&record.topic, partition, &shared.memory),
        opened: Instant::now(),
    });
    let headers: Vec<(&[u8], Option<&[u8]>)> =
        record.headers.iter().map(|h| (&h.key[..], h.value.as_deref())).collect();
    open.builder
        .append(timestamp, record.key.as_deref(), record.value.as_deref(), &headers)
        .map_err(|source| Error::Encode { broker: "(producer)".into(), api: "Produce", version: -1, source })?;
    let index = open.completion.add(reservation.hand_over(permits));
    let outcome = Arc::clone(&open.completion.outcome);
    let full = open.builder.size_bytes() >= config.batch_size_bytes;
    Ok((DeliveryFuture { outcome, index, timestamp }, full || created))
}

/// Moves a partition's open batch to its ready queue, numbering it.
fn seal(queue: &mut PartitionQueue, partition: TopicPartition, config: &ProducerConfig) {
    let Some(open) = queue.open.take() else { return };
    let sequence = queue.next_sequence;
    let count = i32::try_from(open.builder.len()).unwrap_or(i32::MAX);
    // Kafka's sequence numbers wrap at i32::MAX.
    queue.next_sequence = sequence.checked_add(count).unwrap_or_else(|| count - (i32::MAX - sequence) - 1);
    let ordinal = queue.next_ordinal;
    queue.next_ordinal += 1;
    let now = Instant::now();
    queue.ready.push_back(SealedBatch {
        partition,
        builder: Some(open.builder),
        completion: open.completion,
        sequence,
        ordinal,
        payload: None,
        deadline: now + config.delivery_timeout,
        not_before: now,
        last_error: None,
    });
}

/// The sender task: seals batches whose time has come, sends what each partition may have in
/// flight, and sleeps until the next linger deadline or wake-up.
async fn run_sender(shared: Arc<Shared>) {
    loop {
        if reset_due(&shared) {
            reset_producer(&shared).await;
        }
        let (due, next_deadline) = take_due_batches(&shared);
        if !due.is_empty() {
            dispatch(&shared, due).await;
        }
        let wake = shared.wake.notified();
        match next_deadline {
            Some(deadline) => {
                tokio::select! {
                    () = wake => {}
                    () = tokio::time::sleep_until(deadline.into()) => {}
                }
            }
            None => wake.await,
        }
    }
}

/// Whether the producer must be reset now: asked for, and nothing in flight any more.
fn reset_due(shared: &Shared) -> bool {
    let state = shared.state();
    state.reset_producer && state.queues.values().flat_map(HashMap::values).all(|q| q.in_flight.is_empty())
}

/// Gets a new producer id and renumbers every undelivered batch from sequence 0 per partition
/// (rewriting the headers of batches already encoded), as the Java producer does (KIP-360).
async fn reset_producer(shared: &Shared) {
    let ids = loop {
        match init_producer_id(&shared.client).await {
            Ok(ids) => break ids,
            Err(error) => {
                expire_ready(shared, &error);
                tokio::time::sleep(shared.config.retry_backoff).await;
            }
        }
    };
    *shared.ids.lock().unwrap_or_else(PoisonError::into_inner) = ids;
    let mut state = shared.state();
    let mut unsendable = Vec::new();
    for queue in state.queues.values_mut().flat_map(HashMap::values_mut) {
        let mut sequence: i32 = 0;
        let mut renumbered = VecDeque::with_capacity(queue.ready.len());
        for mut batch in queue.ready.drain(..) {
            if let Some(payload) = batch.payload.take() {
                let mut bytes = BytesMut::from(&payload[..]);
                // This producer encoded the payload as a v2 batch, so this cannot fail; if it
                // did, the batch fails rather than go out under the old id.
                if let Err(source) = set_producer_state(&mut bytes, ids.0, ids.1, sequence) {
                    unsendable.push((batch, source));
                    continue;
                }
                batch.payload = Some(bytes.freeze());
            }
            batch.sequence = sequence;
            sequence = sequence.saturating_add(i32::try_from(batch.completion.records).unwrap_or(i32::MAX));
            renumbered.push_back(batch);
        }
        queue.ready = renumbered;
        queue.next_sequence = sequence;
        queue.acked_sequence = 0;
    }
    state.reset_producer = false;
    drop(state);
    for (batch, source) in unsendable {
        let (topic, partition) = batch.partition.clone();
        complete(shared, batch, &Err(Error::Renumber { topic, partition, source }));
    }
}

/// Fails the queued batches whose delivery timeout has passed (while nothing can be sent).
fn expire_ready(shared: &Shared, error: &Error) {
    let now = Instant::now();
    let mut expired = Vec::new();
    {
        let mut state = shared.state();
        for queue in state.queues.values_mut().flat_map(HashMap::values_mut) {
            while queue.ready.front().is_some_and(|b| b.deadline <= now) {
                expired.extend(queue.ready.pop_front());
            }
        }
    }
    for batch in expired {
        let (topic, partition) = batch.partition.clone();
        let timeout = shared.config.delivery_timeout;
        complete(
            shared,
            batch,
            &Err(Error::DeliveryTimeout { topic, partition, timeout, last_error: error.to_string() }),
        );
    }
}

/// Seals due batches and takes the ones that may be sent now; returns them and when to look
/// again.
fn take_due_batches(shared: &Shared) -> (Vec<SealedBatch>, Option<Instant>) {
    let config = &shared.config;
    let now = Instant::now();
    let mut state = shared.state();
    let flush = state.flush_requested;
    let resetting = state.reset_producer;
    let mut due = Vec::new();
    let mut next: Option<Instant> = None;
    let mut earliest = |at: Instant| next = Some(next.map_or(at, |n| n.min(at)));
    for (topic, partitions) in &mut state.queues {
        for (partition, queue) in partitions.iter_mut() {
            if let Some(open) = &queue.open {
                let linger_end = open.opened + config.linger;
                if flush || linger_end <= now || open.builder.size_bytes() >= config.batch_size_bytes {
                    seal(queue, (topic.clone(), *partition), config);
                } else {
                    earliest(linger_end);
                }
            }
            if resetting {
                continue;
            }
            while let Some(batch) = queue.ready.front() {
                if !may_send(queue, batch, config.max_in_flight_per_partition) {
                    // Waits for batches in flight, whose answers wake the sender.
                    break;
                }
                if batch.not_before > now {
                    earliest(batch.not_before);
                    break;
                }
                if let Some(batch) = queue.ready.pop_front() {
                    queue.in_flight.insert(batch.ordinal);
                    due.push(batch);
                }
            }
        }
    }
    if state.is_idle() {
        state.flush_requested = false;
        shared.idle.notify_waiters();
    }
    (due, next)
}

/// Whether `batch`, the first of its partition's ready queue, may be sent now. Two rules keep
/// a partition's batches in a window the broker can check for duplicates (it remembers the last
/// five batches of each producer and partition):
/// - a batch goes only if fewer than `window` batches separate it from the oldest batch not yet
///   acknowledged, so a batch whose answer was lost is resent before the broker forgets it;
/// - a batch sent before (its answer was lost or refused) goes again only when no batch sealed
///   before it is still in flight: those come back first, acknowledged or to be resent, else a
///   later batch could reach the broker ahead of an earlier one it then never takes in order.
fn may_send(queue: &PartitionQueue, batch: &SealedBatch, window: usize) -> bool {
    let oldest = queue.in_flight.first().map_or(batch.ordinal, |&first| first.min(batch.ordinal));
    let within_window = batch.ordinal - oldest < window as u64;
    let resend_in_order = batch.payload.is_none() || oldest == batch.ordinal;
    within_window && resend_in_order
}

/// Encodes the batches and sends them to their leaders. A request holds at most one batch per
/// partition (the k-th request to a broker carries each partition's k-th batch), and a broker's
/// requests are enqueued on its connection in that order, so each partition's batches arrive in
/// sequence; the answers are awaited on separate tasks.
async fn dispatch(shared: &Arc<Shared>, batches: Vec<SealedBatch>) {
    let mut by_leader: HashMap<String, (Arc<Connection>, Vec<SealedBatch>)> = HashMap::new();
    for mut batch in batches {
        if let Err(e) = encode(shared, &mut batch) {
            finish(shared, batch, Err(e));
            continue;
        }
        let (topic, partition) = &batch.partition;
        match shared.client.leader(topic, *partition).await {
            Ok(connection) => {
                by_leader
                    .entry(connection.broker().to_owned())
                    .or_insert_with(|| (connection, Vec::new()))
                    .1
                    .push(batch);
            }
            Err(e) => retry_or_fail(shared, batch, e),
        }
    }
    for (_, (connection, batches)) in by_leader {
        for round in rounds(batches) {
            send_round(shared, &connection, round).await;
        }
    }
}

/// Splits batches (in per-partition order) into rounds holding at most one batch per partition.
fn rounds(batches: Vec<SealedBatch>) -> Vec<Vec<SealedBatch>> {
    let mut rounds: Vec<Vec<SealedBatch>> = Vec::new();
    let mut seen: HashMap<TopicPartition, usize> = HashMap::new();
    for batch in batches {
        let k = seen.entry(batch.partition.clone()).or_insert(0);
        if rounds.len() <= *k {
            rounds.resize_with(*k + 1, Vec::new);
        }
        if let Some(round) = rounds.get_mut(*k) {
            round.push(batch);
        }
        *k += 1;
    }
    rounds
}

fn encode(shared: &Shared, batch: &mut SealedBatch) -> Result<()> {
    let Some(builder) = batch.builder.take() else { return Ok(()) };
    let idempotent = shared.config.idempotent;
    let (producer_id, producer_epoch) = shared.ids();
    let mut header = BatchHeader {
        producer_id,
        producer_epoch,
        base_sequence: if idempotent { batch.sequence } else { -1 },
        ..BatchHeader::with_compression(shared.config.compression)
    };
    if shared.config.transactional_id.is_some() {
        header.attributes |= ATTR_TRANSACTIONAL;
    }
    let payload = builder.finish_bytes(&header).map_err(|source| Error::Encode {
        broker: "(producer)".into(),
        api: "Produce",
        version: -1,
        source,
    })?;
    batch.payload = Some(payload);
    Ok(())
}

/// The last Produce version that names topics; v13 (KIP-516) names them by topic id.
const PRODUCE_BY_NAME_MAX_VERSION: i16 = 12;

/// The last Produce version a transaction of the transaction protocol v1 may use: Kafka takes
/// Produce v12+ inside a transaction for the protocol v2 (KIP-890 part 2), in which a partition
/// joins the transaction with its first produce. This producer speaks v1 (AddPartitionsToTxn,
/// EndTxn at most v4; see `txn.rs`).
const PRODUCE_TXN_V1_MAX_VERSION: i16 = 11;

/// How a Produce request names its topics, and at which version it is sent: by id at the
/// newest version both sides speak where that is v13+ and the metadata gives every topic's id,
/// else by name at v12 at most (v11 at most for a transactional producer).
#[derive(Debug, Clone)]
struct ProduceNaming {
    version: i16,
    /// Topic ids by name; empty when topics are named by name.
    ids: HashMap<String, Uuid>,
}

impl ProduceNaming {
    /// The naming for a request to `connection`'s broker holding `topics`, with the ids
    /// `metadata` knows.
    fn new<'a>(
        connection: &Connection,
        metadata: &ClusterMetadata,
        topics: impl IntoIterator<Item = &'a str>,
        transactional: bool,
    ) -> Result<Self> {
        let newest = connection.version_for::<ProduceRequest>(None)?;
        let naming = Self::choose(newest, metadata, topics, transactional);
        // A lower version than the newest must still be one the broker takes.
        connection.version_for::<ProduceRequest>(Some(naming.version))?;
        Ok(naming)
    }

    /// The naming when `newest` is the newest version both sides speak.
    fn choose<'a>(
        newest: i16,
        metadata: &ClusterMetadata,
        topics: impl IntoIterator<Item = &'a str>,
        transactional: bool,
    ) -> Self {
        let by_name = Self { version: newest.min(PRODUCE_BY_NAME_MAX_VERSION), ids: HashMap::new() };
        if transactional {
            return Self { version: newest.min(PRODUCE_TXN_V1_MAX_VERSION), ..by_name };
        }
        if newest <= PRODUCE_BY_NAME_MAX_VERSION {
            return by_name;
        }
        match metadata.topic_ids(topics) {
            Some(ids) => Self { version: newest, ids },
            None => by_name,
        }
    }

    fn by_id(&self) -> bool {
        self.version > PRODUCE_BY_NAME_MAX_VERSION
    }

    /// `topic`'s id, zero when topics are named by name.
    fn topic_id(&self, topic: &str) -> Uuid {
        self.ids.get(topic).copied().unwrap_or_default()
    }

    /// Whether `answer` is the broker's answer for `topic`.
    fn answers(&self, answer: &TopicProduceResponse, topic: &str) -> bool {
        if self.by_id() {
            self.ids.get(topic) == Some(&answer.topic_id)
        } else {
            answer.name == topic
        }
    }
}

fn produce_request(config: &ProducerConfig, naming: &ProduceNaming, batches: &[SealedBatch]) -> ProduceRequest {
    let mut topics: HashMap<&str, Vec<PartitionProduceData>> = HashMap::new();
    for batch in batches {
        let data =
            PartitionProduceData { index: batch.partition.1, records: batch.payload.clone(), ..Default::default() };
        topics.entry(batch.partition.0.as_str()).or_default().push(data);
    }
    ProduceRequest {
        // Brokers tie a transaction's batches to it by this id (and authorize by it).
        transactional_id: config.transactional_id.clone(),
        acks: config.acks.wire(),
        timeout_ms: i32::try_from(config.delivery_timeout.min(Duration::from_secs(30)).as_millis()).unwrap_or(i32::MAX),
        topic_data: topics
            .into_iter()
            .map(|(name, partition_data)| TopicProduceData {
                // v13 carries only the id, v12 and below only the name.
                name: name.to_owned(),
                topic_id: naming.topic_id(name),
                partition_data,
                ..Default::default()
            })
            .collect(),
        ..ProduceRequest::default()
    }
}

/// Enqueues one request on `connection` and completes its batches from the answer on a
/// separate task (or at once for acks=0, which gets no answer).
async fn send_round(shared: &Arc<Shared>, connection: &Arc<Connection>, batches: Vec<SealedBatch>) {
    let topics = batches.iter().map(|b| b.partition.0.as_str());
    let transactional = shared.config.transactional_id.is_some();
    let naming = match ProduceNaming::new(connection, &shared.client.metadata(), topics, transactional) {
        Ok(naming) => naming,
        Err(e) => return fail_all(shared, batches, &e),
    };
    let request = produce_request(&shared.config, &naming, &batches);
    let version = naming.version;
    if shared.config.acks == Acks::None {
        match connection.send_without_response(&request, version).await {
            Ok(()) => batches.into_iter().for_each(|batch| finish(shared, batch, Ok(-1))),
            Err(e) => fail_all(shared, batches, &e),
        }
        return;
    }
    match connection.enqueue(&request, version).await {
        Ok(in_flight) => {
            let shared = Arc::clone(shared);
            let connection = Arc::clone(connection);
            tokio::spawn(async move {
                match in_flight.response().await {
                    Ok(response) => {
                        connection.throttle(response.throttle_time_ms);
                        handle_response(&shared, connection.broker(), &naming, batches, &response);
                    }
                    Err(e) => fail_all(&shared, batches, &e),
                }
            });
        }
        Err(e) => fail_all(shared, batches, &e),
    }
}

/// Retries or fails every batch of a request that got no answer.
fn fail_all(shared: &Arc<Shared>, batches: Vec<SealedBatch>, error: &Error) {
    for batch in batches {
        retry_or_fail(shared, batch, error.clone());
    }
}

fn handle_response(
    shared: &Arc<Shared>,
    broker: &str,
    naming: &ProduceNaming,
    batches: Vec<SealedBatch>,
    response: &ProduceResponse,
) {
    for batch in batches {
        let (topic, partition) = &batch.partition;
        let answer = response
            .responses
            .iter()
            .filter(|t| naming.answers(t, topic))
            .flat_map(|t| t.partition_responses.iter())
            .find(|p| p.index == *partition);
        let Some(answer) = answer else {
            let code = ErrorCode::UnknownTopicOrPartition;
            retry_or_fail(shared, batch, Error::Broker { broker: broker.to_owned(), api: "Produce", code });
            continue;
        };
        match ErrorCode::from_code(answer.error_code) {
            ErrorCode::None => finish(shared, batch, Ok(answer.base_offset)),
            // The broker had already written this batch (a resend after a lost answer).
            ErrorCode::DuplicateSequenceNumber => finish(shared, batch, Ok(-1)),
            // Out of order although every earlier batch of the partition was acknowledged: the
            // broker and the producer disagree on the sequence, and no resend can mend that. The
            // producer starts over with a new id (KIP-360) and the batch is sent again under it.
            ErrorCode::OutOfOrderSequenceNumber
                if shared.config.idempotent
                    && shared.config.transactional_id.is_none()
                    && shared.state().queue(topic, *partition).acked_sequence == batch.sequence =>
            {
                shared.state().reset_producer = true;
                let code = ErrorCode::OutOfOrderSequenceNumber;
                retry_or_fail(shared, batch, Error::Broker { broker: broker.to_owned(), api: "Produce", code });
            }
            // The broker has no state for this producer: it wrote nothing of this batch. An
            // idempotent producer starts over with a new id; a transaction cannot go on.
            ErrorCode::UnknownProducerId if shared.config.transactional_id.is_none() => {
                shared.state().reset_producer = true;
                let error =
                    Error::Broker { broker: broker.to_owned(), api: "Produce", code: ErrorCode::UnknownProducerId };
                retry_or_fail(shared, batch, error);
            }
            // NOT_LEADER_OR_FOLLOWER, UNKNOWN_TOPIC_ID (v13: the broker does not know the id
            // the metadata gave, the topic was deleted or made again under the same name) and
            // the like mark the metadata out of date in `retry_or_fail`: the batch is retried
            // with the leader and id fresh metadata names.
            code => retry_or_fail(shared, batch, Error::Broker { broker: broker.to_owned(), api: "Produce", code }),
        }
    }
}

/// Whether a failed batch should be sent again.
fn should_retry(config: &ProducerConfig, error: &Error) -> bool {
    // With idempotence, OUT_OF_ORDER_SEQUENCE_NUMBER means an earlier batch of the partition
    // failed and is being resent; this one follows it. UNKNOWN_PRODUCER_ID makes an idempotent
    // producer reset itself and resend.
    let reset = config.idempotent && config.transactional_id.is_none();
    error.is_retriable()
        || match error {
            Error::Broker { code: ErrorCode::OutOfOrderSequenceNumber, .. } => true,
            Error::Broker { code: ErrorCode::UnknownProducerId, .. } => reset,
            _ => false,
        }
}

fn retry_or_fail(shared: &Arc<Shared>, batch: SealedBatch, error: Error) {
    // A leader that moved or cannot be reached: the next send looks it up again.
    shared.client.note_error(&error);
    let now = Instant::now();
    let (topic, partition) = (&batch.partition.0, batch.partition.1);
    if !should_retry(&shared.config, &error) {
        tracing::warn!(topic = %topic, partition, error = %error, "batch failed");
        return finish(shared, batch, Err(error));
    }
    if now >= batch.deadline {
        tracing::warn!(topic = %topic, partition, error = %error, "batch failed: out of delivery time");
        let (topic, partition) = batch.partition.clone();
        let timeout = shared.config.delivery_timeout;
        return finish(
            shared,
            batch,
            Err(Error::DeliveryTimeout { topic, partition, timeout, last_error: error.to_string() }),
        );
    }
    tracing::info!(topic = %topic, partition, error = %error, "batch sent again");
    requeue(shared, batch, error);
}

/// Puts a batch that will be sent again back into its partition's queue, in sequence order.
fn requeue(shared: &Arc<Shared>, mut batch: SealedBatch, error: Error) {
    batch.not_before = Instant::now() + shared.config.retry_backoff;
    batch.last_error = Some(error);
    let mut state = shared.state();
    let queue = state.queue(&batch.partition.0, batch.partition.1);
    queue.in_flight.remove(&batch.ordinal);
    // Back in seal order, ahead of anything sealed after it.
    let position = queue.ready.iter().position(|b| b.ordinal > batch.ordinal).unwrap_or(queue.ready.len());
    queue.ready.insert(position, batch);
    drop(state);
    shared.wake.notify_one();
}

/// Completes a batch's records with their offsets (or the error) and frees its in-flight slot.
fn finish(shared: &Arc<Shared>, batch: SealedBatch, outcome: Result<i64>) {
    let (topic, partition) = batch.partition.clone();
    let following = batch.sequence.saturating_add(i32::try_from(batch.completion.records).unwrap_or(i32::MAX));
    let ordinal = batch.ordinal;
    complete(shared, batch, &outcome);
    let mut state = shared.state();
    if let Some(queue) = state.queues.get_mut(&topic).and_then(|q| q.get_mut(&partition)) {
        queue.in_flight.remove(&ordinal);
        if outcome.is_ok() {
            queue.acked_sequence = queue.acked_sequence.max(following);
        }
    }
    if let Err(e) = outcome {
        if shared.config.transactional_id.is_some() && state.transaction_failure.is_none() {
            state.transaction_failure = Some(e);
        } else if shared.config.idempotent && shared.config.transactional_id.is_none() {
            // A batch given up leaves a gap in the partition's sequence that the broker would
            // answer with OUT_OF_ORDER_SEQUENCE_NUMBER for every later batch: as the Java
            // producer does (KIP-360), the producer starts over with a new id and renumbers
            // what it has not delivered.
            state.reset_producer = true;
        }
    }
    drop(state);
    shared.wake.notify_one();
}

/// Resolves the batch's records' futures with their offsets (or the error) and releases their
/// buffer memory; a failure is kept for the next `flush`.
fn complete(shared: &Shared, batch: SealedBatch, outcome: &Result<i64>) {
    if let Err(error) = outcome {
        let records = batch.completion.records as u64;
        let mut state = shared.state();
        match &mut state.undelivered {
            Some((undelivered, _)) => *undelivered += records,
            None => state.undelivered = Some((records, error.clone())),
        }
    }
    batch.completion.outcome.complete(outcome.clone());
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use sluice_protocol::messages::produce_response::PartitionProduceResponse;
    use sluice_protocol::messages::{decode_exact, encode_to_bytes};

    use super::*;
    use crate::client::TopicMetadata;

    const CLICKS: Uuid = Uuid([1; 16]);
    const ORDERS: Uuid = Uuid([2; 16]);

    /// Metadata naming `topics` with these ids (zero: the broker gave none).
    fn metadata(topics: &[(&str, Uuid)]) -> ClusterMetadata {
        let topic = |id| TopicMetadata { topic_id: id, error: ErrorCode::None, is_internal: false, partitions: vec![] };
        let topics: BTreeMap<String, TopicMetadata> =
            topics.iter().map(|(name, id)| ((*name).to_owned(), topic(*id))).collect();
        ClusterMetadata { topics, ..ClusterMetadata::default() }
    }

    fn batch(topic: &str, partition: i32) -> SealedBatch {
        let memory = Arc::new(Semaphore::new(0));
        SealedBatch {
            partition: (topic.to_owned(), partition),
            builder: None,
            completion: Completion::new(topic, partition, &memory),
            sequence: 0,
            ordinal: 0,
            payload: Some(Bytes::from_static(b"records")),
            deadline: Instant::now(),
            not_before: Instant::now(),
            last_error: None,
        }
    }

    #[test]
    fn topics_are_named_by_id_only_where_the_broker_and_the_metadata_allow_it() {
        let both = metadata(&[("clicks", CLICKS), ("orders", ORDERS)]);
        let naming = ProduceNaming::choose(13, &both, ["clicks", "orders"], false);
        assert_eq!((naming.version, naming.topic_id("orders")), (13, ORDERS));
        // One topic without an id: the whole request names topics, at v12.
        let one = metadata(&[("clicks", CLICKS), ("orders", Uuid::ZERO)]);
        let naming = ProduceNaming::choose(13, &one, ["clicks", "orders"], false);
        assert_eq!((naming.version, naming.topic_id("clicks")), (12, Uuid::ZERO));
        let naming = ProduceNaming::choose(13, &both, ["clicks", "unknown"], false);
        assert_eq!(naming.version, 12);
        // A broker without v13 (Tansu 0.6 stops at v11).
        let naming = ProduceNaming::choose(11, &both, ["clicks"], false);
        assert_eq!((naming.version, naming.topic_id("clicks")), (11, Uuid::ZERO));
        // A transaction of the protocol v1 never goes past v11, ids or not.
        let naming = ProduceNaming::choose(13, &both, ["clicks"], true);
        assert_eq!((naming.version, naming.topic_id("clicks")), (11, Uuid::ZERO));
        let naming = ProduceNaming::choose(9, &both, ["clicks"], true);
        assert_eq!(naming.version, 9);
    }

    #[test]
    fn a_v13_request_carries_topic_ids_and_its_answers_map_back_by_id() {
        let both = metadata(&[("clicks", CLICKS), ("orders", ORDERS)]);
        let naming = ProduceNaming::choose(13, &both, ["clicks", "orders"], false);
        let request = produce_request(&ProducerConfig::default(), &naming, &[batch("clicks", 0), batch("orders", 1)]);
        let sent: ProduceRequest = decode_exact(encode_to_bytes(&request, 13).unwrap(), 13).unwrap();
        let mut ids: Vec<(Uuid, &str)> = sent.topic_data.iter().map(|t| (t.topic_id, t.name.as_str())).collect();
        ids.sort_by_key(|(id, _)| id.0);
        assert_eq!(ids, [(CLICKS, ""), (ORDERS, "")], "v13 carries ids and no names");

        let answer = |name: &str, topic_id| TopicProduceResponse {
            name: name.to_owned(),
            topic_id,
            partition_responses: vec![PartitionProduceResponse::default()],
            ..TopicProduceResponse::default()
        };
        let response = ProduceResponse { responses: vec![answer("", ORDERS)], ..ProduceResponse::default() };
        let received: ProduceResponse = decode_exact(encode_to_bytes(&response, 13).unwrap(), 13).unwrap();
        assert!(naming.answers(&received.responses[0], "orders"));
        assert!(!naming.answers(&received.responses[0], "clicks"));

        // By name (v12), the answer's name decides and ids are not sent.
        let naming = ProduceNaming::choose(12, &both, ["clicks"], false);
        let request = produce_request(&ProducerConfig::default(), &naming, &[batch("clicks", 0)]);
        assert_eq!((request.topic_data[0].name.as_str(), request.topic_data[0].topic_id), ("clicks", Uuid::ZERO));
        assert!(naming.answers(&answer("clicks", Uuid::ZERO), "clicks"));
        assert!(!naming.answers(&answer("orders", CLICKS), "clicks"));
    }

    #[test]
    fn a_partition_sends_within_a_window_of_five_and_resends_only_in_order() {
        let fresh = |ordinal| SealedBatch { ordinal, payload: None, ..batch("clicks", 0) };
        let resent = |ordinal| SealedBatch { ordinal, ..batch("clicks", 0) };
        let queue = |in_flight: &[u64]| PartitionQueue {
            in_flight: in_flight.iter().copied().collect(),
            ..PartitionQueue::default()
        };

        assert!(may_send(&queue(&[]), &fresh(7), 5));
        assert!(may_send(&queue(&[3, 4, 5, 6]), &fresh(7), 5));
        // Batch 3's answer is still out: batch 8 would be the sixth after it.
        assert!(!may_send(&queue(&[3, 7]), &fresh(8), 5), "acknowledged 4..6 do not widen the window");
        // Batch 5 comes back to be resent while 4, sent before it, is still out: it waits.
        assert!(!may_send(&queue(&[4, 6]), &resent(5), 5));
        assert!(!may_send(&queue(&[2]), &resent(5), 5));
        // Batches sent after it do not hold it back: they reach the broker first and are
        // refused as out of order, or were in order because it had been written.
        assert!(may_send(&queue(&[6, 7]), &resent(5), 5));
        assert!(may_send(&queue(&[]), &resent(5), 5));
    }
}
