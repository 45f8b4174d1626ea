//! Presence: who is in a channel, per topic, in the shape Phoenix presence gives clients.
//!
//! Owns one topic's presence [`State`]: entries keyed by their `phx_ref`, each with the
//! membership's presence key, its meta (the tracked payload plus `phx_ref`, and `phx_ref_prev`
//! after an update) and the node that holds the membership. The broadcast hub
//! ([`crate::broadcast`]) keeps one `State` per topic, feeds it local tracks and untracks (from
//! sessions) and remote diffs and reconciliations (from the cluster bus), and fans the [`Diff`]s
//! it returns out to the topic's members as `presence_diff` (docs/protocol.md 9.2). Every operation
//! returns only what actually changed, so applying the same remote diff twice, or a diff that a
//! reconciliation already covered, changes nothing and sends nothing.
//!
//! A node holds the full presence state of every topic of the cluster (entries of other nodes
//! arrive over the bus and are rebuilt from the durable `realtime.presences` rows after a bus
//! gap), so a join is answered from memory. Entries held by this node are the only ones it
//! writes; it never loads them back from the database.

use std::collections::HashMap;
use std::sync::Arc;

use rand::RngCore;
use serde_json::{Map, Value};

use crate::conn::ConnId;

/// Bytes of randomness in a `phx_ref` (16 characters once encoded).
const REF_BYTES: usize = 12;

/// A new `phx_ref`: 96 random bits in URL-safe base64, unique across nodes and restarts
/// without coordination.
pub fn new_ref() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bytes = [0u8; REF_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    let mut out = String::with_capacity(REF_BYTES / 3 * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16) | (u32::from(chunk[1]) << 8) | u32::from(chunk[2]);
        for shift in [18, 12, 6, 0] {
            out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
        }
    }
    out
}

/// One tracked presence.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Its `phx_ref`.
    pub phx_ref: String,
    /// The membership's presence key.
    pub key: String,
    /// What clients see: the tracked payload plus `phx_ref` (and `phx_ref_prev`).
    pub meta: Map<String, Value>,
    /// The node that holds the membership.
    pub node: Arc<str>,
    /// Arrival order, so metas of one key are listed oldest first.
    seq: u64,
    /// Held by a membership of this node.
    local: bool,
    /// Serialized size of `meta`, for the channel's presence bound.
    size: usize,
}

/// A presence row as stored or carried over the bus: `(phx_ref, key, meta)`.
pub type Remote = (String, String, Map<String, Value>);

/// What one operation changed: `presence_diff` joins and leaves, in operation order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Diff {
    /// Entries added or replaced.
    pub joins: Vec<Entry>,
    /// Entries removed.
    pub leaves: Vec<Entry>,
}

impl Diff {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.joins.is_empty() && self.leaves.is_empty()
    }

    /// The `presence_diff` payload: `{"joins": {key: {"metas": […]}}, "leaves": {…}}`.
    pub fn to_json(&self) -> String {
        let mut diff = Map::new();
        diff.insert("joins".to_owned(), Value::Object(group(self.joins.iter())));
        diff.insert(
            "leaves".to_owned(),
            Value::Object(group(self.leaves.iter())),
        );
        Value::Object(diff).to_string()
    }
}

/// The presence of one local membership.
#[derive(Debug, Clone)]
struct Local {
    /// Its entry.
    phx_ref: String,
    /// The payload as tracked (a track of the same payload is a no-op).
    payload: Map<String, Value>,
}

/// How much presence one channel may hold.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Most entries.
    pub entries: usize,
    /// Most bytes of tracked payloads and keys, summed.
    pub bytes: usize,
}

/// One topic's presence, cluster-wide.
#[derive(Debug, Default)]
pub struct State {
    entries: HashMap<String, Entry>,
    /// Serialized size of every entry's `meta`, summed.
    bytes: usize,
    /// Entries held by memberships of this node, by connection.
    local: HashMap<ConnId, Local>,
    next_seq: u64,
}

