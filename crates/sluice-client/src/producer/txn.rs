//! Transactions (KIP-98, KIP-447): the transaction coordinator is found by the transactional id;
//! InitProducerId there gets the producer id and a bumped epoch (fencing any older producer with
//! the same id); each partition joins the open transaction with AddPartitionsToTxn before its
//! first record is sent; consumed offsets join with AddOffsetsToTxn and TxnOffsetCommit; EndTxn
//! commits or aborts, and the coordinator writes the markers that make the records visible to
//! `read_committed` consumers, or hide them.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_protocol::error_code::ErrorCode;
use sluice_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use sluice_protocol::messages::txn_offset_commit_request::{
    TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
};
use sluice_protocol::messages::{
    AddOffsetsToTxnRequest, AddPartitionsToTxnRequest, EndTxnRequest, InitProducerIdRequest, Request,
    TxnOffsetCommitRequest,
};

use super::{Producer, Shared};
use crate::client::Client;
use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::group::{find_coordinator_of, ConsumerGroupMetadata};

/// AddPartitionsToTxn v4+ is the broker-to-broker batch form.
const ADD_PARTITIONS_CLIENT_MAX_VERSION: i16 = 3;
/// FindCoordinator's key type for transaction coordinators.
const KEY_TYPE_TRANSACTION: i8 = 1;

/// Where the producer's transactions stand.
#[derive(Debug)]
pub(super) struct Transaction {
    id: String,
    producer_id: i64,
    producer_epoch: i16,
    coordinator: Option<Arc<Connection>>,
    open: bool,
    /// Partitions already added to the open transaction, per topic (looked up without copying
    /// a record's topic name).
    partitions: HashMap<String, HashSet<i32>>,
    /// The group whose offsets the open transaction took in (AddOffsetsToTxn), once.
    offsets_group: Option<String>,
    /// How long a request to a coordinator is tried again while the coordinator moves, cannot
    /// be reached, or does not answer (its connection frozen): the producer's delivery timeout.
    retry_for: Duration,
    /// Held by a TxnOffsetCommit under way (taken with the transaction's lock, kept without
    /// it, so that sends go on meanwhile); the transaction's end waits for it.
    offsets_in_flight: Arc<tokio::sync::Mutex<()>>,
}

/// The last EndTxn version of the transaction protocol v1 (v5 bumps the epoch at every end).
const END_TXN_V1_MAX_VERSION: i16 = 4;
/// The last TxnOffsetCommit version of the transaction protocol v1: v5 is the same request for
/// the protocol v2 (KIP-890), and v6 names topics by id (KIP-1319).
const TXN_OFFSET_COMMIT_V1_MAX_VERSION: i16 = 4;

/// How long a request waits before it goes to a coordinator found again.
const COORDINATOR_MOVED_BACKOFF: Duration = Duration::from_millis(50);

/// Whether a coordinator's answer asks to try again (after finding it again where it moved).
fn retry_code(code: ErrorCode) -> Option<bool> {
    match code {
        ErrorCode::NotCoordinator | ErrorCode::CoordinatorNotAvailable => Some(true),
        ErrorCode::CoordinatorLoadInProgress | ErrorCode::ConcurrentTransactions => Some(false),
        _ => None,
    }
}

