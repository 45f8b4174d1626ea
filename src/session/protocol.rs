//! Phoenix channel framing for serializer versions `1.0.0` and `2.0.0`.
//!
//! This module owns the bytes on the wire and nothing else: turning a text or
//! binary WebSocket frame into an [`Inbound`] message, and turning a message
//! back into a frame (PROTOCOL.md sections 2 and 3). It knows nothing about
//! channels, joins or authorization.
//!
//! * The session reader feeds it: every frame read from the socket goes
//!   through [`decode_text`] (with the socket's [`Vsn`]) or [`decode_binary`].
//! * It feeds inbound handling, which routes the decoded [`Inbound`], and the
//!   writer / fan-out, which build outgoing frames with [`encode_text`],
//!   [`frame_prefix`] + [`frame_suffix`] (one payload shared by many
//!   recipients) and [`encode_binary_broadcast`].
//!
//! The client-side half ([`encode_client_text`], [`encode_binary_push`],
//! [`decode_server_binary`]) lives here too so that tests and the load-test
//! tool speak exactly the same framing as the server.
//!
//! Outgoing text frames are built by hand rather than through
//! `serde_json::Value`: the payload is already-serialized JSON copied
//! verbatim, strings are escaped exactly as `serde_json` escapes them, and the
//! output is sized up front so each frame costs one allocation.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use serde_json::{Map, Value};

/// The event name every user broadcast carries once decoded.
const BROADCAST: &str = "broadcast";

/// Binary frame kind of a user broadcast push, client to server.
const KIND_USER_BROADCAST_PUSH: u8 = 3;
/// Binary frame kind of a user broadcast, server to client.
const KIND_USER_BROADCAST: u8 = 4;

/// Payload encoding byte for raw binary user payloads.
const ENCODING_BINARY: u8 = 0;
/// Payload encoding byte for JSON user payloads.
const ENCODING_JSON: u8 = 1;

/// What `frame_suffix` returns for every vsn 1 frame with a null `ref`,
/// which is every fan-out push (PROTOCOL.md section 3).
const V1_NULL_REF_SUFFIX: &str = ",\"ref\":null}";
/// What `frame_suffix` returns for every vsn 2 frame.
const V2_SUFFIX: &str = "]";

