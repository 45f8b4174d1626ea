//! The cluster bus's wire format: the JSON of each `NOTIFY realtime_bus` notification.
//!
//! | `k` | fields | meaning |
//! |---|---|---|
//! | `b` | `n` node, `s` seq, `t` channel, `x` private, `m` message | a JSON broadcast; `m` is the payload clients receive |
//! | `bin` | `n`, `s`, `t`, `x`, `e` event, `meta`, `h` hex payload | a raw-binary broadcast |
//! | `p` | `n`, `s`, `t`, `j` `[{r, k, m}]` joins, `l` `[ref]` leaves | a presence diff of node `n` |
//! | `sync` | `node` (and `n` when a node sent it) | reload `node`'s presence from `realtime.presences` |
//! | `spill` | `n`, `id` | a message over the inline limit, in `realtime.bus_spill` row `id` |
//! | `db` | `id`, and `t`, `x`, `e`, `d` (or `h`, hex bytes) when small enough | a `realtime.send`, `send_binary` or `broadcast_changes` row of `realtime.messages` |
//!
//! `s` makes every notification of a node distinct (PostgreSQL folds identical payloads sent in
//! one transaction). Pure: the publisher builds envelopes with these functions, the store sends
//! them, and the receiver ([`super::bus`]) parses them into [`Envelope`].

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::presence;
use crate::protocol::RawJson;

/// The `NOTIFY` channel of the bus.
pub const CHANNEL: &str = "realtime_bus";
/// Largest notification sent inline; PostgreSQL refuses payloads of 8000 bytes or more.
pub const MAX_INLINE_BYTES: usize = 7900;
/// One notification of the bus, as received ([`Envelope::parse`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "k")]
pub enum Envelope {
    /// A JSON broadcast. Read by [`Envelope::parse`] itself, never through serde's tagged enum,
    /// which would rebuild `m` and lose its bytes.
    #[serde(skip_deserializing)]
    Broadcast {
        /// Publishing node.
        n: String,
        /// Channel name.
        t: String,
        /// Private channel.
        #[serde(default)]
        x: bool,
        /// The payload clients receive, as the sending node relayed it.
        m: RawJson,
    },
    /// A raw-binary broadcast; read like [`Envelope::Broadcast`], so `meta` keeps its bytes.
    #[serde(skip_deserializing)]
    Binary {
        /// Publishing node.
        n: String,
        /// Channel name.
        t: String,
        /// Private channel.
        #[serde(default)]
        x: bool,
        /// User event.
        e: String,
        /// Metadata object.
        meta: Option<RawJson>,
        /// Payload, hex.
        h: String,
    },
    /// A presence diff.
    #[serde(rename = "p")]
    Presence {
        /// Publishing node (the node holding these entries).
        n: String,
        /// Channel name.
        t: String,
        /// Entries joined or replaced.
        #[serde(default)]
        j: Vec<PresenceJoin>,
        /// `phx_ref`s of entries that left.
        #[serde(default)]
        l: Vec<String>,
    },
    /// Reload a node's presence from its rows.
    #[serde(rename = "sync")]
    Sync {
        /// The sender, when a node sent it (absent from the prune function).
        #[serde(default)]
        n: Option<String>,
        /// The node whose rows changed.
        node: String,
    },
    /// A message stored in `realtime.bus_spill`.
    #[serde(rename = "spill")]
    Spill {
        /// Publishing node.
        n: String,
        /// Row id.
        id: i64,
    },
    /// A message of `realtime.send`, `realtime.send_binary` or `realtime.broadcast_changes`.
    #[serde(rename = "db")]
    Db {
        /// `realtime.messages` id.
        id: uuid::Uuid,
        /// Channel name (absent when the message was too large to inline).
        #[serde(default)]
        t: Option<String>,
        /// Private channel.
        #[serde(default)]
        x: Option<bool>,
        /// Event.
        #[serde(default)]
        e: Option<String>,
        /// User payload (JSON).
        #[serde(default)]
        d: Option<Value>,
        /// User payload (raw bytes, hex), for `realtime.send_binary`.
        #[serde(default)]
        h: Option<String>,
    },
}

impl Envelope {
    /// Parses one notification. `b` and `bin` are read in one pass into slices of `text`, so
    /// the message and the metadata reach the members with the bytes the sender relayed; the
    /// other kinds go through serde's tagged enum.
    ///
    /// # Errors
    ///
    /// When `text` is not a notification of a known kind with its fields.
    pub fn parse(text: &str) -> Result<Envelope, serde_json::Error> {
        /// The fields of `b` and `bin`; other kinds' fields are skipped.
        #[derive(Deserialize)]
        struct Relayed<'a> {
            #[serde(borrow)]
            k: Cow<'a, str>,
            n: Option<String>,
            t: Option<String>,
            #[serde(default)]
            x: bool,
            #[serde(borrow)]
            m: Option<&'a RawValue>,
            e: Option<String>,
            #[serde(borrow)]
            meta: Option<&'a RawValue>,
            h: Option<String>,
        }
        let missing = <serde_json::Error as serde::de::Error>::missing_field;
        match serde_json::from_str::<Relayed<'_>>(text) {
            Ok(r) if r.k == "b" => Ok(Envelope::Broadcast {
                n: r.n.ok_or_else(|| missing("n"))?,
                t: r.t.ok_or_else(|| missing("t"))?,
                x: r.x,
                m: RawJson::from(r.m.ok_or_else(|| missing("m"))?),
            }),
            Ok(r) if r.k == "bin" => Ok(Envelope::Binary {
                n: r.n.ok_or_else(|| missing("n"))?,
                t: r.t.ok_or_else(|| missing("t"))?,
                x: r.x,
                e: r.e.ok_or_else(|| missing("e"))?,
                meta: r.meta.map(RawJson::from),
                h: r.h.ok_or_else(|| missing("h"))?,
            }),
            _ => serde_json::from_str(text),
        }
    }
}