impl State {
    /// Whether the topic has no presence at all.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Tracks `payload` for the local membership of `owner` under `key` (docs/protocol.md 9.1). A
    /// first track joins; a track with another payload replaces the entry (new `phx_ref`, the
    /// old one in `phx_ref_prev`); the same payload again changes nothing (`None`).
    pub fn track(
        &mut self,
        owner: ConnId,
        node: &Arc<str>,
        key: &str,
        payload: Map<String, Value>,
    ) -> Option<Diff> {
        let mut diff = Diff::default();
        let mut meta = payload.clone();
        if let Some(old) = self.local.get(&owner) {
            if old.payload == payload {
                return None;
            }
            let old_ref = old.phx_ref.clone();
            if let Some(old) = self.remove(&old_ref) {
                diff.leaves.push(old);
            }
            meta.insert("phx_ref_prev".to_owned(), Value::from(old_ref));
        }
        let phx_ref = new_ref();
        meta.insert("phx_ref".to_owned(), Value::from(phx_ref.clone()));
        let entry = self.insert(
            phx_ref.clone(),
            key.to_owned(),
            meta,
            Arc::clone(node),
            true,
        );
        diff.joins.push(entry);
        self.local.insert(owner, Local { phx_ref, payload });
        Some(diff)
    }

    /// Removes the local membership's entry, if it has one.
    pub fn untrack(&mut self, owner: ConnId) -> Option<Diff> {
        let local = self.local.remove(&owner)?;
        let entry = self.remove(&local.phx_ref)?;
        Some(Diff {
            joins: Vec::new(),
            leaves: vec![entry],
        })
    }

    /// Applies a diff that `node` published: joins add or replace entries, leaves (by
    /// `phx_ref`) remove them. Returns what actually changed.
    pub fn apply(&mut self, node: &Arc<str>, joins: Vec<Remote>, leaves: &[String]) -> Diff {
        let mut diff = Diff::default();
        for (phx_ref, key, meta) in joins {
            if self.is_local(&phx_ref) {
                continue;
            }
            if let Some(entry) = self.join_remote(phx_ref, key, meta, node) {
                diff.joins.push(entry);
            }
        }
        for phx_ref in leaves {
            if self.is_local(phx_ref) {
                continue;
            }
            if let Some(entry) = self.remove(phx_ref) {
                diff.leaves.push(entry);
            }
        }
        diff
    }

    /// Makes the entries of other nodes that `covers` match `rows` (the durable rows of those
    /// nodes for this topic, as `(node, row)`): entries missing from `rows` leave, rows not
    /// present (or with another meta) join. Local entries are never touched.
    pub fn reconcile(
        &mut self,
        covers: impl Fn(&str) -> bool,
        rows: Vec<(Arc<str>, Remote)>,
    ) -> Diff {
        let mut diff = Diff::default();
        let wanted: std::collections::HashSet<&str> =
            rows.iter().map(|(_, (r, _, _))| r.as_str()).collect();
        let gone: Vec<String> = self
            .entries
            .values()
            .filter(|e| !e.local && covers(&e.node) && !wanted.contains(e.phx_ref.as_str()))
            .map(|e| e.phx_ref.clone())
            .collect();
        for phx_ref in gone {
            if let Some(entry) = self.remove(&phx_ref) {
                diff.leaves.push(entry);
            }
        }
        for (node, (phx_ref, key, meta)) in rows {
            if self.is_local(&phx_ref) {
                continue;
            }
            if let Some(entry) = self.join_remote(phx_ref, key, meta, &node) {
                diff.joins.push(entry);
            }
        }
        diff
    }

    /// The `presence_state` payload: `{key: {"metas": […]}}`.
    pub fn to_json(&self) -> String {
        Value::Object(group(self.entries.values())).to_string()
    }

    /// The entries held by this node's memberships (to rewrite its durable rows).
    pub fn local_entries(&self) -> impl Iterator<Item = &Entry> {
        self.local
            .values()
            .filter_map(|local| self.entries.get(&local.phx_ref))
    }

    fn is_local(&self, phx_ref: &str) -> bool {
        self.entries.get(phx_ref).is_some_and(|e| e.local)
    }

