//! A session's private channels (docs/protocol.md 7.5): the authorization of a join with
//! `config.private: true`, the rights a channel keeps while joined, what a send or a track
//! without the right gets, and the re-check when an `access_token` push changes the token.
//!
//! The rights come from [`crate::auth::channel`] (row-level-security policies on
//! `realtime.messages`), evaluated once at join and once per new token; broadcasts and tracks
//! read the cached [`Rights`] and never wait on the database. Every refusal is counted in
//! `gateway_session_private_refused_total{kind, cause}` and audited as `private_refused` (sends
//! and tracks at most once a minute per channel, with the number refused since).

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::json;

use super::join::{JoinConfig, Refusal};
use super::{Joined, Session};
use crate::auth::channel::{self, Rights, Want};
use crate::auth::Claims;
use crate::broadcast::{self, Member};

/// How often a channel's refused sends are audited, at most.
const AUDIT_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// What a push on a private channel was refused for; each owns its reply text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Denied {
    /// A broadcast without the write right (replied to only with `broadcast.ack`).
    Broadcast,
    /// A presence track without the write right.
    Track,
}

impl Denied {
    /// The `reason` of the error reply on channel `name`.
    pub(super) fn reason(self, name: &str) -> String {
        match self {
            Denied::Broadcast => format!(
                "Unauthorized: You do not have permissions to write to this Channel topic: {name}"
            ),
            Denied::Track => format!(
                "Unauthorized: You do not have permissions to track presence on this Channel \
                 topic: {name}"
            ),
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Denied::Broadcast => "broadcast",
            Denied::Track => "track",
        }
    }
}

/// The `system` message of a channel ended because its new token may no longer read it.
fn read_revoked_text(name: &str) -> String {
    format!("You no longer have permission to read from this Channel topic: {name}")
}

/// The `system` message of a channel ended because its new token's rights could not be checked.
const RECHECK_FAILED: &str = "Realtime was unable to connect to the project database";

/// Counts one refusal.
fn count_refusal(kind: &'static str, cause: &'static str) {
    metrics::counter!("gateway_session_private_refused_total", "kind" => kind, "cause" => cause)
        .increment(1);
}

/// Refused sends of one channel not audited yet, per [`Denied`] kind; nothing until the first
/// refusal (a pointer in every channel, not the 48 bytes of both kinds).
#[derive(Debug, Default)]
pub(super) struct DeniedSends(Option<Box<[DeniedKind; 2]>>);

impl DeniedSends {
    /// The refusals of `denied`'s kind.
    fn of(&mut self, denied: Denied) -> &mut DeniedKind {
        let kinds = self.0.get_or_insert_with(Box::default);
        &mut kinds[usize::from(denied == Denied::Track)]
    }
}

/// Refused sends of one kind.
#[derive(Debug, Default)]
struct DeniedKind {
    /// Refused since the last audit record.
    count: u64,
    /// When the last audit record was written.
    audited: Option<tokio::time::Instant>,
}

impl Joined {
    /// What the channel's token may do: everything on a public channel.
    pub(super) fn rights(&self) -> Rights {
        self.private.unwrap_or(Rights::ALL)
    }

    /// The channel's key in the broadcast hub (a private channel is not its public namesake).
    pub(super) fn hub_key(&self) -> Cow<'_, str> {
        broadcast::channel_key(self.name(), self.private.is_some())
    }
}

impl Session {
    /// The rights of a join: `None` for a public channel (refused with `PrivateOnly` when the
    /// gateway takes private channels only), the evaluated rights of a private one (refused when
    /// it may read nothing, or when the check cannot be evaluated).
    pub(super) async fn private_access(
        &self,
        config: &JoinConfig,
        name: &str,
        claims: &Claims,
    ) -> Result<Option<Rights>, Refusal> {
        if !config.private {
            if self.services.config.private.private_channels_only {
                self.private_refused("join", "private_only", name, claims, json!({}));
                return Err(Refusal::PrivateOnly);
            }
            return Ok(None);
        }
        let checked = self
            .services
            .authorizer
            .check(name, claims, Want::Everything)
            .await;
        match checked {
            Ok(rights) if rights.can_join() => Ok(Some(rights)),
            Ok(_) => {
                self.private_refused("join", "denied", name, claims, json!({}));
                Err(Refusal::Private {
                    name: name.to_owned(),
                })
            }
            Err(e) => Err(self.check_failed("join", &e, name, claims)),
        }
    }

    /// Counts, logs and audits a check that could not be evaluated; the join's refusal.
    fn check_failed(
        &self,
        kind: &'static str,
        e: &channel::Error,
        name: &str,
        claims: &Claims,
    ) -> Refusal {
        let (cause, refusal) = match e {
            channel::Error::Policy(_) => (
                "policy_error",
                Refusal::Private {
                    name: name.to_owned(),
                },
            ),
            channel::Error::Unavailable(_) => ("unavailable", Refusal::DatabaseUnavailable),
        };
        tracing::warn!(channel = %name, error = %e.detail(), "cannot authorize a private channel");
        self.private_refused(kind, cause, name, claims, json!({"error": e.detail()}));
        refusal
    }