/// Errors from decoding or encoding a frame.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The `vsn` query parameter names a serializer we do not speak.
    #[error("unsupported serializer version {0}")]
    UnsupportedVsn(String),
    /// A text frame is not JSON at all.
    #[error("frame is not valid json")]
    Json(#[source] serde_json::Error),
    /// A text frame is JSON of the wrong shape for the socket's serializer,
    /// e.g. a vsn 2 array sent on a vsn 1 socket.
    #[error("vsn {vsn} frame must be a json {expected}")]
    WrongShape {
        /// The serializer version of the socket.
        vsn: Vsn,
        /// The JSON shape that version requires.
        expected: &'static str,
    },
    /// A vsn 2 array frame has fewer than five elements.
    #[error("vsn 2.0.0 frame has {0} elements, expected 5")]
    TooFewElements(usize),
    /// A required field (`topic`, `event`, `payload`) is absent.
    #[error("frame field {0} is missing")]
    MissingField(&'static str),
    /// `topic` or `event` is present but not a JSON string.
    #[error("frame field {0} is not a string")]
    NotAString(&'static str),
    /// `ref` or `join_ref` is neither a string, a number nor null.
    #[error("frame field {0} is not a string, number or null")]
    BadRef(&'static str),
    /// A binary frame ends before the lengths in its header say it should.
    #[error("binary frame truncated")]
    Truncated,
    /// A binary frame's first byte is not a kind this side decodes.
    #[error("unknown binary frame kind {0}")]
    UnknownKind(u8),
    /// A binary frame's payload encoding byte is neither 0 nor 1.
    #[error("unknown binary payload encoding {0}")]
    UnknownEncoding(u8),
    /// A string field of a binary frame is not UTF-8.
    #[error("binary frame field {field} is not valid utf-8")]
    Utf8 {
        /// Which field.
        field: &'static str,
        /// Where the UTF-8 check failed.
        #[source]
        source: std::str::Utf8Error,
    },
    /// A binary frame's metadata is not JSON.
    #[error("binary frame metadata is not valid json")]
    MetadataJson(#[source] serde_json::Error),
    /// A binary frame's metadata is JSON but not an object.
    #[error("binary frame metadata is not a json object")]
    MetadataNotObject,
    /// A binary frame says its user payload is JSON, but it is not.
    #[error("binary frame payload is not valid json")]
    PayloadJson(#[source] serde_json::Error),
    /// A string to be put in a binary frame does not fit its 8-bit length.
    #[error("string field {0} over 255 bytes")]
    FieldTooLong(&'static str),
}

/// Serializer version of a socket, chosen once by the `vsn` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Vsn {
    /// `1.0.0`: JSON object text frames (realtime-py). The default.
    #[default]
    V1,
    /// `2.0.0`: JSON array text frames plus binary frames (realtime-js, phoenix).
    V2,
}

impl Vsn {
    /// Parses the `vsn` query parameter; absent means `1.0.0`.
    ///
    /// # Errors
    ///
    /// [`Error::UnsupportedVsn`] for any value other than `1.0.0` or `2.0.0`.
    pub fn from_query(vsn: Option<&str>) -> Result<Self, Error> {
        match vsn {
            None | Some("1.0.0") => Ok(Self::V1),
            Some("2.0.0") => Ok(Self::V2),
            Some(other) => Err(Error::UnsupportedVsn(other.to_owned())),
        }
    }

    /// The version as it appears in the query string, e.g. `2.0.0`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "1.0.0",
            Self::V2 => "2.0.0",
        }
    }
}

impl fmt::Display for Vsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One decoded message, whichever frame it arrived in.
///
/// Server-sent frames decode into the same type (the client-side helpers and
/// tests use it), in which case `join_ref` and `msg_ref` are what the server
/// put on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// The channel membership the message belongs to, or `None` for null.
    pub join_ref: Option<String>,
    /// The message's own `ref`, or `None` for null.
    pub msg_ref: Option<String>,
    /// The topic, e.g. `realtime:room1` or `phoenix`.
    pub topic: String,
    /// The Phoenix event, e.g. `phx_join`; `broadcast` for binary frames.
    pub event: String,
    /// The payload.
    pub payload: InboundPayload,
}

/// The payload of an [`Inbound`] message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundPayload {
    /// A JSON payload: every text frame, and binary broadcasts whose user
    /// payload is JSON (rewritten to
    /// `{"type":"broadcast","event":E,"payload":P}` plus `"meta"` when the
    /// frame had metadata).
    Json(Value),
    /// A binary broadcast whose user payload is raw bytes (encoding 0).
    Binary(BinaryBroadcast),
}

/// A user broadcast with a raw-binary payload (binary frame encoding 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryBroadcast {
    /// The user event, e.g. `cursor`.
    pub event: String,
    /// The frame's metadata object, `None` when the frame had none.
    pub meta: Option<Value>,
    /// The user payload, exactly as sent.
    pub payload: Bytes,
}

/// Decodes a text frame received on a socket speaking `vsn`.
///
/// vsn 1: a JSON object with `topic`, `event`, `payload` and optional `ref`
/// and `join_ref`, in any order. vsn 2: a JSON array
/// `[join_ref, ref, topic, event, payload]`; trailing elements are ignored.
/// Each version accepts only its own shape. Refs may be strings, null or
/// (leniently) numbers, which become their decimal text.
///
/// # Errors
///
/// [`Error::Json`] when the text is not JSON, [`Error::WrongShape`] or
/// [`Error::TooFewElements`] when it is JSON of the wrong shape, and
/// [`Error::MissingField`], [`Error::NotAString`] or [`Error::BadRef`] when a
/// field is absent or of the wrong type.
pub fn decode_text(vsn: Vsn, text: &str) -> Result<Inbound, Error> {
    let frame: Value = serde_json::from_str(text).map_err(Error::Json)?;
    match (vsn, frame) {
        (Vsn::V1, Value::Object(mut fields)) => {
            let topic = take_string(fields.remove("topic"), "topic")?;
            let event = take_string(fields.remove("event"), "event")?;
            let payload = fields
                .remove("payload")
                .ok_or(Error::MissingField("payload"))?;
            Ok(Inbound {
                join_ref: take_ref(fields.remove("join_ref"), "join_ref")?,
                msg_ref: take_ref(fields.remove("ref"), "ref")?,
                topic,
                event,
                payload: InboundPayload::Json(payload),
            })
        }
        (Vsn::V2, Value::Array(elements)) => {
            let len = elements.len();
            let mut elements = elements.into_iter();
            let (Some(join_ref), Some(msg_ref), Some(topic), Some(event), Some(payload)) = (
                elements.next(),
                elements.next(),
                elements.next(),
                elements.next(),
                elements.next(),
            ) else {
                return Err(Error::TooFewElements(len));
            };
            Ok(Inbound {
                join_ref: take_ref(Some(join_ref), "join_ref")?,
                msg_ref: take_ref(Some(msg_ref), "ref")?,
                topic: take_string(Some(topic), "topic")?,
                event: take_string(Some(event), "event")?,
                payload: InboundPayload::Json(payload),
            })
        }
        (Vsn::V1, _) => Err(Error::WrongShape {
            vsn,
            expected: "object",
        }),
        (Vsn::V2, _) => Err(Error::WrongShape {
            vsn,
            expected: "array",
        }),
    }
}

