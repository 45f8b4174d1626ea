//! The SQL of broadcast and presence: publishing a batch to the bus (presence rows, spill rows,
//! notifications) in one transaction, reading spilled messages and database messages (rows of
//! `realtime.messages`, live, missed after a gap, or replayed), loading other nodes' presence,
//! and the periodic pruning. Tables and functions are those of `migrations/0004_broadcast.sql`
//! and `migrations/0018_database_broadcast.sql`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Map, Value};
use sqlx::{PgPool, Postgres, Transaction};

use super::{envelope, Message};
use crate::presence;

/// `realtime.bus_spill` rows are kept this long; every node reads one within moments.
pub const SPILL_RETENTION: Duration = Duration::from_secs(300);
/// Most missed database broadcasts delivered after one gap.
const MAX_CATCH_UP: i64 = 10_000;
/// Old `realtime.messages` rows deleted per statement; the pruner repeats while it finds full
/// batches.
const PRUNE_BATCH: i64 = 10_000;
/// Longest one pruning round of `realtime.messages` may run before it yields until the next
/// maintenance tick.
const PRUNE_ROUND: Duration = Duration::from_secs(5);

/// A presence entry of this node as stored in `realtime.presences`.
#[derive(Debug, Clone, PartialEq)]
pub struct PresenceRow {
    /// Channel name.
    pub topic: String,
    /// `phx_ref`.
    pub phx_ref: String,
    /// Presence key.
    pub key: String,
    /// Meta.
    pub meta: Value,
}

impl PresenceRow {
    /// The row of `entry` of channel `name`.
    pub fn of(name: &str, entry: &presence::Entry) -> PresenceRow {
        PresenceRow {
            topic: name.to_owned(),
            phx_ref: entry.phx_ref.clone(),
            key: entry.key.clone(),
            meta: Value::Object(entry.meta.clone()),
        }
    }
}

/// A database message: a row of `realtime.messages` written by `realtime.send`,
/// `realtime.send_binary` or `realtime.broadcast_changes`.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct DbMessage {
    /// Row id (`meta.id` for clients).
    pub id: uuid::Uuid,
    /// Channel name.
    pub topic: String,
    /// Event.
    pub event: String,
    /// User payload (JSON; `null` for a binary message).
    pub payload: Value,
    /// User payload of a `realtime.send_binary` message.
    pub binary_payload: Option<Vec<u8>>,
    /// Addressed to private channels.
    pub private: bool,
}

impl DbMessage {
    /// What the channel's members receive (docs/protocol.md 7.2, 7.4): a JSON broadcast with
    /// `meta.id`, or a raw-binary one (kind 4 to vsn 2 sockets, nothing to vsn 1) with that
    /// metadata; `meta.replayed` too when it is `replayed` to a joining channel.
    pub fn message(&self, replayed: bool) -> Message {
        match &self.binary_payload {
            Some(bytes) => Message::Binary {
                event: Arc::from(self.event.as_str()),
                meta: Some(Arc::from(envelope::db_meta(self.id, replayed))),
                payload: Bytes::copy_from_slice(bytes),
            },
            None => Message::Json(Arc::from(envelope::db_message(
                self.id,
                &self.event,
                &self.payload,
                replayed,
            ))),
        }
    }
}

/// One thing to publish.
#[derive(Debug)]
pub enum Item {
    /// A notification (broadcast).
    Notify(String),
    /// A presence diff of this node: its rows and its notification.
    Presence {
        /// The `p` notification.
        envelope: String,
        /// Rows of the entries that joined.
        upserts: Vec<PresenceRow>,
        /// `phx_ref`s of the entries that left.
        deletes: Vec<String>,
    },
    /// Rewrite all of this node's presence rows from memory and tell the others to reload them.
    Reassert,
}

impl Item {
    /// Bytes of its envelope (what the publisher's backlog bound counts).
    pub fn size(&self) -> usize {
        match self {
            Item::Notify(envelope) | Item::Presence { envelope, .. } => envelope.len(),
            Item::Reassert => 0,
        }
    }
}

