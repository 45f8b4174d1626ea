//! The registry's SQL: batched inserts and updates of registry rows, slot releases, audit
//! records (each its own statement, so that one cannot hold up another), heartbeats, node-loss
//! cleanup, and the cluster-wide connection slots.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::{AuditRecord, JoinRow, RowClose, RowEnd, Settings};
use crate::pg::Error;

/// Registers this node: its row, the slots table sized to the cap, and the end of whatever a
/// previous run of the same node left active (closed as `node_lost`, slots freed).
///
/// # Errors
/// When the database cannot be reached.
pub async fn prepare_node(pool: &PgPool, settings: &Settings) -> Result<(), Error> {
    let mut tx = pool.begin().await?;
    let cap = i32::try_from(settings.max_connections).unwrap_or(i32::MAX);
    sqlx::query(
        "insert into realtime.nodes (node_id, listen_addr, max_connections) values ($1, $2, $3) \
         on conflict (node_id) do update set started_at = now(), heartbeat_at = now(), \
         listen_addr = excluded.listen_addr, max_connections = excluded.max_connections",
    )
    .bind(&settings.node_id)
    .bind(&settings.listen_addr)
    .bind(cap)
    .execute(&mut *tx)
    .await?;
    let stale = sqlx::query(
        "update public.realtime_subscription_registry \
         set is_active = false, closed_at = now(), close_reason = 'node_lost' \
         where node_id = $1 and is_active",
    )
    .bind(&settings.node_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if stale > 0 {
        tracing::info!(rows = stale, "closed registry rows left by a previous run");
    }
    sqlx::query(
        "update realtime.connection_slots set node_id = null, connection_id = null, \
         taken_at = null, client_addr = null, user_id = null where node_id = $1",
    )
    .bind(&settings.node_id)
    .execute(&mut *tx)
    .await?;
    // Serialized with other nodes resizing at the same moment.
    sqlx::query("select pg_advisory_xact_lock(1381254999, -3)")
        .execute(&mut *tx)
        .await?;
    sqlx::query("select realtime.ensure_connection_slots($1)")
        .bind(cap)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Takes free connection slots for as many of `connections` as there are free slots, in one
/// statement; returns `(slot, connection)` for each one that got a slot (the others are over the
/// cap). The search starts at a random slot and wraps round to the first, so concurrent batches
/// (of this node or others) spread over the table instead of all contending for, and skipping
/// past, the lowest free slots. Rows are locked with `skip locked`: slots another transaction is
/// taking are passed over, never waited for. Both parts of the search are one statement
/// (`realtime.take_slots`, migration 0029), so a failure takes no slot at all (the part below
/// the start is read only when the part above it had too few free slots), and it gives up on a
/// lock after 4 s (`lock_timeout`).
///
/// # Errors
/// When the database cannot be reached.
pub async fn acquire_slots(
    pool: &PgPool,
    node_id: &str,
    connections: &[Uuid],
    cap: u32,
) -> Result<Vec<(i32, Uuid)>, Error> {
    if connections.is_empty() {
        return Ok(Vec::new());
    }
    let cap = i32::try_from(cap).unwrap_or(i32::MAX);
    let start = rand::random_range(1..=cap.max(1));
    Ok(
        sqlx::query_as("select slot, conn from realtime.take_slots($1, $2, $3, $4)")
            .bind(node_id)
            .bind(connections)
            .bind(start)
            .bind(cap)
            .fetch_all(pool)
            .await?,
    )
}

/// One upgrade of a batch under per-client limits: its connection, client address and user.
pub type ClientSlot = (Uuid, std::net::IpAddr, Option<Uuid>);

/// What a connection of a batch got under per-client limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotAnswer {
    /// This slot.
    Taken(i32),
    /// Every slot is taken.
    Full,
    /// Its address holds its limit of slots across the cluster.
    PerAddr,
    /// Its user holds its limit of slots across the cluster.
    PerUser,
}

/// Takes slots like [`acquire_slots`], counting each connection's address and user across the
/// cluster first (`realtime.take_slots_limited`, migration 0015; its lock waits 4 s in all
/// since 0031): a connection whose address holds `max_per_addr` slots, or whose user holds
/// `max_per_user` (0: off), gets none.
///
/// # Errors
/// When the database cannot be reached.
pub async fn acquire_slots_limited(
    pool: &PgPool,
    node_id: &str,
    clients: &[ClientSlot],
    cap: u32,
    max_per_addr: u32,
    max_per_user: u32,
) -> Result<Vec<(Uuid, SlotAnswer)>, Error> {
    let cap = i32::try_from(cap).unwrap_or(i32::MAX);
    let int = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
    let conns: Vec<Uuid> = clients.iter().map(|c| c.0).collect();
    let addrs: Vec<String> = clients.iter().map(|c| c.1.to_string()).collect();
    let users: Vec<Option<Uuid>> = clients.iter().map(|c| c.2).collect();
    let rows: Vec<(Uuid, Option<i32>, Option<String>)> = sqlx::query_as(
        "select conn, taken, refusal from realtime.take_slots_limited($1, $2, $3::text[]::inet[], $4, $5, $6, $7, $8)",
    )
    .bind(node_id)
    .bind(&conns)
    .bind(&addrs)
    .bind(&users)
    .bind(cap)
    .bind(rand::random_range(1..=cap.max(1)))
    .bind(int(max_per_addr))
    .bind(int(max_per_user))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(conn, taken, refusal)| {
            let answer = match (taken, refusal.as_deref()) {
                (Some(slot), _) => SlotAnswer::Taken(slot),
                (None, Some("addr")) => SlotAnswer::PerAddr,
                (None, Some("user")) => SlotAnswer::PerUser,
                (None, _) => SlotAnswer::Full,
            };
            (conn, answer)
        })
        .collect())
}

