//! Sessions: one per WebSocket connection, a reader and a writer around a bounded queue.
//!
//! The reader decodes client frames ([`protocol`]) and handles them in order: heartbeats, joins
//! and leaves, token refreshes. Joined channels' Postgres Changes subscriptions are registered
//! with the router, which pushes into this connection's queue ([`outbound`], stage 4); the
//! writer ([`writer`], stage 5) drains the queue to the socket. Channel state belongs to the
//! session task alone. When the session ends — client close, shutdown, slow consumer, reaper —
//! its subscriptions leave the router and the socket gets the close code of [`SessionEnd`].

mod channels;
pub mod close;
pub mod handle;
pub mod join;
pub mod upgrade;
pub mod writer;

pub mod resume;

mod private;
mod read;
mod relay;
mod replication;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tracing::Instrument;

use crate::auth::{Claims, TokenDigest, Verifier};
use crate::broadcast::{Hub, Membership};
use crate::config::Config;
use crate::conn::ConnId;
use crate::fanout::router::{ChannelKey, Router};
use crate::fanout::subscription;
use crate::limits::rate::{self, TokenBucket};
use crate::limits::{ConnectionPermit, Limits};
use crate::outbound::{self, Frame, Kind, Outbound};
use crate::pg::catalog::Catalog;
use crate::protocol::{self, Inbound, InboundPayload, Vsn};
use crate::registry::Registry;
use crate::shutdown::Shutdown;
use crate::socket::Socket;
pub use close::SessionEnd;
pub use handle::{now_ms, SessionHandle, Sessions};

/// The handles a session uses, shared by all sessions of the node (one pointer per session).
#[derive(Debug)]
pub struct Services {
    /// Checked settings.
    pub config: Arc<Config>,
    /// Token verifier.
    pub verifier: Verifier,
    /// Connection and channel caps.
    pub limits: Limits,
    /// The subscription registry and audit log (joins and leaves are reported to it).
    pub registry: Registry,
    /// Cached table descriptions (joins are validated against them).
    pub catalog: Arc<Catalog>,
    /// The change router (stage 3) that Postgres Changes subscriptions join.
    pub router: Arc<Router>,
    /// Broadcast and presence.
    pub hub: Hub,
    /// Shutdown signal and task tracker.
    pub shutdown: Shutdown,
    /// Live sessions of this node.
    pub sessions: Sessions,
    /// Private channels' row-level-security checks.
    pub authorizer: crate::auth::channel::Authorizer,
    /// Whether this node's change stream runs (`replication_ready` joins wait for it).
    pub change_stream: tokio::sync::watch::Receiver<bool>,
    /// Resuming sessions after a reconnect; `None` when the resume window is 0.
    pub resume: Option<resume::Services>,
}

/// Reply reason of a broadcast or presence push over `--events-per-second`.
const TOO_MANY_EVENTS: &str = "Too many messages per second";

/// How long a close frame may take to reach a client.
const CLOSE_PATIENCE: Duration = Duration::from_secs(5);

/// What the upgrade learned about the client.
#[derive(Debug, Clone)]
pub struct SessionParams {
    /// Serializer.
    pub vsn: Vsn,
    /// The digest of the socket's API key, as given.
    pub apikey: TokenDigest,
    /// Its verified claims.
    pub claims: Arc<Claims>,
    /// Remote address.
    pub peer: SocketAddr,
    /// `component` socket parameter, if given.
    pub component: Option<String>,
    /// The connection's id (registry `connection_id`, slot holder).
    pub connection_id: uuid::Uuid,
    /// The `session` socket parameter: the socket can resume that session.
    pub session_id: Option<String>,
}

/// What a session keeps of its [`SessionParams`]; the client's address, the connection's id
/// and its `component` are on its [`SessionHandle`], and the `session` parameter on its
/// [`resume::Resumable`]: one copy each in every connection's task.
#[derive(Debug)]
struct Params {
    vsn: Vsn,
    apikey: TokenDigest,
    claims: Arc<Claims>,
}

