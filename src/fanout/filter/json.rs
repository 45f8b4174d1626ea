//! JSON values as `JsonKey`s, and array values built from an array literal or from a JSON array
//! with their dimensions checked as PostgreSQL checks them.

use serde_json::Value;

use super::array_literal::{parse_array_literal, Literal, MAX_ARRAY_DIMS};
use super::cast::{cast, parse_decimal};
use super::error::BindError;
use super::record::record_key;
use super::types::{Kind, SqlType};
use super::value::{ArrayKey, JsonKey, Key};

/// How deeply nested a JSON value may be before it is treated as unreadable; keeps the
/// recursive conversion far from the stack limit.
const MAX_JSON_DEPTH: usize = 512;

pub(super) fn json_key(value: &Value, depth: usize) -> Option<JsonKey> {
    if depth > MAX_JSON_DEPTH {
        return None;
    }
    Some(match value {
        Value::Null => JsonKey::Null,
        Value::Bool(b) => JsonKey::Bool(*b),
        Value::Number(n) => JsonKey::Number(parse_decimal(&n.to_string())?),
        Value::String(s) => JsonKey::String(s.clone()),
        Value::Array(items) => JsonKey::Array(
            items
                .iter()
                .map(|item| json_key(item, depth + 1))
                .collect::<Option<_>>()?,
        ),
        Value::Object(map) => JsonKey::Object(
            map.iter()
                .map(|(k, v)| Some((k.clone(), json_key(v, depth + 1)?)))
                .collect::<Option<_>>()?,
        ),
    })
}

/// Collects an array's shape while its elements are visited depth first, rejecting ragged or
/// too deep arrays as PostgreSQL does.
#[derive(Default)]
struct ArrayBuilder {
    dims: Vec<usize>,
    items: Vec<Option<Key>>,
    leaf_level: Option<usize>,
}

impl ArrayBuilder {
    /// Enters a (sub-)array at `level` with `len` elements that are leaves or sub-arrays.
    fn enter(&mut self, level: usize, len: usize, leaves: bool) -> bool {
        if level >= MAX_ARRAY_DIMS {
            return false;
        }
        let dims_ok = match self.dims.get(level) {
            Some(&known) => known == len,
            None if level == self.dims.len() => {
                self.dims.push(len);
                true
            }
            None => false,
        };
        let level_ok = match (self.leaf_level, leaves) {
            (None, true) => {
                self.leaf_level = Some(level);
                true
            }
            (None, false) => true,
            (Some(leaf), true) => leaf == level,
            (Some(leaf), false) => leaf > level,
        };
        dims_ok && level_ok
    }

    fn finish(mut self) -> ArrayKey {
        if self.items.is_empty() {
            self.dims.clear();
        }
        ArrayKey {
            dims: self.dims,
            items: self.items,
        }
    }
}

pub(super) fn cast_array(element: &SqlType, text: &str) -> Result<ArrayKey, BindError> {
    let malformed = || BindError::MalformedArray {
        value: text.to_owned(),
    };
    let top = parse_array_literal(text).ok_or_else(malformed)?;
    let mut builder = ArrayBuilder::default();
    if !add_literal_level(&mut builder, element, 0, &top)? {
        return Err(malformed());
    }
    Ok(builder.finish())
}

/// Adds one literal level; `Ok(false)` when the shape is not rectangular.
fn add_literal_level(
    builder: &mut ArrayBuilder,
    element: &SqlType,
    level: usize,
    items: &[Literal],
) -> Result<bool, BindError> {
    let subs = items
        .iter()
        .filter(|item| matches!(item, Literal::Sub(_)))
        .count();
    if subs != 0 && subs != items.len() {
        return Ok(false);
    }
    if !builder.enter(level, items.len(), subs == 0) {
        return Ok(false);
    }
    for item in items {
        match item {
            Literal::Item(None) => builder.items.push(None),
            Literal::Item(Some(text)) => builder.items.push(Some(cast(element, text)?)),
            Literal::Sub(inner) => {
                if !add_literal_level(builder, element, level + 1, inner)? {
                    return Ok(false);
                }
            }
        }
    }
    Ok(true)
}

pub(super) fn array_from_json(element: &SqlType, items: &[Value]) -> Option<ArrayKey> {
    let mut builder = ArrayBuilder::default();
    add_json_level(&mut builder, element, 0, items)?;
    Some(builder.finish())
}

