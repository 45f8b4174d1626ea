//! Stage 2: an outbox row becomes a [`ChangeEvent`], its delivery body serialized once.
//!
//! Fed by the listener (stage 1) with rows of `realtime.changes` and the table's description;
//! feeds the router (stage 3). Pure: no I/O, so it is tested on its own. The body follows
//! PROTOCOL.md section 6.3: `schema`, `table`, `type`, `commit_timestamp` (UTC, milliseconds,
//! `Z`), `columns` with type names, `record`/`old_record` as `to_jsonb` renders them, `errors`.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::catalog::TableInfo;

/// Values kept in a change over the size limit are at most this long (serialized).
const TRUNCATED_VALUE_MAX: usize = 64;

/// Kind of row change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// A row was inserted.
    Insert,
    /// A row was updated.
    Update,
    /// A row was deleted.
    Delete,
}

impl Op {
    /// The name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "INSERT",
            Op::Update => "UPDATE",
            Op::Delete => "DELETE",
        }
    }

    /// Parses the outbox's `op` column.
    pub fn parse(text: &str) -> Option<Op> {
        match text {
            "INSERT" => Some(Op::Insert),
            "UPDATE" => Some(Op::Update),
            "DELETE" => Some(Op::Delete),
            _ => None,
        }
    }
}

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

/// A decoded change, ready for routing.
#[derive(Debug, Clone)]
pub struct ChangeEvent {
    /// Outbox id (capture order).
    pub id: i64,
    /// The table.
    pub table: Arc<TableInfo>,
    /// Operation.
    pub op: Op,
    /// The new row (INSERT, UPDATE), whole, for filtering.
    pub record: Option<Map<String, Value>>,
    /// The old row (UPDATE, DELETE), whole, for filtering: DELETE filters see the old row even
    /// where only its key is delivered.
    pub old_full: Option<Map<String, Value>>,
    /// `commit_timestamp` as sent.
    pub commit_timestamp: String,
    /// The `data` object for subscribers without `select`, serialized once.
    pub data: Arc<str>,
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

/// Decodes `row` of `table`; changes whose serialized rows exceed `max_bytes` are truncated as
/// PROTOCOL.md 6.3 says (`Error 413: Payload Too Large`, values of at most 64 bytes kept).
///
/// # Errors
/// [`Error`] when the row is not what the capture trigger writes.
pub fn decode(
    row: ChangeRow,
    table: Arc<TableInfo>,
    max_bytes: usize,
) -> Result<ChangeEvent, Error> {
    let op = Op::parse(&row.op).ok_or_else(|| Error::UnknownOp(row.op.clone()))?;
    let record = object(row.record)?;
    let old_full = object(row.old_record)?;
    let commit_timestamp = row.captured_at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    let mut event = ChangeEvent {
        id: row.id,
        table,
        op,
        record,
        old_full,
        commit_timestamp,
        data: Arc::from(""),
    };
    event.data = Arc::from(event.data_json(None, max_bytes));
    Ok(event)
}

fn object(value: Option<Value>) -> Result<Option<Map<String, Value>>, Error> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(_) => Err(Error::NotAnObject),
    }
}

impl ChangeEvent {
    /// The row filters are evaluated on: the old row for DELETE, the new row otherwise.
    pub fn filter_row(&self) -> Option<&Map<String, Value>> {
        match self.op {
            Op::Delete => self.old_full.as_ref(),
            Op::Insert | Op::Update => self.record.as_ref(),
        }
    }

