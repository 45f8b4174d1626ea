//! Typed values: the `Key` a filter value or record value becomes, with PostgreSQL's equality,
//! hashing and order per type (floats, exact decimals, JSON, arrays, ±infinity bounds).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use chrono::NaiveDate;

/// A value normalised for comparison: equal keys are equal values of the column's type, and
/// equal values hash alike, so `in` lists can be hash sets.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Key {
    Int(i64),
    Float(FloatKey),
    Numeric(Decimal),
    Bool(bool),
    /// Text types (already trimmed for bpchar, lowercased for citext) and other types' text.
    Text(String),
    Uuid(u128),
    Date(Bounded<NaiveDate>),
    /// Microseconds since midnight.
    Time(i64),
    /// UTC-adjusted microseconds, then the zone in seconds west of UTC (PostgreSQL's order).
    TimeTz(i64, i32),
    /// Microseconds since 1970-01-01 00:00 (UTC for timestamptz).
    Timestamp(Bounded<i64>),
    Json(JsonKey),
    Array(ArrayKey),
}

/// Order of two keys of the same column type; `None` when the type has no order.
pub(super) fn key_cmp(a: &Key, b: &Key) -> Option<Ordering> {
    match (a, b) {
        (Key::Int(x), Key::Int(y)) => Some(x.cmp(y)),
        (Key::Float(x), Key::Float(y)) => Some(x.cmp(y)),
        (Key::Numeric(x), Key::Numeric(y)) => Some(x.cmp(y)),
        (Key::Bool(x), Key::Bool(y)) => Some(x.cmp(y)),
        (Key::Text(x), Key::Text(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        (Key::Uuid(x), Key::Uuid(y)) => Some(x.cmp(y)),
        (Key::Date(x), Key::Date(y)) => Some(x.cmp(y)),
        (Key::Time(x), Key::Time(y)) => Some(x.cmp(y)),
        (Key::TimeTz(t1, z1), Key::TimeTz(t2, z2)) => Some(t1.cmp(t2).then(z1.cmp(z2))),
        (Key::Timestamp(x), Key::Timestamp(y)) => Some(x.cmp(y)),
        (Key::Array(x), Key::Array(y)) => array_cmp(x, y),
        _ => None,
    }
}

/// A value with PostgreSQL's `-infinity` and `infinity` around it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Bounded<T> {
    NegInfinity,
    Finite(T),
    Infinity,
}

/// An f64 with PostgreSQL's float order: NaN equals NaN and is the greatest, `-0` equals `0`.
#[derive(Debug, Clone, Copy)]
pub(super) struct FloatKey(pub(super) f64);

impl PartialEq for FloatKey {
    fn eq(&self, other: &FloatKey) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for FloatKey {}

impl PartialOrd for FloatKey {
    fn partial_cmp(&self, other: &FloatKey) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for FloatKey {
    fn cmp(&self, other: &FloatKey) -> Ordering {
        match (self.0.is_nan(), other.0.is_nan()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            // Neither is NaN, so `partial_cmp` is always `Some`.
            (false, false) => self.0.partial_cmp(&other.0).unwrap_or(Ordering::Equal),
        }
    }
}

impl Hash for FloatKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let bits = if self.0.is_nan() {
            f64::NAN.to_bits()
        } else if self.0 == 0.0 {
            0
        } else {
            self.0.to_bits()
        };
        bits.hash(state);
    }
}

/// An exact decimal in canonical form, so derived equality and hashing are numeric equality.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Decimal {
    NegInfinity,
    /// `±0.d1d2…dn × 10^exp` with `d1 != 0` and `dn != 0`; zero is `digits` empty, `exp` 0,
    /// `negative` false.
    Finite {
        negative: bool,
        digits: Vec<u8>,
        exp: i64,
    },
    Infinity,
    NaN,
}

