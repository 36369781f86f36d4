//! Writing a stream to a Kafka topic with the sluice-client producer.
//!
//! Every batch's records are acknowledged before the batch commits, so none is lost. Whether a
//! batch re-run after a crash writes its records again depends on the mode:
//!
//! - **Transactional** ([`KafkaSink::transactional`]): a batch's records go in one transaction,
//!   which also commits a marker: the batch id + 1 as the offset of partition 0 of the output
//!   topic in the group `sluice-sink-<sink id>-<checkpoint id>` (the transactional id is
//!   `sluice-sink-<sink id>`). A re-run batch whose marker says it is the last
//!   batch written was written in full by its first run and is not written again (the marker
//!   is read with `require_stable`, so a transaction still being decided is waited for); one
//!   whose transaction did not commit was aborted when the new producer started (it fences the
//!   old one). `read_committed` consumers see each record once. Needs a broker with
//!   transactions; the records of aborted transactions are hidden from consumers only by brokers
//!   that list them in Fetch (Kafka does; Tansu 0.6 does not, see docs/brokers.md).
//! - **Idempotent** (the default): the producer is idempotent, so its retries add nothing, and
//!   the marker is committed after the batch's records are acknowledged. At least once: a batch
//!   that fails after some of its records were acknowledged (a crash, a delivery error, a failed
//!   marker commit) is written whole again by its re-run.
//!
//! - **Scale-out** (a job run with `SchedulerConfig::scale`): whatever the mode, a batch's records
//!   go into the batch's own transaction ([`BatchInfo::transaction`]), which commits them
//!   together with the batch's source offsets under the job's group: the sink has no producer,
//!   transaction or marker of its own, so its own client and producer settings are not used (the
//!   records go to the source's cluster, with the scheduler's producer). `read_committed`
//!   consumers see each record once.
//!
//! A batch larger than the job's memory budget is written piece by piece as it is computed (in
//! one transaction, or with one marker after its last piece), so its records are never all
//! held at once.
//!
//! The markers of a checkpoint are its own: its id, random and made with the checkpoint, names
//! their group, so a job started afresh on a new (or reset) checkpoint, whose batch ids start
//! again at 0, never finds an earlier checkpoint's marker and takes its new batches for written.
//! The transactional id stays the sink's, so a new run still fences (and aborts the open
//! transaction of) whatever ran before it, on any checkpoint.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sluice_client::{Client, ClientConfig, ConsumerGroupMetadata, Producer, ProducerConfig, ProducerRecord};

use crate::graph::BatchInfo;
use crate::sink::Sink;
use crate::BoxError;

/// How long a sink tries to connect through connection problems before its batch fails.
const CONNECT_RETRY: std::time::Duration = std::time::Duration::from_secs(30);

type ToRecord<T> = Box<dyn Fn(&T) -> Result<ProducerRecord, BoxError> + Send + Sync>;

/// Why a [`KafkaSink`] failed a batch (the batch fails, and is re-run).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaSinkError {
    /// A call to the cluster failed.
    #[error("Kafka sink {sink}, batch {batch_id}: {what}: {source}")]
    Client {
        /// The sink's id.
        sink: String,
        /// The batch.
        batch_id: u64,
        /// What the sink was doing.
        what: &'static str,
        /// The client's error.
        source: sluice_client::Error,
    },
    /// The sink's function failed to make an item's record.
    #[error("Kafka sink {sink}, batch {batch_id}: making an item's record: {source}")]
    Record {
        /// The sink's id.
        sink: String,
        /// The batch.
        batch_id: u64,
        /// The function's error.
        source: BoxError,
    },
    /// A piece of a batch came without the pieces before it.
    #[error("Kafka sink {sink}: piece {piece} of batch {batch_id} came without the pieces before it")]
    PieceOutOfOrder {
        /// The sink's id.
        sink: String,
        /// The batch.
        batch_id: u64,
        /// The piece.
        piece: usize,
    },
}

