//! Delivery diagnostics, for "I wrote it, why did my client not get it?": who is subscribed to a
//! table or a channel on the node that answers, the last changes and broadcasts it routed there
//! with what became of each (delivered, filtered, refused by row-level security, dropped as a
//! slow consumer), and why one subscriber did or did not receive one change.
//!
//! Everything here is the answering node's memory (`fanout::trace`, `broadcast::trace`): ask the
//! node that serves the client (`node_id` of `GET /admin/api/connections`). It keeps the last
//! `--trace-changes-per-table` changes of each table and `--trace-broadcasts-per-channel`
//! broadcasts of each channel.

use std::time::SystemTime;

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{ApiPath, ApiQuery, Error, ErrorBody};
use crate::broadcast::trace::{Origin, Sent};
use crate::broadcast::{channel_key, Member};
use crate::fanout::trace::{self as change_trace, Counts, Entry, Explanation, Subscriber, Who};
use crate::state::AppState;

/// Most subscribers one answer lists.
const MAX_SUBSCRIBERS: usize = 1000;

fn time(t: SystemTime) -> DateTime<Utc> {
    DateTime::<Utc>::from(t)
}

/// What happened to changes, in numbers of channels.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChangeCounts {
    /// Channels subscribed to the table (any event, any filter).
    pub subscribers: u64,
    /// Channels whose queue took the change.
    pub delivered: u64,
    /// Channels given an error entry in its place.
    pub error_entries: u64,
    /// Channels none of whose subscriptions matched (another event, or the filter).
    pub filtered: u64,
    /// Channels row-level security hid it from.
    pub refused: u64,
    /// Channels whose queue refused it (slow consumers, closing connections).
    pub dropped: u64,
}

impl From<Counts> for ChangeCounts {
    fn from(c: Counts) -> ChangeCounts {
        ChangeCounts {
            subscribers: c.subscribers,
            delivered: c.delivered,
            error_entries: c.error_entries,
            filtered: c.filtered,
            refused: c.refused,
            dropped: c.dropped,
        }
    }
}

/// One change the node routed.
#[derive(Debug, Serialize, ToSchema)]
pub struct RoutedChange {
    /// Outbox id (`realtime.changes.id`).
    pub id: i64,
    /// Schema of the table.
    pub schema: String,
    /// The table.
    pub table: String,
    /// `INSERT`, `UPDATE` or `DELETE`.
    pub op: &'static str,
    /// `commit_timestamp` as delivered.
    pub commit_timestamp: String,
    /// When it was captured, in the writer's transaction.
    pub captured_at: DateTime<Utc>,
    /// When this node routed it.
    pub routed_at: DateTime<Utc>,
    /// Why it could not be delivered at all, if so (subscribers got error entries).
    pub undeliverable: Option<String>,
    /// What became of it.
    pub counts: ChangeCounts,
}

impl From<&Entry> for RoutedChange {
    fn from(e: &Entry) -> RoutedChange {
        RoutedChange {
            id: e.id,
            schema: e.table.schema.clone(),
            table: e.table.name.clone(),
            op: e.op.as_str(),
            commit_timestamp: e.commit_timestamp.clone(),
            captured_at: time(e.captured_at),
            routed_at: time(e.routed_at),
            undeliverable: e.undeliverable.clone(),
            counts: e.counts.into(),
        }
    }
}

/// A channel subscribed to Postgres Changes on this node.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChangeSubscriber {
    /// The connection.
    pub connection_id: Uuid,
    /// The channel name (without `realtime:`).
    pub channel: String,
    /// The channel token's role.
    pub role: String,
    /// The channel token's `sub`.
    pub user: Option<String>,
    /// Change frames queued to it so far.
    pub delivered: u64,
    /// Its subscriptions.
    pub subscriptions: Vec<SubscriptionView>,
}

/// One `postgres_changes` entry of a channel.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionView {
    /// The id listed in deliveries' `ids`.
    pub id: u32,
    /// `INSERT`, `UPDATE`, `DELETE` or `*`.
    pub event: &'static str,
    /// Schema, or `*`.
    pub schema: String,
    /// Table, or `*`.
    pub table: String,
    /// The filter as written, if any.
    pub filter: Option<String>,
    /// Selected columns, if any.
    pub select: Option<Vec<String>>,
}

