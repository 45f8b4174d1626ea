//! One simulated realtime-js client: a WebSocket (vsn 2.0.0 array framing, through the
//! gateway's own codec), a channel join with a Postgres Changes subscription and optionally
//! presence, heartbeats every 25 s, and nothing else sent.
//!
//! Each client is one lightweight task. It books what it receives into its [`Tracker`] and the
//! shared [`Recorder`], and ends when told to stop or when the socket ends. Deliveries, nearly
//! every frame of a run, are read in place from the socket's buffer ([`crate::socket`]) by the
//! byte scanner ([`crate::scan`]): no JSON tree and no allocation per frame. Everything else
//! (replies, presence, system messages) goes through the gateway's codec.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use realtime_gateway::protocol::{self, Inbound, InboundPayload, Vsn};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::record::{CommitLog, Recorder, Tracker};
use crate::socket::{self, Handshake, Kind, Socket};
use crate::target::Target;

/// The table every subscriber listens to and the writer inserts into.
pub(crate) const EVENTS_TABLE: &str = "loadtest_events";
/// How long a join (reply plus subscription confirmation) or a presence track may take, as
/// realtime-js's push timeout.
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a polite close may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a connection attempt did not give a socket.
#[derive(Debug)]
pub(crate) enum ConnectError {
    /// The upgrade was answered with an HTTP error status.
    Refused {
        /// HTTP status.
        status: u16,
        /// Response body, e.g. `{"error":"Too many connected users"}`.
        body: String,
    },
    /// Anything else: TCP, handshake, timeout.
    Failed(String),
}

/// What a channel join asks for.
#[derive(Debug, Clone)]
pub(crate) struct JoinSpec {
    /// `realtime:<channel>`.
    pub(crate) topic: String,
    /// Subscribe to INSERTs of [`EVENTS_TABLE`].
    pub(crate) changes: bool,
    /// Presence key to join and track under.
    pub(crate) presence_key: Option<String>,
    /// The channel's `access_token`.
    pub(crate) token: Arc<str>,
}

/// Why a client's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Told to stop.
    Stopped,
    /// The server closed the socket or the connection failed.
    Lost,
}

/// One client connection.
#[derive(Debug)]
pub(crate) struct Client {
    ws: Socket,
    next_ref: u64,
    /// Join ref of the current membership.
    join_ref: Option<String>,
    /// Topic of the current membership.
    topic: Option<String>,
    /// Whether the membership counts in `subscribed_now`.
    subscribed: bool,
}

