//! State kept per key across batches: Spark's `updateStateByKey` and `mapWithState` (with a
//! per-key timeout). The state lives in memory; each batch's changed keys are written with its
//! commit, and the whole state in snapshots, so a restarted job resumes with it. Outputs and
//! timeouts go in key order, so a job gives the same in every run.

use crate::hash::HashMap;
use std::collections::BTreeSet;
use std::hash::Hash;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::pool::{on_each, par_map};
use crate::state::{decode, encode_into, Stateful, TaskChange};
use crate::stream::{task_parts, DStream, GivenTasks};

/// Bounds of a key kept in state: hashed (state is kept in hash maps), ordered (state is saved
/// and outputs given in key order, so they are the same in every run) and serializable.
pub trait StateKey: Hash + Eq + Ord + Clone + Send + Serialize + DeserializeOwned + 'static {}
impl<K: Hash + Eq + Ord + Clone + Send + Serialize + DeserializeOwned + 'static> StateKey for K {}

/// A key's place in the state: its state (`None` once removed, until the removal is taken into
/// a delta), whether it changed since the last delta, and in scale-out mode its task (the
/// source partition its records come from; 0 otherwise).
struct Slot<S> {
    state: Option<S>,
    dirty: bool,
    task: i32,
}

/// One shard of the keys' states.
type Shard<K, S> = HashMap<K, Slot<S>>;

/// Keys' states, in shards by key hash so that a large batch's items can be worked through on
/// several threads (one per shard). A change marks the key's slot, so a batch costs one lookup
/// per item and the delta is found by one pass over the slots. Nothing the state gives out
/// depends on the sharding: outputs keep the items' order, deltas and snapshots are sets.
struct KeyedState<K, S> {
    kind: &'static str,
    shards: Vec<Shard<K, S>>,
    /// Picks a key's shard.
    router: foldhash::fast::RandomState,
    any_dirty: bool,
    /// Slots emptied since the last delta (removed from the map once the delta has them).
    any_removed: bool,
    /// Each shard's last delta, bytes (its next delta's buffer, and a snapshot's, start that
    /// large).
    delta_bytes: Vec<usize>,
    /// Scale-out mode: why the state cannot be kept per task (a key's records came from two
    /// source partitions), reported with the batch's changes.
    problem: Option<String>,
}

impl<K: StateKey, S> KeyedState<K, S> {
    fn new(kind: &'static str) -> Self {
        // As many shards as cores (at most 8): results do not depend on the number.
        let shards = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get).clamp(1, 8);
        Self {
            kind,
            shards: (0..shards).map(|_| HashMap::default()).collect(),
            router: foldhash::fast::RandomState::default(),
            any_dirty: false,
            any_removed: false,
            delta_bytes: Vec::new(),
            problem: None,
        }
    }

    /// Notes that a key of task `was` got records from task `now` (the first such is reported).
    fn note_moved_key(&mut self, was: i32, now: i32) {
        self.problem.get_or_insert_with(|| moved_key(was, now));
    }

    fn shard_of(&self, key: &K) -> usize {
        route(&self.router, self.shards.len(), key)
    }

    fn shard(&self, key: &K) -> Option<&Shard<K, S>> {
        self.shards.get(self.shard_of(key))
    }

    fn shard_mut(&mut self, key: &K) -> Option<&mut Shard<K, S>> {
        let index = self.shard_of(key);
        self.shards.get_mut(index)
    }

    /// Takes `key`'s state out of its slot (to be set back with `set`).
    fn take(&mut self, key: &K) -> Option<S> {
        self.shard_mut(key)?.get_mut(key).and_then(|slot| slot.state.take())
    }

    /// Sets `key`'s state (`None` removes it) and marks it changed; `task`, where the batch
    /// had records of the key, is the task they came from.
    fn set(&mut self, task: Option<i32>, key: K, state: Option<S>) {
        self.any_dirty = true;
        self.any_removed |= state.is_none();
        let Some(shard) = self.shard_mut(&key) else { return };
        let moved = match shard.get_mut(&key) {
            Some(slot) => {
                slot.state = state;
                slot.dirty = true;
                task.filter(|task| *task != slot.task).map(|task| (slot.task, task))
            }
            None => {
                if state.is_some() {
                    shard.insert(key, Slot { state, dirty: true, task: task.unwrap_or(0) });
                }
                None
            }
        };
        if let Some((was, now)) = moved {
            self.note_moved_key(was, now);
        }
    }

    fn get(&self, key: &K) -> Option<&S> {
        self.shard(key)?.get(key).and_then(|slot| slot.state.as_ref())
    }

    /// The keys with a state, with their tasks (0 outside scale-out mode) and states.
    fn task_states(&self) -> impl Iterator<Item = (i32, &K, &S)> {
        self.shards.iter().flatten().filter_map(|(key, slot)| Some((slot.task, key, slot.state.as_ref()?)))
    }

    /// The keys with a state, and their states.
    fn states(&self) -> impl Iterator<Item = (&K, &S)> {
        self.task_states().map(|(_, key, state)| (key, state))
    }

    /// The states in key order.
    #[cfg(test)]
    fn sorted(&self) -> Vec<(&K, &S)> {
        self.sorted_by_task().into_iter().map(|(_, key, state)| (key, state)).collect()
    }

    /// The states with their tasks, by task and in key order within each (key order outside
    /// scale-out mode, where every key's task is 0).
    fn sorted_by_task(&self) -> Vec<(i32, &K, &S)> {
        let mut states: Vec<(i32, &K, &S)> = self.task_states().collect();
        states.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        states
    }

    /// Keys with a state (or emptied since the last delta).
    fn len(&self) -> usize {
        self.shards.iter().map(HashMap::len).sum()
    }

    /// Puts a restored key's state (of `task`) in its shard, unchanged since the last delta.
    fn restore_one(&mut self, task: i32, key: K, state: Option<S>) {
        let Some(shard) = self.shard_mut(&key) else { return };
        match state {
            Some(state) => shard.insert(key, Slot { state: Some(state), dirty: false, task }),
            None => shard.remove(&key),
        };
    }
}