fn add_json_level(
    builder: &mut ArrayBuilder,
    element: &SqlType,
    level: usize,
    items: &[Value],
) -> Option<()> {
    // An array of json/jsonb holds JSON arrays as elements; it is never read as nested.
    let nested =
        !matches!(element.kind, Kind::Json) && items.first().is_some_and(|item| item.is_array());
    if !builder.enter(level, items.len(), !nested) {
        return None;
    }
    for item in items {
        match (nested, item) {
            (true, Value::Array(inner)) => add_json_level(builder, element, level + 1, inner)?,
            (true, _) => return None,
            (false, Value::Null) => builder.items.push(None),
            (false, item) => builder.items.push(Some(record_key(element, item)?)),
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::fanout::filter::test_support::*;

    #[test]
    fn json_and_jsonb_compare_by_json_equality() {
        check_all(
            "doc",
            &[
                (
                    r#"eq."{\"a\":1,\"b\":[1,2]}""#,
                    json!({"b": [1, 2], "a": 1}),
                    true,
                ),
                (
                    r#"eq."{\"a\":1,\"b\":[1,2]}""#,
                    json!({"a": 1, "b": [2, 1]}),
                    false,
                ),
                (r#"eq.{"a":1.0}"#, json!({"a": 1}), true),
                (r#"eq."\"hi\"""#, json!("hi"), true),
                ("eq.3", json!(3.0), true),
                ("eq.true", json!(true), true),
                ("eq.true", json!("true"), false),
                (r#"neq.{"a":1}"#, json!({"a": 2}), true),
                (r#"neq.{"a":1}"#, json!({"a": 1}), false),
                (r#"in.("{\"a\":1}",2)"#, json!(2), true),
                (r#"in.("{\"a\":1}",2)"#, json!({"a": 1}), true),
                (r#"in.("{\"a\":1}",2)"#, json!({"a": 2}), false),
                (r#"isdistinct.{"a":1}"#, json!({"a": 1}), false),
                (r#"isdistinct.{"a":1}"#, json!([1]), true),
            ],
        );
        check_all(
            "raw",
            &[
                (r#"eq.{"a":1}"#, json!({"a": 1}), true),
                (r#"eq.{"a":1}"#, json!({"a": "1"}), false),
            ],
        );
    }

    #[test]
    fn arrays_compare_element_by_element() {
        check_all(
            "nums",
            &[
                (r#"eq."{1,2,3}""#, json!([1, 2, 3]), true),
                (r#"eq."{1,2,3}""#, json!([1, 2]), false),
                (r#"eq."{1,2,3}""#, json!("{1,2,3}"), true),
                ("eq.{}", json!([]), true),
                (r#"eq."{{1,2},{3,4}}""#, json!([[1, 2], [3, 4]]), true),
                (r#"eq."{1,2,3,4}""#, json!([[1, 2], [3, 4]]), false),
                (r#"eq."{1,NULL}""#, json!([1, null]), true),
                (r#"neq."{1,2}""#, json!([1, 2, 3]), true),
                (r#"neq."{1,2}""#, json!([1, 2]), false),
                (r#"lt."{1,3}""#, json!([1, 2, 9]), true),
                (r#"lt."{1,2}""#, json!([1, 2]), false),
                (r#"lte."{1,2}""#, json!([1, 2]), true),
                (r#"lte."{1,2}""#, json!([1, 3]), false),
                (r#"gt."{1,2}""#, json!([1, 2, 0]), true),
                (r#"gt."{1,2}""#, json!([1, null]), true),
                (r#"gt."{2}""#, json!([1, 9]), false),
                (r#"gte."{2}""#, json!([2]), true),
                (r#"gte."{2}""#, json!([1, 9]), false),
                (r#"in.("{1,2}","{3}")"#, json!([3]), true),
                (r#"in.("{1,2}","{3}")"#, json!([2, 1]), false),
                (r#"isdistinct."{1}""#, json!([1]), false),
                (r#"isdistinct."{1}""#, json!([2]), true),
            ],
        );
        check_all(
            "tags",
            &[
                (r#"eq."{\"a b\",c}""#, json!(["a b", "c"]), true),
                (r#"eq."{\"a b\",c}""#, json!(["a b"]), false),
            ],
        );
    }
}