/// Counters of a Kafka sink (this process's).
#[derive(Debug, Clone, Default)]
pub struct KafkaSinkCounters {
    /// Records written (acknowledged, or committed in a transaction; in scale-out mode, sent in
    /// the batch's transaction).
    pub written: Arc<AtomicU64>,
    /// Re-run batches found already written and not written again.
    pub batches_skipped: Arc<AtomicU64>,
}

/// A sink writing each item as a record of a Kafka topic; see the module docs for what it
/// guarantees in each mode.
pub struct KafkaSink<T> {
    client_config: ClientConfig,
    producer_config: ProducerConfig,
    topic: String,
    sink_id: String,
    transactional: bool,
    to_record: ToRecord<T>,
    started: Option<(Client, Producer)>,
    /// The batch being written, piece by piece.
    writing: Option<Writing>,
    counters: KafkaSinkCounters,
}

/// A batch part way through being written.
#[derive(Debug, Clone, Copy)]
struct Writing {
    batch_id: u64,
    /// Whether the batch was found already written (decided at its first item).
    skip: Option<bool>,
    /// Whether its transaction was begun.
    in_transaction: bool,
    /// Records sent so far.
    sent: u64,
}

impl<T> std::fmt::Debug for KafkaSink<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("topic", &self.topic)
            .field("sink_id", &self.sink_id)
            .field("transactional", &self.transactional)
            .finish_non_exhaustive()
    }
}

impl<T> KafkaSink<T> {
    /// Writes to `topic` through the brokers of `client`; `to_record` makes an item's record
    /// (its topic is set to `topic`). `sink_id` names the sink's marker group and transactional
    /// id: unique per job and output, and the same on every run of the job.
    pub fn new(
        client: ClientConfig,
        topic: impl Into<String>,
        sink_id: impl Into<String>,
        to_record: impl Fn(&T) -> Result<ProducerRecord, BoxError> + Send + Sync + 'static,
    ) -> Self {
        Self {
            client_config: client,
            producer_config: ProducerConfig::default(),
            topic: topic.into(),
            sink_id: sink_id.into(),
            transactional: false,
            to_record: Box::new(to_record),
            started: None,
            writing: None,
            counters: KafkaSinkCounters::default(),
        }
    }

    /// Items as JSON values, without keys.
    pub fn json(client: ClientConfig, topic: impl Into<String>, sink_id: impl Into<String>) -> Self
    where
        T: serde::Serialize,
    {
        let topic = topic.into();
        let record_topic = topic.clone();
        Self::new(client, topic, sink_id, move |item: &T| {
            let value = serde_json::to_vec(item).map_err(|e| format!("an item is not JSON: {e}"))?;
            Ok(ProducerRecord::new(record_topic.clone(), value))
        })
    }

    /// Writes each batch in a transaction, committed with its marker: exactly once for
    /// `read_committed` consumers.
    pub fn transactional(mut self) -> Self {
        self.transactional = true;
        self
    }

    /// The producer's settings (batching, compression, acks); idempotence is always on.
    pub fn producer_config(mut self, config: ProducerConfig) -> Self {
        self.producer_config = config;
        self
    }

    /// The sink's counters.
    pub fn counters(&self) -> KafkaSinkCounters {
        self.counters.clone()
    }

    /// The transactional id: the sink's, whatever the checkpoint.
    fn transactional_id(&self) -> String {
        format!("sluice-sink-{}", self.sink_id)
    }

    /// The group holding the markers of the checkpoint `checkpoint_id`.
    fn marker_group(&self, checkpoint_id: u64) -> String {
        format!("sluice-sink-{}-{checkpoint_id:016x}", self.sink_id)
    }

