//! Resuming a session after a reconnect (README, "Resuming after a reconnect").
//!
//! A socket that passes a session id (`?session=<id>`) can resume. Its writer stamps what it
//! writes and confirms it with pings ([`track`]); its channels with Postgres Changes go live
//! through the listener at a read boundary ([`crate::capture::resume`]). When the socket ends,
//! each channel's confirmed position is stored in `realtime.resume_points` (migration 0020),
//! bound to the token's role and `sub`, until the resume window ends. The next socket with that
//! session id and identity takes the positions at its first join, and each channel it joins
//! again is caught up from its position before live changes; the `system` message that
//! confirms the subscription says whether the resume was complete.

pub mod track;

use crate::socket::{Message, Reader};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use sqlx::{PgPool, Row};

use super::Session;
use crate::capture::resume::{Outcome, Request, ABANDONED, PENDING};
use crate::fanout::router::{ChannelKey, PgChannel};
use crate::outbound::{Frame, Kind};
use crate::position::{Position, Spans};
use crate::protocol;
pub use track::Track;

/// The socket parameter that names the session.
pub const SESSION_PARAM: &str = "session";
/// The upgrade's refusal of a session id [`valid_id`] rejects.
pub const INVALID_ID_TEXT: &str =
    "invalid session parameter: 16 to 128 characters of letters, digits and -_.:";

/// How long a join waits for the listener to make its channel live before it goes live on its
/// own (without catching up).
const LISTENER_PATIENCE: Duration = Duration::from_secs(10);
/// How long an ending socket waits for the client's side of the close handshake.
pub(super) const CLOSE_REPLY_PATIENCE: Duration = Duration::from_secs(2);
/// How long storing a session's positions may take.
const STORE_PATIENCE: Duration = Duration::from_secs(5);

/// What sessions need to resume, shared by the node.
#[derive(Debug, Clone)]
pub struct Services {
    /// Channels to make live, to the listener.
    pub requests: tokio::sync::mpsc::UnboundedSender<Request>,
    /// The listener's spans.
    pub spans: Arc<Spans>,
    /// Where positions are stored.
    pub pool: PgPool,
    /// How long a session can be resumed after its socket ends.
    pub window: Duration,
    /// This node.
    pub node_id: String,
}

/// Why a channel was not resumed, as the `system` message's `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No earlier socket of this session left a position for the channel.
    NotFound,
    /// The earlier socket ended longer ago than the resume window.
    WindowExpired,
    /// The session belongs to another role or user.
    IdentityChanged,
    /// Changes after the position were pruned from the outbox.
    ChangesPruned,
    /// The earlier socket's position could not be known.
    PositionUnknown,
    /// The database could not be asked, or the catch-up failed.
    Unavailable,
}

impl Reason {
    /// The `reason` text.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NotFound => "not_found",
            Reason::WindowExpired => "window_expired",
            Reason::IdentityChanged => "identity_changed",
            Reason::ChangesPruned => "changes_pruned",
            Reason::PositionUnknown => "position_unknown",
            Reason::Unavailable => "unavailable",
        }
    }
}