/// Takes a required string field out of a decoded frame.
fn take_string(value: Option<Value>, field: &'static str) -> Result<String, Error> {
    match value {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(Error::NotAString(field)),
        None => Err(Error::MissingField(field)),
    }
}

/// Takes `ref` or `join_ref` out of a decoded frame; absent means null.
fn take_ref(value: Option<Value>, field: &'static str) -> Result<Option<String>, Error> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        // Not sent by any listed client, but cheap to accept.
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(Error::BadRef(field)),
    }
}

/// Decodes a binary frame received by the server: kind 3, a user broadcast
/// push (PROTOCOL.md 2.3).
///
/// The result has event `broadcast`. A JSON user payload becomes
/// [`InboundPayload::Json`] of `{"type":"broadcast","event":E,"payload":P}`
/// plus `"meta"` when the frame carries metadata, i.e. exactly what the same
/// push sent as a text frame would decode to. A raw user payload becomes
/// [`InboundPayload::Binary`], copied out of `frame`; see
/// [`decode_binary_bytes`] to share the buffer instead. An empty `join_ref`
/// or `ref` decodes as `None`, since realtime-js encodes null as empty.
///
/// # Errors
///
/// [`Error::Truncated`] when the frame is shorter than its header says,
/// [`Error::UnknownKind`] for any kind but 3, [`Error::UnknownEncoding`],
/// [`Error::Utf8`] for a string field that is not UTF-8, and
/// [`Error::MetadataJson`], [`Error::MetadataNotObject`] or
/// [`Error::PayloadJson`] for bad JSON inside the frame.
pub fn decode_binary(frame: &[u8]) -> Result<Inbound, Error> {
    decode_push(frame, Bytes::copy_from_slice)
}

/// Same as [`decode_binary`], but a raw user payload is a slice of `frame`
/// rather than a copy, so relaying it costs no allocation.
///
/// # Errors
///
/// As for [`decode_binary`].
pub fn decode_binary_bytes(frame: &Bytes) -> Result<Inbound, Error> {
    // The payload is always a suffix of `frame`, so the range is in bounds.
    decode_push(frame, |payload| frame.slice(frame.len() - payload.len()..))
}

/// Decodes a kind 3 frame; `share` turns the raw user payload into `Bytes`.
fn decode_push(frame: &[u8], share: impl FnOnce(&[u8]) -> Bytes) -> Result<Inbound, Error> {
    let (kind, header) = frame.split_first().ok_or(Error::Truncated)?;
    if *kind != KIND_USER_BROADCAST_PUSH {
        return Err(Error::UnknownKind(*kind));
    }
    let [join_ref_len, ref_len, topic_len, event_len, meta_len, encoding, ref rest @ ..] = header
    else {
        return Err(Error::Truncated);
    };
    let mut rest = rest;
    let join_ref = take_str(&mut rest, *join_ref_len, "join_ref")?;
    let msg_ref = take_str(&mut rest, *ref_len, "ref")?;
    let topic = take_str(&mut rest, *topic_len, "topic")?;
    let event = take_str(&mut rest, *event_len, "event")?;
    let meta = take_str(&mut rest, *meta_len, "metadata")?;
    let payload = user_broadcast_payload(event, meta, *encoding, rest, share)?;
    Ok(Inbound {
        join_ref: non_empty(join_ref),
        msg_ref: non_empty(msg_ref),
        topic: topic.to_owned(),
        event: BROADCAST.to_owned(),
        payload,
    })
}

