//! Property tests of the join payload: [`JoinConfig::parse`] and [`JoinConfig::check`] never
//! panic on any JSON, and `check` refuses exactly the joins over a bound, with the first bound
//! crossed (docs/protocol.md 5.1, 10). Failures are kept in `proptest-regressions/`.

use proptest::prelude::*;
use serde_json::{Map, Value};

use super::{Bounds, JoinConfig, Refusal};
use crate::fanout::subscription::{Echoes, Requested};

/// Any JSON, floats included.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "(?s).{0,24}".prop_map(Value::String),
        prop_oneof![Just("true"), Just("TRUE"), Just("false"), Just("")].prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{0,8}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A string of 0 to 60 bytes, often around the bounds below.
fn text() -> impl Strategy<Value = Value> {
    prop_oneof![
        "[a-z]{0,40}".prop_map(Value::from),
        "[éa]{0,30}".prop_map(Value::from),
    ]
}

/// Either a field of its expected type or anything.
fn either(typed: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Value> {
    prop_oneof![3 => typed, 1 => any_json()].boxed()
}

/// One `postgres_changes` entry: usually an object with a filter, sometimes null or anything.
fn change_entry() -> impl Strategy<Value = Value> {
    let entry = (
        prop::option::of(either(text())),
        prop::option::of(either(text())),
        prop::option::of(either(text())),
    )
        .prop_map(|(event, table, filter)| {
            let mut m = Map::new();
            for (k, v) in [("event", event), ("table", table), ("filter", filter)] {
                if let Some(v) = v {
                    m.insert(k.to_owned(), v);
                }
            }
            Value::Object(m)
        });
    prop_oneof![4 => entry, 1 => Just(Value::Null), 1 => any_json()]
}

/// A join payload: a plausible `config` (each section present or not, of its type or not),
/// or any JSON at all.
fn join_payload() -> impl Strategy<Value = Value> {
    let flag = || {
        either(prop_oneof![
            any::<bool>().prop_map(Value::Bool),
            Just(Value::from("True"))
        ])
    };
    let key = either(prop_oneof![
        text(),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from)
    ]);
    let config = (
        prop::option::of(either(
            prop::collection::vec(change_entry(), 0..6).prop_map(Value::Array),
        )),
        prop::option::of(either(text())),
        prop::option::of(key),
        prop::option::of(flag()),
        prop::option::of(flag()),
        prop::option::of(flag()),
    )
        .prop_map(|(changes, component, key, enabled, private, wait)| {
            let mut c = Map::new();
            let put = |m: &mut Map<String, Value>, k: &str, v: Option<Value>| {
                if let Some(v) = v {
                    m.insert(k.to_owned(), v);
                }
            };
            put(&mut c, "postgres_changes", changes);
            put(&mut c, "component", component);
            put(&mut c, "private", private);
            let mut presence = Map::new();
            put(&mut presence, "key", key);
            put(&mut presence, "enabled", enabled);
            c.insert("presence".to_owned(), Value::Object(presence));
            let mut options = Map::new();
            put(&mut options, "wait", wait);
            c.insert(
                "postgres_changes_options".to_owned(),
                Value::Object(options),
            );
            Value::Object(c)
        });
    let payload = (either(config), prop::option::of(either(text()))).prop_map(|(config, token)| {
        let mut p = Map::new();
        p.insert("config".to_owned(), config);
        if let Some(token) = token {
            p.insert("access_token".to_owned(), token);
        }
        Value::Object(p)
    });
    prop_oneof![4 => payload, 1 => any_json()]
}

fn bounds() -> impl Strategy<Value = Bounds> {
    (0usize..64, 0usize..5, 0usize..40, 0usize..48).prop_map(
        |(topic_bytes, changes, filter_bytes, name_bytes)| Bounds {
            topic_bytes,
            changes,
            filter_bytes,
            name_bytes,
        },
    )
}

/// The refusal the bounds call for, read from the JSON itself rather than from a
/// [`JoinConfig`]: entries counted without nulls, then the filters, the component, and the
/// presence key (a string, a number's text, or else a 36-byte UUID).
fn expected(payload: &Value, bounds: Bounds) -> Result<(), Refusal> {
    let config = payload.get("config").and_then(Value::as_object);
    let get = |k: &str| config.and_then(|c| c.get(k));
    let entries: Vec<&Value> = match get("postgres_changes") {
        Some(Value::Array(items)) => items.iter().filter(|v| !v.is_null()).collect(),
        _ => Vec::new(),
    };
    if entries.len() > bounds.changes {
        return Err(Refusal::TooManyChanges {
            limit: bounds.changes,
        });
    }
    let too_long = |what, limit| Err(Refusal::TooLong { what, limit });
    let filter_len = |e: &&Value| e.get("filter").and_then(Value::as_str).map_or(0, str::len);
    if entries.iter().any(|e| filter_len(e) > bounds.filter_bytes) {
        return too_long("filter", bounds.filter_bytes);
    }
    let component = get("component").and_then(Value::as_str).map_or(0, str::len);
    if component > bounds.name_bytes {
        return too_long("component", bounds.name_bytes);
    }
    let key_len = match get("presence").and_then(|p| p.get("key")) {
        Some(Value::String(k)) if !k.is_empty() => k.len(),
        Some(Value::Number(n)) => n.to_string().len(),
        _ => 36,
    };
    if key_len > bounds.name_bytes {
        return too_long("presence key", bounds.name_bytes);
    }
    Ok(())
}

proptest! {
    #[test]
    fn parse_and_check_never_panic_on_any_json(payload in any_json(), bounds in bounds()) {
        let config = JoinConfig::parse(payload.clone());
        let _ = config.check(bounds);
        let _ = serde_json::to_string(&config.table_filters()).unwrap();
    }

    /// The registry's filters (the entries' four keys as sent) and the reply's entries (each
    /// with its id), written from the entries, are the texts of the JSON trees they replace.
    #[test]
    fn filters_and_echoes_are_the_texts_of_their_trees(payload in join_payload()) {
        let config = JoinConfig::parse(payload.clone());
        let tree: Value = config
            .changes
            .iter()
            .map(|req| {
                let pick = |k: &str| req.raw.get(k).cloned().unwrap_or(Value::Null);
                serde_json::json!({"event": pick("event"), "schema": pick("schema"),
                                   "table": pick("table"), "filter": pick("filter")})
            })
            .collect();
        let text = serde_json::to_string(&config.table_filters()).unwrap();
        prop_assert_eq!(text, tree.to_string());
        let echoes = Value::Array(config.changes.iter().map(Requested::echo).collect());
        let text = serde_json::to_string(&Echoes(&config.changes)).unwrap();
        prop_assert_eq!(text, echoes.to_string());
    }

    #[test]
    fn check_refuses_exactly_what_is_over_the_bounds(
        payload in join_payload(),
        bounds in bounds(),
    ) {
        let config = JoinConfig::parse(payload.clone());
        prop_assert_eq!(config.check(bounds), expected(&payload, bounds), "{}", payload);
    }

    /// Within generous bounds every join passes, whatever else its payload holds.
    #[test]
    fn nothing_is_refused_within_the_bounds(payload in join_payload()) {
        let roomy = Bounds { topic_bytes: 1 << 20, changes: 1 << 20, filter_bytes: 1 << 20,
                             name_bytes: 1 << 20 };
        prop_assert_eq!(JoinConfig::parse(payload.clone()).check(roomy), Ok(()));
    }
}