/// Whether `id` can name a session: 16 to 128 characters of letters, digits and `-_.:`.
pub fn valid_id(id: &str) -> bool {
    (16..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// The identity a session is bound to: the token's role and `sub`.
pub fn identity(claims: &crate::auth::Claims) -> String {
    format!(
        "{}/{}",
        claims.db_role(),
        claims.sub.as_deref().unwrap_or("")
    )
}

/// A resumable socket's state.
#[derive(Debug)]
pub struct Resumable {
    /// The session id.
    pub id: String,
    /// Its place in the change stream.
    pub track: Arc<Track>,
    last_chan: u32,
}

impl Resumable {
    /// State for a socket with session `id`.
    pub fn new(id: String, spans: Arc<Spans>) -> Resumable {
        Resumable {
            id,
            track: Arc::new(Track::new(spans)),
            last_chan: 0,
        }
    }

    /// A number for a newly joined channel.
    pub fn next_chan(&mut self) -> u32 {
        self.last_chan += 1;
        self.last_chan
    }
}

/// Reads the client's side of the close handshake, for at most [`CLOSE_REPLY_PATIENCE`]: its
/// close frame confirms every frame written before the gateway's, and pongs that arrive first
/// are counted.
pub(super) async fn await_close_reply(stream: &mut Reader, track: &Track) {
    let read = async {
        while let Some(Ok(message)) = stream.next().await {
            match message {
                Message::Pong(payload) => {
                    if let Some(id) = track::pong_id(&payload) {
                        track.pong(id);
                    }
                }
                Message::Close(_) => {
                    track.confirm_all();
                    return;
                }
                _ => {}
            }
        }
    };
    let _replied = tokio::time::timeout(CLOSE_REPLY_PATIENCE, read).await;
}

impl Session {
    /// Makes channel `topic`'s Postgres Changes live through the listener, caught up from the
    /// earlier socket's position when there is one, and queues the `system` message `system`
    /// with the resume's outcome.
    pub(super) async fn go_live(&mut self, topic: &str, system: Value, anchor: Option<Position>) {
        let Some(services) = self
            .services
            .resume
            .clone()
            .filter(|_| self.resume.is_some())
        else {
            return;
        };
        let Some(joined) = self.channels.get(topic) else {
            return;
        };
        let owner = identity(&joined.claims);
        let id = self
            .resume
            .as_ref()
            .map(|r| r.id.clone())
            .unwrap_or_default();
        let (from, refused) = match take(&services.pool, &id, topic, &owner).await {
            Ok(Ok(position)) => (Some(position), None),
            Ok(Err(reason)) => (None, Some(reason)),
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), "cannot read a session's position");
                (None, Some(Reason::Unavailable))
            }
        };
        if let Some(reason) = refused {
            metrics::counter!("gateway_resume_refused_total", "reason" => reason.as_str())
                .increment(1);
        }
        // Not resumed: caught up from the join's reply instead, like any join.
        let from = from.or(anchor);
        let channel = Arc::new(
            PgChannel::new(
                ChannelKey {
                    conn: self.id,
                    topic: Arc::from(topic),
                },
                self.outbound.clone(),
                self.params.vsn,
                Arc::clone(&joined.subs),
                Arc::clone(&joined.claims),
            )
            .with_chan(joined.chan),
        );
        let vsn = self.params.vsn;
        let jr = joined.join_ref.clone();
        let frame_topic = topic.to_owned();
        // The `system` frame announcing an outcome: queued by the listener, or here when the
        // listener never took the request.
        let build = Arc::new(move |outcome: Outcome| {
            let mut system = system.clone();
            let (resumed, reason, changes) = match (outcome, refused) {
                (Outcome::Resumed { changes }, None) => (true, None, changes),
                (Outcome::Resumed { .. } | Outcome::Live, Some(reason)) => (false, Some(reason), 0),
                (Outcome::Live, None) => (false, Some(Reason::NotFound), 0),
                (Outcome::Failed, _) => (false, Some(Reason::Unavailable), 0),
            };
            if let Some(map) = system.as_object_mut() {
                map.insert("resumed".to_owned(), json!(resumed));
                map.insert("missed_changes".to_owned(), json!(changes));
                if let Some(reason) = reason {
                    map.insert("reason".to_owned(), json!(reason.as_str()));
                }
            }
            let text = protocol::encode_text(
                vsn,
                jr.as_deref(),
                None,
                &frame_topic,
                "system",
                &system.to_string(),
            );
            Frame::text(Kind::System, text)
        });
        let state = Arc::new(AtomicU8::new(PENDING));
        let (done, outcome) = tokio::sync::oneshot::channel();
        let request = Request {
            channel: Arc::clone(&channel),
            from,
            state: Arc::clone(&state),
            system: Box::new({
                let build = Arc::clone(&build);
                move |outcome| build(outcome)
            }),
            done,
        };
        // The listener takes it between two reads; a listener that cannot (its database is
        // down, it is stopping) is waited for only so long.
        let sent = services.requests.send(request);
        let outcome = match sent {
            Ok(()) => tokio::time::timeout(LISTENER_PATIENCE, outcome).await.ok(),
            // Without a listener to ask (it stopped), the channel goes live at once.
            Err(_) => None,
        };
        match outcome {
            Some(Ok(outcome)) => {
                tracing::debug!(topic = %topic, ?outcome, "postgres changes live");
            }
            _ => {
                let abandoned =
                    state.compare_exchange(PENDING, ABANDONED, Ordering::AcqRel, Ordering::Acquire);
                if abandoned.is_ok() {
                    // The listener never took it: live from now, without catching up.
                    self.services.router.subscribe(channel);
                    let _queued = self.outbound.push(build(Outcome::Failed));
                }
                // Otherwise the listener has it and finishes it on its own.
            }
        }
    }

    /// Where a channel joined now goes live from when there is nothing to resume: everything
    /// the listener's last whole read saw counts as before the join.
    pub(super) fn live_anchor(&self) -> Option<Position> {
        let spans = &self.services.resume.as_ref()?.spans;
        let span = spans.get(spans.completed())?;
        Some(Position::at(span.after.clone()))
    }

    /// Stores where each channel with Postgres Changes stands, for the next socket of this
    /// session.
    pub(super) async fn store_positions(&self) {
        let (Some(resume), Some(services)) = (&self.resume, &self.services.resume) else {
            return;
        };
        let Some(positions) = resume.track.positions() else {
            tracing::debug!("positions unknown: the session cannot be resumed");
            metrics::counter!("gateway_resume_unknown_total").increment(1);
            return;
        };
        let by_chan: HashMap<u32, Position> = positions.into_iter().collect();
        let (mut topics, mut identities, mut stored, mut hold_ids, mut hold_xmins) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for joined in self.channels.values() {
            let Some(position) = by_chan.get(&joined.chan).filter(|_| joined.has_changes) else {
                continue;
            };
            let Ok(text) = serde_json::to_string(position) else {
                continue;
            };
            topics.push(joined.topic.to_string());
            identities.push(identity(&joined.claims));
            stored.push(text);
            hold_ids.push(position.before.max_id);
            hold_xmins.push(position.before.xmin().to_string());
        }
        if topics.is_empty() {
            return;
        }
        let insert = sqlx::query(
            "insert into realtime.resume_points \
                 (session_id, topic, identity, node_id, position, hold_id, hold_xmin, expires_at) \
             select $1, u.t, u.i, $2, u.p::jsonb, u.h, u.x::xid8, \
                    now() + make_interval(secs => $3) \
             from unnest($4::text[], $5::text[], $6::text[], $7::int8[], $8::text[]) \
                  as u(t, i, p, h, x) \
             on conflict (session_id, topic, identity) do update set \
                 node_id = excluded.node_id, position = excluded.position, \
                 hold_id = excluded.hold_id, hold_xmin = excluded.hold_xmin, \
                 ended_at = now(), expires_at = excluded.expires_at",
        )
        .bind(&resume.id)
        .bind(&services.node_id)
        .bind(services.window.as_secs_f64())
        .bind(&topics)
        .bind(&identities)
        .bind(&stored)
        .bind(&hold_ids)
        .bind(&hold_xmins)
        .execute(&services.pool);
        match tokio::time::timeout(STORE_PATIENCE, insert).await {
            Ok(Ok(_)) => metrics::counter!("gateway_resume_stored_total").increment(1),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot store a session's positions");
            }
            Err(_) => tracing::warn!("storing a session's positions timed out"),
        }
    }
}

