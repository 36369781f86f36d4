//! Repartitioning in scale-out mode, as Kafka Streams does it: when the key a stateful operator
//! groups by is not how the source is partitioned (clicks keyed by user, counted per item), the
//! stream's items go through an internal topic, `<group>-<name>-repartition`, with as many
//! partitions as the source, each item on the partition of its key (Kafka's default
//! partitioner: murmur2 of the encoded key). Its partition `p` goes with the source's partition
//! `p`: the process that owns that task reads it (the scheduler's internal topics), so all of a
//! key's items come to one task, whichever process read them from the source.
//!
//! The items are written in the batch's transaction, so they are there (for `read_committed`
//! readers) exactly when the batch's source offsets are committed; the owner of their partition
//! reads them in one of its next batches, and commits how far it read with its own offsets.
//! A repartitioned item is thus counted a batch or more after its source record is read.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sluice_client::{Producer, ProducerRecord};

use crate::graph::{lock, BatchInput, Compute, Output, Parts};
use crate::record::KafkaRecord;
use crate::state::{decode, encode};
use crate::stream::DStream;
use crate::BoxError;

/// Writes a stream's items to its repartition topic, in the batch's transaction.
struct RepartitionOutput<K, V> {
    compute: Compute<(K, V)>,
    topic: String,
    /// The run's records, made by `compute` and sent by `write`.
    records: Vec<ProducerRecord>,
    transaction: Option<Arc<Producer>>,
    failure: Option<String>,
}

impl<K: Serialize + Send + 'static, V: Serialize + Send + 'static> Output for RepartitionOutput<K, V> {
    fn compute(&mut self, input: &BatchInput) {
        self.transaction.clone_from(&input.transaction);
        let Some(parts) = (self.compute)(input) else { return };
        for (key, value) in parts.into_iter().flatten() {
            match (encode(&key), encode(&value)) {
                (Ok(key), Ok(value)) => self.records.push(ProducerRecord {
                    topic: self.topic.clone(),
                    key: Some(Bytes::from(key)),
                    value: Some(Bytes::from(value)),
                    ..ProducerRecord::default()
                }),
                (Err(error), _) | (_, Err(error)) => {
                    self.failure.get_or_insert_with(|| format!("encoding an item for {}: {error}", self.topic));
                }
            }
        }
    }

    fn write(&mut self) -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + '_>> {
        Box::pin(async move {
            let records = std::mem::take(&mut self.records);
            if let Some(failure) = self.failure.take() {
                return Err(failure.into());
            }
            if records.is_empty() {
                return Ok(());
            }
            let producer = self.transaction.take().ok_or_else(|| {
                format!(
                    "items for {} in a batch without a transaction (repartitioning is for scale-out mode)",
                    self.topic
                )
            })?;
            for record in records {
                // The transaction's commit waits for every send and fails if one did.
                drop(producer.send(record).await?);
            }
            Ok(())
        })
    }
}