    async fn start(&mut self) -> Result<(Client, Producer), (&'static str, sluice_client::Error)> {
        // A connection cut while the sink first connects is tried again, for up to
        // `CONNECT_RETRY`, as the client's requests are.
        let deadline = std::time::Instant::now() + CONNECT_RETRY;
        let mut backoff = std::time::Duration::from_millis(100);
        let client = loop {
            match Client::connect(self.client_config.clone()).await {
                Ok(client) => break client,
                Err(error) if error.is_retriable() && std::time::Instant::now() + backoff < deadline => {
                    tracing::warn!(sink = %self.sink_id, %error, retry_in = ?backoff, "connecting failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(2));
                }
                Err(error) => return Err(("connecting", error)),
            }
        };
        let mut config = self.producer_config.clone();
        config.idempotent = true;
        if self.transactional {
            config.transactional_id = Some(self.transactional_id());
        }
        // A transactional producer's start aborts a transaction its predecessor left open.
        let producer = Producer::new(client.clone(), config).await.map_err(|e| ("starting the producer", e))?;
        Ok((client, producer))
    }

    /// The batch after the last one of the checkpoint written whole, as its marker says (0 if
    /// none).
    async fn written_until(&self, client: &Client, checkpoint_id: u64) -> Result<u64, sluice_client::Error> {
        let marker = (self.topic.clone(), 0);
        let offsets =
            client.stable_group_offsets(&self.marker_group(checkpoint_id), std::slice::from_ref(&marker)).await?;
        Ok(offsets.get(&marker).copied().flatten().map_or(0, |offset| u64::try_from(offset).unwrap_or(0)))
    }

    /// Writes one piece of a batch (the whole batch when it comes in one).
    async fn write_piece(&mut self, batch: &BatchInfo, items: &[T]) -> Result<(), KafkaSinkError> {
        let (sink, batch_id) = (self.sink_id.clone(), batch.batch_id);
        let failed = |what: &'static str, source: sluice_client::Error| KafkaSinkError::Client {
            sink: sink.clone(),
            batch_id,
            what,
            source,
        };
        let mut writing = match self.writing.take() {
            Some(writing) if writing.batch_id == batch.batch_id && batch.piece > 0 => writing,
            Some(_) | None if batch.piece > 0 => {
                return Err(KafkaSinkError::PieceOutOfOrder { sink, batch_id, piece: batch.piece });
            }
            _ => Writing { batch_id: batch.batch_id, skip: None, in_transaction: false, sent: 0 },
        };
        // Kept from here on, so that a failure aborts the transaction it holds.
        self.writing = Some(writing);
        if writing.skip.is_none() && !items.is_empty() {
            let started = match self.started.take() {
                Some(started) => started,
                None => self.start().await.map_err(|(what, e)| failed(what, e))?,
            };
            // The batch re-run is the one after the last committed, so its first run wrote it
            // whole exactly when the marker is its own.
            let written_until =
                if batch.rerun { self.written_until(&started.0, batch.checkpoint_id).await } else { Ok(0) };
            self.started = Some(started);
            let written_until = written_until.map_err(|e| failed("reading its marker", e))?;
            writing.skip = Some(batch.rerun && written_until == batch.batch_id + 1);
            self.writing = Some(writing);
        }
        let started = self.started.as_ref().filter(|_| writing.skip == Some(false));
        let Some((client, producer)) = started else {
            // Found written already, or nothing to write in the batch so far (the producer
            // starts at its first item).
            if batch.last_piece {
                self.writing = None;
                if writing.skip == Some(true) {
                    self.counters.batches_skipped.fetch_add(1, Ordering::Relaxed);
                }
            }
            return Ok(());
        };
        let records = items
            .iter()
            .map(|item| Ok(ProducerRecord { topic: self.topic.clone(), ..(self.to_record)(item)? }))
            .collect::<Result<Vec<_>, BoxError>>()
            .map_err(|source| KafkaSinkError::Record { sink: sink.clone(), batch_id, source })?;
        if self.transactional && !writing.in_transaction && !records.is_empty() {
            producer.begin_transaction().await.map_err(|e| failed("beginning the transaction", e))?;
            writing.in_transaction = true;
            self.writing = Some(writing);
        }
        let count = records.len() as u64;
        let deliveries = producer.send_all(records).await.map_err(|e| failed("sending", e))?;
        // In a transaction its commit waits for every send and fails if one did.
        if !self.transactional {
            for delivery in deliveries {
                delivery.await.map_err(|e| failed("delivering", e))?;
            }
        }
        writing.sent += count;
        self.writing = Some(writing);
        if !batch.last_piece {
            return Ok(());
        }
        if writing.sent > 0 {
            let marker = [(self.topic.clone(), 0, i64::try_from(batch.batch_id + 1).unwrap_or(i64::MAX))];
            if self.transactional {
                producer
                    .send_offsets_to_transaction(
                        &marker,
                        &ConsumerGroupMetadata::new(self.marker_group(batch.checkpoint_id)),
                    )
                    .await
                    .map_err(|e| failed("adding the marker to the transaction", e))?;
                producer.commit_transaction().await.map_err(|e| failed("committing the transaction", e))?;
            } else {
                client
                    .commit_group_offsets(&self.marker_group(batch.checkpoint_id), &marker)
                    .await
                    .map_err(|e| failed("committing the marker", e))?;
            }
            self.counters.written.fetch_add(writing.sent, Ordering::Relaxed);
        }
        self.writing = None;
        Ok(())
    }

