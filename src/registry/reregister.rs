//! Re-registration: a node declared lost while it was cut from the database (its node row
//! removed, its registry rows closed as `node_lost`, its connection slots freed) writes back
//! what it really serves, from its [`Live`] set, when the database answers again.
//!
//! What this node serves is authoritative for its own rows and slots; the database is for the
//! rest of the cluster. Slots are taken back in the order the connections took them: the same
//! slot when it is still free, else any free slot below the cap. When other nodes admitted
//! connections meanwhile and the cluster has fewer free slots than this node needs, the cap is
//! kept exact: the newest connections of this node give up their slots (to older connections
//! of this node that lost theirs) and are returned to be closed (`cap_reclaimed`, close code
//! 4004, which clients reconnect from). Their rows are not written back: they end as
//! `cap_reclaimed`.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use super::batch::{write_split, Write};
use super::live::{reclaim, Live};
use super::{store, JoinRow, RowEnd, Settings};
use crate::pg::Error;

/// What a re-registration wrote.
#[derive(Debug, Default)]
pub(super) struct Outcome {
    /// Rows written back as active.
    pub(super) rows: usize,
    /// Rows the database refused on their own, with the error.
    pub(super) failed: Vec<(JoinRow, Error)>,
    /// Connections that got their own slot back.
    pub(super) same_slot: usize,
    /// Connections that got another slot.
    pub(super) other_slot: usize,
    /// Connections over the cap, to be closed.
    pub(super) victims: Vec<Uuid>,
}

/// Writes this node's live slots and rows back (the node row already exists again). On an
/// error that is not about a row, nothing is lost: the caller retries at the next tick, and
/// every step is idempotent.
///
/// # Errors
/// When the database cannot be reached.
pub(super) async fn reregister(
    pool: &sqlx::PgPool,
    settings: &Settings,
    live: &mut Live,
    check_users: bool,
) -> Result<Outcome, Error> {
    let node = settings.node_id.as_str();
    let mut outcome = Outcome::default();
    let by_age = live.slots_by_age();
    let same: HashSet<Uuid> = store::retake_same_slots(pool, node, &by_age)
        .await?
        .into_iter()
        .collect();
    outcome.same_slot = same.len();
    let waiting: Vec<Uuid> = by_age
        .iter()
        .map(|(_, c)| *c)
        .filter(|c| !same.contains(c))
        .collect();
    let mut slots: HashMap<Uuid, i32> = by_age
        .iter()
        .filter(|(_, c)| same.contains(c))
        .map(|(s, c)| (*c, *s))
        .collect();
    if !waiting.is_empty() {
        let got = store::acquire_slots(pool, node, &waiting, settings.max_connections).await?;
        outcome.other_slot = got.len();
        slots.extend(got.into_iter().map(|(s, c)| (c, s)));
    }
    let slotless: HashSet<Uuid> = waiting
        .into_iter()
        .filter(|c| !slots.contains_key(c))
        .collect();
    if !slotless.is_empty() {
        let (victims, moves) = reclaim(&by_age, &slotless, &slots);
        for v in &victims {
            slots.remove(v);
        }
        if !moves.is_empty() {
            for (slot, to) in store::hand_over_slots(pool, node, &moves).await? {
                slots.insert(to, slot);
            }
        }
        outcome.victims = victims;
    }
    // What the connections hold now; a victim holds nothing (its release then frees nothing).
    for (conn, held) in &mut live.slots {
        if let Some(slot) = slots.get(conn) {
            held.slot = *slot;
        }
    }
    for v in &outcome.victims {
        live.slots.remove(v);
    }
    let victims: HashSet<Uuid> = outcome.victims.iter().copied().collect();
    if !victims.is_empty() {
        // Their rows stay closed, for the reason they end; the sessions' own ends find them
        // closed already (a row joined during the outage ends with the same reason).
        let ended: Vec<Uuid> = live
            .rows()
            .filter(|r| victims.contains(&r.connection_id))
            .map(|r| r.id)
            .collect();
        store::mark_reclaimed(pool, &ended).await?;
    }
    let rows: Vec<(JoinRow, RowEnd)> = live
        .rows()
        .filter(|r| !victims.contains(&r.connection_id))
        .map(|r| (r.to_row(), None))
        .collect();
    let total = rows.len();
    let written = write_split(
        "registry re-registration",
        rows,
        crate::pg::Error::is_row_error,
        |chunk| -> Write<'_, Error> {
            let (pool, node) = (pool.clone(), node.to_owned());
            Box::pin(
                async move { store::insert_rows(&pool, &node, chunk, check_users, true).await },
            )
        },
    )
    .await;
    if let Some(error) = written.stopped {
        return Err(error);
    }
    outcome.rows = total - written.failed.len();
    outcome.failed = written
        .failed
        .into_iter()
        .map(|((row, _), e)| (row, e))
        .collect();
    Ok(outcome)
}