/// Whether the registry's `user_id` references `auth.users` (a Supabase-style auth schema was
/// there when the gateway migrated): its rows then name only users that exist there.
///
/// # Errors
/// When the database cannot be reached.
pub(super) async fn users_are_checked(pool: &PgPool) -> Result<bool, Error> {
    Ok(sqlx::query_scalar(
        "select to_regclass('auth.users') is not null and exists ( \
             select 1 from pg_constraint \
             where conname = 'realtime_subscription_registry_user_id_fkey' \
               and conrelid = 'public.realtime_subscription_registry'::regclass)",
    )
    .fetch_one(pool)
    .await?)
}

/// Sets the user of open registry rows, `(row id, user)`, as [`insert_rows`] does at a join:
/// `claimed_user_id` always, `user_id` (with `check_users`) only when `auth.users` knows it.
///
/// # Errors
/// When the database cannot be reached.
pub(super) async fn set_users(
    pool: &PgPool,
    users: &[(Uuid, Option<Uuid>)],
    check_users: bool,
) -> Result<(), Error> {
    let ids: Vec<Uuid> = users.iter().map(|(id, _)| *id).collect();
    let subs: Vec<Option<Uuid>> = users.iter().map(|(_, u)| *u).collect();
    let user = if check_users {
        "(select a.id from auth.users a where a.id = u.user_id)"
    } else {
        "u.user_id"
    };
    sqlx::query(&format!(
        "update public.realtime_subscription_registry r \
         set user_id = {user}, claimed_user_id = u.user_id \
         from unnest($1::uuid[], $2::uuid[]) as u(id, user_id) \
         where r.id = u.id and r.is_active"
    ))
    .bind(&ids)
    .bind(&subs)
    .execute(pool)
    .await?;
    Ok(())
}

