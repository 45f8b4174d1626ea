//! A session's broadcast and presence: what a joined channel does with `broadcast` pushes
//! (JSON, or binary kind 3 on vsn 2 sockets) and `presence` track/untrack pushes (docs/protocol.md
//! 4, 7.1, 9.1), and the `presence_state` push after a join (9.2).
//!
//! Fed by the session's dispatch; feeds the [`Hub`](crate::broadcast::Hub), which fans messages
//! out to the channel's members here and on the other nodes. The membership joins the hub with
//! the channel (before the join reply, so nothing sent after the client hears `ok` is missed)
//! and leaves it with the channel, whatever ends it (leave, re-join, token expiry, socket close,
//! reaper, shutdown): its presence then leaves too.

use std::sync::Arc;

use serde_json::{json, Value};

use super::private::Denied;
use super::Session;
use crate::broadcast::{self, Error, Message};
use crate::outbound::{Frame, Kind};
use crate::protocol::{self, Inbound, InboundPayload, RawJson};

/// Reply reason of a broadcast over `--max-message-bytes` (upstream's error atom).
const TOO_LARGE: &str = "payload_size_exceeded";
/// Reply reason of a track whose payload is not an object (docs/protocol.md 9.1).
const NOT_A_MAP: &str = "Presence track payload must be a map";
/// Reply reason of a track refused because the channel's presence is full (docs/protocol.md
/// 9.3, `--max-presence-per-channel`, `--max-presence-bytes-per-channel`).
const PRESENCE_FULL: &str = "Channel presence limit reached";
/// Reply reason of a track that would bring the connection's tracked presence, across its
/// channels, over `--max-presence-bytes-per-connection`.
const CONNECTION_PRESENCE_FULL: &str = "Connection presence limit reached";
/// Reply reason of a track over `--max-message-bytes` (docs/protocol.md 9.3).
const TRACK_TOO_LARGE: &str = "Track message size exceeded";

impl Session {
    /// Adds the membership of `topic` (just recorded in `channels`) to the hub.
    pub(super) fn join_hub(&self, topic: &str) {
        let Some(joined) = self.channels.get(topic) else {
            return;
        };
        self.services
            .hub
            .join(&joined.hub_key(), self.hub_member(joined));
    }

    /// Pushes `presence_state` to the membership of `topic` if it enabled presence.
    pub(super) fn presence_state_after_join(&self, topic: &str) {
        let Some(joined) = self.channels.get(topic) else {
            return;
        };
        if joined.hub.presence_enabled && joined.rights().read_presence {
            let state = self.services.hub.presence_state(&joined.hub_key());
            self.push_raw(
                joined.join_ref.as_deref(),
                None,
                topic,
                "presence_state",
                &state,
            );
        }
    }

    /// A `broadcast` push on a joined channel: relayed to the channel; answered only when the
    /// membership asked for acks.
    pub(super) fn broadcast(&mut self, msg: Inbound) {
        if !self.may_send(&msg.topic, Denied::Broadcast) {
            let ack = self.channels.get(&msg.topic).filter(|j| j.hub.ack);
            if let Some(joined) = ack {
                let (jr, r) = (msg.join_ref.as_deref(), msg.msg_ref.as_deref());
                let reason = Denied::Broadcast.reason(joined.name());
                self.reply(jr, r, &msg.topic, "error", json!({ "reason": reason }));
            }
            return;
        }
        let Some(joined) = self.channels.get(&msg.topic) else {
            return;
        };
        let limit = self.services.config.max_event_bytes;
        let event_len = match &msg.payload {
            InboundPayload::Raw(raw) => user_event_len(raw.as_str()),
            InboundPayload::Json(value) => value
                .get("event")
                .and_then(Value::as_str)
                .map_or(0, str::len),
            InboundPayload::Binary(b) => b.event.len(),
        };
        if event_len > limit {
            metrics::counter!("gateway_session_bounds_refused_total").increment(1);
            let (jr, r) = (msg.join_ref.as_deref(), msg.msg_ref.as_deref());
            let reason = format!("event is longer than {limit} bytes");
            self.reply(jr, r, &msg.topic, "error", json!({ "reason": reason }));
            return;
        }
        // The payload's own bytes go to the members (docs/protocol.md 7.1), never re-encoded.
        let message = match msg.payload {
            InboundPayload::Raw(raw) => Message::Json(raw.into_arc()),
            InboundPayload::Json(value) => Message::Json(Arc::from(value.to_string())),
            InboundPayload::Binary(b) => Message::Binary {
                event: Arc::from(b.event),
                meta: b.meta.map(RawJson::into_arc),
                payload: b.payload,
            },
        };
        let sent = self.services.hub.send(
            joined.name(),
            joined.private.is_some(),
            Some(self.id),
            &message,
        );
        if let Err(e) = &sent {
            tracing::debug!(topic = %msg.topic, error = %e, "broadcast refused");
        }
        if joined.hub.ack {
            let (jr, r) = (msg.join_ref.as_deref(), msg.msg_ref.as_deref());
            match sent {
                Ok(_) => self.reply(jr, r, &msg.topic, "ok", json!({})),
                Err(_) => self.reply(jr, r, &msg.topic, "error", json!({"reason": TOO_LARGE})),
            }
        }
    }