/// Why state cannot be kept per task: the batch's parts are not the source's read tasks (the
/// job check refuses such a stream; this is the last line of defence).
pub(crate) const NOT_SOURCE_PARTS: &str =
    "the batch's parts are not the source's read tasks, so the items' partitions are not known";

/// [`part_tasks`], or all 0 with the problem noted (reported with the batch's changes).
fn tasks_of<K: StateKey, S>(
    state: &mut KeyedState<K, S>,
    input: &crate::graph::BatchInput,
    parts: usize,
    scale: bool,
) -> Vec<i32> {
    part_tasks(input, parts, scale).unwrap_or_else(|| {
        state.problem.get_or_insert_with(|| NOT_SOURCE_PARTS.to_owned());
        vec![0; parts]
    })
}

/// Why keyed state cannot be kept per task: a key's records came from two partitions.
fn moved_key(was: i32, now: i32) -> String {
    format!(
        "a key's records came from source partitions {was} and {now}: in scale-out mode each key's state belongs to one partition's task, so the source must be partitioned by the state's key (records of one key in one partition), or the stream repartitioned by it first (DStream::repartition)"
    )
}

/// The task of each of a batch's parts: in scale-out mode the source partition it was read
/// from (in a test's batches, its place), otherwise 0. `None` if the parts are not the
/// source's (the job check refuses such a stream before it runs).
pub(crate) fn part_tasks(input: &crate::graph::BatchInput, parts: usize, scale: bool) -> Option<Vec<i32>> {
    match &input.part_sources {
        _ if !scale => Some(vec![0; parts]),
        Some(sources) => (sources.len() == parts).then(|| sources.iter().map(|(_, partition)| *partition).collect()),
        None => Some((0..parts).map(|i| i32::try_from(i).unwrap_or(i32::MAX)).collect()),
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
        // One pass per shard finds its changed slots and clears their marks (in no particular
        // order: applying a delta gives the same state whatever the order); a second, only
        // after removals, drops the emptied slots.
        let parallel = self.len() >= crate::pool::PARALLEL_FROM_ITEMS;
        let last_sizes = std::mem::take(&mut self.delta_bytes).into_iter().chain(std::iter::repeat(0));
        let work: Vec<_> = self.shards.iter_mut().zip(last_sizes).collect();
        let pieces = on_each(work, parallel, |(shard, last_size)| {
            let capacity = last_size.saturating_add(last_size / 8);
            let changed = shard.iter_mut().filter(|(_, slot)| slot.dirty).map(|(key, slot)| {
                slot.dirty = false;
                let slot: &Slot<S> = slot;
                (key, slot.state.as_ref())
            });
            encode_each(changed, capacity)
        });
        self.delta_bytes = pieces.iter().map(|piece| piece.as_ref().map_or(0, |(_, bytes)| bytes.len())).collect();
        let encoded = join_pieces(pieces);
        if std::mem::take(&mut self.any_removed) {
            for shard in &mut self.shards {
                shard.retain(|_, slot| slot.state.is_some());
            }
        }
        Ok(Some(encoded?))
    }

    fn snapshot(&mut self) -> Result<Vec<u8>, String> {
        let parallel = self.len() >= crate::pool::PARALLEL_FROM_ITEMS;
        // A snapshot holds at least what a delta does.
        let last_sizes = self.delta_bytes.iter().copied().chain(std::iter::repeat(0));
        let work: Vec<_> = self.shards.iter_mut().zip(last_sizes).collect();
        let pieces = on_each(work, parallel, |(shard, last_size)| {
            encode_each(shard.iter().filter_map(|(key, slot)| Some((key, slot.state.as_ref()?))), last_size)
        });
        join_pieces(pieces)
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let shards: Vec<Vec<(K, S)>> = decode(snapshot)?;
        self.shards.iter_mut().for_each(HashMap::clear);
        for (key, state) in shards.into_iter().flatten() {
            self.restore_one(0, key, Some(state));
        }
        Ok(())
    }

    fn apply_delta(&mut self, delta: &[u8]) -> Result<(), String> {
        let shards: Vec<Vec<(K, Option<S>)>> = decode(delta)?;
        for (key, state) in shards.into_iter().flatten() {
            self.restore_one(0, key, state);
        }
        Ok(())
    }

    fn splits_by_task(&self) -> bool {
        true
    }

    fn take_task_changes(&mut self) -> Result<Vec<TaskChange>, String> {
        if let Some(problem) = self.problem.take() {
            return Err(problem);
        }
        if !std::mem::take(&mut self.any_dirty) {
            return Ok(Vec::new());
        }
        // As `take_delta`: the shards side by side when there are many keys, each encoding its
        // changed keys and states into one buffer that its changes share.
        let parallel = self.len() >= crate::pool::PARALLEL_FROM_ITEMS;
        let last_sizes = std::mem::take(&mut self.delta_bytes).into_iter().chain(std::iter::repeat(0));
        let work: Vec<_> = self.shards.iter_mut().zip(last_sizes).collect();
        let pieces = on_each(work, parallel, |(shard, last_size)| {
            let changed = shard.iter_mut().filter(|(_, slot)| slot.dirty).map(|(key, slot)| {
                slot.dirty = false;
                let slot: &Slot<S> = slot;
                (slot.task, key, slot.state.as_ref())
            });
            encode_changes(changed, last_size.saturating_add(last_size / 8))
        });
        let mut changes = Vec::with_capacity(pieces.iter().map(|p| p.as_ref().map_or(0, |(c, _)| c.len())).sum());
        self.delta_bytes = Vec::with_capacity(pieces.len());
        for piece in pieces {
            let (piece, bytes) = piece?;
            changes.extend(piece);
            self.delta_bytes.push(bytes);
        }
        if std::mem::take(&mut self.any_removed) {
            for shard in &mut self.shards {
                shard.retain(|_, slot| slot.state.is_some());
            }
        }
        Ok(changes)
    }

    fn restore_task_entry(&mut self, task: i32, key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
        let key: K = decode(key).map_err(|e| format!("a changelog record's key: {e}"))?;
        let state: Option<S> = value.map(decode).transpose().map_err(|e| format!("a changelog record's value: {e}"))?;
        // A key another task of this process holds: its records came from two partitions.
        let held_by = self.shard(&key).and_then(|shard| shard.get(&key)).map(|slot| slot.task);
        if let Some(was) = held_by.filter(|was| *was != task) {
            self.note_moved_key(was, task);
            return Ok(());
        }
        self.restore_one(task, key, state);
        Ok(())
    }

    fn drop_tasks(&mut self, tasks: &BTreeSet<i32>) {
        for shard in &mut self.shards {
            shard.retain(|_, slot| !tasks.contains(&slot.task));
        }
    }

    fn task_entries(&mut self, tasks: &BTreeSet<i32>) -> Result<Vec<TaskChange>, String> {
        let parallel = self.len() >= crate::pool::PARALLEL_FROM_ITEMS;
        let work: Vec<_> = self.shards.iter_mut().collect();
        let pieces = on_each(work, parallel, |shard| {
            let held = shard
                .iter()
                .filter(|(_, slot)| tasks.contains(&slot.task))
                .filter_map(|(key, slot)| Some((slot.task, key, Some(slot.state.as_ref()?))));
            encode_changes(held, 0)
        });
        let mut entries = Vec::new();
        for piece in pieces {
            entries.extend(piece?.0);
        }
        Ok(entries)
    }
}

