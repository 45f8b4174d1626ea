//! The session's read loop: client messages in order, and the deadlines an idle connection
//! waits for (its channels' token expiry, a socket left without channels, channels waiting for
//! the change stream), under one timer.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde_json::json;

use super::{resume, Session, SessionEnd};
use crate::outbound::Frame;
use crate::protocol::Vsn;
use crate::socket::inbound::Error as ReadError;
use crate::socket::Message;

impl Session {
    /// The read loop: ends when the socket closes or the session is cancelled. Returns the code
    /// and reason of the close frame to send: the client's own, answering its close frame, or
    /// the failure's when the client broke the protocol.
    ///
    /// Not an `async fn`, for the reason given at [`Session::serve`]; and what is computed
    /// afresh at each turn of the loop is not kept across its wait (every byte here is held by
    /// every open connection).
    #[allow(clippy::manual_async_fn)]
    pub(super) fn read<'a>(
        &'a mut self,
        stream: &'a mut crate::socket::Reader,
    ) -> impl Future<Output = Option<(u16, String)>> + Send + 'a {
        async move {
            // Since when the socket has had no channel (it has none at connect).
            let mut channelless_since = Some(tokio::time::Instant::now());
            let mut expiry = self.next_expiry();
            // Channels waiting for the change stream: the earliest deadline, and the stream's
            // state (a closed stream can never come up; their deadlines still end them).
            let mut replication = self.next_replication_deadline();
            let mut stream_gone = false;
            // The wait for the change stream, boxed and only while a channel waits for it: most
            // sessions never wait, and an idle session's future holds only a pointer for it.
            let mut stream_wait: Option<Pin<Box<dyn Future<Output = bool> + Send>>> = None;
            // One timer for every deadline (token expiry, no channel, replication wait), reset only
            // when the earliest of them moves (not per message).
            // Polled only while a deadline is set.
            let wake = tokio::time::sleep_until(tokio::time::Instant::now());
            tokio::pin!(wake);
            loop {
                let armed = {
                    let next = [
                        expiry,
                        self.channelless_deadline(channelless_since),
                        replication,
                    ]
                    .into_iter()
                    .flatten()
                    .min();
                    if let Some(next) = next {
                        if wake.deadline() != next {
                            wake.as_mut().reset(next);
                        }
                    }
                    next.is_some()
                };
                if replication.is_none() || stream_gone {
                    stream_wait = None;
                } else if stream_wait.is_none() {
                    let mut change_stream = self.services.change_stream.clone();
                    stream_wait = Some(Box::pin(async move {
                        change_stream.wait_for(|up| *up).await.is_ok()
                    }));
                }
                let message = tokio::select! {
                    biased;
                    () = self.handle.token.cancelled() => return None,
                    up = std::future::poll_fn(|cx| match stream_wait.as_mut() {
                        Some(wait) => wait.as_mut().poll(cx),
                        None => std::task::Poll::Pending,
                    }), if stream_wait.is_some() =>
                    {
                        stream_wait = None;
                        if up {
                            self.replication_up();
                        } else {
                            stream_gone = true;
                        }
                        replication = self.next_replication_deadline();
                        continue;
                    }
                    () = &mut wake, if armed => {
                        let now = tokio::time::Instant::now();
                        if expiry.is_some_and(|at| at <= now) {
                            self.expire_channels();
                            expiry = self.next_expiry();
                        } else if replication.is_some_and(|at| at <= now) {
                            self.replication_timed_out(now);
                            replication = self.next_replication_deadline();
                        } else if self
                            .channelless_deadline(channelless_since)
                            .is_some_and(|at| at <= now)
                        {
                            tracing::debug!("closing a socket without channels");
                            metrics::counter!("gateway_session_channelless_closed_total")
                                .increment(1);
                            self.handle.close(SessionEnd::NoChannel);
                            return None;
                        }
                        channelless_since = self.channelless_since(channelless_since);
                        continue;
                    }
                    message = stream.next() => message,
                };
                match message {
                    // Boxed: a message's decoding and handling take room only while they run, not
                    // in every idle session's future.
                    Some(Ok(Message::Text(text))) => {
                        if Box::pin(self.text(text)).await {
                            expiry = self.next_expiry();
                            replication = self.next_replication_deadline();
                        }
                    }
                    Some(Ok(Message::Binary(_))) if self.params.vsn != Vsn::V2 => {
                        self.malformed(&"binary frames need vsn 2.0.0");
                    }
                    Some(Ok(Message::Binary(bytes))) => {
                        if Box::pin(self.binary(bytes)).await {
                            expiry = self.next_expiry();
                            replication = self.next_replication_deadline();
                        }
                    }
                    Some(Ok(Message::Pong(payload))) => {
                        if let Some(resume) = &self.resume {
                            if let Some(id) = resume::track::pong_id(&payload) {
                                resume.track.pong(id);
                            }
                        }
                    }
                    Some(Ok(Message::Ping(payload))) => {
                        // Answered in order with what is queued (the reader's own reply is
                        // dropped).
                        let _pushed = self.outbound.push(Frame::pong(&payload));
                    }
                    Some(Ok(Message::Close(frame))) => {
                        self.handle.token.cancel();
                        // No code is answered with 1000; a code that may not be sent back (1005,
                        // 1006, 1015) never arrives: the reader fails the connection with 1002.
                        return Some(frame.unwrap_or((1000, String::new())));
                    }
                    Some(Err(ReadError::Failed(failure))) => {
                        self.handle.token.cancel();
                        tracing::debug!(
                            code = failure.code,
                            reason = failure.reason,
                            "failing a connection that broke the protocol"
                        );
                        metrics::counter!("gateway_session_protocol_errors_total").increment(1);
                        return Some((failure.code, failure.reason.to_owned()));
                    }
                    Some(Err(ReadError::Io(_))) | None => {
                        self.handle.token.cancel();
                        return None;
                    }
                }
                channelless_since = self.channelless_since(channelless_since);
            }
        }
    }

    /// When a socket without channels since `since` is closed; `None` when it has a channel,
    /// or when `--join-timeout` is 0.
    fn channelless_deadline(
        &self,
        since: Option<tokio::time::Instant>,
    ) -> Option<tokio::time::Instant> {
        let timeout = self.services.config.join_timeout;
        since
            .filter(|_| !timeout.is_zero())
            .map(|since| since + timeout)
    }

    /// Since when the socket has had no channel, given what it was before the last event.
    fn channelless_since(
        &self,
        before: Option<tokio::time::Instant>,
    ) -> Option<tokio::time::Instant> {
        match (self.channels.is_empty(), before) {
            (false, _) => None,
            (true, None) => Some(tokio::time::Instant::now()),
            (true, since) => since,
        }
    }

    /// When the first joined channel's token expires (docs/protocol.md 8.2).
    fn next_expiry(&self) -> Option<tokio::time::Instant> {
        let exp = self.channels.values().map(|j| j.claims.exp).min()?;
        let left = u64::try_from(exp.saturating_sub(crate::auth::now_secs())).unwrap_or(0);
        // A token valid for longer than a year is re-checked yearly (and never overflows).
        let left = Duration::from_secs(left.min(365 * 24 * 3600));
        Some(tokio::time::Instant::now() + left)
    }

    /// Ends every channel whose token has expired: a `system` error with a machine-readable
    /// `reason` (`token_expired`), then `phx_close`; the registry row ends `token_expired`.
    fn expire_channels(&mut self) {
        let now = crate::auth::now_secs();
        let expired: Vec<String> = self
            .channels
            .values()
            .filter(|j| j.claims.exp <= now)
            .map(|j| j.topic.to_string())
            .collect();
        for topic in expired {
            let Some(joined) = self.leave(&topic, "token_expired") else {
                continue;
            };
            let ago = now - joined.claims.exp;
            metrics::counter!("gateway_session_tokens_expired_total").increment(1);
            self.services.registry.audit(
                "token_expired",
                joined.claims.user_id(),
                Some(self.handle.peer),
                json!({"channel": joined.name(), "expired_s_ago": ago}),
            );
            let jr = joined.join_ref.as_deref();
            let system = json!({"extension": "system", "status": "error",
                                "message": format!("Token has expired {ago} seconds ago"),
                                "reason": "token_expired", "channel": joined.name()});
            self.push_json(jr, None, &topic, "system", &system);
            self.push_json(jr, jr, &topic, "phx_close", &json!({}));
        }
    }
}