impl Decimal {
    fn rank(&self) -> u8 {
        match self {
            Decimal::NegInfinity => 0,
            Decimal::Finite { .. } => 1,
            Decimal::Infinity => 2,
            Decimal::NaN => 3,
        }
    }
}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Decimal) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Decimal {
    fn cmp(&self, other: &Decimal) -> Ordering {
        match (self, other) {
            (
                Decimal::Finite {
                    negative: n1,
                    digits: d1,
                    exp: e1,
                },
                Decimal::Finite {
                    negative: n2,
                    digits: d2,
                    exp: e2,
                },
            ) => {
                let sign = |negative: bool, digits: &[u8]| match (digits.is_empty(), negative) {
                    (true, _) => 0i8,
                    (false, true) => -1,
                    (false, false) => 1,
                };
                let (s1, s2) = (sign(*n1, d1), sign(*n2, d2));
                if s1 != s2 || s1 == 0 {
                    return s1.cmp(&s2);
                }
                let magnitude = e1.cmp(e2).then_with(|| d1.cmp(d2));
                if s1 > 0 {
                    magnitude
                } else {
                    magnitude.reverse()
                }
            }
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

/// A JSON value with jsonb equality: object keys unordered, numbers compared as numerics.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum JsonKey {
    Null,
    Bool(bool),
    Number(Decimal),
    String(String),
    Array(Vec<JsonKey>),
    Object(BTreeMap<String, JsonKey>),
}

/// An array value: its dimensions and its elements in storage order (NULL is `None`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct ArrayKey {
    pub(super) dims: Vec<usize>,
    pub(super) items: Vec<Option<Key>>,
}

/// PostgreSQL's `array_cmp`: elements first (NULL sorts last), then length, then dimensions.
fn array_cmp(a: &ArrayKey, b: &ArrayKey) -> Option<Ordering> {
    for (x, y) in a.items.iter().zip(&b.items) {
        let order = match (x, y) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (Some(x), Some(y)) => key_cmp(x, y)?,
        };
        if order != Ordering::Equal {
            return Some(order);
        }
    }
    Some(
        a.items
            .len()
            .cmp(&b.items.len())
            .then(a.dims.len().cmp(&b.dims.len()))
            .then_with(|| a.dims.cmp(&b.dims)),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::fanout::filter::test_support::*;

    #[test]
    fn numeric_compares_exact_decimals() {
        check_all(
            "amount",
            &[
                ("eq.1.10", json!(1.1), true),
                ("eq.1.1", json!(1.2), false),
                ("eq.0.1", json!(0.1), true),
                (
                    "eq.12345678901234567890",
                    json!(12_345_678_901_234_567_890u64),
                    true,
                ),
                (
                    "eq.12345678901234567891",
                    json!(12_345_678_901_234_567_890u64),
                    false,
                ),
                ("eq.123.450", json!("123.45"), true),
                ("neq.0", json!(-0.0), false),
                ("neq.0", json!(0.001), true),
                (
                    "lt.12345678901234567890.5",
                    json!(12_345_678_901_234_567_890u64),
                    true,
                ),
                ("lt.-1.5", json!(-1.25), false),
                ("lte.-1.5", json!(-1.5), true),
                ("lte.-1.5", json!(-1.4), false),
                ("gt.1e3", json!(1000.5), true),
                ("gt.1e3", json!(1000), false),
                ("gte.1e3", json!(1000), true),
                ("gte.1e3", json!(999), false),
                ("gt.-0.5", json!(0), true),
                ("gt.1000000", json!("NaN"), true),
                ("eq.NaN", json!("NaN"), true),
                ("lt.Infinity", json!("NaN"), false),
                ("gt.99999999999999999999", json!("Infinity"), true),
                ("lt.-1e400", json!("-Infinity"), true),
                ("in.(1.0,2.50)", json!(2.5), true),
                ("in.(1.0,2.50)", json!(3), false),
                ("isdistinct.2.50", json!(2.5), false),
                ("isdistinct.2.50", json!(2.51), true),
            ],
        );
    }

    #[test]
    fn float8_and_float4_follow_postgres_float_order() {
        check_all(
            "ratio",
            &[
                ("eq.1.5", json!(1.5), true),
                ("eq.1.5", json!(1.25), false),
                ("eq.2", json!(2), true),
                ("neq.2", json!(2.0), false),
                ("neq.1.5", json!(2), true),
                ("lt.2", json!(1.999), true),
                ("lt.2", json!(2), false),
                ("lte.2", json!(2.0), true),
                ("lte.2", json!(2.5), false),
                ("gt.-1e10", json!(0), true),
                ("gt.0", json!(-0.5), false),
                ("gte.2", json!(2), true),
                ("gte.2", json!(1.5), false),
                ("eq.-0", json!(0.0), true),
                ("eq.NaN", json!("NaN"), true),
                ("gt.Infinity", json!("NaN"), true),
                ("lt.-Infinity", json!(-1e308), false),
                ("eq.-Infinity", json!("-Infinity"), true),
                ("in.(0.5,1.5)", json!(1.5), true),
                ("in.(0.5,1.5)", json!(2.5), false),
                ("isdistinct.0.5", json!(0.5), false),
                ("isdistinct.0.5", json!(0.25), true),
            ],
        );
        check_all(
            "r4",
            &[
                ("eq.1.1", json!(1.1), true),
                ("gt.1.1", json!(1.2), true),
                ("lt.1.1", json!(1.1), false),
            ],
        );
    }
}
