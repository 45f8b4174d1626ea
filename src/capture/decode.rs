//! Stage 2: an outbox row becomes a [`ChangeEvent`].
//!
//! Fed by the listener (stage 1) with rows of `realtime.changes` and the table's description;
//! feeds the router (stage 3), which encodes the delivery body ([`crate::fanout::encode`]).
//! Pure: no I/O, so it is tested on its own.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::change::{ChangeEvent, Op};
use crate::pg::catalog::TableInfo;

/// One row of `realtime.changes`, as read.
#[derive(Debug, Clone)]
pub struct ChangeRow {
    /// Outbox id: capture order.
    pub id: i64,
    /// When the trigger captured it.
    pub captured_at: DateTime<Utc>,
    /// Relation id of the table (its root for a partition).
    pub relid: u32,
    /// Operation, as stored.
    pub op: String,
    /// `to_jsonb(new)`.
    pub record: Option<Value>,
    /// `to_jsonb(old)`.
    pub old_record: Option<Value>,
}

/// Why a row could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The `op` column held something else.
    #[error("unknown operation {0}")]
    UnknownOp(String),
    /// A record was not a JSON object.
    #[error("record is not a json object")]
    NotAnObject,
}

/// Decodes `row` of `table`. `commit_timestamp` is rendered in UTC with milliseconds and `Z`
/// (docs/protocol.md 6.3).
///
/// # Errors
/// [`Error`] when the row is not what the capture trigger writes.
pub fn decode(row: ChangeRow, table: Arc<TableInfo>) -> Result<ChangeEvent, Error> {
    let op = Op::parse(&row.op).ok_or_else(|| Error::UnknownOp(row.op.clone()))?;
    let record = object(row.record)?;
    let old_full = object(row.old_record)?;
    let commit_timestamp = row.captured_at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    Ok(ChangeEvent {
        id: row.id,
        table,
        op,
        record,
        old_full,
        commit_timestamp,
    })
}

fn object(value: Option<Value>) -> Result<Option<Map<String, Value>>, Error> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(_) => Err(Error::NotAnObject),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::catalog::ColumnInfo;
    use serde_json::json;

    fn table() -> Arc<TableInfo> {
        Arc::new(TableInfo {
            relid: 1,
            schema: "public".into(),
            name: "todos".into(),
            columns: vec![ColumnInfo {
                name: "id".into(),
                type_name: "int8".into(),
            }],
            primary_key: vec!["id".into()],
            replica_identity_full: false,
            rls_enabled: false,
        })
    }

    fn row(op: &str, record: Option<Value>, old: Option<Value>) -> ChangeRow {
        ChangeRow {
            id: 7,
            captured_at: DateTime::parse_from_rfc3339("2025-05-01T12:34:56.789123Z")
                .unwrap()
                .with_timezone(&Utc),
            relid: 1,
            op: op.into(),
            record,
            old_record: old,
        }
    }

    #[test]
    fn rows_become_events_with_millisecond_utc_timestamps() {
        let e = decode(
            row("UPDATE", Some(json!({"id": 2})), Some(json!({"id": 1}))),
            table(),
        )
        .unwrap();
        assert_eq!(e.op, Op::Update);
        assert_eq!(e.commit_timestamp, "2025-05-01T12:34:56.789Z");
        assert_eq!(e.record.unwrap()["id"], 2);
        assert_eq!(e.old_full.unwrap()["id"], 1);
    }

    #[test]
    fn what_the_trigger_never_writes_is_an_error() {
        assert!(matches!(
            decode(row("TRUNCATE", None, None), table()),
            Err(Error::UnknownOp(_))
        ));
        assert!(matches!(
            decode(row("INSERT", Some(json!([1])), None), table()),
            Err(Error::NotAnObject)
        ));
    }
}
