//! Writing a batch so that one bad row cannot block the others.
//!
//! [`write_split`] writes a batch in one statement; when the database refuses it for something a
//! row carries (a constraint, an oversized value: [`crate::pg::Error::is_row_error`]), the batch is halved and each
//! half written on its own, down to single rows. A row that still fails is handed back to the
//! caller (which audits and counts it) and the rest land: `k` bad rows among `n` cost about
//! `2·k·log2(n)` extra statements. An error that is not about a row (the database is down, the
//! pool timed out) stops the batch: what has not landed is handed back to be retried.

use std::future::Future;
use std::pin::Pin;

/// A write of one chunk of rows, borrowing the chunk.
pub(super) type Write<'a, E> = Pin<Box<dyn Future<Output = Result<(), E>> + Send + 'a>>;

/// What became of a batch.
#[derive(Debug)]
pub(super) struct Written<T, E> {
    /// Rows the database refused on their own, each with its error.
    pub(super) failed: Vec<(T, E)>,
    /// Rows not written because the batch stopped ([`Written::stopped`]); to be retried.
    pub(super) unwritten: Vec<T>,
    /// Why the batch stopped before every row was tried, if it did.
    pub(super) stopped: Option<E>,
    /// Statements run.
    pub(super) statements: usize,
}

/// Writes `rows` with `write`, splitting a refused chunk in halves until the rows that fail are
/// alone; `is_row` tells an error caused by the chunk's rows from one that would fail any chunk.
/// The first refusal is logged with `what` (e.g. `registry insert`).
pub(super) async fn write_split<T, E, F>(
    what: &str,
    rows: Vec<T>,
    is_row: fn(&E) -> bool,
    mut write: F,
) -> Written<T, E>
where
    E: std::error::Error + 'static,
    F: for<'a> FnMut(&'a [T]) -> Write<'a, E>,
{
    let mut written = Written {
        failed: Vec::new(),
        unwritten: Vec::new(),
        stopped: None,
        statements: 0,
    };
    let total = rows.len();
    // Chunks still to write, the next one last.
    let mut stack: Vec<Vec<T>> = Vec::new();
    if !rows.is_empty() {
        stack.push(rows);
    }
    while let Some(mut chunk) = stack.pop() {
        written.statements += 1;
        let error = match write(&chunk).await {
            Ok(()) => continue,
            Err(e) => e,
        };
        if !is_row(&error) {
            tracing::warn!(
                "{what} of {} rows failed: {}; will retry",
                chunk.len(),
                chain(&error)
            );
            written.unwritten = chunk;
            while let Some(rest) = stack.pop() {
                written.unwritten.extend(rest);
            }
            written.stopped = Some(error);
            return written;
        }
        if chunk.len() == total && total > 1 {
            tracing::warn!(
                "{what} of {total} rows failed: {}; writing in smaller batches",
                chain(&error)
            );
        }
        if chunk.len() > 1 {
            let right = chunk.split_off(chunk.len() / 2);
            stack.push(right);
            stack.push(chunk);
        } else if let Some(row) = chunk.pop() {
            written.failed.push((row, error));
        }
    }
    written
}

pub(super) use crate::error::chain;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    enum Fail {
        Row(u32),
        Down,
    }

    impl std::fmt::Display for Fail {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                Fail::Row(r) => write!(f, "row {r} refused"),
                Fail::Down => write!(f, "database down"),
            }
        }
    }

    impl std::error::Error for Fail {}

    fn is_row(e: &Fail) -> bool {
        matches!(e, Fail::Row(_))
    }

    /// Writes rows into `landed` unless a chunk holds a row of `bad` (refused whole, like a
    /// statement) or the `down_after`th statement is reached.
    async fn run(
        rows: Vec<u32>,
        bad: &[u32],
        down_after: Option<usize>,
    ) -> (Written<u32, Fail>, Vec<u32>) {
        let mut landed = Vec::new();
        let mut calls = 0;
        let written = write_split("test insert", rows, is_row, |chunk: &[u32]| {
            calls += 1;
            let result = if down_after.is_some_and(|n| calls > n) {
                Err(Fail::Down)
            } else if let Some(b) = chunk.iter().find(|r| bad.contains(r)) {
                Err(Fail::Row(*b))
            } else {
                landed.extend_from_slice(chunk);
                Ok(())
            };
            Box::pin(async move { result })
        })
        .await;
        landed.sort_unstable();
        (written, landed)
    }

    #[tokio::test]
    async fn a_clean_batch_is_one_statement() {
        let (w, landed) = run((0..100).collect(), &[], None).await;
        assert_eq!(w.statements, 1);
        assert!(w.failed.is_empty() && w.unwritten.is_empty() && w.stopped.is_none());
        assert_eq!(landed, (0..100).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn one_bad_row_fails_alone_and_the_rest_land() {
        let (w, landed) = run((0..100).collect(), &[37], None).await;
        let failed: Vec<u32> = w.failed.iter().map(|(r, _)| *r).collect();
        assert_eq!(failed, vec![37]);
        assert_eq!(landed, (0..100).filter(|r| *r != 37).collect::<Vec<_>>());
        // Halving: two statements per level below the first, at most log2(100) + 1 levels.
        assert!(w.statements <= 1 + 2 * 7, "{} statements", w.statements);
    }

    #[tokio::test]
    async fn several_bad_rows_and_a_single_bad_row() {
        let (w, landed) = run((0..64).collect(), &[0, 1, 63], None).await;
        let mut failed: Vec<u32> = w.failed.iter().map(|(r, _)| *r).collect();
        failed.sort_unstable();
        assert_eq!(failed, vec![0, 1, 63]);
        assert_eq!(landed, (2..63).collect::<Vec<_>>());
        let (w, landed) = run(vec![5], &[5], None).await;
        assert_eq!((w.failed.len(), w.statements, landed.len()), (1, 1, 0));
    }

    #[tokio::test]
    async fn an_outage_stops_the_batch_and_keeps_what_did_not_land() {
        // The first statement is refused for row 10; the database is gone from the third on.
        let (w, landed) = run((0..20).collect(), &[10], Some(2)).await;
        assert!(matches!(w.stopped, Some(Fail::Down)));
        assert!(w.failed.is_empty());
        let mut all: Vec<u32> = landed.iter().chain(&w.unwritten).copied().collect();
        all.sort_unstable();
        assert_eq!(
            all,
            (0..20).collect::<Vec<_>>(),
            "nothing lost, nothing twice"
        );
        assert_eq!(landed, (0..10).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn nothing_to_write_runs_nothing() {
        let (w, _) = run(Vec::new(), &[], None).await;
        assert_eq!(w.statements, 0);
    }

    #[test]
    fn row_errors_are_classes_22_23_54() {
        for code in ["23505", "23503", "23514", "22001", "22P02", "54000"] {
            assert!(crate::pg::is_row_sqlstate(code), "{code}");
        }
        for code in ["08006", "57P01", "53300", "40001", "42P01", "", "2"] {
            assert!(!crate::pg::is_row_sqlstate(code), "{code}");
        }
        let down = crate::pg::Error::Sqlx(sqlx::Error::PoolTimedOut);
        assert!(!down.is_row_error());
    }

    #[test]
    fn the_chain_names_every_cause() {
        let e = crate::pg::Error::Sqlx(sqlx::Error::Protocol("bad frame".into()));
        let line = chain(&e);
        assert!(line.starts_with("database error: "), "{line}");
        assert!(line.ends_with("bad frame"), "{line}");
    }
}
