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

use super::Session;
use crate::broadcast::{Error, Member, Message};
use crate::outbound::Frame;
use crate::protocol::{self, Inbound, InboundPayload};

/// Reply reason of a broadcast over `--max-message-bytes` (upstream's error atom).
const TOO_LARGE: &str = "payload_size_exceeded";
/// Reply reason of a track whose payload is not an object (docs/protocol.md 9.1).
const NOT_A_MAP: &str = "Presence track payload must be a map";
/// Reply reason of a track over `--max-message-bytes` (docs/protocol.md 9.3).
const TRACK_TOO_LARGE: &str = "Track message size exceeded";

impl Session {
    /// Adds the membership of `topic` (just recorded in `channels`) to the hub.
    pub(super) fn join_hub(&self, topic: &str) {
        let Some(joined) = self.channels.get(topic) else {
            return;
        };
        self.services.hub.join(
            &joined.name,
            Member {
                conn: self.id,
                outbound: self.outbound.clone(),
                vsn: self.params.vsn,
                self_broadcast: joined.hub.self_broadcast,
            },
        );
    }

    /// Pushes `presence_state` to the membership of `topic` if it enabled presence.
    pub(super) fn presence_state_after_join(&self, topic: &str) {
        let Some(joined) = self.channels.get(topic) else {
            return;
        };
        if joined.hub.presence_enabled {
            let state = self.services.hub.presence_state(&joined.name);
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
    pub(super) fn broadcast(&self, msg: Inbound) {
        let Some(joined) = self.channels.get(&msg.topic) else {
            return;
        };
        let limit = self.services.config.max_event_bytes;
        let event_len = match &msg.payload {
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
        let message = match msg.payload {
            InboundPayload::Json(value) => Message::Json(Arc::from(value.to_string())),
            InboundPayload::Binary(b) => Message::Binary {
                event: Arc::from(b.event),
                meta: b.meta.map(|m| Arc::from(m.to_string())),
                payload: b.payload,
            },
        };
        let sent = self
            .services
            .hub
            .send(&joined.name, false, Some(self.id), &message);
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
        let (name, key) = (joined.name.clone(), joined.hub.presence_key.clone());
        let join_ref = joined.join_ref.clone();
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
                match self.services.hub.track(&name, self.id, &key, tracked) {
                    Ok(()) => {
                        self.reply(jr, r, topic, "ok", json!({}));
                        // A track enables presence for a membership that did not ask at join:
                        // it gets the state now, or it would never see who was there before.
                        let first = self
                            .channels
                            .get_mut(topic)
                            .is_some_and(|j| !std::mem::replace(&mut j.hub.presence_enabled, true));
                        if first {
                            let state = self.services.hub.presence_state(&name);
                            let jr = join_ref.as_deref();
                            self.push_raw(jr, None, topic, "presence_state", &state);
                        }
                    }
                    Err(Error::TooLarge { .. }) => {
                        self.reply(jr, r, topic, "error", json!({"reason": TRACK_TOO_LARGE}));
                    }
                    Err(e) => {
                        let reason = e.to_string();
                        self.reply(jr, r, topic, "error", json!({"reason": reason}));
                    }
                }
            }
            Some("untrack") => {
                self.services.hub.untrack(&name, self.id);
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
        let _pushed = self.outbound.push(Frame::from(text));
    }
}
