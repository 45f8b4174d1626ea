//! [`WsClient`]: a raw Phoenix client over tokio-tungstenite (vsn 2.0.0 JSON arrays), and the
//! frames it receives ([`Msg`]).

use std::time::Duration;

use super::gateway::{token, TestGateway};

/// A raw Phoenix client over tokio-tungstenite, speaking vsn 2.0.0 JSON arrays.
pub struct WsClient {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_ref: u64,
}

impl std::fmt::Debug for WsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsClient").finish_non_exhaustive()
    }
}

/// A received frame: `[join_ref, ref, topic, event, payload]`.
#[derive(Debug, Clone)]
pub struct Msg {
    pub join_ref: Option<String>,
    pub msg_ref: Option<String>,
    pub topic: String,
    pub event: String,
    pub payload: serde_json::Value,
}

impl WsClient {
    /// Connects to `url` (vsn 2.0.0 expected in it).
    pub async fn connect(url: &str) -> WsClient {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect");
        WsClient { ws, next_ref: 1 }
    }

    /// Connects to `url`, as the client at `forwarded_for` (sent as `x-forwarded-for`) when
    /// given; a refused upgrade is its HTTP status and body.
    pub async fn try_connect(
        url: &str,
        forwarded_for: Option<&str>,
    ) -> Result<WsClient, (u16, String)> {
        use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};
        let mut request = url.into_client_request().unwrap();
        if let Some(addr) = forwarded_for {
            request
                .headers_mut()
                .insert("x-forwarded-for", addr.parse().unwrap());
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((ws, _)) => Ok(WsClient::from_stream(ws)),
            Err(tungstenite::Error::Http(response)) => {
                let body = response.body().clone().unwrap_or_default();
                Err((
                    response.status().as_u16(),
                    String::from_utf8_lossy(&body).into_owned(),
                ))
            }
            Err(e) => panic!("upgrade failed: {e}"),
        }
    }

    /// Wraps a stream connected by the caller (e.g. over a tuned socket).
    pub fn from_stream(
        ws: tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    ) -> WsClient {
        WsClient { ws, next_ref: 1 }
    }

    /// Connects to the gateway with a fresh anon key.
    pub async fn anon(gw: &TestGateway) -> WsClient {
        WsClient::connect(&gw.ws_url(&token("anon", None), "2.0.0")).await
    }

    /// Sends a frame; returns the ref used.
    pub async fn send(
        &mut self,
        join_ref: Option<&str>,
        topic: &str,
        event: &str,
        payload: serde_json::Value,
    ) -> String {
        use futures_util::SinkExt;
        let r = self.next_ref.to_string();
        self.next_ref += 1;
        let frame = serde_json::json!([join_ref, r, topic, event, payload]);
        self.ws
            .send(tokio_tungstenite::tungstenite::Message::Text(
                frame.to_string().into(),
            ))
            .await
            .expect("send");
        r
    }

    /// Sends raw text.
    pub async fn send_text(&mut self, text: &str) {
        use futures_util::SinkExt;
        self.ws
            .send(tokio_tungstenite::tungstenite::Message::Text(
                text.to_owned().into(),
            ))
            .await
            .expect("send");
    }

    /// The next text frame, or `Err(close code)` when the socket closes; fails after 10 s.
    pub async fn next(&mut self) -> Result<Msg, Option<u16>> {
        self.next_within(Duration::from_secs(10)).await
    }

    /// The next text frame within `patience`.
    pub async fn next_within(&mut self, patience: Duration) -> Result<Msg, Option<u16>> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            let frame = tokio::time::timeout(patience, self.ws.next())
                .await
                .expect("a frame within the patience");
            match frame {
                Some(Ok(Message::Text(t))) => {
                    let v: serde_json::Value = serde_json::from_str(t.as_str()).expect("json");
                    let s = |i: usize| v[i].as_str().map(str::to_owned);
                    return Ok(Msg {
                        join_ref: s(0),
                        msg_ref: s(1),
                        topic: s(2).unwrap_or_default(),
                        event: s(3).unwrap_or_default(),
                        payload: v[4].clone(),
                    });
                }
                Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| f.code.into())),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Err(None),
            }
        }
    }

    /// The next text frame unparsed, or `Err(close code)` when the socket closes.
    pub async fn next_raw(&mut self, patience: Duration) -> Result<String, Option<u16>> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            let frame = tokio::time::timeout(patience, self.ws.next())
                .await
                .expect("a frame within the patience");
            match frame {
                Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
                Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| f.code.into())),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Err(None),
            }
        }
    }

    /// Skips frames until one with `event` on `topic` arrives.
    pub async fn expect_event(&mut self, topic: &str, event: &str) -> Msg {
        loop {
            let m = self.next().await.unwrap_or_else(|code| {
                panic!("socket closed ({code:?}) while waiting for {event} on {topic}")
            });
            if m.topic == topic && m.event == event {
                return m;
            }
        }
    }

    /// Joins `topic` with `config`; returns the reply payload.
    pub async fn join(&mut self, topic: &str, config: serde_json::Value) -> serde_json::Value {
        let r = self.next_ref.to_string();
        self.send(
            Some(&r),
            topic,
            "phx_join",
            serde_json::json!({ "config": config }),
        )
        .await;
        let reply = self.expect_event(topic, "phx_reply").await;
        assert_eq!(
            reply.msg_ref.as_deref(),
            Some(r.as_str()),
            "reply echoes the ref"
        );
        assert_eq!(
            reply.join_ref.as_deref(),
            Some(r.as_str()),
            "reply echoes the join_ref"
        );
        reply.payload
    }

    /// Joins with Postgres Changes subscriptions and waits for "Subscribed to PostgreSQL".
    pub async fn subscribe(&mut self, topic: &str, changes: serde_json::Value) -> Vec<u32> {
        let reply = self
            .join(topic, serde_json::json!({ "postgres_changes": changes }))
            .await;
        assert_eq!(reply["status"], "ok", "{reply}");
        let system = self.expect_event(topic, "system").await;
        assert_eq!(
            system.payload["status"], "ok",
            "subscription failed: {}",
            system.payload
        );
        reply["response"]["postgres_changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| u32::try_from(e["id"].as_u64().unwrap()).unwrap())
            .collect()
    }

    /// Reads the raw stream until the server's close frame; returns its code.
    pub async fn closed_with(&mut self, patience: Duration) -> Option<u16> {
        loop {
            match self.next_within(patience).await {
                Ok(_) => continue,
                Err(code) => return code,
            }
        }
    }

    /// Stops reading: the caller keeps the socket but drains nothing.
    pub fn into_inner(
        self,
    ) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>
    {
        self.ws
    }
}
