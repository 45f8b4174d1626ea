//! Property tests of the REST batch body ([`batch_messages`], docs/protocol.md 7.3): it never
//! panics on any bytes or any JSON, accepts exactly the well-formed batches within the name
//! bounds, and every accepted message carries its topic, privacy, event, id and the payload's
//! own text. Failures are kept in `proptest-regressions/`.

use proptest::prelude::*;
use serde_json::{Map, Value};

use super::{batch_messages, Message, RestBounds};

const BOUNDS: RestBounds = RestBounds {
    topic: 24,
    event: 12,
    messages: 1000,
};

/// JSON without floats (whose text `serde_json` may shorten), so a value's text is its
/// `to_string`.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        "(?s).{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A value of the field's type (`typed`), null, or anything.
fn field(typed: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Option<Value>> {
    prop::option::weighted(
        0.85,
        prop_oneof![8 => typed, 1 => Just(Value::Null), 1 => json_value()],
    )
    .boxed()
}

/// A string, sometimes with the tolerated `realtime:` prefix, sometimes over the bounds.
fn name(max: usize) -> impl Strategy<Value = Value> {
    (
        any::<bool>(),
        proptest::string::string_regex(&format!("[a-zé:]{{0,{max}}}")).unwrap(),
    )
        .prop_map(|(prefixed, s)| Value::from(if prefixed { format!("realtime:{s}") } else { s }))
}

/// One message of a batch: each field present or not, of its type or not.
fn message() -> impl Strategy<Value = Value> {
    let private = prop_oneof![
        any::<bool>().prop_map(Value::Bool),
        prop_oneof![Just("true"), Just("TRUE"), Just("no")].prop_map(Value::from),
    ];
    let entry = (
        field(name(28)),
        field(name(14)),
        field(json_value()),
        field(private),
        field("[a-z0-9-]{0,8}".prop_map(Value::from)),
    )
        .prop_map(|(topic, event, payload, private, id)| {
            let mut m = Map::new();
            let fields = [
                ("topic", topic),
                ("event", event),
                ("payload", payload),
                ("private", private),
                ("id", id),
            ];
            for (k, v) in fields {
                if let Some(v) = v {
                    m.insert(k.to_owned(), v);
                }
            }
            Value::Object(m)
        });
    prop_oneof![9 => entry, 1 => json_value()]
}

/// A batch body: usually `{"messages": [...]}`, sometimes anything.
fn batch() -> impl Strategy<Value = Value> {
    let body =
        prop::collection::vec(message(), 0..4).prop_map(|m| serde_json::json!({ "messages": m }));
    prop_oneof![6 => body, 1 => json_value()]
}

/// What one accepted message must be: `(topic, private, the delivered text)`, or `None` when
/// the message is to be refused.
fn expected(m: &Value) -> Option<(String, bool, String)> {
    let m = m.as_object()?;
    let field = |k: &str| m.get(k).filter(|v| !v.is_null());
    let topic = field("topic")?.as_str().filter(|t| !t.is_empty())?;
    let event = field("event")?.as_str()?;
    let payload = field("payload")?;
    let private = match field("private") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => true,
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => false,
        Some(_) => return None,
    };
    let meta = match field("id") {
        None => String::new(),
        Some(Value::String(id)) => format!(r#","meta":{{"id":{}}}"#, Value::from(id.as_str())),
        Some(_) => return None,
    };
    let topic = topic.strip_prefix("realtime:").unwrap_or(topic);
    if topic.len() > BOUNDS.topic || event.len() > BOUNDS.event {
        return None;
    }
    let text = format!(
        r#"{{"type":"broadcast","event":{},"payload":{payload}{meta}}}"#,
        Value::from(event)
    );
    Some((topic.to_owned(), private, text))
}

proptest! {
    #[test]
    fn batch_bodies_never_panic_on_any_bytes(body in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = batch_messages(&body, BOUNDS);
    }

    #[test]
    fn batch_bodies_never_panic_on_any_text(body in "(?s).{0,96}") {
        let _ = batch_messages(body.as_bytes(), BOUNDS);
    }

    #[test]
    fn batches_are_accepted_exactly_when_well_formed_and_keep_their_fields(body in batch()) {
        let got = batch_messages(body.to_string().as_bytes(), BOUNDS);
        let want: Option<Vec<_>> = match body.get("messages") {
            Some(Value::Array(messages)) => messages.iter().map(expected).collect(),
            _ => None,
        };
        match (got, want) {
            (Ok(got), Some(want)) => {
                let got: Vec<(String, bool, String)> = got
                    .into_iter()
                    .map(|(topic, private, message)| match message {
                        Message::Json(text) => (topic, private, text.to_string()),
                        Message::Binary { .. } => (topic, private, "binary".to_owned()),
                    })
                    .collect();
                prop_assert_eq!(got, want);
            }
            (Err(_), None) => {}
            (got, want) => {
                return Err(TestCaseError::fail(format!("{body}: got {got:?}, expected {want:?}")));
            }
        }
    }
}
