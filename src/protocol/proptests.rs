//! Property tests of the framing: every decoder on arbitrary bytes and text, on frames of the
//! right shape with fields of any JSON type (both serializer versions), and round trips through
//! the encoders. Failures are kept in `proptest-regressions/` (see the README).

use super::*;
use proptest::prelude::*;
use serde_json::{json, Value};

/// Strings biased towards the characters JSON escaping gets wrong.
fn tricky_string(max_chars: usize) -> impl Strategy<Value = String> {
    let ch = prop_oneof![
        4 => any::<char>(),
        1 => prop::sample::select(vec![
            '"', '\\', '/', '\n', '\r', '\t', '\u{0}', '\u{8}', '\u{c}', '\u{1f}', '\u{7f}',
            'é', '\u{2028}', '\u{fffd}', '😀',
        ]),
    ];
    prop::collection::vec(ch, 0..=max_chars).prop_map(String::from_iter)
}

/// A string that fits an 8-bit binary length field.
fn short_string() -> impl Strategy<Value = String> {
    tricky_string(80).prop_filter("fits in 255 bytes", |s| s.len() <= 255)
}

/// JSON values without floats, which `serde_json` may not round-trip exactly.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        tricky_string(12).prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(tricky_string(6), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A metadata object, or none.
fn meta() -> impl Strategy<Value = Option<Value>> {
    prop::option::of(
        prop::collection::btree_map("[a-z]{1,6}", any::<bool>(), 1..4)
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k, v.into())).collect())),
    )
}

/// An event name, `broadcast` (whose payload is kept as text) one time in four.
fn event() -> impl Strategy<Value = String> {
    prop_oneof![1 => Just("broadcast".to_owned()), 3 => tricky_string(16)]
}

fn vsn() -> impl Strategy<Value = Vsn> {
    prop_oneof![Just(Vsn::V1), Just(Vsn::V2)]
}

/// Headers of kinds 3 and 4 with small lengths, then arbitrary bytes.
fn plausible_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(vec![3u8, 4]),
        prop::collection::vec(0u8..8, 0..6),
        0u8..3,
        prop::collection::vec(any::<u8>(), 0..48),
    )
        .prop_map(|(kind, lens, encoding, body)| {
            let mut frame = vec![kind];
            frame.extend(lens);
            frame.push(encoding);
            frame.extend(body);
            frame
        })
}