/// A joined channel.
#[derive(Debug)]
struct Joined {
    /// The membership's join ref.
    join_ref: Option<Box<str>>,
    /// The full topic, `realtime:<name>` (the key of [`channels::Channels`]).
    topic: Box<str>,
    /// The channel token's claims.
    claims: Arc<Claims>,
    /// The digest of the channel's token, if it differs from the socket's (boxed: a channel
    /// joined with the socket's token holds a pointer rather than 33 bytes).
    token: Option<Box<TokenDigest>>,
    /// Whether Postgres Changes subscriptions are registered for it.
    has_changes: bool,
    /// The validated subscriptions (kept to re-register on a new token; shared with the
    /// router's entry).
    subs: Arc<[subscription::PgSub]>,
    /// Its registry row.
    registry_id: uuid::Uuid,
    /// Broadcast and presence settings of the join config ([`relay`]).
    hub: Membership,
    /// Bytes of the presence payload this membership tracks (0 when none).
    tracked_bytes: usize,
    /// A private channel's rights ([`private`]); `None` for a public channel.
    private: Option<crate::auth::channel::Rights>,
    /// Sends refused for want of a right, not audited yet.
    denied: private::DeniedSends,
    /// Until when it waits for the change stream (`replication_ready`, [`replication`]).
    replication_deadline: Option<tokio::time::Instant>,
    /// Its number within a resumable connection (its frames' stamps); 0 otherwise.
    chan: u32,
}

// Every joined channel is one allocation of this size: 160 bytes in the size classes of
// mimalloc, the default allocator (it was 240, in the 256-byte class, before the token's
// digest and the refused sends were boxed).
const _: () = assert!(std::mem::size_of::<Joined>() <= 160);

impl Joined {
    /// The channel name (the topic without `realtime:`).
    fn name(&self) -> &str {
        protocol::channel_name(&self.topic)
    }
}

/// One connection's session task.
#[derive(Debug)]
pub struct Session {
    services: Arc<Services>,
    params: Params,
    id: ConnId,
    handle: Arc<SessionHandle>,
    outbound: Outbound,
    queue: Option<outbound::Receiver>,
    /// Joined channels, by topic.
    channels: channels::Channels,
    /// Joins per second ([`crate::limits::rate`]).
    join_rate: TokenBucket,
    /// Client events per second.
    event_rate: TokenBucket,
    /// When a rate refusal of this connection was last audited.
    rate_audited: Option<tokio::time::Instant>,
    /// A socket that can resume its session ([`resume`]).
    resume: Option<Box<resume::Resumable>>,
    _permit: ConnectionPermit,
}

impl Session {
    /// Prepares the session of a newly upgraded connection holding `permit`.
    pub fn new(
        services: Arc<Services>,
        params: SessionParams,
        permit: ConnectionPermit,
    ) -> Session {
        let id = services.sessions.next_id();
        let token = services.shutdown.child_token();
        let limits = outbound::Limits {
            max_frames: services.config.outbound_queue_frames,
            max_bytes: services.config.outbound_queue_bytes,
        };
        let (outbound, queue) = outbound::channel(limits, token.clone());
        let handle = Arc::new(SessionHandle {
            peer: params.peer,
            connection_id: params.connection_id,
            user_id: params.claims.user_id(),
            component: params.component,
            connected_at_ms: now_ms(),
            token,
            outbound: outbound.clone(),
            last_heartbeat_ms: AtomicU64::new(now_ms()),
            end: std::sync::Mutex::new(None),
            closing: AtomicBool::new(false),
        });
        services.sessions.insert(id, Arc::clone(&handle));
        let resume = match (params.session_id, &services.resume) {
            (Some(id), Some(resume)) => Some(Box::new(resume::Resumable::new(
                id,
                Arc::clone(&resume.spans),
            ))),
            _ => None,
        };
        Session {
            services,
            params: Params {
                vsn: params.vsn,
                apikey: params.apikey,
                claims: params.claims,
            },
            id,
            handle,
            outbound,
            queue: Some(queue),
            channels: channels::Channels::default(),
            join_rate: TokenBucket::new(),
            event_rate: TokenBucket::new(),
            rate_audited: None,
            resume,
            _permit: permit,
        }
    }

