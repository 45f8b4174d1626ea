//! Stage 3: the delivery body of a change, encoded once per change and column selection.
//!
//! The router asks for a change's `data` object (docs/protocol.md 6.3) once per change, and
//! once more per distinct `select` list among its matching subscriptions; every recipient of
//! the same body shares its bytes. The body carries `schema`, `table`, `type`,
//! `commit_timestamp`, `columns` with type names, `record`/`old_record` as `to_jsonb` renders
//! them, and `errors`. Changes over `--max-change-bytes` keep only their small values and say
//! `Error 413: Payload Too Large`. Pure: no I/O.

use std::fmt::Write as _;

use serde_json::Value;

use crate::change::{ChangeEvent, Op, RawRow};

/// Values kept in a change over the size limit are at most this long (serialized).
const TRUNCATED_VALUE_MAX: usize = 64;

/// What one recipient may see of a change: its column selection and what row-level security
/// allows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct View<'a> {
    /// Selected columns (the primary key is added), or every column.
    pub select: Option<&'a [String]>,
    /// The columns the recipient's role may select, or every column. Columns outside it never
    /// appear, the primary key included.
    pub allowed: Option<&'a [String]>,
    /// The old version of an updated row was not visible to the recipient: `old_record` keeps
    /// only its primary key, whatever the replica identity.
    pub old_hidden: bool,
}

/// Serializes the delivery `data` object, restricted to `select` columns (plus the primary
/// key) when given. Record values are copied as PostgreSQL wrote them, byte for byte.
pub fn body(change: &ChangeEvent, select: Option<&[String]>, max_bytes: usize) -> String {
    body_for(
        change,
        View {
            select,
            ..View::default()
        },
        max_bytes,
    )
}

/// [`body`] as `view` shows it.
pub fn body_for(change: &ChangeEvent, view: View<'_>, max_bytes: usize) -> String {
    let table = &change.table;
    let View {
        select,
        allowed,
        old_hidden,
    } = view;
    let keep = |name: &str| {
        allowed.is_none_or(|cols| cols.iter().any(|c| c == name))
            && select.is_none_or(|cols| {
                cols.iter().any(|c| c == name) || table.primary_key.iter().any(|k| k == name)
            })
    };
    let mut errors: Vec<&str> = Vec::new();
    if let Some(reason) = &change.undeliverable {
        errors.push(reason);
    }
    let no_key = table.primary_key.is_empty();
    if no_key {
        errors.push("Error 400: Bad Request, no primary key");
    }
    let project = |row: &RawRow, only_key: bool| -> Vec<usize> {
        row.iter()
            .enumerate()
            .filter(|(_, (k, _))| keep(k))
            .filter(|(_, (k, _))| !only_key || table.primary_key.iter().any(|pk| pk == k))
            .map(|(i, _)| i)
            .collect()
    };
    let record = match (change.op, &change.record_raw, no_key) {
        (Op::Insert | Op::Update, Some(r), false) => Some((r, project(r, false))),
        _ => None,
    };
    let old_record = match (change.op, &change.old_raw, no_key) {
        (Op::Update | Op::Delete, Some(o), false) => {
            Some((o, project(o, old_hidden || !table.replica_identity_full)))
        }
        _ => None,
    };
    let size = |m: &Option<(&RawRow, Vec<usize>)>| {
        m.as_ref().map_or(0, |(row, kept)| {
            kept.iter()
                .map(|&i| row[i].0.len() + row[i].1.get().len() + 4)
                .sum::<usize>()
                + 2
        })
    };
    let mut limit = usize::MAX;
    if size(&record) + size(&old_record) > max_bytes {
        errors.push("Error 413: Payload Too Large");
        limit = TRUNCATED_VALUE_MAX;
    }
    let mut out = String::with_capacity(256 + size(&record) + size(&old_record));
    out.push_str("{\"schema\":");
    push_str(&mut out, &table.schema);
    out.push_str(",\"table\":");
    push_str(&mut out, &table.name);
    out.push_str(",\"type\":\"");
    out.push_str(change.op.as_str());
    out.push_str("\",\"commit_timestamp\":");
    push_str(&mut out, &change.commit_timestamp);
    out.push_str(",\"columns\":[");
    let mut first = true;
    for c in table.columns.iter().filter(|c| keep(&c.name)) {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str("{\"name\":");
        push_str(&mut out, &c.name);
        out.push_str(",\"type\":");
        push_str(&mut out, &c.type_name);
        out.push('}');
    }
    out.push(']');
    let push_row = |out: &mut String, name: &str, row: &Option<(&RawRow, Vec<usize>)>| {
        out.push_str(",\"");
        out.push_str(name);
        out.push_str("\":{");
        let mut first = true;
        if let Some((row, kept)) = row {
            for &i in kept {
                let (k, v) = &row[i];
                if v.get().len() > limit {
                    continue;
                }
                if !first {
                    out.push(',');
                }
                first = false;
                push_str(out, k);
                out.push(':');
                out.push_str(v.get());
            }
        }
        out.push('}');
    };
    if matches!(change.op, Op::Insert | Op::Update) {
        push_row(&mut out, "record", &record);
    }
    if matches!(change.op, Op::Update | Op::Delete) {
        push_row(&mut out, "old_record", &old_record);
    }
    out.push_str(",\"errors\":");
    if errors.is_empty() {
        out.push_str("null");
    } else {
        // Serializing a list of strings cannot fail.
        let _ = write!(out, "{}", Value::from(errors));
    }
    out.push('}');
    out
}

