//! `GET /admin/api/connections` and `GET /admin/api/connections/{id}`: the open connections of
//! every node, from the connection slots they hold (`realtime.connection_slots`) and their
//! channels' registry rows; connections of the node that answers are completed from its
//! memory (exact last heartbeat, socket `component`, queue depth). Closing one is
//! [`super::disconnect`].

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json as SqlJson;
use sqlx::Row;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{database, time_of_ms, ApiPath, ApiQuery, Error, ErrorBody};
use crate::session::SessionHandle;
use crate::state::AppState;

/// Default page size of the list.
const DEFAULT_LIMIT: i64 = 100;
/// Largest page size of the list.
const MAX_LIMIT: i64 = 1000;
/// Most registry rows the detail of one connection lists (its newest).
const DETAIL_ROWS: i64 = 1000;

/// Filters and page of `GET /admin/api/connections`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only connections of this user: the socket token's `sub`, or a channel token's.
    pub user: Option<Uuid>,
    /// Only connections that joined this channel (its name, without `realtime:`).
    pub channel: Option<String>,
    /// Only connections on this node.
    pub node: Option<String>,
    /// Only connections with a channel of this `component`.
    pub component: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    pub limit: Option<i64>,
    /// Connections to skip, in order of connection (default 0).
    pub offset: Option<i64>,
}

/// One page of open connections.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionPage {
    /// Connections matching the filters, on every node.
    pub total: i64,
    /// The page size used.
    pub limit: i64,
    /// The connections skipped.
    pub offset: i64,
    /// This page, oldest connection first.
    pub connections: Vec<Connection>,
}

/// An open connection.
#[derive(Debug, Serialize, ToSchema)]
pub struct Connection {
    /// Its id (the registry's `connection_id`).
    pub connection_id: Uuid,
    /// The node it is on.
    pub node_id: String,
    /// Whether it is on the node that answered (its fields then come from that node's memory).
    pub local: bool,
    /// The socket token's user (`sub`), when a UUID.
    pub user_id: Option<Uuid>,
    /// The client's address.
    pub remote_addr: Option<String>,
    /// The socket's or its channels' `component`.
    pub component: Option<String>,
    /// When it connected.
    pub connected_at: Option<DateTime<Utc>>,
    /// Its last client heartbeat: exact for this node's connections, else as the registry last
    /// wrote it (every `--heartbeat-interval`; none before its first channel).
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    /// Its channels (active registry rows), in join order.
    pub channels: Vec<ChannelRow>,
}

/// One channel joined by a connection: its registry row.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChannelRow {
    /// The channel name (without `realtime:`).
    pub channel: String,
    /// The registry's `subscription_id`.
    pub subscription_id: String,
    /// The channel token's user (`sub`), when a UUID.
    pub user_id: Option<Uuid>,
    /// The join's `component`, else the socket's.
    pub component: Option<String>,
    /// `[{event, schema, table, filter}]` as joined.
    #[schema(value_type = Object)]
    pub table_filters: Option<serde_json::Value>,
    /// When it was joined.
    pub joined_at: Option<DateTime<Utc>>,
    /// Its last heartbeat as written to the registry.
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    /// Whether the row is active.
    pub active: bool,
    /// When it ended, if it did.
    pub closed_at: Option<DateTime<Utc>>,
    /// Why it ended (`leave`, `socket_closed`, `kicked`, ...), if it did.
    pub close_reason: Option<String>,
}

/// A connection row as the list query returns it.
#[derive(Debug, Deserialize)]
struct ConnRow {
    connection_id: Uuid,
    node_id: String,
    client_addr: Option<String>,
    registry_addr: Option<String>,
    user_id: Option<Uuid>,
    taken_at: Option<DateTime<Utc>>,
    channels: Vec<ChannelRow>,
}

/// The registry row fields of a channel, as JSON, for `r` (a registry row alias).
macro_rules! channel_json {
    () => {
        "json_build_object('channel', r.channel_name, 'subscription_id', r.subscription_id, \
         'user_id', r.claimed_user_id, 'component', r.component_name, \
         'table_filters', r.table_filters, 'joined_at', r.created_at, \
         'last_heartbeat_at', r.last_heartbeat_at, 'active', coalesce(r.is_active, false), \
         'closed_at', r.closed_at, 'close_reason', r.close_reason)"
    };
}

