//! Joining a channel (`phx_join`, docs/protocol.md 5): the join payload parsed once into a
//! typed [`JoinConfig`], the refusals a join can meet ([`Refusal`], each owning its reply
//! text), and the steps of a join in order: check the topic and the channel cap, verify the
//! channel token, authorize a private channel, resolve the Postgres Changes subscriptions, read
//! what a replay asks for ([`replay`]), record the registry row, join the broadcast hub,
//! register with the router, reply, replay.

mod config;
pub mod replay;

use std::sync::Arc;

use serde_json::{json, Value};

use super::{Joined, Session};
use crate::auth::{Claims, TokenDigest};
use crate::fanout::router::{ChannelKey, PgChannel};
use crate::fanout::subscription::{self, PgSub, Resolve};
use crate::outbound::{Frame, Kind};
use crate::protocol::{self, Inbound, InboundPayload};

pub use config::{Bounds, JoinConfig, TableFilters};

/// The `system` message's text when a channel's Postgres Changes subscriptions are live.
const SUBSCRIBED: &str = "Subscribed to PostgreSQL";

/// The `system` message that reports a join's Postgres Changes subscriptions (docs/protocol.md
/// 6.5): `{"channel", "extension": "postgres_changes", "message", "status"}`, the keys in the
/// order a JSON object of the gateway's `serde_json` writes them (sorted).
#[derive(Debug, serde::Serialize)]
struct ChangesStatus<'a> {
    channel: &'a str,
    extension: &'static str,
    message: std::borrow::Cow<'static, str>,
    status: &'static str,
}

impl<'a> ChangesStatus<'a> {
    fn new(
        channel: &'a str,
        status: &'static str,
        message: std::borrow::Cow<'static, str>,
    ) -> ChangesStatus<'a> {
        ChangesStatus {
            channel,
            extension: "postgres_changes",
            message,
            status,
        }
    }
}

/// Text of a refusal caused by the database being unreachable.
const UNABLE_TO_CONNECT: &str =
    "UnableToConnectToProject: Realtime was unable to connect to the project database";

/// Why a join was refused; each owns the reason text of its error reply (docs/protocol.md 5.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `realtime:` with nothing after it.
    TopicNameRequired,
    /// The socket has joined `--max-channels-per-connection` channels.
    TooManyChannels,
    /// The channel token was refused; the reason text comes from the verifier.
    Token(String),
    /// A private channel its token may not read (or whose policies raised).
    Private {
        /// The channel name.
        name: String,
    },
    /// A public channel while `--private-channels-only` is set.
    PrivateOnly,
    /// `wait` was asked and a subscription names no published table.
    NotEnabled(String),
    /// `wait` was asked and a subscription is invalid.
    InvalidChanges(String),
    /// `wait` was asked and the database could not be reached to validate the subscriptions.
    DatabaseUnavailable,
    /// A part of the join is over its configured bound.
    TooLong {
        /// What was too long (`topic`, `component`, `presence key`, `filter`).
        what: &'static str,
        /// The bound, in bytes.
        limit: usize,
    },
    /// More `postgres_changes` entries than `--max-changes-per-join`.
    TooManyChanges {
        /// The bound.
        limit: usize,
    },
    /// The connection is over `--joins-per-second`.
    JoinRateLimited,
    /// `config.broadcast.replay` on a public channel.
    ReplayPublic,
    /// `config.broadcast.replay` that cannot be read; why.
    ReplayInvalid(&'static str),
    /// The stored messages to replay could not be read.
    ReplayUnavailable,
}

impl Refusal {
    /// The refusal of a join that waited for subscriptions that could not be resolved.
    fn of_resolve(e: &Resolve) -> Refusal {
        match e {
            Resolve::NotEnabled(m) => Refusal::NotEnabled(m.clone()),
            Resolve::Invalid(m) => Refusal::InvalidChanges(m.clone()),
            Resolve::Database(_) => Refusal::DatabaseUnavailable,
        }
    }

    /// Whether the join was over a configured bound (answered at once, not after the delay).
    pub fn is_bound(&self) -> bool {
        matches!(
            self,
            Refusal::TooLong { .. } | Refusal::TooManyChanges { .. }
        )
    }

