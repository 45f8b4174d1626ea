//! Stage 3: the delivery body of a change, encoded once per change and column selection.
//!
//! The router asks for a change's `data` object (docs/protocol.md 6.3) once per change, and
//! once more per distinct `select` list among its matching subscriptions; every recipient of
//! the same body shares its bytes. The body carries `schema`, `table`, `type`,
//! `commit_timestamp`, `columns` with type names, `record`/`old_record` as `to_jsonb` renders
//! them, and `errors`. Changes over `--max-change-bytes` keep only their small values and say
//! `Error 413: Payload Too Large`. Pure: no I/O.

use serde_json::{Map, Value};

use crate::change::{ChangeEvent, Op};

/// Values kept in a change over the size limit are at most this long (serialized).
const TRUNCATED_VALUE_MAX: usize = 64;

/// Serializes the delivery `data` object, restricted to `select` columns (plus the primary
/// key) when given.
pub fn body(change: &ChangeEvent, select: Option<&[String]>, max_bytes: usize) -> String {
    let table = &change.table;
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
    let mut record = match (change.op, &change.record, no_key) {
        (Op::Insert | Op::Update, Some(r), false) => Some(project(r, false)),
        _ => None,
    };
    let mut old_record = match (change.op, &change.old_full, no_key) {
        (Op::Update | Op::Delete, Some(o), false) => Some(project(o, !table.replica_identity_full)),
        _ => None,
    };
    let size = |m: &Option<Map<String, Value>>| {
        m.as_ref()
            .map_or(0, |m| serde_json::to_vec(m).map_or(0, |v| v.len()))
    };
    if size(&record) + size(&old_record) > max_bytes {
        errors.push("Error 413: Payload Too Large");
        for row in [&mut record, &mut old_record].into_iter().flatten() {
            row.retain(|_, v| serde_json::to_vec(v).is_ok_and(|b| b.len() <= TRUNCATED_VALUE_MAX));
        }
    }
    let mut data = Map::new();
    data.insert("schema".into(), Value::from(table.schema.as_str()));
    data.insert("table".into(), Value::from(table.name.as_str()));
    data.insert("type".into(), Value::from(change.op.as_str()));
    data.insert(
        "commit_timestamp".into(),
        Value::from(change.commit_timestamp.as_str()),
    );
    data.insert("columns".into(), Value::Array(columns));
    match change.op {
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

    fn decode(
        (op, record, old): (Op, Option<Value>, Option<Value>),
        table: Arc<TableInfo>,
        max_bytes: usize,
    ) -> Option<(ChangeEvent, String)> {
        let object = |v: Option<Value>| match v {
            Some(Value::Object(m)) => Some(m),
            _ => None,
        };
        let change = ChangeEvent {
            id: 7,
            table,
            op,
            record: object(record),
            old_full: object(old),
            commit_timestamp: "2025-05-01T12:34:56.789Z".into(),
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
}
