//! Sessions: one per WebSocket connection, a reader and a writer around a bounded queue.
//!
//! The reader decodes client frames ([`protocol`]) and handles them in order: heartbeats, joins
//! and leaves, token refreshes. Joined channels' Postgres Changes subscriptions are registered
//! with the router, which pushes into this connection's queue ([`outbound`], stage 4); the
//! writer ([`writer`], stage 5) drains the queue to the socket. Channel state belongs to the
//! session task alone. When the session ends — client close, shutdown, slow consumer, reaper —
//! its subscriptions leave the router and the socket gets the close code of [`SessionEnd`].

pub mod outbound;
pub mod protocol;
pub mod upgrade;
pub mod writer;

mod relay;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures_util::{Stream, StreamExt};
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::auth::Claims;
use crate::error::SessionEnd;
use crate::fanout::router::{ChannelKey, ConnId, PgChannel};
use crate::fanout::subscription::{self, Requested, Resolve};
use crate::limits::ConnectionPermit;
use crate::state::AppState;
use outbound::{Frame, Limits, Outbound};
use protocol::{Inbound, InboundPayload, Vsn};

/// How long a close frame may take to reach a client.
const CLOSE_PATIENCE: Duration = Duration::from_secs(5);

/// What the upgrade learned about the client.
#[derive(Debug, Clone)]
pub struct SessionParams {
    /// Serializer.
    pub vsn: Vsn,
    /// The socket's API key, as given.
    pub apikey: String,
    /// Its verified claims.
    pub claims: Arc<Claims>,
    /// Remote address.
    pub peer: SocketAddr,
    /// `component` socket parameter, if given.
    pub component: Option<String>,
    /// The connection's id (registry `connection_id`, slot holder).
    pub connection_id: uuid::Uuid,
}

/// What other parts of the gateway (reaper, admin, tests) may see and do to a live session.
#[derive(Debug)]
pub struct SessionHandle {
    /// Remote address.
    pub peer: SocketAddr,
    /// The connection's id.
    pub connection_id: uuid::Uuid,
    /// The socket token's user, if any.
    pub user_id: Option<uuid::Uuid>,
    /// Cancel to end the session.
    pub token: CancellationToken,
    /// The session's queue (its depth is observable).
    pub outbound: Outbound,
    /// Milliseconds since the Unix epoch of the last client heartbeat (or connect).
    pub last_heartbeat_ms: AtomicU64,
    /// Set (with `end_reason`) before cancelling for a reason other than shutdown.
    pub end: std::sync::Mutex<Option<SessionEnd>>,
    /// Whether the session was told to stop.
    pub closing: AtomicBool,
}

impl SessionHandle {
    /// Ends the session with `end` (its close code is sent).
    pub fn close(&self, end: SessionEnd) {
        if let Ok(mut slot) = self.end.lock() {
            slot.get_or_insert(end);
        }
        self.closing.store(true, Ordering::Release);
        self.token.cancel();
    }
}

/// A joined channel.
#[derive(Debug)]
struct Joined {
    /// The membership's join ref.
    join_ref: Option<String>,
    /// The channel name (topic without `realtime:`).
    name: String,
    /// The channel token's claims.
    claims: Arc<Claims>,
    /// The channel token, if it differs from the socket's.
    token: Option<String>,
    /// Whether Postgres Changes subscriptions are registered for it.
    has_changes: bool,
    /// The validated subscriptions (kept to re-register on a new token).
    subs: Vec<subscription::PgSub>,
    /// Its registry row.
    registry_id: uuid::Uuid,
    /// Broadcast and presence settings of the join config ([`relay`]).
    hub: crate::broadcast::Membership,
}

/// One connection's session task.
#[derive(Debug)]
pub struct Session {
    state: AppState,
    params: SessionParams,
    id: ConnId,
    handle: Arc<SessionHandle>,
    outbound: Outbound,
    queue: Option<outbound::Receiver>,
    /// Joined channels; boxed, so the map's empty buckets stay small.
    channels: HashMap<String, Box<Joined>>,
    _permit: ConnectionPermit,
}

