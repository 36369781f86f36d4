//! Reading a batch's ranges: read tasks in parallel ([`ReadContext`]), on the scheduler's own
//! connections to each partition's leader ([`ReadPool`]), each retried through transient faults
//! and stopped once a piece's worth of bytes is read; running in the background ([`Reading`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sluice_client::{Client, Connection, ConnectionConfig, FetchOptions};

use super::{Scheduler, SchedulerError};
use crate::clock::Clock;
use crate::fetch::{DataLoss, FetchRangeError, RangeReader, ReadBudget};
use crate::plan::{split_ranges, OffsetRange};

/// A read task's reader and the task's place in its batch.
pub(super) type TaskReader = (usize, RangeReader);

/// Read tasks running in the background; aborted if dropped unfinished.
#[derive(Debug)]
pub(super) struct Reading {
    handle: Option<tokio::task::JoinHandle<Result<Vec<TaskReader>, SchedulerError>>>,
    pub(super) batch_id: u64,
}

impl Reading {
    /// The readers with their task's index, each done or stopped by the read budget.
    pub(super) async fn finish(&mut self) -> Result<Vec<TaskReader>, SchedulerError> {
        let batch_id = self.batch_id;
        match self.handle.take() {
            Some(handle) => handle.await.unwrap_or_else(|e| {
                Err(SchedulerError::Processing { batch_id, source: format!("the read tasks stopped: {e}").into() })
            }),
            None => Err(SchedulerError::Processing { batch_id, source: "the read tasks were already taken".into() }),
        }
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        if let Some(handle) = &self.handle {
            handle.abort();
        }
    }
}

/// The scheduler's own read connections, per broker and slot (reads long enough to hold up a
/// shared connection, and a broker serves one connection's requests in order). Shared with the
/// read tasks, which look up their partition's leader each time they (re)try.
#[derive(Debug)]
pub(super) struct ReadPool {
    config: ConnectionConfig,
    connections: std::sync::Mutex<BTreeMap<(String, usize), Arc<Connection>>>,
}

impl ReadPool {
    pub(super) fn new(config: ConnectionConfig) -> Self {
        Self { config, connections: std::sync::Mutex::default() }
    }

    fn connections(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, usize), Arc<Connection>>> {
        self.connections.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Connection number `slot` to the current leader of `topic`/`partition`, made if needed.
    async fn to_leader(
        &self,
        client: &Client,
        topic: &str,
        partition: i32,
        slot: usize,
    ) -> Result<Arc<Connection>, sluice_client::Error> {
        let broker = client.leader_address(topic, partition).await?;
        let key = (broker, slot);
        if let Some(connection) = self.connections().get(&key).filter(|c| !c.is_closed()) {
            return Ok(Arc::clone(connection));
        }
        let connection =
            Connection::connect(&key.0, self.config.clone()).await.inspect_err(|e| client.note_error(e))?;
        let connection = Arc::new(connection);
        let mut connections = self.connections();
        let pooled = connections.entry(key).or_insert_with(|| Arc::clone(&connection));
        if pooled.is_closed() {
            *pooled = Arc::clone(&connection);
        }
        Ok(Arc::clone(pooled))
    }
}

/// The first wait before a transient fault is retried; doubled per retry up to
/// [`MAX_FAULT_BACKOFF`].
pub(super) const FIRST_FAULT_BACKOFF: Duration = Duration::from_millis(100);
pub(super) const MAX_FAULT_BACKOFF: Duration = Duration::from_secs(2);

/// How read tasks run: what the scheduler gives each batch, which reads its later pieces with it.
#[derive(Debug, Clone)]
pub(super) struct ReadContext {
    client: Client,
    pool: Arc<ReadPool>,
    options: FetchOptions,
    attempts: u32,
    fault_timeout: Duration,
    max_concurrent_tasks: usize,
    slots: usize,
    /// Record bytes per piece (0: no limit).
    piece_bytes: usize,
}

impl ReadContext {
    /// Starts `readers` in the background, each as a read task, until their ranges are done or
    /// they brought a piece's worth of bytes between them.
    pub(super) fn start(&self, batch_id: u64, readers: Vec<TaskReader>) -> Reading {
        let limit = Arc::new(tokio::sync::Semaphore::new(self.max_concurrent_tasks.max(1)));
        let sharers = readers.len().min(self.max_concurrent_tasks.max(1));
        let budget = (self.piece_bytes > 0).then(|| Arc::new(ReadBudget::new(self.piece_bytes, sharers)));
        let mut running = tokio::task::JoinSet::new();
        for (index, mut reader) in readers {
            reader.set_budget(budget.clone());
            let (context, limit) = (self.clone(), Arc::clone(&limit));
            running.spawn(async move {
                let _slot = limit.acquire_owned().await;
                context.read_task(index % context.slots.max(1), reader).await.map(|reader| (index, reader))
            });
        }
        let collect = async move {
            let mut read = Vec::new();
            while let Some(joined) = running.join_next().await {
                match joined {
                    Ok(Ok(done)) => read.push(done),
                    Ok(Err((attempts, source))) => {
                        return Err(SchedulerError::Task { batch_id, attempts, source: Box::new(source) })
                    }
                    Err(e) => {
                        let reason = format!("a read task panicked: {e}");
                        return Err(SchedulerError::Processing { batch_id, source: reason.into() });
                    }
                }
            }
            read.sort_by_key(|(index, _)| *index);
            Ok(read)
        };
        Reading { handle: Some(tokio::spawn(collect)), batch_id }
    }