/// A shard's entries encoded one after the other as they are reached, with their number: a
/// list's elements in postcard, without its length.
fn encode_each<T: Serialize>(entries: impl Iterator<Item = T>, capacity: usize) -> Result<(usize, Vec<u8>), String> {
    let mut bytes = Vec::with_capacity(capacity);
    let mut count = 0;
    for entry in entries {
        bytes = encode_into(&entry, bytes)?;
        count += 1;
    }
    Ok((count, bytes))
}

/// Changes of (task, key, state) as changelog records, encoded into one buffer (made with
/// `capacity`) that they share; also the buffer's size.
fn encode_changes<'a, K: Serialize + 'a, S: Serialize + 'a>(
    changed: impl Iterator<Item = (i32, &'a K, Option<&'a S>)>,
    capacity: usize,
) -> Result<(Vec<TaskChange>, usize), String> {
    let mut bytes = Vec::with_capacity(capacity);
    let mut spans = Vec::new();
    for (task, key, state) in changed {
        let start = bytes.len();
        bytes = encode_into(key, bytes)?;
        let key_end = bytes.len();
        let value = match state {
            Some(state) => {
                bytes = encode_into(state, bytes)?;
                Some(key_end..bytes.len())
            }
            None => None,
        };
        spans.push((task, start..key_end, value));
    }
    let size = bytes.len();
    let bytes = bytes::Bytes::from(bytes);
    let changes = spans
        .into_iter()
        .map(|(task, key, value)| TaskChange { task, key: bytes.slice(key), value: value.map(|v| bytes.slice(v)) })
        .collect();
    Ok((changes, size))
}