proptest! {
    #[test]
    fn decode_binary_never_panics(frame in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_binary(&frame);
        let _ = decode_binary_bytes(&Bytes::from(frame.clone()));
        let _ = decode_server_binary(&frame);
    }

    #[test]
    fn decode_plausible_binary_never_panics(frame in plausible_frame()) {
        let _ = decode_binary(&frame);
        let _ = decode_binary_bytes(&Bytes::from(frame.clone()));
        let _ = decode_server_binary(&frame);
    }

    #[test]
    fn decode_text_never_panics(text in tricky_string(64), vsn in vsn()) {
        let _ = decode_text(vsn, &text);
    }

    #[test]
    fn json_strings_escape_like_serde_json(s in tricky_string(64)) {
        let mut out = String::new();
        push_json_str(&mut out, &s);
        prop_assert_eq!(out.len(), json_str_len(&s));
        prop_assert_eq!(out, serde_json::to_string(&s).unwrap());
    }

    #[test]
    fn binary_push_round_trips(
        join_ref in short_string(),
        msg_ref in short_string(),
        topic in short_string(),
        event in short_string(),
        meta in meta(),
        payload in json_value(),
        raw in prop::collection::vec(any::<u8>(), 0..64),
        json in any::<bool>(),
    ) {
        let meta_json = meta.as_ref().map(Value::to_string);
        let body = if json { serde_json::to_vec(&payload).unwrap() } else { raw.clone() };
        let frame = encode_binary_push(
            &join_ref, &msg_ref, &topic, &event, meta_json.as_deref(), &body, json,
        ).unwrap();
        let inbound = decode_binary(&frame).unwrap();
        prop_assert_eq!(inbound.join_ref, (!join_ref.is_empty()).then_some(join_ref));
        prop_assert_eq!(inbound.msg_ref, (!msg_ref.is_empty()).then_some(msg_ref));
        prop_assert_eq!(&inbound.topic, &topic);
        prop_assert_eq!(&inbound.event, "broadcast");
        let expected = if json {
            // The frame's payload and metadata bytes, in the documented key order.
            let mut text = format!(
                r#"{{"type":"broadcast","event":{},"payload":{}"#,
                Value::from(event),
                payload,
            );
            if let Some(meta) = &meta_json {
                text = text + r#","meta":"# + meta;
            }
            InboundPayload::Raw(RawJson::parse(&(text + "}")).unwrap())
        } else {
            let meta = meta_json.as_deref().map(|m| RawJson::parse(m).unwrap());
            InboundPayload::Binary(BinaryBroadcast { event, meta, payload: raw.into() })
        };
        prop_assert_eq!(&inbound.payload, &expected);
        prop_assert_eq!(decode_binary_bytes(&frame).unwrap().payload, expected);
    }

    #[test]
    fn binary_broadcast_round_trips(
        topic in short_string(),
        event in short_string(),
        meta in meta(),
        raw in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let meta_json = meta.as_ref().map(Value::to_string);
        let frame =
            encode_binary_broadcast(&topic, &event, meta_json.as_deref(), &raw, false).unwrap();
        let inbound = decode_server_binary(&frame).unwrap();
        prop_assert_eq!(inbound.topic, topic);
        prop_assert_eq!(inbound.join_ref, None);
        let meta = meta_json.as_deref().map(|m| RawJson::parse(m).unwrap());
        prop_assert_eq!(
            inbound.payload,
            InboundPayload::Binary(BinaryBroadcast { event, meta, payload: raw.into() })
        );
    }

    #[test]
    fn text_frames_round_trip(
        vsn in vsn(),
        join_ref in prop::option::of(tricky_string(16)),
        msg_ref in prop::option::of(tricky_string(16)),
        topic in tricky_string(40),
        event in event(),
        payload in json_value(),
    ) {
        let payload_json = payload.to_string();
        let server = encode_text(
            vsn, join_ref.as_deref(), msg_ref.as_deref(), &topic, &event, &payload_json,
        );
        let inbound = decode_text(vsn, &server).unwrap();
        // A broadcast keeps its payload's text; every other event's payload is built.
        let expected = if event == "broadcast" {
            InboundPayload::Raw(RawJson::parse(&payload_json).unwrap())
        } else {
            InboundPayload::Json(payload.clone())
        };
        let expected_join_ref = match vsn {
            Vsn::V1 => None,
            Vsn::V2 => join_ref.clone(),
        };
        prop_assert_eq!(&inbound.join_ref, &expected_join_ref);
        prop_assert_eq!(&inbound.msg_ref, &msg_ref);
        prop_assert_eq!(&inbound.topic, &topic);
        prop_assert_eq!(&inbound.event, &event);
        prop_assert_eq!(&inbound.payload, &expected);

        let client = encode_client_text(
            vsn, join_ref.as_deref(), msg_ref.as_deref(), &topic, &event, &payload_json,
        );
        let inbound = decode_text(vsn, &client).unwrap();
        prop_assert_eq!(inbound.join_ref, join_ref);
        prop_assert_eq!(inbound.msg_ref, msg_ref);
        prop_assert_eq!(inbound.payload, expected);
    }

    #[test]
    fn prefix_payload_suffix_is_encode_text(
        vsn in vsn(),
        join_ref in prop::option::of(tricky_string(16)),
        msg_ref in prop::option::of(tricky_string(16)),
        topic in tricky_string(40),
        event in tricky_string(16),
        payload_json in tricky_string(40),
    ) {
        let (j, r) = (join_ref.as_deref(), msg_ref.as_deref());
        let split = frame_prefix(vsn, j, r, &topic, &event)
            + payload_json.as_str()
            + &frame_suffix(vsn, r);
        prop_assert_eq!(split, encode_text(vsn, j, r, &topic, &event, &payload_json));
    }

    /// Replies serialized in place are the frames of their serialized text, whatever their size
    /// against the room set aside for them.
    #[test]
    fn a_payload_serialized_in_place_is_encode_text_of_its_text(
        vsn in vsn(),
        join_ref in prop::option::of(tricky_string(16)),
        msg_ref in prop::option::of(tricky_string(16)),
        topic in tricky_string(40),
        event in tricky_string(16),
        payload in json_value(),
        padding in 0usize..1200,
    ) {
        let (j, r) = (join_ref.as_deref(), msg_ref.as_deref());
        let payload = json!({"response": payload, "pad": "x".repeat(padding)});
        prop_assert_eq!(
            encode_text_of(vsn, j, r, &topic, &event, &payload).unwrap(),
            encode_text(vsn, j, r, &topic, &event, &payload.to_string())
        );
    }
}

