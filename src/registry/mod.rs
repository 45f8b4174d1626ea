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
//!
//! One bad row never blocks the others: slot releases, registry rows, row ends and audit
//! records are written by statements of their own, a refused batch is split until the refused
//! rows are alone ([`batch`]), and a row that still fails is audited (`registry_row_failed`) and
//! counted (`gateway_registry_rows_failed_total`). Names are stored as bounded prefixes
//! ([`MAX_NAME_BYTES`]), and a token's user that `auth.users` does not know is recorded in
//! `claimed_user_id` with `user_id` null. Pending work is bounded ([`Settings`]); what is
//! dropped past the bound is counted and warned of once per overflow episode.
//!
//! The writer also keeps what the node really serves (`live`); a node declared lost while it
//! was only cut from the database writes its rows and slots back when it returns
//! (`reregister`), closing its newest connections if the cluster filled its cap meanwhile. A tick
//! that finds the node holding more slots than it has connections frees those held for no
//! connection for over a minute (a slot statement that committed but whose answer never came).

mod batch;
mod live;
mod reregister;
pub mod store;
mod writer;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// Longest channel and component name stored in a registry row, bytes; a longer one is stored
/// as its prefix (cut at a character boundary), so that no name can exceed an index row.
pub const MAX_NAME_BYTES: usize = 1024;
/// Longest join ref kept in a subscription id, bytes.
const MAX_JOIN_REF_BYTES: usize = 64;

/// Why a registry row ended (`close_reason`).
pub type CloseReason = &'static str;

/// A channel joined: one registry row.
#[derive(Debug, Clone)]
pub struct JoinRow {
    /// Row id (chosen here so the row can be closed by id).
    pub id: Uuid,
    /// Id of this channel join, unique among the node's active rows:
    /// `<connection id>:<join ref>:<join sequence>` ([`Registry::subscription_id`]).
    pub subscription_id: String,
    /// Channel name (topic without `realtime:`); stored as at most [`MAX_NAME_BYTES`].
    pub channel_name: String,
    /// JWT `sub`, when a UUID (stored in `claimed_user_id`, and in `user_id` when known).
    pub user_id: Option<Uuid>,
    /// Join config `component`, else the socket's `component` parameter.
    pub component_name: Option<String>,
    /// `[{event, schema, table, filter}]` as joined, kept as compact JSON text: only
    /// PostgreSQL reads it (a tree of maps and strings took about 0.7 KiB per channel in the
    /// node's live set, [`live`], allocator included).
    pub table_filters: Box<serde_json::value::RawValue>,
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
    /// `cap_refused`, `cap_warning`, `reaped`, `slow_consumer`, `node_lost`, `auth_refused`, ...
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
    Acquired {
        slot: i32,
        connection: Uuid,
    },
    Audit(AuditRecord),
    /// The user of an open row changed (a channel's new token names another `sub`).
    User {
        id: Uuid,
        user_id: Option<Uuid>,
    },
    Tick {
        heartbeats: Vec<Uuid>,
        /// When the tick was sent: slots taken since may not be reported to the writer yet.
        sent: std::time::Instant,
        done: oneshot::Sender<Vec<Uuid>>,
    },
    Shutdown(oneshot::Sender<()>),
}

