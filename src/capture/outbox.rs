//! The outbox's reads: where a read starts ([`start_cursor`]), the usual read in one statement
//! ([`fetch_at_once`]), one page of a read's part ([`fetch_page`]) and an outbox row's columns
//! ([`read_row`]). The listener
//! ([`super::listener`]) drives them; its module header explains the snapshot arithmetic.

use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use super::decode::ChangeRow;
use super::listener::PAGE_ROWS;
use crate::change::RawRow;
use crate::fanout::table_sight::TableSights;
use crate::pg::catalog::TableInfo;
use crate::pg::Error;

/// Position in the outbox: the previous read's snapshot (`xmax` and in-progress transactions)
/// and highest visible id.
pub(super) type Cursor = crate::position::Snapshot;

/// The two parts of a read (see the module header).
#[derive(Debug, Clone, Copy)]
pub(super) enum Part {
    /// Rows with ids up to the previous maximum, of transactions the previous read did not see.
    InFlight,
    /// Rows with ids above the previous maximum.
    Above,
}

/// What the usual read returned.
pub(super) struct AtOnce {
    /// The snapshot it saw (`pg_current_snapshot()` as text).
    pub(super) snapshot: String,
    /// The changes, in id order.
    pub(super) changes: Vec<PgRow>,
    /// What each table of the changes shows each role asked about, whatever the row.
    pub(super) sights: TableSights,
}

/// How long reads go without the tables' answers (part 4) after asking for them failed.
const SIGHT_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether the usual read asks what its tables show roles. The answer fails only when its
/// functions are missing or broken, or in the narrow race of an object dropped between the
/// read's snapshot and a privilege asked of it (migration 0028); either way a read must not
/// stop capture with it: after an error that says so ([`answer_broken`]) the read is
/// made again without the answers, the row checks decide every claim set, and reads go without
/// the answers for [`SIGHT_RETRY_AFTER`]. Other errors (a timeout, a lost connection) are the
/// read's, and go to the caller as before.
#[derive(Debug, Default)]
pub(super) struct SightAsked {
    off_until: std::sync::Mutex<Option<std::time::Instant>>,
}

impl SightAsked {
    fn on(&self) -> bool {
        let mut off = self.off_until.lock().unwrap_or_else(|e| e.into_inner());
        match *off {
            Some(until) if std::time::Instant::now() < until => false,
            Some(_) => {
                *off = None;
                true
            }
            None => true,
        }
    }

    fn failed(&self) {
        let mut off = self.off_until.lock().unwrap_or_else(|e| e.into_inner());
        *off = Some(std::time::Instant::now() + SIGHT_RETRY_AFTER);
    }
}

/// The usual read from `cursor` in one statement (one snapshot, one round trip), with what its
/// tables show `roles` while `sight` allows; `None` when a part fills its page (the caller then
/// reads page by page).
pub(super) async fn fetch_at_once(
    pool: &PgPool,
    cursor: &Cursor,
    roles: Vec<String>,
    sight: &SightAsked,
) -> Result<Option<AtOnce>, Error> {
    // `realtime.read_changes` (migrations 0025, 0027, 0028): in-flight rows are found through the
    // xid index, each branch ordered by xid, and its plan is made once per connection. The
    // limits only decide whether this read fits in one statement; the rows are delivered in
    // id order. Part 4 answers what each table read shows each role (`fanout::table_sight`).
    let rows = if sight.on() {
        match read(pool, cursor, Some(roles)).await {
            Err(sqlx::Error::Database(e)) if answer_broken(e.code().as_deref()) => {
                tracing::warn!(
                    error = %e,
                    "the outbox read cannot answer what its tables show roles; reading \
                     without the answers, the row checks decide (asked again in a minute)"
                );
                sight.failed();
                read(pool, cursor, None).await?
            }
            rows => rows?,
        }
    } else {
        read(pool, cursor, None).await?
    };
    let mut parts = [0usize; 5];
    let mut snapshot = None;
    let mut sights = TableSights::default();
    let mut changes = Vec::with_capacity(rows.len());
    for row in rows {
        let part: i32 = row.try_get("part")?;
        let part = usize::try_from(part).unwrap_or(0).min(4);
        parts[part] += 1;
        match part {
            0 => snapshot = row.try_get::<Option<String>, _>("snapshot")?,
            4 => {
                let relid: i64 = row.try_get("relid")?;
                sights.add(
                    u32::try_from(relid).unwrap_or(0),
                    row.try_get("role")?,
                    row.try_get("error")?,
                    row.try_get("visible")?,
                    row.try_get("columns")?,
                );
            }
            _ => changes.push(row),
        }
    }
    let Some(snapshot) = snapshot else {
        return Err(Error::Sqlx(sqlx::Error::Protocol(
            "outbox read returned no snapshot".into(),
        )));
    };
    if parts[1..4].iter().any(|&n| n >= PAGE_ROWS as usize) {
        return Ok(None);
    }
    Ok(Some(AtOnce {
        snapshot,
        changes,
        sights,
    }))
}