    /// Adds or replaces a remote entry; `None` when the same entry is already there.
    fn join_remote(
        &mut self,
        phx_ref: String,
        key: String,
        meta: Map<String, Value>,
        node: &Arc<str>,
    ) -> Option<Entry> {
        if let Some(existing) = self.entries.get(&phx_ref) {
            if existing.key == key && existing.meta == meta && existing.node == *node {
                return None;
            }
        }
        Some(self.insert(phx_ref, key, meta, Arc::clone(node), false))
    }

    fn insert(
        &mut self,
        phx_ref: String,
        key: String,
        meta: Map<String, Value>,
        node: Arc<str>,
        local: bool,
    ) -> Entry {
        self.next_seq += 1;
        let size = serde_json::to_string(&meta).map_or(0, |m| m.len()) + key.len();
        let entry = Entry {
            phx_ref: phx_ref.clone(),
            key,
            meta,
            node,
            seq: self.next_seq,
            local,
            size,
        };
        self.bytes += size;
        if let Some(old) = self.entries.insert(phx_ref, entry.clone()) {
            self.bytes -= old.size;
        }
        entry
    }

    fn remove(&mut self, phx_ref: &str) -> Option<Entry> {
        let entry = self.entries.remove(phx_ref)?;
        self.bytes -= entry.size;
        Some(entry)
    }

    /// Whether the local membership of `owner` may track `payload` of `size` bytes under
    /// `key` within `bounds` (entries and bytes of the whole channel, every node's included).
    /// A membership replacing its own entry is judged without the entry it replaces.
    pub fn admits(&self, owner: ConnId, key: &str, size: usize, bounds: Bounds) -> bool {
        let replaced = self
            .local
            .get(&owner)
            .and_then(|l| self.entries.get(&l.phx_ref));
        let entries = self.entries.len() - usize::from(replaced.is_some());
        let bytes = self.bytes - replaced.map_or(0, |e| e.size);
        entries < bounds.entries && bytes + size + key.len() <= bounds.bytes
    }
}

