//! Decoding text frames (docs/protocol.md 2.1, 2.2), and [`RawJson`], the JSON text a broadcast
//! keeps from the client's frame to every recipient's frame (docs/protocol.md 7.1).
//!
//! A frame is read once, into borrowed slices of its text ([`RawValue`]): the refs, topic and
//! event are then read from their (short) slices, and the payload is either built into a
//! [`Value`] (control events, which the session inspects) or, for `broadcast`, copied as it is.
//! The payload of a broadcast is never built into a tree: its bytes, key order and number text
//! included, are what the other members receive.

use std::fmt;
use std::sync::Arc;

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::{Error, Inbound, InboundPayload, Vsn, BROADCAST};

/// JSON text, checked to be one well-formed JSON value (surrounding whitespace removed), kept
/// byte for byte. Cheap to clone.
///
/// Well-formed is JSON's grammar only: numbers such as `1e400` or a 30-digit integer, which a
/// [`Value`] cannot hold exactly or at all, are kept as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RawJson(Arc<str>);

impl RawJson {
    /// Checks that `text` is one JSON value and keeps it, without surrounding whitespace.
    ///
    /// # Errors
    ///
    /// The parse error when it is not.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        let raw: &RawValue = serde_json::from_str(text)?;
        Ok(Self::from(raw))
    }

    /// [`RawJson::parse`] of bytes, which must be UTF-8.
    ///
    /// # Errors
    ///
    /// The parse error when `bytes` are not UTF-8 JSON.
    pub fn parse_slice(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        let raw: &RawValue = serde_json::from_slice(bytes)?;
        Ok(Self::from(raw))
    }

    /// Wraps text this crate wrote as one JSON value.
    pub(super) fn from_built(text: String) -> Self {
        debug_assert!(Self::parse(&text).is_ok(), "not json: {text}");
        Self(Arc::from(text))
    }

    /// The JSON text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared text, for a message relayed to many recipients.
    #[must_use]
    pub fn into_arc(self) -> Arc<str> {
        self.0
    }

    /// Whether the value is a JSON object.
    #[must_use]
    pub fn is_object(&self) -> bool {
        self.0.starts_with('{')
    }

    /// Builds the value as a tree.
    ///
    /// # Errors
    ///
    /// When a number is out of `f64`'s range (e.g. `1e400`) or the nesting is deeper than
    /// `serde_json` builds.
    pub fn to_value(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_str(&self.0)
    }
}

impl From<&RawValue> for RawJson {
    fn from(raw: &RawValue) -> Self {
        Self(Arc::from(raw.get()))
    }
}

impl fmt::Display for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Decodes a text frame received on a socket speaking `vsn`.
///
/// vsn 1: a JSON object with `topic`, `event`, `payload` and optional `ref`
/// and `join_ref`, in any order (the last of a repeated key counts). vsn 2: a JSON array
/// `[join_ref, ref, topic, event, payload]`; trailing elements are ignored.
/// Each version accepts only its own shape. Refs may be strings, null or
/// (leniently) numbers, which become their decimal text.
///
/// The payload of event `broadcast` is [`InboundPayload::Raw`], its text as sent; every other
/// event's payload is [`InboundPayload::Json`].
///
/// # Errors
///
/// [`Error::Json`] when the text is not JSON (or a non-broadcast payload holds a number no
/// `f64` can), [`Error::WrongShape`] or [`Error::TooFewElements`] when it is JSON of the wrong
/// shape, and [`Error::MissingField`], [`Error::NotAString`] or [`Error::BadRef`] when a field
/// is absent or of the wrong type.
pub fn decode_text(vsn: Vsn, text: &str) -> Result<Inbound, Error> {
    let first = text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .bytes()
        .next();
    // Fields are checked in the same order as ever, so a frame with several faults gets the
    // same reason: vsn 1 topic, event, payload, join_ref, ref; vsn 2 join_ref, ref, topic, event.
    let (join_ref, msg_ref, topic, event, payload) = match (vsn, first) {
        (Vsn::V1, Some(b'{')) => {
            let f: V1Fields<'_> = serde_json::from_str(text).map_err(Error::Json)?;
            let topic = take_string(f.topic, "topic")?;
            let event = take_string(f.event, "event")?;
            let payload = f.payload.ok_or(Error::MissingField("payload"))?;
            let join_ref = take_ref(f.join_ref, "join_ref")?;
            let msg_ref = take_ref(f.msg_ref, "ref")?;
            (join_ref, msg_ref, topic, event, payload)
        }
        (Vsn::V2, Some(b'[')) => {
            let elements: Vec<&RawValue> = serde_json::from_str(text).map_err(Error::Json)?;
            let [join_ref, msg_ref, topic, event, payload, ..] = elements[..] else {
                return Err(Error::TooFewElements(elements.len()));
            };
            let join_ref = take_ref(Some(join_ref), "join_ref")?;
            let msg_ref = take_ref(Some(msg_ref), "ref")?;
            let topic = take_string(Some(topic), "topic")?;
            let event = take_string(Some(event), "event")?;
            (join_ref, msg_ref, topic, event, payload)
        }
        _ => {
            serde_json::from_str::<IgnoredAny>(text).map_err(Error::Json)?;
            let expected = match vsn {
                Vsn::V1 => "object",
                Vsn::V2 => "array",
            };
            return Err(Error::WrongShape { vsn, expected });
        }
    };
    let payload = if event == BROADCAST {
        InboundPayload::Raw(RawJson::from(payload))
    } else {
        InboundPayload::Json(serde_json::from_str(payload.get()).map_err(Error::Json)?)
    };
    Ok(Inbound {
        join_ref,
        msg_ref,
        topic,
        event,
        payload,
    })
}