/// The shards' entries as the encoding of a list of lists (one per shard): postcard writes a
/// list as its length, then its elements.
fn join_pieces(pieces: Vec<Result<(usize, Vec<u8>), String>>) -> Result<Vec<u8>, String> {
    let pieces = pieces.into_iter().collect::<Result<Vec<_>, String>>()?;
    let size: usize = pieces.iter().map(|(_, bytes)| bytes.len()).sum();
    let mut out = encode_into(&pieces.len(), Vec::with_capacity(size + 10 * (pieces.len() + 1)))?;
    for (count, bytes) in pieces {
        out = encode_into(&count, out)?;
        out.extend_from_slice(&bytes);
    }
    Ok(out)
}

/// The shard of `shards` that holds `key`.
fn route<K: Hash>(router: &foldhash::fast::RandomState, shards: usize, key: &K) -> usize {
    use std::hash::BuildHasher as _;
    // The shard count is at most 8, so the cast and the remainder cannot lose a shard.
    (router.hash_one(key) % shards.max(1) as u64) as usize
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
    /// Whether the job runs in scale-out mode; there a keyed operator's input must still be
    /// the source's parts (each item's task known), or the job check fails.
    fn check_keyed_input(&self, operator: &str) -> bool {
        let scale = self.scales_out();
        if scale && !self.is_aligned() {
            self.record_error(format!(
                "{operator} in scale-out mode keeps each key's state in its source partition's task, so only element-wise operators (map, flat_map, filter, key_by, map_partitions) may come between the source (or a repartition) and it"
            ));
        }
        scale
    }

    /// Each key's state after every batch, Spark's `updateStateByKey`: `update` is called once
    /// per batch for every key that has a state or new values, with the key's values of the
    /// batch (in the order they came; none for a key without new values) and its state; it
    /// returns the new state, or `None` to remove the key. Every batch gives every key's state,
    /// in key order (in scale-out mode, by task and in key order within each, one part per
    /// task: see [`BatchInfo::task_runs`](crate::BatchInfo::task_runs)).
    pub fn update_state_by_key<S>(
        self,
        mut update: impl FnMut(Vec<V>, Option<S>) -> Option<S> + Send + 'static,
    ) -> DStream<(K, S)>
    where
        S: Clone + PartialEq + Send + Serialize + DeserializeOwned + 'static,
    {
        let scale = self.check_keyed_input("update_state_by_key");
        let given = GivenTasks::default();
        let gives = given.clone();
        self.stateful(KeyedState::<K, S>::new("update_state_by_key"), move |state, input, parts| {
            let tasks = tasks_of(state, input, parts.len(), scale);
            let mut values: HashMap<K, (i32, Vec<V>)> = HashMap::default();
            for (task, part) in tasks.into_iter().zip(parts) {
                for (key, value) in part {
                    let (first, values) = values.entry(key).or_insert_with(|| (task, Vec::new()));
                    if *first != task {
                        state.note_moved_key(*first, task);
                    }
                    values.push(value);
                }
            }
            let mut keys: Vec<K> = state.states().map(|(key, _)| key.clone()).chain(values.keys().cloned()).collect();
            keys.sort_unstable();
            keys.dedup();
            for key in keys {
                let (task, new_values) = values.remove(&key).map_or((None, Vec::new()), |(task, v)| (Some(task), v));
                let old = state.get(&key).cloned();
                let new = update(new_values, old.clone());
                if new != old {
                    state.set(task, key, new);
                }
            }
            let by_task = state.sorted_by_task().into_iter().map(|(task, k, s)| (task, (k.clone(), s.clone())));
            if !scale {
                return Some(vec![by_task.map(|(_, item)| item).collect()]);
            }
            let (tasks, parts) = task_parts(by_task);
            gives.give(input, tasks);
            Some(parts)
        })
        .giving_tasks(scale.then_some(given))
    }

    /// Spark's `mapWithState`: `f(time_ms, key, value, state)` is called for each item of the
    /// batch, in the order they came for each key, and may read, update or remove the key's
    /// state; what it returns is the output, in the items' order. With a `timeout`, a key with a
    /// state that gets no value for that long (in batch time) is timed out: `f` is called once
    /// more with no value and [`KeyState::is_timing_out`], after the batch's items, in key
    /// order, and its state is removed (batch time is the wall clock's in scale-out mode, so a
    /// timeout means the same on every process; see [`BatchInput::time_ms`](crate::BatchInput)).
    /// In scale-out mode the output is in parts by task (see
    /// [`BatchInfo::task_runs`](crate::BatchInfo::task_runs)): each task's items' outputs in
    /// their order, then its timeouts in key order.
    /// A large batch's keys are worked through on several threads at once (different keys,
    /// never one key on two threads), so `f` is `Fn + Sync`, as Spark's function is.
    pub fn map_with_state<S, U>(
        self,
        timeout: Option<Duration>,
        f: impl Fn(u64, &K, Option<V>, &mut KeyState<S>) -> Option<U> + Send + Sync + 'static,
    ) -> DStream<U>
    where
        S: Clone + Send + Serialize + DeserializeOwned + 'static,
        U: Send + 'static,
    {
        let timeout_ms = timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
        let scale = self.check_keyed_input("map_with_state");
        let given = GivenTasks::default();
        let gives = given.clone();
        // Each key's state and the batch time it last got a value.
        self.stateful(KeyedState::<K, (S, u64)>::new("map_with_state"), move |state, input, parts| {
            let now = input.time_ms;
            let tasks = tasks_of(state, input, parts.len(), scale);
            let mut out = map_items(state, parts, &tasks, now, &f);
            if let Some(timeout_ms) = timeout_ms {
                let mut expired: Vec<(i32, K)> = state
                    .task_states()
                    .filter(|(_, _, (_, last))| now.saturating_sub(*last) > timeout_ms)
                    .map(|(task, key, _)| (task, key.clone()))
                    .collect();
                expired.sort_unstable();
                for (task, key) in expired {
                    let mut key_state = KeyState { value: state.take(&key).map(|(s, _)| s), timing_out: true };
                    out.extend(f(now, &key, None, &mut key_state).map(|item| (task, item)));
                    state.set(None, key, None);
                }
            }
            if !scale {
                return Some(vec![out.into_iter().map(|(_, item)| item).collect()]);
            }
            // Each task's outputs together, in their order (a stable sort).
            out.sort_by_key(|(task, _)| *task);
            let (tasks, parts) = task_parts(out);
            gives.give(input, tasks);
            Some(parts)
        })
        .giving_tasks(scale.then_some(given))
    }
}

