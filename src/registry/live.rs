//! What this node really serves: the registry rows of its open channels and the connection
//! slots of its open sockets, as the writer learned them from the sessions' reports. It is the
//! authority for this node's own rows and slots: when the database lost them (the node was
//! declared lost while cut from it), they are written again from here ([`super::reregister`]).
//!
//! Cost, held by the writer task only: per open channel, a [`LiveRow`] of 96 bytes with its
//! texts in one buffer (subscription id, channel name, component, filters as compact JSON,
//! address), and a pointer and a control byte in the set, which has room for up to about twice
//! as many as it holds; per open connection, a 32-byte entry in the slot map. Kept as a
//! [`JoinRow`], a channel took four or five allocations and a 192-byte entry in a map (at 15,000
//! channels, 32,768 slots: 6.0 MiB).

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use uuid::Uuid;

use super::JoinRow;

/// An open channel's registry row as this node keeps it: what is fixed, and its texts in one
/// buffer. The texts' ends are kept as 32-bit offsets: texts of more than 4 GiB together (a
/// join frame that large needs `--max-frame-bytes` set past 4 GB) would be read back cut.
#[derive(Debug)]
pub(super) struct LiveRow {
    /// The row's id.
    pub(super) id: Uuid,
    /// The connection.
    pub(super) connection_id: Uuid,
    user_id: Option<Uuid>,
    created_at: DateTime<Utc>,
    /// Where the subscription id, the channel name, the component and the filters end in
    /// `text`; the address is the rest.
    ends: [u32; 4],
    /// Whether the row has a component (an empty one is kept as such).
    has_component: bool,
    text: Box<str>,
}

// What the module's cost above says; a field added here is paid once per open channel.
const _: () = assert!(std::mem::size_of::<LiveRow>() <= 96);

impl LiveRow {
    fn new(row: &JoinRow) -> LiveRow {
        let component = row.component_name.as_deref().unwrap_or("");
        let parts = [
            row.subscription_id.as_str(),
            row.channel_name.as_str(),
            component,
            row.table_filters.get(),
        ];
        let mut text = String::with_capacity(
            parts.iter().map(|p| p.len()).sum::<usize>() + row.remote_addr.len(),
        );
        let mut ends = [0; 4];
        for (end, part) in ends.iter_mut().zip(parts) {
            text.push_str(part);
            *end = u32::try_from(text.len()).unwrap_or(u32::MAX);
        }
        text.push_str(&row.remote_addr);
        LiveRow {
            id: row.id,
            connection_id: row.connection_id,
            user_id: row.user_id,
            created_at: row.created_at,
            ends,
            has_component: row.component_name.is_some(),
            text: text.into_boxed_str(),
        }
    }

    /// Text `i` (0: subscription id, 1: channel name, 2: component, 3: filters, 4: address).
    fn part(&self, i: usize) -> &str {
        debug_assert!(i <= self.ends.len());
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        let end = self.ends.get(i).map_or(self.text.len(), |e| *e as usize);
        self.text.get(start..end).unwrap_or("")
    }

    /// The row as joined, to be written again.
    pub(super) fn to_row(&self) -> JoinRow {
        JoinRow {
            id: self.id,
            subscription_id: self.part(0).to_owned(),
            channel_name: self.part(1).to_owned(),
            user_id: self.user_id,
            component_name: self.has_component.then(|| self.part(2).to_owned()),
            // Valid JSON when it was kept; read back the same.
            table_filters: RawValue::from_string(self.part(3).to_owned())
                .unwrap_or_else(|_| RawValue::NULL.to_owned()),
            connection_id: self.connection_id,
            remote_addr: self.part(4).to_owned(),
            created_at: self.created_at,
        }
    }
}

/// A row in the set, found by its id.
#[derive(Debug)]
struct Entry(Box<LiveRow>);

impl Borrow<Uuid> for Entry {
    fn borrow(&self) -> &Uuid {
        &self.0.id
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Entry) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for Entry {}

impl Hash for Entry {
    // As the id's own hash: the set is searched by id.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.id.hash(state);
    }
}

/// A slot held by an open connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LiveSlot {
    /// The slot number.
    pub(super) slot: i32,
    /// Order of acquisition on this node: larger is newer.
    pub(super) seq: u64,
}

