//! Stage 3, step 2 of routing: who may see a change (row-level security on Postgres Changes).
//!
//! Before a page of changes is routed, [`Visibility::decide`] asks the database once which of
//! the distinct claim sets subscribed to each change's table may see it, with PostgreSQL's own
//! rules (table and column privileges, `BYPASSRLS`, owners, permissive and restrictive `SELECT`
//! policies): `realtime.visible_rows` (migrations/0013, 0026) evaluates every applicable policy
//! under the claim set's role and `request.jwt.claims`, over the row as it was captured. The
//! router then looks each group of recipients' [`Decision`] up through a [`Sight`]: the change,
//! the change with fewer columns, an error entry, or nothing.
//!
//! Closed by default: a claim set the database gave no answer for sees nothing, and when the
//! check itself fails every claim set but `service_role` gets an error entry in place of the
//! change. Error entries never carry the database's message (a failing cast could quote a value
//! of a row the subscriber may not see); the log and the audit record do.
//!
//! A claim set whose table the outbox read answered for its role whatever the row (no policy
//! to apply, no privilege, an error: [`super::table_sight`]) is decided from that answer.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, Row};

use super::table_sight::{Roles, TableSight, TableSights, Verdict};
use crate::change::{ChangeEvent, Op, RawRow};
use crate::registry::Registry;

pub use crate::auth::SERVICE_ROLE;

/// Reason of the error entry a claim set gets when its check failed.
pub const CHECK_FAILED: &str =
    "Error 500: Internal Server Error, the row-level security check of this change failed";

/// What one group of recipients (one claim set) gets of one change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The change, limited to `columns` (every column when `None`); `old_hidden` when the old
    /// version of an updated row was not visible (its `old_record` keeps only the key).
    Show {
        /// The columns the role may select.
        columns: Option<Arc<[String]>>,
        /// The old row version was not visible.
        old_hidden: bool,
    },
    /// Nothing.
    Hide,
    /// An error entry in place of the change.
    Error,
}

static SHOW_ALL: Decision = Decision::Show {
    columns: None,
    old_hidden: false,
};
static HIDE: Decision = Decision::Hide;

/// One change's decisions, by claim set fingerprint: the claims' JSON and what they get.
type Decided = HashMap<u64, (Arc<str>, Decision)>;

/// The decisions of one page of changes, by change (its index in the page) and claim set.
#[derive(Debug, Default)]
pub struct Decisions {
    /// Shared, so that delivery diagnostics keep a change's decisions without copying them.
    by_change: Vec<Arc<Decided>>,
    /// Per change: whether some claim set's decision is more than show-or-hide (an error, or
    /// fewer columns), which the router must know before it evaluates filters.
    careful: Vec<bool>,
}

impl Decisions {
    /// The decisions that apply to the page's `index`-th change.
    pub fn sight(&self, index: usize) -> Sight<'_> {
        Sight {
            decided: self.by_change.get(index),
            careful: self.careful.get(index).copied().unwrap_or(false),
            everything: false,
        }
    }
}

/// The decisions that apply to one change.
#[derive(Debug, Clone, Copy)]
pub struct Sight<'a> {
    decided: Option<&'a Arc<Decided>>,
    careful: bool,
    everything: bool,
}

impl<'a> Sight<'a> {
    /// Shows every change to everyone: for tests of the routing alone.
    #[cfg(test)]
    pub fn everything() -> Sight<'static> {
        Sight {
            decided: None,
            careful: false,
            everything: true,
        }
    }

    /// Whether some claim set gets an error entry or fewer columns: the router then takes each
    /// channel's decision before evaluating its filters.
    pub fn needs_care(&self) -> bool {
        self.careful
    }

    /// What the claim set (`key` its fingerprint, `claims` its JSON, `role` its role) gets.
    /// `service_role` sees everything; a claim set without an answer sees nothing.
    pub fn decide(&self, key: u64, claims: &str, role: &str) -> &'a Decision {
        decide(
            self.decided.map(|d| &**d),
            self.everything,
            key,
            claims,
            role,
        )
    }

    /// These decisions, kept beyond the page (a reference count, no copy).
    pub fn keep(&self) -> Kept {
        Kept {
            decided: self.decided.cloned(),
            everything: self.everything,
        }
    }
}

