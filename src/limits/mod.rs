//! Limits: the connection cap, shared exactly by every node on one database, and the
//! per-connection channel cap.
//!
//! A connection's slot is a row of `realtime.connection_slots` taken at upgrade and held by an
//! owned permit in the session task, so it is released however the session ends (the release is
//! written by the registry writer, off the message path). Slots are taken only for connections
//! that asked, so the cap stays exact across nodes; concurrent upgrades are batched (`batch`):
//! one task takes the slots of every upgrade waiting at that moment together, in one statement
//! bounded in time: a statement that fails takes no slot, and the slots of one whose answer never
//! arrived are freed by a later reaper tick, as held for no connection. A node that dies has its
//! slots freed by the other nodes once it is stale. Each reaper tick audits a `cap_warning` while
//! 90 % or more of the slots are taken.
//!
//! The per-client limits ([`client`]: failed authentications per address, across nodes;
//! connections per address and per user) and the per-connection rates ([`rate`]: joins and
//! client events) live in the submodules.

mod batch;
pub mod client;
pub mod rate;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use crate::registry::store::{self, SlotAnswer};
use crate::registry::Registry;
use crate::shutdown::Shutdown;

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
    slots: batch::Batcher<store::ClientSlot, Acquired>,
    max_connections: u32,
    /// This node's count of open connections, and where their slots are given back.
    held: Arc<Held>,
    /// Most channels one connection may join.
    pub max_channels_per_connection: usize,
    /// Limits per client address and user.
    pub clients: Arc<client::ClientLimits>,
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
        let held = Arc::new(Held {
            in_use: AtomicUsize::new(0),
            registry,
        });
        let taker = TakeSlots {
            pool,
            held: Arc::clone(&held),
            cap: max_connections,
            max_per_addr: clients.max_per_addr(),
            max_per_user: clients.max_per_user(),
        };
        Limits {
            slots: batch::Batcher::spawn("slot_taker", taker, shutdown),
            max_connections,
            held,
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
        self.slots.ask((connection, addr, user)).await
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
    let period = clients
        .window()
        .clamp(Duration::from_secs(1), Duration::from_secs(60));
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

/// How long a batch's slot statement may take before its upgrades are refused as temporarily
/// unavailable (the next batch is then served). The statement itself gives up on the locks it
/// waits for after 4 s in all (migrations 0029 and, with per-client limits, 0031), so it seldom
/// outlives this bound; one that commits after it anyway leaves slots held for no connection,
/// which a later tick frees ([`Registry::tick`]). It must stay above the statements' own
/// `lock_timeout` (`tests/slots.rs` compares them).
pub const SLOT_TIMEOUT: Duration = Duration::from_secs(5);

/// Takes the slots of a batch of upgrades in one statement.
struct TakeSlots {
    pool: PgPool,
    held: Arc<Held>,
    cap: u32,
    max_per_addr: u32,
    max_per_user: u32,
}

impl TakeSlots {
    /// The batch's slots, by connection.
    async fn take(
        &self,
        clients: &[store::ClientSlot],
    ) -> Result<HashMap<Uuid, SlotAnswer>, crate::pg::Error> {
        let node = self.held.registry.node_id();
        Ok(if self.max_per_addr == 0 && self.max_per_user == 0 {
            let connections: Vec<Uuid> = clients.iter().map(|c| c.0).collect();
            store::acquire_slots(&self.pool, node, &connections, self.cap)
                .await?
                .into_iter()
                .map(|(slot, c)| (c, SlotAnswer::Taken(slot)))
                .collect()
        } else {
            store::acquire_slots_limited(
                &self.pool,
                node,
                clients,
                self.cap,
                self.max_per_addr,
                self.max_per_user,
            )
            .await?
            .into_iter()
            .collect()
        })
    }
}

impl batch::Statement for TakeSlots {
    type Question = store::ClientSlot;
    type Answer = Acquired;
    type Answers = HashMap<Uuid, SlotAnswer>;
    const BATCH_SIZE: &'static str = "gateway_limits_slot_batch_size";
    const WHAT: &'static str = "slot acquisition";

    /// Without per-client limits one statement takes the whole batch's slots; with them, each
    /// connection's address and user are counted across the cluster first. No answer within
    /// [`SLOT_TIMEOUT`] fails the batch.
    async fn ask(
        &mut self,
        clients: &[store::ClientSlot],
    ) -> Result<HashMap<Uuid, SlotAnswer>, crate::pg::Error> {
        match tokio::time::timeout(SLOT_TIMEOUT, self.take(clients)).await {
            Ok(answers) => answers,
            Err(_) => Err(crate::pg::Error::Timeout(SLOT_TIMEOUT)),
        }
    }

    /// A taken slot becomes the connection's permit at once, recorded with the registry before
    /// any release of it (on the same queue): an upgrade that left before reading it drops the
    /// permit, which gives the slot back.
    fn answer(
        &mut self,
        answers: &mut HashMap<Uuid, SlotAnswer>,
        &(connection, _, _): &store::ClientSlot,
    ) -> Acquired {
        match answers.remove(&connection).unwrap_or(SlotAnswer::Full) {
            SlotAnswer::Taken(slot) => {
                self.held.registry.slot_taken(slot, connection);
                self.held.in_use.fetch_add(1, Ordering::AcqRel);
                Acquired::Permit(ConnectionPermit {
                    slot,
                    connection,
                    held: Arc::clone(&self.held),
                    client: None,
                })
            }
            SlotAnswer::Full => Acquired::Full,
            SlotAnswer::PerAddr => Acquired::Refused(client::Refused::PerAddr),
            SlotAnswer::PerUser => Acquired::Refused(client::Refused::PerUser),
        }
    }

    fn failed(error: Arc<crate::pg::Error>) -> Error {
        Error::Database(error)
    }
}
