//! The baseline server: what the fastest Rust fan-out over WebSockets looks like, with no
//! protocol, database or routing on the delivery path.
//!
//! - One task per connection, on a multi-thread tokio runtime. It answers the few pushes the
//!   load tester's clients make (join, presence track, heartbeat, leave) with fixed replies,
//!   and writes whatever its queue holds.
//! - A delivery is one pre-encoded WebSocket frame per topic ([`frame::delivery`]), header
//!   included, shared by reference with every socket on that topic.
//! - Each socket's queue is bounded like the gateway's (frames and bytes) and, when it
//!   overflows, the socket is closed as a slow consumer (4001), as the gateway does.
//! - The writer takes everything queued at once and writes it with vectored writes: one
//!   system call for as many frames as have piled up.
//!
//! Messages come from the load tester's writer on stdin ([`super::MESSAGE_LEN`] bytes each) and
//! are fanned out from the thread that reads them, as the gateway's listener does from its
//! task. The server ends when stdin closes.

use std::collections::{HashMap, VecDeque};
use std::io::{IoSlice, Read, Write};
use std::sync::{Arc, Mutex, RwLock};

use bytes::{Buf, Bytes};
use realtime_gateway::protocol::{self, InboundPayload, Vsn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::frame;

/// Most frames one socket's queue holds (the gateway's `OUTBOUND_QUEUE_FRAMES` default).
const QUEUE_FRAMES: usize = 16_384;
/// Most bytes one socket's queue holds (the gateway's `OUTBOUND_QUEUE_BYTES` default).
const QUEUE_BYTES: usize = 8 * 1024 * 1024;
/// Frames handed to one vectored write.
const SLICES: usize = 64;
/// Largest HTTP request head or client frame accepted.
const MAX_INPUT: usize = 64 * 1024;
/// Listen backlog (as the gateway's).
const BACKLOG: u32 = 4096;

/// The sockets joined to each topic, and what a delivery carries.
#[derive(Debug)]
pub(crate) struct Hub {
    /// Members by topic. Written only when a socket joins or leaves; fan-out reads it.
    topics: RwLock<HashMap<String, Vec<Arc<Conn>>>>,
    /// The row's `payload` column.
    filler: String,
}

/// One socket's queue, shared by the fan-out (which pushes) and its task (which writes).
#[derive(Debug, Default)]
struct Conn {
    queue: Mutex<Queue>,
    /// Woken once per push; a wake-up that finds the task busy is kept until it waits again.
    wake: Notify,
}

#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<Bytes>,
    bytes: usize,
    /// Overflowed: the task closes the socket.
    slow: bool,
    /// The task has ended: nothing more is queued.
    gone: bool,
}

impl Conn {
    /// Queues `frame` unless the queue is full (then the socket is marked slow).
    fn push(&self, frame: Bytes) {
        {
            // A poisoned lock means a socket task panicked; its socket is gone anyway.
            let Ok(mut q) = self.queue.lock() else {
                return;
            };
            if q.slow || q.gone {
                return;
            }
            if q.frames.len() >= QUEUE_FRAMES
                || (!q.frames.is_empty() && q.bytes + frame.len() > QUEUE_BYTES)
            {
                q.slow = true;
                q.frames.clear();
            } else {
                q.bytes += frame.len();
                q.frames.push_back(frame);
            }
        }
        self.wake.notify_one();
    }
}

impl Hub {
    /// A hub whose deliveries carry `payload_bytes` of filler.
    pub(crate) fn new(payload_bytes: usize) -> Hub {
        Hub {
            topics: RwLock::new(HashMap::new()),
            filler: "x".repeat(payload_bytes),
        }
    }

    /// Delivers row `n` of run `run` to every member of every topic: one frame per topic.
    pub(crate) fn broadcast(&self, run: i64, n: u64) {
        let Ok(topics) = self.topics.read() else {
            return;
        };
        for (topic, members) in topics.iter() {
            let frame = frame::delivery(topic, n + 1, run, n, &self.filler);
            for member in members {
                member.push(frame.clone());
            }
        }
    }

    fn join(&self, topic: &str, conn: &Arc<Conn>) {
        if let Ok(mut topics) = self.topics.write() {
            topics
                .entry(topic.to_owned())
                .or_default()
                .push(Arc::clone(conn));
        }
    }

