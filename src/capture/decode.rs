//! Stage 2: an outbox row becomes a [`ChangeEvent`].
//!
//! Fed by the listener (stage 1) with rows of `realtime.changes` and the table's description;
//! feeds the router (stage 3), which encodes the delivery body ([`crate::fanout::encode`]).
//! Pure: no I/O, so it is tested on its own.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::change::{ChangeEvent, Op, RawRow};
use crate::pg::catalog::TableInfo;

/// One row of `realtime.changes`, as read: the records as `jsonb`'s text output, never parsed
/// by the database driver, so no value can make the read itself fail.
#[derive(Debug, Clone)]
pub struct ChangeRow {
    /// Outbox id: capture order.
    pub id: i64,
    /// When its transaction committed (`realtime.commit_time`: where PostgreSQL records commit
    /// times), else when the trigger captured it. Delivered as `commit_timestamp`.
    pub captured_at: DateTime<Utc>,
    /// Relation id of the table (its root for a partition).
    pub relid: u32,
    /// Operation, as stored: `I`, `U` or `D` (rows captured before migration 0023: `INSERT`,
    /// `UPDATE` or `DELETE`).
    pub op: String,
    /// `to_jsonb(new)::text`.
    pub record: Option<String>,
    /// `to_jsonb(old)::text`.
    pub old_record: Option<String>,
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

/// A record's text split into its columns: the raw text of each value for delivery, and the
/// filter view (values parsed into [`Value`]s).
#[derive(Debug)]
pub struct Parsed {
    /// Column names and their values' exact text.
    pub raw: RawRow,
    /// The filter view. A number a double cannot hold exactly is kept as its text (a string):
    /// the filters parse numbers from text exactly, whatever the column type.
    pub view: Map<String, Value>,
    /// Some value (one nested deeper than the parser's recursion limit, or a `json` column's
    /// number out of double range) is missing from `view`.
    pub gap: bool,
}

/// Splits a record's JSON text into its columns. Only the top level is parsed: each value is
/// kept as its text, which is never rounded or limited in depth.
///
/// # Errors
/// [`Error::NotAnObject`] when `text` is not a JSON object.
pub fn parse_record(text: &str, table: &TableInfo) -> Result<Parsed, Error> {
    let raw = split_object(text).ok_or(Error::NotAnObject)?;
    let mut view = Map::new();
    let mut gap = false;
    for (name, value) in &raw {
        match view_value(value.get(), is_json_column(table, name)) {
            Some(v) => {
                view.insert(name.clone(), v);
            }
            None => gap = true,
        }
    }
    Ok(Parsed { raw, view, gap })
}

/// The top-level members of a JSON object, or `None` when `text` is not one.
fn split_object(text: &str) -> Option<RawRow> {
    struct Members;
    impl<'de> Visitor<'de> for Members {
        type Value = RawRow;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a json object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawRow, A::Error> {
            let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
            while let Some((k, v)) = map.next_entry::<String, Box<RawValue>>()? {
                members.push((k, v));
            }
            Ok(members)
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let members = de.deserialize_map(Members).ok()?;
    de.end().ok()?;
    Some(members)
}

fn is_json_column(table: &TableInfo, name: &str) -> bool {
    table
        .columns
        .iter()
        .find(|c| c.name == name)
        .is_some_and(|c| matches!(c.type_name.as_str(), "json" | "jsonb"))
}

/// One value of the filter view; `None` when it cannot be parsed.
fn view_value(text: &str, json_column: bool) -> Option<Value> {
    let number = text.starts_with(|c: char| c == '-' || c.is_ascii_digit());
    if number && !json_column {
        // Integers that fit 64 bits stay numbers; any other number (a fraction, an exponent,
        // more digits than a double holds, beyond double range) is kept as its exact text.
        return Some(match serde_json::from_str::<Value>(text) {
            Ok(Value::Number(n)) if !n.is_f64() => Value::Number(n),
            _ => Value::String(text.to_owned()),
        });
    }
    serde_json::from_str(text).ok()
}

/// Decodes `row` of `table`. `commit_timestamp` is rendered in UTC with milliseconds and `Z`
/// (docs/protocol.md 6.3).
///
/// # Errors
/// [`Error`] when the row is not what the capture trigger writes.
pub fn decode(row: ChangeRow, table: Arc<TableInfo>) -> Result<ChangeEvent, Error> {
    let op = Op::parse(&row.op).ok_or_else(|| Error::UnknownOp(row.op.clone()))?;
    let record = object(row.record.as_deref(), &table)?;
    let old = object(row.old_record.as_deref(), &table)?;
    let filter_gap = record.as_ref().is_some_and(|p| p.gap) || old.as_ref().is_some_and(|p| p.gap);
    let (record_raw, record) = record.map(|p| (p.raw, p.view)).unzip();
    let (old_raw, old_full) = old.map(|p| (p.raw, p.view)).unzip();
    Ok(ChangeEvent {
        id: row.id,
        seq: 0,
        table,
        op,
        record,
        old_full,
        commit_timestamp: commit_timestamp(row.captured_at),
        captured_at: row.captured_at.into(),
        record_raw,
        old_raw,
        filter_gap,
        undeliverable: None,
    })
}

/// An event that only reports `reason` to the subscribers of `table` (records empty).
pub fn undeliverable(row: &ChangeRow, table: Arc<TableInfo>, reason: String) -> ChangeEvent {
    ChangeEvent {
        id: row.id,
        seq: 0,
        table,
        op: Op::parse(&row.op).unwrap_or(Op::Insert),
        record: None,
        old_full: None,
        commit_timestamp: commit_timestamp(row.captured_at),
        captured_at: row.captured_at.into(),
        record_raw: None,
        old_raw: None,
        filter_gap: false,
        undeliverable: Some(reason),
    }
}

fn commit_timestamp(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

fn object(text: Option<&str>, table: &TableInfo) -> Result<Option<Parsed>, Error> {
    match text {
        None | Some("null") => Ok(None),
        Some(text) => parse_record(text, table).map(Some),
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
        let record = record.map(|v| v.to_string());
        let old = old.map(|v| v.to_string());
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
    fn operations_are_read_as_letters_and_as_names() {
        for (letter, name, op) in [
            ("I", "INSERT", Op::Insert),
            ("U", "UPDATE", Op::Update),
            ("D", "DELETE", Op::Delete),
        ] {
            let record = (op != Op::Delete).then(|| json!({"id": 2}));
            let old = (op != Op::Insert).then(|| json!({"id": 1}));
            for stored in [letter, name] {
                let e = decode(row(stored, record.clone(), old.clone()), table()).unwrap();
                assert_eq!(e.op, op, "{stored}");
            }
        }
        assert!(matches!(
            decode(row("T", None, None), table()),
            Err(Error::UnknownOp(_))
        ));
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

    fn parse(text: &str) -> Parsed {
        parse_record(text, &table()).unwrap()
    }

    #[test]
    fn numbers_keep_every_digit() {
        let huge = format!("1{}", "0".repeat(309));
        let p = parse(&format!(
            r#"{{"id": 1, "a": {huge}, "b": 12345678901234567890.123456789012345678901234567890, "c": -1.5e-7}}"#
        ));
        let raw: Vec<(&str, &str)> = p.raw.iter().map(|(k, v)| (k.as_str(), v.get())).collect();
        assert_eq!(
            raw,
            [
                ("id", "1"),
                ("a", huge.as_str()),
                ("b", "12345678901234567890.123456789012345678901234567890"),
                ("c", "-1.5e-7"),
            ]
        );
        // The filter view keeps exact integers as numbers and every other number as its text.
        assert_eq!(p.view["id"], json!(1));
        assert_eq!(p.view["a"], json!(huge));
        assert_eq!(
            p.view["b"],
            json!("12345678901234567890.123456789012345678901234567890")
        );
        assert!(!p.gap);
    }

    #[test]
    fn deep_nesting_is_kept_as_text_and_leaves_a_gap_in_the_filter_view() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let p = parse(&format!(r#"{{"id": 1, "j": {deep}, "s": "x"}}"#));
        assert_eq!(p.raw[1].1.get(), deep);
        assert!(p.gap);
        assert!(!p.view.contains_key("j"));
        assert_eq!(p.view["s"], "x");
    }

    #[test]
    fn records_that_are_not_objects_are_errors() {
        for text in ["[1, 2]", "1", "\"x\"", "{\"a\": 1", "{} {}", ""] {
            assert!(
                matches!(parse_record(text, &table()), Err(Error::NotAnObject)),
                "{text}"
            );
        }
        assert!(decode(row("INSERT", None, None), table())
            .unwrap()
            .record
            .is_none());
    }

    #[test]
    fn strings_and_nested_values_are_copied_verbatim() {
        let text = r#"{"id": 2, "t": "a\u0000b \"q\" é", "o": {"k": [1, 2.50, null]}}"#;
        let p = parse(text);
        assert_eq!(p.raw[1].1.get(), r#""a\u0000b \"q\" é""#);
        assert_eq!(p.raw[2].1.get(), r#"{"k": [1, 2.50, null]}"#);
        assert_eq!(p.view["o"], json!({"k": [1, 2.5, null]}));
    }
}