/// One change's decisions kept after it was routed, for delivery diagnostics
/// ([`super::trace`]): they answer as the [`Sight`] they were kept from.
#[derive(Debug, Clone, Default)]
pub struct Kept {
    decided: Option<Arc<Decided>>,
    everything: bool,
}

impl Kept {
    /// What the claim set got, as [`Sight::decide`] answered.
    pub fn decide(&self, key: u64, claims: &str, role: &str) -> &Decision {
        decide(self.decided.as_deref(), self.everything, key, claims, role)
    }
}

fn decide<'a>(
    decided: Option<&'a Decided>,
    everything: bool,
    key: u64,
    claims: &str,
    role: &str,
) -> &'a Decision {
    if everything || role == SERVICE_ROLE {
        return &SHOW_ALL;
    }
    match decided.and_then(|m| m.get(&key)) {
        // The fingerprint is a hash: equal claims are confirmed, never assumed.
        Some((json, decision)) if &**json == claims => decision,
        _ => &HIDE,
    }
}

/// One claim set subscribed to a table: its fingerprint, its JSON and its role.
#[derive(Debug, Clone)]
pub struct ClaimSet {
    /// Fingerprint of the claims.
    pub key: u64,
    /// The claims as JSON (what `request.jwt.claims` is set to).
    pub json: Arc<str>,
    /// The role checks run as.
    pub role: Arc<str>,
}

/// Asks the database which claim set may see which change.
#[derive(Debug, Clone)]
pub struct Visibility {
    /// The checks' own connection (`None` until the first check, and after one is lost), with
    /// the check's bound as its `statement_timeout`: a check is one statement and one round
    /// trip, with no pool's liveness pings around it, and never waits behind other work. The
    /// gateway's pool is one smaller for it (`crate::Gateway`).
    conn: Arc<tokio::sync::Mutex<Option<PgConnection>>>,
    options: PgConnectOptions,
    /// Bound on one check, also on this side (a stalled connection must not hold capture).
    timeout: Duration,
    audit: Option<Registry>,
    /// The roles of recently decided claim sets, which the outbox reads answer for.
    roles: Arc<Roles>,
}

impl Visibility {
    /// A checker with its own connection to `url`, made when the first check needs it and
    /// again after it is lost, each check bounded by `timeout`.
    ///
    /// # Errors
    /// When the URL is malformed.
    pub fn connect(url: &str, timeout: Duration) -> Result<Visibility, crate::pg::Error> {
        // A number, not text from outside.
        let millis = timeout.as_millis().max(1).to_string();
        let options = crate::pg::connect_options(url, crate::pg::APPLICATION_NAME)?
            .options([("statement_timeout", millis.as_str())]);
        Ok(Visibility {
            conn: Arc::default(),
            options,
            timeout,
            audit: None,
            roles: Arc::default(),
        })
    }

    /// Audits failed checks to `registry`.
    pub fn with_audit(mut self, registry: Registry) -> Visibility {
        self.audit = Some(registry);
        self
    }

    /// The roles a read of the outbox should answer for ([`super::table_sight`]).
    pub fn roles(&self) -> Vec<String> {
        self.roles.current()
    }