/// Decodes a binary frame received by a client: kind 4, a user broadcast
/// (PROTOCOL.md 2.3).
///
/// The result has event `broadcast`, the frame's topic, null refs, and a
/// payload built as in [`decode_binary`]; that is what realtime-js makes of it.
///
/// # Errors
///
/// As for [`decode_binary`], with kind 4 the only known kind.
pub fn decode_server_binary(frame: &[u8]) -> Result<Inbound, Error> {
    let (kind, header) = frame.split_first().ok_or(Error::Truncated)?;
    if *kind != KIND_USER_BROADCAST {
        return Err(Error::UnknownKind(*kind));
    }
    let [topic_len, event_len, meta_len, encoding, ref rest @ ..] = header else {
        return Err(Error::Truncated);
    };
    let mut rest = rest;
    let topic = take_str(&mut rest, *topic_len, "topic")?;
    let event = take_str(&mut rest, *event_len, "event")?;
    let meta = take_str(&mut rest, *meta_len, "metadata")?;
    let payload = user_broadcast_payload(event, meta, *encoding, rest, Bytes::copy_from_slice)?;
    Ok(Inbound {
        join_ref: None,
        msg_ref: None,
        topic: topic.to_owned(),
        event: BROADCAST.to_owned(),
        payload,
    })
}

/// Splits a `len`-byte UTF-8 string off the front of `rest`.
fn take_str<'a>(rest: &mut &'a [u8], len: u8, field: &'static str) -> Result<&'a str, Error> {
    let (head, tail) = rest
        .split_at_checked(usize::from(len))
        .ok_or(Error::Truncated)?;
    *rest = tail;
    std::str::from_utf8(head).map_err(|source| Error::Utf8 { field, source })
}

/// `None` for the empty string, which binary frames use for a null ref.
fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

/// Builds the payload of a binary user broadcast (kinds 3 and 4 alike).
fn user_broadcast_payload(
    event: &str,
    meta: &str,
    encoding: u8,
    payload: &[u8],
    share: impl FnOnce(&[u8]) -> Bytes,
) -> Result<InboundPayload, Error> {
    let meta = if meta.is_empty() {
        None
    } else {
        match serde_json::from_str(meta).map_err(Error::MetadataJson)? {
            meta @ Value::Object(_) => Some(meta),
            _ => return Err(Error::MetadataNotObject),
        }
    };
    match encoding {
        ENCODING_JSON => {
            let payload: Value = serde_json::from_slice(payload).map_err(Error::PayloadJson)?;
            let mut broadcast = Map::new();
            broadcast.insert("type".to_owned(), Value::from(BROADCAST));
            broadcast.insert("event".to_owned(), Value::from(event));
            broadcast.insert("payload".to_owned(), payload);
            if let Some(meta) = meta {
                broadcast.insert("meta".to_owned(), meta);
            }
            Ok(InboundPayload::Json(Value::Object(broadcast)))
        }
        ENCODING_BINARY => Ok(InboundPayload::Binary(BinaryBroadcast {
            event: event.to_owned(),
            meta,
            payload: share(payload),
        })),
        other => Err(Error::UnknownEncoding(other)),
    }
}

/// Encodes a server-to-client text frame in one allocation.
///
/// `payload_json` must already be serialized JSON; it is copied verbatim.
/// vsn 1 gives `{"topic":T,"event":E,"payload":P,"ref":R}`: exactly these
/// keys in this order, `ref` present even when null, and no `join_ref`
/// (`join_ref` is ignored). vsn 2 gives `[J,R,T,E,P]`. `None` refs are `null`.
#[must_use]
pub fn encode_text(
    vsn: Vsn,
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    event: &str,
    payload_json: &str,
) -> String {
    with_prefix(vsn, join_ref, msg_ref, topic, event, |prefix| {
        with_suffix(vsn, msg_ref, |suffix| {
            build(&[prefix, &[Piece::Raw(payload_json)], suffix])
        })
    })
}

/// Everything of an [`encode_text`] frame that comes before the payload.
///
/// For fan-out: serialize the payload once, then each recipient's frame is
/// `frame_prefix(..) + payload_json + frame_suffix(..)`, byte-equal to
/// [`encode_text`] with the same arguments. The split is:
///
/// * vsn 1: prefix `{"topic":T,"event":E,"payload":`, suffix `,"ref":R}`;
/// * vsn 2: prefix `[J,R,T,E,`, suffix `]`.
#[must_use]
pub fn frame_prefix(
    vsn: Vsn,
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    event: &str,
) -> String {
    with_prefix(vsn, join_ref, msg_ref, topic, event, |prefix| {
        build(&[prefix])
    })
}