impl Transaction {
    /// Finds the coordinator of `id` and gets a producer id and epoch from it, for transactions
    /// of `timeout`; requests to coordinators are retried for `retry_for`.
    pub(super) async fn init(
        client: &Client,
        id: &str,
        timeout: Duration,
        retry_for: Duration,
    ) -> Result<((i64, i16), Self)> {
        let mut state = Self {
            id: id.to_owned(),
            producer_id: -1,
            producer_epoch: -1,
            coordinator: None,
            open: false,
            partitions: HashMap::new(),
            offsets_group: None,
            retry_for,
            offsets_in_flight: Arc::default(),
        };
        let request = InitProducerIdRequest {
            transactional_id: Some(id.to_owned()),
            transaction_timeout_ms: i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX),
            producer_id: -1,
            producer_epoch: -1,
            ..InitProducerIdRequest::default()
        };
        let response = state.call(client, &request, None, |r| r.error_code).await?;
        state.producer_id = response.producer_id;
        state.producer_epoch = response.producer_epoch;
        Ok(((response.producer_id, response.producer_epoch), state))
    }

    async fn coordinator(&mut self, client: &Client) -> Result<Arc<Connection>> {
        if let Some(connection) = self.coordinator.as_ref().filter(|c| !c.is_closed()) {
            return Ok(Arc::clone(connection));
        }
        let address = find_coordinator_of(client, &self.id, KEY_TYPE_TRANSACTION).await?;
        let connection = client.connection_to(&address).await?;
        self.coordinator = Some(Arc::clone(&connection));
        Ok(connection)
    }

    /// Sends `request` to the transaction coordinator (at the highest version both sides speak,
    /// at most `cap`), finding it again and retrying (for up to `retry_for`) while it moves,
    /// loads, cannot be reached, does not answer, or is finishing the previous transaction;
    /// `code` picks the error code that decides. Every request a transaction sends is safe to
    /// repeat: a partition or group added twice is added once, an EndTxn repeated after the
    /// transaction ended is answered as the first was.
    async fn call<R: Request>(
        &mut self,
        client: &Client,
        request: &R,
        cap: Option<i16>,
        code: impl Fn(&R::Response) -> i16,
    ) -> Result<R::Response> {
        let api = R::NAME.strip_suffix("Request").unwrap_or(R::NAME);
        let deadline = Instant::now() + self.retry_for;
        // A coordinator busy finishing the previous transaction (its markers are written after
        // EndTxn answered) is ready within milliseconds: asked again soon, then less often.
        let mut busy_backoff = Duration::from_millis(5);
        loop {
            // A coordinator that cannot be found or reached (its broker down, its partition
            // moving) is looked up again, like one that answers it is not the coordinator.
            let sent = match self.coordinator(client).await {
                Ok(coordinator) => match coordinator.version_for::<R>(cap) {
                    Ok(version) => coordinator.send_version(request, version).await.map(|r| (coordinator, r)),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            let error = match sent {
                Ok((coordinator, response)) => match ErrorCode::from_code(code(&response)) {
                    ErrorCode::None => return Ok(response),
                    code => Error::Broker { broker: coordinator.broker().to_owned(), api, code },
                },
                Err(e) => e,
            };
            let again = match &error {
                Error::Broker { code, .. } => retry_code(*code),
                other => other.is_retriable().then_some(true),
            };
            match again {
                Some(find_again) if Instant::now() < deadline => {
                    let backoff = if find_again {
                        self.coordinator = None;
                        client.note_error(&error);
                        COORDINATOR_MOVED_BACKOFF
                    } else {
                        let backoff = busy_backoff;
                        busy_backoff = (backoff * 2).min(COORDINATOR_MOVED_BACKOFF);
                        backoff
                    };
                    tokio::time::sleep(backoff).await;
                }
                _ => return Err(error),
            }
        }
    }

    fn require_open(&self, what: &str) -> Result<()> {
        if self.open {
            Ok(())
        } else {
            Err(Error::Transaction {
                transactional_id: self.id.clone(),
                reason: format!("{what} needs an open transaction (call begin_transaction first)"),
            })
        }
    }

    /// Adds these partitions to the open transaction, those not in it yet in one
    /// AddPartitionsToTxn request.
    pub(super) async fn add_partitions(&mut self, shared: &Shared, partitions: &[(&str, i32)]) -> Result<()> {
        self.require_open("send")?;
        let mut new: BTreeMap<&str, BTreeSet<i32>> = BTreeMap::new();
        for &(topic, partition) in partitions {
            if !self.partitions.get(topic).is_some_and(|added| added.contains(&partition)) {
                new.entry(topic).or_default().insert(partition);
            }
        }
        if new.is_empty() {
            return Ok(());
        }
        let request = AddPartitionsToTxnRequest {
            v3_and_below_transactional_id: self.id.clone(),
            v3_and_below_producer_id: self.producer_id,
            v3_and_below_producer_epoch: self.producer_epoch,
            v3_and_below_topics: new
                .iter()
                .map(|(topic, partitions)| AddPartitionsToTxnTopic {
                    name: (*topic).to_owned(),
                    partitions: partitions.iter().copied().collect(),
                    ..Default::default()
                })
                .collect(),
            ..AddPartitionsToTxnRequest::default()
        };
        // When one partition fails the others answer OPERATION_NOT_ATTEMPTED: the failure is
        // the one that says why.
        let first_error = |r: &sluice_protocol::messages::AddPartitionsToTxnResponse| {
            let codes = r.results_by_topic_v3_and_below.iter().flat_map(|t| t.results_by_partition.iter());
            let failed = codes.map(|p| p.partition_error_code).filter(|c| *c != 0);
            let not_attempted = ErrorCode::OperationNotAttempted.code();
            failed.clone().find(|c| *c != not_attempted).or_else(|| failed.clone().next()).unwrap_or(r.error_code)
        };
        self.call(&shared.client, &request, Some(ADD_PARTITIONS_CLIENT_MAX_VERSION), first_error).await?;
        for (topic, partitions) in new {
            self.partitions.entry(topic.to_owned()).or_default().extend(partitions);
        }
        Ok(())
    }

    /// Adds `group`'s offsets to the open transaction (AddOffsetsToTxn), once.
    async fn add_offsets(&mut self, client: &Client, group: &str) -> Result<()> {
        if self.offsets_group.as_deref() == Some(group) {
            return Ok(());
        }
        let add = AddOffsetsToTxnRequest {
            transactional_id: self.id.clone(),
            producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
            group_id: group.to_owned(),
            ..AddOffsetsToTxnRequest::default()
        };
        self.call(client, &add, None, |r| r.error_code).await?;
        self.offsets_group = Some(group.to_owned());
        Ok(())
    }

    /// Ends the open transaction's bookkeeping.
    fn close(&mut self) {
        self.open = false;
        self.partitions.clear();
        self.offsets_group = None;
    }
}

/// Who is committing offsets inside a transaction: the consumer group and, for fencing of
/// zombie members (KIP-447), the member's generation and ids.
fn group_fields(group: &ConsumerGroupMetadata) -> (String, i32, String, Option<String>) {
    (group.group_id.clone(), group.generation_id, group.member_id.clone(), group.group_instance_id.clone())
}

impl Producer {
    fn transaction_state(&self) -> Result<&tokio::sync::Mutex<Transaction>> {
        self.transaction.as_ref().ok_or_else(|| Error::Transaction {
            transactional_id: String::new(),
            reason: "the producer is not transactional (set ProducerConfig::transactional_id)".into(),
        })
    }

    /// Opens a transaction: records sent from now until [`Producer::commit_transaction`] or
    /// [`Producer::abort_transaction`] become visible to `read_committed` consumers together, or
    /// not at all.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the only wait is for the transaction lock, so a dropped call changes nothing.
    /// Calling again is fine.
    pub async fn begin_transaction(&self) -> Result<()> {
        let mut txn = self.transaction_state()?.lock().await;
        if txn.open {
            return Err(Error::Transaction {
                transactional_id: txn.id.clone(),
                reason: "a transaction is already open".into(),
            });
        }
        txn.open = true;
        txn.partitions.clear();
        txn.offsets_group = None;
        self.shared.state().transaction_failure = None;
        Ok(())
    }

    /// Adds `partitions` and, when given, `group`'s offsets (AddOffsetsToTxn) to the open
    /// transaction ahead of its records and [`Producer::send_offsets_to_transaction`]. Run
    /// beside the work that makes the records (on a task of its own, the producer in an `Arc`),
    /// it takes the coordinator's round trips off their path, and its wait for the previous
    /// transaction to complete: the coordinator answers CONCURRENT_TRANSACTIONS until it has
    /// written the previous transaction's markers, tens of milliseconds on a busy broker. A
    /// partition added and not written to gets the transaction's end marker all the same.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, but the broker may still act on a request already sent: a partition it adds
    /// then gets the transaction's end marker. Sends and `send_offsets_to_transaction` add
    /// what a dropped call did not.
    pub async fn prepare_transaction(&self, partitions: &[(&str, i32)], group: Option<&str>) -> Result<()> {
        let mut txn = self.transaction_state()?.lock().await;
        txn.require_open("prepare_transaction")?;
        txn.add_partitions(&self.shared, partitions).await?;
        if let Some(group) = group {
            txn.add_offsets(&self.shared.client, group).await?;
        }
        Ok(())
    }

    /// Commits consumed `offsets` (topic, partition, next offset to consume) for `group` as part
    /// of the open transaction: they take effect if and only if the transaction commits. This is
    /// how a consume-transform-produce loop is exactly once.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropped after AddOffsetsToTxn or TxnOffsetCommit was queued, the offsets may
    /// or may not end up in the transaction, and nothing tells which. Call it again with the same
    /// offsets (both requests are safe to repeat), or abort, before committing.
    ///
    /// Sends go on while the group's coordinator answers (the call may run on a task of its own
    /// beside the work that makes the transaction's records); the transaction's commit or abort
    /// waits for it. Called again in the same transaction, the offsets of the later call are
    /// the ones that count for partitions both name (the member's group metadata too).
    pub async fn send_offsets_to_transaction(
        &self,
        offsets: &[(String, i32, i64)],
        group: &ConsumerGroupMetadata,
    ) -> Result<()> {
        let mut txn = self.transaction_state()?.lock().await;
        txn.require_open("send_offsets_to_transaction")?;
        let client = self.shared.client.clone();
        let (group_id, generation_id, member_id, group_instance_id) = group_fields(group);
        txn.add_offsets(&client, &group_id).await?;

        let mut topics: BTreeMap<&str, Vec<TxnOffsetCommitRequestPartition>> = BTreeMap::new();
        for (topic, partition, offset) in offsets {
            topics.entry(topic).or_default().push(TxnOffsetCommitRequestPartition {
                partition_index: *partition,
                committed_offset: *offset,
                committed_leader_epoch: -1,
                ..Default::default()
            });
        }
        let commit = TxnOffsetCommitRequest {
            transactional_id: txn.id.clone(),
            group_id: group_id.clone(),
            producer_id: txn.producer_id,
            producer_epoch: txn.producer_epoch,
            generation_id,
            member_id,
            group_instance_id,
            topics: topics
                .into_iter()
                .map(|(name, partitions)| TxnOffsetCommitRequestTopic {
                    name: name.to_owned(),
                    partitions,
                    ..Default::default()
                })
                .collect(),
            ..TxnOffsetCommitRequest::default()
        };
        // TxnOffsetCommit goes to the group's coordinator, not the transaction's.
        let deadline = Instant::now() + txn.retry_for;
        // Taken before the transaction's lock is let go: its end waits for this answer.
        let _in_flight = Arc::clone(&txn.offsets_in_flight).lock_owned().await;
        drop(txn);
        loop {
            let answer = async {
                let coordinator = client.group_coordinator(&group_id).await?;
                let version =
                    coordinator.version_for::<TxnOffsetCommitRequest>(Some(TXN_OFFSET_COMMIT_V1_MAX_VERSION))?;
                let response = coordinator.send_version(&commit, version).await?;
                let code = response
                    .topics
                    .iter()
                    .flat_map(|t| t.partitions.iter())
                    .map(|p| ErrorCode::from_code(p.error_code))
                    .find(|c| *c != ErrorCode::None);
                match code {
                    None => Ok(()),
                    Some(code) => {
                        Err(Error::Broker { broker: coordinator.broker().to_owned(), api: "TxnOffsetCommit", code })
                    }
                }
            };
            let error = match answer.await {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            // The group's coordinator moving, unreachable or silent, or busy: look again, for up
            // to `retry_for`.
            let again = match &error {
                Error::Broker { code, .. } => retry_code(*code).is_some(),
                other => other.is_retriable(),
            };
            if !again || Instant::now() >= deadline {
                return Err(error);
            }
            client.note_error(&error);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends everything buffered, then commits the open transaction. If any of its records
    /// failed, nothing is committed: the error is returned and the transaction must be aborted.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropped after EndTxn was queued, the broker may still commit the transaction
    /// while this producer keeps it open, and records sent next may not join a new one. Call
    /// `commit_transaction` again before sending more (a repeated EndTxn is answered as the first
    /// was). Dropped earlier, while waiting for the lock or the flush, it leaves the transaction open.
    pub async fn commit_transaction(&self) -> Result<()> {
        self.end_transaction(true).await
    }

    /// Waits for what was sent to finish, then aborts the open transaction: its records and
    /// offsets are discarded for `read_committed` consumers.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropped after EndTxn was queued, the broker may still abort the transaction
    /// while this producer keeps it open, and records sent next may not join a new one. Call
    /// `abort_transaction` again before sending more (a repeated EndTxn is answered as the first
    /// was). Dropped earlier, while waiting for the lock or the flush, it leaves the transaction open.
    pub async fn abort_transaction(&self) -> Result<()> {
        self.end_transaction(false).await
    }

    async fn end_transaction(&self, commit: bool) -> Result<()> {
        let mut txn = self.transaction_state()?.lock().await;
        txn.require_open(if commit { "commit_transaction" } else { "abort_transaction" })?;
        // A TxnOffsetCommit under way (on another task) is part of this transaction.
        drop(txn.offsets_in_flight.lock().await);
        self.sent_all().await;
        // Failures are the transaction's (a commit is refused below), not a later flush's.
        self.shared.state().undelivered = None;
        if commit {
            if let Some(failure) = self.shared.state().transaction_failure.clone() {
                return Err(Error::Transaction {
                    transactional_id: txn.id.clone(),
                    reason: format!("a record of the transaction was not delivered ({failure}); abort it"),
                });
            }
        }
        let request = EndTxnRequest {
            transactional_id: txn.id.clone(),
            producer_id: txn.producer_id,
            producer_epoch: txn.producer_epoch,
            committed: commit,
            ..EndTxnRequest::default()
        };
        let client = self.shared.client.clone();
        // EndTxn v5 is the transaction protocol v2 (KIP-890 part 2: partitions join through
        // Produce v12+, the epoch is bumped at every end); this producer speaks v1 (Produce up to
        // v11, see `PRODUCE_TXN_V1_MAX_VERSION`; AddPartitionsToTxn; TxnOffsetCommit up to v4),
        // which Kafka 4 serves beside v2, so it ends transactions at v4 at most and keeps its epoch.
        txn.call(&client, &request, Some(END_TXN_V1_MAX_VERSION), |r| r.error_code).await?;
        txn.close();
        Ok(())
    }
}
