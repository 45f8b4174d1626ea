//! What a table shows a role whatever the row, as the outbox read answered it, and the roles
//! the reads ask about.
//!
//! Each usual read of the outbox (`realtime.read_changes`, migrations/0027) also answers, for
//! every table it returns rows of and every role of [`Roles::current`], what
//! `realtime.table_sight` answers: every row, none, some columns, or an error. A claim set
//! whose role has such an answer is decided from it ([`super::visibility`]) with no check of
//! its own, one round trip sooner. The rest (tables whose policies check each row, roles the
//! read did not name, pages read otherwise) are asked as before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// What a table shows a role, whatever the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every row (perhaps limited to some columns).
    All,
    /// No row.
    None,
    /// The policies decide row by row: a check is needed.
    Rows,
    /// The answer failed (a role that does not exist or may not be acted as, say).
    Error,
}

impl Verdict {
    /// From `realtime.table_sight`'s answer: whether it has an error, and its `visible`.
    pub fn of(error: bool, visible: Option<bool>) -> Verdict {
        match (error, visible) {
            (true, _) => Verdict::Error,
            (false, Some(true)) => Verdict::All,
            (false, Some(false)) => Verdict::None,
            (false, None) => Verdict::Rows,
        }
    }
}

/// One table's answer for one role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSight {
    /// The answer.
    pub verdict: Verdict,
    /// The columns the role may select, when not all of them.
    pub columns: Option<Arc<[String]>>,
    /// Why the answer failed (for the log and the audit record, never the subscriber).
    pub error: Option<String>,
}

/// The answers of one read, by table and role.
#[derive(Debug, Default)]
pub struct TableSights {
    by_table: HashMap<u32, Vec<(String, TableSight)>>,
}

impl TableSights {
    /// Records what table `relid` shows `role`, as `realtime.table_sight` answered.
    pub fn add(
        &mut self,
        relid: u32,
        role: String,
        error: Option<String>,
        visible: Option<bool>,
        columns: Option<Vec<String>>,
    ) {
        let sight = TableSight {
            verdict: Verdict::of(error.is_some(), visible),
            columns: columns.map(Arc::from),
            error,
        };
        self.by_table.entry(relid).or_default().push((role, sight));
    }

    /// What table `relid` shows `role` when that decides every row; `None` when the read did
    /// not answer for them or the policies decide row by row.
    pub fn decided(&self, relid: u32, role: &str) -> Option<&TableSight> {
        self.by_table
            .get(&relid)?
            .iter()
            .find(|(r, s)| r == role && s.verdict != Verdict::Rows)
            .map(|(_, s)| s)
    }
}

/// Roles kept at most; the least recently seen goes first.
const KEPT: usize = 16;
/// A role no page has been decided for in this long is no longer asked about.
const KEPT_FOR: Duration = Duration::from_secs(60);

/// The roles of the claim sets recently subscribed to the tables of routed changes: what each
/// read asks about. A role is noted when a page is decided for one of its claim sets, so the
/// first change a new role's subscribers get is checked as before and the next ones are not.
#[derive(Debug, Default)]
pub struct Roles {
    seen: Mutex<Vec<(Arc<str>, Instant)>>,
}

impl Roles {
    /// Notes that a page was decided for a claim set of `role`.
    pub fn note(&self, role: &Arc<str>) {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = seen.iter_mut().find(|(r, _)| r == role) {
            entry.1 = now;
            return;
        }
        if seen.len() >= KEPT {
            if let Some(oldest) = (0..seen.len()).min_by_key(|&i| seen[i].1) {
                seen.swap_remove(oldest);
            }
        }
        seen.push((Arc::clone(role), now));
    }

    /// The roles to ask about: those noted in the last minute.
    pub fn current(&self) -> Vec<String> {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.retain(|(_, at)| at.elapsed() < KEPT_FOR);
        seen.iter().map(|(r, _)| r.to_string()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_that_need_a_row_check_decide_nothing() {
        let mut sights = TableSights::default();
        sights.add(1, "anon".into(), None, Some(true), None);
        sights.add(1, "authenticated".into(), None, None, None);
        sights.add(1, "ghost".into(), Some("no such role".into()), None, None);
        sights.add(
            2,
            "anon".into(),
            None,
            Some(true),
            Some(vec!["id".to_owned()]),
        );
        sights.add(3, "anon".into(), None, Some(false), None);
        assert_eq!(sights.decided(1, "anon").unwrap().verdict, Verdict::All);
        assert!(sights.decided(1, "authenticated").is_none());
        assert_eq!(sights.decided(1, "ghost").unwrap().verdict, Verdict::Error);
        assert_eq!(
            sights.decided(2, "anon").unwrap().columns.as_deref(),
            Some(&["id".to_owned()][..])
        );
        assert_eq!(sights.decided(3, "anon").unwrap().verdict, Verdict::None);
        assert!(sights.decided(3, "authenticated").is_none());
        assert!(sights.decided(4, "anon").is_none());
    }

    #[test]
    fn roles_are_kept_by_recency_up_to_a_bound() {
        let roles = Roles::default();
        let names: Vec<Arc<str>> = (0..=KEPT).map(|i| Arc::from(format!("r{i}"))).collect();
        for name in &names {
            roles.note(name);
        }
        // Seen again: kept, not doubled.
        roles.note(&names[KEPT]);
        let current = roles.current();
        assert_eq!(current.len(), KEPT);
        assert!(!current.contains(&"r0".to_owned()), "the oldest went first");
        assert!(current.contains(&format!("r{KEPT}")));
    }
}