/// Everything of an [`encode_text`] frame that comes after the payload; see
/// [`frame_prefix`] for the split.
///
/// Borrowed, so free, for vsn 2 and for vsn 1 with a null `ref` (every
/// fan-out push); owned only for a vsn 1 frame with a `ref`.
#[must_use]
pub fn frame_suffix(vsn: Vsn, msg_ref: Option<&str>) -> Cow<'static, str> {
    match (vsn, msg_ref) {
        (Vsn::V1, None) => Cow::Borrowed(V1_NULL_REF_SUFFIX),
        (Vsn::V2, _) => Cow::Borrowed(V2_SUFFIX),
        (Vsn::V1, Some(_)) => Cow::Owned(with_suffix(vsn, msg_ref, |suffix| build(&[suffix]))),
    }
}

/// Encodes a client-to-server text frame, as realtime-js and realtime-py
/// would, in one allocation.
///
/// vsn 1 gives `{"topic":T,"event":E,"payload":P,"ref":R,"join_ref":J}`;
/// vsn 2 is the same array as [`encode_text`]. `payload_json` is copied
/// verbatim.
#[must_use]
pub fn encode_client_text(
    vsn: Vsn,
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    event: &str,
    payload_json: &str,
) -> String {
    match vsn {
        Vsn::V1 => build(&[&[
            Piece::Raw("{\"topic\":"),
            Piece::Str(topic),
            Piece::Raw(",\"event\":"),
            Piece::Str(event),
            Piece::Raw(",\"payload\":"),
            Piece::Raw(payload_json),
            Piece::Raw(",\"ref\":"),
            Piece::Ref(msg_ref),
            Piece::Raw(",\"join_ref\":"),
            Piece::Ref(join_ref),
            Piece::Raw("}"),
        ]]),
        Vsn::V2 => encode_text(vsn, join_ref, msg_ref, topic, event, payload_json),
    }
}