    /// After a failed piece: aborts the batch's transaction if one was begun, and stops the
    /// producer so that the next batch starts afresh (a transactional producer's start aborts
    /// whatever this one left open).
    async fn reset(&mut self) {
        let writing = self.writing.take();
        if let Some((_, producer)) = self.started.take() {
            // The batch has failed already: these only tidy up, and the next producer's start
            // aborts whatever they leave (the failures are reported, not returned).
            if writing.is_some_and(|w| w.in_transaction) {
                if let Err(e) = producer.abort_transaction().await {
                    tracing::warn!(sink = %self.sink_id, error = %e, "aborting the failed batch's transaction failed (the next producer aborts it)");
                }
            }
            if let Err(e) = producer.close().await {
                tracing::warn!(sink = %self.sink_id, error = %e, "closing the failed batch's producer");
            }
        }
    }
}

impl<T> KafkaSink<T> {
    /// Scale-out mode: sends the records into the batch's transaction, which the scheduler
    /// commits with the batch's offsets.
    async fn write_in_batch_transaction(
        &self,
        batch: &BatchInfo,
        producer: &Producer,
        items: &[T],
    ) -> Result<(), KafkaSinkError> {
        let (sink, batch_id) = (self.sink_id.clone(), batch.batch_id);
        let records = items
            .iter()
            .map(|item| Ok(ProducerRecord { topic: self.topic.clone(), ..(self.to_record)(item)? }))
            .collect::<Result<Vec<_>, BoxError>>()
            .map_err(|source| KafkaSinkError::Record { sink: sink.clone(), batch_id, source })?;
        // Delivered (or failed, failing the commit) by the batch's transaction.
        let sent = producer.send_all(records).await;
        drop(sent.map_err(|source| KafkaSinkError::Client { sink, batch_id, what: "sending", source })?);
        self.counters.written.fetch_add(items.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

impl<T: Send + Sync> Sink<T> for KafkaSink<T> {
    async fn write(&mut self, batch: &BatchInfo, items: Vec<T>) -> Result<(), BoxError> {
        if let Some(producer) = &batch.transaction {
            return Ok(self.write_in_batch_transaction(batch, producer, &items).await?);
        }
        if batch.piece == 0 && self.writing.is_some() {
            // The batch before failed part way (in another output): start afresh.
            self.reset().await;
        }
        let result = self.write_piece(batch, &items).await;
        if result.is_err() {
            self.reset().await;
        }
        Ok(result?)
    }

    fn takes_pieces(&self) -> bool {
        true
    }
}