/// Publishes `batch` in one transaction. `local_rows` gives this node's presence rows for a
/// `reassert`.
///
/// # Errors
/// When the database fails; nothing of the batch is published then.
pub async fn publish(
    pool: &PgPool,
    node: &str,
    batch: &[Item],
    mut local_rows: impl FnMut() -> Vec<PresenceRow>,
    mut sync_envelope: impl FnMut() -> String,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut notes: Vec<String> = Vec::with_capacity(batch.len());
    let mut upserts: Vec<&PresenceRow> = Vec::new();
    let mut deletes: Vec<&str> = Vec::new();
    for item in batch {
        match item {
            Item::Notify(envelope) => note(&mut tx, node, envelope, &mut notes).await?,
            Item::Presence {
                envelope,
                upserts: rows,
                deletes: refs,
            } => {
                // A ref is new at its upsert and never written again after its delete, so
                // the rows of consecutive diffs can be written together, upserts first.
                upserts.extend(rows);
                deletes.extend(refs.iter().map(String::as_str));
                note(&mut tx, node, envelope, &mut notes).await?;
            }
            Item::Reassert => {
                write_rows(&mut tx, node, &upserts, &deletes).await?;
                upserts.clear();
                deletes.clear();
                sqlx::query("delete from realtime.presences where node_id = $1")
                    .bind(node)
                    .execute(&mut *tx)
                    .await?;
                let reasserted = local_rows();
                let rows: Vec<&PresenceRow> = reasserted.iter().collect();
                write_rows(&mut tx, node, &rows, &[]).await?;
                notes.push(sync_envelope());
            }
        }
    }
    write_rows(&mut tx, node, &upserts, &deletes).await?;
    if !notes.is_empty() {
        // Notifications are queued in array order and delivered in that order at commit.
        sqlx::query("select pg_notify($1, n) from unnest($2::text[]) as n")
            .bind(envelope::CHANNEL)
            .bind(&notes)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

/// Queues `envelope` inline, or spills it and queues a pointer.
async fn note(
    tx: &mut Transaction<'_, Postgres>,
    node: &str,
    envelope: &str,
    notes: &mut Vec<String>,
) -> Result<(), sqlx::Error> {
    if envelope.len() <= envelope::MAX_INLINE_BYTES {
        notes.push(envelope.to_owned());
        return Ok(());
    }
    let id: i64 = sqlx::query_scalar(
        "insert into realtime.bus_spill (node_id, envelope) values ($1, $2) returning id",
    )
    .bind(node)
    .bind(envelope)
    .fetch_one(&mut **tx)
    .await?;
    metrics::counter!("gateway_bus_spilled_total").increment(1);
    notes.push(envelope::spill_envelope(node, id));
    Ok(())
}

async fn write_rows(
    tx: &mut Transaction<'_, Postgres>,
    node: &str,
    upserts: &[&PresenceRow],
    deletes: &[&str],
) -> Result<(), sqlx::Error> {
    if !upserts.is_empty() {
        let refs: Vec<&str> = upserts.iter().map(|r| r.phx_ref.as_str()).collect();
        let topics: Vec<&str> = upserts.iter().map(|r| r.topic.as_str()).collect();
        let keys: Vec<&str> = upserts.iter().map(|r| r.key.as_str()).collect();
        let metas: Vec<Value> = upserts.iter().map(|r| r.meta.clone()).collect();
        sqlx::query(
            "insert into realtime.presences (phx_ref, topic, key, meta, node_id) \
             select u.r, u.t, u.k, u.m, $5 \
             from unnest($1::text[], $2::text[], $3::text[], $4::jsonb[]) as u(r, t, k, m) \
             on conflict (phx_ref) do update set topic = excluded.topic, key = excluded.key, \
                 meta = excluded.meta, node_id = excluded.node_id, updated_at = now()",
        )
        .bind(&refs)
        .bind(&topics)
        .bind(&keys)
        .bind(&metas)
        .bind(node)
        .execute(&mut **tx)
        .await?;
    }
    if !deletes.is_empty() {
        sqlx::query("delete from realtime.presences where phx_ref = any($1) and node_id = $2")
            .bind(deletes)
            .bind(node)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// At shutdown: removes this node's presence rows and tells the other nodes.
///
/// # Errors
/// When the database fails.
pub async fn retire(pool: &PgPool, node: &str, sync_envelope: String) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("delete from realtime.presences where node_id = $1")
        .bind(node)
        .execute(&mut *tx)
        .await?;
    sqlx::query("select pg_notify($1, $2)")
        .bind(envelope::CHANNEL)
        .bind(sync_envelope)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// The presence rows of nodes other than `me` (only of `only`, when given), by channel name.
///
/// # Errors
/// When the database fails.
pub async fn presence_rows(
    pool: &PgPool,
    me: &str,
    only: Option<&str>,
) -> Result<HashMap<String, Vec<(Arc<str>, presence::Remote)>>, sqlx::Error> {
    let rows: Vec<(String, String, String, Value, String)> = sqlx::query_as(
        "select topic, phx_ref, key, meta, node_id from realtime.presences \
         where node_id <> $1 and ($2::text is null or node_id = $2)",
    )
    .bind(me)
    .bind(only)
    .fetch_all(pool)
    .await?;
    let mut nodes: HashMap<String, Arc<str>> = HashMap::new();
    let mut by_topic: HashMap<String, Vec<(Arc<str>, presence::Remote)>> = HashMap::new();
    for (topic, phx_ref, key, meta, node) in rows {
        let Value::Object(meta) = meta else {
            continue;
        };
        let meta: Map<String, Value> = meta;
        let node = Arc::clone(
            nodes
                .entry(node)
                .or_insert_with_key(|n| Arc::from(n.as_str())),
        );
        by_topic
            .entry(topic)
            .or_default()
            .push((node, (phx_ref, key, meta)));
    }
    Ok(by_topic)
}

/// The envelope of `realtime.bus_spill` row `id`, if it is still there.
///
/// # Errors
/// When the database fails.
pub async fn spilled(pool: &PgPool, id: i64) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("select envelope from realtime.bus_spill where id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}

const MESSAGE_COLUMNS: &str = "id, topic, coalesce(event, '') as event, \
     coalesce(payload, 'null'::jsonb) as payload, binary_payload, \
     coalesce(private, true) as private";

/// The database message `id`, if it is still there.
///
/// # Errors
/// When the database fails.
pub async fn message(pool: &PgPool, id: uuid::Uuid) -> Result<Option<DbMessage>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {MESSAGE_COLUMNS} from realtime.messages \
         where id = $1 and extension = 'broadcast'"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Database messages inserted within the last `window`, oldest first.
///
/// # Errors
/// When the database fails.
pub async fn missed_messages(
    pool: &PgPool,
    window: Duration,
) -> Result<Vec<DbMessage>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {MESSAGE_COLUMNS} from realtime.messages where extension = 'broadcast' \
           and inserted_at > now() - make_interval(secs => $1) \
         order by inserted_at limit $2"
    ))
    .bind(window.as_secs_f64())
    .bind(MAX_CATCH_UP)
    .fetch_all(pool)
    .await
}

/// What a join asks to replay: the newest `limit` messages stored since `since`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayRequest {
    /// Messages inserted at or after this time (`config.broadcast.replay.since`).
    pub since: chrono::DateTime<chrono::Utc>,
    /// At most this many (1 to 25).
    pub limit: i64,
}

/// The private database messages of channel `name` a join with `request` replays: the newest
/// `request.limit` inserted since `request.since`, returned oldest first (in the order they were
/// sent). Public messages of the same name never reach a private channel, so they are not
/// replayed.
///
/// # Errors
/// When the database fails.
pub async fn replay(
    pool: &PgPool,
    name: &str,
    request: ReplayRequest,
) -> Result<Vec<DbMessage>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {MESSAGE_COLUMNS} from ( \
             select * from realtime.messages \
             where topic = $1 and extension = 'broadcast' and private is true \
               and inserted_at >= $2 \
             order by inserted_at desc, id desc limit $3) newest \
         order by inserted_at, id"
    ))
    .bind(name)
    .bind(request.since)
    .bind(request.limit)
    .fetch_all(pool)
    .await
}