    /// Decides every change of a page for the claim sets `subscribed` returns for its table
    /// (`service_role` left out by the caller): from `sights`, the read's answers, where they
    /// decide whatever the row, and with one query for the rest of the page.
    pub async fn decide(
        &self,
        changes: &[ChangeEvent],
        sights: &TableSights,
        mut subscribed: impl FnMut(&ChangeEvent) -> Vec<ClaimSet>,
    ) -> Decisions {
        // A page of big rows is asked about in parts, so no request nears the database's
        // limits on one value (a failed request would close the whole page).
        let mut decisions = Decisions::default();
        let mut start = 0;
        while start < changes.len() {
            let mut end = start;
            let mut bytes = 0usize;
            while end < changes.len() && (end == start || bytes < REQUEST_BYTES) {
                bytes += row_bytes(&changes[end]);
                end += 1;
            }
            let part = self
                .decide_part(&changes[start..end], sights, &mut subscribed)
                .await;
            let Decisions { by_change, careful } = part;
            // A part without checks says nothing per change: keep the indices aligned.
            let (mut by_change, mut careful) = if by_change.is_empty() {
                (vec![Arc::default(); end - start], vec![false; end - start])
            } else {
                (by_change, careful)
            };
            decisions.by_change.append(&mut by_change);
            decisions.careful.append(&mut careful);
            start = end;
        }
        decisions
    }

    async fn decide_part(
        &self,
        changes: &[ChangeEvent],
        sights: &TableSights,
        subscribed: &mut impl FnMut(&ChangeEvent) -> Vec<ClaimSet>,
    ) -> Decisions {
        let mut request = Request::default();
        // Per table of the part: the claim sets the read's answers decide, with the answer.
        let mut known: HashMap<u32, Vec<(ClaimSet, TableSight)>> = HashMap::new();
        // Per change: its table, and where its rows are in the request when it is asked about.
        let mut places: Vec<(u32, Option<Place>)> = Vec::with_capacity(changes.len());
        for change in changes {
            let relid = change.table.relid;
            // A table's claim sets are gathered once per part: its first change.
            let mut asked = Vec::new();
            if let std::collections::hash_map::Entry::Vacant(entry) = known.entry(relid) {
                let mut decided = Vec::new();
                for set in subscribed(change) {
                    self.roles.note(&set.role);
                    match sights.decided(relid, &set.role) {
                        Some(sight) => decided.push((set, sight.clone())),
                        None => asked.push(set),
                    }
                }
                entry.insert(decided);
            }
            let place = if !asked.is_empty() || request.table_index.contains_key(&relid) {
                Some(request.add(change, asked))
            } else {
                None
            };
            places.push((relid, place));
        }
        if request.tables.is_empty() && known.values().all(Vec::is_empty) {
            return Decisions::default();
        }
        // `None`: the check failed, and every claim set it was asked about gets an error entry.
        let answer = if request.tables.is_empty() {
            Some(Answer::default())
        } else {
            self.answer(&request).await
        };
        let mut by_change = Vec::with_capacity(changes.len());
        let mut careful = Vec::with_capacity(changes.len());
        for (relid, place) in places {
            let mut decided = HashMap::new();
            for (set, sight) in known.get(&relid).into_iter().flatten() {
                let decision = table_decision(sight);
                if decision == Decision::Error {
                    metrics::counter!("gateway_router_rls_errors_total").increment(1);
                }
                decided.insert(set.key, (Arc::clone(&set.json), decision));
            }
            if let Some(place) = place {
                let table = &request.tables[place.table];
                for &claim in &table.claims {
                    let set = &request.claims[claim];
                    let decision = match &answer {
                        None => Decision::Error,
                        Some(answer) => answer.decide(place, claim),
                    };
                    if decision == Decision::Error && answer.is_some() {
                        metrics::counter!("gateway_router_rls_errors_total").increment(1);
                    }
                    decided.insert(set.key, (Arc::clone(&set.json), decision));
                }
            }
            careful.push(decided.values().any(|(_, d)| {
                matches!(
                    d,
                    Decision::Error
                        | Decision::Show {
                            columns: Some(_),
                            ..
                        }
                )
            }));
            by_change.push(Arc::new(decided));
        }
        // One audit record per table and claim set, however many of its rows failed.
        for (relid, sets) in &known {
            for (set, sight) in sets {
                if let Some(reason) = &sight.error {
                    self.audit_failure(Some(*relid), Some(&set.role), reason);
                }
            }
        }
        let mut audited = std::collections::HashSet::new();
        for (t, c, reason) in answer.iter().flat_map(|a| &a.errors) {
            if audited.insert((*t, *c)) {
                self.audit_failure(
                    request.tables.get(*t).map(|t| t.relid),
                    request.claims.get(*c).map(|c| &*c.role),
                    reason,
                );
            }
        }
        Decisions { by_change, careful }
    }

