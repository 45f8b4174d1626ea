//! `config.broadcast.replay` (docs/protocol.md 5.1, 7.6): a private channel asks for the stored
//! database messages of its topic since a time, as Supabase Realtime replays them.
//!
//! The join payload's `replay` object is read once into a [`Replay`]; the join then refuses it
//! on a public channel, with parameters that cannot be read, or when the token may not read the
//! channel's broadcasts, and otherwise joins the hub holding its live broadcasts, reads the stored
//! messages (before its reply, so that a failed read refuses the join), and after the reply and
//! `presence_state` has the hub queue the replayed messages, then the held ones
//! ([`crate::broadcast::replay`]).

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::{JoinConfig, Refusal};
use crate::auth::channel::Rights;
use crate::auth::Claims;
use crate::broadcast::store::{DbMessage, ReplayRequest};
use crate::broadcast::{self, replay::Hold};
use crate::session::Session;

/// Most messages one join replays; a larger `limit` is lowered to it, as upstream does.
pub const MAX_LIMIT: i64 = 25;

/// Longest the read of the stored messages may take (pool wait included); past it the join is
/// refused.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A private channel's replay, once allowed: what to read, and what its token may read.
#[derive(Debug, Clone, Copy)]
pub(super) struct Replaying {
    request: ReplayRequest,
    rights: Rights,
}

/// What a replaying join read, until it is released after the join reply.
#[derive(Debug)]
pub(super) struct Replayed {
    /// The channel's hub key.
    key: String,
    /// The messages to replay, oldest first.
    messages: Vec<DbMessage>,
}

/// What a join asked to replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// No `replay` (or `null`).
    Off,
    /// The stored messages to replay.
    Asked(ReplayRequest),
    /// A `replay` that cannot be read; why.
    Invalid(&'static str),
}

impl Replay {
    /// Reads `config.broadcast.replay`: an object with `since`, an integer of milliseconds since
    /// the epoch (required), and `limit`, an integer (default and most [`MAX_LIMIT`]; below 1 it
    /// counts as 1, above the most as the most, as upstream clamps it).
    pub fn parse(broadcast: Option<&Map<String, Value>>) -> Replay {
        let replay = match broadcast.and_then(|b| b.get("replay")) {
            None | Some(Value::Null) => return Replay::Off,
            Some(Value::Object(replay)) => replay,
            Some(_) => return Replay::Invalid("replay must be an object with since and limit"),
        };
        let Some(since) = replay.get("since").and_then(Value::as_i64) else {
            return Replay::Invalid("since must be an integer of milliseconds since the epoch");
        };
        let Some(since) = chrono::DateTime::from_timestamp_millis(since) else {
            return Replay::Invalid("since is out of range");
        };
        let limit = match replay.get("limit") {
            None | Some(Value::Null) => MAX_LIMIT,
            Some(limit) => match limit.as_i64() {
                Some(limit) => limit.clamp(1, MAX_LIMIT),
                None => return Replay::Invalid("limit must be an integer"),
            },
        };
        Replay::Asked(ReplayRequest { since, limit })
    }
}

impl Session {
    /// What the join of private channel `name` (`private`: its rights; `None` for a public
    /// channel) replays.
    ///
    /// # Errors
    /// The refusal of a replay on a public channel, of one that cannot be read, or of one on a
    /// channel whose broadcasts the token may not read (audited like the other private-channel
    /// refusals).
    pub(super) fn replay_request(
        &self,
        config: &JoinConfig,
        private: Option<Rights>,
        name: &str,
        claims: &Claims,
    ) -> Result<Option<Replaying>, Refusal> {
        let asked = match config.replay {
            Replay::Off => return Ok(None),
            Replay::Asked(request) => Ok(request),
            Replay::Invalid(why) => Err(Refusal::ReplayInvalid(why)),
        };
        let Some(rights) = private else {
            return Err(Refusal::ReplayPublic);
        };
        if !rights.read_broadcast {
            self.private_refused("replay", "denied", name, claims, json!({}));
            return Err(Refusal::Private {
                name: name.to_owned(),
            });
        }
        asked.map(|request| Some(Replaying { request, rights }))
    }

    /// Joins private channel `name` with its broadcasts held (`self_broadcast`: the
    /// membership's), and reads what `replaying` replays.
    ///
    /// # Errors
    /// When the read fails; the membership has left the hub again.
    pub(super) async fn start_replay(
        &self,
        name: &str,
        replaying: Replaying,
        self_broadcast: bool,
    ) -> Result<Replayed, Refusal> {
        let key = broadcast::channel_key(name, true).into_owned();
        let member = self.member(replaying.rights, self_broadcast, Some(Hold::new()));
        let hub = &self.services.hub;
        hub.join(&key, member);
        match hub.stored(name, replaying.request, READ_TIMEOUT).await {
            Ok(messages) => Ok(Replayed { key, messages }),
            Err(e) => {
                hub.leave(&key, self.id);
                tracing::warn!(channel = %name, error = %crate::error::chain(&e), "cannot read the messages to replay");
                Err(Refusal::ReplayUnavailable)
            }
        }
    }

    /// After the join reply: queues the replayed messages, then the broadcasts held since the
    /// membership joined, and ends the hold.
    pub(super) fn finish_replay(&self, replayed: &Replayed) {
        let hub = &self.services.hub;
        let released = hub.release(&replayed.key, self.id, &replayed.messages);
        tracing::debug!(
            replayed = released.replayed,
            held = released.held,
            duplicates = released.duplicates,
            "channel replayed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(replay: Value) -> Replay {
        let broadcast = json!({ "replay": replay });
        Replay::parse(broadcast.as_object())
    }

    #[test]
    fn since_is_required_and_limit_is_clamped_as_upstream() {
        let Replay::Asked(r) = parse(json!({"since": 1_700_000_000_000_i64, "limit": 5})) else {
            panic!("a valid replay");
        };
        assert_eq!(
            (r.since.timestamp_millis(), r.limit),
            (1_700_000_000_000, 5)
        );
        let limit = |replay| match parse(replay) {
            Replay::Asked(r) => r.limit,
            other => panic!("{other:?}"),
        };
        assert_eq!(limit(json!({"since": 0})), MAX_LIMIT);
        assert_eq!(limit(json!({"since": 0, "limit": null})), MAX_LIMIT);
        assert_eq!(limit(json!({"since": 0, "limit": 100})), MAX_LIMIT);
        assert_eq!(limit(json!({"since": 0, "limit": 0})), 1);
        assert_eq!(limit(json!({"since": 0, "limit": -3})), 1);
    }

    #[test]
    fn missing_or_null_replay_is_off() {
        assert_eq!(Replay::parse(None), Replay::Off);
        assert_eq!(Replay::parse(json!({}).as_object()), Replay::Off);
        assert_eq!(parse(Value::Null), Replay::Off);
    }

    /// Guards the refusal of parameters upstream refuses (a join error, not a silent no-replay).
    #[test]
    fn unreadable_params_are_invalid() {
        for bad in [
            json!(5),
            json!([]),
            json!({}),
            json!({"since": "1700000000000"}),
            json!({"since": 1.5}),
            json!({"since": 0, "limit": "10"}),
            json!({"since": 0, "limit": 2.5}),
            json!({"since": i64::MAX}),
        ] {
            assert!(matches!(parse(bad.clone()), Replay::Invalid(_)), "{bad}");
        }
    }
}
