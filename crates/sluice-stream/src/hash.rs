//! The engine's hash maps: foldhash, seeded per map (fast on short keys such as item names,
//! and still not predictable by whoever writes the records). Nothing the engine gives out
//! depends on their order: keyed results, state and deltas are sorted by key.

/// A hash map with the engine's hasher.
pub(crate) type HashMap<K, V> = hashbrown::HashMap<K, V, foldhash::fast::RandomState>;

/// A hash set with the engine's hasher.
pub(crate) type HashSet<K> = hashbrown::HashSet<K, foldhash::fast::RandomState>;
