//! Limits: the connection cap, shared exactly by every node on one database, and the
//! per-connection channel cap.
//!
//! A connection's slot is a row of `realtime.connection_slots` taken at upgrade and held by an
//! owned permit in the session task, so it is released however the session ends (the release is
//! written by the registry writer, off the message path). Slots are taken only for connections
//! that asked, so the cap stays exact across nodes; concurrent upgrades are batched: one task
//! takes the slots of every upgrade waiting at that moment in one statement, so a connect storm
//! costs the database one round trip per batch rather than one per connection. A node that dies has its slots freed by
//! the other nodes once it is stale. Each reaper tick audits a `cap_warning` while 90 % or more
//! of the slots are taken.
//!
//! The per-client limits ([`client`]: failed authentications per address, across nodes;
//! connections per address and per user) and the per-connection rates ([`rate`]: joins and
//! client events) live in the submodules.

pub mod client;
pub mod rate;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::registry::store::{self, SlotAnswer};
use crate::registry::Registry;
use crate::shutdown::Shutdown;

/// Most upgrades whose slots are taken in one statement.
const MAX_BATCH: usize = 512;

/// Why a limit could not be checked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The database could not be asked for slots (shared by every upgrade of the failed batch).
    #[error("cannot check the connection cap: {0}")]
    Database(#[source] Arc<crate::pg::Error>),
    /// The database did not answer about failed authentications, or not in time (shared by
    /// every upgrade of the failed batch).
    #[error("cannot check failed authentications: {0}")]
    AuthFailures(#[source] Arc<crate::pg::Error>),
    /// The node is shutting down.
    #[error("the node's limits are not being served")]
    Stopped,
}

/// The caps of one node.
#[derive(Debug, Clone)]
pub struct Limits {
    requests: mpsc::UnboundedSender<Request>,
    max_connections: u32,
    /// This node's count of open connections, and where their slots are given back.
    held: Arc<Held>,
    /// Most channels one connection may join.
    pub max_channels_per_connection: usize,
    /// Limits per client address and user.
    pub clients: Arc<client::ClientLimits>,
}

/// An upgrade waiting for a slot.
#[derive(Debug)]
struct Request {
    connection: Uuid,
    /// The client's address and user, counted across the cluster when a per-client limit is on.
    client: (std::net::IpAddr, Option<Uuid>),
    reply: oneshot::Sender<Result<SlotAnswer, Error>>,
}

/// What an upgrade got.
#[derive(Debug)]
pub enum Acquired {
    /// A slot.
    Permit(ConnectionPermit),
    /// None: the cluster is at its cap.
    Full,
    /// None: the client's address or user holds its limit of connections across the cluster.
    Refused(client::Refused),
}

/// What every permit of a node shares: one pointer in each connection's task, not a copy.
#[derive(Debug)]
struct Held {
    /// Open connections of this node.
    in_use: AtomicUsize,
    /// Where a dropped permit's slot is given back.
    registry: Registry,
}

/// A held connection slot; dropping it frees the slot.
#[derive(Debug)]
pub struct ConnectionPermit {
    slot: i32,
    connection: Uuid,
    held: Arc<Held>,
    client: Option<client::ClientGuard>,
}

impl ConnectionPermit {
    /// Holds the connection's per-client counts for as long as the slot.
    pub fn hold(&mut self, guard: client::ClientGuard) {
        self.client = Some(guard);
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.held.in_use.fetch_sub(1, Ordering::AcqRel);
        self.held.registry.release_slot(self.slot, self.connection);
    }
}

impl Limits {
    /// Caps of `max_connections` open connections across the cluster and `max_channels`
    /// channels per connection. Starts the task that takes slots on the shutdown tracker; it
    /// ends at shutdown or when the last handle is dropped.
    pub fn new(
        pool: PgPool,
        registry: Registry,
        max_connections: u32,
        max_channels: usize,
        clients: client::ClientLimits,
        shutdown: &Shutdown,
    ) -> Limits {
        let clients = Arc::new(clients);
        shutdown.spawn(
            "auth_failure_pruner",
            prune_auth_failures(Arc::clone(&clients), shutdown.clone()),
        );
        let (requests, queue) = mpsc::unbounded_channel();
        let per_client = (clients.max_per_addr(), clients.max_per_user());
        let taker = take_slots(pool, registry.clone(), max_connections, per_client, queue);
        let stop = shutdown.clone();
        shutdown.spawn("slot_taker", async move {
            tokio::select! {
                () = taker => {}
                () = stop.cancelled() => {}
            }
        });
        Limits {
            requests,
            max_connections,
            held: Arc::new(Held {
                in_use: AtomicUsize::new(0),
                registry,
            }),
            max_channels_per_connection: max_channels,
            clients,
        }
    }

    /// Takes a connection slot for `connection` of the client at `addr` (user `user`), unless
    /// the cluster is at its cap or, with a per-client limit on, the address or user holds its
    /// limit of connections across the cluster.
    ///
    /// # Errors
    /// When the database cannot be asked (the connection is then refused too: the cap cannot
    /// be checked), or the node is stopping.
    pub async fn acquire_connection(
        &self,
        connection: Uuid,
        addr: std::net::IpAddr,
        user: Option<Uuid>,
    ) -> Result<Acquired, Error> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request {
                connection,
                client: (addr, user),
                reply,
            })
            .map_err(|_| Error::Stopped)?;
        let slot = match answer.await.map_err(|_| Error::Stopped)?? {
            SlotAnswer::Taken(slot) => slot,
            SlotAnswer::Full => return Ok(Acquired::Full),
            SlotAnswer::PerAddr => return Ok(Acquired::Refused(client::Refused::PerAddr)),
            SlotAnswer::PerUser => return Ok(Acquired::Refused(client::Refused::PerUser)),
        };
        self.held.in_use.fetch_add(1, Ordering::AcqRel);
        Ok(Acquired::Permit(ConnectionPermit {
            slot,
            connection,
            held: Arc::clone(&self.held),
            client: None,
        }))
    }

    /// This node's open connections.
    pub fn connections_in_use(&self) -> usize {
        self.held.in_use.load(Ordering::Acquire)
    }

    /// The cluster-wide cap.
    pub fn max_connections(&self) -> u32 {
        self.max_connections
    }
}