/// A JSON value for a string field (`topic`, `event`): usually a string, sometimes anything.
fn string_field() -> impl Strategy<Value = Value> {
    prop_oneof![
        2 => Just(Value::from("broadcast")),
        4 => tricky_string(12).prop_map(Value::from),
        1 => json_value(),
    ]
}

/// A JSON value for a ref: null, a string, a number, or anything.
fn ref_field() -> impl Strategy<Value = Value> {
    prop_oneof![
        2 => Just(Value::Null),
        3 => tricky_string(8).prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => json_value(),
        1 => "[a-z]{250,260}".prop_map(Value::from),
    ]
}

/// What [`decode_text`] must make of a frame with these fields (`None`: absent), as the
/// error's text or the message. `fields` is topic, event, payload, join_ref, ref.
type Expected = Result<Inbound, String>;

fn expect_string(value: Option<&Value>, field: &'static str) -> Result<String, String> {
    match value {
        None => Err(Error::MissingField(field).to_string()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(Error::NotAString(field).to_string()),
    }
}

fn expect_ref(value: Option<&Value>, field: &'static str) -> Result<Option<String>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() > super::MAX_REF_BYTES => {
            Err(Error::RefTooLong(field).to_string())
        }
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(Error::BadRef(field).to_string()),
    }
}

/// The payload as decoded: a broadcast's is its text as written in the frame.
fn expect_payload(event: &str, payload: &Value) -> InboundPayload {
    if event == "broadcast" {
        InboundPayload::Raw(RawJson::parse(&payload.to_string()).unwrap())
    } else {
        InboundPayload::Json(payload.clone())
    }
}

/// vsn 1: topic, event, payload, join_ref, ref are checked in that order.
fn expect_v1(fields: &[Option<Value>; 5]) -> Expected {
    let [topic, event, payload, join_ref, msg_ref] = fields;
    let topic = expect_string(topic.as_ref(), "topic")?;
    let event = expect_string(event.as_ref(), "event")?;
    let payload = payload
        .as_ref()
        .ok_or_else(|| Error::MissingField("payload").to_string())?;
    Ok(Inbound {
        join_ref: expect_ref(join_ref.as_ref(), "join_ref")?,
        msg_ref: expect_ref(msg_ref.as_ref(), "ref")?,
        payload: expect_payload(&event, payload),
        topic,
        event,
    })
}

/// vsn 2: at least five elements, then join_ref, ref, topic, event in that order.
fn expect_v2(elements: &[Value]) -> Expected {
    let [join_ref, msg_ref, topic, event, payload, ..] = elements else {
        return Err(Error::TooFewElements(elements.len()).to_string());
    };
    let join_ref = expect_ref(Some(join_ref), "join_ref")?;
    let msg_ref = expect_ref(Some(msg_ref), "ref")?;
    let topic = expect_string(Some(topic), "topic")?;
    let event = expect_string(Some(event), "event")?;
    Ok(Inbound {
        join_ref,
        msg_ref,
        payload: expect_payload(&event, payload),
        topic,
        event,
    })
}