/// What a shard's part of a batch gave: outputs with their items' places and tasks, whether a state
/// changed or was removed, and a key whose records came from two tasks (its task, the other).
struct ShardOutcome<U> {
    out: Vec<(usize, i32, U)>,
    changed: bool,
    removed: bool,
    moved: Option<(i32, i32)>,
}

/// An item of `map_with_state` on its way to its key's shard: its place in the batch, its
/// task, its key and value.
type Item<K, V> = (usize, i32, K, V);

/// A part of `map_with_state`'s batch: the place of its first item, its task, its items.
type Numbered<K, V> = (usize, i32, Vec<(K, V)>);

/// `map_with_state`'s items: each to its key's shard (the parts side by side when the batch
/// is large), then the shards worked through side by side; the outputs in the items' order,
/// each with its item's task.
fn map_items<K: StateKey, V: Send, S: Send, U: Send>(
    state: &mut KeyedState<K, (S, u64)>,
    parts: crate::graph::Parts<(K, V)>,
    tasks: &[i32],
    now: u64,
    f: &(impl Fn(u64, &K, Option<V>, &mut KeyState<S>) -> Option<U> + Sync),
) -> Vec<(i32, U)> {
    let items: usize = parts.iter().map(Vec::len).sum();
    let parallel = items >= crate::pool::PARALLEL_FROM_ITEMS;
    let shards = state.shards.len();
    // Each part's items by shard, with their places in the batch.
    let mut next_place = 0;
    // Each part with the place of its first item and its task.
    let numbered: Vec<Numbered<K, V>> = parts
        .into_iter()
        .zip(tasks.iter().copied().chain(std::iter::repeat(0)))
        .map(|(part, task)| {
            let first = next_place;
            next_place += part.len();
            (first, task, part)
        })
        .collect();
    let router = &state.router;
    let split = par_map(numbered, parallel, &|(first, task, part): Numbered<K, V>| {
        // Room for a fair share and then some, so that the buckets seldom grow.
        let room = part.len() / shards + part.len() / 16 + 1;
        let mut buckets: Vec<Vec<Item<K, V>>> = (0..shards).map(|_| Vec::with_capacity(room)).collect();
        for (place, (key, value)) in (first..).zip(part) {
            if let Some(bucket) = buckets.get_mut(route(router, shards, &key)) {
                bucket.push((place, task, key, value));
            }
        }
        buckets
    });
    // Each shard's buckets in the parts' order: a key's items stay in the order they came.
    let mut by_shard: Vec<Vec<Vec<Item<K, V>>>> = (0..shards).map(|_| Vec::with_capacity(split.len())).collect();
    for buckets in split {
        for (shard, bucket) in by_shard.iter_mut().zip(buckets) {
            shard.push(bucket);
        }
    }
    let pairs: Vec<_> = state.shards.iter_mut().zip(by_shard).collect();
    let outcomes = on_each(pairs, parallel, |(shard, buckets)| map_shard(shard, buckets, now, f));
    let mut out: Vec<(usize, i32, U)> = Vec::new();
    for outcome in outcomes {
        state.any_dirty |= outcome.changed;
        state.any_removed |= outcome.removed;
        if let Some((was, now)) = outcome.moved {
            state.note_moved_key(was, now);
        }
        out.extend(outcome.out);
    }
    out.sort_unstable_by_key(|(place, _, _)| *place);
    out.into_iter().map(|(_, task, item)| (task, item)).collect()
}

