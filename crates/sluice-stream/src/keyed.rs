//! State kept per key across batches: Spark's `updateStateByKey` and `mapWithState` (with a
//! per-key timeout). The state lives in memory; each batch's changed keys are written with its
//! commit, and the whole state in snapshots, so a restarted job resumes with it.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::Hash;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::state::{decode, encode, Stateful};
use crate::stream::DStream;

/// Bounds of a key kept in state: ordered (state is saved and outputs given in key order) and
/// serializable.
pub trait StateKey: Ord + Clone + Send + Serialize + DeserializeOwned + 'static {}
impl<K: Ord + Clone + Send + Serialize + DeserializeOwned + 'static> StateKey for K {}

/// Keys' states, and the keys changed since the last delta.
struct KeyedState<K, S> {
    kind: &'static str,
    states: BTreeMap<K, S>,
    changed: BTreeSet<K>,
}

impl<K: Ord, S> KeyedState<K, S> {
    fn new(kind: &'static str) -> Self {
        Self { kind, states: BTreeMap::new(), changed: BTreeSet::new() }
    }
}

impl<K: StateKey, S: Clone + Send + Serialize + DeserializeOwned> Stateful for KeyedState<K, S> {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn take_delta(&mut self) -> Result<Option<Vec<u8>>, String> {
        if self.changed.is_empty() {
            return Ok(None);
        }
        let changed = std::mem::take(&mut self.changed);
        let delta: Vec<(&K, Option<&S>)> = changed.iter().map(|key| (key, self.states.get(key))).collect();
        encode(&delta).map(Some)
    }

    fn snapshot(&self) -> Result<Vec<u8>, String> {
        encode(&self.states)
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.states = decode(snapshot)?;
        Ok(())
    }

    fn apply_delta(&mut self, delta: &[u8]) -> Result<(), String> {
        let delta: Vec<(K, Option<S>)> = decode(delta)?;
        for (key, state) in delta {
            match state {
                Some(state) => self.states.insert(key, state),
                None => self.states.remove(&key),
            };
        }
        Ok(())
    }
}

/// A key's state as [`DStream::map_with_state`]'s function sees it: Spark's `State`.
#[derive(Debug)]
pub struct KeyState<S> {
    value: Option<S>,
    timing_out: bool,
}

impl<S> KeyState<S> {
    /// Whether the key has a state.
    pub fn exists(&self) -> bool {
        self.value.is_some()
    }

    /// The key's state, if it has one.
    pub fn get(&self) -> Option<&S> {
        self.value.as_ref()
    }

    /// Sets the key's state (ignored while it times out: its state is removed then).
    pub fn update(&mut self, value: S) {
        if !self.timing_out {
            self.value = Some(value);
        }
    }

    /// Removes the key's state.
    pub fn remove(&mut self) {
        self.value = None;
    }

    /// Whether the call is the key's last: no value came for it within the timeout, and its
    /// state is removed after the call.
    pub fn is_timing_out(&self) -> bool {
        self.timing_out
    }
}

/// Operators keeping state per key.
impl<K, V> DStream<(K, V)>
where
    K: StateKey + Hash + Eq,
    V: Send + 'static,
{
    /// Each key's state after every batch, Spark's `updateStateByKey`: `update` is called once
    /// per batch for every key that has a state or new values, with the key's values of the
    /// batch (in the order they came; none for a key without new values) and its state; it
    /// returns the new state, or `None` to remove the key. Every batch gives every key's state,
    /// in key order.
    pub fn update_state_by_key<S>(
        self,
        mut update: impl FnMut(Vec<V>, Option<S>) -> Option<S> + Send + 'static,
    ) -> DStream<(K, S)>
    where
        S: Clone + PartialEq + Send + Serialize + DeserializeOwned + 'static,
    {
        self.stateful(KeyedState::<K, S>::new("update_state_by_key"), move |state, _, parts| {
            let mut values: BTreeMap<K, Vec<V>> = BTreeMap::new();
            for (key, value) in parts.into_iter().flatten() {
                values.entry(key).or_default().push(value);
            }
            let keys: BTreeSet<K> = state.states.keys().chain(values.keys()).cloned().collect();
            for key in keys {
                let new_values = values.remove(&key).unwrap_or_default();
                let old = state.states.get(&key).cloned();
                let new = update(new_values, old.clone());
                if new != old {
                    match new {
                        Some(new) => state.states.insert(key.clone(), new),
                        None => state.states.remove(&key),
                    };
                    state.changed.insert(key);
                }
            }
            Some(vec![state.states.iter().map(|(k, s)| (k.clone(), s.clone())).collect()])
        })
    }

    /// Spark's `mapWithState`: `f(time_ms, key, value, state)` is called for each item of the
    /// batch, in the order they came, and may read, update or remove the key's state; what it
    /// returns is the output. With a `timeout`, a key with a state that gets no value for that
    /// long (in batch time) is timed out: `f` is called once more with no value and
    /// [`KeyState::is_timing_out`], after the batch's items, in key order, and its state is
    /// removed.
    pub fn map_with_state<S, U>(
        self,
        timeout: Option<Duration>,
        mut f: impl FnMut(u64, &K, Option<V>, &mut KeyState<S>) -> Option<U> + Send + 'static,
    ) -> DStream<U>
    where
        S: Clone + Send + Serialize + DeserializeOwned + 'static,
        U: Send + 'static,
    {
        let timeout_ms = timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
        // Each key's state and the batch time it last got a value.
        self.stateful(KeyedState::<K, (S, u64)>::new("map_with_state"), move |state, input, parts| {
            let now = input.time_ms;
            let mut out = Vec::new();
            for (key, value) in parts.into_iter().flatten() {
                let mut key_state = KeyState { value: state.states.remove(&key).map(|(s, _)| s), timing_out: false };
                out.extend(f(now, &key, Some(value), &mut key_state));
                if let Some(value) = key_state.value {
                    state.states.insert(key.clone(), (value, now));
                }
                state.changed.insert(key);
            }
            if let Some(timeout_ms) = timeout_ms {
                let expired: Vec<K> = state
                    .states
                    .iter()
                    .filter(|(_, (_, last))| now.saturating_sub(*last) > timeout_ms)
                    .map(|(key, _)| key.clone())
                    .collect();
                for key in expired {
                    let mut key_state = KeyState { value: state.states.remove(&key).map(|(s, _)| s), timing_out: true };
                    out.extend(f(now, &key, None, &mut key_state));
                    state.changed.insert(key);
                }
            }
            Some(vec![out])
        })
    }
}