    fn leave(&self, topic: &str, conn: &Arc<Conn>) {
        if let Ok(mut topics) = self.topics.write() {
            if let Some(members) = topics.get_mut(topic) {
                if let Some(i) = members.iter().position(|m| Arc::ptr_eq(m, conn)) {
                    members.swap_remove(i);
                }
            }
        }
    }
}

/// The child process's body: serve on loopback, print `listening <addr>` on stdout, fan out
/// what stdin brings, end when stdin closes.
pub(crate) fn serve(payload_bytes: usize) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let hub = Arc::new(Hub::new(payload_bytes));
    let listener = runtime.block_on(bind())?;
    let addr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening {addr}")?;
        out.flush()?;
    }
    runtime.spawn(accept(listener, Arc::clone(&hub)));
    let mut stdin = std::io::stdin().lock();
    let mut message = [0u8; super::MESSAGE_LEN];
    // The load tester closes stdin (or exits) when the run is over.
    while stdin.read_exact(&mut message).is_ok() {
        let (run, n) = super::decode(&message);
        hub.broadcast(run, n);
    }
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(())
}

/// A loopback listener on a free port.
pub(crate) async fn bind() -> std::io::Result<TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(([127, 0, 0, 1], 0).into())?;
    socket.listen(BACKLOG)
}

/// Accepts connections until the runtime ends, one task each.
pub(crate) async fn accept(listener: TcpListener, hub: Arc<Hub>) {
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                tokio::spawn(connection(tcp, Arc::clone(&hub)));
            }
            // Out of file descriptors and the like: the client sees its connect fail.
            Err(_) => tokio::task::yield_now().await,
        }
    }
}

/// One connection: the HTTP request (an upgrade, or `/ready`), then the WebSocket.
async fn connection(mut tcp: TcpStream, hub: Arc<Hub>) {
    // A failed socket option only costs latency; the connection still works.
    let _nodelay = tcp.set_nodelay(true);
    let mut input = Vec::with_capacity(1024);
    let head_len = loop {
        if let Some(i) = input.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if input.len() >= MAX_INPUT || !matches!(tcp.read_buf(&mut input).await, Ok(1..)) {
            return;
        }
    };
    let head = String::from_utf8_lossy(&input[..head_len]).into_owned();
    input.drain(..head_len);
    let key = head.lines().skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("sec-websocket-key")
            .then(|| v.trim().to_owned())
    });
    let Some(key) = key else {
        let answer: &[u8] = if head.starts_with("GET /ready ") {
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
        } else {
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        };
        // The peer going away is the end of this connection either way.
        let _answered = tcp.write_all(answer).await;
        return;
    };
    let accept = derive_accept_key(key.as_bytes());
    let upgrade = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
         sec-websocket-accept: {accept}\r\n\r\n"
    );
    if tcp.write_all(upgrade.as_bytes()).await.is_err() {
        return;
    }
    let conn = Arc::new(Conn::default());
    let mut joined: Option<String> = None;
    websocket(&mut tcp, input, &conn, &hub, &mut joined).await;
    if let Some(topic) = joined {
        hub.leave(&topic, &conn);
    }
    if let Ok(mut q) = conn.queue.lock() {
        q.gone = true;
        q.frames.clear();
    };
}

/// The WebSocket part of a connection, until either side ends it.
async fn websocket(
    tcp: &mut TcpStream,
    mut input: Vec<u8>,
    conn: &Arc<Conn>,
    hub: &Hub,
    joined: &mut Option<String>,
) {
    let (mut rd, mut wr) = tcp.split();
    let mut batch: VecDeque<Bytes> = VecDeque::new();
    loop {
        // Every complete client frame already read.
        loop {
            match client_frame(&mut input) {
                Ok(Some((opcode, payload))) => match opcode {
                    0x1 => on_text(&payload, conn, hub, joined),
                    0x8 => {
                        conn.push(frame::close(1000, ""));
                        drain(conn, &mut batch);
                        // Closing either way: a failed write changes nothing.
                        let _written = write_batch(&mut wr, &mut batch).await;
                        return;
                    }
                    0x9 => conn.push(frame::pong(&payload)),
                    _ => {}
                },
                Ok(None) => break,
                Err(()) => return,
            }
        }
        tokio::select! {
            biased;
            () = conn.wake.notified() => {
                if drain(conn, &mut batch) {
                    let _written = wr.write_all(&frame::close(4001, "slow consumer")).await;
                    return;
                }
                if write_batch(&mut wr, &mut batch).await.is_err() {
                    return;
                }
            }
            read = rd.read_buf(&mut input) => {
                if !matches!(read, Ok(1..)) || input.len() > MAX_INPUT {
                    return;
                }
            }
        }
    }
}