/// Opens a WebSocket to the gateway as realtime-js would: `GET path_and_query` (see
/// [`Target::websocket_path`]).
pub(crate) async fn connect(
    target: &Target,
    path_and_query: &str,
    source: Option<std::net::SocketAddr>,
) -> Result<Client, ConnectError> {
    let attempt = async {
        let tcp = target
            .connect_tcp(source)
            .await
            .map_err(|e| ConnectError::Failed(format!("tcp connect: {}", e.kind())))?;
        match socket::handshake(tcp, target.authority(), path_and_query).await {
            Ok(Handshake::Open(ws)) => Ok(ws),
            Ok(Handshake::Refused { status, body }) => Err(ConnectError::Refused { status, body }),
            Err(e) => Err(ConnectError::Failed(format!("handshake: {e}"))),
        }
    };
    // The gateway answers refusals after its connect-error delay (2 s by default).
    match tokio::time::timeout(PUSH_TIMEOUT, attempt).await {
        Ok(Ok(ws)) => Ok(Client {
            ws,
            next_ref: 1,
            join_ref: None,
            topic: None,
            subscribed: false,
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ConnectError::Failed("connect timed out".to_owned())),
    }
}

/// What ended a socket, as a short stable text (no addresses or counters in it).
fn closed_by_server(payload: &[u8]) -> String {
    match payload {
        [hi, lo, reason @ ..] => format!(
            "closed by server: {} {}",
            u16::from_be_bytes([*hi, *lo]),
            String::from_utf8_lossy(reason)
        ),
        _ => "closed by server".to_owned(),
    }
}

/// What a frame asks of the read loop.
enum Step {
    /// Nothing: read on.
    Go,
    /// Answer a ping with this payload.
    Pong([u8; 125], usize),
    /// The socket is done.
    End,
}

impl Client {
    fn take_ref(&mut self) -> String {
        let r = self.next_ref.to_string();
        self.next_ref += 1;
        r
    }

    async fn send(
        &mut self,
        join_ref: Option<&str>,
        msg_ref: Option<&str>,
        topic: &str,
        event: &str,
        payload: &Value,
    ) -> Result<(), String> {
        let text = protocol::encode_client_text(
            Vsn::V2,
            join_ref,
            msg_ref,
            topic,
            event,
            &payload.to_string(),
        );
        self.ws
            .send_text(text.as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))
    }

    /// The next decoded frame; `Err` with a reason when the socket ends.
    async fn next_frame(&mut self) -> Result<Inbound, String> {
        loop {
            let frame = self
                .ws
                .next()
                .await
                .map_err(|e| format!("socket error: {e}"))?;
            let payload = self.ws.payload(&frame);
            match frame.kind {
                Kind::Text => {
                    let text = std::str::from_utf8(payload)
                        .map_err(|_| "text frame is not utf-8".to_owned())?;
                    return protocol::decode_text(Vsn::V2, text)
                        .map_err(|e| format!("undecodable frame: {e}"));
                }
                Kind::Binary => {
                    return protocol::decode_server_binary(payload)
                        .map_err(|e| format!("undecodable binary frame: {e}"));
                }
                Kind::Close => return Err(closed_by_server(payload)),
                Kind::Ping => {
                    let (copy, len) = control_copy(payload);
                    self.ws
                        .pong(&copy[..len])
                        .await
                        .map_err(|e| format!("send: {e}"))?;
                }
                Kind::Pong => {}
            }
        }
    }

    /// Waits for the reply to `msg_ref` on `topic`, booking anything else that arrives.
    async fn reply(&mut self, topic: &str, msg_ref: &str, rec: &Recorder) -> Result<Value, String> {
        loop {
            let frame = self.next_frame().await?;
            if frame.event == "phx_reply"
                && frame.topic == topic
                && frame.msg_ref.as_deref() == Some(msg_ref)
            {
                return match frame.payload {
                    InboundPayload::Json(v) => Ok(v),
                    InboundPayload::Raw(_) | InboundPayload::Binary(_) => {
                        Err("broadcast instead of a reply".to_owned())
                    }
                };
            }
            book_other(&frame, rec);
        }
    }

    /// Joins `spec.topic` and, when it subscribes to changes, waits for the subscription's
    /// confirmation. `Err` carries the reason shown to the user.
    pub(crate) async fn join(&mut self, spec: &JoinSpec, rec: &Recorder) -> Result<(), String> {
        let join = async {
            let r = self.take_ref();
            let mut config = json!({
                "broadcast": {"self": false, "ack": false},
                "presence": {"key": "", "enabled": false},
                "postgres_changes": [],
                "private": false,
            });
            if spec.changes {
                config["postgres_changes"] =
                    json!([{"event": "INSERT", "schema": "public", "table": EVENTS_TABLE}]);
            }
            if let Some(key) = &spec.presence_key {
                config["presence"] = json!({"key": key, "enabled": true});
            }
            let payload = json!({
                "config": config,
                "access_token": &*spec.token,
                "version": "realtime-js/2.119.0 (loadtest)",
            });
            self.send(Some(&r), Some(&r), &spec.topic, "phx_join", &payload)
                .await?;
            let reply = self.reply(&spec.topic, &r, rec).await?;
            if reply["status"] != "ok" {
                return Err(format!(
                    "join refused: {}",
                    reply["response"]["reason"].as_str().unwrap_or("no reason")
                ));
            }
            rec.counters.joins_ok.fetch_add(1, Ordering::Relaxed);
            self.join_ref = Some(r);
            self.topic = Some(spec.topic.clone());
            if !spec.changes {
                return Ok(());
            }
            loop {
                let frame = self.next_frame().await?;
                if frame.topic == spec.topic && frame.event == "system" {
                    let InboundPayload::Json(p) = &frame.payload else {
                        continue;
                    };
                    if p["extension"] != "postgres_changes" {
                        continue;
                    }
                    if p["status"] != "ok" {
                        return Err(format!(
                            "subscription refused: {}",
                            p["message"].as_str().unwrap_or("no message")
                        ));
                    }
                    rec.counters.subscribed.fetch_add(1, Ordering::Relaxed);
                    rec.counters.subscribed_now.fetch_add(1, Ordering::Relaxed);
                    self.subscribed = true;
                    return Ok(());
                }
                book_other(&frame, rec);
            }
        };
        match tokio::time::timeout(PUSH_TIMEOUT, join).await {
            Ok(result) => result,
            Err(_) => Err("join timed out".to_owned()),
        }
    }

    /// Tracks this client's presence on the joined channel; `Err` with the refusal.
    pub(crate) async fn track(&mut self, user: &str, rec: &Recorder) -> Result<(), String> {
        let (Some(topic), Some(jr)) = (self.topic.clone(), self.join_ref.clone()) else {
            return Err("presence before join".to_owned());
        };
        let track = async {
            let r = self.take_ref();
            let payload = json!({
                "type": "presence",
                "event": "track",
                "payload": {"user": user, "status": "online"},
            });
            self.send(Some(&jr), Some(&r), &topic, "presence", &payload)
                .await?;
            let reply = self.reply(&topic, &r, rec).await?;
            if reply["status"] == "ok" {
                Ok(())
            } else {
                Err(format!(
                    "presence refused: {}",
                    reply["response"]["reason"].as_str().unwrap_or("no reason")
                ))
            }
        };
        match tokio::time::timeout(PUSH_TIMEOUT, track).await {
            Ok(result) => result,
            Err(_) => Err("presence track timed out".to_owned()),
        }
    }

    /// Leaves the joined channel and waits for the reply.
    pub(crate) async fn leave(&mut self, rec: &Recorder) -> Result<(), String> {
        let (Some(topic), jr) = (self.topic.take(), self.join_ref.take()) else {
            return Ok(());
        };
        self.unsubscribed(rec);
        let leave = async {
            let r = self.take_ref();
            self.send(jr.as_deref(), Some(&r), &topic, "phx_leave", &json!({}))
                .await?;
            let reply = self.reply(&topic, &r, rec).await?;
            if reply["status"] == "ok" {
                Ok(())
            } else {
                Err("leave refused".to_owned())
            }
        };
        match tokio::time::timeout(PUSH_TIMEOUT, leave).await {
            Ok(result) => result,
            Err(_) => Err("leave timed out".to_owned()),
        }
    }

    fn unsubscribed(&mut self, rec: &Recorder) {
        if std::mem::take(&mut self.subscribed) {
            rec.counters.subscribed_now.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Reads until `stop`, heartbeating every `heartbeat`; books deliveries of run `run_id`
    /// against `commits` into `tracker` (without `commits`, every change is foreign).
    /// Server-side ends are counted as errors.
    pub(crate) async fn run(
        &mut self,
        heartbeat: Duration,
        stop: &CancellationToken,
        rec: &Recorder,
        tracker: &mut Tracker,
        commits: Option<(&CommitLog, i64)>,
    ) -> Ended {
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pending_beat: Option<String> = None;
        // Every frame of one read gets the instant that read returned.
        let mut recv_ns = rec.clock.now_ns();
        let ended = 'run: loop {
            loop {
                let frame = match self.ws.parse() {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(e) => {
                        rec.error(&format!("socket error: {e}"));
                        break 'run Ended::Lost;
                    }
                };
                let step = self.on_frame(frame, recv_ns, rec, tracker, commits, &mut pending_beat);
                match step {
                    Step::Go => {}
                    Step::Pong(copy, len) => {
                        if let Err(e) = self.ws.pong(&copy[..len]).await {
                            rec.error(&format!("send: {e}"));
                            break 'run Ended::Lost;
                        }
                    }
                    Step::End => break 'run Ended::Lost,
                }
            }
            tokio::select! {
                biased;
                () = stop.cancelled() => break Ended::Stopped,
                _ = beat.tick() => {
                    if pending_beat.take().is_some() {
                        rec.counters.heartbeats_missed.fetch_add(1, Ordering::Relaxed);
                        rec.error("heartbeat reply missing before the next heartbeat");
                    }
                    let r = self.take_ref();
                    if let Err(e) = self.send(None, Some(&r), "phoenix", "heartbeat", &json!({})).await {
                        rec.error(&e);
                        break Ended::Lost;
                    }
                    rec.counters.heartbeats.fetch_add(1, Ordering::Relaxed);
                    pending_beat = Some(r);
                }
                read = self.ws.read_more() => {
                    recv_ns = rec.clock.now_ns();
                    if let Err(e) = read {
                        rec.error(&match e {
                            socket::Error::Ended => "socket ended".to_owned(),
                            e => format!("socket error: {e}"),
                        });
                        break Ended::Lost;
                    }
                }
            }
        };
        tracker.flush(rec);
        if ended == Ended::Lost {
            self.unsubscribed(rec);
        }
        ended
    }

    /// Books one frame read by [`Client::run`].
    fn on_frame(
        &self,
        frame: socket::Frame,
        recv_ns: u64,
        rec: &Recorder,
        tracker: &mut Tracker,
        commits: Option<(&CommitLog, i64)>,
        pending_beat: &mut Option<String>,
    ) -> Step {
        let payload = self.ws.payload(&frame);
        let text = match frame.kind {
            Kind::Text => payload,
            Kind::Binary => {
                match protocol::decode_server_binary(payload) {
                    Ok(f) => book_other(&f, rec),
                    Err(e) => rec.error(&format!("undecodable binary frame: {e}")),
                }
                return Step::Go;
            }
            Kind::Ping => {
                let (copy, len) = control_copy(payload);
                return Step::Pong(copy, len);
            }
            Kind::Pong => return Step::Go,
            Kind::Close => {
                rec.error(&closed_by_server(payload));
                return Step::End;
            }
        };
        let d = &rec.counters.deliveries;
        let booked = crate::scan::with_delivery(text, |delivery| {
            let delivery = delivery?;
            if delivery.table != EVENTS_TABLE {
                d.foreign.add(tracker.shard(), 1);
                return Some(());
            }
            if self.topic.as_deref() != Some(delivery.topic) {
                rec.error("delivery on a topic this client did not join");
                return Some(());
            }
            if delivery.commit_timestamp.is_none() {
                d.unstamped.add(tracker.shard(), 1);
            }
            match commits {
                Some((log, run_id)) if delivery.run == run_id => {
                    tracker.delivered(delivery.n, recv_ns, log, rec);
                }
                _ => d.foreign.add(tracker.shard(), 1),
            }
            Some(())
        });
        if booked.is_some() {
            return Step::Go;
        }
        let frame = match std::str::from_utf8(text)
            .map_err(|_| "not utf-8".to_owned())
            .and_then(|t| protocol::decode_text(Vsn::V2, t).map_err(|e| e.to_string()))
        {
            Ok(f) => f,
            Err(e) => {
                rec.error(&format!("undecodable frame: {e}"));
                return Step::Go;
            }
        };
        match frame.event.as_str() {
            // A delivery the scanner could not read (not this tool's table or shape).
            "postgres_changes" => d.foreign.add(tracker.shard(), 1),
            "phx_reply" if frame.topic == "phoenix" => {
                if pending_beat.as_deref() == frame.msg_ref.as_deref() {
                    *pending_beat = None;
                    rec.counters
                        .heartbeat_replies
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => book_other(&frame, rec),
        }
        Step::Go
    }

    /// Closes the socket politely (close frame, wait for the server's) within a bound.
    pub(crate) async fn close(mut self, rec: &Recorder) {
        self.unsubscribed(rec);
        let close = async {
            if self.ws.send_close().await.is_ok() {
                while let Ok(frame) = self.ws.next().await {
                    if frame.kind == Kind::Close {
                        break;
                    }
                }
            }
        };
        // A server that does not answer the close is not this client's problem any more.
        let _closed = tokio::time::timeout(CLOSE_TIMEOUT, close).await;
    }

    /// Drops the connection without a close frame, as a vanished browser tab would.
    pub(crate) fn abandon(mut self, rec: &Recorder) {
        self.unsubscribed(rec);
    }
}

/// A control frame's payload (at most 125 bytes) copied out of the read buffer.
fn control_copy(payload: &[u8]) -> ([u8; 125], usize) {
    let mut copy = [0u8; 125];
    let len = payload.len().min(125);
    copy[..len].copy_from_slice(&payload[..len]);
    (copy, len)
}

/// Counts frames that are neither deliveries nor awaited replies; a channel the server ends is
/// an error.
fn book_other(frame: &Inbound, rec: &Recorder) {
    match frame.event.as_str() {
        "presence_state" | "presence_diff" => {
            rec.counters.presence_frames.fetch_add(1, Ordering::Relaxed);
        }
        "phx_close" | "phx_error" => {
            rec.error(&format!("channel ended by server: {}", frame.event))
        }
        "system" => {
            if let InboundPayload::Json(p) = &frame.payload {
                if p["status"] == "error" {
                    rec.error(&format!(
                        "system error: {}",
                        p["message"].as_str().unwrap_or("no message")
                    ));
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_are_short_and_stable() {
        let mut payload = 4001u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"slow consumer");
        assert_eq!(
            closed_by_server(&payload),
            "closed by server: 4001 slow consumer"
        );
        assert_eq!(closed_by_server(&[]), "closed by server");
    }
}
