//! Casting filter text to a `Key` of the column's type, with the input rules of PostgreSQL's
//! `int4in`, `float8in`, `numeric_in`, `boolin` and `uuid_in` (dates, JSON and arrays are read
//! by their own modules).

use serde_json::Value;

use super::array_literal::trim_pg;
use super::dates::{cast_date, cast_time, cast_timestamp, cast_timetz};
use super::error::{BindError, CastFail};
use super::json::{cast_array, json_key};
use super::types::{Kind, SqlType, TextKind};
use super::value::{Decimal, FloatKey, Key};

pub(super) fn cast(ty: &SqlType, text: &str) -> Result<Key, BindError> {
    let fail = |failure: CastFail| failure.into_error(&ty.name, text);
    match &ty.kind {
        Kind::Int { min, max } => parse_int(text, *min, *max).map(Key::Int).map_err(fail),
        Kind::Float { single } => parse_float(text, *single)
            .map(|v| Key::Float(FloatKey(v)))
            .map_err(fail),
        Kind::Numeric => parse_decimal(text)
            .map(Key::Numeric)
            .ok_or_else(|| fail(CastFail::Syntax)),
        Kind::Bool => parse_bool(text)
            .map(Key::Bool)
            .ok_or_else(|| fail(CastFail::Syntax)),
        Kind::Text(kind) => Ok(Key::Text(text_key(*kind, text))),
        Kind::Other => Ok(Key::Text(text.to_owned())),
        Kind::Uuid => parse_uuid(text)
            .map(Key::Uuid)
            .ok_or_else(|| fail(CastFail::Syntax)),
        Kind::Date => cast_date(text).map(Key::Date).map_err(fail),
        Kind::Time => cast_time(text).map(Key::Time).map_err(fail),
        Kind::TimeTz => cast_timetz(text)
            .map(|(time, zone)| Key::TimeTz(time, zone))
            .map_err(fail),
        Kind::Timestamp => cast_timestamp(text, false)
            .map(Key::Timestamp)
            .map_err(fail),
        Kind::TimestampTz => cast_timestamp(text, true).map(Key::Timestamp).map_err(fail),
        Kind::Json => serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|value| json_key(&value, 0))
            .map(Key::Json)
            .ok_or_else(|| fail(CastFail::Syntax)),
        Kind::Array(element) => cast_array(element, text).map(Key::Array),
    }
}

pub(super) fn text_key(kind: TextKind, text: &str) -> String {
    match kind {
        TextKind::Plain => text.to_owned(),
        TextKind::Blank => text.trim_end_matches(' ').to_owned(),
        TextKind::Citext => text.to_lowercase(),
    }
}

/// `int2in`/`int4in`/`int8in`/`oidin` for decimal input.
pub(super) fn parse_int(text: &str, min: i64, max: i64) -> Result<i64, CastFail> {
    let trimmed = trim_pg(text);
    let (negative, digits) = match trimmed.as_bytes().first() {
        Some(b'-') => (true, &trimmed[1..]),
        Some(b'+') => (false, &trimmed[1..]),
        _ => (false, trimmed),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CastFail::Syntax);
    }
    let mut magnitude: i128 = 0;
    for b in digits.bytes() {
        magnitude = magnitude * 10 + i128::from(b - b'0');
        if magnitude > i128::from(u64::MAX) {
            return Err(CastFail::Range);
        }
    }
    let value = if negative { -magnitude } else { magnitude };
    if value < i128::from(min) || value > i128::from(max) {
        return Err(CastFail::Range);
    }
    i64::try_from(value).map_err(|_| CastFail::Range)
}

/// `float4in`/`float8in`: decimal or exponent notation, `NaN`, `[+-]Infinity`, `[+-]inf`.
pub(super) fn parse_float(text: &str, single: bool) -> Result<f64, CastFail> {
    let trimmed = trim_pg(text);
    let value: f64 = trimmed.parse().map_err(|_| CastFail::Syntax)?;
    let infinity_literal = trimmed
        .trim_start_matches(['+', '-'])
        .get(..3)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("inf"));
    let nonzero_mantissa = trimmed
        .split(['e', 'E'])
        .next()
        .unwrap_or_default()
        .bytes()
        .any(|b| (b'1'..=b'9').contains(&b));
    let value = if single {
        // Single precision is what a float4 column stores; `as` rounds to nearest.
        f64::from(value as f32)
    } else {
        value
    };
    if value.is_infinite() && !infinity_literal {
        return Err(CastFail::Range);
    }
    if value == 0.0 && nonzero_mantissa {
        return Err(CastFail::Range);
    }
    Ok(value)
}

