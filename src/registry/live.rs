//! What this node really serves: the registry rows of its open channels and the connection
//! slots of its open sockets, as the writer learned them from the sessions' reports. It is the
//! authority for this node's own rows and slots: when the database lost them (the node was
//! declared lost while cut from it), they are written again from here ([`super::reregister`]).
//!
//! Cost: one [`JoinRow`] per open channel (about 200 bytes, plus the subscription id, names and
//! filters as joined, the filters as compact JSON text, plus the map's entry) and 40 bytes
//! (plus the entry) per open connection, held by the writer task only.

use std::collections::HashMap;

use uuid::Uuid;

use super::JoinRow;

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
    pub(super) rows: HashMap<Uuid, JoinRow>,
    /// Held slots, by connection.
    pub(super) slots: HashMap<Uuid, LiveSlot>,
    next_seq: u64,
}

impl Live {
    /// A channel was joined.
    pub(super) fn joined(&mut self, row: &JoinRow) {
        self.rows.insert(row.id, row.clone());
    }

    /// A channel's token now names `user_id`.
    pub(super) fn user_changed(&mut self, id: Uuid, user_id: Option<Uuid>) {
        if let Some(row) = self.rows.get_mut(&id) {
            row.user_id = user_id;
        }
    }

    /// A channel ended.
    pub(super) fn left(&mut self, id: Uuid) {
        self.rows.remove(&id);
        crate::room::give_back(&mut self.rows);
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
    slotless: &std::collections::HashSet<Uuid>,
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
    use super::*;

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
