//! One simulated realtime-js client: a WebSocket (vsn 2.0.0 array framing, through the
//! gateway's own codec), a channel join with a Postgres Changes subscription and optionally
//! presence, heartbeats every 25 s, and nothing else sent.
//!
//! Each client is one lightweight task. It books what it receives into its [`Tracker`] and the
//! shared [`Recorder`], and ends when told to stop or when the socket ends.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use realtime_gateway::protocol::{self, Inbound, InboundPayload, Vsn};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use crate::record::{CommitLog, Recorder, Tracker};
use crate::target::Target;

/// The table every subscriber listens to and the writer inserts into.
pub(crate) const EVENTS_TABLE: &str = "loadtest_events";
/// How long a join (reply plus subscription confirmation) or a presence track may take, as
/// realtime-js's push timeout.
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a polite close may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// A connected WebSocket.
type Socket = WebSocketStream<TcpStream>;

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

/// Opens a WebSocket to the gateway as realtime-js would.
pub(crate) async fn connect(
    target: &Target,
    url: &str,
    source: Option<std::net::SocketAddr>,
) -> Result<Client, ConnectError> {
    let attempt = async {
        let tcp = target
            .connect_tcp(source)
            .await
            .map_err(|e| ConnectError::Failed(format!("tcp connect: {}", e.kind())))?;
        // Small buffers: deliveries are a few hundred bytes and a run holds thousands of sockets.
        let config = WebSocketConfig::default()
            .read_buffer_size(8 * 1024)
            .write_buffer_size(0);
        match tokio_tungstenite::client_async_with_config(url, tcp, Some(config)).await {
            Ok((ws, _response)) => Ok(ws),
            Err(tungstenite::Error::Http(response)) => Err(ConnectError::Refused {
                status: response.status().as_u16(),
                body: response
                    .body()
                    .as_deref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default(),
            }),
            Err(e) => Err(ConnectError::Failed(format!("handshake: {}", short(&e)))),
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

/// A short, stable text for a tungstenite error (no addresses or counters in it).
fn short(e: &tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Io(io) => format!("io {:?}", io.kind()),
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            "connection closed".to_owned()
        }
        tungstenite::Error::Protocol(p) => format!("protocol: {p}"),
        other => other.to_string(),
    }
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
            .send(Message::Text(text.into()))
            .await
            .map_err(|e| format!("send: {}", short(&e)))
    }

    /// The next decoded frame; `Err` with a reason when the socket ends.
    async fn next_frame(&mut self) -> Result<Inbound, String> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    return protocol::decode_text(Vsn::V2, text.as_str())
                        .map_err(|e| format!("undecodable frame: {e}"));
                }
                Some(Ok(Message::Binary(bytes))) => {
                    return protocol::decode_server_binary(&bytes)
                        .map_err(|e| format!("undecodable binary frame: {e}"));
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(match frame {
                        Some(f) => format!("closed by server: {} {}", u16::from(f.code), f.reason),
                        None => "closed by server".to_owned(),
                    });
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("socket error: {}", short(&e))),
                None => return Err("socket ended".to_owned()),
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
    /// into `tracker`. Server-side ends are counted as errors.
    pub(crate) async fn run(
        &mut self,
        heartbeat: Duration,
        stop: &CancellationToken,
        rec: &Recorder,
        deliveries: Option<(&CommitLog, i64, &mut Tracker)>,
    ) -> Ended {
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pending_beat: Option<String> = None;
        let (commits, run_id, mut tracker) = match deliveries {
            Some((c, id, t)) => (Some(c), id, Some(t)),
            None => (None, 0, None),
        };
        let ended = loop {
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
                frame = self.ws.next() => {
                    let recv_ns = rec.clock.now_ns();
                    let text = match frame {
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(Message::Close(frame))) => {
                            rec.error(&match frame {
                                Some(f) => format!("closed by server: {} {}", u16::from(f.code), f.reason),
                                None => "closed by server".to_owned(),
                            });
                            break Ended::Lost;
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => {
                            rec.error(&format!("socket error: {}", short(&e)));
                            break Ended::Lost;
                        }
                        None => {
                            rec.error("socket ended");
                            break Ended::Lost;
                        }
                    };
                    // Deliveries, nearly every frame of a run, are read without building a
                    // JSON tree; anything else goes through the gateway's codec.
                    if let Some((run, n)) = delivery_row(text.as_str()) {
                        match (commits, tracker.as_deref_mut()) {
                            (Some(commits), Some(tracker)) if run == run_id => {
                                tracker.delivered(n, recv_ns, commits, rec);
                            }
                            _ => {
                                rec.counters.foreign.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        continue;
                    }
                    let frame = match protocol::decode_text(Vsn::V2, text.as_str()) {
                        Ok(f) => f,
                        Err(e) => {
                            rec.error(&format!("undecodable frame: {e}"));
                            continue;
                        }
                    };
                    match frame.event.as_str() {
                        "postgres_changes" => {
                            match (change_row(&frame), commits, tracker.as_deref_mut()) {
                                (Some((run, n)), Some(commits), Some(tracker)) if run == run_id => {
                                    tracker.delivered(n, recv_ns, commits, rec);
                                }
                                _ => {
                                    rec.counters.foreign.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        "phx_reply" if frame.topic == "phoenix" => {
                            if pending_beat.as_deref() == frame.msg_ref.as_deref() {
                                pending_beat = None;
                                rec.counters.heartbeat_replies.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        _ => book_other(&frame, rec),
                    }
                }
            }
        };
        if let Some(tracker) = tracker {
            tracker.flush(rec);
        }
        if ended == Ended::Lost {
            self.unsubscribed(rec);
        }
        ended
    }

    /// Closes the socket politely (close frame, wait for the server's) within a bound.
    pub(crate) async fn close(mut self, rec: &Recorder) {
        self.unsubscribed(rec);
        let close = async {
            let _sent = self.ws.close(None).await;
            while let Some(Ok(_)) = self.ws.next().await {}
        };
        // A server that does not answer the close is not this client's problem any more.
        let _closed = tokio::time::timeout(CLOSE_TIMEOUT, close).await;
    }

    /// Drops the connection without a close frame, as a vanished browser tab would.
    pub(crate) fn abandon(mut self, rec: &Recorder) {
        self.unsubscribed(rec);
    }
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

/// `(run, n)` of a vsn 2 Postgres Changes delivery of [`EVENTS_TABLE`], read straight into
/// the few fields it needs (the rest of the frame is skipped, not built); `None` for any
/// other frame.
fn delivery_row(text: &str) -> Option<(i64, u64)> {
    #[derive(serde::Deserialize)]
    struct Payload<'a> {
        #[serde(borrow)]
        data: Data<'a>,
    }
    #[derive(serde::Deserialize)]
    struct Data<'a> {
        table: &'a str,
        record: Row,
    }
    #[derive(serde::Deserialize)]
    struct Row {
        run: i64,
        n: u64,
    }
    type Frame<'a> = (
        serde::de::IgnoredAny,
        serde::de::IgnoredAny,
        serde::de::IgnoredAny,
        &'a str,
        &'a serde_json::value::RawValue,
    );
    let (_, _, _, event, payload): Frame<'_> = serde_json::from_str(text).ok()?;
    if event != "postgres_changes" {
        return None;
    }
    let payload: Payload<'_> = serde_json::from_str(payload.get()).ok()?;
    (payload.data.table == EVENTS_TABLE).then_some((payload.data.record.run, payload.data.record.n))
}

/// `(run, n)` of a Postgres Changes delivery of [`EVENTS_TABLE`].
fn change_row(frame: &Inbound) -> Option<(i64, u64)> {
    let InboundPayload::Json(payload) = &frame.payload else {
        return None;
    };
    let data = payload.get("data")?;
    if data.get("table")?.as_str()? != EVENTS_TABLE {
        return None;
    }
    let record = data.get("record")?;
    Some((record.get("run")?.as_i64()?, record.get("n")?.as_u64()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_rows_are_read_from_the_delivery_shape() {
        let text = r#"[null,null,"realtime:c","postgres_changes",{"ids":[1],"data":{"schema":"public","table":"loadtest_events","type":"INSERT","commit_timestamp":"2025-01-01T00:00:00.000Z","columns":[],"record":{"id":9,"run":42,"n":7,"payload":"x"},"errors":null}}]"#;
        let frame = protocol::decode_text(Vsn::V2, text).unwrap();
        assert_eq!(change_row(&frame), Some((42, 7)));
        assert_eq!(delivery_row(text), Some((42, 7)));
        assert_eq!(
            delivery_row(&text.replace("loadtest_events", "todos")),
            None
        );
        assert_eq!(
            delivery_row(r#"[null,"3","phoenix","phx_reply",{"status":"ok","response":{}}]"#),
            None
        );
        let other = text.replace("loadtest_events", "todos");
        let frame = protocol::decode_text(Vsn::V2, &other).unwrap();
        assert_eq!(change_row(&frame), None);
    }
}