/// `numeric_in` (without the PostgreSQL 16 `_` separators and non-decimal forms).
pub(super) fn parse_decimal(text: &str) -> Option<Decimal> {
    let trimmed = trim_pg(text);
    let special = |word: &str| trimmed.eq_ignore_ascii_case(word);
    if special("nan") {
        return Some(Decimal::NaN);
    }
    if ["infinity", "+infinity", "inf", "+inf"]
        .into_iter()
        .any(special)
    {
        return Some(Decimal::Infinity);
    }
    if ["-infinity", "-inf"].into_iter().any(special) {
        return Some(Decimal::NegInfinity);
    }
    let (negative, body) = match trimmed.as_bytes().first()? {
        b'-' => (true, &trimmed[1..]),
        b'+' => (false, &trimmed[1..]),
        _ => (false, trimmed),
    };
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(at) => (&body[..at], Some(&body[at + 1..])),
        None => (body, None),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    if !int_part
        .bytes()
        .chain(frac_part.bytes())
        .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let exponent: i64 = match exponent {
        None => 0,
        Some(e) => {
            let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
            if digits.is_empty() || digits.len() > 9 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return None;
            }
            e.parse().ok()?
        }
    };
    let all: Vec<u8> = int_part
        .bytes()
        .chain(frac_part.bytes())
        .map(|b| b - b'0')
        .collect();
    let Some(first) = all.iter().position(|&d| d != 0) else {
        return Some(Decimal::Finite {
            negative: false,
            digits: Vec::new(),
            exp: 0,
        });
    };
    let last = all.iter().rposition(|&d| d != 0)?;
    // value = all × 10^(exponent − frac digits) = 0.d1…dn × 10^(significant int digits + …)
    let significant = i64::try_from(all.len() - first).ok()?;
    let frac_len = i64::try_from(frac_part.len()).ok()?;
    let exp = significant.checked_add(exponent)?.checked_sub(frac_len)?;
    Some(Decimal::Finite {
        negative,
        digits: all[first..=last].to_vec(),
        exp,
    })
}

/// `boolin`: `t`/`true`/`y`/`yes`/`on`/`1` and `f`/`false`/`n`/`no`/`off`/`0`, any case,
/// unique prefixes included.
pub(super) fn parse_bool(text: &str) -> Option<bool> {
    let word = trim_pg(text).to_ascii_lowercase();
    let prefix_of = |full: &str, min: usize| {
        word.len() >= min && word.len() <= full.len() && full.starts_with(word.as_str())
    };
    match word.as_bytes().first()? {
        b't' => prefix_of("true", 1).then_some(true),
        b'f' => prefix_of("false", 1).then_some(false),
        b'y' => prefix_of("yes", 1).then_some(true),
        b'n' => prefix_of("no", 1).then_some(false),
        b'o' if prefix_of("on", 2) => Some(true),
        b'o' if prefix_of("off", 2) => Some(false),
        b'1' if word == "1" => Some(true),
        b'0' if word == "0" => Some(false),
        _ => None,
    }
}

