//! The outbox's reads: where a read starts ([`start_cursor`]), one page of a read's part
//! ([`fetch_page`]) and an outbox row's columns ([`read_row`]). The listener
//! ([`super::listener`]) drives them; its module header explains the snapshot arithmetic.

use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use super::decode::ChangeRow;
use super::listener::PAGE_ROWS;
use crate::change::RawRow;
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
    fn snapshots_are_parsed() {
        assert_eq!(
            parse_snapshot("10:20:12,15"),
            ("20".to_owned(), vec!["12".to_owned(), "15".to_owned()])
        );
        assert_eq!(parse_snapshot("10:10:"), ("10".to_owned(), vec![]));
    }
}
