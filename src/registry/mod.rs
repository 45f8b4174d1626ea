//! The subscription registry: every channel a client joins is a row of
//! `public.realtime_subscription_registry`, kept current; plus this node's row in
//! `realtime.nodes`, the connection slots it releases, and the audit log.
//!
//! Sessions report joins, leaves and slot releases through a [`Registry`] handle that never
//! waits; a writer task applies them in batches, off the message path. Pending writes are
//! coalesced (a row joined and left during a database outage is written once, closed), retried
//! with exponential back-off while the database is down, and flushed at shutdown. The reaper's
//! tick hands the writer the heartbeats of that interval, written in one statement with the
//! node's own heartbeat and the cleanup of rows left by lost nodes.

pub mod store;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// Most audit records kept while the database is unreachable; older ones are dropped (and
/// counted) past it.
const MAX_PENDING_AUDIT: usize = 100_000;
/// Writes are flushed at least this often.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Why a registry row ended (`close_reason`).
pub type CloseReason = &'static str;

/// A channel joined: one registry row.
#[derive(Debug, Clone)]
pub struct JoinRow {
    /// Row id (chosen here so the row can be closed by id).
    pub id: Uuid,
    /// Stable id of this channel join: `<connection id>:<join ref>`.
    pub subscription_id: String,
    /// Channel name (topic without `realtime:`).
    pub channel_name: String,
    /// JWT `sub`, when a UUID.
    pub user_id: Option<Uuid>,
    /// Join config `component`, else the socket's `component` parameter.
    pub component_name: Option<String>,
    /// `[{event, schema, table, filter}]` as joined.
    pub table_filters: Value,
    /// The connection.
    pub connection_id: Uuid,
    /// Remote address.
    pub remote_addr: String,
    /// When it was joined.
    pub created_at: DateTime<Utc>,
}

/// An audit-log record.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    /// `cap_refused`, `cap_warning`, `reaped`, `slow_consumer`, `node_lost`, `auth_failed`, ...
    pub kind: &'static str,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// The user concerned, if known.
    pub user_id: Option<Uuid>,
    /// The client address, if any.
    pub remote_addr: Option<String>,
    /// Details.
    pub detail: Value,
}

#[derive(Debug)]
enum Event {
    Joined(JoinRow),
    Left {
        id: Uuid,
        reason: CloseReason,
        at: DateTime<Utc>,
    },
    Release {
        slot: i32,
        connection: Uuid,
    },
    Audit(AuditRecord),
    Tick {
        heartbeats: Vec<Uuid>,
        done: oneshot::Sender<()>,
    },
    Shutdown(oneshot::Sender<()>),
}

/// Handle for reporting to the registry; cheap to clone, never waits.
#[derive(Debug, Clone)]
pub struct Registry {
    tx: mpsc::UnboundedSender<Event>,
    node_id: Arc<str>,
}

/// What the writer needs to know.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This node.
    pub node_id: String,
    /// Address served, recorded in the node row.
    pub listen_addr: String,
    /// The connection cap.
    pub max_connections: u32,
    /// A node silent this long is lost.
    pub stale_timeout: Duration,
    /// Audit rows older than this are pruned.
    pub audit_retention: Duration,
}

impl Registry {
    /// Prepares this node's rows (a previous run's rows are closed as `node_lost`, its slots
    /// freed, the slots table sized to the cap) and starts the writer task.
    ///
    /// # Errors
    /// When the database cannot be reached for the preparation.
    pub async fn start(
        pool: PgPool,
        settings: Settings,
        shutdown: &crate::shutdown::Shutdown,
    ) -> Result<Registry, crate::pg::Error> {
        store::prepare_node(&pool, &settings).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let node_id: Arc<str> = Arc::from(settings.node_id.as_str());
        let writer = Writer {
            pool,
            settings,
            rx,
            pending: Pending::default(),
        };
        // On the final tracker: it records what sessions report while they close, and ends
        // after writing this node's end ([`Registry::shutdown`]).
        shutdown.spawn_final("registry_writer", writer.run());
        Ok(Registry { tx, node_id })
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Records a channel join.
    pub fn joined(&self, row: JoinRow) {
        self.send(Event::Joined(row));
    }

    /// Records the end of a channel join.
    pub fn left(&self, id: Uuid, reason: CloseReason) {
        self.send(Event::Left {
            id,
            reason,
            at: Utc::now(),
        });
    }

    /// Frees a connection slot.
    pub fn release_slot(&self, slot: i32, connection: Uuid) {
        self.send(Event::Release { slot, connection });
    }

    /// Appends to the audit log.
    pub fn audit(
        &self,
        kind: &'static str,
        user_id: Option<Uuid>,
        remote: Option<SocketAddr>,
        detail: Value,
    ) {
        self.send(Event::Audit(AuditRecord {
            kind,
            at: Utc::now(),
            user_id,
            remote_addr: remote.map(|a| a.to_string()),
            detail,
        }));
    }

    /// Writes the heartbeats of `connections` and this node's own heartbeat, and cleans up
    /// after lost nodes; completes once attempted.
    pub async fn tick(&self, connections: Vec<Uuid>) {
        let (done, wait) = oneshot::channel();
        self.send(Event::Tick {
            heartbeats: connections,
            done,
        });
        // The writer answers every tick unless it has stopped.
        let _answered = wait.await;
    }

    /// Flushes what is pending, closes this node's remaining rows as `shutdown`, frees its
    /// slots and removes its node row; waits at most `patience`.
    pub async fn shutdown(&self, patience: Duration) {
        let (done, wait) = oneshot::channel();
        self.send(Event::Shutdown(done));
        if tokio::time::timeout(patience, wait).await.is_err() {
            tracing::warn!("registry not flushed before the shutdown deadline");
        }
    }

    fn send(&self, event: Event) {
        // The writer lives as long as the gateway; after shutdown there is nothing to record.
        let _sent = self.tx.send(event);
    }
}

/// How and when a row ended, if it did.
type RowEnd = Option<(CloseReason, DateTime<Utc>)>;

/// Writes not yet applied.
#[derive(Debug, Default)]
struct Pending {
    /// Rows to insert, with their end if it came before the insert.
    inserts: HashMap<Uuid, (JoinRow, RowEnd)>,
    /// Ends of rows already inserted.
    closes: HashMap<Uuid, (CloseReason, DateTime<Utc>)>,
    /// Slots to free.
    releases: Vec<(i32, Uuid)>,
    /// Audit records to append.
    audit: Vec<AuditRecord>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.inserts.is_empty()
            && self.closes.is_empty()
            && self.releases.is_empty()
            && self.audit.is_empty()
    }
}