/// Reason given to a filtered subscription when the change's filter view is incomplete.
pub const FILTER_GAP: &str =
    "Error 422: Unprocessable Entity, a value of this change cannot be evaluated by the filter";

/// The `data` object of an error entry for `change`: the change's table, type and time, empty
/// records, and `errors` listing `reason` (the change's own, or [`FILTER_GAP`]).
pub fn error_body(change: &ChangeEvent) -> String {
    error_body_with(
        change,
        change
            .undeliverable
            .clone()
            .unwrap_or_else(|| FILTER_GAP.to_owned()),
        None,
    )
}

/// The `data` object of an error entry for `change` saying `reason`, listing the `allowed`
/// columns (every column when `None`).
pub fn error_body_with(change: &ChangeEvent, reason: String, allowed: Option<&[String]>) -> String {
    let entry = ChangeEvent {
        id: change.id,
        seq: change.seq,
        table: std::sync::Arc::clone(&change.table),
        op: change.op,
        record: None,
        old_full: None,
        commit_timestamp: change.commit_timestamp.clone(),
        captured_at: change.captured_at,
        record_raw: None,
        old_raw: None,
        filter_gap: false,
        undeliverable: Some(reason),
    };
    body_for(
        &entry,
        View {
            allowed,
            ..View::default()
        },
        usize::MAX,
    )
}