/// Deletes the failed-authentication windows that are over, once per window (between 1 s and
/// 1 min), until shutdown.
async fn prune_auth_failures(clients: Arc<client::ClientLimits>, shutdown: Shutdown) {
    let period = clients.window().clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(60),
    );
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        if let Err(e) = clients.prune().await {
            tracing::debug!(error = %e, "cannot prune failed authentications");
        }
    }
}

/// Serves slot requests: every request waiting when a batch starts goes into it (up to
/// [`MAX_BATCH`]); requests arriving meanwhile wait for the next one.
async fn take_slots(
    pool: PgPool,
    registry: Registry,
    cap: u32,
    (max_per_addr, max_per_user): (u32, u32),
    mut queue: mpsc::UnboundedReceiver<Request>,
) {
    let mut batch: Vec<Request> = Vec::new();
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        metrics::histogram!("gateway_limits_slot_batch_size").record(batch.len() as f64);
        // Without per-client limits one statement takes the whole batch's slots; with them,
        // each connection's address and user are counted across the cluster first.
        let answers = if max_per_addr == 0 && max_per_user == 0 {
            let connections: Vec<Uuid> = batch.iter().map(|r| r.connection).collect();
            store::acquire_slots(&pool, registry.node_id(), &connections, cap)
                .await
                .map(|taken| {
                    taken
                        .into_iter()
                        .map(|(slot, c)| (c, SlotAnswer::Taken(slot)))
                        .collect::<std::collections::HashMap<_, _>>()
                })
        } else {
            let clients: Vec<store::ClientSlot> = batch
                .iter()
                .map(|r| (r.connection, r.client.0, r.client.1))
                .collect();
            store::acquire_slots_limited(
                &pool,
                registry.node_id(),
                &clients,
                cap,
                max_per_addr,
                max_per_user,
            )
            .await
            .map(|answers| answers.into_iter().collect())
        };
        match answers {
            Ok(answers) => {
                for request in batch.drain(..) {
                    let answer = answers
                        .get(&request.connection)
                        .copied()
                        .unwrap_or(SlotAnswer::Full);
                    let slot = match answer {
                        SlotAnswer::Taken(slot) => Some(slot),
                        _ => None,
                    };
                    if let Some(slot) = slot {
                        // Before any release of it, on the same queue.
                        registry.slot_taken(slot, request.connection);
                    }
                    if request.reply.send(Ok(answer)).is_err() {
                        // The upgrade is gone (its client left while waiting): free its slot.
                        if let Some(slot) = slot {
                            registry.release_slot(slot, request.connection);
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(
                    "slot acquisition for {} connections failed: {}",
                    batch.len(),
                    crate::error::chain(&e)
                );
                let error = Error::Database(Arc::new(e));
                for request in batch.drain(..) {
                    let _gone = request.reply.send(Err(error.clone()));
                }
            }
        }
    }
}
