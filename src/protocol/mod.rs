//! Phoenix channel framing for serializer versions `1.0.0` and `2.0.0`.
//!
//! This module owns the bytes on the wire and nothing else: turning a text or
//! binary WebSocket frame into an [`Inbound`] message, and turning a message
//! back into a frame (docs/protocol.md sections 2 and 3). It knows nothing about
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
//!
//! A broadcast's payload is never built into a tree: decoding keeps its text
//! ([`RawJson`], see `text.rs`) and encoding copies it, so members receive the
//! sender's bytes (docs/protocol.md 7.1).

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;

mod text;

pub use text::{decode_text, RawJson};

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
/// which is every fan-out push (docs/protocol.md section 3).
const V1_NULL_REF_SUFFIX: &str = ",\"ref\":null}";
/// What `frame_suffix` returns for every vsn 2 frame.
const V2_SUFFIX: &str = "]";

/// What every channel's topic starts with: `realtime:<name>`.
pub const TOPIC_PREFIX: &str = "realtime:";

/// The channel name of `topic` (the topic without [`TOPIC_PREFIX`]); a topic without the
/// prefix is its own name.
pub fn channel_name(topic: &str) -> &str {
    topic.strip_prefix(TOPIC_PREFIX).unwrap_or(topic)
}

/// Longest `ref` or `join_ref` accepted (clients send short counters).
pub const MAX_REF_BYTES: usize = 255;

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
    /// `ref` or `join_ref` is longer than [`MAX_REF_BYTES`]: refs are echoed and kept with a
    /// channel, so their size is bounded.
    #[error("frame field {0} is longer than 255 bytes")]
    RefTooLong(&'static str),
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
    /// The JSON payload of a text frame whose event is not `broadcast`, built as a tree.
    Json(serde_json::Value),
    /// The JSON payload of a `broadcast`, kept as the text the sender wrote: a text frame's
    /// payload, or a binary broadcast whose user payload is JSON, written as
    /// `{"type":"broadcast","event":E,"payload":P}` (plus `,"meta":M` when the frame had
    /// metadata) around the frame's own payload and metadata bytes.
    Raw(RawJson),
    /// A binary broadcast whose user payload is raw bytes (encoding 0).
    Binary(BinaryBroadcast),
}

/// A user broadcast with a raw-binary payload (binary frame encoding 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryBroadcast {
    /// The user event, e.g. `cursor`.
    pub event: String,
    /// The frame's metadata object as sent, `None` when the frame had none.
    pub meta: Option<RawJson>,
    /// The user payload, exactly as sent.
    pub payload: Bytes,
}

/// Decodes a binary frame received by the server: kind 3, a user broadcast
/// push (docs/protocol.md 2.3).
///
/// The result has event `broadcast`. A JSON user payload becomes
/// [`InboundPayload::Raw`] of `{"type":"broadcast","event":E,"payload":P}`
/// plus `,"meta":M` when the frame carries metadata, P and M being the frame's
/// bytes (without surrounding whitespace): what the same push sent as a text
/// frame in that key order would decode to. A raw user payload becomes
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
/// (docs/protocol.md 2.3).
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
        let meta = RawJson::parse(meta).map_err(Error::MetadataJson)?;
        if !meta.is_object() {
            return Err(Error::MetadataNotObject);
        }
        Some(meta)
    };
    match encoding {
        ENCODING_JSON => {
            let payload = RawJson::parse_slice(payload).map_err(Error::PayloadJson)?;
            let meta = meta.as_ref().map(RawJson::as_str);
            let mut pieces = vec![
                Piece::Raw("{\"type\":\"broadcast\",\"event\":"),
                Piece::Str(event),
                Piece::Raw(",\"payload\":"),
                Piece::Raw(payload.as_str()),
            ];
            if let Some(meta) = meta {
                pieces.extend([Piece::Raw(",\"meta\":"), Piece::Raw(meta)]);
            }
            pieces.push(Piece::Raw("}"));
            // Built from a JSON string, two JSON values and punctuation: well-formed.
            let text = build(&[&pieces]);
            Ok(InboundPayload::Raw(RawJson::from_built(text)))
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

/// Room for a serialized payload that [`encode_text_of`] sets aside before it knows the size:
/// a join's reply or `system` message fits, so the frame's text takes one allocation.
const PAYLOAD_ROOM: usize = 384;

/// [`encode_text`] with the payload serialized in place, after the text before it, instead of
/// into a string of its own first. The same bytes as `encode_text` of the payload's
/// `serde_json::to_string`.
///
/// # Errors
/// When `payload` cannot be serialized (a map whose keys are not strings); never for a
/// `serde_json::Value` or the gateway's payload types.
pub fn encode_text_of<T: serde::Serialize + ?Sized>(
    vsn: Vsn,
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    event: &str,
    payload: &T,
) -> serde_json::Result<String> {
    with_prefix(vsn, join_ref, msg_ref, topic, event, |prefix| {
        with_suffix(vsn, msg_ref, |suffix| {
            let fixed: usize = prefix.iter().chain(suffix).map(|p| p.len()).sum();
            let mut out = String::with_capacity(fixed + PAYLOAD_ROOM);
            prefix.iter().for_each(|piece| piece.write(&mut out));
            let mut bytes = out.into_bytes();
            serde_json::to_writer(&mut bytes, payload)?;
            // The prefix is a string and serde_json writes UTF-8: this check cannot fail.
            let mut out = String::from_utf8(bytes).map_err(serde::ser::Error::custom)?;
            suffix.iter().for_each(|piece| piece.write(&mut out));
            Ok(out)
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
    match msg_ref {
        Some(_) if vsn == Vsn::V1 => {
            Cow::Owned(with_suffix(vsn, msg_ref, |suffix| build(&[suffix])))
        }
        _ => Cow::Borrowed(null_ref_suffix(vsn)),
    }
}

/// [`frame_suffix`] of a frame with a null `ref` (every fan-out push): the same for every
/// frame of a serializer.
#[must_use]
pub fn null_ref_suffix(vsn: Vsn) -> &'static str {
    match vsn {
        Vsn::V1 => V1_NULL_REF_SUFFIX,
        Vsn::V2 => V2_SUFFIX,
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
/// (docs/protocol.md 2.3), in one allocation.
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
/// (docs/protocol.md 2.3), byte-for-byte as realtime-js does.
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
mod proptests;
#[cfg(test)]
mod tests;