impl From<&Subscriber> for ChangeSubscriber {
    fn from(s: &Subscriber) -> ChangeSubscriber {
        ChangeSubscriber {
            connection_id: s.connection_id,
            channel: s.name().to_owned(),
            role: s.role.to_string(),
            user: s.sub.clone(),
            delivered: s.delivered,
            subscriptions: s
                .subs
                .iter()
                .map(|sub| SubscriptionView {
                    id: sub.id,
                    event: change_trace::event_name(sub.events),
                    schema: sub.schema.clone(),
                    table: sub.table.clone(),
                    filter: sub.filter_text.clone(),
                    select: sub.select.clone(),
                })
                .collect(),
        }
    }
}

/// Filters of the subscribers listed.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SubscriberQuery {
    /// Only this connection.
    pub connection: Option<Uuid>,
    /// Only this channel (its name, without `realtime:`).
    pub channel: Option<String>,
    /// Only channels whose token's `sub` is this.
    pub user: Option<String>,
}

impl SubscriberQuery {
    fn admits(&self, s: &Subscriber) -> bool {
        self.connection.is_none_or(|c| c == s.connection_id)
            && self.channel.as_deref().is_none_or(|c| c == s.name())
            && self
                .user
                .as_deref()
                .is_none_or(|u| Some(u) == s.sub.as_deref())
    }
}

/// A table as this node routes it.
#[derive(Debug, Serialize, ToSchema)]
pub struct TableDiagnostics {
    /// The node that answered (diagnostics are its own).
    pub node_id: String,
    /// Schema.
    pub schema: String,
    /// Table.
    pub table: String,
    /// Changes kept per table (`--trace-changes-per-table`).
    pub kept_per_table: usize,
    /// Channels subscribed to it now on this node (its `*` wildcards included), at most 1000.
    pub subscribers: Vec<ChangeSubscriber>,
    /// Changes of it this node routed since it started.
    pub changes_routed: u64,
    /// Their counts, summed.
    pub totals: ChangeCounts,
    /// The newest changes kept, newest first.
    pub recent: Vec<RoutedChange>,
}

/// The path of a table.
#[derive(Debug, Deserialize)]
pub struct TablePath {
    /// Schema.
    pub schema: String,
    /// Table.
    pub table: String,
}

/// Who listens to a table on this node, and what became of its last changes.
#[utoipa::path(
    get,
    path = "/admin/api/diagnostics/tables/{schema}/{table}",
    operation_id = "get_table_diagnostics",
    tag = "diagnostics",
    security(("bearer" = [])),
    params(
        ("schema" = String, Path, description = "Schema of the table"),
        ("table" = String, Path, description = "The table"),
        SubscriberQuery,
    ),
    responses(
        (status = 200, description = "Subscribers and recent changes of the table on this node", body = TableDiagnostics),
        (status = 400, description = "A filter that cannot be used", body = ErrorBody),
        (status = 401, description = "No credential, or one that is not accepted", body = ErrorBody),
        (status = 403, description = "A valid token whose role is not service_role", body = ErrorBody),
    )
)]
pub async fn table(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<TablePath>,
    ApiQuery(query): ApiQuery<SubscriberQuery>,
) -> Result<Json<TableDiagnostics>, Error> {
    let router = &state.session.router;
    let subscribers = router
        .subscribers(&path.schema, &path.table)
        .iter()
        .filter(|s| query.admits(s))
        .take(MAX_SUBSCRIBERS)
        .map(ChangeSubscriber::from)
        .collect();
    let trail = router.trace.trail(&path.schema, &path.table);
    let (changes_routed, totals, recent) = match trail {
        Some(t) => (
            t.changes,
            t.totals,
            t.recent.iter().map(|e| RoutedChange::from(&**e)).collect(),
        ),
        None => (0, Counts::default(), Vec::new()),
    };
    Ok(Json(TableDiagnostics {
        node_id: state.config.node_id.clone(),
        schema: path.schema,
        table: path.table,
        kept_per_table: router.trace.depth(),
        subscribers,
        changes_routed,
        totals: totals.into(),
        recent,
    }))
}

/// Which subscribers of a change to explain.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExplainQuery {
    /// Only this connection.
    pub connection: Option<Uuid>,
    /// Only this channel (its name, without `realtime:`).
    pub channel: Option<String>,
}

/// The path of a change.
#[derive(Debug, Deserialize)]
pub struct ChangePath {
    /// Outbox id.
    pub id: i64,
}

/// What became of one change for each subscriber.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChangeDiagnostics {
    /// The node that answered (diagnostics are its own).
    pub node_id: String,
    /// The change.
    pub change: RoutedChange,
    /// Each subscriber asked about: the channels subscribed to its table now and those that
    /// left since (while remembered), one answer per connection and channel.
    pub subscribers: Vec<SubscriberOutcome>,
}

