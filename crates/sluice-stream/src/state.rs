//! Operator state that survives a crash: each stateful operator (windows, keyed state,
//! watermarks) gives its changes after every batch, written with the batch's commit, and its
//! whole state now and then, written as a snapshot. On restart the job's state is the latest
//! snapshot with the later batches' changes applied, so a re-run batch sees exactly the state
//! its first run saw.
//!
//! Both are encoded with postcard ([`sluice_checkpoint::encode_value`]): compact and pure Rust.

use std::sync::{Arc, Mutex, PoisonError};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// One stateful operator's state, as the engine saves and restores it.
pub(crate) trait Stateful: Send {
    /// What the operator is; a checkpoint restores only into a job with the same stateful
    /// operators, made in the same order.
    fn kind(&self) -> &'static str;
    /// The changes since the last call (the last batch's), or `None` if there were none.
    fn take_delta(&mut self) -> Result<Option<Vec<u8>>, String>;
    /// The whole state.
    fn snapshot(&self) -> Result<Vec<u8>, String>;
    /// Replaces the state with a snapshot's.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String>;
    /// Applies one batch's changes, as `take_delta` gave them.
    fn apply_delta(&mut self, delta: &[u8]) -> Result<(), String>;
}

/// A stateful operator's state, shared by its compute step and the job.
pub(crate) type SharedState = Arc<Mutex<dyn Stateful>>;

pub(crate) fn lock_state<S: ?Sized>(state: &Mutex<S>) -> std::sync::MutexGuard<'_, S> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    sluice_checkpoint::encode_value(value).map_err(|e| e.to_string())
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    sluice_checkpoint::decode_value(bytes).map_err(|e| e.to_string())
}

/// A batch's changes: (operator index, its kind, its delta) for the operators that changed.
#[derive(Serialize, Deserialize)]
struct Delta {
    operators: Vec<(u32, String, Vec<u8>)>,
}

/// The whole state: (kind, state) of every stateful operator, in the order they were made.
#[derive(Serialize, Deserialize)]
struct Image {
    operators: Vec<(String, Vec<u8>)>,
}

/// The stateful operators of one job.
#[derive(Default)]
pub(crate) struct JobState {
    operators: Vec<SharedState>,
}

impl std::fmt::Debug for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobState").field("operators", &self.kinds()).finish()
    }
}

impl JobState {
    pub(crate) fn register(&mut self, state: SharedState) {
        self.operators.push(state);
    }

    fn kinds(&self) -> Vec<&'static str> {
        self.operators.iter().map(|op| lock_state(op).kind()).collect()
    }

    /// The last batch's changes, encoded (empty when nothing changed).
    pub(crate) fn take_delta(&self) -> Result<Vec<u8>, String> {
        let mut operators = Vec::new();
        for (index, op) in self.operators.iter().enumerate() {
            let mut op = lock_state(op);
            if let Some(delta) = op.take_delta()? {
                operators.push((u32::try_from(index).map_err(|e| e.to_string())?, op.kind().to_owned(), delta));
            }
        }
        if operators.is_empty() {
            return Ok(Vec::new());
        }
        encode(&Delta { operators })
    }

    /// The whole state, encoded.
    pub(crate) fn snapshot(&self) -> Result<Vec<u8>, String> {
        let operators = self
            .operators
            .iter()
            .map(|op| {
                let op = lock_state(op);
                Ok((op.kind().to_string(), op.snapshot()?))
            })
            .collect::<Result<Vec<_>, String>>()?;
        encode(&Image { operators })
    }

    /// Restores a snapshot (if any) and applies the deltas after it, oldest first.
    pub(crate) fn restore(&self, snapshot: Option<&(u64, Vec<u8>)>, deltas: &[(u64, Vec<u8>)]) -> Result<(), String> {
        if let Some((batch_id, bytes)) = snapshot {
            let image: Image = decode(bytes).map_err(|e| format!("the state snapshot after batch {batch_id}: {e}"))?;
            let written: Vec<&str> = image.operators.iter().map(|(kind, _)| kind.as_str()).collect();
            if written != self.kinds() {
                return Err(format!(
                    "the checkpoint holds the state of the stateful operators {written:?} but this job has {:?}; a job can only resume from a checkpoint of the same job (use a new checkpoint directory for a changed job)",
                    self.kinds()
                ));
            }
            for (op, (kind, state)) in self.operators.iter().zip(&image.operators) {
                lock_state(op).restore(state).map_err(|e| {
                    format!("restoring the state of {kind} from the snapshot after batch {batch_id}: {e}")
                })?;
            }
        }
        for (batch_id, bytes) in deltas {
            if bytes.is_empty() {
                continue;
            }
            let delta: Delta = decode(bytes).map_err(|e| format!("the state changes of batch {batch_id}: {e}"))?;
            for (index, kind, changes) in delta.operators {
                let op = usize::try_from(index).ok().and_then(|i| self.operators.get(i));
                let Some(op) = op.filter(|op| lock_state(op).kind() == kind) else {
                    return Err(format!(
                        "the state changes of batch {batch_id} are for stateful operator {index}, a {kind}, but this job's stateful operators are {:?}; a job can only resume from a checkpoint of the same job (use a new checkpoint directory for a changed job)",
                        self.kinds()
                    ));
                };
                let mut op = lock_state(op);
                op.apply_delta(&changes)
                    .map_err(|e| format!("applying the state changes of batch {batch_id} to {}: {e}", op.kind()))?;
            }
        }
        // What was restored is not a change of the next batch.
        for op in &self.operators {
            lock_state(op).take_delta()?;
        }
        Ok(())
    }
}
