//! Administering the cluster: topics (create, grow, delete), records (delete before an offset)
//! and consumer groups (list, describe, their committed offsets), as `Client` methods.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_protocol::consumer::{decode_assignment, PROTOCOL_TYPE};
use sluice_protocol::error_code::ErrorCode;
use sluice_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use sluice_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use sluice_protocol::messages::delete_records_request::{DeleteRecordsPartition, DeleteRecordsTopic};
use sluice_protocol::messages::delete_topics_request::DeleteTopicState;
use sluice_protocol::messages::{
    ConsumerGroupDescribeRequest, CreatePartitionsRequest, CreateTopicsRequest, DeleteRecordsRequest,
    DeleteTopicsRequest, DescribeGroupsRequest, ListGroupsRequest, OffsetCommitRequest,
};

use crate::client::{missing_partition, Client, OffsetSpec};
use crate::connection::{check_error, check_error_message, Connection};
use crate::error::{Error, Result};
use crate::group::{commit_topics, coordinator_moved, fetch_committed, fetch_committed_as, send_offset_commit};

impl Client {
    /// Creates a topic and waits (up to the request timeout) until the leader of each of its
    /// partitions serves it: Kafka lists a new partition's leader in its metadata a moment before
    /// that broker has the log open, and answers NOT_LEADER_OR_FOLLOWER in between.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: once the CreateTopics request is queued, the topic may still be created after
    /// the future is dropped, and calling again then fails with `TopicAlreadyExists`. Look the topic
    /// up in the metadata before calling again.
    pub async fn create_topic(&self, name: &str, partitions: i32, replication_factor: i16) -> Result<()> {
        self.create_topic_with_configs(name, partitions, replication_factor, &[]).await
    }

    /// [`Client::create_topic`] with topic configs (`("cleanup.policy", "compact")`, say), which
    /// the broker checks: an unknown name or a bad value fails the whole creation
    /// (`InvalidConfig`).
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe, as [`Client::create_topic`].
    pub async fn create_topic_with_configs(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: &[(&str, &str)],
    ) -> Result<()> {
        let configs = configs
            .iter()
            .map(|(name, value)| CreatableTopicConfig {
                name: (*name).to_owned(),
                value: Some((*value).to_owned()),
                ..Default::default()
            })
            .collect();
        let topic = CreatableTopic {
            name: name.into(),
            num_partitions: partitions,
            replication_factor,
            configs,
            ..Default::default()
        };
        let request = CreateTopicsRequest {
            topics: vec![topic],
            timeout_ms: self.broker_timeout_ms(),
            ..CreateTopicsRequest::default()
        };
        let connection = self.controller().await?;
        let response = connection.send(&request).await?;
        for topic in &response.topics {
            crate::connection::check_error(connection.broker(), "CreateTopics", topic.error_code)?;
        }
        self.wait_until_served(name, partitions, connection.broker()).await
    }

    /// Grows `topic` to `partitions` partitions in all (CreatePartitions; a topic never shrinks)
    /// and waits, as [`Client::create_topic`] does, until the leader of each serves it. Keyed
    /// records map to other partitions afterwards.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: once the CreatePartitions request is queued, the partitions may still be
    /// added after the future is dropped, and calling again then fails with `InvalidPartitions` (the
    /// topic already has that many). Look the topic up in the metadata before calling again.
    pub async fn create_partitions(&self, topic: &str, partitions: i32) -> Result<()> {
        let request = CreatePartitionsRequest {
            // No assignments (null, not an empty list): the controller places the new partitions.
            topics: vec![CreatePartitionsTopic {
                name: topic.into(),
                count: partitions,
                assignments: None,
                ..Default::default()
            }],
            timeout_ms: self.broker_timeout_ms(),
            ..CreatePartitionsRequest::default()
        };
        let connection = self.controller().await?;
        let response = connection.send(&request).await?;
        for result in &response.results {
            crate::connection::check_error(connection.broker(), "CreatePartitions", result.error_code)?;
        }
        self.wait_until_served(topic, partitions, connection.broker()).await
    }

