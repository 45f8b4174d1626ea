//! Helpers shared by the filter's unit tests: a table with a column of every supported type,
//! and shortcuts to parse, bind and evaluate a filter against a one-column record.

use serde_json::{Map, Value};

use super::{BoundFilter, Column, Filter};

pub(super) fn columns() -> Vec<Column> {
    [
        ("id", "int4"),
        ("small", "int2"),
        ("big", "int8"),
        ("obj", "oid"),
        ("amount", "numeric"),
        ("ratio", "float8"),
        ("r4", "float4"),
        ("title", "text"),
        ("vc", "varchar"),
        ("code", "bpchar"),
        ("email", "citext"),
        ("uid", "uuid"),
        ("done", "bool"),
        ("at", "timestamptz"),
        ("local", "timestamp"),
        ("day", "date"),
        ("clock", "time"),
        ("clocktz", "timetz"),
        ("doc", "jsonb"),
        ("raw", "json"),
        ("nums", "_int4"),
        ("tags", "_text"),
        ("mood", "mood"),
    ]
    .into_iter()
    .map(|(name, type_name)| Column::new(name, type_name))
    .collect()
}

pub(super) fn bind(filter: &str) -> BoundFilter {
    Filter::parse(filter)
        .unwrap_or_else(|err| panic!("{filter}: {err}"))
        .bind(&columns())
        .unwrap_or_else(|err| panic!("{filter}: {err}"))
}

pub(super) fn record(column: &str, value: Value) -> Map<String, Value> {
    let mut record = Map::new();
    record.insert(column.to_owned(), value);
    record
}

pub(super) fn matches(filter: &str, column: &str, value: Value) -> bool {
    bind(filter).matches(&record(column, value))
}

/// Checks `column=op_value` against `value`, and that `column=not.op_value` gives the
/// opposite answer (the value is never NULL here).
#[track_caller]
pub(super) fn check(column: &str, op_value: &str, value: Value, expected: bool) {
    let plain = format!("{column}={op_value}");
    let negated = format!("{column}=not.{op_value}");
    assert_eq!(
        matches(&plain, column, value.clone()),
        expected,
        "{plain} on {value}"
    );
    assert_eq!(
        matches(&negated, column, value.clone()),
        !expected,
        "{negated} on {value}"
    );
}

#[track_caller]
pub(super) fn check_all(column: &str, cases: &[(&str, Value, bool)]) {
    for (op_value, value, expected) in cases {
        check(column, op_value, value.clone(), *expected);
    }
}

pub(super) fn parse_err(filter: &str) -> String {
    match Filter::parse(filter) {
        Ok(parsed) => panic!("{filter} parsed: {parsed:?}"),
        Err(err) => err.to_string(),
    }
}

pub(super) fn bind_err(filter: &str) -> String {
    let parsed = Filter::parse(filter).unwrap_or_else(|err| panic!("{filter}: {err}"));
    match parsed.bind(&columns()) {
        Ok(bound) => panic!("{filter} bound: {bound:?}"),
        Err(err) => err.to_string(),
    }
}