/// A vsn 1 frame: each of the five keys present or not, plus other keys, in any order, with
/// or without spaces.
fn v1_frame() -> impl Strategy<Value = ([Option<Value>; 5], String)> {
    let fields = (
        prop::option::weighted(0.9, string_field()),
        prop::option::weighted(0.9, string_field()),
        prop::option::weighted(0.9, json_value()),
        prop::option::of(ref_field()),
        prop::option::of(ref_field()),
    );
    let extra = prop::collection::vec(("x_[a-z]{0,3}", json_value()), 0..3);
    (fields, extra, any::<bool>())
        .prop_flat_map(
            |((topic, event, payload, join_ref, msg_ref), extra, spaced)| {
                let fields = [topic, event, payload, join_ref, msg_ref];
                let keys = ["topic", "event", "payload", "join_ref", "ref"];
                let mut members: Vec<(String, Value)> = keys
                    .iter()
                    .zip(&fields)
                    .filter_map(|(k, v)| v.clone().map(|v| ((*k).to_owned(), v)))
                    .collect();
                members.extend(extra);
                (Just(fields), Just(members).prop_shuffle(), Just(spaced))
            },
        )
        .prop_map(|(fields, members, spaced)| {
            let sep = if spaced { " , " } else { "," };
            let members: Vec<String> = members
                .iter()
                .map(|(k, v)| format!("{}:{}", Value::from(k.as_str()), v))
                .collect();
            (fields, format!("{{{}}}", members.join(sep)))
        })
}

/// A vsn 2 frame: zero to seven elements of plausible types.
fn v2_frame() -> impl Strategy<Value = Vec<Value>> {
    (
        ref_field(),
        ref_field(),
        string_field(),
        string_field(),
        json_value(),
        prop::collection::vec(json_value(), 0..3),
        0usize..8,
    )
        .prop_map(|(join_ref, msg_ref, topic, event, payload, extra, len)| {
            let mut elements = vec![join_ref, msg_ref, topic, event, payload];
            elements.extend(extra);
            elements.truncate(len);
            elements
        })
}

fn outcome(result: Result<Inbound, Error>) -> Expected {
    result.map_err(|e| e.to_string())
}

proptest! {
    #[test]
    fn v1_frames_of_any_field_types_decode_as_specified((fields, text) in v1_frame()) {
        prop_assert_eq!(outcome(decode_text(Vsn::V1, &text)), expect_v1(&fields), "{}", text);
        let wrong = Error::WrongShape { vsn: Vsn::V2, expected: "array" }.to_string();
        prop_assert_eq!(outcome(decode_text(Vsn::V2, &text)), Err(wrong));
    }

    #[test]
    fn v2_frames_of_any_element_types_decode_as_specified(elements in v2_frame()) {
        let text = Value::from(elements.clone()).to_string();
        prop_assert_eq!(outcome(decode_text(Vsn::V2, &text)), expect_v2(&elements), "{}", text);
        let wrong = Error::WrongShape { vsn: Vsn::V1, expected: "object" }.to_string();
        prop_assert_eq!(outcome(decode_text(Vsn::V1, &text)), Err(wrong));
    }

    #[test]
    fn decode_text_never_panics_on_any_json(value in json_value(), vsn in vsn()) {
        let _ = decode_text(vsn, &value.to_string());
        let _ = decode_text(vsn, &json!([null, null, "t", "broadcast", value]).to_string());
    }

    /// A broadcast's payload reaches the message as written: any spacing around it is not
    /// part of it, and numbers no `f64` holds are kept.
    #[test]
    fn broadcast_payload_text_is_kept(
        payload in json_value(),
        number in prop_oneof![
            Just("1.0".to_owned()),
            Just("1e400".to_owned()),
            Just("-0.0".to_owned()),
            "[1-9][0-9]{20,40}",
            "-?[0-9]\\.[0-9]{1,30}[eE][+-]?[0-9]{1,4}",
        ],
        vsn in vsn(),
    ) {
        let sent = format!(r#"{{"z":{payload},"n":{number},"a":[{number}]}}"#);
        let text = match vsn {
            Vsn::V1 => format!(r#"{{"topic":"t","event":"broadcast","payload":  {sent} }}"#),
            Vsn::V2 => format!("[null,null,\"t\",\"broadcast\",\n{sent}\n]"),
        };
        let inbound = decode_text(vsn, &text).unwrap();
        let InboundPayload::Raw(raw) = inbound.payload else {
            return Err(TestCaseError::fail("a broadcast payload is kept as text"));
        };
        prop_assert_eq!(raw.as_str(), sent.as_str());
    }
}