    /// Runs the session until the socket closes or the session is cancelled. The future is not
    /// boxed: it is held in the connection's task itself (one allocation per connection, not
    /// two), whose size is a multiple of 128 bytes since tokio aligns it to 128.
    ///
    /// Everything it logs is inside the `connection` span: the connection's id (the registry's
    /// `connection_id`), the socket token's `sub` and role, and the client's address. Never a
    /// token: the `apikey` stays out of every span and event.
    pub fn run(self, socket: Socket) -> impl Future<Output = ()> + Send {
        let span = tracing::info_span!(
            "connection",
            connection_id = %self.handle.connection_id,
            sub = tracing::field::Empty,
            role = %self.params.claims.role,
            peer = %self.handle.peer,
        );
        if let Some(sub) = &self.params.claims.sub {
            span.record("sub", tracing::field::display(sub));
        }
        self.serve(socket.reader, socket.outlet).instrument(span)
    }

    // Not an `async fn`: an async fn's arguments take room twice in its future (as arguments,
    // then as the body's bindings); the block below uses them where they are.
    #[allow(clippy::manual_async_fn)]
    fn serve(
        mut self,
        mut stream: crate::socket::Reader,
        mut sink: crate::socket::Outlet,
    ) -> impl Future<Output = ()> + Send {
        async move {
            metrics::gauge!("gateway_session_connected").increment(1.0);
            tracing::debug!("session started");
            let Some(mut queue) = self.queue.take() else {
                return;
            };
            let token = self.handle.token.clone();
            let track = self.resume.as_ref().map(|r| Arc::clone(&r.track));
            // The session's future lives as long as the connection: the reader and the writer
            // are built in place (a future built first and then moved in would take room twice),
            // and what runs only at the end (drain, close, storing positions) is boxed so that it
            // takes no room before.
            let (_ended, peer_close) = tokio::join!(
                writer::run(&mut sink, &mut queue, &token, track.as_deref()),
                self.read(&mut stream),
            );
            let end = self.end_reason();
            if end == SessionEnd::Shutdown {
                // Deliver what was queued before the close frame, up to the close deadline.
                Box::pin(writer::drain(
                    &mut sink,
                    &mut queue,
                    track.as_deref(),
                    CLOSE_PATIENCE,
                ))
                .await;
            }
            match end.close_frame() {
                Some((code, reason)) => {
                    Box::pin(writer::close(&mut sink, code, reason, CLOSE_PATIENCE)).await;
                    if let Some(track) = &track {
                        Box::pin(resume::await_close_reply(&mut stream, track)).await;
                    }
                }
                None => {
                    // The client closed: answer with its own code and reason (RFC 6455 section
                    // 5.5.1), after whatever the socket still holds.
                    if let Some((code, reason)) = peer_close {
                        Box::pin(writer::close(&mut sink, code, &reason, CLOSE_PATIENCE)).await;
                    }
                }
            }
            if end == SessionEnd::SlowConsumer {
                self.services.registry.audit(
                    "slow_consumer",
                    self.handle.user_id,
                    Some(self.handle.peer),
                    json!({"connection_id": self.handle.connection_id,
                           "queued_frames": self.outbound.queued_frames(),
                           "queued_bytes": self.outbound.queued_bytes()}),
                );
            }
            Box::pin(self.store_positions()).await;
            self.cleanup(end);
            metrics::gauge!("gateway_session_connected").decrement(1.0);
            tracing::debug!(reason = end.registry_reason(), "session ended");
        }
    }

    fn end_reason(&self) -> SessionEnd {
        if self.outbound.is_slow() {
            return SessionEnd::SlowConsumer;
        }
        if let Ok(slot) = self.handle.end.lock() {
            if let Some(end) = *slot {
                return end;
            }
        }
        if self.services.shutdown.is_triggered() {
            SessionEnd::Shutdown
        } else {
            SessionEnd::SocketClosed
        }
    }