/// Inserts registry rows in one statement (its own transaction). The JWT's `sub` is always kept
/// in `claimed_user_id`; with `check_users`, `user_id` is set only when `auth.users` has that
/// user (null otherwise), so an unknown user cannot violate the foreign key. With `reactivate`
/// (re-registration), a row that exists closed as `node_lost` is made active again; otherwise
/// a row that exists is left as it is.
///
/// # Errors
/// When the database refuses the rows or cannot be reached.
pub(super) async fn insert_rows(
    pool: &PgPool,
    node_id: &str,
    rows: &[(JoinRow, RowEnd)],
    check_users: bool,
    reactivate: bool,
) -> Result<(), Error> {
    let ids: Vec<Uuid> = rows.iter().map(|(r, _)| r.id).collect();
    let subs: Vec<&str> = rows
        .iter()
        .map(|(r, _)| r.subscription_id.as_str())
        .collect();
    let channels: Vec<&str> = rows.iter().map(|(r, _)| r.channel_name.as_str()).collect();
    let users: Vec<Option<Uuid>> = rows.iter().map(|(r, _)| r.user_id).collect();
    let components: Vec<Option<&str>> = rows
        .iter()
        .map(|(r, _)| r.component_name.as_deref())
        .collect();
    let filters: Vec<&str> = rows.iter().map(|(r, _)| r.table_filters.get()).collect();
    let conns: Vec<Uuid> = rows.iter().map(|(r, _)| r.connection_id).collect();
    let addrs: Vec<&str> = rows.iter().map(|(r, _)| r.remote_addr.as_str()).collect();
    let created: Vec<DateTime<Utc>> = rows.iter().map(|(r, _)| r.created_at).collect();
    let closed_at: Vec<Option<DateTime<Utc>>> =
        rows.iter().map(|(_, c)| c.map(|(_, at)| at)).collect();
    let reasons: Vec<Option<&str>> = rows.iter().map(|(_, c)| c.map(|(r, _)| r)).collect();
    let user = if check_users {
        "(select a.id from auth.users a where a.id = u.user_id)"
    } else {
        "u.user_id"
    };
    // Re-registration: a row the other nodes closed as `node_lost` is active again.
    let conflict = if reactivate {
        "update set is_active = true, closed_at = null, close_reason = null, \
         last_heartbeat_at = now() \
         where not realtime_subscription_registry.is_active \
           and realtime_subscription_registry.close_reason = 'node_lost'"
    } else {
        "nothing"
    };
    sqlx::query(&format!(
        "insert into public.realtime_subscription_registry \
           (id, subscription_id, channel_name, user_id, claimed_user_id, component_name, \
            table_filters, last_heartbeat_at, is_active, created_at, node_id, connection_id, \
            remote_addr, closed_at, close_reason) \
         select u.id, u.sub, u.channel, {user}, u.user_id, u.component, u.filters::jsonb, \
                u.created, u.closed_at is null, u.created, $10, u.conn, u.addr, u.closed_at, \
                u.reason \
         from unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::text[], \
                     $6::text[], $7::uuid[], $8::text[], $9::timestamptz[], \
                     $11::timestamptz[], $12::text[]) \
              as u(id, sub, channel, user_id, component, filters, conn, addr, created, \
                   closed_at, reason) \
         on conflict (id) do {conflict}"
    ))
    .bind(&ids)
    .bind(&subs)
    .bind(&channels)
    .bind(&users)
    .bind(&components)
    .bind(&filters)
    .bind(&conns)
    .bind(&addrs)
    .bind(&created)
    .bind(node_id)
    .bind(&closed_at)
    .bind(&reasons)
    .execute(pool)
    .await?;
    Ok(())
}

/// Ends registry rows already inserted, in one statement.
///
/// # Errors
/// When the database refuses the rows or cannot be reached.
pub(super) async fn close_rows(pool: &PgPool, rows: &[(Uuid, RowClose)]) -> Result<(), Error> {
    let ids: Vec<Uuid> = rows.iter().map(|(id, _)| *id).collect();
    let reasons: Vec<&str> = rows.iter().map(|(_, (r, _))| *r).collect();
    let ats: Vec<DateTime<Utc>> = rows.iter().map(|(_, (_, at))| *at).collect();
    sqlx::query(
        "update public.realtime_subscription_registry r \
         set is_active = false, closed_at = u.at, close_reason = u.reason \
         from unnest($1::uuid[], $2::text[], $3::timestamptz[]) as u(id, reason, at) \
         where r.id = u.id and r.is_active",
    )
    .bind(&ids)
    .bind(&reasons)
    .bind(&ats)
    .execute(pool)
    .await?;
    Ok(())
}