    /// Asks the database about `request`; `None` when the check failed (logged, counted and
    /// audited).
    async fn answer(&self, request: &Request) -> Option<Answer> {
        let started = Instant::now();
        let answer = self.ask(request).await.and_then(|answer| {
            // Every claim set asked about has a table-level answer: none at all is a failure.
            if answer.tables.is_empty() {
                let nothing = sqlx::Error::Protocol("the check answered nothing".into());
                return Err(crate::pg::Error::Sqlx(nothing));
            }
            Ok(answer)
        });
        metrics::histogram!("gateway_router_rls_check_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("gateway_router_rls_checks_total").increment(request.checks);
        match answer {
            Ok(answer) => Some(answer),
            Err(e) => {
                metrics::counter!("gateway_router_rls_failures_total").increment(1);
                tracing::warn!(error = %crate::error::chain(&e),
                    "row-level security check failed; the page's changes go to service_role only");
                self.audit_failure(None, None, &crate::error::chain(&e));
                None
            }
        }
    }

    async fn ask(&self, request: &Request) -> Result<Answer, crate::pg::Error> {
        // The server's statement timeout ends a slow check; this one ends a wait for the
        // connection (being made, or held by a check that stalled) or a stalled connection.
        let patience = self.timeout + Duration::from_secs(1);
        let rows = tokio::time::timeout(patience, self.query(request))
            .await
            .map_err(|_| crate::pg::Error::Timeout(patience))??;
        let mut answer = Answer::default();
        for row in rows {
            let t = index(row.try_get::<i32, _>("t")?);
            let c = index(row.try_get::<i32, _>("c")?);
            let r: Option<i32> = row.try_get("r")?;
            let visible: Option<bool> = row.try_get("visible")?;
            let error: Option<String> = row.try_get("error")?;
            match r {
                None => {
                    let columns: Option<Vec<String>> = row.try_get("columns")?;
                    let verdict = Verdict::of(error.is_some(), visible);
                    if let Some(reason) = error {
                        answer.errors.push((t, c, reason));
                    }
                    answer
                        .tables
                        .insert((t, c), (verdict, columns.map(Arc::from)));
                }
                Some(r) => {
                    let r = index(r);
                    if let Some(reason) = error {
                        answer.rows.insert((t, c, r), false);
                        answer.errors.push((t, c, reason));
                    } else if visible == Some(true) {
                        answer.rows.insert((t, c, r), true);
                    }
                }
            }
        }
        Ok(answer)
    }

    /// Runs the check: one statement on the checks' own connection, where the server's
    /// `statement_timeout` bounds it (the role and claims it sets are local to the statement's
    /// transaction). A connection found lost (closed by the server, a restart, the network) is
    /// replaced and the check asked once more on the new one, so losing it costs no change.
    async fn query(&self, request: &Request) -> Result<Vec<sqlx::postgres::PgRow>, sqlx::Error> {
        let mut slot = self.conn.lock().await;
        let arrays = request.to_arrays();
        let mut retried = false;
        loop {
            // Taken out while in use: if this future is dropped mid-check (its caller's
            // timeout), the connection goes with it instead of staying mid-statement.
            let mut conn = match slot.take() {
                Some(conn) => conn,
                None => PgConnection::connect_with(&self.options).await?,
            };
            let result = sqlx::query(
                "select t, c, r, visible, columns, error \
                 from realtime.visible_rows($1, $2, $3::int8[]::oid[], $4, $5, $6)",
            )
            .bind(&arrays.roles)
            .bind(&arrays.claims)
            .bind(&arrays.relids)
            .bind(&arrays.rows)
            .bind(&arrays.pair_tables)
            .bind(&arrays.pair_claims)
            .fetch_all(&mut conn)
            .await;
            match result {
                Ok(rows) => {
                    *slot = Some(conn);
                    return Ok(rows);
                }
                // The check itself failed (its timeout, say) on a live connection: kept. A server
                // shutting the connection down answers with an error too, so it is asked.
                Err(e) if matches!(e, sqlx::Error::Database(_)) && conn.ping().await.is_ok() => {
                    *slot = Some(conn);
                    return Err(e);
                }
                Err(e) if retried => return Err(e),
                Err(e) => {
                    tracing::info!(error = %e, "the row-level security check's connection was lost; asking again on a new one");
                    retried = true;
                }
            }
        }
    }

    /// Audits a failed check: of one table and role, or (`None`) of the whole page.
    fn audit_failure(&self, relid: Option<u32>, role: Option<&str>, reason: &str) {
        let Some(audit) = &self.audit else {
            return;
        };
        audit.audit(
            "rls_check_failed",
            None,
            None,
            serde_json::json!({"relid": relid, "role": role, "reason": reason}),
        );
    }
}

/// What a claim set gets of every change of a table whose answer decides whatever the row.
fn table_decision(sight: &TableSight) -> Decision {
    match sight.verdict {
        Verdict::All => Decision::Show {
            columns: sight.columns.clone(),
            old_hidden: false,
        },
        Verdict::None => Decision::Hide,
        // Never given a row check's verdict to decide; closed if it were.
        Verdict::Rows | Verdict::Error => Decision::Error,
    }
}

fn index(i: i32) -> usize {
    usize::try_from(i).unwrap_or(usize::MAX)
}

/// Rows of about this many bytes go into one check request at most.
const REQUEST_BYTES: usize = 8 << 20;

/// The bytes a change's rows add to a check request.
fn row_bytes(change: &ChangeEvent) -> usize {
    let size = |row: &Option<RawRow>| {
        row.as_ref().map_or(0, |r| {
            r.iter().map(|(k, v)| k.len() + v.get().len() + 4).sum()
        })
    };
    size(&change.record_raw) + size(&change.old_raw)
}

/// Where a change's rows are in the request: its table, its row, and for an update whose old
/// version is delivered in full, the old row.
#[derive(Debug, Clone, Copy)]
struct Place {
    table: usize,
    row: Option<usize>,
    old: Option<usize>,
}

#[derive(Debug)]
struct TableRequest {
    relid: u32,
    claims: Vec<usize>,
    rows: Vec<String>,
}

/// The request to `realtime.visible_rows`: distinct claim sets, and per table the claim sets
/// subscribed to it and the rows to check.
#[derive(Debug, Default)]
struct Request {
    claims: Vec<ClaimSet>,
    claim_index: HashMap<u64, usize>,
    tables: Vec<TableRequest>,
    table_index: HashMap<u32, usize>,
    /// Row checks asked for (rows × claim sets).
    checks: u64,
}

impl Request {
    /// Adds `change`'s rows; `claim_sets` (distinct) are those of its table when the table is
    /// new to the request, empty otherwise.
    fn add(&mut self, change: &ChangeEvent, claim_sets: Vec<ClaimSet>) -> Place {
        let relid = change.table.relid;
        let table = *self.table_index.entry(relid).or_insert_with(|| {
            self.tables.push(TableRequest {
                relid,
                claims: Vec::new(),
                rows: Vec::new(),
            });
            self.tables.len() - 1
        });
        for set in claim_sets {
            let next = self.claims.len();
            let claim = *self.claim_index.entry(set.key).or_insert(next);
            if claim == next {
                self.claims.push(set);
            }
            self.tables[table].claims.push(claim);
        }
        let mut push = |raw: &RawRow| {
            let rows = &mut self.tables[table].rows;
            rows.push(row_json(raw));
            rows.len() - 1
        };
        let (row, old) = if change.undeliverable.is_some() {
            // An error entry carries no row: the table's privileges alone decide.
            (None, None)
        } else {
            match change.op {
                Op::Insert => (change.record_raw.as_ref().map(&mut push), None),
                Op::Update => {
                    let row = change.record_raw.as_ref().map(&mut push);
                    let old = change
                        .old_raw
                        .as_ref()
                        .filter(|_| change.table.replica_identity_full)
                        .map(&mut push);
                    (row, old)
                }
                Op::Delete => (change.old_raw.as_ref().map(&mut push), None),
            }
        };
        self.checks += (u64::from(row.is_some()) + u64::from(old.is_some()))
            * self.tables[table].claims.len() as u64;
        Place { table, row, old }
    }