    fn cleanup(&mut self, end: SessionEnd) {
        let topics: Vec<String> = self.channels.topics().map(str::to_owned).collect();
        // From the last topic: each leave then removes the table's last channel.
        for topic in topics.into_iter().rev() {
            self.leave(&topic, end.registry_reason());
        }
        self.services.sessions.remove(self.id);
    }

    /// Takes a join from the connection's rate (`--joins-per-second`, `--join-burst`).
    fn take_join(&mut self) -> bool {
        let config = &self.services.config;
        self.join_rate
            .take(config.joins_per_second, config.join_burst)
    }

    /// Takes a client event from the connection's rate (`--events-per-second`,
    /// `--event-burst`).
    fn take_event(&mut self) -> bool {
        let config = &self.services.config;
        self.event_rate
            .take(config.events_per_second, config.event_burst)
    }

    /// Decodes and handles a text message; whether the channels' deadlines may have moved.
    async fn text(&mut self, text: String) -> bool {
        match protocol::decode_text(self.params.vsn, &text) {
            Ok(inbound) => self.handle(inbound).await,
            Err(e) => {
                self.malformed(&e);
                false
            }
        }
    }

    /// Decodes and handles a binary message (vsn 2); whether the channels' deadlines may have
    /// moved.
    async fn binary(&mut self, bytes: bytes::Bytes) -> bool {
        match protocol::decode_binary_bytes(&bytes) {
            Ok(inbound) => self.handle(inbound).await,
            Err(e) => {
                self.malformed(&e);
                false
            }
        }
    }

    async fn handle(&mut self, inbound: Inbound) -> bool {
        let tokens_change = changes_channels(&inbound);
        self.dispatch(inbound).await;
        tokens_change
    }

    /// A frame that could not be decoded: an error reply on topic `phoenix`; the socket stays
    /// open (docs/protocol.md 1.3).
    fn malformed(&self, error: &dyn std::fmt::Display) {
        metrics::counter!("gateway_session_malformed_frames_total").increment(1);
        tracing::debug!(error = %error, "malformed frame");
        let payload =
            json!({"status": "error", "response": {"reason": format!("malformed frame: {error}")}});
        self.push_json(None, None, "phoenix", "phx_reply", &payload);
    }

    async fn dispatch(&mut self, msg: Inbound) {
        let jr = msg.join_ref.as_deref();
        let r = msg.msg_ref.as_deref();
        match (msg.topic.as_str(), msg.event.as_str()) {
            ("phoenix", "heartbeat") => {
                self.handle
                    .last_heartbeat_ms
                    .store(now_ms(), Ordering::Release);
                self.reply(jr, r, "phoenix", "ok", json!({}));
            }
            // Boxed: a join's state (database and catalog calls) lives only while it runs,
            // not in every idle session's future.
            (topic, "phx_join") if !self.take_join() => {
                let topic = topic.to_owned();
                self.rate_limited("joins", &topic);
                let refusal = join::Refusal::JoinRateLimited;
                self.join_error(msg.join_ref, msg.msg_ref, &topic, &refusal);
            }
            (_, "phx_join") => {
                // The join's work is logged inside a `channel` span: its topic, and the
                // channel token's `sub` once verified (never the token).
                let span = tracing::info_span!(
                    "channel",
                    topic = %msg.topic,
                    sub = tracing::field::Empty
                );
                Box::pin(self.join(msg)).instrument(span).await;
            }
            (topic, "phx_leave") => {
                let topic = topic.to_owned();
                self.reply(jr, r, &topic, "ok", json!({}));
                if let Some(joined) = self.leave(&topic, "leave") {
                    let jr = joined.join_ref.as_deref();
                    self.push_json(jr, jr, &topic, "phx_close", &json!({}));
                }
            }
            (topic, _) if !self.channels.contains_key(topic) => {
                let topic = topic.to_owned();
                self.reply(jr, r, &topic, "error", json!({"reason": "unmatched topic"}));
            }
            // Token pushes are never answered; over the rate one is dropped (each may cost the
            // database a rights check).
            (topic, "access_token") if !self.take_event() => {
                let topic = topic.to_owned();
                self.rate_limited("events", &topic);
            }
            (_, "access_token") => Box::pin(self.access_token(msg)).await,
            (topic, "broadcast" | "presence") if !self.take_event() => {
                let topic = topic.to_owned();
                self.rate_limited("events", &topic);
                self.reply(jr, r, &topic, "error", json!({"reason": TOO_MANY_EVENTS}));
            }
            (_, "broadcast") => self.broadcast(msg),
            (_, "presence") => self.presence(msg),
            (topic, event) => {
                if r.is_some() {
                    let (topic, event) = (topic.to_owned(), event.to_owned());
                    self.reply(
                        jr,
                        r,
                        &topic,
                        "error",
                        json!({"reason": format!("unknown event {event}")}),
                    );
                }
            }
        }
    }

