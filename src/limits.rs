//! Limits: the connection cap and per-connection caps.
//!
//! A connection's slot is an owned permit held by its session task, so it is released however
//! the session ends. The cap counts this node's open WebSockets; counting across every node
//! sharing the database arrives with the registry.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The caps of one node.
#[derive(Debug, Clone)]
pub struct Limits {
    connections: Arc<Semaphore>,
    max_connections: usize,
    /// Most channels one connection may join.
    pub max_channels_per_connection: usize,
}

/// A held connection slot; dropping it frees the slot.
#[derive(Debug)]
pub struct ConnectionPermit {
    _permit: OwnedSemaphorePermit,
}

impl Limits {
    /// Caps of `max_connections` open connections and `max_channels` channels per connection.
    pub fn new(max_connections: u32, max_channels: usize) -> Limits {
        let max_connections = usize::try_from(max_connections).unwrap_or(usize::MAX);
        Limits {
            connections: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            max_channels_per_connection: max_channels,
        }
    }

    /// Takes a connection slot, or `None` when the cap is reached.
    pub async fn acquire_connection(&self) -> Option<ConnectionPermit> {
        Arc::clone(&self.connections)
            .try_acquire_owned()
            .ok()
            .map(|p| ConnectionPermit { _permit: p })
    }

    /// Connections open now.
    pub fn connections_in_use(&self) -> usize {
        self.max_connections - self.connections.available_permits()
    }
}
