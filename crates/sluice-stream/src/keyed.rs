//! State kept per key across batches: Spark's `updateStateByKey` and `mapWithState` (with a
//! per-key timeout). The state lives in memory; each batch's changed keys are written with its
//! commit, and the whole state in snapshots, so a restarted job resumes with it. Outputs and
//! timeouts go in key order, so a job gives the same in every run.

use crate::hash::HashMap;
use std::hash::Hash;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::state::{decode, encode, Stateful};
use crate::stream::DStream;

/// Bounds of a key kept in state: hashed (state is kept in hash maps), ordered (state is saved
/// and outputs given in key order, so they are the same in every run) and serializable.
pub trait StateKey: Hash + Eq + Ord + Clone + Send + Serialize + DeserializeOwned + 'static {}
impl<K: Hash + Eq + Ord + Clone + Send + Serialize + DeserializeOwned + 'static> StateKey for K {}

/// A key's place in the state: its state (`None` once removed, until the removal is taken into
/// a delta) and whether it changed since the last delta.
struct Slot<S> {
    state: Option<S>,
    dirty: bool,
}

/// Keys' states. A change marks the key's slot, so a batch costs one or two lookups per item
/// and the delta is found by one pass over the slots.
struct KeyedState<K, S> {
    kind: &'static str,
    slots: HashMap<K, Slot<S>>,
    any_dirty: bool,
    /// Slots emptied since the last delta (removed from the map once the delta has them).
    any_removed: bool,
}

impl<K: StateKey, S> KeyedState<K, S> {
    fn new(kind: &'static str) -> Self {
        Self { kind, slots: HashMap::default(), any_dirty: false, any_removed: false }
    }

    /// Takes `key`'s state out of its slot (to be set back with `set`).
    fn take(&mut self, key: &K) -> Option<S> {
        self.slots.get_mut(key).and_then(|slot| slot.state.take())
    }

    /// Sets `key`'s state (`None` removes it) and marks it changed.
    fn set(&mut self, key: K, state: Option<S>) {
        self.any_dirty = true;
        self.any_removed |= state.is_none();
        match self.slots.get_mut(&key) {
            Some(slot) => {
                slot.state = state;
                slot.dirty = true;
            }
            None => {
                if state.is_some() {
                    self.slots.insert(key, Slot { state, dirty: true });
                }
            }
        }
    }

    fn get(&self, key: &K) -> Option<&S> {
        self.slots.get(key).and_then(|slot| slot.state.as_ref())
    }

    /// The keys with a state, and their states.
    fn states(&self) -> impl Iterator<Item = (&K, &S)> {
        self.slots.iter().filter_map(|(key, slot)| Some((key, slot.state.as_ref()?)))
    }

    /// The states in key order.
    fn sorted(&self) -> Vec<(&K, &S)> {
        let mut states: Vec<(&K, &S)> = self.states().collect();
        states.sort_unstable_by(|a, b| a.0.cmp(b.0));
        states
    }
}

impl<K: StateKey, S: Clone + Send + Serialize + DeserializeOwned> Stateful for KeyedState<K, S> {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn take_delta(&mut self) -> Result<Option<Vec<u8>>, String> {
        if !std::mem::take(&mut self.any_dirty) {
            return Ok(None);
        }
        // In no particular order: applying a delta or restoring a snapshot gives the same
        // state whatever the order.
        // One pass finds the changed slots and clears their marks; a second, only after
        // removals, drops the emptied slots.
        let delta: Vec<(&K, Option<&S>)> = self
            .slots
            .iter_mut()
            .filter(|(_, slot)| slot.dirty)
            .map(|(key, slot)| {
                slot.dirty = false;
                let slot: &Slot<S> = slot;
                (key, slot.state.as_ref())
            })
            .collect();
        let encoded = encode(&delta);
        if std::mem::take(&mut self.any_removed) {
            self.slots.retain(|_, slot| slot.state.is_some());
        }
        Ok(Some(encoded?))
    }

    fn snapshot(&self) -> Result<Vec<u8>, String> {
        encode(&self.states().collect::<Vec<(&K, &S)>>())
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let states: Vec<(K, S)> = decode(snapshot)?;
        self.slots = states.into_iter().map(|(key, state)| (key, Slot { state: Some(state), dirty: false })).collect();
        Ok(())
    }

    fn apply_delta(&mut self, delta: &[u8]) -> Result<(), String> {
        let delta: Vec<(K, Option<S>)> = decode(delta)?;
        for (key, state) in delta {
            match state {
                Some(state) => self.slots.insert(key, Slot { state: Some(state), dirty: false }),
                None => self.slots.remove(&key),
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

    /// The key's state, to change in place (`None` while it times out: its state is removed
    /// then).
    pub fn get_mut(&mut self) -> Option<&mut S> {
        if self.timing_out {
            return None;
        }
        self.value.as_mut()
    }

    /// The key's state, set to `make()` first if it has none (`None` while it times out).
    pub fn get_or_insert_with(&mut self, make: impl FnOnce() -> S) -> Option<&mut S> {
        if self.timing_out {
            return None;
        }
        Some(self.value.get_or_insert_with(make))
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
    K: StateKey,
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
            let mut values: HashMap<K, Vec<V>> = HashMap::default();
            for (key, value) in parts.into_iter().flatten() {
                values.entry(key).or_default().push(value);
            }
            let mut keys: Vec<K> = state.states().map(|(key, _)| key.clone()).chain(values.keys().cloned()).collect();
            keys.sort_unstable();
            keys.dedup();
            for key in keys {
                let new_values = values.remove(&key).unwrap_or_default();
                let old = state.get(&key).cloned();
                let new = update(new_values, old.clone());
                if new != old {
                    state.set(key, new);
                }
            }
            Some(vec![state.sorted().into_iter().map(|(k, s)| (k.clone(), s.clone())).collect()])
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
                state.any_dirty = true;
                // One lookup per item: the slot is changed in place, and only a new key is
                // inserted (a second lookup, once per key's life).
                match state.slots.get_mut(&key) {
                    Some(slot) => {
                        let mut key_state = KeyState { value: slot.state.take().map(|(s, _)| s), timing_out: false };
                        out.extend(f(now, &key, Some(value), &mut key_state));
                        state.any_removed |= key_state.value.is_none();
                        slot.state = key_state.value.map(|value| (value, now));
                        slot.dirty = true;
                    }
                    None => {
                        let mut key_state = KeyState { value: None, timing_out: false };
                        out.extend(f(now, &key, Some(value), &mut key_state));
                        if let Some(value) = key_state.value {
                            state.slots.insert(key, Slot { state: Some((value, now)), dirty: true });
                        }
                    }
                }
            }
            if let Some(timeout_ms) = timeout_ms {
                let mut expired: Vec<K> = state
                    .states()
                    .filter(|(_, (_, last))| now.saturating_sub(*last) > timeout_ms)
                    .map(|(key, _)| key.clone())
                    .collect();
                expired.sort_unstable();
                for key in expired {
                    let mut key_state = KeyState { value: state.take(&key).map(|(s, _)| s), timing_out: true };
                    out.extend(f(now, &key, None, &mut key_state));
                    state.set(key, None);
                }
            }
            Some(vec![out])
        })
    }
}