    /// Counts a refusal by a per-connection rate and audits it (at most once a minute per
    /// connection).
    fn rate_limited(&mut self, kind: &'static str, topic: &str) {
        crate::limits::client::count_refusal(kind);
        let now = tokio::time::Instant::now();
        if rate::audit_due(&mut self.rate_audited, now) {
            let (per_second, burst) = match kind {
                "joins" => (
                    self.services.config.joins_per_second,
                    self.services.config.join_burst,
                ),
                _ => (
                    self.services.config.events_per_second,
                    self.services.config.event_burst,
                ),
            };
            self.services.registry.audit(
                "rate_limited",
                self.handle.user_id,
                Some(self.handle.peer),
                json!({"kind": kind, "connection_id": self.handle.connection_id, "topic": topic,
                       "per_second": per_second, "burst": burst}),
            );
        }
    }

    /// Removes a membership (router entries included) and ends its registry row with
    /// `reason`; returns it if it existed.
    fn leave(&mut self, topic: &str, reason: crate::registry::CloseReason) -> Option<Box<Joined>> {
        let joined = self.channels.remove(topic)?;
        if let Some(resume) = &self.resume {
            resume.track.forget(joined.chan);
        }
        self.services.registry.left(joined.registry_id, reason);
        self.services.hub.leave(&joined.hub_key(), self.id);
        if joined.has_changes {
            self.services.router.unsubscribe(&ChannelKey {
                conn: self.id,
                topic: Arc::from(topic),
            });
        }
        Some(joined)
    }

    /// `access_token` on a joined channel (docs/protocol.md 8.3): never replied to.
    async fn access_token(&mut self, msg: Inbound) {
        let InboundPayload::Json(payload) = &msg.payload else {
            return;
        };
        let Some(token) = payload.get("access_token").and_then(Value::as_str) else {
            return;
        };
        let topic = msg.topic.clone();
        let Some(joined) = self.channels.get(&topic) else {
            return;
        };
        if token.starts_with("sb_") {
            return;
        }
        let digest = TokenDigest::of(token);
        if digest == *joined.token.as_deref().unwrap_or(&self.params.apikey) {
            return;
        }
        match self.services.verifier.verify(token) {
            Ok(claims) => {
                if !self.recheck_private(&topic, &claims).await {
                    return;
                }
                let Some(joined) = self.channels.get_mut(&topic) else {
                    return;
                };
                identity_changed(&self.services, self.handle.peer, joined, &claims);
                joined.claims = Arc::clone(&claims);
                joined.token = Some(Box::new(digest));
                if joined.has_changes {
                    let subs = Arc::clone(&joined.subs);
                    self.subscribe_changes(&topic, subs, claims);
                }
            }
            Err(e) => {
                let (services, peer) = (&self.services, Some(self.handle.peer));
                let detail = json!({"channel": joined.name(), "message": e.to_string()});
                let user = joined.claims.user_id();
                services
                    .registry
                    .auth_refused("access_token", e.reason(), user, peer, detail);
                if let Some(joined) = self.leave(&topic, "token_expired") {
                    let jr = joined.join_ref.as_deref();
                    let system = json!({"extension": "system", "status": "error",
                                        "message": e.to_string(), "channel": joined.name()});
                    self.push_json(jr, None, &topic, "system", &system);
                    self.push_json(jr, jr, &topic, "phx_close", &json!({}));
                }
            }
        }
    }