/// A vsn 1 object's known keys, as slices; other keys are skipped unread.
#[derive(Debug, Default)]
struct V1Fields<'a> {
    join_ref: Option<&'a RawValue>,
    msg_ref: Option<&'a RawValue>,
    topic: Option<&'a RawValue>,
    event: Option<&'a RawValue>,
    payload: Option<&'a RawValue>,
}

/// The keys of a vsn 1 frame.
#[derive(Debug, Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Key {
    Topic,
    Event,
    Payload,
    Ref,
    JoinRef,
    #[serde(other)]
    Other,
}

impl<'de> Deserialize<'de> for V1Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// Reads the object, the last of a repeated key winning (as a map would).
        struct V1Visitor;
        impl<'de> Visitor<'de> for V1Visitor {
            type Value = V1Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a frame object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = V1Fields::default();
                while let Some(key) = map.next_key::<Key>()? {
                    let slot = match key {
                        Key::Topic => &mut fields.topic,
                        Key::Event => &mut fields.event,
                        Key::Payload => &mut fields.payload,
                        Key::Ref => &mut fields.msg_ref,
                        Key::JoinRef => &mut fields.join_ref,
                        Key::Other => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    *slot = Some(map.next_value()?);
                }
                Ok(fields)
            }
        }
        deserializer.deserialize_map(V1Visitor)
    }
}

/// Reads a required string field of a frame.
fn take_string(raw: Option<&RawValue>, field: &'static str) -> Result<String, Error> {
    let raw = raw.ok_or(Error::MissingField(field))?;
    // Only a string is read; anything else is the wrong type without being built.
    if !raw.get().starts_with('"') {
        return Err(Error::NotAString(field));
    }
    serde_json::from_str(raw.get()).map_err(Error::Json)
}

/// Reads `ref` or `join_ref`; absent means null.
fn take_ref(raw: Option<&RawValue>, field: &'static str) -> Result<Option<String>, Error> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    match raw.get().as_bytes().first() {
        Some(b'n') => Ok(None),
        // The raw text bounds the decoded one (escapes only shorten it); checked once the
        // type is known to be right, so that a wrong type is named as such whatever its size.
        Some(b'"' | b'-' | b'0'..=b'9') if raw.get().len() > super::MAX_REF_BYTES + 2 => {
            Err(Error::RefTooLong(field))
        }
        Some(b'"') => serde_json::from_str(raw.get())
            .map(Some)
            .map_err(Error::Json),
        // Not sent by any listed client, but cheap to accept: the number as `serde_json`
        // writes it.
        Some(b'-' | b'0'..=b'9') => match serde_json::from_str::<Value>(raw.get()) {
            Ok(Value::Number(n)) => Ok(Some(n.to_string())),
            _ => Err(Error::BadRef(field)),
        },
        _ => Err(Error::BadRef(field)),
    }
}