    /// A `presence` push on a joined channel: track or untrack, always answered.
    pub(super) fn presence(&mut self, msg: Inbound) {
        let (jr, r) = (msg.join_ref.as_deref(), msg.msg_ref.as_deref());
        let topic = msg.topic.as_str();
        let Some(joined) = self.channels.get(topic) else {
            return;
        };
        let (name, key) = (
            joined.hub_key().into_owned(),
            joined.hub.presence_key.clone(),
        );
        let (join_ref, reads_presence) = (joined.join_ref.clone(), joined.rights().read_presence);
        let payload = match &msg.payload {
            InboundPayload::Json(Value::Object(p)) => p,
            _ => {
                self.reply(
                    jr,
                    r,
                    topic,
                    "error",
                    json!({"reason": "unknown presence event"}),
                );
                return;
            }
        };
        let event = payload
            .get("event")
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase);
        match event.as_deref() {
            Some("track") => {
                let tracked = match payload.get("payload") {
                    None => Some(serde_json::Map::new()),
                    Some(Value::Object(p)) => Some(p.clone()),
                    Some(_) => None,
                };
                let Some(tracked) = tracked else {
                    self.reply(jr, r, topic, "error", json!({"reason": NOT_A_MAP}));
                    return;
                };
                if !self.may_send(topic, Denied::Track) {
                    let reason = Denied::Track.reason(broadcast::channel_name(&name));
                    self.reply(jr, r, topic, "error", json!({ "reason": reason }));
                    return;
                }
                // What this connection tracks across all its channels is bounded too.
                let size = serde_json::to_string(&tracked).map_or(0, |t| t.len()) + key.len();
                let elsewhere: usize = self
                    .channels
                    .values()
                    .filter(|j| &*j.topic != topic)
                    .map(|j| j.tracked_bytes)
                    .sum();
                let limit = self.services.config.max_presence_bytes_per_connection;
                if elsewhere + size > limit {
                    metrics::counter!("gateway_presence_refused_total").increment(1);
                    self.reply(
                        jr,
                        r,
                        topic,
                        "error",
                        json!({"reason": CONNECTION_PRESENCE_FULL}),
                    );
                    return;
                }
                match self.services.hub.track(&name, self.id, &key, tracked) {
                    Ok(()) => {
                        if let Some(joined) = self.channels.get_mut(topic) {
                            joined.tracked_bytes = size;
                        }
                        self.reply(jr, r, topic, "ok", json!({}));
                        // A track enables presence for a membership that did not ask at join:
                        // it gets the state now, or it would never see who was there before.
                        let first = self
                            .channels
                            .get_mut(topic)
                            .is_some_and(|j| !std::mem::replace(&mut j.hub.presence_enabled, true));
                        if first && reads_presence {
                            let state = self.services.hub.presence_state(&name);
                            let jr = join_ref.as_deref();
                            self.push_raw(jr, None, topic, "presence_state", &state);
                        }
                    }
                    Err(Error::TooLarge { .. }) => {
                        self.reply(jr, r, topic, "error", json!({"reason": TRACK_TOO_LARGE}));
                    }
                    Err(Error::PresenceFull) => {
                        self.reply(jr, r, topic, "error", json!({"reason": PRESENCE_FULL}));
                    }
                    Err(e) => {
                        let reason = e.to_string();
                        self.reply(jr, r, topic, "error", json!({"reason": reason}));
                    }
                }
            }
            Some("untrack") => {
                self.services.hub.untrack(&name, self.id);
                if let Some(joined) = self.channels.get_mut(topic) {
                    joined.tracked_bytes = 0;
                }
                self.reply(jr, r, topic, "ok", json!({}));
            }
            _ => self.reply(
                jr,
                r,
                topic,
                "error",
                json!({"reason": "unknown presence event"}),
            ),
        }
    }

    /// Pushes a frame whose payload is already-serialized JSON.
    fn push_raw(&self, jr: Option<&str>, r: Option<&str>, topic: &str, event: &str, json: &str) {
        let text = protocol::encode_text(self.params.vsn, jr, r, topic, event, json);
        // A full queue closes the session as a slow consumer; nothing more to do here.
        let _pushed = self.outbound.push(Frame::text(Kind::of_event(event), text));
    }
}

/// Length of a broadcast payload's `event` string (0 when there is none, or the payload is not
/// an object): read without building the payload, whose other values are skipped. As with a
/// map, and with the members' JSON parsers, the last of repeated `event` keys counts.
fn user_event_len(payload: &str) -> usize {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    use serde_json::value::RawValue;

    /// The keys of a broadcast payload that matter here.
    #[derive(serde::Deserialize)]
    #[serde(field_identifier, rename_all = "snake_case")]
    enum Key {
        Event,
        #[serde(other)]
        Other,
    }
    /// Finds the last `event` value.
    struct LastEvent;
    impl<'de> Visitor<'de> for LastEvent {
        type Value = Option<&'de RawValue>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut event = None;
            while let Some(key) = map.next_key::<Key>()? {
                match key {
                    Key::Event => event = Some(map.next_value()?),
                    Key::Other => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(event)
        }
    }
    let mut de = serde_json::Deserializer::from_str(payload);
    let Ok(Some(event)) = (&mut de).deserialize_map(LastEvent) else {
        return 0;
    };
    serde_json::from_str::<String>(event.get()).map_or(0, |e| e.len())
}

#[cfg(test)]
mod tests {
    use super::user_event_len;

    #[test]
    fn user_event_length_is_read_from_the_payload() {
        assert_eq!(
            user_event_len(r#"{"payload":{"event":"no"},"event":"cursor"}"#),
            6
        );
        assert_eq!(user_event_len(r#"{"event":"\u00e9"}"#), 2);
        assert_eq!(user_event_len(r#"{"event":1}"#), 0);
        assert_eq!(user_event_len(r#"{"type":"broadcast"}"#), 0);
        assert_eq!(user_event_len(r#"["abc"]"#), 0);
        assert_eq!(user_event_len(r#"{"event":"a","event":"abc"}"#), 3);
    }
}