    /// Reads one task's range (or its share of a piece), retrying transient faults for
    /// `fault_timeout` (from the leader fresh metadata names, going on from where the read
    /// stopped) and other failures up to `attempts` times in all.
    async fn read_task(&self, slot: usize, reader: RangeReader) -> Result<RangeReader, (u32, FetchRangeError)> {
        let attempts = self.attempts.max(1);
        read_task(&self.client, &self.pool, slot, reader, &self.options, attempts, self.fault_timeout).await
    }
}

/// Reads one task's range, retrying transient faults for `fault_timeout` (from the leader
/// fresh metadata names, going on from where the read stopped) and other failures up to
/// `attempts` times in all.
async fn read_task(
    client: &Client,
    pool: &ReadPool,
    slot: usize,
    mut reader: RangeReader,
    options: &FetchOptions,
    attempts: u32,
    fault_timeout: Duration,
) -> Result<RangeReader, (u32, FetchRangeError)> {
    let deadline = std::time::Instant::now() + fault_timeout;
    let mut backoff = FIRST_FAULT_BACKOFF;
    let mut attempt = 0;
    let (topic, partition) = (reader.range().topic.clone(), reader.range().partition);
    loop {
        attempt += 1;
        let read = match pool.to_leader(client, &topic, partition, slot).await {
            Ok(connection) => reader.read(client, Some(&connection), options).await,
            Err(e) => Err(reader.client_error(e)),
        };
        let error = match read {
            Ok(()) => return Ok(reader),
            Err(error) => error,
        };
        let retry =
            if error.is_transient() { std::time::Instant::now() + backoff < deadline } else { attempt < attempts };
        if !retry {
            return Err((attempt, error));
        }
        if let FetchRangeError::Client { source, .. } = &error {
            client.note_error(source);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_FAULT_BACKOFF);
    }
}

impl<C: Clock> Scheduler<C> {
    /// How this scheduler's read tasks run.
    pub(super) fn read_context(&self) -> ReadContext {
        ReadContext {
            client: self.client.clone(),
            pool: Arc::clone(&self.read_connections),
            options: self.config.fetch,
            attempts: self.config.task_attempts,
            fault_timeout: self.config.fault_timeout,
            max_concurrent_tasks: self.config.max_concurrent_tasks,
            slots: self.config.read_connections_per_broker,
            piece_bytes: self.config.max_batch_bytes,
        }
    }

    /// Starts the read tasks of a batch's first piece in the background.
    pub(super) fn start_read(&self, batch_id: u64, ranges: &[OffsetRange]) -> Reading {
        let on_loss = if self.config.fail_on_data_loss { DataLoss::Fail } else { DataLoss::Skip };
        let internal = self.config.scale.as_ref().map(|s| s.internal_topics.as_slice()).unwrap_or_default();
        let readers = split_ranges(ranges, self.config.min_partitions)
            .into_iter()
            .map(|task| {
                // An internal topic's records before its log start were purged by an owner that
                // had consumed them: this process no longer owns the partition (its batch will
                // not commit), and nothing was lost.
                let on_loss = if internal.contains(&task.topic) { DataLoss::Skip } else { on_loss };
                RangeReader::new(task, on_loss, self.bytes_per_offset)
            })
            .enumerate()
            .collect();
        self.read_context().start(batch_id, readers)
    }
}
