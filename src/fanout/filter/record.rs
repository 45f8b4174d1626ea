//! Reading record values: a value of a `to_jsonb(row)` record as a `Key` of its column's type,
//! and the text LIKE and regexes look at.

use std::borrow::Cow;

use serde_json::Value;

use super::cast::{parse_bool, parse_decimal, parse_float, parse_int, parse_uuid, text_key};
use super::dates::{cast_date, cast_time, cast_timestamp, cast_timetz};
use super::json::{array_from_json, cast_array, json_key};
use super::types::{Kind, SqlType, TextKind};
use super::value::{FloatKey, Key};

/// The text PostgreSQL would show for a record value of an unknown or text type.
fn text_form(value: &Value) -> Option<Cow<'_, str>> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        other => serde_json::to_string(other).ok().map(Cow::Owned),
    }
}

fn integral_f64(value: f64) -> Option<i64> {
    // 2^63 is exactly representable; anything in [-2^63, 2^63) converts without loss.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    (value.fract() == 0.0 && (-LIMIT..LIMIT).contains(&value)).then_some(value as i64)
}

/// Reads a non-null record value as a key of the column's type; `None` when it is not one.
pub(super) fn record_key(ty: &SqlType, value: &Value) -> Option<Key> {
    match &ty.kind {
        Kind::Int { .. } => match value {
            Value::Number(n) => n.as_i64().or_else(|| n.as_f64().and_then(integral_f64)),
            Value::String(s) => parse_int(s, i64::MIN, i64::MAX).ok(),
            _ => None,
        }
        .map(Key::Int),
        Kind::Float { single } => match value {
            Value::Number(n) => n.as_f64().map(|f| {
                if *single {
                    // A float4 column holds single precision values.
                    f64::from(f as f32)
                } else {
                    f
                }
            }),
            Value::String(s) => parse_float(s, *single).ok(),
            _ => None,
        }
        .map(|f| Key::Float(FloatKey(f))),
        Kind::Numeric => match value {
            Value::Number(n) => parse_decimal(&n.to_string()),
            Value::String(s) => parse_decimal(s),
            _ => None,
        }
        .map(Key::Numeric),
        Kind::Bool => match value {
            Value::Bool(b) => Some(*b),
            Value::String(s) => parse_bool(s),
            _ => None,
        }
        .map(Key::Bool),
        Kind::Text(kind) => text_form(value).map(|text| Key::Text(text_key(*kind, &text))),
        Kind::Other => text_form(value).map(|text| Key::Text(text.into_owned())),
        Kind::Uuid => value.as_str().and_then(parse_uuid).map(Key::Uuid),
        Kind::Date => cast_date(value.as_str()?).ok().map(Key::Date),
        Kind::Time => cast_time(value.as_str()?).ok().map(Key::Time),
        Kind::TimeTz => cast_timetz(value.as_str()?)
            .ok()
            .map(|(time, zone)| Key::TimeTz(time, zone)),
        Kind::Timestamp => cast_timestamp(value.as_str()?, false)
            .ok()
            .map(Key::Timestamp),
        Kind::TimestampTz => cast_timestamp(value.as_str()?, true)
            .ok()
            .map(Key::Timestamp),
        Kind::Json => json_key(value, 0).map(Key::Json),
        Kind::Array(element) => match value {
            Value::Array(items) => array_from_json(element, items).map(Key::Array),
            Value::String(s) => cast_array(element, s).ok().map(Key::Array),
            _ => None,
        },
    }
}

/// The text LIKE and regexes look at: bpchar without its padding, other types' text form.
pub(super) fn pattern_subject<'a>(ty: &SqlType, value: &'a Value) -> Option<Cow<'a, str>> {
    let text = text_form(value)?;
    Some(match (&ty.kind, text) {
        (Kind::Text(TextKind::Blank), Cow::Borrowed(s)) => Cow::Borrowed(s.trim_end_matches(' ')),
        (Kind::Text(TextKind::Blank), Cow::Owned(s)) => Cow::Owned(s.trim_end_matches(' ').into()),
        (_, text) => text,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::fanout::filter::test_support::*;
    use crate::fanout::filter::Filter;

    #[test]
    fn unreadable_record_values_fail_with_and_without_not() {
        for filter in ["id=eq.5", "id=not.eq.5", "uid=neq.x", "done=is.true"] {
            let Ok(parsed) = Filter::parse(filter) else {
                panic!("{filter}")
            };
            let Ok(bound) = parsed.bind(&columns()) else {
                continue;
            };
            let column = filter.split('=').next().unwrap();
            assert!(
                !bound.matches(&record(column, json!({"not": "a number"}))),
                "{filter}"
            );
        }
        assert!(!matches("id=not.eq.5", "id", json!("five")));
        assert!(!matches("at=not.eq.2025-05-01", "at", json!("garbage")));
    }
}