    /// The request as `realtime.visible_rows`' arrays (migrations/0026), sent in binary:
    /// per claim set its role and claims, per table its relid and rows (a JSON array), and the
    /// (table, claim set) pairs asked about.
    fn to_arrays(&self) -> Arrays<'_> {
        let pairs: usize = self.tables.iter().map(|t| t.claims.len()).sum();
        let mut arrays = Arrays {
            roles: Vec::with_capacity(self.claims.len()),
            claims: Vec::with_capacity(self.claims.len()),
            relids: Vec::with_capacity(self.tables.len()),
            rows: Vec::with_capacity(self.tables.len()),
            pair_tables: Vec::with_capacity(pairs),
            pair_claims: Vec::with_capacity(pairs),
        };
        for set in &self.claims {
            arrays.roles.push(&set.role);
            arrays.claims.push(&set.json);
        }
        for (t, table) in self.tables.iter().enumerate() {
            arrays.relids.push(i64::from(table.relid));
            arrays.rows.push(format!("[{}]", table.rows.join(",")));
            for &claim in &table.claims {
                arrays.pair_tables.push(position(t));
                arrays.pair_claims.push(position(claim));
            }
        }
        arrays
    }
}

/// [`Request`] as the arrays `realtime.visible_rows` takes.
#[derive(Debug)]
struct Arrays<'a> {
    roles: Vec<&'a str>,
    claims: Vec<&'a str>,
    relids: Vec<i64>,
    rows: Vec<String>,
    pair_tables: Vec<i32>,
    pair_claims: Vec<i32>,
}