/// The open channels and held slots of this node.
#[derive(Debug, Default)]
pub(super) struct Live {
    /// Active rows, by row id.
    rows: HashSet<Entry>,
    /// Held slots, by connection.
    pub(super) slots: HashMap<Uuid, LiveSlot>,
    next_seq: u64,
}

impl Live {
    /// A channel was joined.
    pub(super) fn joined(&mut self, row: &JoinRow) {
        self.rows.replace(Entry(Box::new(LiveRow::new(row))));
    }

    /// A channel's token now names `user_id`.
    pub(super) fn user_changed(&mut self, id: Uuid, user_id: Option<Uuid>) {
        if let Some(mut entry) = self.rows.take(&id) {
            entry.0.user_id = user_id;
            self.rows.insert(entry);
        }
    }

    /// The open channels' rows.
    pub(super) fn rows(&self) -> impl Iterator<Item = &LiveRow> {
        self.rows.iter().map(|e| &*e.0)
    }

    /// A channel ended.
    pub(super) fn left(&mut self, id: Uuid) {
        self.rows.remove(&id);
        crate::room::give_back_set(&mut self.rows);
    }

    /// `connection` took `slot`.
    pub(super) fn slot_taken(&mut self, slot: i32, connection: Uuid) {
        self.next_seq += 1;
        let seq = self.next_seq;
        self.slots.insert(connection, LiveSlot { slot, seq });
    }

    /// `connection` ends; returns the slot it holds now (it may have changed at a
    /// re-registration), or `reported` when it is not known here.
    pub(super) fn slot_released(&mut self, reported: i32, connection: Uuid) -> i32 {
        let held = self.slots.remove(&connection);
        crate::room::give_back(&mut self.slots);
        held.map_or(reported, |held| held.slot)
    }

    /// Held slots as `(slot, connection)`, oldest acquisition first.
    pub(super) fn slots_by_age(&self) -> Vec<(i32, Uuid)> {
        let mut all: Vec<(u64, i32, Uuid)> = self
            .slots
            .iter()
            .map(|(c, s)| (s.seq, s.slot, *c))
            .collect();
        all.sort_unstable();
        all.into_iter().map(|(_, slot, c)| (slot, c)).collect()
    }
}