/// Frees connection slots, in one statement of their own: a slot is freed only while it still
/// belongs to the connection that took it.
///
/// # Errors
/// When the database cannot be reached.
pub(super) async fn release_slots(pool: &PgPool, releases: &[(i32, Uuid)]) -> Result<(), Error> {
    let slots: Vec<i32> = releases.iter().map(|(s, _)| *s).collect();
    let conns: Vec<Uuid> = releases.iter().map(|(_, c)| *c).collect();
    sqlx::query(
        "update realtime.connection_slots s \
         set node_id = null, connection_id = null, taken_at = null, \
             client_addr = null, user_id = null \
         from unnest($1::int[], $2::uuid[]) as u(slot, conn) \
         where s.slot = u.slot and s.connection_id = u.conn",
    )
    .bind(&slots)
    .bind(&conns)
    .execute(pool)
    .await?;
    Ok(())
}

/// Frees the slots this node holds that it does not know of (`known`: the slots its open
/// connections hold) and that were taken more than `margin` ago, and returns them as
/// `(slot, connection)`. Such a slot was taken by a statement whose answer never arrived (the
/// connection to the database broke after it committed, or the answer came too late); the
/// margin leaves alone a slot whose taking is still being reported.
///
/// # Errors
/// When the database cannot be reached.
pub(super) async fn free_unknown_slots(
    pool: &PgPool,
    node_id: &str,
    known: &[i32],
    margin: std::time::Duration,
) -> Result<Vec<(i32, Uuid)>, Error> {
    Ok(sqlx::query_as(
        "update realtime.connection_slots s \
         set node_id = null, connection_id = null, taken_at = null, \
             client_addr = null, user_id = null \
         from realtime.connection_slots was \
         where was.slot = s.slot \
           and s.node_id = $1 and s.taken_at < now() - make_interval(secs => $3) \
           and not exists (select from unnest($2::int[]) k(slot) where k.slot = s.slot) \
         returning s.slot, was.connection_id",
    )
    .bind(node_id)
    .bind(known)
    .bind(margin.as_secs_f64())
    .fetch_all(pool)
    .await?)
}

/// Appends audit records in one statement.
///
/// # Errors
/// When the database refuses the records or cannot be reached.
pub(super) async fn append_audit(
    pool: &PgPool,
    node_id: &str,
    records: &[AuditRecord],
) -> Result<(), Error> {
    let kinds: Vec<&str> = records.iter().map(|a| a.kind).collect();
    let ats: Vec<DateTime<Utc>> = records.iter().map(|a| a.at).collect();
    let users: Vec<Option<Uuid>> = records.iter().map(|a| a.user_id).collect();
    let addrs: Vec<Option<&str>> = records.iter().map(|a| a.remote_addr.as_deref()).collect();
    let details: Vec<&Value> = records.iter().map(|a| &a.detail).collect();
    sqlx::query(
        "insert into realtime.audit_log (kind, at, node_id, user_id, remote_addr, detail) \
         select u.kind, u.at, $6, u.user_id, u.addr, u.detail \
         from unnest($1::text[], $2::timestamptz[], $3::uuid[], $4::text[], $5::jsonb[]) \
              as u(kind, at, user_id, addr, detail)",
    )
    .bind(&kinds)
    .bind(&ats)
    .bind(&users)
    .bind(&addrs)
    .bind(&details)
    .bind(node_id)
    .execute(pool)
    .await?;
    Ok(())
}