/// An index as the database's `int` (a request never holds 2^31 of anything).
fn position(i: usize) -> i32 {
    i32::try_from(i).unwrap_or(i32::MAX)
}

/// A captured row as a JSON object, its values as PostgreSQL wrote them.
fn row_json(raw: &RawRow) -> String {
    let mut out = String::from("{");
    for (i, (name, value)) in raw.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            "{}:{}",
            serde_json::Value::from(name.as_str()),
            value.get()
        );
    }
    out.push('}');
    out
}

/// A table's verdict for a claim set, and the columns the role may select.
type TableAnswer = (Verdict, Option<Arc<[String]>>);

/// What `realtime.visible_rows` answered.
#[derive(Debug, Default)]
struct Answer {
    tables: HashMap<(usize, usize), TableAnswer>,
    /// Visible rows (`true`) and rows whose check raised (`false`).
    rows: HashMap<(usize, usize, usize), bool>,
    errors: Vec<(usize, usize, String)>,
}

impl Answer {
    fn decide(&self, place: Place, claim: usize) -> Decision {
        let Some((verdict, columns)) = self.tables.get(&(place.table, claim)) else {
            return Decision::Error;
        };
        let show = |old_hidden| Decision::Show {
            columns: columns.clone(),
            old_hidden,
        };
        match verdict {
            Verdict::Error => Decision::Error,
            Verdict::None => Decision::Hide,
            Verdict::All => show(false),
            Verdict::Rows => {
                // No row to check (an error entry in place of an undeliverable change): not
                // even that a change happened is shown.
                let Some(row) = place.row else {
                    return Decision::Hide;
                };
                match self.rows.get(&(place.table, claim, row)) {
                    Some(true) => {
                        let old_visible = place.old.is_none_or(|old| {
                            self.rows.get(&(place.table, claim, old)) == Some(&true)
                        });
                        show(!old_visible)
                    }
                    Some(false) => Decision::Error,
                    None => Decision::Hide,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer() -> Answer {
        let mut a = Answer::default();
        a.tables.insert((0, 0), (Verdict::Rows, None));
        a.tables.insert(
            (0, 1),
            (Verdict::All, Some(Arc::from(vec!["id".to_owned()]))),
        );
        a.tables.insert((0, 2), (Verdict::None, None));
        a.tables.insert((0, 3), (Verdict::Error, None));
        a.rows.insert((0, 0, 0), true);
        a.rows.insert((0, 0, 2), false);
        a.rows.insert((0, 0, 3), true);
        a
    }

    fn place(row: Option<usize>, old: Option<usize>) -> Place {
        Place { table: 0, row, old }
    }

    #[test]
    fn rows_are_shown_only_when_listed_visible() {
        let a = answer();
        let shown = Decision::Show {
            columns: None,
            old_hidden: false,
        };
        assert_eq!(a.decide(place(Some(0), None), 0), shown);
        assert_eq!(a.decide(place(Some(1), None), 0), Decision::Hide);
        assert_eq!(a.decide(place(Some(2), None), 0), Decision::Error);
        // An update whose old version was not visible: shown, old row hidden.
        assert_eq!(
            a.decide(place(Some(0), Some(1)), 0),
            Decision::Show {
                columns: None,
                old_hidden: true
            }
        );
        assert_eq!(a.decide(place(Some(0), Some(3)), 0), shown);
    }

    #[test]
    fn table_verdicts_and_missing_answers() {
        let a = answer();
        assert!(matches!(
            a.decide(place(Some(1), None), 1),
            Decision::Show { columns: Some(c), .. } if *c == ["id".to_owned()]
        ));
        assert_eq!(a.decide(place(Some(0), None), 2), Decision::Hide);
        assert_eq!(a.decide(place(Some(0), None), 3), Decision::Error);
        // No answer for a claim set: closed.
        assert_eq!(a.decide(place(Some(0), None), 9), Decision::Error);
    }

    #[test]
    fn service_role_sees_all_and_unknown_claims_see_nothing() {
        let decisions = Decisions::default();
        let sight = decisions.sight(0);
        assert!(matches!(
            sight.decide(1, "{}", SERVICE_ROLE),
            Decision::Show { columns: None, .. }
        ));
        assert_eq!(sight.decide(1, "{}", "anon"), &Decision::Hide);
        let mut one = HashMap::new();
        one.insert(7, (Arc::from("{\"a\":1}"), Decision::Error));
        let decisions = Decisions {
            by_change: vec![Arc::new(one)],
            careful: vec![true],
        };
        let sight = decisions.sight(0);
        assert_eq!(sight.decide(7, "{\"a\":1}", "anon"), &Decision::Error);
        // Same fingerprint, other claims: never taken for the other's decision.
        assert_eq!(sight.decide(7, "{\"a\":2}", "anon"), &Decision::Hide);
        let kept = sight.keep();
        drop(decisions);
        assert_eq!(kept.decide(7, "{\"a\":1}", "anon"), &Decision::Error);
        assert_eq!(kept.decide(7, "{\"a\":2}", "anon"), &Decision::Hide);
        assert!(matches!(
            kept.decide(1, "{}", SERVICE_ROLE),
            Decision::Show { .. }
        ));
    }

    #[test]
    fn rows_are_sent_as_written() {
        let value = |v: &str| serde_json::value::RawValue::from_string(v.to_owned()).unwrap();
        let raw: RawRow = vec![
            ("n".into(), value("1.50")),
            ("q\"uote".into(), value("{\"x\": [1]}")),
        ];
        assert_eq!(row_json(&raw), r#"{"n":1.50,"q\"uote":{"x": [1]}}"#);
    }
}