/// Why one subscriber did or did not receive the change.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriberOutcome {
    /// The connection.
    pub connection_id: Uuid,
    /// The channel name (without `realtime:`).
    pub channel: String,
    /// `delivered`, `error_entry`, `filtered`, `refused` (row-level security), `dropped`
    /// (its queue refused it: slow consumer or closing), `not_subscribed` (not subscribed to
    /// this table and event when the change was routed).
    #[schema(example = "filtered")]
    pub outcome: &'static str,
    /// Why, for a person.
    pub detail: String,
    /// For `filtered`: the filters of its subscriptions covering the change, none of which
    /// matched.
    pub filters: Vec<String>,
    /// The channel token's role.
    pub role: String,
    /// The channel token's `sub`.
    pub user: Option<String>,
    /// Whether the channel is still subscribed on this node.
    pub subscribed_now: bool,
}

impl From<Explanation> for SubscriberOutcome {
    fn from(e: Explanation) -> SubscriberOutcome {
        SubscriberOutcome {
            connection_id: e.subscriber.connection_id,
            channel: e.subscriber.name().to_owned(),
            outcome: e.outcome.as_str(),
            detail: e.detail,
            filters: e.filters,
            role: e.subscriber.role.to_string(),
            user: e.subscriber.sub.clone(),
            subscribed_now: e.subscriber.until.is_none(),
        }
    }
}

/// Why a subscriber did or did not receive a change.
#[utoipa::path(
    get,
    path = "/admin/api/diagnostics/changes/{id}",
    operation_id = "explain_change",
    tag = "diagnostics",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "The change's outbox id"), ExplainQuery),
    responses(
        (status = 200, description = "What became of the change for each subscriber asked about", body = ChangeDiagnostics),
        (status = 400, description = "An id or filter that cannot be used", body = ErrorBody),
        (status = 401, description = "No credential, or one that is not accepted", body = ErrorBody),
        (status = 403, description = "A valid token whose role is not service_role", body = ErrorBody),
        (status = 404, description = "`unknown_change`: not among the changes this node keeps", body = ErrorBody),
    )
)]
pub async fn change(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<ChangePath>,
    ApiQuery(query): ApiQuery<ExplainQuery>,
) -> Result<Json<ChangeDiagnostics>, Error> {
    let router = &state.session.router;
    let who = Who {
        connection_id: query.connection,
        channel: query.channel.as_deref(),
    };
    let Some((entry, explained)) = router.explain(path.id, who) else {
        return Err(Error::UnknownChange(format!(
            "change {} is not among the last {} changes of its table this node routed: pruned \
             from its memory, not committed yet, of a table that is not published, or routed \
             by another node only",
            path.id,
            router.trace.depth()
        )));
    };
    Ok(Json(ChangeDiagnostics {
        node_id: state.config.node_id.clone(),
        change: RoutedChange::from(&*entry),
        subscribers: explained.into_iter().map(SubscriberOutcome::from).collect(),
    }))
}

/// The path of a channel.
#[derive(Debug, Deserialize)]
pub struct ChannelPath {
    /// The channel name (without `realtime:`).
    pub channel: String,
}

/// Which of the two channels of a name.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TopicQuery {
    /// The private channel of this name (`config.private: true`) rather than the public one.
    pub private: Option<bool>,
}

/// A channel as this node relays it.
#[derive(Debug, Serialize, ToSchema)]
pub struct TopicDiagnostics {
    /// The node that answered (diagnostics are its own).
    pub node_id: String,
    /// The channel name.
    pub channel: String,
    /// Whether this is the private channel of the name.
    pub private: bool,
    /// Broadcasts kept per channel (`--trace-broadcasts-per-channel`).
    pub kept_per_channel: usize,
    /// Its broadcast and presence members on this node.
    pub members: Vec<MemberView>,
    /// Its channels with Postgres Changes subscriptions on this node.
    pub postgres_changes: Vec<ChangeSubscriber>,
    /// What it relayed since it became active on this node.
    pub totals: BroadcastTotals,
    /// Its newest broadcasts, newest first.
    pub recent: Vec<BroadcastView>,
}

/// A member of a channel on this node.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberView {
    /// The connection (nil if it closed a moment ago).
    pub connection_id: Uuid,
    /// `broadcast.self`: it receives its own broadcasts.
    pub self_broadcast: bool,
    /// It may read broadcasts (always on a public channel).
    pub reads_broadcast: bool,
    /// It may read presence (always on a public channel).
    pub reads_presence: bool,
}

