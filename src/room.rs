//! Maps that give their room back. A hash map keeps its capacity when entries leave, so a map of
//! connections or channels would hold, for good, the room of its busiest moment: a map of
//! 192-byte entries that once held 15,000 keeps 32,768 slots, 6.0 MiB, after they are gone.
//! After a removal, a map at most a quarter full shrinks; the next shrink needs the map to fall
//! to a quarter of its new room again, so the rehashing stays a small, amortized cost.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash};

use dashmap::DashMap;

/// Maps with less room than this are left as they are.
const KEEP: usize = 64;

/// The room to shrink to: twice `len` (at least [`KEEP`]), when `capacity` is more than twice
/// that, so at most a quarter full. A shrunk collection has less than twice the room asked
/// for, so the next removal does not shrink it again.
fn shrunk_room(len: usize, capacity: usize) -> Option<usize> {
    let room = (len * 2).max(KEEP);
    (capacity > room * 2).then_some(room)
}

/// Shrinks `map` when it is at most a quarter full ([`shrunk_room`]).
pub fn give_back<K: Eq + Hash, V, S: BuildHasher>(map: &mut HashMap<K, V, S>) {
    if let Some(room) = shrunk_room(map.len(), map.capacity()) {
        map.shrink_to(room);
    }
}

/// [`give_back`] for a set.
pub fn give_back_set<T: Eq + Hash, S: BuildHasher>(set: &mut HashSet<T, S>) {
    if let Some(room) = shrunk_room(set.len(), set.capacity()) {
        set.shrink_to(room);
    }
}

/// Shrinks each shard of `map` to its length when the whole is at most a quarter full.
pub fn give_back_shared<K: Eq + Hash, V, S: BuildHasher + Clone>(map: &DashMap<K, V, S>) {
    let capacity = map.capacity();
    if capacity > KEEP && map.len() * 4 <= capacity {
        map.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_emptied_after_a_peak_gives_its_room_back() {
        let mut map = HashMap::new();
        for i in 0..100_000u64 {
            map.insert(i, [0u8; 64]);
        }
        let peak = map.capacity();
        for i in 0..100_000u64 {
            map.remove(&i);
            give_back(&mut map);
        }
        assert!(map.capacity() < KEEP * 2, "{} of {peak}", map.capacity());

        let mut set = HashSet::new();
        for i in 0..100_000u64 {
            set.insert(i);
        }
        let peak = set.capacity();
        for i in 0..100_000u64 {
            set.remove(&i);
            give_back_set(&mut set);
        }
        assert!(set.capacity() < KEEP * 2, "{} of {peak}", set.capacity());

        let shared = DashMap::new();
        for i in 0..100_000u64 {
            shared.insert(i, [0u8; 64]);
        }
        let peak = shared.capacity();
        for i in 0..100_000u64 {
            shared.remove(&i);
            give_back_shared(&shared);
        }
        assert!(
            shared.capacity() <= peak / 100,
            "{} of {peak}",
            shared.capacity()
        );
    }

    #[test]
    fn a_map_in_use_keeps_its_room() {
        let mut map = HashMap::new();
        for i in 0..1_000u64 {
            map.insert(i, ());
        }
        let room = map.capacity();
        // Half gone: still more than a quarter full, the room is kept (the capacity reported
        // moves a little with the removed entries' marks, not with a reallocation).
        for i in 0..500u64 {
            map.remove(&i);
            give_back(&mut map);
        }
        assert!(
            map.capacity() * 10 >= room * 9,
            "{} of {room}",
            map.capacity()
        );
    }
}