/// Open connections on every node, filtered and paged.
#[utoipa::path(
    get,
    path = "/admin/api/connections",
    operation_id = "list_connections",
    tag = "connections",
    security(("bearer" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "One page of open connections", body = ConnectionPage),
        (status = 400, description = "A filter or page parameter that cannot be used", body = ErrorBody),
        (status = 401, description = "No credential, or one that is not accepted", body = ErrorBody),
        (status = 403, description = "A valid token whose role is not service_role", body = ErrorBody),
        (status = 503, description = "The database did not answer", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<ConnectionPage>, Error> {
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Error::BadRequest(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let offset = query.offset.unwrap_or(0);
    if offset < 0 {
        return Err(Error::BadRequest("offset must not be negative".to_owned()));
    }
    let request = sqlx::query(concat!(
        "with filtered as ( \
           select s.connection_id, s.node_id, host(s.client_addr) as client_addr, s.user_id, \
                  s.taken_at \
             from realtime.connection_slots s \
            where s.node_id is not null and s.connection_id is not null \
              and ($1::text is null or s.node_id = $1) \
              and ($2::uuid is null or s.user_id = $2 or exists ( \
                   select 1 from public.realtime_subscription_registry r \
                    where r.connection_id = s.connection_id and r.is_active \
                      and r.claimed_user_id = $2)) \
              and ($3::text is null or exists ( \
                   select 1 from public.realtime_subscription_registry r \
                    where r.connection_id = s.connection_id and r.is_active \
                      and r.channel_name = $3)) \
              and ($4::text is null or exists ( \
                   select 1 from public.realtime_subscription_registry r \
                    where r.connection_id = s.connection_id and r.is_active \
                      and r.component_name = $4)) \
         ), page as ( \
           select f.*, \
                  (select r.remote_addr from public.realtime_subscription_registry r \
                    where r.connection_id = f.connection_id \
                    order by r.created_at desc limit 1) as registry_addr, \
                  coalesce((select json_agg(",
        channel_json!(),
        " order by r.created_at) \
                      from public.realtime_subscription_registry r \
                     where r.connection_id = f.connection_id and r.is_active), '[]'::json) \
                    as channels \
             from filtered f order by f.taken_at, f.connection_id limit $5 offset $6 \
         ) \
         select (select count(*) from filtered) as total, \
                coalesce((select json_agg(p order by p.taken_at, p.connection_id) from page p), \
                         '[]'::json) as page"
    ))
    .bind(query.node.as_deref())
    .bind(query.user)
    .bind(query.channel.as_deref())
    .bind(query.component.as_deref())
    .bind(limit)
    .bind(offset)
    .fetch_one(&state.pool);
    let row = database(request).await?;
    let total: i64 = row.try_get("total").map_err(Error::database)?;
    let SqlJson(rows): SqlJson<Vec<ConnRow>> = row.try_get("page").map_err(Error::database)?;
    let connections = rows.into_iter().map(|r| connection(&state, r)).collect();
    Ok(Json(ConnectionPage {
        total,
        limit,
        offset,
        connections,
    }))
}

/// A listed connection, completed from this node's memory when it is one of its own.
fn connection(state: &AppState, row: ConnRow) -> Connection {
    let local = (row.node_id == state.config.node_id)
        .then(|| state.session.sessions.by_connection_id(row.connection_id))
        .flatten();
    let from_rows = Connection {
        connection_id: row.connection_id,
        local: row.node_id == state.config.node_id,
        node_id: row.node_id,
        user_id: row.user_id,
        remote_addr: row.registry_addr.or(row.client_addr),
        component: row.channels.iter().find_map(|c| c.component.clone()),
        connected_at: row.taken_at,
        last_heartbeat_at: row
            .channels
            .iter()
            .filter_map(|c| c.last_heartbeat_at)
            .max(),
        channels: row.channels,
    };
    match local {
        Some(handle) => completed(from_rows, &handle),
        None => from_rows,
    }
}

/// `connection` with what this node knows of it first-hand.
fn completed(mut connection: Connection, handle: &SessionHandle) -> Connection {
    connection.remote_addr = Some(handle.peer.to_string());
    connection.component = handle.component.clone().or(connection.component);
    connection.connected_at = time_of_ms(handle.connected_at_ms).or(connection.connected_at);
    connection.last_heartbeat_at = time_of_ms(handle.last_heartbeat_ms.load(Ordering::Acquire));
    connection.user_id = handle.user_id.or(connection.user_id);
    connection
}

/// The path parameter of a connection.
#[derive(Debug, Deserialize)]
pub struct ConnectionPath {
    /// The connection id.
    pub id: Uuid,
}

/// One connection, open or closed, with every channel it joined.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionDetail {
    /// `open` while a node holds its slot, else `closed`.
    #[schema(example = "open")]
    pub state: &'static str,
    /// The connection (for a closed one: as its registry rows recorded it).
    pub connection: Connection,
    /// Its queue, when it is open on the node that answered.
    pub queue: Option<QueueStats>,
    /// Every channel it joined (its newest 1000 registry rows), active and ended.
    pub history: Vec<ChannelRow>,
}

/// A connection's outbound queue on this node.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueStats {
    /// Frames queued, not yet written.
    pub queued_frames: usize,
    /// Their bytes.
    pub queued_bytes: usize,
    /// Whether it is being closed.
    pub closing: bool,
}

/// One connection and its channels' history.
#[utoipa::path(
    get,
    path = "/admin/api/connections/{id}",
    operation_id = "get_connection",
    tag = "connections",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The connection id")),
    responses(
        (status = 200, description = "The connection", body = ConnectionDetail),
        (status = 400, description = "An id that is not a UUID", body = ErrorBody),
        (status = 401, description = "No credential, or one that is not accepted", body = ErrorBody),
        (status = 403, description = "A valid token whose role is not service_role", body = ErrorBody),
        (status = 404, description = "No node holds it and the registry has no row of it", body = ErrorBody),
        (status = 503, description = "The database did not answer", body = ErrorBody),
    )
)]
pub async fn detail(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<ConnectionPath>,
) -> Result<Json<ConnectionDetail>, Error> {
    let id = path.id;
    let request = sqlx::query(concat!(
        "select s.node_id, host(s.client_addr) as client_addr, s.user_id, s.taken_at, \
                coalesce((select json_agg(",
        channel_json!(),
        " order by r.created_at) from ( \
                    select * from public.realtime_subscription_registry r \
                     where r.connection_id = $1 order by r.created_at desc limit $2) r), \
                  '[]'::json) as history, \
                (select r.node_id from public.realtime_subscription_registry r \
                  where r.connection_id = $1 order by r.created_at desc limit 1) as row_node, \
                (select r.remote_addr from public.realtime_subscription_registry r \
                  where r.connection_id = $1 order by r.created_at desc limit 1) as row_addr \
           from (select 1) one \
           left join realtime.connection_slots s \
             on s.connection_id = $1 and s.node_id is not null"
    ))
    .bind(id)
    .bind(DETAIL_ROWS)
    .fetch_one(&state.pool);
    let row = database(request).await?;
    let get = |e: sqlx::Error| Error::database(e);
    let slot_node: Option<String> = row.try_get("node_id").map_err(get)?;
    let SqlJson(history): SqlJson<Vec<ChannelRow>> = row.try_get("history").map_err(get)?;
    let row_node: Option<String> = row.try_get("row_node").map_err(get)?;
    let handle = state.session.sessions.by_connection_id(id);
    let node_id = match (&handle, slot_node.clone(), row_node) {
        (Some(_), _, _) => state.config.node_id.clone(),
        (None, Some(node), _) | (None, None, Some(node)) => node,
        (None, None, None) => {
            return Err(Error::NotFound(format!(
                "no node holds connection {id} and the registry has no row of it"
            )))
        }
    };
    let open = handle.is_some() || slot_node.is_some();
    let connection = Connection {
        connection_id: id,
        local: node_id == state.config.node_id,
        node_id,
        user_id: row.try_get("user_id").map_err(get)?,
        remote_addr: row
            .try_get::<Option<String>, _>("row_addr")
            .map_err(get)?
            .or(row.try_get("client_addr").map_err(get)?),
        component: history.iter().find_map(|c| c.component.clone()),
        connected_at: row.try_get("taken_at").map_err(get)?,
        last_heartbeat_at: history.iter().filter_map(|c| c.last_heartbeat_at).max(),
        channels: history.iter().filter(|c| c.active).cloned().collect(),
    };
    let (connection, queue) = match &handle {
        Some(handle) => (
            completed(connection, handle),
            Some(QueueStats {
                queued_frames: handle.outbound.queued_frames(),
                queued_bytes: handle.outbound.queued_bytes(),
                closing: handle.closing.load(Ordering::Acquire),
            }),
        ),
        None => (connection, None),
    };
    Ok(Json(ConnectionDetail {
        state: if open { "open" } else { "closed" },
        connection,
        queue,
        history,
    }))
}