/// Whether `topic` is a legal topic name (Kafka's: at most 249 ASCII letters, digits, `.`, `_`
/// and `-`).
fn legal_topic(topic: &str) -> bool {
    (1..=249).contains(&topic.len())
        && topic.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The items of the repartition topic's records in a batch's parts (the source's parts empty).
fn decode_parts<K: DeserializeOwned, V: DeserializeOwned>(
    parts: Parts<KafkaRecord>,
    failures: &Mutex<Vec<String>>,
) -> Parts<(K, V)> {
    let mut failed = None;
    let parts = parts
        .into_iter()
        .map(|part| {
            part.into_iter()
                .filter_map(|record| match decode_item(&record) {
                    Ok(item) => Some(item),
                    Err(error) => {
                        failed.get_or_insert_with(|| {
                            format!("{}/{} offset {}: {error}", record.topic, record.partition, record.offset)
                        });
                        None
                    }
                })
                .collect()
        })
        .collect();
    if let Some(failed) = failed {
        failures.lock().unwrap_or_else(PoisonError::into_inner).push(format!(
            "a record of the repartition topic is not an item of this job (written by another program, or by a job whose types changed): {failed}"
        ));
    }
    parts
}

fn decode_item<K: DeserializeOwned, V: DeserializeOwned>(record: &KafkaRecord) -> Result<(K, V), String> {
    let key = record.key.as_ref().ok_or("no key")?;
    let value = record.value.as_ref().ok_or("no value")?;
    Ok((decode(key).map_err(|e| format!("key: {e}"))?, decode(value).map_err(|e| format!("value: {e}"))?))
}

/// Repartitioning a stream of key-value pairs.
impl<K, V> DStream<(K, V)>
where
    K: Serialize + DeserializeOwned + Send + 'static,
    V: Serialize + DeserializeOwned + Send + 'static,
{
    /// In scale-out mode, the stream's items regrouped by their key, through the internal topic
    /// `<group>-<name>-repartition` (Kafka Streams' `repartition`): each key's items then come
    /// to one task (the partition of the key's murmur2 hash, as Kafka's default partitioner
    /// places it), so the keyed operators after it keep each key's state in one place, however
    /// the source is partitioned. Give each repartition of a job its own `name` (letters,
    /// digits, `.`, `_`, `-`), the same in every run: the topic holds items between batches.
    ///
    /// The items are written in the batch's transaction and read by their task's owner in its
    /// next batches (with its offsets in the job's group), so the operators after it see them a
    /// batch or more later; the watermarks of `with_watermark` steps before it stay behind (set
    /// one after it). Outside scale-out mode a single process has every key: the stream as it is.
    pub fn repartition(self, name: &str) -> DStream<(K, V)> {
        let Some(group) = self.group() else { return self };
        let topic = format!("{group}-{name}-repartition");
        let (compute, graph, _) = self.into_parts();
        let failures = {
            let mut graph = lock(&graph);
            if name.is_empty() || !legal_topic(&topic) {
                graph.errors.push(format!(
                    "repartition {name:?} of group {group:?}: the topic {topic:?} must be at most 249 letters, digits, '.', '_' and '-'"
                ));
            }
            if graph.internal_topics.contains(&topic) {
                graph.errors.push(format!("two repartitions named {name:?}: each needs its own topic"));
            } else {
                graph.internal_topics.push(topic.clone());
            }
            Arc::clone(&graph.failures)
        };
        let output =
            RepartitionOutput { compute, topic: topic.clone(), records: Vec::new(), transaction: None, failure: None };
        lock(&graph).outputs.push(Box::new(output));
        let topics = [topic];
        let take = move |input: &BatchInput| {
            let parts = input.records.take_where(|part| input.part_of(part, &topics));
            Some(decode_parts(parts, &failures))
        };
        DStream::new(graph, Box::new(take)).aligned_as(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_make_legal_topics() {
        assert!(legal_topic("job-by-item_2.v1-repartition"));
        let long = "x".repeat(250);
        for bad in ["", "by item", "by/item", "ítem", long.as_str()] {
            assert!(!legal_topic(bad), "{bad:?}");
        }
    }

    #[test]
    fn records_that_are_not_items_fail_the_batch_with_where_and_why() {
        let record = |offset: i64, key: Option<Vec<u8>>, value: Option<Vec<u8>>| KafkaRecord {
            topic: Arc::from("job-x-repartition"),
            partition: 3,
            offset,
            timestamp: 0,
            key: key.map(Bytes::from),
            value: value.map(Bytes::from),
            headers: Vec::new(),
        };
        let item = |key: &str, value: u64| (Some(encode(&key.to_owned()).unwrap()), Some(encode(&value).unwrap()));
        let (k, v) = item("a", 7);
        let failures = Mutex::new(Vec::new());
        let parts: Parts<(String, u64)> = decode_parts(vec![vec![record(0, k.clone(), v.clone())], vec![]], &failures);
        assert_eq!(parts, vec![vec![("a".to_owned(), 7)], vec![]]);
        assert!(failures.lock().unwrap().is_empty());

        let parts: Parts<(String, u64)> =
            decode_parts(vec![vec![record(5, k, None), record(6, Some(vec![0xff; 3]), v)]], &failures);
        assert_eq!(parts, vec![Vec::new()]);
        let failures = failures.into_inner().unwrap();
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(failures[0].contains("job-x-repartition/3 offset 5: no value"), "{failures:?}");
    }
}
