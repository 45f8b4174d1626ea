//! The cluster bus's wire format: the JSON of each `NOTIFY realtime_bus` notification.
//!
//! | `k` | fields | meaning |
//! |---|---|---|
//! | `b` | `n` node, `s` seq, `t` channel, `x` private, `m` message | a JSON broadcast; `m` is the payload clients receive |
//! | `bin` | `n`, `s`, `t`, `x`, `e` event, `meta`, `h` hex payload | a raw-binary broadcast |
//! | `p` | `n`, `s`, `t`, `j` `[{r, k, m}]` joins, `l` `[ref]` leaves | a presence diff of node `n` |
//! | `sync` | `node` (and `n` when a node sent it) | reload `node`'s presence from `realtime.presences` |
//! | `spill` | `n`, `id` | a message over the inline limit, in `realtime.bus_spill` row `id` |
//! | `db` | `id`, and `t`, `x`, `e`, `d` when small enough | a `realtime.send` row of `realtime.messages` |
//!
//! `s` makes every notification of a node distinct (PostgreSQL folds identical payloads sent in
//! one transaction). Pure: the publisher builds envelopes with these functions, the store sends
//! them, and the receiver ([`super::bus`]) parses them into [`Envelope`].

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::presence;

/// The `NOTIFY` channel of the bus.
pub const CHANNEL: &str = "realtime_bus";
/// Largest notification sent inline; PostgreSQL refuses payloads of 8000 bytes or more.
pub const MAX_INLINE_BYTES: usize = 7900;
/// One notification of the bus, as received.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "k")]
pub enum Envelope {
    /// A JSON broadcast.
    #[serde(rename = "b")]
    Broadcast {
        /// Publishing node.
        n: String,
        /// Channel name.
        t: String,
        /// Private channel.
        #[serde(default)]
        x: bool,
        /// The payload clients receive.
        m: Value,
    },
    /// A raw-binary broadcast.
    #[serde(rename = "bin")]
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
        #[serde(default)]
        meta: Option<Value>,
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
    /// A `realtime.send` message.
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
        /// User payload.
        #[serde(default)]
        d: Option<Value>,
    },
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
    let meta = meta
        .and_then(|m| serde_json::from_str::<Value>(m).ok())
        .unwrap_or(Value::Null);
    serde_json::json!({"k": "bin", "n": node, "s": seq, "t": name, "e": event,
                       "meta": meta, "h": hex(payload)})
    .to_string()
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

/// A `realtime.send` message as clients receive it: `meta.id` is the row id (docs/protocol.md 7.2).
pub fn db_message(id: uuid::Uuid, event: &str, payload: &Value) -> String {
    serde_json::json!({"type": "broadcast", "event": event, "payload": payload,
                       "meta": {"id": id}})
    .to_string()
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
        let Envelope::Broadcast { n, t, x, m } = serde_json::from_str(&text).unwrap() else {
            panic!("{text}");
        };
        assert_eq!((n.as_str(), t.as_str(), x), ("node-a", "room:1", false));
        assert_eq!(m, serde_json::from_str::<Value>(message).unwrap());
    }

    #[test]
    fn binary_envelopes_round_trip() {
        let text = binary_envelope("a", 1, "room", "ev", Some(r#"{"k":1}"#), &[1, 2, 255]);
        let Envelope::Binary { e, meta, h, .. } = serde_json::from_str(&text).unwrap() else {
            panic!("{text}");
        };
        assert_eq!(e, "ev");
        assert_eq!(meta, Some(json!({"k": 1})));
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
        let Envelope::Presence { n, t, j, l } = serde_json::from_str(&text).unwrap() else {
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
        let delivered: Value =
            serde_json::from_str(&db_message(id, "ev", &json!({"a": 1}))).unwrap();
        assert_eq!(
            delivered,
            json!({"type": "broadcast", "event": "ev", "payload": {"a": 1}, "meta": {"id": id}})
        );
    }

    #[test]
    fn unknown_kinds_do_not_parse() {
        assert!(serde_json::from_str::<Envelope>(r#"{"k":"zz"}"#).is_err());
        assert!(serde_json::from_str::<Envelope>("not json").is_err());
    }
}