/// Removes the presence of nodes not heartbeating within `stale` (`realtime.presence_prune`,
/// which notifies the other nodes), old spill rows, and database messages older than
/// `message_retention` (in batches, for at most [`PRUNE_ROUND`]). Returns the presence rows
/// removed and the messages deleted.
///
/// # Errors
/// When the database fails.
pub async fn prune(
    pool: &PgPool,
    me: &str,
    stale: Duration,
    message_retention: Duration,
) -> Result<(i64, u64), sqlx::Error> {
    let removed: i64 = sqlx::query_scalar("select realtime.presence_prune($1, $2)")
        .bind(me)
        .bind(stale.as_secs_f64())
        .fetch_one(pool)
        .await?;
    sqlx::query(
        "delete from realtime.bus_spill where created_at < now() - make_interval(secs => $1)",
    )
    .bind(SPILL_RETENTION.as_secs_f64())
    .execute(pool)
    .await?;
    let started = Instant::now();
    let mut pruned = 0u64;
    loop {
        let deleted = sqlx::query(
            "delete from realtime.messages where id in (select id from realtime.messages \
             where inserted_at < now() - make_interval(secs => $1) limit $2)",
        )
        .bind(message_retention.as_secs_f64())
        .bind(PRUNE_BATCH)
        .execute(pool)
        .await?
        .rows_affected();
        pruned += deleted;
        if deleted < u64::try_from(PRUNE_BATCH).unwrap_or(u64::MAX)
            || started.elapsed() > PRUNE_ROUND
        {
            break;
        }
    }
    Ok((removed, pruned))
}