/// A channel's totals on this node.
#[derive(Debug, Serialize, ToSchema)]
pub struct BroadcastTotals {
    /// Broadcasts relayed to its members.
    pub broadcasts: u64,
    /// Presence diffs relayed.
    pub presence_diffs: u64,
    /// Frames queued to members.
    pub delivered: u64,
    /// Frames refused by members' queues (slow consumers).
    pub dropped: u64,
}

/// One broadcast a channel relayed.
#[derive(Debug, Serialize, ToSchema)]
pub struct BroadcastView {
    /// When.
    pub at: DateTime<Utc>,
    /// `connection` (a client of this node), `rest` (the REST API of this node) or `bus`
    /// (another node, or `realtime.send` in the database).
    #[schema(example = "connection")]
    pub origin: &'static str,
    /// The sending connection, for `connection`.
    pub connection_id: Option<Uuid>,
    /// The event name, when the message was small enough to keep.
    pub event: Option<String>,
    /// Its size, bytes.
    pub bytes: usize,
    /// Members on this node.
    pub members: u64,
    /// Members whose queue took it.
    pub delivered: u64,
    /// Members whose queue refused it.
    pub dropped: u64,
    /// The sender, which did not ask for its own broadcasts.
    pub skipped_sender: u64,
    /// Members of a private channel not allowed to read broadcasts.
    pub not_authorized: u64,
    /// Members whose serializer cannot carry it (raw binary to vsn 1).
    pub unencodable: u64,
}

/// Who is in a channel on this node, and what became of its last broadcasts.
#[utoipa::path(
    get,
    path = "/admin/api/diagnostics/topics/{channel}",
    operation_id = "get_topic_diagnostics",
    tag = "diagnostics",
    security(("bearer" = [])),
    params(("channel" = String, Path, description = "The channel name, without `realtime:`"), TopicQuery),
    responses(
        (status = 200, description = "Members and recent broadcasts of the channel on this node", body = TopicDiagnostics),
        (status = 400, description = "A parameter that cannot be used", body = ErrorBody),
        (status = 401, description = "No credential, or one that is not accepted", body = ErrorBody),
        (status = 403, description = "A valid token whose role is not service_role", body = ErrorBody),
    )
)]
pub async fn topic(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<ChannelPath>,
    ApiQuery(query): ApiQuery<TopicQuery>,
) -> Result<Json<TopicDiagnostics>, Error> {
    let private = query.private.unwrap_or(false);
    let key = channel_key(&path.channel, private);
    let services = &state.session;
    let connection_of = |conn| {
        services
            .sessions
            .get(conn)
            .map_or(Uuid::nil(), |s| s.connection_id)
    };
    let (members, totals, recent) = services.hub.channel_trace(&key).unwrap_or_default();
    let members = members
        .iter()
        .take(MAX_SUBSCRIBERS)
        .map(|m: &Member| MemberView {
            connection_id: connection_of(m.conn),
            self_broadcast: m.self_broadcast,
            reads_broadcast: m.reads_broadcast,
            reads_presence: m.reads_presence,
        })
        .collect();
    let recent = recent
        .iter()
        .map(|sent: &Sent| {
            let (origin, connection_id) = match sent.origin {
                Origin::Local(Some(conn)) => ("connection", Some(connection_of(conn))),
                Origin::Local(None) => ("rest", None),
                Origin::Bus => ("bus", None),
            };
            let f = sent.fanout;
            BroadcastView {
                at: time(sent.at),
                origin,
                connection_id,
                event: sent.event(),
                bytes: sent.bytes,
                members: f.members,
                delivered: f.delivered,
                dropped: f.dropped,
                skipped_sender: f.skipped_sender,
                not_authorized: f.not_authorized,
                unencodable: f.unencodable,
            }
        })
        .collect();
    let postgres_changes = services
        .router
        .subscribers_of_topic(&path.channel)
        .iter()
        .take(MAX_SUBSCRIBERS)
        .map(ChangeSubscriber::from)
        .collect();
    Ok(Json(TopicDiagnostics {
        node_id: state.config.node_id.clone(),
        channel: path.channel,
        private,
        kept_per_channel: state.config.diagnostics.trace_broadcasts_per_channel,
        members,
        postgres_changes,
        totals: BroadcastTotals {
            broadcasts: totals.broadcasts,
            presence_diffs: totals.presence_diffs,
            delivered: totals.delivered,
            dropped: totals.dropped,
        },
        recent,
    }))
}
