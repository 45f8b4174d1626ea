//! What the baseline server writes: WebSocket frames built once, header included, and shared
//! by reference ([`Bytes`]) with every socket that gets them.
//!
//! A delivery has the shape and size of the gateway's (docs/protocol.md 6.3, vsn 2): the same
//! keys, columns and record as the events table's, so both servers move the same bytes.

use bytes::Bytes;
use realtime_gateway::protocol::{self, Vsn};
use realtime_gateway::socket::frame;

use crate::client::EVENTS_TABLE;

/// A text frame carrying `text`.
pub(crate) fn text(text: &str) -> Bytes {
    frame::text(text)
}

/// A close frame with `code` and `reason`.
pub(crate) fn close(code: u16, reason: &str) -> Bytes {
    frame::close(code, reason)
}

/// A pong answering a ping's `payload`.
pub(crate) fn pong(payload: &[u8]) -> Bytes {
    frame::pong(payload)
}

/// The delivery of row `n` of run `run` (row id `id`) on `topic`, as the gateway would send it
/// for an INSERT into the events table; `filler` is the row's `payload` column (ASCII, no
/// character that JSON escapes).
pub(crate) fn delivery(topic: &str, id: u64, run: i64, n: u64, filler: &str) -> Bytes {
    let stamp = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ");
    let body = format!(
        "{{\"ids\":[1],\"data\":{{\"schema\":\"public\",\"table\":\"{EVENTS_TABLE}\",\"type\":\"INSERT\",\
         \"commit_timestamp\":\"{stamp}\",\"columns\":[{{\"name\":\"id\",\"type\":\"int8\"}},\
         {{\"name\":\"run\",\"type\":\"int8\"}},{{\"name\":\"n\",\"type\":\"int8\"}},\
         {{\"name\":\"payload\",\"type\":\"text\"}}],\"record\":{{\"id\":{id},\"run\":{run},\
         \"n\":{n},\"payload\":\"{filler}\"}},\"errors\":null}}}}"
    );
    text(&protocol::encode_text(
        Vsn::V2,
        None,
        None,
        topic,
        "postgres_changes",
        &body,
    ))
}

/// A reply (`phx_reply`) to the push `msg_ref` of membership `join_ref` on `topic`.
pub(crate) fn reply(
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    response: &serde_json::Value,
) -> Bytes {
    let payload = serde_json::json!({"status": "ok", "response": response});
    text(&protocol::encode_text(
        Vsn::V2,
        join_ref,
        msg_ref,
        topic,
        "phx_reply",
        &payload.to_string(),
    ))
}

/// The `system` message confirming a Postgres Changes subscription on `topic`.
pub(crate) fn subscribed(join_ref: Option<&str>, topic: &str) -> Bytes {
    let channel = topic.strip_prefix("realtime:").unwrap_or(topic);
    let payload = serde_json::json!({
        "channel": channel,
        "extension": "postgres_changes",
        "message": "Subscribed to PostgreSQL",
        "status": "ok",
    });
    text(&protocol::encode_text(
        Vsn::V2,
        join_ref,
        None,
        topic,
        "system",
        &payload.to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_use_the_shortest_form() {
        assert_eq!(&text("hi")[..], b"\x81\x02hi");
        let medium = text(&"m".repeat(300));
        assert_eq!(&medium[..4], &[0x81, 126, 1, 44]);
        assert_eq!(medium.len(), 304);
        let large = text(&"l".repeat(70_000));
        assert_eq!(&large[..2], &[0x81, 127]);
        assert_eq!(&large[2..10], &70_000u64.to_be_bytes());
        assert_eq!(&close(4001, "slow")[..], b"\x88\x06\x0f\xa1slow");
    }

    #[test]
    fn a_delivery_reads_like_the_gateways() {
        let frame = delivery("realtime:loadtest-0", 5, 42, 7, "xxx");
        let text = std::str::from_utf8(&frame[4..]).unwrap();
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(v[3], "postgres_changes");
        assert_eq!(v[4]["data"]["record"]["payload"], "xxx");
        let d = crate::scan::delivery(text.as_bytes()).unwrap();
        assert_eq!(
            (d.topic, d.table, d.run, d.n),
            ("realtime:loadtest-0", EVENTS_TABLE, 42, 7)
        );
        assert_eq!(d.commit_timestamp.map(str::len), Some(24));
    }
}