/// Handle for reporting to the registry; cheap to clone, never waits.
#[derive(Debug, Clone)]
pub struct Registry {
    tx: mpsc::UnboundedSender<Event>,
    node_id: Arc<str>,
    /// Joins recorded by this node; makes subscription ids unique.
    joins: Arc<AtomicU64>,
    /// Longest audit detail kept whole, serialized, in bytes.
    max_detail_bytes: usize,
    /// What waits for the writer, for `gateway_registry_pending`.
    depth: Arc<writer::Depth>,
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
    /// Closed registry rows older than this are pruned.
    pub registry_retention: Duration,
    /// Most registry rows (joins and ends) waiting to be written; more are dropped and counted.
    pub max_pending_rows: usize,
    /// Most audit records waiting to be written; the oldest are dropped and counted past it.
    pub max_pending_audit: usize,
    /// Longest audit detail kept whole, serialized, in bytes; a longer one is recorded as its
    /// size and a prefix.
    pub max_audit_detail_bytes: usize,
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
        let max_detail_bytes = settings.max_audit_detail_bytes;
        let check_users = store::users_are_checked(&pool).await?;
        let depth = Arc::new(writer::Depth::default());
        let writer = writer::Writer::new(pool, settings, rx, check_users, Arc::clone(&depth));
        // On the final tracker: it records what sessions report while they close, and ends
        // after writing this node's end ([`Registry::shutdown`]).
        shutdown.spawn_final("registry_writer", writer.run());
        Ok(Registry {
            tx,
            node_id,
            joins: Arc::default(),
            max_detail_bytes,
            depth,
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// A subscription id for a join of `connection` with `join_ref` (none, or reused by the
    /// client, is fine): `<connection id>:<join ref>:<n>`, where `n` counts this node's joins, so
    /// ids never collide among the node's rows. The join ref is kept to its first 64 bytes.
    pub fn subscription_id(&self, connection: Uuid, join_ref: Option<&str>) -> String {
        let n = self.joins.fetch_add(1, Ordering::Relaxed) + 1;
        let join_ref = bounded_prefix(join_ref.unwrap_or(""), MAX_JOIN_REF_BYTES);
        format!("{connection}:{join_ref}:{n}")
    }

    /// Records a channel join; names longer than [`MAX_NAME_BYTES`] are cut to their prefix.
    pub fn joined(&self, mut row: JoinRow) {
        bound_in_place(&mut row.channel_name, MAX_NAME_BYTES);
        if let Some(component) = row.component_name.as_mut() {
            bound_in_place(component, MAX_NAME_BYTES);
        }
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

    /// Records that `connection` took `slot` (reported before the slot can be released), so
    /// that the node can take it back if it is declared lost while the connection is open.
    pub fn slot_taken(&self, slot: i32, connection: Uuid) {
        self.send(Event::Acquired { slot, connection });
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
            detail: bounded_detail(detail, self.max_detail_bytes),
        }));
    }

    /// Audits and counts a refused token or credential: an `auth_refused` record whose detail
    /// is `detail` (an object: the channel, the client's message, ...) with `stage` (`connect`,
    /// `join`, `access_token`, `rest`, `admin`) and a machine-readable `reason` (`token_expired`,
    /// `bad_signature`, `unknown_kid`, ...), and `gateway_auth_refused_total{stage, reason}`.
    /// Callers never put the token itself in `detail`. Like every audit record it waits in the
    /// writer's bounded queue (`--audit-max-pending`, oldest dropped first), so a flood of bad
    /// tokens costs bounded memory.
    pub fn auth_refused(
        &self,
        stage: &'static str,
        reason: &'static str,
        user_id: Option<Uuid>,
        remote: Option<SocketAddr>,
        mut detail: Value,
    ) {
        metrics::counter!("gateway_auth_refused_total", "stage" => stage, "reason" => reason)
            .increment(1);
        if let Value::Object(map) = &mut detail {
            map.insert("stage".to_owned(), Value::from(stage));
            map.insert("reason".to_owned(), Value::from(reason));
        } else {
            detail = serde_json::json!({"stage": stage, "reason": reason, "detail": detail});
        }
        self.audit("auth_refused", user_id, remote, detail);
    }

    /// Records that the open row `id` now acts for `user_id` (its channel took a token of
    /// another `sub`): `claimed_user_id` and `user_id` are rewritten as at a join.
    pub fn user_changed(&self, id: Uuid, user_id: Option<Uuid>) {
        self.send(Event::User { id, user_id });
    }

