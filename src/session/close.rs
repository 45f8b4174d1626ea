//! How a session ends: the close code and reason the client sees, and the registry's
//! `close_reason`, in one table.
//!
//! | end | close code | reason text | client should |
//! |---|---|---|---|
//! | client closed | none (the client's own) | | |
//! | shutdown | 1001 | `server shutting down` | reconnect (another node, or this one when back) |
//! | heartbeat timeout | 4000 | `heartbeat timeout` | reconnect |
//! | slow consumer | 4001 | `slow consumer` | reconnect, and read faster |
//! | operator | 4002 | `closed by operator` | reconnect |
//! | no channel joined within `--join-timeout` | 4003 | `no channel joined` | reconnect when it has a channel to join |
//! | cap reclaimed: the node, declared lost during an outage, found the cluster at its cap | 4004 | `connection cap reclaimed` | reconnect (with back-off) |
//!
//! Codes 1000 and 1001 are normal ends; 4000–4099 are ends the client recovers from by
//! reconnecting with back-off; 4100–4199 are reserved for terminal ends (the client must not
//! reconnect with the same credentials), of which the gateway sends none today. Every Phoenix
//! client (realtime-js, realtime-py, phoenix) reconnects after any of these codes.

/// Why a session ended; each has its close code, close reason text and registry reason.
///
/// Close codes: 1000 and 1001 are normal ends and 4000–4099 are ends the client should recover
/// from by reconnecting (with back-off); the gateway sends no terminal codes today.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The client closed the socket (or it broke).
    SocketClosed,
    /// The gateway is shutting down.
    Shutdown,
    /// The outbound queue overflowed.
    SlowConsumer,
    /// No heartbeat within the stale timeout.
    Reaped,
    /// An operator closed it.
    Kicked,
    /// It had no channel joined for `--join-timeout`.
    NoChannel,
    /// The node was declared lost during an outage and, back, found the cluster at its cap:
    /// its newest connections are closed so that the cap holds.
    CapReclaimed,
}

impl SessionEnd {
    /// The close frame the gateway sends, if any (none when the client closed first).
    pub fn close_frame(self) -> Option<(u16, &'static str)> {
        match self {
            SessionEnd::SocketClosed => None,
            SessionEnd::Shutdown => Some((1001, "server shutting down")),
            SessionEnd::SlowConsumer => Some((4001, "slow consumer")),
            SessionEnd::Reaped => Some((4000, "heartbeat timeout")),
            SessionEnd::Kicked => Some((4002, "closed by operator")),
            SessionEnd::NoChannel => Some((4003, "no channel joined")),
            SessionEnd::CapReclaimed => Some((4004, "connection cap reclaimed")),
        }
    }

    /// The registry's `close_reason` for rows this end closes.
    pub fn registry_reason(self) -> &'static str {
        match self {
            SessionEnd::SocketClosed => "socket_closed",
            SessionEnd::Shutdown => "shutdown",
            SessionEnd::SlowConsumer => "slow_consumer",
            SessionEnd::Reaped => "reaped",
            SessionEnd::Kicked => "kicked",
            // A socket without channels has no registry rows to close.
            SessionEnd::NoChannel => "socket_closed",
            SessionEnd::CapReclaimed => "cap_reclaimed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [SessionEnd; 7] = [
        SessionEnd::SocketClosed,
        SessionEnd::Shutdown,
        SessionEnd::SlowConsumer,
        SessionEnd::Reaped,
        SessionEnd::Kicked,
        SessionEnd::NoChannel,
        SessionEnd::CapReclaimed,
    ];

    /// Guards the table in the module header: every code the gateway sends is a normal end or
    /// one the clients reconnect from, and every end has its own registry reason.
    #[test]
    fn close_codes_are_in_the_documented_ranges() {
        for end in ALL {
            if let Some((code, reason)) = end.close_frame() {
                assert!(
                    code == 1001 || (4000..4100).contains(&code),
                    "{end:?}: {code}"
                );
                assert!(!reason.is_empty() && reason.len() < 123, "{end:?}");
            }
        }
        let mut reasons: Vec<&str> = ALL
            .iter()
            .filter(|e| **e != SessionEnd::NoChannel)
            .map(|e| e.registry_reason())
            .collect();
        reasons.sort_unstable();
        reasons.dedup();
        assert_eq!(
            reasons.len(),
            6,
            "ends that close rows each have their own reason"
        );
    }
}