/// One joined presence entry in a `p` message.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PresenceJoin {
    /// `phx_ref`.
    pub r: String,
    /// Presence key.
    pub k: String,
    /// Meta.
    pub m: Map<String, Value>,
}

/// The `b` notification for a JSON broadcast; `message` is copied verbatim.
pub fn broadcast_envelope(node: &str, seq: u64, name: &str, message: &str) -> String {
    let mut out = String::with_capacity(message.len() + node.len() + name.len() + 48);
    out.push_str("{\"k\":\"b\",\"n\":");
    out.push_str(&json_str(node));
    out.push_str(",\"s\":");
    out.push_str(&seq.to_string());
    out.push_str(",\"t\":");
    out.push_str(&json_str(name));
    out.push_str(",\"m\":");
    out.push_str(message);
    out.push('}');
    out
}

/// The `bin` notification for a raw-binary broadcast.
pub fn binary_envelope(
    node: &str,
    seq: u64,
    name: &str,
    event: &str,
    meta: Option<&str>,
    payload: &[u8],
) -> String {
    // The metadata's own bytes, as for a JSON broadcast's message.
    let meta = meta.and_then(|m| RawJson::parse(m).ok());
    let meta = meta.as_ref().map_or("null", RawJson::as_str);
    let mut out = String::with_capacity(meta.len() + payload.len() * 2 + 96);
    out.push_str("{\"k\":\"bin\",\"n\":");
    out.push_str(&json_str(node));
    out.push_str(",\"s\":");
    out.push_str(&seq.to_string());
    out.push_str(",\"t\":");
    out.push_str(&json_str(name));
    out.push_str(",\"e\":");
    out.push_str(&json_str(event));
    out.push_str(",\"meta\":");
    out.push_str(meta);
    out.push_str(",\"h\":\"");
    out.push_str(&hex(payload));
    out.push_str("\"}");
    out
}

/// The `p` notification for a presence diff of this node.
pub fn presence_envelope(node: &str, seq: u64, name: &str, diff: &presence::Diff) -> String {
    let joins: Vec<Value> = diff
        .joins
        .iter()
        .map(|e| serde_json::json!({"r": e.phx_ref, "k": e.key, "m": e.meta}))
        .collect();
    let leaves: Vec<&str> = diff.leaves.iter().map(|e| e.phx_ref.as_str()).collect();
    serde_json::json!({"k": "p", "n": node, "s": seq, "t": name, "j": joins, "l": leaves})
        .to_string()
}

/// The `sync` notification a node sends about itself.
pub fn sync_envelope(node: &str, seq: u64) -> String {
    serde_json::json!({"k": "sync", "n": node, "s": seq, "node": node}).to_string()
}

/// The `spill` notification pointing at `realtime.bus_spill` row `id`.
pub fn spill_envelope(node: &str, id: i64) -> String {
    serde_json::json!({"k": "spill", "n": node, "id": id}).to_string()
}

/// The `meta` of a database message: its row id, and `replayed` when it is replayed to a joining
/// channel rather than delivered live (docs/protocol.md 7.2).
pub fn db_meta(id: uuid::Uuid, replayed: bool) -> String {
    let prefix = if replayed { "{\"replayed\":true," } else { "{" };
    format!("{prefix}\"id\":\"{id}\"}}")
}

/// A JSON database message as clients receive it: `meta` is [`db_meta`] (docs/protocol.md 7.2).
pub fn db_message(id: uuid::Uuid, event: &str, payload: &Value, replayed: bool) -> String {
    let mut out = String::from("{\"type\":\"broadcast\",\"event\":");
    out.push_str(&json_str(event));
    out.push_str(",\"payload\":");
    out.push_str(&payload.to_string());
    out.push_str(",\"meta\":");
    out.push_str(&db_meta(id, replayed));
    out.push('}');
    out
}