/// Which connections keep a slot when only `free` of the `slotless` could get one: the newest
/// connections lose theirs, so that the oldest sessions are kept. `by_age` is every connection,
/// oldest first; `slotless` those without a slot now. Returns `(victims, moves)`: the
/// connections to close, and the slots to hand from a victim to an older connection without
/// one, as `(slot, victim, kept)`.
pub(super) fn reclaim(
    by_age: &[(i32, Uuid)],
    slotless: &HashSet<Uuid>,
    slots: &HashMap<Uuid, i32>,
) -> (Vec<Uuid>, Vec<(i32, Uuid, Uuid)>) {
    let keep = by_age.len().saturating_sub(slotless.len());
    let victims: Vec<Uuid> = by_age[keep..].iter().map(|(_, c)| *c).collect();
    let donors = victims
        .iter()
        .filter_map(|v| slots.get(v).map(|s| (*s, *v)));
    let needy = by_age[..keep]
        .iter()
        .map(|(_, c)| *c)
        .filter(|c| slotless.contains(c));
    let moves = donors
        .zip(needy)
        .map(|((slot, from), to)| (slot, from, to))
        .collect();
    (victims, moves)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn join_row(
        texts: [String; 3],
        component: Option<String>,
        user_id: Option<Uuid>,
        filters: &serde_json::Value,
    ) -> JoinRow {
        let [subscription_id, channel_name, remote_addr] = texts;
        JoinRow {
            id: Uuid::new_v4(),
            subscription_id,
            channel_name,
            user_id,
            component_name: component,
            table_filters: serde_json::value::to_raw_value(filters).unwrap(),
            connection_id: Uuid::new_v4(),
            remote_addr,
            created_at: Utc::now(),
        }
    }

    /// The rows kept, as they would be written again.
    fn kept(live: &Live) -> Vec<JoinRow> {
        live.rows().map(LiveRow::to_row).collect()
    }

    fn same(a: &JoinRow, b: &JoinRow) {
        assert_eq!(a.id, b.id);
        assert_eq!(a.subscription_id, b.subscription_id);
        assert_eq!(a.channel_name, b.channel_name);
        assert_eq!(a.user_id, b.user_id);
        assert_eq!(a.component_name, b.component_name);
        assert_eq!(a.table_filters.get(), b.table_filters.get());
        assert_eq!(a.connection_id, b.connection_id);
        assert_eq!(a.remote_addr, b.remote_addr);
        assert_eq!(a.created_at, b.created_at);
    }

    proptest! {
        /// A row kept in the live set is written again exactly as it was joined, whatever its
        /// texts (empty, multi-byte, an empty component apart from none).
        #[test]
        fn a_kept_row_is_the_row_joined(
            texts in proptest::array::uniform3(".{0,40}"),
            component in proptest::option::of(".{0,12}"),
            user in proptest::option::of(any::<u128>()),
            filter in ".{0,30}",
        ) {
            let filters = serde_json::json!([{"event": "*", "table": "t", "filter": filter}]);
            let row = join_row(texts, component, user.map(Uuid::from_u128), &filters);
            let mut live = Live::default();
            live.joined(&row);
            let kept = kept(&live);
            prop_assert_eq!(kept.len(), 1);
            same(&kept[0], &row);
        }
    }

    #[test]
    fn rows_are_found_by_id_changed_and_left() {
        let filters = serde_json::json!([]);
        let texts = || ["a:1:1".into(), "room".into(), "127.0.0.1:9".into()];
        let (a, b) = (
            join_row(texts(), None, None, &filters),
            join_row(texts(), Some("c".into()), None, &filters),
        );
        let mut live = Live::default();
        live.joined(&a);
        live.joined(&b);
        let user = Uuid::new_v4();
        live.user_changed(b.id, Some(user));
        live.user_changed(Uuid::new_v4(), Some(user));
        let mut rows = kept(&live);
        rows.sort_by_key(|r| r.id == b.id);
        same(&rows[0], &a);
        assert_eq!(rows[1].user_id, Some(user));
        live.left(a.id);
        let ids: Vec<Uuid> = live.rows().map(|r| r.id).collect();
        assert_eq!(ids, vec![b.id]);
        // A row reported again under its id replaces the one kept.
        let mut again = join_row(texts(), Some("d".into()), None, &filters);
        again.id = b.id;
        live.joined(&again);
        let rows = kept(&live);
        assert_eq!(rows.len(), 1);
        same(&rows[0], &again);
    }

    #[test]
    fn an_entry_hashes_as_its_id() {
        use std::hash::BuildHasher;
        let row = join_row(
            ["s".into(), "c".into(), "a".into()],
            None,
            None,
            &serde_json::json!([]),
        );
        let hasher = std::collections::hash_map::RandomState::new();
        let entry = Entry(Box::new(LiveRow::new(&row)));
        assert_eq!(hasher.hash_one(&entry), hasher.hash_one(row.id));
    }

    #[test]
    fn the_newest_lose_their_slots_to_the_oldest() {
        let c: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
        let mut live = Live::default();
        for (i, conn) in c.iter().enumerate() {
            live.slot_taken(i32::try_from(i).unwrap() + 1, *conn);
        }
        let by_age = live.slots_by_age();
        assert_eq!(by_age.iter().map(|x| x.1).collect::<Vec<_>>(), c);
        // The oldest (c0) and c2 lost their slots; c1, c3, c4 hold 11, 13, 14.
        let slotless = [c[0], c[2]].into_iter().collect();
        let slots: HashMap<Uuid, i32> = [(c[1], 11), (c[3], 13), (c[4], 14)].into();
        let (victims, mut moves) = reclaim(&by_age, &slotless, &slots);
        assert_eq!(victims, vec![c[3], c[4]]);
        moves.sort_unstable();
        assert_eq!(moves, vec![(13, c[3], c[0]), (14, c[4], c[2])]);
        // A release after re-registration frees the slot held now.
        live.slots.insert(c[0], LiveSlot { slot: 13, seq: 1 });
        assert_eq!(live.slot_released(1, c[0]), 13);
        assert_eq!(live.slot_released(7, Uuid::new_v4()), 7);
    }

    #[test]
    fn nothing_is_reclaimed_when_every_connection_has_a_slot() {
        let a = Uuid::new_v4();
        let (victims, moves) = reclaim(&[(1, a)], &Default::default(), &[(a, 1)].into());
        assert!(victims.is_empty() && moves.is_empty());
    }
}