/// One reaper tick: heartbeats of `connections` (one statement), this node's heartbeat, the
/// cleanup of nodes silent past the stale timeout, a `cap_warning` when 90 % of the slots are
/// taken, and audit retention. Reports whether this node's row had been removed (it was
/// declared lost; the row is inserted again) and how many slots the node holds.
///
/// # Errors
/// When the database cannot be reached.
pub(super) async fn tick(
    pool: &PgPool,
    settings: &Settings,
    connections: &[Uuid],
) -> Result<TickState, Error> {
    let mut tx = pool.begin().await?;
    if !connections.is_empty() {
        sqlx::query(
            "update public.realtime_subscription_registry set last_heartbeat_at = now() \
             where node_id = $1 and is_active and connection_id = any($2)",
        )
        .bind(&settings.node_id)
        .bind(connections)
        .execute(&mut *tx)
        .await?;
    }
    let cap = i32::try_from(settings.max_connections).unwrap_or(i32::MAX);
    // The node row is gone only when another node (or an operator) declared this node lost.
    let node_row_missing = sqlx::query(
        "update realtime.nodes set heartbeat_at = now() where node_id = $1 returning node_id",
    )
    .bind(&settings.node_id)
    .fetch_optional(&mut *tx)
    .await?
    .is_none();
    if node_row_missing {
        sqlx::query(
            "insert into realtime.nodes (node_id, listen_addr, max_connections) \
             values ($1, $2, $3) on conflict (node_id) do update set heartbeat_at = now()",
        )
        .bind(&settings.node_id)
        .bind(&settings.listen_addr)
        .bind(cap)
        .execute(&mut *tx)
        .await?;
    }
    let slots_held: i64 =
        sqlx::query_scalar("select count(*) from realtime.connection_slots where node_id = $1")
            .bind(&settings.node_id)
            .fetch_one(&mut *tx)
            .await?;
    let stale_secs = settings.stale_timeout.as_secs_f64();
    let lost: Vec<(String, i64)> = sqlx::query_as(
        "with lost as ( \
             delete from realtime.nodes \
             where heartbeat_at < now() - make_interval(secs => $1) and node_id <> $2 \
             returning node_id), \
         orphans as ( \
             select distinct r.node_id from public.realtime_subscription_registry r \
             where r.is_active and r.node_id is not null \
               and not exists (select from realtime.nodes n where n.node_id = r.node_id) \
               and r.node_id <> $2 \
             union select node_id from lost), \
         closed as ( \
             update public.realtime_subscription_registry \
             set is_active = false, closed_at = now(), close_reason = 'node_lost' \
             where is_active and node_id in (select node_id from orphans) \
             returning node_id), \
         freed as ( \
             update realtime.connection_slots set node_id = null, connection_id = null, \
                    taken_at = null, client_addr = null, user_id = null \
             where node_id in (select node_id from orphans) \
                or (node_id is not null \
                    and not exists (select from realtime.nodes n \
                                    where n.node_id = connection_slots.node_id) \
                    and node_id <> $2) \
             returning slot) \
         select o.node_id, (select count(*) from closed c where c.node_id = o.node_id) \
         from orphans o",
    )
    .bind(stale_secs)
    .bind(&settings.node_id)
    .fetch_all(&mut *tx)
    .await?;
    for (node, rows) in &lost {
        tracing::warn!(lost_node = %node, rows, "node lost: its registry rows closed, slots freed");
        sqlx::query(
            "insert into realtime.audit_log (kind, node_id, detail) \
             values ('node_lost', $1, jsonb_build_object('lost_node', $2::text, 'rows', $3::int8))",
        )
        .bind(&settings.node_id)
        .bind(node)
        .bind(*rows)
        .execute(&mut *tx)
        .await?;
    }
    // The cluster is near its cap: say so once per tick.
    sqlx::query(
        "insert into realtime.audit_log (kind, node_id, detail) \
         select 'cap_warning', $1, jsonb_build_object('in_use', c.n, 'cap', $2::int) \
         from (select count(*) as n from realtime.connection_slots where node_id is not null) c \
         where c.n * 10 >= $2::int8 * 9",
    )
    .bind(&settings.node_id)
    .bind(cap)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "delete from realtime.audit_log \
         where id in (select id from realtime.audit_log \
                      where at < now() - make_interval(secs => $1) limit 10000)",
    )
    .bind(settings.audit_retention.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "delete from public.realtime_subscription_registry \
         where id in (select id from public.realtime_subscription_registry \
                      where not is_active \
                        and closed_at < now() - make_interval(secs => $1) \
                      order by closed_at limit 10000)",
    )
    .bind(settings.registry_retention.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(TickState {
        node_row_missing,
        slots_held: usize::try_from(slots_held).unwrap_or(0),
    })
}