/// Appends `s` as a JSON string.
fn push_str(out: &mut String, s: &str) {
    // Serializing a string cannot fail.
    let _ = write!(out, "{}", Value::from(s));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::Op;
    use crate::pg::catalog::{ColumnInfo, TableInfo};
    use serde_json::json;
    use std::sync::Arc;

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

    fn row(
        op: &str,
        record: Option<Value>,
        old: Option<Value>,
    ) -> (Op, Option<Value>, Option<Value>) {
        (Op::parse(op).unwrap(), record, old)
    }

    fn raw(v: &Option<Value>) -> Option<RawRow> {
        v.as_ref().and_then(Value::as_object).map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let text = serde_json::value::RawValue::from_string(v.to_string()).unwrap();
                    (k.clone(), text)
                })
                .collect()
        })
    }

    fn decode(
        (op, record, old): (Op, Option<Value>, Option<Value>),
        table: Arc<TableInfo>,
        max_bytes: usize,
    ) -> Option<(ChangeEvent, String)> {
        let object = |v: &Option<Value>| match v {
            Some(Value::Object(m)) => Some(m.clone()),
            _ => None,
        };
        let change = ChangeEvent {
            id: 7,
            seq: 0,
            table,
            op,
            record: object(&record),
            old_full: object(&old),
            commit_timestamp: "2025-05-01T12:34:56.789Z".into(),
            captured_at: std::time::SystemTime::UNIX_EPOCH,
            record_raw: raw(&record),
            old_raw: raw(&old),
            filter_gap: false,
            undeliverable: None,
        };
        let data = body(&change, None, max_bytes);
        Some((change, data))
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
        let data: Value = serde_json::from_str(&e.1).unwrap();
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
        let data: Value = serde_json::from_str(&e.1).unwrap();
        assert_eq!(data["old_record"], json!({"id": 7}));
        assert_eq!(data["record"], new);
        let e = decode(
            row("DELETE", None, Some(old.clone())),
            table(true, &["id"]),
            1 << 20,
        )
        .unwrap();
        let data: Value = serde_json::from_str(&e.1).unwrap();
        assert_eq!(data["old_record"], old);
        assert!(data.get("record").is_none());
        // Filters on DELETE still see the whole old row.
        assert_eq!(e.0.filter_row().unwrap()["title"], "a");
    }

    #[test]
    fn oversized_change_keeps_only_small_values_with_413() {
        let big = "x".repeat(2000);
        let r = json!({"id": 7, "title": big, "done": true});
        let e = decode(row("INSERT", Some(r), None), table(false, &["id"]), 1000).unwrap();
        let data: Value = serde_json::from_str(&e.1).unwrap();
        assert_eq!(data["record"], json!({"id": 7, "done": true}));
        assert_eq!(data["errors"], json!(["Error 413: Payload Too Large"]));
    }

    #[test]
    fn select_keeps_chosen_columns_and_the_key() {
        let r = json!({"id": 7, "title": "t", "done": true});
        let e = decode(row("INSERT", Some(r), None), table(false, &["id"]), 1 << 20).unwrap();
        let data: Value =
            serde_json::from_str(&body(&e.0, Some(&["done".into()]), 1 << 20)).unwrap();
        assert_eq!(data["record"], json!({"id": 7, "done": true}));
        assert_eq!(data["columns"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn table_without_primary_key_reports_400() {
        let r = json!({"id": 7, "title": "t", "done": true});
        let e = decode(row("INSERT", Some(r), None), table(false, &[]), 1 << 20).unwrap();
        let data: Value = serde_json::from_str(&e.1).unwrap();
        assert_eq!(
            data["errors"],
            json!(["Error 400: Bad Request, no primary key"])
        );
        assert_eq!(data["record"], json!({}));
    }

    #[test]
    fn values_are_copied_as_postgres_wrote_them() {
        let text = r#"{"id": 7, "done": true, "title": 12345678901234567890.123456789012345678901234567890}"#;
        let row: Vec<(String, Box<serde_json::value::RawValue>)> =
            serde_json::from_str::<std::collections::BTreeMap<String, _>>(text)
                .unwrap()
                .into_iter()
                .collect();
        let (mut e, _) = decode(row_of("INSERT"), table(false, &["id"]), 1 << 20).unwrap();
        e.record_raw = Some(row);
        let data = body(&e, None, 1 << 20);
        assert!(
            data.contains(r#""title":12345678901234567890.123456789012345678901234567890"#),
            "{data}"
        );
        e.undeliverable = Some("Error 422: undeliverable".into());
        e.record_raw = None;
        let data: Value = serde_json::from_str(&body(&e, None, 1 << 20)).unwrap();
        assert_eq!(data["record"], json!({}));
        assert_eq!(data["errors"], json!(["Error 422: undeliverable"]));
    }

    fn row_of(op: &str) -> (Op, Option<Value>, Option<Value>) {
        row(op, Some(json!({"id": 7})), None)
    }
}