    /// The `reason` of the error reply.
    pub fn reason(&self) -> String {
        match self {
            Refusal::TopicNameRequired => {
                "TopicNameRequired: You must provide a topic name".to_owned()
            }
            Refusal::TooManyChannels => "ChannelRateLimitReached: Too many channels".to_owned(),
            Refusal::Token(reason) => reason.clone(),
            Refusal::Private { name } => format!(
                "Unauthorized: You do not have permissions to read from this Channel topic: {name}"
            ),
            Refusal::PrivateOnly => {
                "PrivateOnly: This project only allows private channels".to_owned()
            }
            Refusal::NotEnabled(m) => format!("RealtimeDisabledForConfiguration: {m}"),
            Refusal::InvalidChanges(m) => format!("InvalidPostgresChangesParams: {m}"),
            Refusal::DatabaseUnavailable => UNABLE_TO_CONNECT.to_owned(),
            Refusal::TooLong { what, limit } => {
                format!("InvalidJoinPayload: {what} is longer than {limit} bytes")
            }
            Refusal::TooManyChanges { limit } => format!(
                "InvalidPostgresChangesParams: at most {limit} postgres_changes entries per join"
            ),
            Refusal::JoinRateLimited => {
                "ClientJoinRateLimitReached: Too many joins per second".to_owned()
            }
            Refusal::ReplayPublic => {
                "UnableToReplayMessages: Replay is not allowed for public channels".to_owned()
            }
            Refusal::ReplayInvalid(why) => {
                format!("UnableToReplayMessages: Replay params are not valid: {why}")
            }
            Refusal::ReplayUnavailable => {
                "UnableToReplayMessages: Realtime was unable to replay messages".to_owned()
            }
        }
    }
}