/// Whether a failed read's SQLSTATE says the answer itself cannot be had: a function, privilege
/// or object missing or wrong (class 42), a schema dropped between the read's snapshot and a
/// privilege asked of it (class 3F), or an internal error (`XX000`, such as a catalog lookup
/// that failed).
fn answer_broken(code: Option<&str>) -> bool {
    code.is_some_and(|c| c.starts_with("42") || c.starts_with("3F") || c == "XX000")
}

/// The usual read: with part 4, what each table read shows each of `roles`; without it (as
/// migration 0025 made the read) when `roles` is `None`.
async fn read(
    pool: &PgPool,
    cursor: &Cursor,
    roles: Option<Vec<String>>,
) -> Result<Vec<PgRow>, sqlx::Error> {
    let query = sqlx::query(if roles.is_some() {
        "select part, grp, id, captured_at, relid, op, record, old_record, snapshot, \
                role, error, visible, columns \
         from realtime.read_changes($1, $2, $3, $4, $5) order by grp, id"
    } else {
        "select part, grp, id, captured_at, relid, op, record, old_record, snapshot, \
                null::text as role, null::text as error, null::bool as visible, \
                null::text[] as columns \
         from realtime.read_changes($1, $2, $3, $4) order by grp, id"
    })
    .bind(&cursor.xmax)
    .bind(&cursor.xip)
    .bind(cursor.max_id)
    .bind(PAGE_ROWS);
    match roles {
        Some(roles) => query.bind(roles),
        None => query,
    }
    .fetch_all(pool)
    .await
}

/// One page of `part`, rows with ids above `after`.
pub(super) async fn fetch_page(
    tx: &mut sqlx::PgConnection,
    part: Part,
    cursor: &Cursor,
    after: i64,
) -> Result<Vec<PgRow>, Error> {
    let query = match part {
        Part::InFlight => sqlx::query(
            "select id, realtime.commit_time(xid, captured_at) as captured_at, \
                    relid::int8 as relid, op, record::text as record, \
                    old_record::text as old_record \
             from realtime.changes \
             where (xid >= $1::text::xid8 or xid = any($2::text[]::xid8[])) \
               and id > $3 and id <= $4 \
             order by id limit $5",
        )
        .bind(&cursor.xmax)
        .bind(&cursor.xip)
        .bind(after)
        .bind(cursor.max_id)
        .bind(PAGE_ROWS),
        Part::Above => sqlx::query(
            "select id, realtime.commit_time(xid, captured_at) as captured_at, \
                    relid::int8 as relid, op, record::text as record, \
                    old_record::text as old_record \
             from realtime.changes where id > $1 order by id limit $2",
        )
        .bind(after)
        .bind(PAGE_ROWS),
    };
    Ok(query.fetch_all(tx).await?)
}

/// Whether `row`'s keys are exactly the cached table's columns.
pub(super) fn fits(table: &TableInfo, row: Option<&RawRow>) -> bool {
    match row {
        Some(row) => {
            row.len() == table.columns.len()
                && table
                    .columns
                    .iter()
                    .all(|c| row.iter().any(|(k, _)| *k == c.name))
        }
        None => true,
    }
}

/// The outbox row's columns, the records as text.
pub(super) fn read_row(row: &PgRow, id: i64, relid: u32) -> Result<ChangeRow, sqlx::Error> {
    Ok(ChangeRow {
        id,
        captured_at: row.try_get("captured_at")?,
        relid,
        op: row.try_get("op")?,
        record: row.try_get("record")?,
        old_record: row.try_get("old_record")?,
    })
}

/// The position to start from: everything committed before now counts as delivered.
pub(super) async fn start_cursor(pool: &PgPool) -> Result<Cursor, Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("set transaction isolation level repeatable read, read only")
        .execute(&mut *tx)
        .await?;
    let snapshot: String = sqlx::query_scalar("select pg_current_snapshot()::text")
        .fetch_one(&mut *tx)
        .await?;
    let max_id: i64 = sqlx::query_scalar("select coalesce(max(id), 0) from realtime.changes")
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    let (xmax, xip) = parse_snapshot(&snapshot);
    Ok(Cursor { xmax, xip, max_id })
}

/// `xmax` and the in-progress transaction ids of a `pg_snapshot` text (`xmin:xmax:xip,xip`).
pub(super) fn parse_snapshot(snapshot: &str) -> (String, Vec<String>) {
    let mut parts = snapshot.splitn(3, ':');
    let _xmin = parts.next();
    let xmax = parts.next().unwrap_or("0").to_owned();
    let xip = parts
        .next()
        .map(|xip| {
            xip.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    (xmax, xip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_broken_answer_turns_the_answers_off() {
        for code in ["42883", "42501", "42P01", "3F000", "XX000"] {
            assert!(answer_broken(Some(code)), "{code}");
        }
        // A statement timeout, an administrator's termination, a deadlock, no memory, none.
        for code in ["57014", "57P01", "40P01", "53200"] {
            assert!(!answer_broken(Some(code)), "{code}");
        }
        assert!(!answer_broken(None));
    }

    #[test]
    fn snapshots_are_parsed() {
        assert_eq!(
            parse_snapshot("10:20:12,15"),
            ("20".to_owned(), vec!["12".to_owned(), "15".to_owned()])
        );
        assert_eq!(parse_snapshot("10:10:"), ("10".to_owned(), vec![]));
    }
}