/// Takes (removes and returns) channel `topic`'s position in session `id` when it belongs to
/// `owner`; otherwise why not. A position of another identity is left for its owner.
async fn take(
    pool: &PgPool,
    id: &str,
    topic: &str,
    owner: &str,
) -> Result<Result<Position, Reason>, sqlx::Error> {
    let row = sqlx::query(
        "delete from realtime.resume_points where session_id = $1 and topic = $2 \
             and identity = $3 \
         returning position::text as position, expires_at > now() as live, \
             (select h.pruned_below::text from realtime.change_horizon h) as pruned_below",
    )
    .bind(id)
    .bind(topic)
    .bind(owner)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        let others: bool = sqlx::query_scalar(
            "select exists (select from realtime.resume_points \
                            where session_id = $1 and topic = $2)",
        )
        .bind(id)
        .bind(topic)
        .fetch_one(pool)
        .await?;
        return Ok(Err(if others {
            Reason::IdentityChanged
        } else {
            Reason::NotFound
        }));
    };
    if !row.try_get::<bool, _>("live")? {
        return Ok(Err(Reason::WindowExpired));
    }
    let text: String = row.try_get("position")?;
    let Ok(position) = serde_json::from_str::<Position>(&text) else {
        return Ok(Err(Reason::PositionUnknown));
    };
    let pruned_below: Option<String> = row.try_get("pruned_below")?;
    let pruned_below: u64 = pruned_below.and_then(|p| p.parse().ok()).unwrap_or(0);
    if position.before.xmin() < pruned_below {
        return Ok(Err(Reason::ChangesPruned));
    }
    Ok(Ok(position))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_checked() {
        assert!(valid_id("4f9c1c3e-2a7b-4d0e-9b8a-1f2e3d4c5b6a"));
        assert!(valid_id("tab.1700000000000:abc_DEF"));
        assert!(!valid_id("short"));
        assert!(!valid_id(&"x".repeat(129)));
        assert!(!valid_id("has space in it 0123456789"));
        assert!(!valid_id("quote\"0123456789abcdef"));
    }

    #[test]
    fn reasons_have_distinct_texts() {
        let all = [
            Reason::NotFound,
            Reason::WindowExpired,
            Reason::IdentityChanged,
            Reason::ChangesPruned,
            Reason::PositionUnknown,
            Reason::Unavailable,
        ];
        let mut texts: Vec<_> = all.iter().map(|r| r.as_str()).collect();
        texts.sort_unstable();
        texts.dedup();
        assert_eq!(texts.len(), all.len());
    }
}