    fn reply(
        &self,
        jr: Option<&str>,
        r: Option<&str>,
        topic: &str,
        status: &str,
        response: impl serde::Serialize,
    ) {
        self.push_json(jr, r, topic, "phx_reply", &Reply { response, status });
    }

    fn push_json<T: serde::Serialize + ?Sized>(
        &self,
        jr: Option<&str>,
        r: Option<&str>,
        topic: &str,
        event: &str,
        payload: &T,
    ) {
        let text = match protocol::encode_text_of(self.params.vsn, jr, r, topic, event, payload) {
            Ok(text) => text,
            Err(e) => {
                // Not for the gateway's payloads, which always serialize.
                tracing::error!(error = %e, event, "cannot serialize a message to the client");
                return;
            }
        };
        // A full queue closes the session as a slow consumer; nothing more to do here.
        let _pushed = self.outbound.push(Frame::text(Kind::of_event(event), text));
    }
}

/// A `phx_reply`'s payload, `{"response": .., "status": ..}`: the keys in the order a JSON object
/// of the gateway's `serde_json` writes them (sorted), as the replies always had them.
#[derive(serde::Serialize)]
struct Reply<'a, T> {
    response: T,
    status: &'a str,
}

/// A channel's new token names another `sub` or `role` than its old one: audited as
/// `token_identity_changed` (sub and role are no secrets), counted, and the registry row takes
/// the new user. The caller then re-registers the subscriptions with the new claims.
fn identity_changed(services: &Services, peer: SocketAddr, joined: &Joined, new: &Claims) {
    let old = &joined.claims;
    if old.sub == new.sub && old.role == new.role {
        return;
    }
    metrics::counter!("gateway_session_identity_changes_total").increment(1);
    tracing::debug!(channel = %joined.name(), "channel token names another identity");
    services.registry.audit(
        "token_identity_changed",
        new.user_id(),
        Some(peer),
        json!({"channel": joined.name(), "old_sub": old.sub, "new_sub": new.sub,
               "old_role": old.role, "new_role": new.role}),
    );
    if old.user_id() != new.user_id() {
        services
            .registry
            .user_changed(joined.registry_id, new.user_id());
    }
}

/// Whether handling `msg` can add, remove or re-token channels (and so move the first expiry).
fn changes_channels(msg: &Inbound) -> bool {
    matches!(
        msg.event.as_str(),
        "phx_join" | "phx_leave" | "access_token"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, without calling it.
    fn future_size<F, Fut>(_: F) -> usize
    where
        F: FnOnce(Session, Socket) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// A reply's payload has the text of the JSON object it was built as before: the same
    /// keys, in the same order.
    #[test]
    fn a_reply_is_the_text_of_its_json_object() {
        for (status, response) in [
            ("ok", json!({})),
            ("error", json!({"reason": "unmatched topic"})),
            ("ok", json!({"postgres_changes": [{"event": "*", "id": 7}]})),
        ] {
            let tree = json!({"status": status, "response": response});
            let text = serde_json::to_string(&Reply { response, status }).unwrap();
            assert_eq!(text, tree.to_string());
        }
    }

    #[test]
    fn an_open_connection_task_stays_in_the_1280_byte_class() {
        // Every open connection holds one task: tokio's header and trailer (80 bytes), this
        // future and what wraps it (the upgrade's `Then`, the tracker, the scheduler: 48 bytes),
        // in a cell aligned to 128 bytes. Up to 1,152 bytes here the cell is 1,280 bytes, a
        // size class of mimalloc's; a few bytes more and it is 1,408, which mimalloc rounds up
        // to 1,536: 256 bytes more for every connection. A future's layout is decided before
        // optimization: the size is the same in test and release builds (1,096 bytes in both
        // when this test was written).
        let size = future_size(Session::run);
        assert!(
            size <= 1152,
            "a session's future is {size} bytes, over 1,152: keep what is not needed across the \
             read and write loops' waits out of it (boxed, or scoped before the wait)"
        );
    }
}