impl Session {
    /// Handles `phx_join`.
    pub(super) async fn join(&mut self, msg: Inbound) {
        let (jr, r, topic) = (msg.join_ref, msg.msg_ref, msg.topic);
        let config = match msg.payload {
            InboundPayload::Json(payload) => JoinConfig::parse(payload),
            InboundPayload::Raw(_) | InboundPayload::Binary(_) => JoinConfig::parse(Value::Null),
        };
        let Some(name) = topic.strip_prefix(protocol::TOPIC_PREFIX) else {
            let reason = json!({"reason": "unmatched topic"});
            self.reply(jr.as_deref(), r.as_deref(), &topic, "error", reason);
            return;
        };
        let bounds = Bounds::of(&self.services.config);
        if topic.len() > bounds.topic_bytes {
            let refusal = Refusal::TooLong {
                what: "topic",
                limit: bounds.topic_bytes,
            };
            // The reply echoes the topic (clients match replies by it); nothing else keeps it.
            self.join_error(jr, r, &topic, &refusal);
            return;
        }
        let name = name.to_owned();
        if name.is_empty() {
            self.join_error(jr, r, &topic, &Refusal::TopicNameRequired);
            return;
        }
        if let Err(refusal) = config.check(bounds) {
            self.join_error(jr, r, &topic, &refusal);
            return;
        }
        // A re-join closes the old membership first (docs/protocol.md 3).
        if let Some(old) = self.leave(&topic, "leave") {
            let ojr = old.join_ref.as_deref();
            self.push_json(ojr, ojr, &topic, "phx_close", &json!({}));
        }
        if self.channels.len() >= self.services.limits.max_channels_per_connection {
            self.join_error(jr, r, &topic, &Refusal::TooManyChannels);
            return;
        }
        let (claims, token) = match self.channel_claims(&config, &name) {
            Ok(pair) => pair,
            Err(refusal) => {
                self.join_error(jr, r, &topic, &refusal);
                return;
            }
        };
        if let Some(sub) = &claims.sub {
            tracing::Span::current().record("sub", tracing::field::display(sub));
        }
        let private = match self.private_access(&config, &name, &claims).await {
            Ok(private) => private,
            Err(refusal) => {
                self.join_error(jr, r, &topic, &refusal);
                return;
            }
        };
        let replay = match self.replay_request(&config, private, &name, &claims) {
            Ok(replay) => replay,
            Err(refusal) => {
                self.join_error(jr, r, &topic, &refusal);
                return;
            }
        };
        let (private_channel, changes_asked) = (config.private, config.changes.len());
        let resolved = if config.changes.is_empty() {
            None
        } else {
            Some(subscription::resolve(&config.changes, &self.services.catalog).await)
        };
        let resolved = resolved.map(|r| r.and_then(|subs| self.within_pattern_budget(subs)));
        if config.wait_for_changes {
            if let Some(Err(e)) = &resolved {
                self.join_error(jr, r, &topic, &Refusal::of_resolve(e));
                return;
            }
        }
        // A replaying membership joins the hub now, holding its broadcasts while the stored
        // messages are read; the others join below, once recorded.
        let replayed = match replay {
            Some(replaying) => {
                let self_broadcast = config.membership.self_broadcast;
                match self.start_replay(&name, replaying, self_broadcast).await {
                    Ok(replayed) => Some(replayed),
                    Err(refusal) => {
                        self.join_error(jr, r, &topic, &refusal);
                        return;
                    }
                }
            }
            None => None,
        };
        let registry_id = self.record_join(&config, jr.as_deref(), &name, &claims);
        let chan = self.resume.as_mut().map_or(0, |resume| resume.next_chan());
        let JoinConfig {
            membership,
            replication_ready,
            ..
        } = config;
        self.channels.insert(Box::new(Joined {
            join_ref: jr.as_deref().map(Box::from),
            topic: topic.as_str().into(),
            claims: Arc::clone(&claims),
            token: token.map(Box::new),
            has_changes: false,
            subs: Arc::from([]),
            registry_id,
            hub: membership,
            tracked_bytes: 0,
            private,
            denied: Default::default(),
            replication_deadline: None,
            chan,
        }));
        if replayed.is_none() {
            self.join_hub(&topic);
        }
        // Subscriptions go live before the reply, so that every change committed after the
        // client hears of them is delivered.
        let system = resolved.map(|resolved| self.activate(&topic, &name, claims, resolved));
        /// The join reply's `response`: the entries as sent, each with its id.
        #[derive(serde::Serialize)]
        struct Response<'a> {
            postgres_changes: subscription::Echoes<'a>,
        }
        let response = Response {
            postgres_changes: subscription::Echoes(&config.changes),
        };
        // Where a deferred channel goes live from: the listener's last whole read before the
        // reply, so that nothing committed after the client hears it is missed.
        let anchor = self
            .defers_changes(&topic)
            .then(|| self.live_anchor())
            .flatten();
        self.reply(jr.as_deref(), r.as_deref(), &topic, "ok", response);
        self.presence_state_after_join(&topic);
        if let Some(replayed) = &replayed {
            self.finish_replay(replayed);
        }
        match system {
            // A resumable socket's subscriptions go live through the listener, after the
            // reply (the client matches changes to the ids it lists), caught up first.
            Some(system) if self.defers_changes(&topic) => {
                let system = serde_json::to_value(&system).unwrap_or_default();
                self.go_live(&topic, system, anchor).await;
            }
            Some(system) => self.push_json(jr.as_deref(), None, &topic, "system", &system),
            None => {}
        }
        if replication_ready {
            self.await_replication(&topic);
        }
        tracing::debug!(
            private = private_channel,
            changes = changes_asked,
            "channel joined"
        );
    }

    /// The claims the channel acts with: the socket's, or those of the join's own token.
    fn channel_claims(
        &self,
        config: &JoinConfig,
        name: &str,
    ) -> Result<(Arc<Claims>, Option<TokenDigest>), Refusal> {
        let own = config
            .token
            .as_deref()
            .filter(|t| !t.starts_with("sb_"))
            .map(|t| (t, TokenDigest::of(t)))
            .filter(|(_, digest)| *digest != self.params.apikey);
        let Some((token, digest)) = own else {
            // The socket's token was checked at connect; it may have expired since.
            let left = self.params.claims.seconds_left();
            if left <= 0 {
                let e = crate::auth::Error::Expired(left.unsigned_abs());
                metrics::counter!("gateway_session_auth_failures_total").increment(1);
                self.services.registry.auth_refused(
                    "join",
                    e.reason(),
                    self.params.claims.user_id(),
                    Some(self.handle.peer),
                    json!({"channel": name, "message": e.to_string()}),
                );
                return Err(Refusal::Token(e.join_reason()));
            }
            return Ok((Arc::clone(&self.params.claims), None));
        };
        match self.services.verifier.verify(token) {
            Ok(claims) => Ok((claims, Some(digest))),
            Err(e) => {
                metrics::counter!("gateway_session_auth_failures_total").increment(1);
                self.services.registry.auth_refused(
                    "join",
                    e.reason(),
                    None,
                    Some(self.handle.peer),
                    json!({"channel": name, "message": e.to_string()}),
                );
                self.count_auth_failure();
                Err(Refusal::Token(e.join_reason()))
            }
        }
    }

    /// Counts a failed authentication of this connection's address (in the background: the
    /// join is refused anyway; a later upgrade from a blocked address is refused with 429).
    fn count_auth_failure(&self) {
        let clients = std::sync::Arc::clone(&self.services.limits.clients);
        let addr = self.handle.peer.ip();
        self.services
            .shutdown
            .spawn("auth_failure_count", async move {
                if let Err(e) = clients.record_failure(addr).await {
                    tracing::warn!(error = %e, "cannot count a failed authentication");
                }
            });
    }

    /// `subs`, unless with them the connection's subscriptions would hold more pattern
    /// conditions (`like`, `ilike`, `match`, `imatch`) than `--max-patterns-per-connection`.
    fn within_pattern_budget(&self, subs: Vec<PgSub>) -> Result<Vec<PgSub>, Resolve> {
        let count = |subs: &[PgSub]| -> usize {
            subs.iter()
                .filter_map(|s| s.filter.as_ref())
                .map(|f| f.patterns())
                .sum()
        };
        let held: usize = self.channels.values().map(|j| count(&j.subs)).sum();
        let limit = self.services.config.max_patterns_per_connection;
        if held + count(&subs) > limit {
            metrics::counter!("gateway_session_bounds_refused_total").increment(1);
            return Err(Resolve::Invalid(format!(
                "Too many pattern filters (like, ilike, match, imatch) on this connection: at \
                 most {limit}"
            )));
        }
        Ok(subs)
    }

    /// Writes the join's registry row (off the message path); returns its id.
    fn record_join(
        &self,
        config: &JoinConfig,
        jr: Option<&str>,
        name: &str,
        claims: &Claims,
    ) -> uuid::Uuid {
        // Time-ordered (UUIDv7): the registry's primary key then grows at its end instead of
        // at random leaf pages, which after a checkpoint each cost a full page of WAL.
        let registry_id = uuid::Uuid::now_v7();
        self.services.registry.joined(crate::registry::JoinRow {
            id: registry_id,
            // Unique per join even when the client reuses or omits its join ref.
            subscription_id: self
                .services
                .registry
                .subscription_id(self.handle.connection_id, jr),
            channel_name: name.to_owned(),
            user_id: claims.user_id(),
            component_name: config
                .component
                .clone()
                .or_else(|| self.handle.component.clone()),
            table_filters: serde_json::value::to_raw_value(&config.table_filters())
                .unwrap_or_else(|_| serde_json::value::RawValue::NULL.to_owned()),
            connection_id: self.handle.connection_id,
            remote_addr: self.handle.peer.to_string(),
            created_at: chrono::Utc::now(),
        });
        registry_id
    }

    /// Registers resolved subscriptions with the router; returns the `system` message that
    /// reports the outcome (docs/protocol.md 6.5, 6.6).
    fn activate<'a>(
        &mut self,
        topic: &str,
        name: &'a str,
        claims: Arc<Claims>,
        resolved: Result<Vec<PgSub>, Resolve>,
    ) -> ChangesStatus<'a> {
        match resolved {
            Ok(subs) => {
                let subs: Arc<[PgSub]> = subs.into();
                if self.resume.is_none() {
                    self.subscribe_changes(topic, Arc::clone(&subs), claims);
                }
                if let Some(joined) = self.channels.get_mut(topic) {
                    joined.has_changes = true;
                    joined.subs = subs;
                }
                tracing::debug!(topic = %topic, "postgres changes subscribed");
                ChangesStatus::new(name, "ok", SUBSCRIBED.into())
            }
            Err(Resolve::Invalid(message) | Resolve::NotEnabled(message)) => {
                tracing::debug!(topic = %topic, message = %message, "invalid subscription");
                ChangesStatus::new(name, "error", message.into())
            }
            Err(Resolve::Database(e)) => {
                tracing::warn!(error = %crate::error::chain(&e), "cannot validate subscriptions");
                ChangesStatus::new(name, "error", UNABLE_TO_CONNECT.into())
            }
        }
    }

    /// Whether channel `topic`'s subscriptions wait for the listener to go live.
    fn defers_changes(&self, topic: &str) -> bool {
        self.resume.is_some() && self.channels.get(topic).is_some_and(|j| j.has_changes)
    }

    /// Registers (or replaces) the router entry of channel `topic`.
    pub(super) fn subscribe_changes(&self, topic: &str, subs: Arc<[PgSub]>, claims: Arc<Claims>) {
        let chan = self.channels.get(topic).map_or(0, |j| j.chan);
        let channel = PgChannel::new(
            ChannelKey {
                conn: self.id,
                topic: Arc::from(topic),
            },
            self.outbound.clone(),
            self.params.vsn,
            subs,
            claims,
        )
        .with_chan(chan)
        .for_connection(self.handle.connection_id);
        self.services.router.subscribe(Arc::new(channel));
    }

    /// A join error reply, sent after the join-error delay without holding up the session.
    pub(super) fn join_error(
        &self,
        jr: Option<String>,
        r: Option<String>,
        topic: &str,
        refusal: &Refusal,
    ) {
        metrics::counter!("gateway_session_join_errors_total").increment(1);
        tracing::debug!(reason = %refusal.reason(), "join refused");
        let payload =
            json!({"status": "error", "response": {"reason": refusal.reason()}}).to_string();
        let text = protocol::encode_text(
            self.params.vsn,
            jr.as_deref(),
            r.as_deref(),
            topic,
            "phx_reply",
            &payload,
        );
        // The delay slows clients that retry; a join over a bound is no retry storm of a real
        // client, and holding its (large) reply for the delay would only cost memory.
        let delay = if refusal.is_bound() {
            std::time::Duration::ZERO
        } else {
            self.services.config.join_error_delay
        };
        let outbound = self.outbound.clone();
        if delay.is_zero() {
            let _pushed = outbound.push(Frame::text(Kind::Reply, text));
            return;
        }
        let token = self.handle.token.clone();
        // On the tracker: shutdown waits for it, and it ends with the session.
        self.services
            .shutdown
            .spawn("join_error_reply", async move {
                tokio::select! {
                    () = token.cancelled() => {}
                    () = tokio::time::sleep(delay) => {
                        // The session may have closed meanwhile; then there is no one to tell.
                        let _pushed = outbound.push(Frame::text(Kind::Reply, text));
                    }
                }
            });
    }
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests {
    use super::*;

    /// The `system` message has the text of the JSON object it was built as before.
    #[test]
    fn a_changes_status_is_the_text_of_its_json_object() {
        for (status, message) in [("ok", SUBSCRIBED), ("error", UNABLE_TO_CONNECT)] {
            let tree = json!({"extension": "postgres_changes", "status": status,
                              "message": message, "channel": "room"});
            let built = ChangesStatus::new("room", status, message.into());
            assert_eq!(serde_json::to_string(&built).unwrap(), tree.to_string());
            assert_eq!(serde_json::to_value(&built).unwrap(), tree);
        }
    }

    /// Guards the reply texts clients match on (docs/protocol.md 5.3).
    #[test]
    fn refusals_own_their_reply_texts() {
        assert_eq!(
            Refusal::Private {
                name: "room".into()
            }
            .reason(),
            "Unauthorized: You do not have permissions to read from this Channel topic: room"
        );
        assert_eq!(
            Refusal::of_resolve(&Resolve::NotEnabled("x".into())).reason(),
            "RealtimeDisabledForConfiguration: x"
        );
        assert_eq!(
            Refusal::of_resolve(&Resolve::Invalid("y".into())).reason(),
            "InvalidPostgresChangesParams: y"
        );
        assert!(Refusal::TooManyChannels
            .reason()
            .starts_with("ChannelRateLimitReached"));
    }
}