    /// Counts and audits one refusal.
    pub(super) fn private_refused(
        &self,
        kind: &'static str,
        cause: &'static str,
        name: &str,
        claims: &Claims,
        mut detail: serde_json::Value,
    ) {
        count_refusal(kind, cause);
        if let Some(d) = detail.as_object_mut() {
            d.insert("kind".into(), kind.into());
            d.insert("cause".into(), cause.into());
            d.insert("channel".into(), name.into());
            d.insert("role".into(), claims.db_role().into());
            d.insert(
                "connection_id".into(),
                self.handle.connection_id.to_string().into(),
            );
        }
        self.services.registry.audit(
            "private_refused",
            claims.user_id(),
            Some(self.handle.peer),
            detail,
        );
    }

    /// Whether channel `topic` may send what `denied` names; when not, counts the refusal and
    /// audits it (at most once a minute per channel).
    pub(super) fn may_send(&mut self, topic: &str, denied: Denied) -> bool {
        let Some(joined) = self.channels.get_mut(topic) else {
            return false;
        };
        let rights = joined.rights();
        let allowed = match denied {
            Denied::Broadcast => rights.write_broadcast,
            Denied::Track => rights.write_presence,
        };
        if allowed {
            return true;
        }
        let slot = joined.denied.of(denied);
        slot.count += 1;
        let now = tokio::time::Instant::now();
        let due = slot
            .audited
            .is_none_or(|at| now.duration_since(at) >= AUDIT_EVERY);
        if !due {
            count_refusal(denied.kind(), "denied");
            return false;
        }
        slot.audited = Some(now);
        let refused = std::mem::take(&mut slot.count);
        let (name, claims) = (joined.name().to_owned(), Arc::clone(&joined.claims));
        let detail = json!({ "refused_since_last_record": refused });
        self.private_refused(denied.kind(), "denied", &name, &claims, detail);
        false
    }

    /// The hub membership of channel `topic`, with what its token may read.
    pub(super) fn hub_member(&self, joined: &Joined) -> Member {
        self.member(joined.rights(), joined.hub.self_broadcast, None)
    }

    /// A hub membership of this connection reading what `rights` allow (`hold`: while its
    /// channel replays).
    pub(super) fn member(
        &self,
        rights: Rights,
        self_broadcast: bool,
        hold: Option<Arc<broadcast::replay::Hold>>,
    ) -> Member {
        Member {
            conn: self.id,
            outbound: self.outbound.clone(),
            vsn: self.params.vsn,
            self_broadcast,
            reads_broadcast: rights.read_broadcast,
            reads_presence: rights.read_presence,
            hold,
            replayed: None,
        }
    }

    /// Re-checks private channel `topic` after its token changed to `claims`. A channel that
    /// keeps its read rights stays with the new rights (a lost write right refuses later sends);
    /// one that lost a read right, or whose rights cannot be checked, is ended: `system` error,
    /// then `phx_close`, registry row `token_expired`. Returns whether it stays.
    pub(super) async fn recheck_private(&mut self, topic: &str, claims: &Claims) -> bool {
        let Some(before) = self.channels.get(topic).and_then(|j| j.private) else {
            return true;
        };
        let Some(name) = self.channels.get(topic).map(|j| j.name().to_owned()) else {
            return false;
        };
        let checked = self
            .services
            .authorizer
            .check(&name, claims, Want::Everything)
            .await;
        let message = match checked {
            Ok(now) if now.can_join() && before.reads_kept_in(now) => {
                if let Some(joined) = self.channels.get_mut(topic) {
                    joined.private = Some(now);
                }
                if now != before {
                    if let Some(joined) = self.channels.get(topic) {
                        let (key, id) = (joined.hub_key(), self.id);
                        let hub = &self.services.hub;
                        hub.set_reads(&key, id, now.read_broadcast, now.read_presence);
                    }
                }
                return true;
            }
            Ok(_) => {
                self.private_refused("token", "denied", &name, claims, json!({}));
                read_revoked_text(&name)
            }
            Err(e) => {
                self.check_failed("token", &e, &name, claims);
                RECHECK_FAILED.to_owned()
            }
        };
        if let Some(joined) = self.leave(topic, "token_expired") {
            let jr = joined.join_ref.as_deref();
            let system = json!({"extension": "system", "status": "error", "message": message,
                                "reason": "unauthorized", "channel": joined.name()});
            self.push_json(jr, None, topic, "system", &system);
            self.push_json(jr, jr, topic, "phx_close", &json!({}));
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guards the reply texts clients may match on (docs/protocol.md 7.5).
    #[test]
    fn denied_pushes_own_their_reply_texts() {
        assert_eq!(
            Denied::Broadcast.reason("room"),
            "Unauthorized: You do not have permissions to write to this Channel topic: room"
        );
        assert!(Denied::Track.reason("room").starts_with("Unauthorized: "));
        assert_eq!(
            read_revoked_text("r"),
            "You no longer have permission to read from this Channel topic: r"
        );
    }

    #[test]
    fn refused_sends_are_kept_per_kind_from_the_first() {
        let mut denied = DeniedSends::default();
        assert!(denied.0.is_none(), "nothing is held before a refusal");
        denied.of(Denied::Broadcast).count += 2;
        denied.of(Denied::Track).count += 1;
        assert_eq!(denied.of(Denied::Broadcast).count, 2);
        assert_eq!(denied.of(Denied::Track).count, 1);
    }
}
