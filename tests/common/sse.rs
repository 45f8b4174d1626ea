//! [`SseStream`]: a server-sent-events reader over a plain TCP stream (HTTP/1.1, chunked), for
//! the admin dashboard's `GET /admin/stream`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::http::HttpAnswer;

/// One event: its `event` field (`message` when absent) and its data lines joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
}

impl SseEvent {
    /// The data as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("event `{}` is not JSON ({e}): {}", self.event, self.data))
    }
}

/// An open event stream.
pub struct SseStream {
    reader: BufReader<TcpStream>,
    /// Decoded body bytes not yet split into events.
    pending: String,
    /// Whether the body is chunked (else read until the connection ends).
    chunked: bool,
    /// The answer's headers, lower-case names.
    pub headers: Vec<(String, String)>,
}

impl std::fmt::Debug for SseStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseStream").finish_non_exhaustive()
    }
}

impl SseStream {
    /// Sends `GET path` with `headers`; the stream when answered 200, else the whole answer.
    pub async fn open(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<SseStream, HttpAnswer> {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let mut request =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("send the request");
        let mut reader = BufReader::new(stream);
        let mut status_line = String::new();
        reader
            .read_line(&mut status_line)
            .await
            .expect("status line");
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).await.expect("header line");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let chunked = header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
        if status != 200 {
            let length: usize = header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; length];
            reader.read_exact(&mut body).await.expect("body");
            return Err(HttpAnswer {
                status,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        Ok(SseStream {
            reader,
            pending: String::new(),
            chunked,
            headers,
        })
    }

    /// The value of header `name` (lower case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The next event, or `None` when the stream ended; fails the test after `patience`.
    pub async fn next_within(&mut self, patience: Duration) -> Option<SseEvent> {
        tokio::time::timeout(patience, self.next())
            .await
            .unwrap_or_else(|_| panic!("no event within {patience:?}"))
    }

    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            while let Some(cut) = self.pending.find("\n\n") {
                let block: String = self.pending.drain(..cut + 2).collect();
                if let Some(event) = parse_event(&block) {
                    return Some(event);
                }
            }
            let more = self.read_body().await?;
            self.pending.push_str(&more);
        }
    }

    /// More of the body; `None` at its end.
    async fn read_body(&mut self) -> Option<String> {
        if !self.chunked {
            let mut buf = vec![0; 8192];
            let n = self.reader.read(&mut buf).await.ok()?;
            return (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        let mut size_line = String::new();
        if self.reader.read_line(&mut size_line).await.ok()? == 0 {
            return None;
        }
        let size = usize::from_str_radix(size_line.trim(), 16).expect("a chunk size");
        if size == 0 {
            return None;
        }
        let mut chunk = vec![0; size + 2];
        self.reader.read_exact(&mut chunk).await.ok()?;
        chunk.truncate(size);
        Some(String::from_utf8(chunk).expect("UTF-8 events"))
    }
}

/// One event block; `None` for a comment-only block (keep-alive).
fn parse_event(block: &str) -> Option<SseEvent> {
    let mut event = "message".to_owned();
    let mut data = Vec::new();
    for line in block.lines() {
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => event = value.to_owned(),
            "data" => data.push(value),
            _ => {}
        }
    }
    (!data.is_empty()).then(|| SseEvent {
        event,
        data: data.join("\n"),
    })
}