/// Calls `f` with the pieces of a text frame before the payload.
fn with_prefix<R>(
    vsn: Vsn,
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    event: &str,
    f: impl FnOnce(&[Piece<'_>]) -> R,
) -> R {
    match vsn {
        Vsn::V1 => f(&[
            Piece::Raw("{\"topic\":"),
            Piece::Str(topic),
            Piece::Raw(",\"event\":"),
            Piece::Str(event),
            Piece::Raw(",\"payload\":"),
        ]),
        Vsn::V2 => f(&[
            Piece::Raw("["),
            Piece::Ref(join_ref),
            Piece::Raw(","),
            Piece::Ref(msg_ref),
            Piece::Raw(","),
            Piece::Str(topic),
            Piece::Raw(","),
            Piece::Str(event),
            Piece::Raw(","),
        ]),
    }
}

/// Calls `f` with the pieces of a text frame after the payload.
fn with_suffix<R>(vsn: Vsn, msg_ref: Option<&str>, f: impl FnOnce(&[Piece<'_>]) -> R) -> R {
    match vsn {
        Vsn::V1 => f(&[
            Piece::Raw(",\"ref\":"),
            Piece::Ref(msg_ref),
            Piece::Raw("}"),
        ]),
        Vsn::V2 => f(&[Piece::Raw(V2_SUFFIX)]),
    }
}

/// One piece of an outgoing text frame.
#[derive(Debug, Clone, Copy)]
enum Piece<'a> {
    /// Copied verbatim: punctuation, keys, an already-serialized payload.
    Raw(&'a str),
    /// Written as a JSON string.
    Str(&'a str),
    /// Written as a JSON string, or `null` for `None`.
    Ref(Option<&'a str>),
}

impl Piece<'_> {
    /// Exact number of bytes [`Piece::write`] appends.
    fn len(self) -> usize {
        match self {
            Piece::Raw(s) => s.len(),
            Piece::Str(s) | Piece::Ref(Some(s)) => json_str_len(s),
            Piece::Ref(None) => "null".len(),
        }
    }

    /// Appends this piece to `out`.
    fn write(self, out: &mut String) {
        match self {
            Piece::Raw(s) => out.push_str(s),
            Piece::Str(s) | Piece::Ref(Some(s)) => push_json_str(out, s),
            Piece::Ref(None) => out.push_str("null"),
        }
    }
}

/// Concatenates pieces into a string allocated once at its exact size.
fn build(segments: &[&[Piece<'_>]]) -> String {
    let pieces = segments.iter().flat_map(|segment| segment.iter().copied());
    let len = pieces.clone().map(Piece::len).sum();
    let mut out = String::with_capacity(len);
    pieces.for_each(|piece| piece.write(&mut out));
    debug_assert_eq!(out.len(), len, "Piece::len disagrees with Piece::write");
    out
}

/// The JSON escape of `byte`, or `None` when it stands for itself. Same
/// choices as `serde_json`: quote, backslash and C0 controls are escaped,
/// everything else (including DEL and non-ASCII) is written as is.
fn escape(byte: u8) -> Option<Escape> {
    Some(match byte {
        b'"' => Escape::Short(b'"'),
        b'\\' => Escape::Short(b'\\'),
        b'\n' => Escape::Short(b'n'),
        b'\r' => Escape::Short(b'r'),
        b'\t' => Escape::Short(b't'),
        0x08 => Escape::Short(b'b'),
        0x0c => Escape::Short(b'f'),
        0x00..=0x1f => Escape::Unicode(byte),
        _ => return None,
    })
}

/// How one byte is escaped inside a JSON string.
#[derive(Debug, Clone, Copy)]
enum Escape {
    /// `\` followed by this character.
    Short(u8),
    /// `\u00XX` for this control byte.
    Unicode(u8),
}

/// Length of `s` written as a JSON string, quotes included.
fn json_str_len(s: &str) -> usize {
    let escaped: usize = s
        .bytes()
        .map(|b| match escape(b) {
            None => 1,
            Some(Escape::Short(_)) => 2,
            Some(Escape::Unicode(_)) => 6,
        })
        .sum();
    escaped + 2
}

/// Appends `s` to `out` as a JSON string, quotes included.
fn push_json_str(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    let mut start = 0;
    for (i, byte) in s.bytes().enumerate() {
        let Some(escape) = escape(byte) else {
            continue;
        };
        // Escaped bytes are ASCII, so `start` and `i` are char boundaries.
        out.push_str(&s[start..i]);
        out.push('\\');
        match escape {
            Escape::Short(c) => out.push(char::from(c)),
            Escape::Unicode(c) => {
                out.push_str("u00");
                // `c` is at most 0x1f, so both indexes are below 16.
                out.push(char::from(HEX[usize::from(c >> 4)]));
                out.push(char::from(HEX[usize::from(c & 0xf)]));
            }
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Encodes a kind 4 frame, a user broadcast from server to client
/// (PROTOCOL.md 2.3), in one allocation.
///
/// `meta_json` is copied verbatim and should be a JSON object; `None` or
/// `Some("")` sends no metadata. `json` selects payload encoding 1 (the
/// payload bytes are JSON text) over 0 (raw bytes).
///
/// # Errors
///
/// [`Error::FieldTooLong`] when `topic`, `event` or `meta_json` is over 255
/// bytes.
pub fn encode_binary_broadcast(
    topic: &str,
    event: &str,
    meta_json: Option<&str>,
    payload: &[u8],
    json: bool,
) -> Result<Bytes, Error> {
    let meta = meta_json.unwrap_or_default();
    let fields = [("topic", topic), ("event", event), ("metadata", meta)];
    encode_binary(KIND_USER_BROADCAST, &fields, payload, json)
}

/// Encodes a kind 3 frame, a user broadcast push from client to server
/// (PROTOCOL.md 2.3), byte-for-byte as realtime-js does.
///
/// An empty `join_ref` or `ref` is how realtime-js sends null. `meta_json`
/// and `json` are as in [`encode_binary_broadcast`].
///
/// # Errors
///
/// [`Error::FieldTooLong`] when any string is over 255 bytes.
pub fn encode_binary_push(
    join_ref: &str,
    msg_ref: &str,
    topic: &str,
    event: &str,
    meta_json: Option<&str>,
    payload: &[u8],
    json: bool,
) -> Result<Bytes, Error> {
    let meta = meta_json.unwrap_or_default();
    let fields = [
        ("join_ref", join_ref),
        ("ref", msg_ref),
        ("topic", topic),
        ("event", event),
        ("metadata", meta),
    ];
    encode_binary(KIND_USER_BROADCAST_PUSH, &fields, payload, json)
}

/// Writes `kind`, one length byte per field, the encoding byte, the fields
/// and the payload.
fn encode_binary(
    kind: u8,
    fields: &[(&'static str, &str)],
    payload: &[u8],
    json: bool,
) -> Result<Bytes, Error> {
    let mut lens = Vec::with_capacity(fields.len());
    for (name, value) in fields {
        lens.push(u8::try_from(value.len()).map_err(|_| Error::FieldTooLong(name))?);
    }
    let strings: usize = fields.iter().map(|(_, value)| value.len()).sum();
    let mut frame = Vec::with_capacity(2 + fields.len() + strings + payload.len());
    frame.push(kind);
    frame.extend_from_slice(&lens);
    frame.push(if json { ENCODING_JSON } else { ENCODING_BINARY });
    for (_, value) in fields {
        frame.extend_from_slice(value.as_bytes());
    }
    frame.extend_from_slice(payload);
    Ok(Bytes::from(frame))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// The kind 3 frame PROTOCOL.md 2.3 captured from realtime-js.
    const CAPTURED_PUSH: &[u8] = &[
        0x03, 0x01, 0x01, 0x0e, 0x02, 0x00, 0x01, 0x36, 0x37, 0x72, 0x65, 0x61, 0x6c, 0x74, 0x69,
        0x6d, 0x65, 0x3a, 0x72, 0x6f, 0x6f, 0x6d, 0x31, 0x65, 0x76, 0x7b, 0x22, 0x61, 0x22, 0x3a,
        0x22, 0xc3, 0xa9, 0x22, 0x7d,
    ];

    fn json_payload(inbound: &Inbound) -> &Value {
        match &inbound.payload {
            InboundPayload::Json(value) => value,
            InboundPayload::Binary(b) => panic!("expected a json payload, got {b:?}"),
        }
    }

    fn binary_payload(inbound: &Inbound) -> &BinaryBroadcast {
        match &inbound.payload {
            InboundPayload::Binary(b) => b,
            InboundPayload::Json(v) => panic!("expected a binary payload, got {v}"),
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
        assert_eq!(json_payload(&inbound), &json!({}));

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
            json_payload(&inbound),
            &json!({"type":"broadcast","event":"ping","payload":{"n":1}})
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
                payload: InboundPayload::Json(
                    json!({"type":"broadcast","event":"ev","payload":{"a":"é"}})
                ),
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
        let frame =
            encode_binary_push("1", "2", "t", "é", Some(r#"{"p":1}"#), b"xy", false).unwrap();
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
                meta: Some(json!({"persist": true})),
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
            json_payload(&decode_binary(&frame).unwrap()),
            &json!({"type":"broadcast","event":"cur","payload":[1],"meta":{"persist":true}})
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
            &json!({"type":"broadcast","event":"événement","payload":"é"})
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
                payload: InboundPayload::Json(
                    json!({"type":"broadcast","event":"ev","payload":{"n":1},"meta":{"id":"u"}})
                ),
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
                let mut m = Map::new();
                m.insert("type".into(), "broadcast".into());
                m.insert("event".into(), event.into());
                m.insert("payload".into(), payload);
                if let Some(meta) = meta {
                    m.insert("meta".into(), meta);
                }
                InboundPayload::Json(Value::Object(m))
            } else {
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
            event in tricky_string(16),
            payload in json_value(),
        ) {
            let payload_json = payload.to_string();
            let server = encode_text(
                vsn, join_ref.as_deref(), msg_ref.as_deref(), &topic, &event, &payload_json,
            );
            let inbound = decode_text(vsn, &server).unwrap();
            let expected_join_ref = match vsn {
                Vsn::V1 => None,
                Vsn::V2 => join_ref.clone(),
            };
            prop_assert_eq!(&inbound.join_ref, &expected_join_ref);
            prop_assert_eq!(&inbound.msg_ref, &msg_ref);
            prop_assert_eq!(&inbound.topic, &topic);
            prop_assert_eq!(&inbound.event, &event);
            prop_assert_eq!(&inbound.payload, &InboundPayload::Json(payload.clone()));

            let client = encode_client_text(
                vsn, join_ref.as_deref(), msg_ref.as_deref(), &topic, &event, &payload_json,
            );
            let inbound = decode_text(vsn, &client).unwrap();
            prop_assert_eq!(inbound.join_ref, join_ref);
            prop_assert_eq!(inbound.msg_ref, msg_ref);
            prop_assert_eq!(inbound.payload, InboundPayload::Json(payload));
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
    }
}