/// Moves everything queued into `batch`; `true` when the socket overflowed.
fn drain(conn: &Conn, batch: &mut VecDeque<Bytes>) -> bool {
    let Ok(mut q) = conn.queue.lock() else {
        return true;
    };
    if q.slow {
        return true;
    }
    if batch.is_empty() {
        // Swap, so the queue keeps the emptied deque's capacity and neither allocates.
        std::mem::swap(&mut q.frames, batch);
    } else {
        batch.extend(q.frames.drain(..));
    }
    q.bytes = 0;
    false
}

/// Writes every frame of `batch`, [`SLICES`] at a time.
async fn write_batch(
    wr: &mut tokio::net::tcp::WriteHalf<'_>,
    batch: &mut VecDeque<Bytes>,
) -> std::io::Result<()> {
    while !batch.is_empty() {
        let mut slices = [IoSlice::new(&[]); SLICES];
        let mut count = 0;
        for (slot, frame) in slices.iter_mut().zip(batch.iter()) {
            *slot = IoSlice::new(frame);
            count += 1;
        }
        let mut written = wr.write_vectored(&slices[..count]).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while written > 0 {
            let Some(front) = batch.front_mut() else {
                break;
            };
            if written >= front.len() {
                written -= front.len();
                batch.pop_front();
            } else {
                front.advance(written);
                written = 0;
            }
        }
    }
    Ok(())
}

/// The first complete frame of `input` (masked, as clients send), unmasked and removed from
/// it: `(opcode, payload)`. `Err` for a frame this server will not take (unmasked, too large,
/// fragmented).
fn client_frame(input: &mut Vec<u8>) -> Result<Option<(u8, Vec<u8>)>, ()> {
    let [b0, b1, ..] = input[..] else {
        return Ok(None);
    };
    if b0 & 0x80 == 0 || b1 & 0x80 == 0 {
        return Err(());
    }
    let (header, len) = match b1 & 0x7F {
        126 => match input.get(2..4) {
            Some(l) => (4, usize::from(u16::from_be_bytes([l[0], l[1]]))),
            None => return Ok(None),
        },
        127 => match input.get(2..10) {
            Some(l) => {
                let mut n = [0u8; 8];
                n.copy_from_slice(l);
                (
                    10,
                    usize::try_from(u64::from_be_bytes(n)).unwrap_or(usize::MAX),
                )
            }
            None => return Ok(None),
        },
        len => (2, usize::from(len)),
    };
    if len > MAX_INPUT {
        return Err(());
    }
    if input.len() < header + 4 + len {
        return Ok(None);
    }
    let mask = [
        input[header],
        input[header + 1],
        input[header + 2],
        input[header + 3],
    ];
    let start = header + 4;
    let payload: Vec<u8> = input[start..start + len]
        .iter()
        .zip(mask.iter().cycle())
        .map(|(b, m)| b ^ m)
        .collect();
    input.drain(..start + len);
    Ok(Some((b0 & 0x0F, payload)))
}