/// One shard's items, in their order: one lookup each, the slot changed in place, and only a
/// new key inserted.
fn map_shard<K: StateKey, V, S, U>(
    shard: &mut Shard<K, (S, u64)>,
    buckets: Vec<Vec<Item<K, V>>>,
    now: u64,
    f: &impl Fn(u64, &K, Option<V>, &mut KeyState<S>) -> Option<U>,
) -> ShardOutcome<U> {
    let changed = buckets.iter().any(|b| !b.is_empty());
    let mut outcome = ShardOutcome { out: Vec::new(), changed, removed: false, moved: None };
    for (place, task, key, value) in buckets.into_iter().flatten() {
        match shard.get_mut(&key) {
            Some(slot) => {
                if slot.task != task {
                    outcome.moved.get_or_insert((slot.task, task));
                }
                let mut key_state = KeyState { value: slot.state.take().map(|(s, _)| s), timing_out: false };
                outcome.out.extend(f(now, &key, Some(value), &mut key_state).map(|u| (place, task, u)));
                outcome.removed |= key_state.value.is_none();
                slot.state = key_state.value.map(|value| (value, now));
                slot.dirty = true;
            }
            None => {
                let mut key_state = KeyState { value: None, timing_out: false };
                outcome.out.extend(f(now, &key, Some(value), &mut key_state).map(|u| (place, task, u)));
                if let Some(value) = key_state.value {
                    shard.insert(key, Slot { state: Some((value, now)), dirty: true, task });
                }
            }
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::lock;
    use crate::state::encode;
    use std::sync::{Arc, Mutex};

    fn change(task: i32, key: &str, value: Option<u64>) -> TaskChange {
        TaskChange::new(task, encode(&key.to_owned()).unwrap(), value.map(|v| encode(&v).unwrap()))
    }

    fn sorted(mut changes: Vec<TaskChange>) -> Vec<TaskChange> {
        changes.sort_by(|a, b| (a.task, &a.key).cmp(&(b.task, &b.key)));
        changes
    }

    #[test]
    fn changes_go_to_their_keys_tasks_and_restore_into_another_state() {
        let mut state = KeyedState::<String, u64>::new("update_state_by_key");
        state.set(Some(3), "a".into(), Some(1));
        state.set(Some(5), "b".into(), Some(2));
        let first = sorted(state.take_task_changes().unwrap());
        assert_eq!(first, vec![change(3, "a", Some(1)), change(5, "b", Some(2))]);
        assert_eq!(state.take_task_changes().unwrap(), Vec::new(), "nothing changed since");
        // A key's later change stays in its task even without records (`None`); a removal is a
        // tombstone.
        state.set(None, "a".into(), Some(7));
        state.set(None, "b".into(), None);
        let second = sorted(state.take_task_changes().unwrap());
        assert_eq!(second, vec![change(3, "a", Some(7)), change(5, "b", None)]);
        assert_eq!(state.len(), 1, "the removed key's slot is gone");

        // Another process restores task 3's changelog, in order: the last value wins.
        let mut moved = KeyedState::<String, u64>::new("update_state_by_key");
        for TaskChange { task, key, value } in first.into_iter().chain(second).filter(|c| c.task == 3) {
            moved.restore_task_entry(task, &key, value.as_deref()).unwrap();
        }
        assert_eq!(moved.sorted(), vec![(&"a".to_owned(), &7)]);
        assert_eq!(moved.take_task_changes().unwrap(), Vec::new(), "what was restored is no change");
        // Its later changes go to task 3 again.
        moved.set(None, "a".into(), Some(8));
        assert_eq!(moved.take_task_changes().unwrap(), vec![change(3, "a", Some(8))]);
    }

    #[test]
    fn dropping_tasks_drops_their_keys_only() {
        let mut state = KeyedState::<String, u64>::new("map_with_state");
        state.set(Some(0), "a".into(), Some(1));
        state.set(Some(1), "b".into(), Some(1));
        state.set(Some(2), "c".into(), Some(1));
        state.drop_tasks(&BTreeSet::from([0, 2]));
        assert_eq!(state.sorted(), vec![(&"b".to_owned(), &1)]);
    }

    #[test]
    fn a_key_in_two_partitions_fails_the_batch_with_why() {
        let mut state = KeyedState::<String, u64>::new("update_state_by_key");
        state.set(Some(0), "a".into(), Some(1));
        state.take_task_changes().unwrap();
        state.set(Some(4), "a".into(), Some(2));
        let error = state.take_task_changes().unwrap_err();
        assert!(error.contains("partitions 0 and 4") && error.contains("partitioned by the state's key"), "{error}");
    }

    #[test]
    fn damaged_changelog_records_are_errors_that_say_which_part() {
        let mut state = KeyedState::<String, u64>::new("update_state_by_key");
        let error = state.restore_task_entry(0, &[0xff, 0xff], None).unwrap_err();
        assert!(error.contains("key"), "{error}");
        let key = encode(&"a".to_owned()).unwrap();
        let error = state.restore_task_entry(0, &key, Some(&[0xff; 11])).unwrap_err();
        assert!(error.contains("value"), "{error}");
    }

    /// What a sink got of each batch: the items' task runs and the items.
    type Got<T> = Arc<Mutex<Vec<(Option<Vec<(i32, usize)>>, Vec<T>)>>>;

    fn runs<T>(got: &Got<T>) -> Vec<Option<Vec<(i32, usize)>>> {
        got.lock().unwrap().iter().map(|(runs, _)| runs.clone()).collect()
    }

    fn got<T: Send + 'static>(stream: DStream<T>) -> Got<T> {
        let got: Got<T> = Arc::default();
        let into = Arc::clone(&got);
        stream.foreach_batch(move |info, items| {
            into.lock().unwrap().push((info.task_runs.as_deref().map(<[_]>::to_vec), items));
            Ok(())
        });
        got
    }

    /// In scale-out mode the keyed operators give each task's items in a part of its own, and
    /// a sink downstream (after element-wise operators too) is told which task each run of its
    /// items is: per-task files need it. After an operator that gathers the tasks' items it is
    /// not known. Parts here are partitions 0, 1 and 2 (a test's batch has no sources named).
    #[test]
    fn in_scale_out_mode_keyed_outputs_come_by_task_and_sinks_are_told_which() {
        let graph = Arc::new(Mutex::new(crate::graph::Graph {
            interval_ms: 100,
            scale: true,
            group: Some("g".into()),
            ..crate::graph::Graph::default()
        }));
        let batches: Vec<crate::graph::Parts<(String, u64)>> = vec![
            vec![vec![("c".into(), 1), ("a".into(), 1)], vec![("b".into(), 1)], vec![("d".into(), 1), ("e".into(), 1)]],
            vec![vec![], vec![("b".into(), 1)], vec![("e".into(), 1)]],
        ];
        let source = || {
            let batches = batches.clone();
            DStream::new(
                Arc::clone(&graph),
                Box::new(move |input: &crate::graph::BatchInput| batches.get(input.batch_id as usize).cloned()),
            )
            .aligned_as(crate::stream::Aligned::Source)
        };
        let read = got(source().map(|(key, _)| key));
        let totals = got(source().update_state_by_key(|new: Vec<u64>, total: Option<u64>| {
            Some(total.unwrap_or(0) + new.iter().sum::<u64>())
        }));
        let mapped = got(source().map_with_state(None, |_, key: &String, _, state: &mut KeyState<u64>| {
            let count = state.get().copied().unwrap_or(0) + 1;
            state.update(count);
            Some(format!("{key}{count}"))
        }));
        let after = got(source()
            .map_with_state(None, |_, key: &String, _, _: &mut KeyState<u8>| Some(key.clone()))
            .filter(|k| k != "a"));
        let counted = got(source().update_state_by_key(|_: Vec<u64>, _: Option<u64>| Some(1)).count());
        let mut outputs = std::mem::take(&mut lock(&graph).outputs);
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        for batch_id in 0..2 {
            let records = crate::graph::SourceRecords::default();
            let input = crate::graph::BatchInput::new(batch_id, 100, false, records, None).of_group(Some("g".into()));
            for output in &mut outputs {
                output.compute(&input);
                runtime.block_on(output.write()).unwrap();
            }
        }
        assert_eq!(runs(&read), [Some(vec![(0, 2), (1, 1), (2, 2)]), Some(vec![(1, 1), (2, 1)])]);
        // Every key's state each batch, by task, each task's keys in order.
        let totals = totals.lock().unwrap();
        assert_eq!(totals[0].0, Some(vec![(0, 2), (1, 1), (2, 2)]));
        let keys: Vec<(&str, u64)> = totals[1].1.iter().map(|(k, t)| (k.as_str(), *t)).collect();
        assert_eq!(keys, [("a", 1), ("c", 1), ("b", 2), ("d", 1), ("e", 2)]);
        assert_eq!(totals[1].0, Some(vec![(0, 2), (1, 1), (2, 2)]), "a task without records keeps its keys");
        let mapped = mapped.lock().unwrap();
        assert_eq!(mapped[0].1, ["c1", "a1", "b1", "d1", "e1"], "the items' order");
        assert_eq!(mapped[1], (Some(vec![(1, 1), (2, 1)]), vec!["b2".to_owned(), "e2".to_owned()]));
        assert_eq!(runs(&after)[0], Some(vec![(0, 1), (1, 1), (2, 2)]), "kept by element-wise operators");
        assert_eq!(runs(&counted), [None, None], "a count is the process's, of no task");
    }
}
