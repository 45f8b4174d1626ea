//! A session's joined channels, by topic.
//!
//! A vector of boxed channels sorted by topic: lookups are a binary search, a join or a leave
//! moves pointers. Each channel holds its own topic, so the topic is kept once. An idle
//! connection usually has one channel: the table then takes one allocation of four pointers,
//! 32 bytes (a hash map's first allocation, with the topic as its key, took 152 bytes and a
//! second copy of the topic). A connection has at most `--max-channels-per-connection`
//! channels; leaving them all takes them from the end, so no removal moves the others.

use super::Joined;

/// What the table is keyed by.
pub(super) trait Topic {
    /// The full topic, `realtime:<name>`.
    fn topic(&self) -> &str;
}

impl Topic for Joined {
    fn topic(&self) -> &str {
        &self.topic
    }
}

/// The joined channels of one session.
#[derive(Debug)]
pub(super) struct Channels<T = Joined>(Vec<Box<T>>);

impl<T> Default for Channels<T> {
    fn default() -> Self {
        Channels(Vec::new())
    }
}

impl<T: Topic> Channels<T> {
    fn find(&self, topic: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|joined| joined.topic().cmp(topic))
    }

    /// The channel of `topic`, if joined.
    pub(super) fn get(&self, topic: &str) -> Option<&T> {
        self.find(topic).ok().map(|i| &*self.0[i])
    }

    /// The channel of `topic`, if joined.
    pub(super) fn get_mut(&mut self, topic: &str) -> Option<&mut T> {
        self.find(topic).ok().map(|i| &mut *self.0[i])
    }

    /// Whether `topic` is joined.
    pub(super) fn contains_key(&self, topic: &str) -> bool {
        self.find(topic).is_ok()
    }

    /// Adds `joined` under its topic; returns the channel of the same topic it replaces.
    pub(super) fn insert(&mut self, joined: Box<T>) -> Option<Box<T>> {
        match self.find(joined.topic()) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i], joined)),
            Err(i) => {
                self.0.insert(i, joined);
                None
            }
        }
    }

    /// Removes the channel of `topic`. The table gives its room back when it falls to a
    /// quarter of it.
    pub(super) fn remove(&mut self, topic: &str) -> Option<Box<T>> {
        let i = self.find(topic).ok()?;
        let joined = self.0.remove(i);
        if self.0.len() * 4 <= self.0.capacity() {
            self.0.shrink_to(self.0.len() * 2);
        }
        Some(joined)
    }

    /// How many channels are joined.
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no channel is joined.
    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The joined topics, in order.
    pub(super) fn topics(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|joined| joined.topic())
    }

    /// The joined channels, in the order of their topics.
    pub(super) fn values(&self) -> impl Iterator<Item = &T> {
        self.0.iter().map(|joined| &**joined)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug)]
    struct Entry {
        topic: String,
        value: u32,
    }

    impl Topic for Entry {
        fn topic(&self) -> &str {
            &self.topic
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u32),
        Remove(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..24, any::<u32>()).prop_map(|(t, v)| Op::Insert(t, v)),
            (0u8..24).prop_map(Op::Remove),
        ]
    }

    proptest! {
        /// Any sequence of joins and leaves leaves the table as a sorted map would be: the
        /// same channels, found by their topics, in the order of their topics, a replaced
        /// channel returned, and no more room than four times what it holds (beyond four).
        #[test]
        fn the_table_behaves_as_a_map(ops in proptest::collection::vec(op(), 0..200)) {
            let mut table: Channels<Entry> = Channels::default();
            let mut model: BTreeMap<String, u32> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Insert(t, value) => {
                        let topic = format!("realtime:room-{t}");
                        let replaced = table.insert(Box::new(Entry { topic: topic.clone(), value }));
                        prop_assert_eq!(replaced.map(|e| e.value), model.insert(topic, value));
                    }
                    Op::Remove(t) => {
                        let topic = format!("realtime:room-{t}");
                        let removed = table.remove(&topic);
                        prop_assert_eq!(removed.map(|e| e.value), model.remove(&topic));
                        prop_assert!(table.0.capacity() <= (table.len() * 4).max(4));
                    }
                }
                prop_assert_eq!(table.len(), model.len());
                prop_assert_eq!(table.is_empty(), model.is_empty());
                let topics: Vec<&str> = table.topics().collect();
                let expected: Vec<&str> = model.keys().map(String::as_str).collect();
                prop_assert_eq!(topics, expected);
                for t in 0..24u8 {
                    let topic = format!("realtime:room-{t}");
                    prop_assert_eq!(table.get(&topic).map(|e| e.value), model.get(&topic).copied());
                    prop_assert_eq!(table.contains_key(&topic), model.contains_key(&topic));
                }
            }
        }
    }

    #[test]
    fn a_channel_found_mutably_is_changed_in_place() {
        let mut table: Channels<Entry> = Channels::default();
        for t in ["realtime:b", "realtime:a", "realtime:c"] {
            table.insert(Box::new(Entry {
                topic: t.into(),
                value: 0,
            }));
        }
        table.get_mut("realtime:b").unwrap().value = 7;
        let values: Vec<u32> = table.values().map(|e| e.value).collect();
        assert_eq!(values, [0, 7, 0]);
        assert!(table.get_mut("realtime:d").is_none());
    }
}
