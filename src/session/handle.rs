//! What the rest of the gateway may see of, and do to, a live session: its [`SessionHandle`],
//! and the node's table of them ([`Sessions`]), used by the reaper and the admin side.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

use super::close::SessionEnd;
use crate::conn::ConnId;
use crate::outbound::Outbound;

/// What other parts of the gateway (reaper, admin, tests) may see and do to a live session.
#[derive(Debug)]
pub struct SessionHandle {
    /// Remote address.
    pub peer: SocketAddr,
    /// The connection's id.
    pub connection_id: uuid::Uuid,
    /// The socket token's user, if any.
    pub user_id: Option<uuid::Uuid>,
    /// The socket's `component` parameter, if given.
    pub component: Option<String>,
    /// Milliseconds since the Unix epoch when the socket was upgraded.
    pub connected_at_ms: u64,
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

/// The live sessions of this node, by connection id; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Sessions {
    map: Arc<DashMap<ConnId, Arc<SessionHandle>>>,
    next_id: Arc<AtomicU64>,
}

impl Sessions {
    /// A fresh connection id of this node.
    pub(super) fn next_id(&self) -> ConnId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(super) fn insert(&self, id: ConnId, handle: Arc<SessionHandle>) {
        self.map.insert(id, handle);
    }

    pub(super) fn remove(&self, id: ConnId) {
        self.map.remove(&id);
        crate::room::give_back_shared(&self.map);
    }

    /// How many sessions are live.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The live session of connection `connection_id` (the registry's and the slot's id), if it
    /// is on this node; found by a walk of the table (for operators, not the message path).
    pub fn by_connection_id(&self, connection_id: uuid::Uuid) -> Option<Arc<SessionHandle>> {
        self.map
            .iter()
            .find(|e| e.value().connection_id == connection_id)
            .map(|e| Arc::clone(e.value()))
    }

    /// The live session of this node's connection `id`, if any.
    pub fn get(&self, id: ConnId) -> Option<Arc<SessionHandle>> {
        self.map.get(&id).map(|e| Arc::clone(e.value()))
    }

    /// A snapshot of the live sessions' handles (no lock is held afterwards).
    pub fn handles(&self) -> Vec<Arc<SessionHandle>> {
        self.map.iter().map(|e| Arc::clone(e.value())).collect()
    }

    /// Calls `f` on every live session's handle while iterating the table's shards.
    pub fn for_each(&self, mut f: impl FnMut(&SessionHandle)) {
        for entry in self.map.iter() {
            f(entry.value());
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