struct Writer {
    pool: PgPool,
    settings: Settings,
    rx: mpsc::UnboundedReceiver<Event>,
    pending: Pending,
}

impl Writer {
    #[tracing::instrument(name = "registry", skip_all)]
    async fn run(mut self) {
        let mut backoff = Duration::from_millis(100);
        let mut retry_at: Option<tokio::time::Instant> = None;
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let event = tokio::select! {
                event = self.rx.recv() => event,
                _ = flush.tick() => {
                    let due = retry_at.is_none_or(|at| tokio::time::Instant::now() >= at);
                    if due && !self.pending.is_empty() {
                        match self.flush().await {
                            Ok(()) => { backoff = Duration::from_millis(100); retry_at = None; }
                            Err(e) => {
                                tracing::warn!(error = %e, "registry write failed; will retry");
                                metrics::counter!("gateway_registry_write_failures_total").increment(1);
                                retry_at = Some(tokio::time::Instant::now() + backoff);
                                backoff = (backoff * 2).min(Duration::from_secs(5));
                            }
                        }
                    }
                    continue;
                }
            };
            match event {
                Some(Event::Joined(row)) => {
                    self.pending.inserts.insert(row.id, (row, None));
                }
                Some(Event::Left { id, reason, at }) => match self.pending.inserts.get_mut(&id) {
                    Some(entry) => entry.1 = Some((reason, at)),
                    None => {
                        self.pending.closes.entry(id).or_insert((reason, at));
                    }
                },
                Some(Event::Release { slot, connection }) => {
                    self.pending.releases.push((slot, connection));
                }
                Some(Event::Audit(record)) => {
                    if self.pending.audit.len() >= MAX_PENDING_AUDIT {
                        self.pending.audit.remove(0);
                        metrics::counter!("gateway_registry_audit_dropped_total").increment(1);
                    }
                    self.pending.audit.push(record);
                }
                Some(Event::Tick { heartbeats, done }) => {
                    if let Err(e) = self.flush().await {
                        tracing::warn!(error = %e, "registry write failed; will retry");
                    }
                    if let Err(e) = store::tick(&self.pool, &self.settings, &heartbeats).await {
                        tracing::warn!(error = %e, "registry heartbeat failed");
                        metrics::counter!("gateway_registry_write_failures_total").increment(1);
                    }
                    let _answered = done.send(());
                }
                Some(Event::Shutdown(done)) => {
                    // Sessions have closed and reported; write everything, then the node's end.
                    while let Ok(event) = self.rx.try_recv() {
                        self.absorb(event);
                    }
                    loop {
                        match self.flush().await {
                            Ok(()) => break,
                            Err(e) => {
                                tracing::warn!(error = %e, "registry flush at shutdown failed; retrying");
                                tokio::time::sleep(backoff).await;
                                backoff = (backoff * 2).min(Duration::from_secs(2));
                            }
                        }
                    }
                    if let Err(e) = store::retire_node(&self.pool, &self.settings.node_id).await {
                        tracing::warn!(error = %e, "cannot retire this node's registry rows");
                    }
                    let _answered = done.send(());
                    return;
                }
                None => return,
            }
        }
    }

    /// Applies an event outside the main loop (at shutdown).
    fn absorb(&mut self, event: Event) {
        match event {
            Event::Joined(row) => {
                self.pending.inserts.insert(row.id, (row, None));
            }
            Event::Left { id, reason, at } => match self.pending.inserts.get_mut(&id) {
                Some(entry) => entry.1 = Some((reason, at)),
                None => {
                    self.pending.closes.entry(id).or_insert((reason, at));
                }
            },
            Event::Release { slot, connection } => self.pending.releases.push((slot, connection)),
            Event::Audit(record) => self.pending.audit.push(record),
            Event::Tick { done, .. } | Event::Shutdown(done) => {
                let _answered = done.send(());
            }
        }
    }

    /// Writes everything pending in one transaction; on failure nothing is lost.
    async fn flush(&mut self) -> Result<(), crate::pg::Error> {
        if self.pending.is_empty() {
            return Ok(());
        }
        store::apply(&self.pool, &self.settings.node_id, &self.pending).await?;
        self.pending = Pending::default();
        Ok(())
    }
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}