/// What a tick learned about this node's own standing.
#[derive(Debug, Clone, Copy)]
pub(super) struct TickState {
    /// This node's row was gone (it was declared lost) and has been inserted again.
    pub(super) node_row_missing: bool,
    /// Connection slots this node holds, after the tick.
    pub(super) slots_held: usize,
}

/// Takes back, for each `(slot, connection)`, the same slot: when it is free, or still held by
/// that connection. Returns the connections that hold their slot afterwards.
///
/// # Errors
/// When the database cannot be reached.
pub(super) async fn retake_same_slots(
    pool: &PgPool,
    node_id: &str,
    slots: &[(i32, Uuid)],
) -> Result<Vec<Uuid>, Error> {
    let numbers: Vec<i32> = slots.iter().map(|(s, _)| *s).collect();
    let conns: Vec<Uuid> = slots.iter().map(|(_, c)| *c).collect();
    Ok(sqlx::query_scalar(
        "update realtime.connection_slots s \
         set node_id = $1, connection_id = u.conn, taken_at = coalesce(s.taken_at, now()) \
         from unnest($2::int[], $3::uuid[]) as u(slot, conn) \
         where s.slot = u.slot \
           and (s.node_id is null or (s.node_id = $1 and s.connection_id = u.conn)) \
         returning s.connection_id",
    )
    .bind(node_id)
    .bind(&numbers)
    .bind(&conns)
    .fetch_all(pool)
    .await?)
}

/// Rows of connections closed to keep the cap, which the other nodes closed as `node_lost`:
/// their end is `cap_reclaimed`.
///
/// # Errors
/// When the database cannot be reached.
pub(super) async fn mark_reclaimed(pool: &PgPool, rows: &[Uuid]) -> Result<(), Error> {
    sqlx::query(
        "update public.realtime_subscription_registry \
         set close_reason = 'cap_reclaimed', closed_at = now() \
         where id = any($1) and not is_active and close_reason = 'node_lost'",
    )
    .bind(rows)
    .execute(pool)
    .await?;
    Ok(())
}

/// Hands slots held by this node from one connection to another: `(slot, from, to)`. Returns
/// the `(slot, to)` handed over.
///
/// # Errors
/// When the database cannot be reached.
pub(super) async fn hand_over_slots(
    pool: &PgPool,
    node_id: &str,
    moves: &[(i32, Uuid, Uuid)],
) -> Result<Vec<(i32, Uuid)>, Error> {
    let slots: Vec<i32> = moves.iter().map(|m| m.0).collect();
    let from: Vec<Uuid> = moves.iter().map(|m| m.1).collect();
    let to: Vec<Uuid> = moves.iter().map(|m| m.2).collect();
    Ok(sqlx::query_as(
        "update realtime.connection_slots s set connection_id = u.to_conn, taken_at = now() \
         from unnest($2::int[], $3::uuid[], $4::uuid[]) as u(slot, from_conn, to_conn) \
         where s.slot = u.slot and s.node_id = $1 and s.connection_id = u.from_conn \
         returning s.slot, s.connection_id",
    )
    .bind(node_id)
    .bind(&slots)
    .bind(&from)
    .bind(&to)
    .fetch_all(pool)
    .await?)
}

/// At clean shutdown: this node's remaining active rows end as `shutdown`, its slots are freed
/// and its node row removed.
///
/// # Errors
/// When the database cannot be reached.
pub(super) async fn retire_node(pool: &PgPool, node_id: &str) -> Result<(), Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "update public.realtime_subscription_registry \
         set is_active = false, closed_at = now(), close_reason = 'shutdown' \
         where node_id = $1 and is_active",
    )
    .bind(node_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "update realtime.connection_slots set node_id = null, connection_id = null, \
         taken_at = null, client_addr = null, user_id = null where node_id = $1",
    )
    .bind(node_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query("delete from realtime.nodes where node_id = $1")
        .bind(node_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}