    /// Writes the heartbeats of `connections` and this node's own heartbeat, and cleans up
    /// after lost nodes; completes once attempted. When this node had been declared lost, its
    /// open channels and connection slots are registered again; the connections returned then
    /// found the cluster at its cap and must be closed (they were audited `cap_reclaimed`).
    /// Slots the node holds for none of its connections, taken over a minute ago, are freed
    /// (audited `slots_unknown_freed`).
    pub async fn tick(&self, connections: Vec<Uuid>) -> Vec<Uuid> {
        let (done, wait) = oneshot::channel();
        self.send(Event::Tick {
            heartbeats: connections,
            sent: std::time::Instant::now(),
            done,
        });
        // The writer answers every tick unless it has stopped.
        wait.await.unwrap_or_default()
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

    /// Registry and audit writes waiting: reported and not yet taken by the writer, plus those
    /// it holds until they are written.
    pub fn pending(&self) -> usize {
        self.depth.unread.load(Ordering::Relaxed) + self.depth.held.load(Ordering::Relaxed)
    }

    fn send(&self, event: Event) {
        self.depth.unread.fetch_add(1, Ordering::Relaxed);
        // The writer lives as long as the gateway; after shutdown there is nothing to record.
        if self.tx.send(event).is_err() {
            self.depth.unread.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// How and when a row ended.
type RowClose = (CloseReason, DateTime<Utc>);
/// How and when a row ended, if it did.
type RowEnd = Option<RowClose>;

/// The longest prefix of `text` of at most `max` bytes that ends at a character boundary.
pub fn bounded_prefix(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn bound_in_place(text: &mut String, max: usize) {
    let keep = bounded_prefix(text, max).len();
    text.truncate(keep);
}

/// `detail`, or, when it serializes to more than `max_bytes`, a stand-in saying how large it
/// was with a prefix of its text (cut at a character boundary): one client's oversized input
/// never becomes an oversized audit row.
fn bounded_detail(detail: Value, max_bytes: usize) -> Value {
    let text = detail.to_string();
    if text.len() <= max_bytes {
        return detail;
    }
    metrics::counter!("gateway_registry_audit_truncated_total").increment(1);
    let mut cut = (max_bytes / 2).min(text.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    serde_json::json!({"truncated": true, "bytes": text.len(), "prefix": &text[..cut]})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cut_at_a_character_boundary() {
        assert_eq!(bounded_prefix("room", 1024), "room");
        assert_eq!(bounded_prefix("", 0), "");
        assert_eq!(bounded_prefix("abcdef", 3), "abc");
        // "é" is two bytes: a cut inside it keeps the whole characters before it.
        assert_eq!(bounded_prefix("aé", 2), "a");
        assert_eq!(bounded_prefix("aé", 3), "aé");
        let long = "ü".repeat(20_000);
        let cut = bounded_prefix(&long, MAX_NAME_BYTES);
        assert_eq!(cut.len(), MAX_NAME_BYTES);
        let mut odd = format!("x{long}");
        bound_in_place(&mut odd, MAX_NAME_BYTES);
        assert_eq!(odd.len(), MAX_NAME_BYTES - 1);
        assert!(odd.chars().skip(1).all(|c| c == 'ü'));
    }

    /// Guards the audit bound: a detail over it becomes its size and a prefix, cut at a
    /// character boundary; one within it is kept whole.
    #[test]
    fn oversized_audit_details_are_bounded() {
        let small = serde_json::json!({"channel": "room"});
        assert_eq!(bounded_detail(small.clone(), 256), small);
        let big = serde_json::json!({"channel": "é".repeat(1000)});
        let bounded = bounded_detail(big.clone(), 256);
        assert_eq!(bounded["truncated"], true);
        assert_eq!(bounded["bytes"], big.to_string().len());
        let prefix = bounded["prefix"].as_str().unwrap();
        assert!(prefix.len() <= 128 && big.to_string().starts_with(prefix));
    }

    #[test]
    fn subscription_ids_differ_for_reused_and_missing_join_refs() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let registry = Registry {
            tx,
            node_id: Arc::from("n"),
            joins: Arc::default(),
            max_detail_bytes: 4096,
            depth: Arc::default(),
        };
        let conn = Uuid::nil();
        let a = registry.subscription_id(conn, Some("1"));
        let b = registry.subscription_id(conn, Some("1"));
        let c = registry.subscription_id(conn, None);
        let d = registry.subscription_id(conn, None);
        assert_eq!(a, format!("{conn}:1:1"));
        assert_eq!(c, format!("{conn}::3"));
        let all: std::collections::HashSet<&String> = [&a, &b, &c, &d].into_iter().collect();
        assert_eq!(all.len(), 4);
        let long = registry.subscription_id(conn, Some(&"r".repeat(10_000)));
        assert!(long.len() < 36 + 64 + 30, "{}", long.len());
    }
}
