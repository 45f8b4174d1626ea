//! Examples from docs/protocol.md and property tests of the framing.

use super::*;
use serde_json::{json, Value};

/// The kind 3 frame docs/protocol.md 2.3 captured from realtime-js.
const CAPTURED_PUSH: &[u8] = &[
    0x03, 0x01, 0x01, 0x0e, 0x02, 0x00, 0x01, 0x36, 0x37, 0x72, 0x65, 0x61, 0x6c, 0x74, 0x69, 0x6d,
    0x65, 0x3a, 0x72, 0x6f, 0x6f, 0x6d, 0x31, 0x65, 0x76, 0x7b, 0x22, 0x61, 0x22, 0x3a, 0x22, 0xc3,
    0xa9, 0x22, 0x7d,
];

/// The JSON payload built as a tree, whichever way it was decoded.
fn json_payload(inbound: &Inbound) -> Value {
    match &inbound.payload {
        InboundPayload::Json(value) => value.clone(),
        InboundPayload::Raw(raw) => raw.to_value().unwrap(),
        InboundPayload::Binary(b) => panic!("expected a json payload, got {b:?}"),
    }
}

/// The text of a broadcast's JSON payload.
fn raw_payload(inbound: &Inbound) -> &str {
    match &inbound.payload {
        InboundPayload::Raw(raw) => raw.as_str(),
        other => panic!("expected a raw payload, got {other:?}"),
    }
}

fn raw(text: &str) -> RawJson {
    RawJson::parse(text).unwrap()
}

fn binary_payload(inbound: &Inbound) -> &BinaryBroadcast {
    match &inbound.payload {
        InboundPayload::Binary(b) => b,
        other => panic!("expected a binary payload, got {other:?}"),
    }
}

#[test]
fn vsn_comes_from_the_query_and_defaults_to_v1() {
    assert_eq!(Vsn::from_query(None).unwrap(), Vsn::V1);
    assert_eq!(Vsn::from_query(Some("1.0.0")).unwrap(), Vsn::V1);
    assert_eq!(Vsn::from_query(Some("2.0.0")).unwrap(), Vsn::V2);
    for bad in ["", "3.0.0", "2.0", "v2", " 2.0.0"] {
        let err = Vsn::from_query(Some(bad)).unwrap_err();
        assert!(matches!(err, Error::UnsupportedVsn(ref v) if v == bad));
    }
    assert_eq!(
        Vsn::from_query(Some("3.0.0")).unwrap_err().to_string(),
        "unsupported serializer version 3.0.0"
    );
    assert_eq!(Vsn::V2.to_string(), "2.0.0");
}

/// realtime-py sends keys as event, payload, topic, ref, join_ref.
#[test]
fn v1_decodes_realtime_py_key_order() {
    let text = r#"{"event":"phx_join","payload":{"config":{}},"topic":"realtime:room1","ref":"1","join_ref":null}"#;
    let inbound = decode_text(Vsn::V1, text).unwrap();
    assert_eq!(
        inbound,
        Inbound {
            join_ref: None,
            msg_ref: Some("1".into()),
            topic: "realtime:room1".into(),
            event: "phx_join".into(),
            payload: InboundPayload::Json(json!({"config": {}})),
        }
    );
}

#[test]
fn v1_missing_join_ref_and_ref_are_null() {
    let inbound = decode_text(
        Vsn::V1,
        r#"{"topic":"phoenix","event":"heartbeat","payload":{}}"#,
    )
    .unwrap();
    assert_eq!(inbound.join_ref, None);
    assert_eq!(inbound.msg_ref, None);
    assert_eq!(json_payload(&inbound), json!({}));

    let inbound = decode_text(
        Vsn::V1,
        r#"{"join_ref":"2","ref":null,"payload":[1],"event":"e","topic":"t"}"#,
    )
    .unwrap();
    assert_eq!(inbound.join_ref.as_deref(), Some("2"));
    assert_eq!(inbound.msg_ref, None);
}