    /// Serializes the delivery `data` object, restricted to `select` columns (plus the primary
    /// key) when given.
    pub fn data_json(&self, select: Option<&[String]>, max_bytes: usize) -> String {
        let table = &self.table;
        let keep = |name: &str| {
            select.is_none_or(|cols| {
                cols.iter().any(|c| c == name) || table.primary_key.iter().any(|k| k == name)
            })
        };
        let columns: Vec<Value> = table
            .columns
            .iter()
            .filter(|c| keep(&c.name))
            .map(|c| serde_json::json!({"name": c.name, "type": c.type_name}))
            .collect();
        let mut errors: Vec<&str> = Vec::new();
        let no_key = table.primary_key.is_empty();
        if no_key {
            errors.push("Error 400: Bad Request, no primary key");
        }
        let project = |row: &Map<String, Value>, only_key: bool| -> Map<String, Value> {
            row.iter()
                .filter(|(k, _)| keep(k))
                .filter(|(k, _)| !only_key || table.primary_key.iter().any(|pk| pk == *k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let mut record = match (self.op, &self.record, no_key) {
            (Op::Insert | Op::Update, Some(r), false) => Some(project(r, false)),
            _ => None,
        };
        let mut old_record = match (self.op, &self.old_full, no_key) {
            (Op::Update | Op::Delete, Some(o), false) => {
                Some(project(o, !table.replica_identity_full))
            }
            _ => None,
        };
        let size = |m: &Option<Map<String, Value>>| {
            m.as_ref()
                .map_or(0, |m| serde_json::to_vec(m).map_or(0, |v| v.len()))
        };
        if size(&record) + size(&old_record) > max_bytes {
            errors.push("Error 413: Payload Too Large");
            for row in [&mut record, &mut old_record].into_iter().flatten() {
                row.retain(|_, v| {
                    serde_json::to_vec(v).is_ok_and(|b| b.len() <= TRUNCATED_VALUE_MAX)
                });
            }
        }
        let mut data = Map::new();
        data.insert("schema".into(), Value::from(table.schema.as_str()));
        data.insert("table".into(), Value::from(table.name.as_str()));
        data.insert("type".into(), Value::from(self.op.as_str()));
        data.insert(
            "commit_timestamp".into(),
            Value::from(self.commit_timestamp.as_str()),
        );
        data.insert("columns".into(), Value::Array(columns));
        match self.op {
            Op::Insert => {
                data.insert("record".into(), Value::Object(record.unwrap_or_default()));
            }
            Op::Update => {
                data.insert("record".into(), Value::Object(record.unwrap_or_default()));
                data.insert(
                    "old_record".into(),
                    Value::Object(old_record.unwrap_or_default()),
                );
            }
            Op::Delete => {
                data.insert(
                    "old_record".into(),
                    Value::Object(old_record.unwrap_or_default()),
                );
            }
        }
        data.insert(
            "errors".into(),
            if errors.is_empty() {
                Value::Null
            } else {
                Value::from(errors)
            },
        );
        Value::Object(data).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::catalog::ColumnInfo;
    use serde_json::json;

    fn table(full: bool, pk: &[&str]) -> Arc<TableInfo> {
        Arc::new(TableInfo {
            relid: 1,
            schema: "public".into(),
            name: "todos".into(),
            columns: [("id", "int8"), ("title", "text"), ("done", "bool")]
                .iter()
                .map(|(n, t)| ColumnInfo {
                    name: (*n).into(),
                    type_name: (*t).into(),
                })
                .collect(),
            primary_key: pk.iter().map(|s| (*s).to_owned()).collect(),
            replica_identity_full: full,
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
    fn insert_body_is_as_the_protocol_says() {
        let r = json!({"id": 7, "title": "hello", "done": false});
        let e = decode(
            row("INSERT", Some(r.clone()), None),
            table(false, &["id"]),
            1 << 20,
        )
        .unwrap();
        let data: Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(
            data,
            json!({
                "schema": "public", "table": "todos", "type": "INSERT",
                "commit_timestamp": "2025-05-01T12:34:56.789Z",
                "columns": [{"name":"id","type":"int8"},{"name":"title","type":"text"},{"name":"done","type":"bool"}],
                "record": r, "errors": null
            })
        );
    }

    #[test]
    fn old_record_is_the_key_unless_replica_identity_full() {
        let new = json!({"id": 7, "title": "b", "done": true});
        let old = json!({"id": 7, "title": "a", "done": false});
        let e = decode(
            row("UPDATE", Some(new.clone()), Some(old.clone())),
            table(false, &["id"]),
            1 << 20,
        )
        .unwrap();
        let data: Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(data["old_record"], json!({"id": 7}));
        assert_eq!(data["record"], new);
        let e = decode(
            row("DELETE", None, Some(old.clone())),
            table(true, &["id"]),
            1 << 20,
        )
        .unwrap();
        let data: Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(data["old_record"], old);
        assert!(data.get("record").is_none());
        // Filters on DELETE still see the whole old row.
        assert_eq!(e.filter_row().unwrap()["title"], "a");
    }

    #[test]
    fn oversized_change_keeps_only_small_values_with_413() {
        let big = "x".repeat(2000);
        let r = json!({"id": 7, "title": big, "done": true});
        let e = decode(row("INSERT", Some(r), None), table(false, &["id"]), 1000).unwrap();
        let data: Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(data["record"], json!({"id": 7, "done": true}));
        assert_eq!(data["errors"], json!(["Error 413: Payload Too Large"]));
    }

    #[test]
    fn select_keeps_chosen_columns_and_the_key() {
        let r = json!({"id": 7, "title": "t", "done": true});
        let e = decode(row("INSERT", Some(r), None), table(false, &["id"]), 1 << 20).unwrap();
        let data: Value =
            serde_json::from_str(&e.data_json(Some(&["done".into()]), 1 << 20)).unwrap();
        assert_eq!(data["record"], json!({"id": 7, "done": true}));
        assert_eq!(data["columns"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn table_without_primary_key_reports_400() {
        let r = json!({"id": 7, "title": "t", "done": true});
        let e = decode(row("INSERT", Some(r), None), table(false, &[]), 1 << 20).unwrap();
        let data: Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(
            data["errors"],
            json!(["Error 400: Bad Request, no primary key"])
        );
        assert_eq!(data["record"], json!({}));
    }
}