/// Groups entries by key, metas oldest first: `{key: {"metas": [meta, …]}}`.
fn group<'a>(entries: impl Iterator<Item = &'a Entry>) -> Map<String, Value> {
    let mut sorted: Vec<&Entry> = entries.collect();
    sorted.sort_by_key(|e| e.seq);
    let mut by_key: Map<String, Value> = Map::new();
    for entry in sorted {
        let slot = by_key
            .entry(entry.key.clone())
            .or_insert_with(|| serde_json::json!({"metas": []}));
        if let Some(Value::Array(metas)) = slot.get_mut("metas") {
            metas.push(Value::Object(entry.meta.clone()));
        }
    }
    by_key
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    fn node(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    #[test]
    fn refs_are_sixteen_url_safe_characters_and_distinct() {
        let a = new_ref();
        let b = new_ref();
        assert_eq!(a.len(), 16);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_ne!(a, b);
    }

    /// Guards the Phoenix shape realtime-js and realtime-py parse: metas carry `phx_ref` and
    /// the payload's keys.
    #[test]
    fn track_joins_with_a_meta_of_payload_and_ref() {
        let mut s = State::default();
        let me = node("a");
        let diff = s
            .track(1, &me, "alice", map(json!({"user": "alice"})))
            .unwrap();
        assert!(diff.leaves.is_empty());
        let meta = &diff.joins[0].meta;
        assert_eq!(meta["user"], "alice");
        let phx_ref = meta["phx_ref"].as_str().unwrap().to_owned();
        let state: Value = serde_json::from_str(&s.to_json()).unwrap();
        assert_eq!(
            state,
            json!({"alice": {"metas": [{"user": "alice", "phx_ref": phx_ref}]}})
        );
        let diff: Value = serde_json::from_str(&diff.to_json()).unwrap();
        assert_eq!(diff["leaves"], json!({}));
        assert_eq!(diff["joins"]["alice"]["metas"][0]["phx_ref"], phx_ref);
    }

    #[test]
    fn tracking_the_same_payload_again_is_a_no_op() {
        let mut s = State::default();
        let me = node("a");
        s.track(1, &me, "k", map(json!({"x": 1}))).unwrap();
        assert!(s.track(1, &me, "k", map(json!({"x": 1}))).is_none());
    }

    #[test]
    fn an_update_replaces_the_entry_and_keeps_the_old_ref_as_prev() {
        let mut s = State::default();
        let me = node("a");
        let first = s.track(1, &me, "k", map(json!({"x": 1}))).unwrap();
        let old_ref = first.joins[0].phx_ref.clone();
        let second = s.track(1, &me, "k", map(json!({"x": 2}))).unwrap();
        assert_eq!(second.leaves[0].phx_ref, old_ref);
        assert_eq!(second.joins[0].meta["phx_ref_prev"], old_ref.as_str());
        assert_eq!(second.joins[0].meta["x"], 2);
        let state: Value = serde_json::from_str(&s.to_json()).unwrap();
        assert_eq!(state["k"]["metas"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn memberships_sharing_a_key_each_add_a_meta_oldest_first() {
        let mut s = State::default();
        let me = node("a");
        s.track(1, &me, "k", map(json!({"n": 1}))).unwrap();
        s.track(2, &me, "k", map(json!({"n": 2}))).unwrap();
        let state: Value = serde_json::from_str(&s.to_json()).unwrap();
        let metas = state["k"]["metas"].as_array().unwrap();
        assert_eq!(metas.len(), 2);
        assert_eq!(metas[0]["n"], 1);
        assert_eq!(metas[1]["n"], 2);
        let diff = s.untrack(1).unwrap();
        assert_eq!(diff.leaves[0].meta["n"], 1);
        assert!(s.untrack(1).is_none(), "untrack twice changes nothing");
    }

    /// Guards against duplicate or replayed bus messages producing diffs.
    #[test]
    fn remote_diffs_are_idempotent() {
        let mut s = State::default();
        let b = node("b");
        let join = (
            "r1".to_owned(),
            "bob".to_owned(),
            map(json!({"phx_ref": "r1"})),
        );
        let diff = s.apply(&b, vec![join.clone()], &[]);
        assert_eq!(diff.joins.len(), 1);
        assert!(s.apply(&b, vec![join], &[]).is_empty());
        let diff = s.apply(&b, Vec::new(), &["r1".to_owned()]);
        assert_eq!(diff.leaves.len(), 1);
        assert!(s.apply(&b, Vec::new(), &["r1".to_owned()]).is_empty());
        assert!(s.is_empty());
    }

    /// Guards node-loss cleanup and gap recovery: only the covered node's entries change, and
    /// local entries are never removed by what the database says.
    #[test]
    fn reconcile_touches_only_covered_remote_entries() {
        let mut s = State::default();
        let (me, b, c) = (node("a"), node("b"), node("c"));
        s.track(1, &me, "mine", map(json!({}))).unwrap();
        s.apply(
            &b,
            vec![("rb".into(), "bob".into(), map(json!({"phx_ref": "rb"})))],
            &[],
        );
        s.apply(
            &c,
            vec![("rc".into(), "cat".into(), map(json!({"phx_ref": "rc"})))],
            &[],
        );
        // Node b is gone: no rows for it.
        let diff = s.reconcile(|n| n == "b", Vec::new());
        assert_eq!(diff.leaves.len(), 1);
        assert_eq!(diff.leaves[0].key, "bob");
        assert!(diff.joins.is_empty());
        // Every other node, from rows: c is unchanged, d appears.
        let d = node("d");
        let rows = vec![
            (
                c.clone(),
                ("rc".into(), "cat".into(), map(json!({"phx_ref": "rc"}))),
            ),
            (
                d,
                ("rd".into(), "dan".into(), map(json!({"phx_ref": "rd"}))),
            ),
        ];
        let diff = s.reconcile(|n| n != "a", rows);
        assert!(diff.leaves.is_empty());
        assert_eq!(diff.joins.len(), 1);
        assert_eq!(diff.joins[0].key, "dan");
        let state: Value = serde_json::from_str(&s.to_json()).unwrap();
        assert!(state.get("mine").is_some());
        assert_eq!(s.local_entries().count(), 1);
    }
}