#[test]
fn numeric_refs_become_decimal_strings() {
    let inbound = decode_text(
        Vsn::V1,
        r#"{"topic":"t","event":"e","payload":null,"ref":12,"join_ref":3}"#,
    )
    .unwrap();
    assert_eq!(inbound.msg_ref.as_deref(), Some("12"));
    assert_eq!(inbound.join_ref.as_deref(), Some("3"));
    let inbound = decode_text(Vsn::V2, r#"[7,null,"t","e",{}]"#).unwrap();
    assert_eq!(inbound.join_ref.as_deref(), Some("7"));
    assert_eq!(inbound.msg_ref, None);
}

#[test]
fn bad_refs_are_rejected() {
    let err = decode_text(
        Vsn::V1,
        r#"{"topic":"t","event":"e","payload":1,"ref":true}"#,
    )
    .unwrap_err();
    assert!(matches!(err, Error::BadRef("ref")), "{err:?}");
    let err = decode_text(Vsn::V2, r#"[{},null,"t","e",{}]"#).unwrap_err();
    assert!(matches!(err, Error::BadRef("join_ref")), "{err:?}");
    // A ref of the wrong type is named as such however long its text.
    let big = json!({ "k": "x".repeat(300) });
    let err = decode_text(Vsn::V2, &json!([big, null, "t", "e", {}]).to_string()).unwrap_err();
    assert!(matches!(err, Error::BadRef("join_ref")), "{err:?}");
    let long = "x".repeat(256);
    let err = decode_text(Vsn::V2, &json!([long, null, "t", "e", {}]).to_string()).unwrap_err();
    assert!(matches!(err, Error::RefTooLong("join_ref")), "{err:?}");
    let err = decode_text(
        Vsn::V2,
        &json!(["x".repeat(255), null, "t", "e", {}]).to_string(),
    );
    assert!(err.is_ok(), "{err:?}");
}

#[test]
fn v1_topic_event_and_payload_are_required() {
    let cases = [
        (r#"{"event":"e","payload":{}}"#, "topic"),
        (r#"{"topic":"t","payload":{}}"#, "event"),
        (r#"{"topic":"t","event":"e"}"#, "payload"),
    ];
    for (text, field) in cases {
        match decode_text(Vsn::V1, text) {
            Err(Error::MissingField(f)) => assert_eq!(f, field),
            other => panic!("{text}: {other:?}"),
        }
    }
    for (text, field) in [
        (r#"{"topic":1,"event":"e","payload":{}}"#, "topic"),
        (r#"{"topic":"t","event":null,"payload":{}}"#, "event"),
    ] {
        match decode_text(Vsn::V1, text) {
            Err(Error::NotAString(f)) => assert_eq!(f, field),
            other => panic!("{text}: {other:?}"),
        }
    }
}

#[test]
fn v2_decodes_array_and_ignores_trailing_elements() {
    let inbound = decode_text(
        Vsn::V2,
        r#"["3","3","realtime:room1","phx_join",{"config":{}}]"#,
    )
    .unwrap();
    assert_eq!(
        inbound,
        Inbound {
            join_ref: Some("3".into()),
            msg_ref: Some("3".into()),
            topic: "realtime:room1".into(),
            event: "phx_join".into(),
            payload: InboundPayload::Json(json!({"config": {}})),
        }
    );
    let inbound = decode_text(Vsn::V2, r#"[null,"8","phoenix","heartbeat",{},"x",9]"#).unwrap();
    assert_eq!(inbound.join_ref, None);
    assert_eq!(inbound.msg_ref.as_deref(), Some("8"));
    assert_eq!(inbound.event, "heartbeat");
}

#[test]
fn v2_rejects_short_arrays_and_non_string_topic() {
    let err = decode_text(Vsn::V2, r#"[null,"8","phoenix","heartbeat"]"#).unwrap_err();
    assert!(matches!(err, Error::TooFewElements(4)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "vsn 2.0.0 frame has 4 elements, expected 5"
    );
    let err = decode_text(Vsn::V2, r#"[null,"8",null,"heartbeat",{}]"#).unwrap_err();
    assert!(matches!(err, Error::NotAString("topic")), "{err:?}");
    let err = decode_text(Vsn::V2, r#"[null,"8","phoenix",[],{}]"#).unwrap_err();
    assert!(matches!(err, Error::NotAString("event")), "{err:?}");
}

/// A client on the wrong vsn gets a clear error rather than a guess.
#[test]
fn each_vsn_rejects_the_other_shape() {
    let err = decode_text(Vsn::V1, r#"[null,"8","phoenix","heartbeat",{}]"#).unwrap_err();
    assert_eq!(err.to_string(), "vsn 1.0.0 frame must be a json object");
    let err = decode_text(Vsn::V2, r#"{"topic":"t","event":"e","payload":{}}"#).unwrap_err();
    assert_eq!(err.to_string(), "vsn 2.0.0 frame must be a json array");
    let err = decode_text(Vsn::V2, "42").unwrap_err();
    assert!(matches!(err, Error::WrongShape { .. }), "{err:?}");
}

#[test]
fn bad_json_is_rejected() {
    for vsn in [Vsn::V1, Vsn::V2] {
        for text in [
            "",
            "{",
            "[null,",
            "nope",
            r#"{"topic":"t"} x"#,
            "\u{feff}{}",
        ] {
            let err = decode_text(vsn, text).unwrap_err();
            assert!(matches!(err, Error::Json(_)), "{text:?}: {err:?}");
            assert_eq!(err.to_string(), "frame is not valid json");
        }
    }
}

/// Server frames must be readable by the client-side tests and load tool.
#[test]
fn server_text_frames_decode() {
    let v1 = r#"{"topic":"realtime:room1","event":"broadcast","payload":{"type":"broadcast","event":"ping","payload":{"n":1}},"ref":null}"#;
    let inbound = decode_text(Vsn::V1, v1).unwrap();
    assert_eq!(inbound.event, "broadcast");
    assert_eq!(inbound.join_ref, None);
    assert_eq!(
        raw_payload(&inbound),
        r#"{"type":"broadcast","event":"ping","payload":{"n":1}}"#
    );
    let v2 = r#"[null,"8","phoenix","phx_reply",{"status":"ok","response":{}}]"#;
    let inbound = decode_text(Vsn::V2, v2).unwrap();
    assert_eq!(inbound.msg_ref.as_deref(), Some("8"));
    assert_eq!(inbound.event, "phx_reply");
}

#[test]
fn encode_text_matches_protocol_examples() {
    assert_eq!(
        encode_text(
            Vsn::V1,
            Some("ignored"),
            None,
            "realtime:room1",
            "broadcast",
            r#"{"type":"broadcast","event":"ping","payload":{"n":1}}"#
        ),
        r#"{"topic":"realtime:room1","event":"broadcast","payload":{"type":"broadcast","event":"ping","payload":{"n":1}},"ref":null}"#
    );
    assert_eq!(
        encode_text(
            Vsn::V2,
            None,
            Some("8"),
            "phoenix",
            "phx_reply",
            r#"{"status":"ok","response":{}}"#
        ),
        r#"[null,"8","phoenix","phx_reply",{"status":"ok","response":{}}]"#
    );
    assert_eq!(
        encode_text(
            Vsn::V2,
            Some("6"),
            None,
            "realtime:room1",
            "system",
            r#"{"status":"ok"}"#
        ),
        r#"["6",null,"realtime:room1","system",{"status":"ok"}]"#
    );
    assert_eq!(
        encode_text(
            Vsn::V1,
            Some("6"),
            Some("6"),
            "realtime:room1",
            "phx_close",
            "{}"
        ),
        r#"{"topic":"realtime:room1","event":"phx_close","payload":{},"ref":"6"}"#
    );
}

#[test]
fn encode_text_escapes_strings() {
    let topic = "realtime:a\"b\\c\nd\u{1}\u{7f}é\u{2028}😀";
    let frame = encode_text(Vsn::V2, Some("\t"), Some("\u{8}\u{c}"), topic, "e\r", "0");
    assert_eq!(
        frame,
        "[\"\\t\",\"\\b\\f\",\"realtime:a\\\"b\\\\c\\nd\\u0001\u{7f}é\u{2028}😀\",\"e\\r\",0]"
    );
    let inbound = decode_text(Vsn::V2, &frame).unwrap();
    assert_eq!(inbound.topic, topic);
    assert_eq!(inbound.event, "e\r");
    assert_eq!(inbound.join_ref.as_deref(), Some("\t"));
}

#[test]
fn frame_split_is_documented_shape() {
    assert_eq!(
        frame_prefix(Vsn::V1, None, Some("1"), "t", "broadcast"),
        r#"{"topic":"t","event":"broadcast","payload":"#
    );
    assert_eq!(frame_suffix(Vsn::V1, Some("1")), r#","ref":"1"}"#);
    assert_eq!(frame_suffix(Vsn::V1, None), r#","ref":null}"#);
    assert!(matches!(frame_suffix(Vsn::V1, None), Cow::Borrowed(_)));
    assert_eq!(
        frame_prefix(Vsn::V2, Some("1"), None, "t", "broadcast"),
        r#"["1",null,"t","broadcast","#
    );
    assert_eq!(frame_suffix(Vsn::V2, Some("1")), "]");
}

#[test]
fn client_text_v1_carries_join_ref() {
    let frame = encode_client_text(
        Vsn::V1,
        Some("1"),
        Some("2"),
        "realtime:r",
        "phx_join",
        "{}",
    );
    assert_eq!(
        frame,
        r#"{"topic":"realtime:r","event":"phx_join","payload":{},"ref":"2","join_ref":"1"}"#
    );
    let frame = encode_client_text(Vsn::V1, None, None, "phoenix", "heartbeat", "{}");
    assert_eq!(
        frame,
        r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":null,"join_ref":null}"#
    );
    assert_eq!(
        encode_client_text(Vsn::V2, Some("1"), Some("2"), "t", "e", "{}"),
        encode_text(Vsn::V2, Some("1"), Some("2"), "t", "e", "{}")
    );
}

#[test]
fn decode_binary_reads_captured_realtime_js_push() {
    let inbound = decode_binary(CAPTURED_PUSH).unwrap();
    assert_eq!(
        inbound,
        Inbound {
            join_ref: Some("6".into()),
            msg_ref: Some("7".into()),
            topic: "realtime:room1".into(),
            event: "broadcast".into(),
            payload: InboundPayload::Raw(raw(
                r#"{"type":"broadcast","event":"ev","payload":{"a":"é"}}"#
            )),
        }
    );
    // Same message as the equivalent JSON push.
    let text = r#"["6","7","realtime:room1","broadcast",{"type":"broadcast","event":"ev","payload":{"a":"é"}}]"#;
    assert_eq!(decode_text(Vsn::V2, text).unwrap(), inbound);
}

#[test]
fn encode_binary_push_reproduces_captured_frame() {
    let frame = encode_binary_push(
        "6",
        "7",
        "realtime:room1",
        "ev",
        None,
        r#"{"a":"é"}"#.as_bytes(),
        true,
    )
    .unwrap();
    assert_eq!(&frame[..], CAPTURED_PUSH);
}

/// Guards against any out-of-range read on a short frame.
#[test]
fn truncated_push_is_an_error_at_every_length() {
    for len in 0..CAPTURED_PUSH.len() {
        let result = decode_binary(&CAPTURED_PUSH[..len]);
        assert!(result.is_err(), "prefix of {len} bytes decoded: {result:?}");
    }
    // Raw payloads may be any length, so only header and strings truncate.
    let frame = encode_binary_push("1", "2", "t", "é", Some(r#"{"p":1}"#), b"xy", false).unwrap();
    let strings_end = frame.len() - 2;
    for len in 0..strings_end {
        let err = decode_binary(&frame[..len]).unwrap_err();
        assert!(
            matches!(err, Error::Truncated | Error::Utf8 { .. }),
            "{len}: {err:?}"
        );
    }
    for len in strings_end..=frame.len() {
        let inbound = decode_binary(&frame[..len]).unwrap();
        assert_eq!(binary_payload(&inbound).payload, &frame[strings_end..len]);
    }
    assert!(matches!(decode_binary(&[]), Err(Error::Truncated)));
    assert_eq!(Error::Truncated.to_string(), "binary frame truncated");
}

#[test]
fn push_with_metadata_and_raw_payload() {
    let frame = encode_binary_push(
        "1",
        "2",
        "realtime:r",
        "cur",
        Some(r#"{"persist":true}"#),
        &[0, 159, 255],
        false,
    )
    .unwrap();
    let inbound = decode_binary(&frame).unwrap();
    assert_eq!(inbound.event, "broadcast");
    assert_eq!(
        binary_payload(&inbound),
        &BinaryBroadcast {
            event: "cur".into(),
            meta: Some(raw(r#"{"persist":true}"#)),
            payload: Bytes::from_static(&[0, 159, 255]),
        }
    );
    assert_eq!(decode_binary_bytes(&frame).unwrap(), inbound);

    let frame = encode_binary_push(
        "1",
        "2",
        "t",
        "cur",
        Some(r#"{"persist":true}"#),
        b"[1]",
        true,
    )
    .unwrap();
    assert_eq!(
        raw_payload(&decode_binary(&frame).unwrap()),
        r#"{"type":"broadcast","event":"cur","payload":[1],"meta":{"persist":true}}"#
    );
}

/// realtime-js writes a null ref as an empty string.
#[test]
fn empty_binary_refs_are_null() {
    let frame = encode_binary_push("", "", "t", "e", None, b"{}", true).unwrap();
    let inbound = decode_binary(&frame).unwrap();
    assert_eq!(inbound.join_ref, None);
    assert_eq!(inbound.msg_ref, None);
}

#[test]
fn multibyte_utf8_fields_decode() {
    let frame = encode_binary_push(
        "1",
        "2",
        "realtime:ルーム",
        "événement",
        None,
        b"\"\xc3\xa9\"",
        true,
    )
    .unwrap();
    let inbound = decode_binary(&frame).unwrap();
    assert_eq!(inbound.topic, "realtime:ルーム");
    assert_eq!(
        json_payload(&inbound),
        json!({"type":"broadcast","event":"événement","payload":"é"})
    );
    // A length that splits a multi-byte character is bad UTF-8.
    let mut split = frame.to_vec();
    // "realtime:" is 9 bytes, so 11 ends two bytes into the 3-byte 'ル'.
    split[3] = 11;
    let err = decode_binary(&split).unwrap_err();
    assert!(matches!(err, Error::Utf8 { field: "topic", .. }), "{err:?}");
}

#[test]
fn malformed_binary_pushes_are_rejected() {
    let mut bad_utf8 = CAPTURED_PUSH.to_vec();
    bad_utf8[7] = 0xff; // the join_ref byte
    let err = decode_binary(&bad_utf8).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Utf8 {
                field: "join_ref",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "binary frame field join_ref is not valid utf-8"
    );

    let frame = encode_binary_push("1", "2", "t", "e", Some("{nope"), b"{}", true).unwrap();
    assert!(matches!(decode_binary(&frame), Err(Error::MetadataJson(_))));
    let frame = encode_binary_push("1", "2", "t", "e", Some("[1]"), b"{}", true).unwrap();
    assert!(matches!(
        decode_binary(&frame),
        Err(Error::MetadataNotObject)
    ));
    let frame = encode_binary_push("1", "2", "t", "e", None, b"{", true).unwrap();
    assert!(matches!(decode_binary(&frame), Err(Error::PayloadJson(_))));
    let frame = encode_binary_push("1", "2", "t", "e", None, b"", true).unwrap();
    assert!(matches!(decode_binary(&frame), Err(Error::PayloadJson(_))));

    let mut unknown_encoding = CAPTURED_PUSH.to_vec();
    unknown_encoding[6] = 2;
    let err = decode_binary(&unknown_encoding).unwrap_err();
    assert!(matches!(err, Error::UnknownEncoding(2)), "{err:?}");

    for kind in [0, 1, 2, 4, 5, 255] {
        let mut frame = CAPTURED_PUSH.to_vec();
        frame[0] = kind;
        let err = decode_binary(&frame).unwrap_err();
        assert!(matches!(err, Error::UnknownKind(k) if k == kind), "{err:?}");
    }
    assert_eq!(
        Error::UnknownKind(9).to_string(),
        "unknown binary frame kind 9"
    );
}

#[test]
fn encode_binary_broadcast_layout() {
    let frame =
        encode_binary_broadcast("t1", "ev", Some(r#"{"id":"x"}"#), b"\x00\x01", false).unwrap();
    let mut expected = vec![4, 2, 2, 10, 0];
    expected.extend_from_slice(b"t1ev{\"id\":\"x\"}\x00\x01");
    assert_eq!(&frame[..], &expected[..]);

    let frame = encode_binary_broadcast("t", "e", None, b"{}", true).unwrap();
    assert_eq!(&frame[..], b"\x04\x01\x01\x00\x01te{}");
    assert_eq!(
        encode_binary_broadcast("t", "e", Some(""), b"{}", true).unwrap(),
        frame
    );
}

#[test]
fn decode_server_binary_reads_kind_4() {
    let frame = encode_binary_broadcast(
        "realtime:r",
        "ev",
        Some(r#"{"id":"u"}"#),
        b"{\"n\":1}",
        true,
    )
    .unwrap();
    assert_eq!(
        decode_server_binary(&frame).unwrap(),
        Inbound {
            join_ref: None,
            msg_ref: None,
            topic: "realtime:r".into(),
            event: "broadcast".into(),
            payload: InboundPayload::Raw(raw(
                r#"{"type":"broadcast","event":"ev","payload":{"n":1},"meta":{"id":"u"}}"#
            )),
        }
    );
    for len in 0..frame.len() {
        assert!(decode_server_binary(&frame[..len]).is_err(), "{len}");
    }
    // Each side decodes only the kind addressed to it.
    assert!(matches!(decode_binary(&frame), Err(Error::UnknownKind(4))));
    assert!(matches!(
        decode_server_binary(CAPTURED_PUSH),
        Err(Error::UnknownKind(3))
    ));
}

#[test]
fn strings_over_255_bytes_are_rejected() {
    let long = "x".repeat(256);
    let max = "x".repeat(255);
    assert!(encode_binary_broadcast(&max, &max, Some(&max), b"", false).is_ok());
    let err = encode_binary_broadcast(&long, "e", None, b"", false).unwrap_err();
    assert!(matches!(err, Error::FieldTooLong("topic")), "{err:?}");
    assert_eq!(err.to_string(), "string field topic over 255 bytes");
    // 128 two-byte characters: 128 chars but 256 bytes.
    let wide = "é".repeat(128);
    let err = encode_binary_broadcast("t", &wide, None, b"", false).unwrap_err();
    assert!(matches!(err, Error::FieldTooLong("event")), "{err:?}");
    let err = encode_binary_broadcast("t", "e", Some(&long), b"", false).unwrap_err();
    assert!(matches!(err, Error::FieldTooLong("metadata")), "{err:?}");
    let err = encode_binary_push(&long, "2", "t", "e", None, b"", false).unwrap_err();
    assert!(matches!(err, Error::FieldTooLong("join_ref")), "{err:?}");
    let err = encode_binary_push("1", &long, "t", "e", None, b"", false).unwrap_err();
    assert!(matches!(err, Error::FieldTooLong("ref")), "{err:?}");
}

#[test]
fn error_messages_are_lowercase_without_period() {
    let errors = [
        Error::UnsupportedVsn("3".into()),
        decode_text(Vsn::V1, "{").unwrap_err(),
        Error::WrongShape {
            vsn: Vsn::V1,
            expected: "object",
        },
        Error::TooFewElements(1),
        Error::MissingField("topic"),
        Error::NotAString("event"),
        Error::BadRef("ref"),
        Error::Truncated,
        Error::UnknownKind(7),
        Error::UnknownEncoding(7),
        decode_binary(&[3, 1, 0, 0, 0, 0, 1, 0xff]).unwrap_err(),
        Error::MetadataNotObject,
        Error::FieldTooLong("topic"),
    ];
    for err in errors {
        let msg = err.to_string();
        assert_eq!(msg, msg.to_lowercase(), "{msg}");
        assert!(!msg.ends_with('.'), "{msg}");
    }
}

/// A broadcast payload is scanned, never built, so nesting deeper than a tree is built to is
/// relayed; a control event's payload is built and refused as before.
#[test]
fn deeply_nested_broadcast_payloads_are_kept() {
    let deep = "[".repeat(1000) + &"]".repeat(1000);
    let text = format!(r#"[null,null,"t","broadcast",{deep}]"#);
    let inbound = decode_text(Vsn::V2, &text).unwrap();
    assert_eq!(raw_payload(&inbound), deep);
    let text = format!(r#"[null,null,"t","phx_join",{deep}]"#);
    assert!(matches!(decode_text(Vsn::V2, &text), Err(Error::Json(_))));
}