/// Answers a client's push: fixed replies, and the join that makes the socket a member.
fn on_text(payload: &[u8], conn: &Arc<Conn>, hub: &Hub, joined: &mut Option<String>) {
    let Some(push) = std::str::from_utf8(payload)
        .ok()
        .and_then(|t| protocol::decode_text(Vsn::V2, t).ok())
    else {
        return;
    };
    let (jr, r, topic) = (
        push.join_ref.as_deref(),
        push.msg_ref.as_deref(),
        push.topic.as_str(),
    );
    match push.event.as_str() {
        "phx_join" => {
            let changes = match &push.payload {
                InboundPayload::Json(p) => p["config"]["postgres_changes"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
                _ => Vec::new(),
            };
            let bindings: Vec<serde_json::Value> = changes
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let mut c = c.clone();
                    c["id"] = serde_json::json!(i + 1);
                    c
                })
                .collect();
            conn.push(frame::reply(
                jr,
                r,
                topic,
                &serde_json::json!({"postgres_changes": bindings}),
            ));
            if !bindings.is_empty() {
                conn.push(frame::subscribed(jr, topic));
            }
            if let Some(previous) = joined.replace(topic.to_owned()) {
                hub.leave(&previous, conn);
            }
            hub.join(topic, conn);
        }
        "phx_leave" => {
            if let Some(previous) = joined.take() {
                hub.leave(&previous, conn);
            }
            conn.push(frame::reply(jr, r, topic, &serde_json::json!({})));
        }
        // Heartbeats, presence tracks and anything else pushed with a ref: ok.
        _ if r.is_some() => conn.push(frame::reply(jr, r, topic, &serde_json::json!({}))),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    async fn next_text(
        ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
    ) -> serde_json::Value {
        loop {
            match ws.next().await.unwrap().unwrap() {
                Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// A WebSocket client that is not ours (tungstenite) reads the baseline's frames: replies,
    /// the subscription's confirmation, and deliveries of every length form.
    #[tokio::test]
    async fn a_tungstenite_client_reads_the_baselines_frames() {
        let listener = bind().await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hub = Arc::new(Hub::new(100));
        tokio::spawn(accept(listener, Arc::clone(&hub)));
        let (mut ws, _) = tokio_tungstenite::connect_async(format!(
            "ws://{addr}/realtime/v1/websocket?vsn=2.0.0"
        ))
        .await
        .unwrap();
        let join = r#"["1","1","realtime:room","phx_join",{"config":{"postgres_changes":[{"event":"INSERT","schema":"public","table":"loadtest_events"}]}}]"#;
        ws.send(Message::text(join)).await.unwrap();
        let reply = next_text(&mut ws).await;
        assert_eq!(reply[3], "phx_reply");
        assert_eq!(reply[1], "1");
        assert_eq!(reply[4]["status"], "ok");
        assert_eq!(reply[4]["response"]["postgres_changes"][0]["id"], 1);
        let system = next_text(&mut ws).await;
        assert_eq!(system[3], "system");
        assert_eq!(system[4]["message"], "Subscribed to PostgreSQL");

        hub.broadcast(42, 0);
        let delivery = next_text(&mut ws).await;
        assert_eq!(delivery[2], "realtime:room");
        assert_eq!(delivery[4]["data"]["record"]["run"], 42);
        assert_eq!(delivery[4]["data"]["record"]["n"], 0);

        // A 64-bit length (a filler larger than 64 KiB) and a short frame, back to back.
        let big = Hub::new(70_000);
        let members = hub.topics.read().unwrap()["realtime:room"].clone();
        big.topics
            .write()
            .unwrap()
            .insert("realtime:room".to_owned(), members);
        big.broadcast(42, 1);
        hub.broadcast(42, 2);
        let large = next_text(&mut ws).await;
        assert_eq!(
            large[4]["data"]["record"]["payload"].as_str().map(str::len),
            Some(70_000)
        );
        assert_eq!(next_text(&mut ws).await[4]["data"]["record"]["n"], 2);

        ws.send(Message::text(r#"[null,"2","phoenix","heartbeat",{}]"#))
            .await
            .unwrap();
        let beat = next_text(&mut ws).await;
        assert_eq!(beat[1], "2");
        assert_eq!(beat[3], "phx_reply");
        ws.close(None).await.unwrap();
        assert!(matches!(
            ws.next().await,
            Some(Ok(Message::Close(_))) | None
        ));
    }

    #[tokio::test]
    async fn ready_answers_200_and_other_paths_404() {
        let listener = bind().await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(accept(listener, Arc::new(Hub::new(1))));
        for (path, status) in [("/ready", "200"), ("/metrics", "404")] {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut answer = String::new();
            tcp.read_to_string(&mut answer).await.unwrap();
            assert_eq!(answer.split_whitespace().nth(1), Some(status), "{path}");
        }
    }

    #[test]
    fn a_full_queue_marks_the_socket_slow() {
        let conn = Conn::default();
        for _ in 0..QUEUE_FRAMES {
            conn.push(Bytes::from_static(b"f"));
        }
        assert!(!conn.queue.lock().unwrap().slow);
        conn.push(Bytes::from_static(b"f"));
        let mut batch = VecDeque::new();
        assert!(drain(&conn, &mut batch), "overflow closes");
    }
}