/// `uuid_in`: 32 hex digits, a `-` allowed after any group of four, optional braces.
pub(super) fn parse_uuid(text: &str) -> Option<u128> {
    let body = match text.strip_prefix('{') {
        Some(rest) => rest.strip_suffix('}')?,
        None => text,
    };
    let bytes = body.as_bytes();
    let mut value: u128 = 0;
    let mut count = 0u32;
    let mut i = 0usize;
    while count < 32 {
        let digit = char::from(*bytes.get(i)?).to_digit(16)?;
        value = (value << 4) | u128::from(digit);
        count += 1;
        i += 1;
        // A hyphen may follow every group of four digits but the last.
        if matches!(count, 4 | 8 | 12 | 16 | 20 | 24 | 28) && bytes.get(i) == Some(&b'-') {
            i += 1;
        }
    }
    (i == bytes.len()).then_some(value)
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use crate::fanout::filter::test_support::*;

    const U1: &str = "639f86b1-738b-43ed-bb09-c8d3f3bafa30";
    const U2: &str = "b423f213-ac24-402a-95ea-cf1d94d8e9f0";

    #[test]
    fn int4_compares_numerically() {
        check_all(
            "id",
            &[
                ("eq.5", json!(5), true),
                ("eq.5", json!(6), false),
                ("eq. +5", json!(5), true),
                ("eq.5", json!("5"), true),
                ("neq.5", json!(6), true),
                ("neq.5", json!(5), false),
                ("lt.5", json!(4), true),
                ("lt.5", json!(5), false),
                ("lt.10", json!(9), true),
                ("lte.5", json!(5), true),
                ("lte.5", json!(6), false),
                ("gt.-3", json!(-2), true),
                ("gt.5", json!(5), false),
                ("gte.5", json!(5), true),
                ("gte.5", json!(4), false),
                ("in.(1,5,9)", json!(5), true),
                ("in.(1, 5 ,9)", json!(5), true),
                ("in.(1,5,9)", json!(4), false),
                ("isdistinct.5", json!(4), true),
                ("isdistinct.5", json!(5), false),
                ("is.null", json!(5), false),
                ("eq.2147483647", json!(2147483647), true),
                ("eq.-2147483648", json!(-2147483648i64), true),
            ],
        );
        check_all(
            "small",
            &[("eq.-32768", json!(-32768), true), ("gt.1", json!(2), true)],
        );
        check_all(
            "obj",
            &[
                ("eq.4294967295", json!(4294967295u64), true),
                ("lt.4294967295", json!(4294967295u64), false),
            ],
        );
    }

    #[test]
    fn int8_beyond_2_pow_53_compares_exactly() {
        // 2^53 + 1 and 2^53 are the same f64; they must not be the same int8.
        let above = json!(9_007_199_254_740_993i64);
        let at = json!(9_007_199_254_740_992i64);
        check_all(
            "big",
            &[
                ("eq.9007199254740993", above.clone(), true),
                ("eq.9007199254740993", at.clone(), false),
                ("neq.9007199254740993", at.clone(), true),
                ("neq.9007199254740993", above.clone(), false),
                ("lt.9007199254740993", at.clone(), true),
                ("lt.9007199254740992", at.clone(), false),
                ("lte.9007199254740992", at.clone(), true),
                ("lte.9007199254740992", above.clone(), false),
                ("gt.9007199254740992", above.clone(), true),
                ("gt.9007199254740993", above.clone(), false),
                ("gte.9007199254740993", above.clone(), true),
                ("gte.9007199254740993", at.clone(), false),
                ("in.(9007199254740993,1)", above.clone(), true),
                ("in.(9007199254740993,1)", at.clone(), false),
                ("isdistinct.9007199254740993", at, true),
                ("isdistinct.9007199254740993", above, false),
                ("eq.9223372036854775807", json!(i64::MAX), true),
                ("gte.-9223372036854775808", json!(i64::MIN), true),
            ],
        );
        let parsed: Value = serde_json::from_str(r#"{"big": 9007199254740993}"#).unwrap();
        let row = parsed.as_object().unwrap();
        assert!(bind("big=eq.9007199254740993").matches(row));
        assert!(!bind("big=eq.9007199254740992").matches(row));
    }

    #[test]
    fn uuid_ignores_case_and_format() {
        let u1 = json!(U1);
        let upper = U1.to_uppercase();
        let braces = format!("{{{U1}}}");
        let bare = U1.replace('-', "");
        check_all(
            "uid",
            &[
                (&format!("eq.{upper}"), u1.clone(), true),
                (&format!("eq.{braces}"), u1.clone(), true),
                (&format!("eq.{bare}"), u1.clone(), true),
                (&format!("eq.{U2}"), u1.clone(), false),
                (&format!("neq.{U2}"), u1.clone(), true),
                (&format!("neq.{upper}"), u1.clone(), false),
                (&format!("lt.{U2}"), u1.clone(), true),
                (&format!("lt.{U1}"), u1.clone(), false),
                (&format!("lte.{U1}"), u1.clone(), true),
                (&format!("lte.{U1}"), json!(U2), false),
                (&format!("gt.{U1}"), json!(U2), true),
                (&format!("gt.{U2}"), u1.clone(), false),
                (&format!("gte.{U1}"), u1.clone(), true),
                (&format!("gte.{U2}"), u1.clone(), false),
                (
                    &format!("in.({},{upper})", U2.to_uppercase()),
                    u1.clone(),
                    true,
                ),
                (&format!("in.({U2})"), u1.clone(), false),
                (&format!("isdistinct.{upper}"), u1.clone(), false),
                (&format!("isdistinct.{U2}"), u1, true),
            ],
        );
    }

    #[test]
    fn bool_reads_boolin_spellings() {
        check_all(
            "done",
            &[
                ("eq.true", json!(true), true),
                ("eq.true", json!(false), false),
                ("eq.t", json!(true), true),
                ("eq.YES", json!(true), true),
                ("eq.off", json!(false), true),
                ("eq.0", json!(false), true),
                ("eq.true", json!("t"), true),
                ("neq.true", json!(false), true),
                ("neq.false", json!(false), false),
                ("lt.true", json!(false), true),
                ("lt.false", json!(false), false),
                ("lte.false", json!(false), true),
                ("lte.false", json!(true), false),
                ("gt.false", json!(true), true),
                ("gt.true", json!(true), false),
                ("gte.false", json!(false), true),
                ("gte.true", json!(false), false),
                ("in.(true)", json!(true), true),
                ("in.(t)", json!(false), false),
                ("is.true", json!(true), true),
                ("is.true", json!(false), false),
                ("is.FALSE", json!(false), true),
                ("is.false", json!(true), false),
                ("is.unknown", json!(true), false),
                ("is.Null", json!(false), false),
                ("isdistinct.true", json!(false), true),
                ("isdistinct.true", json!(true), false),
            ],
        );
    }
}