fn json_str(s: &str) -> String {
    Value::from(s).to_string()
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

/// Decodes [`hex`]; `None` when `text` is not hex.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let bytes = text.as_bytes();
    if bytes.len() % 2 != 0 {
        return None;
    }
    bytes
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    #[test]
    fn hex_round_trips() {
        let bytes = [0u8, 1, 0x7f, 0x80, 0xff];
        assert_eq!(hex(&bytes), "00017f80ff");
        assert_eq!(unhex(&hex(&bytes)).unwrap(), bytes);
        assert!(unhex("abc").is_none());
        assert!(unhex("zz").is_none());
    }

    /// Guards the broadcast envelope: the message is embedded verbatim and parses back.
    #[test]
    fn broadcast_envelopes_round_trip() {
        let message = r#"{"type":"broadcast","event":"ev","payload":{"a":"é"}}"#;
        let text = broadcast_envelope("node-a", 7, "room:1", message);
        let Envelope::Broadcast { n, t, x, m } = Envelope::parse(&text).unwrap() else {
            panic!("{text}");
        };
        assert_eq!((n.as_str(), t.as_str(), x), ("node-a", "room:1", false));
        assert_eq!(m.as_str(), message);
        // Key order and number text survive the bus.
        let message = r#"{"type":"broadcast","event":"ev","payload":{"z":1.0,"a":1e400}}"#;
        let text = broadcast_envelope("node-a", 8, "room:1", message);
        let Envelope::Broadcast { m, .. } = Envelope::parse(&text).unwrap() else {
            panic!("{text}");
        };
        assert_eq!(m.as_str(), message);
    }

    #[test]
    fn binary_envelopes_round_trip() {
        let text = binary_envelope("a", 1, "room", "ev", Some(r#"{"z":1,"k":1}"#), &[1, 2, 255]);
        let Envelope::Binary { e, meta, h, .. } = Envelope::parse(&text).unwrap() else {
            panic!("{text}");
        };
        assert_eq!(e, "ev");
        assert_eq!(meta.unwrap().as_str(), r#"{"z":1,"k":1}"#);
        assert_eq!(unhex(&h).unwrap(), vec![1, 2, 255]);
    }

    #[test]
    fn presence_envelopes_carry_joins_and_leaves() {
        let mut state = presence::State::default();
        let me: Arc<str> = Arc::from("a");
        let first = state
            .track(
                1,
                &me,
                "alice",
                json!({"x": 1}).as_object().unwrap().clone(),
            )
            .unwrap();
        let update = state
            .track(
                1,
                &me,
                "alice",
                json!({"x": 2}).as_object().unwrap().clone(),
            )
            .unwrap();
        let text = presence_envelope("a", 2, "room", &update);
        let Envelope::Presence { n, t, j, l } = Envelope::parse(&text).unwrap() else {
            panic!("{text}");
        };
        assert_eq!((n.as_str(), t.as_str()), ("a", "room"));
        assert_eq!(l, vec![first.joins[0].phx_ref.clone()]);
        assert_eq!(j[0].k, "alice");
        assert_eq!(j[0].m["x"], 2);
    }

    /// Guards the shape `realtime.presence_prune` and `realtime.send` produce in SQL.
    #[test]
    fn database_notifications_parse() {
        let sync: Envelope = serde_json::from_str(r#"{"k":"sync","node":"b"}"#).unwrap();
        assert_eq!(
            sync,
            Envelope::Sync {
                n: None,
                node: "b".to_owned()
            }
        );
        let id = uuid::Uuid::new_v4();
        let small: Envelope = serde_json::from_str(
            &json!({"k": "db", "id": id, "t": "room", "x": false, "e": "ev", "d": {"a": 1}})
                .to_string(),
        )
        .unwrap();
        assert!(matches!(
            small,
            Envelope::Db {
                t: Some(_),
                d: Some(_),
                ..
            }
        ));
        let large: Envelope =
            serde_json::from_str(&json!({"k": "db", "id": id}).to_string()).unwrap();
        assert!(matches!(
            large,
            Envelope::Db {
                t: None,
                d: None,
                ..
            }
        ));
        let binary: Envelope = serde_json::from_str(
            &json!({"k": "db", "id": id, "t": "room", "x": true, "e": "ev", "h": "01ff"})
                .to_string(),
        )
        .unwrap();
        assert!(matches!(binary, Envelope::Db { h: Some(ref h), d: None, .. } if h == "01ff"));
        let delivered: Value =
            serde_json::from_str(&db_message(id, "ev", &json!({"a": 1}), false)).unwrap();
        assert_eq!(
            delivered,
            json!({"type": "broadcast", "event": "ev", "payload": {"a": 1}, "meta": {"id": id}})
        );
        let replayed: Value =
            serde_json::from_str(&db_message(id, "ev", &json!(null), true)).unwrap();
        assert_eq!(
            replayed,
            json!({"type": "broadcast", "event": "ev", "payload": null,
                   "meta": {"replayed": true, "id": id}})
        );
    }

    #[test]
    fn unknown_kinds_do_not_parse() {
        assert!(Envelope::parse(r#"{"k":"zz"}"#).is_err());
        assert!(Envelope::parse("not json").is_err());
        assert!(Envelope::parse(r#"{"k":"b","n":"a","t":"room"}"#).is_err());
        assert!(Envelope::parse(r#"{"k":"bin","n":"a","t":"room","e":"ev"}"#).is_err());
    }
}