    /// Waits (up to the request timeout) until the metadata lists `partitions` partitions of
    /// `topic` with leaders, and each leader answers ListOffsets for its partition.
    async fn wait_until_served(&self, name: &str, partitions: i32, admin: &str) -> Result<()> {
        let deadline = Instant::now() + self.config().connection.request_timeout;
        loop {
            let metadata = self.refresh_metadata(Some(&[name])).await?;
            let ready = metadata.topics.get(name).is_some_and(|t| {
                t.partitions.len() == usize::try_from(partitions).unwrap_or(0)
                    && t.partitions.iter().all(|p| p.leader >= 0)
            });
            if ready {
                let all: Vec<(String, i32)> = (0..partitions).map(|p| (name.to_owned(), p)).collect();
                match self.list_offsets(&all, OffsetSpec::Earliest).await {
                    Ok(_) => return Ok(()),
                    Err(e) if !e.is_retriable() => return Err(e),
                    Err(_) => {}
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::Broker {
                    broker: admin.to_owned(),
                    api: "Metadata",
                    code: ErrorCode::LeaderNotAvailable,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Deletes a topic and waits (up to the request timeout) until the cluster's metadata no
    /// longer lists it: Kafka answers DeleteTopics once the controller has decided, and brokers
    /// learn of it a moment later.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: once the DeleteTopics request is queued, the topic may still be deleted after
    /// the future is dropped, while the cached metadata still lists it; calling again may then fail
    /// with `UnknownTopicOrPartition`.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let connection = self.controller().await?;
        let version = connection.version_for::<DeleteTopicsRequest>(None)?;
        let timeout_ms = self.broker_timeout_ms();
        // v6 moved the names into a list of (name or id) entries.
        let request = if version >= 6 {
            let topic = DeleteTopicState { name: Some(name.into()), ..Default::default() };
            DeleteTopicsRequest { topics: vec![topic], timeout_ms, ..DeleteTopicsRequest::default() }
        } else {
            DeleteTopicsRequest { topic_names: vec![name.into()], timeout_ms, ..DeleteTopicsRequest::default() }
        };
        let response = connection.send_version(&request, version).await?;
        for topic in &response.responses {
            crate::connection::check_error(connection.broker(), "DeleteTopics", topic.error_code)?;
        }
        let deadline = Instant::now() + self.config().connection.request_timeout;
        loop {
            let metadata = self.refresh_metadata(Some(&[name])).await?;
            let gone = metadata.topics.get(name).is_none_or(|t| t.error == ErrorCode::UnknownTopicOrPartition);
            if gone {
                break;
            }
            if Instant::now() >= deadline {
                let broker = connection.broker().to_owned();
                return Err(Error::Broker { broker, api: "Metadata", code: ErrorCode::RequestTimedOut });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.forget_topic(name);
        Ok(())
    }

    /// The controller (where topic administration goes), or any broker if none is reported.
    async fn controller(&self) -> Result<Arc<Connection>> {
        match self.metadata().controller_id {
            id if id >= 0 => self.broker(id).await,
            _ => self.any_broker().await,
        }
    }

    /// Deletes the records of `topic`/`partition` before `before_offset` (moves the log start
    /// offset, as retention does); returns the new log start offset.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: once the DeleteRecords request is queued, the records may still be deleted after
    /// the future is dropped. Calling again with the same offset asks for the same deletion.
    pub async fn delete_records(&self, topic: &str, partition: i32, before_offset: i64) -> Result<i64> {
        let request = DeleteRecordsRequest {
            topics: vec![DeleteRecordsTopic {
                name: topic.into(),
                partitions: vec![DeleteRecordsPartition {
                    partition_index: partition,
                    offset: before_offset,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            timeout_ms: self.broker_timeout_ms(),
            ..DeleteRecordsRequest::default()
        };
        let connection = self.leader(topic, partition).await?;
        let response = connection.send(&request).await.inspect_err(|e| self.note_error(e))?;
        let answer = response
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter())
            .find(|p| p.partition_index == partition)
            .ok_or_else(|| missing_partition(connection.broker(), "DeleteRecords"))?;
        crate::connection::check_error(connection.broker(), "DeleteRecords", answer.error_code)
            .inspect_err(|e| self.note_error(e))?;
        Ok(answer.low_watermark)
    }

    /// Runs `call` on `group_id`'s coordinator, finding it again and retrying (for up to the
    /// request timeout) while the answer says the coordinator moved, is not there yet, or is
    /// still loading the group's offsets: a cluster's first group lookup creates
    /// `__consumer_offsets`, and its coordinators answer NOT_COORDINATOR or
    /// COORDINATOR_LOAD_IN_PROGRESS until they have loaded it.
    async fn at_group_coordinator<T, F, Fut>(&self, group_id: &str, mut call: F) -> Result<T>
    where
        F: FnMut(Arc<Connection>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let deadline = Instant::now() + self.config().connection.request_timeout;
        let mut backoff = Duration::from_millis(20);
        loop {
            let answer = match self.group_coordinator(group_id).await {
                Ok(coordinator) => call(coordinator).await,
                Err(e) => Err(e),
            };
            let again = answer.as_ref().is_err_and(coordinator_moved);
            if !again || Instant::now() + backoff >= deadline {
                return answer;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    /// Commits `offsets` (topic, partition, next offset to consume) for `group_id` outside any
    /// membership (generation -1), as a job that assigns its own partitions does so that lag
    /// tools see its progress. The coordinator refuses it while the group has active members.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the commit may or may not reach the coordinator; committing again is harmless.
    pub async fn commit_group_offsets(&self, group_id: &str, offsets: &[(String, i32, i64)]) -> Result<()> {
        let request = OffsetCommitRequest {
            group_id: group_id.to_owned(),
            generation_id_or_member_epoch: -1,
            topics: commit_topics(offsets),
            ..OffsetCommitRequest::default()
        };
        self.at_group_coordinator(group_id, |coordinator| {
            let request = &request;
            async move {
                let response = send_offset_commit(&coordinator, request).await?;
                for partition in response.topics.iter().flat_map(|t| t.partitions.iter()) {
                    check_error(coordinator.broker(), "OffsetCommit", partition.error_code)?;
                }
                Ok(())
            }
        })
        .await
    }

    /// `group_id`'s committed offsets for `partitions`, waiting out transactions still deciding
    /// offsets for them (`require_stable`, KIP-447; brokers before OffsetFetch v7 answer at once):
    /// what a transactional writer reads to learn what its last transaction committed.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn stable_group_offsets(
        &self,
        group_id: &str,
        partitions: &[(String, i32)],
    ) -> Result<BTreeMap<(String, i32), Option<i64>>> {
        let deadline = Instant::now() + self.config().connection.request_timeout;
        loop {
            let answer = self
                .at_group_coordinator(group_id, |coordinator| async move {
                    fetch_committed_as(&coordinator, group_id, Some(partitions), true).await
                })
                .await;
            match answer {
                Err(Error::Broker { code: ErrorCode::UnstableOffsetCommit, .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }

    /// Every offset `group_id` has committed.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn group_offsets(&self, group_id: &str) -> Result<BTreeMap<(String, i32), i64>> {
        let everything =
            self.at_group_coordinator(group_id, |coordinator| async move {
                fetch_committed(&coordinator, group_id, None).await
            })
            .await;
        let committed = match everything {
            Ok(committed) => committed,
            Err(Error::Decode { .. }) => {
                let coordinator = self.group_coordinator(group_id).await?;
                // Tansu 0.6 answers the "all topics" form with a null topic list, which the
                // schema does not allow: ask for every partition of every topic instead.
                let metadata = self.refresh_metadata(None).await?;
                let partitions: Vec<(String, i32)> = metadata
                    .topics
                    .iter()
                    .flat_map(|(name, t)| t.partitions.iter().map(move |p| (name.clone(), p.partition)))
                    .collect();
                fetch_committed(&coordinator, group_id, Some(&partitions)).await?
            }
            Err(e) => return Err(e),
        };
        Ok(committed.into_iter().filter_map(|(partition, offset)| Some((partition, offset?))).collect())
    }

    /// Every group on every broker of the cluster.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn list_groups(&self) -> Result<Vec<GroupListing>> {
        let metadata = self.refresh_metadata(None).await?;
        let mut groups = Vec::new();
        for node in metadata.brokers.keys() {
            let broker = self.broker(*node).await?;
            let response = broker.send(&ListGroupsRequest::default()).await?;
            check_error(broker.broker(), "ListGroups", response.error_code)?;
            groups.extend(response.groups.into_iter().map(|g| GroupListing {
                group_id: g.group_id,
                protocol_type: g.protocol_type,
                state: g.group_state,
            }));
        }
        groups.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        groups.dedup_by(|a, b| a.group_id == b.group_id);
        Ok(groups)
    }

    /// A group's state, members and their partitions, from its coordinator.
    ///
    /// A group the coordinator does not know is an error (GROUP_ID_NOT_FOUND, with the broker's
    /// message) from brokers with DescribeGroups v6 (Kafka 4); older ones describe it as `Dead`,
    /// with no members.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn describe_group(&self, group_id: &str) -> Result<GroupDescription> {
        let coordinator = self.group_coordinator(group_id).await?;
        let request = DescribeGroupsRequest { groups: vec![group_id.to_owned()], ..DescribeGroupsRequest::default() };
        let version = coordinator.version_for::<DescribeGroupsRequest>(None)?;
        let response = coordinator.send_version(&request, version).await?;
        let group = response.groups.into_iter().find(|g| g.group_id == group_id).ok_or_else(|| Error::Broker {
            broker: coordinator.broker().to_owned(),
            api: "DescribeGroups",
            code: ErrorCode::GroupIdNotFound,
        })?;
        // v6+ says why, e.g. which group was not found.
        check_error_message(coordinator.broker(), "DescribeGroups", group.error_code, group.error_message.as_deref())?;
        let consumer = group.protocol_type == PROTOCOL_TYPE;
        let members = group
            .members
            .into_iter()
            .map(|m| {
                let assignment = if consumer && !m.member_assignment.is_empty() {
                    let (_, assignment) = decode_assignment(m.member_assignment).map_err(|source| Error::Decode {
                        broker: coordinator.broker().to_owned(),
                        api: "DescribeGroups",
                        version,
                        source,
                    })?;
                    let mut partitions: Vec<(String, i32)> = assignment
                        .assigned_partitions
                        .into_iter()
                        .flat_map(|t| t.partitions.into_iter().map(move |p| (t.topic.clone(), p)))
                        .collect();
                    partitions.sort();
                    partitions
                } else {
                    Vec::new()
                };
                Ok(GroupMemberDescription {
                    member_id: m.member_id,
                    group_instance_id: m.group_instance_id,
                    client_id: m.client_id,
                    client_host: m.client_host,
                    assignment,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(GroupDescription {
            group_id: group.group_id,
            state: group.group_state,
            protocol_type: group.protocol_type,
            protocol: group.protocol_data,
            members,
        })
    }

    /// A consumer-protocol group (KIP-848) as its coordinator describes it with
    /// ConsumerGroupDescribe: its epochs and each member with the partitions it owns now.
    ///
    /// A group that is not a consumer-protocol group, or that the coordinator does not know, is
    /// an error (GROUP_ID_NOT_FOUND, with the broker's message); a broker without the API (Kafka
    /// before 3.7) fails with `UnsupportedVersion`. Tansu 0.6 answers for any group, with no
    /// members.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn describe_consumer_group(&self, group_id: &str) -> Result<ConsumerGroupDescription> {
        let coordinator = self.group_coordinator(group_id).await?;
        let request = ConsumerGroupDescribeRequest { group_ids: vec![group_id.to_owned()], ..Default::default() };
        let version = coordinator.version_for::<ConsumerGroupDescribeRequest>(None)?;
        let response = coordinator.send_version(&request, version).await?;
        let (broker, api) = (coordinator.broker(), "ConsumerGroupDescribe");
        let group = response.groups.into_iter().find(|g| g.group_id == group_id).ok_or_else(|| Error::Broker {
            broker: broker.to_owned(),
            api,
            code: ErrorCode::GroupIdNotFound,
        })?;
        check_error_message(broker, api, group.error_code, group.error_message.as_deref())?;
        let members = group
            .members
            .into_iter()
            .map(|m| {
                let mut assignment: Vec<(String, i32)> = m
                    .assignment
                    .topic_partitions
                    .into_iter()
                    .flat_map(|t| t.partitions.into_iter().map(move |p| (t.topic_name.clone(), p)))
                    .collect();
                assignment.sort();
                ConsumerGroupMemberDescription {
                    member_id: m.member_id,
                    instance_id: m.instance_id,
                    member_epoch: m.member_epoch,
                    assignment,
                }
            })
            .collect();
        Ok(ConsumerGroupDescription {
            group_id: group.group_id,
            state: group.group_state,
            group_epoch: group.group_epoch,
            assignment_epoch: group.assignment_epoch,
            members,
        })
    }
}

/// A consumer-protocol group as ConsumerGroupDescribe reports it
/// ([`Client::describe_consumer_group`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerGroupDescription {
    /// The group id.
    pub group_id: String,
    /// The state: `empty`, `assigning`, `reconciling`, `stable` or `dead`.
    pub state: String,
    /// The group's epoch (it grows with every change of members or subscriptions).
    pub group_epoch: i32,
    /// The epoch of the target assignment.
    pub assignment_epoch: i32,
    /// The members, each with the partitions it owns now (not its target).
    pub members: Vec<ConsumerGroupMemberDescription>,
}

/// One member of a consumer-protocol group.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerGroupMemberDescription {
    /// The member id.
    pub member_id: String,
    /// The static instance id, if any.
    pub instance_id: Option<String>,
    /// The member's epoch.
    pub member_epoch: i32,
    /// The partitions it owns, sorted.
    pub assignment: Vec<(String, i32)>,
}

/// A group as ListGroups reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupListing {
    /// The group id.
    pub group_id: String,
    /// `consumer` for consumer groups (empty for groups that only commit offsets).
    pub protocol_type: String,
    /// The state (`Stable`, `Empty`, ...), if the broker reports it (ListGroups v4+).
    pub state: String,
}

/// A group as DescribeGroups reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    /// The group id.
    pub group_id: String,
    /// The state: `Stable`, `PreparingRebalance`, `CompletingRebalance`, `Empty` or `Dead`.
    pub state: String,
    /// The protocol type (`consumer`).
    pub protocol_type: String,
    /// The chosen assignor (`range`, ...).
    pub protocol: String,
    /// The members and, for consumer groups, the partitions each owns.
    pub members: Vec<GroupMemberDescription>,
}

/// One member of a described group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMemberDescription {
    /// The member id.
    pub member_id: String,
    /// The static instance id, if any.
    pub group_instance_id: Option<String>,
    /// The client id the member connected with.
    pub client_id: String,
    /// The member's host.
    pub client_host: String,
    /// The partitions it owns (decoded from the consumer protocol; empty for other protocols).
    pub assignment: Vec<(String, i32)>,
}