impl Session {
    /// Prepares the session of a newly upgraded connection holding `permit`.
    pub fn new(state: AppState, params: SessionParams, permit: ConnectionPermit) -> Session {
        let id = state.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let token = state.shutdown.child_token();
        let limits = Limits {
            max_frames: state.config.outbound_queue_frames,
            max_bytes: state.config.outbound_queue_bytes,
        };
        let (outbound, queue) = outbound::channel(limits, token.clone());
        let handle = Arc::new(SessionHandle {
            peer: params.peer,
            connection_id: params.connection_id,
            user_id: params.claims.user_id(),
            token,
            outbound: outbound.clone(),
            last_heartbeat_ms: AtomicU64::new(now_ms()),
            end: std::sync::Mutex::new(None),
            closing: AtomicBool::new(false),
        });
        state.sessions.insert(id, Arc::clone(&handle));
        Session {
            state,
            params,
            id,
            handle,
            outbound,
            queue: Some(queue),
            channels: HashMap::new(),
            _permit: permit,
        }
    }

    /// Runs the session until the socket closes or the session is cancelled. The future is
    /// boxed: it lives as long as the connection, and one allocation of its exact size is
    /// the smallest way to hold it.
    pub fn run(self, socket: WebSocket) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let span = tracing::info_span!("session", conn = self.id, peer = %self.params.peer);
        Box::pin(self.serve(socket).instrument(span))
    }

    async fn serve(mut self, socket: WebSocket) {
        metrics::gauge!("gateway_session_connected").increment(1.0);
        tracing::debug!("session started");
        let (mut sink, mut stream) = socket.split();
        let Some(mut queue) = self.queue.take() else {
            return;
        };
        let token = self.handle.token.clone();
        let writer = async {
            let ended = writer::run(&mut sink, &mut queue, &token).await;
            token.cancel();
            ended
        };
        let reader = self.read(&mut stream);
        let (_ended, ()) = tokio::join!(writer, reader);
        let end = self.end_reason();
        if end == SessionEnd::Shutdown {
            // Deliver what was queued before the close frame, up to the close deadline.
            let drain = async {
                while let Some(frame) = queue.try_recv() {
                    let message = match frame {
                        Frame::Text(t) => Message::Text(t),
                        Frame::Binary(b) => Message::Binary(b),
                    };
                    if futures_util::SinkExt::feed(&mut sink, message)
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            };
            let _drained = tokio::time::timeout(CLOSE_PATIENCE, drain).await;
        }
        match end.close_frame() {
            Some((code, reason)) => writer::close(&mut sink, code, reason, CLOSE_PATIENCE).await,
            None => {
                // The client closed: flush the close reply the socket queued for it.
                let _closed =
                    tokio::time::timeout(CLOSE_PATIENCE, futures_util::SinkExt::close(&mut sink))
                        .await;
            }
        }
        if end == SessionEnd::SlowConsumer {
            self.state.registry.audit(
                "slow_consumer",
                self.handle.user_id,
                Some(self.params.peer),
                json!({"connection_id": self.params.connection_id,
                       "queued_frames": self.outbound.queued_frames(),
                       "queued_bytes": self.outbound.queued_bytes()}),
            );
        }
        self.cleanup(end);
        metrics::gauge!("gateway_session_connected").decrement(1.0);
        tracing::debug!(reason = end.registry_reason(), "session ended");
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
        if self.state.shutdown.is_triggered() {
            SessionEnd::Shutdown
        } else {
            SessionEnd::SocketClosed
        }
    }

    fn cleanup(&mut self, end: SessionEnd) {
        let topics: Vec<String> = self.channels.keys().cloned().collect();
        for topic in topics {
            self.leave(&topic, end.registry_reason());
        }
        self.state.sessions.remove(&self.id);
    }

    /// The read loop: ends when the socket closes or the session is cancelled.
    async fn read<S>(&mut self, stream: &mut S)
    where
        S: Stream<Item = Result<Message, axum::Error>> + Unpin,
    {
        let token = self.handle.token.clone();
        loop {
            let message = tokio::select! {
                biased;
                () = token.cancelled() => return,
                message = stream.next() => message,
            };
            match message {
                Some(Ok(Message::Text(text))) => {
                    match protocol::decode_text(self.params.vsn, text.as_str()) {
                        Ok(inbound) => self.dispatch(inbound).await,
                        Err(e) => self.malformed(&e),
                    }
                }
                Some(Ok(Message::Binary(bytes))) => match protocol::decode_binary_bytes(&bytes) {
                    Ok(inbound) if self.params.vsn == Vsn::V2 => self.dispatch(inbound).await,
                    Ok(_) => self.malformed(&"binary frames need vsn 2.0.0"),
                    Err(e) => self.malformed(&e),
                },
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    token.cancel();
                    return;
                }
            }
        }
    }

    /// A frame that could not be decoded: an error reply on topic `phoenix`; the socket stays
    /// open (PROTOCOL.md 1.3).
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
            (_, "phx_join") => Box::pin(self.join(msg)).await,
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
            (_, "access_token") => Box::pin(self.access_token(msg)).await,
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

    async fn join(&mut self, msg: Inbound) {
        let jr = msg.join_ref.clone();
        let r = msg.msg_ref.clone();
        let topic = msg.topic.clone();
        let payload = match msg.payload {
            InboundPayload::Json(Value::Object(map)) => map,
            _ => Map::new(),
        };
        let Some(name) = topic.strip_prefix("realtime:") else {
            self.reply(
                jr.as_deref(),
                r.as_deref(),
                &topic,
                "error",
                json!({"reason": "unmatched topic"}),
            );
            return;
        };
        let name = name.to_owned();
        if name.is_empty() {
            self.join_error(
                jr,
                r,
                &topic,
                "TopicNameRequired: You must provide a topic name",
            );
            return;
        }
        // A re-join closes the old membership first (PROTOCOL.md 3).
        if let Some(old) = self.leave(&topic, "leave") {
            let ojr = old.join_ref.as_deref();
            self.push_json(ojr, ojr, &topic, "phx_close", &json!({}));
        }
        if self.channels.len() >= self.state.limits.max_channels_per_connection {
            self.join_error(jr, r, &topic, "ChannelRateLimitReached: Too many channels");
            return;
        }
        let token = payload
            .get("access_token")
            .or_else(|| payload.get("user_token"))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty() && !t.starts_with("sb_") && *t != self.params.apikey);
        let (claims, token) = match token {
            None => (Arc::clone(&self.params.claims), None),
            Some(t) => match self.state.verifier.verify(t) {
                Ok(c) => (Arc::new(c), Some(t.to_owned())),
                Err(e) => {
                    metrics::counter!("gateway_session_auth_failures_total").increment(1);
                    self.state.registry.audit(
                        "auth_failed",
                        None,
                        Some(self.params.peer),
                        json!({"stage": "join", "channel": name, "reason": e.to_string()}),
                    );
                    self.join_error(jr, r, &topic, &e.join_reason());
                    return;
                }
            },
        };
        let config = payload.get("config").and_then(Value::as_object);
        let private = config.and_then(|c| c.get("private")).is_some_and(truthy);
        if private {
            self.join_error(
                jr,
                r,
                &topic,
                &format!("Unauthorized: You do not have permissions to read from this Channel topic: {name}"),
            );
            return;
        }
        let requested = Requested::from_config(config.and_then(|c| c.get("postgres_changes")));
        // realtime-js's `postgres_changes_options.wait`: hold the join reply until the
        // subscriptions are live, and refuse the join when they cannot be (PROTOCOL.md 6.6).
        let wait = config
            .and_then(|c| c.get("postgres_changes_options"))
            .and_then(|o| o.get("wait"))
            .is_some_and(truthy)
            && !requested.is_empty();
        let echo: Vec<Value> = requested.iter().map(Requested::echo).collect();
        let resolved = if requested.is_empty() {
            None
        } else {
            Some(subscription::resolve(&requested, &self.state.catalog).await)
        };
        if wait {
            if let Some(Err(e)) = &resolved {
                let reason = match e {
                    Resolve::Invalid(m) if m.contains("Please check Realtime is enabled") => {
                        format!("RealtimeDisabledForConfiguration: {m}")
                    }
                    Resolve::Invalid(m) => format!("InvalidPostgresChangesParams: {m}"),
                    Resolve::Database(_) => "UnableToConnectToProject: Realtime was unable to \
                                             connect to the project database"
                        .to_owned(),
                };
                self.join_error(jr, r, &topic, &reason);
                return;
            }
        }
        let registry_id = uuid::Uuid::new_v4();
        let component = config
            .and_then(|c| c.get("component"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| self.params.component.clone());
        let table_filters: Vec<Value> = requested
            .iter()
            .map(|req| {
                let pick = |k: &str| req.raw.get(k).cloned().unwrap_or(Value::Null);
                json!({"event": pick("event"), "schema": pick("schema"),
                       "table": pick("table"), "filter": pick("filter")})
            })
            .collect();
        self.state.registry.joined(crate::registry::JoinRow {
            id: registry_id,
            subscription_id: format!(
                "{}:{}",
                self.params.connection_id,
                jr.as_deref().unwrap_or("")
            ),
            channel_name: name.clone(),
            user_id: claims.user_id(),
            component_name: component,
            table_filters: Value::Array(table_filters),
            connection_id: self.params.connection_id,
            remote_addr: self.params.peer.to_string(),
            created_at: chrono::Utc::now(),
        });
        self.channels.insert(
            topic.clone(),
            Box::new(Joined {
                join_ref: jr.clone(),
                name: name.clone(),
                claims: Arc::clone(&claims),
                token,
                has_changes: false,
                subs: Vec::new(),
                registry_id,
                hub: crate::broadcast::Membership::from_config(config),
            }),
        );
        self.join_hub(&topic);
        // Subscriptions go live before the reply, so that every change committed after the
        // client hears of them is delivered.
        let system = resolved.map(|resolved| self.activate(&topic, &name, claims, resolved));
        self.reply(
            jr.as_deref(),
            r.as_deref(),
            &topic,
            "ok",
            json!({"postgres_changes": echo}),
        );
        self.presence_state_after_join(&topic);
        if let Some(system) = system {
            self.push_json(jr.as_deref(), None, &topic, "system", &system);
        }
    }

    /// Registers resolved subscriptions with the router; returns the `system` message that
    /// reports the outcome (PROTOCOL.md 6.5, 6.6).
    fn activate(
        &mut self,
        topic: &str,
        name: &str,
        claims: Arc<Claims>,
        resolved: Result<Vec<subscription::PgSub>, Resolve>,
    ) -> Value {
        match resolved {
            Ok(subs) => {
                let channel = PgChannel::new(
                    ChannelKey {
                        conn: self.id,
                        topic: Arc::from(topic),
                    },
                    self.outbound.clone(),
                    self.params.vsn,
                    subs.clone(),
                    claims,
                );
                self.state.router.subscribe(Arc::new(channel));
                if let Some(joined) = self.channels.get_mut(topic) {
                    joined.has_changes = true;
                    joined.subs = subs;
                }
                tracing::debug!(topic = %topic, "postgres changes subscribed");
                json!({"extension": "postgres_changes", "status": "ok",
                       "message": "Subscribed to PostgreSQL", "channel": name})
            }
            Err(Resolve::Invalid(message)) => {
                tracing::debug!(topic = %topic, message = %message, "invalid subscription");
                json!({"extension": "postgres_changes", "status": "error",
                       "message": message, "channel": name})
            }
            Err(Resolve::Database(e)) => {
                tracing::warn!(error = %e, "cannot validate subscriptions");
                json!({"extension": "postgres_changes", "status": "error",
                       "message": "UnableToConnectToProject: Realtime was unable to connect to the project database",
                       "channel": name})
            }
        }
    }

    /// Removes a membership (router entries included) and ends its registry row with
    /// `reason`; returns it if it existed.
    fn leave(&mut self, topic: &str, reason: crate::registry::CloseReason) -> Option<Box<Joined>> {
        let joined = self.channels.remove(topic)?;
        self.state.registry.left(joined.registry_id, reason);
        self.state.hub.leave(&joined.name, self.id);
        if joined.has_changes {
            self.state.router.unsubscribe(&ChannelKey {
                conn: self.id,
                topic: Arc::from(topic),
            });
        }
        Some(joined)
    }

    /// `access_token` on a joined channel (PROTOCOL.md 8.3): never replied to.
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
        let current = joined.token.as_deref().unwrap_or(&self.params.apikey);
        if token.starts_with("sb_") || token == current {
            return;
        }
        match self.state.verifier.verify(token) {
            Ok(claims) => {
                let claims = Arc::new(claims);
                let Some(joined) = self.channels.get_mut(&topic) else {
                    return;
                };
                joined.claims = Arc::clone(&claims);
                joined.token = Some(token.to_owned());
                if joined.has_changes {
                    let channel = PgChannel::new(
                        ChannelKey {
                            conn: self.id,
                            topic: Arc::from(topic.as_str()),
                        },
                        self.outbound.clone(),
                        self.params.vsn,
                        joined.subs.clone(),
                        claims,
                    );
                    self.state.router.subscribe(Arc::new(channel));
                }
            }
            Err(e) => {
                if let Some(joined) = self.leave(&topic, "token_expired") {
                    let jr = joined.join_ref.as_deref();
                    let system = json!({"extension": "system", "status": "error",
                                        "message": e.to_string(), "channel": joined.name});
                    self.push_json(jr, None, &topic, "system", &system);
                    self.push_json(jr, jr, &topic, "phx_close", &json!({}));
                }
            }
        }
    }

    /// A join error reply, sent after the join-error delay without holding up the session.
    fn join_error(&self, jr: Option<String>, r: Option<String>, topic: &str, reason: &str) {
        metrics::counter!("gateway_session_join_errors_total").increment(1);
        let payload = json!({"status": "error", "response": {"reason": reason}}).to_string();
        let text = protocol::encode_text(
            self.params.vsn,
            jr.as_deref(),
            r.as_deref(),
            topic,
            "phx_reply",
            &payload,
        );
        let delay = self.state.config.join_error_delay;
        let outbound = self.outbound.clone();
        if delay.is_zero() {
            let _pushed = outbound.push(Frame::from(text));
            return;
        }
        let token = self.handle.token.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = token.cancelled() => {}
                () = tokio::time::sleep(delay) => {
                    // The session may have closed meanwhile; then there is no one to tell.
                    let _pushed = outbound.push(Frame::from(text));
                }
            }
        });
    }

    fn reply(&self, jr: Option<&str>, r: Option<&str>, topic: &str, status: &str, response: Value) {
        let payload = json!({"status": status, "response": response});
        self.push_json(jr, r, topic, "phx_reply", &payload);
    }

    fn push_json(
        &self,
        jr: Option<&str>,
        r: Option<&str>,
        topic: &str,
        event: &str,
        payload: &Value,
    ) {
        let text =
            protocol::encode_text(self.params.vsn, jr, r, topic, event, &payload.to_string());
        // A full queue closes the session as a slow consumer; nothing more to do here.
        let _pushed = self.outbound.push(Frame::from(text));
    }
}

/// Booleans may arrive as JSON booleans or as strings, any case (PROTOCOL.md 5.1).
fn truthy(value: &Value) -> bool {
    match value {
        Value::Bool(b) => *b,
        Value::String(s) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
