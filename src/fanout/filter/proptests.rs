//! Property tests across the filter's stages: parsing and binding a filter to a column of any
//! type, known or not (arrays, enums, unknown and malformed type names), with any operator
//! and any value text, and evaluating what binds against any record value, never panic. The
//! per-stage properties live next to each stage (`grammar`, `bound`). Failures are kept in
//! `proptest-regressions/`.

use proptest::prelude::*;
use serde_json::{Map, Value};

use super::{Column, Filter};

/// Every type name the filter reads, as `pg_type.typname` and in SQL spelling.
const TYPES: &[&str] = &[
    "int2",
    "smallint",
    "int4",
    "integer",
    "int",
    "int8",
    "bigint",
    "oid",
    "float4",
    "real",
    "float8",
    "double precision",
    "numeric",
    "decimal",
    "bool",
    "boolean",
    "text",
    "varchar",
    "character varying",
    "name",
    "char",
    "bpchar",
    "character",
    "citext",
    "uuid",
    "date",
    "time",
    "time without time zone",
    "timetz",
    "time with time zone",
    "timestamp",
    "timestamp without time zone",
    "timestamptz",
    "timestamp with time zone",
    "json",
    "jsonb",
];

const OPS: &[&str] = &[
    "eq",
    "neq",
    "lt",
    "lte",
    "gt",
    "gte",
    "in",
    "is",
    "isdistinct",
    "like",
    "ilike",
    "match",
    "imatch",
    "cs",
    "cd",
    "ov",
    "fts",
    "zz",
];

/// A column type: a known one, its array, a modifier or case variant, or any text.
fn type_name() -> impl Strategy<Value = String> {
    let known = prop::sample::select(TYPES).prop_map(str::to_owned);
    prop_oneof![
        4 => known.clone(),
        2 => known.clone().prop_map(|t| format!("_{t}")),
        1 => known.clone().prop_map(|t| format!("{}(10,2)", t.to_uppercase())),
        1 => known.prop_map(|t| format!("__{t}")),
        1 => "[a-z_ ()\"0-9]{0,16}",
        1 => any::<String>(),
    ]
}

/// Value text: numbers, dates, times, lists, array and JSON literals, or any text.
fn value_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "-?[0-9]{0,24}(\\.[0-9]{0,12})?([eE][-+]?[0-9]{1,4})?",
        "NaN|-?[Ii]nfinity|null|NULL|true|false|unknown|t|f",
        "[0-9]{1,5}-[0-9]{1,2}-[0-9]{1,2}([T ][0-9]{1,2}:[0-9]{2}(:[0-9]{2}(\\.[0-9]{1,9})?)?)?(Z|[-+][0-9]{2}(:?[0-9]{2})?)?",
        "\\((([a-z0-9\"\\\\, ]|NULL){0,6},?){0,5}\\)",
        "\"?\\{([0-9a-z\",{} ]|NULL){0,16}\\}\"?",
        "[{}\\[\\]\":,a-z0-9 ]{0,20}",
        "[0-9a-f-]{0,40}",
        any::<String>(),
    ]
}

/// A record value: anything JSON holds, biased towards strings like the value texts.
fn record_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        value_text().prop_map(Value::String),
    ];
    leaf.prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{0,3}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn filters_on_any_column_type_never_panic(
        type_name in type_name(),
        negate in any::<bool>(),
        op in prop::sample::select(OPS),
        value in value_text(),
        more in prop::option::of((prop::sample::select(OPS), value_text())),
        rows in prop::collection::vec(record_value(), 1..4),
    ) {
        let not = if negate { "not." } else { "" };
        let mut text = format!("c={not}{op}.{value}");
        if let Some((op, value)) = more {
            text.push_str(&format!(",c=not.{op}.{value}"));
        }
        let Ok(filter) = Filter::parse(&text) else {
            return Ok(());
        };
        let columns = [Column::new("c", type_name), Column::new("other", "text")];
        let Ok(bound) = filter.bind(&columns) else {
            return Ok(());
        };
        for value in rows {
            let mut record = Map::new();
            record.insert("c".to_owned(), value);
            let _ = bound.matches(&record);
        }
        let _ = bound.matches(&Map::new());
    }
}
