//! Limits: the connection cap, shared exactly by every node on one database, and the
//! per-connection channel cap.
//!
//! A connection's slot is a row of `realtime.connection_slots` taken at upgrade and held by an
//! owned permit in the session task, so it is released however the session ends (the release is
//! written by the registry writer, off the message path). A node that dies has its slots freed by
//! the other nodes once it is stale. Each reaper tick audits a `cap_warning` while 90 % or more
//! of the slots are taken.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use sqlx::PgPool;
use uuid::Uuid;

use crate::registry::{store, Registry};

/// The caps of one node.
#[derive(Debug, Clone)]
pub struct Limits {
    pool: PgPool,
    registry: Registry,
    max_connections: u32,
    in_use: Arc<AtomicUsize>,
    /// Most channels one connection may join.
    pub max_channels_per_connection: usize,
}

/// A held connection slot; dropping it frees the slot.
#[derive(Debug)]
pub struct ConnectionPermit {
    slot: i32,
    connection: Uuid,
    registry: Registry,
    in_use: Arc<AtomicUsize>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.in_use.fetch_sub(1, Ordering::AcqRel);
        self.registry.release_slot(self.slot, self.connection);
    }
}

impl Limits {
    /// Caps of `max_connections` open connections across the cluster and `max_channels`
    /// channels per connection.
    pub fn new(
        pool: PgPool,
        registry: Registry,
        max_connections: u32,
        max_channels: usize,
    ) -> Limits {
        Limits {
            pool,
            registry,
            max_connections,
            in_use: Arc::default(),
            max_channels_per_connection: max_channels,
        }
    }

    /// Takes a connection slot for `connection`: `Ok(None)` when the cluster is at its cap.
    ///
    /// # Errors
    /// When the database cannot be asked (the connection is then refused too: the cap cannot
    /// be checked).
    pub async fn acquire_connection(
        &self,
        connection: Uuid,
    ) -> Result<Option<ConnectionPermit>, crate::pg::Error> {
        let slot = store::acquire_slot(
            &self.pool,
            self.registry.node_id(),
            connection,
            self.max_connections,
        )
        .await?;
        let Some(slot) = slot else {
            return Ok(None);
        };
        self.in_use.fetch_add(1, Ordering::AcqRel);
        Ok(Some(ConnectionPermit {
            slot,
            connection,
            registry: self.registry.clone(),
            in_use: Arc::clone(&self.in_use),
        }))
    }

    /// This node's open connections.
    pub fn connections_in_use(&self) -> usize {
        self.in_use.load(Ordering::Acquire)
    }

    /// The cluster-wide cap.
    pub fn max_connections(&self) -> u32 {
        self.max_connections
    }
}
